//! `crmsync bench ceiling`: the broker's own ceiling, the yardstick for the
//! pipeline's throughput. RabbitMQ moves N persistent, publisher-confirmed
//! messages through two hops, as the pipeline's messages go producer →
//! matcher → applier, with consumers that do no work: the first hop's
//! consumer republishes each delivery (confirmed) to the second queue and
//! only then acks it, the second hop's consumer acks. Both queues are quorum
//! queues like the pipeline's. The figure is messages a second end to end;
//! with one record per message it is the records/s a pipeline that carried
//! one record per message could never exceed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crmsync_infra::amqp::{self, Outgoing, Publisher, Topology};
use crmsync_infra::config::AmqpConfig;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::Serialize;

/// The figures of one ceiling run.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub messages: u64,
    pub message_bytes: usize,
    pub prefetch: u16,
    pub seconds: f64,
    pub messages_per_second: f64,
}

/// Messages published per confirm round: enough in flight to keep the
/// broker busy, as the producer publishes a page at a time.
const PUBLISH_WINDOW: usize = 256;

async fn declare(channel: &lapin::Channel, topology: &Topology, queue: &str, key: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), opts, args).await?;
    channel
        .queue_bind(queue.into(), topology.work_exchange().into(), key.into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    Ok(())
}

fn message(key: &str, body: &[u8], n: u64) -> Outgoing {
    Outgoing { routing_key: key.to_owned(), body: body.to_vec(), message_id: n.to_string(), headers: vec![], links: vec![] }
}

/// Runs the two-hop ceiling with `messages` messages of `message_bytes`
/// bytes under a private prefix, and removes its queues afterwards.
pub async fn measure(cfg: &AmqpConfig, messages: u64, message_bytes: usize, prefetch: u16) -> anyhow::Result<Ceiling> {
    let mut cfg = cfg.clone();
    cfg.prefix = format!("ceiling{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topology = Topology::new(&cfg);
    let (hop1, hop2) = (format!("{}.hop1", cfg.prefix), format!("{}.hop2", cfg.prefix));
    // One connection per role, as the tiers are separate processes.
    let admin = amqp::connect(&cfg, "crmsync-bench-ceiling").await?;
    let channel = admin.create_channel().await?;
    topology.declare(&channel).await?;
    declare(&channel, &topology, &hop1, "hop1").await?;
    declare(&channel, &topology, &hop2, "hop2").await?;

    let forwarder = amqp::connect(&cfg, "crmsync-bench-hop1").await?;
    let forward = Publisher::new(&forwarder, &topology).await?;
    let (_c1, mut hop1_in) = amqp::consume(&forwarder, &hop1, prefetch, "").await?;
    let sink = amqp::connect(&cfg, "crmsync-bench-hop2").await?;
    let (_c2, mut hop2_in) = amqp::consume(&sink, &hop2, prefetch, "").await?;
    let source = amqp::connect(&cfg, "crmsync-bench-source").await?;
    let publisher = Publisher::new(&source, &topology).await?;
    let body = vec![b'x'; message_bytes];

    let started = Instant::now();
    // Hop 1: republish, confirmed, then ack; up to `prefetch` at once.
    let hop1_task = tokio::spawn(async move {
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut seen = 0u64;
        while seen < messages {
            tokio::select! {
                Some(d) = hop1_in.next() => {
                    let d = d?;
                    seen += 1;
                    let forward = forward.clone();
                    inflight.push(async move {
                        forward.publish_confirmed(vec![message("hop2", &d.data, seen)]).await?;
                        d.ack(BasicAckOptions::default()).await?;
                        anyhow::Ok(())
                    });
                }
                Some(done) = inflight.next(), if !inflight.is_empty() => done?,
            }
        }
        while let Some(done) = inflight.next().await {
            done?;
        }
        anyhow::Ok(())
    });
    // Hop 2: ack.
    let arrived = Arc::new(AtomicU64::new(0));
    let counter = arrived.clone();
    let hop2_task = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < messages {
            let Some(d) = hop2_in.next().await else { anyhow::bail!("hop 2 consumer ended") };
            d?.ack(BasicAckOptions::default()).await?;
            counter.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(())
    });
    let mut sent = 0u64;
    while sent < messages {
        let n = (messages - sent).min(PUBLISH_WINDOW as u64);
        publisher.publish_confirmed((sent..sent + n).map(|i| message("hop1", &body, i)).collect()).await?;
        sent += n;
    }
    tokio::time::timeout(Duration::from_secs(600), async {
        hop1_task.await??;
        hop2_task.await??;
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the ceiling run did not finish within 10 minutes ({} arrived)", arrived.load(Ordering::Relaxed)))??;
    let seconds = started.elapsed().as_secs_f64();

    for q in [&hop1, &hop2] {
        let _ = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = topology.delete_all(&channel).await;
    for conn in [&admin, &forwarder, &sink, &source] {
        let _ = conn.close(200, "done".into()).await;
    }
    Ok(Ceiling { messages, message_bytes, prefetch, seconds, messages_per_second: messages as f64 / seconds })
}
