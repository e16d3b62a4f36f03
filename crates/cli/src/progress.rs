//! How far the pipeline is, and whether it is idle.
//!
//! Every change the producer publishes is finished by exactly one stage, which
//! writes one audit row for it (applied, created, pending, skipped, rejected).
//! So the pipeline of a connection is idle, exactly, when
//! - every change published has been finished (audit rows ≥ changes published),
//! - no work queue holds a message, and
//! - no feed has unread changes past its cursor (including the echoes of the
//!   applier's own writes, which the producer must still read and drop, and
//!   changes committed but not pageable yet because an older transaction
//!   somewhere in the database is still running).
//!
//! The demo shows this as progress; the tests wait on it instead of sleeping.

use std::time::{Duration, Instant};

use anyhow::Context;
use crmsync_connector::{ConnectorFactory, Cursor};
use crmsync_infra::Config;
use crmsync_infra::inspect::Inspector;
use crmsync_producer::Feed;
use crmsync_store::{audit, connections, feeds};
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

/// A snapshot of one connection's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Changes published by the producer.
    pub published: i64,
    /// Changes finished by the matcher or the applier.
    pub finished: i64,
    /// Messages waiting in the work queues (all connections).
    pub queued: u64,
    /// Feeds with changes not yet read.
    pub unread_feeds: Vec<String>,
    /// Mirror reconciliations queued by identity changes, not yet done.
    pub mirrors_waiting: i64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unread = if self.unread_feeds.is_empty() { "none".to_owned() } else { self.unread_feeds.join(", ") };
        write!(
            f,
            "published {} · finished {} · queued {} · unread feeds {unread} · mirrors waiting {}",
            self.published, self.finished, self.queued, self.mirrors_waiting
        )
    }
}

impl Progress {
    pub fn idle(&self) -> bool {
        self.finished >= self.published && self.queued == 0 && self.unread_feeds.is_empty() && self.mirrors_waiting == 0
    }
}

/// Measures progress from PostgreSQL, the broker and the sources. It only
/// reads (I10): queue depths are passive declares, and a queue nobody has
/// declared yet holds nothing.
#[derive(Debug)]
pub struct Probe {
    pool: PgPool,
    factory: SystemsFactory,
    /// Reconnects after a broker restart: the fault suite measures through one.
    broker: Inspector,
}

impl Probe {
    pub async fn new(config: &Config, pool: &PgPool) -> anyhow::Result<Probe> {
        let broker = Inspector::new(&config.amqp, "crmsync-probe");
        broker.connect().await.context("connecting to RabbitMQ")?;
        let factory = SystemsFactory::from_config(config, pool).await?;
        Ok(Probe { pool: pool.clone(), factory, broker })
    }

    pub async fn measure(&self, connection_id: &str) -> anyhow::Result<Progress> {
        let feeds = feeds::all(&self.pool, connection_id).await?;
        let published = feeds.iter().map(|f| f.published).sum();
        let finished = audit::finished_changes(&self.pool, connection_id).await?;
        let mut queued = 0u64;
        for (_, _, q) in self.broker.topology().shared_queues() {
            queued += u64::from(self.broker.depth(&q).await?.unwrap_or(0));
        }
        // And the records waiting in the connection's batch lane.
        queued += u64::try_from(crmsync_store::batch_lanes::queued(&self.pool, connection_id).await?).unwrap_or(0);
        let mirrors_waiting = crmsync_store::mirror_outbox::count(&self.pool, connection_id).await?;
        let mut progress = Progress { published, finished, queued, unread_feeds: Vec::new(), mirrors_waiting };
        if !progress.idle() {
            // Busy already: asking the sources (an API call per feed over
            // HTTP) would tell nothing more.
            return Ok(progress);
        }
        let settings = connections::load(&self.pool, connection_id).await?;
        let systems = self.factory.systems(connection_id, &settings).await?;
        for feed in Feed::for_connection(&settings) {
            let cursor = feeds.iter().find(|f| f.feed == feed.name()).and_then(|f| f.cursor.clone()).map(Cursor);
            if feed.pending(&systems, cursor.as_ref()).await? {
                progress.unread_feeds.push(feed.name());
            }
        }
        Ok(progress)
    }

    /// Waits until every connection in `ids` is idle, calling `tick` with the
    /// first connection's progress as it goes.
    pub async fn wait_idle(&self, ids: &[String], timeout: Duration, mut tick: impl FnMut(&Progress)) -> anyhow::Result<Progress> {
        let start = Instant::now();
        loop {
            let mut all_idle = true;
            let mut first = None;
            for id in ids {
                match self.measure(id).await {
                    Ok(p) => {
                        all_idle &= p.idle();
                        first.get_or_insert(p);
                    }
                    // A service restarting is waited out like a busy
                    // pipeline, up to the same deadline.
                    Err(e) if start.elapsed() <= timeout => {
                        tracing::debug!(error = %e, "progress unavailable for now");
                        all_idle = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            let first = first.unwrap_or_default();
            tick(&first);
            if all_idle {
                return Ok(first);
            }
            if start.elapsed() > timeout {
                anyhow::bail!("the pipeline did not settle within {timeout:?}: {first}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `crmsync wait-idle`: waits until every connection (or `only`) is idle,
/// with a spinner on standard error when it is a terminal; fails on the
/// timeout, saying what was still busy.
pub async fn wait_idle(config: &Config, pool: &PgPool, only: Option<&str>, timeout_secs: u64) -> anyhow::Result<()> {
    let ids = crate::connection_ids(pool, only).await?;
    let probe = Probe::new(config, pool).await?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let waited = probe.wait_idle(&ids, Duration::from_secs(timeout_secs), |p| spinner.set_message(p.to_string())).await;
    spinner.finish_and_clear();
    probe.broker.close().await;
    let p = waited?;
    outln!(
        "idle after {:.1} s: {} change(s) published, {} finished ({})",
        started.elapsed().as_secs_f64(),
        p.published,
        p.finished,
        ids.join(", ")
    );
    Ok(())
}

/// A progress bar for a long operator command (`errors retry`, `errors
/// replay`): drawn on standard error when it is a terminal, silent otherwise.
pub fn bar(len: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("  {spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}
