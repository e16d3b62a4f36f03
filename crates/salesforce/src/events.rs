//! The org's change events (Change Data Capture over the Pub/Sub API) as
//! the feeds' change signal (I8: an idle connection costs next to nothing).
//!
//! An event wakes its object's feed ([`PollGate::wake`]), whose SOQL read
//! from the stamp cursor stays the one source of records; with events live,
//! a feed's poll is only a reconciliation sweep. Without them (the object is
//! not selected for Change Data Capture, the org's event allocation is used
//! up, the Pub/Sub API is unreachable) the feed polls as before and the
//! subscription is tried again later (`subscription`).
//!
//! - `signal`: what one event asks of its feed (the echo rule among it);
//! - `ledger`: what a feed owes its events until a stored cursor carries
//!   them, and the replay id its cursor may carry (I1);
//! - `position`: the replay id inside the cursor;
//! - `header`: events' headers read from Avro; `rpc`: the API's calls as
//!   the kit's exchanges; `subscription`: one object's subscription.
//!
//! A subscription starts when its feed is read (by the producer holding
//! the connection's lease), from the replay id of the cursor it is read
//! from, and stops when the feed has not been read for a while (another
//! replica took the lease) or the connector goes away.

mod header;
mod ledger;
mod position;
mod rpc;
mod signal;
mod subscription;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorError, Cursor};
use crmsync_connector_kit::{Listening, PollGate};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use self::header::HeaderReader;
use self::ledger::{Ledger, Plan, ReplayId};
use crate::http::Http;

pub(crate) use self::position::{replay_of, with_replay};

/// Tells whoever reads the feeds (the producer) that one has changes to
/// read now.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// How the connector uses change events, from the endpoint's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The Pub/Sub API's URL.
    pub url: String,
    /// The client id in the engine's `Sforce-Call-Options`.
    pub client: String,
    /// How a feed with live events polls.
    pub listening: Listening,
}

/// The change events of one connector.
pub(crate) struct Events {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("client", &self.shared.client).finish_non_exhaustive()
    }
}

/// What the subscriptions of one connector share.
pub(crate) struct Shared {
    http: Arc<Http>,
    polls: Arc<PollGate>,
    channel: Channel,
    client: String,
    listening: Listening,
    schemas: tokio::sync::Mutex<HashMap<String, Arc<HeaderReader>>>,
    feeds: Mutex<HashMap<String, Arc<FeedEvents>>>,
    stop: CancellationToken,
    wake: Option<Wake>,
}

/// One object's events, between its subscription and its feed's calls.
#[derive(Debug)]
pub(crate) struct FeedEvents {
    entity: String,
    /// Whether the engine writes the object's records (its own writes to
    /// them are echoes).
    written: bool,
    state: Mutex<FeedState>,
}

#[derive(Debug)]
struct FeedState {
    ledger: Ledger,
    /// When the feed was last read.
    read_at: Instant,
    /// Where a subscription resumes (none: at LATEST, with a catch-up).
    resume: Option<ReplayId>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FeedEvents {
    fn state(&self) -> MutexGuard<'_, FeedState> {
        lock(&self.state)
    }
}

/// One call of a feed, between its plan and the cursor it hands out.
#[derive(Debug)]
pub(crate) struct Reading {
    feed: Arc<FeedEvents>,
    plan: Plan,
    /// The replay id of the cursor read from.
    from: Option<ReplayId>,
}

impl Events {
    /// The change events of a connector whose calls go through `http` and
    /// whose feeds wait at `polls`; `wake` hears of changes to read.
    pub fn new(http: Arc<Http>, polls: Arc<PollGate>, settings: Settings, wake: Option<Wake>) -> Result<Events, ConnectorError> {
        let channel = rpc::channel(&settings.url)?;
        let shared = Shared {
            http,
            polls,
            channel,
            client: settings.client,
            listening: settings.listening,
            schemas: tokio::sync::Mutex::default(),
            feeds: Mutex::default(),
            stop: CancellationToken::new(),
            wake,
        };
        Ok(Events { shared: Arc::new(shared) })
    }

    /// A call of `entity`'s feed begins, reading from `cursor`: the feed is
    /// being read (its subscription starts, or is kept), and the call gets
    /// what its events ask of it.
    pub fn begin(&self, entity: &str, written: bool, cursor: Option<&Cursor>) -> Reading {
        let from = replay_of(cursor);
        let feed = {
            let mut feeds = lock(&self.shared.feeds);
            match feeds.get(entity) {
                Some(f) => f.clone(),
                None => {
                    let state = FeedState { ledger: Ledger::default(), read_at: Instant::now(), resume: from.clone() };
                    let f = Arc::new(FeedEvents { entity: entity.to_owned(), written, state: Mutex::new(state) });
                    feeds.insert(entity.to_owned(), f.clone());
                    tokio::spawn(subscription::run(self.shared.clone(), f.clone()));
                    f
                }
            }
        };
        let plan = {
            let mut state = feed.state();
            state.read_at = Instant::now();
            state.ledger.plan(cursor)
        };
        if plan.query {
            // Whatever the sweep says, this call queries.
            self.shared.polls.wake(entity);
        }
        Reading { feed, plan, from }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl Reading {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The call is done, its first query having begun after the plan or
    /// not (`fresh`): `next` carrying the replay id it may carry, which the
    /// feed hands out.
    pub fn finish(self, polls: &PollGate, fresh: bool, next: Cursor) -> Cursor {
        let mut state = self.feed.state();
        let (carried, replay) = state.ledger.covered(&self.plan, fresh);
        let next = with_replay(next, replay.or(self.from).as_deref());
        state.ledger.handed(next.clone(), carried);
        if state.ledger.owes_query(carried) {
            polls.wake(&self.feed.entity);
        }
        next
    }
}

impl Shared {
    /// The reader of events written with schema `id`, asked for once.
    async fn reader(&self, id: &str) -> Result<Arc<HeaderReader>, String> {
        let mut schemas = self.schemas.lock().await;
        if let Some(r) = schemas.get(id) {
            return Ok(r.clone());
        }
        let mut call = rpc::GetSchema { http: &self.http, channel: self.channel.clone(), schema_id: id.to_owned() };
        let json = self.http.sender().run(&mut call).await.map_err(|e| ConnectorError::from(e).to_string())?;
        let reader = Arc::new(HeaderReader::new(&json)?);
        schemas.insert(id.to_owned(), reader.clone());
        Ok(reader)
    }

    /// Changes are waiting in `entity`'s feed: it queries at its next call,
    /// and the producer is told.
    fn changed(&self, entity: &str) {
        self.polls.wake(entity);
        if let Some(wake) = &self.wake {
            wake();
        }
    }

    /// Whether `feed` has not been read for `idle` (another replica reads
    /// it now); if so, it is forgotten, so the next read starts afresh.
    fn forget_if_idle(&self, feed: &Arc<FeedEvents>, idle: Duration) -> bool {
        let mut feeds = lock(&self.feeds);
        if feed.state().read_at.elapsed() < idle && !self.stop.is_cancelled() {
            return false;
        }
        if feeds.get(&feed.entity).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&feed.entity);
        }
        true
    }
}
