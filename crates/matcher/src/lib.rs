//! The matcher tier: decides who is whose counterpart (R1), whether a
//! counterpart may be created (R3), and hands each change to the applier as a
//! command on one identity.
//!
//! One consume loop per lane, so the immediate lane never waits behind a
//! batch backlog. Any number of replicas may run: identity decisions are
//! serialised by Redis locks and fenced in PostgreSQL.

mod parse;
mod process;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_domain::Lane;
use crmsync_domain::messages::{self, ApplyBatch, ChangeBatch, MESSAGE_VERSION};
use crmsync_infra::amqp::{Outgoing, Stage, Topology};
use crmsync_infra::broker::Broker;
use crmsync_infra::health::{self, Health};
use crmsync_infra::propagation;
use crmsync_infra::services::Services;
use crmsync_infra::worker::{ConsumeOptions, Handler, StageError, consume};
use crmsync_infra::{CancellationToken, Config};
use crmsync_store::{audit, sync_errors};
use crmsync_systems::SystemsFactory;
use lapin::message::Delivery;
use tracing::Instrument;
use uuid::Uuid;

pub use process::{Matcher, Output};

/// The match stage: decode, match, store, publish.
#[derive(Debug)]
pub struct MatchStage {
    pub matcher: Matcher,
    pub broker: Arc<Broker>,
}

impl MatchStage {
    /// Stores what matching produced and hands the commands on.
    async fn finish(&self, batch: &ChangeBatch, mut out: Output) -> Result<(), StageError> {
        let conn = batch.connection_id.as_str();
        // Each entry names its record's trace, for the console's history.
        for a in &mut out.audits {
            let change = batch.changes.iter().find(|c| c.change_id == a.change_id);
            a.trace_id = change.and_then(|c| c.trace.as_ref()?.trace_id()).map(str::to_owned);
        }
        let mut tx = self.matcher.pool.begin().await?;
        sync_errors::resolve(&mut *tx, conn, "match", &out.resolved).await?;
        sync_errors::record_many(&mut *tx, conn, &out.errors).await?;
        audit::insert_many(&mut *tx, conn, &out.audits).await?;
        tx.commit().await?;
        if out.commands.is_empty() && out.mirrors.is_empty() && out.csqls.is_empty() {
            return Ok(());
        }
        let links = out
            .commands
            .iter()
            .map(|c| &c.trace)
            .chain(out.mirrors.iter().map(|m| &m.trace))
            .chain(out.csqls.iter().map(|q| &q.trace))
            .filter_map(Clone::clone)
            .collect();
        let apply = ApplyBatch {
            v: MESSAGE_VERSION,
            batch_id: Uuid::now_v7(),
            connection_id: batch.connection_id.clone(),
            lane: batch.lane,
            commands: out.commands,
            mirrors: out.mirrors,
            csqls: out.csqls,
        };
        self.broker
            .publish_confirmed(vec![Outgoing {
                routing_key: Topology::routing_key(Stage::Apply, batch.lane),
                body: messages::encode(&apply),
                message_id: apply.batch_id.to_string(),
                headers: vec![("x-connection-id".into(), batch.connection_id.clone()), ("x-lane".into(), batch.lane.as_str().into())],
                links,
            }])
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for MatchStage {
    async fn handle(&self, delivery: &Delivery) -> Result<(), StageError> {
        let batch: ChangeBatch = match messages::decode(&delivery.data) {
            Ok(b) => b,
            Err(e) => {
                let (connection_id, message_id) = crmsync_infra::amqp::origin(&delivery.properties);
                crmsync_store::sync_errors::park_unreadable(&self.matcher.pool, &connection_id, "match", &message_id, &e.to_string()).await;
                return Err(StageError::Poison(e.to_string()));
            }
        };
        let span = tracing::info_span!(
            "match_batch",
            connection_id = %batch.connection_id,
            lane = batch.lane.as_str(),
            batch_id = %batch.batch_id,
            records = batch.changes.len(),
            commands = tracing::field::Empty,
            errors = tracing::field::Empty,
        );
        // The message's span links to the trace of each record it carries.
        for change in &batch.changes {
            propagation::link(&span, change.trace.as_ref());
        }
        async {
            let out = self.matcher.process(&batch).await?;
            tracing::Span::current().record("commands", out.commands.len()).record("errors", out.errors.len());
            self.finish(&batch, out).await
        }
        .instrument(span)
        .await
    }
}

/// Runs the matcher until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services = Services::connect_patiently(&config, "crmsync-matcher", &shutdown).await?;
    let health = Health::new("matcher", &services);
    health.drain_on(shutdown.clone());
    health.report(shutdown.clone());
    let server = health::serve(config.telemetry.http_listen.as_deref(), health.clone()).await?;
    let factory = Arc::new(SystemsFactory::from_services(&config, &services).await?);
    let stage = Arc::new(MatchStage {
        matcher: Matcher {
            pool: services.pool.clone(),
            locks: services.locks.clone(),
            factory,
            lock_timeout: config.locks.acquire_timeout(),
        },
        broker: services.broker.clone(),
    });
    let loops = [Lane::Immediate, Lane::Batch].map(|lane| {
        let opts = ConsumeOptions {
            queue: services.topology.queue(Stage::Match, lane),
            concurrency: config.matcher.concurrency,
            backoff: Duration::from_millis(config.matcher.retry_backoff_ms),
            max_backoff: Duration::from_secs(10),
            tag: String::new(),
        };
        consume(&services.broker, opts, stage.clone(), shutdown.clone())
    });
    health.working();
    let statistics = tokio::spawn(crmsync_infra::statistics::keep_current(services.pool.clone(), shutdown.clone()));
    let consumed = futures::future::try_join_all(loops).await;
    statistics.abort();
    consumed?;
    services.broker.close().await;
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}
