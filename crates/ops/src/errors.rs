//! Retrying and dismissing sync errors, audited: what `crmsync errors
//! retry | dismiss` and the console's sync-error pages both call, and
//! their CSV export.

use std::collections::BTreeMap;

use anyhow::Context;
use crmsync_connector::ConnectorFactory;
use crmsync_domain::Lane;
use crmsync_infra::Config;
use crmsync_infra::broker::Broker;
use crmsync_producer::RecordName;
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::connections;
use crmsync_store::sync_errors::{self, Filter, SyncErrorDetail};
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

/// Records retried per published batch of changes (and per source read).
const RETRY_CHUNK: usize = 500;

/// What a retry of records did.
#[derive(Debug, Default)]
pub struct Retried {
    /// Errors closed as `retried`: their records are back in the pipeline.
    pub retried: u64,
    /// Records no longer in their source: nothing to retry; dismiss them.
    pub gone: Vec<RecordName>,
    /// Records that cannot be read again, with why.
    pub unsupported: Vec<(RecordName, String)>,
}

/// Retries the open errors of records (not of dead-lettered messages:
/// those are replayed from their queue) among `errors`: each record's
/// current state is read from its source and published to the matcher,
/// and its error closed as `retried` once the broker confirmed it. More
/// records of a connection than its `batch_threshold` take the batch lane,
/// as a burst of real changes would (R7). `progress` hears of each chunk
/// done. One admin audit entry per connection names the errors retried.
pub async fn retry_records(
    config: &Config,
    pool: &PgPool,
    factory: &SystemsFactory,
    actor: &Actor,
    errors: &[SyncErrorDetail],
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Retried> {
    let started = chrono::Utc::now();
    let mut by_connection: BTreeMap<&str, Vec<&SyncErrorDetail>> = BTreeMap::new();
    for e in errors.iter().filter(|e| e.object != "message" && e.status == "open") {
        by_connection.entry(e.connection_id.as_str()).or_default().push(e);
    }
    let mut out = Retried::default();
    if by_connection.is_empty() {
        return Ok(out);
    }
    let broker = Broker::new(&config.amqp, "crmsync-retry");
    broker.live().await.context("connecting to RabbitMQ")?;
    let result = async {
        for (connection_id, errors) in by_connection {
            let settings = connections::load(pool, connection_id).await?;
            let systems = factory.systems(connection_id, &settings).await?;
            let lane = Lane::for_pass(errors.len(), settings.batch_threshold);
            let mut closed_here = Vec::new();
            for chunk in errors.chunks(RETRY_CHUNK) {
                let names: Vec<RecordName> =
                    chunk.iter().map(|e| RecordName { object: e.object.clone(), id: e.record_id.clone() }).collect();
                let done = crmsync_producer::redetect(&broker, &systems, connection_id, &names, lane, config.producer.records_per_message)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let closed: Vec<i64> = chunk
                    .iter()
                    .filter(|e| done.published.iter().any(|r| r.object == e.object && r.id == e.record_id))
                    .map(|e| e.id)
                    .collect();
                out.retried += sync_errors::close(pool, &closed, "retried", started).await?;
                closed_here.extend(closed);
                out.gone.extend(done.gone);
                out.unsupported.extend(done.unsupported);
                progress(chunk.len());
            }
            if !closed_here.is_empty() {
                let entry = NewEntry {
                    actor,
                    connection_id: Some(connection_id),
                    action: "errors.retry",
                    target: None,
                    before: Some(serde_json::json!({ "open": closed_here })),
                    after: Some(serde_json::json!({ "status": "retried" })),
                };
                admin_audit::record(pool, &entry).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    broker.close().await;
    result.map(|()| out)
}

/// Dismisses the open errors `targets` names (ids, or a category, of one
/// connection or all); how many were closed. The admin audit log gets one
/// entry per connection touched, with the ids closed.
pub async fn dismiss(pool: &PgPool, actor: &Actor, targets: &Filter) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let open = Filter { status: Some("open".into()), ..targets.clone() };
    let found = sync_errors::find(&mut *tx, &open, None).await?;
    let ids: Vec<i64> = found.iter().map(|e| e.id).collect();
    let closed = sync_errors::close(&mut *tx, &ids, "dismissed", chrono::Utc::now()).await?;
    let mut by_connection: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in &found {
        by_connection.entry(e.connection_id.as_str()).or_default().push(e.id);
    }
    for (connection, ids) in &by_connection {
        let entry = NewEntry {
            actor,
            connection_id: Some(connection),
            action: "errors.dismiss",
            target: targets.category.as_deref(),
            before: Some(serde_json::json!({ "open": ids })),
            after: Some(serde_json::json!({ "status": "dismissed" })),
        };
        admin_audit::record(&mut *tx, &entry).await?;
    }
    tx.commit().await?;
    Ok(closed)
}

/// The columns of a sync-error CSV export, the CLI's and the console's.
const CSV_COLUMNS: [&str; 11] =
    ["id", "connection", "status", "category", "stage", "object", "record", "occurrences", "first_seen_at", "last_seen_at", "reason"];

/// Writes sync errors as CSV (a header line, then one row each), as
/// `crmsync errors export --format csv` and the console's export both do.
/// The rows are written as given: redact them first ([`crate::pii::Pii`]).
pub fn write_csv(sink: impl std::io::Write, rows: &[SyncErrorDetail]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(sink);
    w.write_record(CSV_COLUMNS)?;
    for r in rows {
        w.write_record([
            r.id.to_string(),
            r.connection_id.clone(),
            r.status.clone(),
            r.category.clone(),
            r.stage.clone(),
            r.object.clone(),
            r.record_id.clone(),
            r.occurrences.to_string(),
            r.first_seen_at.to_rfc3339(),
            r.last_seen_at.to_rfc3339(),
            r.reason.clone(),
        ])?;
    }
    w.flush()?;
    Ok(())
}
