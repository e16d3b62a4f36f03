//! A connection's daily API allowance per system (I8: the customer's API
//! allowance is money), held across every replica of every tier.
//!
//! Every call a connector makes to a real API is admitted by an
//! [`AllowanceGate`] first. The count lives in Redis, per connection and
//! system, in five-minute buckets; a Lua script, run atomically on the
//! Redis server's clock, drops the buckets older than a day, sums the rest
//! and takes the call only if it fits:
//!
//! - the **batch lane** stops at 90% of the allowance, so that the
//!   immediate lane and detection, which may use the rest, are never
//!   starved by a backlog;
//! - nothing ever goes past 100%. The window counted is 24 hours and up to
//!   one bucket more, never less, so no 24 hours anywhere hold more calls
//!   than the allowance. A call is counted when it is admitted (an attempt
//!   that fails on the way out still counts: it may have reached the API),
//!   and given back only when it was certainly not sent.
//!
//! Redis unreachable: no call is admitted (fail closed, like the batch
//! budget); the allowance can go unused, never overspent. Logins are not
//! API calls and pass freely; change-event subscriptions (the Pub/Sub API)
//! are counted per kind for the figures but draw on the org's event
//! allocation, not its API requests, so they do not count against the
//! allowance.
//!
//! The lane is the work's, as `crmsync_connector::lane` carries it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_connector::ConnectorError;
use crmsync_connector_kit::{Admission, CallGate, CallOutcome, CallResult, EndpointKind};
use crmsync_domain::Lane;
use crmsync_domain::merge::Side;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_infra::config::RedisConfig;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

/// The width of a bucket, and how many are kept: a day and one more, so
/// that the window counted is never shorter than 24 hours.
const BUCKET_SECS: u64 = 300;
const WINDOW_BUCKETS: u64 = 24 * 3600 / BUCKET_SECS + 1;

/// The share of the allowance the batch lane may use.
pub const BATCH_SHARE: f64 = 0.9;

/// KEYS: the counts (bucket → calls that count), the detail (bucket:lane:kind
/// → calls, for the figures). ARGV: limit (-1: none), detail field suffix
/// (lane:kind), whether the call counts against the allowance, bucket
/// seconds, buckets kept, the amount (1 to take, -1 to give back).
/// Returns {admitted, used in the window after it, seconds until a call is
/// free again when refused}.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1])
local width = tonumber(ARGV[4])
local kept = tonumber(ARGV[5])
local bucket = math.floor(now / width)
local oldest = bucket - kept + 1
local used = 0
local first = nil
local pruned = false
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local b = tonumber(all[i])
  if b < oldest then
    redis.call('HDEL', KEYS[1], all[i])
    pruned = true
  else
    local n = tonumber(all[i + 1])
    used = used + n
    if n > 0 and (first == nil or b < first) then first = b end
  end
end
if pruned then
  local fields = redis.call('HKEYS', KEYS[2])
  for _, f in ipairs(fields) do
    local b = tonumber(string.match(f, '^(%d+):'))
    if b ~= nil and b < oldest then redis.call('HDEL', KEYS[2], f) end
  end
end
local amount = tonumber(ARGV[6])
local limit = tonumber(ARGV[1])
local counts = ARGV[3] == '1'
if amount > 0 and counts and limit >= 0 and used + amount > limit then
  local wait = width
  if first ~= nil then wait = (first + kept) * width - now end
  return {0, used, wait}
end
if counts then
  redis.call('HINCRBY', KEYS[1], bucket, amount)
  used = used + amount
end
redis.call('HINCRBY', KEYS[2], bucket .. ':' .. ARGV[2], amount)
redis.call('EXPIRE', KEYS[1], (kept + 1) * width)
redis.call('EXPIRE', KEYS[2], (kept + 1) * width)
return {1, used, 0}
";

/// Whether a call of `kind` counts against the allowance.
fn counts(kind: EndpointKind) -> bool {
    !matches!(kind, EndpointKind::Auth | EndpointKind::Events)
}

/// The name of a system in keys, figures and messages.
pub fn system_name(side: Side) -> &'static str {
    match side {
        Side::Ma => "ma",
        Side::Crm => "crm",
    }
}

fn vendor(side: Side) -> &'static str {
    match side {
        Side::Ma => "Account Engagement",
        Side::Crm => "Salesforce",
    }
}

/// Where the counts live: a Redis connection made on first use (an
/// operator's command that never calls an API never connects), or the
/// tier's own.
#[derive(Clone)]
pub struct ApiAllowances {
    inner: Arc<Inner>,
}

struct Inner {
    redis: OnceCell<ConnectionManager>,
    config: RedisConfig,
    admit: Script,
}

impl std::fmt::Debug for ApiAllowances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAllowances").field("prefix", &self.inner.config.prefix).finish_non_exhaustive()
    }
}

impl ApiAllowances {
    /// Counts in the Redis `config` names, connecting on first use.
    pub fn new(config: &RedisConfig) -> Self {
        ApiAllowances { inner: Arc::new(Inner { redis: OnceCell::new(), config: config.clone(), admit: Script::new(ADMIT) }) }
    }

    /// Counts through a connection the caller already has.
    pub fn with_connection(config: &RedisConfig, redis: ConnectionManager) -> Self {
        ApiAllowances {
            inner: Arc::new(Inner { redis: OnceCell::new_with(Some(redis)), config: config.clone(), admit: Script::new(ADMIT) }),
        }
    }

    async fn redis(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.inner.redis.get_or_try_init(|| crmsync_infra::locks::connect(&self.inner.config)).await.cloned()
    }

    fn keys(&self, connection_id: &str, side: Side) -> (String, String) {
        let base = format!("{}:{connection_id}:api:{}", self.inner.config.prefix, system_name(side));
        (format!("{base}:calls"), format!("{base}:detail"))
    }

    /// The gate a connection's connector to `side` puts in front of every
    /// call; `allowance` is the endpoint's `api_daily_allowance`.
    pub fn gate(&self, connection_id: &str, side: Side, allowance: Option<u64>) -> Arc<AllowanceGate> {
        Arc::new(AllowanceGate { allowances: self.clone(), connection_id: connection_id.to_owned(), side, allowance })
    }

    async fn run(
        &self,
        connection_id: &str,
        side: Side,
        limit: Option<u64>,
        field: &str,
        kind: EndpointKind,
        amount: i64,
    ) -> Result<[i64; 3], redis::RedisError> {
        let (calls, detail) = self.keys(connection_id, side);
        let mut conn = self.redis().await?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let out: Vec<i64> = self
            .inner
            .admit
            .key(calls)
            .key(detail)
            .arg(limit)
            .arg(field)
            .arg(if counts(kind) { "1" } else { "0" })
            .arg(BUCKET_SECS)
            .arg(WINDOW_BUCKETS)
            .arg(amount)
            .invoke_async(&mut conn)
            .await?;
        Ok([out.first().copied().unwrap_or(0), out.get(1).copied().unwrap_or(0), out.get(2).copied().unwrap_or(0)])
    }

    /// What a connection spent on `side` in the last 24 hours.
    pub async fn usage(&self, connection_id: &str, side: Side, allowance: Option<u64>) -> Result<ApiUsage24h, redis::RedisError> {
        let mut out = self.usage_of_many(&[(connection_id, side, allowance)]).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// What each (connection, system, allowance) asked for spent in the
    /// last 24 hours, in the order asked, in one round trip to Redis
    /// whatever their number: the server's clock and every detail hash
    /// in one pipeline. Nothing asked, nothing sent (Redis is not even
    /// connected to).
    pub async fn usage_of_many(&self, asked: &[(&str, Side, Option<u64>)]) -> Result<Vec<ApiUsage24h>, redis::RedisError> {
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for (connection_id, side, _) in asked {
            pipe.cmd("HGETALL").arg(self.keys(connection_id, *side).1);
        }
        let mut conn = self.redis().await?;
        let mut answers: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        if answers.len() != asked.len() + 1 {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline answered another number of replies than it asked",
                format!("{} asked, {} answered", asked.len() + 1, answers.len()),
            )));
        }
        let details = answers.split_off(1);
        let (secs, _): (u64, u64) = redis::from_redis_value(answers.remove(0))?;
        asked
            .iter()
            .zip(details)
            .map(|((_, _, allowance), detail)| {
                let fields: BTreeMap<String, i64> = redis::from_redis_value(detail)?;
                Ok(ApiUsage24h::from_detail(*allowance, secs / BUCKET_SECS, &fields))
            })
            .collect()
    }
}

/// The systems of a connection reached over a real API, with the
/// allowance its settings give (the sandbox has no API: not listed).
fn api_systems(settings: &ConnectionSettings) -> impl Iterator<Item = (Side, Option<u64>)> + '_ {
    [(Side::Crm, &settings.crm), (Side::Ma, &settings.ma)]
        .into_iter()
        .filter(|(_, endpoint)| endpoint.is_api())
        .map(|(side, endpoint)| (side, endpoint.api_daily_allowance()))
}

/// A connection's usage of each system it reaches over a real API, with
/// the allowance its settings give (the sandbox has no API: not listed):
/// one round trip to Redis, none for a connection without a real API.
/// For many connections at once, [`connections_usage`] asks in one round
/// trip for all of them.
pub async fn connection_usage(
    allowances: &ApiAllowances,
    connection_id: &str,
    settings: &ConnectionSettings,
) -> Result<Vec<(Side, ApiUsage24h)>, redis::RedisError> {
    let mut all = connections_usage(allowances, [(connection_id, settings)]).await?;
    Ok(all.remove(connection_id).unwrap_or_default())
}

/// As [`connection_usage`], for every connection given, in one round trip
/// to Redis for all of them (none when no connection reaches a real API):
/// what reads every connection's figures at once (the applier's metrics
/// every few seconds, `crmsync status`) asks this once rather than once a
/// connection. A connection reaching no real API has no entry.
pub async fn connections_usage<'a>(
    allowances: &ApiAllowances,
    connections: impl IntoIterator<Item = (&'a str, &'a ConnectionSettings)>,
) -> Result<HashMap<String, Vec<(Side, ApiUsage24h)>>, redis::RedisError> {
    let asked: Vec<(&str, Side, Option<u64>)> = connections
        .into_iter()
        .flat_map(|(id, settings)| api_systems(settings).map(move |(side, allowance)| (id, side, allowance)))
        .collect();
    let usage = allowances.usage_of_many(&asked).await?;
    let mut out: HashMap<String, Vec<(Side, ApiUsage24h)>> = HashMap::new();
    for ((id, side, _), u) in asked.into_iter().zip(usage) {
        out.entry(id.to_owned()).or_default().push((side, u));
    }
    Ok(out)
}

/// When a batch backlog is done given both its records budget (`budget`:
/// the backlog at the budget's pace) and the systems' allowances: the later.
pub fn batch_eta(budget: Duration, backlog: u64, records_last_hour: u64, usage: &[(Side, ApiUsage24h)]) -> Duration {
    usage.iter().filter_map(|(_, u)| u.batch_delay(backlog, records_last_hour)).fold(budget, Duration::max)
}

/// The allowance in front of one connection's calls to one system.
#[derive(Debug)]
pub struct AllowanceGate {
    allowances: ApiAllowances,
    connection_id: String,
    side: Side,
    allowance: Option<u64>,
}

impl AllowanceGate {
    /// The most calls `lane` may have made in the window: 90% of the
    /// allowance for the batch lane, all of it otherwise.
    fn limit(&self, lane: Lane) -> Option<u64> {
        self.allowance.map(|a| if lane == Lane::Batch { (a as f64 * BATCH_SHARE).floor() as u64 } else { a })
    }

    fn field(lane: Lane, kind: EndpointKind) -> String {
        format!("{}:{}", lane.as_str(), kind.as_str())
    }
}

#[async_trait]
impl CallGate for AllowanceGate {
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError> {
        if kind == EndpointKind::Auth {
            return Ok(Admission::go());
        }
        let lane = crmsync_connector::lane::current();
        let limit = self.limit(lane);
        let [admitted, used, wait] = self
            .allowances
            .run(&self.connection_id, self.side, limit, &Self::field(lane, kind), kind, 1)
            .await
            .map_err(|e| ConnectorError::Transient(format!("the API allowance cannot be checked (redis: {e}); calls wait")))?;
        if admitted == 1 {
            return Ok(Admission::go());
        }
        let wait = Duration::from_secs(u64::try_from(wait).unwrap_or(0));
        let whose = if lane == Lane::Batch { format!("the batch lane's {:.0}% of ", BATCH_SHARE * 100.0) } else { String::new() };
        Err(ConnectorError::Transient(format!(
            "{} API allowance reached: {used} calls in the last 24 h, {whose}{} allowed; the next call is free in about {} min",
            vendor(self.side),
            self.allowance.unwrap_or_default(),
            wait.as_secs().div_ceil(60)
        )))
    }

    async fn record(&self, kind: EndpointKind, outcome: &CallOutcome) {
        // Only a call certainly not sent is given back.
        if kind == EndpointKind::Auth || outcome.result != CallResult::NotSent {
            return;
        }
        let lane = crmsync_connector::lane::current();
        if let Err(e) = self.allowances.run(&self.connection_id, self.side, None, &Self::field(lane, kind), kind, -1).await {
            tracing::warn!(error = %e, "could not give back an unsent call's count; the allowance is under-used by one");
        }
    }
}

/// A connection's calls to one system over the last 24 hours.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ApiUsage24h {
    /// Calls that count against the allowance.
    pub used: u64,
    pub allowance: Option<u64>,
    /// Every call, per endpoint kind (`query`, `write`, `bulk`, `import`,
    /// `events`, `other`).
    pub by_kind: BTreeMap<String, u64>,
    /// Calls that count, per lane.
    pub by_lane: BTreeMap<String, u64>,
    /// Batch-lane calls in the last hour (for the calls a record costs).
    pub batch_last_hour: u64,
}

impl ApiUsage24h {
    /// The figures from the detail hash's fields (`bucket:lane:kind` →
    /// calls), as of bucket `now`.
    fn from_detail(allowance: Option<u64>, now: u64, fields: &BTreeMap<String, i64>) -> Self {
        let mut out = ApiUsage24h { allowance, ..ApiUsage24h::default() };
        let oldest = now.saturating_sub(WINDOW_BUCKETS - 1);
        let last_hour = now.saturating_sub(3600 / BUCKET_SECS - 1);
        for (field, n) in fields {
            let mut parts = field.splitn(3, ':');
            let (Some(b), Some(lane), Some(kind)) = (parts.next().and_then(|b| b.parse::<u64>().ok()), parts.next(), parts.next()) else {
                continue;
            };
            let n = u64::try_from(*n).unwrap_or(0);
            if b < oldest || n == 0 {
                continue;
            }
            *out.by_kind.entry(kind.to_owned()).or_default() += n;
            let kind_counts = EndpointKind::ALL.iter().find(|k| k.as_str() == kind).is_none_or(|k| counts(*k));
            if kind_counts {
                out.used += n;
                *out.by_lane.entry(lane.to_owned()).or_default() += n;
                if lane == Lane::Batch.as_str() && b >= last_hour {
                    out.batch_last_hour += n;
                }
            }
        }
        out
    }

    /// How long the allowance makes a batch backlog of `records` take, on
    /// top of the budget: `None` when it does not hold the backlog back
    /// (no allowance, or the calls it needs fit in what the batch lane has
    /// left), or when what a record costs is not known yet. Calls a record
    /// costs are the last hour's batch-lane calls per batch-lane record
    /// (`records_last_hour`); once the lane's 90% is spent, it gets what
    /// the other lanes' last 24 hours leave of it, a day at a time.
    pub fn batch_delay(&self, records: u64, records_last_hour: u64) -> Option<Duration> {
        let allowance = self.allowance?;
        if records == 0 || records_last_hour == 0 || self.batch_last_hour == 0 {
            return None;
        }
        let per_record = self.batch_last_hour as f64 / records_last_hour as f64;
        let needed = per_record * records as f64;
        let batch_limit = allowance as f64 * BATCH_SHARE;
        let left = (batch_limit - self.used as f64).max(0.0);
        if needed <= left {
            return None;
        }
        let others = self.used.saturating_sub(self.by_lane.get(Lane::Batch.as_str()).copied().unwrap_or(0)) as f64;
        let per_day = batch_limit - others;
        if per_day <= 0.0 {
            // The other lanes alone use the batch lane's share.
            return Some(Duration::MAX);
        }
        Some(Duration::from_secs_f64((needed - left) / per_day * 86_400.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(entries: &[(u64, &str, &str, i64)]) -> BTreeMap<String, i64> {
        entries.iter().map(|(b, lane, kind, n)| (format!("{b}:{lane}:{kind}"), *n)).collect()
    }

    #[test]
    fn the_figures_count_the_last_day_per_kind_and_lane_and_leave_logins_and_events_out_of_the_allowance() {
        let now = 10_000;
        let fields = detail(&[
            (now, "batch", "write", 5),
            (now - 3, "immediate", "query", 7),
            (now - 20, "batch", "query", 2),
            (now, "immediate", "events", 4),
            (now - WINDOW_BUCKETS, "immediate", "query", 100),
        ]);
        let u = ApiUsage24h::from_detail(Some(1000), now, &fields);
        assert_eq!(u.used, 14, "the bucket a day old is out; events do not count");
        assert_eq!(u.by_kind.get("events"), Some(&4));
        assert_eq!(u.by_kind.get("query"), Some(&9));
        assert_eq!(u.by_lane.get("batch"), Some(&7));
        assert_eq!(u.batch_last_hour, 5, "the bucket 20 × 5 min ago is not the last hour");
    }

    #[test]
    fn the_batch_lane_stops_at_ninety_percent_and_the_others_may_use_the_rest() {
        let gate = AllowanceGate {
            allowances: ApiAllowances::new(&RedisConfig::default()),
            connection_id: "c".into(),
            side: Side::Ma,
            allowance: Some(1000),
        };
        assert_eq!(gate.limit(Lane::Batch), Some(900));
        assert_eq!(gate.limit(Lane::Immediate), Some(1000));
    }

    #[test]
    fn the_allowance_delays_a_backlog_only_past_what_the_batch_lane_has_left() {
        // 2 calls a record; 900 of 1,000 for the batch lane, 300 used.
        let u = ApiUsage24h {
            used: 300,
            allowance: Some(1000),
            by_lane: BTreeMap::from([("batch".into(), 200), ("immediate".into(), 100)]),
            batch_last_hour: 200,
            ..ApiUsage24h::default()
        };
        assert_eq!(u.batch_delay(300, 100), None, "600 calls fit in the 600 left");
        // 1,000 records need 2,000 calls: 600 now, then 800 a day (900 less
        // the immediate lane's 100): 1,400 more take 1.75 days.
        let d = u.batch_delay(1000, 100).unwrap();
        assert_eq!(d.as_secs(), 151_200);
        assert_eq!(ApiUsage24h { allowance: None, ..u.clone() }.batch_delay(1000, 100), None, "no allowance, no delay");
        assert_eq!(u.batch_delay(1000, 0), None, "what a record costs is not known yet");
    }
}
