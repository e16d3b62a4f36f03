//! Who is asking: a signed-in browser (a session cookie) or a script (an
//! API token), and what they may do.
//!
//! The session cookie is HttpOnly (no script reads it) and SameSite=Strict
//! (no other site's page sends it), and Secure when `console.secure_cookies`
//! is on. Every POST from a session must also carry the session's CSRF
//! token (the form field `csrf`, or the header `X-CSRF-Token`): SameSite
//! alone leaves older browsers and same-site pages. A request with an API
//! token (`Authorization: Bearer`) needs none: a browser never adds that
//! header by itself, so another page cannot forge one.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::users::{self, Role, User};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "crmsync_session";
/// The cookie holding the sign-in form's CSRF token (there is no session
/// yet to hold it).
pub const SIGN_IN_COOKIE: &str = "crmsync_sign_in";
/// The header a script with a session sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How a request was authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    /// A browser session, with its CSRF token.
    Session { csrf: String },
    /// An API token.
    Token,
}

/// The user behind a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub via: Via,
}

impl Principal {
    /// The CSRF token to put in this page's forms (none for API callers).
    pub fn csrf(&self) -> Option<&str> {
        match &self.via {
            Via::Session { csrf } => Some(csrf),
            Via::Token => None,
        }
    }

    /// Whether a change may go ahead: a session's request must carry its
    /// CSRF token (`given`, from the form, or the header), and the user
    /// must be an admin.
    pub fn may_change(&self, given: Option<&str>, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Via::Session { csrf } = &self.via {
            let given = given.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
            if !given.is_some_and(|g| same(g, csrf)) {
                return Err(Refusal::Csrf);
            }
        }
        if self.user.role != Role::Admin {
            return Err(Refusal::Viewer);
        }
        Ok(())
    }

    /// The audit log's name for this user and channel.
    pub fn actor(&self) -> crmsync_store::admin_audit::Actor {
        let via = match self.via {
            Via::Session { .. } => "console",
            Via::Token => "api",
        };
        crmsync_store::admin_audit::Actor { name: self.user.name.clone(), via }
    }
}

/// Compares two tokens in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Csrf,
    Viewer,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Csrf => "the form's CSRF token is missing or wrong: reload the page and try again",
            Refusal::Viewer => "viewers see everything and change nothing: ask an admin",
        }
    }
}

/// Whether the caller asked for JSON: the JSON twin of every page is the
/// same path with `Accept: application/json`.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Not signed in: a page goes to the sign-in form, JSON gets a 401.
#[derive(Debug)]
pub struct NotSignedIn {
    json: bool,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        if self.json {
            (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": "sign in, or send an API token (Authorization: Bearer)" })))
                .into_response()
        } else {
            Redirect::to("/sign-in").into_response()
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = wants_json(&parts.headers) || bearer(&parts.headers).is_some();
        let failed = |e: sqlx::Error| {
            tracing::warn!(error = %e, "console: reading the caller's session or token");
            (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL did not answer").into_response()
        };
        if let Some(token) = bearer(&parts.headers) {
            return match users::by_token(&state.pool, token).await.map_err(failed)? {
                Some(user) => Ok(Principal { user, via: Via::Token }),
                None => Err(NotSignedIn { json: true }.into_response()),
            };
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
            return Err(NotSignedIn { json }.into_response());
        };
        let row: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT u.id, u.name, u.role, s.csrf_token FROM console_sessions s JOIN console_users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > now()",
        )
        .bind(users::digest(&token))
        .fetch_optional(&state.pool)
        .await
        .map_err(failed)?;
        match row.and_then(|(id, name, role, csrf)| Some((User { id, name, role: Role::parse(&role)? }, csrf))) {
            Some((user, csrf)) => Ok(Principal { user, via: Via::Session { csrf } }),
            None => Err(NotSignedIn { json }.into_response()),
        }
    }
}

/// A cookie as every console cookie is set: HttpOnly, SameSite=Strict, the
/// whole site, Secure when configured. It lasts while the browser runs;
/// the session's expiry is kept (and enforced) in PostgreSQL.
pub fn cookie(state: &AppState, name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build((name, value)).http_only(true).same_site(SameSite::Strict).secure(state.config.console.secure_cookies).path("/").build()
}

/// The cookie that removes `name` from the browser.
pub fn removal(name: &'static str) -> Cookie<'static> {
    Cookie::build((name, "")).path("/").build()
}

/// Starts a session for a user; returns the cookie to set.
pub async fn start(state: &AppState, user: &User) -> Result<Cookie<'static>, sqlx::Error> {
    let token = users::random_token();
    let ttl = i64::try_from(state.config.console.session_ttl_secs).unwrap_or(i64::MAX / 2);
    // Expired sessions go as new ones come: the index on expiry makes it cheap.
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()").execute(&state.pool).await?;
    sqlx::query(
        "INSERT INTO console_sessions (token_hash, user_id, csrf_token, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8))",
    )
    .bind(users::digest(&token))
    .bind(user.id)
    .bind(users::random_token())
    .bind(ttl as f64)
    .execute(&state.pool)
    .await?;
    Ok(cookie(state, SESSION_COOKIE, token))
}

/// Ends the session whose cookie a request carries.
pub async fn end(state: &AppState, jar: &CookieJar) -> Result<(), sqlx::Error> {
    if let Some(c) = jar.get(SESSION_COOKIE) {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1").bind(users::digest(c.value())).execute(&state.pool).await?;
    }
    Ok(())
}
