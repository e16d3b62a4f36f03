//! The second isolation scenario of `crmsync bench connections` (issue
//! 29): one connection's CRM refuses every call while the others sync.
//!
//! The connection's CRM is pointed at a Salesforce endpoint on this
//! machine that answers every request with `503 Service Unavailable` (its
//! login included, so the connector never gets further), and counts what
//! it is asked. Meanwhile the editing connections make their live edits,
//! whose latency is compared with the quiet window's, and the failing
//! connection's own MA records are edited too: work it cannot do. What the
//! failing connection shows is read where an operator would read it (its
//! sync errors, its API calls, the warnings in the tiers' logs) and from
//! the endpoint's own count: attempts per minute and the shortest gap
//! between two, which a tight retry loop would give away. Then its CRM is
//! given back and the time until its edits arrive is measured (nothing is
//! lost, I1).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{StatusCode, Uri, header};
use crmsync_domain::settings::SystemEndpoint;
use crmsync_store::{connections, sync_errors};
use serde::Serialize;

use super::api::{self, Calls};
use super::edits::{self, Direction};
use super::isolation::{LiveEdits, World};

/// What the failing connection showed over the window.
#[derive(Debug, Clone, Serialize)]
pub struct FailingCrm {
    pub connection: String,
    /// Where its CRM pointed, and how that endpoint answered.
    pub endpoint: String,
    pub window_seconds: f64,
    /// Requests the endpoint received in the window, by path.
    pub requests: u64,
    pub requests_by_path: BTreeMap<String, u64>,
    pub requests_per_minute: f64,
    /// The shortest and the median time between two requests, ms (none
    /// with fewer than two): a tight loop would show as a few ms.
    pub shortest_gap_ms: Option<f64>,
    pub median_gap_ms: Option<f64>,
    /// The API calls the engine counted against the connection's allowance
    /// in the window, per system and kind.
    pub api_calls: Calls,
    /// Its open sync errors by category at the window's end.
    pub sync_errors: BTreeMap<String, i64>,
    /// Warning lines naming it in each tier's log during the window.
    pub log_warnings: BTreeMap<String, usize>,
    /// The first of them, cut short: what an operator reads.
    pub sample_warning: Option<String>,
    /// Edits made to its own MA records during the window ...
    pub own_edits: u64,
    /// ... and how long after its CRM was given back they had all reached
    /// it (none: not within the limit).
    pub recovered_seconds: Option<f64>,
}

/// Requests seen by the refusing endpoint: when (since it started) and
/// the path.
#[derive(Debug, Default)]
struct Seen {
    requests: Mutex<Vec<(Duration, String)>>,
}

/// A Salesforce endpoint on this machine that refuses every call.
struct Refuser {
    url: String,
    seen: Arc<Seen>,
    started: Instant,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Refuser {
    async fn start() -> anyhow::Result<Refuser> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Seen::default());
        let started = Instant::now();
        let answer = {
            let seen = seen.clone();
            move |uri: Uri| {
                let seen = seen.clone();
                async move {
                    seen.requests
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((started.elapsed(), uri.path().to_owned()));
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::CONTENT_TYPE, "application/json")],
                        r#"[{"errorCode":"SERVER_UNAVAILABLE","message":"refused by the benchmark"}]"#,
                    )
                }
            }
        };
        let app = axum::Router::new().fallback(answer);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Refuser { url, seen, started, stop, task })
    }

    /// Requests since the refuser started: seconds and path.
    fn requests(&self) -> Vec<(f64, String)> {
        self.seen
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(t, p)| (t.as_secs_f64(), p.clone()))
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Requests a minute over `window` seconds, and the shortest and median
/// gap between consecutive ones (`times` in seconds, ascending), ms.
pub fn attempt_figures(times: &[f64], window: f64) -> (f64, Option<f64>, Option<f64>) {
    let per_minute = if window > 0.0 { times.len() as f64 * 60.0 / window } else { 0.0 };
    let mut gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    gaps.sort_by(f64::total_cmp);
    let median = (!gaps.is_empty()).then(|| edits::percentile(&gaps, 50.0));
    (per_minute, gaps.first().copied(), median)
}

/// The lines of `log` that are warnings naming `connection` (not another
/// id it begins).
fn warnings_naming(log: &str, connection: &str) -> Vec<String> {
    log.lines()
        .map(super::plain)
        .filter(|l| l.contains(" WARN "))
        .filter(|l| l.match_indices(connection).any(|(i, _)| !l[i + connection.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())))
        .collect()
}

/// Each tier log's length now, to read what is written after.
fn log_lengths(logs: &Path, run: &str) -> BTreeMap<String, usize> {
    tier_logs(logs, run).into_iter().map(|(name, text)| (name, text.len())).collect()
}

/// The tier logs of `run`: `{run}-{tier}-{i}.log`, by `{tier}-{i}`.
fn tier_logs(logs: &Path, run: &str) -> BTreeMap<String, String> {
    let prefix = format!("{run}-");
    let Ok(dir) = std::fs::read_dir(logs) else { return BTreeMap::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tier = name.strip_prefix(&prefix)?.strip_suffix(".log")?.to_owned();
            // Another run's logs share the directory: `{run}-single-...` is not a tier.
            ["producer-", "matcher-", "applier-"].iter().any(|t| tier.starts_with(t)).then_some(())?;
            Some((tier, String::from_utf8_lossy(&std::fs::read(e.path()).ok()?).into_owned()))
        })
        .collect()
}

/// Runs the scenario over the running tiers: `failing` loses its CRM for
/// `window` while the editors edit; returns its figures and the editors'.
pub(super) async fn measure(
    w: &World<'_>,
    failing: &str,
    failing_tenant: &str,
    window: Duration,
) -> anyhow::Result<(FailingCrm, LiveEdits)> {
    let pool = w.pool;
    let refuser = Refuser::start().await?;
    let secret = w.logs.join(format!("{}-failing-crm.secret", w.run_name));
    std::fs::write(&secret, "not-a-secret-the-endpoint-refuses-everything")?;
    let saved = connections::load(pool, failing).await?;
    let mut broken = saved.clone();
    // The Pub/Sub address too: nothing leaves this machine.
    broken.crm = SystemEndpoint::Salesforce(serde_json::from_value(serde_json::json!({
        "oauth": {"login_url": refuser.url, "flow": "client_credentials", "client_id": "crmsync-bench",
                  "client_secret": {"file": secret.to_string_lossy()}},
        "pubsub_url": refuser.url,
    }))?);
    let own_targets = edits::targets(pool, Direction::MaToCrm, &[failing_tenant.to_owned()], "%@conn.example").await?;
    let measured = async {
        let api_before = api::snapshot_of(w.config, failing).await?;
        let logs_before = log_lengths(w.logs, w.run_name);
        let refused_from = refuser.started.elapsed().as_secs_f64();
        connections::save(pool, failing, &broken).await?;
        outln!("  failing CRM: {failing}'s CRM now answers 503 to every call ({}); {} s of live edits", refuser.url, window.as_secs());
        // Its own records are edited meanwhile, once a second: work it
        // cannot do until its CRM is back.
        let own = {
            let (pool, targets) = (pool.clone(), own_targets.clone());
            let secs = window.as_secs_f64();
            tokio::spawn(async move { edits::offer(&pool, Direction::MaToCrm, &targets, "x", 1.0, secs, 1).await })
        };
        let live = w.live_window("f", window).await;
        let own_edits = own.await??;
        let refused_to = refuser.started.elapsed().as_secs_f64();
        let live = live?;
        let api_calls = api::since(&api::snapshot_of(w.config, failing).await?, &api_before);
        let sync_errors: BTreeMap<String, i64> = sync_errors::open_counts(pool, failing).await?.into_iter().collect();
        let mut log_warnings = BTreeMap::new();
        let mut sample_warning = None;
        for (tier, text) in tier_logs(w.logs, w.run_name) {
            let from = logs_before.get(&tier).copied().unwrap_or(0).min(text.len());
            let found = warnings_naming(text.get(from..).unwrap_or(""), failing);
            if sample_warning.is_none() {
                sample_warning = found.first().map(|l| l.chars().take(300).collect());
            }
            log_warnings.insert(tier, found.len());
        }
        let seen: Vec<(f64, String)> = refuser.requests().into_iter().filter(|(t, _)| *t >= refused_from && *t <= refused_to).collect();
        let mut by_path = BTreeMap::new();
        for (_, path) in &seen {
            *by_path.entry(path.clone()).or_insert(0u64) += 1;
        }
        let times: Vec<f64> = seen.iter().map(|(t, _)| *t).collect();
        let span = refused_to - refused_from;
        let (per_minute, shortest, median) = attempt_figures(&times, span);
        let figures = FailingCrm {
            connection: failing.to_owned(),
            endpoint: format!("Salesforce at {} answering 503 to every request", refuser.url),
            window_seconds: span,
            requests: times.len() as u64,
            requests_by_path: by_path,
            requests_per_minute: per_minute,
            shortest_gap_ms: shortest,
            median_gap_ms: median,
            api_calls,
            sync_errors,
            log_warnings,
            sample_warning,
            own_edits,
            recovered_seconds: None,
        };
        anyhow::Ok((figures, live))
    }
    .await;
    // Given back whatever happened, and its edits waited for.
    connections::save(pool, failing, &saved).await.context("giving the failing connection its CRM back")?;
    let restored = Instant::now();
    refuser.stop().await;
    let _ = std::fs::remove_file(&secret);
    let (mut figures, live) = measured?;
    let limit = Duration::from_secs(120);
    let tenants = [failing_tenant.to_owned()];
    figures.recovered_seconds = loop {
        if edits::behind(pool, "x", &tenants).await? == 0 {
            break Some(restored.elapsed().as_secs_f64());
        }
        if restored.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let f = &figures;
    outln!(
        "  failing CRM: {} requests in {:.0} s ({:.1}/min, shortest gap {}), API calls {:?}, open sync errors {:?}, warnings {:?}",
        f.requests,
        f.window_seconds,
        f.requests_per_minute,
        f.shortest_gap_ms.map_or("–".to_owned(), |g| format!("{g:.0} ms")),
        f.api_calls,
        f.sync_errors,
        f.log_warnings
    );
    outln!(
        "  failing CRM: its {} own edits reached its CRM {} after it was given back",
        f.own_edits,
        f.recovered_seconds.map_or("not within 120 s".to_owned(), |s| format!("{s:.1} s"))
    );
    Ok((figures, live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_per_minute_with_their_gaps() {
        let (per_minute, shortest, median) = attempt_figures(&[1.0, 1.25, 2.0, 12.0], 30.0);
        assert_eq!(per_minute, 8.0);
        assert_eq!(shortest, Some(250.0));
        assert_eq!(median, Some(750.0));
        assert_eq!(attempt_figures(&[5.0], 60.0), (1.0, None, None));
        assert_eq!(attempt_figures(&[], 0.0), (0.0, None, None));
    }

    #[test]
    fn only_warnings_naming_the_connection_itself_are_counted() {
        let log = "2025-01-01T00:00:00Z \x1b[33m WARN\x1b[0m crmsync_producer: detection failed; retrying connection_id=\"c00002\" error=x\n\
                   2025-01-01T00:00:01Z  WARN crmsync_producer: detection failed; retrying connection_id=\"c000021\" error=x\n\
                   2025-01-01T00:00:02Z  INFO crmsync_producer: changes published connection_id=\"c00002\"\n";
        let found = warnings_naming(log, "c00002");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("2025-01-01T00:00:00Z  WARN crmsync_producer"), "{found:?}");
    }
}
