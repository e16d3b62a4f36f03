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
use crmsync_infra::broker::Broker;
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

impl Progress {
    pub fn idle(&self) -> bool {
        self.finished >= self.published && self.queued == 0 && self.unread_feeds.is_empty() && self.mirrors_waiting == 0
    }
}

/// Measures progress from PostgreSQL, the broker and the sources.
#[derive(Debug)]
pub struct Probe {
    pool: PgPool,
    factory: SystemsFactory,
    /// Survives a broker restart: the fault suite measures through one.
    broker: std::sync::Arc<Broker>,
}

impl Probe {
    pub async fn new(config: &Config, pool: &PgPool) -> anyhow::Result<Probe> {
        let broker = Broker::new(&config.amqp, "crmsync-probe");
        broker.live().await.context("connecting to RabbitMQ")?;
        let factory = SystemsFactory::from_config(config, pool).await?;
        Ok(Probe { pool: pool.clone(), factory, broker })
    }

    pub async fn measure(&self, connection_id: &str) -> anyhow::Result<Progress> {
        let feeds = feeds::all(&self.pool, connection_id).await?;
        let published = feeds.iter().map(|f| f.published).sum();
        let finished = audit::finished_changes(&self.pool, connection_id).await?;
        let mut queued = 0u64;
        self.broker.declare_connection(connection_id).await?;
        for (_, _, q) in self.broker.topology().work_queues(&[connection_id.to_owned()]) {
            queued += u64::from(self.broker.depth(&q).await?);
        }
        let mirrors_waiting = crmsync_store::mirror_outbox::count(&self.pool, connection_id).await?;
        let mut progress = Progress { published, finished, queued, unread_feeds: Vec::new(), mirrors_waiting };
        if !progress.idle() {
            // Busy already: asking the sources (an API call per feed over
            // HTTP) would tell nothing more.
            return Ok(progress);
        }
        let settings = connections::load(&self.pool, connection_id).await?;
        let systems = self.factory.systems(&settings).await?;
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
                anyhow::bail!("the pipeline did not settle within {timeout:?}: {first:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
