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
    /// A record that should create its counterpart has no email.
    MissingEmail,
    /// A CRM id on the record is malformed.
    InvalidCrmId,
    /// Several candidate records share the email and no CRM id says which.
    AmbiguousMatch,
    /// The identity is already linked to another record on this side.
    DuplicateRecord,
    /// The record points at a CRM record that does not exist.
    CrmRecordNotFound,
    /// The prospect's assigned user has no CRM user to own the new lead, or
    /// the target refused the owner as inactive.
    MissingOwner,
    /// A value is longer than the target field allows.
    FieldTooLong,
    /// A validation rule of the target refused the record.
    ValidationRule,
    /// A duplicate rule of the target blocked the record as a duplicate.
    DuplicateRule,
    /// The CRM refused a write to a converted lead and the conversion could
    /// not be followed.
    ConvertedLead,
    /// The target system refused the write for another reason.
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
            SyncErrorCategory::MissingEmail => "missing_email",
            SyncErrorCategory::InvalidCrmId => "invalid_crm_id",
            SyncErrorCategory::AmbiguousMatch => "ambiguous_match",
            SyncErrorCategory::DuplicateRecord => "duplicate_record",
            SyncErrorCategory::CrmRecordNotFound => "crm_record_not_found",
            SyncErrorCategory::MissingOwner => "missing_owner",
            SyncErrorCategory::FieldTooLong => "field_too_long",
            SyncErrorCategory::ValidationRule => "validation_rule",
            SyncErrorCategory::DuplicateRule => "duplicate_rule",
            SyncErrorCategory::ConvertedLead => "converted_lead",
            SyncErrorCategory::TargetRejected => "target_rejected",
            SyncErrorCategory::MalformedMessage => "malformed_message",
            SyncErrorCategory::CsqlNotPermitted => "csql_not_permitted",
        }
    }
}

impl SyncErrorCategory {
    /// The category of a target's refusal, from its error code (Salesforce
    /// `STATUS_CODE`s; Account Engagement's numeric codes) and message. The
    /// operator's remedy differs per category (shorten a value, fix the
    /// record against a rule, merge duplicates, reactivate a user), so a
    /// refusal is named as precisely as its code allows.
    pub fn of_rejection(code: &str, message: &str) -> SyncErrorCategory {
        let lower = message.to_ascii_lowercase();
        match code {
            "STRING_TOO_LONG" => SyncErrorCategory::FieldTooLong,
            "FIELD_CUSTOM_VALIDATION_EXCEPTION" => SyncErrorCategory::ValidationRule,
            "DUPLICATES_DETECTED" | "DUPLICATE_VALUE" => SyncErrorCategory::DuplicateRule,
            "INACTIVE_OWNER_OR_USER" => SyncErrorCategory::MissingOwner,
            "CANNOT_UPDATE_CONVERTED_LEAD" => SyncErrorCategory::ConvertedLead,
            // Account Engagement names no code for length: its message says.
            _ if lower.contains("too long") || lower.contains("too large (max length") => SyncErrorCategory::FieldTooLong,
            _ => SyncErrorCategory::TargetRejected,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named_by_their_code_or_message() {
        let cases = [
            ("STRING_TOO_LONG", "title: data value too large (max length=128)", SyncErrorCategory::FieldTooLong),
            ("25", "jobTitle: data value too large (max length=128)", SyncErrorCategory::FieldTooLong),
            ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Phone must have 10 digits", SyncErrorCategory::ValidationRule),
            ("DUPLICATES_DETECTED", "You're creating a duplicate record", SyncErrorCategory::DuplicateRule),
            ("INACTIVE_OWNER_OR_USER", "operation performed with inactive user", SyncErrorCategory::MissingOwner),
            ("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", SyncErrorCategory::ConvertedLead),
            ("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", SyncErrorCategory::TargetRejected),
        ];
        for (code, message, want) in cases {
            assert_eq!(SyncErrorCategory::of_rejection(code, message), want, "{code}: {message}");
        }
    }
}
