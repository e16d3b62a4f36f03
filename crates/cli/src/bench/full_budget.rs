//! The "all connections at full budget at once" scenario of
//! `crmsync bench connections` (issue 29): every connection's batch lane
//! is filled while its budget is held at one record an hour, then every
//! budget is set to the default 12,000 an hour in one statement, and the
//! batch-lane applies of the next window are counted from the audit log:
//! the records per second achieved, each connection's share of its budget,
//! and the worst 1-s overshoot of any connection beyond its burst.
//!
//! It also says where the window's CPU went: each tier's and service's
//! share, the CPU per record, and (where `pg_stat_statements` is loaded)
//! PostgreSQL's statement time split between the sandbox systems (the
//! stand-ins for the Salesforce and Account Engagement APIs, which in a
//! real deployment run on their vendors' machines) and the engine's own
//! tables.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use crmsync_domain::settings::{DEFAULT_BATCH_BUDGET_PER_HOUR, DEFAULT_BATCH_BURST};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::procs;
use crate::progress;

/// What the scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullBudget {
    pub connections: usize,
    /// Changes queued per connection before the budgets were raised.
    pub queued_per_connection_min: i64,
    pub budget_per_hour: u32,
    pub burst: u32,
    /// Seconds it took to fill every lane (producer and matcher at work).
    pub fill_seconds: f64,
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    /// Batch-lane records applied per second over the window, all
    /// connections together, and what the budgets allowed.
    pub records_per_second: f64,
    pub budgets_per_second: f64,
    /// Each connection's records over the window / what its budget allowed.
    pub share_min: f64,
    pub share_median: f64,
    pub share_max: f64,
    /// The most records any connection applied in one aligned second,
    /// beyond its rate plus its burst (0: never over).
    pub worst_overshoot_records: f64,
    /// Each tier's and service's CPU over the window, % of one core.
    #[serde(default)]
    pub cpu_percent: BTreeMap<String, f64>,
    /// Every watched process's CPU over the window per batch-lane record.
    #[serde(default)]
    pub cpu_ms_per_record: f64,
    /// PostgreSQL statement time (planning and execution) per batch-lane
    /// record over the window: `sandbox` (statements on the sandbox
    /// systems' schemas) and `engine` (the rest). Empty without
    /// `pg_stat_statements`.
    #[serde(default)]
    pub pg_statement_ms_per_record: BTreeMap<String, f64>,
    /// Statements per batch-lane record, split the same way.
    #[serde(default)]
    pub pg_statements_per_record: BTreeMap<String, f64>,
}

/// PostgreSQL statement time (ms) and calls so far in this database, split
/// between the sandbox systems' schemas and the engine's tables; `None`
/// where `pg_stat_statements` is not loaded.
async fn statement_split(pool: &PgPool) -> Option<BTreeMap<String, (f64, f64)>> {
    let rows: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT CASE WHEN query ~ '\\m(crm|ma|cs|sandbox)\\.' THEN 'sandbox' ELSE 'engine' END, \
                sum(total_exec_time + total_plan_time)::float8, sum(calls)::float8 \
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    Some(rows.into_iter().map(|(k, ms, calls)| (k, (ms, calls))).collect())
}

/// `extra` more linked pairs per tenant, each needing a write each way,
/// under their own email domain.
async fn seed_more(pool: &PgPool, tenants: &[String], extra: i64) -> anyhow::Result<()> {
    let bar = progress::bar(tenants.len() as u64, "tenants given a backlog");
    for tenant in tenants {
        let sb = crmsync_sandbox::ops::Sandbox::new(pool.clone(), tenant);
        sb.seed_pairs(&crmsync_sandbox::ops::Pairs { tag: "f", domain: "full.example", pairs: extra, people: extra }).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Sets every connection's batch budget (and a low batch threshold) in one
/// statement, so that they change at once.
async fn set_budgets(pool: &PgPool, per_hour: u32, threshold: usize) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE connections SET settings = settings || jsonb_build_object('batch_budget_per_hour', $1::int, 'batch_threshold', $2::int), \
         updated_at = now()",
    )
    .bind(i32::try_from(per_hour)?)
    .bind(i32::try_from(threshold)?)
    .execute(pool)
    .await?;
    // As `connections::save` does: lanes told to wait for the old budget
    // are due at once.
    sqlx::query("UPDATE batch_lanes SET due_at = least(due_at, now())").execute(pool).await?;
    Ok(())
}

/// Runs the scenario over the running tiers. `tenants` are the
/// connections' tenants; `extra` the pairs added to each.
pub async fn measure(
    pool: &PgPool,
    tenants: &[String],
    watched: Vec<procs::Watched>,
    extra: i64,
    window: Duration,
    limit: Duration,
) -> anyhow::Result<FullBudget> {
    let n = tenants.len();
    // Held: every lane fills while at most a burst is applied.
    set_budgets(pool, 1, 10).await?;
    // Settings are read again within a second by every tier.
    tokio::time::sleep(Duration::from_secs(2)).await;
    seed_more(pool, tenants, extra).await.context("seeding the backlogs")?;
    let started = Instant::now();
    // One apply command per pair (its two changes are merged), less the
    // burst the held budget still lets through.
    let want = extra - i64::from(DEFAULT_BATCH_BURST);
    let bar = progress::bar(n as u64, "lanes filled");
    let queued_min = loop {
        let (filled, min): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*) FILTER (WHERE queued >= $1), min(queued)::bigint FROM batch_lanes")
                .bind(want)
                .fetch_one(pool)
                .await?;
        bar.set_position(u64::try_from(filled)?);
        if filled >= n as i64 {
            break min.unwrap_or(0);
        }
        anyhow::ensure!(started.elapsed() < limit, "{filled} of {n} batch lanes filled in {limit:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    bar.finish_and_clear();
    let fill_seconds = started.elapsed().as_secs_f64();
    outln!("  full budget: {n} lanes of at least {queued_min} records filled in {fill_seconds:.1} s; every budget raised at once");

    set_budgets(pool, DEFAULT_BATCH_BUDGET_PER_HOUR, 10).await?;
    let warmup = Duration::from_secs(5);
    tokio::time::sleep(warmup).await;
    let from: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT date_trunc('second', clock_timestamp())").fetch_one(pool).await?;
    // The cost figures cover the window as the sleep measures it, close
    // enough to the audit log's aligned seconds for per-record ratios.
    let statements_before = statement_split(pool).await;
    let sampler = procs::Sampler::start(watched, Duration::from_secs(1));
    let sampled = Instant::now();
    tokio::time::sleep(window).await;
    let (costs, services) = sampler.finish().await;
    let sampled = sampled.elapsed();
    let statements_after = statement_split(pool).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let to = from + chrono::Duration::from_std(window)?;
    // Applies per connection and aligned second, within the window.
    let rows: Vec<(String, f64, i64)> = sqlx::query_as(
        "SELECT connection_id, extract(epoch FROM date_trunc('second', at))::float8, count(*)::bigint FROM audit_log \
         WHERE stage = 'apply' AND lane = 'batch' AND at >= $1 AND at < $2 GROUP BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let per_second = f64::from(DEFAULT_BATCH_BUDGET_PER_HOUR) / 3600.0;
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut worst: f64 = 0.0;
    for (connection, _, count) in &rows {
        *totals.entry(connection.clone()).or_default() += count;
        worst = worst.max(*count as f64 - per_second - f64::from(DEFAULT_BATCH_BURST));
    }
    let allowed = per_second * window.as_secs_f64();
    let mut shares: Vec<f64> = totals.values().map(|t| *t as f64 / allowed).collect();
    // A connection that applied nothing in the window has no row.
    shares.resize(n.max(shares.len()), 0.0);
    shares.sort_by(f64::total_cmp);
    let total: i64 = totals.values().sum();
    let records = (total as f64).max(1.0);
    let mut cpu_ms: BTreeMap<String, f64> = services;
    for c in &costs {
        *cpu_ms.entry(c.name.clone()).or_default() += c.cpu_ms;
    }
    let cpu_ms_per_record = cpu_ms.values().sum::<f64>() / records;
    let cpu_percent = cpu_ms.into_iter().map(|(k, ms)| (k, 100.0 * ms / 1000.0 / sampled.as_secs_f64())).collect();
    let (mut pg_statement_ms_per_record, mut pg_statements_per_record) = (BTreeMap::new(), BTreeMap::new());
    if let (Some(before), Some(after)) = (statements_before, statements_after) {
        for (kind, (ms, calls)) in after {
            let (ms0, calls0) = before.get(&kind).copied().unwrap_or((0.0, 0.0));
            pg_statement_ms_per_record.insert(kind.clone(), (ms - ms0).max(0.0) / records);
            pg_statements_per_record.insert(kind, (calls - calls0).max(0.0) / records);
        }
    }
    let figures = FullBudget {
        connections: n,
        queued_per_connection_min: queued_min,
        budget_per_hour: DEFAULT_BATCH_BUDGET_PER_HOUR,
        burst: DEFAULT_BATCH_BURST,
        fill_seconds,
        warmup_seconds: warmup.as_secs_f64(),
        window_seconds: window.as_secs_f64(),
        records_per_second: total as f64 / window.as_secs_f64(),
        budgets_per_second: per_second * n as f64,
        share_min: shares.first().copied().unwrap_or(0.0),
        share_median: shares.get(n / 2).copied().unwrap_or(0.0),
        share_max: shares.last().copied().unwrap_or(0.0),
        worst_overshoot_records: worst.max(0.0),
        cpu_percent,
        cpu_ms_per_record,
        pg_statement_ms_per_record,
        pg_statements_per_record,
    };
    outln!(
        "  full budget: {:.0} records/s of {:.0} allowed; shares min {:.0}% median {:.0}% max {:.0}%; worst 1-s overshoot beyond the burst {:.1}",
        figures.records_per_second,
        figures.budgets_per_second,
        figures.share_min * 100.0,
        figures.share_median * 100.0,
        figures.share_max * 100.0,
        figures.worst_overshoot_records
    );
    let split = |m: &BTreeMap<String, f64>| m.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ");
    outln!(
        "  full budget: {:.2} ms of CPU per record, all processes; PostgreSQL statement ms per record: {}; statements per record: {}",
        figures.cpu_ms_per_record,
        if figures.pg_statement_ms_per_record.is_empty() { "not counted".to_owned() } else { split(&figures.pg_statement_ms_per_record) },
        if figures.pg_statements_per_record.is_empty() { "not counted".to_owned() } else { split(&figures.pg_statements_per_record) },
    );
    Ok(figures)
}
