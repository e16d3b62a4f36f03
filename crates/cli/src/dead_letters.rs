//! `crmsync errors dead-letters` and `crmsync errors replay`: the messages
//! the tiers dead-lettered (unreadable, or over the delivery limit), read
//! without consuming them, and put back on their work queue on request.
//!
//! Reading takes every message of a dead-letter queue unacked on one channel
//! (at most the queue's count, so requeued messages are not read twice) and
//! returns those not replayed when the channel closes. A replayed message is
//! published to the work exchange under its stage, lane and connection,
//! confirmed by the broker, and only then acked off the dead-letter queue:
//! a crash in between leaves it in both places, never in neither (I1).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use crmsync_domain::Lane;
use crmsync_infra::Config;
use crmsync_infra::amqp::{self, Outgoing, Stage, Topology};
use crmsync_infra::broker::Broker;
use crmsync_store::sync_errors::{self, Filter};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use sqlx::PgPool;

use crate::args::StageArg;
use crate::pii::Pii;

fn stages(only: Option<StageArg>) -> Vec<Stage> {
    match only {
        Some(StageArg::Match) => vec![Stage::Match],
        Some(StageArg::Apply) => vec![Stage::Apply],
        None => vec![Stage::Match, Stage::Apply],
    }
}

/// Why the broker dead-lettered a delivery (`rejected`: a tier found it
/// unreadable; `delivery_limit`: it kept failing or crashing its consumer).
fn death_reason(d: &Delivery) -> String {
    let headers = d.properties.headers().as_ref();
    match headers.and_then(|h| h.inner().get("x-first-death-reason").cloned()) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "unknown".to_owned(),
    }
}

fn message_id(d: &Delivery) -> String {
    d.properties.message_id().as_ref().map_or_else(|| "unknown".to_owned(), |m| m.to_string())
}

/// A body as text an operator may see: lossy UTF-8, control characters
/// dropped, emails redacted unless shown (`crate::pii`), cut at `max`
/// characters when given.
fn preview(body: &[u8], max: Option<usize>, pii: Pii) -> String {
    let text: String = String::from_utf8_lossy(body).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = pii.text(&text).into_owned();
    match max {
        Some(max) if text.chars().count() > max => format!("{}…", text.chars().take(max).collect::<String>()),
        _ => text,
    }
}

/// Every message of a dead-letter queue, held unacked on `channel`; `None`
/// if the queue has not been declared (the broker then closed `channel`).
/// Each call on the broker fails after `limit`.
async fn take_all(channel: &lapin::Channel, topology: &Topology, stage: Stage, limit: Duration) -> anyhow::Result<Option<Vec<Delivery>>> {
    let queue = topology.dead_queue(stage);
    let Some(count) = amqp::within(limit, topology.passive_depth(channel, &queue)).await? else { return Ok(None) };
    let mut held = Vec::new();
    for _ in 0..count {
        match amqp::within(limit, channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })).await? {
            Some(m) => held.push(m.delivery),
            None => break,
        }
    }
    Ok(Some(held))
}

/// Lists the dead-lettered messages without consuming them, and without
/// declaring anything (I10): a dead-letter queue no tier has declared yet
/// is said to be so.
pub async fn list(config: &Config, only: Option<StageArg>, full: bool, pii: Pii) -> anyhow::Result<()> {
    let limit = config.amqp.timeout();
    let conn = amqp::connect(&config.amqp, "crmsync-dead-letters").await.context("connecting to RabbitMQ")?;
    let topology = Topology::new(&config.amqp);
    for stage in stages(only) {
        // A channel per queue: a missing one closes it.
        let channel = amqp::within(limit, conn.create_channel()).await?;
        let Some(held) = take_all(&channel, &topology, stage, limit).await? else {
            outln!("{}: not declared yet", topology.dead_queue(stage));
            continue;
        };
        outln!("{}: {} message(s)", topology.dead_queue(stage), held.len());
        for d in &held {
            let (connection, _) = amqp::origin(&d.properties);
            let lane = amqp::header(&d.properties, "x-lane").unwrap_or("immediate");
            outln!(
                "  {}  connection {connection} · lane {lane} · {} · {} B · {}",
                message_id(d),
                death_reason(d),
                d.data.len(),
                preview(&d.data, if full { None } else { Some(100) }, pii)
            );
        }
        // Closing the channel returns every message held to its queue.
        let _ = amqp::within(limit, channel.close(200, "inspected".into())).await;
    }
    let _ = amqp::within(limit, conn.close(200, "done".into())).await;
    Ok(())
}

pub async fn replay(config: &Config, pool: &PgPool, only: Option<StageArg>, ids: &[String], all: bool) -> anyhow::Result<ExitCode> {
    let started = chrono::Utc::now();
    let broker = Broker::new(&config.amqp, "crmsync-replay");
    let live = broker.live().await.context("connecting to RabbitMQ")?;
    let channel = live.conn.create_channel().await?;
    let topology = broker.topology().clone();
    let mut replayed = Vec::new();
    for stage in stages(only) {
        // The tier's broker handle declared the topology on connecting.
        let held = take_all(&channel, &topology, stage, config.amqp.timeout()).await?.unwrap_or_default();
        let chosen: Vec<&Delivery> = held.iter().filter(|d| all || ids.contains(&message_id(d))).collect();
        let progress = crate::progress::bar(chosen.len() as u64, "replayed");
        for d in chosen {
            let (connection, id) = amqp::origin(&d.properties);
            let lane = match amqp::header(&d.properties, "x-lane") {
                Some("batch") => Lane::Batch,
                _ => Lane::Immediate,
            };
            let routing_key = Topology::routing_key(stage, lane);
            let out = Outgoing {
                routing_key,
                body: d.data.clone(),
                message_id: id.clone(),
                headers: vec![("x-connection-id".into(), connection), ("x-lane".into(), lane.as_str().into())],
                links: vec![],
            };
            broker.publish_confirmed(vec![out]).await.with_context(|| format!("replaying {id}"))?;
            d.ack(BasicAckOptions::default()).await?;
            replayed.push(id);
            progress.inc(1);
        }
        progress.finish_and_clear();
        // The rest go back to the dead-letter queue.
        for d in &held {
            if !replayed.contains(&message_id(d)) {
                let _ = d.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
        }
    }
    let _ = channel.close(200, "replayed".into()).await;
    broker.close().await;
    // The unreadable-message errors of the replayed messages are retried.
    let errors =
        sync_errors::find(pool, &Filter { object: Some("message".into()), status: Some("open".into()), ..Filter::default() }, None).await?;
    let closing: Vec<i64> = errors.iter().filter(|e| replayed.contains(&e.record_id)).map(|e| e.id).collect();
    sync_errors::close(pool, &closing, "retried", started).await?;
    outln!("replayed {} message(s) to their work queues", replayed.len());
    let missing: Vec<&String> = ids.iter().filter(|id| !replayed.contains(id)).collect();
    if !missing.is_empty() {
        outln!("not in the dead-letter queues: {}", missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
