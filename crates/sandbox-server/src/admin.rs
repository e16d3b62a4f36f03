//! `/sandbox-admin`: what a test or a demo changes at run time: the limits
//! (to hit a quota on purpose, then lift it) and the sessions (to expire
//! every token mid-run); and what the server saw (`stats`). Not part of any
//! real API.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::state::{AppState, Limits, Stats};

pub async fn limits(State(st): State<Arc<AppState>>) -> Json<Limits> {
    Json(st.limits.lock().await.clone())
}

pub async fn stats(State(st): State<Arc<AppState>>) -> Json<Stats> {
    Json(st.stats())
}

pub async fn set_limits(State(st): State<Arc<AppState>>, Json(new): Json<Limits>) -> Json<Limits> {
    let mut l = st.limits.lock().await;
    *l = new;
    tracing::info!(limits = ?*l, "sandbox limits changed");
    Json(l.clone())
}

/// Ends every session: the next call with any token gets the API's
/// expired-session error.
pub async fn expire_sessions(State(st): State<Arc<AppState>>) -> StatusCode {
    let n = {
        let mut s = st.sessions.lock().await;
        let n = s.len();
        s.clear();
        n
    };
    tracing::info!(sessions = n, "sandbox sessions expired");
    StatusCode::NO_CONTENT
}
