//! The admin console served for a test, and a client that behaves as a
//! browser does towards it (cookies kept, redirects not followed, forms
//! filled in with their CSRF token).

use std::collections::HashMap;

use crmsync_infra::CancellationToken;
use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};

use crate::TestApp;

/// Serves the console for this test on a free port; its URL.
pub async fn serve(app: &TestApp, secure_cookies: bool, stop: &CancellationToken) -> String {
    // reqwest is built without a crypto provider; the test's clients need one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = app.config.clone();
    config.console.listen = "127.0.0.1:0".into();
    config.console.secure_cookies = secure_cookies;
    let console = crmsync_console::Console::bind(config).await.expect("console binds");
    let url = format!("http://{}", console.addr().unwrap());
    tokio::spawn(console.serve(stop.clone()));
    url
}

/// A browser, as far as the console can tell: it keeps cookies, follows no
/// redirect by itself, and fills in forms.
#[derive(Debug)]
pub struct Browser {
    pub http: reqwest::Client,
    base: String,
    pub cookies: HashMap<String, String>,
    /// Every Set-Cookie header seen, whole, to check their attributes.
    pub set_cookies: Vec<String>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, base: base.to_owned(), cookies: HashMap::new(), set_cookies: Vec::new() }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for h in r.headers().get_all(SET_COOKIE) {
            let text = h.to_str().unwrap().to_owned();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
            self.set_cookies.push(text);
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let r = self.http.get(format!("{}{path}", self.base)).header("cookie", self.cookie_header()).send().await.unwrap();
        self.keep(&r);
        (r.status(), r.text().await.unwrap())
    }

    /// Posts a form; (status, Location header, body).
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Option<String>, String) {
        let r = self.http.post(format!("{}{path}", self.base)).header("cookie", self.cookie_header()).form(form).send().await.unwrap();
        self.keep(&r);
        let location = r.headers().get(LOCATION).map(|l| l.to_str().unwrap().to_owned());
        (r.status(), location, r.text().await.unwrap())
    }

    /// Signs in through the form; the answer's status.
    pub async fn sign_in(&mut self, name: &str, password: &str) -> StatusCode {
        let (status, form) = self.get("/sign-in").await;
        assert_eq!(status, StatusCode::OK);
        let csrf = csrf_of(&form);
        self.post("/sign-in", &[("name", name), ("password", password), ("csrf", &csrf)]).await.0
    }
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a form with a CSRF token");
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// An open sync error of `category` whose reason and record quote an email.
pub async fn sync_error(app: &TestApp, category: crmsync_domain::SyncErrorCategory, record: &str) -> i64 {
    use crmsync_store::sync_errors::NewSyncError;
    let error = NewSyncError {
        stage: "apply",
        object: "prospect".into(),
        record_id: record.into(),
        issue: crmsync_domain::SyncIssue::new(category, "DUPLICATES_DETECTED: a lead with email jane.doe@pii.example exists"),
        change_id: None,
        payload: Some(serde_json::json!({"email": "jane.doe@pii.example", "lastName": "Doe"})),
    };
    crmsync_store::sync_errors::record_many(&app.pool, "default", &[error]).await.unwrap();
    sqlx::query_scalar("SELECT id FROM sync_errors WHERE record_id = $1").bind(record).fetch_one(&app.pool).await.unwrap()
}
