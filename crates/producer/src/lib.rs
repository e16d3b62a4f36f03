//! The producer tier: detects changes in every connection's systems and
//! publishes them to the matcher.
//!
//! Every connection's pass, and every feed (connection × source object) in
//! it, is leased, so any number of replicas can run and no connection is
//! polled by two at once; a replica that dies loses its leases when they
//! expire and another takes over from the stored cursors. Polling runs
//! every `producer.poll_interval_ms` and, when the source can notify, as
//! soon as a change commits: the sandbox with PostgreSQL NOTIFY at commit,
//! a Salesforce org through its change events, which its connector hears
//! (a pass then reads that connection's feeds).
//!
//! An idle connection costs next to nothing (I8, I10; issue 29). A
//! connection whose systems are all sandbox tenants gets a pass only when
//! a set-based check of every such connection's feeds at once (see
//! `check`) finds changes past its cursors: the notified tables' feeds when
//! a notification comes, every feed at the safety poll. The safety poll,
//! for what no notification announced, runs every
//! `producer.safety_poll_interval_ms` (10 s) while notifications are
//! heard, every poll interval while they are not, and at once whenever the
//! listener (re)connects. So at rest the loop costs one small statement a
//! poll interval (has any connection changed?) and a few statements a
//! safety poll, whatever the number of connections; leases are taken only
//! for a pass, and expire unrenewed while nothing changes. A connection
//! with a system over a real API still gets a pass every poll interval:
//! its feeds keep their own pace and back-off, and its API calls are what
//! it costs.
//!
//! A paused connection (issue 28) gets no pass: nothing is read or
//! published for it and its cursors hold still, whatever wakes the loop (a
//! notification or a change event for it is dropped: the held cursors
//! remember what it would have read). On resume (which moves the
//! connection's `updated_at`), the next poll, at most
//! `producer.poll_interval_ms` later, reads on from the cursors, in order,
//! and nothing is lost.

mod check;
mod feed;
mod pass;
mod redetect;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crmsync_connector::ConnectorFactory;
use crmsync_infra::health::{self, Health};
use crmsync_infra::priority::Priority;
use crmsync_infra::{CancellationToken, Config, services::Services, telemetry};
use crmsync_store::{connections, feeds};
use crmsync_systems::SystemsFactory;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::check::Connections;

pub use feed::Feed;
pub use pass::{PassContext, PassStats, Select, change_messages, run_pass};
pub use redetect::{RecordName, Redetected, redetect};

/// The channel the sandbox notifies on when a tracked table changes.
const SANDBOX_CHANNEL: &str = "crmsync_sandbox";

/// This replica's name in feed leases.
fn replica_id(config: &Config) -> String {
    config.producer.replica_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "producer".into());
        format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
    })
}

/// Tables notified since the last pass: a pass woken by them reads only
/// their feeds, not every feed of every connection.
type Dirty = Arc<Mutex<HashSet<String>>>;

/// How the change notifications stand, as the listener tells the loop.
#[derive(Debug, Default)]
struct Hearing {
    /// The listener is connected and listening: the safety poll can wait
    /// its long interval.
    listening: AtomicBool,
    /// The listener (re)connected: whatever was committed while it was not
    /// listening was announced to no one, so the next pass is a safety poll.
    missed: AtomicBool,
}

/// Wakes the poll loop whenever the sandbox commits a change, noting which
/// table changed. Reconnects with backoff; polling continues meanwhile, so
/// a lost listener only costs latency.
async fn listen(pool: PgPool, wake: Arc<Notify>, dirty: Dirty, hearing: Arc<Hearing>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        hearing.listening.store(false, Ordering::SeqCst);
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "change notifications unavailable; polling only");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if listener.listen(SANDBOX_CHANNEL).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(200);
        // Listening from here on; what came before is looked for by a
        // safety poll at once.
        hearing.listening.store(true, Ordering::SeqCst);
        hearing.missed.store(true, Ordering::SeqCst);
        wake.notify_one();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) => {
                        dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(n.payload().to_owned());
                        wake.notify_one();
                    }
                    Err(e) => { warn!(error = %e, "change notifications interrupted"); break; }
                }
            }
        }
    }
}

/// Runs the producer until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services = Services::connect_patiently(&config, "crmsync-producer", &shutdown).await?;
    let health = Health::new("producer", &services);
    health.drain_on(shutdown.clone());
    health.report(shutdown.clone());
    let server = health::serve(config.telemetry.http_listen.as_deref(), health.clone()).await?;
    let factory = SystemsFactory::from_services(&config, &services).await?.hearing_changes();
    let owner = replica_id(&config);
    let wake = Arc::new(Notify::new());
    let dirty = Dirty::default();
    let hearing = Arc::new(Hearing::default());
    let listener = tokio::spawn(listen(factory.pool().clone(), wake.clone(), dirty.clone(), hearing.clone(), shutdown.clone()));
    let priority = Priority::shared(services.redis.clone(), &config.redis.prefix);
    let recently_published = pass::RecentlyPublished::default();
    let ctx = PassContext {
        pool: &services.pool,
        broker: &services.broker,
        owner: &owner,
        lease_ttl: config.producer.lease_ttl(),
        page_size: config.producer.page_size,
        records_per_message: config.producer.records_per_message,
        api_records_per_message: config.producer.api_records_per_message,
        priority: &priority,
        batch_ahead: config.producer.batch_ahead(),
        recently_published: &recently_published,
    };
    info!(replica = %owner, "producer started");
    health.working();
    let poll_interval = config.producer.poll_interval();
    // Within the database pool: a pass takes a connection from each pool
    // for a statement at a time, and the loop's own checks need one too;
    // more passes than half the pool queue for connections, and past the
    // pool's acquire timeout they fail (3 replicas with pools of 4 did).
    let pass_concurrency = config.producer.pass_concurrency.clamp(1, (config.database.max_connections as usize / 2).max(1));
    let mut backoff = poll_interval;
    let signals = factory.change_signals().clone();
    // What the next pass over a connection with an API system reads: every
    // feed (`None`) or the notified ones.
    let mut only: Option<HashSet<String>> = None;
    // The tables notified since the last pass (for the sandbox connections'
    // check, whatever `only` says).
    let mut tables: HashSet<String> = HashSet::new();
    // And, in a pass that is not full, the connections whose change
    // events said they have changes (every feed of theirs is read).
    let mut signalled: HashSet<String> = HashSet::new();
    let mut events_only = false;
    let mut last_full = Instant::now();
    // Connections another replica's pass held at the last try. Notifications
    // (one per commit to a source table: thousands a second in a backfill)
    // do not wake a standby for them; it tries again at the poll interval.
    let mut standing_by: HashSet<String> = HashSet::new();
    // Every connection, as of the last read (see `check`).
    let mut known = Connections::default();
    // The sandbox connections' safety poll: when it last looked at every
    // feed (`None`: due now).
    let mut last_safety: Option<Instant> = None;
    // Sandbox connections found with changes at the last check: looked at
    // again a poll interval later, every feed, until nothing is pending
    // (a pass that could not read everything yet, a commit behind a
    // transaction still running). Those standing by are looked at then
    // too, as every poll used to try them: the holder may have gone.
    let mut recheck: HashSet<String> = HashSet::new();
    let mut last_recheck = Instant::now();
    // Passes run side by side and outlive a turn of this loop: a long pass
    // (a backfill's first, a connection whose system does not answer)
    // holds one slot, and every other connection's changes are still
    // found and passed over meanwhile (issue 29's isolation).
    let mut flight = Flight::new(pass_concurrency, poll_interval);
    'run: loop {
        let mut failed = false;
        let full = only.is_none();
        if full {
            last_full = Instant::now();
        }
        // Without notifications the safety poll is the only way a sandbox
        // change is seen: it runs every poll interval then, as every poll
        // used to.
        let safety_every = if hearing.listening.load(Ordering::SeqCst) { config.producer.safety_poll_interval() } else { poll_interval };
        let safety = hearing.missed.swap(false, Ordering::SeqCst) || last_safety.is_none_or(|t| t.elapsed() >= safety_every);
        let read = if safety { known.reload(&services.pool).await } else { known.refresh(&services.pool).await };
        let changed = read.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the connections; retrying");
            failed = true;
            HashSet::new()
        });
        if !changed.is_empty() {
            flight.settings_changed(&changed, &known.list.iter().map(|k| k.id.as_str()).collect());
        }

        // Connections with a system over a real API: a pass each poll, as
        // their feeds keep their own pace (and the lease and settings
        // statements with it).
        for k in known.list.iter().filter(|k| k.sandbox_feeds().is_none()) {
            let connection_id = &k.id;
            let want = if signalled.contains(connection_id) {
                Want::All
            } else if only.is_some() && (standing_by.contains(connection_id) || events_only) {
                continue;
            } else {
                only.as_ref().map_or(Want::All, |t| Want::Tables(t.clone()))
            };
            flight.want(connection_id, want);
        }

        // Sandbox connections: a set-based check of the feeds that may
        // have changes (all of them at a safety poll; a changed
        // connection's; the notified tables'; the ones to look at again),
        // and a pass only where something is pending.
        let recheck_due = last_recheck.elapsed() >= poll_interval;
        let mut wanted = Vec::new();
        for k in known.list.iter().filter(|k| !k.paused) {
            let Some(feeds) = k.sandbox_feeds() else { continue };
            let again = recheck.contains(&k.id) || standing_by.contains(&k.id);
            if safety || changed.contains(&k.id) || (recheck_due && again) {
                wanted.push((k, feeds.iter().collect()));
            } else if !tables.is_empty() && !standing_by.contains(&k.id) {
                let notified: Vec<&Feed> = feeds.iter().filter(|f| f.table().is_none_or(|t| tables.contains(t))).collect();
                if !notified.is_empty() {
                    wanted.push((k, notified));
                }
            }
        }
        match check::pending_feeds(&services.pool, factory.pool(), &wanted).await {
            Ok(pending) => {
                if safety {
                    last_safety = Some(Instant::now());
                }
                if recheck_due {
                    last_recheck = Instant::now();
                    recheck.clear();
                }
                recheck.extend(pending.keys().cloned());
                for (connection_id, feeds) in pending {
                    flight.want(&connection_id, Want::Feeds(feeds));
                }
            }
            Err(e) => {
                warn!(error = %telemetry::redact(&e.to_string()), "cannot check the feeds for changes; retrying");
                failed = true;
            }
        }

        flight.launch(&ctx, &factory);

        // Failures to read the connections or check the feeds back off;
        // otherwise the loop polls at the configured pace. (A connection
        // whose pass fails backs off on its own: see `Flight`.)
        backoff = if failed { (backoff * 2).min(Duration::from_secs(10)) } else { poll_interval };
        let deadline = tokio::time::Instant::now() + backoff;
        let (notified, by_events) = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'run,
                Some((connection_id, outcome)) = flight.running.next(), if !flight.running.is_empty() => {
                    flight.done(connection_id, outcome, &mut standing_by);
                    flight.launch(&ctx, &factory);
                }
                _ = tokio::time::sleep_until(deadline) => break (false, false),
                _ = wake.notified(), if !failed => break (true, false),
                _ = signals.signalled(), if !failed => break (true, true),
            }
        };
        tables = std::mem::take(&mut *dirty.lock().unwrap_or_else(|p| p.into_inner()));
        signalled = signals.take();
        // Woken by change events alone: only the connections they name.
        events_only = by_events && tables.is_empty();
        // Every feed of a connection with an API system is still read once
        // a poll interval, however often notifications come: the overlap
        // window's look back (a late commit) depends on it.
        only = (notified && last_full.elapsed() < poll_interval).then(|| tables.clone());
        if only.is_none() {
            signalled.clear();
        }
    }
    // Passes under way finish (they publish and move their cursors), for
    // a while: one stuck on a system that does not answer is dropped, and
    // its connection read on from its cursors by the next replica to pass.
    flight.queue.clear();
    let finishing = async {
        while let Some((connection_id, outcome)) = flight.running.next().await {
            flight.done(connection_id, outcome, &mut standing_by);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finishing).await.is_err() {
        warn!("passes still under way at shutdown were dropped; their connections are read on from their cursors");
    }
    let _ = feeds::release_all(&services.pool, &owner).await;
    listener.abort();
    services.broker.close().await;
    if let Some(server) = server {
        server.abort();
    }
    info!("producer stopped");
    Ok(())
}

/// How long passes under way at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The longest a connection whose passes fail waits before the next try.
const MAX_PASS_BACKOFF: Duration = Duration::from_secs(60);

/// What a pass reads: an owned [`Select`], for a pass that outlives the
/// loop's turn that started it.
enum Want {
    All,
    Tables(HashSet<String>),
    Feeds(HashSet<String>),
}

type PassFuture<'c> = std::pin::Pin<Box<dyn std::future::Future<Output = (String, anyhow::Result<bool>)> + Send + 'c>>;

/// The passes of one replica: at most `concurrency` running, the rest
/// queued in the order they were wanted, never two for one connection,
/// and a connection whose pass failed left alone until its back-off ends.
///
/// A failure is the connection's own (its system refuses or does not
/// answer): it backs off that connection, doubling up to a minute, and
/// nobody else's.
struct Flight<'c> {
    running: FuturesUnordered<PassFuture<'c>>,
    /// Connections running or queued.
    busy: HashSet<String>,
    queue: VecDeque<(String, Want)>,
    /// Connections whose last pass failed: when they may be tried again,
    /// and their failures in a row.
    failing: HashMap<String, (Instant, u32)>,
    /// Connections whose settings changed while their pass ran: that pass
    /// read with the old ones, so its failure says nothing of the new.
    changed_in_flight: HashSet<String>,
    concurrency: usize,
    base_backoff: Duration,
}

impl<'c> Flight<'c> {
    fn new(concurrency: usize, base_backoff: Duration) -> Self {
        Flight {
            running: FuturesUnordered::new(),
            busy: HashSet::new(),
            queue: VecDeque::new(),
            failing: HashMap::new(),
            changed_in_flight: HashSet::new(),
            concurrency: concurrency.max(1),
            base_backoff,
        }
    }

    /// Queues a pass, unless the connection has one already (which reads
    /// on from its cursors, and is checked again after) or backs off.
    fn want(&mut self, connection_id: &str, want: Want) {
        if self.busy.contains(connection_id) || self.failing.get(connection_id).is_some_and(|(at, _)| Instant::now() < *at) {
            return;
        }
        self.busy.insert(connection_id.to_owned());
        self.queue.push_back((connection_id.to_owned(), want));
    }

    /// Connections whose settings changed are tried at once, whatever their
    /// back-off: an operator who has just fixed a connection's credentials
    /// or endpoint should not wait out a minute of it (the failures in a
    /// row are kept, for the back-off if the fix did not work). A pass
    /// under way with the old settings that fails does not back off either
    /// (the bench once saw a fixed CRM's edits wait 37.9 s for that). Those
    /// no longer known are forgotten.
    fn settings_changed(&mut self, changed: &HashSet<String>, known: &HashSet<&str>) {
        let now = Instant::now();
        for id in changed {
            if let Some((at, _)) = self.failing.get_mut(id) {
                *at = now;
            }
            if self.busy.contains(id) {
                self.changed_in_flight.insert(id.clone());
            }
        }
        self.failing.retain(|id, _| known.contains(id.as_str()));
    }

    /// Starts queued passes while slots are free.
    fn launch(&mut self, ctx: &'c PassContext<'c>, factory: &'c SystemsFactory) {
        while self.running.len() < self.concurrency {
            let Some((connection_id, want)) = self.queue.pop_front() else { break };
            self.running.push(Box::pin(one_pass(ctx, factory, connection_id, want)));
        }
    }

    /// Books a finished pass: whether its connection stands by (another
    /// replica holds its pass), or backs off after a failure.
    fn done(&mut self, connection_id: String, outcome: anyhow::Result<bool>, standing_by: &mut HashSet<String>) {
        self.busy.remove(&connection_id);
        let changed_meanwhile = self.changed_in_flight.remove(&connection_id);
        match outcome {
            Ok(held) => {
                self.failing.remove(&connection_id);
                if held {
                    standing_by.remove(&connection_id);
                } else {
                    standing_by.insert(connection_id);
                }
            }
            Err(e) => {
                let failures = self.failing.get(&connection_id).map_or(0, |(_, n)| *n).saturating_add(1);
                let wait = if changed_meanwhile {
                    Duration::ZERO
                } else {
                    self.base_backoff.saturating_mul(1 << failures.min(10)).min(MAX_PASS_BACKOFF)
                };
                // Connector errors can quote record values: no email in clear (I5).
                warn!(
                    connection_id,
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %telemetry::redact(&e.to_string()),
                    "detection failed; retrying"
                );
                self.failing.insert(connection_id, (Instant::now() + wait, failures));
            }
        }
    }
}

async fn one_pass(ctx: &PassContext<'_>, factory: &SystemsFactory, connection_id: String, want: Want) -> (String, anyhow::Result<bool>) {
    let select = match &want {
        Want::All => Select::All,
        Want::Tables(tables) => Select::Tables(tables),
        Want::Feeds(feeds) => Select::Feeds(feeds),
    };
    // Boxed: a pass's future is large.
    let outcome = Box::pin(poll_connection(ctx, factory, &connection_id, select)).await;
    (connection_id, outcome)
}

/// One pass over a connection, if this replica holds its pass lease; false
/// when another replica's pass holds it (nothing is loaded or read then).
async fn poll_connection(ctx: &PassContext<'_>, factory: &SystemsFactory, connection_id: &str, select: Select<'_>) -> anyhow::Result<bool> {
    let Some(pass) = feeds::lease(ctx.pool, connection_id, feeds::PASS, ctx.owner, ctx.lease_ttl).await? else {
        return Ok(false);
    };
    let (settings, paused) = connections::load_with_pause(ctx.pool, connection_id).await?;
    if paused.is_some() {
        // Nothing read, nothing published, no cursor moved (see the module).
        return Ok(true);
    }
    let systems = factory.systems(connection_id, &settings).await?;
    let stats = run_pass(ctx, connection_id, &settings, &systems, select, pass).await?;
    let detected = [("published", stats.published), ("suppressed_echo", stats.suppressed)];
    for (outcome, n) in detected.into_iter().filter(|(_, n)| *n > 0) {
        metrics::counter!(crmsync_infra::metrics::RECORDS, "tier" => "producer", "stage" => "detect", "outcome" => outcome)
            .increment(n as u64);
    }
    if stats.published > 0 {
        info!(
            connection_id,
            lane = stats.lane.map_or("-", |l| l.as_str()),
            published = stats.published,
            suppressed = stats.suppressed,
            "changes published"
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_failed_pass_backs_off_its_connection_unless_its_settings_changed_meanwhile() {
        let mut flight = Flight::new(2, Duration::from_secs(1));
        let known: HashSet<&str> = ["a", "b"].into_iter().collect();
        let mut standing_by = HashSet::new();
        for id in ["a", "b"] {
            flight.want(id, Want::All);
        }
        // b's settings are saved while both passes, with the old ones, run.
        flight.settings_changed(&ids(&["b"]), &known);
        flight.done("a".to_owned(), Err(anyhow::anyhow!("503")), &mut standing_by);
        flight.done("b".to_owned(), Err(anyhow::anyhow!("503")), &mut standing_by);
        flight.queue.clear();
        flight.busy.clear();
        flight.want("a", Want::All);
        flight.want("b", Want::All);
        let queued: Vec<&str> = flight.queue.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(queued, ["b"], "a waits out its back-off; b is tried again at once");
        assert_eq!(flight.failing["b"].1, 1, "b's failure is still counted");

        // Settings saved while a connection backs off end its wait; one no
        // longer known is forgotten.
        flight.settings_changed(&ids(&["a"]), &["a"].into_iter().collect());
        flight.want("a", Want::All);
        assert!(flight.queue.iter().any(|(id, _)| id == "a"));
        assert!(!flight.failing.contains_key("b"));
    }
}
