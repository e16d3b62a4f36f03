//! Which fields the connector reads per object. SOQL has no `SELECT *`, so
//! every field is named: the system fields a record needs (id, stamps,
//! owner, lifecycle flags, crmsync's external id), plus the data fields the
//! engine uses — for leads and contacts the connection's field mapping, for
//! mirrored objects the fields the mirrors show, for custom objects their
//! declaration. (The sandbox returns every column; a real org's objects have
//! hundreds, so only what the engine reads is asked for.)

use std::collections::BTreeMap;

use crmsync_connector::ConnectorError;
use crmsync_domain::CrmObject;
use crmsync_domain::mapping::FieldMap;
use crmsync_domain::mirror::{ACCOUNT_FIELDS, CustomObject, MirrorObject, OPPORTUNITY_FIELDS};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_wire::salesforce::EXTERNAL_ID_FIELD;

/// The system fields every change query and look-up needs.
pub(crate) const ID: &str = "Id";
pub(crate) const SYSTEM_MODSTAMP: &str = "SystemModstamp";
pub(crate) const IS_DELETED: &str = "IsDeleted";
pub(crate) const CREATED_DATE: &str = "CreatedDate";
pub(crate) const LAST_MODIFIED_BY: &str = "LastModifiedById";
pub(crate) const OWNER_ID: &str = "OwnerId";
pub(crate) const EMAIL: &str = "Email";
pub(crate) const IS_CONVERTED: &str = "IsConverted";
pub(crate) const CONVERTED_CONTACT_ID: &str = "ConvertedContactId";

/// Fields a person record carries as attributes of its own rather than in
/// `fields` (as the sandbox leaves them out of `fields` too).
const PERSON_ATTRIBUTES: &[&str] =
    &[ID, OWNER_ID, IS_DELETED, IS_CONVERTED, CONVERTED_CONTACT_ID, SYSTEM_MODSTAMP, CREATED_DATE, LAST_MODIFIED_BY];

/// Data fields read on people whatever the mapping: the email (an identity
/// key) and a contact's account (mirrors of accounts follow it, R4).
fn always_read(object: CrmObject) -> &'static [&'static str] {
    match object {
        CrmObject::Contact => &[EMAIL, "AccountId"],
        _ => &[EMAIL],
    }
}

/// The Salesforce object name of a person object.
pub(crate) fn person_sobject(object: CrmObject) -> Result<&'static str, ConnectorError> {
    match object {
        CrmObject::Lead => Ok("Lead"),
        CrmObject::Contact => Ok("Contact"),
        other => Err(ConnectorError::Fatal(format!("{other} is not a person object"))),
    }
}

/// The objects the engine writes: people, and opportunities made from CSQLs.
pub(crate) fn writable_sobject(object: CrmObject) -> Result<&'static str, ConnectorError> {
    match object {
        CrmObject::Opportunity => Ok("Opportunity"),
        other => person_sobject(other),
    }
}

/// Adds `name` unless already there (SOQL refuses a field selected twice,
/// and field names are case-insensitive).
fn push_unique(out: &mut Vec<String>, name: &str) {
    if !out.iter().any(|f| f.eq_ignore_ascii_case(name)) {
        out.push(name.to_owned());
    }
}

/// What to read of one object: the SOQL field list and which of those go
/// into a record's `fields`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Selection {
    pub sobject: String,
    pub select: Vec<String>,
    pub data: Vec<String>,
}

/// The fields the connector reads, per object, for one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSet {
    people: BTreeMap<CrmObject, Vec<String>>,
    custom: BTreeMap<String, CustomObject>,
}

impl Default for ReadSet {
    /// The default field mapping and no custom objects.
    fn default() -> Self {
        ReadSet::new(&FieldMap::default(), &[])
    }
}

impl ReadSet {
    /// What a connection reads: its mapped fields, the fields its sync
    /// scope's rules look at (a rule on `Status`, which no mapping names,
    /// must still see it), and its custom objects.
    pub fn for_settings(settings: &ConnectionSettings) -> Self {
        let mut set = ReadSet::new(&settings.field_map, &settings.custom_objects);
        for object in [CrmObject::Lead, CrmObject::Contact] {
            let data = set.people.entry(object).or_default();
            for f in settings.sync_scope.fields_for(object) {
                if !PERSON_ATTRIBUTES.iter().any(|a| a.eq_ignore_ascii_case(f)) {
                    push_unique(data, f);
                }
            }
        }
        set
    }

    /// Reads the mapped fields of leads and contacts and the declared custom
    /// objects (a connection's `field_map` and `custom_objects`).
    pub fn new(field_map: &FieldMap, custom_objects: &[CustomObject]) -> Self {
        let mut people = BTreeMap::new();
        for object in [CrmObject::Lead, CrmObject::Contact] {
            let mut data = Vec::new();
            for f in always_read(object) {
                push_unique(&mut data, f);
            }
            for (_, api) in field_map.for_object(object) {
                if !PERSON_ATTRIBUTES.iter().any(|a| a.eq_ignore_ascii_case(api)) {
                    push_unique(&mut data, api);
                }
            }
            people.insert(object, data);
        }
        ReadSet { people, custom: custom_objects.iter().map(|c| (c.name.clone(), c.clone())).collect() }
    }

    /// A lead or contact: system fields, then the data fields.
    pub(crate) fn person(&self, object: CrmObject) -> Result<Selection, ConnectorError> {
        let sobject = person_sobject(object)?;
        let data = self.people.get(&object).cloned().unwrap_or_default();
        let mut select = Vec::new();
        for f in [ID, EMAIL, OWNER_ID, IS_DELETED, CREATED_DATE, SYSTEM_MODSTAMP, LAST_MODIFIED_BY, EXTERNAL_ID_FIELD] {
            push_unique(&mut select, f);
        }
        if object == CrmObject::Lead {
            push_unique(&mut select, IS_CONVERTED);
            push_unique(&mut select, CONVERTED_CONTACT_ID);
        }
        for f in &data {
            push_unique(&mut select, f);
        }
        Ok(Selection { sobject: sobject.to_owned(), select, data })
    }

    /// A mirrored object: system fields, then what its mirror shows and the
    /// lookups that decide who sees it.
    pub(crate) fn object(&self, object: &MirrorObject) -> Result<Selection, ConnectorError> {
        let (sobject, data): (String, Vec<String>) = match object {
            MirrorObject::Account => ("Account".into(), ACCOUNT_FIELDS.iter().map(|(crm, _)| (*crm).to_owned()).collect()),
            MirrorObject::Opportunity => {
                let mut data: Vec<String> = OPPORTUNITY_FIELDS.iter().map(|(crm, _)| (*crm).to_owned()).collect();
                push_unique(&mut data, "AccountId");
                ("Opportunity".into(), data)
            }
            MirrorObject::ContactRole => {
                ("OpportunityContactRole".into(), ["OpportunityId", "ContactId", "Role", "IsPrimary"].map(str::to_owned).to_vec())
            }
            MirrorObject::Custom(name) => {
                let decl = self
                    .custom
                    .get(name)
                    .ok_or_else(|| ConnectorError::Fatal(format!("custom object {name} is not declared in the connection's settings")))?;
                let mut data = Vec::new();
                for f in decl.fields.iter().chain([&decl.lookup_field]) {
                    if ![ID, IS_DELETED, SYSTEM_MODSTAMP].iter().any(|s| s.eq_ignore_ascii_case(f)) {
                        push_unique(&mut data, f);
                    }
                }
                (name.clone(), data)
            }
        };
        let mut select = vec![ID.to_owned(), IS_DELETED.to_owned(), SYSTEM_MODSTAMP.to_owned()];
        for f in &data {
            push_unique(&mut select, f);
        }
        Ok(Selection { sobject, select, data })
    }

    /// Whether `field` of `object` holds record ids (so values are
    /// normalised to 18 characters before they are compared).
    pub(crate) fn is_id_field(&self, object: &MirrorObject, field: &str) -> bool {
        field.ends_with("Id")
            || matches!(object, MirrorObject::Custom(name) if self.custom.get(name).is_some_and(|c| c.lookup_field == field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_read_system_fields_and_the_mapped_ones_once() {
        let reads = ReadSet::default();
        let lead = reads.person(CrmObject::Lead).unwrap();
        assert_eq!(lead.sobject, "Lead");
        assert_eq!(
            &lead.select[..10],
            [
                "Id",
                "Email",
                "OwnerId",
                "IsDeleted",
                "CreatedDate",
                "SystemModstamp",
                "LastModifiedById",
                "crmsync_Id__c",
                "IsConverted",
                "ConvertedContactId"
            ]
        );
        assert!(lead.select.contains(&"Company".to_owned()) && lead.select.contains(&"pi__score__c".to_owned()));
        assert_eq!(lead.select.iter().filter(|f| *f == "Email").count(), 1, "Email is selected once");
        assert!(lead.data.contains(&"Email".to_owned()) && !lead.data.contains(&"OwnerId".to_owned()));
        let contact = reads.person(CrmObject::Contact).unwrap();
        assert!(!contact.select.contains(&"IsConverted".to_owned()), "contacts have no IsConverted");
        assert!(contact.data.contains(&"AccountId".to_owned()) && contact.data.contains(&"MailingCity".to_owned()));
        assert!(!contact.data.contains(&"Company".to_owned()));
        assert!(reads.person(CrmObject::Account).is_err());
    }

    #[test]
    fn mirrored_objects_read_what_their_mirrors_show() {
        let subscription = CustomObject {
            name: "Subscription__c".into(),
            fields: vec!["Plan__c".into(), "Seats__c".into()],
            lookup_field: "Account__c".into(),
            lookup_object: CrmObject::Account,
        };
        let reads = ReadSet::new(&FieldMap::default(), &[subscription]);
        let account = reads.object(&MirrorObject::Account).unwrap();
        assert_eq!(account.select, ["Id", "IsDeleted", "SystemModstamp", "Name", "Industry", "Website", "BillingCity", "BillingCountry"]);
        let roles = reads.object(&MirrorObject::ContactRole).unwrap();
        assert_eq!(roles.sobject, "OpportunityContactRole");
        assert!(roles.data.contains(&"ContactId".to_owned()));
        assert!(reads.object(&MirrorObject::Opportunity).unwrap().data.contains(&"AccountId".to_owned()));
        let custom = reads.object(&MirrorObject::Custom("Subscription__c".into())).unwrap();
        assert_eq!(custom.data, ["Plan__c", "Seats__c", "Account__c"]);
        assert!(reads.object(&MirrorObject::Custom("Other__c".into())).is_err());
        assert!(reads.is_id_field(&MirrorObject::Custom("Subscription__c".into()), "Account__c"));
        assert!(reads.is_id_field(&MirrorObject::ContactRole, "OpportunityId"));
        assert!(!reads.is_id_field(&MirrorObject::Custom("Subscription__c".into()), "Plan__c"));
    }
}
