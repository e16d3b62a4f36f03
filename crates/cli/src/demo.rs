//! `crmsync demo`: the whole engine on the embedded sandbox, end to end.
//!
//! 1. creates a fresh database (and broker and Redis prefixes of its own),
//! 2. seeds the sandbox with the realistic data set,
//! 3. starts the tiers as separate processes (two matchers and two appliers
//!    by default) and shows progress until the pipeline is idle,
//! 4. makes live changes a user would make: assigns pending prospects, edits
//!    linked pairs on both sides, turns on auto-creation and adds CRM leads,
//!    converts, deletes and restores leads, changes emails and mirrors,
//! 5. saves CSQLs in the CS platform under each sync option (see `csql`),
//! 6. sends a burst over the threshold to the batch lane and shows it drain,
//! 7. stops the tiers with SIGTERM (they drain and exit 0),
//! 8. prints a report that checks both sides against each other,
//! 9. and the admin console's address with the sign-in it made: the
//!    console serves beside the tiers all along (`--keep-console` keeps it
//!    serving after the report, until Ctrl-C).
//!
//! With `--http` the engine reaches the sandbox through `crmsync sandbox
//! serve` and the real connectors instead (see `http`).

mod csql;
pub(crate) mod http;

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crmsync_infra::{Config, db};
use crmsync_sandbox::ops::Sandbox;
use crmsync_sandbox::{SandboxFactory, schema, seed};
use crmsync_store::connections;
use crmsync_systems::allowance::ApiAllowances;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::process::{Child, Command};

use crate::args::DemoArgs;
use crate::progress::{Probe, Progress};
use crate::report;

/// The connection the demo syncs.
const CONNECTION: &str = "default";
/// The batch budget during the demo's initial load (records an hour).
const INITIAL_LOAD_BUDGET: u32 = 3_600_000;
/// The batch budget while the demo shows a burst draining (10 a second).
const BURST_BUDGET: u32 = 36_000;
/// Where the first applier serves its metrics during the demo.
const METRICS_ADDR: &str = "127.0.0.1:9464";

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let (head, tail) = url.split_at(scheme_end);
    let (authority, rest) = match tail.find('/') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    Ok(format!("{head}{authority}/{name}{query}"))
}

/// Drops and creates database `name` on the server `url` points at.
pub async fn recreate_database(url: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        bail!("database name {name:?}: use lower-case letters, digits and _");
    }
    let admin = db::connect_url(url, 1, Duration::from_secs(10)).await.context("connecting to PostgreSQL")?;
    // FORCE ends the sessions of our own role (tiers of an earlier run left
    // running), but refuses while an autovacuum worker, a process of no role,
    // is analysing the database: after a large run it often is. A plain
    // DROP stops autovacuum workers itself, so that is the second try.
    let mut attempt = 0;
    loop {
        let forced = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&admin).await;
        let Err(refused) = forced else { break };
        if sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await.is_ok() {
            break;
        }
        attempt += 1;
        if attempt == 10 {
            return Err(refused).with_context(|| format!("dropping database {name}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
    admin.close().await;
    Ok(())
}

/// A tier running as a child process.
struct Tier {
    name: String,
    child: Child,
}

fn spawn(exe: &Path, tier: &str, n: usize, env: &[(&str, String)], logs: &Path) -> anyhow::Result<Tier> {
    let name = format!("{tier}-{n}");
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.arg(tier).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("CRMSYNC_PRODUCER__REPLICA_ID", &name);
    Ok(Tier { name, child: cmd.spawn().with_context(|| format!("starting {tier}"))? })
}

/// The admin console served beside the tiers, with the admin made for it.
struct DemoConsole {
    process: Tier,
    url: String,
    user: &'static str,
    password: String,
}

/// The console's default address when it is free (a bookmark keeps
/// working from one demo to the next), else any free port.
fn console_addr() -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:8790").or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))?;
    listener.local_addr()
}

/// Makes an admin with a fresh random password in the demo's database and
/// starts `crmsync console` on it; returns once it answers.
async fn start_console(exe: &Path, env: &[(&str, String)], logs: &Path, pool: &PgPool) -> anyhow::Result<DemoConsole> {
    use crmsync_console::users::{self, Role};
    let user = "demo";
    let password = users::random_token();
    users::add(pool, &crmsync_store::admin_audit::Actor { name: "demo".into(), via: "cli" }, user, Role::Admin, &password)
        .await
        .context("creating the demo's console user")?;
    let addr = console_addr()?;
    let mut env = env.to_vec();
    env.push(("CRMSYNC_CONSOLE__LISTEN", addr.to_string()));
    let mut process = spawn(exe, "console", 1, &env, logs)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = process.child.try_wait()? {
            bail!("the console exited early ({status}); see {}", logs.join("console-1.log").display());
        }
        if Instant::now() > deadline {
            bail!("the console did not listen at {addr} within 15 s; see {}", logs.join("console-1.log").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(DemoConsole { process, url: format!("http://{addr}"), user, password })
}

fn check_alive(tiers: &mut [Tier], logs: &Path) -> anyhow::Result<()> {
    for t in tiers {
        if let Some(status) = t.child.try_wait()? {
            bail!("{} exited early ({status}); see {}", t.name, logs.join(format!("{}.log", t.name)).display());
        }
    }
    Ok(())
}

/// Asks every tier to stop (SIGTERM) and waits for them to drain and exit.
async fn stop(tiers: &mut [Tier]) -> anyhow::Result<Vec<(String, String)>> {
    for t in tiers.iter() {
        if let Some(pid) = t.child.id() {
            // `kill` keeps this crate free of unsafe signal calls.
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    let mut out = Vec::new();
    for t in tiers.iter_mut() {
        let status = match tokio::time::timeout(Duration::from_secs(30), t.child.wait()).await {
            Ok(Ok(s)) if s.success() => "exited 0".to_owned(),
            Ok(Ok(s)) => format!("exited with {s}"),
            Ok(Err(e)) => format!("unknown ({e})"),
            Err(_) => {
                let _ = t.child.kill().await;
                "killed after 30 s".to_owned()
            }
        };
        out.push((t.name.clone(), status));
    }
    Ok(out)
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("  {spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} changes  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn settle(probe: &Probe, tiers: &mut [Tier], logs: &Path, timeout: Duration) -> anyhow::Result<Progress> {
    let bar = bar();
    let start = Instant::now();
    let ids = [CONNECTION.to_owned()];
    let result = loop {
        check_alive(tiers, logs)?;
        let p = probe
            .wait_idle(&ids, Duration::from_secs(2), |p| {
                bar.set_length(p.published.max(0) as u64);
                bar.set_position(p.finished.max(0).min(p.published.max(0)) as u64);
                let rate = p.finished as f64 / start.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!("{rate:.0}/s, {} queued", p.queued));
            })
            .await;
        match p {
            Ok(p) => break p,
            Err(_) if start.elapsed() < timeout => continue,
            Err(e) => return Err(e),
        }
    };
    bar.finish_and_clear();
    Ok(result)
}

/// Live changes after the first sync, as users of both systems would make them.
async fn live_changes(pool: &PgPool, sb: &Sandbox) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    // R3: assign pending prospects to sales users who have an active CRM user.
    let users: Vec<i64> = sqlx::query_scalar(
        "SELECT u.id FROM ma.users u JOIN crm.users c ON c.tenant = u.tenant AND left(c.id, 15) = left(u.crm_user_id, 15) \
         WHERE u.tenant = 'default' AND c.is_active AND NOT u.is_integration AND u.email LIKE '%sales.example' ORDER BY u.id",
    )
    .fetch_all(pool)
    .await?;
    let pending: Vec<i64> = sqlx::query_scalar(
        "SELECT prospect_id FROM identities WHERE connection_id = $1 AND status = 'pending_assignment' ORDER BY prospect_id LIMIT 40",
    )
    .bind(CONNECTION)
    .fetch_all(pool)
    .await?;
    for (i, p) in pending.iter().enumerate() {
        sb.assign(*p, Some(users[i % users.len()])).await?;
    }
    done.push(format!("assigned {} pending prospects to sales users (each creates one lead)", pending.len()));
    // R2: edits on both sides of linked pairs: MA first, the CRM a moment later.
    let pairs: Vec<(i64, String)> = sqlx::query_as(
        "SELECT prospect_id, crm_id FROM identities WHERE connection_id = $1 AND status = 'linked' AND crm_object = 'lead' ORDER BY prospect_id LIMIT 20",
    )
    .bind(CONNECTION)
    .fetch_all(pool)
    .await?;
    for (p, lead) in &pairs {
        sb.update(
            &schema::PROSPECT,
            &p.to_string(),
            &[("jobTitle".into(), "Head of Demo (MA)".into()), ("company".into(), "Edited In MA".into())],
            None,
        )
        .await?;
        sb.update(&schema::LEAD, lead, &[("Title".into(), "Head of Demo (CRM)".into())], None).await?;
    }
    done.push(format!(
        "edited {} linked pairs on both sides: job title (most recent wins: the CRM's) and company in the MA (the CRM wins: reverted)",
        pairs.len()
    ));
    // R3: auto-creation is not retroactive: only leads created after it is on.
    let mut settings = connections::load(pool, CONNECTION).await?;
    settings.set("auto_create_prospects", "true", chrono::Utc::now())?;
    connections::save(pool, CONNECTION, &settings).await?;
    for i in 0..15 {
        sb.create(
            &schema::LEAD,
            &[
                ("LastName".into(), format!("Newlead{i}")),
                ("FirstName".into(), "Demo".into()),
                ("Company".into(), "Autocreate Inc".into()),
                ("Email".into(), format!("demo.newlead{i}@autocreate.example")),
            ],
            None,
        )
        .await?;
    }
    done.push(
        "turned auto_create_prospects on and created 15 CRM leads (each creates one prospect; older CRM-only leads stay as they were)"
            .into(),
    );
    done.extend(lifecycle_changes(pool, sb).await?);
    Ok(done)
}

/// Lifecycle and mirror changes (R4-R6, R8).
async fn lifecycle_changes(pool: &PgPool, sb: &Sandbox) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let linked_leads: Vec<(i64, String)> = sqlx::query_as(
        "SELECT prospect_id, crm_id FROM identities WHERE connection_id = $1 AND status = 'linked' AND crm_object = 'lead' \
         ORDER BY prospect_id DESC LIMIT 16",
    )
    .bind(CONNECTION)
    .fetch_all(pool)
    .await?;
    let (convert, rest) = linked_leads.split_at(linked_leads.len().min(5));
    for (_, lead) in convert {
        sb.convert_lead(lead, None, Some("Demo conversion")).await?;
    }
    done.push(format!(
        "converted {} linked leads into contacts, accounts and opportunities (their prospects follow the contacts)",
        convert.len()
    ));
    let (delete, rest) = rest.split_at(rest.len().min(6));
    for (_, lead) in delete {
        sb.set_deleted(&schema::LEAD, lead, true).await?;
    }
    for (_, lead) in delete.iter().take(3) {
        sb.set_deleted(&schema::LEAD, lead, false).await?;
    }
    done.push(format!(
        "deleted {} linked leads in the CRM (their prospects go to the recycle bin) and restored {} of them",
        delete.len(),
        delete.len().min(3)
    ));
    for (p, _) in rest.iter().take(5) {
        sb.update(&schema::PROSPECT, &p.to_string(), &[("email".into(), format!("moved.{p}@newdomain.example"))], None).await?;
    }
    done.push(format!("changed the email of {} linked prospects (the leads follow; no second record)", rest.len().min(5)));
    // R4: an MA edit of a prospect account is overwritten by the next CRM change.
    let accounts: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, crm_account_id FROM ma.prospect_accounts WHERE tenant = 'default' ORDER BY id LIMIT 3")
            .fetch_all(pool)
            .await?;
    for (id, crm) in &accounts {
        sb.update(&schema::PROSPECT_ACCOUNT, &id.to_string(), &[("name".into(), "Edited in the MA".into())], None).await?;
        sb.update(&schema::ACCOUNT, crm, &[("Industry".into(), "Manufacturing".into())], None).await?;
    }
    done.push(format!("edited {} prospect accounts in the MA, then their accounts in the CRM (the CRM's values win back)", accounts.len()));
    // R5: a role makes an opportunity visible; removing one hides it.
    let roleless: Option<String> = sqlx::query_scalar(
        "SELECT o.id FROM crm.opportunities o WHERE o.tenant = 'default' AND NOT EXISTS \
         (SELECT 1 FROM crm.opportunity_contact_roles r WHERE r.opportunity_id = o.id) ORDER BY o.id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let synced_contact: Option<String> = sqlx::query_scalar(
        "SELECT crm_id FROM identities WHERE connection_id = $1 AND status = 'linked' AND crm_object = 'contact' ORDER BY prospect_id LIMIT 1",
    )
    .bind(CONNECTION)
    .fetch_optional(pool)
    .await?;
    if let (Some(o), Some(c)) = (roleless, synced_contact) {
        sb.create(&schema::CONTACT_ROLE, &[("OpportunityId".into(), o.clone()), ("ContactId".into(), c)], None).await?;
        done.push(format!("gave opportunity {o} its first contact role, on a synced contact (it appears on that prospect)"));
    }
    let role: Option<String> =
        sqlx::query_scalar("SELECT id FROM crm.opportunity_contact_roles WHERE tenant = 'default' AND NOT is_deleted ORDER BY id LIMIT 1")
            .fetch_optional(pool)
            .await?;
    if let Some(r) = role {
        sb.set_deleted(&schema::CONTACT_ROLE, &r, true).await?;
        done.push(format!("removed contact role {r} (its opportunity leaves that contact's prospect)"));
    }
    Ok(done)
}

/// Records in the demo's burst (more than the 400 threshold).
const BURST_SIZE: i64 = 450;

/// Reads the first applier's metrics (plain HTTP, loopback).
async fn scrape(prefix: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(METRICS_ADDR).await else { return vec![] };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body).await;
    body.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
}

/// R7 on show: a burst over the threshold goes to the batch lane and drains
/// at the budget's pace, with its backlog and ETA as an operator sees them.
async fn burst(pool: &PgPool, probe: &Probe, tiers: &mut [Tier], logs: &Path, timeout: Duration) -> anyhow::Result<()> {
    let mut settings = connections::load(pool, CONNECTION).await?;
    settings.batch_budget_per_hour = BURST_BUDGET;
    connections::save(pool, CONNECTION, &settings).await?;
    let admin: String = sqlx::query_scalar("SELECT id::text FROM ma.users WHERE tenant = 'default' AND email = 'admin@default.ma.invalid'")
        .fetch_one(pool)
        .await?;
    let edited = sqlx::query(
        "UPDATE ma.prospects p SET job_title = 'Burst ' || p.id, last_modified_by = $1 \
         FROM (SELECT prospect_id FROM identities WHERE connection_id = $2 AND status = 'linked' ORDER BY prospect_id LIMIT $3) i \
         WHERE p.id = i.prospect_id",
    )
    .bind(&admin)
    .bind(CONNECTION)
    .bind(BURST_SIZE)
    .execute(pool)
    .await?
    .rows_affected();
    if edited <= settings.batch_threshold as u64 {
        // A small --scale has too few synced prospects for a burst.
        outln!(
            "   only {edited} synced prospects at this scale: not over the batch threshold of {}, so they go to the immediate lane \
             (run the demo at --scale 0.3 or more to see the batch lane)",
            settings.batch_threshold
        );
        settle(probe, tiers, logs, timeout).await?;
        return Ok(());
    }
    let bar = ProgressBar::new(edited);
    bar.set_style(
        ProgressStyle::with_template("  {spinner} [{elapsed_precise}] {bar:40.yellow/blue} {pos}/{len} batch-lane records  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let mut first_eta = None;
    let mut shown_metrics = false;
    loop {
        check_alive(tiers, logs)?;
        let f = crmsync_applier::batch_figures(pool, CONNECTION).await?;
        if f.backlog > 0 && first_eta.is_none() {
            first_eta = Some((f.backlog, f.eta));
        }
        bar.set_position(edited.saturating_sub(f.backlog as u64));
        bar.set_message(format!("backlog {} · {}/hour · done in {}", f.backlog, f.budget_per_hour, crmsync_ops::status::human(f.eta)));
        if f.backlog > 50 && !shown_metrics && started.elapsed() > Duration::from_secs(6) {
            shown_metrics = true;
            bar.suspend(|| crate::out::line(format_args!("   the same figures as Prometheus metrics (http://{METRICS_ADDR}/metrics):")))?;
            for line in scrape("crmsync_batch_").await {
                bar.suspend(|| crate::out::line(format_args!("     {line}")))?;
            }
        }
        if first_eta.is_some() && probe.measure(CONNECTION).await?.idle() {
            break;
        }
        anyhow::ensure!(started.elapsed() < timeout, "the burst did not drain within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    let drained = started.elapsed();
    if let Some((backlog, eta)) = first_eta {
        outln!(
            "   backlog of {backlog} drained in {:.1} s; the first ETA said {:.1} s ({:+.0}%)",
            drained.as_secs_f64(),
            eta.as_secs_f64(),
            100.0 * (eta.as_secs_f64() - drained.as_secs_f64()) / drained.as_secs_f64()
        );
    }
    Ok(())
}

pub async fn run(config: &Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let base_url = config.database.url.expose_secret().to_owned();
    let url = with_database(&base_url, &args.database)?;
    let prefix = "crmsync-demo".to_owned();
    outln!("crmsync demo: database {}, broker and Redis prefix {prefix}", args.database);

    recreate_database(&base_url, &args.database).await?;
    let mut config = config.clone();
    config.database.url = url.clone().into();
    config.sandbox.database_url = None;
    config.amqp.prefix = prefix.clone();
    config.redis.prefix = prefix.clone();
    let pool = db::connect(&config.database).await?;
    crate::migrate(&pool).await?;
    {
        // Queues of an earlier demo run would hold stale messages.
        let conn = crmsync_infra::amqp::connect(&config.amqp, "crmsync-demo").await.context("connecting to RabbitMQ")?;
        let channel = conn.create_channel().await?;
        crmsync_infra::amqp::Topology::new(&config.amqp).delete_all(&channel).await?;
        let _ = conn.close(200, "clean".into()).await;
    }

    outln!("1. Seeding the sandbox (scale {})", args.scale);
    let sb = Sandbox::new(pool.clone(), "default");
    let s = seed::seed(&sb, &seed::SeedOptions { scale: args.scale, seed: 42 }).await?;
    // R6: the seeded custom object is mirrored read-only.
    let mut settings = connections::load(&pool, CONNECTION).await?;
    settings.declare_custom_object(crmsync_domain::mirror::CustomObject {
        name: seed::SUBSCRIPTION.into(),
        fields: vec!["Plan__c".into(), "Seats__c".into()],
        lookup_field: "Contact__c".into(),
        lookup_object: crmsync_domain::CrmObject::Contact,
    })?;
    // The first load goes to the batch lane (it is far over 400 changes); an
    // admin lifts the budget for it, as one would for an initial sync.
    settings.batch_budget_per_hour = INITIAL_LOAD_BUDGET;
    connections::save(&pool, CONNECTION, &settings).await?;
    outln!(
        "   MA: {} prospects ({} with their CRM id, {} of them 15-character; {} sharing only an email; {} new and assigned; {} unassigned; {} malformed; {} ambiguous)",
        s.prospects,
        s.linked_by_id,
        s.ids_15_char,
        s.linked_by_email,
        s.to_create,
        s.unassigned,
        s.malformed,
        s.ambiguous
    );
    outln!(
        "   CRM: {} leads, {} contacts, {} accounts; {} pairs edited on both sides since they last agreed",
        s.leads,
        s.contacts,
        s.accounts,
        s.conflicting_edits
    );

    let logs = args.work_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let exe = std::env::current_exe()?;
    let env: Vec<(&str, String)> = vec![
        ("CRMSYNC_DATABASE__URL", url.clone()),
        ("CRMSYNC_AMQP__PREFIX", prefix.clone()),
        ("CRMSYNC_REDIS__PREFIX", prefix.clone()),
        ("CRMSYNC_TELEMETRY__LOG_FORMAT", "json".into()),
    ];
    let server = if args.http {
        let server = http::SandboxServer::start(&exe, &env, &args.work_dir, &logs).await?;
        let mut settings = connections::load(&pool, CONNECTION).await?;
        let integration: String =
            sqlx::query_scalar("SELECT email FROM crm.users WHERE tenant = 'default' AND is_integration").fetch_one(&pool).await?;
        settings.set("crm", &server.crm_endpoint(&integration).to_string(), chrono::Utc::now())?;
        settings.set("ma", &server.ma_endpoint(&integration).to_string(), chrono::Utc::now())?;
        connections::save(&pool, CONNECTION, &settings).await?;
        outln!(
            "   --http: the CRM is reached as a Salesforce org and the MA as an Account Engagement business unit at {} \
             (OAuth JWT bearer, REST query, sObject Collections, API v5); the org's change events at {} (Pub/Sub API)",
            server.url(),
            server.pubsub_url()
        );
        Some(server)
    } else {
        None
    };
    let cs = if args.http { http::SandboxServer::cs_endpoint().to_string() } else { "default".to_owned() };
    let mut tiers = Vec::new();
    for (tier, n) in [("producer", args.producers), ("matcher", args.matchers), ("applier", args.appliers)] {
        for i in 1..=n.max(1) {
            let mut env = env.clone();
            if tier == "applier" && i == 1 {
                env.push(("CRMSYNC_TELEMETRY__HTTP_LISTEN", METRICS_ADDR.into()));
            }
            tiers.push(spawn(&exe, tier, i, &env, &logs)?);
        }
    }
    let mut console = start_console(&exe, &env, &logs, &pool).await?;
    outln!(
        "2. Started {} producer(s), {} matcher(s), {} applier(s) as separate processes (logs in {})",
        args.producers.max(1),
        args.matchers.max(1),
        args.appliers.max(1),
        logs.display()
    );
    outln!("   the admin console: {} (sign in as {} / {})", console.url, console.user, console.password);
    let probe = Probe::new(&config, &pool).await?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let t = Instant::now();
    let p = settle(&probe, &mut tiers, &logs, timeout).await?;
    outln!(
        "   initial sync: {} changes in {:.1} s ({:.0} changes/s)",
        p.finished,
        t.elapsed().as_secs_f64(),
        p.finished as f64 / t.elapsed().as_secs_f64()
    );

    outln!("3. Live changes, synced while they are made");
    let t = Instant::now();
    let before = p.finished;
    for line in live_changes(&pool, &sb).await? {
        outln!("   - {line}");
    }
    let p = settle(&probe, &mut tiers, &logs, timeout).await?;
    outln!("   all {} changes synced {:.1} s after the first edit", p.finished - before, t.elapsed().as_secs_f64());

    outln!("4. CSQLs: customer-success records synced to the CRM under each option (R9)");
    let t = Instant::now();
    csql::run(&config, &pool, &sb, &cs, async || settle(&probe, &mut tiers, &logs, timeout).await).await?;
    outln!("   CSQL section done in {:.1} s", t.elapsed().as_secs_f64());

    outln!("5. A burst: {BURST_SIZE} prospect edits in one transaction go to the batch lane, paced at {BURST_BUDGET} records/hour");
    burst(&pool, &probe, &mut tiers, &logs, timeout).await?;

    outln!("6. Stopping the tiers (SIGTERM: drain, then exit)");
    for (name, status) in stop(&mut tiers).await? {
        outln!("   {name}: {status}");
    }

    outln!("7. Report");
    let factory = crmsync_systems::SystemsFactory::new(SandboxFactory::new(pool.clone()), ApiAllowances::new(&config.redis));
    let r = report::build(&pool, &factory, CONNECTION).await?;
    report::print(&r)?;
    if let Some(server) = server {
        let used = server.usage().await?;
        let share = |used: u64, daily: u64| 100.0 * used as f64 / daily.max(1) as f64;
        outln!(
            "Over HTTP: {} Salesforce API requests of the org's {} a day ({:.1}%); {} Account Engagement calls of {} ({:.1}%)",
            used.salesforce_used,
            used.salesforce_daily,
            share(used.salesforce_used, used.salesforce_daily),
            used.pardot_used,
            used.pardot_daily,
            share(used.pardot_used, used.pardot_daily)
        );
        server.stop().await;
    }
    outln!("Demo finished in {:.0} s.", started.elapsed().as_secs_f64());
    outln!();
    outln!("The admin console: {}", console.url);
    outln!("  sign in as {} / {} (an admin made for this demo)", console.user, console.password);
    outln!("  pages: the overview, connection settings, sync errors, record lookup with history, the admin audit log");
    if args.keep_console {
        outln!("  serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    } else {
        outln!("  it stops with the demo; `bash scripts/demo.sh --keep-console` keeps it serving after the report");
    }
    for (name, status) in stop(std::slice::from_mut(&mut console.process)).await? {
        if status != "exited 0" {
            crate::out::err_line(format_args!("{name}: {status}"));
        }
    }
    Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(with_database("postgres://u:p@h:5432/crmsync", "demo").unwrap(), "postgres://u:p@h:5432/demo");
        assert_eq!(with_database("postgres://h/x?sslmode=disable", "demo").unwrap(), "postgres://h/demo?sslmode=disable");
        assert_eq!(with_database("postgres://h", "demo").unwrap(), "postgres://h/demo");
    }
}
