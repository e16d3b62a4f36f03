//! Pausing and resuming a connection from the console (issue 28): the
//! buttons on the connection page and their routes, `POST
//! /connections/{id}/pause` and `POST /connections/{id}/resume`. Admins
//! only, with the session's CSRF token (form field `csrf`, or the
//! `x-csrf-token` header for a script); both go through
//! [`crmsync_ops::pause::set_paused`], as `crmsync connection pause |
//! resume` do, which writes the admin audit entry.
//!
//! A form is answered with a redirect to the connection page (so that a
//! reload does not post again); JSON with what changed.

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use crmsync_store::connections::{ConnectionError, Paused};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::pages::{answer, unavailable};
use crate::session::{Principal, wants_json};
use crate::users::Role;
use crate::view::{csrf_field, page};

/// An action's form: its CSRF token and nothing else.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    pub csrf: Option<String>,
}

/// The CSRF token a POST carries in its form or JSON body (a script may
/// send it as the `x-csrf-token` header instead, which
/// [`Principal::may_change`] reads), and the request's headers.
pub(crate) async fn csrf_of_request(state: &AppState, req: Request) -> Result<(HeaderMap, Option<String>), Response> {
    let headers = req.headers().clone();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let csrf = if content_type.starts_with("application/json") {
        Json::<CsrfOnly>::from_request(req, state).await.map(|Json(c)| c.csrf).map_err(IntoResponse::into_response)?
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        axum::Form::<CsrfOnly>::from_request(req, state).await.map(|axum::Form(c)| c.csrf).map_err(IntoResponse::into_response)?
    } else {
        None
    };
    Ok((headers, csrf))
}

/// `POST /connections/{id}/pause`.
pub async fn pause(State(state): State<AppState>, who: Principal, Path(id): Path<String>, req: Request) -> Response {
    change(state, who, id, req, true).await
}

/// `POST /connections/{id}/resume`.
pub async fn resume(State(state): State<AppState>, who: Principal, Path(id): Path<String>, req: Request) -> Response {
    change(state, who, id, req, false).await
}

async fn change(state: AppState, who: Principal, id: String, req: Request, paused: bool) -> Response {
    let (headers, csrf) = match csrf_of_request(&state, req).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    if let Some(refused) = crate::pages::change_refused(&who, csrf.as_deref(), &headers) {
        return refused;
    }
    match crmsync_ops::pause::set_paused(&state.pool, &who.actor(), &id, paused).await {
        Ok(change) => {
            tracing::info!(user = %who.user.name, connection = %id, paused, changed = change.changed(), "console: connection pause set");
            if wants_json(&headers) {
                return Json(json!({
                    "connection": change.connection,
                    "paused_before": change.paused_before,
                    "paused_after": change.paused_after,
                    "paused_at": change.paused_at,
                }))
                .into_response();
            }
            Redirect::to(&format!("/connections/{id}")).into_response()
        }
        Err(e @ ConnectionError::Unknown(_)) => {
            let msg = e.to_string();
            answer(
                &headers,
                StatusCode::NOT_FOUND,
                || json!({ "error": msg }),
                || page("No such connection", Some(&who), html! { p.error { (msg) } }),
            )
        }
        Err(e) => unavailable(&headers, Some(&who), &e.into()),
    }
}

/// The connection page's state line and, for an admin, its Pause or
/// Resume button.
pub fn controls(who: &Principal, id: &str, paused: Option<&Paused>) -> Markup {
    let csrf = who.csrf().filter(|_| who.user.role == Role::Admin);
    html! {
        @match paused {
            Some(pause) => {
                p.paused {
                    strong { "Paused" } " since " (pause.paused_at.format("%Y-%m-%d %H:%M:%S UTC"))
                    @if let Some(by) = &pause.paused_by { " by " (by) }
                    ": nothing is written to its systems and its change cursors hold still. Resuming catches up, in order."
                }
                @if let Some(csrf) = csrf {
                    form.inline method="post" action=(format!("/connections/{id}/resume")) {
                        (csrf_field(csrf))
                        button type="submit" { "Resume" }
                    }
                }
            }
            None => {
                p { "Running." }
                @if let Some(csrf) = csrf {
                    form.inline method="post" action=(format!("/connections/{id}/pause")) {
                        (csrf_field(csrf))
                        button type="submit" { "Pause" }
                    }
                }
            }
        }
    }
}
