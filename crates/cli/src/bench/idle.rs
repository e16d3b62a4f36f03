//! The idle scenario (I8: an idle connection costs next to nothing): one
//! connection with both systems over HTTP, one replica per tier, linked
//! pairs synced, then nothing changing. After a warm-up (an idle feed backs
//! off from a few seconds to its longest wait, which takes a few minutes),
//! the API calls made over a measured window are counted per system and
//! kind, by the engine and by the sandbox server, and scaled to a day.
//! The endpoints keep the product's own polling defaults here (the other
//! scenarios shorten them to measure the pipeline, not the backoff).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use crmsync_domain::settings::SystemEndpoint;
use crmsync_infra::Config;
use crmsync_store::connections;
use serde::Serialize;
use sqlx::PgPool;

use super::api::{self, Calls};
use super::mode::Mode;
use super::{Tiers, fresh_world};
use crate::progress::Probe;

/// The figures of one idle run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub pairs: i64,
    pub warmup_seconds: f64,
    pub seconds: f64,
    /// Calls in the window, per system and kind, as the engine counted them.
    pub calls: Calls,
    /// Calls in the window as the sandbox server answered them (CRM, MA).
    pub answered_crm: u64,
    pub answered_ma: u64,
    /// API requests a day at the window's rate.
    pub per_day_crm: f64,
    pub per_day_ma: f64,
}

impl IdleRun {
    pub fn per_day(&self) -> f64 {
        self.per_day_crm + self.per_day_ma
    }
}

/// The endpoint as the product configures it by default: the benchmark's
/// shortened polling taken out.
fn with_default_polling(endpoint: &SystemEndpoint) -> anyhow::Result<String> {
    let mut json = serde_json::to_value(endpoint)?;
    if let Some(o) = json.as_object_mut() {
        for key in ["poll_interval_secs", "poll_max_secs"] {
            o.remove(key);
        }
    }
    Ok(json.to_string())
}

async fn default_polling(pool: &PgPool) -> anyhow::Result<()> {
    let mut s = connections::load(pool, "default").await?;
    let (crm, ma) = (with_default_polling(&s.crm)?, with_default_polling(&s.ma)?);
    s.set("crm", &crm, chrono::Utc::now())?;
    s.set("ma", &ma, chrono::Utc::now())?;
    connections::save(pool, "default", &s).await?;
    Ok(())
}

/// One idle run: `pairs` linked pairs, `warmup` then `window` of nothing.
pub async fn run(config: &Config, base_url: &str, pairs: i64, warmup: Duration, window: Duration, logs: &Path) -> anyhow::Result<IdleRun> {
    let prefix = "crmsync-bench-idle";
    let (config, url, pool) = fresh_world(config, base_url, "crmsync_bench_idle", prefix).await?;
    super::latency::seed_pairs(&pool, pairs).await?;
    let server = Mode::Http.connect(&pool, &url, logs).await?.context("the idle scenario runs over HTTP")?;
    default_polling(&pool).await?;
    let tiers = Tiers::spawn(&url, prefix, &[("producer", 1), ("matcher", 1), ("applier", 1)], logs, "idle")?;
    let probe = Probe::new(&config, &pool).await?;
    probe.wait_idle(&["default".to_owned()], Duration::from_secs(600), |_| {}).await.context("linking the pairs")?;
    tokio::time::sleep(warmup).await;
    let (calls_before, answered_before) = (api::snapshot(&config).await?, server.usage().await?);
    tokio::time::sleep(window).await;
    let (calls_after, answered_after) = (api::snapshot(&config).await?, server.usage().await?);
    tiers.stop().await;
    server.stop().await;
    pool.close().await;
    let calls = api::since(&calls_after, &calls_before);
    let day = 86_400.0 / window.as_secs_f64();
    Ok(IdleRun {
        pairs,
        warmup_seconds: warmup.as_secs_f64(),
        seconds: window.as_secs_f64(),
        per_day_crm: api::requests(&calls, "crm") as f64 * day,
        per_day_ma: api::requests(&calls, "ma") as f64 * day,
        answered_crm: answered_after.salesforce_used.saturating_sub(answered_before.salesforce_used),
        answered_ma: answered_after.pardot_used.saturating_sub(answered_before.pardot_used),
        calls,
    })
}

/// The idle runs as a Markdown section.
pub fn markdown(s: &mut String, runs: &[IdleRun]) {
    use std::fmt::Write as _;
    let _ = writeln!(s, "## Idle\n");
    let _ = writeln!(
        s,
        "One connection, both systems over HTTP with the product's default polling, one replica per tier, linked pairs synced, \
         then nothing changing: API calls over a measured window after a warm-up (an idle feed's backoff takes minutes to reach \
         its longest wait), scaled to a day. *Answered*: the sandbox server's own count in the window.\n"
    );
    let _ = writeln!(
        s,
        "| pairs | warm-up | window | CRM calls/day | MA calls/day | both/day | answered in the window (CRM / MA) | calls by kind |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in runs {
        let kinds: Vec<String> =
            r.calls.iter().flat_map(|(system, kinds)| kinds.iter().map(move |(k, n)| format!("{system} {k} {n}"))).collect();
        let _ = writeln!(
            s,
            "| {} | {:.0} s | {:.0} s | {:.0} | {:.0} | **{:.0}** | {} / {} | {} |",
            r.pairs,
            r.warmup_seconds,
            r.seconds,
            r.per_day_crm,
            r.per_day_ma,
            r.per_day(),
            r.answered_crm,
            r.answered_ma,
            if kinds.is_empty() { "none".to_owned() } else { kinds.join(", ") }
        );
    }
    s.push('\n');
}
