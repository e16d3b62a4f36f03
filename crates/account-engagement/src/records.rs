//! v5 prospects (JSON objects with the fields asked for) turned into the
//! engine's records, the same as the sandbox connector returns for the same
//! prospect, with two differences the API imposes:
//!
//! - v5 stamps a prospect, not its fields: `updatedAt` and `updatedById`
//!   say when and by whom it was last saved, not which field changed. So
//!   every field is left without a stamp of its own (`at` and `by` empty)
//!   and the domain judges it by its value, `coarse` (see the Salesforce
//!   connector's records for why copying the record's stamp in would lie);
//! - stamps have millisecond precision.

use std::collections::HashMap;

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::Positioned;
use crmsync_connector_kit::row::{Row, flag, stamp, text};
use crmsync_domain::Timestamp;
use crmsync_domain::records::{AssignedUser, FieldValue, ProspectRecord};
use serde_json::Value;

use crate::fields::{ASSIGNED_USER, CONTACT_ID, CREATED_AT, EMAIL, ID, IS_DELETED, LEAD_ID, UPDATED_AT, UPDATED_BY};

fn bad_row(what: &str) -> ConnectorError {
    ConnectorError::Fatal(format!("Account Engagement returned a prospect {what}"))
}

/// The id and `updatedAt` every prospect must have.
pub(crate) fn id_and_stamp(row: &Row) -> Result<(i64, Timestamp), ConnectorError> {
    let id = row.get(ID).and_then(Value::as_i64).ok_or_else(|| bad_row("without a numeric id"))?;
    let at = stamp(row, UPDATED_AT).ok_or_else(|| bad_row("without a valid updatedAt"))?;
    Ok((id, at))
}

/// The MA users a row is assigned to.
pub(crate) fn assigned_user_id(row: &Row) -> Option<i64> {
    row.get(ASSIGNED_USER).and_then(Value::as_i64)
}

/// A prospect, its assigned user's CRM user taken from `users` (MA user id
/// → `salesforceId`).
pub(crate) fn prospect(row: &Row, data: &[String], users: &HashMap<i64, Option<String>>) -> Result<ProspectRecord, ConnectorError> {
    let (id, updated_at) = id_and_stamp(row)?;
    Ok(ProspectRecord {
        id,
        email: text(row, EMAIL),
        crm_lead_fid: text(row, LEAD_ID),
        crm_contact_fid: text(row, CONTACT_ID),
        assigned_user: assigned_user_id(row).map(|u| AssignedUser { id: u, crm_user_id: users.get(&u).cloned().flatten() }),
        is_deleted: flag(row, IS_DELETED),
        // Always asked for; a row without it is still usable with its stamp.
        created_at: stamp(row, CREATED_AT).unwrap_or(updated_at),
        updated_at,
        last_modified_by: text(row, UPDATED_BY),
        fields: data.iter().map(|f| (f.clone(), FieldValue::new(row.get(f).cloned().unwrap_or(Value::Null)))).collect(),
    })
}

/// A prospect with its feed position (its id as text), for the stamp cursor.
pub(crate) fn positioned(row: Row) -> Result<Positioned<Row>, ConnectorError> {
    let (id, stamp) = id_and_stamp(&row)?;
    Ok(Positioned { stamp, key: id.to_string(), record: row })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use crmsync_domain::mapping::FieldMap;
    use crmsync_domain::records::SourceRecord;
    use serde_json::json;

    use super::*;

    fn row() -> Row {
        json!({
            "id": 42,
            "email": "Jane@Example.com",
            "salesforceLeadId": "00Q5g00000AbCdEEAA",
            "salesforceContactId": null,
            "assignedUserId": 7,
            "isDeleted": false,
            "createdAt": "2024-04-01T08:00:00.000Z",
            "updatedAt": "2024-05-01T10:20:30.123Z",
            "updatedById": 3,
            "firstName": "Jane",
            "score": 12,
            "optedOut": true
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn a_prospect_becomes_a_record_stamped_only_as_a_whole() {
        let users = HashMap::from([(7, Some("0055g000000AbCdEAK".to_owned()))]);
        let data = ["firstName", "score", "optedOut", "city"].map(str::to_owned);
        let p = prospect(&row(), &data, &users).unwrap();
        assert_eq!(p.id, 42);
        assert_eq!(p.email.as_deref(), Some("Jane@Example.com"));
        assert_eq!(p.crm_lead_fid.as_deref(), Some("00Q5g00000AbCdEEAA"));
        assert_eq!(p.crm_contact_fid, None);
        assert_eq!(p.assigned_user, Some(AssignedUser { id: 7, crm_user_id: Some("0055g000000AbCdEAK".into()) }));
        assert_eq!(p.updated_at, Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap() + chrono::Duration::milliseconds(123));
        assert_eq!(p.created_at, Utc.with_ymd_and_hms(2024, 4, 1, 8, 0, 0).unwrap());
        assert_eq!(p.last_modified_by.as_deref(), Some("3"), "numeric v5 user ids read as the sandbox's text ids");
        assert_eq!(p.fields["score"], FieldValue::new(json!(12)));
        assert_eq!(p.fields["optedOut"].value, json!(true));
        assert_eq!(p.fields["city"].value, Value::Null, "a field the answer lacks is blank");
        assert!(!p.fields.contains_key("assignedUserId"));
        let source = SourceRecord::Prospect(p.clone());
        assert!(!source.has_field_stamps());
        let obs = source.observations(&FieldMap::default(), Some("3"));
        assert!(obs.iter().all(|o| o.coarse && o.at == p.updated_at), "{obs:?}");
    }

    #[test]
    fn an_unknown_assigned_user_has_no_crm_user_and_bad_rows_are_refused() {
        let p = prospect(&row(), &[], &HashMap::new()).unwrap();
        assert_eq!(p.assigned_user, Some(AssignedUser { id: 7, crm_user_id: None }));
        let mut r = row();
        r.remove("updatedAt");
        assert!(prospect(&r, &[], &HashMap::new()).is_err());
        let mut r = row();
        r.insert("id".into(), json!("x"));
        assert!(positioned(r).is_err());
        let mut r = row();
        r.insert("updatedById".into(), Value::Null);
        r.remove("createdAt");
        let p = prospect(&r, &[], &HashMap::new()).unwrap();
        assert_eq!((p.last_modified_by, p.created_at), (None, p.updated_at));
    }
}
