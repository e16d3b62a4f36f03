//! `Subscribe`: a bidirectional stream over one topic, pulled by the
//! subscriber.
//!
//! The first FetchRequest names the topic and where to start: `LATEST`
//! (events committed from now on), `EARLIEST` (the oldest retained) or
//! `CUSTOM` (after the event whose `replay_id` it carries; one that was
//! never handed out or has passed the retention window fails with
//! Salesforce's `INVALID_ARGUMENT` and `...fetch.replayid.corrupted`). Every
//! FetchRequest adds its `num_requested` to what the server owes; the
//! server never sends more events than that, 100 per response at most, and
//! says in `pending_num_requested` how many it still owes. New events reach
//! the stream as soon as their transaction commits ([`super::feed`]). An idle
//! stream gets an empty FetchResponse with the latest replay id every
//! `pubsub_keepalive_ms` (Salesforce: within 270 s). When the org's
//! delivery allocation for the last 24 hours is used up, the stream ends
//! with `RESOURCE_EXHAUSTED` and Salesforce's
//! `...subscription.limit.exceeded` ("You have exceeded the event delivery
//! limit for your org."), so a client can fall back to polling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use crmsync_pubsub::proto::{ConsumerEvent, FetchRequest, FetchResponse, ProducerEvent, ReplayPreset};
use crmsync_pubsub::{error_codes, replay_id};
use crmsync_sandbox::cdc::ChangeEvent;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use super::avro::EventSchema;
use super::{ResponseStream, Service, error, internal, rpc_id};

/// Events per FetchResponse at most.
const BATCH: i64 = 100;

fn limit_exceeded() -> Status {
    error(Code::ResourceExhausted, error_codes::DELIVERY_LIMIT_EXCEEDED, "You have exceeded the event delivery limit for your org.")
}

fn invalid_count() -> Status {
    error(Code::InvalidArgument, error_codes::REQUESTED_EVENTS_INVALID, "The number of requested events must be greater than zero.")
}

/// Checks the first request, then serves the stream from a task of its own.
pub(super) async fn start(svc: Service, mut requests: Streaming<FetchRequest>) -> Result<ResponseStream<FetchResponse>, Status> {
    let Some(first) = requests.message().await? else {
        return Err(Status::cancelled("The stream ended before its first FetchRequest."));
    };
    let (topic, entity) = svc.topic(&first.topic_name).await?;
    if first.num_requested <= 0 {
        return Err(invalid_count());
    }
    // Counted live from here, so what commits from now on is sequenced at
    // once; what committed before is sequenced now, before the start is set.
    let live = svc.feed.live();
    svc.feed.sequence().await.map_err(internal)?;
    let log = &svc.log;
    let cursor = match ReplayPreset::try_from(first.replay_preset) {
        Ok(ReplayPreset::Latest) => log.tip().await.map_err(internal)?,
        Ok(ReplayPreset::Earliest) => 0,
        Ok(ReplayPreset::Custom) => {
            if first.replay_id.is_empty() {
                return Err(error(
                    Code::InvalidArgument,
                    error_codes::REPLAY_ID_MISSING,
                    "The Replay ID validation failed: a CUSTOM replay preset needs a replay_id.",
                ));
            }
            let retained = match replay_id::decode(&first.replay_id) {
                Some(n) => log.retained(n, svc.retained_since().await).await.map_err(internal)?.then_some(n),
                None => None,
            };
            retained.ok_or_else(|| {
                error(
                    Code::InvalidArgument,
                    error_codes::REPLAY_ID_CORRUPTED,
                    "The Replay ID validation failed. Ensure that the replay_id in the FetchRequest is valid \
                     and refers to an event within the retention window.",
                )
            })?
        }
        Err(_) => {
            return Err(error(
                Code::InvalidArgument,
                "sfdc.platform.eventbus.grpc.subscription.fetch.request.invalid",
                "Unknown replay preset.",
            ));
        }
    };
    if svc.st.delivery_allowance().await == 0 {
        return Err(limit_exceeded());
    }
    let (tx, rx) = mpsc::channel(4);
    let subscription = Subscription {
        svc,
        _live: live,
        topic: topic.name(),
        entity,
        cursor,
        pending: i64::from(first.num_requested),
        schemas: HashMap::new(),
    };
    tokio::spawn(subscription.run(requests, tx));
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })))
}

#[derive(Debug)]
struct Subscription {
    svc: Service,
    _live: super::feed::Live,
    topic: String,
    entity: Option<String>,
    /// The replay id up to which the subscriber has everything it asked for.
    cursor: i64,
    /// Events requested and not yet delivered.
    pending: i64,
    schemas: HashMap<String, Arc<EventSchema>>,
}

type Responses = mpsc::Sender<Result<FetchResponse, Status>>;

impl Service {
    /// Events committed before this have expired.
    async fn retained_since(&self) -> chrono::DateTime<Utc> {
        super::feed::retained_since(self.st.limits.lock().await.cdc_retention_secs)
    }
}

impl Subscription {
    async fn run(mut self, mut requests: Streaming<FetchRequest>, tx: Responses) {
        let mut tip = self.svc.feed.watch();
        let mut requests_open = true;
        let mut last_sent = Instant::now();
        loop {
            match self.deliver(&tx).await {
                Ok(true) => {
                    last_sent = Instant::now();
                    continue;
                }
                Ok(false) => {}
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            let keepalive = Duration::from_millis(self.svc.st.limits.lock().await.pubsub_keepalive_ms.clamp(10, 86_400_000));
            tokio::select! {
                _ = self.svc.stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = tip.changed() => {}
                r = requests.message(), if requests_open => match r {
                    Ok(Some(more)) => {
                        if let Err(status) = self.more(&more) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                    // The subscriber will ask for nothing more; what it asked for still comes.
                    Ok(None) => requests_open = false,
                    Err(_) => return,
                },
                _ = tokio::time::sleep_until(last_sent + keepalive) => {
                    match self.keepalive().await {
                        Ok(response) => {
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                    last_sent = Instant::now();
                }
            }
        }
    }

    /// A later FetchRequest: the same topic (or none), more events.
    fn more(&mut self, r: &FetchRequest) -> Result<(), Status> {
        if !r.topic_name.is_empty() && r.topic_name != self.topic {
            return Err(error(
                Code::InvalidArgument,
                error_codes::TOPIC_MISMATCH,
                &format!("The topic {} differs from the subscription's, {}.", r.topic_name, self.topic),
            ));
        }
        if r.num_requested <= 0 {
            return Err(invalid_count());
        }
        self.pending += i64::from(r.num_requested);
        Ok(())
    }

    fn latest(&self) -> Vec<u8> {
        if self.cursor > 0 { replay_id::encode(self.cursor) } else { Vec::new() }
    }

    /// Sends the next batch if events are owed and waiting; whether it did.
    async fn deliver(&mut self, tx: &Responses) -> Result<bool, Status> {
        if self.pending <= 0 {
            return Ok(false);
        }
        let log = &self.svc.log;
        let tip = log.tip().await.map_err(internal)?;
        if tip <= self.cursor {
            return Ok(false);
        }
        let want = self.pending.min(BATCH);
        let since = self.svc.retained_since().await;
        let mut events = log.events(self.cursor, tip, self.entity.as_deref(), since, want as usize).await.map_err(internal)?;
        if events.is_empty() {
            // Nothing for this topic up to the tip.
            self.cursor = tip;
            return Ok(false);
        }
        // Fewer than asked for: nothing else for this topic up to the tip.
        let caught_up = (events.len() as i64) < want;
        let granted = self.svc.st.reserve_deliveries(events.len() as u64).await as usize;
        if granted == 0 {
            return Err(limit_exceeded());
        }
        let all = granted == events.len();
        events.truncate(granted);
        let mut out = Vec::with_capacity(events.len());
        for e in &events {
            out.push(self.consumer_event(e).await?);
        }
        self.cursor = if caught_up && all { tip } else { events.last().map_or(self.cursor, |e| e.replay_id) };
        self.pending -= out.len() as i64;
        let response =
            FetchResponse { events: out, latest_replay_id: self.latest(), rpc_id: rpc_id(), pending_num_requested: self.pending as i32 };
        if tx.send(Ok(response)).await.is_err() {
            return Err(Status::cancelled("The subscriber went away."));
        }
        Ok(true)
    }

    async fn consumer_event(&mut self, e: &ChangeEvent) -> Result<ConsumerEvent, Status> {
        let schema = match self.schemas.get(&e.entity) {
            Some(s) => s.clone(),
            None => {
                let s = self.svc.schema(&e.entity).await?;
                self.schemas.insert(e.entity.clone(), s.clone());
                s
            }
        };
        let payload = schema.encode(e).map_err(internal)?;
        let id = uuid::Uuid::from_u64_pair(e.replay_id as u64, e.commit_number as u64).to_string();
        Ok(ConsumerEvent {
            event: Some(ProducerEvent { id, schema_id: schema.id.clone(), payload, headers: Vec::new() }),
            replay_id: replay_id::encode(e.replay_id),
        })
    }

    /// The empty response of an idle stream. With nothing owed, the latest
    /// replay id moves past events of other topics.
    async fn keepalive(&mut self) -> Result<FetchResponse, Status> {
        let log = &self.svc.log;
        let tip = log.tip().await.map_err(internal)?;
        if tip > self.cursor {
            let since = self.svc.retained_since().await;
            if log.events(self.cursor, tip, self.entity.as_deref(), since, 1).await.map_err(internal)?.is_empty() {
                self.cursor = tip;
            }
        }
        Ok(FetchResponse {
            events: Vec::new(),
            latest_replay_id: self.latest(),
            rpc_id: rpc_id(),
            pending_num_requested: self.pending as i32,
        })
    }
}
