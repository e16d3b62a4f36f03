//! The batch lane's budget (R7, I4): a connection's batch-lane records are
//! processed at its budget (12,000 an hour by default: one every 0.3 s), with
//! at most a small burst, across every replica of the applier together.
//!
//! Two gates, both required before a chunk of records is processed:
//!
//! 1. **Global**, in Redis: a GCRA (generic cell rate algorithm) per
//!    connection, run atomically by a Lua script on the Redis server's clock.
//!    Its state is one timestamp, the theoretical arrival time; a request for
//!    `n` records is granted when it fits within the burst, otherwise it
//!    answers how long to wait. All replicas share it, so the budget holds for
//!    the tier as a whole, however many replicas run.
//! 2. **Local**, with the `governor` crate: each replica paces its own
//!    spending at the same quota, so even a replica handed a full burst
//!    spends it evenly.
//!
//! A budget lifted after a slower one was spent is followed at once: the
//! state is never kept more than one burst ahead of now at the current
//! pace.
//!
//! When Redis is unreachable no grant can be had and the batch lane waits
//! (fail closed): nothing is processed without a grant, so the budget can be
//! under-used but never overshot. A Redis restart loses the timestamp, which
//! allows at most one burst.
//!
//! The caller passes the pace it read from the connection's settings at
//! every request and waits no longer than [`MAX_WAIT`] before asking again:
//! an admin who lifts the budget for a first sync, or lowers it as the org's
//! limits near, sees it followed within a second or so, in both directions,
//! without restarting anything. Asking reserves nothing (the GCRA only
//! moves when it grants), so a wait may be dropped at any point, as a
//! shutdown does.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
-- Spent at a slower pace, the state can lie hours ahead (one record an
-- hour, a burst of 5: five hours); under the current pace it never lies
-- more than a burst ahead, so a lifted budget applies at once. Kept, so
-- that the wait answered below is the wait there is.
local cap = now + burst * interval
if tat > cap then
  tat = cap
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local new_tat = tat + n * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
";

/// A connection's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pace {
    pub per_hour: u32,
    /// Records that may be processed at once before pacing applies.
    pub burst: u32,
}

impl Pace {
    /// The time one record's share of the budget lasts.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(3600.0 / f64::from(self.per_hour.max(1)))
    }

    fn quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst.max(1)).expect("at least one");
        Quota::with_period(self.interval()).expect("a positive interval").allow_burst(burst)
    }
}

/// The longest a waiting chunk sleeps before it asks for the pace again.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Why a grant could not be had (the caller waits and asks again).
#[derive(Debug, thiserror::Error)]
#[error("batch budget unavailable (redis: {0}); the batch lane waits")]
pub struct BudgetError(#[from] redis::RedisError);

/// This replica's limiter of one connection, with the pace it was built for.
type Local = (Pace, Arc<DefaultDirectRateLimiter>);

/// The budgets of every connection, as one replica sees them.
#[derive(Clone)]
pub struct BatchBudget {
    redis: ConnectionManager,
    prefix: String,
    gcra: Script,
    local: Arc<Mutex<HashMap<String, Local>>>,
}

impl std::fmt::Debug for BatchBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBudget").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl BatchBudget {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        BatchBudget { redis, prefix: prefix.to_owned(), gcra: Script::new(GCRA), local: Arc::default() }
    }

    fn key(&self, connection_id: &str) -> String {
        format!("{}:{connection_id}:budget:tat", self.prefix)
    }

    /// This replica's limiter for a connection, rebuilt when the pace changes.
    async fn limiter(&self, connection_id: &str, pace: Pace) -> Arc<DefaultDirectRateLimiter> {
        let mut local = self.local.lock().await;
        match local.get(connection_id) {
            Some((p, l)) if *p == pace => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::direct(pace.quota()));
                local.insert(connection_id.to_owned(), (pace, l.clone()));
                l
            }
        }
    }

    /// Asks for `n` records (at most the burst) of the connection's budget
    /// now: `Ok(None)` when granted, by the global budget and then this
    /// replica's own pace (rarely a wait: the global grant already spaced
    /// the chunk; only chunks granted together on this replica are spread
    /// out here), or `Ok(Some(wait))`, how long until the global budget
    /// could grant them. Asking reserves nothing: a caller told to wait may
    /// go and do other work, or give the lane up.
    pub async fn try_take(&self, connection_id: &str, pace: Pace, n: u32) -> Result<Option<Duration>, BudgetError> {
        let n = n.clamp(1, pace.burst.max(1));
        let interval = pace.interval().as_micros() as u64;
        let mut conn = self.redis.clone();
        let wait_us: u64 =
            self.gcra.key(self.key(connection_id)).arg(interval).arg(pace.burst.max(1)).arg(n).invoke_async(&mut conn).await?;
        if wait_us > 0 {
            return Ok(Some(Duration::from_micros(wait_us)));
        }
        let limiter = self.limiter(connection_id, pace).await;
        let cells = NonZeroU32::new(n).expect("n >= 1");
        // `n` is within the burst, so the limiter can always grant it.
        let _ = limiter.until_n_ready(cells).await;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_one_record_every_300_ms() {
        let pace = Pace { per_hour: 12_000, burst: 5 };
        assert_eq!(pace.interval(), Duration::from_millis(300));
    }
}
