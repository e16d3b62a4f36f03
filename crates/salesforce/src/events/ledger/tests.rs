//! The ledger as a feed's calls drive it: events come, calls plan, read
//! and hand out cursors, the producer stores them (or not) and hands them
//! back.

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;

fn r(n: u8) -> ReplayId {
    vec![0, 0, 0, 0, 0, 0, 0, n]
}

fn cursor(n: u32) -> Cursor {
    Cursor(json!({ "pos": n }))
}

/// One call: plans from `input`, reads (fresh or not), hands out cursor
/// `out`; returns the plan and the replay id the cursor carries.
fn call(ledger: &mut Ledger, input: Option<&Cursor>, fresh: bool, out: u32) -> (Plan, Option<ReplayId>) {
    let plan = ledger.plan(input);
    let (carried, replay) = ledger.covered(&plan, fresh);
    ledger.handed(cursor(out), carried);
    (plan, replay)
}

#[test]
fn a_change_is_carried_by_the_cursor_of_a_query_that_began_after_it_and_dropped_once_stored() {
    let mut ledger = Ledger::default();
    ledger.receive(r(1), &Signal::Changed);
    ledger.receive(r(2), &Signal::Changed);
    let (plan, replay) = call(&mut ledger, Some(&cursor(0)), true, 1);
    assert!(plan.query && plan.ids.is_empty() && plan.look_back.is_none());
    assert_eq!(replay, Some(r(2)));
    assert!(!ledger.entries.is_empty(), "kept until the cursor comes back stored");
    let (plan, replay) = call(&mut ledger, Some(&cursor(1)), true, 2);
    assert!(!plan.query && ledger.entries.is_empty());
    assert_eq!(replay, None, "nothing new: the cursor keeps the replay id it has");
}

#[test]
fn a_call_within_an_older_query_carries_no_change_and_the_feed_queries_again() {
    let mut ledger = Ledger::default();
    ledger.receive(r(1), &Signal::Changed);
    let (plan, replay) = call(&mut ledger, Some(&cursor(0)), false, 1);
    assert!(plan.query);
    assert_eq!(replay, None, "the page came from a query that began before the event");
    assert!(ledger.owes_query(0));
    let (_, replay) = call(&mut ledger, Some(&cursor(1)), true, 2);
    assert_eq!(replay, Some(r(1)));
}

#[test]
fn an_event_received_during_a_call_waits_for_the_next() {
    let mut ledger = Ledger::default();
    ledger.receive(r(1), &Signal::Changed);
    let plan = ledger.plan(Some(&cursor(0)));
    ledger.receive(r(2), &Signal::Changed);
    let (carried, replay) = ledger.covered(&plan, true);
    ledger.handed(cursor(1), carried);
    assert_eq!(replay, Some(r(1)));
    assert!(ledger.owes_query(carried), "r2 still wants a query");
    let (_, replay) = call(&mut ledger, Some(&cursor(1)), true, 2);
    assert_eq!(replay, Some(r(2)));
}

#[test]
fn gap_records_and_a_look_back_are_done_again_until_a_cursor_carrying_them_is_stored() {
    let mut ledger = Ledger::default();
    let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
    ledger.receive(r(1), &Signal::Gap(vec!["00Q2".into(), "00Q1".into()]));
    ledger.receive(r(2), &Signal::LookBack(t(50)));
    ledger.receive(r(3), &Signal::LookBack(t(10)));
    let (plan, replay) = call(&mut ledger, Some(&cursor(0)), true, 1);
    assert_eq!((plan.ids.clone(), plan.look_back, plan.query), (vec!["00Q1".to_owned(), "00Q2".to_owned()], Some(t(10)), true));
    assert_eq!(replay, Some(r(3)));
    // The page was not published: the producer reads from the old cursor.
    let (again, _) = call(&mut ledger, Some(&cursor(0)), true, 2);
    assert_eq!(again, plan, "the same records and look back, again");
    let (done, _) = call(&mut ledger, Some(&cursor(2)), true, 3);
    assert!(done.ids.is_empty() && done.look_back.is_none() && ledger.entries.is_empty());
}

#[test]
fn the_engines_own_writes_move_the_replay_id_without_a_query() {
    let mut ledger = Ledger::default();
    ledger.receive(r(7), &Signal::Echo);
    let (plan, replay) = call(&mut ledger, Some(&cursor(0)), false, 0);
    assert!(!plan.query, "no query for an echo");
    assert_eq!(replay, Some(r(7)));
}

#[test]
fn after_a_subscription_at_latest_nothing_is_carried_before_the_catch_up_query() {
    let mut ledger = Ledger::default();
    ledger.catch_up();
    ledger.receive(r(4), &Signal::Echo);
    let (plan, replay) = call(&mut ledger, None, false, 1);
    assert!(plan.query);
    assert_eq!(replay, None, "the echo comes after the catch-up, which has not run");
    let (_, replay) = call(&mut ledger, Some(&cursor(1)), true, 2);
    assert_eq!(replay, Some(r(4)));
}

#[test]
fn events_between_two_calls_make_one_entry() {
    let mut ledger = Ledger::default();
    for n in 1..=200u8 {
        let signal = if n % 50 == 0 { Signal::Gap(vec![format!("00Q{n}")]) } else { Signal::Changed };
        ledger.receive(r(n), &signal);
    }
    assert_eq!(ledger.entries.len(), 1);
    let plan = ledger.plan(None);
    assert_eq!(plan.ids.len(), 4);
    ledger.receive(r(201), &Signal::Changed);
    ledger.receive(r(202), &Signal::Echo);
    assert_eq!(ledger.entries.len(), 2, "nothing merges into what a call planned over");
    assert_eq!(ledger.covered(&plan, true), (200, Some(r(200))));
}
