//! Query result rows (JSON objects with `attributes` and the selected
//! fields) turned into the engine's records.
//!
//! Salesforce stamps a record, not its fields: `SystemModstamp` and
//! `LastModifiedById` say when and by whom the record was last saved, not
//! which field changed. So every field is left without a stamp of its own
//! (`at` and `by` empty): the domain then uses the record's stamp and marks
//! the observation `coarse`, judging the field by its value instead of
//! trusting a per-field author. (Copying the record's stamp and last
//! modifier into every field would claim per-field knowledge the API does
//! not have, and would make a user's edit saved alongside an engine write
//! look like the engine's own.)

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::row::{Row, flag, stamp, text};
use crmsync_domain::mirror::{CrmObjectRecord, MirrorObject};
use crmsync_domain::records::{CrmPersonRecord, FieldValue, Fields};
use crmsync_domain::{CrmObject, Timestamp};
use crmsync_wire::salesforce::EXTERNAL_ID_FIELD;
use serde_json::Value;

use crate::fields::{CONVERTED_CONTACT_ID, CREATED_DATE, EMAIL, ID, IS_CONVERTED, IS_DELETED, LAST_MODIFIED_BY, OWNER_ID, SYSTEM_MODSTAMP};

fn bad_row(object: &str, what: &str) -> ConnectorError {
    ConnectorError::Fatal(format!("Salesforce returned a {object} row {what}"))
}

/// The id and `SystemModstamp` every row must have.
pub(crate) fn id_and_stamp(row: &Row, object: &str) -> Result<(String, Timestamp), ConnectorError> {
    let id = text(row, ID).ok_or_else(|| bad_row(object, "without an Id"))?;
    let at = stamp(row, SYSTEM_MODSTAMP).ok_or_else(|| bad_row(object, "without a valid SystemModstamp"))?;
    Ok((id, at))
}

/// The data fields, without stamps of their own (see the module docs).
fn fields(row: &Row, data: &[String]) -> Fields {
    data.iter().map(|f| (f.clone(), FieldValue::new(row.get(f).cloned().unwrap_or(Value::Null)))).collect()
}

/// A lead or contact.
pub(crate) fn person(object: CrmObject, data: &[String], row: &Row) -> Result<CrmPersonRecord, ConnectorError> {
    let (id, system_modstamp) = id_and_stamp(row, object.as_str())?;
    Ok(CrmPersonRecord {
        id,
        object,
        email: text(row, EMAIL),
        owner_id: text(row, OWNER_ID),
        external_id: text(row, EXTERNAL_ID_FIELD),
        is_deleted: flag(row, IS_DELETED),
        is_converted: flag(row, IS_CONVERTED),
        converted_contact_id: text(row, CONVERTED_CONTACT_ID),
        // Always selected; a row without it is still usable with its stamp.
        created_at: stamp(row, CREATED_DATE).unwrap_or(system_modstamp),
        system_modstamp,
        last_modified_by: text(row, LAST_MODIFIED_BY),
        fields: fields(row, data),
    })
}

/// A record of a mirrored object.
pub(crate) fn object(object: &MirrorObject, data: &[String], row: &Row) -> Result<CrmObjectRecord, ConnectorError> {
    let (id, system_modstamp) = id_and_stamp(row, object.name())?;
    Ok(CrmObjectRecord { id, object: object.clone(), is_deleted: flag(row, IS_DELETED), system_modstamp, fields: fields(row, data) })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use crmsync_domain::records::SourceRecord;
    use serde_json::json;

    use super::*;

    fn lead_row() -> Row {
        json!({
            "attributes": {"type": "Lead", "url": "/services/data/v60.0/sobjects/Lead/00Q5g00000AbCdEEAA"},
            "Id": "00Q5g00000AbCdEEAA",
            "Email": "Jane@Example.com",
            "OwnerId": "0055g000000AbCdEAK",
            "IsDeleted": false,
            "IsConverted": true,
            "ConvertedContactId": "0035g00000AbCdEAAA",
            "CreatedDate": "2024-04-01T08:00:00.000+0000",
            "SystemModstamp": "2024-05-01T10:20:30.123+0000",
            "LastModifiedById": "0055g000000XyZwEAK",
            "crmsync_Id__c": null,
            "City": "Kyoto",
            "pi__score__c": 42
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn a_lead_row_becomes_a_record_stamped_only_as_a_whole() {
        let data = vec!["Email".to_owned(), "City".to_owned(), "pi__score__c".to_owned(), "Title".to_owned()];
        let r = person(CrmObject::Lead, &data, &lead_row()).unwrap();
        assert_eq!(r.id, "00Q5g00000AbCdEEAA");
        assert_eq!(r.email.as_deref(), Some("Jane@Example.com"));
        assert_eq!(r.owner_id.as_deref(), Some("0055g000000AbCdEAK"));
        assert_eq!(r.external_id, None);
        assert!(r.is_converted && !r.is_deleted);
        assert_eq!(r.converted_contact_id.as_deref(), Some("0035g00000AbCdEAAA"));
        assert_eq!(r.system_modstamp, Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap() + chrono::Duration::milliseconds(123));
        assert_eq!(r.created_at, Utc.with_ymd_and_hms(2024, 4, 1, 8, 0, 0).unwrap());
        assert_eq!(r.last_modified_by.as_deref(), Some("0055g000000XyZwEAK"));
        assert_eq!(r.fields["City"], FieldValue::new(json!("Kyoto")));
        assert_eq!(r.fields["pi__score__c"].value, json!(42));
        assert_eq!(r.fields["Title"].value, Value::Null, "a selected field the row lacks is blank");
        assert!(!r.fields.contains_key("OwnerId"));

        // The domain sees a coarse source: observations carry the record's
        // stamp, and the last modifier does not hide a field's value.
        let source = SourceRecord::Crm(r.clone());
        assert!(!source.has_field_stamps());
        let obs = source.observations(&crmsync_domain::mapping::FieldMap::default(), Some("0055g000000XyZwEAK"));
        let city = obs.iter().find(|o| o.field == "city").unwrap();
        assert!(city.coarse);
        assert_eq!(city.at, r.system_modstamp);
    }

    #[test]
    fn rows_without_an_id_or_stamp_are_refused() {
        let mut row = lead_row();
        row.remove("SystemModstamp");
        assert!(person(CrmObject::Lead, &[], &row).is_err());
        let mut row = lead_row();
        row.remove("Id");
        assert!(person(CrmObject::Lead, &[], &row).is_err());
    }

    #[test]
    fn an_object_row_keeps_its_lookups_and_deletion() {
        let row = json!({
            "attributes": {"type": "OpportunityContactRole"},
            "Id": "00K5g00000AbCdEEAA",
            "IsDeleted": true,
            "SystemModstamp": "2024-05-01T10:20:30.000+0000",
            "OpportunityId": "0065g00000AbCdEAAA",
            "ContactId": "0035g00000AbCdE",
            "Role": null,
            "IsPrimary": true
        });
        let data: Vec<String> = ["OpportunityId", "ContactId", "Role", "IsPrimary"].map(str::to_owned).to_vec();
        let r = object(&MirrorObject::ContactRole, &data, row.as_object().unwrap()).unwrap();
        assert!(r.is_deleted);
        assert_eq!(r.lookup("ContactId"), crmsync_domain::CrmId::parse("0035g00000AbCdE").ok(), "15-character lookups read as ids");
        assert_eq!(r.fields["IsPrimary"].value, json!(true));
        assert_eq!(r.object, MirrorObject::ContactRole);
    }
}
