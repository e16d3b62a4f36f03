//! Date-times as the APIs write them: Salesforce `2024-05-01T10:20:30.000+0000`
//! (milliseconds, a numeric offset without a colon), Account Engagement ISO
//! 8601 with an offset. Parsing takes either form, and plain RFC 3339.

use chrono::{DateTime, SecondsFormat, Utc};

/// Salesforce's format for date-time fields (`SystemModstamp`).
pub fn salesforce(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// Account Engagement's format (`updatedAt`), in UTC with milliseconds.
pub fn pardot(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a date-time in any of the forms the APIs use.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")).ok().map(|t| t.with_timezone(&Utc))
}

/// Truncated to whole milliseconds: what a round trip through either API keeps.
pub fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn both_formats_round_trip_at_millisecond_precision() {
        let t = Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap() + chrono::Duration::microseconds(123_456);
        assert_eq!(salesforce(t), "2024-05-01T10:20:30.123+0000");
        assert_eq!(parse(&salesforce(t)), Some(millis(t)));
        assert_eq!(parse(&pardot(t)), Some(millis(t)));
        assert_eq!(parse("2024-05-01T06:20:30-04:00"), Some(Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap()));
        assert_eq!(parse("yesterday"), None);
    }
}
