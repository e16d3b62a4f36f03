//! The sync-error pages (I6): counts per connection and category, the
//! errors with filters, one error in full with the record as detected, and
//! retrying or dismissing one or a whole category (admins), and a CSV
//! export of what the filters select. Emails are redacted as the
//! CLI redacts them by default ([`crmsync_ops::pii`]).
//!
//! Retrying reads each record again from its source and sends it through
//! the pipeline, as `crmsync errors retry` does (the same function); the
//! errors of dead-lettered messages are still retried from the CLI, which
//! replays them from their queue.

use axum::Json;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crmsync_ops::pii::Pii;
use crmsync_store::sync_errors::{self, Filter, SyncErrorDetail};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::pages::{answer, unavailable};
use crate::session::{Principal, wants_json};
use crate::users::Role;
use crate::view::{csrf_field, page};

/// Errors listed on one page (the counts cover them all).
const ERRORS_PAGE: i64 = 200;

#[derive(Debug, Default, Deserialize)]
pub struct ErrorQuery {
    connection: Option<String>,
    category: Option<String>,
    /// open (the default), retried, dismissed, resolved or all.
    status: Option<String>,
}

impl ErrorQuery {
    fn filter(&self) -> Filter {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let status = match self.status.as_deref() {
            Some("all") => None,
            Some(s) if !s.is_empty() => Some(s.to_owned()),
            _ => Some("open".to_owned()),
        };
        Filter { connection_id: set(&self.connection), category: set(&self.category), status, ..Filter::default() }
    }
}

/// The CSV export of what the list shows.
fn export_link(q: &ErrorQuery) -> String {
    let params: Vec<(&str, &str)> = [("connection", &q.connection), ("category", &q.category), ("status", &q.status)]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_deref().filter(|v| !v.is_empty())?)))
        .collect();
    format!("/errors/export.csv?{}", serde_urlencoded::to_string(params).unwrap_or_default())
}

/// Free text on one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max { flat } else { format!("{}…", flat.chars().take(max - 1).collect::<String>()) }
}

/// `GET /errors`: counts per connection and category, and the errors.
pub async fn list(State(state): State<AppState>, who: Principal, Query(q): Query<ErrorQuery>, headers: HeaderMap) -> Response {
    let filter = q.filter();
    let read = async {
        let counts = sync_errors::count_by_category(&state.pool, &filter).await?;
        let rows = sync_errors::find(&state.pool, &filter, Some(ERRORS_PAGE)).await?;
        Ok::<_, sqlx::Error>((counts, rows))
    };
    let (counts, rows) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let pii = Pii::default();
    let rows: Vec<SyncErrorDetail> = rows.iter().map(|e| pii.error(e)).collect();
    let counts_json: Vec<_> = counts.iter().map(|(c, k, n)| json!({ "connection": c, "category": k, "count": n })).collect();
    answer(
        &headers,
        StatusCode::OK,
        || json!({ "counts": counts_json, "errors": rows }),
        || page("Sync errors", Some(&who), list_body(&who, &q, &counts, &rows)),
    )
}

fn list_body(who: &Principal, q: &ErrorQuery, counts: &[(String, String, i64)], rows: &[SyncErrorDetail]) -> Markup {
    let csrf = who.csrf().filter(|_| who.user.role == Role::Admin);
    let open = q.filter().status.as_deref() == Some("open");
    let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
    html! {
        form.inline method="get" action="/errors" {
            label { "Connection " input name="connection" value=(q.connection.clone().unwrap_or_default()); }
            label { "Category " input name="category" value=(q.category.clone().unwrap_or_default()); }
            label { "Status "
                select name="status" {
                    @for s in ["open", "retried", "dismissed", "resolved", "all"] {
                        option value=(s) selected[q.status.as_deref().unwrap_or("open") == s] { (s) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        p { a href=(export_link(q)) { "Export these as CSV" } }
        p { (total) " sync error(s)" }
        table {
            tr { th { "Connection" } th { "Category" } th { "Errors" } @if open && csrf.is_some() { th { "" } } }
            @for (connection, category, n) in counts {
                tr {
                    td { (connection) }
                    td { a href=(format!("/errors?connection={connection}&category={category}")) { (category) } }
                    td.n { (n) }
                    @if let (true, Some(csrf)) = (open, csrf) {
                        td {
                            form.inline method="post" action="/errors/retry" {
                                (csrf_field(csrf))
                                input type="hidden" name="connection" value=(connection);
                                input type="hidden" name="category" value=(category);
                                button type="submit" { "Retry all " (n) }
                            }
                            form.inline method="post" action="/errors/dismiss" {
                                (csrf_field(csrf))
                                input type="hidden" name="connection" value=(connection);
                                input type="hidden" name="category" value=(category);
                                button type="submit" { "Dismiss all " (n) }
                            }
                        }
                    }
                }
            }
        }
        table {
            tr { th { "#" } th { "Connection" } th { "Category" } th { "Record" } th { "Seen" } th { "Last seen (UTC)" } th { "Reason" } }
            @for e in rows {
                tr {
                    td { a href=(format!("/errors/{}", e.id)) { (e.id) } }
                    td { (e.connection_id) }
                    td { (e.category) }
                    td { (e.object) " " code { (e.record_id) } }
                    td.n { (e.occurrences) }
                    td { (e.last_seen_at.format("%Y-%m-%d %H:%M")) }
                    td { (one_line(&e.reason, 120)) }
                }
            }
        }
        @if total > rows.len() as i64 {
            p.help { (total - rows.len() as i64) " more: narrow the filters, or `crmsync errors export` writes them all." }
        }
    }
}

/// `GET /errors/export.csv`: every error the filters select (not only a
/// page of them), as CSV, with the same columns and redaction as `crmsync
/// errors export --format csv`.
pub async fn export_csv(State(state): State<AppState>, who: Principal, Query(q): Query<ErrorQuery>, headers: HeaderMap) -> Response {
    let rows = match sync_errors::find(&state.pool, &q.filter(), None).await {
        Ok(rows) => rows,
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let pii = Pii::default();
    let rows: Vec<SyncErrorDetail> = rows.iter().map(|e| pii.error(e)).collect();
    let mut body = Vec::new();
    if let Err(e) = crmsync_ops::errors::write_csv(&mut body, &rows) {
        return unavailable(&headers, Some(&who), &e);
    }
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8"), (header::CONTENT_DISPOSITION, "attachment; filename=\"sync-errors.csv\"")], body)
        .into_response()
}

/// `GET /errors/{id}`: one error in full, with the record as detected.
pub async fn show(State(state): State<AppState>, who: Principal, Path(id): Path<i64>, headers: HeaderMap) -> Response {
    let found = sync_errors::find(&state.pool, &Filter { ids: vec![id], ..Filter::default() }, Some(1)).await;
    let e = match found {
        Ok(mut rows) => match rows.pop() {
            Some(e) => Pii::default().error(&e),
            None => {
                let msg = format!("no sync error #{id}");
                return answer(
                    &headers,
                    StatusCode::NOT_FOUND,
                    || json!({ "error": msg }),
                    || page("Not found", Some(&who), html! { p.error { (msg) } }),
                );
            }
        },
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let csrf = who.csrf().filter(|_| who.user.role == Role::Admin && e.status == "open");
    answer(
        &headers,
        StatusCode::OK,
        || json!(e),
        || {
            page(
                &format!("Sync error #{id}"),
                Some(&who),
                html! {
                    table {
                        tr { th { "Connection" } td { (e.connection_id) } }
                        tr { th { "Status" } td { (e.status) @if let Some(t) = e.closed_at { " (closed " (t.format("%Y-%m-%d %H:%M")) ")" } } }
                        tr { th { "Category" } td { (e.category) } }
                        tr { th { "Stage" } td { (e.stage) } }
                        tr { th { "Record" } td { (e.object) " " code { (e.record_id) } } }
                        tr { th { "Seen" } td { (e.occurrences) " time(s), first " (e.first_seen_at.format("%Y-%m-%d %H:%M:%S")) ", last " (e.last_seen_at.format("%Y-%m-%d %H:%M:%S")) } }
                        tr { th { "Reason" } td { (e.reason) } }
                    }
                    @if let Some(payload) = &e.payload {
                        h2 { "The record as detected" }
                        pre { (serde_json::to_string_pretty(payload).unwrap_or_default()) }
                    }
                    @if let Some(csrf) = csrf {
                        form.inline method="post" action="/errors/retry" {
                            (csrf_field(csrf))
                            input type="hidden" name="id" value=(e.id);
                            button type="submit" { "Retry" }
                        }
                        form.inline method="post" action="/errors/dismiss" {
                            (csrf_field(csrf))
                            input type="hidden" name="id" value=(e.id);
                            button type="submit" { "Dismiss" }
                        }
                    }
                },
            )
        },
    )
}

/// The errors an action works on: one by id, or every open error of a
/// category (of one connection, or all).
#[derive(Debug, Deserialize)]
struct Targets {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    connection: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    csrf: Option<String>,
}

/// Reads an action's targets from a form or JSON and checks that this
/// caller may act (an admin; a session's request with its CSRF token).
async fn targeted(state: &AppState, who: &Principal, req: Request) -> Result<(HeaderMap, Filter), Response> {
    let headers = req.headers().clone();
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"));
    let t = if is_json {
        Json::<Targets>::from_request(req, state).await.map(|Json(d)| d).map_err(IntoResponse::into_response)?
    } else {
        axum::Form::<Targets>::from_request(req, state).await.map(|axum::Form(d)| d).map_err(IntoResponse::into_response)?
    };
    if let Some(refused) = crate::pages::change_refused(who, t.csrf.as_deref(), &headers) {
        return Err(refused);
    }
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    let targets = Filter {
        ids: t.id.into_iter().collect(),
        connection_id: set(t.connection),
        category: set(t.category),
        status: Some("open".into()),
        ..Filter::default()
    };
    if targets.ids.is_empty() && targets.category.is_none() {
        return Err(crate::pages::refused(&headers, who, StatusCode::BAD_REQUEST, "name an error (id) or a category"));
    }
    Ok((headers, targets))
}

/// `POST /errors/dismiss`, as `crmsync errors dismiss <id>` or `crmsync
/// errors dismiss --category <c> [-c <connection>]`: a form or JSON
/// (`{"id"}` or `{"category", "connection"}`). Admins only.
pub async fn dismiss(State(state): State<AppState>, who: Principal, req: Request) -> Response {
    let (headers, targets) = match targeted(&state, &who, req).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    match crmsync_ops::errors::dismiss(&state.pool, &who.actor(), &targets).await {
        Ok(closed) => {
            tracing::info!(user = %who.user.name, closed, "console: sync errors dismissed");
            if wants_json(&headers) {
                return Json(json!({ "dismissed": closed })).into_response();
            }
            let body =
                html! { p.notice { "Dismissed " (closed) " open sync error(s)." } p { a href="/errors" { "Back to the sync errors" } } };
            page("Sync errors dismissed", Some(&who), body).into_response()
        }
        Err(e) => unavailable(&headers, Some(&who), &e.into()),
    }
}

/// `POST /errors/retry`, as `crmsync errors retry <id>` or `--category
/// <c> [-c <connection>]`: each record is read again from its source and
/// sent through the pipeline; its error closes as `retried` once the
/// broker has it. Errors of dead-lettered messages are left to the CLI,
/// which replays them from their queue. Admins only.
pub async fn retry(State(state): State<AppState>, who: Principal, req: Request) -> Response {
    let (headers, targets) = match targeted(&state, &who, req).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let found = match sync_errors::find(&state.pool, &targets, None).await {
        Ok(f) => f,
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let messages = found.iter().filter(|e| e.object == "message").count();
    let done = match crmsync_ops::errors::retry_records(&state.config, &state.pool, &state.factory, &who.actor(), &found, |_| {}).await {
        Ok(d) => d,
        Err(e) => return unavailable(&headers, Some(&who), &e),
    };
    tracing::info!(user = %who.user.name, retried = done.retried, "console: sync errors retried");
    let pii = Pii::default();
    let gone: Vec<String> = done.gone.iter().map(|r| format!("{} {}", r.object, pii.text(&r.id))).collect();
    let unsupported: Vec<String> = done.unsupported.iter().map(|(r, why)| format!("{} {}: {why}", r.object, pii.text(&r.id))).collect();
    answer(
        &headers,
        StatusCode::OK,
        || json!({ "retried": done.retried, "gone": gone, "unsupported": unsupported, "messages_left": messages }),
        || {
            let body = html! {
                p.notice { "Retried " (done.retried) " record(s): they are back in the pipeline; a record that fails again gets a new open error." }
                @for g in &gone { p.error { (g) ": no longer in its source; dismiss it" } }
                @for u in &unsupported { p.error { (u) } }
                @if messages > 0 { p.help { (messages) " dead-lettered message(s) are replayed with `crmsync errors retry`." } }
                p { a href="/errors" { "Back to the sync errors" } }
            };
            page("Sync errors retried", Some(&who), body)
        },
    )
}
