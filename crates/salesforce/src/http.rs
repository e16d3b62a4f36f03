//! The HTTP client: TLS set-up, which URLs may be spoken to, and one place
//! where every REST call is sent, traced, counted against the org's API
//! usage, re-authenticated once on an expired session (through the
//! [`Login`]) and retried with backoff on transient failures.
//!
//! The URL check, the client set-up and the reading of transport failures
//! and `Date` headers are public: the Account Engagement connector speaks
//! to its API the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::{ApiUsage, LIMIT_INFO_HEADER};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, DATE, HeaderMap};
use secrecy::ExposeSecret;
use tracing::Instrument;

use crate::auth::Token;
use crate::errors::{ApiFailure, CallError, Disposition, disposition};
use crate::login::Login;
use crate::pacing::{Pacing, UsageGate};

/// Installs rustls's crypto provider once per process. reqwest is built
/// without one (`rustls-no-provider`), so ring is chosen here; another
/// component may have installed one first, which is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Checks a base URL the connector will send credentials or tokens to:
/// HTTPS (verified against the platform's roots) anywhere, plain HTTP only
/// to this machine (the sandbox server). Returns it without a trailing slash.
pub fn check_base_url(url: &str) -> Result<String, ConnectorError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ConnectorError::Fatal(format!("{url:?} is not a URL: {e}")))?;
    let host = parsed.host_str().ok_or_else(|| ConnectorError::Fatal(format!("{url} names no host")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(ConnectorError::Fatal(format!(
                "{url} uses plain http: only https is allowed, except to this machine (localhost, 127.0.0.1, ::1)"
            )));
        }
        other => return Err(ConnectorError::Fatal(format!("{url} uses {other}: only https is allowed"))),
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Whether a host (as a URL spells it) is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// An HTTP client for an API that is handed tokens: TLS verified against
/// the platform's roots (rustls with ring), no redirects, the timeouts given.
pub fn client(timeout: Duration) -> Result<reqwest::Client, ConnectorError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // The APIs never redirect; following one could leave https or
        // send a token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("crmsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConnectorError::Fatal(format!("cannot build the HTTP client: {e}")))
}

/// A request body.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    None,
    Json(serde_json::Value),
    Csv(Vec<u8>),
}

/// One REST call, relative to the org's instance URL.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    /// `/services/data/...`, without a query string.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Whether sending it twice does no harm. A create is not: it is retried
    /// only when it certainly did not reach the server.
    pub idempotent: bool,
    /// The username to act as; `None` for the integration user.
    pub as_user: Option<String>,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Call { method, path: path.into(), query: Vec::new(), headers: Vec::new(), body: Body::None, idempotent: true, as_user: None }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Call::new(Method::GET, path)
    }

    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn header(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((key, value.into()));
        self
    }

    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Body::Json(body);
        self
    }

    pub fn csv(mut self, body: Vec<u8>) -> Self {
        self.body = Body::Csv(body);
        self
    }

    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    pub fn acting_as(mut self, username: Option<String>) -> Self {
        self.as_user = username;
        self
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub body: Vec<u8>,
    /// A server time no later than when the request was handled: the
    /// answer's `Date` (whole seconds, rounded down) less the round trip,
    /// or the local clock if there is no `Date`.
    pub server_time: DateTime<Utc>,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ConnectorError::Fatal(format!("Salesforce answered with a body crmsync cannot read: {e}")))
    }
}

/// The client of one org.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    login: Login,
    usage: UsageGate,
    pacing: Pacing,
    api_version: String,
}

/// How one attempt went.
enum Attempt {
    Done(Answer),
    /// Failed; retry after a backoff if attempts remain.
    Retry(CallError),
    /// The session was refused.
    Reauth(CallError),
    Fail(CallError),
}

impl Http {
    pub fn new(login: Login, api_share: f64, api_version: &str, timeout: Duration, pacing: Pacing) -> Result<Self, ConnectorError> {
        Ok(Http { client: client(timeout)?, login, usage: UsageGate::new(api_share), pacing, api_version: api_version.to_owned() })
    }

    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    pub fn usage(&self) -> &UsageGate {
        &self.usage
    }

    pub fn can_act_as(&self) -> bool {
        self.login.can_act_as()
    }

    /// `/services/data/{version}/{rest}`.
    pub fn data_path(&self, rest: &str) -> String {
        format!("/services/data/{}/{}", self.api_version, rest.trim_start_matches('/'))
    }

    /// The token for `user` (the integration user when `None`), logging in
    /// if there is none yet.
    pub async fn token(&self, user: Option<&str>) -> Result<Arc<Token>, CallError> {
        self.login.token_for(user).await
    }

    /// Sends a call and returns its successful answer. Transient failures
    /// are retried `pacing.retries` times with backoff, then reported as
    /// [`ConnectorError::Transient`]; an expired session gets one new token.
    pub async fn send(&self, call: &Call) -> Result<Answer, CallError> {
        let user = call.as_user.as_deref();
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            self.usage.wait_turn(&self.pacing).await?;
            let token = self.token(user).await?;
            match self.attempt(call, &token).await {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Fail(e) => return Err(e),
                Attempt::Reauth(e) => {
                    self.login.forget_for(user, &token).await;
                    if reauthenticated {
                        // A brand-new token refused too: not worth a loop.
                        return Err(CallError::Connector(ConnectorError::Transient(format!(
                            "Salesforce refused a fresh session: {}",
                            ConnectorError::from(e)
                        ))));
                    }
                    reauthenticated = true;
                }
                Attempt::Retry(e) => {
                    if attempt >= self.pacing.retries {
                        return Err(CallError::Connector(match ConnectorError::from(e) {
                            ConnectorError::Transient(m) | ConnectorError::Fatal(m) => {
                                ConnectorError::Transient(format!("{m} (after {} attempts)", attempt + 1))
                            }
                        }));
                    }
                    tokio::time::sleep(self.pacing.backoff_now(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&self, call: &Call, token: &Token) -> Attempt {
        let url = format!("{}{}", token.instance_url, call.path);
        let mut req = self.client.request(call.method.clone(), &url).bearer_auth(token.access.expose_secret());
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        for (k, v) in &call.headers {
            req = req.header(*k, v);
        }
        req = match &call.body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Csv(bytes) => req.header(CONTENT_TYPE, "text/csv").body(bytes.clone()),
        };
        if !call.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
            req = req.header(ACCEPT, "application/json");
        }
        // The path only: query strings carry SOQL, which can hold emails.
        let span = tracing::info_span!("salesforce_http", method = %call.method, path = %call.path, status = tracing::field::Empty);
        let started = Instant::now();
        let sent = req.send().instrument(span.clone()).await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let err = CallError::Connector(ConnectorError::Transient(format!(
                    "Salesforce {} {}: {}",
                    call.method,
                    call.path,
                    transport_text(&e)
                )));
                // A request that may have reached the server is only resent
                // if resending is harmless.
                return if call.idempotent || e.is_connect() { Attempt::Retry(err) } else { Attempt::Fail(err) };
            }
        };
        let status = resp.status().as_u16();
        span.record("status", status);
        let headers = resp.headers().clone();
        if let Some(u) = headers.get(LIMIT_INFO_HEADER).and_then(|v| v.to_str().ok()).and_then(ApiUsage::parse) {
            self.usage.record(u, Instant::now());
        }
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                let err = CallError::Connector(ConnectorError::Transient(format!(
                    "Salesforce {} {}: {}",
                    call.method,
                    call.path,
                    transport_text(&e)
                )));
                return if call.idempotent { Attempt::Retry(err) } else { Attempt::Fail(err) };
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(Answer { body, server_time: server_time(&headers, started.elapsed()) });
        }
        let failure = ApiFailure::from_body(status, &body);
        let refused_unprocessed = status == 429 || status == 403;
        match disposition(&failure) {
            Disposition::Reauthenticate => Attempt::Reauth(CallError::Api(failure)),
            Disposition::Retry if call.idempotent || refused_unprocessed => Attempt::Retry(CallError::Api(failure)),
            Disposition::Retry | Disposition::Fatal => Attempt::Fail(CallError::Api(failure)),
        }
    }
}

/// A transport failure as text (never the URL's query, which reqwest
/// includes in its `Display`).
pub fn transport_text(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_owned() } else { format!("{kind}: {detail}") }
}

/// The server's time when it handled the request, at the latest: the
/// answer's `Date` (whole seconds, rounded down) less the round trip, or
/// the local clock if there is no `Date`.
pub fn server_time(headers: &HeaderMap, round_trip: Duration) -> DateTime<Utc> {
    let rtt = chrono::Duration::from_std(round_trip).unwrap_or_default();
    let date =
        headers.get(DATE).and_then(|v| v.to_str().ok()).and_then(|s| DateTime::parse_from_rfc2822(s).ok()).map(|d| d.with_timezone(&Utc));
    date.unwrap_or_else(Utc::now) - rtt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_this_machine() {
        assert_eq!(check_base_url("https://login.salesforce.com/").unwrap(), "https://login.salesforce.com");
        assert_eq!(check_base_url("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert!(check_base_url("http://localhost:3000/").is_ok());
        assert!(check_base_url("http://[::1]:3000").is_ok());
        for bad in ["http://login.salesforce.com", "http://10.0.0.5:8080", "http://localhost.evil.com", "ftp://localhost", "nonsense"] {
            assert!(matches!(check_base_url(bad), Err(ConnectorError::Fatal(_))), "{bad} was allowed");
        }
    }

    #[test]
    fn the_server_time_is_the_date_less_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert(DATE, "Wed, 01 May 2024 10:20:30 GMT".parse().unwrap());
        let t = server_time(&headers, Duration::from_millis(250));
        assert_eq!(t, DateTime::parse_from_rfc3339("2024-05-01T10:20:29.750Z").unwrap().with_timezone(&Utc));
        let before = Utc::now();
        assert!(server_time(&HeaderMap::new(), Duration::ZERO) >= before);
    }
}
