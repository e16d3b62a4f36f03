//! The page frame every console page shares (header, navigation, who is
//! signed in, the sign-out form) and the console's one stylesheet, shipped
//! in the binary: there is no build step and no script.

use axum::http::header;
use axum::response::IntoResponse;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::session::Principal;

const STYLE: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2733; background: #f6f7f9; }
header { background: #1d2733; color: #fff; padding: .6em 1.5em; display: flex; gap: 1.5em; align-items: center; }
header a { color: #fff; text-decoration: none; }
header .who { margin-left: auto; display: flex; gap: .8em; align-items: center; }
main { padding: 1em 1.5em; max-width: 80em; }
table { border-collapse: collapse; background: #fff; margin: .5em 0 1.5em; }
th, td { text-align: left; padding: .35em .7em; border-bottom: 1px solid #e2e5e9; vertical-align: top; }
th { background: #eef0f3; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 13px/1.4 ui-monospace, monospace; }
pre { background: #fff; padding: 1em; overflow: auto; border: 1px solid #e2e5e9; }
.notice { background: #e6f4ea; border: 1px solid #9ccfa9; padding: .6em 1em; }
.error { background: #fdecea; border: 1px solid #f1a9a0; padding: .6em 1em; white-space: pre-wrap; }
.help { color: #5b6673; font-size: 13px; }
form.inline { display: flex; gap: .4em; align-items: center; margin: 0; }
button { cursor: pointer; }
tr.differs td { background: #fff4e0; }
.error-text { color: #a1260d; }
.change .old { color: #8a4b00; text-decoration: line-through; }
.change .new { color: #135c2a; }
"#;

/// `GET /style.css`.
pub async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], STYLE)
}

/// A whole page: the frame around `body`.
pub fn page(title: &str, who: Option<&Principal>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · crmsync console" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    strong { "crmsync" }
                    @if who.is_some() {
                        a href="/" { "Overview" }
                        a href="/records" { "Records" }
                        a href="/errors" { "Sync errors" }
                        a href="/audit" { "Audit log" }
                    }
                    @if let Some(p) = who {
                        span.who {
                            span { (p.user.name) " (" (p.user.role.as_str()) ")" }
                            @if let Some(csrf) = p.csrf() {
                                form.inline method="post" action="/sign-out" {
                                    (csrf_field(csrf))
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A JSON value as compact text, for a table cell.
pub fn compact(v: &serde_json::Value) -> Markup {
    match v {
        serde_json::Value::String(s) => html! { code { (s) } },
        serde_json::Value::Null => html! { span.help { "not set" } },
        other => html! { code { (other.to_string()) } },
    }
}

/// Nothing: for optional parts of a page.
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}
