//! RFC 3339 times read and written by the thousand: the field state holds
//! about 40 per identity, and every record a system returns carries one per
//! field. This module is a `serde(with)` module for [`Timestamp`]s and a
//! parser for the sandbox's rows.
//!
//! chrono's own serializer formats through `Debug` one character at a time,
//! and its `FromStr` is its general, relaxed format parser. Together they
//! were about a tenth of the tiers' CPU in a direct backfill. The common
//! shapes take a direct path here. The text written is byte for byte what
//! chrono writes, so stored state and messages do not change. Anything
//! outside the direct path (years before 0 or after 9999, leap seconds,
//! other layouts) goes to chrono as before.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde::{Deserializer, Serializer};

use crate::Timestamp;

/// Writes `t` as chrono's serializer does: `2026-12-04T22:28:29.381660Z`,
/// with 0, 3, 6 or 9 fraction digits, the fewest that hold the time exactly.
pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 32];
    match format(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => serde::Serialize::serialize(t, s),
    }
}

/// Reads any RFC 3339 time (and what chrono's `FromStr` reads besides).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    struct Rfc3339;
    impl serde::de::Visitor<'_> for Rfc3339 {
        type Value = Timestamp;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
            parse(s).ok_or_else(|| E::custom(format!("{s:?} is not an RFC 3339 time")))
        }
    }
    d.deserialize_str(Rfc3339)
}

/// The same for an optional time (`serde(default, with = "crate::time::option")`).
pub mod option {
    use serde::{Deserializer, Serializer};

    use crate::Timestamp;

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Present(#[serde(with = "super")] Timestamp);
        Ok(<Option<Present> as serde::Deserialize>::deserialize(d)?.map(|p| p.0))
    }
}

/// The time `s` names, if it is one: RFC 3339 directly, else chrono's
/// strict parser, else its relaxed one.
pub fn parse(s: &str) -> Option<Timestamp> {
    direct(s.as_bytes()).or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|t| t.to_utc())).or_else(|| s.parse::<Timestamp>().ok())
}

/// `t` in `buf`, or `None` where chrono's own writer is needed.
fn format<'b>(t: &Timestamp, buf: &'b mut [u8; 32]) -> Option<&'b str> {
    use chrono::Datelike;
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut w = Writer { buf, at: 0 };
    w.number(year.unsigned_abs(), 4, b'-');
    w.number(t.month(), 2, b'-');
    w.number(t.day(), 2, b'T');
    w.number(t.hour(), 2, b':');
    w.number(t.minute(), 2, b':');
    if digits == 0 {
        w.number(t.second(), 2, b'Z');
    } else {
        w.number(t.second(), 2, b'.');
        w.number(fraction, digits, b'Z');
    }
    let len = w.at;
    std::str::from_utf8(&buf[..len]).ok()
}

/// Zero-padded decimal fields, each followed by one separator byte.
struct Writer<'b> {
    buf: &'b mut [u8; 32],
    at: usize,
}

impl Writer<'_> {
    fn number(&mut self, mut value: u32, digits: usize, then: u8) {
        for i in (0..digits).rev() {
            self.buf[self.at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.buf[self.at + digits] = then;
        self.at += digits + 1;
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, the shape every system
/// and chrono itself write; `None` for anything else.
fn direct(b: &[u8]) -> Option<Timestamp> {
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 2)?, num(8, 2)?)?;
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut at = 19;
    let mut nanos = 0;
    if sep(at, b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let len = at - start;
        if len == 0 || len > 9 {
            return None;
        }
        nanos = num(start, len)? * 10u32.pow(9 - len as u32);
    }
    // Leap seconds and other rarities are chrono's to read.
    if second > 59 {
        return None;
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    let offset_seconds = match b.get(at..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let s = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -s } else { s }
        }
        _ => return None,
    };
    let local = NaiveDateTime::new(date, time);
    let utc = local.checked_sub_signed(chrono::Duration::seconds(offset_seconds))?;
    Some(utc.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(t: &Timestamp) -> String {
        serde_json::to_string(&Wrapped(*t)).unwrap()
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Wrapped(#[serde(with = "super")] Timestamp);

    #[test]
    fn writes_what_chrono_writes() {
        for text in [
            "2026-12-04T22:28:29.381660Z",
            "2026-12-04T22:28:29Z",
            "2026-12-04T22:28:29.381Z",
            "2026-12-04T22:28:29.381660123Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "+10000-01-01T00:00:00Z",
        ] {
            let t: Timestamp = text.parse().unwrap();
            assert_eq!(ours(&t), serde_json::to_string(&t).unwrap(), "{text}");
        }
    }

    #[test]
    fn reads_offsets_fractions_and_what_only_chrono_reads() {
        let utc = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(parse("2026-12-04T22:43:49.632608+00:00"), Some(utc("2026-12-04T22:43:49.632608Z")));
        assert_eq!(parse("2026-12-05T07:43:49.5+09:00"), Some(utc("2026-12-04T22:43:49.500Z")));
        assert_eq!(parse("2026-12-04T20:13:49-02:30"), Some(utc("2026-12-04T22:43:49Z")));
        // Not the direct shape: chrono reads them as before.
        assert_eq!(parse("2026-12-04 22:43:49Z"), Some(utc("2026-12-04T22:43:49Z")));
        assert_eq!(parse("2016-12-31T23:59:60Z"), DateTime::parse_from_rfc3339("2016-12-31T23:59:60Z").ok().map(|t| t.to_utc()));
        for bad in ["", "2026-13-01T00:00:00Z", "2026-12-04T24:00:00Z", "2026-12-04T22:43:49.Z", "2026-12-04T22:43:49+0900", "soon"] {
            assert_eq!(parse(bad), bad.parse::<Timestamp>().ok(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Wrapped>("\"later\"").is_err());
    }

    proptest! {
        /// Any time from year 0 to 9999, at any precision: written as chrono
        /// writes it, and read back (directly or with an offset) exactly.
        #[test]
        fn round_trips_as_chrono_does(secs in -62_167_219_200i64..253_402_300_800i64, nanos in 0u32..1_000_000_000, precision in 0usize..4, offset_min in -1439i32..1440) {
            let nanos = match precision { 0 => 0, 1 => nanos / 1_000_000 * 1_000_000, 2 => nanos / 1_000 * 1_000, _ => nanos };
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let written = ours(&t);
            prop_assert_eq!(&written, &serde_json::to_string(&t).unwrap());
            prop_assert_eq!(serde_json::from_str::<Wrapped>(&written).unwrap().0, t);
            let zone = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let shifted = t.with_timezone(&zone).to_rfc3339();
            prop_assert_eq!(parse(&shifted), Some(t), "{}", shifted);
        }
    }
}
