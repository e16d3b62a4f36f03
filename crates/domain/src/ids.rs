//! CRM record ids: parsing, validation and normalisation to the 18-character form.
//!
//! Salesforce ids come in two forms. The 15-character form is case-sensitive
//! (`00Q5g00000AbCdE` and `00Q5g00000ABCDE` are different records); the
//! 18-character form appends three characters that encode the case of the first
//! fifteen, so it survives systems that ignore case. Identity matching (R1) must
//! treat all spellings of one record as one key, so every id is normalised to
//! the 18-character form with the case of the first fifteen restored from the
//! suffix.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The alphabet of the 3-character case suffix: index = 5-bit case mask.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// The CRM object an id belongs to, read from its 3-character key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum CrmObject {
    Lead,
    Contact,
    Account,
    Opportunity,
    OpportunityContactRole,
    User,
}

impl CrmObject {
    /// The key prefix Salesforce uses for this object.
    pub fn key_prefix(self) -> &'static str {
        match self {
            CrmObject::Lead => "00Q",
            CrmObject::Contact => "003",
            CrmObject::Account => "001",
            CrmObject::Opportunity => "006",
            CrmObject::OpportunityContactRole => "00K",
            CrmObject::User => "005",
        }
    }

    pub fn from_key_prefix(prefix: &str) -> Option<Self> {
        Some(match prefix {
            "00Q" => CrmObject::Lead,
            "003" => CrmObject::Contact,
            "001" => CrmObject::Account,
            "006" => CrmObject::Opportunity,
            "00K" => CrmObject::OpportunityContactRole,
            "005" => CrmObject::User,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CrmObject::Lead => "lead",
            CrmObject::Contact => "contact",
            CrmObject::Account => "account",
            CrmObject::Opportunity => "opportunity",
            CrmObject::OpportunityContactRole => "opportunity_contact_role",
            CrmObject::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "lead" => CrmObject::Lead,
            "contact" => CrmObject::Contact,
            "account" => CrmObject::Account,
            "opportunity" => CrmObject::Opportunity,
            "opportunity_contact_role" => CrmObject::OpportunityContactRole,
            "user" => CrmObject::User,
            _ => return None,
        })
    }
}

impl fmt::Display for CrmObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a CRM id. The message is what an operator reads in the
/// sync-error queue, so it names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmIdError {
    #[error("CRM id {0:?} has {1} characters; ids have 15 or 18")]
    Length(String, usize),
    #[error("CRM id {0:?} contains a character that is not a letter or digit")]
    Charset(String),
    #[error("CRM id {0:?} is the empty id (all zeros)")]
    Empty(String),
    #[error("CRM id {0:?} has a case suffix that does not fit its first 15 characters")]
    Suffix(String),
}

/// A CRM record id in the canonical 18-character form.
///
/// Construct it with [`CrmId::parse`]; the rules only ever see valid ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CrmId(String);

impl CrmId {
    /// Parses a 15- or 18-character id (surrounding whitespace ignored) and
    /// returns its canonical 18-character form.
    ///
    /// An 18-character id may arrive with its case lost (lower- or upper-cased
    /// by a case-insensitive system): the suffix says which of the first 15
    /// characters are upper case, so the case is restored from it.
    pub fn parse(raw: &str) -> Result<Self, CrmIdError> {
        let s = raw.trim();
        if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CrmIdError::Charset(raw.to_owned()));
        }
        let canonical = match s.len() {
            15 => {
                let mut out = String::with_capacity(18);
                out.push_str(s);
                out.push_str(&case_suffix(s.as_bytes()));
                out
            }
            18 => restore_case(s).ok_or_else(|| CrmIdError::Suffix(raw.to_owned()))?,
            n => return Err(CrmIdError::Length(raw.to_owned(), n)),
        };
        if canonical[..15].bytes().all(|b| b == b'0') {
            return Err(CrmIdError::Empty(raw.to_owned()));
        }
        Ok(CrmId(canonical))
    }

    /// Builds the canonical id from the 15 case-sensitive characters, for
    /// generators (the sandbox) that mint ids.
    pub fn from_15(s15: &str) -> Result<Self, CrmIdError> {
        if s15.len() != 15 {
            return Err(CrmIdError::Length(s15.to_owned(), s15.len()));
        }
        Self::parse(s15)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-sensitive 15-character form.
    pub fn short(&self) -> &str {
        &self.0[..15]
    }

    /// The object this id belongs to, if its key prefix is a known one.
    pub fn object(&self) -> Option<CrmObject> {
        CrmObject::from_key_prefix(&self.0[..3])
    }
}

impl fmt::Display for CrmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CrmId {
    type Error = CrmIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        CrmId::parse(&value)
    }
}

impl From<CrmId> for String {
    fn from(value: CrmId) -> Self {
        value.0
    }
}

/// The 3-character suffix for 15 case-sensitive characters.
fn case_suffix(s15: &[u8]) -> String {
    s15.chunks(5)
        .map(|chunk| {
            let mask = chunk.iter().enumerate().filter(|(_, b)| b.is_ascii_uppercase()).fold(0usize, |m, (i, _)| m | (1 << i));
            SUFFIX_ALPHABET[mask] as char
        })
        .collect()
}

/// Restores the case of an 18-character id from its suffix; `None` if the
/// suffix is not a valid one or claims upper case for a digit.
fn restore_case(s18: &str) -> Option<String> {
    let bytes = s18.as_bytes();
    let mut out = Vec::with_capacity(18);
    for (chunk, suffix_char) in bytes[..15].chunks(5).zip(&bytes[15..]) {
        let wanted = suffix_char.to_ascii_uppercase();
        let mask = SUFFIX_ALPHABET.iter().position(|&c| c == wanted)?;
        for (i, b) in chunk.iter().enumerate() {
            let upper = mask & (1 << i) != 0;
            match (upper, b.is_ascii_alphabetic()) {
                (true, true) => out.push(b.to_ascii_uppercase()),
                (true, false) => return None,
                (false, true) => out.push(b.to_ascii_lowercase()),
                (false, false) => out.push(*b),
            }
        }
    }
    out.extend(bytes[15..].iter().map(u8::to_ascii_uppercase));
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_character_id_gains_its_case_suffix() {
        // Well-known example from Salesforce's documentation of the algorithm.
        let id = CrmId::parse("001A0000006Vm9r").unwrap();
        assert_eq!(id.as_str(), "001A0000006Vm9rIAC");
        assert_eq!(id.short(), "001A0000006Vm9r");
        assert_eq!(id.object(), Some(CrmObject::Account));
    }

    #[test]
    fn eighteen_character_id_is_kept() {
        let id = CrmId::parse("001A0000006Vm9rIAC").unwrap();
        assert_eq!(id.as_str(), "001A0000006Vm9rIAC");
    }

    #[test]
    fn fifteen_and_eighteen_forms_are_the_same_key() {
        assert_eq!(CrmId::parse("00Q5g00000AbCdE").unwrap(), CrmId::parse(&CrmId::parse("00Q5g00000AbCdE").unwrap().to_string()).unwrap());
    }

    #[test]
    fn case_lost_eighteen_character_id_is_restored() {
        let lower = CrmId::parse("001a0000006vm9riac").unwrap();
        let upper = CrmId::parse("001A0000006VM9RIAC").unwrap();
        assert_eq!(lower.as_str(), "001A0000006Vm9rIAC");
        assert_eq!(upper, lower);
    }

    #[test]
    fn fifteen_character_ids_differing_in_case_are_different_records() {
        let a = CrmId::parse("00Q5g00000abcde").unwrap();
        let b = CrmId::parse("00Q5g00000ABCDE").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn whitespace_around_an_id_is_ignored() {
        assert_eq!(CrmId::parse("  001A0000006Vm9r\n").unwrap().as_str(), "001A0000006Vm9rIAC");
    }

    #[test]
    fn malformed_ids_are_rejected_with_a_reason() {
        assert!(matches!(CrmId::parse("00Q123"), Err(CrmIdError::Length(_, 6))));
        assert!(matches!(CrmId::parse("00Q5g00000ab-de"), Err(CrmIdError::Charset(_))));
        assert!(matches!(CrmId::parse("000000000000000"), Err(CrmIdError::Empty(_))));
        // A suffix that claims upper case where the id has a digit.
        assert!(matches!(CrmId::parse("00100000000000055A"), Err(CrmIdError::Suffix(_))));
        let msg = CrmId::parse("bad id").unwrap_err().to_string();
        assert!(msg.contains("bad id"), "{msg}");
    }

    #[test]
    fn serde_round_trip_normalises() {
        let id: CrmId = serde_json::from_str("\"001A0000006Vm9r\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"001A0000006Vm9rIAC\"");
        assert!(serde_json::from_str::<CrmId>("\"nope\"").is_err());
    }

    #[test]
    fn key_prefixes_round_trip() {
        for o in [
            CrmObject::Lead,
            CrmObject::Contact,
            CrmObject::Account,
            CrmObject::Opportunity,
            CrmObject::OpportunityContactRole,
            CrmObject::User,
        ] {
            assert_eq!(CrmObject::from_key_prefix(o.key_prefix()), Some(o));
            assert_eq!(CrmObject::parse(o.as_str()), Some(o));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_15_character_id_normalises_and_round_trips(s in "[1-9a-zA-Z][0-9a-zA-Z]{14}") {
            let id = CrmId::parse(&s).unwrap();
            proptest::prop_assert_eq!(id.short(), s.as_str());
            // The 18-character form, in any case, normalises to the same id.
            proptest::prop_assert_eq!(&CrmId::parse(&id.as_str().to_lowercase()).unwrap(), &id);
            proptest::prop_assert_eq!(&CrmId::parse(&id.as_str().to_uppercase()).unwrap(), &id);
        }
    }
}
