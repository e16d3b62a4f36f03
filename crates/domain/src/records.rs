//! The records connectors return, as they come from the source systems.
//!
//! These are deliberately *unvalidated*: ids and emails are raw strings, the way
//! the APIs return them (15- or 18-character ids, emails in any case, malformed
//! rows included). The matcher parses them into typed values and turns what
//! does not parse into named sync errors; the producer only detects and ships.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Timestamp;
use crate::csql::CsqlRecord;
use crate::ids::CrmObject;
use crate::mapping::FieldMap;
use crate::merge::{Observation, Side};
use crate::mirror::CrmObjectRecord;

/// A field as a record holds it, with when and by whom it last changed when the
/// system can tell (the sandbox tracks both per field; an API that only has a
/// record-level stamp leaves them empty and the record's stamp is used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    #[serde(rename = "v")]
    pub value: Value,
    #[serde(default, with = "crate::time::option", skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl FieldValue {
    pub fn new(value: Value) -> Self {
        FieldValue { value, at: None, by: None }
    }
}

/// Field name (as the system's API spells it) → value.
pub type Fields = BTreeMap<String, FieldValue>;

/// The MA user a prospect is assigned to, with that user's CRM user if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedUser {
    pub id: i64,
    /// Raw CRM user id (15 or 18 characters), if the MA user has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_user_id: Option<String>,
}

/// A prospect in the MA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProspectRecord {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The CRM lead this prospect is tied to, as stored in the MA (raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_lead_fid: Option<String>,
    /// The CRM contact this prospect is tied to, as stored in the MA (raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_contact_fid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_user: Option<AssignedUser>,
    #[serde(default)]
    pub is_deleted: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_by: Option<String>,
    pub fields: Fields,
}

impl ProspectRecord {
    /// The CRM id the prospect points at: a contact wins over a lead, as in the
    /// MA itself (a converted lead's prospect shows its contact).
    pub fn crm_fid(&self) -> Option<&str> {
        self.crm_contact_fid.as_deref().filter(|s| !s.trim().is_empty()).or(self.crm_lead_fid.as_deref().filter(|s| !s.trim().is_empty()))
    }
}

/// A CRM lead or contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmPersonRecord {
    /// Raw id as the API returned it.
    pub id: String,
    pub object: CrmObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// crmsync's external id, set on records the engine created (idempotent creates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default)]
    pub is_deleted: bool,
    #[serde(default)]
    pub is_converted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_contact_id: Option<String>,
    pub created_at: Timestamp,
    pub system_modstamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_by: Option<String>,
    pub fields: Fields,
}

/// A detected change: the record's state at detection time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "system", rename_all = "snake_case")]
pub enum SourceRecord {
    Prospect(ProspectRecord),
    Crm(CrmPersonRecord),
    /// An account, opportunity, contact role or custom object record, which
    /// the MA mirrors read-only.
    Mirror(CrmObjectRecord),
    /// A CSQL saved in the CS platform (R9).
    Csql(CsqlRecord),
}

impl SourceRecord {
    pub fn side(&self) -> Side {
        match self {
            SourceRecord::Prospect(_) => Side::Ma,
            SourceRecord::Crm(_) | SourceRecord::Mirror(_) => Side::Crm,
            // A CSQL is not a person of either side; it merges nothing, so
            // the side only matters where a record is named (see `system`).
            SourceRecord::Csql(_) => Side::Ma,
        }
    }

    /// The system the record comes from, as the audit log names it.
    pub fn system(&self) -> &'static str {
        match self {
            SourceRecord::Csql(_) => "cs",
            other => other.side().as_str(),
        }
    }

    /// Whether the source stamps each field with when and by whom it last
    /// changed (the sandbox does; the real APIs only stamp the record).
    pub fn has_field_stamps(&self) -> bool {
        self.fields_and_stamp().0.values().any(|f| f.at.is_some())
    }

    /// The object name used in sync errors and the audit log.
    pub fn object(&self) -> &str {
        match self {
            SourceRecord::Prospect(_) => "prospect",
            SourceRecord::Crm(r) => r.object.as_str(),
            SourceRecord::Mirror(r) => r.object.name(),
            SourceRecord::Csql(r) => match r.record_type {
                crate::csql::CsqlRecordType::Lead => "csql_lead",
                crate::csql::CsqlRecordType::Opportunity => "csql_opportunity",
            },
        }
    }

    /// The record's id as the source spells it.
    pub fn record_id(&self) -> String {
        match self {
            SourceRecord::Prospect(p) => p.id.to_string(),
            SourceRecord::Crm(r) => r.id.clone(),
            SourceRecord::Mirror(r) => r.id.clone(),
            SourceRecord::Csql(r) => r.id.to_string(),
        }
    }

    fn fields_and_stamp(&self) -> (&Fields, Timestamp) {
        match self {
            SourceRecord::Prospect(p) => (&p.fields, p.updated_at),
            SourceRecord::Crm(r) => (&r.fields, r.system_modstamp),
            SourceRecord::Mirror(r) => (&r.fields, r.system_modstamp),
            SourceRecord::Csql(r) => (&r.fields, r.modstamp),
        }
    }

    /// The user edits this record carries, as observations keyed by MA field
    /// name. Fields last changed by `integration_user` (the engine's own
    /// writes) are not edits and are left out (I7); so are fields the mapping
    /// does not accept edits of from this side (read-only fields). A field
    /// without its own stamp (an API with record-level stamps only) is
    /// stamped with the record's and marked `coarse`: who changed it is
    /// unknown, so it is judged by its value instead.
    pub fn observations(&self, map: &FieldMap, integration_user: Option<&str>) -> Vec<Observation> {
        let side = self.side();
        let (fields, stamp) = self.fields_and_stamp();
        let by_integration = |f: &FieldValue| match (integration_user, &f.by) {
            (Some(me), Some(by)) => me == by,
            _ => false,
        };
        let named = |ma: &str, api: &str| -> Option<Observation> {
            let f = fields.get(api)?;
            if by_integration(f) {
                return None;
            }
            Some(Observation { field: ma.to_owned(), side, at: f.at.unwrap_or(stamp), value: f.value.clone(), coarse: f.at.is_none() })
        };
        match self {
            SourceRecord::Prospect(_) => map.iter().filter(|m| m.accepts_edits_from(side)).filter_map(|m| named(&m.ma, &m.ma)).collect(),
            SourceRecord::Crm(r) => {
                map.for_object(r.object).filter(|(m, _)| m.accepts_edits_from(side)).filter_map(|(m, api)| named(&m.ma, api)).collect()
            }
            // Mirrors are reconciled from the CRM, and CSQLs written to it
            // whole: neither is merged field by field.
            SourceRecord::Mirror(_) | SourceRecord::Csql(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
impl CrmPersonRecord {
    /// A live, unconverted lead stamped `at`, holding `fields` and nothing
    /// else: what the domain's tests start from.
    pub(crate) fn test_lead(id: &str, at: Timestamp, fields: Fields) -> CrmPersonRecord {
        CrmPersonRecord {
            id: id.into(),
            object: CrmObject::Lead,
            email: None,
            owner_id: None,
            external_id: None,
            is_deleted: false,
            is_converted: false,
            converted_contact_id: None,
            created_at: at,
            system_modstamp: at,
            last_modified_by: None,
            fields,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    fn lead(fields: Fields) -> SourceRecord {
        let lead = CrmPersonRecord::test_lead("00Q5g00000AbCdE", Utc::now(), fields);
        SourceRecord::Crm(CrmPersonRecord { email: Some("a@example.com".into()), ..lead })
    }

    #[test]
    fn crm_fields_become_observations_under_their_ma_names() {
        let mut fields = Fields::new();
        fields.insert("MailingCity".into(), FieldValue::new(json!("Osaka"))); // a contact field: not on leads
        fields.insert("City".into(), FieldValue::new(json!("Kyoto")));
        let obs = lead(fields).observations(&FieldMap::default(), None);
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].field, "city");
        assert_eq!(obs[0].value, json!("Kyoto"));
        assert_eq!(obs[0].side, Side::Crm);
    }

    #[test]
    fn the_engines_own_writes_are_not_observations() {
        let mut fields = Fields::new();
        fields.insert("City".into(), FieldValue { value: json!("Kyoto"), at: None, by: Some("005-integration".into()) });
        fields.insert("Title".into(), FieldValue { value: json!("CTO"), at: None, by: Some("005-jane".into()) });
        let obs = lead(fields).observations(&FieldMap::default(), Some("005-integration"));
        assert_eq!(obs.iter().map(|o| o.field.as_str()).collect::<Vec<_>>(), ["jobTitle"]);
    }

    #[test]
    fn read_only_fields_are_not_taken_from_the_wrong_side() {
        let mut fields = Fields::new();
        fields.insert("pi__score__c".into(), FieldValue::new(json!(99)));
        assert!(lead(fields).observations(&FieldMap::default(), None).is_empty());
    }

    #[test]
    fn a_contact_id_on_a_prospect_wins_over_a_lead_id() {
        let p = ProspectRecord {
            id: 1,
            email: None,
            crm_lead_fid: Some("00Q5g00000AbCdE".into()),
            crm_contact_fid: Some("0035g00000AbCdE".into()),
            assigned_user: None,
            is_deleted: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_modified_by: None,
            fields: Fields::new(),
        };
        assert_eq!(p.crm_fid(), Some("0035g00000AbCdE"));
    }
}
