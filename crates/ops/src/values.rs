//! One person's current values on both sides, field by field, as the
//! console's record page shows them: read from the systems themselves (not
//! from what the engine last saw), so an admin sees what a user would see in
//! each product, and where the two differ.

use crmsync_connector::{ConnectorError, ConnectorFactory};
use crmsync_domain::mapping::FieldMap;
use crmsync_domain::merge::same_value;
use crmsync_domain::records::{CrmPersonRecord, Fields, ProspectRecord};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject};
use crmsync_systems::SystemsFactory;
use serde::Serialize;
use serde_json::Value;

/// One mapped field on both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldPair {
    pub ma_field: String,
    /// The CRM field it maps to on this person's CRM object, if any.
    pub crm_field: Option<String>,
    pub ma: Value,
    pub crm: Value,
    /// Both sides hold a value for it and they differ (blanks are all
    /// equal; a field only one side maps is never a difference).
    pub differs: bool,
}

/// A person as both systems hold them now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideBySide {
    pub prospect_found: bool,
    pub crm_found: bool,
    pub fields: Vec<FieldPair>,
}

fn value_of(fields: Option<&Fields>, name: Option<&str>) -> Value {
    name.and_then(|n| fields?.get(n)).map_or(Value::Null, |f| f.value.clone())
}

/// Pairs the mapped fields of a prospect and a CRM record, in mapping
/// order.
pub fn side_by_side(
    map: &FieldMap,
    object: Option<CrmObject>,
    prospect: Option<&ProspectRecord>,
    crm: Option<&CrmPersonRecord>,
) -> SideBySide {
    let fields = map
        .iter()
        .map(|m| {
            let crm_field = object.and_then(|o| m.crm_field(o)).map(str::to_owned);
            let ma = value_of(prospect.map(|p| &p.fields), Some(&m.ma));
            let crm_value = value_of(crm.map(|c| &c.fields), crm_field.as_deref());
            let differs = prospect.is_some() && crm.is_some() && crm_field.is_some() && !same_value(&ma, &crm_value);
            FieldPair { ma_field: m.ma.clone(), crm_field, ma, crm: crm_value, differs }
        })
        .collect();
    SideBySide { prospect_found: prospect.is_some(), crm_found: crm.is_some(), fields }
}

/// Reads one person from both systems of a connection: one call to each
/// (the record page is opened by a person, one record at a time).
pub async fn current(
    factory: &SystemsFactory,
    connection_id: &str,
    settings: &ConnectionSettings,
    prospect_id: Option<i64>,
    crm: Option<(CrmObject, CrmId)>,
) -> Result<SideBySide, ConnectorError> {
    let systems = factory.systems(connection_id, settings).await?;
    let prospect = match prospect_id {
        Some(id) => systems.ma.prospects_by_id(&[id]).await?.into_iter().find(|p| p.id == id),
        None => None,
    };
    let (object, person) = match crm {
        Some((object, id)) => (Some(object), systems.crm.people_by_id(std::slice::from_ref(&id)).await?.into_iter().next()),
        None => (None, None),
    };
    Ok(side_by_side(&settings.field_map, object, prospect.as_ref(), person.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmsync_domain::records::FieldValue;

    fn fields(pairs: &[(&str, Value)]) -> Fields {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), FieldValue::new(v.clone()))).collect()
    }

    #[test]
    fn differences_are_marked_only_where_both_sides_map_and_hold_a_value() {
        let now = chrono::Utc::now();
        let prospect = ProspectRecord {
            id: 7,
            email: None,
            crm_lead_fid: None,
            crm_contact_fid: None,
            assigned_user: None,
            is_deleted: false,
            created_at: now,
            updated_at: now,
            last_modified_by: None,
            fields: fields(&[("city", "Lyon".into()), ("company", "Acme".into()), ("jobTitle", "".into())]),
        };
        let lead = CrmPersonRecord {
            id: "00Q000000000001AAA".into(),
            object: CrmObject::Lead,
            email: None,
            owner_id: None,
            external_id: None,
            is_deleted: false,
            is_converted: false,
            converted_contact_id: None,
            created_at: now,
            system_modstamp: now,
            last_modified_by: None,
            fields: fields(&[("City", "Paris".into()), ("Company", "Acme".into()), ("Title", Value::Null)]),
        };
        let view = side_by_side(&FieldMap::default(), Some(CrmObject::Lead), Some(&prospect), Some(&lead));
        let pair = |f: &str| view.fields.iter().find(|p| p.ma_field == f).unwrap();
        assert!(pair("city").differs);
        assert!(!pair("company").differs);
        assert!(!pair("jobTitle").differs, "a blank and a null are the same blank");
        assert_eq!(pair("city").crm_field.as_deref(), Some("City"));

        let contact = CrmPersonRecord { object: CrmObject::Contact, ..lead };
        let view = side_by_side(&FieldMap::default(), Some(CrmObject::Contact), Some(&prospect), Some(&contact));
        let company = view.fields.iter().find(|p| p.ma_field == "company").unwrap();
        assert_eq!(company.crm_field, None, "a contact has no company field in the default mapping");
        assert!(!company.differs);

        let alone = side_by_side(&FieldMap::default(), None, Some(&prospect), None);
        assert!(alone.fields.iter().all(|p| !p.differs), "nothing differs from a record that is not there");
    }
}
