//! `TestApp`: the real tiers against real RabbitMQ, Redis and PostgreSQL, one
//! isolated world per test.
//!
//! Each test gets its own database (copied from a migrated template, so it
//! takes milliseconds), its own broker prefix (queues expire after the test)
//! and its own Redis key prefix. Tier replicas run in the test's process, each
//! with connections of its own, exactly as `crmsync producer|matcher|applier`
//! runs them. Tests wait for the pipeline to be idle (see
//! `crmsync_cli::progress`) instead of sleeping.

use std::time::Duration;

use anyhow::Context;
use crmsync_cli::progress::{Probe, Progress};
use crmsync_domain::csql::{CsUserType, CsqlRecordType};
use crmsync_domain::messages::{self, ChangeBatch};
use crmsync_infra::amqp::{self, Outgoing, Stage, Topology};
use crmsync_infra::broker::Broker;
use crmsync_infra::{CancellationToken, Config, db};
use crmsync_sandbox::ops::{Sandbox, System};
use crmsync_sandbox::schema::{self, ObjectDef};
use crmsync_store::sync_errors::{self, SyncErrorRow};
use crmsync_store::{connections, feeds};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use crmsync_domain::Lane;

pub mod chromium;
pub mod console;
pub mod faults;
pub mod pubsub;

/// An audit entry of `change` at `stage`, in `lane`, for tests that write
/// the log directly.
pub fn audit_entry(change: Uuid, stage: &'static str, lane: &'static str) -> crmsync_store::audit::AuditEntry {
    crmsync_store::audit::AuditEntry {
        change_id: change,
        stage,
        identity_id: None,
        source_side: "ma",
        source_object: "prospect".into(),
        source_id: "1".into(),
        action: "updated".into(),
        writes: serde_json::json!({}),
        detail: None,
        lane,
        field_values: None,
        trace_id: None,
    }
}

/// A whole HTTP/1.0 answer (status line, headers, body) for `path` at
/// `addr`, or nothing when nothing answers: for a tier's health and metrics.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body
}

/// The connected app of [`TestApp::serve_sandbox`].
pub const SANDBOX_CLIENT_ID: &str = "crmsync-test-app";
pub const SANDBOX_CLIENT_SECRET: &str = "test-secret-not-for-production";
pub const SANDBOX_BUSINESS_UNIT: &str = "0Uv000000000042AAA";

/// A tier to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Producer,
    Matcher,
    Applier,
}

/// One running replica.
#[derive(Debug)]
struct Replica {
    tier: Tier,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The path of the `crmsync` binary built for the tests. Cargo only hands it
/// to integration-test targets, hence a macro expanded there.
#[macro_export]
macro_rules! crmsync_exe {
    () => {
        env!("CARGO_BIN_EXE_crmsync-under-test")
    };
}

/// A tier running as a separate process (the `crmsync` binary).
#[derive(Debug)]
pub struct TierProcess {
    pub tier: Tier,
    child: tokio::process::Child,
}

impl TierProcess {
    /// Wraps a started `crmsync <tier>` process.
    pub fn new(tier: Tier, child: tokio::process::Child) -> TierProcess {
        TierProcess { tier, child }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process outright (SIGKILL): no drain, no acks.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM) and waits; true if it exited 0.
    pub async fn terminate(mut self) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        matches!(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await, Ok(Ok(s)) if s.success())
    }
}

/// An isolated crmsync for one test.
#[derive(Debug)]
pub struct TestApp {
    pub config: Config,
    pub pool: PgPool,
    pub sandbox: Sandbox,
    pub db_name: String,
    replicas: Vec<Replica>,
    probe: Probe,
    /// The test's own broker handle; reconnects after a broker restart.
    pub broker: std::sync::Arc<Broker>,
}

fn base_config() -> Config {
    let mut config = Config::load(None).expect("configuration");
    // Tests poll often and hand feeds over quickly.
    config.producer.poll_interval_ms = 100;
    config.producer.lease_ttl_ms = 3_000;
    config.amqp.queue_expires_ms = Some(120_000);
    config.database.max_connections = 4;
    config.database.immediate_connections = 2;
    config
}

/// The template every test database is copied from, named after the
/// migrations it holds so a changed migration makes a new one.
async fn template(admin: &PgPool, base_url: &str) -> anyhow::Result<String> {
    let mut sum: i64 = 0;
    for m in db::MIGRATOR.iter().chain(crmsync_sandbox::migrator().iter()) {
        for b in m.checksum.iter() {
            sum = sum.wrapping_mul(31).wrapping_add(i64::from(*b));
        }
        sum = sum.wrapping_add(m.version);
    }
    let name = format!("crmsync_test_tpl_{:x}", sum as u64);
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1").bind(&name).fetch_optional(admin).await?;
    if exists.is_none() {
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin).await?;
        let url = crmsync_cli::demo::with_database(base_url, &name)?;
        let pool = db::connect_url(&url, 1, Duration::from_secs(10)).await?;
        crmsync_cli::migrate(&pool).await?;
        pool.close().await;
    }
    Ok(name)
}

/// Creates a fresh, migrated database for one test.
async fn fresh_database(base_url: &str) -> anyhow::Result<String> {
    let admin = db::connect_url(base_url, 1, Duration::from_secs(10)).await.context("PostgreSQL (run scripts/services.sh)")?;
    // One test process at a time makes the template and copies it (a copy
    // needs the template to be idle).
    sqlx::query("SELECT pg_advisory_lock(4242)").execute(&admin).await?;
    let result = async {
        let tpl = template(&admin, base_url).await?;
        let name = format!("crmsync_test_{}", Uuid::new_v4().simple());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {tpl}"))).execute(&admin).await?;
        anyhow::Ok(name)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(4242)").execute(&admin).await;
    admin.close().await;
    result
}

impl TestApp {
    /// A fresh world with no tiers running.
    pub async fn spawn() -> TestApp {
        Self::try_spawn().await.expect("test app")
    }

    async fn try_spawn() -> anyhow::Result<TestApp> {
        let mut config = base_config();
        // In-process tiers export nothing; the guard has nothing to flush.
        let _ = crmsync_infra::telemetry::init(&config.telemetry, "crmsync-test");
        let base_url = config.database.url.expose_secret().to_owned();
        let db_name = fresh_database(&base_url).await?;
        config.database.url = crmsync_cli::demo::with_database(&base_url, &db_name)?.into();
        let tag = &db_name["crmsync_test_".len().."crmsync_test_".len() + 12];
        config.amqp.prefix = format!("t{tag}");
        config.redis.prefix = format!("t{tag}");
        let pool = db::connect(&config.database).await?;
        let probe = Probe::new(&config, &pool).await?;
        let broker = Broker::new(&config.amqp, "crmsync-test");
        broker.live().await?;
        let sandbox = Sandbox::new(pool.clone(), "default");
        Ok(TestApp { config, pool, sandbox, db_name, replicas: Vec::new(), probe, broker })
    }

    /// Starts one replica of `tier` in this process, with its own connections.
    pub fn start(&mut self, tier: Tier) {
        let stop = CancellationToken::new();
        let mut config = self.config.clone();
        // One process, one port: the first applier serves health and
        // metrics (the recorder is the process's, so it has every tier's).
        let serves = tier == Tier::Applier && !self.replicas.iter().any(|r| r.tier == Tier::Applier);
        if !serves {
            config.telemetry.http_listen = None;
        }
        let token = stop.clone();
        let task = tokio::spawn(async move {
            match tier {
                Tier::Producer => crmsync_producer::run(config, token).await,
                Tier::Matcher => crmsync_matcher::run(config, token).await,
                Tier::Applier => crmsync_applier::run(config, token).await,
            }
        });
        self.replicas.push(Replica { tier, stop, task });
    }

    /// Starts one replica of `tier` as a separate process, configured like
    /// this test's in-process tiers (through `CRMSYNC_*` variables).
    pub fn spawn_process(&self, exe: &str, tier: Tier) -> TierProcess {
        self.spawn_process_with_env(exe, tier, &[])
    }

    /// As [`TestApp::spawn_process`], with extra environment variables (an
    /// OTLP endpoint, say) for this process only.
    pub fn spawn_process_with_env(&self, exe: &str, tier: Tier, env: &[(&str, &str)]) -> TierProcess {
        let child = self.tier_command(exe, tier).envs(env.iter().copied()).spawn().expect("start a tier process");
        TierProcess { tier, child }
    }

    /// The command that starts `crmsync <tier>` configured like this test's
    /// in-process tiers, for callers that add to it (their own output files).
    pub fn tier_command(&self, exe: &str, tier: Tier) -> tokio::process::Command {
        let name = match tier {
            Tier::Producer => "producer",
            Tier::Matcher => "matcher",
            Tier::Applier => "applier",
        };
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(name)
            .env("CRMSYNC_DATABASE__URL", c.database.url.expose_secret())
            .env("CRMSYNC_DATABASE__MAX_CONNECTIONS", c.database.max_connections.to_string())
            .env("CRMSYNC_DATABASE__IMMEDIATE_CONNECTIONS", c.database.immediate_connections.to_string())
            .env("CRMSYNC_AMQP__PREFIX", &c.amqp.prefix)
            .env("CRMSYNC_AMQP__QUEUE_EXPIRES_MS", c.amqp.queue_expires_ms.unwrap_or(120_000).to_string())
            .env("CRMSYNC_REDIS__PREFIX", &c.redis.prefix)
            .env("CRMSYNC_PRODUCER__POLL_INTERVAL_MS", c.producer.poll_interval_ms.to_string())
            .env("CRMSYNC_PRODUCER__LEASE_TTL_MS", c.producer.lease_ttl_ms.to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .kill_on_drop(true);
        cmd
    }

    /// Starts a producer and the given numbers of matchers and appliers.
    pub fn start_pipeline(&mut self, matchers: usize, appliers: usize) {
        self.start(Tier::Producer);
        for _ in 0..matchers {
            self.start(Tier::Matcher);
        }
        for _ in 0..appliers {
            self.start(Tier::Applier);
        }
    }

    /// Stops every replica of `tier` (drain, then exit) and checks they ended
    /// cleanly.
    pub async fn stop(&mut self, tier: Tier) {
        let (stopping, keep): (Vec<Replica>, Vec<Replica>) = self.replicas.drain(..).partition(|r| r.tier == tier);
        self.replicas = keep;
        for r in &stopping {
            r.stop.cancel();
        }
        for r in stopping {
            r.task.await.expect("replica task").expect("replica ended cleanly");
        }
    }

    /// Waits until the pipeline is idle: every published change finished,
    /// queues empty, no unread changes. Fails the test after 60 s.
    pub async fn settle(&self) -> Progress {
        let ids = [String::from("default")];
        for r in &self.replicas {
            assert!(!r.task.is_finished(), "a {:?} replica died", r.tier);
        }
        self.probe.wait_idle(&ids, Duration::from_secs(60), |_| {}).await.expect("pipeline settles")
    }

    /// `n` leads in the sandbox CRM and, for each, a prospect with the same
    /// email (`<prefix><i>@<domain>`, i from 1) and last name, and no title
    /// (the leads' is `T<i>`): pairs the matcher links on its first pass.
    pub async fn seed_pairs(&self, n: i64, prefix: &str, domain: &str) {
        sqlx::query(
            "INSERT INTO crm.leads (tenant, last_name, company, email, title, last_modified_by, created_by) \
             SELECT 'default', 'Lead ' || g, 'Acme', $2 || g || '@' || $3, 'T' || g, 'x', 'x' FROM generate_series(1, $1) g",
        )
        .bind(n)
        .bind(prefix)
        .bind(domain)
        .execute(&self.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO ma.prospects (tenant, email, last_name, last_modified_by) \
             SELECT 'default', $2 || g || '@' || $3, 'Lead ' || g, 'x' FROM generate_series(1, $1) g",
        )
        .bind(n)
        .bind(prefix)
        .bind(domain)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Changes a connection setting as `crmsync connection set` does.
    pub async fn set(&self, key: &str, value: &str) {
        let mut s = connections::load(&self.pool, "default").await.unwrap();
        s.set(key, value, chrono::Utc::now()).unwrap();
        connections::save(&self.pool, "default", &s).await.unwrap();
    }

    /// A sales user in both systems: (MA user id, CRM user id).
    pub async fn sales_user(&self, name: &str) -> (i64, String) {
        let email = format!("{}@sales.example", name.to_lowercase());
        let crm = self.sandbox.create_crm_user(name, &email, true, true).await.unwrap();
        let ma = self.sandbox.create_ma_user(&email, name, "Sales", Some(&crm)).await.unwrap();
        (ma, crm)
    }

    fn pairs(values: &[(&str, &str)]) -> Vec<(String, String)> {
        values.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    pub async fn create(&self, def: &ObjectDef, values: &[(&str, &str)]) -> String {
        self.sandbox.create(def, &Self::pairs(values), None).await.unwrap()
    }

    pub async fn update(&self, def: &ObjectDef, id: &str, values: &[(&str, &str)]) {
        self.sandbox.update(def, id, &Self::pairs(values), None).await.unwrap();
    }

    pub async fn create_prospect(&self, values: &[(&str, &str)]) -> i64 {
        self.create(&schema::PROSPECT, values).await.parse().unwrap()
    }

    pub async fn create_lead(&self, values: &[(&str, &str)]) -> String {
        self.create(&schema::LEAD, values).await
    }

    pub async fn show(&self, def: &ObjectDef, id: &str) -> Value {
        self.sandbox.show(def, id).await.unwrap()
    }

    pub async fn prospect(&self, id: i64) -> Value {
        self.show(&schema::PROSPECT, &id.to_string()).await
    }

    /// Rows of `table` whose email is `email` (any case, any spaces).
    pub async fn with_email(&self, table: &str, email: &str) -> Vec<Value> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT to_jsonb(t) FROM {table} t WHERE lower(btrim(email)) = lower(btrim($1)) ORDER BY id"
        )))
        .bind(email)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn sync_errors(&self) -> Vec<SyncErrorRow> {
        sync_errors::list_open(&self.pool, "default", 1000).await.unwrap()
    }

    /// Changes published by the producer so far, per feed name.
    pub async fn published(&self) -> Vec<(String, i64, i64)> {
        feeds::all(&self.pool, "default").await.unwrap().into_iter().map(|f| (f.feed, f.published, f.suppressed)).collect()
    }

    /// Waits until `n` records in all have been applied through the batch
    /// lane, then for the pipeline to be idle. A re-sync (of a mapping or
    /// scope change) is not a change the producer published, so the idle
    /// probe's counts alone do not wait for it.
    pub async fn batch_applied(&self, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let done = self.batch_applied_so_far().await;
            if done >= n {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{done} of {n} re-synced records applied through the batch lane");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.settle().await;
    }

    /// Records applied through the batch lane so far (apply-stage entries).
    pub async fn batch_applied_so_far(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE connection_id = 'default' AND stage = 'apply' AND lane = 'batch'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn identity_status(&self, prospect_id: i64) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM identities WHERE prospect_id = $1")
            .bind(prospect_id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    /// Publishes raw bytes to a stage's queue, as a misbehaving producer would.
    pub async fn publish_raw(&self, stage: Stage, lane: Lane, body: Vec<u8>) {
        self.broker
            .publish_confirmed(vec![Outgoing {
                routing_key: Topology::routing_key(stage, lane),
                body,
                message_id: Uuid::new_v4().to_string(),
                headers: vec![("x-connection-id".into(), "default".into())],
                links: vec![],
            }])
            .await
            .unwrap();
    }

    /// Declares a custom object to mirror (R6).
    pub async fn declare_custom(&self, name: &str, fields: &[&str], lookup_field: &str, lookup_object: crmsync_domain::CrmObject) {
        let mut s = connections::load(&self.pool, "default").await.unwrap();
        s.declare_custom_object(crmsync_domain::mirror::CustomObject {
            name: name.into(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            lookup_field: lookup_field.into(),
            lookup_object,
        })
        .unwrap();
        connections::save(&self.pool, "default", &s).await.unwrap();
    }

    /// A prospect as an MA user sees it: fields, prospect account,
    /// opportunities, custom objects.
    pub async fn view(&self, prospect: i64) -> Value {
        self.sandbox.prospect_view(prospect).await.unwrap()
    }

    /// The CRM ids of the opportunities a prospect sees.
    pub async fn opportunities_seen(&self, prospect: i64) -> Vec<String> {
        let v = self.view(prospect).await;
        v["opportunities"].as_array().unwrap().iter().map(|o| o["crm_opportunity_id"].as_str().unwrap().to_owned()).collect()
    }

    /// How many mirrors of a kind the MA holds.
    pub async fn mirror_count(&self, table: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&self.pool).await.unwrap()
    }

    /// Messages in a stage's dead-letter queue.
    pub async fn dead_letters(&self, stage: Stage) -> u32 {
        self.broker.depth(&self.broker.topology().dead_queue(stage)).await.unwrap().unwrap_or(0)
    }

    /// Messages ready in a stage's work queue of `lane` (the immediate lane's
    /// is shared by every connection).
    pub async fn queued(&self, stage: Stage, lane: Lane) -> u32 {
        self.broker.depth(&self.broker.topology().queue(stage, lane)).await.unwrap().unwrap_or(0)
    }

    /// Publishes a change batch to the matcher.
    pub async fn publish_changes(&self, batch: &ChangeBatch) {
        self.publish_raw(Stage::Match, batch.lane, messages::encode(batch)).await;
    }

    /// The MA admin's and the CRM admin's user ids.
    pub async fn admins(&self) -> (String, String) {
        (self.sandbox.admin(System::Ma).await.unwrap(), self.sandbox.admin(System::Crm).await.unwrap())
    }

    /// A CS user, tied to a new CRM user (with or without API access) when
    /// `crm_api` says so: (CS user id, CRM user id).
    pub async fn cs_user(&self, name: &str, user_type: CsUserType, crm_api: Option<bool>) -> (i64, Option<String>) {
        let email = format!("{}@cs.example", name.to_lowercase().replace(' ', "."));
        let crm = match crm_api {
            Some(api) => Some(self.sandbox.create_crm_user(name, &email, true, api).await.unwrap()),
            None => None,
        };
        let cs = self.sandbox.create_cs_user(name, &email, user_type, crm.as_deref(), false, false).await.unwrap();
        (cs, crm)
    }

    /// A CSM saves a new CSQL.
    pub async fn create_csql(&self, kind: CsqlRecordType, as_user: i64, owner: Option<i64>, values: &[(&str, &str)]) -> i64 {
        self.sandbox.create_csql(kind, as_user, owner, &Self::pairs(values)).await.unwrap()
    }

    /// A CSQL as the CS platform shows it, with its sync status.
    pub async fn csql(&self, kind: CsqlRecordType, id: i64) -> Value {
        self.show(crmsync_sandbox::cs::def_of(kind), &id.to_string()).await
    }

    /// The CRM records made from CSQL `id` (by crmsync's external id).
    pub async fn crm_records_of_csql(&self, kind: CsqlRecordType, id: i64) -> Vec<Value> {
        let table = match kind {
            CsqlRecordType::Lead => "crm.leads",
            CsqlRecordType::Opportunity => "crm.opportunities",
        };
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT to_jsonb(t) FROM {table} t WHERE crmsync_id = $1")))
            .bind(format!("csql:{}:{id}", kind.as_str()))
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Changes a connection setting through its guard, as `crmsync
    /// connection set` does; returns what it printed as changing with it.
    pub async fn set_guarded(&self, key: &str, value: &str, confirmed: bool) -> anyhow::Result<Vec<String>> {
        crmsync_cli::connection_cmd::set(&self.config, &self.pool, "default", key, value, confirmed).await
    }

    /// The `crmsync` command configured for this test's database, broker
    /// prefix and Redis prefix, for callers that add to it.
    pub fn cli_command(&self, exe: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.env("CRMSYNC_DATABASE__URL", self.config.database.url.expose_secret())
            .env("CRMSYNC_AMQP__PREFIX", &self.config.amqp.prefix)
            // Queues are declared with the test's arguments, or the broker
            // refuses the declaration as inequivalent.
            .env("CRMSYNC_AMQP__QUEUE_EXPIRES_MS", self.config.amqp.queue_expires_ms.unwrap_or(120_000).to_string())
            .env("CRMSYNC_REDIS__PREFIX", &self.config.redis.prefix)
            .kill_on_drop(true);
        cmd
    }

    /// Runs `crmsync` (the binary) against this test's database: (exit
    /// success, stdout, stderr).
    pub async fn run_cli(&self, exe: &str, args: &[&str]) -> (bool, String, String) {
        self.run_cli_with(exe, args, &[], None).await
    }

    /// As [`TestApp::run_cli`], with extra environment variables and, when
    /// given, this text on its standard input.
    pub async fn run_cli_with(&self, exe: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.cli_command(exe);
        cmd.args(args).envs(env.iter().copied()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
        let mut child = cmd.spawn().expect("run crmsync");
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(text.as_bytes()).await.expect("write crmsync's standard input");
        }
        let out = child.wait_with_output().await.expect("run crmsync");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs `crmsync` with its standard output closed before it writes a
    /// byte, as `crmsync ... | head -0` would: (exit status, stderr).
    pub async fn run_cli_into_closed_pipe(&self, exe: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
        let mut child = self
            .cli_command(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run crmsync");
        drop(child.stdout.take());
        let out = child.wait_with_output().await.expect("run crmsync");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Serves this test's sandbox over HTTP (`crmsync sandbox serve`) on a
    /// free loopback port; returns its URL. Stops when `stop` is cancelled.
    pub async fn serve_sandbox(&self, limits: crmsync_sandbox_server::Limits, stop: CancellationToken) -> String {
        self.serve_sandbox_with(Self::sandbox_server_config(limits), stop).await
    }

    /// The configuration [`TestApp::serve_sandbox`] serves with: the test
    /// app's credentials, no JWT certificate.
    pub fn sandbox_server_config(limits: crmsync_sandbox_server::Limits) -> crmsync_sandbox_server::ServerConfig {
        crmsync_sandbox_server::ServerConfig {
            public_url: String::new(),
            crm_tenant: "default".into(),
            ma_tenant: "default".into(),
            client_id: SANDBOX_CLIENT_ID.into(),
            client_secret: SANDBOX_CLIENT_SECRET.into(),
            jwt_public_key_pem: None,
            business_unit_id: SANDBOX_BUSINESS_UNIT.into(),
            limits,
        }
    }

    /// Logs in to a sandbox server with the test app's client credentials,
    /// as any OAuth client would; returns the token answer (`access_token`,
    /// `instance_url`...).
    pub async fn sandbox_token(url: &str) -> Value {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resp = reqwest::Client::new()
            .post(format!("{url}/services/oauth2/token"))
            .form(&[("grant_type", "client_credentials"), ("client_id", SANDBOX_CLIENT_ID), ("client_secret", SANDBOX_CLIENT_SECRET)])
            .send()
            .await
            .expect("reach the sandbox server");
        assert!(resp.status().is_success(), "login refused: {}", resp.status());
        resp.json().await.expect("a token answer")
    }

    /// Writes a secret into a file of this test's own (removed by
    /// [`TestApp::cleanup`] with the rest of the test's temporary files);
    /// returns its path, as an endpoint's `{"file": ...}` takes it.
    pub fn secret_file(&self, name: &str, content: &str) -> String {
        let path = std::env::temp_dir().join(format!("{}.{name}", self.db_name));
        std::fs::write(&path, content).expect("write a secret file");
        path.to_string_lossy().into_owned()
    }

    /// Points the connection's CRM at the sandbox server at `url` as a
    /// Salesforce org, logging in with client credentials (the secret in a
    /// file); `extra` keys are added to the endpoint (`bulk_threshold`...).
    pub async fn use_salesforce(&self, url: &str, extra: Value) {
        let secret = self.secret_file("client-secret", &format!("{SANDBOX_CLIENT_SECRET}\n"));
        let oauth = serde_json::json!({"login_url": url, "flow": "client_credentials", "client_id": SANDBOX_CLIENT_ID,
                                       "client_secret": {"file": secret}});
        self.use_salesforce_with(oauth, extra).await;
    }

    /// Points the connection's CRM at a Salesforce endpoint with `oauth`.
    /// Change events are off (the feeds poll every second) unless `extra`
    /// turns them on: see [`TestApp::use_salesforce_events`].
    pub async fn use_salesforce_with(&self, oauth: Value, extra: Value) {
        let mut endpoint = serde_json::json!({"kind": "salesforce", "oauth": oauth, "overlap_secs": 3, "usage_probe_secs": 1,
                                              "poll_interval_secs": 1, "poll_max_secs": 1, "change_events": false});
        if let (Some(e), Some(x)) = (endpoint.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        self.set("crm", &endpoint.to_string()).await;
    }

    /// As [`TestApp::use_salesforce`], with the org's change events from
    /// the Pub/Sub API at `pubsub_url` and polling effectively off: a feed
    /// with live events sweeps once an hour (one that falls back to
    /// polling polls every second).
    pub async fn use_salesforce_events(&self, url: &str, pubsub_url: &str, extra: Value) {
        let mut endpoint = serde_json::json!({"change_events": true, "pubsub_url": pubsub_url, "sweep_secs": 3600});
        if let (Some(e), Some(x)) = (endpoint.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        self.use_salesforce(url, endpoint).await;
    }

    /// Serves this test's sandbox with `config`; returns its URL.
    pub async fn serve_sandbox_with(&self, config: crmsync_sandbox_server::ServerConfig, stop: CancellationToken) -> String {
        let server =
            crmsync_sandbox_server::Server::bind(config, "127.0.0.1:0".parse().unwrap(), self.pool.clone()).await.expect("sandbox server");
        let url = server.url().to_owned();
        tokio::spawn(server.serve(stop));
        url
    }

    /// Serves this test's sandbox over HTTP and the Pub/Sub API (gRPC),
    /// each on a free loopback port; returns (the HTTP URL, the Pub/Sub URL).
    pub async fn serve_sandbox_pubsub(&self, limits: crmsync_sandbox_server::Limits, stop: CancellationToken) -> (String, String) {
        let mut server =
            crmsync_sandbox_server::Server::bind(Self::sandbox_server_config(limits), "127.0.0.1:0".parse().unwrap(), self.pool.clone())
                .await
                .expect("sandbox server");
        server.bind_pubsub("127.0.0.1:0".parse().unwrap()).await.expect("the Pub/Sub listener");
        let urls = (server.url().to_owned(), server.pubsub_url().expect("bound").to_owned());
        tokio::spawn(server.serve(stop));
        urls
    }

    /// Stops everything and drops the test's database and queues.
    pub async fn cleanup(mut self) {
        for tier in [Tier::Producer, Tier::Matcher, Tier::Applier] {
            self.stop(tier).await;
        }
        self.pool.close().await;
        if let Ok(ch) = async { self.broker.live().await?.conn.create_channel().await.map_err(amqp::AmqpError::from) }.await {
            let _ = Topology::new(&self.config.amqp).delete_all(&ch).await;
        }
        let base = base_config();
        if let Ok(admin) = db::connect_url(base.database.url.expose_secret(), 1, Duration::from_secs(10)).await {
            let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name))).execute(&admin).await;
        }
        // The test's secret files.
        let prefix = format!("{}.", self.db_name);
        if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Waits (up to 30 s) until `check` holds: for what no idle probe can see
/// coming (a resumed connection's next poll, a record sent again by hand).
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
