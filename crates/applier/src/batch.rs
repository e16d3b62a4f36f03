//! The batch lane (R7, I4): records processed at the connection's budget,
//! and the figures that show how far its backlog is.
//!
//! A batch-lane message is worked through in chunks of at most the budget's
//! burst; each chunk waits for a grant from the shared budget (see
//! `crmsync_infra::budget`) before it is applied, so records reach the
//! targets evenly, one budget interval apart, whatever the number of
//! replicas.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crmsync_domain::Lane;
use crmsync_domain::messages::ApplyBatch;
use crmsync_domain::settings::{ConnectionSettings, DEFAULT_BATCH_BUDGET_PER_HOUR, DEFAULT_BATCH_BURST};
use crmsync_infra::CancellationToken;
use crmsync_infra::amqp::Stage;
use crmsync_infra::broker::Broker;
use crmsync_infra::budget::{BatchBudget, Pace, PaceSource};
use crmsync_infra::worker::StageError;
use crmsync_systems::allowance::{ApiAllowances, batch_eta, connection_usage, system_name};

use crmsync_store::{audit, connections, feeds};
use sqlx::PgPool;
use uuid::Uuid;

use crate::process::Applier;

/// Takes the next chunk off the front of `rest`: at most `size` commands,
/// mirrors or CSQLs, never a mix. The size is the budget's burst as it is
/// now, so a changed burst applies from the next chunk on.
fn next_chunk(rest: &mut ApplyBatch, size: usize) -> Option<ApplyBatch> {
    let size = size.max(1);
    let empty = header(rest);
    if !rest.commands.is_empty() {
        Some(ApplyBatch { commands: front(&mut rest.commands, size), ..empty })
    } else if !rest.mirrors.is_empty() {
        Some(ApplyBatch { mirrors: front(&mut rest.mirrors, size), ..empty })
    } else if !rest.csqls.is_empty() {
        Some(ApplyBatch { csqls: front(&mut rest.csqls, size), ..empty })
    } else {
        None
    }
}

/// The first `size` items of `v`, taken off it.
fn front<T>(v: &mut Vec<T>, size: usize) -> Vec<T> {
    v.drain(..size.min(v.len())).collect()
}

/// A batch with its message's identity and no records.
fn header(b: &ApplyBatch) -> ApplyBatch {
    ApplyBatch {
        v: b.v,
        batch_id: b.batch_id,
        connection_id: b.connection_id.clone(),
        lane: b.lane,
        commands: Vec::new(),
        mirrors: Vec::new(),
        csqls: Vec::new(),
    }
}

/// How many records a batch holds, as the budget counts them.
fn records(batch: &ApplyBatch) -> usize {
    batch.commands.len() + batch.mirrors.len() + batch.csqls.len()
}

/// Each connection's pace, and whether it is paused, read from its
/// settings at most once every [`PaceBook::MAX_AGE`] per replica: a budget
/// an admin changes, or a pause, is followed within about a second (see
/// `crmsync_infra::budget`), at the cost of one small query a second per
/// connection with batch work in hand.
#[derive(Debug)]
pub struct PaceBook {
    pool: PgPool,
    known: Mutex<HashMap<String, (Instant, Pace, bool)>>,
}

impl PaceBook {
    pub const MAX_AGE: Duration = Duration::from_secs(1);

    pub fn new(pool: PgPool) -> Self {
        PaceBook { pool, known: Mutex::default() }
    }

    fn cached(&self, connection_id: &str) -> Option<(Instant, Pace, bool)> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).get(connection_id).copied()
    }

    /// The pace and whether the connection is paused, as read at most
    /// [`PaceBook::MAX_AGE`] ago.
    async fn current(&self, connection_id: &str) -> (Pace, bool) {
        let cached = self.cached(connection_id);
        if let Some((_, pace, paused)) = cached.filter(|(at, _, _)| at.elapsed() < Self::MAX_AGE) {
            return (pace, paused);
        }
        match connections::load_with_pause(&self.pool, connection_id).await {
            Ok((s, since)) => {
                let pace = Pace { per_hour: s.batch_budget_per_hour, burst: s.batch_burst };
                let paused = since.is_some();
                self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(connection_id.to_owned(), (Instant::now(), pace, paused));
                (pace, paused)
            }
            Err(e) => {
                // The last pace known, or the default, until the database
                // answers again: pacing on never stops for a read. (A pause
                // missed meanwhile is still caught: the applier reads it
                // again with the settings before it writes.)
                tracing::warn!(connection_id, error = %e, "cannot read the batch budget; pacing on at the last one known");
                cached.map_or((Pace { per_hour: DEFAULT_BATCH_BUDGET_PER_HOUR, burst: DEFAULT_BATCH_BURST }, false), |(_, p, paused)| {
                    (p, paused)
                })
            }
        }
    }

    /// Whether the connection is paused, as read at most
    /// [`PaceBook::MAX_AGE`] ago.
    pub async fn paused(&self, connection_id: &str) -> bool {
        self.current(connection_id).await.1
    }
}

#[async_trait]
impl PaceSource for PaceBook {
    async fn pace(&self, connection_id: &str) -> Pace {
        self.current(connection_id).await.0
    }
}

/// Applies a batch-lane message at its connection's budget. Records already
/// applied (the message is a redelivery) are passed over without spending
/// budget on them. The pace is read again before every chunk, so a changed
/// budget applies within a second; on shutdown the message goes back to the
/// queue between chunks, and whoever takes it next skips the chunks done.
///
/// While the connection is paused the message waits here, between chunks,
/// looking again once a second: its queue is the connection's own, so no
/// other connection's work waits behind it, and waiting in place costs no
/// round trips (a backlog of thousands of messages going round the hold
/// queue would). On resume it goes on from the next chunk.
pub async fn process_paced(
    applier: &Applier,
    budget: &BatchBudget,
    paces: &PaceBook,
    shutdown: &CancellationToken,
    batch: &ApplyBatch,
) -> Result<(), StageError> {
    let ids: Vec<Uuid> = batch
        .commands
        .iter()
        .map(|c| c.command_id)
        .chain(batch.mirrors.iter().map(|m| m.command_id))
        .chain(batch.csqls.iter().map(|q| q.command_id))
        .collect();
    let done: HashSet<Uuid> = audit::finished(&applier.pool, &batch.connection_id, "apply", &ids).await?.into_iter().collect();
    let mut rest = ApplyBatch {
        commands: batch.commands.iter().filter(|c| !done.contains(&c.command_id)).cloned().collect(),
        mirrors: batch.mirrors.iter().filter(|m| !done.contains(&m.command_id)).cloned().collect(),
        csqls: batch.csqls.iter().filter(|q| !done.contains(&q.command_id)).cloned().collect(),
        ..header(batch)
    };
    loop {
        if shutdown.is_cancelled() {
            return Err(StageError::Requeue("shutting down between batch-lane chunks".into()));
        }
        if paces.paused(&batch.connection_id).await {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(StageError::Requeue("shutting down while the connection is paused".into())),
                _ = tokio::time::sleep(PaceBook::MAX_AGE) => {}
            }
            continue;
        }
        let pace = paces.pace(&batch.connection_id).await;
        let Some(chunk) = next_chunk(&mut rest, pace.burst as usize) else { return Ok(()) };
        let n = records(&chunk) as u32;
        tokio::select! {
            // Waiting for a grant reserves nothing: leaving it is safe.
            _ = shutdown.cancelled() => return Err(StageError::Requeue("shutting down while waiting for the batch budget".into())),
            taken = budget.take(&batch.connection_id, paces, n) => taken.map_err(|e| StageError::Retry(e.to_string()))?,
        }
        applier.process(&chunk).await?;
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
    // Connections whose own batch queue was asked about at the last export.
    let mut asked: HashSet<String> = HashSet::new();
    loop {
        if let Err(e) = audit::fold_tallies(&pool).await {
            tracing::warn!(error = %e, "folding the audit tallies failed; trying again in a few seconds");
        }
        match export_once(&pool, &broker, &allowances, &asked).await {
            Ok(now) => asked = now,
            Err(e) => tracing::debug!(error = %e, "the batch-lane figures could not be read; trying again in a few seconds"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// One export; returns the connections whose batch queue it asked about.
async fn export_once(
    pool: &PgPool,
    broker: &Broker,
    allowances: &ApiAllowances,
    asked_before: &HashSet<String>,
) -> Result<HashSet<String>, sqlx::Error> {
    let all = batch_figures_all(pool).await?;
    // Messages ready in each work queue (the broker's own count; KEDA reads
    // unacked ones too, from the management API), asked passively: a queue
    // not declared yet has no gauge, and is not created by asking. The
    // shared queues always; a connection's own batch queue only while its
    // backlog is not empty, and once more after, to bring its gauge to 0:
    // asking a thousand idle queues every five seconds was most of the
    // broker's idle work.
    let busy: HashSet<String> = all.iter().filter(|(_, _, f)| f.backlog > 0).map(|(id, _, _)| id.clone()).collect();
    let ask: Vec<String> = busy.union(asked_before).cloned().collect();
    let mut queues = broker.topology().shared_queues();
    queues.extend(ask.iter().map(|c| (Stage::Apply, Lane::Batch, broker.topology().queue(Stage::Apply, Lane::Batch, c))));
    for (_, _, q) in queues {
        if let Ok(Some(depth)) = broker.depth(&q).await {
            metrics::gauge!(crmsync_infra::metrics::QUEUE_DEPTH, "queue" => q).set(f64::from(depth));
        }
    }
    // Paused or running, per connection.
    let paused: HashSet<String> = connections::all_paused(pool).await?.into_iter().map(|(id, _)| id).collect();
    for (id, settings, f) in &all {
        metrics::gauge!(crmsync_infra::metrics::CONNECTION_PAUSED, "connection" => id.clone()).set(if paused.contains(id) {
            1.0
        } else {
            0.0
        });
        // The API calls of the last 24 hours, per system and kind, and the
        // ETA they allow (I8). Redis is asked only for systems reached over
        // a real API.
        let usage = connection_usage(allowances, id, settings).await.unwrap_or_default();
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
    }
    Ok(busy)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use crmsync_domain::Lane;
    use crmsync_domain::merge::Side;
    use crmsync_domain::messages::{ApplyCommand, MESSAGE_VERSION, RecordRef};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_batch_is_worked_through_in_chunks_of_the_burst_as_it_is_at_each_chunk() {
        let command = || ApplyCommand {
            command_id: Uuid::new_v4(),
            identity_id: Uuid::new_v4(),
            source: RecordRef { side: Side::Ma, object: "prospect".into(), id: "1".into() },
            detected_at: Utc::now(),
            observations: vec![],
            account_id: None,
            seen: Default::default(),
            trace: None,
        };
        let batch = ApplyBatch {
            v: MESSAGE_VERSION,
            batch_id: Uuid::new_v4(),
            connection_id: "default".into(),
            lane: Lane::Batch,
            commands: (0..12).map(|_| command()).collect(),
            mirrors: vec![],
            csqls: vec![],
        };
        let mut rest = batch.clone();
        let mut sizes = Vec::new();
        // The burst is read again for every chunk: 5, then 3 once lowered.
        for size in [5, 3, 3, 3] {
            let Some(chunk) = next_chunk(&mut rest, size) else { break };
            assert!(chunk.batch_id == batch.batch_id && chunk.lane == Lane::Batch);
            sizes.push(chunk.commands.len());
        }
        assert_eq!(sizes, [5, 3, 3, 1]);
        assert!(next_chunk(&mut rest, 5).is_none());
    }
}
