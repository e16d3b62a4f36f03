//! A person row (prospect, lead, contact) read from `to_json(t)` text
//! straight into the columns its record is made of.
//!
//! Every record the tiers read from the sandbox (change feeds, lookups by id
//! and by email) used to become a `serde_json::Value` tree first: a map of
//! every column, and a map of maps for the per-field stamps, each key and
//! string allocated, then looked up and cloned again into the record. A
//! profile of a backfill put that tree (building, searching, dropping) at
//! the top of every tier. Here the keys are matched against the object's
//! known columns without allocating, the stamps' times are parsed as they
//! are read, and the values move into the record instead of being cloned.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use crmsync_domain::records::{FieldValue, Fields};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::schema::ObjectDef;
use crate::store::{Columns, is_attribute};

/// Columns a person record reads besides its object's writable fields.
const RECORD_COLUMNS: &[&str] = &[
    "id",
    "email",
    "owner_id",
    "crmsync_id",
    "is_deleted",
    "is_converted",
    "converted_contact_id",
    "created_at",
    "modstamp",
    "last_modified_by",
    "crm_lead_fid",
    "crm_contact_fid",
    "assigned_user_id",
];

/// A field's stamp: when it last changed and who changed it.
#[derive(Debug)]
struct Stamp {
    at: Option<DateTime<Utc>>,
    by: Option<String>,
}

/// The columns of one row that its record needs, by their static names.
#[derive(Debug)]
pub(crate) struct Row {
    def: &'static ObjectDef,
    values: Vec<(&'static str, Value)>,
    stamps: Vec<(&'static str, Stamp)>,
}

impl Row {
    /// Reads `text`, a row as `to_json` prints it, for object `def`.
    pub(crate) fn parse(def: &'static ObjectDef, text: &str) -> Result<Row, ConnectorError> {
        let mut de = serde_json::Deserializer::from_str(text);
        RowSeed(def)
            .deserialize(&mut de)
            .and_then(|row| de.end().map(|()| row))
            .map_err(|e| ConnectorError::Fatal(format!("unreadable sandbox {} row: {e}", def.name)))
    }

    /// The record's fields (API name → value, with per-field stamps), as
    /// [`crate::store::fields`] makes them from a whole row.
    pub(crate) fn into_fields(mut self) -> Fields {
        self.def
            .columns
            .iter()
            .filter(|c| !is_attribute(c.api))
            .map(|c| {
                let value = self.values.iter_mut().find(|(name, _)| *name == c.column).map_or(Value::Null, |(_, v)| v.take());
                let stamp = self.stamps.iter_mut().find(|(name, _)| *name == c.column).map(|(_, s)| s);
                let (at, by) = stamp.map_or((None, None), |s| (s.at, s.by.take()));
                (c.api.to_owned(), FieldValue { value, at, by })
            })
            .collect()
    }
}

impl Columns for Row {
    fn column(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(column, _)| *column == name).map(|(_, v)| v)
    }
}

/// The static name of a column `def` (or a person record) reads, if `key` is one.
fn known(def: &'static ObjectDef, key: &str) -> Option<&'static str> {
    def.columns.iter().map(|c| c.column).chain(RECORD_COLUMNS.iter().copied()).find(|name| *name == key)
}

/// Reads a key as the static name of a known column, or `None` for a column
/// no record reads, without allocating it.
struct KeySeed {
    def: &'static ObjectDef,
    stamps: bool,
}

/// What a row's key is.
enum Key {
    Column(&'static str),
    Stamps,
    Other,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
        if self.stamps && key == "field_stamps" {
            return Ok(Key::Stamps);
        }
        Ok(known(self.def, key).map_or(Key::Other, Key::Column))
    }
}

/// Reads a whole row.
struct RowSeed(&'static ObjectDef);

impl<'de> DeserializeSeed<'de> for RowSeed {
    type Value = Row;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Row, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed {
    type Value = Row;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        let def = self.0;
        let mut row = Row { def, values: Vec::with_capacity(def.columns.len() + RECORD_COLUMNS.len()), stamps: Vec::new() };
        while let Some(key) = map.next_key_seed(KeySeed { def, stamps: true })? {
            match key {
                Key::Column(name) => row.values.push((name, map.next_value()?)),
                Key::Stamps => row.stamps = map.next_value_seed(StampsSeed(def))?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

/// Reads `field_stamps`: column → `{"at": time, "by": user}`, or null.
struct StampsSeed(&'static ObjectDef);

impl<'de> DeserializeSeed<'de> for StampsSeed {
    type Value = Vec<(&'static str, Stamp)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for StampsSeed {
    type Value = Vec<(&'static str, Stamp)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the field stamps")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        /// A stamp as stored; the time is borrowed from the text when it can be.
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow, default)]
            at: Option<Cow<'a, str>>,
            #[serde(default)]
            by: Option<String>,
        }
        let mut out = Vec::with_capacity(self.0.columns.len());
        while let Some(key) = map.next_key_seed(KeySeed { def: self.0, stamps: false })? {
            match key {
                Key::Column(name) => {
                    let raw: Option<Raw<'de>> = map.next_value()?;
                    if let Some(raw) = raw {
                        out.push((name, Stamp { at: raw.at.as_deref().and_then(crmsync_domain::time::parse), by: raw.by }));
                    }
                }
                Key::Stamps | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{LEAD, PROSPECT};

    /// A row as PostgreSQL's `to_json` prints one, with a column no record
    /// reads, a stamp with an escaped user and a stamp for an unknown column.
    const LEAD_ROW: &str = r#"{"id":"00Q000000000001AAA","tenant":"default","first_name":"Ada","last_name":"Lovelace",
        "email":"ada@example.com","company":null,"has_opted_out_of_email":true,"pi_score":42,"owner_id":"005000000000001AAA",
        "is_deleted":false,"is_converted":false,"created_at":"2026-12-05T01:02:03.456+00:00",
        "modstamp":"2026-12-05T01:02:04.5+00:00","last_modified_by":"005000000000002AAA","mod_xid":"123",
        "field_stamps":{"first_name":{"at":"2026-12-05T01:02:03.456+00:00","by":"005000000000001AAA"},
                        "email":{"at":"2026-12-05T01:02:04.5+00:00","by":"u\"quoted"},
                        "gone":{"at":"2026-12-05T01:02:04.5+00:00","by":"x"}}}"#;

    #[test]
    fn a_row_reads_as_the_value_tree_did() {
        let tree: Value = serde_json::from_str(LEAD_ROW).unwrap();
        let row = Row::parse(&LEAD, LEAD_ROW).unwrap();
        for column in ["id", "email", "company", "owner_id", "is_deleted", "has_opted_out_of_email", "pi_score", "created_at", "modstamp"] {
            assert_eq!(row.column(column), tree.column(column), "{column}");
        }
        assert_eq!(row.column("crmsync_id"), None);
        assert_eq!(row.column("mod_xid"), None, "a column no record reads is not kept");
        assert_eq!(row.into_fields(), crate::store::fields(&LEAD, &tree));
    }

    #[test]
    fn a_row_without_stamps_has_unstamped_fields() {
        let text = r#"{"id":7,"email":"a@b.c","assigned_user_id":3,"field_stamps":null,"created_at":"2026-12-05T01:02:03+00:00"}"#;
        let tree: Value = serde_json::from_str(text).unwrap();
        let row = Row::parse(&PROSPECT, text).unwrap();
        assert_eq!(crate::store::int(&row, "id"), Some(7));
        assert_eq!(crate::store::int(&row, "assigned_user_id"), Some(3));
        let fields = row.into_fields();
        assert_eq!(fields, crate::store::fields(&PROSPECT, &tree));
        assert!(fields.values().all(|f| f.at.is_none() && f.by.is_none()));
    }

    #[test]
    fn a_row_that_is_not_an_object_is_an_error() {
        assert!(Row::parse(&LEAD, "[1, 2]").is_err());
        assert!(Row::parse(&LEAD, r#"{"id": "x"} trailing"#).is_err());
    }
}
