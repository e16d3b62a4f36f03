//! How fast the connector may go: retry backoff after a failure, and the
//! shared view of the org's daily API usage (`Sforce-Limit-Info`) that makes
//! calls wait once crmsync's share of the limit is used up.
//!
//! The org's limit is shared with every other integration and user of the
//! org, so crmsync stops at its share (`api_share`) instead of running the
//! org into `REQUEST_LIMIT_EXCEEDED`. Usage is only learnt from answers, so
//! while over the share one call (a probe) is let through now and then to
//! learn whether usage has fallen (the limit is a rolling 24 hours).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::ApiUsage;

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
    /// While over the share, one call goes through this long after the last
    /// answer, to learn the current usage.
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
    pub(crate) fn backoff_now(&self, attempt: u32) -> Duration {
        self.backoff(attempt, rand::random::<f64>())
    }
}

/// What a call should do about the budget right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Go,
    /// Go, as the probe that learns whether usage has fallen.
    Probe,
    Wait,
}

#[derive(Debug, Default)]
struct UsageState {
    usage: Option<ApiUsage>,
    /// When the last answer (or probe) was seen.
    last: Option<Instant>,
    /// Whether the current stretch over the share has been logged.
    warned: bool,
}

/// The org's API usage as the last answer told it, shared by every call of
/// one connector.
#[derive(Debug)]
pub(crate) struct UsageGate {
    share: f64,
    state: Mutex<UsageState>,
}

impl UsageGate {
    pub fn new(share: f64) -> Self {
        UsageGate { share, state: Mutex::new(UsageState::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UsageState> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the usage an answer reported.
    pub fn record(&self, usage: ApiUsage, now: Instant) {
        let mut s = self.state();
        s.usage = Some(usage);
        s.last = Some(now);
        if usage.share() < self.share {
            s.warned = false;
        }
    }

    pub fn current(&self) -> Option<ApiUsage> {
        self.state().usage
    }

    /// Whether the last known usage is at or over the share.
    pub fn over(&self) -> bool {
        self.state().usage.is_some_and(|u| u.share() >= self.share)
    }

    /// Decides for one call at `now`; a probe pushes the next one back.
    pub fn admit(&self, now: Instant, probe_every: Duration) -> Admission {
        let mut s = self.state();
        match s.usage {
            Some(u) if u.share() >= self.share => {
                if !s.warned {
                    s.warned = true;
                    tracing::warn!(
                        used = u.used,
                        max = u.max,
                        share = self.share,
                        "Salesforce API usage is at crmsync's share of the org's daily limit; calls wait"
                    );
                }
                if s.last.is_none_or(|l| now.saturating_duration_since(l) >= probe_every) {
                    s.last = Some(now);
                    Admission::Probe
                } else {
                    Admission::Wait
                }
            }
            _ => Admission::Go,
        }
    }

    /// Waits until a call may go, or gives up as transient after
    /// `pacing.budget_wait`.
    pub async fn wait_turn(&self, pacing: &Pacing) -> Result<(), ConnectorError> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            match self.admit(Instant::now(), pacing.budget_probe) {
                Admission::Go | Admission::Probe => return Ok(()),
                Admission::Wait => {}
            }
            let waited = start.elapsed();
            if waited >= pacing.budget_wait {
                let u = self.current().map(|u| format!("{}/{}", u.used, u.max)).unwrap_or_default();
                return Err(ConnectorError::Transient(format!(
                    "Salesforce API usage {u} is at crmsync's share ({}) of the org's daily limit",
                    self.share
                )));
            }
            let nap = pacing.backoff_now(attempt).min(pacing.budget_wait - waited).max(Duration::from_millis(10));
            attempt += 1;
            tokio::time::sleep(nap).await;
        }
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

    #[test]
    fn calls_wait_at_the_share_and_probe_now_and_then() {
        let gate = UsageGate::new(0.5);
        let t0 = Instant::now();
        let probe = Duration::from_secs(60);
        assert_eq!(gate.admit(t0, probe), Admission::Go, "no usage known yet");
        gate.record(ApiUsage { used: 40, max: 100 }, t0);
        assert!(!gate.over());
        assert_eq!(gate.admit(t0, probe), Admission::Go);
        gate.record(ApiUsage { used: 50, max: 100 }, t0);
        assert!(gate.over());
        assert_eq!(gate.admit(t0 + Duration::from_secs(1), probe), Admission::Wait);
        assert_eq!(gate.admit(t0 + probe, probe), Admission::Probe);
        assert_eq!(gate.admit(t0 + probe + Duration::from_secs(1), probe), Admission::Wait, "one probe at a time");
        gate.record(ApiUsage { used: 10, max: 100 }, t0 + probe + Duration::from_secs(2));
        assert_eq!(gate.admit(t0 + probe + Duration::from_secs(2), probe), Admission::Go);
        assert_eq!(gate.current(), Some(ApiUsage { used: 10, max: 100 }));
    }

    #[tokio::test]
    async fn a_call_over_the_share_gives_up_as_transient_after_its_wait() {
        let gate = UsageGate::new(0.5);
        gate.record(ApiUsage { used: 90, max: 100 }, Instant::now());
        let pacing = Pacing {
            backoff_base: Duration::from_millis(5),
            budget_wait: Duration::from_millis(50),
            budget_probe: Duration::from_secs(3600),
            ..Pacing::default()
        };
        let start = Instant::now();
        let err = gate.wait_turn(&pacing).await.unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(matches!(&err, ConnectorError::Transient(m) if m.contains("90/100")), "{err}");
    }
}
