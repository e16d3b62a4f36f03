//! Prometheus metrics: one recorder per process, rendered at `/metrics` by
//! the tier's HTTP server (see `health`).
//!
//! The names every tier uses are the constants below, so the Grafana
//! dashboard and the KEDA triggers in `deploy/` have one place to match.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Records through a stage, by tier, stage and outcome (counter).
pub const RECORDS: &str = "crmsync_records_total";
/// Time to handle one message, by tier and stage (histogram, seconds).
pub const STAGE_DURATION: &str = "crmsync_stage_duration_seconds";
/// From a change's detection to its write in the target (histogram, seconds).
pub const SYNC_LAG: &str = "crmsync_sync_lag_seconds";
/// Messages ready in a work queue (gauge).
pub const QUEUE_DEPTH: &str = "crmsync_queue_depth";
/// Identity locks found held by another writer (counter).
pub const LOCK_CONTENTION: &str = "crmsync_lock_contention_total";
/// Connections to RabbitMQ made again after one was lost, by tier (counter).
pub const BROKER_RECONNECTS: &str = "crmsync_broker_reconnects_total";
/// Sync errors recorded, by category (counter).
pub const SYNC_ERRORS: &str = "crmsync_sync_errors_total";
/// 1 while a connection is paused by an admin, 0 while it runs, by
/// connection (gauge).
pub const CONNECTION_PAUSED: &str = "crmsync_connection_paused";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("telemetry.http_listen {0:?} is not an address like 0.0.0.0:9464")]
    Address(String),
    #[error("cannot serve health and metrics: {0}")]
    Install(String),
}

/// Installs the recorder once per process; later calls (more tiers in one
/// process, as in tests) do nothing. Histograms get buckets from 1 ms to
/// a minute, the range a record's stages and lag fall in.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
            .expect("non-empty buckets");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (a test's): render an empty page.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    });
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    HANDLE.get().map(PrometheusHandle::render).unwrap_or_default()
}
