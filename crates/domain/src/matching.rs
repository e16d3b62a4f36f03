//! Identity matching (R1) and the creation decisions that follow from it (R3).
//!
//! The matcher gathers facts under the identity locks (identity rows by
//! prospect id, CRM id and email; CRM or MA records with the same email) and
//! calls [`decide_prospect`] or [`decide_crm`]. The decision says how the
//! identity map changes; the matcher then writes it, fenced, and hands the
//! record's edits to the applier.
//!
//! Order of matching: a known link first, then the CRM id, then the normalised
//! email. Several CRM records with one email and no CRM id to choose between
//! them is an "ambiguous match": the engine never guesses.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::creation::Assignment;
use crate::email::Email;
use crate::ids::{CrmId, CrmObject};
use crate::sync_error::{SyncErrorCategory, SyncIssue};

/// Where an identity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    /// Both sides exist and are linked.
    Linked,
    /// A prospect with no CRM counterpart and no assigned user (R3).
    PendingAssignment,
    /// A lead is being created for the prospect (idempotent by external id).
    CreatingCrm,
    /// A prospect is being created for the CRM record (idempotent by email).
    CreatingMa,
    /// The CRM record was deleted: the prospect is in the MA recycle bin and
    /// is not synced until the CRM record is restored (R8).
    Recycled,
}

impl IdentityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityStatus::Linked => "linked",
            IdentityStatus::PendingAssignment => "pending_assignment",
            IdentityStatus::CreatingCrm => "creating_crm",
            IdentityStatus::CreatingMa => "creating_ma",
            IdentityStatus::Recycled => "recycled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "linked" => IdentityStatus::Linked,
            "pending_assignment" => IdentityStatus::PendingAssignment,
            "creating_crm" => IdentityStatus::CreatingCrm,
            "creating_ma" => IdentityStatus::CreatingMa,
            "recycled" => IdentityStatus::Recycled,
            _ => return None,
        })
    }
}

/// An identity row as the matcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRef {
    pub id: Uuid,
    pub status: IdentityStatus,
    pub prospect_id: Option<i64>,
    pub crm_id: Option<CrmId>,
}

/// A live CRM lead or contact found by id or email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmCandidate {
    pub id: CrmId,
    pub object: CrmObject,
    pub is_converted: bool,
}

/// How the identity map changes. `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityPatch {
    pub status: Option<IdentityStatus>,
    pub prospect_id: Option<i64>,
    pub crm: Option<(CrmId, CrmObject)>,
    pub owner: Option<CrmId>,
    /// The CRM side is now another record (a converted lead's contact): what
    /// the engine knew the old record held says nothing about the new one.
    pub reset_crm_known: bool,
    /// Re-key the identity by this (normalised) email (R8).
    pub email: Option<String>,
}

impl IdentityPatch {
    pub fn is_empty(&self) -> bool {
        *self == IdentityPatch::default()
    }

    fn link_crm(c: &CrmCandidate) -> Self {
        IdentityPatch { status: Some(IdentityStatus::Linked), crm: Some((c.id.clone(), c.object)), ..Default::default() }
    }

    /// Re-links an identity from a converted lead to its contact (R8).
    fn follow_conversion(contact: &CrmId) -> Self {
        IdentityPatch {
            status: Some(IdentityStatus::Linked),
            crm: Some((contact.clone(), CrmObject::Contact)),
            reset_crm_known: true,
            ..Default::default()
        }
    }
}

/// Why a record is deliberately not synced (not an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A CRM record with no counterpart while `auto_create_prospects` is off
    /// (or the record predates turning it on).
    AutoCreateOff,
    /// A CRM record with no email cannot be matched or create a prospect.
    NoEmail,
    /// A converted lead is never written to; its contact carries the person.
    ConvertedLead,
    /// A prospect in the recycle bin (or a deleted CRM record) is not synced.
    Deleted,
    /// CSQLs stay in the CS platform (`csql.target` is `cs`, or the CSQL is
    /// of the record type not synced).
    CsqlStaysInCs,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AutoCreateOff => "auto_create_off",
            SkipReason::NoEmail => "no_email",
            SkipReason::ConvertedLead => "converted_lead",
            SkipReason::Deleted => "deleted",
            SkipReason::CsqlStaysInCs => "csql_stays_in_cs",
        }
    }
}

/// What the matcher does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Sync into an existing identity, changing it by `patch`; `issue` is a
    /// sync error to record alongside (the record is kept, e.g. pending).
    Existing { id: Uuid, patch: IdentityPatch, issue: Option<SyncIssue> },
    /// Create a new identity as described (the status is always set).
    New { patch: IdentityPatch, issue: Option<SyncIssue> },
    /// Do not sync; record this sync error.
    Reject(SyncIssue),
    /// Do not sync; not an error.
    Skip(SkipReason),
}

/// Facts about a changed prospect, gathered under its locks.
#[derive(Debug, Clone)]
pub struct ProspectFacts<'a> {
    pub prospect_id: i64,
    /// The CRM id the prospect points at, parsed.
    pub crm_id: Option<&'a CrmId>,
    pub assignment: &'a Assignment,
    pub by_prospect: Option<&'a IdentityRef>,
    pub by_crm_id: Option<&'a IdentityRef>,
    pub by_email: Option<&'a IdentityRef>,
    /// The CRM record `crm_id` names, if it exists.
    pub crm_by_id: Option<&'a CrmCandidate>,
    /// CRM leads and contacts with the prospect's email.
    pub crm_by_email: &'a [CrmCandidate],
}

/// Whether deciding for this prospect needs the CRM looked up by email: it
/// does unless the prospect is already linked or being created.
pub fn prospect_needs_crm_lookup(by_prospect: Option<&IdentityRef>) -> bool {
    by_prospect.is_none_or(|i| i.status == IdentityStatus::PendingAssignment)
}

fn live(candidates: &[CrmCandidate]) -> Vec<&CrmCandidate> {
    candidates.iter().filter(|c| !c.is_converted).collect()
}

fn ambiguous(email_owner: &str, candidates: &[&CrmCandidate]) -> SyncIssue {
    let ids: Vec<String> = candidates.iter().map(|c| format!("{} {}", c.object, c.id)).collect();
    SyncIssue::new(
        SyncErrorCategory::AmbiguousMatch,
        format!("{email_owner} matches {} CRM records by email ({}); set the CRM id on the prospect to choose", ids.len(), ids.join(", ")),
    )
}

/// The creation rule for a prospect with no CRM counterpart (R3).
fn create_or_wait(assignment: &Assignment) -> (IdentityPatch, Option<SyncIssue>) {
    let pending = IdentityPatch { status: Some(IdentityStatus::PendingAssignment), ..Default::default() };
    match assignment {
        Assignment::Owner(owner) => {
            (IdentityPatch { status: Some(IdentityStatus::CreatingCrm), owner: Some(owner.clone()), ..Default::default() }, None)
        }
        Assignment::Unassigned => (pending, None),
        Assignment::NoCrmUser { ma_user_id } => (
            pending,
            Some(SyncIssue::new(
                SyncErrorCategory::MissingOwner,
                format!("assigned MA user {ma_user_id} has no CRM user to own the lead; link the user or reassign the prospect"),
            )),
        ),
        Assignment::InvalidCrmUser { ma_user_id, error } => {
            (pending, Some(SyncIssue::new(SyncErrorCategory::InvalidCrmId, format!("assigned MA user {ma_user_id}: {error}"))))
        }
    }
}

/// R1 + R3 for a changed prospect.
pub fn decide_prospect(f: &ProspectFacts<'_>) -> Decision {
    let prospect = format!("prospect {}", f.prospect_id);
    if let Some(i) = f.by_prospect {
        if i.status != IdentityStatus::PendingAssignment {
            return Decision::Existing { id: i.id, patch: IdentityPatch::default(), issue: None };
        }
        // Pending: a CRM record may have appeared, or a user been assigned.
        let found: Vec<&CrmCandidate> = match f.crm_by_id {
            Some(c) if !c.is_converted => vec![c],
            _ => live(f.crm_by_email),
        };
        return match found.as_slice() {
            [c] => Decision::Existing { id: i.id, patch: IdentityPatch::link_crm(c), issue: None },
            [] => {
                let (patch, issue) = create_or_wait(f.assignment);
                let patch = if patch.status == Some(IdentityStatus::PendingAssignment) { IdentityPatch::default() } else { patch };
                Decision::Existing { id: i.id, patch, issue }
            }
            many => Decision::Reject(ambiguous(&prospect, many)),
        };
    }

    if let Some(crm_id) = f.crm_id {
        if let Some(i) = f.by_crm_id {
            return match i.prospect_id {
                None => Decision::Existing {
                    id: i.id,
                    patch: IdentityPatch { status: Some(IdentityStatus::Linked), prospect_id: Some(f.prospect_id), ..Default::default() },
                    issue: None,
                },
                Some(other) => Decision::Reject(SyncIssue::new(
                    SyncErrorCategory::DuplicateRecord,
                    format!("CRM record {crm_id} is already linked to prospect {other}; {prospect} is not synced"),
                )),
            };
        }
        if let Some(j) = f.by_email {
            return Decision::Reject(SyncIssue::new(
                SyncErrorCategory::DuplicateRecord,
                format!(
                    "{prospect} points at CRM record {crm_id}, but its email already belongs to identity {} ({})",
                    j.id,
                    j.crm_id.as_ref().map_or("no CRM record yet".to_owned(), |c| format!("CRM record {c}"))
                ),
            ));
        }
        return match f.crm_by_id {
            Some(c) if !c.is_converted => {
                Decision::New { patch: IdentityPatch { prospect_id: Some(f.prospect_id), ..IdentityPatch::link_crm(c) }, issue: None }
            }
            Some(c) => Decision::Reject(SyncIssue::new(
                SyncErrorCategory::CrmRecordNotFound,
                format!("{prospect} points at {} {crm_id}, which was converted", c.object),
            )),
            None => Decision::Reject(SyncIssue::new(
                SyncErrorCategory::CrmRecordNotFound,
                format!("{prospect} points at CRM record {crm_id}, which does not exist"),
            )),
        };
    }

    if let Some(i) = f.by_email {
        return match i.prospect_id {
            None => Decision::Existing {
                id: i.id,
                patch: IdentityPatch {
                    status: i.crm_id.is_some().then_some(IdentityStatus::Linked),
                    prospect_id: Some(f.prospect_id),
                    ..Default::default()
                },
                issue: None,
            },
            Some(other) => Decision::Reject(SyncIssue::new(
                SyncErrorCategory::DuplicateRecord,
                format!("{prospect} has the same email as prospect {other}, which is already synced"),
            )),
        };
    }

    match live(f.crm_by_email).as_slice() {
        [c] => Decision::New { patch: IdentityPatch { prospect_id: Some(f.prospect_id), ..IdentityPatch::link_crm(c) }, issue: None },
        [] => {
            let (patch, issue) = create_or_wait(f.assignment);
            Decision::New { patch: IdentityPatch { prospect_id: Some(f.prospect_id), ..patch }, issue }
        }
        many => Decision::Reject(ambiguous(&prospect, many)),
    }
}

/// Facts about a changed CRM lead or contact, gathered under its locks.
#[derive(Debug, Clone)]
pub struct CrmFacts<'a> {
    pub crm_id: &'a CrmId,
    pub object: CrmObject,
    pub email: Option<&'a Email>,
    pub is_converted: bool,
    /// For a converted lead: the contact it became.
    pub converted_contact: Option<&'a CrmId>,
    pub is_deleted: bool,
    /// When the identity holding the record's email is linked to a lead that
    /// was converted: the contact that lead became.
    pub by_email_converted_to: Option<&'a CrmId>,
    /// The identity named by the record's crmsync external id (records the
    /// engine created itself).
    pub by_external_id: Option<&'a IdentityRef>,
    pub by_crm_id: Option<&'a IdentityRef>,
    pub by_email: Option<&'a IdentityRef>,
    /// Live CRM leads and contacts with the record's email, itself included.
    pub crm_with_email: &'a [CrmCandidate],
    /// Prospects with the record's email.
    pub prospects_by_email: &'a [i64],
    /// `auto_create_prospects` is on and the record was created after it was.
    pub may_auto_create: bool,
}

/// R1, R3 and R8 for a changed CRM lead or contact.
pub fn decide_crm(f: &CrmFacts<'_>) -> Decision {
    let me = CrmCandidate { id: f.crm_id.clone(), object: f.object, is_converted: f.is_converted };
    let record = format!("{} {}", f.object, f.crm_id);
    let keep = |i: &IdentityRef| Decision::Existing { id: i.id, patch: IdentityPatch::default(), issue: None };
    // A converted lead: its person lives on in the contact; the lead itself
    // is never synced (or written) again.
    if f.is_converted {
        return match (f.by_crm_id, f.converted_contact) {
            (Some(i), Some(contact)) => Decision::Existing { id: i.id, patch: IdentityPatch::follow_conversion(contact), issue: None },
            _ => Decision::Skip(SkipReason::ConvertedLead),
        };
    }
    // Deleted in the CRM: its prospect goes to the recycle bin.
    if f.is_deleted {
        return match f.by_crm_id {
            Some(i) if i.status != IdentityStatus::Recycled => Decision::Existing {
                id: i.id,
                patch: IdentityPatch { status: Some(IdentityStatus::Recycled), ..Default::default() },
                issue: None,
            },
            Some(i) => keep(i),
            None => Decision::Skip(SkipReason::Deleted),
        };
    }
    if let Some(i) = f.by_crm_id {
        // Restored in the CRM: the prospect comes back, with its link.
        if i.status == IdentityStatus::Recycled {
            let patch = IdentityPatch { status: Some(IdentityStatus::Linked), ..Default::default() };
            return Decision::Existing { id: i.id, patch, issue: None };
        }
        return keep(i);
    }
    if let Some(i) = f.by_external_id.filter(|i| i.crm_id.is_none()) {
        return Decision::Existing { id: i.id, patch: IdentityPatch::link_crm(&me), issue: None };
    }
    if f.email.is_none() {
        // Without auto-creation nobody expects a prospect from it; with it,
        // the missing email is why one was not made, which the operator
        // should see.
        return if f.may_auto_create {
            Decision::Reject(SyncIssue::new(
                SyncErrorCategory::MissingEmail,
                format!("{record} has no email, and a prospect needs one; add an email to create its prospect"),
            ))
        } else {
            Decision::Skip(SkipReason::NoEmail)
        };
    }
    if let Some(i) = f.by_email {
        return match &i.crm_id {
            None => {
                let status = if i.prospect_id.is_some() { IdentityStatus::Linked } else { i.status };
                Decision::Existing { id: i.id, patch: IdentityPatch { status: Some(status), ..IdentityPatch::link_crm(&me) }, issue: None }
            }
            // The contact a synced lead was converted into, seen before the
            // lead's conversion itself: follow it.
            Some(_) if f.object == CrmObject::Contact && f.by_email_converted_to == Some(f.crm_id) => {
                Decision::Existing { id: i.id, patch: IdentityPatch::follow_conversion(f.crm_id), issue: None }
            }
            Some(other) => Decision::Reject(SyncIssue::new(
                SyncErrorCategory::DuplicateRecord,
                format!("{record} has the email of CRM record {other}, which is already synced; {record} is not synced"),
            )),
        };
    }
    // Several CRM records share this email: linking or creating by email would
    // be a guess (R1), from this side as from the prospect's. Only where the
    // engine would otherwise act on it, though: with no prospect to link and
    // no prospect to create, nothing is guessed, so it is skipped as a lone
    // record without auto-creation is. A prospect that later takes the email
    // raises the ambiguity on its own change.
    let others: Vec<&CrmCandidate> = live(f.crm_with_email).into_iter().filter(|c| c.id != *f.crm_id).collect();
    if !others.is_empty() && f.prospects_by_email.is_empty() && !f.may_auto_create {
        return Decision::Skip(SkipReason::AutoCreateOff);
    }
    if !others.is_empty() {
        let ids: Vec<String> = others.iter().map(|c| format!("{} {}", c.object, c.id)).collect();
        return Decision::Reject(SyncIssue::new(
            SyncErrorCategory::AmbiguousMatch,
            format!("{record} shares its email with {}; set the CRM id on the prospect to choose", ids.join(", ")),
        ));
    }
    match f.prospects_by_email {
        [p] => Decision::New { patch: IdentityPatch { prospect_id: Some(*p), ..IdentityPatch::link_crm(&me) }, issue: None },
        [] if f.may_auto_create => Decision::New {
            patch: IdentityPatch {
                status: Some(IdentityStatus::CreatingMa),
                crm: Some((f.crm_id.clone(), f.object)),
                ..Default::default()
            },
            issue: None,
        },
        [] => Decision::Skip(SkipReason::AutoCreateOff),
        many => Decision::Reject(SyncIssue::new(
            SyncErrorCategory::AmbiguousMatch,
            format!(
                "{record} matches {} prospects by email ({}); not synced",
                many.len(),
                many.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
