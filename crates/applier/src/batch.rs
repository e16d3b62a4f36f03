//! The batch lane's paces and figures (R7, I4): each connection's budget
//! and pause as the lanes read them, and the figures that show how far a
//! backlog is (`status`, the console, the metrics).
//!
//! How the lane itself is worked: `intake` takes batch-lane messages off
//! their shared queue into per-connection lanes in PostgreSQL, `drain`
//! applies each lane at its connection's budget.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_domain::Lane;
use crmsync_domain::settings::{ConnectionSettings, DEFAULT_BATCH_BUDGET_PER_HOUR, DEFAULT_BATCH_BURST};
use crmsync_infra::CancellationToken;
use crmsync_infra::broker::Broker;
use crmsync_infra::budget::Pace;
use crmsync_systems::allowance::{ApiAllowances, batch_eta, connections_usage, system_name};

use crmsync_store::{audit, connections, feeds};
use sqlx::PgPool;

/// What a lane needs to know of its connection before each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneState {
    pub pace: Pace,
    pub paused: bool,
    /// The connection does not exist (never created, or deleted while its
    /// records waited).
    pub unknown: bool,
}

/// Each connection's pace, and whether it is paused, read at most once
/// every [`PaceBook::MAX_AGE`] per replica: a budget an admin changes, or a
/// pause, is followed within about a second (see `crmsync_infra::budget`).
/// One statement refreshes every connection asked about recently, so a
/// replica draining a thousand lanes reads their settings once a second in
/// one query, not a thousand.
#[derive(Debug)]
pub struct PaceBook {
    pool: PgPool,
    known: std::sync::Mutex<HashMap<String, (Instant, LaneState)>>,
    /// One refresh at a time; the others wait for it and read its result.
    refreshing: tokio::sync::Mutex<()>,
}

impl PaceBook {
    pub const MAX_AGE: Duration = Duration::from_secs(1);
    /// A connection not asked about for this long is not refreshed any more.
    const FORGET: Duration = Duration::from_secs(60);

    pub fn new(pool: PgPool) -> Self {
        PaceBook { pool, known: std::sync::Mutex::default(), refreshing: tokio::sync::Mutex::new(()) }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, LaneState)>> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self, connection_id: &str) -> Option<LaneState> {
        self.known().get(connection_id).filter(|(at, _)| at.elapsed() < Self::MAX_AGE).map(|(_, s)| *s)
    }

    /// The connection's pace and pause, as read at most
    /// [`PaceBook::MAX_AGE`] ago.
    pub async fn current(&self, connection_id: &str) -> LaneState {
        if let Some(state) = self.fresh(connection_id) {
            return state;
        }
        let _one = self.refreshing.lock().await;
        if let Some(state) = self.fresh(connection_id) {
            return state;
        }
        let mut ids: Vec<String> =
            self.known().iter().filter(|(_, (at, _))| at.elapsed() < Self::FORGET).map(|(id, _)| id.clone()).collect();
        if !ids.iter().any(|id| id == connection_id) {
            ids.push(connection_id.to_owned());
        }
        self.read(&ids).await;
        self.known().get(connection_id).map_or(LaneState { pace: Self::DEFAULT, paused: false, unknown: false }, |(_, s)| *s)
    }

    /// Reads these connections' settings now, whatever the book holds: a
    /// lane just leased may have been made due by a settings change a
    /// moment ago, and must not be told to wait by the pace before it.
    pub async fn refresh(&self, ids: &[String]) {
        let _one = self.refreshing.lock().await;
        self.read(ids).await;
    }

    const DEFAULT: Pace = Pace { per_hour: DEFAULT_BATCH_BUDGET_PER_HOUR, burst: DEFAULT_BATCH_BURST };

    async fn read(&self, ids: &[String]) {
        match connections::load_many_with_pause(&self.pool, ids).await {
            Ok(rows) => {
                let now = Instant::now();
                let mut known = self.known();
                let last = |id: &str, known: &HashMap<String, (Instant, LaneState)>| known.get(id).map_or(Self::DEFAULT, |(_, s)| s.pace);
                let mut seen = HashSet::new();
                for (id, settings, since) in rows {
                    // Settings that cannot be read keep the last pace known.
                    let pace =
                        settings.map_or_else(|| last(&id, &known), |s| Pace { per_hour: s.batch_budget_per_hour, burst: s.batch_burst });
                    seen.insert(id.clone());
                    known.insert(id, (now, LaneState { pace, paused: since.is_some(), unknown: false }));
                }
                for id in ids.iter().filter(|id| !seen.contains(*id)) {
                    known.insert(id.clone(), (now, LaneState { pace: Self::DEFAULT, paused: false, unknown: true }));
                }
                known.retain(|_, (at, _)| at.elapsed() < Self::FORGET);
            }
            Err(e) => {
                // The last pace known, or the default, until the database
                // answers again: pacing on never stops for a read. (A pause
                // missed meanwhile is still caught: the applier reads it
                // again with the settings before it writes.)
                tracing::warn!(error = %e, "cannot read the batch budgets; pacing on at the last ones known");
            }
        }
    }
}

/// Where a connection's batch lane stands.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchFigures {
    /// Batch-lane changes detected and not yet finished.
    pub backlog: i64,
    pub budget_per_hour: u32,
    /// Batch-lane records processed in the last hour.
    pub used_last_hour: i64,
    /// Until the backlog is done at the budget's pace.
    pub eta: Duration,
}

impl BatchFigures {
    /// The share of the budget the last hour used.
    pub fn used_share(&self) -> f64 {
        self.used_last_hour as f64 / f64::from(self.budget_per_hour.max(1))
    }
}

impl BatchFigures {
    /// The figures from what feeds published to the batch lane, the lane's
    /// tallies and the budget: one rule for one connection and for all.
    fn of(published: i64, tally: audit::LaneTally, budget_per_hour: u32) -> BatchFigures {
        let backlog = (published - tally.finished).max(0);
        let per_hour = budget_per_hour.max(1);
        BatchFigures {
            backlog,
            budget_per_hour: per_hour,
            used_last_hour: tally.applied_last_hour,
            eta: Duration::from_secs_f64(backlog as f64 * 3600.0 / f64::from(per_hour)),
        }
    }
}

/// The batch-lane figures of one connection.
pub async fn batch_figures(pool: &PgPool, connection_id: &str) -> Result<BatchFigures, sqlx::Error> {
    let settings = connections::load(pool, connection_id).await?;
    let published: i64 = sqlx::query_scalar("SELECT coalesce(sum(published_batch), 0)::bigint FROM feeds WHERE connection_id = $1")
        .bind(connection_id)
        .fetch_one(pool)
        .await?;
    // Read after the published count: a change finished in between makes
    // the backlog one short for a moment, never one too many.
    let tally = audit::lane_tally(pool, connection_id, Lane::Batch.as_str()).await?;
    Ok(BatchFigures::of(published, tally, settings.batch_budget_per_hour))
}

/// Every connection's batch-lane figures with its settings, in three
/// statements whatever the number of connections (the metrics exporter's
/// figures, every few seconds on every applier replica: per connection, it
/// was four statements each time, some 800 a second at 1,000 connections
/// with nothing to do).
pub async fn batch_figures_all(pool: &PgPool) -> Result<Vec<(String, ConnectionSettings, BatchFigures)>, sqlx::Error> {
    let all = connections::load_all(pool).await?;
    let published: HashMap<String, i64> = feeds::published_batch_all(pool).await?.into_iter().collect();
    let tallies: HashMap<String, audit::LaneTally> = audit::lane_tallies(pool, Lane::Batch.as_str()).await?.into_iter().collect();
    let none = audit::LaneTally { finished: 0, applied: 0, applied_last_hour: 0 };
    Ok(all
        .into_iter()
        .map(|(id, settings)| {
            let f = BatchFigures::of(
                published.get(&id).copied().unwrap_or(0),
                tallies.get(&id).copied().unwrap_or(none),
                settings.batch_budget_per_hour,
            );
            (id, settings, f)
        })
        .collect())
}

/// Exports every connection's batch-lane figures as metrics, every few seconds.
pub async fn export_figures(pool: PgPool, broker: Arc<Broker>, allowances: ApiAllowances, shutdown: CancellationToken) {
    loop {
        if let Err(e) = audit::fold_tallies(&pool).await {
            tracing::warn!(error = %e, "folding the audit tallies failed; trying again in a few seconds");
        }
        if let Err(e) = export_once(&pool, &broker, &allowances).await {
            tracing::debug!(error = %e, "the batch-lane figures could not be read; trying again in a few seconds");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// One export.
async fn export_once(pool: &PgPool, broker: &Broker, allowances: &ApiAllowances) -> Result<(), sqlx::Error> {
    let all = batch_figures_all(pool).await?;
    // Messages ready in each work queue (the broker's own count; KEDA reads
    // unacked ones too, from the management API), asked passively: a queue
    // not declared yet has no gauge, and is not created by asking. The
    // queues are the same few whatever the number of connections.
    for (_, _, q) in broker.topology().shared_queues() {
        if let Ok(Some(depth)) = broker.depth(&q).await {
            metrics::gauge!(crmsync_infra::metrics::QUEUE_DEPTH, "queue" => q).set(f64::from(depth));
        }
    }
    // Records waiting in each lane with any, and 0 for a lane emptied
    // since the last export.
    let queued: HashMap<String, i64> = crmsync_store::batch_lanes::queued_all(pool).await?.into_iter().collect();
    // The API calls of every connection reached over a real API, in one
    // Redis round trip (none when every connection is a sandbox).
    let mut usage_all = connections_usage(allowances, all.iter().map(|(id, s, _)| (id.as_str(), s))).await.unwrap_or_default();
    // Paused or running, per connection.
    let paused: HashSet<String> = connections::all_paused(pool).await?.into_iter().map(|(id, _)| id).collect();
    for (id, _, f) in &all {
        metrics::gauge!(crmsync_infra::metrics::CONNECTION_PAUSED, "connection" => id.clone()).set(if paused.contains(id) {
            1.0
        } else {
            0.0
        });
        // The API calls of the last 24 hours, per system and kind, and the
        // ETA they allow (I8). Redis is asked only for systems reached over
        // a real API.
        let usage = usage_all.remove(id).unwrap_or_default();
        for (side, u) in &usage {
            let system = system_name(*side);
            for (kind, n) in &u.by_kind {
                let labels = [("connection", id.clone()), ("system", system.to_owned()), ("kind", kind.clone())];
                metrics::gauge!("crmsync_api_calls_24h", &labels).set(*n as f64);
            }
            let labels = [("connection", id.clone()), ("system", system.to_owned())];
            metrics::gauge!("crmsync_api_calls_counted_24h", &labels).set(u.used as f64);
            if let Some(a) = u.allowance {
                metrics::gauge!("crmsync_api_daily_allowance", &labels).set(a as f64);
            }
        }
        let eta = batch_eta(f.eta, u64::try_from(f.backlog).unwrap_or(0), u64::try_from(f.used_last_hour).unwrap_or(0), &usage);
        let labels = [("connection", id.clone())];
        metrics::gauge!("crmsync_batch_backlog_records", &labels).set(f.backlog as f64);
        metrics::gauge!("crmsync_batch_budget_records_per_hour", &labels).set(f64::from(f.budget_per_hour));
        metrics::gauge!("crmsync_batch_used_last_hour_records", &labels).set(f.used_last_hour as f64);
        metrics::gauge!("crmsync_batch_eta_seconds", &labels).set(eta.as_secs_f64().min(1e12));
        metrics::gauge!("crmsync_batch_lane_queued_records", &labels).set(queued.get(id).copied().unwrap_or(0) as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_the_backlog_at_the_budgets_pace() {
        let tally = audit::LaneTally { finished: 40, applied: 40, applied_last_hour: 40 };
        let f = BatchFigures::of(100, tally, 36_000);
        assert_eq!(f.backlog, 60);
        assert_eq!(f.eta, Duration::from_secs(6));
    }
}
