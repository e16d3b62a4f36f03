//! Gates on an API's daily calls and on its calls in flight:
//!
//! - [`DailyQuota`]: crmsync's own share (Account Engagement's
//!   `daily_quota`), counted per UTC day by this connector;
//! - [`DailyLimitGate`]: the API's own daily limit (Account Engagement's
//!   code 122), learnt from its answers;
//! - [`Slots`]: at most so many calls in flight (Account Engagement refuses
//!   a sixth).
//!
//! Past a daily limit, calls fail at once as transient with a message that
//! says which limit and until when, so the caller backs off (the workers
//! retry with growing delays): never a tight loop against the API. After
//! the API's limit, one call goes through every `probe_every` to learn
//! whether it was lifted; the others do not reach the API at all. Logins go
//! to the token endpoint, not to the API, and pass every gate here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use crmsync_connector::ConnectorError;
use tokio::sync::Semaphore;

use crate::gate::{Admission, CallGate, CallOutcome, CallResult, EndpointKind};
use crate::send::Judgement;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain numbers behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Calls made per UTC day, against crmsync's share when there is one.
#[derive(Debug)]
pub struct DailyQuota {
    api: &'static str,
    limit: Option<u64>,
    day: Mutex<(NaiveDate, u64)>,
}

impl DailyQuota {
    pub fn new(api: &'static str, limit: Option<u64>) -> Self {
        DailyQuota { api, limit, day: Mutex::new((NaiveDate::MIN, 0)) }
    }

    /// Counts one call at `now`, or refuses it past the share.
    pub fn take(&self, now: DateTime<Utc>) -> Result<(), ConnectorError> {
        let mut day = lock(&self.day);
        if day.0 != now.date_naive() {
            *day = (now.date_naive(), 0);
        }
        if let Some(limit) = self.limit
            && day.1 >= limit
        {
            return Err(ConnectorError::Transient(format!(
                "crmsync's share of the {} daily API calls ({limit}) is used up for {} (UTC); calls resume after midnight UTC",
                self.api, day.0
            )));
        }
        day.1 += 1;
        Ok(())
    }

    /// Gives back a call counted at `now` that was not sent after all.
    fn give_back(&self, now: DateTime<Utc>) {
        let mut day = lock(&self.day);
        if day.0 == now.date_naive() {
            day.1 = day.1.saturating_sub(1);
        }
    }

    /// Calls counted today (UTC).
    pub fn used(&self, now: DateTime<Utc>) -> u64 {
        let day = lock(&self.day);
        if day.0 == now.date_naive() { day.1 } else { 0 }
    }
}

#[async_trait]
impl CallGate for DailyQuota {
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError> {
        if kind != EndpointKind::Auth {
            self.take(Utc::now())?;
        }
        Ok(Admission::go())
    }

    async fn record(&self, kind: EndpointKind, outcome: &CallOutcome) {
        if kind != EndpointKind::Auth && !outcome.sent() {
            self.give_back(Utc::now());
        }
    }
}

/// Whether the API said its daily limit is met, and when to ask again.
#[derive(Debug)]
pub struct DailyLimitGate {
    api: &'static str,
    /// How the API says it (`code 122`), for the refusal's text.
    sign: &'static str,
    probe_every: Duration,
    /// While set: no call before this instant; one call (the probe) at it.
    next_probe: Mutex<Option<Instant>>,
}

impl DailyLimitGate {
    pub fn new(api: &'static str, sign: &'static str, probe_every: Duration) -> Self {
        DailyLimitGate { api, sign, probe_every, next_probe: Mutex::default() }
    }

    /// Lets a call through, or refuses it while the limit holds. The first
    /// call at or after the probe time goes, and pushes the next probe back.
    fn admit_at(&self, now: Instant) -> Result<(), ConnectorError> {
        let mut next = lock(&self.next_probe);
        match *next {
            Some(at) if now < at => Err(ConnectorError::Transient(format!(
                "the {} daily API limit is met ({}); the next call tries again in {} s",
                self.api,
                self.sign,
                at.saturating_duration_since(now).as_secs().max(1)
            ))),
            Some(_) => {
                *next = Some(now + self.probe_every);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The API answered that its limit is met.
    fn hit(&self, now: Instant) {
        let mut next = lock(&self.next_probe);
        if next.is_none() {
            tracing::warn!(api = self.api, probe_secs = self.probe_every.as_secs(), "the daily API limit is met; calls wait");
        }
        *next = Some(now + self.probe_every);
    }

    /// A call went through: the limit no longer holds.
    fn clear(&self) {
        let mut next = lock(&self.next_probe);
        if next.take().is_some() {
            tracing::info!(api = self.api, "the daily API limit no longer holds; calls resume");
        }
    }
}

#[async_trait]
impl CallGate for DailyLimitGate {
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError> {
        if kind != EndpointKind::Auth {
            self.admit_at(Instant::now())?;
        }
        Ok(Admission::go())
    }

    async fn record(&self, kind: EndpointKind, outcome: &CallOutcome) {
        match outcome.result {
            _ if kind == EndpointKind::Auth => {}
            CallResult::Done => self.clear(),
            CallResult::Failed(Judgement::DailyLimit) => self.hit(Instant::now()),
            _ => {}
        }
    }
}

/// At most so many calls in flight; a call waits for a slot.
#[derive(Debug)]
pub struct Slots {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Slots { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// How many calls may be in flight at once.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[async_trait]
impl CallGate for Slots {
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError> {
        if kind == EndpointKind::Auth {
            return Ok(Admission::go());
        }
        let slot =
            self.slots.clone().acquire_owned().await.map_err(|_| ConnectorError::Transient("the connector is shutting down".into()))?;
        Ok(Admission::holding(slot))
    }

    async fn record(&self, _kind: EndpointKind, _outcome: &CallOutcome) {}
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_share_is_counted_per_utc_day() {
        let q = DailyQuota::new("Account Engagement", Some(2));
        let day1 = Utc.with_ymd_and_hms(2024, 5, 1, 23, 59, 0).unwrap();
        q.take(day1).unwrap();
        q.take(day1).unwrap();
        let err = q.take(day1).unwrap_err();
        assert_eq!(
            err,
            ConnectorError::Transient(
                "crmsync's share of the Account Engagement daily API calls (2) is used up for 2024-05-01 (UTC); \
                 calls resume after midnight UTC"
                    .into()
            )
        );
        assert_eq!(q.used(day1), 2);
        let day2 = Utc.with_ymd_and_hms(2024, 5, 2, 0, 0, 1).unwrap();
        assert_eq!(q.used(day2), 0);
        q.take(day2).unwrap();
        assert_eq!(q.used(day2), 1);
        let unlimited = DailyQuota::new("Account Engagement", None);
        for _ in 0..1000 {
            unlimited.take(day1).unwrap();
        }
        assert_eq!(unlimited.used(day1), 1000);
    }

    #[tokio::test]
    async fn a_call_not_sent_after_all_is_given_back_and_logins_are_not_counted() {
        let q = DailyQuota::new("Account Engagement", Some(1));
        q.admit(EndpointKind::Auth).await.unwrap();
        q.admit(EndpointKind::Query).await.unwrap();
        assert!(q.admit(EndpointKind::Write).await.is_err());
        q.record(EndpointKind::Query, &CallOutcome::of(CallResult::NotSent)).await;
        q.admit(EndpointKind::Write).await.unwrap();
        q.record(EndpointKind::Write, &CallOutcome::of(CallResult::Lost)).await;
        assert_eq!(q.used(Utc::now()), 1, "a lost call may have reached the API: it counts");
    }

    #[test]
    fn after_the_limit_only_a_probe_now_and_then_reaches_the_api() {
        let every = Duration::from_secs(30);
        let gate = DailyLimitGate::new("Account Engagement", "code 122", every);
        let t0 = Instant::now();
        assert!(gate.admit_at(t0).is_ok());
        gate.hit(t0);
        let err = gate.admit_at(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err,
            ConnectorError::Transient("the Account Engagement daily API limit is met (code 122); the next call tries again in 29 s".into())
        );
        assert!(gate.admit_at(t0 + every).is_ok(), "the probe");
        assert!(gate.admit_at(t0 + every + Duration::from_secs(1)).is_err(), "one probe at a time");
        gate.clear();
        assert!(gate.admit_at(t0 + every + Duration::from_secs(2)).is_ok());
    }

    #[tokio::test]
    async fn the_limit_is_learnt_from_answers_and_lifted_by_a_success() {
        let gate = DailyLimitGate::new("Account Engagement", "code 122", Duration::from_secs(3600));
        gate.record(EndpointKind::Query, &CallOutcome::of(CallResult::Failed(Judgement::Retry { unprocessed: true }))).await;
        assert!(gate.admit(EndpointKind::Query).await.is_ok(), "only the daily limit closes the gate");
        gate.record(EndpointKind::Query, &CallOutcome::of(CallResult::Failed(Judgement::DailyLimit))).await;
        assert!(gate.admit(EndpointKind::Write).await.is_err());
        assert!(gate.admit(EndpointKind::Auth).await.is_ok(), "a login is no API call");
        gate.record(EndpointKind::Query, &CallOutcome::of(CallResult::Done)).await;
        assert!(gate.admit(EndpointKind::Write).await.is_ok());
    }

    #[tokio::test]
    async fn a_call_holds_its_slot_until_its_admission_is_dropped() {
        let slots = Slots::new(1);
        let held = slots.admit(EndpointKind::Query).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(20), slots.admit(EndpointKind::Query)).await;
        assert!(waiting.is_err(), "no second slot");
        assert!(slots.admit(EndpointKind::Auth).await.is_ok(), "logins take no slot");
        drop(held);
        assert!(slots.admit(EndpointKind::Query).await.is_ok());
        assert_eq!(Slots::new(0).max(), 1);
    }
}
