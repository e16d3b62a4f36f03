//! The business unit's daily calls: crmsync's own share (`daily_quota`),
//! counted per UTC day by this connector, and the API's limit (code 122),
//! learnt from its answers.
//!
//! Past either, calls fail at once as transient with a message that says
//! which limit and until when, so the caller backs off (the workers retry
//! with growing delays): never a tight loop against the API. After a 122,
//! one call goes through every `budget_probe` to learn whether the limit
//! was lifted; the others do not reach the API at all.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use crmsync_connector::ConnectorError;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain numbers behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Calls made per UTC day, against crmsync's share when there is one.
#[derive(Debug)]
pub(crate) struct DailyQuota {
    limit: Option<u64>,
    day: Mutex<(NaiveDate, u64)>,
}

impl DailyQuota {
    pub fn new(limit: Option<u64>) -> Self {
        DailyQuota { limit, day: Mutex::new((NaiveDate::MIN, 0)) }
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
                "crmsync's share of the Account Engagement daily API calls ({limit}) is used up for {} (UTC); calls resume after midnight UTC",
                day.0
            )));
        }
        day.1 += 1;
        Ok(())
    }

    /// Calls counted today (UTC).
    pub fn used(&self, now: DateTime<Utc>) -> u64 {
        let day = lock(&self.day);
        if day.0 == now.date_naive() { day.1 } else { 0 }
    }
}

/// Whether the API said its daily limit is met, and when to ask again.
#[derive(Debug, Default)]
pub(crate) struct LimitGate {
    /// While set: no call before this instant; one call (the probe) at it.
    next_probe: Mutex<Option<Instant>>,
}

impl LimitGate {
    /// Lets a call through, or refuses it while the limit holds. The first
    /// call at or after the probe time goes, and pushes the next probe back.
    pub fn admit(&self, now: Instant, probe_every: Duration) -> Result<(), ConnectorError> {
        let mut next = lock(&self.next_probe);
        match *next {
            Some(at) if now < at => Err(ConnectorError::Transient(format!(
                "the Account Engagement daily API limit is met (code 122); the next call tries again in {} s",
                at.saturating_duration_since(now).as_secs().max(1)
            ))),
            Some(_) => {
                *next = Some(now + probe_every);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The API answered 122.
    pub fn hit(&self, now: Instant, probe_every: Duration) {
        let mut next = lock(&self.next_probe);
        if next.is_none() {
            tracing::warn!(probe_secs = probe_every.as_secs(), "the Account Engagement daily API limit is met; calls wait");
        }
        *next = Some(now + probe_every);
    }

    /// A call went through: the limit no longer holds.
    pub fn clear(&self) {
        let mut next = lock(&self.next_probe);
        if next.take().is_some() {
            tracing::info!("the Account Engagement daily API limit no longer holds; calls resume");
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_share_is_counted_per_utc_day() {
        let q = DailyQuota::new(Some(2));
        let day1 = Utc.with_ymd_and_hms(2024, 5, 1, 23, 59, 0).unwrap();
        q.take(day1).unwrap();
        q.take(day1).unwrap();
        let err = q.take(day1).unwrap_err();
        assert!(matches!(&err, ConnectorError::Transient(m) if m.contains("(2)") && m.contains("2024-05-01")), "{err}");
        assert_eq!(q.used(day1), 2);
        let day2 = Utc.with_ymd_and_hms(2024, 5, 2, 0, 0, 1).unwrap();
        assert_eq!(q.used(day2), 0);
        q.take(day2).unwrap();
        assert_eq!(q.used(day2), 1);
        let unlimited = DailyQuota::new(None);
        for _ in 0..1000 {
            unlimited.take(day1).unwrap();
        }
        assert_eq!(unlimited.used(day1), 1000);
    }

    #[test]
    fn after_the_limit_only_a_probe_now_and_then_reaches_the_api() {
        let gate = LimitGate::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(30);
        assert!(gate.admit(t0, every).is_ok());
        gate.hit(t0, every);
        let err = gate.admit(t0 + Duration::from_secs(1), every).unwrap_err();
        assert!(matches!(&err, ConnectorError::Transient(m) if m.contains("code 122")), "{err}");
        assert!(gate.admit(t0 + every, every).is_ok(), "the probe");
        assert!(gate.admit(t0 + every + Duration::from_secs(1), every).is_err(), "one probe at a time");
        gate.clear();
        assert!(gate.admit(t0 + every + Duration::from_secs(2), every).is_ok());
    }
}
