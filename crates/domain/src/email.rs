//! Email addresses as identity keys: validation and normalisation (R1).
//!
//! Matching is by the normalised address: surrounding whitespace trimmed and
//! compared case-insensitively. Validation is deliberately practical rather
//! than RFC 5322-complete: it accepts what the MA and CRM accept and rejects
//! what would make a useless or ambiguous identity key.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a usable email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is missing")]
    Missing,
    #[error("email {0:?} is longer than 254 characters")]
    TooLong(String),
    #[error("email {0:?} must contain exactly one '@'")]
    At(String),
    #[error("email {0:?} contains whitespace or a control character")]
    Whitespace(String),
    #[error("email {0:?} has an empty or over-long local part")]
    LocalPart(String),
    #[error("email {0:?} has no valid domain (letters, digits, '-' and at least one '.')")]
    Domain(String),
}

/// A valid email address, normalised (trimmed, lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(EmailError::Missing);
        }
        if s.chars().count() > 254 {
            return Err(EmailError::TooLong(raw.to_owned()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError::Whitespace(raw.to_owned()));
        }
        let (local, domain) = match s.split_once('@') {
            Some((l, d)) if !d.contains('@') => (l, d),
            _ => return Err(EmailError::At(raw.to_owned())),
        };
        if local.is_empty() || local.chars().count() > 64 || local.starts_with('.') || local.ends_with('.') {
            return Err(EmailError::LocalPart(raw.to_owned()));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(EmailError::Domain(raw.to_owned()));
        }
        Ok(Email(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part, for seed data and reports.
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Email::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(Email::parse("  Jane.Doe@Example.COM \t").unwrap().as_str(), "jane.doe@example.com");
    }

    #[test]
    fn differently_spelled_addresses_are_one_key() {
        assert_eq!(Email::parse("JANE@example.com").unwrap(), Email::parse(" jane@EXAMPLE.com").unwrap());
    }

    #[test]
    fn plus_addresses_and_subdomains_are_valid() {
        assert!(Email::parse("jane+news@mail.example.co.jp").is_ok());
        assert!(Email::parse("o'brien@example.ie").is_ok());
    }

    #[test]
    fn invalid_addresses_are_named() {
        assert_eq!(Email::parse("   "), Err(EmailError::Missing));
        assert!(matches!(Email::parse("not-an-email"), Err(EmailError::At(_))));
        assert!(matches!(Email::parse("a@b@c.com"), Err(EmailError::At(_))));
        assert!(matches!(Email::parse("jane doe@example.com"), Err(EmailError::Whitespace(_))));
        assert!(matches!(Email::parse("@example.com"), Err(EmailError::LocalPart(_))));
        assert!(matches!(Email::parse("jane@localhost"), Err(EmailError::Domain(_))));
        assert!(matches!(Email::parse("jane@exa_mple.com"), Err(EmailError::Domain(_))));
        assert!(matches!(Email::parse("jane@.com"), Err(EmailError::Domain(_))));
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(Email::parse(&long), Err(EmailError::TooLong(_))));
    }

    #[test]
    fn the_error_names_the_input() {
        let msg = Email::parse("jane(at)example.com").unwrap_err().to_string();
        assert!(msg.contains("jane(at)example.com"), "{msg}");
    }

    proptest::proptest! {
        #[test]
        fn normalisation_is_idempotent(local in "[a-zA-Z0-9._%+-]{1,20}", domain in "[a-zA-Z0-9]{1,10}\\.[a-zA-Z]{2,5}") {
            let raw = format!(" {local}@{domain} ");
            if let Ok(e) = Email::parse(&raw) {
                proptest::prop_assert_eq!(&Email::parse(e.as_str()).unwrap(), &e);
                proptest::prop_assert_eq!(e.as_str(), e.as_str().to_lowercase());
            }
        }
    }
}
