//! Live work first, within one replica: batch work (a backfill's messages
//! and chunks) waits to start while the replica has live work (the
//! immediate lane's) in hand.
//!
//! The lanes already have their own queues, consumers and database
//! connections, so a live change never waits *behind* batch work. But on a
//! machine whose cores a backfill keeps busy, it still shares the CPU with
//! it, in the tier and in the services. Batch work does not need the next
//! few milliseconds; a live change does (R7: the batch lane is the one that
//! waits). Each batch unit therefore waits to *start* until no live work is
//! in hand, for at most [`MAX_YIELD`], so that a steady stream of live
//! changes slows a backfill but never stops it. Units already running are
//! not interrupted.
//!
//! Across the tiers (`Priority::shared`): a live change crosses the
//! producer, the matcher and the applier in turn, and while it is in one,
//! the other two's batch work would still take the cores and PostgreSQL's
//! time from it. So each replica also counts, in Redis, whether it has live
//! work in hand (one `INCR` when it starts to, one `DECR` when it stops,
//! in order, from one task), and batch work waits for that count too. The
//! key expires a few seconds after the last start, so a replica that died
//! with live work in hand holds nobody back for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{Notify, mpsc};

/// The longest one batch unit waits for live work to finish: a backfill
/// under a constant stream of live changes still moves.
pub const MAX_YIELD: Duration = Duration::from_millis(500);

/// How long the count of replicas with live work outlives its last start.
const SHARED_TTL_MS: u64 = 5_000;
/// How often batch work looks at the shared count while it waits.
const SHARED_LOOK: Duration = Duration::from_millis(20);

/// Lowers the shared count, never below 0 (a count that expired while a
/// replica still had live work in hand).
const LEAVE: &str = "local v = redis.call('DECR', KEYS[1]) if v < 0 then redis.call('SET', KEYS[1], 0, 'PX', ARGV[1]) end return v";

/// One replica's live work in hand, for its batch work (and, when shared,
/// every replica's) to give way to.
#[derive(Debug, Default)]
pub struct Priority {
    live: AtomicUsize,
    idle: Notify,
    shared: Option<Shared>,
}

/// The count of replicas with live work, in Redis.
#[derive(Debug)]
struct Shared {
    redis: ConnectionManager,
    key: String,
    /// Starts (true) and ends (false) of this replica's live work, in order.
    moves: mpsc::UnboundedSender<bool>,
}

/// Live work in hand until dropped.
#[derive(Debug)]
pub struct Live(Arc<Priority>);

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
            if let Some(shared) = &self.0.shared {
                let _ = shared.moves.send(false);
            }
        }
    }
}

impl Priority {
    /// This replica's own live work only.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Live work of every replica of every tier sharing `prefix` in Redis.
    /// Must be called within a tokio runtime (a task keeps the count).
    pub fn shared(redis: ConnectionManager, prefix: &str) -> Arc<Self> {
        let (moves, mut rx) = mpsc::unbounded_channel::<bool>();
        let key = format!("{prefix}:live");
        let (mut conn, k) = (redis.clone(), key.clone());
        tokio::spawn(async move {
            let leave = redis::Script::new(LEAVE);
            while let Some(start) = rx.recv().await {
                let done: Result<(), redis::RedisError> = if start {
                    redis::pipe().incr(&k, 1).ignore().pexpire(&k, SHARED_TTL_MS as i64).ignore().query_async(&mut conn).await
                } else {
                    leave.key(&k).arg(SHARED_TTL_MS).invoke_async::<i64>(&mut conn).await.map(|_| ())
                };
                if let Err(e) = done {
                    // Batch work then waits less or more than it should,
                    // for a few seconds at most: the key expires.
                    tracing::debug!(error = %e, "cannot update the shared count of live work");
                }
            }
        });
        Arc::new(Priority { live: AtomicUsize::new(0), idle: Notify::new(), shared: Some(Shared { redis, key, moves }) })
    }

    /// Marks live work in hand until the guard is dropped.
    pub fn live(self: &Arc<Self>) -> Live {
        if self.live.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(shared) = &self.shared
        {
            let _ = shared.moves.send(true);
        }
        Live(self.clone())
    }

    /// Live work in hand now.
    pub fn live_now(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Returns once no live work is in hand, or after [`MAX_YIELD`];
    /// at once when there is none.
    pub async fn give_way(&self) {
        self.give_way_at_most(MAX_YIELD).await;
    }

    /// As [`Priority::give_way`], waiting at most `cap`.
    pub async fn give_way_at_most(&self, cap: Duration) {
        let _ = tokio::time::timeout(cap, async {
            loop {
                // Registered before the count is read: a guard dropped in
                // between still wakes this wait.
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.live.load(Ordering::SeqCst) == 0 {
                    break;
                }
                idle.await;
            }
            let Some(shared) = &self.shared else { return };
            let mut conn = shared.redis.clone();
            loop {
                let others: Result<Option<i64>, _> = redis::cmd("GET").arg(&shared.key).query_async(&mut conn).await;
                match others {
                    Ok(Some(n)) if n > 0 => tokio::time::sleep(SHARED_LOOK).await,
                    // None live, or Redis away: batch work goes on.
                    _ => return,
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_no_live_work_batch_work_goes_at_once() {
        let p = Priority::new();
        let t = tokio::time::Instant::now();
        p.give_way().await;
        assert!(t.elapsed() < MAX_YIELD, "waited {:?} with nothing live", t.elapsed());
    }

    #[tokio::test]
    async fn batch_work_waits_until_every_live_unit_has_ended() {
        let p = Priority::new();
        let (first, second) = (p.live(), p.live());
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.give_way_at_most(Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "gave way to one live unit of two only");
        drop(second);
        waiting.await.unwrap();
        assert_eq!(p.live_now(), 0);
    }

    #[tokio::test]
    async fn batch_work_waits_no_longer_than_the_cap() {
        let p = Priority::new();
        let _live = p.live();
        let t = tokio::time::Instant::now();
        p.give_way_at_most(Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100), "went after {:?} with live work in hand", t.elapsed());
        assert_eq!(p.live_now(), 1);
    }
}
