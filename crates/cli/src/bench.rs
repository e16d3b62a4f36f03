//! `crmsync bench budget`: how well the batch lane keeps to its budget with
//! 1, 2 and 3 applier replicas (separate processes): the share of the budget
//! used while a backlog lasts, the worst overshoot in any one-second window,
//! and the error of the ETA predicted at the start against the real drain
//! time. Figures are printed, and written as JSON when asked; nothing is
//! asserted: the machine's load moves them, ratios are what to compare.

pub mod api;
pub mod backfill;
pub mod ceiling;
pub mod connections;
pub mod connections_report;
pub mod console;
pub mod edits;
pub mod failing_crm;
pub mod full_budget;
pub mod idle;
pub mod isolation;
pub mod latency;
pub mod mode;
pub mod procs;
pub mod report;
pub mod suite;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use crmsync_infra::{Config, db};
use crmsync_sandbox::ops::{Sandbox, System};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;
use tokio::process::Command;

use crate::demo::{recreate_database, with_database};
use crate::progress::Probe;

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRun {
    pub appliers: usize,
    pub records: usize,
    pub budget_per_second: f64,
    pub burst: u32,
    /// Records processed / records the budget allowed while the backlog lasted.
    pub budget_used_percent: f64,
    /// The most records in any one-second window, over the budget's second.
    pub worst_second_records: usize,
    pub worst_second_overshoot_records: f64,
    pub predicted_drain_seconds: f64,
    pub real_drain_seconds: f64,
    pub eta_error_percent: f64,
}

fn worst_window(times: &[f64], window: f64) -> usize {
    let mut worst = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        worst = worst.max(end - start + 1);
    }
    worst
}

async fn batch_times(pool: &PgPool) -> anyhow::Result<Vec<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT extract(epoch FROM at)::float8 FROM audit_log WHERE connection_id = 'default' AND stage = 'apply' AND lane = 'batch' ORDER BY at",
    )
    .fetch_all(pool)
    .await?)
}

/// Tier processes started by a benchmark: this `crmsync` binary, against
/// the benchmark's database and broker prefix, each logging to its own file.
pub(crate) struct Tiers {
    children: Vec<tokio::process::Child>,
    watched: Vec<procs::Watched>,
}

impl Tiers {
    pub(crate) fn spawn(url: &str, prefix: &str, counts: &[(&str, usize)], logs: &Path, run: &str) -> anyhow::Result<Tiers> {
        Self::spawn_with_env(url, prefix, counts, logs, run, |_, _| Vec::new())
    }

    /// As [`Tiers::spawn`], with environment variables of its own for some
    /// replicas (`env(tier, index)`): a metrics listener needs a port that
    /// only one process binds.
    pub(crate) fn spawn_with_env(
        url: &str,
        prefix: &str,
        counts: &[(&str, usize)],
        logs: &Path,
        run: &str,
        env: impl Fn(&str, usize) -> Vec<(String, String)>,
    ) -> anyhow::Result<Tiers> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut watched = Vec::new();
        for &(tier, n) in counts {
            for i in 0..n {
                let log = std::fs::File::create(logs.join(format!("{run}-{tier}-{i}.log")))?;
                let child = Command::new(&exe)
                    .arg(tier)
                    .env("CRMSYNC_DATABASE__URL", url)
                    .env("CRMSYNC_AMQP__PREFIX", prefix)
                    .env("CRMSYNC_REDIS__PREFIX", prefix)
                    .envs(env(tier, i))
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()?;
                watched.push(procs::Watched { name: format!("{tier}-{i}"), pid: child.id().context("a tier's pid")? });
                children.push(child);
            }
        }
        Ok(Tiers { children, watched })
    }

    /// Each replica's name ("matcher-1") and pid, for the cost sampler.
    pub(crate) fn watched(&self) -> Vec<procs::Watched> {
        self.watched.clone()
    }

    /// Stops every tier (the figures are read from the database after).
    pub(crate) async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}

/// A line of a tier's log without its colours: the tiers colour their
/// level names (`\x1b[33m WARN\x1b[0m`) even into a file.
pub(crate) fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, up to a final byte in @..~.
            if chars.next() == Some('[') {
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a line of a tier's log is a warning.
pub(crate) fn is_warning(line: &str) -> bool {
    plain(line).contains(" WARN ")
}

/// A fresh, migrated database `name` and a broker and Redis `prefix` of
/// its own for one benchmark run: its configuration, database URL and pool.
pub(crate) async fn fresh_world(config: &Config, base_url: &str, name: &str, prefix: &str) -> anyhow::Result<(Config, String, PgPool)> {
    recreate_database(base_url, name).await?;
    let url = with_database(base_url, name)?;
    let mut config = config.clone();
    config.database.url = url.clone().into();
    config.amqp.prefix = prefix.to_owned();
    config.redis.prefix = prefix.to_owned();
    let pool = db::connect(&config.database).await?;
    crate::migrate(&pool).await?;
    // A run cut short leaves its messages in the prefix's durable queues;
    // the next run's tiers would work them off and be measured doing it.
    let broker = crmsync_infra::broker::Broker::new(&config.amqp, "crmsync-bench-setup");
    let channel = broker.live().await?.conn.create_channel().await.context("a channel to clear the run's queues")?;
    crmsync_infra::amqp::Topology::new(&config.amqp).delete_all(&channel).await?;
    broker.close().await;
    Ok((config, url, pool))
}

async fn one_run(
    config: &Config,
    base_url: &str,
    appliers: usize,
    records: i64,
    per_second: u32,
    logs: &Path,
) -> anyhow::Result<BudgetRun> {
    let prefix = format!("crmsync-bench-{appliers}");
    let (config, url, pool) = fresh_world(config, base_url, "crmsync_bench", &prefix).await?;
    let burst = 5;
    let mut s = crmsync_store::connections::load(&pool, "default").await?;
    s.batch_budget_per_hour = per_second * 3600;
    s.batch_burst = burst;
    s.batch_threshold = 10;
    crmsync_store::connections::save(&pool, "default", &s).await?;
    let tiers =
        Tiers::spawn(&url, &prefix, &[("producer", 1), ("matcher", 1), ("applier", appliers)], logs, &format!("budget-{appliers}"))?;
    let probe = Probe::new(&config, &pool).await?;
    let ids = ["default".to_owned()];
    probe.wait_idle(&ids, Duration::from_secs(60), |_| {}).await?;
    let sb = Sandbox::new(pool.clone(), "default");
    let admin = sb.admin(System::Ma).await?;
    sqlx::query(
        "INSERT INTO ma.prospects (email, last_name, last_modified_by) \
         SELECT 'bench.' || g || '@budget.example', 'Bench', $1 FROM generate_series(1, $2) g",
    )
    .bind(&admin)
    .bind(records)
    .execute(&pool)
    .await?;
    // The ETA as an operator would read it once the backlog is known.
    let started = Instant::now();
    let predicted = loop {
        let f = crmsync_applier::batch_figures(&pool, "default").await?;
        if f.backlog as i64 >= records {
            break f.eta.as_secs_f64();
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the burst never reached the batch lane");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let from = Instant::now();
    probe.wait_idle(&ids, Duration::from_secs(600), |_| {}).await?;
    let real = from.elapsed().as_secs_f64();
    tiers.stop().await;
    let times = batch_times(&pool).await?;
    pool.close().await;
    let seconds = times.last().copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0);
    let allowed = f64::from(per_second) * seconds;
    let worst = worst_window(&times, 1.0);
    Ok(BudgetRun {
        appliers,
        records: times.len(),
        budget_per_second: f64::from(per_second),
        burst,
        budget_used_percent: 100.0 * (times.len() as f64 - f64::from(burst)) / allowed.max(1.0),
        worst_second_records: worst,
        worst_second_overshoot_records: worst as f64 - f64::from(per_second),
        predicted_drain_seconds: predicted,
        real_drain_seconds: real,
        eta_error_percent: 100.0 * (predicted - real) / real,
    })
}

/// `crmsync bench latency`: one steady-load run per rate, as a table.
pub async fn latency_cmd(
    config: &Config,
    (mode, direction): (mode::Mode, latency::Direction),
    rates: &[f64],
    seconds: f64,
    pairs: i64,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let base_url = config.database.url.expose_secret().to_owned();
    let logs = std::fs::canonicalize(".").map(|d| d.join(".bench/logs"))?;
    std::fs::create_dir_all(&logs)?;
    outln!(
        "immediate lane, {}: {} edits round {pairs} linked pairs for {seconds} s per rate; latency from commit to commit",
        mode.as_str(),
        direction.as_str()
    );
    outln!("| offered/s | achieved/s | edits | synced | merged | p50 | p95 | p99 | max |");
    outln!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs = Vec::new();
    for &rate in rates {
        let r = latency::run(config, &base_url, mode, direction, rate, seconds, pairs, &logs)
            .await
            .with_context(|| format!("the run at {rate}/s"))?;
        outln!(
            "| {:.0} | {:.0} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            r.offered_per_second,
            r.achieved_per_second,
            r.edits,
            r.synced,
            r.merged,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms
        );
        runs.push(r);
    }
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_vec_pretty(&runs)?).with_context(|| format!("writing {}", path.display()))?;
        outln!("written to {}", path.display());
    }
    Ok(())
}

/// `crmsync bench ceiling`: prints (and writes) the broker's two-hop ceiling.
pub async fn ceiling_cmd(config: &Config, messages: u64, bytes: usize, prefetch: u16, out: Option<PathBuf>) -> anyhow::Result<()> {
    outln!("RabbitMQ two-hop ceiling: {messages} persistent, confirmed messages of {bytes} B, prefetch {prefetch}");
    let c = ceiling::measure(&config.amqp, messages, bytes, prefetch).await.context("measuring the broker's ceiling")?;
    outln!("  {:.1} s, {:.0} messages/s end to end", c.seconds, c.messages_per_second);
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_vec_pretty(&c)?).with_context(|| format!("writing {}", path.display()))?;
        outln!("  written to {}", path.display());
    }
    Ok(())
}

/// Runs the budget benchmark and prints (and optionally writes) its figures.
pub async fn budget(config: &Config, records: i64, per_second: u32, out: Option<PathBuf>) -> anyhow::Result<()> {
    let base_url = config.database.url.expose_secret().to_owned();
    let logs = PathBuf::from(".bench/logs");
    std::fs::create_dir_all(&logs)?;
    outln!("batch budget: {records} records at {per_second}/s (burst 5), applier replicas as separate processes");
    outln!("| appliers | records | budget used | worst 1 s window | overshoot | ETA predicted | drained in | ETA error |");
    outln!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs = Vec::new();
    for appliers in 1..=3 {
        let r = one_run(config, &base_url, appliers, records, per_second, &logs)
            .await
            .with_context(|| format!("run with {appliers} appliers"))?;
        outln!(
            "| {} | {} | {:.1}% | {} | {:+.0} | {:.1} s | {:.1} s | {:+.1}% |",
            r.appliers,
            r.records,
            r.budget_used_percent,
            r.worst_second_records,
            r.worst_second_overshoot_records,
            r.predicted_drain_seconds,
            r.real_drain_seconds,
            r.eta_error_percent
        );
        runs.push(r);
    }
    if let Some(path) = out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&runs)?)?;
        outln!("written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{is_warning, plain, worst_window};

    #[test]
    fn log_lines_are_read_without_their_colours() {
        let line =
            "\x1b[2m2026-12-07T18:10:10Z\x1b[0m \x1b[33m WARN\x1b[0m detection failed \x1b[3mconnection_id\x1b[0m\x1b[2m=\x1b[0m\"c1\"";
        assert_eq!(plain(line), "2026-12-07T18:10:10Z  WARN detection failed connection_id=\"c1\"");
        assert!(is_warning(line));
        assert!(is_warning("2026-12-07T18:10:10Z  WARN plain"));
        assert!(!is_warning("\x1b[32m INFO\x1b[0m changes published lane=\"WARN\""));
    }

    #[test]
    fn the_worst_window_counts_the_busiest_second() {
        assert_eq!(worst_window(&[0.0, 0.1, 0.2, 1.5, 1.6], 1.0), 3);
        assert_eq!(worst_window(&[0.0, 1.0, 2.0], 1.0), 1);
        assert_eq!(worst_window(&[], 1.0), 0);
    }
}
