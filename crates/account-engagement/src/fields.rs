//! Which prospect fields are read. v5 returns only the fields a request
//! names (`fields=`), so every one is named: the system fields a record
//! needs ([`PROSPECT_SYSTEM_FIELDS`]: id, email, CRM links, assigned user,
//! deletion, stamps, last modifier) and the data fields of the connection's
//! field mapping, which become the record's `fields`.

use crmsync_connector::ConnectorError;
use crmsync_domain::mapping::FieldMap;
use crmsync_wire::pardot::PROSPECT_SYSTEM_FIELDS;
pub(crate) use crmsync_wire::pardot::prospect::{
    ASSIGNED_USER, CONTACT_ID, CREATED_AT, EMAIL, ID, IS_DELETED, LEAD_ID, UPDATED_AT, UPDATED_BY,
};

/// A field name as v5 takes it: the names travel in a comma-separated
/// `fields` parameter, so only API-name characters are let through.
pub(crate) fn check_field(field: &str) -> Result<(), ConnectorError> {
    let ok = !field.is_empty() && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok { Ok(()) } else { Err(ConnectorError::Fatal(format!("{field:?} is not an Account Engagement field name"))) }
}

/// The prospect fields one connection reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ProspectFields {
    /// Everything asked for, system fields first.
    select: Vec<String>,
    /// The mapped fields that go into a record's `fields`.
    data: Vec<String>,
}

impl Default for ProspectFields {
    /// The default field mapping.
    fn default() -> Self {
        ProspectFields::new(&FieldMap::default()).expect("the default mapping names valid fields")
    }
}

impl ProspectFields {
    /// The system fields and the MA side of `field_map`. The email is a
    /// system field and a data field both (the sandbox's records carry it
    /// in `fields` too); the other system fields are attributes only.
    pub fn new(field_map: &FieldMap) -> Result<Self, ConnectorError> {
        let mut select: Vec<String> = PROSPECT_SYSTEM_FIELDS.iter().map(|f| (*f).to_owned()).collect();
        let mut data = Vec::new();
        for m in field_map.iter() {
            check_field(&m.ma)?;
            let attribute = PROSPECT_SYSTEM_FIELDS.contains(&m.ma.as_str()) && m.ma != EMAIL;
            if attribute || data.contains(&m.ma) {
                continue;
            }
            data.push(m.ma.clone());
            if !select.contains(&m.ma) {
                select.push(m.ma.clone());
            }
        }
        Ok(ProspectFields { select, data })
    }

    /// The `fields` parameter of reads and queries.
    pub(crate) fn param(&self) -> String {
        self.select.join(",")
    }

    pub(crate) fn data(&self) -> &[String] {
        &self.data
    }
}

/// The `fields` parameter of a feed's pending check: position only.
pub(crate) fn position_param() -> String {
    format!("{ID},{UPDATED_AT}")
}

#[cfg(test)]
mod tests {
    use crmsync_domain::mapping::{FieldMapping, SyncBehaviour};

    use super::*;

    #[test]
    fn system_fields_then_the_mapped_ones_once() {
        let f = ProspectFields::default();
        let param = f.param();
        assert!(
            param.starts_with("id,email,salesforceLeadId,salesforceContactId,assignedUserId,isDeleted,createdAt,updatedAt,updatedById,")
        );
        assert_eq!(param.matches("email").count(), 1, "{param}");
        assert!(param.ends_with(",grade"), "{param}");
        assert_eq!(
            f.data(),
            ["firstName", "lastName", "email", "company", "jobTitle", "phone", "city", "country", "optedOut", "score", "grade"]
        );
    }

    #[test]
    fn names_that_could_break_the_parameter_are_refused() {
        let bad = FieldMapping {
            ma: "city,password".into(),
            lead: Some("Status".into()),
            contact: None,
            sync: SyncBehaviour::MostRecent,
            blank_overwrites: false,
            source: None,
        };
        let mut fields: Vec<FieldMapping> = FieldMap::default().iter().cloned().collect();
        fields.push(bad);
        let map = FieldMap::new(fields).unwrap();
        assert!(ProspectFields::new(&map).is_err());
        assert!(check_field("crmsync_fence__c").is_ok());
    }
}
