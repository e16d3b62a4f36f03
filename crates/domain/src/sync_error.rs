//! Named sync errors (I6): what went wrong with a record, in words an operator
//! can act on. A sync error is parked in PostgreSQL, visible and retryable; it
//! never blocks the queue it came from.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The category of a sync error. Stable snake_case names: they appear in the
/// database, in `crmsync status` and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncErrorCategory {
    /// The email is present but not a valid address.
    InvalidEmail,
    /// A CRM id on the record is malformed.
    InvalidCrmId,
    /// Several candidate records share the email and no CRM id says which.
    AmbiguousMatch,
    /// The identity is already linked to another record on this side.
    DuplicateRecord,
    /// The record points at a CRM record that does not exist.
    CrmRecordNotFound,
    /// The prospect's assigned user has no CRM user to own the new lead.
    MissingOwner,
    /// The target system refused the write (validation rule, duplicate rule...).
    TargetRejected,
    /// The message could not be read at all.
    MalformedMessage,
    /// A CSQL's sync is not permitted for the user who saved it (R9).
    CsqlNotPermitted,
}

impl SyncErrorCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncErrorCategory::InvalidEmail => "invalid_email",
            SyncErrorCategory::InvalidCrmId => "invalid_crm_id",
            SyncErrorCategory::AmbiguousMatch => "ambiguous_match",
            SyncErrorCategory::DuplicateRecord => "duplicate_record",
            SyncErrorCategory::CrmRecordNotFound => "crm_record_not_found",
            SyncErrorCategory::MissingOwner => "missing_owner",
            SyncErrorCategory::TargetRejected => "target_rejected",
            SyncErrorCategory::MalformedMessage => "malformed_message",
            SyncErrorCategory::CsqlNotPermitted => "csql_not_permitted",
        }
    }

    pub fn all() -> &'static [SyncErrorCategory] {
        use SyncErrorCategory::*;
        &[
            InvalidEmail,
            InvalidCrmId,
            AmbiguousMatch,
            DuplicateRecord,
            CrmRecordNotFound,
            MissingOwner,
            TargetRejected,
            MalformedMessage,
            CsqlNotPermitted,
        ]
    }
}

impl fmt::Display for SyncErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sync error for one record: its category and a reason that names the
/// offending value or the conflicting record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncIssue {
    pub category: SyncErrorCategory,
    pub reason: String,
}

impl SyncIssue {
    pub fn new(category: SyncErrorCategory, reason: impl Into<String>) -> Self {
        SyncIssue { category, reason: reason.into() }
    }
}

impl fmt::Display for SyncIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.category, self.reason)
    }
}
