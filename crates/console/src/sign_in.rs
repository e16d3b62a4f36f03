//! Signing in and out.
//!
//! The sign-in form carries a CSRF token too, checked against a cookie set
//! with the form (there is no session yet to keep it in), so that another
//! site cannot sign a browser in as someone else. A refused sign-in never
//! says whether the name exists; failures are counted and slowed down in
//! [`crate::users::sign_in`].

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use maud::{Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::session::{self, SESSION_COOKIE, SIGN_IN_COOKIE};
use crate::users::{self, UserError};
use crate::view::{csrf_field, page};

fn form_page(csrf: &str, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            @if let Some(e) = error { p.error { (e) } }
            form method="post" action="/sign-in" {
                (csrf_field(csrf))
                p { label { "User " input name="name" autocomplete="username" required autofocus; } }
                p { label { "Password " input name="password" type="password" autocomplete="current-password" required; } }
                p { button type="submit" { "Sign in" } }
            }
        },
    )
}

/// `GET /sign-in`: the form, with a fresh CSRF token in it and in a cookie.
pub async fn form(State(state): State<AppState>, jar: CookieJar) -> impl IntoResponse {
    let csrf = users::random_token();
    let jar = jar.add(session::cookie(&state, SIGN_IN_COOKIE, csrf.clone()));
    (jar, form_page(&csrf, None))
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    name: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-in`.
pub async fn submit(State(state): State<AppState>, jar: CookieJar, Form(f): Form<SignIn>) -> Response {
    // The next attempt gets a fresh token whatever happens to this one.
    let next = users::random_token();
    let expected = jar.get(SIGN_IN_COOKIE).map(|c| c.value().to_owned());
    let jar = jar.add(session::cookie(&state, SIGN_IN_COOKIE, next.clone()));
    if !expected.is_some_and(|e| session::same(&e, &f.csrf)) {
        let msg = "the form's CSRF token is missing or wrong: reload the page and try again";
        return (StatusCode::FORBIDDEN, jar, form_page(&next, Some(msg))).into_response();
    }
    match users::sign_in(&state.pool, &f.name, &f.password).await {
        Ok(user) => match session::start(&state, &user).await {
            Ok(cookie) => {
                tracing::info!(user = %user.name, "console: signed in");
                (jar.remove(session::removal(SIGN_IN_COOKIE)).add(cookie), Redirect::to("/")).into_response()
            }
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, jar, form_page(&next, Some(&format!("PostgreSQL: {e}")))).into_response(),
        },
        Err(e) => {
            let status = match e {
                UserError::LockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
                UserError::BadCredentials => StatusCode::UNAUTHORIZED,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            // Debug-formatted: the name is whatever the form sent, line breaks included.
            tracing::info!(user = ?f.name, %status, "console: sign-in refused");
            (status, jar, form_page(&next, Some(&e.to_string()))).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-out`: ends the session (with its CSRF token: another site
/// must not sign people out either).
pub async fn sign_out(State(state): State<AppState>, principal: session::Principal, jar: CookieJar, Form(f): Form<SignOut>) -> Response {
    if !principal.csrf().is_some_and(|c| session::same(c, &f.csrf)) {
        return (StatusCode::FORBIDDEN, "the form's CSRF token is missing or wrong").into_response();
    }
    if let Err(e) = session::end(&state, &jar).await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("PostgreSQL: {e}")).into_response();
    }
    (jar.remove(session::removal(SESSION_COOKIE)), Redirect::to("/sign-in")).into_response()
}
