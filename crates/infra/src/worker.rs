//! The consume loop every stage runs: take a delivery, hand it to the stage's
//! handler, settle it by what the handler says. The loop only feeds the
//! handler; the unit of work (`Handler::handle`) can be called directly by
//! tests.
//!
//! Settling rules:
//! - `Ok`: the handler's effect is durable downstream (published with confirms,
//!   committed in PostgreSQL, written to the target): ack.
//! - `Retry`: a transient failure (a service away, a lock contended, a rate
//!   limit). The delivery is kept and retried in place with exponential
//!   backoff, so a broker-side delivery limit is not burnt by a short
//!   outage; on shutdown it is returned to the queue. In place for at most
//!   `retry_in_place` (`amqp.retry_in_place_ms`): past it the delivery is
//!   given back to the queue, which counts a delivery, so that a message
//!   that only ever fails (a bug, a record no write can satisfy) holds its
//!   consumer slot for a bounded time and, past the delivery limit, is
//!   dead-lettered (`crmsync dead-letters`) instead of retried for ever.
//! - `Poison`: it can never succeed (unreadable, or the handler panicked):
//!   rejected to the dead-letter exchange, never redelivered forever, never
//!   blocking the queue behind it, never crashing the worker.
//! - `Requeue`: stopped between durable steps (a shutdown): returned to the
//!   queue at once, without a retry here.
//! - `Misaddressed`: the message names what does not exist (a connection
//!   never created, or deleted while its messages waited). Retried in place
//!   it would hold a consumer slot forever, and a few of them stall the
//!   lane for every connection; it is given back to the queue at once
//!   instead, which counts the delivery, and past the queue's
//!   delivery limit the broker dead-letters it (`crmsync dead-letters`).
//! - `Held`: the message's connection is paused (issue 28): nothing may be
//!   written for it, and it must not be lost either. Retried in place it
//!   would hold a consumer slot for as long as the pause lasts, and a few
//!   of them would stall the shared lanes for every other connection;
//!   given back at once it would spin hot and burn its delivery limit.
//!   Instead the worker republishes it, confirmed, to the hold queue
//!   (`crate::amqp`), under its own routing key, and only then acks it.
//!   After `amqp.hold_ms` the broker sends it back to its work queue, where
//!   it is looked at again: still paused, it goes round once more (one
//!   round trip per message and period, no consumer slot held); resumed,
//!   it is handled as usual. The publish is a new message, so the delivery
//!   limit, which counts failures, is not spent on a pause. If the hold
//!   publish fails, the delivery is retried in place like any transient
//!   failure. Batch-lane messages are never held: the applier takes them
//!   into their connection's lane in PostgreSQL whatever the pause, and
//!   the lane is not worked while the connection is paused.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_connector::ConnectorError;
use futures::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::amqp::{self, AmqpError, Outgoing, Publisher};
use crate::broker::Broker;
use crate::locks::LockError;
use crate::propagation;
use crate::telemetry::redact;

/// Why a unit of work did not complete, which decides what happens to its
/// message.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Worth trying again later; the message stays.
    #[error("retry later: {0}")]
    Retry(String),
    /// Can never succeed; the message goes to the dead-letter queue.
    #[error("poison: {0}")]
    Poison(String),
    /// Not finished here, and not to be retried here: the message goes back
    /// to the queue at once for whoever consumes next (a shutdown reached a
    /// long unit of work between two of its steps, each one durable).
    #[error("given back: {0}")]
    Requeue(String),
    /// Names what does not exist here: back to the queue at once, counting
    /// a delivery, so that it ends dead-lettered (see the module).
    #[error("misaddressed: {0}")]
    Misaddressed(String),
    /// For a paused connection: off to the hold queue, back on its work
    /// queue after `amqp.hold_ms` (see the module).
    #[error("held: {0}")]
    Held(String),
}

impl StageError {
    /// `Misaddressed` when what the message names is `missing`, else a
    /// transient `Retry`.
    pub fn missing_or_retry(missing: bool, reason: String) -> StageError {
        if missing { StageError::Misaddressed(reason) } else { StageError::Retry(reason) }
    }

    /// What a failure to load the message's connection means for the
    /// message: it names no connection (`Misaddressed`), its connection is
    /// paused (`Held`), or the database is away (`Retry`).
    pub fn of_connection(unknown: bool, paused: bool, reason: String) -> StageError {
        if paused { StageError::Held(reason) } else { StageError::missing_or_retry(unknown, reason) }
    }
}

impl From<sqlx::Error> for StageError {
    fn from(e: sqlx::Error) -> Self {
        StageError::Retry(format!("database: {e}"))
    }
}

impl From<LockError> for StageError {
    fn from(e: LockError) -> Self {
        StageError::Retry(e.to_string())
    }
}

impl From<AmqpError> for StageError {
    fn from(e: AmqpError) -> Self {
        StageError::Retry(e.to_string())
    }
}

impl From<ConnectorError> for StageError {
    /// A misconfigured system is not the message's fault: it waits, retried
    /// with backoff, until the configuration is fixed.
    fn from(e: ConnectorError) -> Self {
        StageError::Retry(e.to_string())
    }
}

/// One stage's unit of work.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, delivery: &Delivery) -> Result<(), StageError>;
}

/// How a consume loop runs.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub queue: String,
    /// Deliveries handled at once (and the broker prefetch).
    pub concurrency: usize,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long a delivery is retried in place before it is given back.
    pub retry_in_place: Duration,
    pub tag: String,
}

/// Consumes `opts.queue` until `shutdown`, then stops taking deliveries, lets
/// the ones in hand finish and settle, and returns.
///
/// Losing the broker does not end the loop: it waits for a new connection
/// (with backoff, [`Broker::wait_live`]) and consumes again. Deliveries in
/// hand when the channel died cannot be settled any more; the broker
/// redelivers them to whoever consumes next.
pub async fn consume<H: Handler>(
    broker: &Broker,
    opts: ConsumeOptions,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), AmqpError> {
    let prefetch = u16::try_from(opts.concurrency.max(1)).unwrap_or(u16::MAX);
    let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut backoff = opts.backoff;
    while let Some(live) = broker.wait_live(&shutdown).await {
        let (channel, mut consumer) = match amqp::consume(&live.conn, &opts.queue, prefetch, &opts.tag).await {
            Ok(c) => c,
            Err(e) => {
                // The queue may be gone with a broker that lost its disk, or
                // the connection died between the two calls: wait and redo.
                warn!(queue = %opts.queue, error = %e, "cannot consume; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                }
                backoff = (backoff * 2).min(opts.max_backoff);
                continue;
            }
        };
        backoff = opts.backoff;
        info!(queue = %opts.queue, concurrency = opts.concurrency, generation = live.generation, "consuming");
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
            };
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = consumer.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    warn!(queue = %opts.queue, error = %e, "the consumer lost its channel; consuming again after reconnecting");
                    break;
                }
                None => {
                    warn!(queue = %opts.queue, "consumer stream ended; consuming again after reconnecting");
                    break;
                }
            };
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            let opts = opts.clone();
            let channel = channel.clone();
            let publisher = live.publisher.clone();
            tasks.spawn(async move {
                settle(handler, delivery, &channel, &publisher, &opts, &shutdown).await;
                drop(permit);
            });
            // Reap finished tasks so the set does not grow.
            while tasks.try_join_next().is_some() {}
        }
        if shutdown.is_cancelled() {
            // Stop deliveries first, then drain what is in hand.
            let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
            while tasks.join_next().await.is_some() {}
            let _ = channel.close(200, "shutdown".into()).await;
            break;
        }
        // Not shutting down: the channel died. A short pause keeps a broker
        // that closes channels at once from being hammered.
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(jitter(opts.backoff)) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    info!(queue = %opts.queue, "stopped consuming");
    Ok(())
}

/// The tier and stage a work queue (`{prefix}.{stage}.{lane}...`) feeds,
/// as metric labels.
fn tier_and_stage(queue: &str) -> (&'static str, &'static str) {
    match queue.split('.').nth(1) {
        Some("match") => ("matcher", "match"),
        Some("apply") => ("applier", "apply"),
        _ => ("unknown", "unknown"),
    }
}

/// Handles and settles one delivery under a `consume` span, the child of
/// the `publish` span whose context the message's headers carry (I5).
async fn settle<H: Handler>(
    handler: Arc<H>,
    delivery: Delivery,
    channel: &Channel,
    publisher: &Publisher,
    opts: &ConsumeOptions,
    shutdown: &CancellationToken,
) {
    let span = tracing::info_span!(
        parent: None,
        "consume",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.source.name = %opts.queue,
        messaging.message.id = delivery.properties.message_id().as_ref().map(|m| m.as_str()).unwrap_or(""),
        crmsync.attempts = tracing::field::Empty,
    );
    propagation::set_parent(&span, propagation::from_headers(&delivery.properties).as_ref());
    settle_in_span(handler, delivery, channel, publisher, opts, shutdown).instrument(span).await;
}

async fn settle_in_span<H: Handler>(
    handler: Arc<H>,
    delivery: Delivery,
    channel: &Channel,
    publisher: &Publisher,
    opts: &ConsumeOptions,
    shutdown: &CancellationToken,
) {
    let attempts = attempt_until_settled(handler, delivery, channel, publisher, opts, shutdown).await;
    // Recorded once, when settled: a span field recorded at every attempt
    // is appended again to every later log line of the span, so a long
    // retry's lines grew with all its earlier attempts. Retry lines carry
    // their own attempt number.
    tracing::Span::current().record("crmsync.attempts", attempts);
}

/// Handles `delivery` until it is settled; how many attempts that took.
async fn attempt_until_settled<H: Handler>(
    handler: Arc<H>,
    delivery: Delivery,
    channel: &Channel,
    publisher: &Publisher,
    opts: &ConsumeOptions,
    shutdown: &CancellationToken,
) -> u64 {
    let mut backoff = opts.backoff;
    let mut attempts: u64 = 0;
    let first = std::time::Instant::now();
    let delivery = Arc::new(delivery);
    loop {
        // A panic in the handler is contained to this delivery.
        let h = handler.clone();
        let d = delivery.clone();
        let started = std::time::Instant::now();
        attempts += 1;
        let result = tokio::spawn(async move { h.handle(&d).await }.in_current_span()).await;
        let mut outcome = match result {
            Ok(r) => r,
            Err(e) => Err(StageError::Poison(format!("handler panicked: {e}"))),
        };
        if let Err(StageError::Held(reason)) = &outcome {
            // Acked below only once the hold queue has it (I1); a failed
            // hold is a transient failure like any other.
            if let Err(e) = publisher.hold_confirmed(vec![held_copy(&delivery)]).await {
                outcome = Err(StageError::Retry(format!("{reason}; cannot hold it: {e}")));
            }
        }
        let (tier, stage) = tier_and_stage(&opts.queue);
        metrics::histogram!(crate::metrics::STAGE_DURATION, "tier" => tier, "stage" => stage).record(started.elapsed().as_secs_f64());
        let settled = match &outcome {
            Ok(()) => "ok",
            Err(StageError::Retry(_)) => "retry",
            Err(StageError::Poison(_)) => "dead_lettered",
            Err(StageError::Requeue(_)) => "requeued",
            Err(StageError::Misaddressed(_)) => "misaddressed",
            Err(StageError::Held(_)) => "held",
        };
        metrics::counter!("crmsync_messages_total", "tier" => tier, "stage" => stage, "outcome" => settled).increment(1);
        match outcome {
            Ok(()) | Err(StageError::Held(_)) => {
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    // The broker will redeliver; the handler is idempotent.
                    warn!(error = %e, "ack failed");
                }
                return attempts;
            }
            Err(StageError::Poison(reason)) => {
                // Reasons quote systems and payloads: no email in clear (I5).
                let reason = redact(&reason);
                error!(queue = %opts.queue, %reason, "dead-lettering a message that cannot succeed");
                let _ = delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await;
                return attempts;
            }
            Err(StageError::Requeue(reason)) => {
                info!(queue = %opts.queue, %reason, "giving the delivery back to the queue");
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return attempts;
            }
            Err(StageError::Misaddressed(reason)) => {
                let reason = redact(&reason);
                warn!(queue = %opts.queue, %reason, attempts, "giving back a message for what does not exist (dead-lettered past the delivery limit)");
                // At once: a pause would hold the slot the lane needs, and
                // the broker's delivery count is what ends it.
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return attempts;
            }
            Err(StageError::Retry(_)) if !channel.status().connected() => {
                // The delivery died with its channel: the broker has given
                // it back to the queue, and retrying here would only race
                // the replica that takes it next.
                warn!(queue = %opts.queue, "channel lost; leaving the delivery to its redelivery");
                return attempts;
            }
            Err(StageError::Retry(reason)) if first.elapsed() >= opts.retry_in_place => {
                let reason = redact(&reason);
                warn!(
                    queue = %opts.queue,
                    %reason,
                    attempts,
                    in_place_ms = first.elapsed().as_millis() as u64,
                    "giving a delivery back after retrying it in place (it counts a delivery: dead-lettered past the delivery limit)"
                );
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return attempts;
            }
            Err(StageError::Retry(reason)) => {
                let reason = redact(&reason);
                warn!(queue = %opts.queue, %reason, attempt = attempts, backoff_ms = backoff.as_millis() as u64, "retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        return attempts;
                    }
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                }
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

/// A delivery as it is to be held: the same body, id and string headers
/// (its connection, lane and trace context), under the routing key it came
/// with, which the hold queue's dead-lettering sends it back by. The
/// broker's own headers (delivery count, deaths) are not copied: a pause
/// is not a failure of the message.
fn held_copy(delivery: &Delivery) -> Outgoing {
    let headers = delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !["x-death", "x-first-death", "x-last-death"].iter().any(|b| k.as_str().starts_with(b)))
                .filter_map(|(k, v)| match v {
                    lapin::types::AMQPValue::LongString(s) => Some((k.to_string(), String::from_utf8_lossy(s.as_bytes()).into_owned())),
                    lapin::types::AMQPValue::ShortString(s) => Some((k.to_string(), s.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Outgoing {
        routing_key: delivery.routing_key.as_str().to_owned(),
        body: delivery.data.clone(),
        message_id: delivery.properties.message_id().as_ref().map_or_else(String::new, |m| m.to_string()),
        headers,
        links: Vec::new(),
    }
}

/// ±25% so that replicas retrying the same contention do not march in step.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}
