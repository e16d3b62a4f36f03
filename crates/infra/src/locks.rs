//! Identity locks in Redis, with fencing tokens (I2).
//!
//! A lock covers a *set* of keys (a record's CRM id and normalised email, or
//! an identity id) and is taken all-or-nothing by one Lua script, so two
//! workers never hold halves of each other's sets and cannot deadlock. Many
//! sets are tried in one round trip; the caller works on the sets it got and
//! tries the rest again.
//!
//! Every successful acquisition gets a fencing token, strictly greater than any
//! token issued before. The token is a hybrid clock: `max(last + 1, server time
//! in µs)`. Because it follows the Redis server's clock, it keeps growing even
//! when Redis restarts empty or from an old snapshot, so fenced writes in
//! PostgreSQL and in the target systems keep rejecting a paused holder whose
//! lock expired (a lock alone is not enough: its holder may outlive its TTL).
//!
//! Key names hold a hash of the email, never the address itself. Redis Cluster
//! is not supported (the script touches keys of many slots).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::{LockConfig, RedisConfig};

const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local issued = last
local results = {}
local k = 2
for s = 3, #ARGV do
  local n = tonumber(ARGV[s])
  local free = true
  for i = k, k + n - 1 do
    if redis.call('EXISTS', KEYS[i]) == 1 then free = false break end
  end
  if free then
    issued = math.max(issued + 1, now)
    for i = k, k + n - 1 do
      redis.call('SET', KEYS[i], ARGV[1] .. ':' .. s, 'PX', ARGV[2])
    end
    results[#results + 1] = issued
  else
    results[#results + 1] = 0
  end
  k = k + n
end
if issued > last then redis.call('SET', KEYS[1], string.format('%.0f', issued)) end
return results
";

const RELEASE: &str = r"
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A held lock: release it when done; its token fences writes made under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    keys: Vec<String>,
    owner: String,
    pub token: i64,
}

/// Stable 64-bit FNV-1a: the same on every replica and build. A collision only
/// makes two unrelated records share a lock, which is safe.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[derive(Clone)]
pub struct Locks {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    acquire: Script,
    release: Script,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks").field("prefix", &self.prefix).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Opens a self-reconnecting Redis connection. Commands time out rather
/// than hang on a server that stopped answering (a paused or partitioned
/// Redis); a lost connection is replaced with backoff on the next command.
pub async fn connect(cfg: &RedisConfig) -> Result<ConnectionManager, redis::RedisError> {
    let client = Client::open(cfg.url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config).await
}

impl Locks {
    pub fn new(conn: ConnectionManager, redis: &RedisConfig, locks: &LockConfig) -> Self {
        Locks { conn, prefix: redis.prefix.clone(), ttl: locks.ttl(), acquire: Script::new(ACQUIRE), release: Script::new(RELEASE) }
    }

    /// The lock key of one identity attribute of one connection. Values that
    /// are personal data (emails) are hashed.
    pub fn key(&self, connection_id: &str, kind: LockKind, value: &str) -> String {
        match kind {
            LockKind::Email => format!("{}:{connection_id}:lock:email:{:016x}", self.prefix, stable_hash(value)),
            LockKind::CrmId => format!("{}:{connection_id}:lock:crm:{value}", self.prefix),
            LockKind::Prospect => format!("{}:{connection_id}:lock:prospect:{value}", self.prefix),
            LockKind::Identity => format!("{}:{connection_id}:lock:identity:{value}", self.prefix),
            LockKind::Mirror => format!("{}:{connection_id}:lock:mirror:{value}", self.prefix),
            LockKind::Csql => format!("{}:{connection_id}:lock:csql:{value}", self.prefix),
        }
    }

    fn fence_key(&self) -> String {
        // One counter for all connections: a target record synced by two
        // connections still sees comparable tokens.
        format!("{}:fence", self.prefix)
    }

    /// Tries to take each set of keys, all-or-nothing per set, in one round
    /// trip. `None` for a set someone else holds (in part).
    pub async fn try_acquire(&self, sets: &[Vec<String>]) -> Result<Vec<Option<LockGuard>>, LockError> {
        if sets.is_empty() {
            return Ok(vec![]);
        }
        let owner = Uuid::new_v4().simple().to_string();
        let mut inv = self.acquire.prepare_invoke();
        inv.key(self.fence_key());
        let mut sizes = Vec::with_capacity(sets.len());
        let mut deduped: Vec<Vec<String>> = Vec::with_capacity(sets.len());
        for set in sets {
            let mut keys = set.clone();
            keys.sort();
            keys.dedup();
            for k in &keys {
                inv.key(k);
            }
            sizes.push(keys.len());
            deduped.push(keys);
        }
        inv.arg(&owner).arg(self.ttl.as_millis() as u64);
        for n in &sizes {
            inv.arg(*n);
        }
        let mut conn = self.conn.clone();
        let tokens: Vec<i64> = inv.invoke_async(&mut conn).await?;
        Ok(deduped
            .into_iter()
            .zip(tokens)
            .enumerate()
            .map(|(i, (keys, token))| {
                // The script names each set's owner after its ARGV index.
                (token > 0).then(|| LockGuard { keys, owner: format!("{owner}:{}", i + 3), token })
            })
            .collect())
    }

    /// Tries the lock sets of `pending` items (one set each, in order) and
    /// splits them into the items whose locks are now held and those whose
    /// locks are busy.
    pub async fn partition(&self, pending: &[usize], sets: &[Vec<String>]) -> Result<(Vec<(usize, LockGuard)>, Vec<usize>), LockError> {
        let mut held = Vec::new();
        let mut busy = Vec::new();
        for (i, g) in pending.iter().copied().zip(self.try_acquire(sets).await?) {
            match g {
                Some(g) => held.push((i, g)),
                None => busy.push(i),
            }
        }
        if !busy.is_empty() {
            metrics::counter!(crate::metrics::LOCK_CONTENTION, "kind" => "identity").increment(busy.len() as u64);
        }
        Ok((held, busy))
    }

    /// Takes one lock key, trying again while it is busy until `timeout` has
    /// passed; `None` if it stayed busy.
    pub async fn acquire_within(&self, key: &str, timeout: Duration) -> Result<Option<LockGuard>, LockError> {
        let deadline = std::time::Instant::now() + timeout;
        let set = [vec![key.to_owned()]];
        loop {
            if let Some(g) = self.try_acquire(&set).await?.pop().flatten() {
                return Ok(Some(g));
            }
            if pause_before_retry(deadline).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Releases locks still held by these guards (an expired lock that someone
    /// else took since is left alone).
    pub async fn release(&self, guards: &[LockGuard]) -> Result<(), LockError> {
        if guards.is_empty() {
            return Ok(());
        }
        let mut inv = self.release.prepare_invoke();
        for g in guards {
            for k in &g.keys {
                inv.key(k).arg(&g.owner);
            }
        }
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }
}

/// What a lock key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Email,
    CrmId,
    Prospect,
    Identity,
    /// A read-only mirror (or the person whose mirrors are reconciled).
    Mirror,
    /// A CSQL being written to the CRM (R9).
    Csql,
}

/// Waits a moment before another round on busy locks, or says how long it
/// has been once `deadline` has passed.
pub async fn pause_before_retry(deadline: std::time::Instant) -> Result<(), Duration> {
    if std::time::Instant::now() > deadline {
        return Err(Duration::ZERO);
    }
    let pause: u64 = rand::random_range(5..25);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_stable() {
        // Pinned: replicas of different builds must agree on lock keys.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
