//! The feed driver over an in-memory API: records in (stamp, key) order,
//! pages of the API's own size, locators that can expire, a server clock
//! the test moves, and a log of the calls the driver made.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;

fn at(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
}

#[derive(Debug)]
struct FakeApi {
    /// Committed records: (stamp in ms, key).
    records: Mutex<Vec<(i64, String)>>,
    /// The API's page size, whatever the room.
    page: usize,
    now: Mutex<i64>,
    expired: Mutex<bool>,
    calls: Mutex<Vec<String>>,
}

impl FakeApi {
    fn new(page: usize, stamps: &[i64]) -> Self {
        let api = FakeApi { records: Mutex::default(), page, now: Mutex::new(100_000), expired: Mutex::default(), calls: Mutex::default() };
        for (i, ms) in stamps.iter().enumerate() {
            api.commit(&format!("r{:02}", i + 1), *ms);
        }
        api
    }

    fn commit(&self, key: &str, ms: i64) {
        let mut records = self.records.lock().unwrap();
        records.push((ms, key.to_owned()));
        records.sort();
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// The page of the query from `from` at `offset`; the locator is
    /// `from:offset`.
    fn page_at(&self, from: Option<i64>, offset: usize, size: usize) -> Page<String> {
        let records = self.records.lock().unwrap();
        let matching: Vec<&(i64, String)> = records.iter().filter(|(ms, _)| from.is_none_or(|f| *ms >= f)).collect();
        let end = (offset + size).min(matching.len());
        let next = (end < matching.len()).then(|| format!("{}:{end}", from.map_or("-".into(), |f| f.to_string())));
        let records = matching[offset..end].iter().map(|(ms, key)| Positioned { stamp: at(*ms), key: key.clone(), record: key.clone() });
        Page { records: records.collect(), next, server_time: at(*self.now.lock().unwrap()) }
    }

    fn from_ms(from: Option<Timestamp>) -> Option<i64> {
        from.map(|t| t.timestamp_millis() - 1_700_000_000_000)
    }

    fn locate(&self, locator: &str) -> (Option<i64>, usize) {
        let (from, offset) = locator.split_once(':').unwrap();
        (from.parse().ok(), offset.parse().unwrap())
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl PageSource for FakeApi {
    type Record = String;

    fn name(&self) -> &str {
        "Lead"
    }

    async fn query(&self, from: Option<Timestamp>, room: usize) -> Result<Page<String>, ConnectorError> {
        self.log(format!("query {room}"));
        Ok(self.page_at(Self::from_ms(from), 0, self.page))
    }

    async fn resume(&self, locator: &str, room: usize) -> Result<Option<Page<String>>, ConnectorError> {
        self.log(format!("resume {room}"));
        if *self.expired.lock().unwrap() {
            return Ok(None);
        }
        let (from, offset) = self.locate(locator);
        Ok(Some(self.page_at(from, offset, self.page)))
    }

    async fn positions(&self, from: Option<Timestamp>, size: PageSize) -> Result<Page<()>, ConnectorError> {
        self.log(format!("positions {size:?}"));
        let n = if size == PageSize::One { 1 } else { self.page };
        Ok(self.page_at(Self::from_ms(from), 0, n).positions_only())
    }

    async fn more_positions(&self, locator: &str) -> Result<Page<()>, ConnectorError> {
        self.log("more positions".into());
        let (from, offset) = self.locate(locator);
        Ok(self.page_at(from, offset, self.page).positions_only())
    }

    /// The engine's own writes, in this API, have keys starting `own`.
    fn is_own(&self, record: &String) -> bool {
        record.starts_with("own")
    }
}

fn minute() -> Overlap {
    Overlap::new(Duration::from_secs(60))
}

/// Calls `changes` until the feed has nothing more: the records of each call.
async fn drain(feed: &StampFeed<'_, FakeApi>, cursor: &mut Option<Cursor>, limit: usize) -> Vec<Vec<String>> {
    let mut calls = Vec::new();
    loop {
        let page = feed.changes(cursor.as_ref(), limit).await.unwrap();
        *cursor = Some(page.next);
        calls.push(page.records);
        if !page.has_more {
            return calls;
        }
    }
}

#[tokio::test]
async fn every_record_arrives_once_in_calls_of_the_limit_though_pages_are_larger() {
    let api = FakeApi::new(100, &(1..=12).collect::<Vec<_>>());
    let feed = StampFeed::new(&api, minute());
    let mut cursor = None;
    let calls = drain(&feed, &mut cursor, 5).await;
    assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 2]);
    let all: Vec<String> = calls.concat();
    assert_eq!(all, (1..=12).map(|i| format!("r{i:02}")).collect::<Vec<_>>());
    // Each page held more than the room: cut, and queried again from the
    // position rather than continued.
    assert_eq!(api.calls(), ["query 5", "query 5", "query 5"]);
    assert!(feed.changes(cursor.as_ref(), 5).await.unwrap().records.is_empty());
}

#[tokio::test]
async fn the_apis_locator_is_followed_while_its_pages_fit_and_a_page_that_does_not_is_cut() {
    let api = FakeApi::new(4, &(1..=12).collect::<Vec<_>>());
    let feed = StampFeed::new(&api, minute());
    let page = feed.changes(None, 10).await.unwrap();
    assert_eq!(page.records.len(), 10);
    assert!(page.has_more);
    assert_eq!(api.calls(), ["query 10", "resume 6", "resume 2"]);
    assert_eq!(StampCursor::load(Some(&page.next)).unwrap().locator(), Some(REQUERY), "the third page was cut");
    let rest = feed.changes(Some(&page.next), 10).await.unwrap();
    assert_eq!(rest.records, ["r11", "r12"]);
    assert_eq!(api.calls(), ["query 10"], "from the position, where r10 is passed over");
}

#[tokio::test]
async fn an_expired_locator_starts_over_from_the_cursor_and_nothing_arrives_twice() {
    let api = FakeApi::new(4, &(1..=9).collect::<Vec<_>>());
    let feed = StampFeed::new(&api, minute());
    let first = feed.changes(None, 4).await.unwrap();
    assert_eq!(first.records, ["r01", "r02", "r03", "r04"]);
    api.calls();
    *api.expired.lock().unwrap() = true;
    let mut cursor = Some(first.next);
    let rest = drain(&feed, &mut cursor, 4).await.concat();
    assert_eq!(rest, ["r05", "r06", "r07", "r08", "r09"]);
    let calls = api.calls();
    assert_eq!(&calls[..2], ["resume 4", "query 4"], "{calls:?}");
}

#[tokio::test]
async fn a_late_commit_is_found_by_a_light_rescan_and_only_it_is_read_in_full() {
    let overlap = Overlap { window: Duration::from_secs(10), rescan_every: Duration::from_secs(2) };
    let api = FakeApi::new(100, &[1_000, 3_000]);
    *api.now.lock().unwrap() = 4_000;
    let feed = StampFeed::new(&api, overlap);
    let mut cursor = None;
    assert_eq!(drain(&feed, &mut cursor, 10).await.concat(), ["r01", "r02"]);
    // Stamped between the two, committed after the scan passed it.
    api.commit("late", 2_000);
    *api.now.lock().unwrap() = 7_000;
    assert!(drain(&feed, &mut cursor, 10).await.concat().is_empty(), "the scan from the position cannot see it");
    api.calls();
    assert!(feed.pending(cursor.as_ref()).await.unwrap(), "pending sees what a rescan will read");
    assert_eq!(drain(&feed, &mut cursor, 10).await.concat(), ["late"]);
    assert_eq!(api.calls(), ["positions Default", "positions Largest", "query 10"]);
    assert!(!feed.pending(cursor.as_ref()).await.unwrap());
}

#[tokio::test]
async fn pending_asks_for_one_record_on_a_fresh_feed_and_none_mid_query() {
    let api = FakeApi::new(2, &[]);
    let feed = StampFeed::new(&api, minute());
    assert!(!feed.pending(None).await.unwrap());
    // Stamped within the overlap window of the server's clock, so a
    // pending check reads them again.
    api.commit("r01", 99_990);
    assert!(feed.pending(None).await.unwrap());
    assert_eq!(api.calls(), ["positions One", "positions One"]);
    for i in 2..=5 {
        api.commit(&format!("r{i:02}"), 99_990 + i);
    }
    let page = feed.changes(None, 2).await.unwrap();
    api.calls();
    assert!(feed.pending(Some(&page.next)).await.unwrap());
    assert!(api.calls().is_empty(), "a query in progress has more: no call");
    let mut cursor = Some(page.next);
    drain(&feed, &mut cursor, 2).await;
    api.calls();
    assert!(!feed.pending(cursor.as_ref()).await.unwrap());
    assert_eq!(api.calls(), ["positions Default", "more positions", "more positions"], "every page of the check is read");
}

#[tokio::test]
async fn a_caught_up_feed_waits_for_its_poll_turn_and_one_with_more_does_not() {
    let api = FakeApi::new(2, &[1, 2, 3]);
    let polls = PollGate::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let feed = StampFeed::new(&api, minute()).polled_by(&polls);
    let first = feed.changes(None, 2).await.unwrap();
    assert!(first.has_more);
    let rest = feed.changes(Some(&first.next), 2).await.unwrap();
    assert_eq!((rest.records.len(), rest.has_more), (1, false));
    api.calls();
    let idle = feed.changes(Some(&rest.next), 2).await.unwrap();
    assert!(idle.records.is_empty() && !idle.has_more);
    assert_eq!(idle.next, rest.next);
    assert!(api.calls().is_empty(), "no API call before the poll interval");
}

#[test]
fn a_page_is_cut_after_the_last_new_record_that_fits() {
    let rows = |keys: &[(&str, i64)]| -> Vec<Positioned<()>> {
        keys.iter().map(|(k, ms)| Positioned { stamp: at(*ms), key: (*k).to_owned(), record: () }).collect()
    };
    let mut cursor = StampCursor::default();
    let (kept, cut_off) = cut(&cursor, rows(&[("a", 1), ("b", 2), ("c", 3)]), 2);
    assert_eq!(kept.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(cut_off);
    assert!(!cut(&cursor, rows(&[("a", 1), ("b", 2)]), 2).1);
    // Delivered records do not use up the room: progress even inside one
    // millisecond.
    cursor.accept(rows(&[("a", 1), ("b", 1)]), at(100_000), Some(REQUERY.into()), minute());
    let (kept, cut_off) = cut(&cursor, rows(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]), 1);
    assert_eq!(kept.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(cut_off);
    let back = StampCursor::load(Some(&cursor.save())).unwrap();
    assert_eq!(back.locator(), Some(REQUERY), "the marker survives storage");
}

#[tokio::test]
async fn the_engines_own_writes_do_not_count_as_activity_but_a_users_change_does() {
    let api = FakeApi::new(10, &[1]);
    let polls = PollGate::new(Duration::from_secs(1), Duration::from_secs(3600));
    let feed = StampFeed::new(&api, minute()).polled_by(&polls);
    let wait = || polls.wait_of("Lead").unwrap();
    let mut cursor = None;
    drain(&feed, &mut cursor, 10).await;
    assert_eq!(wait(), Duration::from_secs(1), "a change by someone else: the shortest wait");
    // A change event (or a test) wakes the feed instead of sleeping.
    api.commit("own01", 100_001);
    polls.wake("Lead");
    let page = feed.changes(cursor.as_ref(), 10).await.unwrap();
    assert_eq!(page.records, ["own01"]);
    assert_eq!(wait(), Duration::from_secs(2), "only the engine's writes: idle, the wait doubles");
    polls.wake("Lead");
    let page = feed.changes(Some(&page.next), 10).await.unwrap();
    assert!(page.records.is_empty());
    assert_eq!(wait(), Duration::from_secs(4), "nothing at all: idle");
    api.commit("user01", 100_002);
    polls.wake("Lead");
    let page = feed.changes(Some(&page.next), 10).await.unwrap();
    assert_eq!(page.records, ["user01"]);
    assert_eq!(wait(), Duration::from_secs(1), "a user's change: back to the shortest");
    api.calls();
    feed.changes(Some(&page.next), 10).await.unwrap();
    assert!(api.calls().is_empty(), "not yet its turn: no call");
}
