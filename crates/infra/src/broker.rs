//! A self-healing handle on RabbitMQ: every tier holds one [`Broker`] instead
//! of a bare connection, so that losing the broker (a restart, a network cut,
//! a node failover) is a pause, not a crash.
//!
//! - Whoever needs the broker asks for the *live* connection. If the last one
//!   died, the first caller reconnects (one attempt, the others wait on the
//!   same attempt), redeclares the whole topology (a fixed set of shared
//!   queues, whatever the number of connections), and opens a fresh
//!   confirming publisher. Callers that fail turn it into a retry with backoff
//!   ([`crate::worker::StageError::Retry`], a failed producer pass), so no
//!   message is lost and no cursor moves.
//! - Consume loops ([`crate::worker::consume`]) wait for a live connection with
//!   backoff ([`Broker::wait_live`]) and start consuming again on the new one.
//!   Deliveries in hand on the dead channel are simply dropped: the broker
//!   redelivers them, and every handler is idempotent (I1).
//! - Readiness reads [`Broker::connected`]: a tier reports not-ready while it
//!   has no broker.
//!
//! Why not lapin's own `enable_auto_recover`: it replays consumers and
//! pending confirms inside the library, gives up after a fixed number of
//! attempts; reconnecting at this level keeps every settling rule of the
//! worker explicit.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::amqp::{self, AmqpError, Outgoing, Publisher, Topology};
use crate::config::AmqpConfig;

/// The first and the longest pause between two attempts to reach the broker.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One connection to the broker and what was opened on it.
#[derive(Debug, Clone)]
pub struct Live {
    pub conn: Arc<Connection>,
    pub publisher: Publisher,
    /// Counts connections made: a consumer can tell whether the connection it
    /// saw die has been replaced already.
    pub generation: u64,
}

impl Live {
    fn usable(&self) -> bool {
        self.conn.status().connected() && self.publisher.usable()
    }
}

#[derive(Debug, Default)]
struct State {
    live: Option<Live>,
    generation: u64,
    /// A channel for passive declares (queue depths), reused while it lives.
    utility: Option<(u64, Channel)>,
}

/// The tier's handle on RabbitMQ; cheap to share (`Arc<Broker>`).
#[derive(Debug)]
pub struct Broker {
    cfg: AmqpConfig,
    name: String,
    topology: Topology,
    /// Held only for moments, never across an await, so readiness and the
    /// fast path never wait behind a reconnect in progress.
    state: std::sync::Mutex<State>,
    /// One reconnect at a time; the others wait for its result.
    reconnecting: Mutex<()>,
}

impl Broker {
    /// A handle that has not connected yet; the first use connects. The
    /// broker lists the connection as `{name} ({prefix})`, so an operator
    /// (or a test) can tell deployments sharing a broker apart.
    pub fn new(cfg: &AmqpConfig, name: &str) -> Arc<Broker> {
        Arc::new(Broker {
            cfg: cfg.clone(),
            name: format!("{name} ({})", cfg.prefix),
            topology: Topology::new(cfg),
            state: std::sync::Mutex::default(),
            reconnecting: Mutex::new(()),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-made
        // (every update is one assignment), so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> Option<Live> {
        self.state().live.clone().filter(Live::usable)
    }

    /// The live connection, reconnecting (once) if the last one died.
    pub async fn live(&self) -> Result<Live, AmqpError> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        // Someone else may have reconnected while this caller waited.
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let dead = self.state().live.take();
        if let Some(dead) = dead {
            // Closing a half-dead connection frees its channels' resources.
            let _ = dead.conn.close(200, "replaced".into()).await;
            warn!(broker = %self.name, "lost the connection to RabbitMQ; reconnecting");
        }
        // One attempt to connect and declare is bounded as a whole: a broker
        // that accepts TCP but does not answer must not hold every caller.
        let live = amqp::within(self.cfg.timeout(), self.open()).await?;
        if live.generation > 1 {
            metrics::counter!(crate::metrics::BROKER_RECONNECTS, "broker" => self.name.clone()).increment(1);
            info!(broker = %self.name, generation = live.generation, "reconnected to RabbitMQ; topology redeclared");
        }
        self.state().live = Some(live.clone());
        Ok(live)
    }

    /// Connects, declares the topology and opens a publisher.
    async fn open(&self) -> Result<Live, AmqpError> {
        let conn = amqp::connect(&self.cfg, &self.name).await?;
        let channel = conn.create_channel().await?;
        self.topology.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        let publisher = Publisher::new(&conn, &self.topology).await?;
        let mut state = self.state();
        state.generation += 1;
        Ok(Live { conn: Arc::new(conn), publisher, generation: state.generation })
    }

    /// The live connection, trying again with backoff until it is had or
    /// `shutdown` comes (`None`).
    pub async fn wait_live(&self, shutdown: &CancellationToken) -> Option<Live> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.live().await {
                Ok(live) => return Some(live),
                Err(e) => warn!(broker = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ unavailable"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Whether the broker is reachable now (for readiness).
    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    /// Publishes with confirms on the live connection; see
    /// [`Publisher::publish_confirmed`]. A failure leaves the connection to be
    /// replaced on the next call.
    pub async fn publish_confirmed(&self, messages: Vec<Outgoing>) -> Result<(), AmqpError> {
        self.live().await?.publisher.publish_confirmed(messages).await
    }

    /// Publishes straight to a stage's dead-letter queue, confirmed; see
    /// [`Publisher::dead_letter_confirmed`].
    pub async fn dead_letter_confirmed(&self, stage: amqp::Stage, messages: Vec<Outgoing>) -> Result<(), AmqpError> {
        self.live().await?.publisher.dead_letter_confirmed(stage, messages).await
    }

    /// Messages ready in `queue` (the broker's count), or `None` if the
    /// queue has not been declared: a passive declare, so asking never
    /// creates a queue. Asked on a channel kept for such questions while it
    /// lives, within `amqp.timeout_ms`.
    pub async fn depth(&self, queue: &str) -> Result<Option<u32>, AmqpError> {
        let live = self.live().await?;
        let kept = self.state().utility.clone().filter(|(g, ch)| *g == live.generation && ch.status().connected());
        let depth = amqp::within(self.cfg.timeout(), async {
            let channel = match kept {
                Some((_, ch)) => ch,
                None => {
                    let ch = live.conn.create_channel().await?;
                    self.state().utility = Some((live.generation, ch.clone()));
                    ch
                }
            };
            self.topology.passive_depth(&channel, queue).await
        })
        .await;
        if !matches!(depth, Ok(Some(_))) {
            // A passive declare of a missing queue closes the channel, and
            // a call that timed out may have left it unusable.
            self.state().utility = None;
        }
        depth
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        let live = self.state().live.take();
        if let Some(live) = live {
            let _ = live.conn.close(200, "shutdown".into()).await;
        }
    }
}
