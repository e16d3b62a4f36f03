//! The producer tier: detects changes in every connection's systems and
//! publishes them to the matcher.
//!
//! Every connection's pass, and every feed (connection × source object) in
//! it, is leased, so any number of replicas can run and no connection is
//! polled by two at once; a replica that dies loses its leases when they
//! expire and another takes over from the stored cursors. Polling runs
//! every `producer.poll_interval_ms` and, when the source can notify, as
//! soon as a change commits: the sandbox with PostgreSQL NOTIFY at commit,
//! a Salesforce org through its change events, which its connector hears
//! (a pass then reads that connection's feeds).
//!
//! A paused connection (issue 28) gets no pass: nothing is read or
//! published for it and its cursors hold still, whatever wakes the loop (a
//! notification or a change event for it is dropped: the held cursors
//! remember what it would have read). On resume, the next full poll, at
//! most `producer.poll_interval_ms` later, reads on from the cursors, in
//! order, and nothing is lost.

mod feed;
mod pass;
mod redetect;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crmsync_connector::ConnectorFactory;
use crmsync_infra::health::{self, Health};
use crmsync_infra::{CancellationToken, Config, services::Services, telemetry};
use crmsync_store::{connections, feeds};
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tracing::{info, warn};

pub use feed::Feed;
pub use pass::{PassContext, PassStats, change_messages, run_pass};
pub use redetect::{RecordName, Redetected, redetect};

/// The channel the sandbox notifies on when a tracked table changes.
const SANDBOX_CHANNEL: &str = "crmsync_sandbox";

/// This replica's name in feed leases.
fn replica_id(config: &Config) -> String {
    config.producer.replica_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "producer".into());
        format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
    })
}

/// Tables notified since the last pass: a pass woken by them reads only
/// their feeds, not every feed of every connection.
type Dirty = Arc<Mutex<HashSet<String>>>;

/// Wakes the poll loop whenever the sandbox commits a change, noting which
/// table changed. Reconnects with backoff; polling continues meanwhile, so
/// a lost listener only costs latency.
async fn listen(pool: PgPool, wake: Arc<Notify>, dirty: Dirty, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "change notifications unavailable; polling only");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if listener.listen(SANDBOX_CHANNEL).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) => {
                        dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(n.payload().to_owned());
                        wake.notify_one();
                    }
                    Err(e) => { warn!(error = %e, "change notifications interrupted"); break; }
                }
            }
        }
    }
}

/// Runs the producer until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services = Services::connect_patiently(&config, "crmsync-producer", &shutdown).await?;
    let health = Health::new("producer", &services);
    health.drain_on(shutdown.clone());
    health.report(shutdown.clone());
    let server = health::serve(config.telemetry.http_listen.as_deref(), health.clone()).await?;
    let factory = SystemsFactory::from_services(&config, &services).await?.hearing_changes();
    let owner = replica_id(&config);
    let wake = Arc::new(Notify::new());
    let dirty = Dirty::default();
    let listener = tokio::spawn(listen(factory.pool().clone(), wake.clone(), dirty.clone(), shutdown.clone()));
    let ctx = PassContext {
        pool: &services.pool,
        broker: &services.broker,
        owner: &owner,
        lease_ttl: config.producer.lease_ttl(),
        page_size: config.producer.page_size,
        records_per_message: config.producer.records_per_message,
        api_records_per_message: config.producer.api_records_per_message,
    };
    info!(replica = %owner, "producer started");
    health.working();
    let mut backoff = config.producer.poll_interval();
    let signals = factory.change_signals().clone();
    // What the next pass reads: every feed (`None`) or the notified ones.
    let mut only: Option<HashSet<String>> = None;
    // And, in a pass that is not full, the connections whose change
    // events said they have changes (every feed of theirs is read).
    let mut signalled: HashSet<String> = HashSet::new();
    let mut events_only = false;
    let mut last_full = Instant::now();
    // Connections another replica's pass held at the last try. Notifications
    // (one per commit to a source table: thousands a second in a backfill)
    // do not wake a standby for them; it tries again at the poll interval.
    let mut standing_by: HashSet<String> = HashSet::new();
    // The connections, as of the last full poll: a connection added since
    // is read at the next one.
    let mut ids = Vec::new();
    loop {
        let mut failed = false;
        if only.is_none() {
            last_full = Instant::now();
            ids = connections::ids(&services.pool).await.unwrap_or_default();
        }
        for connection_id in ids.iter().cloned() {
            let feeds = if signalled.contains(&connection_id) {
                None
            } else if only.is_some() && (standing_by.contains(&connection_id) || events_only) {
                continue;
            } else {
                only.as_ref()
            };
            match poll_connection(&ctx, &factory, &connection_id, feeds).await {
                Ok(true) => {
                    standing_by.remove(&connection_id);
                }
                Ok(false) => {
                    standing_by.insert(connection_id);
                }
                Err(e) => {
                    // Connector errors can quote record values: no email in clear (I5).
                    warn!(connection_id, error = %telemetry::redact(&e.to_string()), "detection failed; retrying");
                    failed = true;
                }
            }
        }
        // Failures back off; success polls at the configured pace.
        backoff = if failed { (backoff * 2).min(Duration::from_secs(10)) } else { config.producer.poll_interval() };
        let (notified, by_events) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => (false, false),
            _ = wake.notified(), if !failed => (true, false),
            _ = signals.signalled(), if !failed => (true, true),
        };
        let tables = std::mem::take(&mut *dirty.lock().unwrap_or_else(|p| p.into_inner()));
        signalled = signals.take();
        // Woken by change events alone: only the connections they name.
        events_only = by_events && tables.is_empty();
        // Every feed is still read once a poll interval, however often
        // notifications come: the overlap window's look back (a late
        // commit) depends on it.
        only = (notified && last_full.elapsed() < config.producer.poll_interval()).then_some(tables);
        if only.is_none() {
            signalled.clear();
        }
    }
    let _ = feeds::release_all(&services.pool, &owner).await;
    listener.abort();
    services.broker.close().await;
    if let Some(server) = server {
        server.abort();
    }
    info!("producer stopped");
    Ok(())
}

/// One pass over a connection, if this replica holds its pass lease; false
/// when another replica's pass holds it (nothing is loaded or read then).
async fn poll_connection(
    ctx: &PassContext<'_>,
    factory: &SystemsFactory,
    connection_id: &str,
    only: Option<&HashSet<String>>,
) -> anyhow::Result<bool> {
    let Some(pass) = feeds::lease(ctx.pool, connection_id, feeds::PASS, ctx.owner, ctx.lease_ttl).await? else {
        return Ok(false);
    };
    let (settings, paused) = connections::load_with_pause(ctx.pool, connection_id).await?;
    if paused.is_some() {
        // Nothing read, nothing published, no cursor moved (see the module).
        return Ok(true);
    }
    let systems = factory.systems(connection_id, &settings).await?;
    let stats = run_pass(ctx, connection_id, &settings, &systems, only, pass).await?;
    let detected = [("published", stats.published), ("suppressed_echo", stats.suppressed)];
    for (outcome, n) in detected.into_iter().filter(|(_, n)| *n > 0) {
        metrics::counter!(crmsync_infra::metrics::RECORDS, "tier" => "producer", "stage" => "detect", "outcome" => outcome)
            .increment(n as u64);
    }
    if stats.published > 0 {
        info!(
            connection_id,
            lane = stats.lane.map_or("-", |l| l.as_str()),
            published = stats.published,
            suppressed = stats.suppressed,
            "changes published"
        );
    }
    Ok(true)
}
