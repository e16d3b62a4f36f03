//! Prometheus metrics: one recorder per process, served over HTTP at
//! `telemetry.metrics_listen` (`/metrics`) when that is set.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusBuilder;

static INSTALLED: OnceLock<()> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {0:?} is not an address like 0.0.0.0:9464")]
    Address(String),
    #[error("cannot serve metrics: {0}")]
    Install(String),
}

/// Installs the recorder and its HTTP listener, once per process; later
/// calls (more tiers in one process, as in tests) do nothing.
pub fn install(listen: Option<&str>) -> Result<(), MetricsError> {
    let Some(listen) = listen else { return Ok(()) };
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let addr: SocketAddr = listen.parse().map_err(|_| MetricsError::Address(listen.to_owned()))?;
    PrometheusBuilder::new().with_http_listener(addr).install().map_err(|e| MetricsError::Install(e.to_string()))?;
    let _ = INSTALLED.set(());
    Ok(())
}
