//! The batch lane (R7, I4): records processed at the connection's budget,
//! and the figures that show how far its backlog is.
//!
//! A batch-lane message is worked through in chunks of at most the budget's
//! burst; each chunk waits for a grant from the shared budget (see
//! `crmsync_infra::budget`) before it is applied, so records reach the
//! targets evenly, one budget interval apart, whatever the number of
//! replicas.

use std::sync::Arc;
use std::time::Duration;

use crmsync_domain::Lane;
use crmsync_domain::messages::ApplyBatch;
use crmsync_infra::CancellationToken;
use crmsync_infra::broker::Broker;
use crmsync_infra::budget::{BatchBudget, Pace};
use crmsync_infra::worker::StageError;
use std::collections::HashSet;

use crmsync_store::{audit, connections};
use sqlx::PgPool;
use uuid::Uuid;

use crate::process::Applier;

/// Splits a batch into chunks of at most `size` commands, mirrors or CSQLs each.
fn chunks(batch: &ApplyBatch, size: usize) -> Vec<ApplyBatch> {
    let size = size.max(1);
    let empty = ApplyBatch { commands: Vec::new(), mirrors: Vec::new(), csqls: Vec::new(), ..batch.clone() };
    let mut out: Vec<ApplyBatch> = batch.commands.chunks(size).map(|c| ApplyBatch { commands: c.to_vec(), ..empty.clone() }).collect();
    out.extend(batch.mirrors.chunks(size).map(|m| ApplyBatch { mirrors: m.to_vec(), ..empty.clone() }));
    out.extend(batch.csqls.chunks(size).map(|q| ApplyBatch { csqls: q.to_vec(), ..empty.clone() }));
    out
}

/// How many records a batch holds, as the budget counts them.
fn records(batch: &ApplyBatch) -> usize {
    batch.commands.len() + batch.mirrors.len() + batch.csqls.len()
}

/// Applies a batch-lane message at its connection's budget. Records already
/// applied (the message is a redelivery) are passed over without spending
/// budget on them.
pub async fn process_paced(applier: &Applier, budget: &BatchBudget, batch: &ApplyBatch) -> Result<(), StageError> {
    let settings = connections::load(&applier.pool, &batch.connection_id).await.map_err(|e| StageError::Retry(e.to_string()))?;
    let pace = Pace { per_hour: settings.batch_budget_per_hour, burst: settings.batch_burst };
    let ids: Vec<Uuid> = batch
        .commands
        .iter()
        .map(|c| c.command_id)
        .chain(batch.mirrors.iter().map(|m| m.command_id))
        .chain(batch.csqls.iter().map(|q| q.command_id))
        .collect();
    let done: HashSet<Uuid> = audit::finished(&applier.pool, &batch.connection_id, "apply", &ids).await?.into_iter().collect();
    let todo = ApplyBatch {
        commands: batch.commands.iter().filter(|c| !done.contains(&c.command_id)).cloned().collect(),
        mirrors: batch.mirrors.iter().filter(|m| !done.contains(&m.command_id)).cloned().collect(),
        csqls: batch.csqls.iter().filter(|q| !done.contains(&q.command_id)).cloned().collect(),
        ..batch.clone()
    };
    for chunk in chunks(&todo, pace.burst as usize) {
        let n = records(&chunk) as u32;
        budget.take(&batch.connection_id, pace, n).await.map_err(|e| StageError::Retry(e.to_string()))?;
        applier.process(&chunk).await?;
    }
    Ok(())
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
    let backlog = (published - tally.finished).max(0);
    let per_hour = settings.batch_budget_per_hour.max(1);
    Ok(BatchFigures {
        backlog,
        budget_per_hour: per_hour,
        used_last_hour: tally.applied_last_hour,
        eta: Duration::from_secs_f64(backlog as f64 * 3600.0 / f64::from(per_hour)),
    })
}

/// Exports every connection's batch-lane figures as metrics, every few seconds.
pub async fn export_figures(pool: PgPool, broker: Arc<Broker>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = audit::fold_tallies(&pool).await {
            tracing::warn!(error = %e, "folding the audit tallies failed; trying again in a few seconds");
        }
        if let Ok(ids) = connections::ids(&pool).await {
            // Messages ready in each work queue (the broker's own count;
            // KEDA reads unacked ones too, from the management API). Asked
            // passively: a queue not declared yet has no gauge, and is not
            // created by asking.
            for (_, _, q) in broker.topology().work_queues(&ids) {
                if let Ok(Some(depth)) = broker.depth(&q).await {
                    metrics::gauge!(crmsync_infra::metrics::QUEUE_DEPTH, "queue" => q).set(f64::from(depth));
                }
            }
            for id in ids {
                if let Ok(f) = batch_figures(&pool, &id).await {
                    let labels = [("connection", id.clone())];
                    metrics::gauge!("crmsync_batch_backlog_records", &labels).set(f.backlog as f64);
                    metrics::gauge!("crmsync_batch_budget_records_per_hour", &labels).set(f64::from(f.budget_per_hour));
                    metrics::gauge!("crmsync_batch_used_last_hour_records", &labels).set(f.used_last_hour as f64);
                    metrics::gauge!("crmsync_batch_eta_seconds", &labels).set(f.eta.as_secs_f64());
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
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
    fn a_batch_is_worked_through_in_chunks_of_the_burst() {
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
        let sizes: Vec<usize> = chunks(&batch, 5).iter().map(|c| c.commands.len()).collect();
        assert_eq!(sizes, [5, 5, 2]);
        assert!(chunks(&batch, 5).iter().all(|c| c.batch_id == batch.batch_id && c.lane == Lane::Batch));
    }
}
