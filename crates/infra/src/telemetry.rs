//! Logging and tracing set-up, once per process.
//!
//! Structured `tracing` events to stderr, as text or JSON. Spans carry the
//! connection, object, record ids, lane and outcome as fields; never an email
//! or other personal data. The OTLP exporter is added to this same subscriber
//! when a tracing backend is configured.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. `RUST_LOG` overrides the configured filter.
/// Safe to call more than once (later calls do nothing), which tests rely on.
pub fn init(cfg: &TelemetryConfig, service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.log_format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr).with_target(false)).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr).with_current_span(true)).try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
