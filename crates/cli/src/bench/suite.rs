//! `crmsync bench suite`: every scenario of the benchmark in one run, so
//! that ratios are measured on the same machine at the same time: the
//! broker's two-hop ceiling, the backfill with 1 and 2 replicas per tier,
//! the steady immediate lane at each offered rate, and the cost run with a
//! large backlog, each directly and over HTTP, and, when asked, many small
//! connections on one deployment. Prints each figure as it is
//! measured and writes JSON, Markdown and SVG plots (see `report`) after
//! every scenario, so a run cut short still leaves what it measured.

use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use crmsync_infra::Config;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::latency::Direction;
use super::mode::Mode;
use super::report::{self, Machine, Results};
use super::{backfill, ceiling, idle, latency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
pub enum Scenario {
    Ceiling,
    Backfill,
    Steady,
    Cost,
    /// An idle connection's API calls (over HTTP only).
    Idle,
    /// Many small connections on one deployment (not run by default: at
    /// its full size it takes this single broker to its limits).
    Connections,
}

/// What to run, and how big.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Scenarios to run (all by default).
    #[arg(long = "scenario", value_enum, default_values_t = [Scenario::Ceiling, Scenario::Backfill, Scenario::Steady, Scenario::Cost, Scenario::Idle])]
    pub scenarios: Vec<Scenario>,
    /// How the tiers reach the sandbox systems.
    #[arg(long = "mode", value_enum, default_values_t = [Mode::Direct, Mode::Http])]
    pub modes: Vec<Mode>,
    /// Backfill: linked pairs (two changes each).
    #[arg(long, default_value_t = 200_000)]
    pub pairs: u64,
    /// Backfill: replicas of each tier, one run per value.
    #[arg(long = "replicas", default_values_t = [1, 2])]
    pub replicas: Vec<usize>,
    /// Steady lane: offered changes a second, one run per value.
    #[arg(long = "rate", default_values_t = [100.0, 500.0, 2000.0])]
    pub rates: Vec<f64>,
    /// Steady lane: the sides edits are made on, one run per value.
    #[arg(long = "direction", value_enum, default_values_t = [Direction::MaToCrm, Direction::CrmToMa])]
    pub directions: Vec<Direction>,
    /// Steady lane: how long each rate is offered.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Steady lane: linked pairs the edits go round.
    #[arg(long, default_value_t = 5_000)]
    pub steady_pairs: i64,
    /// Cost: queued changes (two per pair).
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Backfill and cost sizes over HTTP, as a share of the direct ones: the
    /// wire path moves records several times slower, and a full-size run of
    /// it takes hours on a small machine.
    #[arg(long, default_value_t = 1.0)]
    pub http_scale: f64,
    /// Idle: linked pairs synced before nothing changes.
    #[arg(long, default_value_t = 1_000)]
    pub idle_pairs: i64,
    /// Idle: seconds before the window, for the feeds to back off.
    #[arg(long, default_value_t = 240)]
    pub idle_warmup_secs: u64,
    /// Idle: seconds the calls are counted over.
    #[arg(long, default_value_t = 600)]
    pub idle_secs: u64,
    /// Connections: how many, with the scenario's other defaults.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Ceiling: messages moved (by default as many as the backfill's records).
    #[arg(long)]
    pub ceiling_messages: Option<u64>,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "bench")]
    pub out: PathBuf,
    /// Where the tiers' logs go.
    #[arg(long, default_value = ".bench")]
    pub work_dir: PathBuf,
}

/// The ceiling's prefetch: the broker's best, not the pipeline's setting,
/// so the yardstick is as high as RabbitMQ goes on this machine.
const CEILING_PREFETCH: u16 = 256;
/// A one-record change message is about this size.
const CEILING_MESSAGE_BYTES: usize = 1024;

/// `n` for `mode`: scaled down over HTTP when asked, never below 1.
fn sized(args: &SuiteArgs, mode: Mode, n: u64) -> u64 {
    match mode {
        Mode::Direct => n,
        Mode::Http => ((n as f64 * args.http_scale).round() as u64).max(1),
    }
}

pub async fn run(config: &Config, args: SuiteArgs) -> anyhow::Result<()> {
    let base_url = config.database.url.expose_secret().to_owned();
    std::fs::create_dir_all(&args.work_dir)?;
    let work_dir = std::fs::canonicalize(&args.work_dir)?;
    let mut results = Results {
        machine: Machine::describe(),
        ceiling: None,
        backfill: Vec::new(),
        steady: Vec::new(),
        cost: Vec::new(),
        idle: Vec::new(),
        connections: None,
    };
    let m = &results.machine;
    outln!("crmsync bench suite: {} cores, {:.0} GB, {} build, commit {}", m.cores, m.memory_gb, m.build, m.commit);
    let wants = |s| args.scenarios.contains(&s);

    if wants(Scenario::Ceiling) {
        let messages = args.ceiling_messages.unwrap_or(2 * args.pairs);
        outln!("\n## ceiling: {messages} persistent, confirmed messages of {CEILING_MESSAGE_BYTES} B through two hops");
        let c = ceiling::measure(&config.amqp, messages, CEILING_MESSAGE_BYTES, CEILING_PREFETCH).await.context("the ceiling")?;
        outln!("  {:.0} messages/s ({:.1} s)", c.messages_per_second, c.seconds);
        results.ceiling = Some(c);
        report::write(&args.out, &results)?;
    }
    let ceiling = results.ceiling.as_ref().map(|c| c.messages_per_second);

    if wants(Scenario::Backfill) {
        outln!("\n## backfill: linked pairs (two records each), budget lifted");
        for &mode in &args.modes {
            let pairs = sized(&args, mode, args.pairs);
            for &replicas in &args.replicas {
                let b = backfill::run(config, &base_url, mode, pairs, replicas, &work_dir)
                    .await
                    .with_context(|| format!("the backfill, {}, {replicas} per tier", mode.as_str()))?;
                let ratio = ceiling.map_or(String::new(), |c| format!(", {:.2}× the ceiling", b.records_per_second / c));
                outln!(
                    "  {} with {replicas} per tier, {pairs} pairs: converged in {:.1} s, {:.0} records/s{ratio}",
                    mode.as_str(),
                    b.converge_seconds,
                    b.records_per_second
                );
                results.backfill.push(b);
                report::write(&args.out, &results)?;
            }
        }
    }

    if wants(Scenario::Steady) {
        outln!("\n## steady immediate lane: {} s per rate round {} pairs", args.seconds, args.steady_pairs);
        for &mode in &args.modes {
            for (&direction, &rate) in args.directions.iter().flat_map(|d| args.rates.iter().map(move |r| (d, r))) {
                let l = latency::run(config, &base_url, mode, direction, rate, args.seconds, args.steady_pairs, &work_dir)
                    .await
                    .with_context(|| format!("the steady lane, {}, {}, {rate}/s", mode.as_str(), direction.as_str()))?;
                outln!(
                    "  {} {} at {rate:.0}/s: achieved {:.0}/s, p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {}",
                    mode.as_str(),
                    direction.as_str(),
                    l.achieved_per_second,
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms,
                    if l.sustained { "sustained" } else { "NOT sustained" }
                );
                results.steady.push(l);
                report::write(&args.out, &results)?;
            }
        }
    }

    if wants(Scenario::Cost) {
        outln!("\n## cost: a backlog of changes, one replica per tier");
        for &mode in &args.modes {
            let pairs = sized(&args, mode, args.backlog).div_ceil(2);
            let c = backfill::run(config, &base_url, mode, pairs, 1, &work_dir)
                .await
                .with_context(|| format!("the cost run, {}", mode.as_str()))?;
            let peak = |tier: &str| c.tiers.iter().filter(|t| t.name.starts_with(tier)).map(|t| t.peak_rss_mb).fold(0.0, f64::max);
            outln!(
                "  {}, {} changes: {:.0} records/s; peak RSS producer {:.0} MB, matcher {:.0} MB, applier {:.0} MB",
                mode.as_str(),
                c.records,
                c.records_per_second,
                peak("producer"),
                peak("matcher"),
                peak("applier")
            );
            results.cost.push(c);
            report::write(&args.out, &results)?;
        }
    }
    if wants(Scenario::Idle) && args.modes.contains(&Mode::Http) {
        outln!(
            "\n## idle: {} pairs synced, then nothing for {} s (after {} s of warm-up)",
            args.idle_pairs,
            args.idle_secs,
            args.idle_warmup_secs
        );
        let warmup = std::time::Duration::from_secs(args.idle_warmup_secs);
        let window = std::time::Duration::from_secs(args.idle_secs);
        let i = idle::run(config, &base_url, args.idle_pairs, warmup, window, &work_dir).await.context("the idle run")?;
        outln!(
            "  {:.0} API calls a day (CRM {:.0}, MA {:.0}); answered in the window: CRM {}, MA {}",
            i.per_day(),
            i.per_day_crm,
            i.per_day_ma,
            i.answered_crm,
            i.answered_ma
        );
        results.idle.push(i);
        report::write(&args.out, &results)?;
    }
    if wants(Scenario::Connections) {
        outln!("\n## connections: {} small connections, one replica per tier", args.connections);
        let c = super::connections::ConnectionsArgs::with_connections(args.connections, work_dir.clone());
        results.connections = Some(super::connections::measure(config, &c).await.context("the connections scenario")?);
        report::write(&args.out, &results)?;
    }
    outln!("\nwritten to {}", args.out.join("results.md").display());
    Ok(())
}
