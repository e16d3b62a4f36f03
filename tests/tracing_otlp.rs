//! One trace per record across the three tier processes, exported over OTLP
//! (I5): a small OTLP/HTTP receiver in the test decodes the real protobuf
//! the tiers send, and the test checks that one record's detection, match and
//! write are one trace, in that parent/child order, with the record's
//! attributes, and that no email address reaches the exported data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_tests::{TestApp, Tier};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// `POST /v1/traces` with an OTLP protobuf body, as a collector takes it.
async fn traces(State(received): State<Received>, body: Bytes) -> ([(axum::http::HeaderName, &'static str); 1], Vec<u8>) {
    let request = ExportTraceServiceRequest::decode(body).expect("the body is an OTLP ExportTraceServiceRequest");
    received.lock().unwrap().push(request);
    ([(CONTENT_TYPE, "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
}

/// Starts the receiver; returns its base URL and what it has received.
async fn otlp_receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// One exported span, with the service that sent it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<String> {
        self.span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).map(text)
    }
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(received: &Received) -> Vec<Exported> {
    let mut out = Vec::new();
    for request in received.lock().unwrap().iter() {
        for rs in &request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push(Exported { service: service.clone(), span: span.clone() });
                }
            }
        }
    }
    out
}

/// Every string the export holds: resource, span, event and link attributes,
/// names and status messages.
fn every_string(received: &Received) -> Vec<String> {
    fn kvs(out: &mut Vec<String>, kvs: &[KeyValue]) {
        for kv in kvs {
            out.push(kv.key.clone());
            if let Some(v) = &kv.value {
                out.push(text(v));
            }
        }
    }
    let mut out = Vec::new();
    for request in received.lock().unwrap().iter() {
        for rs in &request.resource_spans {
            if let Some(r) = &rs.resource {
                kvs(&mut out, &r.attributes);
            }
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push(span.name.clone());
                    kvs(&mut out, &span.attributes);
                    for e in &span.events {
                        out.push(e.name.clone());
                        kvs(&mut out, &e.attributes);
                    }
                    for l in &span.links {
                        kvs(&mut out, &l.attributes);
                    }
                    if let Some(s) = &span.status {
                        out.push(s.message.clone());
                    }
                }
            }
        }
    }
    out
}

/// Something of the shape `local@domain.tld`.
fn has_email(s: &str) -> bool {
    s.split(|c: char| c.is_whitespace() || "\"'<>(),;:[]{}".contains(c)).any(|token| {
        token.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.starts_with('.'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_is_one_trace_from_detection_to_write_across_the_three_processes() {
    let (endpoint, received) = otlp_receiver().await;
    let app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Doe"), ("Company", "Acme"), ("Email", "jane.trace@acme.example"), ("Title", "CTO")]).await;
    let p = app.create_prospect(&[("email", "jane.trace@acme.example"), ("lastName", "Doe"), ("crmLeadFid", &lead)]).await;
    let exe = crmsync_tests::crmsync_exe!();
    // A short batch delay, so the spans leave during the test as well as on
    // the final flush.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "500")];
    let tiers = [Tier::Producer, Tier::Matcher, Tier::Applier].map(|t| app.spawn_process_with_env(exe, t, &env));
    app.settle().await;
    // An edit of the prospect, with an email in a field the sync carries.
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "CEO")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CEO", "the edit reached the CRM");
    // SIGTERM: each tier drains, flushes its spans and exits 0.
    for t in tiers {
        assert!(t.terminate().await, "a tier stops cleanly on SIGTERM");
    }
    let spans = flatten(&received);
    assert!(!spans.is_empty(), "the tiers exported spans");

    // The prospect's records: each detection is the root of its own trace.
    let record = p.to_string();
    let is_record = |s: &&Exported| s.attr("crmsync.record_id").as_deref() == Some(record.as_str());
    let by_trace = |trace: &[u8], name: &str| -> Vec<Exported> {
        spans.iter().filter(|s| s.span.trace_id == trace && s.span.name == name).cloned().collect()
    };
    let detects: Vec<&Exported> = spans.iter().filter(|s| s.span.name == "detect").filter(is_record).collect();
    assert!(!detects.is_empty(), "the prospect's detection has a span: {:?}", spans.iter().map(|s| &s.span.name).collect::<Vec<_>>());
    let mut complete = 0;
    for detect in detects {
        assert_eq!(detect.service, "crmsync-producer");
        assert!(detect.span.parent_span_id.is_empty(), "a detection starts the record's trace");
        let trace = &detect.span.trace_id;
        let matched = by_trace(trace, "match");
        let applied = by_trace(trace, "apply");
        if applied.is_empty() {
            continue;
        }
        assert_eq!(matched.len(), 1, "one match span in the record's trace");
        assert_eq!(applied.len(), 1, "one apply span in the record's trace");
        let (m, a) = (&matched[0], &applied[0]);
        assert_eq!(m.service, "crmsync-matcher");
        assert_eq!(a.service, "crmsync-applier");
        assert_eq!(m.span.parent_span_id, detect.span.span_id, "match is the child of detect");
        assert_eq!(a.span.parent_span_id, m.span.span_id, "apply is the child of match");
        for s in [detect, m, a] {
            assert_eq!(s.attr("crmsync.connection").as_deref(), Some("default"), "{}", s.span.name);
            assert_eq!(s.attr("crmsync.object").as_deref(), Some("prospect"), "{}", s.span.name);
            assert_eq!(s.attr("crmsync.record_id").as_deref(), Some(record.as_str()), "{}", s.span.name);
            assert_eq!(s.attr("crmsync.lane").as_deref(), Some("immediate"), "{}", s.span.name);
            assert!(s.attr("crmsync.action").is_some_and(|a| !a.is_empty()), "{} has an action", s.span.name);
            assert!(s.attr("crmsync.outcome").is_some_and(|o| !o.is_empty()), "{} has an outcome", s.span.name);
        }
        assert_eq!(detect.attr("crmsync.outcome").as_deref(), Some("published"));
        assert_eq!(m.attr("crmsync.outcome").as_deref(), Some("matched"));
        assert_eq!(a.attr("crmsync.outcome").as_deref(), Some("applied"));
        // The messages that carried the record link to its trace.
        let linked = |service: &str, name: &str| {
            spans.iter().any(|s| s.service == service && s.span.name == name && s.span.links.iter().any(|l| &l.trace_id == trace))
        };
        assert!(linked("crmsync-producer", "publish"), "the producer's publish span links to the record");
        assert!(linked("crmsync-matcher", "publish"), "the matcher's publish span links to the record");
        assert!(linked("crmsync-matcher", "match_batch"), "the matcher's message span links to the record");
        assert!(linked("crmsync-applier", "apply_batch"), "the applier's message span links to the record");
        // The record's history names the same trace, for the console's link.
        let hex: String = trace.iter().map(|b| format!("{b:02x}")).collect();
        let logged: Vec<String> = sqlx::query_scalar("SELECT stage FROM audit_log WHERE trace_id = $1 AND source_id = $2 ORDER BY stage")
            .bind(&hex)
            .bind(&record)
            .fetch_all(&app.pool)
            .await
            .unwrap();
        assert_eq!(logged, ["apply"], "the apply entry of the traced detection carries its trace id");
        complete += 1;
    }
    assert!(complete >= 1, "at least one detection of the prospect was traced to its write");

    // The messages' own traces: each consume span is the child of the
    // publish span whose context the AMQP headers carried.
    let by_id: HashMap<&[u8], &Exported> = spans.iter().map(|s| (s.span.span_id.as_slice(), s)).collect();
    let consumes: Vec<&Exported> = spans.iter().filter(|s| s.span.name == "consume").collect();
    assert!(!consumes.is_empty(), "the consumers have spans");
    for c in consumes {
        let parent = by_id.get(c.span.parent_span_id.as_slice()).expect("a consume span's parent was exported");
        assert_eq!(parent.span.name, "publish");
        assert_eq!(parent.span.trace_id, c.span.trace_id);
    }

    // No email anywhere in what was exported.
    let leaks: Vec<String> = every_string(&received).into_iter().filter(|s| has_email(s)).collect();
    assert!(leaks.is_empty(), "emails in the exported traces: {leaks:?}");
    app.cleanup().await;
}
