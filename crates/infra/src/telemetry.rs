//! Logging and tracing set-up, once per process.
//!
//! Structured `tracing` events to stderr, as text or JSON, and the same spans
//! exported as OpenTelemetry traces over OTLP/HTTP when an endpoint is
//! configured with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the service). Spans carry the connection,
//! object, record ids, lane and outcome as fields; never an email or other
//! personal data (I5): free text that might hold one goes through [`redact`].
//!
//! The OpenTelemetry layer is installed even without an exporter, so that a
//! tier that exports nothing still hands each record's trace context on to
//! the next one; only the export is conditional.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{LogFormat, TelemetryConfig};

/// The variables that turn the OTLP export on.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Owns the trace pipeline of a process; [`Telemetry::shutdown`] flushes the
/// spans still buffered. Dropping it without shutting down loses them.
#[derive(Debug, Default)]
#[must_use = "call shutdown() before the process exits, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered, then stops the exporter. The SDK's
    /// shutdown blocks until its batch task (on this runtime) answers, so it
    /// runs on a blocking thread rather than stalling a runtime worker.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("crmsync: flushing traces failed: {e}"),
            Err(e) => eprintln!("crmsync: flushing traces failed: {e}"),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured log
/// filter (it does not limit the spans exported). Safe to call more than once
/// (later calls install nothing and return an inert guard), which tests rely
/// on. Must be called inside the tokio runtime: the span exporter runs on it.
pub fn init(cfg: &TelemetryConfig, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let logs = match cfg.log_format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(filter).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).with_current_span(true).with_filter(filter).boxed(),
    };
    let (provider, export_error) = match exporting_provider(service) {
        Ok(Some(p)) => (p, None),
        Ok(None) => (SdkTracerProvider::builder().with_resource(resource(service)).build(), None),
        Err(e) => (SdkTracerProvider::builder().with_resource(resource(service)).build(), Some(e)),
    };
    let exporting = export_error.is_none() && endpoint_configured();
    // Our own spans only, at INFO: the per-record and per-message spans. The
    // libraries' spans (and the exporter's own HTTP calls) stay out.
    let traced = Targets::new().with_target("crmsync", Level::INFO);
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer("crmsync")).with_filter(traced);
    let result = tracing_subscriber::registry().with(logs).with(traces).try_init();
    if result.is_err() {
        return Telemetry::default();
    }
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP trace export is configured but could not start; spans are not exported");
    }
    let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"].iter().find_map(|v| std::env::var(v).ok());
    if let Some(protocol) = protocol.filter(|p| exporting && p.trim() != "http/protobuf") {
        // gRPC would bring tonic and a second HTTP stack for one exporter.
        tracing::warn!(%protocol, "only OTLP/HTTP with protobuf is built in (the collector's port 4318); exporting with it");
    }
    tracing::debug!(service, exporting, "telemetry initialised");
    Telemetry { provider: exporting.then_some(provider) }
}

fn endpoint_configured() -> bool {
    ENDPOINT_VARS.iter().any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// The service's resource: `OTEL_SERVICE_NAME` or a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` win over the tier's default name.
fn resource(service: &'static str) -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| s.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    let builder = Resource::builder();
    if named_by_env { builder.build() } else { builder.with_service_name(service).build() }
}

/// A provider exporting over OTLP/HTTP (protobuf) with a batch processor on
/// the tokio runtime, if an endpoint is configured.
fn exporting_provider(service: &'static str) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    if !endpoint_configured() {
        return Ok(None);
    }
    // The endpoint, headers, timeout and compression come from the standard
    // OTEL_EXPORTER_OTLP_* variables.
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(opentelemetry_otlp::Protocol::HttpBinary).build()?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(Some(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource(service)).build()))
}

/// `text` with anything that looks like an email address replaced by
/// `<email>`: for free text (errors from systems, parse failures) that goes
/// into logs and spans, which must never hold personal data in clear (I5).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Tokens are split on characters that cannot be part of an address.
    let is_part = |c: char| c.is_alphanumeric() || "._%+-@'".contains(c);
    let mut rest = text;
    while let Some(start) = rest.find(is_part) {
        out.push_str(&rest[..start]);
        let token_len = rest[start..].find(|c: char| !is_part(c)).unwrap_or(rest.len() - start);
        let token = &rest[start..start + token_len];
        if looks_like_email(token) {
            out.push_str("<email>");
        } else {
            out.push_str(token);
        }
        rest = &rest[start + token_len..];
    }
    out.push_str(rest);
    out
}

fn looks_like_email(token: &str) -> bool {
    let token = token.trim_matches(|c: char| c == '.' || c == '\'');
    match token.split_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_redacted_from_free_text() {
        assert_eq!(redact("email \"Jane.Doe+x@Acme.example\" is taken"), "email \"<email>\" is taken");
        assert_eq!(redact("invalid type: string 'a@b.c', expected i64"), "invalid type: string <email>, expected i64");
        assert_eq!(redact("no address here: prospect 42 @ noon"), "no address here: prospect 42 @ noon");
        assert_eq!(redact("two: a@x.io,b@y.io."), "two: <email>,<email>");
    }
}
