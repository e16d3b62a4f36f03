//! How often a change feed may query the API.
//!
//! An API that does not tell crmsync when a record changes is polled, and
//! each poll is an API call counted against the daily requests (I8).
//! Six feeds polled every half second would be a million calls a day;
//! [`PollGate`] lets a feed that last came up with nothing more to read
//! query again only after the endpoint's `poll_interval_secs`. A feed in
//! the middle of a query (more pages waiting) is never held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When each feed last read everything there was.
#[derive(Debug)]
pub struct PollGate {
    interval: Duration,
    caught_up: Mutex<HashMap<String, Instant>>,
}

impl PollGate {
    pub fn new(interval: Duration) -> Self {
        PollGate { interval, caught_up: Mutex::default() }
    }

    /// Whether `feed` may query at `now`.
    pub fn may_poll(&self, feed: &str, now: Instant) -> bool {
        let caught_up = self.caught_up.lock().unwrap_or_else(|p| p.into_inner());
        caught_up.get(feed).is_none_or(|at| now.saturating_duration_since(*at) >= self.interval)
    }

    /// Records how a query of `feed` ended at `now`: with more to read (the
    /// next call goes on at once) or caught up.
    pub fn polled(&self, feed: &str, has_more: bool, now: Instant) {
        let mut caught_up = self.caught_up.lock().unwrap_or_else(|p| p.into_inner());
        if has_more {
            caught_up.remove(feed);
        } else {
            caught_up.insert(feed.to_owned(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_up_feed_waits_the_interval_and_a_feed_with_more_does_not() {
        let gate = PollGate::new(Duration::from_secs(15));
        let t0 = Instant::now();
        assert!(gate.may_poll("Lead", t0), "a feed never polled may poll");
        gate.polled("Lead", false, t0);
        assert!(!gate.may_poll("Lead", t0 + Duration::from_secs(14)));
        assert!(gate.may_poll("Lead", t0 + Duration::from_secs(15)));
        assert!(gate.may_poll("Contact", t0), "each object has its own turn");
        gate.polled("Lead", true, t0 + Duration::from_secs(15));
        assert!(gate.may_poll("Lead", t0 + Duration::from_secs(15)), "more pages wait: go on at once");
        let off = PollGate::new(Duration::ZERO);
        off.polled("Lead", false, t0);
        assert!(off.may_poll("Lead", t0), "a zero interval never holds back");
    }
}
