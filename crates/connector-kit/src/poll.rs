//! How often a change feed may query the API.
//!
//! An API that does not tell crmsync when a record changes is polled, and
//! each poll is an API call counted against the daily requests (I8). A
//! connection that is idle must cost next to nothing, so [`PollGate`]
//! backs off: a feed whose last poll found changes polls again after the
//! endpoint's `poll_interval_secs`, and each poll that finds nothing new
//! doubles the wait, up to `poll_max_secs` (5 s while changes flow, up to
//! 2 minutes idle by default: the cycle Account Engagement's own connector
//! keeps). A feed in the middle of a query (more pages waiting) is never
//! held back.
//!
//! What counts as a change is the caller's judgement ([`Polled`]): the
//! engine's own writes coming back through the feed are not activity (I7),
//! so an idle connection whose only traffic is the engine's does not keep
//! polling at the fast pace.
//!
//! Something that learns of a change another way (a change event) calls
//! [`PollGate::wake`]: the feed's next poll goes at once. While such a
//! signal is live for a feed ([`PollGate::listen`]), polling is only a
//! reconciliation sweep: a caught-up feed waits the sweep interval, except
//! that a poll which found changes is followed by one more a look-back
//! later (so the stamp cursor's look back over its overlap window, which
//! finds late commits, is not left to the next sweep). When the signal is
//! lost ([`PollGate::unlisten`]) the feed polls at once, then backs off as
//! before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a poll of a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// More pages are waiting: the next call goes on at once.
    More,
    /// Caught up, having found changes someone other than the engine made.
    Active,
    /// Caught up with nothing new, or only the engine's own writes.
    Idle,
}

/// When a feed may poll next, and how long it waited last.
#[derive(Debug, Clone, Copy)]
struct Turn {
    due: Instant,
    wait: Duration,
}

/// The wait after a poll that ended `how`, when the previous wait was
/// `previous` (none before the first poll): the shortest after activity,
/// doubling while idle, never above `max`.
pub fn next_wait(previous: Option<Duration>, how: Polled, min: Duration, max: Duration) -> Duration {
    match (how, previous) {
        (Polled::More, _) => previous.unwrap_or(min),
        (Polled::Active, _) | (Polled::Idle, None) => min,
        (Polled::Idle, Some(w)) => w.saturating_mul(2).clamp(min, max.max(min)),
    }
}

/// How a feed with a live change signal polls: a sweep every `sweep`, and
/// one poll `look_back` after a poll that found changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub sweep: Duration,
    pub look_back: Duration,
}

impl Listening {
    /// The wait after a poll that ended `how` (`More` never waits).
    fn wait(self, how: Polled) -> Duration {
        match how {
            Polled::More => Duration::ZERO,
            Polled::Active => self.look_back.min(self.sweep),
            Polled::Idle => self.sweep,
        }
    }
}

/// Each feed's next turn to poll.
#[derive(Debug)]
pub struct PollGate {
    min: Duration,
    max: Duration,
    turns: Mutex<HashMap<String, Turn>>,
    /// Feeds whose changes are signalled another way, and how they poll.
    listening: Mutex<HashMap<String, Listening>>,
}

impl PollGate {
    /// Waits `min` after activity, doubling while idle up to `max` (raised
    /// to `min` if below it). A zero `min` and `max` never hold back.
    pub fn new(min: Duration, max: Duration) -> Self {
        PollGate { min, max: max.max(min), turns: Mutex::default(), listening: Mutex::default() }
    }

    fn listening(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listening>> {
        self.listening.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn turns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Turn>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `feed` may query at `now`.
    pub fn may_poll(&self, feed: &str, now: Instant) -> bool {
        self.turns().get(feed).is_none_or(|t| now >= t.due)
    }

    /// Records how a query of `feed` ended at `now`.
    pub fn polled(&self, feed: &str, how: Polled, now: Instant) {
        let listening = self.listening().get(feed).copied();
        let mut turns = self.turns();
        let previous = turns.get(feed).map(|t| t.wait);
        // The adaptive wait goes on being kept while listening, so that a
        // lost signal falls back to the pace the feed had.
        let wait = next_wait(previous, how, self.min, self.max);
        let due = match (how, listening) {
            (Polled::More, _) => now,
            (_, Some(l)) => now + l.wait(how),
            (_, None) => now + wait,
        };
        turns.insert(feed.to_owned(), Turn { due, wait });
    }

    /// `feed` changed (a change event said so): its next poll goes at once.
    pub fn wake(&self, feed: &str) {
        if let Some(t) = self.turns().get_mut(feed) {
            t.due = Instant::now();
        }
    }

    /// `feed`'s changes are signalled from now on (its change events are
    /// live): caught up, it polls as `listening` says. Its current turn is
    /// kept (the first sweep starts after the next poll).
    pub fn listen(&self, feed: &str, listening: Listening) {
        self.listening().insert(feed.to_owned(), listening);
    }

    /// `feed`'s signal is lost: it polls at once (what happened while the
    /// signal was failing is read now), then backs off as any feed does.
    pub fn unlisten(&self, feed: &str) {
        if self.listening().remove(feed).is_some() {
            self.wake(feed);
        }
    }

    /// Whether `feed`'s changes are signalled.
    pub fn is_listening(&self, feed: &str) -> bool {
        self.listening().contains_key(feed)
    }

    /// How long `feed` waits after its last poll (none before the first).
    pub fn wait_of(&self, feed: &str) -> Option<Duration> {
        self.turns().get(feed).map(|t| t.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_polls_double_the_wait_up_to_the_cap_and_activity_resets_it() {
        let (min, max) = (5 * S, 120 * S);
        let mut wait = None;
        let mut schedule = Vec::new();
        for _ in 0..8 {
            let w = next_wait(wait, Polled::Idle, min, max);
            schedule.push(w.as_secs());
            wait = Some(w);
        }
        assert_eq!(schedule, [5, 10, 20, 40, 80, 120, 120, 120]);
        assert_eq!(next_wait(wait, Polled::Active, min, max), min, "a change brings the fast pace back");
        assert_eq!(next_wait(wait, Polled::More, min, max), 120 * S, "more pages keep the wait as it was");
        assert_eq!(next_wait(None, Polled::More, min, max), min);
        assert_eq!(next_wait(Some(S), Polled::Idle, min, 2 * S), min, "never below the shortest, nor a cap under it");
    }

    #[test]
    fn a_feed_waits_its_turn_and_a_wake_lets_it_go_at_once() {
        let gate = PollGate::new(5 * S, 120 * S);
        let t0 = Instant::now();
        assert!(gate.may_poll("Lead", t0), "a feed never polled may poll");
        gate.polled("Lead", Polled::Idle, t0);
        assert!(!gate.may_poll("Lead", t0 + 4 * S));
        assert!(gate.may_poll("Lead", t0 + 5 * S));
        gate.polled("Lead", Polled::Idle, t0 + 5 * S);
        assert_eq!(gate.wait_of("Lead"), Some(10 * S));
        assert!(!gate.may_poll("Lead", t0 + 14 * S));
        assert!(gate.may_poll("Contact", t0), "each feed has its own turn");
        gate.polled("Lead", Polled::More, t0 + 15 * S);
        assert!(gate.may_poll("Lead", t0 + 15 * S), "more pages wait: go on at once");
        gate.polled("Lead", Polled::Idle, t0 + 15 * S);
        assert_eq!(gate.wait_of("Lead"), Some(20 * S));
        gate.wake("Lead");
        assert!(gate.may_poll("Lead", Instant::now()), "woken: the next poll goes at once");
        let off = PollGate::new(Duration::ZERO, Duration::ZERO);
        off.polled("Lead", Polled::Idle, t0);
        off.polled("Lead", Polled::Idle, t0);
        assert!(off.may_poll("Lead", t0), "a zero interval never holds back");
    }

    #[test]
    fn a_listening_feed_sweeps_looks_back_once_after_changes_and_polls_at_once_when_the_signal_is_lost() {
        let gate = PollGate::new(5 * S, 120 * S);
        let t0 = Instant::now();
        gate.polled("Lead", Polled::Idle, t0);
        gate.listen("Lead", Listening { sweep: 3600 * S, look_back: 60 * S });
        assert!(gate.is_listening("Lead") && !gate.is_listening("Contact"));
        assert!(gate.may_poll("Lead", t0 + 5 * S), "the turn in hand is kept");
        gate.polled("Lead", Polled::Idle, t0 + 5 * S);
        assert!(!gate.may_poll("Lead", t0 + 3000 * S), "caught up: the next poll is the sweep");
        assert!(gate.may_poll("Lead", t0 + 3605 * S));
        gate.polled("Lead", Polled::Active, t0 + 3605 * S);
        assert!(!gate.may_poll("Lead", t0 + 3660 * S));
        assert!(gate.may_poll("Lead", t0 + 3665 * S), "changes found: one look back a window later");
        gate.polled("Lead", Polled::More, t0 + 3665 * S);
        assert!(gate.may_poll("Lead", t0 + 3665 * S), "more pages never wait");
        gate.polled("Lead", Polled::Idle, t0 + 3665 * S);
        gate.wake("Lead");
        assert!(gate.may_poll("Lead", Instant::now()), "an event wakes it");
        gate.polled("Lead", Polled::Idle, Instant::now());
        gate.unlisten("Lead");
        assert!(!gate.is_listening("Lead"));
        assert!(gate.may_poll("Lead", Instant::now()), "the signal lost: a poll at once");
        gate.polled("Lead", Polled::Idle, t0 + 4000 * S);
        assert!(gate.may_poll("Lead", t0 + 4120 * S), "then the adaptive pace, which was kept");
        gate.unlisten("Contact");
        assert!(gate.may_poll("Contact", t0), "unlistening a feed that never listened changes nothing");
    }
}
