//! The matcher tier: decides who is whose counterpart (R1), whether a
//! counterpart may be created (R3), and hands each change to the applier as a
//! command on one identity.
//!
//! One consume loop per lane, so the immediate lane never waits behind a
//! batch backlog. Any number of replicas may run: identity decisions are
//! serialised by Redis locks and fenced in PostgreSQL.

mod parse;
mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_domain::Lane;
use crmsync_domain::messages::{self, ApplyBatch, Change, ChangeBatch, MESSAGE_VERSION};
use crmsync_infra::amqp::{Outgoing, Stage, Topology};
use crmsync_infra::broker::Broker;
use crmsync_infra::health::{self, Health};
use crmsync_infra::priority::Priority;
use crmsync_infra::propagation;
use crmsync_infra::services::Services;
use crmsync_infra::worker::{ConsumeOptions, Handler, StageError, consume};
use crmsync_infra::{CancellationToken, Config};
use crmsync_store::audit::{self, AuditEntry};
use crmsync_store::sync_errors;
use crmsync_systems::SystemsFactory;
use lapin::message::Delivery;
use tracing::Instrument;
use uuid::Uuid;

pub use process::{Matcher, Output};

/// Names in each audit entry its record's trace, for the console's
/// history. The changes are looked up by id through a map: a batch holds
/// hundreds of changes and about as many entries, and searching the changes
/// for each entry was quadratic. The first change with an id wins.
fn name_traces(changes: &[Change], audits: &mut [AuditEntry]) {
    let mut traces: HashMap<Uuid, Option<&str>> = HashMap::with_capacity(changes.len());
    for c in changes {
        traces.entry(c.change_id).or_insert_with(|| c.trace.as_ref().and_then(|t| t.trace_id()));
    }
    for a in audits {
        a.trace_id = traces.get(&a.change_id).copied().flatten().map(str::to_owned);
    }
}

/// The match stage: decode, match, store, publish.
#[derive(Debug)]
pub struct MatchStage {
    pub matcher: Matcher,
    pub broker: Arc<Broker>,
    /// The replica's live work, which batch work gives way to.
    pub priority: Arc<Priority>,
}

impl MatchStage {
    /// Stores what matching produced and hands the commands on.
    async fn finish(&self, batch: &ChangeBatch, mut out: Output) -> Result<(), StageError> {
        let conn = batch.connection_id.as_str();
        name_traces(&batch.changes, &mut out.audits);
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
        let _live = match batch.lane {
            Lane::Immediate => Some(self.priority.live()),
            Lane::Batch => {
                self.priority.give_way().await;
                None
            }
        };
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
    let batch_factory = SystemsFactory::from_services(&config, &services).await?;
    let immediate_factory = batch_factory.for_immediate_lane(&config, &services).await?;
    let factories = [(Lane::Immediate, immediate_factory), (Lane::Batch, batch_factory)];
    let priority = Priority::shared(services.redis.clone(), &config.redis.prefix);
    // Each lane its own stage over its own connections (`Services::lane_pool`):
    // a live change never queues for one behind a backfill's messages.
    let loops = factories.map(|(lane, factory)| {
        let stage = Arc::new(MatchStage {
            matcher: Matcher {
                pool: services.lane_pool(lane).clone(),
                locks: services.locks.clone(),
                factory: Arc::new(factory),
                lock_timeout: config.locks.acquire_timeout(),
            },
            broker: services.broker.clone(),
            priority: priority.clone(),
        });
        let opts = ConsumeOptions {
            queue: services.topology.queue(Stage::Match, lane),
            concurrency: config.matcher.concurrency,
            backoff: Duration::from_millis(config.matcher.retry_backoff_ms),
            max_backoff: Duration::from_secs(10),
            retry_in_place: config.amqp.retry_in_place(),
            tag: String::new(),
        };
        consume(&services.broker, opts, stage, shutdown.clone())
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

#[cfg(test)]
mod tests {
    use crmsync_domain::messages::TraceContext;
    use crmsync_domain::records::SourceRecord;

    use super::*;

    fn change(id: Uuid, trace: Option<&str>) -> Change {
        let now = "2026-01-01T00:00:00Z";
        let record =
            serde_json::from_value(serde_json::json!({ "id": 1, "created_at": now, "updated_at": now, "fields": {} })).expect("a prospect");
        Change {
            change_id: id,
            record: SourceRecord::Prospect(record),
            trace: trace.map(|t| TraceContext { traceparent: format!("00-{t}-00f067aa0ba902b7-01"), tracestate: None }),
        }
    }

    fn entry(id: Uuid) -> AuditEntry {
        AuditEntry {
            change_id: id,
            stage: "match",
            identity_id: None,
            source_side: "ma",
            source_object: "prospect".into(),
            source_id: "1".into(),
            action: "skipped".into(),
            writes: serde_json::Value::Null,
            detail: None,
            lane: "immediate",
            field_values: None,
            trace_id: Some("stale".into()),
        }
    }

    #[test]
    fn each_entry_gets_the_trace_of_its_own_change_and_none_without_one() {
        let (a, b, c, unknown) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let ta = "4bf92f3577b34da6a3ce929d0e0e4736";
        let tb = "0af7651916cd43dd8448eb211c80319c";
        let tb2 = "11111111111111111111111111111111";
        // `b` twice: the first one's trace, as the search it replaces found.
        let changes = [change(a, Some(ta)), change(b, Some(tb)), change(c, None), change(b, Some(tb2))];
        let mut audits = [entry(b), entry(a), entry(c), entry(unknown), entry(a)];
        name_traces(&changes, &mut audits);
        let got: Vec<Option<&str>> = audits.iter().map(|e| e.trace_id.as_deref()).collect();
        assert_eq!(got, [Some(tb), Some(ta), None, None, Some(ta)]);
    }
}
