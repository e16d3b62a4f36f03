//! Telling changes that carry something new from those that do not (I7).
//!
//! A detected record is worth syncing only if it carries something the
//! engine has not seen: a field a user changed to a value the engine does
//! not already know on that side, or a lifecycle change. The applier's
//! writes come back as rows whose fields were last changed by the
//! integration user, or hold exactly the value the engine wrote, so a sync
//! never echoes. From an API that stamps only whole records (the real
//! ones), a field is judged by its value and the record's stamp against
//! what the engine knows (see `Observation::coarse`).
//!
//! The producer applies the rule to every record it reads whose identity
//! exists. The matcher applies it to the changes detected *before* their
//! identity was linked, which the producer could not judge: in a backfill
//! where both records of a pair changed, whichever change is matched first
//! links the pair and stores both records' values, and the other change,
//! already published, brings nothing. Why dropping what the state already
//! knows loses nothing: the applier plans every command from the identity's
//! whole state, so any command of the identity writes what the state knows;
//! and the change that linked the identity, whose command is that
//! guarantee, is never dropped (its redelivery after a crash between storing
//! the link and publishing the command included).

use crate::CrmObject;
use crate::mapping::FieldMap;
use crate::matching::IdentityStatus;
use crate::merge::IdentityFields;
use crate::records::SourceRecord;

/// What the engine holds of one identity, as the echo rule reads it.
#[derive(Debug, Clone, Copy)]
pub struct KnownIdentity<'a> {
    pub status: IdentityStatus,
    /// The per-field state; only the record's own side's `known` is read.
    pub fields: &'a IdentityFields,
    pub crm_account_id: Option<&'a str>,
}

/// Whether a detected record carries news worth publishing.
pub fn worth_publishing(record: &SourceRecord, identity: Option<&KnownIdentity<'_>>, map: &FieldMap, integration_user: &str) -> bool {
    // The engine never writes the CRM objects it mirrors: no echo possible.
    // (CSQLs are filtered against their links, not identities.)
    if matches!(record, SourceRecord::Mirror(_) | SourceRecord::Csql(_)) {
        return true;
    }
    let Some(i) = identity else {
        // Unknown to the engine: the matcher decides, unless the engine itself
        // made the record (a lead or prospect it created) and nobody touched it since.
        return !entirely_ours(record, integration_user);
    };
    let news = record.observations(map, Some(integration_user)).iter().any(|o| {
        let known = i.fields.get(&o.field).and_then(|f| f.side(o.side).known.as_ref());
        o.is_news(known)
    });
    match i.status {
        // Waiting for an assigned user: an assignment is news too, though it
        // changes no mapped field.
        IdentityStatus::PendingAssignment => news || last_modifier(record) != Some(integration_user),
        IdentityStatus::Linked | IdentityStatus::CreatingCrm | IdentityStatus::CreatingMa | IdentityStatus::Recycled => {
            news || lifecycle_news(record, i)
        }
    }
}

/// Changes that are not field edits but still matter (R4, R8): a CRM record
/// deleted or restored, a lead converted, a contact moved to another account.
fn lifecycle_news(record: &SourceRecord, i: &KnownIdentity<'_>) -> bool {
    let SourceRecord::Crm(c) = record else { return false };
    let recycled = i.status == IdentityStatus::Recycled;
    let account = c.fields.get("AccountId").and_then(|f| f.value.as_str());
    c.is_deleted != recycled || c.is_converted || (c.object == CrmObject::Contact && account != i.crm_account_id)
}

fn last_modifier(record: &SourceRecord) -> Option<&str> {
    match record {
        SourceRecord::Prospect(p) => p.last_modified_by.as_deref(),
        SourceRecord::Crm(c) => c.last_modified_by.as_deref(),
        SourceRecord::Mirror(_) | SourceRecord::Csql(_) => None,
    }
}

fn entirely_ours(record: &SourceRecord, me: &str) -> bool {
    let fields = match record {
        SourceRecord::Prospect(p) => &p.fields,
        SourceRecord::Crm(c) => &c.fields,
        SourceRecord::Mirror(_) | SourceRecord::Csql(_) => return false,
    };
    // Without per-field stamps (a real API) a record last saved by the engine
    // may still hold a user's earlier edit of another field: only per-field
    // stamps can prove a record entirely the engine's.
    record.has_field_stamps() && last_modifier(record) == Some(me) && fields.values().all(|f| f.by.as_deref().is_none_or(|by| by == me))
}

#[cfg(test)]
mod tests;
