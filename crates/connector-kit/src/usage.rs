//! A gate on the usage an API reports of its daily limit (Salesforce's
//! `Sforce-Limit-Info` on every answer): calls wait once crmsync's share of
//! the limit is used up.
//!
//! The org's limit is shared with every other integration and user of the
//! org, so crmsync stops at its share (`api_share`) instead of running the
//! org into `REQUEST_LIMIT_EXCEEDED`. Usage is only learnt from answers, so
//! while over the share one call (a probe) is let through now and then to
//! learn whether usage has fallen (the limit is a rolling 24 hours).
//! Logins and change-event calls (the Pub/Sub API) do not count against the
//! limit and are never held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::ApiUsage;

use crate::gate::{Admission, CallGate, CallOutcome, EndpointKind};
use crate::pacing::Pacing;

/// What a call should do about the usage right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
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

/// The API usage as the last answer told it, shared by every call of one
/// connector.
#[derive(Debug)]
pub struct UsageGate {
    api: &'static str,
    share: f64,
    /// `budget_wait` and `budget_probe` say how long a call waits and how
    /// often a probe goes; the backoff spaces the waiting call's looks.
    pacing: Pacing,
    state: Mutex<UsageState>,
}

impl UsageGate {
    pub fn new(api: &'static str, share: f64, pacing: Pacing) -> Self {
        UsageGate { api, share, pacing, state: Mutex::new(UsageState::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UsageState> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the usage an answer reported.
    pub fn learn(&self, usage: ApiUsage, now: Instant) {
        let mut s = self.state();
        s.usage = Some(usage);
        s.last = Some(now);
        if usage.share() < self.share {
            s.warned = false;
        }
    }

    /// The usage the last answer reported, if any answer has yet.
    pub fn current(&self) -> Option<ApiUsage> {
        self.state().usage
    }

    /// Whether the last known usage is at or over the share.
    pub fn over(&self) -> bool {
        self.state().usage.is_some_and(|u| u.share() >= self.share)
    }

    /// Decides for one call at `now`; a probe pushes the next one back.
    fn turn(&self, now: Instant) -> Turn {
        let mut s = self.state();
        match s.usage {
            Some(u) if u.share() >= self.share => {
                if !s.warned {
                    s.warned = true;
                    tracing::warn!(
                        api = self.api,
                        used = u.used,
                        max = u.max,
                        share = self.share,
                        "API usage is at crmsync's share of the daily limit; calls wait"
                    );
                }
                if s.last.is_none_or(|l| now.saturating_duration_since(l) >= self.pacing.budget_probe) {
                    s.last = Some(now);
                    Turn::Probe
                } else {
                    Turn::Wait
                }
            }
            _ => Turn::Go,
        }
    }

    /// Waits until a call may go, or gives up as transient after
    /// `budget_wait`.
    async fn wait_turn(&self) -> Result<(), ConnectorError> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            match self.turn(Instant::now()) {
                Turn::Go | Turn::Probe => return Ok(()),
                Turn::Wait => {}
            }
            let waited = start.elapsed();
            if waited >= self.pacing.budget_wait {
                let u = self.current().map(|u| format!("{}/{}", u.used, u.max)).unwrap_or_default();
                return Err(ConnectorError::Transient(format!(
                    "{} API usage {u} is at crmsync's share ({}) of the org's daily limit",
                    self.api, self.share
                )));
            }
            let nap = self.pacing.backoff_now(attempt).min(self.pacing.budget_wait - waited).max(Duration::from_millis(10));
            attempt += 1;
            tokio::time::sleep(nap).await;
        }
    }
}

#[async_trait]
impl CallGate for UsageGate {
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError> {
        if !matches!(kind, EndpointKind::Auth | EndpointKind::Events) {
            self.wait_turn().await?;
        }
        Ok(Admission::go())
    }

    async fn record(&self, _kind: EndpointKind, outcome: &CallOutcome) {
        // Any answer may report usage, a refusal too.
        if let Some(u) = outcome.usage {
            self.learn(u, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::CallResult;

    fn gate(probe: Duration) -> UsageGate {
        UsageGate::new("Salesforce", 0.5, Pacing { budget_probe: probe, ..Pacing::default() })
    }

    #[test]
    fn calls_wait_at_the_share_and_probe_now_and_then() {
        let probe = Duration::from_secs(60);
        let gate = gate(probe);
        let t0 = Instant::now();
        assert_eq!(gate.turn(t0), Turn::Go, "no usage known yet");
        gate.learn(ApiUsage { used: 40, max: 100 }, t0);
        assert!(!gate.over());
        assert_eq!(gate.turn(t0), Turn::Go);
        gate.learn(ApiUsage { used: 50, max: 100 }, t0);
        assert!(gate.over());
        assert_eq!(gate.turn(t0 + Duration::from_secs(1)), Turn::Wait);
        assert_eq!(gate.turn(t0 + probe), Turn::Probe);
        assert_eq!(gate.turn(t0 + probe + Duration::from_secs(1)), Turn::Wait, "one probe at a time");
        gate.learn(ApiUsage { used: 10, max: 100 }, t0 + probe + Duration::from_secs(2));
        assert_eq!(gate.turn(t0 + probe + Duration::from_secs(2)), Turn::Go);
        assert_eq!(gate.current(), Some(ApiUsage { used: 10, max: 100 }));
    }

    #[tokio::test]
    async fn a_call_over_the_share_gives_up_as_transient_after_its_wait_but_a_login_or_a_subscription_goes() {
        let pacing = Pacing {
            backoff_base: Duration::from_millis(5),
            budget_wait: Duration::from_millis(50),
            budget_probe: Duration::from_secs(3600),
            ..Pacing::default()
        };
        let gate = UsageGate::new("Salesforce", 0.5, pacing);
        let answered = CallOutcome { result: CallResult::Done, usage: Some(ApiUsage { used: 90, max: 100 }) };
        gate.record(EndpointKind::Query, &answered).await;
        let start = Instant::now();
        assert!(gate.admit(EndpointKind::Auth).await.is_ok(), "logins are not counted by the org");
        assert!(gate.admit(EndpointKind::Events).await.is_ok(), "nor are change-event subscriptions");
        let err = gate.admit(EndpointKind::Query).await.unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            err,
            ConnectorError::Transient("Salesforce API usage 90/100 is at crmsync's share (0.5) of the org's daily limit".into())
        );
    }
}
