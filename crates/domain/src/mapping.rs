//! The field mapping of a connection: MA field ↔ CRM field ↔ sync behaviour (R2).
//!
//! The MA field name is the canonical key of a mapped field everywhere in the
//! engine (per-field versions, apply commands, audit). A CRM lead and a CRM
//! contact may map the same MA field to different CRM fields (`City` on a lead,
//! `MailingCity` on a contact), or not at all (a contact has no `Company`).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::ids::CrmObject;
use crate::merge::Side;

/// How a mapped field is kept in sync (Account Engagement's sync behaviours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncBehaviour {
    /// The CRM value wins; an MA value only fills a blank CRM field.
    CrmWins,
    /// The MA value wins; a CRM value only fills a blank MA field.
    MaWins,
    /// The value changed last wins, judged by per-field change times.
    MostRecent,
    /// One direction only, from `source` to the other side. Edits on the other
    /// side are ignored (never sent) and overwritten by the next source change.
    ReadOnly,
}

impl SyncBehaviour {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncBehaviour::CrmWins => "crm_wins",
            SyncBehaviour::MaWins => "ma_wins",
            SyncBehaviour::MostRecent => "most_recent",
            SyncBehaviour::ReadOnly => "read_only",
        }
    }
}

/// One mapped field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// MA (prospect) field name; the canonical key of the field.
    pub ma: String,
    /// CRM lead field, if leads carry this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead: Option<String>,
    /// CRM contact field, if contacts carry this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    pub sync: SyncBehaviour,
    /// A blank value may erase a filled one. Off by default: blanks never erase.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blank_overwrites: bool,
    /// For `read_only`: the side the value comes from (default: the CRM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Side>,
}

impl FieldMapping {
    pub fn new(ma: &str, lead: Option<&str>, contact: Option<&str>, sync: SyncBehaviour) -> Self {
        FieldMapping {
            ma: ma.to_owned(),
            lead: lead.map(str::to_owned),
            contact: contact.map(str::to_owned),
            sync,
            blank_overwrites: false,
            source: None,
        }
    }

    /// The CRM field for the given CRM object, if mapped there.
    pub fn crm_field(&self, object: CrmObject) -> Option<&str> {
        match object {
            CrmObject::Lead => self.lead.as_deref(),
            CrmObject::Contact => self.contact.as_deref(),
            _ => None,
        }
    }

    /// The side a `read_only` field flows from.
    pub fn read_only_source(&self) -> Side {
        self.source.unwrap_or(Side::Crm)
    }

    /// Whether edits made on `side` take part in the sync at all. For a
    /// read-only field, edits on the non-source side are ignored.
    pub fn accepts_edits_from(&self, side: Side) -> bool {
        self.sync != SyncBehaviour::ReadOnly || self.read_only_source() == side
    }
}

/// Why a mapping cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("MA field {0:?} is mapped twice")]
    DuplicateMaField(String),
    #[error("CRM {0} field {1:?} is mapped twice")]
    DuplicateCrmField(CrmObject, String),
    #[error("MA field {0:?} maps to no CRM field on leads or contacts")]
    Unmapped(String),
    #[error("MA field {0:?} sets `source` but is not read_only")]
    SourceWithoutReadOnly(String),
    #[error("the mapping must include the email field")]
    NoEmail,
}

/// The field mapping of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FieldMap {
    fields: Vec<FieldMapping>,
}

/// The MA field that holds the email address (also an identity key).
pub const EMAIL_FIELD: &str = "email";

impl Default for FieldMap {
    /// The default set: name, company, title, phone, address, email, opt-out,
    /// score and grade, with the behaviours Account Engagement ships with.
    fn default() -> Self {
        use SyncBehaviour::*;
        let mut fields = vec![
            FieldMapping::new("firstName", Some("FirstName"), Some("FirstName"), MostRecent),
            FieldMapping::new("lastName", Some("LastName"), Some("LastName"), MostRecent),
            FieldMapping::new(EMAIL_FIELD, Some("Email"), Some("Email"), MostRecent),
            FieldMapping::new("company", Some("Company"), None, CrmWins),
            FieldMapping::new("jobTitle", Some("Title"), Some("Title"), MostRecent),
            FieldMapping::new("phone", Some("Phone"), Some("Phone"), CrmWins),
            FieldMapping::new("city", Some("City"), Some("MailingCity"), MostRecent),
            FieldMapping::new("country", Some("Country"), Some("MailingCountry"), MostRecent),
            FieldMapping::new("optedOut", Some("HasOptedOutOfEmail"), Some("HasOptedOutOfEmail"), MostRecent),
            FieldMapping::new("score", Some("pi__score__c"), Some("pi__score__c"), ReadOnly),
            FieldMapping::new("grade", Some("pi__grade__c"), Some("pi__grade__c"), ReadOnly),
        ];
        // Score and grade are computed by the MA and only shown in the CRM.
        for f in fields.iter_mut().filter(|f| f.sync == ReadOnly) {
            f.source = Some(Side::Ma);
        }
        FieldMap { fields }
    }
}

impl FieldMap {
    /// Builds and validates a mapping.
    pub fn new(fields: Vec<FieldMapping>) -> Result<Self, MappingError> {
        let map = FieldMap { fields };
        map.validate()?;
        Ok(map)
    }

    pub fn validate(&self) -> Result<(), MappingError> {
        let mut ma = HashSet::new();
        let mut crm = HashSet::new();
        for f in &self.fields {
            if !ma.insert(f.ma.as_str()) {
                return Err(MappingError::DuplicateMaField(f.ma.clone()));
            }
            if f.lead.is_none() && f.contact.is_none() {
                return Err(MappingError::Unmapped(f.ma.clone()));
            }
            if f.source.is_some() && f.sync != SyncBehaviour::ReadOnly {
                return Err(MappingError::SourceWithoutReadOnly(f.ma.clone()));
            }
            for object in [CrmObject::Lead, CrmObject::Contact] {
                if let Some(c) = f.crm_field(object)
                    && !crm.insert((object, c))
                {
                    return Err(MappingError::DuplicateCrmField(object, c.to_owned()));
                }
            }
        }
        if !ma.contains(EMAIL_FIELD) {
            return Err(MappingError::NoEmail);
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldMapping> {
        self.fields.iter()
    }

    pub fn by_ma_field(&self, name: &str) -> Option<&FieldMapping> {
        self.fields.iter().find(|f| f.ma == name)
    }

    pub fn by_crm_field(&self, object: CrmObject, name: &str) -> Option<&FieldMapping> {
        self.fields.iter().find(|f| f.crm_field(object) == Some(name))
    }

    /// The MA-side and CRM-side field names of one CRM object, in mapping order.
    pub fn for_object(&self, object: CrmObject) -> impl Iterator<Item = (&FieldMapping, &str)> {
        self.fields.iter().filter_map(move |f| f.crm_field(object).map(|c| (f, c)))
    }
}

/// One change to a field mapping, as an admin makes it (`crmsync connection
/// mapping`, the console's mapping page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "edit", rename_all = "snake_case", deny_unknown_fields)]
pub enum MappingEdit {
    /// A new mapped field.
    Add(FieldMapping),
    /// A mapped field's behaviour: `sync`, `blank_overwrites` and, for
    /// `read_only`, `source`.
    Set {
        ma: String,
        sync: SyncBehaviour,
        #[serde(default)]
        blank_overwrites: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<Side>,
    },
    /// A mapped field no longer synced.
    Remove { ma: String },
}

impl MappingEdit {
    /// The MA field the edit is about.
    pub fn field(&self) -> &str {
        match self {
            MappingEdit::Add(f) => &f.ma,
            MappingEdit::Set { ma, .. } | MappingEdit::Remove { ma } => ma,
        }
    }

    /// What the admin audit log calls it.
    pub fn action(&self) -> &'static str {
        match self {
            MappingEdit::Add(_) => "mapping.add",
            MappingEdit::Set { .. } => "mapping.set",
            MappingEdit::Remove { .. } => "mapping.remove",
        }
    }
}

/// Why an edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("MA field {0:?} is not mapped")]
    NotMapped(String),
    #[error("MA field {0:?} is already mapped; change its behaviour instead")]
    AlreadyMapped(String),
    #[error("the email field cannot be removed: it is how a prospect and its CRM record are matched (R1)")]
    RemovingEmail,
    #[error(transparent)]
    Invalid(#[from] MappingError),
}

impl FieldMap {
    /// The mapping with `edit` made, validated. The email mapping stays: it
    /// is an identity key, not only a field.
    pub fn edited(&self, edit: &MappingEdit) -> Result<FieldMap, EditError> {
        let mut fields = self.fields.clone();
        match edit {
            MappingEdit::Add(f) => {
                if self.by_ma_field(&f.ma).is_some() {
                    return Err(EditError::AlreadyMapped(f.ma.clone()));
                }
                fields.push(f.clone());
            }
            MappingEdit::Set { ma, sync, blank_overwrites, source } => {
                let f = fields.iter_mut().find(|f| f.ma == *ma).ok_or_else(|| EditError::NotMapped(ma.clone()))?;
                f.sync = *sync;
                f.blank_overwrites = *blank_overwrites;
                // A read-only field flows from the CRM unless told otherwise;
                // other behaviours have no source.
                f.source = if *sync == SyncBehaviour::ReadOnly { Some(source.unwrap_or(Side::Crm)) } else { *source };
            }
            MappingEdit::Remove { ma } => {
                if ma == EMAIL_FIELD {
                    return Err(EditError::RemovingEmail);
                }
                let before = fields.len();
                fields.retain(|f| f.ma != *ma);
                if fields.len() == before {
                    return Err(EditError::NotMapped(ma.clone()));
                }
            }
        }
        Ok(FieldMap::new(fields)?)
    }

    /// The mappings that differ between `self` and `other` (added, removed
    /// or changed), by MA field name.
    pub fn changed_fields(&self, other: &FieldMap) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in self.iter().chain(other.iter()) {
            if self.by_ma_field(&f.ma) != other.by_ma_field(&f.ma) && !out.contains(&f.ma) {
                out.push(f.ma.clone());
            }
        }
        out
    }
}

impl SyncBehaviour {
    pub fn parse(s: &str) -> Option<SyncBehaviour> {
        Some(match s.trim() {
            "crm_wins" => SyncBehaviour::CrmWins,
            "ma_wins" => SyncBehaviour::MaWins,
            "most_recent" => SyncBehaviour::MostRecent,
            "read_only" => SyncBehaviour::ReadOnly,
            _ => return None,
        })
    }

    pub const ALL: [SyncBehaviour; 4] = [SyncBehaviour::CrmWins, SyncBehaviour::MaWins, SyncBehaviour::MostRecent, SyncBehaviour::ReadOnly];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mapping_is_valid_and_covers_the_documented_fields() {
        let map = FieldMap::default();
        map.validate().unwrap();
        for f in ["firstName", "lastName", "email", "company", "jobTitle", "phone", "city", "country", "optedOut", "score", "grade"] {
            assert!(map.by_ma_field(f).is_some(), "{f}");
        }
        assert_eq!(map.by_crm_field(CrmObject::Contact, "MailingCity").unwrap().ma, "city");
        assert_eq!(map.by_crm_field(CrmObject::Lead, "City").unwrap().ma, "city");
        assert!(map.by_ma_field("company").unwrap().crm_field(CrmObject::Contact).is_none());
    }

    #[test]
    fn score_flows_from_the_ma_only() {
        let map = FieldMap::default();
        let score = map.by_ma_field("score").unwrap();
        assert_eq!(score.sync, SyncBehaviour::ReadOnly);
        assert!(score.accepts_edits_from(Side::Ma));
        assert!(!score.accepts_edits_from(Side::Crm));
    }

    #[test]
    fn invalid_mappings_are_refused() {
        let mut fields: Vec<FieldMapping> = FieldMap::default().iter().cloned().collect();
        fields.push(fields[0].clone());
        assert!(matches!(FieldMap::new(fields), Err(MappingError::DuplicateMaField(_))));

        let fields: Vec<FieldMapping> = FieldMap::default().iter().filter(|f| f.ma != EMAIL_FIELD).cloned().collect();
        assert_eq!(FieldMap::new(fields), Err(MappingError::NoEmail));

        let mut fields: Vec<FieldMapping> = FieldMap::default().iter().cloned().collect();
        fields[0].source = Some(Side::Ma);
        assert!(matches!(FieldMap::new(fields), Err(MappingError::SourceWithoutReadOnly(_))));
    }

    #[test]
    fn mappings_read_from_json_reject_unknown_keys() {
        let ok = r#"[{"ma":"email","lead":"Email","contact":"Email","sync":"most_recent"}]"#;
        assert!(serde_json::from_str::<FieldMap>(ok).is_ok());
        let bad = r#"[{"ma":"email","lead":"Email","sync":"most_recent","colour":"red"}]"#;
        assert!(serde_json::from_str::<FieldMap>(bad).is_err());
    }

    #[test]
    fn a_behaviour_change_keeps_everything_else_and_read_only_gets_a_source() {
        let map = FieldMap::default();
        let edit = MappingEdit::Set { ma: "city".into(), sync: SyncBehaviour::MaWins, blank_overwrites: true, source: None };
        let after = map.edited(&edit).unwrap();
        let city = after.by_ma_field("city").unwrap();
        assert_eq!((city.sync, city.blank_overwrites, city.source), (SyncBehaviour::MaWins, true, None));
        assert_eq!(city.contact.as_deref(), Some("MailingCity"));
        assert_eq!(map.changed_fields(&after), vec!["city".to_owned()]);
        let ro = MappingEdit::Set { ma: "city".into(), sync: SyncBehaviour::ReadOnly, blank_overwrites: false, source: None };
        assert_eq!(map.edited(&ro).unwrap().by_ma_field("city").unwrap().read_only_source(), Side::Crm);
        let bad = MappingEdit::Set { ma: "city".into(), sync: SyncBehaviour::MaWins, blank_overwrites: false, source: Some(Side::Ma) };
        assert!(matches!(map.edited(&bad), Err(EditError::Invalid(MappingError::SourceWithoutReadOnly(_)))));
        let none = MappingEdit::Set { ma: "nope".into(), sync: SyncBehaviour::MaWins, blank_overwrites: false, source: None };
        assert_eq!(map.edited(&none), Err(EditError::NotMapped("nope".into())));
    }

    #[test]
    fn adding_and_removing_a_field_is_validated() {
        let map = FieldMap::default();
        let lang = FieldMapping::new("Preferred_Language__c", Some("Preferred_Language__c"), None, SyncBehaviour::MostRecent);
        let after = map.edited(&MappingEdit::Add(lang.clone())).unwrap();
        assert_eq!(after.by_crm_field(CrmObject::Lead, "Preferred_Language__c").unwrap().ma, "Preferred_Language__c");
        assert_eq!(after.edited(&MappingEdit::Add(lang)), Err(EditError::AlreadyMapped("Preferred_Language__c".into())));
        let back = after.edited(&MappingEdit::Remove { ma: "Preferred_Language__c".into() }).unwrap();
        assert_eq!(back, map);
        // A CRM field already mapped to another MA field is refused.
        let dup = FieldMapping::new("title2", Some("Title"), None, SyncBehaviour::MostRecent);
        assert!(matches!(map.edited(&MappingEdit::Add(dup)), Err(EditError::Invalid(MappingError::DuplicateCrmField(..)))));
        let nowhere = FieldMapping::new("x", None, None, SyncBehaviour::MostRecent);
        assert!(matches!(map.edited(&MappingEdit::Add(nowhere)), Err(EditError::Invalid(MappingError::Unmapped(_)))));
        assert_eq!(map.edited(&MappingEdit::Remove { ma: EMAIL_FIELD.into() }), Err(EditError::RemovingEmail));
        assert_eq!(map.edited(&MappingEdit::Remove { ma: "nope".into() }), Err(EditError::NotMapped("nope".into())));
    }

    #[test]
    fn edits_read_from_json_reject_unknown_keys() {
        let e: MappingEdit = serde_json::from_str(r#"{"edit":"set","ma":"city","sync":"ma_wins"}"#).unwrap();
        assert_eq!(e.field(), "city");
        assert!(serde_json::from_str::<MappingEdit>(r#"{"edit":"remove","ma":"city","colour":1}"#).is_err());
    }
}
