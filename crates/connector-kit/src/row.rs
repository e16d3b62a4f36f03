//! Fields of a record as the REST APIs return it: a JSON object with the
//! fields asked for. Blanks are `null`, and numbers where the engine keeps
//! text (v5 user ids) are read as text.

use crmsync_domain::Timestamp;
use crmsync_wire::time;
use serde_json::{Map, Value};

/// A record as JSON.
pub type Row = Map<String, Value>;

/// A field as text: strings as they are, other scalars printed, blanks `None`.
pub fn text(row: &Row, field: &str) -> Option<String> {
    match row.get(field)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A flag; a missing or blank one is off.
pub fn flag(row: &Row, field: &str) -> bool {
    row.get(field).and_then(Value::as_bool).unwrap_or(false)
}

/// A date-time field, in any form the APIs write (`2024-05-01T10:20:30.000+0000`,
/// `2024-05-01T10:20:30.123Z`).
pub fn stamp(row: &Row, field: &str) -> Option<Timestamp> {
    row.get(field).and_then(Value::as_str).and_then(time::parse)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_read_as_text_flags_and_stamps() {
        let row = json!({"Id": "00Q", "n": 7, "blank": null, "on": true, "at": "2024-05-01T10:20:30.123Z"});
        let row = row.as_object().unwrap();
        assert_eq!(text(row, "Id").as_deref(), Some("00Q"));
        assert_eq!(text(row, "n").as_deref(), Some("7"), "numbers read as text");
        assert_eq!((text(row, "blank"), text(row, "missing")), (None, None));
        assert!(flag(row, "on") && !flag(row, "blank") && !flag(row, "missing"));
        assert_eq!(stamp(row, "at").map(|t| t.timestamp_subsec_millis()), Some(123));
        assert_eq!(stamp(row, "n"), None);
    }
}
