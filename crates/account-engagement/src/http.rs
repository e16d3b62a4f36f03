//! The client of one business unit: every call carries the Salesforce
//! bearer token and `Pardot-Business-Unit-Id`, waits for one of
//! `max_concurrency` slots (the API refuses a sixth request in flight),
//! is counted against the daily calls, traced (method and path only: query
//! strings carry emails), re-authenticated once on an expired token and
//! retried with jittered backoff on transient failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use crmsync_salesforce::{Login, Pacing, Token, server_time, transport_text};
use crmsync_wire::pardot::BUSINESS_UNIT_HEADER;
use reqwest::Method;
use reqwest::header::ACCEPT;
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::errors::{AeFailure, CallError, Disposition, disposition, refused_unprocessed};
use crate::pacing::{DailyQuota, LimitGate};

/// One call, relative to the base URL.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
    /// Whether sending it twice does no harm. A plain create is not: it is
    /// resent only when it certainly was not processed.
    pub idempotent: bool,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Call { method, path: path.into(), query: Vec::new(), body: None, idempotent: true }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Call::new(Method::GET, path)
    }

    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub body: Vec<u8>,
    /// A server time no later than when the request was handled.
    pub server_time: DateTime<Utc>,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ConnectorError::Fatal(format!("Account Engagement answered with a body crmsync cannot read: {e}")))
    }
}

/// How one attempt went.
enum Attempt {
    Done(Answer),
    Retry(String),
    Reauth(AeFailure),
    Fail(CallError),
}

/// The client of one business unit.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    login: Login,
    base_url: String,
    business_unit: String,
    slots: Semaphore,
    max_concurrency: usize,
    quota: DailyQuota,
    limit: LimitGate,
    pacing: Pacing,
}

impl Http {
    pub fn new(
        login: Login,
        base_url: &str,
        business_unit: &str,
        max_concurrency: usize,
        daily_quota: Option<u64>,
        timeout: Duration,
        pacing: Pacing,
    ) -> Result<Self, ConnectorError> {
        let base_url = crmsync_salesforce::check_base_url(base_url)?;
        let max_concurrency = max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Http {
            client: crmsync_salesforce::client(timeout)?,
            login,
            base_url,
            business_unit: business_unit.to_owned(),
            slots: Semaphore::new(max_concurrency),
            max_concurrency,
            quota: DailyQuota::new(daily_quota),
            limit: LimitGate::default(),
            pacing,
        })
    }

    /// How many calls may be in flight at once.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// Calls made today (UTC) by this connector.
    pub fn calls_today(&self) -> u64 {
        self.quota.used(Utc::now())
    }

    /// The integration user's token (logging in if needed).
    pub async fn token(&self) -> Result<Arc<Token>, ConnectorError> {
        self.login.token().await
    }

    /// Sends a call and returns its successful answer. Transient failures
    /// are retried `pacing.retries` times with backoff, then reported as
    /// [`ConnectorError::Transient`]; an expired token gets one new login; a
    /// refusal on the merits comes back as [`CallError::Api`].
    pub async fn send(&self, call: &Call) -> Result<Answer, CallError> {
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            self.limit.admit(Instant::now(), self.pacing.budget_probe)?;
            let token = self.login.token().await?;
            let outcome = {
                let _slot = self.slots.acquire().await.map_err(|_| ConnectorError::Transient("the connector is shutting down".into()))?;
                self.quota.take(Utc::now())?;
                self.attempt(call, &token).await
            };
            match outcome {
                Attempt::Done(answer) => {
                    self.limit.clear();
                    return Ok(answer);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Reauth(f) => {
                    self.login.forget(&token).await;
                    if reauthenticated {
                        // A brand-new token refused too: not worth a loop.
                        return Err(CallError::Connector(ConnectorError::Transient(format!(
                            "Account Engagement refused a fresh token ({})",
                            f.summary()
                        ))));
                    }
                    reauthenticated = true;
                }
                Attempt::Retry(why) => {
                    if attempt >= self.pacing.retries {
                        return Err(CallError::Connector(ConnectorError::Transient(format!("{why} (after {} attempts)", attempt + 1))));
                    }
                    tokio::time::sleep(self.pacing.backoff(attempt, rand::random::<f64>())).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&self, call: &Call, token: &Token) -> Attempt {
        let url = format!("{}{}", self.base_url, call.path);
        let mut req = self
            .client
            .request(call.method.clone(), &url)
            .bearer_auth(token.access().expose_secret())
            .header(BUSINESS_UNIT_HEADER, &self.business_unit)
            .header(ACCEPT, "application/json");
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let span = tracing::info_span!("account_engagement_http", method = %call.method, path = %call.path, status = tracing::field::Empty);
        let started = Instant::now();
        let what = |detail: String| format!("Account Engagement {} {}: {detail}", call.method, call.path);
        let resp = match req.send().instrument(span.clone()).await {
            Ok(r) => r,
            Err(e) => {
                let text = what(transport_text(&e));
                // A request that may have reached the server is only resent
                // if resending is harmless.
                return if call.idempotent || e.is_connect() {
                    Attempt::Retry(text)
                } else {
                    Attempt::Fail(CallError::Connector(ConnectorError::Transient(text)))
                };
            }
        };
        let status = resp.status().as_u16();
        span.record("status", status);
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                let text = what(transport_text(&e));
                return if call.idempotent {
                    Attempt::Retry(text)
                } else {
                    Attempt::Fail(CallError::Connector(ConnectorError::Transient(text)))
                };
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(Answer { body, server_time: server_time(&headers, started.elapsed()) });
        }
        let failure = AeFailure::from_body(status, &body);
        let d = disposition(&failure);
        match d {
            Disposition::Reauthenticate => Attempt::Reauth(failure),
            Disposition::DailyLimit => {
                self.limit.hit(Instant::now(), self.pacing.budget_probe);
                Attempt::Fail(CallError::Connector(ConnectorError::Transient(what(failure.summary()))))
            }
            Disposition::Retry if call.idempotent || refused_unprocessed(d, &failure) => Attempt::Retry(what(failure.summary())),
            Disposition::Retry => Attempt::Fail(CallError::Connector(ConnectorError::Transient(what(failure.summary())))),
            Disposition::Fatal => Attempt::Fail(CallError::Connector(ConnectorError::Fatal(format!(
                "{} (check the business unit id: it is the 18-character 0Uv... id of Business Unit Setup)",
                what(failure.summary())
            )))),
            Disposition::Refused => Attempt::Fail(CallError::Api(failure)),
        }
    }
}
