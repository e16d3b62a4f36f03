//! The benchmark suite's results as files: JSON (every figure, for later
//! comparison), a Markdown page (tables, the machine, the plots) and SVG
//! plots: backfill throughput against the broker's ceiling, steady-lane
//! latency against the offered load, and each tier's memory through the
//! backlog.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::backfill::BackfillRun;
use super::ceiling::Ceiling;
use super::latency::LatencyRun;

/// Where and how a suite ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gb: f64,
    pub kernel: String,
    pub services: Vec<String>,
    pub commit: String,
    pub build: &'static str,
    pub date: String,
}

/// Everything one suite run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub ceiling: Option<Ceiling>,
    pub backfill: Vec<BackfillRun>,
    pub steady: Vec<LatencyRun>,
    /// The backfill with the large backlog, for memory and CPU per record.
    pub cost: Vec<BackfillRun>,
    /// An idle connection's API calls.
    pub idle: Vec<super::idle::IdleRun>,
    /// Many small connections on one deployment, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<super::connections::ConnectionsRun>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| format!("{cmd}: unknown"))
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("unknown").trim();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb: f64 = meminfo.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        Machine {
            cpu: cpu.to_owned(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gb: kb / 1024.0 / 1024.0,
            kernel: first_line("uname", &["-sr"]),
            services: vec![
                first_line("psql", &["--version"]),
                first_line("redis-server", &["--version"]),
                format!("RabbitMQ {}", first_line("rabbitmqctl", &["version"])),
            ],
            commit: first_line("git", &["rev-parse", "--short", "HEAD"]),
            build: if cfg!(debug_assertions) { "debug" } else { "release" },
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

fn ms(v: f64) -> String {
    format!("{v:.0} ms")
}

/// "tier a / tier b" figures of a cost map, in a fixed order.
fn cost_cells(cost: &BTreeMap<String, f64>) -> String {
    ["producer", "matcher", "applier", "sandbox_server", "postgresql", "redis", "rabbitmq"]
        .iter()
        .map(|k| cost.get(*k).map_or("–".to_owned(), |v| format!("{v:.0}")))
        .collect::<Vec<_>>()
        .join(" | ")
}

const COST_HEADER: &str = "producer | matcher | applier | HTTP server | PostgreSQL | Redis | RabbitMQ";

/// A table of CPU milliseconds per 1,000 `what`: each row's own cells
/// (under `keys`), then one per tier and service.
fn cost_table<'a>(s: &mut String, what: &str, keys: &[&str], rows: impl IntoIterator<Item = (Vec<String>, &'a BTreeMap<String, f64>)>) {
    let _ = writeln!(s, "CPU milliseconds per 1,000 {what}:\n");
    let _ = writeln!(s, "| {} | {COST_HEADER} |", keys.join(" | "));
    let _ = writeln!(s, "|{}{}", "---|".repeat(keys.len()), "---:|".repeat(7));
    for (cells, cost) in rows {
        let _ = writeln!(s, "| {} | {} |", cells.join(" | "), cost_cells(cost));
    }
    s.push('\n');
}

fn peak_rss(run: &BackfillRun, tier: &str) -> f64 {
    run.tiers.iter().filter(|t| t.name.starts_with(tier)).map(|t| t.peak_rss_mb).fold(0.0, f64::max)
}

/// RSS at the first and last quarter of a run, the tier's replicas' worst:
/// flat memory shows as two close figures.
fn rss_drift(run: &BackfillRun, tier: &str) -> (f64, f64) {
    let mut early: f64 = 0.0;
    let mut late: f64 = 0.0;
    for t in run.tiers.iter().filter(|t| t.name.starts_with(tier)) {
        let end = t.rss_samples.last().map_or(0.0, |s| s.0);
        for &(at, mb) in &t.rss_samples {
            if at <= end / 4.0 {
                early = early.max(mb);
            } else if at >= end * 3.0 / 4.0 {
                late = late.max(mb);
            }
        }
    }
    (early, late)
}

/// The engine's own CPU (producer, matcher and applier together) per
/// 1,000 records over HTTP next to the direct mode, for each replica count
/// both modes ran with.
fn engine_cpu(s: &mut String, runs: &[BackfillRun]) {
    let engine = |b: &BackfillRun| ["producer", "matcher", "applier"].iter().filter_map(|t| b.cpu_ms_per_1k.get(*t)).sum::<f64>();
    let mut lines = Vec::new();
    for http in runs.iter().filter(|b| b.mode == super::mode::Mode::Http) {
        let direct = runs.iter().find(|b| b.mode == super::mode::Mode::Direct && b.replicas_per_tier == http.replicas_per_tier);
        if let Some(direct) = direct {
            let (h, d) = (engine(http), engine(direct));
            lines.push(format!(
                "{} per tier: {h:.0} ms over HTTP, {d:.0} ms direct, **{:.1}×**",
                http.replicas_per_tier,
                h / d.max(f64::MIN_POSITIVE)
            ));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(s, "The engine's CPU (producer + matcher + applier) per 1,000 records: {}.\n", lines.join("; "));
    }
}

/// The Markdown page.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# crmsync benchmarks\n");
    let _ = writeln!(
        s,
        "Measured by `crmsync bench suite` on {} (commit {}, {} build): {} cores ({}), {:.0} GB, {}; {}.\n",
        m.date,
        m.commit,
        m.build,
        m.cores,
        m.cpu,
        m.memory_gb,
        m.kernel,
        m.services.join(", ")
    );
    let _ = writeln!(
        s,
        "All services, the tiers (separate processes) and the load generator share this machine, so figures move with its load: \
         compare ratios measured in one run. JSON with every figure: [results.json](results.json).\n"
    );
    let ceiling = r.ceiling.as_ref().map_or(0.0, |c| c.messages_per_second);
    if let Some(c) = &r.ceiling {
        let _ = writeln!(s, "## The broker's ceiling\n");
        let _ = writeln!(
            s,
            "RabbitMQ alone moved {} persistent, publisher-confirmed messages of {} B through two quorum queues, with consumers that \
             do no work (prefetch {}): **{:.0} messages/s** end to end ({:.1} s).\n",
            c.messages, c.message_bytes, c.prefetch, c.messages_per_second, c.seconds
        );
    }
    if !r.backfill.is_empty() {
        let _ = writeln!(s, "## Backfill\n");
        let _ = writeln!(
            s,
            "Linked prospect ↔ lead pairs, each with a value only one side holds (two changes a pair), the batch budget lifted. \
             Time from the tiers' start until every pair holds both values on both sides, read from the systems. *Changes published*: \
             what the producers sent on. A pair's second change is dropped by its producer as already known when the first has been \
             matched by the time it is read. When it has not, the matcher drops it once the first has linked the pair (*skipped as \
             known*), or the applier works it through for nothing (*no change*) when both were matched before the link was stored: \
             each costs more than a change never published, so these move the throughput from run to run.\n"
        );
        let _ = writeln!(
            s,
            "| mode | replicas per tier | pairs | records | changes published | skipped as known | no change | converged in | records/s | × ceiling | peak queued messages | API calls (MA + CRM) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for b in &r.backfill {
            let ratio = if ceiling > 0.0 { format!("{:.2}×", b.records_per_second / ceiling) } else { "–".into() };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {:.0} | {} | {} | {} |",
                b.mode.as_str(),
                b.replicas_per_tier,
                b.pairs,
                b.records,
                b.published,
                b.skipped_as_known,
                b.applied_unchanged,
                b.converge_seconds,
                b.records_per_second,
                ratio,
                b.peak_backlog_messages,
                match (b.api_calls, b.api_calls_ma, b.api_calls_crm) {
                    (Some(c), Some(ma), Some(crm)) => format!("{c} ({ma} + {crm})"),
                    (c, ..) => c.map_or("–".into(), |c| c.to_string()),
                }
            );
        }
        let _ = writeln!(s, "\n![Backfill throughput](throughput.svg)\n");
        let rows = r.backfill.iter().map(|b| (vec![b.mode.as_str().to_owned(), b.replicas_per_tier.to_string()], &b.cpu_ms_per_1k));
        cost_table(&mut s, "records", &["mode", "replicas"], rows);
        engine_cpu(&mut s, &r.backfill);
        let rows = r.backfill.iter().filter_map(|b| {
            b.api_by_kind.as_ref().map(|c| (vec![b.mode.as_str().to_owned(), b.replicas_per_tier.to_string()], c, b.records))
        });
        super::api::table(&mut s, "records", &["mode", "replicas"], rows);
    }
    if !r.steady.is_empty() {
        let _ = writeln!(s, "## Steady immediate lane\n");
        let _ = writeln!(
            s,
            "Edits on linked pairs at a fixed offered rate, on one side (MA → CRM: prospect edits; CRM → MA: lead edits, which \
             over HTTP reach the engine as the org's change events); latency from the edit's commit on its side to the same \
             value's commit on the other, both read from row triggers. *Merged* edits were overtaken by a newer edit of the same pair before they \
             were written (the newer value is what synced). *Sustained*: committed at ≥ 95% of the offered rate, and the \
             pipeline less than 1 s behind when the load stopped.\n"
        );
        let _ = writeln!(
            s,
            "| mode | direction | offered/s | achieved/s | synced | merged | p50 | p95 | p99 | max | behind at end | sustained |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for l in &r.steady {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.mode.as_str(),
                l.direction.as_str(),
                l.offered_per_second,
                l.achieved_per_second,
                l.synced,
                l.merged,
                ms(l.p50_ms),
                ms(l.p95_ms),
                ms(l.p99_ms),
                ms(l.max_ms),
                ms(l.lag_at_end_ms),
                if l.sustained { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(s, "\n![Latency](latency.svg)\n");
        let key =
            |l: &LatencyRun| vec![l.mode.as_str().to_owned(), l.direction.as_str().to_owned(), format!("{:.0}", l.offered_per_second)];
        let rows = r.steady.iter().map(|l| (key(l), &l.cpu_ms_per_1k));
        cost_table(&mut s, "edits", &["mode", "direction", "offered/s"], rows);
        let rows = r.steady.iter().filter_map(|l| l.api_calls.as_ref().map(|c| (key(l), c, l.edits)));
        super::api::table(&mut s, "edits", &["mode", "direction", "offered/s"], rows);
    }
    if !r.idle.is_empty() {
        super::idle::markdown(&mut s, &r.idle);
    }
    if let Some(c) = &r.connections {
        s.push_str(&super::connections_report::markdown(c));
        s.push('\n');
    }
    if !r.cost.is_empty() {
        let _ = writeln!(s, "## Cost with a large backlog\n");
        let _ = writeln!(
            s,
            "The backfill with one replica per tier and a large backlog (the records column). Peak RSS is the kernel's high-water mark \
             (VmHWM); *first / last quarter* are the largest RSS sampled (every 0.5 s) in the first and last quarter of the run: \
             memory that grew with the backlog would show there.\n"
        );
        let _ = writeln!(
            s,
            "| mode | records | records/s | producer peak RSS | matcher peak RSS | applier peak RSS | first / last quarter (producer, matcher, applier) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
        for c in &r.cost {
            let drift: Vec<String> = ["producer", "matcher", "applier"]
                .iter()
                .map(|t| {
                    let (a, b) = rss_drift(c, t);
                    format!("{a:.0} / {b:.0} MB")
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} MB | {:.0} MB | {:.0} MB | {} |",
                c.mode.as_str(),
                c.records,
                c.records_per_second,
                peak_rss(c, "producer"),
                peak_rss(c, "matcher"),
                peak_rss(c, "applier"),
                drift.join("; ")
            );
        }
        s.push('\n');
        cost_table(&mut s, "records", &["mode"], r.cost.iter().map(|c| (vec![c.mode.as_str().to_owned()], &c.cpu_ms_per_1k)));
        let _ = writeln!(s, "![Memory through the backlog](memory.svg)\n");
    }
    s
}

type Plot = Result<(), Box<dyn std::error::Error>>;

/// Every plot's end: the legend at `at`, then the file written.
fn finish<'a, CT: plotters::coord::CoordTranslate>(
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    at: SeriesLabelPosition,
) -> Plot {
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(at).draw()?;
    root.present()?;
    Ok(())
}

/// Every plot's frame: its caption, margins and axis label room.
fn frame<'a, 'b, DB: DrawingBackend>(root: &'a DrawingArea<DB, plotters::coord::Shift>, caption: &'b str) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(root);
    b.caption(caption, ("sans-serif", 20)).margin(12).x_label_area_size(36).y_label_area_size(64);
    b
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Backfill records/s per run as bars, the ceiling as a line.
fn throughput_svg(path: &Path, runs: &[BackfillRun], ceiling: f64) -> Plot {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = runs.iter().map(|r| format!("{}, {} per tier", r.mode.as_str(), r.replicas_per_tier)).collect();
    let top = runs.iter().map(|r| r.records_per_second).fold(ceiling, f64::max).max(1.0) * 1.2;
    let mut chart =
        frame(&root, "Backfill: records/s end to end").build_cartesian_2d((0..runs.len().saturating_sub(1)).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("records/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart
        .draw_series(runs.iter().enumerate().map(|(i, r)| {
            let mut bar =
                Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), r.records_per_second)], PALETTE[0].filled());
            bar.set_margin(0, 0, 20, 20);
            bar
        }))?
        .label("crmsync")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], PALETTE[0].filled()));
    if ceiling > 0.0 {
        chart
            .draw_series(LineSeries::new([(SegmentValue::Exact(0), ceiling), (SegmentValue::Last, ceiling)], PALETTE[3].stroke_width(2)))?
            .label("RabbitMQ two-hop ceiling (messages/s)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], PALETTE[3].stroke_width(2)));
    }
    finish(&root, &mut chart, SeriesLabelPosition::UpperRight)
}

/// p50 and p99 against the offered rate, one line pair per mode.
fn latency_svg(path: &Path, runs: &[LatencyRun]) -> Plot {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_rate = runs.iter().map(|r| r.offered_per_second).fold(100.0, f64::max) * 1.5;
    let max_ms = runs.iter().map(|r| r.p99_ms).fold(10.0, f64::max) * 2.0;
    let mut chart = frame(&root, "Immediate lane: source commit → target commit")
        .build_cartesian_2d((50.0..max_rate).log_scale(), (1.0..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered changes/s")
        .y_desc("latency, ms (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut colour = 0;
    let directions = [super::latency::Direction::MaToCrm, super::latency::Direction::CrmToMa];
    for (mode, direction) in [super::mode::Mode::Direct, super::mode::Mode::Http].into_iter().flat_map(|m| directions.map(|d| (m, d))) {
        let of_mode: Vec<&LatencyRun> = runs.iter().filter(|r| r.mode == mode && r.direction == direction).collect();
        if of_mode.is_empty() {
            continue;
        }
        for (what, pick) in [("p50", (|r: &LatencyRun| r.p50_ms) as fn(&LatencyRun) -> f64), ("p99", |r: &LatencyRun| r.p99_ms)] {
            let style = PALETTE[colour % PALETTE.len()];
            colour += 1;
            let points: Vec<(f64, f64)> = of_mode.iter().map(|r| (r.offered_per_second, pick(r).max(1.0))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), style.stroke_width(2)).point_size(4))?
                .label(format!("{} {} {what}", mode.as_str(), direction.as_str()))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], style.stroke_width(2)));
        }
    }
    finish(&root, &mut chart, SeriesLabelPosition::UpperLeft)
}

/// Each tier replica's RSS through the cost runs.
fn memory_svg(path: &Path, runs: &[BackfillRun]) -> Plot {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = runs.iter().flat_map(|r| &r.tiers).filter_map(|t| t.rss_samples.last()).map(|s| s.0).fold(1.0, f64::max);
    let top = runs.iter().flat_map(|r| &r.tiers).flat_map(|t| &t.rss_samples).map(|s| s.1).fold(10.0, f64::max) * 1.2;
    let mut chart = frame(&root, "Resident memory through the backlog").build_cartesian_2d(0.0..end, 0.0..top)?;
    chart.configure_mesh().x_desc("seconds").y_desc("RSS, MB").y_label_formatter(&|v| format!("{v:.0}")).draw()?;
    let mut colour = 0;
    for r in runs {
        for t in &r.tiers {
            let style = PALETTE[colour % PALETTE.len()];
            colour += 1;
            chart
                .draw_series(LineSeries::new(t.rss_samples.clone(), style.stroke_width(2)))?
                .label(format!("{} {}", r.mode.as_str(), t.name))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], style.stroke_width(2)));
        }
    }
    finish(&root, &mut chart, SeriesLabelPosition::UpperRight)
}

fn plot(what: &str, result: Plot) -> anyhow::Result<()> {
    result.map_err(|e| anyhow::anyhow!("drawing the {what} plot: {e}"))
}

/// Writes results.json, results.md and the plots into `dir`.
pub fn write(dir: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(results)?)?;
    std::fs::write(dir.join("results.md"), markdown(results))?;
    if !results.backfill.is_empty() {
        let ceiling = results.ceiling.as_ref().map_or(0.0, |c| c.messages_per_second);
        plot("throughput", throughput_svg(&dir.join("throughput.svg"), &results.backfill, ceiling))?;
    }
    if !results.steady.is_empty() {
        plot("latency", latency_svg(&dir.join("latency.svg"), &results.steady))?;
    }
    if !results.cost.is_empty() {
        plot("memory", memory_svg(&dir.join("memory.svg"), &results.cost))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_tables_have_a_column_per_tier_and_service() {
        let cost = BTreeMap::from([("producer".to_owned(), 120.4), ("postgresql".to_owned(), 600.0)]);
        let mut s = String::new();
        cost_table(&mut s, "records", &["mode", "replicas"], [(vec!["direct".to_owned(), "2".to_owned()], &cost)]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "CPU milliseconds per 1,000 records:");
        assert_eq!(lines[2], format!("| mode | replicas | {COST_HEADER} |"));
        // Every header cell has its alignment cell.
        assert_eq!(lines[3].matches('|').count(), lines[2].matches('|').count());
        assert_eq!(lines[4], "| direct | 2 | 120 | – | – | – | 600 | – | – |");
    }
}
