//! The stamp cursor against a simulated source whose writes commit late
//! (within the window), read through query snapshots and locators.

use std::collections::{BTreeSet, HashMap};

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct Rec {
    id: String,
    stamp: Timestamp,
    /// When the write becomes visible (server clock), at or after its stamp.
    commits: Timestamp,
}

impl Stamped for Rec {
    fn stamp(&self) -> Timestamp {
        self.stamp
    }
    fn key(&self) -> &str {
        &self.id
    }
}

fn ms(n: i64) -> Timestamp {
    Utc.timestamp_millis_opt(1_700_000_000_000 + n).unwrap()
}

/// A source with query snapshots, like SOQL's query locators.
struct Source {
    versions: Vec<Rec>,
    snapshots: HashMap<String, Vec<Rec>>,
    next_snapshot: usize,
}

impl Source {
    /// One page of a query at time `now`: the records committed by then,
    /// stamped at or after `from` (rounded down to the second, as SOQL's
    /// literals are), the latest version of each id, in (stamp, id) order.
    fn page(&mut self, cursor: &StampCursor, now: Timestamp, size: usize) -> (Vec<Rec>, Option<String>) {
        let (snapshot, offset) = match cursor.locator().filter(|l| *l != REQUERY) {
            Some(l) => {
                let (name, offset) = l.split_once(':').unwrap();
                (name.to_owned(), offset.parse::<usize>().unwrap())
            }
            None => {
                let from = cursor.query_from().map(|f| ms(((f - ms(0)).num_milliseconds() / 1000) * 1000));
                let mut latest: HashMap<&str, &Rec> = HashMap::new();
                for v in self.versions.iter().filter(|v| v.commits <= now) {
                    if latest.get(v.id.as_str()).is_none_or(|l| l.stamp < v.stamp) {
                        latest.insert(&v.id, v);
                    }
                }
                let mut rows: Vec<Rec> = latest.into_values().filter(|r| from.is_none_or(|f| r.stamp >= f)).cloned().collect();
                rows.sort_by(|a, b| (a.stamp, &a.id).cmp(&(b.stamp, &b.id)));
                let name = format!("q{}", self.next_snapshot);
                self.next_snapshot += 1;
                self.snapshots.insert(name.clone(), rows);
                (name, 0)
            }
        };
        let rows = &self.snapshots[&snapshot];
        let end = (offset + size).min(rows.len());
        let next = (end < rows.len()).then(|| format!("{snapshot}:{end}"));
        (rows[offset..end].to_vec(), next)
    }
}

const WINDOW_MS: i64 = 2_000;

/// The feeds' marker for "query again from the position".
const REQUERY: &str = "requery";

fn overlap() -> Overlap {
    Overlap::new(Duration::from_millis(WINDOW_MS as u64))
}

/// What a run of polls delivered and read.
struct Run {
    /// Every (id, stamp) delivered, in order.
    delivered: Vec<(String, Timestamp)>,
    /// The largest number of records the cursor remembered.
    remembered: usize,
    /// Records read in full and read light.
    full: usize,
    light: usize,
}

/// Polls the source until `until`, every `poll` ms, reading all pages each
/// time, light ones as a feed does.
fn run(source: &mut Source, poll: i64, page: usize, until: i64) -> Run {
    run_reading(source, poll, page, until, true)
}

/// [`run`], with light pages read light or (`light_pages` false, as a
/// replica that does not know them) in full.
fn run_reading(source: &mut Source, poll: i64, page: usize, until: i64, light_pages: bool) -> Run {
    let mut cursor = StampCursor::default();
    let mut out = Run { delivered: Vec::new(), remembered: 0, full: 0, light: 0 };
    let mut now = 0;
    while now <= until {
        loop {
            let (rows, next) = source.page(&cursor, ms(now), page);
            let more = if light_pages && cursor.light() {
                out.light += rows.len();
                cursor.pass_over(rows, ms(now), next, REQUERY, overlap())
            } else {
                out.full += rows.len();
                let (fresh, more) = cursor.accept(rows, ms(now), next, overlap());
                out.delivered.extend(fresh.into_iter().map(|r| (r.id, r.stamp)));
                more
            };
            // The cursor survives a round trip through storage.
            cursor = StampCursor::load(Some(&cursor.save())).unwrap();
            out.remembered = out.remembered.max(cursor.remembered());
            if !more {
                break;
            }
        }
        now += poll;
    }
    out
}

#[test]
fn a_late_commit_inside_the_window_is_delivered_once() {
    let mut source = Source {
        versions: vec![
            Rec { id: "a".into(), stamp: ms(1_000), commits: ms(1_000) },
            // Stamped at 1.5 s, committed at 3.2 s: after the feed passed 3 s.
            Rec { id: "late".into(), stamp: ms(1_500), commits: ms(3_200) },
            Rec { id: "b".into(), stamp: ms(3_000), commits: ms(3_000) },
        ],
        snapshots: HashMap::new(),
        next_snapshot: 0,
    };
    let delivered = run(&mut source, 100, 10, 10_000).delivered;
    let ids: Vec<&str> = delivered.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "late"], "the late record arrives after b, once");
}

#[test]
fn a_page_full_of_records_in_one_second_still_makes_progress() {
    // 50 records stamped within one second, read 7 at a time: SOQL's literal
    // rounds the start down, the locator carries the query on.
    let versions = (0..50).map(|i| Rec { id: format!("r{i:02}"), stamp: ms(5_000 + i), commits: ms(5_000 + i) }).collect();
    let mut source = Source { versions, snapshots: HashMap::new(), next_snapshot: 0 };
    assert_eq!(run(&mut source, 250, 7, 12_000).delivered.len(), 50);
}

#[test]
fn the_cursor_remembers_about_a_window_of_records_not_the_whole_feed() {
    // 2,000 records, one every 10 ms over 20 s, polled every 100 ms.
    let versions = (0..2_000).map(|i| Rec { id: format!("r{i}"), stamp: ms(i * 10), commits: ms(i * 10) }).collect();
    let mut source = Source { versions, snapshots: HashMap::new(), next_snapshot: 0 };
    let r = run(&mut source, 100, 50, 26_000);
    assert_eq!(r.delivered.len(), 2_000);
    // Window (2 s) + rescan interval (0.5 s) + a poll, at 100 records a second.
    assert!(r.remembered <= 300, "remembered {} records", r.remembered);
}

#[test]
fn rescans_read_positions_and_only_new_records_in_full() {
    // 2,000 records, one every 10 ms over 20 s, polled every 100 ms: each
    // rescan goes back over 2.5 s of records.
    let versions: Vec<Rec> = (0..2_000).map(|i| Rec { id: format!("r{i}"), stamp: ms(i * 10), commits: ms(i * 10) }).collect();
    let mut source = Source { versions: versions.clone(), snapshots: HashMap::new(), next_snapshot: 0 };
    let light = run(&mut source, 100, 500, 26_000);
    let mut source = Source { versions, snapshots: HashMap::new(), next_snapshot: 0 };
    let full = run_reading(&mut source, 100, 500, 26_000, false);
    assert_eq!(light.delivered, full.delivered);
    // What the rescans read went from full reads to light ones.
    assert!(light.light > 4 * 2_000, "rescans read {} positions", light.light);
    assert!(light.full + light.light / 2 < full.full, "{} records read in full, against {} without light pages", light.full, full.full);
}

#[test]
fn a_stored_light_cursor_never_holds_a_servers_locator() {
    let mut cursor = StampCursor::default();
    let window = Overlap { window: Duration::from_secs(10), rescan_every: Duration::from_secs(2) };
    let recs = |ids: &[(&str, i64)]| ids.iter().map(|(id, t)| Rec { id: (*id).into(), stamp: ms(*t), commits: ms(*t) }).collect::<Vec<_>>();
    cursor.accept(recs(&[("a", 1_000), ("b", 2_000)]), ms(3_000), None, window);
    // Caught up, and a rescan is due: the next scan is light.
    cursor.accept(Vec::<Rec>::new(), ms(6_000), None, window);
    assert!(cursor.light());
    // A light page of delivered records with more behind it: the cursor
    // goes on by querying again, so a replica that reads it as a full
    // cursor runs a full query.
    assert!(cursor.pass_over(recs(&[("a", 1_000)]), ms(6_100), Some("q7:1".into()), REQUERY, window));
    let stored = StampCursor::load(Some(&cursor.save())).unwrap();
    assert_eq!((stored.locator(), stored.light()), (Some(REQUERY), true));
    // The first record not delivered ends the light part, before it.
    assert!(cursor.pass_over(recs(&[("b", 2_000), ("c", 2_500)]), ms(6_200), None, REQUERY, window));
    assert!(!cursor.light());
    assert_eq!(cursor.query_from(), Some(ms(2_000)));
    let (fresh, more) = cursor.accept(recs(&[("b", 2_000), ("c", 2_500)]), ms(6_300), None, window);
    assert_eq!((fresh.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), more), (vec!["c"], false));
}

#[test]
fn a_look_back_rereads_a_commit_later_than_the_window_and_passes_over_the_rest() {
    let window = Overlap { window: Duration::from_secs(2), rescan_every: Duration::from_millis(500) };
    let recs = |ids: &[(&str, i64)]| ids.iter().map(|(id, t)| Rec { id: (*id).into(), stamp: ms(*t), commits: ms(*t) }).collect::<Vec<_>>();
    let mut cursor = StampCursor::default();
    let mut untouched = cursor.clone();
    untouched.look_back_to(ms(0));
    assert_eq!(untouched, StampCursor::default(), "nothing read, nothing to read again");
    cursor.accept(recs(&[("a", 1_000), ("b", 9_000)]), ms(10_000), None, window);
    cursor.accept(Vec::<Rec>::new(), ms(20_000), None, window);
    cursor.pass_over(recs(&[("b", 9_000)]), ms(20_100), None, REQUERY, window);
    assert!(cursor.pending_from() > Some(ms(9_000)), "settled past everything");
    // "late" was stamped at 5 s and committed at 20 s, far outside the
    // window: the cursor has passed it. A look back from 4 s finds it.
    cursor.look_back_to(ms(4_000));
    assert_eq!((cursor.query_from(), cursor.light(), cursor.locator()), (Some(ms(4_000)), true, None));
    assert!(cursor.pass_over(recs(&[("late", 5_000), ("b", 9_000)]), ms(20_200), None, REQUERY, window), "stops before what is new");
    let (fresh, more) = cursor.accept(recs(&[("late", 5_000), ("b", 9_000)]), ms(20_300), None, window);
    let ids: Vec<&str> = fresh.iter().map(|r| r.id.as_str()).collect();
    assert_eq!((ids, more), (vec!["late", "b"], false), "b, delivered before the settled point passed it, comes again");
    let mut later = cursor.clone();
    later.look_back_to(ms(30_000));
    assert_eq!(later.query_from(), cursor.pending_from(), "a look back never moves the settled point forward");
}

#[test]
fn a_cursor_from_another_feed_kind_is_refused_with_a_reason() {
    let err = StampCursor::load(Some(&Cursor(serde_json::json!({"xid": 5, "pos": 3})))).unwrap_err();
    assert!(err.to_string().contains("reset the feed"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the stamps, commit delays (within the window), updates,
    /// page sizes and poll rates: in the end the latest version of every
    /// record is delivered, and no version is delivered twice.
    #[test]
    fn nothing_is_lost_or_delivered_twice(
        writes in prop::collection::vec((0usize..30, 0i64..20_000, 0i64..WINDOW_MS), 1..120),
        page in 1usize..40,
        poll in 20i64..700,
    ) {
        let versions: Vec<Rec> = writes
            .iter()
            .enumerate()
            // A distinct millisecond per write: one record's versions differ.
            .map(|(n, (id, stamp, delay))| Rec { id: format!("r{id}"), stamp: ms(stamp * 7 + n as i64), commits: ms(stamp * 7 + n as i64 + delay) })
            .collect();
        let mut source = Source { versions: versions.clone(), snapshots: HashMap::new(), next_snapshot: 0 };
        let end = versions.iter().map(|v| (v.commits - ms(0)).num_milliseconds()).max().unwrap();
        let delivered = run(&mut source, poll, page, end + 3 * WINDOW_MS).delivered;

        let unique: BTreeSet<&(String, Timestamp)> = delivered.iter().collect();
        prop_assert_eq!(unique.len(), delivered.len(), "a version was delivered twice");
        let mut latest: HashMap<&str, Timestamp> = HashMap::new();
        for v in &versions {
            let e = latest.entry(&v.id).or_insert(v.stamp);
            *e = (*e).max(v.stamp);
        }
        for (id, stamp) in latest {
            prop_assert!(delivered.iter().any(|(i, s)| i == id && *s == stamp), "{} at {} never delivered", id, stamp);
        }
    }
}
