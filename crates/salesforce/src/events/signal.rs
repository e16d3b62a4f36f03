//! What one change event asks of its object's feed, decided from the
//! event's header alone (the rules, with no I/O).
//!
//! Events are only a signal: the feed's SOQL read stays the one source of
//! records, so an event never carries values into the engine. What differs
//! is what the read must cover:
//!
//! - a change (`CREATE`, `UPDATE`, `DELETE`, `UNDELETE`): a query from the
//!   feed's stamp cursor that begins after the event came sees it (its
//!   record's `SystemModstamp` is at or after the cursor's position, or
//!   within the overlap window the cursor looks back over);
//! - a gap event (`GAP_CREATE`...): Salesforce could not describe the
//!   change, which may have been made in the database beneath its
//!   application servers, so the record's stamp need not say when it
//!   changed: the named records are read by id, whatever their stamps;
//! - an overflow event (`GAP_OVERFLOW`): one transaction changed more
//!   records than events list (100,000), named by neither id nor field. A
//!   transaction that large runs long, so records it stamped early may
//!   have been passed by the cursor before it committed: the cursor looks
//!   back from the commit time less the longest a transaction runs;
//! - the engine's own write (I7): its client id is in `changeOrigin`
//!   (`com/salesforce/api/rest/60.0;client=crmsync`); for the objects the
//!   engine writes and reads back (leads, contacts) it wakes nothing. An
//!   object the engine only mirrors is still read: what changes it in the
//!   engine's transactions is the org's automation, and mirrors flow one
//!   way, so there is no loop to fear.

use chrono::{DateTime, TimeDelta, Utc};
use crmsync_domain::Timestamp;

/// The longest a Salesforce transaction runs (an API request's limit is
/// ten minutes): how far before an overflowing transaction's commit its
/// records may be stamped.
pub(crate) const LONGEST_TRANSACTION: TimeDelta = TimeDelta::minutes(10);

/// An event's header, as much of it as the engine reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub entity: String,
    pub change_type: String,
    pub record_ids: Vec<String>,
    pub change_origin: String,
    /// When the transaction committed, in epoch milliseconds.
    pub commit_ms: i64,
}

/// What an event asks of its feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The engine's own write: nothing.
    Echo,
    /// A change: a query from the cursor that begins after it came.
    Changed,
    /// These records, read by id.
    Gap(Vec<String>),
    /// The cursor looking back to this stamp.
    LookBack(Timestamp),
}

/// Whether `origin` (an event's `changeOrigin`) names `client`, the client
/// id the engine's calls send in `Sforce-Call-Options`. The id is the part
/// after `client=`, compared exactly (Salesforce keeps its case).
pub(crate) fn is_echo(origin: &str, client: &str) -> bool {
    !client.is_empty() && origin.split(';').skip(1).filter_map(|part| part.trim().strip_prefix("client=")).any(|c| c == client)
}

/// What `header` asks of its feed. `written` says whether the engine
/// writes the object's records and reads them back (people): only then is
/// its own write nothing to read.
pub(crate) fn signal(header: &Header, client: &str, written: bool) -> Signal {
    if written && is_echo(&header.change_origin, client) {
        return Signal::Echo;
    }
    match header.change_type.as_str() {
        "GAP_OVERFLOW" => {
            let commit = DateTime::<Utc>::from_timestamp_millis(header.commit_ms).unwrap_or_else(Utc::now);
            Signal::LookBack(commit - LONGEST_TRANSACTION)
        }
        gap if gap.starts_with("GAP_") => {
            // `001*`: every record of the object (a field's type changed);
            // no id to read, so the query from the cursor is what there is.
            let ids: Vec<String> = header.record_ids.iter().filter(|id| !id.contains('*') && !id.is_empty()).cloned().collect();
            if ids.is_empty() { Signal::Changed } else { Signal::Gap(ids) }
        }
        // CREATE, UPDATE, DELETE, UNDELETE, and whatever a later API adds.
        _ => Signal::Changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(change_type: &str, ids: &[&str], origin: &str) -> Header {
        Header {
            entity: "Lead".into(),
            change_type: change_type.into(),
            record_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            change_origin: origin.into(),
            commit_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_engines_client_id_in_the_change_origin_is_an_echo_and_nothing_else_is() {
        for own in ["com/salesforce/api/rest/60.0;client=crmsync", "com/salesforce/api/bulkapi/60.0;client=crmsync"] {
            assert!(is_echo(own, "crmsync"), "{own}");
        }
        for other in [
            "",
            "com/salesforce/api/rest/60.0",
            "com/salesforce/api/soap/49.0;client=Astro",
            "com/salesforce/api/rest/60.0;client=crmsync-test",
            "com/salesforce/api/rest/60.0;client=CRMSYNC",
            "client=crmsync",
        ] {
            assert!(!is_echo(other, "crmsync"), "{other:?}");
        }
        assert!(!is_echo("com/salesforce/api/rest/60.0;client=", ""), "no client id, no echo");
    }

    #[test]
    fn changes_wake_the_feed_and_the_engines_own_writes_to_people_do_not() {
        let own = "com/salesforce/api/rest/60.0;client=crmsync";
        for t in ["CREATE", "UPDATE", "DELETE", "UNDELETE", "SOMETHING_NEW"] {
            assert_eq!(signal(&header(t, &["00Q1"], ""), "crmsync", true), Signal::Changed, "{t}");
            assert_eq!(signal(&header(t, &["00Q1"], own), "crmsync", true), Signal::Echo, "{t}");
        }
        assert_eq!(signal(&header("UPDATE", &["0011"], own), "crmsync", false), Signal::Changed, "a mirrored object is read all the same");
        assert_eq!(signal(&header("GAP_UPDATE", &["00Q1"], own), "crmsync", true), Signal::Echo);
    }

    #[test]
    fn gap_events_name_records_to_read_and_an_overflow_looks_back_a_transactions_length() {
        let gap = signal(&header("GAP_UPDATE", &["00Q1", "00Q2"], ""), "crmsync", true);
        assert_eq!(gap, Signal::Gap(vec!["00Q1".into(), "00Q2".into()]));
        assert_eq!(signal(&header("GAP_DELETE", &["00Q*"], ""), "crmsync", true), Signal::Changed, "a wildcard names no record");
        let Signal::LookBack(to) = signal(&header("GAP_OVERFLOW", &[], ""), "crmsync", true) else { panic!() };
        assert_eq!(to.timestamp_millis(), 1_700_000_000_000 - 600_000);
    }
}
