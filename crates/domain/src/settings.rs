//! Per-connection settings: creation rules, lane threshold, batch budget,
//! field mapping, and which systems the connection talks to.
//!
//! Stored as JSON in PostgreSQL (`connections.settings`) so that every replica
//! of every tier reads the same values, and changed at run time with
//! `crmsync connection set`. Missing keys take the documented defaults, unknown
//! keys are refused.

use serde::{Deserialize, Serialize};

use crate::csql::{CsqlRecordType, CsqlSettings, CsqlSyncUser, CsqlTarget};
use crate::mapping::FieldMap;
use crate::mirror::{CustomObject, CustomObjectError};
use crate::scope::SyncScope;
use crate::{CrmObject, Timestamp};

/// The default lane threshold (R7): more changes than this in one pass go to
/// the batch lane.
pub const DEFAULT_BATCH_THRESHOLD: usize = 400;
/// The default batch budget (R7): 12,000 records per hour per connection.
pub const DEFAULT_BATCH_BUDGET_PER_HOUR: u32 = 12_000;
/// The default burst of the batch lane: a handful of records, never an
/// hour's worth (1.5 s of the default budget).
pub const DEFAULT_BATCH_BURST: u32 = 5;
/// What a lead's required fields get when the prospect it is created from has
/// no value for them: Account Engagement's own connector writes this
/// placeholder, so that a prospect from a form without a company still
/// becomes a lead.
pub const DEFAULT_LEAD_PLACEHOLDER: &str = "[[unknown]]";
/// The CRM lead fields a create cannot leave blank (Salesforce refuses it
/// with `REQUIRED_FIELD_MISSING`), by API name.
pub const REQUIRED_LEAD_FIELDS: &[&str] = &["LastName", "Company"];

pub use crate::endpoint::SystemEndpoint;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// A new CRM lead or contact with an email creates a prospect (R3).
    pub auto_create_prospects: bool,
    /// When `auto_create_prospects` was last turned on: only records created
    /// after it are auto-created (the setting is not retroactive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_create_prospects_since: Option<Timestamp>,
    pub batch_threshold: usize,
    pub batch_budget_per_hour: u32,
    /// Batch-lane records that may be processed at once before pacing
    /// applies: the budget's only burst.
    pub batch_burst: u32,
    /// Written into a new lead's required fields (`REQUIRED_LEAD_FIELDS`)
    /// that the prospect leaves blank; `None` writes nothing, and the CRM
    /// refuses such a create (a sync error). Stored as `null` when off, so
    /// that "off" is not mistaken for "missing, take the default".
    pub lead_placeholder: Option<String>,
    pub field_map: FieldMap,
    /// Which CRM records sync at all; empty (the default): every record.
    #[serde(skip_serializing_if = "SyncScope::is_empty")]
    pub sync_scope: SyncScope,
    /// The customer-success platform, if the connection has one (R9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cs: Option<SystemEndpoint>,
    /// How CSQLs sync (R9).
    pub csql: CsqlSettings,
    /// CRM custom objects mirrored read-only into the MA (R6).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_objects: Vec<CustomObject>,
    pub ma: SystemEndpoint,
    pub crm: SystemEndpoint,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            auto_create_prospects: false,
            auto_create_prospects_since: None,
            batch_threshold: DEFAULT_BATCH_THRESHOLD,
            batch_budget_per_hour: DEFAULT_BATCH_BUDGET_PER_HOUR,
            batch_burst: DEFAULT_BATCH_BURST,
            lead_placeholder: Some(DEFAULT_LEAD_PLACEHOLDER.to_owned()),
            field_map: FieldMap::default(),
            sync_scope: SyncScope::default(),
            custom_objects: Vec::new(),
            cs: None,
            csql: CsqlSettings::default(),
            ma: SystemEndpoint::default(),
            crm: SystemEndpoint::default(),
        }
    }
}

/// Why a setting could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("unknown setting {0:?}; settable: {keys}", keys = settable())]
    Unknown(String),
    #[error("setting {key:?} needs {expected}, got {value:?}")]
    Invalid { key: String, value: String, expected: &'static str },
    #[error("setting {key:?}: not an endpoint: {reason}")]
    Endpoint { key: String, reason: String },
}

/// Every setting `crmsync connection set` can change, with what it takes.
/// The one list: the command's help, its refusals and
/// [`ConnectionSettings::set`] (which refuses a key not here) all read it.
pub const KEYS: &[(&str, &str)] = &[
    ("auto_create_prospects", "true or false: a new CRM lead or contact with an email creates a prospect (R3); not retroactive"),
    ("batch_threshold", "a whole number: a pass with more changes than this sends them to the batch lane (R7); 400 by default"),
    ("batch_budget_per_hour", "a positive whole number: batch-lane records an hour (R7); 12000 by default"),
    ("batch_burst", "1 to 10000: batch-lane records at once before the budget paces them; 5 by default"),
    (
        "lead_placeholder",
        "text, or off: what a new lead's required fields (LastName, Company) get when the prospect has none; [[unknown]] by default",
    ),
    ("cs", "the CS platform: a sandbox CS tenant's name, its endpoint as JSON, or none"),
    ("csql.target", "cs or crm: where CSQLs go (R9); refused while the CS object in use holds records"),
    ("csql.record_type", "lead or opportunity: what a CSQL becomes; says what changes with it and needs --yes"),
    ("csql.sync_user", "logged_in or integration: whom CSQLs are written as in the CRM"),
    ("ma", "the MA: a sandbox tenant's name, or an endpoint as JSON (kind sandbox or account_engagement)"),
    ("crm", "the CRM: a sandbox tenant's name, or an endpoint as JSON (kind sandbox or salesforce)"),
];

/// The settable keys, comma-separated.
pub fn settable() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

impl ConnectionSettings {
    /// Changes one setting from its textual form. Turning
    /// `auto_create_prospects` on stamps the time, so that it is not retroactive.
    pub fn set(&mut self, key: &str, value: &str, now: Timestamp) -> Result<(), SettingError> {
        if !KEYS.iter().any(|(k, _)| *k == key) {
            return Err(SettingError::Unknown(key.to_owned()));
        }
        let invalid = |expected| SettingError::Invalid { key: key.to_owned(), value: value.to_owned(), expected };
        match key {
            "auto_create_prospects" => {
                let on = match value.to_ascii_lowercase().as_str() {
                    "true" | "on" | "yes" | "1" => true,
                    "false" | "off" | "no" | "0" => false,
                    _ => return Err(invalid("true or false")),
                };
                if on && !self.auto_create_prospects {
                    self.auto_create_prospects_since = Some(now);
                }
                self.auto_create_prospects = on;
            }
            "batch_threshold" => self.batch_threshold = value.parse().map_err(|_| invalid("a whole number"))?,
            "batch_budget_per_hour" => {
                self.batch_budget_per_hour = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| invalid("a positive whole number"))?;
            }
            // The CSQL options' values; their guards need the CS platform and
            // are checked by whoever changes them (`crmsync connection set`).
            "csql.target" => self.csql.target = CsqlTarget::parse(value).ok_or_else(|| invalid("cs or crm"))?,
            "csql.record_type" => self.csql.record_type = CsqlRecordType::parse(value).ok_or_else(|| invalid("lead or opportunity"))?,
            "csql.sync_user" => self.csql.sync_user = CsqlSyncUser::parse(value).ok_or_else(|| invalid("logged_in or integration"))?,
            // The CS platform: a sandbox tenant's name, or its endpoint as
            // JSON (`{"kind": "sandbox", "tenant": ..., "crm_org": ...}`).
            "cs" => {
                self.cs = match value.trim() {
                    "" | "none" => None,
                    json if json.starts_with('{') => {
                        let endpoint = serde_json::from_str(json)
                            .map_err(|e| SettingError::Endpoint { key: key.to_owned(), reason: e.to_string() })?;
                        if !matches!(endpoint, SystemEndpoint::Sandbox { .. }) {
                            return Err(invalid("a sandbox tenant"));
                        }
                        Some(endpoint)
                    }
                    tenant => Some(SystemEndpoint::sandbox(tenant)),
                }
            }
            // A system's endpoint: a sandbox tenant's name, or the endpoint
            // as JSON (`{"kind": "salesforce", ...}`).
            "ma" | "crm" => {
                let endpoint = if value.trim_start().starts_with('{') {
                    serde_json::from_str(value).map_err(|e| SettingError::Endpoint { key: key.to_owned(), reason: e.to_string() })?
                } else {
                    SystemEndpoint::sandbox(value)
                };
                let expected = if key == "ma" { "sandbox or account_engagement" } else { "sandbox or salesforce" };
                match (&endpoint, key) {
                    (SystemEndpoint::Sandbox { .. }, _)
                    | (SystemEndpoint::AccountEngagement(_), "ma")
                    | (SystemEndpoint::Salesforce(_), "crm") => {}
                    _ => return Err(invalid(expected)),
                }
                if key == "ma" {
                    self.ma = endpoint;
                } else {
                    self.crm = endpoint;
                }
            }
            // A placeholder is a value a user would not type by chance:
            // blank is refused, as it would fill nothing.
            "lead_placeholder" => {
                self.lead_placeholder = match value.trim() {
                    "off" | "none" => None,
                    "" => return Err(invalid("a placeholder text, or off")),
                    text => Some(text.to_owned()),
                };
            }
            "batch_burst" => {
                self.batch_burst =
                    value.parse().ok().filter(|n| (1..=10_000).contains(n)).ok_or_else(|| invalid("a whole number from 1 to 10000"))?;
            }
            // In KEYS, and not handled above: a key listed before its code.
            _ => return Err(SettingError::Unknown(key.to_owned())),
        }
        Ok(())
    }

    /// Declares (or redeclares) a custom object to mirror.
    pub fn declare_custom_object(&mut self, declaration: CustomObject) -> Result<(), CustomObjectError> {
        declaration.validate()?;
        self.custom_objects.retain(|c| c.name != declaration.name);
        self.custom_objects.push(declaration);
        Ok(())
    }

    pub fn custom_object(&self, name: &str) -> Option<&CustomObject> {
        self.custom_objects.iter().find(|c| c.name == name)
    }

    /// Whether the engine keeps any mirror tied to a lead or contact of this
    /// kind (R4-R6): a contact's account and opportunities, and custom
    /// records that look the object up. A lead has no account or contact
    /// roles, so its link changes reconcile nothing unless a custom object
    /// points at leads.
    pub fn person_has_mirrors(&self, object: Option<CrmObject>) -> bool {
        self.ma.engine_keeps_mirrors()
            && (object == Some(CrmObject::Contact) || self.custom_objects.iter().any(|c| Some(c.lookup_object) == object))
    }

    /// Whether a CRM record created at `created_at` may create a prospect (R3).
    pub fn may_auto_create(&self, created_at: Timestamp) -> bool {
        self.auto_create_prospects && self.auto_create_prospects_since.is_none_or(|since| created_at >= since)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::*;

    #[test]
    fn defaults_follow_the_documented_values() {
        let s = ConnectionSettings::default();
        assert!(!s.auto_create_prospects);
        assert_eq!(s.batch_threshold, 400);
        assert_eq!(s.batch_budget_per_hour, 12_000);
    }

    #[test]
    fn only_contacts_and_looked_up_objects_have_person_mirrors() {
        let mut s = ConnectionSettings::default();
        assert!(s.person_has_mirrors(Some(CrmObject::Contact)), "account and opportunities");
        assert!(!s.person_has_mirrors(Some(CrmObject::Lead)));
        assert!(!s.person_has_mirrors(None));
        s.declare_custom_object(CustomObject {
            name: "Visit__c".into(),
            fields: vec!["Name".into()],
            lookup_field: "Lead__c".into(),
            lookup_object: CrmObject::Lead,
        })
        .unwrap();
        assert!(s.person_has_mirrors(Some(CrmObject::Lead)), "a custom object looks leads up");
    }

    #[test]
    fn auto_create_is_not_retroactive() {
        let now = Utc::now();
        let mut s = ConnectionSettings::default();
        assert!(!s.may_auto_create(now));
        s.set("auto_create_prospects", "true", now).unwrap();
        assert!(!s.may_auto_create(now - Duration::seconds(1)), "a record created before the switch");
        assert!(s.may_auto_create(now + Duration::seconds(1)));
        // Setting it on again does not move the switch time.
        s.set("auto_create_prospects", "on", now + Duration::hours(1)).unwrap();
        assert!(s.may_auto_create(now + Duration::seconds(1)));
    }

    #[test]
    fn the_lead_placeholder_is_on_by_default_and_stays_off_once_turned_off() {
        let mut s = ConnectionSettings::default();
        assert_eq!(s.lead_placeholder.as_deref(), Some("[[unknown]]"));
        s.set("lead_placeholder", "off", Utc::now()).unwrap();
        assert_eq!(s.lead_placeholder, None);
        // Stored and read back: off is not "missing, take the default".
        let round: ConnectionSettings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(round.lead_placeholder, None);
        s.set("lead_placeholder", "n/a", Utc::now()).unwrap();
        assert_eq!(s.lead_placeholder.as_deref(), Some("n/a"));
        assert!(s.set("lead_placeholder", " ", Utc::now()).is_err());
        // Settings stored before the key existed take the default.
        let old: ConnectionSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(old.lead_placeholder.as_deref(), Some("[[unknown]]"));
    }

    #[test]
    fn unknown_or_invalid_settings_are_refused_with_a_reason() {
        let mut s = ConnectionSettings::default();
        let now = Utc::now();
        assert!(matches!(s.set("colour", "red", now), Err(SettingError::Unknown(_))));
        let e = s.set("batch_threshold", "many", now).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        assert!(s.set("batch_budget_per_hour", "0", now).is_err());
    }

    /// A valid value for each key, so that every listed key is exercised.
    fn example(key: &str) -> &'static str {
        match key {
            "auto_create_prospects" => "true",
            "batch_threshold" => "250",
            "batch_budget_per_hour" => "36000",
            "batch_burst" => "10",
            "lead_placeholder" => "n/a",
            "cs" => "default",
            "csql.target" => "crm",
            "csql.record_type" => "opportunity",
            "csql.sync_user" => "integration",
            "ma" | "crm" => "other-tenant",
            other => panic!("no example value for setting {other:?}: add one here"),
        }
    }

    #[test]
    fn every_listed_key_is_settable_and_the_refusal_lists_them_all() {
        for (key, help) in KEYS {
            assert!(!help.is_empty(), "{key} says what it takes");
            let mut s = ConnectionSettings::default();
            s.set(key, example(key), Utc::now()).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_ne!(s, ConnectionSettings::default(), "setting {key} changed something");
        }
        let refusal = ConnectionSettings::default().set("colour", "red", Utc::now()).unwrap_err().to_string();
        for (key, _) in KEYS {
            assert!(refusal.contains(key), "{refusal} names {key}");
        }
    }

    #[test]
    fn stored_settings_with_missing_keys_take_defaults_and_unknown_keys_fail() {
        let s: ConnectionSettings = serde_json::from_str(r#"{"auto_create_prospects": true}"#).unwrap();
        assert_eq!(s.batch_threshold, 400);
        assert!(serde_json::from_str::<ConnectionSettings>(r#"{"auto_create": true}"#).is_err());
        let round: ConnectionSettings = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(round, s);
    }
}
