//! What keeps the event log moving while the server runs: a task that
//! sequences captured changes as soon as their transaction commits (the CRM
//! tables' `notify` triggers announce each commit on `crmsync_sandbox`),
//! prunes events past the retention window, and tells live subscriptions
//! that new events are there (a `watch` of the newest replay id), so they
//! read at once instead of polling.
//!
//! A notification missed while the listening connection was down is
//! covered by a slow sweep every [`SWEEP`]: the sequencer numbers whatever
//! has committed since, in commit order all the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use crmsync_sandbox::cdc::{self, ChangeLog};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often the task sequences without being told to.
const SWEEP: Duration = Duration::from_secs(10);

/// How often events past retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The newest replay id sequenced, for subscriptions to wait on.
#[derive(Debug, Clone)]
pub struct Tip(watch::Receiver<i64>);

impl Tip {
    /// Waits until events newer than the last seen are sequenced (or the
    /// feed stops).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts the feed; it runs until `stop` is cancelled.
pub fn start(st: Arc<AppState>, stop: CancellationToken) -> Tip {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        if let Err(e) = run(&st, &tx, stop).await {
            tracing::error!(error = %e, "the change event feed stopped");
        }
    });
    Tip(rx)
}

async fn last_replay_id(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT last_replay_id FROM sandbox.cdc_sequencer WHERE id = 1").fetch_one(pool).await
}

async fn run(st: &AppState, tip: &watch::Sender<i64>, stop: CancellationToken) -> Result<(), sqlx::Error> {
    let log = ChangeLog::new(st.pool.clone(), &st.config.crm_tenant);
    let mut listener = PgListener::connect_with(&st.pool).await?;
    listener.listen(cdc::CHANNEL).await?;
    let mut pruned = Instant::now() - PRUNE_EVERY;
    loop {
        let threshold = st.limits.lock().await.cdc_overflow_threshold;
        match cdc::sequence(&st.pool, threshold).await {
            Ok(n) if n > 0 => tracing::debug!(events = n, "change events sequenced"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sequencing change events failed; trying again"),
        }
        // Another server on the database may have sequenced them.
        if let Ok(last) = last_replay_id(&st.pool).await {
            tip.send_if_modified(|t| std::mem::replace(t, last) != last);
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            let retention = st.limits.lock().await.cdc_retention_secs;
            let before = Utc::now() - chrono::Duration::seconds(i64::try_from(retention).unwrap_or(i64::MAX / 2_000));
            if let Err(e) = log.prune(before).await {
                tracing::warn!(error = %e, "pruning change events failed");
            }
            pruned = Instant::now();
        }
        // Wait for a CRM commit (MA and CS commits capture nothing).
        let deadline = tokio::time::sleep(SWEEP);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = &mut deadline => break,
                n = listener.recv() => match n {
                    Ok(n) if n.payload().starts_with("crm.") => {
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
