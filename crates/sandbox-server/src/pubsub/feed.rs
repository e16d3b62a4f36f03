//! What keeps the event log moving: a task that sequences captured changes
//! into events, prunes events past the retention window, and tells live
//! subscriptions that new events are there (a `watch` of the newest replay
//! id), so they read at once instead of polling.
//!
//! While a subscription is live, every commit to a CRM table (announced on
//! `crmsync_sandbox` by the tables' `notify` triggers) is sequenced as soon
//! as it is announced; a slow sweep every [`SWEEP`] covers a notification
//! missed while the listening connection was down. With nobody subscribed
//! the work waits: changes are sequenced every [`IDLE_SWEEP`] (so captures
//! do not pile up) and whenever a subscription starts, before it picks its
//! starting point. Replay ids follow commit order all the same (see
//! `crmsync_sandbox::cdc`), and an event's commit timestamp is its
//! transaction's, not the time it was sequenced.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use crmsync_sandbox::cdc::{self, ChangeLog};
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often changes are sequenced without being announced, while a
/// subscription is live.
const SWEEP: Duration = Duration::from_secs(10);

/// How often changes are sequenced while nobody subscribes.
const IDLE_SWEEP: Duration = Duration::from_secs(300);

/// How often events past retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The oldest commit time a retention of `secs` keeps (any retention too
/// long to compute keeps everything since 1970).
pub fn retained_since(secs: u64) -> chrono::DateTime<Utc> {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::UNIX_EPOCH)
}

/// The event log's feed: sequencing, and the newest replay id for
/// subscriptions to wait on.
#[derive(Debug, Clone)]
pub struct Feed {
    st: Arc<AppState>,
    tip: Arc<watch::Sender<i64>>,
    live: Arc<AtomicUsize>,
}

/// Waits for newly sequenced events.
#[derive(Debug, Clone)]
pub struct Tip(watch::Receiver<i64>);

impl Tip {
    /// Waits until events newer than the last seen are sequenced (forever
    /// once the feed has stopped).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A live subscription, counted while it lasts.
#[derive(Debug)]
pub struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Feed {
    /// Starts the feed's task; it runs until `stop` is cancelled.
    pub fn start(st: Arc<AppState>, stop: CancellationToken) -> Feed {
        let feed = Feed { st, tip: Arc::new(watch::channel(0).0), live: Arc::default() };
        let task = feed.clone();
        tokio::spawn(async move {
            if let Err(e) = task.run(stop).await {
                tracing::error!(error = %e, "the change event feed stopped");
            }
        });
        feed
    }

    pub fn watch(&self) -> Tip {
        Tip(self.tip.subscribe())
    }

    /// Counts a subscription as live until the guard is dropped.
    pub fn live(&self) -> Live {
        self.live.fetch_add(1, Ordering::SeqCst);
        Live(self.live.clone())
    }

    /// Sequences every change committed so far, and wakes subscriptions if
    /// there are new events (sequenced here or by another server on the
    /// database). Returns how many events it wrote.
    pub async fn sequence(&self) -> Result<usize, sqlx::Error> {
        let threshold = self.st.limits.lock().await.cdc_overflow_threshold;
        let n = cdc::sequence(&self.st.pool, threshold).await?;
        if n > 0 {
            tracing::debug!(events = n, "change events sequenced");
        }
        let last: i64 =
            sqlx::query_scalar("SELECT last_replay_id FROM sandbox.cdc_sequencer WHERE id = 1").fetch_one(&self.st.pool).await?;
        self.tip.send_if_modified(|t| std::mem::replace(t, last) != last);
        Ok(n)
    }

    fn subscribed(&self) -> bool {
        self.live.load(Ordering::SeqCst) > 0
    }

    async fn run(&self, stop: CancellationToken) -> Result<(), sqlx::Error> {
        let log = ChangeLog::new(self.st.pool.clone(), &self.st.config.crm_tenant);
        let mut listener = PgListener::connect_with(&self.st.pool).await?;
        listener.listen(cdc::CHANNEL).await?;
        let mut pruned = Instant::now() - PRUNE_EVERY;
        let mut sequenced = Instant::now() - IDLE_SWEEP;
        loop {
            let mut more = false;
            if self.subscribed() || sequenced.elapsed() >= IDLE_SWEEP {
                match self.sequence().await {
                    // A call stops after a number of rounds: there may be more.
                    Ok(n) => more = n > 0,
                    Err(e) => tracing::warn!(error = %e, "sequencing change events failed; trying again"),
                }
                sequenced = Instant::now();
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                let before = retained_since(self.st.limits.lock().await.cdc_retention_secs);
                if let Err(e) = log.prune(before).await {
                    tracing::warn!(error = %e, "pruning change events failed");
                }
                pruned = Instant::now();
            }
            if more {
                continue;
            }
            let wait = if self.subscribed() { SWEEP } else { IDLE_SWEEP.saturating_sub(sequenced.elapsed()) };
            let deadline = tokio::time::sleep(wait.min(PRUNE_EVERY));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = &mut deadline => break,
                    n = listener.recv() => match n {
                        // A CRM commit (MA and CS commits capture nothing),
                        // sequenced now if someone is listening.
                        Ok(n) if n.payload().starts_with("crm.") && self.subscribed() => {
                            // One round covers every commit announced so far.
                            while listener.next_buffered().is_some() {}
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for sandbox commits failed; reconnecting");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_retention_gives_a_cutoff() {
        assert!(retained_since(60) > Utc::now() - chrono::Duration::seconds(61));
        assert_eq!(retained_since(u64::MAX), chrono::DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(retained_since(i64::MAX as u64), chrono::DateTime::<Utc>::UNIX_EPOCH);
    }
}
