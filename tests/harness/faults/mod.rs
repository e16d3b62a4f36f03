//! The fault-injection suite (issue 8): a realistic data set syncs through
//! separate tier processes while a seeded schedule kills replicas (SIGKILL),
//! pauses them past their lock TTL (SIGSTOP, then SIGCONT: a stale lock
//! holder wakes up and writes), and restarts RabbitMQ, Redis and PostgreSQL;
//! then the source systems are checked for I1, I2, I3 and stuck work.
//!
//! The same seed gives the same schedule and the same edits (timing aside).
//! `FAULTS_SEED`, `FAULTS_SECS` and the others below tune a
//! run; `scripts/faults.sh` runs it by hand. It restarts the machine's own
//! services, so it never runs alongside other tests.

pub mod fleet;
pub mod services;
pub mod verify;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crmsync_infra::CancellationToken;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{SANDBOX_BUSINESS_UNIT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TestApp, Tier};
use fleet::Fleet;
use services::Service;
use workload::{Side, Sizes, Workload, WriterPace};

/// How the tiers reach the sandbox systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The sandbox connectors, straight to its PostgreSQL schemas.
    Direct,
    /// The Salesforce and Account Engagement connectors, over HTTP, against
    /// `crmsync sandbox serve` running as its own process.
    Http,
}

/// The faults the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillReplica,
    PauseReplica,
    RestartRabbitMq,
    RestartRedis,
    RestartPostgres,
}

impl Fault {
    const ALL: [Fault; 5] = [Fault::KillReplica, Fault::PauseReplica, Fault::RestartRabbitMq, Fault::RestartRedis, Fault::RestartPostgres];

    fn name(self) -> &'static str {
        match self {
            Fault::KillReplica => "SIGKILL a replica",
            Fault::PauseReplica => "SIGSTOP past lock TTL",
            Fault::RestartRabbitMq => "restart RabbitMQ",
            Fault::RestartRedis => "restart Redis",
            Fault::RestartPostgres => "restart PostgreSQL",
        }
    }
}

/// A run's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// How long faults keep coming (every kind occurs at least once anyway).
    pub duration: Duration,
    /// Most faults in one run.
    pub max_faults: usize,
    pub sizes: Sizes,
    /// The sandbox seed data around the workload (1.0 is ~4,000 prospects).
    pub background_scale: f64,
    pub pace: WriterPace,
    /// Edits of hot pairs made back to back before a kill or a pause.
    pub burst: u32,
    /// The tiers' identity-lock TTL; a paused replica sleeps past it.
    pub lock_ttl: Duration,
    /// Longest wait for a probe edit to cross after a fault.
    pub recovery_limit: Duration,
    /// Longest wait for the pipeline to settle at the end.
    pub settle_limit: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

impl Options {
    /// Defaults sized for CI (about 60 s of faults per mode), overridden by
    /// `FAULTS_SEED`, `_SECS`, `_MAX`, `_PAIRS`, `_SCALE`, `_EDIT_MS` and `_BURST`. Not
    /// `CRMSYNC_*`: the configuration refuses unknown keys under that prefix,
    /// and the tier processes inherit this environment.
    pub fn from_env() -> Options {
        let pairs: i64 = env_or("FAULTS_PAIRS", 400);
        Options {
            seed: env_or("FAULTS_SEED", 20_261_124),
            duration: Duration::from_secs(env_or("FAULTS_SECS", 60)),
            max_faults: env_or("FAULTS_MAX", 20),
            sizes: Sizes { leads_by_id: pairs * 5 / 8, contacts_by_id: pairs / 4, leads_by_email: pairs / 8 },
            background_scale: env_or("FAULTS_SCALE", 0.1),
            pace: WriterPace { every: Duration::from_millis(env_or("FAULTS_EDIT_MS", 100)), create_share: 0.15, max_created: 300 },
            burst: env_or("FAULTS_BURST", 40),
            lock_ttl: Duration::from_millis(2_000),
            recovery_limit: Duration::from_secs(120),
            settle_limit: Duration::from_secs(240),
        }
    }
}

/// One injected fault and how the pipeline came back from it.
#[derive(Debug, Clone)]
pub struct Injected {
    pub at: Duration,
    pub fault: Fault,
    pub detail: String,
    /// From the fault's end (service back, replica replaced or resumed) to
    /// a fresh edit showing on the other side; `None` if it never did.
    pub recovery: Option<Duration>,
}

/// What a run did and found.
#[derive(Debug)]
pub struct Report {
    pub mode: Mode,
    pub seed: u64,
    pub injected: Vec<Injected>,
    pub verdict: verify::Verdict,
    pub edits: u64,
    pub created: usize,
    pub initial_sync: Duration,
    pub settle: Option<Duration>,
    pub unplanned_exits: Vec<(String, String)>,
    pub unclean_stops: Vec<String>,
    /// Retries the replicas logged for an identity still locked or whose
    /// write was fenced: the stale holders the pauses made, refused.
    pub lock_retries: usize,
    pub total: Duration,
    pub log_dir: String,
}

impl Report {
    /// Whether every invariant held and everything recovered.
    pub fn passed(&self) -> bool {
        self.verdict.clean()
            && self.settle.is_some()
            && self.unplanned_exits.is_empty()
            && self.injected.iter().all(|i| i.recovery.is_some())
            && Fault::ALL.iter().all(|f| self.injected.iter().any(|i| i.fault == *f))
    }

    /// The summary table the suite prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== fault suite, {:?} mode, seed {} ==", self.mode, self.seed);
        let _ = writeln!(s, "{:<24} {:>5} {:>14} {:>14} {:>14}", "fault", "count", "recovery min", "median", "max");
        let mut by_kind: BTreeMap<Fault, Vec<Option<Duration>>> = BTreeMap::new();
        for i in &self.injected {
            by_kind.entry(i.fault).or_default().push(i.recovery);
        }
        for (fault, rs) in &by_kind {
            let mut ok: Vec<Duration> = rs.iter().flatten().copied().collect();
            ok.sort();
            let fmt = |d: Option<&Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
            let failed = rs.len() - ok.len();
            let _ = writeln!(
                s,
                "{:<24} {:>5} {:>14} {:>14} {:>14}{}",
                fault.name(),
                rs.len(),
                fmt(ok.first()),
                fmt(ok.get(ok.len() / 2)),
                fmt(ok.last()),
                if failed > 0 { format!("  ({failed} never recovered)") } else { String::new() }
            );
        }
        let v = &self.verdict;
        let _ = writeln!(s, "faults injected            {}", self.injected.len());
        let _ = writeln!(s, "edits written              {} (+ {} prospects created and assigned)", self.edits, self.created);
        let _ = writeln!(
            s,
            "records synced             {} ({} linked pairs, {} new leads; {} values compared)",
            v.records_synced(),
            v.pairs_synced,
            v.created_synced,
            v.values_checked
        );
        let _ = writeln!(s, "records lost               {}", v.lost.len());
        let _ = writeln!(s, "duplicate counterparts     {}", v.duplicates.len());
        let _ = writeln!(s, "stale values               {}", v.stale.len());
        let _ = writeln!(s, "stuck                      {}", v.stuck.len());
        let _ = writeln!(s, "unplanned replica exits    {}", self.unplanned_exits.len());
        let _ = writeln!(s, "locked/fenced retries      {} (from the replicas' logs)", self.lock_retries);
        let _ = writeln!(s, "initial sync               {:.1} s", self.initial_sync.as_secs_f64());
        let _ = writeln!(
            s,
            "final settle               {}",
            self.settle.map_or("did not settle".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        let _ = writeln!(s, "total time                 {:.1} s", self.total.as_secs_f64());
        let _ = writeln!(s, "replica logs               {} (removed when the run passes)", self.log_dir);
        for (title, list) in [("lost", &v.lost), ("duplicates", &v.duplicates), ("stale", &v.stale), ("stuck", &v.stuck)] {
            for line in list.iter().take(20) {
                let _ = writeln!(s, "  {title}: {line}");
            }
            if list.len() > 20 {
                let _ = writeln!(s, "  {title}: ... and {} more", list.len() - 20);
            }
        }
        for (slot, status) in &self.unplanned_exits {
            let _ = writeln!(s, "  exit: {slot} ended by itself ({status})");
        }
        for slot in &self.unclean_stops {
            let _ = writeln!(s, "  note: {slot} did not exit 0 on SIGTERM at the end");
        }
        s
    }
}

/// `crmsync sandbox serve` as a process of its own, so that it lives through
/// the faults like the tiers do and not inside the test process.
struct ServeProcess {
    child: tokio::process::Child,
    url: String,
}

impl ServeProcess {
    async fn start(app: &TestApp, exe: &str, log: &std::path::Path) -> ServeProcess {
        use tokio::io::AsyncBufReadExt;
        let secret = app.secret_file("faults-client-secret", &format!("{SANDBOX_CLIENT_SECRET}\n"));
        let mut child = tokio::process::Command::new(exe)
            .args(["sandbox", "serve", "--bind", "127.0.0.1:0", "--client-id", SANDBOX_CLIENT_ID, "--client-secret-file", &secret])
            .args([
                "--business-unit-id",
                SANDBOX_BUSINESS_UNIT,
                "--salesforce-daily-limit",
                "100000000",
                "--pardot-daily-limit",
                "100000000",
            ])
            .env("CRMSYNC_DATABASE__URL", secrecy::ExposeSecret::expose_secret(&app.config.database.url))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log).expect("the server's log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start crmsync sandbox serve");
        let stdout = child.stdout.take().expect("its output");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let url = match line {
            Ok(Ok(Some(l))) => l.strip_prefix("sandbox serving at ").map(str::to_owned),
            _ => None,
        }
        .unwrap_or_else(|| panic!("crmsync sandbox serve did not start; see {}", log.display()));
        // Keep reading so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ServeProcess { child, url }
    }
}

/// Waits until the pipeline is idle, replacing replicas that exit on the
/// way; how long it took, or `None` past `limit`.
async fn settle(app: &TestApp, fleet: &mut Fleet, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    // A probe of its own: after a broker restart the test app's may lag.
    let probe = loop {
        match crmsync_cli::progress::Probe::new(&app.config, &app.pool).await {
            Ok(p) => break p,
            Err(_) if started.elapsed() < limit => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => panic!("no progress probe: {e:#}"),
        }
    };
    // Idle for two seconds on end: the producers have looked again. The
    // probe counts ready messages only; a message a replica still holds
    // (unacknowledged) is asked of the broker itself.
    let mut idle_since: Option<Instant> = None;
    while started.elapsed() < limit {
        fleet.supervise(app);
        match probe.measure("default").await {
            Ok(p) if p.idle() && verify::queue_contents(&app.config.amqp.prefix).iter().all(|(_, r, u)| r + u == 0) => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(2) {
                    return Some(started.elapsed());
                }
            }
            _ => idle_since = None,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Lines holding `needle` in the replicas' logs.
fn count_in_logs(dir: &std::path::Path, needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).map(|t| t.lines().filter(|l| l.contains(needle)).count()).sum()
}

/// Sleeps `d` while watching the fleet.
async fn watch(app: &TestApp, fleet: &mut Fleet, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        fleet.supervise(app);
        tokio::time::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now()))).await;
    }
}

/// Runs the whole suite in `mode` with the `crmsync` binary `exe` (see
/// [`crate::crmsync_exe`]); prints what it injected and found.
pub async fn run(mode: Mode, exe: &str) -> Report {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = Options::from_env();
    // First, so that any failing run can be repeated.
    println!("fault suite: {mode:?} mode, seed {} (FAULTS_SEED), {} s of faults", opts.seed, opts.duration.as_secs());
    let started = Instant::now();
    services::start_all().await;
    let app = TestApp::spawn().await;
    // Every change in the immediate lane: the batch lane's pacing is not
    // what this suite measures.
    app.set("batch_threshold", "100000").await;
    let w = Workload::setup(&app, opts.sizes, opts.background_scale, opts.seed).await;
    let log_dir = std::env::temp_dir().join(format!("crmsync-faults-{}", app.db_name));
    std::fs::create_dir_all(&log_dir).unwrap();

    let server = match mode {
        Mode::Direct => None,
        Mode::Http => {
            let s = ServeProcess::start(&app, exe, &log_dir.join("sandbox-serve.log")).await;
            app.use_salesforce(&s.url, json!({})).await;
            let secret = app.secret_file("faults-ae-secret", &format!("{SANDBOX_CLIENT_SECRET}\n"));
            let ma = json!({
                "kind": "account_engagement", "base_url": s.url, "business_unit_id": SANDBOX_BUSINESS_UNIT,
                "oauth": {"login_url": s.url, "flow": "client_credentials", "client_id": SANDBOX_CLIENT_ID, "client_secret": {"file": secret}},
                "overlap_secs": 3, "limit_probe_secs": 1, "poll_interval_secs": 1, "poll_max_secs": 1,
            });
            app.set("ma", &ma.to_string()).await;
            Some(s)
        }
    };

    let ttl = opts.lock_ttl.as_millis().to_string();
    let acquire = (opts.lock_ttl.as_millis() / 2).to_string();
    let env = [("CRMSYNC_LOCKS__TTL_MS", ttl.as_str()), ("CRMSYNC_LOCKS__ACQUIRE_TIMEOUT_MS", acquire.as_str())];
    let mut fleet = Fleet::start(&app, exe, &env, log_dir.clone(), (2, 2, 2));
    let initial = settle(&app, &mut fleet, opts.settle_limit).await.expect("the initial load syncs before any fault");
    println!("initial load synced in {:.1} s; faults begin", initial.as_secs_f64());

    let stop_writer = CancellationToken::new();
    let burst = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = workload::spawn_writer(
        app.pool.clone(),
        w.pairs.clone(),
        w.actors.clone(),
        opts.pace,
        opts.seed ^ 0x5eed,
        burst.clone(),
        stop_writer.clone(),
    );
    // A replica about to be killed or paused should hold work: a burst of
    // edits on the hot pairs first, then a moment for it to reach the tiers.
    let busy = || async {
        burst.store(opts.burst, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut plan = Fault::ALL.to_vec();
    plan.shuffle(&mut rng);
    let faults_start = Instant::now();
    let mut injected = Vec::new();
    let mut probes = 0u32;
    while injected.len() < opts.max_faults.max(Fault::ALL.len()) {
        let pending = Fault::ALL.iter().any(|f| !injected.iter().any(|i: &Injected| i.fault == *f));
        // Bounded in time even when faults take long to recover from.
        if (faults_start.elapsed() >= opts.duration && !pending) || faults_start.elapsed() >= opts.duration * 3 {
            break;
        }
        let fault = plan.get(injected.len()).copied().unwrap_or_else(|| Fault::ALL[rng.random_range(0..Fault::ALL.len())]);
        watch(&app, &mut fleet, Duration::from_millis(rng.random_range(1_000..4_000))).await;
        let at = faults_start.elapsed();
        let detail = match fault {
            Fault::KillReplica => {
                let slots = fleet.slots_of(&[Tier::Producer, Tier::Matcher, Tier::Applier]);
                let slot = slots[rng.random_range(0..slots.len())];
                let name = fleet.name(slot);
                busy().await;
                fleet.kill_and_replace(&app, slot).await;
                format!("{name} killed and replaced")
            }
            Fault::PauseReplica => {
                let slots = fleet.slots_of(&[Tier::Matcher, Tier::Applier]);
                let slot = slots[rng.random_range(0..slots.len())];
                let pause = opts.lock_ttl + Duration::from_millis(rng.random_range(500..3_000));
                let pid = fleet.pid(slot);
                busy().await;
                fleet::signal(pid, "STOP");
                tokio::time::sleep(pause).await;
                fleet::signal(pid, "CONT");
                format!("{} paused {:.1} s", fleet.name(slot), pause.as_secs_f64())
            }
            Fault::RestartRabbitMq | Fault::RestartRedis | Fault::RestartPostgres => {
                let service = match fault {
                    Fault::RestartRabbitMq => Service::RabbitMq,
                    Fault::RestartRedis => Service::Redis,
                    _ => Service::Postgres,
                };
                let down = Duration::from_millis(rng.random_range(1_000..5_000));
                let out = services::restart(service, down).await;
                format!("{} down {:.1} s (held {:.1} s)", service.name(), out.as_secs_f64(), down.as_secs_f64())
            }
        };
        probes += 1;
        let from = if probes.is_multiple_of(2) { Side::Ma } else { Side::Crm };
        let recovery = workload::probe(&app.pool, &w, probes, from, opts.recovery_limit).await;
        fleet.supervise(&app);
        let shown = recovery.map_or("NOT RECOVERED".to_owned(), |d| format!("recovered in {:.2} s", d.as_secs_f64()));
        println!("[{:>6.1} s] {:<24} {detail}; {shown}", at.as_secs_f64(), fault.name());
        injected.push(Injected { at, fault, detail, recovery });
    }

    stop_writer.cancel();
    let ledger = writer.await.expect("the writer");
    println!(
        "faults over after {:.1} s; {} edits, {} prospects created; settling",
        faults_start.elapsed().as_secs_f64(),
        ledger.edits,
        ledger.created.len()
    );
    let settled = settle(&app, &mut fleet, opts.settle_limit).await;
    let verdict = verify::verify(&app, &w, &ledger).await;
    let mut unplanned_exits = fleet.unplanned_exits.clone();
    let unclean_stops = fleet.stop().await;
    if let Some(mut s) = server {
        // The server lives through the faults too (its pool reconnects).
        if let Ok(Some(status)) = s.child.try_wait() {
            unplanned_exits.push(("sandbox-serve".into(), status.to_string()));
        }
        if let Some(pid) = s.child.id() {
            fleet::signal(pid, "TERM");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), s.child.wait()).await;
    }
    let report = Report {
        mode,
        seed: opts.seed,
        injected,
        verdict,
        edits: ledger.edits,
        created: ledger.created.len(),
        initial_sync: initial,
        settle: settled,
        unplanned_exits,
        unclean_stops,
        lock_retries: count_in_logs(&log_dir, "locked or fenced"),
        total: started.elapsed(),
        log_dir: log_dir.display().to_string(),
    };
    println!("{}", report.summary());
    if report.passed() {
        app.cleanup().await;
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    report
}
