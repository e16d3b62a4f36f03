//! A read-only view of RabbitMQ, for the commands that only look
//! (`crmsync status`, `wait-idle`) and the progress probe: queue depths,
//! nothing ever declared (I10).
//!
//! A tier's [`crate::broker::Broker`] declares the whole topology on every
//! connection it makes, as a tier must. A command that only looks must not:
//! run against a connection whose batch lane never ran, it would create the
//! connection's queue, and every status call would cost the broker a
//! declaration per connection. So here
//! - connecting declares nothing;
//! - a depth is a passive declare, and a queue that does not exist is
//!   reported as not declared (`None`). The broker answers a passive declare
//!   of a missing queue by closing the channel (404), so the next question
//!   is asked on a new one;
//! - every call, connecting included, fails after `amqp.timeout_ms`: a
//!   broker that accepts TCP and never answers holds no command;
//! - a connection found dead (or left unusable by a call that timed out) is
//!   replaced on the next call, so a probe outlives a broker restart.

use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use crate::amqp::{self, AmqpError, Topology};
use crate::config::AmqpConfig;

#[derive(Debug)]
struct Open {
    conn: Connection,
    channel: Option<Channel>,
}

/// Looks at the broker without changing it.
#[derive(Debug)]
pub struct Inspector {
    cfg: AmqpConfig,
    name: String,
    topology: Topology,
    /// One question at a time: they share a channel.
    open: Mutex<Option<Open>>,
}

impl Inspector {
    /// An inspector that has not connected yet; the first call connects. The
    /// broker lists its connection as `{name} ({prefix})`.
    pub fn new(cfg: &AmqpConfig, name: &str) -> Inspector {
        Inspector { cfg: cfg.clone(), name: format!("{name} ({})", cfg.prefix), topology: Topology::new(cfg), open: Mutex::new(None) }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Connects now, if not connected: to tell an unreachable broker apart
    /// before asking anything.
    pub async fn connect(&self) -> Result<(), AmqpError> {
        let mut open = self.open.lock().await;
        Self::usable(&mut open, &self.cfg, &self.name).await.map(drop)
    }

    async fn usable<'a>(open: &'a mut Option<Open>, cfg: &AmqpConfig, name: &str) -> Result<&'a mut Open, AmqpError> {
        if !open.as_ref().is_some_and(|o| o.conn.status().connected()) {
            if let Some(dead) = open.take() {
                let _ = amqp::within(cfg.timeout(), dead.conn.close(200, "replaced".into())).await;
            }
            *open = Some(Open { conn: amqp::connect(cfg, name).await?, channel: None });
        }
        Ok(open.as_mut().expect("connected just now"))
    }

    /// Messages ready in `queue`, or `None` if it has not been declared.
    pub async fn depth(&self, queue: &str) -> Result<Option<u32>, AmqpError> {
        let mut guard = self.open.lock().await;
        let asked = amqp::within(self.cfg.timeout(), async {
            let open = Self::usable(&mut guard, &self.cfg, &self.name).await?;
            let channel = match &open.channel {
                Some(ch) if ch.status().connected() => ch.clone(),
                _ => {
                    let ch = open.conn.create_channel().await?;
                    open.channel = Some(ch.clone());
                    ch
                }
            };
            self.topology.passive_depth(&channel, queue).await
        })
        .await;
        match &asked {
            Ok(Some(_)) => {}
            // A call that timed out may have left the connection half-way:
            // the next call starts afresh.
            Err(AmqpError::Timeout(_)) => *guard = None,
            // The broker closed the channel (on a missing queue, or a
            // refusal); a dead connection is replaced by the next call.
            Ok(None) | Err(_) => {
                if let Some(open) = guard.as_mut() {
                    open.channel = None;
                }
            }
        }
        asked
    }

    /// Closes the connection, if any.
    pub async fn close(&self) {
        if let Some(open) = self.open.lock().await.take() {
            let _ = amqp::within(self.cfg.timeout(), open.conn.close(200, "done".into())).await;
        }
    }
}
