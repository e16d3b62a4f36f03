//! How fast a connector may go: how often and how soon a failed call is
//! tried again, and how long calls wait for a limit or a job. Retries back
//! off exponentially with jitter, so replicas that failed together spread
//! out and none hammers an API that is already struggling.

use std::time::Duration;

/// The connector's timing knobs. The defaults suit a real org; tests against
/// the sandbox server shorten them.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    /// Retries of a call that failed transiently (after the first attempt).
    pub retries: u32,
    /// The first retry's delay; each further one doubles, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a call waits for usage to fall under the share before it
    /// gives up as transient.
    pub budget_wait: Duration,
    /// While over the share, or once an API's daily limit is met, one call
    /// goes through this long after the last, to learn whether it still is.
    pub budget_probe: Duration,
    /// The longest a Bulk API job is waited for before the write is reported
    /// as transient (the job keeps running; its writes are idempotent).
    pub bulk_wait: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            retries: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            budget_wait: Duration::from_secs(60),
            budget_probe: Duration::from_secs(300),
            bulk_wait: Duration::from_secs(600),
        }
    }
}

impl Pacing {
    /// The delay before retry number `attempt` (0 for the first retry):
    /// exponential, capped, with "equal jitter": at least half the
    /// exponential step, so replicas that failed together spread out but
    /// none retries in a tight loop. `jitter` is uniform in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let step = self.backoff_base.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(self.backoff_max);
        let half = step / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// [`Pacing::backoff`] with a random jitter.
    pub fn backoff_now(&self, attempt: u32) -> Duration {
        self.backoff(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let p = Pacing { backoff_base: Duration::from_millis(100), backoff_max: Duration::from_secs(1), ..Pacing::default() };
        assert_eq!(p.backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(p.backoff(0, 0.999_999).as_millis(), 99);
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(300));
        // Capped, and never a tight loop even at huge attempt numbers.
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(1));
        assert!(p.backoff(40, 0.0) >= Duration::from_millis(500));
        for attempt in 0..10 {
            assert!(p.backoff(attempt, rand::random()) >= Duration::from_millis(50));
        }
    }
}
