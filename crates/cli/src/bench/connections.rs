//! `crmsync bench connections` (issue 29): what one deployment costs with
//! many small connections. N connections, each with its own sandbox MA and
//! CRM tenants (P prospects linked to P of its L CRM leads, each pair
//! holding a value only one side has), and one replica per tier by default.
//! Measured, in this order, on a fresh database and broker prefix:
//! - the initial sync of all N, as records/s, from the tiers' start to the
//!   last pair converged and every published change finished;
//! - with nothing changing (after a warm-up, for the feeds to back off):
//!   CPU per tier and per service, PostgreSQL transactions a second, and
//!   memory per tier and of PostgreSQL and RabbitMQ;
//! - which connections' batch-lane queues the applier consumes (asked of
//!   the broker with `rabbitmqctl`, and its warnings counted in its log);
//! - how long `status`, `report`, `errors list` and a metrics scrape take,
//!   each a subprocess with a deadline (`status` used to declare a queue
//!   per connection and run for minutes);
//! - isolation: live edits on some connections, quiet, then while another
//!   connection's CRM refuses every call, then while another backfills a
//!   large backlog (`isolation`);
//! - all connections at their full budget at once (`full_budget`);
//! - then, in a second world, the same records in ONE connection (its
//!   budget lifted, as they reach the batch lane there).
//!
//! The services are shared with whatever else runs on the machine: their
//! CPU is also measured over a window before the tiers start, so the
//! background can be told apart. Everything the bench declared on the
//! broker is deleted at the end and its database dropped: hundreds of
//! quorum queues left behind are what took this single broker down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_infra::{Config, db};
use crmsync_sandbox::ops::Sandbox;
use crmsync_store::connections;
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use super::procs::{self, Sampler};
use super::report::Machine;
use super::{Tiers, fresh_world};
use crate::progress;

/// What to build and how long to watch it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Connections, each with its own MA and CRM sandbox tenants.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Prospects per connection, each linked to one of its CRM people.
    #[arg(long, default_value_t = 20)]
    pub prospects: i64,
    /// CRM people (leads) per connection; those without a prospect are read
    /// and skipped (automatic prospect creation is off by default).
    #[arg(long, default_value_t = 25)]
    pub people: i64,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    #[arg(long, default_value_t = 1)]
    pub matchers: usize,
    #[arg(long, default_value_t = 1)]
    pub appliers: usize,
    /// Seconds of nothing changing over which idle CPU is measured.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Seconds between convergence and the idle window (feeds back off).
    #[arg(long, default_value_t = 30)]
    pub idle_warmup_secs: u64,
    /// Seconds the services' CPU is measured before the tiers start: the
    /// machine's background load.
    #[arg(long, default_value_t = 15)]
    pub baseline_secs: u64,
    /// Pairs added to every tenant for the full-budget scenario (each is
    /// one batch-lane record); 0 skips the scenario. The default lasts the
    /// window at 12,000 an hour (200 a minute) with room to spare.
    #[arg(long, default_value_t = 300)]
    pub full_budget_pairs: i64,
    /// The full-budget scenario's measuring window.
    #[arg(long, default_value_t = 60)]
    pub full_budget_secs: u64,
    /// Isolation: records the first connection backfills (two per linked
    /// pair, its budget lifted) while the editors edit; 0 skips that part.
    #[arg(long, default_value_t = 1_000_000)]
    pub isolation_backfill: i64,
    /// Isolation: connections that make live edits (from the third on);
    /// 0 skips the scenario.
    #[arg(long, default_value_t = 20)]
    pub isolation_editors: usize,
    /// Isolation: the editors' edits a second, all of them together.
    #[arg(long, default_value_t = 20.0)]
    pub isolation_rate: f64,
    /// Isolation: the length of each window of live edits (quiet, failing
    /// CRM, backfill).
    #[arg(long, default_value_t = 60)]
    pub isolation_secs: u64,
    /// Isolation: skip the window in which the second connection's CRM
    /// refuses every call.
    #[arg(long)]
    pub no_failing_crm: bool,
    /// How long each read-only command may take before it is stopped.
    #[arg(long, default_value_t = 120)]
    pub command_timeout_secs: u64,
    /// Skip the second run (the same records in one connection).
    #[arg(long)]
    pub no_single: bool,
    /// Keeps this run's database and broker and Redis prefix apart from
    /// another run's on the same services (letters, digits and `_`):
    /// `crmsync_bench_connections_{world}`, `crmsync-bench-conn-{world}`.
    /// Two runs with the same world drop each other's database.
    #[arg(long, value_parser = parse_world)]
    pub world: Option<String>,
    /// Also write the figures as JSON here, and as Markdown beside it (`.md`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the tiers' logs go.
    #[arg(long, default_value = ".bench")]
    pub work_dir: PathBuf,
}

/// One initial sync.
#[derive(Debug, Clone, Serialize)]
pub struct SyncFigures {
    pub connections: usize,
    pub records: i64,
    pub pairs: i64,
    pub seconds: f64,
    pub records_per_second: f64,
    /// Peak resident memory of each tier process during the sync, MB.
    pub peak_rss_mb: BTreeMap<String, f64>,
}

/// How long a read-only command took.
#[derive(Debug, Clone, Serialize)]
pub struct CommandTiming {
    pub command: String,
    pub seconds: f64,
    pub ok: bool,
    /// Why not, or what it printed that matters.
    pub note: String,
}

/// The run's queues on the broker, and the applier's warnings.
#[derive(Debug, Clone, Serialize)]
pub struct BatchLanes {
    /// Queues of this run the broker holds (None: not asked): a fixed set
    /// since the batch lanes moved into PostgreSQL.
    pub declared: Option<usize>,
    /// ... of which have at least one consumer.
    pub consumed: Option<usize>,
    /// Queues on the whole broker (every prefix: other runs count too).
    pub broker_queues: Option<usize>,
    /// Warnings in the applier logs.
    pub applier_warnings: usize,
    pub note: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsRun {
    pub machine: Machine,
    pub command: String,
    pub connections: usize,
    pub prospects_per_connection: i64,
    pub people_per_connection: i64,
    pub replicas: BTreeMap<String, usize>,
    pub setup_seconds: f64,
    pub many: SyncFigures,
    pub single: Option<SyncFigures>,
    pub baseline_seconds: f64,
    /// Services' CPU before the tiers started, % of one core.
    pub baseline_cpu_percent: BTreeMap<String, f64>,
    pub idle_warmup_seconds: f64,
    pub idle_seconds: f64,
    /// CPU over the idle window, % of one core, per tier and service.
    pub idle_cpu_percent: BTreeMap<String, f64>,
    /// PostgreSQL transactions a second in the bench's database while idle.
    pub idle_pg_transactions_per_second: f64,
    /// Statements a second, when pg_stat_statements is loaded.
    pub idle_pg_statements_per_second: Option<f64>,
    /// Memory after the idle window: RSS per tier, PSS summed over each
    /// service's processes (RSS would count PostgreSQL's shared buffers once
    /// per backend), MB.
    pub memory_mb: BTreeMap<String, f64>,
    /// RabbitMQ's PSS before the bench declared anything, MB.
    pub broker_memory_before_mb: f64,
    pub batch_lanes: BatchLanes,
    /// All connections at their full budget at once (absent when skipped).
    pub full_budget: Option<super::full_budget::FullBudget>,
    /// Live edits while another connection backfills or loses its CRM
    /// (absent when skipped).
    pub isolation: Option<super::isolation::Isolation>,
    /// /proc/loadavg when the idle window began and ended: the machine is
    /// shared, and what else ran moves every figure.
    pub load_average: (String, String),
    pub commands: Vec<CommandTiming>,
    /// What the clean-up could not do (queues left on the broker), if any.
    pub cleanup_errors: Vec<String>,
    pub not_measured: Vec<String>,
}

const DATABASE: &str = "crmsync_bench_connections";
const PREFIX: &str = "crmsync-bench-conn";

/// A `--world`: it becomes part of a database name.
fn parse_world(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(s.to_owned())
    } else {
        Err("a world is 1 to 20 lowercase letters, digits or _".to_owned())
    }
}

/// The run's database and broker and Redis prefix.
fn world(args: &ConnectionsArgs) -> (String, String) {
    match &args.world {
        None => (DATABASE.to_owned(), PREFIX.to_owned()),
        Some(w) => (format!("{DATABASE}_{w}"), format!("{PREFIX}-{w}")),
    }
}

fn connection_id(i: usize) -> String {
    format!("c{i:05}")
}

/// `pairs` linked prospect ↔ lead pairs and `people - pairs` leads alone in
/// `tenant`: the lead holds a title the prospect lacks, the prospect a phone
/// the lead lacks, so every pair needs a write each way to converge.
async fn seed_tenant(pool: &PgPool, tenant: &str, pairs: i64, people: i64) -> anyhow::Result<()> {
    let sb = Sandbox::new(pool.clone(), tenant);
    sb.seed_pairs(&crmsync_sandbox::ops::Pairs { tag: "p", domain: "conn.example", pairs, people }).await?;
    Ok(())
}

/// Pairs holding both values on both sides, over every tenant.
async fn converged(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid \
         WHERE p.email LIKE '%@conn.example' AND p.job_title = l.title AND l.phone = p.phone",
    )
    .fetch_one(pool)
    .await?)
}

/// Changes published and finished, over every connection: the pipeline is
/// quiet when the second has caught up with the first.
async fn published_finished(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT coalesce(sum(published), 0)::bigint FROM feeds), \
                (SELECT coalesce(sum(finished), 0)::bigint FROM change_tallies)",
    )
    .fetch_one(pool)
    .await?)
}

/// Seconds from `since` (the database's clock) to the last write to a
/// bench record or the last audit entry, whichever is later.
async fn last_activity(pool: &PgPool, since: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Option<f64>> {
    let last: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT greatest((SELECT max(modstamp) FROM ma.prospects WHERE email LIKE '%@conn.example'), \
                         (SELECT max(modstamp) FROM crm.leads WHERE email LIKE '%@conn.example'), \
                         (SELECT max(at) FROM audit_log))",
    )
    .fetch_one(pool)
    .await?;
    Ok(last.filter(|l| *l > since).map(|l| (l - since).as_seconds_f64()))
}

/// Starts the tiers, waits for every pair to converge and every change to
/// be finished, and returns the figures with the tiers still running.
async fn initial_sync(pool: &PgPool, tiers: &Tiers, connections: usize, pairs: i64, records: i64) -> anyhow::Result<SyncFigures> {
    let started = Instant::now();
    let db_started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
    let sampler = Sampler::start(tiers.watched(), Duration::from_millis(500));
    let bar = progress::bar(u64::try_from(pairs)?, "pairs converged");
    // Generous, so a slow machine finishes and a stuck pipeline does not
    // hold the run forever.
    let limit = Duration::from_secs(600 + u64::try_from(records)? / 20);
    loop {
        let asked = Instant::now();
        let n = converged(pool).await?;
        // The check reads every pair: 0.85 s at 10,000 connections. Asked
        // at most a fifth of the time, so the bench's own load on
        // PostgreSQL stays small next to what it measures (the time is the
        // last activity's, not the check's, so it costs no accuracy).
        let pause = Duration::from_secs(1).max(asked.elapsed() * 4);
        bar.set_position(u64::try_from(n)?);
        if n >= pairs {
            let (published, finished) = published_finished(pool).await?;
            if finished >= published {
                break;
            }
        }
        anyhow::ensure!(started.elapsed() < limit, "{n} of {pairs} pairs converged in {limit:?}");
        tokio::time::sleep(pause).await;
    }
    bar.finish_and_clear();
    // Seen at a poll, up to a second late: the time is the last activity's.
    let seen = started.elapsed().as_secs_f64();
    let seconds = last_activity(pool, db_started).await?.map_or(seen, |s| s.min(seen));
    let (costs, _) = sampler.finish().await;
    Ok(SyncFigures {
        connections,
        records,
        pairs,
        seconds,
        records_per_second: records as f64 / seconds,
        peak_rss_mb: costs.into_iter().map(|c| (c.name, c.peak_rss_mb)).collect(),
    })
}

/// A free loopback port for the applier's metrics listener.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The tier processes for `ids`' world, the applier-0 serving `/metrics`.
fn spawn_tiers(args: &ConnectionsArgs, url: &str, prefix: &str, logs: &Path, run: &str, metrics: u16) -> anyhow::Result<Tiers> {
    let counts = [("producer", args.producers), ("matcher", args.matchers), ("applier", args.appliers)];
    Tiers::spawn_with_env(url, prefix, &counts, logs, run, |tier, i| {
        if tier == "applier" && i == 0 {
            vec![("CRMSYNC_TELEMETRY__HTTP_LISTEN".to_owned(), format!("127.0.0.1:{metrics}"))]
        } else {
            Vec::new()
        }
    })
}

/// Deletes the run's queues, once.
async fn delete_queues(config: &Config) -> anyhow::Result<()> {
    let broker = crmsync_infra::broker::Broker::new(&config.amqp, "crmsync-bench-cleanup");
    let deleted = async {
        let channel = broker.live().await?.conn.create_channel().await.context("a channel to delete the run's queues")?;
        crmsync_infra::amqp::Topology::new(&config.amqp).delete_all(&channel).await.context("deleting the run's queues")
    }
    .await;
    broker.close().await;
    deleted
}

/// Deletes what the run declared on the broker and drops its database.
/// With 300 connections the broker once took more than its 10-s answer
/// time right after the tiers stopped, and the queues stayed behind: the
/// deletion is tried again after a pause, and the database is dropped
/// whatever the broker answers.
async fn clean_up(config: &Config, base_url: &str, database: &str, pool: PgPool) -> anyhow::Result<()> {
    pool.close().await;
    let mut deleted = delete_queues(config).await;
    for _ in 0..5 {
        let Err(e) = &deleted else { break };
        crate::out::err_line(format_args!("  deleting the run's queues failed ({e:#}); trying again in 10 s"));
        tokio::time::sleep(Duration::from_secs(10)).await;
        deleted = delete_queues(config).await;
    }
    let admin = db::connect_url(base_url, 1, Duration::from_secs(10)).await?;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))).execute(&admin).await?;
    admin.close().await;
    deleted.with_context(|| format!("the run's queues (prefix {}) are left on the broker", config.amqp.prefix))
}

/// Runs `crmsync <args>` against the run's world with a deadline: wall time.
async fn timed(env: &[(&str, String)], args: &[&str], deadline: Duration) -> anyhow::Result<CommandTiming> {
    let started = Instant::now();
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let command = format!("crmsync {}", args.join(" "));
    let (ok, note) = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Err(_) => (false, format!("stopped after {} s", deadline.as_secs())),
        Ok(Err(e)) => (false, e.to_string()),
        Ok(Ok(out)) => {
            let lines = String::from_utf8_lossy(&out.stdout).lines().count();
            let err = String::from_utf8_lossy(&out.stderr);
            let last_err = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(200).collect::<String>();
            // `status` and `report` exit 1 when a connection has sync errors:
            // that is their answer, not a failure of the command.
            let ok = out.status.success() || (out.status.code() == Some(1) && lines > 0);
            (
                ok,
                format!(
                    "exit {}, {lines} lines{}",
                    out.status.code().unwrap_or(-1),
                    if ok { String::new() } else { format!(": {last_err}") }
                ),
            )
        }
    };
    Ok(CommandTiming { command, seconds: started.elapsed().as_secs_f64(), ok, note })
}

/// A metrics scrape of the applier: wall time of one GET.
async fn scrape(port: u16) -> CommandTiming {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let result = async { reqwest::get(&url).await?.error_for_status()?.text().await }.await;
    let (ok, note) = match result {
        Ok(body) => (true, format!("{} bytes, {} series", body.len(), body.lines().filter(|l| !l.starts_with('#')).count())),
        Err(e) => (false, e.to_string()),
    };
    CommandTiming { command: format!("GET {url} (applier-0)"), seconds: started.elapsed().as_secs_f64(), ok, note }
}

/// Asks the broker which of the run's batch-lane queues have consumers.
async fn batch_lanes(prefix: &str, logs: &Path, run: &str, appliers: usize, deadline: Duration) -> BatchLanes {
    // Any warning at all: the batch lane has none to give while healthy.
    let applier_warnings = (0..appliers)
        .filter_map(|i| std::fs::read_to_string(logs.join(format!("{run}-applier-{i}.log"))).ok())
        .map(|log| log.lines().filter(|l| super::is_warning(l)).count())
        .sum();
    let ask = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "consumers", "--no-table-headers"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let mut lanes = BatchLanes { declared: None, consumed: None, broker_queues: None, applier_warnings, note: String::new() };
    match tokio::time::timeout(deadline, ask).await {
        Err(_) => lanes.note = format!("rabbitmqctl list_queues did not answer in {} s", deadline.as_secs()),
        Ok(Err(e)) => lanes.note = format!("rabbitmqctl: {e}"),
        Ok(Ok(out)) if !out.status.success() => {
            lanes.note = format!("rabbitmqctl: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let rows: Vec<(&str, u64)> = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    Some((f.next()?, f.next()?.parse().ok()?))
                })
                .collect();
            // Every queue of the run's prefix: a fixed set, whatever N.
            let mine = format!("{prefix}.");
            let ours: Vec<u64> = rows.iter().filter(|(q, _)| q.starts_with(&mine)).map(|(_, c)| *c).collect();
            lanes.broker_queues = Some(rows.len());
            lanes.declared = Some(ours.len());
            lanes.consumed = Some(ours.iter().filter(|c| **c > 0).count());
            lanes.note = "rabbitmqctl list_queues name consumers".to_owned();
        }
    }
    lanes
}

/// PostgreSQL's transactions (and statements, if counted) so far in the
/// current database.
async fn pg_counters(pool: &PgPool) -> anyhow::Result<(i64, Option<f64>)> {
    let xacts: i64 =
        sqlx::query_scalar("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(pool)
            .await?;
    // Only where the extension is loaded and created; absent otherwise.
    let statements: Option<f64> = sqlx::query_scalar(
        "SELECT sum(calls)::float8 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .ok()
    .flatten();
    Ok((xacts, statements))
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPU milliseconds of each service over `window`, as % of one core.
fn percent(ms: &BTreeMap<String, f64>, window: Duration) -> BTreeMap<String, f64> {
    ms.iter().map(|(k, v)| (k.clone(), 100.0 * v / 1000.0 / window.as_secs_f64())).collect()
}

impl ConnectionsArgs {
    /// The defaults with `connections` connections, for the suite.
    pub fn with_connections(connections: usize, work_dir: PathBuf) -> ConnectionsArgs {
        ConnectionsArgs {
            connections,
            prospects: 20,
            people: 25,
            producers: 1,
            matchers: 1,
            appliers: 1,
            idle_secs: 60,
            idle_warmup_secs: 30,
            baseline_secs: 15,
            command_timeout_secs: 120,
            full_budget_pairs: 300,
            full_budget_secs: 60,
            isolation_backfill: 1_000_000,
            isolation_editors: 20,
            isolation_rate: 20.0,
            isolation_secs: 60,
            no_failing_crm: false,
            world: None,
            no_single: false,
            out: None,
            work_dir,
        }
    }
}

/// `crmsync bench connections`: measures, prints the figures as Markdown,
/// and writes them as JSON and Markdown when asked.
pub async fn run(config: &Config, args: ConnectionsArgs) -> anyhow::Result<()> {
    let run = measure(config, &args).await?;
    let md = super::connections_report::markdown(&run);
    outln!("\n{md}");
    if let Some(path) = &args.out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&run)?).with_context(|| format!("writing {}", path.display()))?;
        let md_path = path.with_extension("md");
        std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
        outln!("written to {} and {}", path.display(), md_path.display());
    }
    Ok(())
}

/// One run of the scenario, its figures printed as they are measured.
pub async fn measure(config: &Config, args: &ConnectionsArgs) -> anyhow::Result<ConnectionsRun> {
    let base_url = config.database.url.expose_secret().to_owned();
    std::fs::create_dir_all(&args.work_dir)?;
    let logs = std::fs::canonicalize(&args.work_dir)?;
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.prospects <= args.people, "each prospect is linked to one CRM person: --prospects must not exceed --people");
    let machine = Machine::describe();
    let n = args.connections;
    let per = args.prospects + args.people;
    let records = per * i64::try_from(n)?;
    let pairs = args.prospects * i64::try_from(n)?;
    let deadline = Duration::from_secs(args.command_timeout_secs);
    outln!(
        "crmsync bench connections: {n} connections × ({} prospects + {} CRM people), replicas {}/{}/{}; {} cores, {} build, commit {}",
        args.prospects,
        args.people,
        args.producers,
        args.matchers,
        args.appliers,
        machine.cores,
        machine.build,
        machine.commit
    );
    let broker_memory_before_mb = procs::services_memory_mb().get("rabbitmq").copied().unwrap_or(0.0);

    // The world of N connections.
    let (database, prefix) = world(args);
    let prefix = prefix.as_str();
    let setup = Instant::now();
    let (config_n, url, pool) = fresh_world(config, &base_url, &database, prefix).await?;
    // The migrations' own connection would be one more to sync and poll.
    sqlx::query("DELETE FROM connections WHERE id = 'default'").execute(&pool).await.context("removing the default connection")?;
    let ids: Vec<String> = (1..=n).map(connection_id).collect();
    let bar = progress::bar(n as u64, "connections created");
    for (i, id) in ids.iter().enumerate() {
        let tenant = format!("t{:05}", i + 1);
        seed_tenant(&pool, &tenant, args.prospects, args.people).await?;
        let settings = ConnectionSettings {
            ma: SystemEndpoint::sandbox(&tenant),
            crm: SystemEndpoint::sandbox(&tenant),
            ..ConnectionSettings::default()
        };
        connections::save(&pool, id, &settings).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    sqlx::query("ANALYZE crm.leads, ma.prospects").execute(&pool).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();
    outln!("  set up in {setup_seconds:.1} s; services' background CPU over {} s before the tiers start", args.baseline_secs);
    let baseline = Duration::from_secs(args.baseline_secs);
    let before = procs::services_cpu_ms();
    tokio::time::sleep(baseline).await;
    let background: BTreeMap<String, f64> =
        procs::services_cpu_ms().into_iter().map(|(k, v)| (k.clone(), (v - before.get(&k).copied().unwrap_or(0.0)).max(0.0))).collect();
    let baseline_cpu_percent = percent(&background, baseline);

    let metrics = free_port()?;
    let run_name = format!("connections-{n}");
    let tiers = spawn_tiers(args, &url, prefix, &logs, &run_name, metrics)?;
    let measured = async {
        let many = initial_sync(&pool, &tiers, n, pairs, records).await.context("the initial sync of every connection")?;
        outln!("  initial sync of {n} connections: {records} records in {:.1} s, {:.0} records/s", many.seconds, many.records_per_second);

        tokio::time::sleep(Duration::from_secs(args.idle_warmup_secs)).await;
        let window = Duration::from_secs(args.idle_secs);
        let load_before = load_average();
        let (x0, s0) = pg_counters(&pool).await?;
        let sampler = Sampler::start(tiers.watched(), Duration::from_secs(1));
        tokio::time::sleep(window).await;
        let (x1, s1) = pg_counters(&pool).await?;
        let load = (load_before, load_average());
        let (costs, services) = sampler.finish().await;
        let mut idle_cpu_percent = percent(&services, window);
        for c in &costs {
            idle_cpu_percent.insert(c.name.clone(), 100.0 * c.cpu_ms / 1000.0 / window.as_secs_f64());
        }
        let mut memory_mb: BTreeMap<String, f64> = procs::services_memory_mb();
        for w in tiers.watched() {
            memory_mb.insert(w.name.clone(), procs::rss_mb(w.pid).unwrap_or(0.0));
        }
        let xps = (x1 - x0) as f64 / window.as_secs_f64();
        let sps = s0.zip(s1).map(|(a, b)| (b - a) / window.as_secs_f64());
        let lanes = batch_lanes(prefix, &logs, &run_name, args.appliers, deadline).await;

        let env = [
            ("CRMSYNC_DATABASE__URL", url.clone()),
            ("CRMSYNC_AMQP__PREFIX", prefix.to_owned()),
            ("CRMSYNC_REDIS__PREFIX", prefix.to_owned()),
        ];
        let mut commands = Vec::new();
        for cmd in [&["status"][..], &["report", "-c", &ids[0]], &["errors", "list"]] {
            let t = timed(&env, cmd, deadline).await?;
            outln!("  {}: {:.2} s ({})", t.command, t.seconds, t.note);
            commands.push(t);
        }
        let t = scrape(metrics).await;
        outln!("  {}: {:.3} s ({})", t.command, t.seconds, t.note);
        commands.push(t);
        // Before the full budget: that scenario leaves every lane with a
        // backlog that would still be draining.
        let plan = super::isolation::Plan {
            backfill_records: args.isolation_backfill,
            editors: args.isolation_editors,
            rate: args.isolation_rate,
            window: Duration::from_secs(args.isolation_secs),
            failing_crm: !args.no_failing_crm,
        };
        let isolation =
            super::isolation::measure(&pool, &config_n, &logs, &run_name, &ids, &plan).await.context("the isolation scenario")?;
        let full = if args.full_budget_pairs > 0 {
            let tenants: Vec<String> = (1..=n).map(|i| format!("t{i:05}")).collect();
            let window = Duration::from_secs(args.full_budget_secs);
            let limit = Duration::from_secs(900 + (n as u64) * u64::try_from(args.full_budget_pairs)? / 100);
            Some(
                super::full_budget::measure(&pool, &tenants, tiers.watched(), args.full_budget_pairs, window, limit)
                    .await
                    .context("the full-budget scenario")?,
            )
        } else {
            None
        };
        anyhow::Ok((many, idle_cpu_percent, xps, sps, memory_mb, lanes, load, commands, full, isolation))
    }
    .await;
    tiers.stop().await;
    // Cleaned up whatever the measuring did, so a failed run does not leave
    // N quorum queues on the broker.
    let cleaned = clean_up(&config_n, &base_url, &database, pool).await;
    let (many, idle_cpu_percent, xps, sps, memory_mb, batch_lanes, load_average, commands, full_budget, isolation) = measured?;
    // The figures are kept even when the clean-up fails: they are what the
    // run was for, and what is left behind is named in them.
    let mut cleanup_errors = Vec::new();
    if let Err(e) = cleaned {
        crate::out::err_line(format_args!("  clean-up of the N connections' world: {e:#}"));
        cleanup_errors.push(format!("{e:#}"));
    }

    let single = if args.no_single {
        None
    } else {
        Some(single_run(config, &base_url, args, &logs, metrics, &mut cleanup_errors).await.context("the same records in one connection")?)
    };

    let run = ConnectionsRun {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        connections: n,
        prospects_per_connection: args.prospects,
        people_per_connection: args.people,
        replicas: BTreeMap::from([
            ("producer".to_owned(), args.producers),
            ("matcher".to_owned(), args.matchers),
            ("applier".to_owned(), args.appliers),
        ]),
        setup_seconds,
        many,
        single,
        baseline_seconds: baseline.as_secs_f64(),
        baseline_cpu_percent,
        idle_warmup_seconds: args.idle_warmup_secs as f64,
        idle_seconds: args.idle_secs as f64,
        idle_cpu_percent,
        idle_pg_transactions_per_second: xps,
        idle_pg_statements_per_second: sps,
        memory_mb,
        broker_memory_before_mb,
        batch_lanes,
        full_budget,
        load_average,
        commands,
        cleanup_errors,
        not_measured: not_measured(args, isolation.as_ref()),
        isolation,
    };
    Ok(run)
}

/// What this run left out, as the report lists it.
fn not_measured(args: &ConnectionsArgs, isolation: Option<&super::isolation::Isolation>) -> Vec<String> {
    let mut out = Vec::new();
    match isolation {
        None => out.push(format!(
            "isolation (live edits while another connection backfills or loses its CRM): skipped (--isolation-editors {}, \
             --isolation-rate {}, {} connections: it needs a third one to edit)",
            args.isolation_editors, args.isolation_rate, args.connections
        )),
        Some(i) => {
            if i.backfill.is_none() {
                out.push("isolation: a connection backfilling while the others edit (skipped: --isolation-backfill 0)".to_owned());
            }
            if i.failing_crm.is_none() {
                out.push("isolation: a connection whose CRM refuses every call (skipped: --no-failing-crm)".to_owned());
            }
        }
    }
    if args.full_budget_pairs == 0 {
        out.push("all connections at their full budget at once (skipped: --full-budget-pairs 0)".to_owned());
    }
    out
}

/// The same records in one connection: its budget lifted (they arrive as
/// one detection pass far above the batch threshold, so they take the
/// batch lane, which would otherwise pace them at 12,000 an hour).
async fn single_run(
    config: &Config,
    base_url: &str,
    args: &ConnectionsArgs,
    logs: &Path,
    metrics: u16,
    cleanup_errors: &mut Vec<String>,
) -> anyhow::Result<SyncFigures> {
    let (database, prefix) = world(args);
    let prefix = format!("{prefix}1");
    let prefix = prefix.as_str();
    let (config1, url, pool) = fresh_world(config, base_url, &database, prefix).await?;
    let n = i64::try_from(args.connections)?;
    seed_tenant(&pool, "default", args.prospects * n, args.people * n).await?;
    let mut s = connections::load(&pool, "default").await?;
    s.batch_budget_per_hour = 3_600_000_000;
    s.batch_burst = 10_000;
    connections::save(&pool, "default", &s).await?;
    sqlx::query("ANALYZE crm.leads, ma.prospects").execute(&pool).await?;
    let tiers = spawn_tiers(args, &url, prefix, logs, &format!("connections-single-{n}"), metrics)?;
    let records = (args.prospects + args.people) * n;
    let figures = initial_sync(&pool, &tiers, 1, args.prospects * n, records).await;
    tiers.stop().await;
    let cleaned = clean_up(&config1, base_url, &database, pool).await;
    let figures = figures?;
    if let Err(e) = cleaned {
        crate::out::err_line(format_args!("  clean-up of the one connection's world: {e:#}"));
        cleanup_errors.push(format!("{e:#}"));
    }
    outln!("  the same {records} records in one connection: {:.1} s, {:.0} records/s", figures.seconds, figures.records_per_second);
    Ok(figures)
}
