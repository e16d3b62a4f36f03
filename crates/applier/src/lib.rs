//! The applier tier: applies each identity's merged edits to the MA and the
//! CRM by the field behaviours (R2), never letting an older change overwrite a
//! newer one (I3), creating missing counterparts idempotently (R3), and
//! recording state, audit and sync errors in PostgreSQL.
//!
//! One consume loop per lane. Any number of replicas may run: identities are
//! serialised by Redis locks, and writes fenced by the locks' tokens.

mod mirrors;
mod plan;
mod process;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_domain::Lane;
use crmsync_domain::messages::{self, ApplyBatch};
use crmsync_infra::amqp::Stage;
use crmsync_infra::services::Services;
use crmsync_infra::worker::{ConsumeOptions, Handler, StageError, consume};
use crmsync_infra::{CancellationToken, Config};
use crmsync_sandbox::SandboxFactory;
use lapin::message::Delivery;
use tracing::Instrument;

pub use process::Applier;

/// The apply stage: decode, apply, ack.
#[derive(Debug)]
pub struct ApplyStage {
    pub applier: Applier,
}

#[async_trait]
impl Handler for ApplyStage {
    async fn handle(&self, delivery: &Delivery) -> Result<(), StageError> {
        let batch: ApplyBatch = match messages::decode(&delivery.data) {
            Ok(b) => b,
            Err(e) => {
                let (connection_id, message_id) = crmsync_infra::amqp::origin(&delivery.properties);
                crmsync_store::sync_errors::park_unreadable(&self.applier.pool, &connection_id, "apply", &message_id, &e.to_string()).await;
                return Err(StageError::Poison(e.to_string()));
            }
        };
        let span = tracing::info_span!(
            "apply",
            connection_id = %batch.connection_id,
            lane = batch.lane.as_str(),
            batch_id = %batch.batch_id,
            commands = batch.commands.len(),
        );
        self.applier.process(&batch).instrument(span).await
    }
}

/// Runs the applier until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services = Services::connect(&config, "crmsync-applier").await?;
    let factory = Arc::new(SandboxFactory::from_config(&config, &services.pool).await?);
    let stage = Arc::new(ApplyStage {
        applier: Applier {
            pool: services.pool.clone(),
            locks: services.locks.clone(),
            factory,
            lock_timeout: config.locks.acquire_timeout(),
        },
    });
    let loops = [Lane::Immediate, Lane::Batch].map(|lane| {
        let opts = ConsumeOptions {
            queue: services.topology.queue(Stage::Apply, lane),
            concurrency: config.applier.concurrency,
            backoff: Duration::from_millis(config.applier.retry_backoff_ms),
            max_backoff: Duration::from_secs(10),
            tag: String::new(),
        };
        consume(&services.amqp, opts, stage.clone(), shutdown.clone())
    });
    let sweeper = tokio::spawn(sweep(stage.clone(), shutdown.clone()));
    futures::future::try_join_all(loops).await?;
    let _ = sweeper.await;
    let _ = services.amqp.close(200, "shutdown".into()).await;
    Ok(())
}

/// Picks up mirror reconciliations another replica left behind.
async fn sweep(stage: Arc<ApplyStage>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match stage.applier.sweep_outbox(Duration::from_secs(5)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(reconciled = n, "left-over mirror reconciliations done"),
            Err(e) => tracing::warn!(error = %e, "mirror outbox sweep failed; retrying"),
        }
    }
}
