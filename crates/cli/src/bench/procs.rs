//! What the processes of a benchmark cost: CPU time and memory, read from
//! `/proc` (Linux). The tiers are this benchmark's own children; the
//! services (PostgreSQL, Redis, RabbitMQ) are found by their command names
//! and summed, all of their processes together, because each spreads its
//! work over several (PostgreSQL's backends, RabbitMQ's Erlang VM and its
//! helpers). CPU is compared before and after a scenario; memory is sampled
//! through it, so a tier that grew with the backlog shows as a rising line,
//! not only as a peak.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks a second in `/proc/<pid>/stat` (`_SC_CLK_TCK`, 100 on every
/// Linux this runs on; reading it would need `libc`).
const TICKS_PER_SECOND: f64 = 100.0;

/// A service and the command names of its processes.
const SERVICES: &[(&str, &[&str])] =
    &[("postgresql", &["postgres"]), ("redis", &["redis-server"]), ("rabbitmq", &["beam.smp", "erl_child_setup", "epmd", "inet_gethost"])];

/// CPU time (user + system) of one process, in milliseconds; with
/// `children`, also that of its children that have ended and been waited
/// for (`cutime`, `cstime`).
fn cpu_ms(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields
    // after the last ')'. utime, stime, cutime and cstime are fields 14 to
    // 17 (1-based).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let count = if children { 4 } else { 2 };
    let ticks = fields.get(11..11 + count)?.iter().map(|f| f.parse::<f64>().ok()).sum::<Option<f64>>()?;
    Some(ticks * 1000.0 / TICKS_PER_SECOND)
}

/// A `VmXxx:` figure of `/proc/<pid>/status`, in MB.
fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Current resident memory of `pid`, MB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

/// Peak resident memory of `pid` since it started, MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

/// Every process's pid and command name.
fn processes() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

/// CPU milliseconds used so far by each service's processes, together.
/// Processes that have ended count through their parent's children times:
/// PostgreSQL's postmaster waits for every backend and parallel worker, so
/// those started and ended within a scenario (a parallel query's workers
/// live for one statement) are in the sum.
pub fn services_cpu_ms() -> BTreeMap<String, f64> {
    let procs = processes();
    SERVICES
        .iter()
        .map(|(service, names)| {
            let total = procs.iter().filter(|(_, comm)| names.contains(&comm.as_str())).filter_map(|(pid, _)| cpu_ms(*pid, true)).sum();
            ((*service).to_owned(), total)
        })
        .collect()
}

/// Proportional set size of `pid` (shared pages divided among the
/// processes sharing them), MB; its RSS where `smaps_rollup` is unreadable.
fn pss_mb(pid: u32) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok();
    let pss = rollup
        .as_deref()
        .and_then(|r| r.lines().find(|l| l.starts_with("Pss:")))
        .and_then(|l| l["Pss:".len()..].trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    pss.map(|kb| kb / 1024.0).or_else(|| rss_mb(pid))
}

/// Memory of each service's processes together, MB: their PSS summed, so
/// PostgreSQL's shared buffers count once and not once per backend.
pub fn services_memory_mb() -> BTreeMap<String, f64> {
    let procs = processes();
    SERVICES
        .iter()
        .map(|(service, names)| {
            let total = procs.iter().filter(|(_, comm)| names.contains(&comm.as_str())).filter_map(|(pid, _)| pss_mb(*pid)).sum();
            ((*service).to_owned(), total)
        })
        .collect()
}

/// One tier replica being watched.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// CPU and memory of each watched process over a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCost {
    pub name: String,
    pub cpu_ms: f64,
    pub peak_rss_mb: f64,
    /// Resident memory sampled through the scenario: (seconds, MB).
    pub rss_samples: Vec<(f64, f64)>,
}

/// Samples the watched processes until stopped; `finish` returns what each
/// cost since `start`.
#[derive(Debug)]
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<BTreeMap<u32, Vec<(f64, f64)>>>,
    watched: Vec<Watched>,
    cpu_at_start: BTreeMap<u32, f64>,
    services_at_start: BTreeMap<String, f64>,
}

impl Sampler {
    pub fn start(watched: Vec<Watched>, every: Duration) -> Sampler {
        let cpu_at_start = watched.iter().map(|w| (w.pid, cpu_ms(w.pid, false).unwrap_or(0.0))).collect();
        let services_at_start = services_cpu_ms();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let pids: Vec<u32> = watched.iter().map(|w| w.pid).collect();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
            loop {
                let t = started.elapsed().as_secs_f64();
                for &pid in &pids {
                    if let Some(mb) = rss_mb(pid) {
                        samples.entry(pid).or_default().push((t, mb));
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            samples
        });
        Sampler { stop, task, watched, cpu_at_start, services_at_start }
    }

    /// Stops sampling: each watched process's cost, and each service's CPU
    /// milliseconds, since the start. Call it while the processes still run.
    pub async fn finish(self) -> (Vec<ProcessCost>, BTreeMap<String, f64>) {
        let services_now = services_cpu_ms();
        let cpu_now: BTreeMap<u32, f64> = self.watched.iter().map(|w| (w.pid, cpu_ms(w.pid, false).unwrap_or(0.0))).collect();
        let peaks: BTreeMap<u32, f64> = self.watched.iter().map(|w| (w.pid, peak_rss_mb(w.pid).unwrap_or(0.0))).collect();
        let _ = self.stop.send(true);
        let mut samples = self.task.await.unwrap_or_default();
        let tiers = self
            .watched
            .iter()
            .map(|w| ProcessCost {
                name: w.name.clone(),
                cpu_ms: cpu_now[&w.pid] - self.cpu_at_start[&w.pid],
                peak_rss_mb: peaks[&w.pid],
                rss_samples: samples.remove(&w.pid).unwrap_or_default(),
            })
            .collect();
        let services = services_now
            .into_iter()
            .map(|(s, now)| (s.clone(), (now - self.services_at_start.get(&s).copied().unwrap_or(0.0)).max(0.0)))
            .collect();
        (tiers, services)
    }
}

/// CPU milliseconds per 1,000 records, per tier (replicas summed) and per
/// service.
pub fn per_thousand(tiers: &[ProcessCost], services: &BTreeMap<String, f64>, records: u64) -> BTreeMap<String, f64> {
    let per = |ms: f64| if records == 0 { 0.0 } else { ms * 1000.0 / records as f64 };
    let mut out = BTreeMap::new();
    for t in tiers {
        // "matcher-1" counts as "matcher".
        let tier = t.name.split('-').next().unwrap_or(&t.name).to_owned();
        *out.entry(tier).or_insert(0.0) += per(t.cpu_ms);
    }
    for (s, ms) in services {
        out.insert(s.clone(), per(*ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        // Burn a little CPU so the figure is above zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_ms(me, false).is_some_and(|ms| ms >= 0.0));
        assert!(rss_mb(me).is_some_and(|mb| mb > 1.0));
        assert!(peak_rss_mb(me).is_some_and(|mb| mb >= rss_mb(me).unwrap_or(0.0) - 1.0));
    }

    #[test]
    fn a_child_that_has_ended_counts_with_its_parent() {
        let me = std::process::id();
        let before = cpu_ms(me, true).unwrap() - cpu_ms(me, false).unwrap();
        // A child that burns CPU and ends, as a parallel query's worker does.
        let status = std::process::Command::new("sh").args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"]).status().unwrap();
        assert!(status.success());
        let after = cpu_ms(me, true).unwrap() - cpu_ms(me, false).unwrap();
        assert!(after > before, "children's CPU went from {before} to {after} ms");
    }

    #[test]
    fn cost_per_thousand_sums_replicas_of_a_tier() {
        let cost = |name: &str, cpu_ms| ProcessCost { name: name.into(), cpu_ms, peak_rss_mb: 0.0, rss_samples: vec![] };
        let tiers = [cost("matcher-0", 100.0), cost("matcher-1", 300.0), cost("applier-0", 50.0)];
        let services = BTreeMap::from([("redis".to_owned(), 20.0)]);
        let out = per_thousand(&tiers, &services, 2_000);
        assert_eq!(out["matcher"], 200.0);
        assert_eq!(out["applier"], 25.0);
        assert_eq!(out["redis"], 10.0);
        assert!(per_thousand(&tiers, &services, 0).values().all(|v| *v == 0.0));
    }
}
