//! The checks the real APIs make before accepting a record, with their error
//! codes: unknown fields, missing required fields, values over the field
//! length, malformed emails, values of the wrong type.
//!
//! The engine relies on these to show target rejections as named sync errors;
//! messages name fields and limits, never the rejected values (which may be
//! personal data).

use crmsync_connector::FieldValues;
use crmsync_domain::Email;
use crmsync_domain::merge::is_blank;
use serde_json::Value;

use crate::schema::{Kind, ObjectDef};

/// Why the system refused a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

/// Checks a create (`creating`) or an update of `values` on `def`.
pub fn check(def: &ObjectDef, values: &FieldValues, creating: bool) -> Result<(), Rejection> {
    for (api, v) in values {
        let col =
            def.by_api(api).ok_or_else(|| Rejection::new("INVALID_FIELD", format!("No such column '{api}' on entity '{}'", def.name)))?;
        if is_blank(v) {
            continue;
        }
        let type_ok = match col.kind {
            Kind::Text | Kind::Date => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Int => v.is_i64() || v.is_u64(),
            Kind::Decimal => v.is_number(),
        };
        if !type_ok {
            return Err(Rejection::new("INVALID_TYPE_ON_FIELD_IN_RECORD", format!("{api}: value not of required type")));
        }
        if let (Some(max), Value::String(s)) = (col.max_len, v)
            && s.chars().count() > max
        {
            return Err(Rejection::new("STRING_TOO_LONG", format!("{api}: data value too large (max length={max})")));
        }
        if api.eq_ignore_ascii_case("email")
            && let Value::String(s) = v
            && Email::parse(s).is_err()
        {
            return Err(Rejection::new("INVALID_EMAIL_ADDRESS", format!("{api}: invalid email address")));
        }
    }
    let missing: Vec<&str> = def
        .required
        .iter()
        .copied()
        .filter(|f| match values.get(*f) {
            Some(v) => is_blank(v),
            // An update that does not touch a field leaves it as it was.
            None => creating,
        })
        .collect();
    if !missing.is_empty() {
        return Err(Rejection::new("REQUIRED_FIELD_MISSING", format!("Required fields are missing: [{}]", missing.join(", "))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schema::{LEAD, PROSPECT};

    fn vals(pairs: &[(&str, Value)]) -> FieldValues {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn a_lead_needs_a_last_name_and_a_company() {
        let e = check(&LEAD, &vals(&[("LastName", json!("Doe"))]), true).unwrap_err();
        assert_eq!(e.code, "REQUIRED_FIELD_MISSING");
        assert_eq!(e.message, "Required fields are missing: [Company]");
        assert!(check(&LEAD, &vals(&[("LastName", json!("Doe")), ("Company", json!("Acme"))]), true).is_ok());
    }

    #[test]
    fn an_update_may_leave_required_fields_alone_but_not_blank_them() {
        assert!(check(&LEAD, &vals(&[("Title", json!("CTO"))]), false).is_ok());
        assert_eq!(check(&LEAD, &vals(&[("LastName", Value::Null)]), false).unwrap_err().code, "REQUIRED_FIELD_MISSING");
    }

    #[test]
    fn over_long_values_and_bad_emails_are_refused_without_echoing_them() {
        let e = check(&LEAD, &vals(&[("LastName", json!("x".repeat(81)))]), false).unwrap_err();
        assert_eq!(e.code, "STRING_TOO_LONG");
        assert!(e.message.contains("max length=80") && !e.message.contains("xxx"), "{}", e.message);
        let e = check(&PROSPECT, &vals(&[("email", json!("not-an-email"))]), false).unwrap_err();
        assert_eq!(e.code, "INVALID_EMAIL_ADDRESS");
        assert!(!e.message.contains("not-an-email"));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        assert_eq!(check(&LEAD, &vals(&[("Colour", json!("red"))]), false).unwrap_err().code, "INVALID_FIELD");
        assert_eq!(
            check(&LEAD, &vals(&[("HasOptedOutOfEmail", json!("yes"))]), false).unwrap_err().code,
            "INVALID_TYPE_ON_FIELD_IN_RECORD"
        );
    }
}
