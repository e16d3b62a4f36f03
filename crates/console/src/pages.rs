//! The console's pages, each with its JSON twin (the same path with
//! `Accept: application/json`): the overview of every connection, one
//! connection's settings (and changing them) with its pause state
//! (`crate::pause`), the admin audit log.
//!
//! The overview is what `crmsync status --json` prints, gathered by the
//! same function; a setting changes through the same guarded, audited
//! function as `crmsync connection set`.

use axum::Json;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crmsync_domain::mapping::SyncBehaviour;
use crmsync_domain::merge::Side;
use crmsync_domain::settings::{ConnectionSettings, KEYS};
use crmsync_ops::settings::{self, Changed};
use crmsync_ops::status::{self, Status, human};
use crmsync_store::admin_audit;
use crmsync_store::connections::{self, ConnectionError};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::session::{Principal, wants_json};
use crate::view::{compact, csrf_field, nothing, page};

/// An answer in the form asked for: JSON, or the page.
pub(crate) fn answer(headers: &HeaderMap, status: StatusCode, json: impl FnOnce() -> Value, html: impl FnOnce() -> Markup) -> Response {
    if wants_json(headers) { (status, Json(json())).into_response() } else { (status, html()).into_response() }
}

/// A failure of the database or of a service, said plainly.
pub(crate) fn unavailable(headers: &HeaderMap, who: Option<&Principal>, e: &anyhow::Error) -> Response {
    tracing::warn!(error = %format!("{e:#}"), "console: a page could not be read");
    let msg = format!("{e:#}");
    answer(headers, StatusCode::SERVICE_UNAVAILABLE, || json!({ "error": msg }), || page("Unavailable", who, html! { p.error { (msg) } }))
}

/// A request refused, with why: the page, or `{"error": ...}`.
pub(crate) fn refused(headers: &HeaderMap, who: &Principal, code: StatusCode, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    answer(headers, code, || json!({ "error": msg }), || page("Refused", Some(who), html! { p.error { (msg) } }))
}

/// The 403 for a change its caller may not make (a viewer's, or a form's
/// without its session's CSRF token); `None` when it may go ahead. Every
/// route that changes something asks this first.
pub(crate) fn change_refused(who: &Principal, csrf: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let refusal = who.may_change(csrf, headers).err()?;
    Some(refused(headers, who, StatusCode::FORBIDDEN, refusal.message()))
}

/// `GET /`: every connection with its figures, and the broker's queues.
pub async fn overview(State(state): State<AppState>, who: Principal, headers: HeaderMap) -> Response {
    let status = status::gather(&state.config, Some(&state.pool), Some(&state.inspector), None).await;
    if wants_json(&headers) {
        return Json(status).into_response();
    }
    page("Overview", Some(&who), overview_body(&status)).into_response()
}

fn overview_body(s: &Status) -> Markup {
    html! {
        @if let Some(e) = &s.database_error { p.error { "PostgreSQL: " (e) } }
        @if let Some(e) = &s.redis_error { p.error { (e) } }
        table {
            tr {
                th { "Connection" } th { "State" } th { "In sync" } th { "Pending assignment" } th { "Being created" } th { "Creation failed" } th { "Recycled" }
                th { "Immediate lane" } th { "Batch backlog" } th { "Budget / hour" } th { "Used, last hour" } th { "Done in" } th { "API calls, 24 h" }
                th { "Last change detected" } th { "Last write" } th { "Open sync errors" }
            }
            @for c in &s.connections {
                tr {
                    td { a href=(format!("/connections/{}", c.id)) { (c.id) } }
                    td { @if c.paused { strong { "paused" } } @else { "running" } }
                    td.n { (c.identities.in_sync) }
                    td.n { (c.identities.pending_assignment) }
                    td.n { (c.identities.being_created) }
                    td.n { (c.identities.creation_failed) }
                    td.n { (c.identities.recycled) }
                    td.n { (format!("{:.1}", c.immediate_lane.per_second)) "/s" }
                    td.n { (c.batch_lane.backlog) }
                    td.n { (c.batch_lane.budget_per_hour) }
                    td.n { (c.batch_lane.used_last_hour) " (" (format!("{:.0}", c.batch_lane.used_share * 100.0)) "%)" }
                    td { (human(std::time::Duration::from_secs(c.batch_lane.eta_secs))) }
                    td {
                        @for a in &c.api {
                            div {
                                (a.system) " " (a.used_24h)
                                @if let Some(n) = a.allowance { " of " (n) }
                            }
                        }
                        @if c.api.is_empty() { span.help { "no real API" } }
                    }
                    td { (ago(c.last_change_detected_at)) }
                    td { (ago(c.last_write_minute)) }
                    td.n { a href=(format!("/errors?connection={}", c.id)) { (c.sync_errors.values().sum::<i64>()) } }
                }
            }
        }
        h2 { "Replicas" }
        @if s.replicas.is_empty() { p.help { "No replica of any tier has been seen in the last ten minutes." } }
        @else {
            table {
                tr { th { "Tier" } th { "Replica" } th { "Seen" } th { "Ready" } }
                @for r in &s.replicas {
                    tr {
                        td { (r.tier) }
                        td { code { (r.replica) } }
                        td { (human(std::time::Duration::from_secs(r.seen_secs_ago.unsigned_abs()))) " ago" }
                        td { @if r.ready { "ready" } @else { span.error-text { "not ready: " (r.not_ready.as_deref().unwrap_or("")) } } }
                    }
                }
            }
        }
        h2 { "Queued messages" }
        @if let Some(e) = &s.broker.error { p.error { "Broker: " (e) } }
        @if !s.broker.queues.is_empty() {
            table {
                tr { th { "Queue" } th { "Messages" } }
                @for q in &s.broker.queues {
                    tr {
                        td { code { (q.queue) } }
                        td.n {
                            @match q.messages {
                                Some(n) => { (n) }
                                None => { span.help { "not declared yet" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How long ago, for people ("never" when not yet).
fn ago(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match at {
        None => "never".into(),
        Some(t) => {
            let d = (chrono::Utc::now() - t).to_std().unwrap_or_default();
            format!("{} ago", human(std::time::Duration::from_secs(d.as_secs())))
        }
    }
}

/// One settable key as shown: its value and what it takes.
#[derive(Debug, Serialize)]
struct Settable {
    key: &'static str,
    value: Value,
    help: &'static str,
}

/// What the settings page shows on top of the settings.
#[derive(Debug, Default)]
struct Outcome {
    notice: Option<String>,
    error: Option<String>,
    /// A switch to confirm (key, value); what changes with it is in `error`.
    confirm: Option<(String, String)>,
}

/// `GET /connections/{id}`: every setting of a connection, and (for an
/// admin) a form to change each one `crmsync connection set` can.
pub async fn connection(State(state): State<AppState>, who: Principal, Path(id): Path<String>, headers: HeaderMap) -> Response {
    settings_page(&state, &who, &id, &headers, StatusCode::OK, Outcome::default()).await
}

async fn settings_page(state: &AppState, who: &Principal, id: &str, headers: &HeaderMap, code: StatusCode, outcome: Outcome) -> Response {
    let s = match connections::load(&state.pool, id).await {
        Ok(s) => s,
        Err(e @ ConnectionError::Unknown(_)) => {
            let msg = e.to_string();
            return answer(
                headers,
                StatusCode::NOT_FOUND,
                || json!({ "error": msg }),
                || page("No such connection", Some(who), html! { p.error { (msg) } }),
            );
        }
        Err(e) => return unavailable(headers, Some(who), &e.into()),
    };
    let settable: Vec<Settable> = KEYS.iter().map(|(key, help)| Settable { key, value: settings::value_of(&s, key), help }).collect();
    let paused = match connections::paused(&state.pool, id, false).await {
        Ok(p) => p,
        Err(e) => return unavailable(headers, Some(who), &e.into()),
    };
    answer(
        headers,
        code,
        || json!({ "id": id, "paused": paused, "settable": settable, "settings": s }),
        || {
            let body = html! { (crate::pause::controls(who, id, paused.as_ref())) (settings_body(who, id, &s, &settable, &outcome)) };
            page(&format!("Connection {id}"), Some(who), body)
        },
    )
}

/// A value as the form field shows it: text as it is, others as JSON.
fn as_field(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn settings_body(who: &Principal, id: &str, s: &ConnectionSettings, settable: &[Settable], outcome: &Outcome) -> Markup {
    let csrf = who.csrf().filter(|_| who.user.role == crate::users::Role::Admin);
    let action = format!("/connections/{id}/settings");
    html! {
        @if let Some(n) = &outcome.notice { p.notice { (n) } }
        @if let Some(e) = &outcome.error { p.error { (e) } }
        @if let (Some((key, value)), Some(csrf)) = (&outcome.confirm, csrf) {
            form method="post" action=(action) {
                (csrf_field(csrf))
                input type="hidden" name="key" value=(key);
                input type="hidden" name="value" value=(value);
                input type="hidden" name="confirm" value="yes";
                button type="submit" { "Confirm: set " (key) " to " (value) }
            }
        }
        p { a href=(format!("/audit?connection={id}")) { "Changes to this connection" } }
        table {
            tr { th { "Setting" } th { "Value" } th { "Takes" } @if csrf.is_some() { th { "Change" } } }
            @for row in settable {
                tr {
                    td { code { (row.key) } }
                    td { (compact(&row.value)) }
                    td.help { (row.help) }
                    @if let Some(csrf) = csrf {
                        td {
                            form.inline method="post" action=(action) {
                                (csrf_field(csrf))
                                input type="hidden" name="key" value=(row.key);
                                input name="value" value=(as_field(&row.value)) aria-label=(row.key);
                                button type="submit" { "Set" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Field mapping" }
        p { a href=(format!("/connections/{id}/mapping")) { "Change the field mapping (with a preview)" } " · "
            a href=(format!("/connections/{id}/scope")) { "Sync scope" } }
        table {
            tr { th { "MA field" } th { "Lead field" } th { "Contact field" } th { "Behaviour" } th { "Blank overwrites" } }
            @for f in s.field_map.iter() {
                tr {
                    td { code { (f.ma) } }
                    td { @if let Some(l) = &f.lead { code { (l) } } }
                    td { @if let Some(c) = &f.contact { code { (c) } } }
                    td {
                        (f.sync.as_str())
                        @if f.sync == SyncBehaviour::ReadOnly { " (from the " (side_name(f.read_only_source())) ")" }
                    }
                    td { @if f.blank_overwrites { "yes" } @else { "no" } }
                }
            }
        }
        h2 { "Every setting" }
        pre { (serde_json::to_string_pretty(s).unwrap_or_default()) }
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Ma => "MA",
        Side::Crm => "CRM",
    }
}

/// A change as a form posts it.
#[derive(Debug, Deserialize)]
struct FormChange {
    key: String,
    value: String,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    csrf: Option<String>,
}

/// A change as a script posts it (JSON).
#[derive(Debug, Deserialize)]
struct JsonChange {
    key: String,
    value: String,
    #[serde(default)]
    confirm: bool,
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /connections/{id}/settings`: changes one setting, as `crmsync
/// connection set <id> <key> <value> [--yes]` does, from a form
/// (`key`, `value`, `confirm`, `csrf`) or JSON (`{"key", "value",
/// "confirm"}`). Admins only; a session's request needs its CSRF token.
pub async fn change_setting(State(state): State<AppState>, who: Principal, Path(id): Path<String>, req: Request) -> Response {
    let headers = req.headers().clone();
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"));
    let change = if is_json {
        Json::<JsonChange>::from_request(req, &state).await.map(|Json(c)| c).map_err(IntoResponse::into_response)
    } else {
        axum::Form::<FormChange>::from_request(req, &state)
            .await
            .map(|axum::Form(f)| JsonChange {
                key: f.key,
                value: f.value,
                confirm: f.confirm.is_some_and(|c| matches!(c.as_str(), "yes" | "on" | "true" | "1")),
                csrf: f.csrf,
            })
            .map_err(IntoResponse::into_response)
    };
    let change = match change {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    if let Some(refused) = crate::pages::change_refused(&who, change.csrf.as_deref(), &headers) {
        return refused;
    }
    let JsonChange { key, value, confirm, .. } = change;
    match settings::set(&state.pool, &state.factory, &who.actor(), &id, &key, &value, confirm).await {
        Ok(Changed { notes, before, after }) => {
            tracing::info!(user = %who.user.name, connection = %id, %key, "console: setting changed");
            if wants_json(&headers) {
                return Json(json!({ "connection": id, "key": key, "before": before, "after": after, "notes": notes })).into_response();
            }
            let mut notice = format!("{key}: {before} → {after}");
            for n in &notes {
                notice.push_str(&format!("\n  - {n}"));
            }
            settings_page(&state, &who, &id, &headers, StatusCode::OK, Outcome { notice: Some(notice), ..Outcome::default() }).await
        }
        Err(e) => {
            let needs_confirmation = settings::needs_confirmation(&e);
            let unknown = e.chain().any(|c| matches!(c.downcast_ref::<ConnectionError>(), Some(ConnectionError::Unknown(_))));
            let database = e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some());
            // A refused value or switch is the caller's to fix (4xx); a
            // database that did not answer is not (503).
            let code = if unknown {
                StatusCode::NOT_FOUND
            } else if needs_confirmation {
                StatusCode::CONFLICT
            } else if database {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            let error = format!("{e:#}");
            if wants_json(&headers) {
                return (code, Json(json!({ "error": error, "needs_confirmation": needs_confirmation }))).into_response();
            }
            let outcome = Outcome { error: Some(error), confirm: needs_confirmation.then_some((key, value)), ..Outcome::default() };
            settings_page(&state, &who, &id, &headers, code, outcome).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    connection: Option<String>,
    /// Entries older than this id: the next page.
    before: Option<i64>,
}

/// Entries on one page of the audit log.
const AUDIT_PAGE: i64 = 100;

/// `GET /audit`: the admin audit log, newest first, 100 at a time.
pub async fn audit(State(state): State<AppState>, who: Principal, Query(q): Query<AuditQuery>, headers: HeaderMap) -> Response {
    let connection = q.connection.as_deref().filter(|c| !c.is_empty());
    let entries = match admin_audit::recent(&state.pool, connection, q.before, AUDIT_PAGE).await {
        Ok(e) => e,
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let next = (entries.len() as i64 == AUDIT_PAGE).then(|| entries.last().map(|e| e.id)).flatten();
    let next_link = next.map(|n| match connection {
        Some(c) => format!("/audit?connection={c}&before={n}"),
        None => format!("/audit?before={n}"),
    });
    answer(
        &headers,
        StatusCode::OK,
        || json!({ "entries": entries, "next_before": next }),
        || {
            let title = match connection {
                Some(c) => format!("Audit log: {c}"),
                None => "Audit log".to_owned(),
            };
            page(
                &title,
                Some(&who),
                html! {
                    table {
                        tr { th { "When (UTC)" } th { "Who" } th { "Through" } th { "Connection" } th { "What" } th { "Before" } th { "After" } }
                        @for e in &entries {
                            tr {
                                td { (e.at.format("%Y-%m-%d %H:%M:%S")) }
                                td { (e.actor) }
                                td { (e.via) }
                                td { @if let Some(c) = &e.connection_id { a href=(format!("/connections/{c}")) { (c) } } }
                                td { (e.action) @if let Some(t) = &e.target { " " code { (t) } } }
                                td { (e.before.as_ref().map_or_else(nothing, compact)) }
                                td { (e.after.as_ref().map_or_else(nothing, compact)) }
                            }
                        }
                    }
                    @if let Some(link) = &next_link { p { a href=(link) { "Older" } } }
                },
            )
        },
    )
}
