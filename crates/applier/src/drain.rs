//! Draining the batch lanes (R7, I4, I9, I10): every applier replica works
//! the connections' lanes in PostgreSQL, each at its connection's budget.
//!
//! - **Which lanes.** A replica leases up to `applier.batch_lanes` lanes
//!   that have records and whose budget allows a chunk now, the longest due
//!   first (`FOR UPDATE SKIP LOCKED`, so replicas take different lanes).
//!   It works a lane for a third of its lease at most, then gives it back,
//!   due when its budget next allows a chunk, so lanes rotate fairly
//!   between replicas and a dead replica's lanes are taken over once its
//!   leases expire.
//! - **At the budget.** Each chunk (at most the burst, and at most
//!   `applier.batch_chunk` records) waits for a grant of the shared budget
//!   (`crmsync_infra::budget`: a GCRA in Redis for all replicas together,
//!   then the `governor` crate for this replica's own pace). The pace and
//!   the pause are read again before every chunk (at most a second old), so
//!   a changed budget or a pause is followed within a second.
//! - **No head-of-line blocking.** A lane waiting for its budget holds only
//!   its own small task and lease: other lanes are taken and applied
//!   meanwhile, and the immediate lane has its own queue and consumers.
//!   Chunks are applied `applier.batch_concurrency` at once over all lanes,
//!   so a lifted budget (a backfill) uses the replica, several chunks of
//!   its lane at once.
//! - **Nothing lost, nothing twice.** A chunk's rows are removed only once
//!   it is applied; a replica that dies mid-chunk leaves them for whoever
//!   leases the lane next, and records the audit log already shows applied
//!   are removed without being applied again or spending budget. A chunk
//!   that can never be applied (poison, or its connection deleted) is
//!   published to the apply stage's dead-letter queue, from where
//!   `crmsync dead-letters` replays it, and only then removed (I6, I9).
//! - **Idle.** With no lane due, a replica asks once a second, or when
//!   something is taken in: one query on a partial index that holds only
//!   lanes with records, whatever the number of connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_domain::messages::{self, ApplyBatch};
use crmsync_infra::CancellationToken;
use crmsync_infra::amqp::{Outgoing, Stage};
use crmsync_infra::broker::Broker;
use crmsync_infra::budget::{BatchBudget, MAX_WAIT};
use crmsync_infra::config::WorkerConfig;
use crmsync_infra::priority::Priority;
use crmsync_infra::worker::StageError;
use crmsync_store::batch_lanes;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::batch::PaceBook;
use crate::intake::chunk_of;
use crate::process::Applier;

/// How the drain works, from `applier.*` settings.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub lanes: usize,
    pub chunk: usize,
    pub chunks_at_once: usize,
    pub lease: Duration,
    /// How long a lane is worked before it is given back.
    pub turn: Duration,
    pub backoff: Duration,
}

impl DrainOptions {
    pub fn from_config(c: &WorkerConfig) -> Self {
        DrainOptions {
            lanes: c.batch_lanes.max(1),
            chunk: c.batch_chunk.max(1),
            chunks_at_once: c.batch_concurrency.max(1),
            lease: Duration::from_secs(c.batch_lease_secs.max(3)),
            turn: Duration::from_secs(c.batch_turn_secs.max(1)),
            backoff: Duration::from_millis(c.retry_backoff_ms.max(1)),
        }
    }
}

/// One replica's drain of the batch lanes.
pub struct Drain {
    pub applier: Arc<Applier>,
    pub budget: BatchBudget,
    pub paces: Arc<PaceBook>,
    pub broker: Arc<Broker>,
    /// This replica's name in lane leases.
    pub owner: String,
    pub options: DrainOptions,
    /// Woken when a message is taken in, so a lane that was empty is
    /// worked at once rather than at the next look.
    pub wake: Arc<Notify>,
    /// The replica's live work: a chunk waits to start while there is
    /// some (see `crmsync_infra::priority`).
    pub priority: Arc<Priority>,
    /// Chunks being applied, over all lanes.
    applying: Arc<Semaphore>,
    /// Failed chunks in a row, per lane, for its back-off.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

/// The longest a failing lane waits before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The longest a lane waiting for its budget is left before it is looked
/// at again. A settings change makes it due at once anyway
/// (`connections::save`); this bounds the wait when a budget is changed
/// any other way, at one look a minute per waiting lane.
const MAX_DUE: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain").field("owner", &self.owner).field("options", &self.options).finish_non_exhaustive()
    }
}

/// This replica's name in batch-lane leases.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "applier".into());
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// How a chunk went.
enum Applied {
    Done,
    /// Not applied, to be tried again after a back-off.
    Later(String),
    /// The connection is paused: not applied, tried again once resumed.
    Held,
}

/// How a lane's turn ended: when it is due again.
struct Turn {
    due_in: Duration,
}

impl Drain {
    pub fn new(
        applier: Arc<Applier>,
        budget: BatchBudget,
        paces: Arc<PaceBook>,
        broker: Arc<Broker>,
        options: DrainOptions,
        wake: Arc<Notify>,
        priority: Arc<Priority>,
    ) -> Arc<Self> {
        let owner = replica_name();
        let applying = Arc::new(Semaphore::new(options.chunks_at_once));
        Arc::new(Drain { applier, budget, paces, broker, owner, options, wake, priority, applying, failures: std::sync::Mutex::default() })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Works the lanes until `shutdown`; lanes in hand finish the chunks
    /// they are applying and are given back, due at once, for another
    /// replica to take.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut lanes: JoinSet<()> = JoinSet::new();
        let mut working: HashSet<String> = HashSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut renewed = Instant::now();
        loop {
            if !working.is_empty() && renewed.elapsed() >= self.options.lease / 3 {
                renewed = Instant::now();
                if let Err(e) = batch_lanes::renew(&self.applier.pool, &self.owner, self.options.lease).await {
                    tracing::warn!(error = %e, "cannot renew the batch-lane leases; trying again shortly");
                }
            }
            while let Ok(id) = done_rx.try_recv() {
                working.remove(&id);
            }
            let free = self.options.lanes.saturating_sub(working.len());
            let mut claimed = 0;
            if free > 0 {
                match batch_lanes::claim_due(&self.applier.pool, &self.owner, self.options.lease, free).await {
                    Ok(ids) => {
                        claimed = ids.len();
                        if !ids.is_empty() {
                            self.paces.refresh(&ids).await;
                        }
                        for id in ids {
                            working.insert(id.clone());
                            let (me, stop, done) = (self.clone(), shutdown.clone(), done_tx.clone());
                            lanes.spawn(async move {
                                me.lane(&id, &stop).await;
                                let _ = done.send(id);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot lease batch lanes; trying again in a second"),
                }
            }
            // Every free slot taken: more lanes may be due; look again as
            // soon as one is given back. Otherwise, until the next lane is
            // due (at most a second: another replica may have taken
            // records in), or something is taken in here.
            let pause = if free > 0 && claimed == free {
                MAX_WAIT
            } else if !working.is_empty() && working.len() >= self.options.lanes {
                // Full: only the lease renewal wakes the loop.
                self.options.lease / 3
            } else {
                match batch_lanes::next_due(&self.applier.pool).await {
                    Ok(Some(due)) => due.clamp(Duration::from_millis(20), MAX_WAIT),
                    Ok(None) | Err(_) => MAX_WAIT,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(id) = done_rx.recv() => { working.remove(&id); }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            while lanes.try_join_next().is_some() {}
        }
        while lanes.join_next().await.is_some() {}
    }

    /// One turn at a lane this replica has leased, given back at its end.
    async fn lane(&self, connection_id: &str, shutdown: &CancellationToken) {
        let span = tracing::debug_span!("batch_lane", connection_id);
        let turn = self.turn(connection_id, shutdown).instrument(span).await;
        if let Err(e) = batch_lanes::release(&self.applier.pool, connection_id, &self.owner, turn.due_in.min(MAX_DUE)).await {
            // The lease runs out by itself, and the lane is taken again.
            tracing::warn!(connection_id, error = %e, "cannot give a batch lane back; its lease will expire");
        }
    }

    async fn turn(&self, connection_id: &str, shutdown: &CancellationToken) -> Turn {
        let started = Instant::now();
        // The last row handed out in this turn: rows after it are next.
        let mut after = 0_i64;
        let mut applying: JoinSet<(Vec<i64>, ApplyBatch, Result<Applied, StageError>)> = JoinSet::new();
        let mut due_in = Duration::ZERO;
        let mut stop = false;
        // Rows read and not yet granted: kept across a wait for the budget.
        let mut waiting: Option<Vec<batch_lanes::Row>> = None;
        loop {
            // Hand out chunks while the budget grants them.
            while !stop && applying.len() < self.options.chunks_at_once {
                if shutdown.is_cancelled() || started.elapsed() >= self.options.turn {
                    stop = true;
                    break;
                }
                let state = self.paces.current(connection_id).await;
                if state.unknown {
                    self.abandon(connection_id).await;
                    stop = true;
                    break;
                }
                if state.paused {
                    // Looked at again in a second, like the pace.
                    due_in = PaceBook::MAX_AGE;
                    stop = true;
                    break;
                }
                let size = (state.pace.burst.max(1) as usize).min(self.options.chunk);
                // The rows read before a wait for the budget are asked for
                // again as they are (fewer, if the burst was lowered).
                let read = match waiting.take() {
                    Some(mut rows) => {
                        rows.truncate(size);
                        Ok(rows)
                    }
                    None => self.next_rows(connection_id, after, size).await,
                };
                let rows = match read {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(connection_id, error = %e, "cannot read the batch lane; trying again shortly");
                        due_in = self.options.backoff;
                        stop = true;
                        break;
                    }
                };
                let Some(last) = rows.last().map(|r| r.id) else {
                    // Nothing more to hand out in this turn.
                    stop = true;
                    break;
                };
                match self.budget.try_take(connection_id, state.pace, rows.len() as u32).await {
                    Ok(None) => {
                        after = last;
                        let (chunk, unreadable) = chunk_of(connection_id, &rows);
                        self.park_unreadable(connection_id, &unreadable).await;
                        let readable: Vec<i64> = rows.iter().map(|r| r.id).filter(|id| !unreadable.iter().any(|(u, _)| u == id)).collect();
                        let (applier, permits, priority) = (self.applier.clone(), self.applying.clone(), self.priority.clone());
                        applying.spawn(async move {
                            // Never closed: a permit can always be had.
                            let _permit = permits.acquire_owned().await;
                            priority.give_way().await;
                            let outcome = apply(&applier, &chunk).await;
                            (readable, chunk, outcome)
                        });
                    }
                    // Wait for the budget in place while the turn lasts: the
                    // lane holds only its task and its lease meanwhile.
                    Ok(Some(wait)) if started.elapsed() + wait.min(MAX_WAIT) < self.options.turn && !shutdown.is_cancelled() => {
                        waiting = Some(rows);
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(wait.min(MAX_WAIT)) => {}
                        }
                    }
                    Ok(Some(wait)) => {
                        due_in = wait;
                        stop = true;
                    }
                    Err(e) => {
                        tracing::warn!(connection_id, error = %e, "batch lane waits for its budget");
                        due_in = self.options.backoff.max(MAX_WAIT);
                        stop = true;
                    }
                }
            }
            let Some(joined) = applying.join_next().await else { break };
            let Ok((ids, chunk, outcome)) = joined else {
                // A chunk that panicked: its rows stay, tried again later.
                due_in = due_in.max(self.options.backoff);
                stop = true;
                continue;
            };
            match outcome {
                Ok(Applied::Done) => {
                    self.finish(connection_id, &ids).await;
                    self.failures().remove(connection_id);
                }
                Ok(Applied::Later(reason)) => {
                    // Backing off longer at each failure in a row: a target
                    // away or refusing costs a try now and then, not a
                    // tight loop of calls and grants.
                    let failures = {
                        let mut all = self.failures();
                        let n = all.entry(connection_id.to_owned()).or_insert(0);
                        *n = n.saturating_add(1);
                        *n
                    };
                    let wait = self.options.backoff.saturating_mul(1 << failures.min(10)).min(MAX_BACKOFF);
                    tracing::info!(
                        connection_id,
                        failures,
                        retry_in_ms = wait.as_millis() as u64,
                        reason = %crmsync_infra::telemetry::redact(&reason),
                        "batch-lane chunk not applied yet; retrying"
                    );
                    due_in = due_in.max(wait);
                    stop = true;
                }
                Ok(Applied::Held) => {
                    due_in = due_in.max(PaceBook::MAX_AGE);
                    stop = true;
                }
                Err(e) => {
                    // Poison or misaddressed: kept as a dead letter, then
                    // taken off the lane.
                    if self.dead_letter(&chunk, &e.to_string()).await {
                        self.finish(connection_id, &ids).await;
                    } else {
                        due_in = due_in.max(self.options.backoff);
                        stop = true;
                    }
                }
            }
        }
        Turn { due_in }
    }

    /// The next rows of a lane after `after`, with those the audit log
    /// already shows applied taken off the lane at once (a message taken
    /// in twice, or a chunk applied by a replica that died before removing
    /// it): they are passed over without spending budget.
    async fn next_rows(&self, connection_id: &str, after: i64, size: usize) -> Result<Vec<batch_lanes::Row>, sqlx::Error> {
        let pool = &self.applier.pool;
        let mut after = after;
        loop {
            let rows = batch_lanes::next_rows(pool, connection_id, after, size).await?;
            let Some(last) = rows.last().map(|r| r.id) else { return Ok(rows) };
            let (applied, rest): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.applied);
            if applied.is_empty() {
                return Ok(rest);
            }
            batch_lanes::finish(pool, connection_id, &applied.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
            if !rest.is_empty() {
                return Ok(rest);
            }
            after = last;
        }
    }

    async fn finish(&self, connection_id: &str, ids: &[i64]) {
        if let Err(e) = batch_lanes::finish(&self.applier.pool, connection_id, ids).await {
            // Left on the lane: the next turn finds them applied in the
            // audit log and only removes them.
            tracing::warn!(connection_id, error = %e, "cannot remove applied records from the batch lane; they will be passed over");
        }
    }

    async fn park_unreadable(&self, connection_id: &str, unreadable: &[(i64, String)]) {
        for (id, reason) in unreadable {
            crmsync_store::sync_errors::park_unreadable(
                &self.applier.pool,
                connection_id,
                "apply",
                &format!("batch-lane row {id}"),
                reason,
            )
            .await;
        }
        self.finish(connection_id, &unreadable.iter().map(|(id, _)| *id).collect::<Vec<_>>()).await;
    }

    /// Publishes a chunk to the apply stage's dead-letter queue; whether
    /// the broker confirmed it.
    async fn dead_letter(&self, chunk: &ApplyBatch, reason: &str) -> bool {
        let message = Outgoing {
            routing_key: String::new(),
            body: messages::encode(chunk),
            message_id: chunk.batch_id.to_string(),
            headers: vec![
                ("x-connection-id".into(), chunk.connection_id.clone()),
                ("x-lane".into(), chunk.lane.as_str().into()),
                ("x-crmsync-reason".into(), crmsync_infra::telemetry::redact(reason)),
            ],
            links: Vec::new(),
        };
        match self.broker.dead_letter_confirmed(Stage::Apply, vec![message]).await {
            Ok(()) => {
                tracing::warn!(connection_id = %chunk.connection_id, reason = %crmsync_infra::telemetry::redact(reason), "batch-lane chunk dead-lettered");
                true
            }
            Err(e) => {
                tracing::warn!(connection_id = %chunk.connection_id, error = %e, "cannot dead-letter a batch-lane chunk; keeping it on the lane");
                false
            }
        }
    }

    /// A lane whose connection no longer exists: its records go to the
    /// dead-letter queue (replayable once the connection is back), then
    /// the lane is dropped. Nothing of it waits on anyone's lane (I9).
    async fn abandon(&self, connection_id: &str) {
        let pool = &self.applier.pool;
        let reason = format!("no connection {connection_id:?}: its batch lane was dead-lettered");
        loop {
            let rows = match batch_lanes::next_rows(pool, connection_id, 0, self.options.chunk).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(connection_id, error = %e, "cannot read the lane of a deleted connection; trying again later");
                    return;
                }
            };
            if rows.is_empty() {
                break;
            }
            let (chunk, unreadable) = chunk_of(connection_id, &rows);
            if !unreadable.is_empty() {
                tracing::warn!(connection_id, records = unreadable.len(), "unreadable records of a deleted connection dropped");
            }
            if !self.dead_letter(&chunk, &reason).await {
                return;
            }
            self.finish(connection_id, &rows.iter().map(|r| r.id).collect::<Vec<_>>()).await;
        }
        if let Err(e) = batch_lanes::drop_lane(pool, connection_id).await {
            tracing::warn!(connection_id, error = %e, "cannot drop the lane of a deleted connection");
        }
    }
}

/// Applies one chunk, sorting the outcome into done, later, held, or never.
async fn apply(applier: &Applier, chunk: &ApplyBatch) -> Result<Applied, StageError> {
    let span = crate::batch_span(chunk);
    match applier.process(chunk).instrument(span).await {
        Ok(()) => Ok(Applied::Done),
        Err(StageError::Held(_)) => Ok(Applied::Held),
        Err(StageError::Retry(reason) | StageError::Requeue(reason)) => Ok(Applied::Later(reason)),
        Err(e @ (StageError::Poison(_) | StageError::Misaddressed(_))) => Err(e),
    }
}
