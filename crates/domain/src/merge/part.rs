//! Reading part of a stored identity state.
//!
//! A linked identity's state is about 2.7 kB of JSON with some 40 timed
//! values, and the tiers that read it most need little of it: the producer's
//! echo filter compares a record with what the engine knows of the record's
//! side, and the matcher reads only the email's state. Parsing the whole
//! state and dropping the rest built every string, value, time and map of
//! it first; these readers skip what they do not keep without building it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::{FieldState, IdentityFields, Side, SideState, Versioned};

/// Which part of a state to read.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// These fields, whole.
    Fields(&'a [&'a str]),
    /// Every field's `known` on one side, and nothing else.
    Known(Side),
}

impl IdentityFields {
    /// The `part` of the state `text` holds, as it would be after parsing
    /// all of it and dropping the rest.
    pub fn parse_part(text: &str, part: Part<'_>) -> serde_json::Result<IdentityFields> {
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = PartSeed(part).deserialize(&mut de)?;
        de.end()?;
        Ok(fields)
    }

    /// Drops all but `part` of a state already read whole.
    pub fn keep_part(&mut self, part: Part<'_>) {
        match part {
            Part::Fields(only) => self.0.retain(|field, _| only.contains(&field.as_str())),
            Part::Known(side) => {
                for state in self.0.values_mut() {
                    *state = known_only(side, state.side(side).known.clone());
                }
            }
        }
    }
}

fn known_only(side: Side, known: Option<Versioned>) -> FieldState {
    let kept = SideState { known, ..SideState::default() };
    match side {
        Side::Ma => FieldState { ma: kept, ..FieldState::default() },
        Side::Crm => FieldState { crm: kept, ..FieldState::default() },
    }
}

struct PartSeed<'a>(Part<'a>);

impl<'de> DeserializeSeed<'de> for PartSeed<'_> {
    type Value = IdentityFields;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<IdentityFields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PartSeed<'_> {
    type Value = IdentityFields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an identity's field state")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdentityFields, A::Error> {
        // Unknown keys are skipped by the derived readers below, as the
        // whole-state reader skips them.
        #[derive(Deserialize)]
        struct KnownOf {
            #[serde(default)]
            known: Option<Versioned>,
        }
        #[derive(Deserialize)]
        struct MaKnown {
            #[serde(default)]
            ma: Option<KnownOf>,
        }
        #[derive(Deserialize)]
        struct CrmKnown {
            #[serde(default)]
            crm: Option<KnownOf>,
        }
        let mut out = BTreeMap::new();
        while let Some(field) = map.next_key::<String>()? {
            match self.0 {
                Part::Fields(only) if only.contains(&field.as_str()) => {
                    out.insert(field, map.next_value::<FieldState>()?);
                }
                Part::Fields(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
                Part::Known(Side::Ma) => {
                    let known = map.next_value::<MaKnown>()?.ma.and_then(|s| s.known);
                    out.insert(field, known_only(Side::Ma, known));
                }
                Part::Known(Side::Crm) => {
                    let known = map.next_value::<CrmKnown>()?.crm.and_then(|s| s.known);
                    out.insert(field, known_only(Side::Crm, known));
                }
            }
        }
        Ok(IdentityFields(out))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;

    fn at(s: u32) -> crate::Timestamp {
        Utc.with_ymd_and_hms(2026, 12, 5, 6, 0, s).unwrap()
    }

    /// A state with every register filled on both sides of two fields, an
    /// empty field, and an unknown key the readers must skip.
    fn state() -> (IdentityFields, String) {
        let mut fields = IdentityFields::default();
        for (i, field) in ["email", "jobTitle"].into_iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            fields.wrote(Side::Ma, field, at(i), json!(format!("ma \"{field}\"")));
            fields.wrote(Side::Crm, field, at(i + 10), json!(i));
            let s = fields.0.get_mut(field).unwrap();
            s.ma.last = Some(Versioned::new(at(i + 20), json!(null)));
            s.crm.filled = Some(Versioned::new(at(i + 30), json!({"nested": [1, "two"]})));
        }
        fields.0.insert("phone".into(), FieldState::default());
        let mut text: serde_json::Value = serde_json::to_value(&fields).unwrap();
        text["email"]["ma"]["future"] = json!({"at": "x", "v": [1]});
        text["email"]["other_side"] = json!("skipped");
        (fields, text.to_string())
    }

    #[test]
    fn a_part_read_is_the_whole_read_cut_down() {
        let (whole, text) = state();
        let parts = [
            Part::Fields(&["email"]),
            Part::Fields(&["jobTitle", "missing"]),
            Part::Fields(&[]),
            Part::Known(Side::Ma),
            Part::Known(Side::Crm),
        ];
        for part in parts {
            let mut expected = whole.clone();
            expected.keep_part(part);
            assert_eq!(IdentityFields::parse_part(&text, part).unwrap(), expected, "{part:?}");
        }
        let mut known = whole;
        known.keep_part(Part::Known(Side::Crm));
        assert_eq!(known.get("jobTitle").unwrap().crm.known, Some(Versioned::new(at(11), json!(1))));
        assert_eq!(known.get("jobTitle").unwrap().crm.filled, None);
        assert_eq!(known.get("jobTitle").unwrap().ma, SideState::default());
        assert_eq!(known.0.len(), 3, "every field is kept, with only its known value");
    }

    #[test]
    fn a_malformed_state_is_an_error_for_a_part_too() {
        for text in ["", "[]", "{\"email\": 1}", "{\"email\": {\"ma\": {\"known\": {\"at\": \"not a time\", \"v\": 1}}}}", "{} trailing"] {
            assert!(IdentityFields::parse_part(text, Part::Known(Side::Ma)).is_err(), "{text}");
        }
        assert!(IdentityFields::parse_part("{\"email\": 1}", Part::Fields(&["email"])).is_err());
    }
}
