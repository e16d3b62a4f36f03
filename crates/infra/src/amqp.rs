//! RabbitMQ: the topology the tiers declare, confirmed publishing, consuming.
//!
//! Topology (all durable, declared idempotently by every tier at start):
//!
//! ```text
//! {prefix}.work  (direct) ── match.immediate ──────▶ {prefix}.match.immediate ──────▶ matcher
//!                         ── match.batch ──────────▶ {prefix}.match.batch ──────────▶ matcher
//!                         ── apply.immediate ──────▶ {prefix}.apply.immediate ──────▶ applier
//!                         ── apply.batch ──────────▶ {prefix}.apply.batch ──────────▶ applier (into its lanes)
//! {prefix}.dead  (direct) ── match / apply ────────▶ {prefix}.match.dead, {prefix}.apply.dead
//! {prefix}.hold  (fanout) ─────────────────────────▶ {prefix}.hold ──(after amqp.hold_ms)──▶ {prefix}.work
//! ```
//!
//! The hold queue keeps messages of paused connections out of the way: a
//! stage that meets one republishes it there with its routing key, and
//! after `amqp.hold_ms` the broker dead-letters it back to the work
//! exchange, under that same key, to be looked at again (see
//! `crate::worker`). It has no consumer and costs nothing while empty.
//!
//! Work queues are quorum queues with a delivery limit: a message that keeps
//! failing (or keeps crashing its consumer) is dead-lettered after a bounded
//! number of deliveries instead of cycling forever. Lanes have queues of their
//! own so the immediate lane never waits behind a batch backlog. The set of
//! queues is fixed, whatever the number of connections: the applier takes
//! batch-lane messages off their one queue at once, into per-connection
//! lanes in PostgreSQL, and drains each lane at its connection's budget, so
//! one connection's exhausted budget never holds back another's records (no
//! head-of-line blocking) and the broker carries no queue per connection.

use std::fmt;
use std::time::Duration;

use crmsync_domain::Lane;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind};
use secrecy::ExposeSecret;

use crate::config::AmqpConfig;
use crate::propagation::{self, TraceContext};

/// A pipeline stage that consumes from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Match,
    Apply,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Match => "match",
            Stage::Apply => "apply",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a broker operation failed. All of these are transient from the
/// message's point of view: the caller retries or leaves the message unacked.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused to store a message (nack)")]
    Nacked,
    #[error("message to {0:?} was not routable to any queue")]
    Unroutable(String),
    #[error("publisher confirms are not enabled on this channel")]
    NoConfirms,
    #[error("the broker did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Names and declaration of the exchanges and queues.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
    queue_expires_ms: Option<u64>,
    hold_ms: u64,
}

impl Topology {
    pub fn new(cfg: &AmqpConfig) -> Self {
        Topology {
            prefix: cfg.prefix.clone(),
            delivery_limit: cfg.delivery_limit,
            queue_expires_ms: cfg.queue_expires_ms,
            hold_ms: cfg.hold_ms,
        }
    }

    /// Where messages of paused connections wait (see the module).
    pub fn hold_exchange(&self) -> String {
        format!("{}.hold", self.prefix)
    }

    /// The one queue of the hold exchange.
    pub fn hold_queue(&self) -> String {
        format!("{}.hold", self.prefix)
    }

    /// The hold queue: every message expires after `amqp.hold_ms` (its own
    /// expiration, set when it is held, so that changing the setting never
    /// makes the queue's declaration differ between replicas) and is
    /// dead-lettered to the work exchange under its own routing key (no
    /// `x-dead-letter-routing-key`), back to the queue it came from. At
    /// least once, so that a message is never lost on its way back (I1):
    /// the quorum queue republishes it with confirms, which needs
    /// `reject-publish` overflow.
    fn hold_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(self.work_exchange())));
        args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString(LongString::from("at-least-once")));
        args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
        if let Some(ms) = self.queue_expires_ms {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64));
        }
        args
    }

    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The routing key of a stage and lane. Every queue is shared by all
    /// connections, the applier's batch lane too: its records wait for
    /// their connection's budget in PostgreSQL, not in a queue of their own
    /// (see `crmsync_applier`'s batch module), so the broker's topology is
    /// the same with one connection or ten thousand (I10).
    pub fn routing_key(stage: Stage, lane: Lane) -> String {
        format!("{}.{}", stage.as_str(), lane.as_str())
    }

    pub fn queue(&self, stage: Stage, lane: Lane) -> String {
        format!("{}.{}", self.prefix, Self::routing_key(stage, lane))
    }

    pub fn dead_queue(&self, stage: Stage) -> String {
        format!("{}.{}.dead", self.prefix, stage.as_str())
    }

    /// The work queues, all shared by every connection.
    pub fn shared_queues(&self) -> Vec<(Stage, Lane, String)> {
        [(Stage::Match, Lane::Immediate), (Stage::Match, Lane::Batch), (Stage::Apply, Lane::Immediate), (Stage::Apply, Lane::Batch)]
            .into_iter()
            .map(|(s, l)| (s, l, self.queue(s, l)))
            .collect()
    }

    fn queue_args(&self, dead_letter_key: Option<&str>) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        if let Some(key) = dead_letter_key {
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(self.delivery_limit as i32));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(self.dead_exchange())));
            args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(LongString::from(key)));
        }
        if let Some(ms) = self.queue_expires_ms {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64));
        }
        args
    }

    /// Declares everything; idempotent, so every tier does it at start.
    pub async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for ex in [self.work_exchange(), self.dead_exchange()] {
            channel.exchange_declare(ex.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
        }
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        for stage in [Stage::Match, Stage::Apply] {
            let dead = self.dead_queue(stage);
            channel.queue_declare(dead.clone().into(), qopts, self.queue_args(None)).await?;
            channel
                .queue_bind(
                    dead.into(),
                    self.dead_exchange().into(),
                    stage.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for (stage, lane, _) in self.shared_queues() {
            self.declare_queue(channel, stage, lane).await?;
        }
        let fanout = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(self.hold_exchange().into(), ExchangeKind::Fanout, fanout, FieldTable::default()).await?;
        channel.queue_declare(self.hold_queue().into(), qopts, self.hold_args()).await?;
        channel
            .queue_bind(
                self.hold_queue().into(),
                self.hold_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    async fn declare_queue(&self, channel: &Channel, stage: Stage, lane: Lane) -> Result<(), AmqpError> {
        let q = self.queue(stage, lane);
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(q.clone().into(), qopts, self.queue_args(Some(stage.as_str()))).await?;
        channel
            .queue_bind(
                q.into(),
                self.work_exchange().into(),
                Self::routing_key(stage, lane).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Deletes every queue of this prefix (tests and the demo clean up
    /// after themselves).
    pub async fn delete_all(&self, channel: &Channel) -> Result<(), AmqpError> {
        let mut names: Vec<String> = self.shared_queues().into_iter().map(|(_, _, q)| q).collect();
        names.extend([self.dead_queue(Stage::Match), self.dead_queue(Stage::Apply), self.hold_queue()]);
        for q in names {
            channel.queue_delete(q.into(), QueueDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// Messages ready in a queue (not counting ones delivered and unacked).
    pub async fn depth(&self, channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
        let q =
            channel.queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await?;
        Ok(q.message_count())
    }

    /// Messages ready in a queue, or `None` if nobody has declared it yet:
    /// a passive declare, which never creates the queue. The broker answers
    /// one for a missing queue by closing `channel` (404), so the caller
    /// asks its next question on a new channel.
    pub async fn passive_depth(&self, channel: &Channel, queue: &str) -> Result<Option<u32>, AmqpError> {
        match self.depth(channel, queue).await {
            Ok(n) => Ok(Some(n)),
            Err(AmqpError::Broker(e)) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether the broker refused a call because what it names does not exist.
pub fn not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Runs a broker call, failing it with [`AmqpError::Timeout`] after
/// `limit`: lapin waits for an answer as long as the connection stands.
pub async fn within<T, E: Into<AmqpError>>(limit: Duration, call: impl Future<Output = Result<T, E>>) -> Result<T, AmqpError> {
    match tokio::time::timeout(limit, call).await {
        Ok(done) => done.map_err(Into::into),
        Err(_) => Err(AmqpError::Timeout(limit)),
    }
}

/// Opens a connection to the broker, giving up after `amqp.timeout_ms`.
/// Declares nothing.
pub async fn connect(cfg: &AmqpConfig, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    within(cfg.timeout(), Connection::connect(cfg.url.expose_secret(), props)).await
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: String,
    pub headers: Vec<(String, String)>,
    /// The trace contexts of the records the message carries: its `publish`
    /// span links to each (I5).
    pub links: Vec<TraceContext>,
}

/// Publishes persistent messages and waits for the broker's confirms.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    exchange: String,
    hold: String,
    dead: String,
    hold_ms: u64,
}

impl Publisher {
    pub async fn new(conn: &Connection, topology: &Topology) -> Result<Self, AmqpError> {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher {
            channel,
            exchange: topology.work_exchange(),
            hold: topology.hold_exchange(),
            dead: topology.dead_exchange(),
            hold_ms: topology.hold_ms.max(1),
        })
    }

    /// Publishes messages of a paused connection to the hold queue, each
    /// under the routing key it came with, confirmed: the caller may ack
    /// the delivery it holds once this returns.
    pub async fn hold_confirmed(&self, messages: Vec<Outgoing>) -> Result<(), AmqpError> {
        self.publish_to(&self.hold, Some(self.hold_ms.to_string()), messages).await
    }

    /// Publishes messages straight to a stage's dead-letter queue,
    /// confirmed: for work that left its queue already (the batch lane's
    /// records, taken into PostgreSQL) and then proved poison, so that it
    /// is kept and can be replayed like any dead letter (I6).
    pub async fn dead_letter_confirmed(&self, stage: Stage, mut messages: Vec<Outgoing>) -> Result<(), AmqpError> {
        for m in &mut messages {
            m.routing_key = stage.as_str().to_owned();
        }
        self.publish_to(&self.dead, None, messages).await
    }

    /// Whether its channel is still open (it dies with its connection, or
    /// when the broker closes it).
    pub fn usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes all messages, then waits until the broker has confirmed every
    /// one of them as stored. Only then may the caller treat them as sent
    /// (advance a cursor, ack the input): I1.
    pub async fn publish_confirmed(&self, messages: Vec<Outgoing>) -> Result<(), AmqpError> {
        self.publish_to(&self.exchange, None, messages).await
    }

    async fn publish_to(&self, exchange: &str, expiration: Option<String>, messages: Vec<Outgoing>) -> Result<(), AmqpError> {
        let mut pending = Vec::with_capacity(messages.len());
        for mut m in messages {
            // One span per message, open until the broker confirms it; its
            // context goes in the headers for the consumer's span.
            let span = tracing::info_span!(
                "publish",
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.destination.name = %m.routing_key,
                messaging.message.id = %m.message_id,
                crmsync.records = m.links.len(),
            );
            for record in &m.links {
                propagation::link(&span, Some(record));
            }
            propagation::inject_headers(&span, &mut m.headers);
            let mut headers = FieldTable::default();
            for (k, v) in m.headers {
                headers.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
            }
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(m.message_id.into())
                .with_headers(headers);
            if let Some(ms) = &expiration {
                props = props.with_expiration(ms.clone().into());
            }
            let confirm = self
                .channel
                .basic_publish(
                    exchange.to_owned().into(),
                    m.routing_key.clone().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &m.body,
                    props,
                )
                .await?;
            pending.push((m.routing_key, confirm, span));
        }
        for (key, confirm, _span) in pending {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => return Err(AmqpError::Unroutable(key)),
                Confirmation::Nack(_) => return Err(AmqpError::Nacked),
                Confirmation::NotRequested => return Err(AmqpError::NoConfirms),
            }
        }
        Ok(())
    }
}

/// Starts a consumer on `queue` with `prefetch` unacked messages at most.
pub async fn consume(conn: &Connection, queue: &str, prefetch: u16, tag: &str) -> Result<(Channel, Consumer), AmqpError> {
    let channel = conn.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = channel.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    Ok((channel, consumer))
}

/// Reads a string header of a delivery.
pub fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a str> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The number of times a quorum queue has delivered this message before
/// (`x-delivery-count`), 0 on the first delivery.
pub fn delivery_count(props: &BasicProperties) -> u64 {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n as u64),
            AMQPValue::LongInt(n) => Some(n as u64),
            AMQPValue::LongUInt(n) => Some(n as u64),
            AMQPValue::ShortInt(n) => Some(n as u64),
            _ => None,
        })
        .unwrap_or(0)
}

/// The connection a delivery names in its headers ("default" if none) and its
/// message id, for naming a message that cannot be read.
pub fn origin(props: &BasicProperties) -> (String, String) {
    let connection = header(props, "x-connection-id").unwrap_or("default").to_owned();
    let message = props.message_id().as_ref().map_or_else(|| "unknown".to_owned(), |m| m.to_string());
    (connection, message)
}
