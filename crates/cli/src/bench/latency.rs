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

/// Which side the edits are made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Prospect edits synced to the CRM.
    MaToCrm,
    /// Lead edits synced to the MA.
    CrmToMa,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::MaToCrm => "MA → CRM",
            Direction::CrmToMa => "CRM → MA",
        }
    }

    /// The commit-log side names of the source and the target.
    fn sides(self) -> (&'static str, &'static str) {
        match self {
            Direction::MaToCrm => ("ma", "crm"),
            Direction::CrmToMa => ("crm", "ma"),
        }
    }
}

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

/// Records the commit time of every job-title (MA) and title (CRM) value.
const TRIGGERS: &str = r"
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE bench.commits (side text NOT NULL, value text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
-- One function for both sides: TG_ARGV names the side and the title column.
CREATE OR REPLACE FUNCTION bench.record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  new_value text := to_jsonb(NEW) ->> TG_ARGV[1];
BEGIN
  IF new_value IS DISTINCT FROM to_jsonb(OLD) ->> TG_ARGV[1] AND new_value LIKE 'lat-%' THEN
    INSERT INTO bench.commits (side, value) VALUES (TG_ARGV[0], new_value);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER bench_commit AFTER UPDATE ON ma.prospects FOR EACH ROW EXECUTE FUNCTION bench.record('ma', 'job_title');
CREATE TRIGGER bench_commit AFTER UPDATE ON crm.leads FOR EACH ROW EXECUTE FUNCTION bench.record('crm', 'title');
";

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

/// Edits one side's records round-robin at `rate` a second for `seconds`,
/// from `writers` connections, as that system's admin (a user, not the
/// engine); returns the number of edits committed.
async fn offer(pool: &PgPool, direction: Direction, rate: f64, seconds: f64, writers: usize) -> anyhow::Result<u64> {
    let (select, update, system) = match direction {
        Direction::MaToCrm => (
            "SELECT id::text FROM ma.prospects WHERE email LIKE '%@latency.example' ORDER BY id",
            "UPDATE ma.prospects SET job_title = $1, last_modified_by = $2 WHERE id = $3::bigint",
            System::Ma,
        ),
        Direction::CrmToMa => (
            "SELECT id FROM crm.leads WHERE email LIKE '%@latency.example' ORDER BY id",
            "UPDATE crm.leads SET title = $1, last_modified_by = $2 WHERE id = $3",
            System::Crm,
        ),
    };
    let ids: Vec<String> = sqlx::query_scalar(select).fetch_all(pool).await?;
    anyhow::ensure!(!ids.is_empty(), "no pairs to edit");
    let admin = Sandbox::new(pool.clone(), "default").admin(system).await?;
    let total = (rate * seconds).round() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(writers * 4);
    // The writers share one queue of due edits.
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (rx, pool, ids, admin) = (rx.clone(), pool.clone(), ids.clone(), admin.clone());
        tasks.spawn(async move {
            let mut done = 0u64;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(seq) = next else { break };
                let id = &ids[(seq as usize) % ids.len()];
                sqlx::query(update).bind(format!("lat-{seq}")).bind(&admin).bind(id).execute(&pool).await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    // Edits are due on a fixed schedule; a writer that falls behind shows
    // as an achieved rate below the offered one.
    let started = tokio::time::Instant::now();
    for seq in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(seq as f64 / rate)).await;
        tx.send(seq).await?;
    }
    drop(tx);
    let mut committed = 0;
    while let Some(done) = tasks.join_next().await {
        committed += done??;
    }
    Ok(committed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

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
    let (from, to) = direction.sides();
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
    sqlx::raw_sql(TRIGGERS).execute(&pool).await?;

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
    let edits = offer(&pool, direction, rate, seconds, writers).await?;
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
    let lag_at_end_ms: f64 = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM max(at) FILTER (WHERE side = $2) - max(at) FILTER (WHERE side = $1)) * 1000.0, 0)::float8 \
         FROM bench.commits",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&pool)
    .await?;

    let latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM (t.at - s.at)) * 1000.0)::float8 FROM bench.commits s \
         JOIN bench.commits t ON t.side = $2 AND t.value = s.value WHERE s.side = $1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
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
        p50_ms: percentile(&sorted, 50.0),
        p95_ms: percentile(&sorted, 95.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        lag_at_end_ms,
        sustained: achieved_per_second >= 0.95 * rate && lag_at_end_ms < 1000.0,
        cpu_ms_per_1k: procs::per_thousand(&tier_costs, &services, edits),
        tiers: tier_costs,
        api_calls,
    })
}
