//! One trace per record across the three processes (I5): W3C trace context
//! in and out of messages, and the per-record spans of each stage.
//!
//! A message moves many records, so a message cannot be a record's trace.
//! Each record gets a root `detect` span in the producer; its context travels
//! in the message body next to the record ([`TraceContext`]), and the
//! matcher's `match` and the applier's `apply` spans of that record are its
//! children, so detection, match and write of one record form one trace.
//! The per-message spans (`publish`, `consume`) form traces of their own,
//! carried in the AMQP headers (`traceparent`, `tracestate`), and link to the
//! traces of the records they carry.
//!
//! Span attributes use a `crmsync.` prefix and name records by their ids
//! (prospect id, CRM id), never by email.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crmsync_domain::Lane;
pub use crmsync_domain::messages::TraceContext;
use lapin::BasicProperties;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::amqp;

/// The W3C header names.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The pipeline stage a per-record span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStage {
    /// Detected in a source system by the producer.
    Detect,
    /// Identity decided by the matcher.
    Match,
    /// Written to the targets by the applier.
    Apply,
}

/// The context of `span`, to carry to another process; `None` when the span
/// is not traced (filtered out, or no OpenTelemetry layer installed).
pub fn context_of(span: &Span) -> Option<TraceContext> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let traceparent = carrier.remove(TRACEPARENT)?;
    Some(TraceContext { traceparent, tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()) })
}

fn extract(trace: &TraceContext) -> opentelemetry::Context {
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert(TRACEPARENT.into(), trace.traceparent.clone());
    if let Some(state) = &trace.tracestate {
        carrier.insert(TRACESTATE.into(), state.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of a remote context. Must be called before the span
/// is first entered; an unreadable or missing context leaves it a root.
pub fn set_parent(span: &Span, trace: Option<&TraceContext>) {
    let Some(trace) = trace else { return };
    let cx = extract(trace);
    if cx.span().span_context().is_valid() {
        // Fails only when the span is not traced: nothing to connect then.
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to a record's trace ("this message carried that record").
pub fn link(span: &Span, trace: Option<&TraceContext>) {
    let Some(trace) = trace else { return };
    let cx = extract(trace);
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

/// Adds the context of `span` (the message's `publish` span) to AMQP headers.
pub fn inject_headers(span: &Span, headers: &mut Vec<(String, String)>) {
    if let Some(trace) = context_of(span) {
        headers.push((TRACEPARENT.into(), trace.traceparent));
        if let Some(state) = trace.tracestate {
            headers.push((TRACESTATE.into(), state));
        }
    }
}

/// The trace context a delivery's headers carry, if any.
pub fn from_headers(props: &BasicProperties) -> Option<TraceContext> {
    let traceparent = amqp::header(props, TRACEPARENT)?.to_owned();
    Some(TraceContext { traceparent, tracestate: amqp::header(props, TRACESTATE).map(str::to_owned) })
}

/// A new span for one record in one stage, with the record's attributes, the
/// child of `parent` (the record's context from the previous stage), or the
/// root of a new trace when there is none (detection). `crmsync.action` and
/// `crmsync.outcome` are recorded once the stage knows them.
pub fn record_span(stage: RecordStage, connection: &str, object: &str, record_id: &str, lane: Lane, parent: Option<&TraceContext>) -> Span {
    // Explicitly parentless: the record's trace is not the message's.
    macro_rules! span {
        ($name:literal) => {
            tracing::info_span!(
                parent: None,
                $name,
                crmsync.connection = connection,
                crmsync.object = object,
                crmsync.record_id = record_id,
                crmsync.lane = lane.as_str(),
                crmsync.action = tracing::field::Empty,
                crmsync.outcome = tracing::field::Empty,
            )
        };
    }
    let span = match stage {
        RecordStage::Detect => span!("detect"),
        RecordStage::Match => span!("match"),
        RecordStage::Apply => span!("apply"),
    };
    set_parent(&span, parent);
    span
}

/// The per-record spans of one message in a stage, by change id, so the
/// stage can record each record's action and outcome as it learns them. The
/// spans end (and are exported) when this is dropped.
#[derive(Debug, Default)]
pub struct RecordSpans {
    spans: HashMap<Uuid, Span>,
    /// Records whose outcome is known; shared by the rounds of a stage.
    decided: Mutex<HashSet<Uuid>>,
}

impl RecordSpans {
    pub fn insert(&mut self, id: Uuid, span: Span) {
        self.spans.insert(id, span);
    }

    /// The context of a record's span, to carry to the next stage.
    pub fn context(&self, id: &Uuid) -> Option<TraceContext> {
        self.spans.get(id).and_then(context_of)
    }

    /// Records what the stage did with a record and how that ended.
    pub fn outcome(&self, id: &Uuid, action: &str, outcome: &str) {
        if let Some(span) = self.spans.get(id) {
            span.record("crmsync.action", action).record("crmsync.outcome", outcome);
            self.decided.lock().unwrap_or_else(|e| e.into_inner()).insert(*id);
        }
    }

    /// Records the same action and outcome on every record whose outcome is
    /// not known yet (e.g. `retry` when the message failed part way).
    pub fn outcome_all(&self, action: &str, outcome: &str) {
        let decided = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        for (id, span) in &self.spans {
            if !decided.contains(id) {
                span.record("crmsync.action", action).record("crmsync.outcome", outcome);
            }
        }
    }

    /// Links `span` (the message's span) to every record's trace.
    pub fn link_all(&self, span: &Span) {
        for record in self.spans.values() {
            if let Some(trace) = context_of(record) {
                link(span, Some(&trace));
            }
        }
    }
}
