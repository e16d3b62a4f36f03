//! The isolation scenario of `crmsync bench connections` (issue 29): does
//! one connection's trouble reach the others? K of the N connections (the
//! editors) make live edits at a steady rate, each small enough for the
//! immediate lane, and their latency (commit in the MA → the same value
//! committed in the CRM, `edits`) is measured in three windows of the
//! same length:
//! - **quiet**: nothing else happening;
//! - **failing CRM**: another connection's CRM refuses every call
//!   (`failing_crm`);
//! - **backfill**: another connection works through a backlog of
//!   `--isolation-backfill` records (two per linked pair, seeded in slices
//!   while it is paused), in two windows one after the other:
//!   - **at its own budget** (12,000 records an hour, as every connection
//!     runs): resumed as the window starts, its producer reads the backlog
//!     no further ahead of the budget than `producer.batch_ahead_secs`,
//!     the matcher and the applier's intake take that into its lane, and
//!     its writes wait for the budget;
//!   - **budget lifted** (as the single-connection run, an operator's
//!     override and the worst case): its lane drains as fast as the
//!     machine allows, beside whatever of the first part is left.
//!
//! How far the backfill got in each window is read from its lane's
//! tallies, so the reader sees that it ran, and it is then left to finish
//! before anything else is measured.
//!
//! The target: the editors' p99 in either troubled window at most twice
//! the quiet one. What the scenario changed is put back (the backfilling
//! connection's settings, the failing one's CRM, the triggers).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use crmsync_domain::Lane;
use crmsync_infra::Config;
use crmsync_sandbox::ops::Sandbox;
use crmsync_store::admin_audit::Actor;
use crmsync_store::{audit, batch_lanes, connections, feeds};
use serde::Serialize;
use sqlx::PgPool;

use super::edits::{self, Direction};
use super::failing_crm::{self, FailingCrm};
use crate::progress;

/// The editors' latency over one window.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEdits {
    pub window: String,
    pub offered_per_second: f64,
    pub seconds: f64,
    pub edits: u64,
    pub achieved_per_second: f64,
    /// Edits whose value reached the CRM; those still on their way when
    /// the waiting stopped (each record's latest edit); and those a newer
    /// edit of the same record overtook before they were written.
    pub synced: u64,
    pub still_waiting: u64,
    pub merged: u64,
    /// Over the synced edits and, at the time they had waited so far, the
    /// ones still waiting: with any still waiting, lower bounds.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// After the last edit, until every edited record's latest value had
    /// reached the CRM (none: not within `CATCH_UP`).
    pub caught_up_seconds: Option<f64>,
}

/// How long the editors' last values are waited for after a window.
pub const CATCH_UP: Duration = Duration::from_secs(300);

/// The window of the backfill at the connection's own budget.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// Its budget, records an hour, and burst.
    pub budget_per_hour: u32,
    pub burst: u32,
    pub live: LiveEdits,
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub window_seconds: f64,
    /// Changes of the backlog its producer published in the window, those
    /// applied, and records waiting in its lane at the window's end.
    pub published_in_window: i64,
    pub applied_in_window: i64,
    pub queued_at_window_end: i64,
}

/// One connection backfilling while the editors edit.
#[derive(Debug, Clone, Serialize)]
pub struct Backfill {
    pub connection: String,
    /// Records in its backlog (a prospect and a lead per pair).
    pub records: i64,
    pub pairs: i64,
    pub seed_seconds: f64,
    /// First at its own budget.
    pub held: Option<Held>,
    /// Then with its budget lifted.
    pub live: LiveEdits,
    /// The editors' p50 and p99 over the quiet window's.
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// From its resume until the editors' last values had arrived.
    pub window_seconds: f64,
    /// Changes of the backlog its producer published in the window, and
    /// those applied in the window (apply entries: a pair's two changes
    /// are mostly applied as one, writing both records), and per second.
    pub published_in_window: i64,
    pub applied_in_window: i64,
    pub applied_per_second: f64,
    /// Whether it was still working at the window's end (changes not
    /// published or not finished yet, or records waiting in its lane).
    pub running_at_window_end: bool,
    /// From its resume to its last change finished and its lane empty,
    /// watched every half second from the resume on (none: not within the
    /// limit; it was paused then).
    pub finished_seconds: Option<f64>,
}

/// One connection whose CRM refuses every call while the editors edit.
#[derive(Debug, Clone, Serialize)]
pub struct Failing {
    pub crm: FailingCrm,
    pub live: LiveEdits,
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    /// The editing connections, and the records they edit round-robin.
    pub editors: usize,
    pub edited_records: usize,
    pub window_seconds: f64,
    pub quiet: LiveEdits,
    pub backfill: Option<Backfill>,
    pub failing_crm: Option<Failing>,
}

/// What the scenario is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Records to backfill (0: not measured).
    pub backfill_records: i64,
    pub editors: usize,
    pub rate: f64,
    pub window: Duration,
    pub failing_crm: bool,
}

/// The running world the scenario works in, and the editors' records.
pub(super) struct World<'a> {
    pub pool: &'a PgPool,
    /// The run's configuration (its Redis prefix holds the API counts).
    pub config: &'a Config,
    pub logs: &'a Path,
    /// The tiers' logs are `{run_name}-{tier}-{i}.log`.
    pub run_name: &'a str,
    editor_tenants: Vec<String>,
    targets: Vec<edits::Target>,
    rate: f64,
}

impl World<'_> {
    /// The editors edit for `window`, values labelled `label`; then waits
    /// for their last values to arrive and reads the latencies.
    pub(super) async fn live_window(&self, label: &str, window: Duration) -> anyhow::Result<LiveEdits> {
        let started = Instant::now();
        // Enough writers that the schedule holds while the database is busy.
        let writers = ((self.rate / 25.0).ceil() as usize).max(4);
        let edits = edits::offer(self.pool, Direction::MaToCrm, &self.targets, label, self.rate, window.as_secs_f64(), writers).await?;
        let offered_for = started.elapsed().as_secs_f64();
        let stopped = Instant::now();
        let caught_up_seconds = loop {
            if edits::behind(self.pool, label, &self.editor_tenants).await? == 0 {
                break Some(stopped.elapsed().as_secs_f64());
            }
            if stopped.elapsed() > CATCH_UP {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Both read from one snapshot, so that an edit arriving in between
        // is not counted twice.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        let waiting = if caught_up_seconds.is_some() { Vec::new() } else { edits::waiting(&mut *tx, label, &self.editor_tenants).await? };
        let mut ms = edits::latencies(&mut *tx, Direction::MaToCrm, label).await?;
        tx.commit().await?;
        let synced = ms.len() as u64;
        let still_waiting = waiting.len() as u64;
        ms.extend(waiting);
        ms.sort_by(f64::total_cmp);
        Ok(LiveEdits {
            window: String::new(),
            offered_per_second: self.rate,
            seconds: window.as_secs_f64(),
            edits,
            achieved_per_second: edits as f64 / offered_for,
            synced,
            still_waiting,
            merged: edits.saturating_sub(synced + still_waiting),
            p50_ms: edits::percentile(&ms, 50.0),
            p95_ms: edits::percentile(&ms, 95.0),
            p99_ms: edits::percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
            caught_up_seconds,
        })
    }
}

fn print(l: &LiveEdits, quiet: Option<&LiveEdits>) -> anyhow::Result<()> {
    let vs = quiet.and_then(|q| edits::ratio(l.p99_ms, q.p99_ms)).map_or(String::new(), |r| format!(", p99 {r:.2}× the quiet one"));
    outln!(
        "  isolation, {}: {} edits at {:.1}/s, {} synced, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{vs}{}",
        l.window,
        l.edits,
        l.achieved_per_second,
        l.synced,
        l.p50_ms,
        l.p99_ms,
        l.max_ms,
        if l.still_waiting > 0 {
            format!(" ({} still on their way after {} s, counted at their wait so far: lower bounds)", l.still_waiting, CATCH_UP.as_secs())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A connection's sandbox tenant (its MA's, which its CRM shares here).
async fn tenant_of(pool: &PgPool, id: &str) -> anyhow::Result<String> {
    let settings = connections::load(pool, id).await?;
    settings.ma.sandbox_tenant().map(str::to_owned).with_context(|| format!("{id}'s MA is not a sandbox tenant"))
}

/// Runs the scenario over the running tiers of `ids`: the first connection
/// backfills, the second loses its CRM, the next `plan.editors` edit. None
/// when there are too few.
pub(super) async fn measure(
    pool: &PgPool,
    config: &Config,
    logs: &Path,
    run_name: &str,
    ids: &[String],
    plan: &Plan,
) -> anyhow::Result<Option<Isolation>> {
    let editors = plan.editors.min(ids.len().saturating_sub(2));
    if editors == 0 || plan.rate <= 0.0 {
        return Ok(None);
    }
    let mut editor_tenants = Vec::new();
    for id in &ids[2..2 + editors] {
        editor_tenants.push(tenant_of(pool, id).await?);
    }
    edits::install(pool).await?;
    let targets = edits::targets(pool, Direction::MaToCrm, &editor_tenants, "%@conn.example").await?;
    let world = World { pool, config, logs, run_name, editor_tenants, targets, rate: plan.rate };
    let measured = async {
        outln!(
            "  isolation: {editors} connections edit {} records at {:.0} edits/s, {} s per window",
            world.targets.len(),
            plan.rate,
            plan.window.as_secs()
        );
        let mut quiet = world.live_window("q", plan.window).await.context("the quiet window")?;
        quiet.window = "quiet".to_owned();
        print(&quiet, None)?;
        let failing_crm = if plan.failing_crm {
            let (crm, mut live) = failing_crm::measure(&world, &ids[1], &tenant_of(pool, &ids[1]).await?, plan.window)
                .await
                .context("the failing-CRM window")?;
            live.window = "one connection's CRM refusing every call".to_owned();
            print(&live, Some(&quiet))?;
            Some(Failing {
                p50_ratio: edits::ratio(live.p50_ms, quiet.p50_ms),
                p99_ratio: edits::ratio(live.p99_ms, quiet.p99_ms),
                crm,
                live,
            })
        } else {
            None
        };
        let backfill = if plan.backfill_records > 0 {
            let b = backfill(&world, &ids[0], &tenant_of(pool, &ids[0]).await?, plan, &quiet).await.context("the backfill window")?;
            Some(b)
        } else {
            None
        };
        anyhow::Ok(Isolation {
            editors,
            edited_records: world.targets.len(),
            window_seconds: plan.window.as_secs_f64(),
            quiet,
            backfill,
            failing_crm,
        })
    }
    .await;
    edits::remove(pool).await?;
    measured.map(Some)
}

/// Pairs seeded per statement: each well under a second, so that sqlx's
/// slow-statement warnings do not fill the run's output.
const SLICE: i64 = 5_000;

/// Seeds the backlog while `connection` is paused, resumes it at its own
/// budget for one window of edits, lifts its budget for a second, and lets
/// it finish after that.
async fn backfill(w: &World<'_>, connection: &str, tenant: &str, plan: &Plan, quiet: &LiveEdits) -> anyhow::Result<Backfill> {
    let pool = w.pool;
    let pairs = (plan.backfill_records / 2).max(1);
    let actor = Actor { name: "bench".to_owned(), via: "cli" };
    let saved = connections::load(pool, connection).await?;
    let mut lifted = saved.clone();
    // As the single-connection run: only the pipeline sets the pace.
    lifted.batch_budget_per_hour = 3_600_000_000;
    lifted.batch_burst = 10_000;
    crmsync_ops::pause::set_paused(pool, &actor, connection, true).await?;
    let measured = async {
        let seeding = Instant::now();
        let sb = Sandbox::new(pool.clone(), tenant);
        let bar = progress::bar(u64::try_from(pairs)?, "backlog pairs seeded");
        for from in (1..=pairs).step_by(usize::try_from(SLICE)?) {
            let to = (from + SLICE - 1).min(pairs);
            sb.seed_pair_range("b", "backfill.example", from..=to).await?;
            bar.set_position(u64::try_from(to)?);
        }
        bar.finish_and_clear();
        // Vacuumed as well as analysed: a million rows just inserted start
        // PostgreSQL's autovacuum on both tables, which ran inside the
        // window at the connection's own budget (01:27 in one run, the
        // editors' p99 4× the quiet one with 1,401 records read): the
        // bench's seeding, not the backfill, taking the cores.
        sqlx::query("VACUUM (ANALYZE) crm.leads, ma.prospects").execute(pool).await?;
        let seed_seconds = seeding.elapsed().as_secs_f64();
        outln!("  isolation, backfill: {} records ({pairs} pairs) seeded in {connection}'s tenant in {seed_seconds:.1} s", 2 * pairs);

        let before = lane_progress(pool, connection).await?;
        crmsync_ops::pause::set_paused(pool, &actor, connection, false).await?;
        let held = held_window(w, connection, &saved, &before, quiet, plan.window).await?;
        let before_lift = lane_progress(pool, connection).await?;
        // Watched from the lift, so that a backfill that finishes inside
        // the window is timed too; left to finish after the window, so
        // that what is measured next is not measured beside it.
        let limit = Duration::from_secs(300 + u64::try_from(pairs)? / 100);
        let bar = progress::bar(u64::try_from(pairs)?, "backlog changes applied");
        connections::save(pool, connection, &lifted).await?;
        let resumed = Instant::now();
        let watcher = tokio::spawn(watch(pool.clone(), connection.to_owned(), before, pairs, limit, bar.clone()));
        let live = w.live_window("b", plan.window).await;
        // Read as the edits stopped (and their last values arrived): the
        // window's own figures.
        let after = lane_progress(pool, connection).await;
        let window = resumed.elapsed().as_secs_f64();
        let finished_seconds = if live.is_ok() && after.is_ok() {
            watcher.await??
        } else {
            watcher.abort();
            None
        };
        bar.finish_and_clear();
        let (mut live, after) = (live?, after?);
        live.window = format!("{connection} backfilling {} records, its budget lifted", 2 * pairs);
        print(&live, Some(quiet))?;
        let applied = after.applied - before_lift.applied;
        let running = !after.done_since(&before, pairs);
        outln!(
            "  isolation, backfill lifted: {} changes published and {applied} applied in the {window:.0} s window ({:.0}/s){}",
            after.published - before_lift.published,
            applied as f64 / window,
            if running { "; still running at the window's end" } else { "; finished within the window" }
        );
        match finished_seconds {
            Some(s) => {
                outln!(
                    "  isolation, backfill: all of it done {s:.1} s after its budget was lifted ({:.0} records/s)",
                    2.0 * pairs as f64 / s
                );
            }
            None => {
                crmsync_ops::pause::set_paused(pool, &actor, connection, true).await?;
                crate::out::err_line(format_args!("  the backfill did not finish in {limit:?}: paused"));
            }
        }
        anyhow::Ok(Backfill {
            connection: connection.to_owned(),
            records: 2 * pairs,
            pairs,
            seed_seconds,
            held: Some(held),
            p50_ratio: edits::ratio(live.p50_ms, quiet.p50_ms),
            p99_ratio: edits::ratio(live.p99_ms, quiet.p99_ms),
            live,
            published_in_window: after.published - before_lift.published,
            applied_in_window: applied,
            applied_per_second: applied as f64 / window,
            window_seconds: window,
            running_at_window_end: running,
            finished_seconds,
        })
    }
    .await;
    // Its own budget back (the full-budget scenario reads every burst as
    // the default); a paused connection stays paused.
    connections::save(pool, connection, &saved).await.context("putting the backfilling connection's settings back")?;
    measured
}

/// The editors' window while `connection`, just resumed at its own budget
/// (`saved`), reads, matches and queues its backlog.
async fn held_window(
    w: &World<'_>,
    connection: &str,
    saved: &crmsync_domain::settings::ConnectionSettings,
    before: &LaneProgress,
    quiet: &LiveEdits,
    window: Duration,
) -> anyhow::Result<Held> {
    let started = Instant::now();
    let mut live = w.live_window("h", window).await?;
    let after = lane_progress(w.pool, connection).await?;
    let window_seconds = started.elapsed().as_secs_f64();
    live.window = format!("{connection} backfilling at its own budget");
    print(&live, Some(quiet))?;
    let held = Held {
        budget_per_hour: saved.batch_budget_per_hour,
        burst: saved.batch_burst,
        p50_ratio: edits::ratio(live.p50_ms, quiet.p50_ms),
        p99_ratio: edits::ratio(live.p99_ms, quiet.p99_ms),
        live,
        window_seconds,
        published_in_window: after.published - before.published,
        applied_in_window: after.applied - before.applied,
        queued_at_window_end: after.queued,
    };
    outln!(
        "  isolation, backfill at its budget ({}/h): {} changes published, {} applied, {} records in its lane after the {window_seconds:.0} s window",
        held.budget_per_hour,
        held.published_in_window,
        held.applied_in_window,
        held.queued_at_window_end
    );
    Ok(held)
}

/// Seconds from now until the backlog of `pairs` published after `before`
/// is done (none: not within `limit`), showing how far it is on `bar`.
async fn watch(
    pool: PgPool,
    connection: String,
    before: LaneProgress,
    pairs: i64,
    limit: Duration,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<Option<f64>> {
    let started = Instant::now();
    loop {
        let p = lane_progress(&pool, &connection).await?;
        bar.set_position(u64::try_from((p.applied - before.applied).clamp(0, pairs))?);
        if p.done_since(&before, pairs) {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        if started.elapsed() > limit {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How far a connection's work is, from its tallies.
#[derive(Debug, Clone, Copy)]
struct LaneProgress {
    /// Changes its producer published, and those finished by any stage.
    published: i64,
    finished: i64,
    /// Apply entries of both lanes (a pass that found few changes sends
    /// them to the immediate lane).
    applied: i64,
    /// Records waiting in its batch lane.
    queued: i64,
}

impl LaneProgress {
    /// Whether a backlog of `pairs` pairs, published after `before`, is
    /// done: a change published for each pair at least, every change
    /// published finished, and nothing waiting in the lane.
    fn done_since(&self, before: &LaneProgress, pairs: i64) -> bool {
        self.published - before.published >= pairs && self.finished >= self.published && self.queued == 0
    }
}

/// A few rows each, cheap enough to read every second.
async fn lane_progress(pool: &PgPool, connection: &str) -> anyhow::Result<LaneProgress> {
    let published = feeds::all(pool, connection).await?.iter().map(|f| f.published).sum();
    let finished = audit::finished_changes(pool, connection).await?;
    let mut applied = 0;
    for lane in [Lane::Batch, Lane::Immediate] {
        applied += audit::lane_tally(pool, connection, lane.as_str()).await?.applied;
    }
    let queued = batch_lanes::queued(pool, connection).await?;
    Ok(LaneProgress { published, finished, applied, queued })
}
