//! `crmsync bench latency`: the immediate lane under a steady offered load.
//! Linked prospect ↔ lead pairs are edited at a fixed rate on one side
//! (each edit a unique title: the prospect's job title in the MA, or the
//! lead's title in the CRM) for a fixed time, with the tiers running as
//! separate processes; the latency of each edit is the time from its commit
//! on that side to the commit of the same value on the other, both read
//! from row triggers the benchmark installs (`clock_timestamp()` in the
//! writing transaction). Edits of one pair that the pipeline merged (a newer
//! title overtook an older one before it was written) are counted apart,
//! not as latencies. Over HTTP, CRM edits reach the engine as the org's
//! change events, MA edits by the Account Engagement feed's polls; the API
//! calls the load cost are counted per 1,000 edits.

use std::time::{Duration, Instant};

use anyhow::Context;
use crmsync_infra::Config;
use crmsync_sandbox::ops::{Sandbox, System};
use crmsync_store::connections;
use serde::Serialize;
use sqlx::PgPool;

use super::Tiers;
use super::mode::Mode;
use super::procs::{self, ProcessCost, Sampler};
use crate::progress::Probe;

pub use super::edits::Direction;

/// The figures of one steady-load run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    pub mode: Mode,
    pub direction: Direction,
    pub offered_per_second: f64,
    pub seconds: f64,
    /// Edits committed in the MA, and the rate they were committed at.
    pub edits: u64,
    pub achieved_per_second: f64,
    /// Edits whose value reached the CRM, and those a newer edit of the same
    /// pair overtook before they were written.
    pub synced: u64,
    pub merged: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The last CRM commit after the last MA commit: how far behind the
    /// pipeline was when the offered load stopped.
    pub lag_at_end_ms: f64,
    /// The load was committed at ≥ 95% of the offered rate and the
    /// pipeline was less than a second behind at the end.
    pub sustained: bool,
    pub tiers: Vec<ProcessCost>,
    /// CPU milliseconds per 1,000 edits, per tier and per service.
    pub cpu_ms_per_1k: std::collections::BTreeMap<String, f64>,
    /// API calls the load cost, per system and kind (HTTP mode only).
    pub api_calls: Option<super::api::Calls>,
}

/// `pairs` linked prospect ↔ lead pairs, owned by the sandbox admins.
pub(super) async fn seed_pairs(pool: &PgPool, pairs: i64) -> anyhow::Result<()> {
    let sb = Sandbox::new(pool.clone(), "default");
    let (ma_admin, crm_admin) = (sb.admin(System::Ma).await?, sb.admin(System::Crm).await?);
    sqlx::query(
        "INSERT INTO crm.leads (tenant, last_name, company, email, last_modified_by) \
         SELECT 'default', 'Lat ' || g, 'Latency Co', 'lat' || g || '@latency.example', $1 FROM generate_series(1, $2) g",
    )
    .bind(&crm_admin)
    .bind(pairs)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, company, crm_lead_fid, last_modified_by) \
         SELECT 'default', l.email, l.last_name, l.company, l.id, $1 FROM crm.leads l WHERE l.email LIKE '%@latency.example'",
    )
    .bind(&ma_admin)
    .execute(pool)
    .await?;
    Ok(())
}

/// The label of the steady load's values (`lat-s-{seq}`).
const LABEL: &str = "s";

/// One steady-load run at `rate` edits a second.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: &Config,
    base_url: &str,
    mode: Mode,
    direction: Direction,
    rate: f64,
    seconds: f64,
    pairs: i64,
    logs: &std::path::Path,
) -> anyhow::Result<LatencyRun> {
    let (from, _) = direction.sides();
    let prefix = format!("crmsync-bench-latency-{}-{from}-{}", mode.as_str(), rate as u64);
    let (config, url, pool) = super::fresh_world(config, base_url, "crmsync_bench_latency", &prefix).await?;
    let mut s = connections::load(&pool, "default").await?;
    // Every edit on the immediate lane: this measures it, not the budget.
    s.batch_threshold = 1_000_000;
    connections::save(&pool, "default", &s).await?;
    seed_pairs(&pool, pairs).await?;
    let server = mode.connect(&pool, &url, logs).await?;
    let run_name = format!("latency-{}-{from}-{rate}", mode.as_str());
    let tiers = Tiers::spawn(&url, &prefix, &[("producer", 1), ("matcher", 1), ("applier", 1)], logs, &run_name)?;
    let probe = Probe::new(&config, &pool).await?;
    let ids = ["default".to_owned()];
    probe.wait_idle(&ids, Duration::from_secs(600), |_| {}).await.context("linking the pairs")?;
    // A settled system: autovacuum would have analysed the tables the
    // linking just filled, and without it the planner takes the identity
    // map for the few hundred rows it held at its last look.
    sqlx::query("ANALYZE identities, audit_log, crm.leads, ma.prospects").execute(&pool).await?;
    super::edits::install(&pool).await?;
    let targets = super::edits::targets(&pool, direction, &ids, "%@latency.example").await?;

    let mut watched = tiers.watched();
    if let Some(pid) = server.as_ref().and_then(|s| s.pid()) {
        watched.push(procs::Watched { name: "sandbox_server-0".into(), pid });
    }
    let calls_before = if server.is_some() { Some(super::api::snapshot(&config).await?) } else { None };
    let sampler = Sampler::start(watched, Duration::from_millis(500));
    let started = Instant::now();
    // Enough writers that the generator keeps the schedule: each edit is
    // one round trip of a millisecond or two.
    let writers = ((rate / 50.0).ceil() as usize).max(8);
    let edits = super::edits::offer(&pool, direction, &targets, LABEL, rate, seconds, writers).await?;
    let offered_for = started.elapsed().as_secs_f64();
    probe.wait_idle(&ids, Duration::from_secs(300), |_| {}).await.context("draining the offered load")?;
    let api_calls = match &calls_before {
        Some(before) => Some(super::api::since(&super::api::snapshot(&config).await?, before)),
        None => None,
    };
    let (tier_costs, services) = sampler.finish().await;
    tiers.stop().await;
    if let Some(s) = server {
        s.stop().await;
    }
    let lag_at_end_ms = super::edits::lag_at_end(&pool, direction, LABEL).await?;
    let sorted = super::edits::latencies(&pool, direction, LABEL).await?;
    pool.close().await;
    let synced = sorted.len() as u64;
    let achieved_per_second = edits as f64 / offered_for;
    Ok(LatencyRun {
        mode,
        direction,
        offered_per_second: rate,
        seconds,
        edits,
        achieved_per_second,
        synced,
        merged: edits.saturating_sub(synced),
        p50_ms: super::edits::percentile(&sorted, 50.0),
        p95_ms: super::edits::percentile(&sorted, 95.0),
        p99_ms: super::edits::percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        lag_at_end_ms,
        sustained: achieved_per_second >= 0.95 * rate && lag_at_end_ms < 1000.0,
        cpu_ms_per_1k: procs::per_thousand(&tier_costs, &services, edits),
        tiers: tier_costs,
        api_calls,
    })
}
