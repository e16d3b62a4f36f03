//! Parse, then match: detected records become typed candidates (normalised
//! email, 18-character ids, the assigned owner), or named sync errors. The
//! matching rules only ever see valid values.

use crmsync_domain::creation::Assignment;
use crmsync_domain::email::EmailError;
use crmsync_domain::matching::SkipReason;
use crmsync_domain::messages::Change;
use crmsync_domain::mirror::{CrmObjectRecord, MirrorKey, MirrorObject};
use crmsync_domain::records::{CrmPersonRecord, ProspectRecord, SourceRecord};
use crmsync_domain::{CrmId, Email, SyncErrorCategory, SyncIssue};
use uuid::Uuid;

/// A record ready for matching.
#[derive(Debug, Clone)]
pub enum Candidate<'a> {
    Prospect {
        change: &'a Change,
        p: &'a ProspectRecord,
        email: Email,
        crm_id: Option<CrmId>,
        assignment: Assignment,
    },
    Crm {
        change: &'a Change,
        r: &'a CrmPersonRecord,
        id: CrmId,
        email: Result<Option<Email>, EmailError>,
        external: Option<Uuid>,
        /// For a converted lead: the contact it became.
        converted_contact: Option<CrmId>,
    },
}

/// A record that will not be matched, and why.
#[derive(Debug, Clone)]
pub enum Refusal {
    Issue(SyncIssue),
    Skip(SkipReason),
}

impl<'a> Candidate<'a> {
    pub fn change(&self) -> &'a Change {
        match self {
            Candidate::Prospect { change, .. } | Candidate::Crm { change, .. } => change,
        }
    }

    /// The email this record matches by, if it has a valid one.
    pub fn email(&self) -> Option<&Email> {
        match self {
            Candidate::Prospect { email, .. } => Some(email),
            Candidate::Crm { email, .. } => email.as_ref().ok().and_then(Option::as_ref),
        }
    }
}

/// Parses one detected record.
pub fn parse(change: &Change) -> Result<Candidate<'_>, Refusal> {
    match &change.record {
        SourceRecord::Prospect(p) => {
            if p.is_deleted {
                return Err(Refusal::Skip(SkipReason::Deleted));
            }
            let email = Email::parse(p.email.as_deref().unwrap_or(""))
                .map_err(|e| Refusal::Issue(SyncIssue::new(SyncErrorCategory::InvalidEmail, format!("prospect {}: {e}", p.id))))?;
            let crm_id = match p.crm_fid() {
                None => None,
                Some(raw) => Some(
                    CrmId::parse(raw)
                        .map_err(|e| Refusal::Issue(SyncIssue::new(SyncErrorCategory::InvalidCrmId, format!("prospect {}: {e}", p.id))))?,
                ),
            };
            Ok(Candidate::Prospect { change, p, email, crm_id, assignment: Assignment::of(p) })
        }
        SourceRecord::Crm(r) => {
            // A deleted record still matters: its prospect goes to the recycle bin.
            let id = CrmId::parse(&r.id)
                .map_err(|e| Refusal::Issue(SyncIssue::new(SyncErrorCategory::InvalidCrmId, format!("{}: {e}", r.object))))?;
            let email = match r.email.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(raw) => Email::parse(raw).map(Some),
            };
            let external = r.external_id.as_deref().and_then(|x| Uuid::parse_str(x).ok());
            let converted_contact = r.converted_contact_id.as_deref().and_then(|c| CrmId::parse(c).ok());
            Ok(Candidate::Crm { change, r, id, email, external, converted_contact })
        }
        SourceRecord::Mirror(_) | SourceRecord::Csql(_) => Err(Refusal::Skip(SkipReason::Deleted)),
    }
}

/// The mirror a changed account, opportunity, contact role or custom record
/// asks to reconcile (R4-R6).
pub fn mirror_key(record: &CrmObjectRecord) -> Result<MirrorKey, SyncIssue> {
    let invalid = |what: &str, e: crmsync_domain::ids::CrmIdError| {
        SyncIssue::new(SyncErrorCategory::InvalidCrmId, format!("{} {}: {what}: {e}", record.object, record.id))
    };
    let id = CrmId::parse(&record.id).map_err(|e| invalid("its id", e))?;
    Ok(match &record.object {
        MirrorObject::Account => MirrorKey::Account { id },
        MirrorObject::Opportunity => MirrorKey::Opportunity { id },
        MirrorObject::ContactRole => {
            let raw = record.fields.get("OpportunityId").and_then(|f| f.value.as_str()).unwrap_or("");
            MirrorKey::Opportunity { id: CrmId::parse(raw).map_err(|e| invalid("OpportunityId", e))? }
        }
        MirrorObject::Custom(object) => MirrorKey::Custom { object: object.clone(), id },
    })
}
