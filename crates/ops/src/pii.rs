//! One policy for personal data in what the CLI prints and the console
//! shows: email addresses are redacted by default, everywhere the engine's
//! own records are shown (`errors` list, show and export, `errors
//! dead-letters`, `report`, `status`, the console's sync-error pages), and
//! shown only when the operator asks with `--show-pii` (the console never
//! shows them yet).
//!
//! Sync errors quote what the systems said ("a lead with email ... exists")
//! and keep the record as detected; dead-lettered messages carry whole
//! records. Their output ends up in terminals, tickets and CI logs, where I5
//! keeps personal data out of the engine's own logs and spans for the same
//! reasons; the redaction is the one those use
//! ([`crmsync_infra::telemetry::redact`]). The sandbox's own viewer
//! (`sandbox show`/`list`/`users`) prints its records in clear: it is how a
//! user looks at the test data they made, as the real systems' screens do.

use std::borrow::Cow;

use crmsync_infra::telemetry::redact;
use crmsync_store::sync_errors::{SyncErrorDetail, SyncErrorRow};
use serde_json::Value;

/// Whether personal data is shown in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pii {
    pub show: bool,
}

impl Pii {
    /// Free text as it may be printed.
    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if self.show { Cow::Borrowed(s) } else { Cow::Owned(redact(s)) }
    }

    /// A JSON value as it may be printed: every string in it, keys
    /// included, redacted.
    pub fn json(&self, v: &Value) -> Value {
        if self.show {
            return v.clone();
        }
        match v {
            Value::String(s) => Value::String(redact(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.json(i)).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (redact(k), self.json(v))).collect()),
            other => other.clone(),
        }
    }

    /// A sync error as it may be printed.
    pub fn error(&self, e: &SyncErrorDetail) -> SyncErrorDetail {
        SyncErrorDetail {
            record_id: self.text(&e.record_id).into_owned(),
            reason: self.text(&e.reason).into_owned(),
            payload: e.payload.as_ref().map(|p| self.json(p)),
            ..e.clone()
        }
    }

    /// A sync error sample (the report's) as it may be printed.
    pub fn sample(&self, e: &SyncErrorRow) -> SyncErrorRow {
        SyncErrorRow { record_id: self.text(&e.record_id).into_owned(), reason: self.text(&e.reason).into_owned(), ..e.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_redacted_unless_shown() {
        let hidden = Pii::default();
        assert_eq!(hidden.text("a lead with email jane@acme.example exists"), "a lead with email <email> exists");
        let payload = serde_json::json!({"email": "jane@acme.example", "score": 3, "tags": ["x@y.example"]});
        assert_eq!(hidden.json(&payload), serde_json::json!({"email": "<email>", "score": 3, "tags": ["<email>"]}));
        let shown = Pii { show: true };
        assert_eq!(shown.text("jane@acme.example"), "jane@acme.example");
        assert_eq!(shown.json(&payload), payload);
    }
}
