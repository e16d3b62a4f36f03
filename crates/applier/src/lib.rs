//! The applier tier: applies each identity's merged edits to the MA and the
//! CRM by the field behaviours (R2), never letting an older change overwrite a
//! newer one (I3), creating missing counterparts idempotently (R3), recording
//! state, audit and sync errors in PostgreSQL, and reconciling mirrors (R4-R6).
//!
//! One consume loop for the immediate lane; one for the batch lane's shared
//! queue, which only takes each message's records into its connection's
//! lane in PostgreSQL (`intake`); and the drain, which applies every lane
//! at its connection's budget (`drain`; R7, I4). The broker's topology and
//! the tier's channels are the same for one connection or ten thousand.
//! Any number of replicas may run: lanes are leased, identities serialised
//! by Redis locks, writes fenced by the locks' tokens, and the budget is
//! shared through Redis.

mod batch;
mod csql;
mod drain;
mod intake;
mod mirrors;
mod plan;
mod process;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_domain::Lane;
use crmsync_domain::messages::{self, ApplyBatch};
use crmsync_infra::amqp::Stage;
use crmsync_infra::budget::BatchBudget;
use crmsync_infra::health::{self, Health};
use crmsync_infra::priority::Priority;
use crmsync_infra::services::Services;
use crmsync_infra::worker::{ConsumeOptions, Handler, StageError, consume};
use crmsync_infra::{CancellationToken, Config};
use crmsync_systems::SystemsFactory;
use lapin::message::Delivery;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use batch::{BatchFigures, LaneState, PaceBook, batch_figures, batch_figures_all};
pub use drain::{Drain, DrainOptions};
pub use intake::{chunk_of, rows_of};
pub use process::Applier;

/// The apply stage: decode, then apply (the immediate lane) or take into
/// the connection's batch lane, ack.
#[derive(Debug)]
pub struct ApplyStage {
    pub applier: Arc<Applier>,
    /// Told when batch-lane records are taken in.
    pub taken_in: Arc<tokio::sync::Notify>,
    /// The replica's live work, which batch work gives way to.
    pub priority: Arc<Priority>,
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
        let span = batch_span(&batch);
        match batch.lane {
            Lane::Immediate => {
                let _live = self.priority.live();
                self.applier.process(&batch).instrument(span).await
            }
            Lane::Batch => {
                self.priority.give_way().await;
                intake::take_in(&self.applier.pool, &batch).instrument(span).await?;
                self.taken_in.notify_one();
                Ok(())
            }
        }
    }
}

/// The span of one apply batch (a message, or a batch-lane chunk), linked
/// to the trace of each record it carries (I5).
pub(crate) fn batch_span(batch: &ApplyBatch) -> tracing::Span {
    let span = tracing::info_span!(
        "apply_batch",
        connection_id = %batch.connection_id,
        lane = batch.lane.as_str(),
        batch_id = %batch.batch_id,
        commands = batch.commands.len(),
        mirrors = batch.mirrors.len(),
        csqls = batch.csqls.len(),
    );
    let traces =
        batch.commands.iter().map(|c| &c.trace).chain(batch.mirrors.iter().map(|m| &m.trace)).chain(batch.csqls.iter().map(|q| &q.trace));
    for trace in traces {
        crmsync_infra::propagation::link(&span, trace.as_ref());
    }
    span
}

fn options(config: &Config, queue: String, concurrency: usize) -> ConsumeOptions {
    ConsumeOptions {
        queue,
        concurrency,
        backoff: Duration::from_millis(config.applier.retry_backoff_ms),
        max_backoff: Duration::from_secs(10),
        retry_in_place: config.amqp.retry_in_place(),
        tag: String::new(),
    }
}

/// Runs the applier until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services = Services::connect_patiently(&config, "crmsync-applier", &shutdown).await?;
    let health = Health::new("applier", &services);
    health.drain_on(shutdown.clone());
    health.report(shutdown.clone());
    let server = health::serve(config.telemetry.http_listen.as_deref(), health.clone()).await?;
    let batch_factory = SystemsFactory::from_services(&config, &services).await?;
    let immediate_factory = batch_factory.for_immediate_lane(&config, &services).await?;
    let allowances = batch_factory.allowances().clone();
    // Each lane its own applier over its own connections
    // (`Services::lane_pool`): a live change never queues for one behind
    // the drain's chunks.
    let applier_of = |lane: Lane, factory: SystemsFactory| {
        Arc::new(Applier {
            pool: services.lane_pool(lane).clone(),
            locks: services.locks.clone(),
            factory: Arc::new(factory),
            lock_timeout: config.locks.acquire_timeout(),
        })
    };
    let applier = applier_of(Lane::Batch, batch_factory);
    let taken_in = Arc::new(tokio::sync::Notify::new());
    let priority = Priority::shared(services.redis.clone(), &config.redis.prefix);
    let stage = Arc::new(ApplyStage { applier: applier.clone(), taken_in: taken_in.clone(), priority: priority.clone() });
    let immediate = Arc::new(ApplyStage {
        applier: applier_of(Lane::Immediate, immediate_factory),
        taken_in: taken_in.clone(),
        priority: priority.clone(),
    });
    let drain = Drain::new(
        applier,
        BatchBudget::new(services.redis.clone(), &config.redis.prefix),
        Arc::new(PaceBook::new(services.pool.clone())),
        services.broker.clone(),
        DrainOptions::from_config(&config.applier),
        taken_in,
        priority,
    );
    let mut loops = JoinSet::new();
    for (lane, concurrency, s) in
        [(Lane::Immediate, config.applier.concurrency, immediate), (Lane::Batch, config.applier.batch_concurrency, stage.clone())]
    {
        let opts = options(&config, services.topology.queue(Stage::Apply, lane), concurrency);
        let (broker, stop) = (services.broker.clone(), shutdown.clone());
        loops.spawn(async move { consume(&broker, opts, s, stop).await });
    }
    health.working();
    let draining = tokio::spawn(drain.run(shutdown.clone()));
    let sweeper = tokio::spawn(sweep(stage.clone(), shutdown.clone()));
    let figures = tokio::spawn(batch::export_figures(services.pool.clone(), services.broker.clone(), allowances, shutdown.clone()));
    let statistics = tokio::spawn(crmsync_infra::statistics::keep_current(services.pool.clone(), shutdown.clone()));
    tokio::select! {
        // Shutdown first: once it begins, the consume loops end too, and a
        // loop seen ending then is draining, not failing.
        biased;
        _ = shutdown.cancelled() => {}
        Some(done) = loops.join_next() => {
            done??;
            if !shutdown.is_cancelled() {
                // Consume loops outlive a lost broker; one that ends before
                // shutdown has failed for good.
                anyhow::bail!("a consume loop ended unexpectedly");
            }
        }
    }
    while let Some(done) = loops.join_next().await {
        done??;
    }
    let _ = draining.await;
    let _ = sweeper.await;
    let _ = figures.await;
    let _ = statistics.await;
    services.broker.close().await;
    if let Some(server) = server {
        server.abort();
    }
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
            // Connector errors can quote record values: no email in clear (I5).
            Err(e) => tracing::warn!(error = %crmsync_infra::telemetry::redact(&e.to_string()), "mirror outbox sweep failed; retrying"),
        }
    }
}
