//! OAuth 2.0 as Salesforce serves it (`/services/oauth2/token`): the client
//! credentials flow (the connected app runs as the integration user) and the
//! JWT bearer flow (an RS256 assertion for any active user with API access),
//! and the gates in front of both APIs that check the bearer token, count
//! calls against the daily limits and add the usage header.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Form;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use crmsync_wire::pardot::{self, codes as ae};
use crmsync_wire::salesforce::{self, ApiUsage, JWT_BEARER_GRANT, JwtClaims, TokenResponse, codes};
use serde::Deserialize;

use crate::errors::{AeError, OAuthFailure, SfError};
use crate::state::{AppState, InFlight, MaUser, Session};

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    assertion: Option<String>,
}

/// A CRM user as a login sees it.
struct User {
    id: String,
    active: bool,
    api: bool,
}

/// The user with this username (the email, in the sandbox), or the
/// integration user when `username` is `None`.
async fn user(st: &AppState, username: Option<&str>) -> Result<Option<User>, sqlx::Error> {
    let row: Option<(String, bool, bool)> = sqlx::query_as(
        "SELECT id, is_active, api_enabled FROM crm.users WHERE tenant = $1 \
         AND CASE WHEN $2::text IS NULL THEN is_integration ELSE lower(email) = lower($2) END \
         ORDER BY created_at LIMIT 1",
    )
    .bind(&st.config.crm_tenant)
    .bind(username)
    .fetch_optional(&st.pool)
    .await?;
    Ok(row.map(|(id, active, api)| User { id, active, api }))
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn token(State(st): State<Arc<AppState>>, Form(req): Form<TokenRequest>) -> Result<Json<TokenResponse>, OAuthFailure> {
    let db = |e: sqlx::Error| OAuthFailure::new("server_error", e.to_string());
    let user = match req.grant_type.as_str() {
        "client_credentials" => {
            if req.client_id.as_deref() != Some(st.config.client_id.as_str()) {
                return Err(OAuthFailure::new("invalid_client_id", "client identifier invalid"));
            }
            if req.client_secret.as_deref() != Some(st.config.client_secret.as_str()) {
                return Err(OAuthFailure::new("invalid_client", "invalid client credentials"));
            }
            user(&st, None).await.map_err(db)?
        }
        JWT_BEARER_GRANT => {
            let Some(key) = &st.config.jwt_public_key_pem else {
                return Err(OAuthFailure::new("invalid_grant", "this org has no certificate for the JWT bearer flow"));
            };
            let assertion = req.assertion.as_deref().ok_or_else(|| OAuthFailure::new("invalid_request", "assertion missing"))?;
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(key.as_bytes())
                .map_err(|e| OAuthFailure::new("invalid_grant", format!("the org's certificate is unusable: {e}")))?;
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&["https://login.salesforce.com", "https://test.salesforce.com", st.base_url()]);
            validation.set_issuer(&[st.config.client_id.as_str()]);
            let claims = jsonwebtoken::decode::<JwtClaims>(assertion, &key, &validation)
                .map_err(|e| OAuthFailure::new("invalid_grant", format!("invalid assertion: {e}")))?
                .claims;
            let user = user(&st, Some(&claims.sub)).await.map_err(db)?;
            if user.is_none() {
                return Err(OAuthFailure::new("invalid_grant", "user hasn't approved this consumer"));
            }
            user
        }
        other => return Err(OAuthFailure::new("unsupported_grant_type", format!("grant type not supported: {other}"))),
    };
    let Some(user) = user else {
        return Err(OAuthFailure::new("invalid_grant", "no integration user in this org"));
    };
    if !user.active {
        return Err(OAuthFailure::new("invalid_grant", "user is inactive"));
    }
    if !user.api {
        return Err(OAuthFailure::new("invalid_grant", "the user does not have the API Enabled permission"));
    }
    let ttl = Duration::from_secs(st.limits.lock().await.token_ttl_secs);
    let access_token = format!("{}!{}", st.org_id, random_token());
    let now = Instant::now();
    // The admin's value is bounded, but an Instant must never overflow.
    let expires = now.checked_add(ttl).unwrap_or(now + MAX_TOKEN_TTL);
    {
        let mut sessions = st.sessions.lock().await;
        // Ended sessions go as new ones come, and a login loop cannot grow
        // the table past its cap: the session closest to its end goes first.
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(first) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(t, _)| t.clone())
        {
            sessions.remove(&first);
        }
        sessions.insert(access_token.clone(), Session { user_id: user.id.clone(), expires });
    }
    st.logins.fetch_add(1, Ordering::SeqCst);
    Ok(Json(TokenResponse {
        access_token,
        instance_url: st.base_url().to_owned(),
        id: format!("{}/id/{}/{}", st.base_url(), st.org_id, user.id),
        token_type: "Bearer".into(),
        issued_at: Utc::now().timestamp_millis().to_string(),
        scope: Some("api".into()),
    }))
}

/// Sessions held at once; past it, the one closest to its end is dropped.
pub const MAX_SESSIONS: usize = 10_000;

/// The longest a token may live (`token_ttl_secs` is refused above it).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The access token of a request: Salesforce takes the `Bearer` scheme and
/// the older `OAuth` one, in any case. (Taken out before any await: a
/// request's body is not `Sync`, so a future holding `&Request` would not
/// be `Send`.)
fn bearer(req: &Request) -> Option<String> {
    token_in(req.headers())
}

fn token_in(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("Bearer") || scheme.eq_ignore_ascii_case("OAuth")).then(|| token.trim().to_owned())
}

async fn session(st: &AppState, token: Option<String>) -> Option<Session> {
    let token = token?;
    let mut sessions = st.sessions.lock().await;
    match sessions.get(&token) {
        Some(s) if s.expires > Instant::now() => Some(s.clone()),
        Some(_) => {
            sessions.remove(&token);
            None
        }
        None => None,
    }
}

fn with_usage(mut resp: Response, usage: ApiUsage) -> Response {
    if let Ok(v) = HeaderValue::from_str(&usage.header()) {
        resp.headers_mut().insert(salesforce::LIMIT_INFO_HEADER, v);
    }
    resp
}

/// In front of `/services/data`: a valid session, a call within the daily
/// limit (counted), and the usage header on the answer.
pub async fn salesforce_gate(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    st.roll_day(Utc::now()).await;
    let Some(session) = session(&st, bearer(&req)).await else {
        let usage = {
            let l = st.limits.lock().await;
            ApiUsage { used: l.salesforce_used, max: l.salesforce_daily }
        };
        return with_usage(
            SfError::new(StatusCode::UNAUTHORIZED, codes::INVALID_SESSION_ID, "Session expired or invalid").into_response(),
            usage,
        );
    };
    let usage = {
        let mut l = st.limits.lock().await;
        if l.salesforce_used >= l.salesforce_daily {
            let usage = ApiUsage { used: l.salesforce_used, max: l.salesforce_daily };
            drop(l);
            return with_usage(
                SfError::new(StatusCode::FORBIDDEN, codes::REQUEST_LIMIT_EXCEEDED, "TotalRequests Limit exceeded.").into_response(),
                usage,
            );
        }
        l.salesforce_used += 1;
        ApiUsage { used: l.salesforce_used, max: l.salesforce_daily }
    };
    req.extensions_mut().insert(session);
    with_usage(next.run(req).await, usage)
}

/// The MA user tied to a Salesforce user (15- or 18-character ids), the
/// integration user first should both integration users share it.
async fn ma_user(st: &AppState, crm_user: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM ma.users WHERE tenant = $1 AND (crm_user_id = $2 OR crm_user_id = left($2, 15)) \
         ORDER BY is_integration DESC, id LIMIT 1",
    )
    .bind(&st.config.ma_tenant)
    .bind(crm_user)
    .fetch_optional(&st.pool)
    .await
}

/// In front of `/api/v5`: a valid session of a Salesforce user who has an
/// MA user, the business unit header, the daily quota (counted) and at most
/// the allowed requests in flight.
pub async fn pardot_gate(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    st.roll_day(Utc::now()).await;
    let Some(session) = session(&st, bearer(&req)).await else {
        return AeError::new(StatusCode::UNAUTHORIZED, ae::INVALID_TOKEN, "Invalid or expired access token").into_response();
    };
    // As in Account Engagement, a Salesforce user not synced to the business
    // unit cannot use its API: the token is refused like an invalid one.
    let user = match ma_user(&st, &session.user_id).await {
        Ok(Some(id)) => MaUser(id),
        Ok(None) => {
            return AeError::new(
                StatusCode::UNAUTHORIZED,
                ae::INVALID_TOKEN,
                "access_token is invalid for this business unit: its Salesforce user has no Account Engagement user",
            )
            .into_response();
        }
        Err(e) => return AeError::from(e).into_response(),
    };
    let bu = req.headers().get(pardot::BUSINESS_UNIT_HEADER).and_then(|v| v.to_str().ok());
    if bu != Some(st.config.business_unit_id.as_str()) {
        return AeError::new(
            StatusCode::BAD_REQUEST,
            ae::INVALID_BUSINESS_UNIT,
            format!("the {} header must name this business unit", pardot::BUSINESS_UNIT_HEADER),
        )
        .into_response();
    }
    let concurrency = {
        let mut l = st.limits.lock().await;
        if l.pardot_used >= l.pardot_daily {
            return AeError::new(StatusCode::TOO_MANY_REQUESTS, ae::DAILY_API_LIMIT, "Daily API rate limit met.").into_response();
        }
        l.pardot_used += 1;
        l.pardot_concurrency
    };
    let guard = InFlight(&st.pardot_in_flight);
    let before = st.pardot_in_flight.fetch_add(1, Ordering::SeqCst);
    if before >= concurrency {
        drop(guard);
        st.pardot_concurrency_refused.fetch_add(1, Ordering::SeqCst);
        return AeError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ae::CONCURRENT_REQUEST_LIMIT,
            "You have exceeded your concurrent request limit. Please wait, before trying again.",
        )
        .into_response();
    }
    st.pardot_in_flight_high.fetch_max(before + 1, Ordering::SeqCst);
    req.extensions_mut().insert(session);
    req.extensions_mut().insert(user);
    let resp = next.run(req).await;
    drop(guard);
    resp
}

/// `GET /id/{org}/{user}`, the identity URL a token response names (`id`):
/// who the token acts as, as Salesforce's Identity service answers it
/// (jsforce's `identity()`, simple-salesforce's session checks).
pub async fn identity(
    State(st): State<Arc<AppState>>,
    axum::extract::Path((org, user_id)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, SfError> {
    let Some(session) = session(&st, token_in(&headers)).await else {
        return Err(SfError::new(StatusCode::FORBIDDEN, "Bad_OAuth_Token", "Bad_OAuth_Token"));
    };
    let not_found = || SfError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "The requested resource does not exist");
    if org != st.org_id || user_id != session.user_id {
        return Err(not_found());
    }
    let row: Option<(String, String, bool)> = sqlx::query_as("SELECT name, email, is_active FROM crm.users WHERE tenant = $1 AND id = $2")
        .bind(&st.config.crm_tenant)
        .bind(&user_id)
        .fetch_optional(&st.pool)
        .await?;
    let (name, email, active) = row.ok_or_else(not_found)?;
    let base = st.base_url();
    let v = salesforce::API_VERSION.trim_start_matches('v');
    let data = |path: &str| format!("{base}/services/data/v{v}/{path}");
    Ok(Json(serde_json::json!({
        "id": format!("{base}/id/{org}/{user_id}"),
        "asserted_user": true,
        "user_id": user_id,
        "organization_id": org,
        "username": email,
        "nick_name": name,
        "display_name": name,
        "email": email,
        "email_verified": true,
        "active": active,
        "user_type": "STANDARD",
        "language": "en_US",
        "locale": "en_US",
        "utcOffset": 0,
        "urls": {
            "rest": data(""),
            "sobjects": data("sobjects/"),
            "query": data("query/"),
            "search": data("search/"),
            "recent": data("recent/"),
            "limits": data("limits/"),
        },
    })))
}
