//! The backfill scenario: N linked prospect ↔ lead pairs, each edited on
//! both sides before the engine first sees them (the lead has a title the
//! prospect lacks, the prospect a phone the lead lacks), with the batch
//! budget lifted so that only the pipeline limits the pace. The tiers start
//! as separate processes (R replicas each) on a backlog of 2N changes; the
//! run ends when every pair holds both values on both sides, read from the
//! systems themselves. Records/s is 2N over that time. The same scenario
//! with a larger N is the cost scenario: how much CPU each tier and service
//! spends per 1,000 records, and whether memory stays flat while a backlog
//! of a million changes waits (backpressure, not buffering).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use crmsync_domain::Lane;
use crmsync_infra::Config;
use crmsync_infra::broker::Broker;
use crmsync_sandbox::ops::{Sandbox, System};
use crmsync_store::{audit, connections, feeds};
use serde::Serialize;
use sqlx::PgPool;

use super::mode::Mode;
use super::procs::{self, ProcessCost, Sampler};
use super::{Tiers, fresh_world};
use crate::progress;

/// The figures of one backfill run.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillRun {
    pub mode: Mode,
    pub pairs: u64,
    /// Changes to sync: two per pair.
    pub records: u64,
    pub replicas_per_tier: usize,
    /// From the tiers' start to the last pair holding both values.
    pub converge_seconds: f64,
    pub records_per_second: f64,
    /// The most messages ready in the pipeline's queues, sampled every
    /// second: the backlog the tiers held up under.
    pub peak_backlog_messages: u64,
    pub tiers: Vec<ProcessCost>,
    /// CPU milliseconds per 1,000 records, per tier and per service.
    pub cpu_ms_per_1k: std::collections::BTreeMap<String, f64>,
    /// API calls the sandbox server counted (HTTP mode only).
    pub api_calls: Option<u64>,
    /// Of those, Account Engagement's and Salesforce's (I8 is per system).
    pub api_calls_ma: Option<u64>,
    pub api_calls_crm: Option<u64>,
    /// The calls as the engine counted them, per system and endpoint kind.
    pub api_by_kind: Option<super::api::Calls>,
    /// Changes the producers published (the rest they read were echoes or
    /// already known, I7). Between one and two a pair: when both sides of a
    /// pair are published before either is matched, the second brings
    /// nothing new, so this varies from run to run and explains much of the
    /// throughput's variation.
    pub published: u64,
    /// Of those, the pairs' second changes the matcher dropped as already
    /// known (`skipped:already_known`), the other pair's change having
    /// linked it since they were published ...
    pub skipped_as_known: u64,
    /// ... and those the applier worked through for nothing (`no_change`):
    /// matched before the link existed, or before it was stored.
    pub applied_unchanged: u64,
}

/// `pairs` linked pairs, each with a value only its own side holds.
async fn seed(pool: &PgPool, pairs: u64) -> anyhow::Result<()> {
    let sb = Sandbox::new(pool.clone(), "default");
    let (ma_admin, crm_admin) = (sb.admin(System::Ma).await?, sb.admin(System::Crm).await?);
    let pairs = i64::try_from(pairs)?;
    // In slices, so no one statement holds a million rows' locks and WAL,
    // and each stays under sqlx's one-second slow-statement warning (50,000
    // leads took 1.25 s and filled the run's output with warnings).
    let slice = 20_000;
    let bar = progress::bar(u64::try_from(pairs)?, "pairs seeded");
    for from in (1..=pairs).step_by(slice) {
        let to = (from + slice as i64 - 1).min(pairs);
        sqlx::query(
            "INSERT INTO crm.leads (tenant, last_name, company, email, title, last_modified_by) \
             SELECT 'default', 'Backfill ' || g, 'Backfill Co', 'bf' || g || '@backfill.example', 'crm-title-' || g, $1 \
             FROM generate_series($2::bigint, $3::bigint) g",
        )
        .bind(&crm_admin)
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO ma.prospects (tenant, email, last_name, company, phone, crm_lead_fid, last_modified_by) \
             SELECT 'default', l.email, l.last_name, l.company, 'ma-phone-' || substr(l.email, 3, strpos(l.email, '@') - 3), l.id, $1 \
             FROM crm.leads l WHERE l.tenant = 'default' AND l.title IN (SELECT 'crm-title-' || g FROM generate_series($2::bigint, $3::bigint) g)",
        )
        .bind(&ma_admin)
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        bar.set_position(u64::try_from(to)?);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Pairs holding both values on both sides.
async fn converged(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid \
         WHERE p.tenant = 'default' AND p.email LIKE '%@backfill.example' AND p.job_title = l.title AND l.phone = p.phone",
    )
    .fetch_one(pool)
    .await?)
}

/// The database's clock now.
async fn db_now(pool: &PgPool) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?)
}

/// The latest write to a backfill pair's records, on the database's clock
/// (the tracking trigger stamps each row as it is written).
async fn last_write(pool: &PgPool) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "SELECT greatest((SELECT max(modstamp) FROM ma.prospects WHERE tenant = 'default' AND email LIKE '%@backfill.example'), \
                         (SELECT max(modstamp) FROM crm.leads WHERE tenant = 'default' AND email LIKE '%@backfill.example'))",
    )
    .fetch_one(pool)
    .await?)
}

/// Messages ready in the pipeline's work queues (both stages, both lanes),
/// asked of the broker over AMQP, and records waiting in the batch lane:
/// cheap enough to ask every second.
async fn queued(broker: &Broker, pool: &PgPool) -> u64 {
    let mut total = 0;
    for (_, _, q) in broker.topology().shared_queues() {
        total += u64::from(broker.depth(&q).await.ok().flatten().unwrap_or(0));
    }
    total + crmsync_store::batch_lanes::queued(pool, "default").await.ok().and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// One backfill of `pairs` pairs with `replicas` of each tier, in `mode`.
pub async fn run(config: &Config, base_url: &str, mode: Mode, pairs: u64, replicas: usize, work_dir: &Path) -> anyhow::Result<BackfillRun> {
    let prefix = format!("crmsync-bench-backfill-{}-{replicas}", mode.as_str());
    let (config, url, pool) = fresh_world(config, base_url, "crmsync_bench_backfill", &prefix).await?;
    let mut s = connections::load(&pool, "default").await?;
    // The budget lifted: a million records a second, in chunks as large as
    // a batch-lane message holds, so only the pipeline sets the pace.
    s.batch_budget_per_hour = 3_600_000_000;
    s.batch_burst = 10_000;
    connections::save(&pool, "default", &s).await?;
    seed(&pool, pairs).await.context("seeding the pairs")?;
    sqlx::query("ANALYZE crm.leads, ma.prospects").execute(&pool).await?;
    let server = mode.connect(&pool, &url, work_dir).await?;
    let run_name = format!("backfill-{}-{pairs}-{replicas}", mode.as_str());
    let counts = [("producer", replicas), ("matcher", replicas), ("applier", replicas)];
    let calls_before = if server.is_some() { Some(super::api::snapshot(&config).await?) } else { None };
    let db_started = db_now(&pool).await?;
    let started = Instant::now();
    let tiers = Tiers::spawn(&url, &prefix, &counts, work_dir, &run_name)?;
    let mut watched = tiers.watched();
    if let Some(pid) = server.as_ref().and_then(|s| s.pid()) {
        watched.push(procs::Watched { name: "sandbox_server-0".into(), pid });
    }
    let sampler = Sampler::start(watched, Duration::from_millis(500));
    let want = i64::try_from(pairs)?;
    let bar = progress::bar(pairs, "pairs converged");
    let broker = Broker::new(&config.amqp, "crmsync-bench");
    let mut peak_backlog = 0;
    // Generous: a slow machine still finishes, a stuck pipeline does not
    // hold the run forever.
    let limit = Duration::from_secs(600 + pairs / 50);
    loop {
        // The convergence count joins every pair (0.4 s of PostgreSQL's CPU
        // at 200,000 pairs, seconds at a million), so the measuring would
        // load what it measures: it runs only when the queues are empty and
        // the applier has finished a change for every pair, which no pair
        // converges without. The applier's count is the audit log's tally,
        // a few rows, and is what the progress bar shows meanwhile.
        let ready = queued(&broker, &pool).await;
        peak_backlog = peak_backlog.max(ready);
        let applied = audit::lane_tally(&pool, "default", Lane::Batch.as_str()).await?.applied;
        if ready == 0 && applied >= want {
            let n = converged(&pool).await?;
            bar.set_position(u64::try_from(n)?);
            if n >= want {
                break;
            }
        } else {
            bar.set_position(u64::try_from(applied.min(want - 1))?);
        }
        anyhow::ensure!(started.elapsed() < limit, "the pairs did not converge in {limit:?}; logs in {}", work_dir.display());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Convergence is seen at a poll, up to a second late (7% of a 15 s
    // run): the time is that of the last write, which the poll bounds.
    let seen = started.elapsed().as_secs_f64();
    let converge_seconds = match last_write(&pool).await? {
        Some(last) if last > db_started => ((last - db_started).as_seconds_f64()).min(seen),
        _ => seen,
    };
    bar.finish_and_clear();
    let api_by_kind = match &calls_before {
        Some(before) => Some(super::api::since(&super::api::snapshot(&config).await?, before)),
        None => None,
    };
    let (tier_costs, services) = sampler.finish().await;
    tiers.stop().await;
    let published = feeds::all(&pool, "default").await?.iter().map(|f| u64::try_from(f.published).unwrap_or(0)).sum();
    let actions = audit::action_counts(&pool, "default").await?;
    let count = |action: &str| actions.iter().find(|(a, _)| a == action).map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
    let (skipped_as_known, applied_unchanged) = (count("skipped:already_known"), count("no_change"));
    let usage = match &server {
        Some(s) => s.usage().await.ok(),
        None => None,
    };
    let api_calls = usage.as_ref().map(|l| l.salesforce_used + l.pardot_used);
    if let Some(s) = server {
        s.stop().await;
    }
    pool.close().await;
    let records = 2 * pairs;
    Ok(BackfillRun {
        mode,
        pairs,
        records,
        replicas_per_tier: replicas,
        converge_seconds,
        records_per_second: records as f64 / converge_seconds,
        peak_backlog_messages: peak_backlog,
        cpu_ms_per_1k: procs::per_thousand(&tier_costs, &services, records),
        tiers: tier_costs,
        api_calls,
        api_calls_ma: usage.as_ref().map(|l| l.pardot_used),
        api_calls_crm: usage.as_ref().map(|l| l.salesforce_used),
        api_by_kind,
        published,
        skipped_as_known,
        applied_unchanged,
    })
}
