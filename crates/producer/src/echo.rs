//! Telling the engine's own writes from real changes (I7).
//!
//! A detected record is published only if it carries something the engine
//! has not seen: a field a user changed to a value the engine does not
//! already know on that side. The applier's writes come back as rows whose
//! fields were last changed by the integration user, or hold exactly the
//! value the engine wrote: both are dropped here, so a sync never echoes.
//! (The applier would find nothing to do with an echo anyway; dropping it
//! here keeps it off the broker.) From an API that stamps only whole records
//! (the real ones), a field is judged by its value and the record's stamp
//! against what the engine knows (see `Observation::coarse`).

use crmsync_domain::mapping::FieldMap;
use crmsync_domain::matching::IdentityStatus;
use crmsync_domain::records::SourceRecord;
use crmsync_store::identities::IdentityRow;

/// Whether a detected record carries news worth publishing.
pub fn worth_publishing(record: &SourceRecord, identity: Option<&IdentityRow>, map: &FieldMap, integration_user: &str) -> bool {
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
    let fields = &i.fields;
    let news = record.observations(map, Some(integration_user)).iter().any(|o| {
        let known = fields.get(&o.field).and_then(|f| f.side(o.side).known.as_ref());
        o.is_news(known)
    });
    match i.status() {
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
fn lifecycle_news(record: &SourceRecord, i: &IdentityRow) -> bool {
    let SourceRecord::Crm(c) = record else { return false };
    let recycled = i.status() == IdentityStatus::Recycled;
    let account = c.fields.get("AccountId").and_then(|f| f.value.as_str());
    c.is_deleted != recycled || c.is_converted || (c.object == crmsync_domain::CrmObject::Contact && account != i.crm_account_id.as_deref())
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
mod tests {
    use chrono::Utc;
    use crmsync_domain::CrmObject;
    use crmsync_domain::merge::{IdentityFields, Side};
    use crmsync_domain::records::{CrmPersonRecord, FieldValue, Fields};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    const ME: &str = "005INTEGRATION";

    fn lead(title: &str, by: &str, last_by: &str) -> SourceRecord {
        let mut fields = Fields::new();
        fields.insert("Title".into(), FieldValue { value: json!(title), at: Some(Utc::now()), by: Some(by.into()) });
        SourceRecord::Crm(CrmPersonRecord {
            id: "00Q5g00000AbCdEAAA".into(),
            object: CrmObject::Lead,
            email: None,
            owner_id: None,
            external_id: None,
            is_deleted: false,
            is_converted: false,
            converted_contact_id: None,
            created_at: Utc::now(),
            system_modstamp: Utc::now(),
            last_modified_by: Some(last_by.into()),
            fields,
        })
    }

    fn identity(status: &str, known_title: &str) -> IdentityRow {
        let mut f = IdentityFields::default();
        f.wrote(Side::Crm, "jobTitle", Utc::now(), json!(known_title));
        IdentityRow {
            id: Uuid::new_v4(),
            status: status.into(),
            prospect_id: Some(1),
            crm_object: Some("lead".into()),
            crm_id: None,
            email: None,
            owner_id: None,
            fields: f,
            ma_link_written: true,
            ma_recycled: false,
            crm_account_id: None,
            mirror_crm_id: None,
        }
    }

    fn linked(known_title: &str) -> IdentityRow {
        identity("linked", known_title)
    }

    #[test]
    fn a_pending_identitys_record_touched_by_a_user_is_published() {
        let map = FieldMap::default();
        // Same title as known, but a user saved the record (an assignment, say).
        assert!(worth_publishing(&lead("CTO", "005USER", "005USER"), Some(&identity("pending_assignment", "CTO")), &map, ME));
        assert!(!worth_publishing(&lead("CTO", "005USER", "005USER"), Some(&identity("creating_crm", "CTO")), &map, ME));
    }

    #[test]
    fn the_engines_own_write_is_not_published() {
        let map = FieldMap::default();
        assert!(!worth_publishing(&lead("CTO", ME, ME), Some(&linked("CTO")), &map, ME));
    }

    #[test]
    fn a_value_the_engine_already_knows_is_not_published() {
        let map = FieldMap::default();
        assert!(!worth_publishing(&lead("CTO", "005USER", "005USER"), Some(&linked("CTO")), &map, ME));
    }

    #[test]
    fn a_user_edit_is_published() {
        let map = FieldMap::default();
        assert!(worth_publishing(&lead("CEO", "005USER", "005USER"), Some(&linked("CTO")), &map, ME));
    }

    #[test]
    fn unlinked_records_go_to_the_matcher_unless_the_engine_made_them() {
        let map = FieldMap::default();
        assert!(worth_publishing(&lead("CEO", "005USER", "005USER"), None, &map, ME));
        assert!(!worth_publishing(&lead("CEO", ME, ME), None, &map, ME));
        // Made by the engine, then touched by a user.
        assert!(worth_publishing(&lead("CEO", ME, "005USER"), None, &map, ME));
    }
}
