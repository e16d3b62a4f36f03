//! `/sandbox-admin`: what a test or a demo changes at run time: the limits
//! (to hit a quota on purpose, then lift it; the change event retention,
//! delivery allocation, keepalive and overflow threshold among them), the
//! sessions (to expire every token mid-run) and Change Data Capture (which
//! entities publish events, and switches that make the next events gap or
//! overflow events); and what the server saw (`stats`). Not part of any
//! real API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use crmsync_sandbox::cdc::{ChangeLog, entities};
use serde::{Deserialize, Serialize};

use crate::state::{AppState, Limits, Stats};

pub async fn limits(State(st): State<Arc<AppState>>) -> Json<Limits> {
    Json(st.current_limits().await)
}

pub async fn stats(State(st): State<Arc<AppState>>) -> Json<Stats> {
    Json(st.stats())
}

pub async fn set_limits(
    State(st): State<Arc<AppState>>,
    Json(new): Json<Limits>,
) -> Result<Json<Limits>, (StatusCode, Json<serde_json::Value>)> {
    // A token that outlives the server's clock would make every later
    // login panic; nothing a test or a demo needs comes near a year.
    if new.token_ttl_secs == 0 || Duration::from_secs(new.token_ttl_secs) > crate::oauth::MAX_TOKEN_TTL {
        let message = format!("token_ttl_secs must be between 1 and {}", crate::oauth::MAX_TOKEN_TTL.as_secs());
        return Err((StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "INVALID_VALUE", "message": message}))));
    }
    let l = st.set_limits(new).await;
    tracing::info!(limits = ?l, "sandbox limits changed");
    Ok(Json(l))
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

/// Change Data Capture as `/sandbox-admin/cdc` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CdcSettings {
    /// Entities selected (true) or not, the standard ones always listed.
    pub entities: BTreeMap<String, bool>,
    /// Events still to be sent as gap events.
    pub gaps: i32,
    /// Transactions still to be sent as overflow events.
    pub overflows: i32,
}

/// How many of the next events (or transactions) a switch affects.
#[derive(Debug, Deserialize)]
pub struct Count {
    pub count: i32,
}

type AdminError = (StatusCode, String);

fn failed(e: sqlx::Error) -> AdminError {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn log(st: &AppState) -> ChangeLog {
    ChangeLog::new(st.pool.clone(), &st.config.crm_tenant)
}

async fn cdc_settings(log: &ChangeLog) -> Result<Json<CdcSettings>, AdminError> {
    let entities = log.selection().await.map_err(failed)?;
    let (gaps, overflows) = log.switches().await.map_err(failed)?;
    Ok(Json(CdcSettings { entities, gaps, overflows }))
}

/// `GET /sandbox-admin/cdc`.
pub async fn cdc(State(st): State<Arc<AppState>>) -> Result<Json<CdcSettings>, AdminError> {
    cdc_settings(&log(&st)).await
}

/// `PUT /sandbox-admin/cdc/entities` `{"Lead": false, "Subscription__c": true}`:
/// selects or deselects entities for change events (Setup > Change Data
/// Capture); the others stay as they are.
pub async fn select_entities(
    State(st): State<Arc<AppState>>,
    Json(selection): Json<BTreeMap<String, bool>>,
) -> Result<Json<CdcSettings>, AdminError> {
    let log = log(&st);
    for (entity, selected) in &selection {
        let custom = entity.ends_with("__c") && entity.len() > 3 && entity.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !custom && !entities::STANDARD.contains(&entity.as_str()) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("{entity} is not an entity the sandbox captures: {} or a custom object (Name__c)", entities::STANDARD.join(", ")),
            ));
        }
        log.select(entity, *selected).await.map_err(failed)?;
    }
    tracing::info!(?selection, "change data capture selection changed");
    cdc_settings(&log).await
}

/// `POST /sandbox-admin/cdc/gaps` `{"count": n}`: the next n change events
/// are sent as gap events (`GAP_CREATE`...: header only, no field values).
pub async fn request_gaps(State(st): State<Arc<AppState>>, Json(c): Json<Count>) -> Result<Json<CdcSettings>, AdminError> {
    let log = log(&st);
    log.request_gaps(c.count).await.map_err(failed)?;
    cdc_settings(&log).await
}

/// `POST /sandbox-admin/cdc/overflows` `{"count": n}`: the next n
/// transactions are sent as overflow events (`GAP_OVERFLOW`, one per entity
/// they change, header only, no record ids), as a transaction over the
/// overflow threshold is.
pub async fn request_overflows(State(st): State<Arc<AppState>>, Json(c): Json<Count>) -> Result<Json<CdcSettings>, AdminError> {
    let log = log(&st);
    log.request_overflows(c.count).await.map_err(failed)?;
    cdc_settings(&log).await
}
