//! One object's subscription to its change events (`/data/LeadChangeEvent`,
//! `/data/Subscription__ChangeEvent`), for as long as its feed is read.
//!
//! - It starts after the replay id the feed's cursor carries (`CUSTOM`),
//!   or at `LATEST` with a catch-up query from the stamp cursor when there
//!   is none or the API no longer has it (it keeps 72 hours of events).
//! - Flow control: `num_requested` events at a time ([`BATCH`]), more asked
//!   for when fewer than half are owed.
//! - Keepalives: Salesforce sends an empty response within 270 s when
//!   nothing happens; a stream silent for [`WATCHDOG`] is taken as dead.
//! - While it is live the feed only sweeps; when it fails the feed polls at
//!   once and then adaptively, and the subscription is tried again after
//!   [`retry_after`]: soon for a failure of the connection, after minutes
//!   for a topic the org does not publish (its object not selected for
//!   Change Data Capture) or a used-up event allocation.
//! - It resumes after the last event (or keepalive) it got, so nothing is
//!   delivered twice to the feed, nor missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::CallError;
use crmsync_pubsub::Topic;
use crmsync_pubsub::proto::{FetchRequest, FetchResponse, ReplayPreset};
use tracing::{debug, info, warn};

use super::rpc::{Opened, RpcFailure, Subscribe};
use super::signal::{Signal, signal};
use super::{FeedEvents, Shared};

/// Events asked for at a time.
pub(crate) const BATCH: i32 = 100;
/// A stream with no response for this long is dead (keepalives come
/// within 270 s).
pub(crate) const WATCHDOG: Duration = Duration::from_secs(330);
/// A feed not read for this long is another replica's: its subscription
/// stops.
pub(crate) const IDLE_STOP: Duration = Duration::from_secs(120);
/// How often a quiet stream checks the above.
const TICK: Duration = Duration::from_secs(15);

/// Why a subscription is not live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// The connection failed, the stream ended or fell silent.
    Transient,
    /// The org does not publish the topic (the object is not selected).
    NotPublished,
    /// The org's event delivery allocation is used up.
    AllocationUsedUp,
    /// Refused for another reason (permissions, credentials).
    Refused,
}

/// How long a subscription waits before trying again, after `attempt`
/// failures in a row (0 for the first), before jitter.
pub(crate) fn retry_after(trouble: Trouble, attempt: u32) -> Duration {
    let (first, most) = match trouble {
        Trouble::Transient => (Duration::from_secs(1), Duration::from_secs(300)),
        Trouble::NotPublished | Trouble::Refused => (Duration::from_secs(600), Duration::from_secs(3_600)),
        Trouble::AllocationUsedUp => (Duration::from_secs(900), Duration::from_secs(3_600)),
    };
    first.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(most)
}

/// How a failure is taken: `None` for a replay id the API no longer has.
fn trouble_of(f: &RpcFailure) -> Option<Trouble> {
    if f.replay_expired() {
        None
    } else if f.topic_missing() {
        Some(Trouble::NotPublished)
    } else if f.allocation_used_up() {
        Some(Trouble::AllocationUsedUp)
    } else if matches!(f.judge(), crmsync_connector_kit::Judgement::Retry { .. } | crmsync_connector_kit::Judgement::Reauthenticate) {
        Some(Trouble::Transient)
    } else {
        Some(Trouble::Refused)
    }
}

fn trouble_of_call(e: &CallError<RpcFailure>) -> Option<Trouble> {
    match e {
        CallError::Api(f) => trouble_of(f),
        CallError::Login(_) | CallError::Connector(ConnectorError::Fatal(_)) => Some(Trouble::Refused),
        CallError::Connector(ConnectorError::Transient(_)) => Some(Trouble::Transient),
    }
}

fn text(e: CallError<RpcFailure>) -> String {
    match e {
        CallError::Api(f) => f.to_string(),
        other => ConnectorError::from(other).to_string(),
    }
}

/// How a live stream ended.
enum End {
    Stopped,
    Failed(Option<Trouble>, String),
}

/// Runs `feed`'s subscription until the feed is no longer read or the
/// connector goes away.
pub(super) async fn run(shared: Arc<Shared>, feed: Arc<FeedEvents>) {
    let topic = Topic::of(&feed.entity).name();
    let mut attempt = 0;
    let mut last_trouble = None;
    loop {
        if shared.forget_if_idle(&feed, IDLE_STOP) {
            break;
        }
        let resume = feed.state().resume.clone();
        let first = FetchRequest {
            topic_name: topic.clone(),
            replay_preset: if resume.is_some() { ReplayPreset::Custom } else { ReplayPreset::Latest } as i32,
            replay_id: resume.clone().unwrap_or_default(),
            num_requested: BATCH,
            auth_refresh: String::new(),
        };
        let mut call = Subscribe { http: &shared.http, channel: shared.channel.clone(), first };
        let (trouble, why) = match shared.http.sender().run(&mut call).await {
            Ok(opened) => {
                if resume.is_none() {
                    // What came before LATEST: a query from the cursor.
                    feed.state().ledger.catch_up();
                    shared.changed(&feed.entity);
                }
                info!(entity = %feed.entity, resumed = resume.is_some(), "change events live; the feed only sweeps");
                shared.polls.listen(&feed.entity, shared.listening);
                attempt = 0;
                last_trouble = None;
                match stream(&shared, &feed, &topic, opened, resume.is_none()).await {
                    End::Stopped => break,
                    End::Failed(trouble, why) => (trouble, why),
                }
            }
            Err(e) => (trouble_of_call(&e), text(e)),
        };
        let Some(trouble) = trouble else {
            warn!(entity = %feed.entity, "the stored replay id has expired; subscribing at LATEST with a catch-up poll");
            feed.state().resume = None;
            continue;
        };
        // Polling takes over at once: what the failing stream may have
        // missed is read now, and the feed polls until events are back.
        shared.polls.unlisten(&feed.entity);
        shared.changed(&feed.entity);
        let wait = retry_after(trouble, attempt);
        let wait = wait / 2 + wait.mul_f64(rand::random::<f64>() / 2.0);
        if last_trouble == Some(trouble) {
            debug!(entity = %feed.entity, ?trouble, reason = %why, retry_in = ?wait, "change events still unavailable");
        } else {
            warn!(entity = %feed.entity, ?trouble, reason = %why, retry_in = ?wait, "change events unavailable; the feed polls");
        }
        last_trouble = Some(trouble);
        attempt += 1;
        if !pause(&shared, &feed, wait).await {
            break;
        }
    }
    shared.polls.unlisten(&feed.entity);
    debug!(entity = %feed.entity, "change event subscription stopped");
}

/// Waits `wait`, looking every [`TICK`] whether the feed is still read;
/// false when the subscription is to stop.
async fn pause(shared: &Shared, feed: &Arc<FeedEvents>, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        let nap = until.saturating_duration_since(Instant::now()).min(TICK);
        tokio::select! {
            _ = shared.stop.cancelled() => return false,
            _ = tokio::time::sleep(nap) => {}
        }
        if shared.forget_if_idle(feed, IDLE_STOP) {
            return false;
        }
    }
    true
}

/// Reads a live stream until it ends. `at_latest`: it started at LATEST,
/// and the first position it reports is to be stored once the catch-up
/// has run (so the next start resumes there, not at LATEST again).
async fn stream(shared: &Shared, feed: &Arc<FeedEvents>, topic: &str, opened: Opened, mut at_latest: bool) -> End {
    let Opened { requests, mut responses } = opened;
    let mut heard = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return End::Stopped,
            _ = tick.tick() => {
                if shared.forget_if_idle(feed, IDLE_STOP) {
                    return End::Stopped;
                }
                if heard.elapsed() > WATCHDOG {
                    return End::Failed(Some(Trouble::Transient), format!("no response nor keepalive for {WATCHDOG:?}"));
                }
            }
            message = responses.message() => match message {
                Ok(Some(response)) => {
                    heard = Instant::now();
                    let owed = response.pending_num_requested;
                    if at_latest && !response.latest_replay_id.is_empty() {
                        at_latest = false;
                        if response.events.is_empty() {
                            feed.state().ledger.receive(response.latest_replay_id.clone(), &Signal::Echo);
                        }
                    }
                    take(shared, feed, response).await;
                    if owed < BATCH / 2 {
                        let more = FetchRequest { topic_name: topic.to_owned(), num_requested: BATCH, ..FetchRequest::default() };
                        if requests.send(more).await.is_err() {
                            return End::Failed(Some(Trouble::Transient), "the request stream closed".into());
                        }
                    }
                }
                Ok(None) => return End::Failed(Some(Trouble::Transient), "the stream ended".into()),
                Err(status) => {
                    let failure = RpcFailure::of(&status);
                    return End::Failed(trouble_of(&failure), failure.to_string());
                }
            }
        }
    }
}

/// Takes one response: each event into the ledger, the feed woken unless
/// every event was the engine's own.
async fn take(shared: &Shared, feed: &FeedEvents, response: FetchResponse) {
    let mut woken = false;
    for e in response.events {
        let Some(event) = e.event else { continue };
        let header = match shared.reader(&event.schema_id).await {
            Ok(reader) => reader.read(&event.payload),
            Err(why) => Err(why),
        };
        let signal = match header {
            Ok(h) => signal(&h, &shared.client, feed.written),
            Err(why) => {
                // Unreadable, it still says the object changed.
                warn!(entity = %feed.entity, reason = %why, "a change event could not be read; the feed queries");
                Signal::Changed
            }
        };
        woken |= signal != Signal::Echo;
        let mut state = feed.state();
        state.ledger.receive(e.replay_id.clone(), &signal);
        state.resume = Some(e.replay_id);
    }
    if !response.latest_replay_id.is_empty() {
        // Every event of the topic up to it has been delivered: a resumed
        // subscription starts there.
        feed.state().resume = Some(response.latest_replay_id);
    }
    if woken {
        shared.changed(&feed.entity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_the_connection_are_retried_soon_and_an_unpublished_topic_or_allocation_much_later() {
        let secs = |t, n| retry_after(t, n).as_secs();
        assert_eq!((0..10).map(|n| secs(Trouble::Transient, n)).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!((0..4).map(|n| secs(Trouble::NotPublished, n)).collect::<Vec<_>>(), [600, 1_200, 2_400, 3_600]);
        assert_eq!((0..3).map(|n| secs(Trouble::AllocationUsedUp, n)).collect::<Vec<_>>(), [900, 1_800, 3_600]);
        assert_eq!(secs(Trouble::Refused, 40), 3_600);
    }
}
