//! Record lookup: one person by email, prospect id or CRM id (15 or 18
//! characters), with its identity link, both sides' current values side by
//! side (read from the systems, differences marked) and its history: every
//! change the engine detected and every write, newest first, with time,
//! side, fields old → new, lane, outcome and the record's trace id (a link
//! when `console.trace_url` is set). Emails are redacted as everywhere in
//! the console.
//!
//! **Sync now** (admins, with the session's CSRF token): `POST
//! /records/sync-now` reads both sides of the record again and sends them
//! through the immediate lane, through the same function as `crmsync
//! records sync-now` ([`crmsync_ops::records::sync_now`]), which writes
//! the admin audit entry. Refused on a paused connection.

use axum::Json;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crmsync_ops::pii::Pii;
use crmsync_ops::records::{RecordKey, SyncNowError};
use crmsync_ops::values::{FieldPair, SideBySide};
use crmsync_store::audit::{self, HistoryEntry};
use crmsync_store::connections::{self, ConnectionError};
use crmsync_store::identities::{self, IdentityRow, Keys};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::pages::{answer, unavailable};
use crate::session::{Principal, wants_json};
use crate::users::Role;
use crate::view::{csrf_field, page};

/// History entries shown per record.
const HISTORY: i64 = 200;

#[derive(Debug, Default, Deserialize)]
pub struct Lookup {
    connection: Option<String>,
    /// An email, a prospect id or a CRM id.
    q: Option<String>,
}

/// What a lookup text names (the one parser, shared with Sync now and the CLI).
fn keys_of(q: &str) -> Result<Keys, String> {
    RecordKey::parse(q).map(|k| k.keys())
}

/// An identity as shown: its link, not its field state.
fn identity_json(i: &IdentityRow, pii: Pii) -> Value {
    json!({
        "id": i.id,
        "status": i.status,
        "prospect_id": i.prospect_id,
        "crm_object": i.crm_object,
        "crm_id": i.crm_id,
        "email": i.email.as_deref().map(|e| pii.text(e).into_owned()),
        "prospect_recycled": i.ma_recycled,
        "linked_at": i.linked_at,
    })
}

/// `GET /records?connection=<id>&q=<email | prospect id | CRM id>`.
pub async fn lookup(State(state): State<AppState>, who: Principal, Query(l): Query<Lookup>, headers: HeaderMap) -> Response {
    let connection = l.connection.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| "default".to_owned());
    let Some(q) = l.q.clone().filter(|q| !q.trim().is_empty()) else {
        return answer(
            &headers,
            StatusCode::OK,
            || json!({ "identities": [] }),
            || page("Record lookup", Some(&who), form(&connection, "", None)),
        );
    };
    let keys = match keys_of(&q) {
        Ok(k) => k,
        Err(msg) => {
            return answer(
                &headers,
                StatusCode::BAD_REQUEST,
                || json!({ "error": msg }),
                || page("Record lookup", Some(&who), form(&connection, &q, Some(&msg))),
            );
        }
    };
    let read = async {
        let found = identities::find(&state.pool, &connection, &keys, identities::State::Skip).await?;
        let mut out = Vec::new();
        for i in found {
            let history = audit::history(&state.pool, &connection, i.id, HISTORY).await?;
            out.push((i, history));
        }
        Ok::<_, sqlx::Error>(out)
    };
    let found = match read.await {
        Ok(f) => f,
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let mut current = Vec::with_capacity(found.len());
    for (i, _) in &found {
        current.push(current_values(&state, &connection, i).await);
    }
    let pii = Pii::default();
    let trace_url = state.config.console.trace_url.as_deref();
    let status = if found.is_empty() { StatusCode::NOT_FOUND } else { StatusCode::OK };
    answer(
        &headers,
        status,
        || {
            let identities: Vec<Value> = found
                .iter()
                .zip(&current)
                .map(|((i, h), now)| {
                    let history: Vec<Value> = h.iter().map(|e| history_json(e, pii, trace_url)).collect();
                    let now = match now {
                        Ok(v) => json!({ "prospect_found": v.prospect_found, "crm_found": v.crm_found, "fields": v.fields.iter().map(|f| pair_json(f, pii)).collect::<Vec<_>>() }),
                        Err(e) => json!({ "error": pii.text(e) }),
                    };
                    json!({ "identity": identity_json(i, pii), "current": now, "history": history })
                })
                .collect();
            json!({ "identities": identities })
        },
        || page("Record lookup", Some(&who), results(&who, &connection, &q, &found, &current, pii, trace_url)),
    )
}

/// Both sides' values now, or why they could not be read (the history is
/// shown either way).
async fn current_values(state: &AppState, connection: &str, i: &IdentityRow) -> Result<SideBySide, String> {
    let read = async {
        let settings = connections::load(&state.pool, connection).await?;
        let crm = i.crm_object().zip(i.crm_id());
        Ok::<_, anyhow::Error>(crmsync_ops::values::current(&state.factory, connection, &settings, i.prospect_id, crm).await?)
    };
    read.await.map_err(|e| format!("could not read the systems: {e:#}"))
}

/// A value as shown: emails redacted unless shown, like every other value
/// the console prints.
fn shown(v: &Value, pii: Pii) -> Value {
    pii.json(v)
}

fn pair_json(f: &FieldPair, pii: Pii) -> Value {
    json!({ "ma_field": f.ma_field, "crm_field": f.crm_field, "ma": shown(&f.ma, pii), "crm": shown(&f.crm, pii), "differs": f.differs })
}

/// The link to an entry's trace, when a tracing backend is configured.
fn trace_link(trace_url: Option<&str>, trace_id: Option<&str>) -> Option<String> {
    Some(trace_url?.replace("{trace_id}", trace_id?))
}

fn history_json(e: &HistoryEntry, pii: Pii, trace_url: Option<&str>) -> Value {
    json!({
        "at": e.at,
        "change_id": e.change_id,
        "stage": e.stage,
        "source_side": e.source_side,
        "source_object": e.source_object,
        "source_id": pii.text(&e.source_id),
        "action": e.action,
        "lane": e.lane,
        "writes": e.writes,
        "detected": e.field_values.as_ref().and_then(|v| v.get("detected")).map(|v| shown(v, pii)),
        "written": {
            "ma": e.field_values.as_ref().and_then(|v| v.get("ma")).map(|v| shown(v, pii)),
            "crm": e.field_values.as_ref().and_then(|v| v.get("crm")).map(|v| shown(v, pii)),
        },
        "detail": e.detail.as_deref().map(|d| pii.text(d).into_owned()),
        "trace_id": e.trace_id,
        "trace_url": trace_link(trace_url, e.trace_id.as_deref()),
    })
}

/// A Sync now form.
#[derive(Debug, Deserialize)]
struct SyncNowForm {
    #[serde(default)]
    connection: Option<String>,
    q: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /records/sync-now`: `connection` (`default` when omitted), `q` (an
/// email, a prospect id or a CRM id) and `csrf`, as a form or JSON.
pub async fn sync_now(State(state): State<AppState>, who: Principal, req: Request) -> Response {
    let headers = req.headers().clone();
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"));
    let form = if is_json {
        Json::<SyncNowForm>::from_request(req, &state).await.map(|Json(f)| f).map_err(IntoResponse::into_response)
    } else {
        axum::Form::<SyncNowForm>::from_request(req, &state).await.map(|axum::Form(f)| f).map_err(IntoResponse::into_response)
    };
    let form = match form {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    if let Some(refused) = crate::pages::change_refused(&who, form.csrf.as_deref(), &headers) {
        return refused;
    }
    let connection = form.connection.filter(|c| !c.is_empty()).unwrap_or_else(|| "default".to_owned());
    let pii = Pii::default();
    let back = format!(
        "/records?{}",
        serde_urlencoded::to_string([("connection", connection.as_str()), ("q", form.q.as_str())]).unwrap_or_default()
    );
    match crmsync_ops::records::sync_now(&state.config, &state.pool, &state.factory, &who.actor(), &connection, &form.q).await {
        Ok(done) => {
            tracing::info!(user = %who.user.name, %connection, sent = done.published.len(), "console: record synced now");
            if wants_json(&headers) {
                return Json(json!(done)).into_response();
            }
            let body = html! {
                @for r in &done.published { p.notice { "Sent " code { (r) } " through the immediate lane." } }
                @for r in &done.gone { p.error { "Not sent: " (pii.text(r)) } }
                p { a href=(back) { "Back to the record" } }
            };
            page("Sync now", Some(&who), body).into_response()
        }
        Err(e) => {
            let code = match &e {
                SyncNowError::BadKey(_) => StatusCode::BAD_REQUEST,
                SyncNowError::NotFound { .. } | SyncNowError::Connection(ConnectionError::Unknown(_)) => StatusCode::NOT_FOUND,
                // Paused: the admin resumes it first.
                SyncNowError::Connection(ConnectionError::Paused { .. }) => StatusCode::CONFLICT,
                SyncNowError::Connection(ConnectionError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
                SyncNowError::Connection(ConnectionError::Db(_)) | SyncNowError::Other(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let msg = pii.text(&format!("{:#}", anyhow::Error::from(e))).into_owned();
            answer(
                &headers,
                code,
                || json!({ "error": msg }),
                || page("Sync now", Some(&who), html! { p.error { (msg) } p { a href=(back) { "Back to the record" } } }),
            )
        }
    }
}

/// The Sync now button, for an admin's session.
fn sync_now_button(who: &Principal, connection: &str, q: &str) -> Markup {
    let csrf = who.csrf().filter(|_| who.user.role == Role::Admin);
    html! {
        @if let Some(csrf) = csrf {
            form.inline method="post" action="/records/sync-now" {
                (csrf_field(csrf))
                input type="hidden" name="connection" value=(connection);
                input type="hidden" name="q" value=(q);
                button type="submit" { "Sync now" }
                span.help { " reads both sides again and sends the record through the immediate lane" }
            }
        }
    }
}

fn form(connection: &str, q: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { p.error { (e) } }
        form.inline method="get" action="/records" {
            label { "Connection " input name="connection" value=(connection); }
            label { "Email, prospect id or CRM id " input name="q" value=(q) size="40" autofocus; }
            button type="submit" { "Look up" }
        }
    }
}

/// A value as one table cell: text as it is, blanks as a dash.
fn cell(v: &Value, pii: Pii) -> String {
    match shown(v, pii) {
        Value::Null => "—".to_owned(),
        Value::String(s) if s.is_empty() => "—".to_owned(),
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// `field: old → new` lines of one history entry's values.
fn changes(values: Option<&Value>, pii: Pii) -> Markup {
    let Some(Value::Object(fields)) = values else { return html! {} };
    html! {
        @for (field, v) in fields {
            @let (old, new) = (v.get(0).unwrap_or(&Value::Null), v.get(1).unwrap_or(&Value::Null));
            div.change { code { (field) } ": " span.old { (cell(old, pii)) } " → " span.new { (cell(new, pii)) } }
        }
    }
}

fn results(
    who: &Principal,
    connection: &str,
    q: &str,
    found: &[(IdentityRow, Vec<HistoryEntry>)],
    current: &[Result<SideBySide, String>],
    pii: Pii,
    trace_url: Option<&str>,
) -> Markup {
    let names = |writes: &Value, side: &str| -> String {
        writes
            .get(side)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    let values = |e: &HistoryEntry, key: &str| e.field_values.as_ref().and_then(|v| v.get(key)).cloned();
    html! {
        (form(connection, q, None))
        @if found.is_empty() { p { "No identity of connection " code { (connection) } " has that key." } }
        (sync_now_button(who, connection, q))
        @for ((i, history), now) in found.iter().zip(current) {
            h2 { "Identity " code { (i.id) } }
            table {
                tr { th { "Status" } td { (i.status) @if i.ma_recycled { " (prospect in the recycle bin)" } } }
                tr { th { "Prospect" } td { @if let Some(p) = i.prospect_id { code { (p) } } } }
                tr { th { "CRM record" } td { @if let (Some(o), Some(c)) = (&i.crm_object, &i.crm_id) { (o) " " code { (c) } } } }
                tr { th { "Email" } td { @if let Some(e) = &i.email { (pii.text(e)) } } }
                tr { th { "Linked" } td { @if let Some(t) = i.linked_at { (t.format("%Y-%m-%d %H:%M:%S")) } } }
            }
            h3 { "Values now" }
            @match now {
                Err(e) => p.error { (pii.text(e)) },
                Ok(v) => {
                    @if !v.prospect_found && i.prospect_id.is_some() { p.error { "The prospect is not in the MA (deleted?)." } }
                    @if !v.crm_found && i.crm_id.is_some() { p.error { "The CRM record is not in the CRM (deleted?)." } }
                    table.values {
                        tr { th { "MA field" } th { "MA value" } th { "CRM field" } th { "CRM value" } th {} }
                        @for f in &v.fields {
                            tr class=[f.differs.then_some("differs")] {
                                td { code { (f.ma_field) } }
                                td { (cell(&f.ma, pii)) }
                                td { @if let Some(c) = &f.crm_field { code { (c) } } @else { "not mapped" } }
                                td { (cell(&f.crm, pii)) }
                                td { @if f.differs { strong { "differs" } } }
                            }
                        }
                    }
                }
            }
            h3 { "History" }
            table.history {
                tr { th { "When (UTC)" } th { "Stage" } th { "From" } th { "Outcome" } th { "Detected" } th { "Written to the MA" } th { "Written to the CRM" } th { "Lane" } th { "Detail" } th { "Trace" } }
                @for e in history {
                    tr {
                        td { (e.at.format("%Y-%m-%d %H:%M:%S%.3f")) }
                        td { (e.stage) }
                        td { (e.source_side) " " (e.source_object) " " code { (pii.text(&e.source_id)) } }
                        td { (e.action) }
                        td { (changes(values(e, "detected").as_ref(), pii)) }
                        td { @if let Some(v) = values(e, "ma") { (changes(Some(&v), pii)) } @else { (names(&e.writes, "ma")) } }
                        td { @if let Some(v) = values(e, "crm") { (changes(Some(&v), pii)) } @else { (names(&e.writes, "crm")) } }
                        td { (e.lane) }
                        td { @if let Some(d) = &e.detail { (pii.text(d)) } }
                        td {
                            @if let Some(t) = &e.trace_id {
                                @if let Some(url) = trace_link(trace_url, Some(t)) { a href=(url) { code { (&t[..8]) "…" } } }
                                @else { code title=(t) { (&t[..8]) "…" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keys_of;

    #[test]
    fn a_lookup_names_an_email_a_prospect_or_a_crm_record() {
        assert_eq!(keys_of(" Jane@Example.com ").unwrap().emails.len(), 1);
        assert_eq!(keys_of("42").unwrap().prospect_ids, vec![42]);
        let crm = keys_of("00Q000000000001").unwrap().crm_ids;
        assert_eq!(crm.len(), 1);
        assert_eq!(crm[0].len(), 18, "a 15-character id is looked up as its 18-character form");
        assert!(keys_of("not a key").is_err());
    }
}
