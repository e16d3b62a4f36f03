//! The client of one HTTP API: [`HttpClient`] sends a [`Call`] through the
//! [`Sender`] (token, gate, retries, re-login) and makes each attempt the
//! same way for every API: bearer token, the API's own headers, JSON unless
//! the call asks otherwise, traced by method and path only (query strings
//! carry SOQL and emails).
//!
//! What differs between APIs is an [`HttpApi`]: where paths are relative
//! to, which headers every request carries, what the answer's headers say
//! of the daily usage, how an error body is read and judged, and what the
//! caller gets for a failure.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::ApiUsage;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use reqwest::{RequestBuilder, Response};
use secrecy::ExposeSecret;
use tracing::Instrument;

use crate::auth::Token;
use crate::call::{Answer, Body, Call};
use crate::client::{client, server_time, transport_text};
use crate::gate::{CallGate, CallOutcome, CallResult, EndpointKind};
use crate::login::Login;
use crate::pacing::Pacing;
use crate::send::{Attempted, CallError, Exchange, Failure, Judgement, Sender, Verdict};

/// What makes one HTTP API different from another.
pub trait HttpApi: Debug + Send + Sync {
    /// A failed answer, as the API's error bodies say it.
    type Failure: Failure;

    /// The API's name in error texts.
    const NAME: &'static str;

    /// Where call paths are relative to: the API's own base URL, or the
    /// one the token names (Salesforce's `instance_url`).
    fn base_url<'a>(&'a self, token: &'a Token) -> &'a str;

    /// The span a call is traced in, named for the API, with the method
    /// and path (never the query string) and an empty `status` field.
    fn span(&self, call: &Call) -> tracing::Span;

    /// Headers every request carries besides the bearer token (a business
    /// unit, call options), which may depend on the call (whom it acts as).
    fn decorate(&self, request: RequestBuilder, _call: &Call) -> RequestBuilder {
        request
    }

    /// The API's count of today's calls, if the answer's headers say it.
    fn usage(&self, _headers: &HeaderMap) -> Option<ApiUsage> {
        None
    }

    /// Reads a failed answer.
    fn failure(&self, status: u16, body: &[u8]) -> Self::Failure;

    /// Judges it.
    fn judge(&self, failure: &Self::Failure) -> Judgement;

    /// What the caller gets for it (the failure itself unless the API
    /// words it otherwise).
    fn error(&self, _call: &Call, failure: Self::Failure, _judgement: Judgement) -> CallError<Self::Failure> {
        CallError::Api(failure)
    }
}

/// The client of one API, shared by every call of one connector.
#[derive(Debug)]
pub struct HttpClient<A> {
    api: A,
    client: reqwest::Client,
    login: Login,
    sender: Sender,
}

impl<A: HttpApi> HttpClient<A> {
    /// Every call (the logins too) asks `gate` first.
    pub fn new(api: A, login: Login, gate: Arc<dyn CallGate>, timeout: Duration, pacing: Pacing) -> Result<Self, ConnectorError> {
        Ok(HttpClient { api, client: client(timeout)?, login, sender: Sender::new(A::NAME, gate, pacing) })
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    pub fn pacing(&self) -> &Pacing {
        self.sender.pacing()
    }

    /// The send loop this client's calls go through: another transport of
    /// the same API (the Pub/Sub API's gRPC calls) runs its exchanges
    /// through it, so the gates, retries and re-login are shared.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// Forgets `stale` (a token an answer refused, over any transport), so
    /// the next [`HttpClient::token`] logs in again.
    pub async fn forget_token(&self, user: Option<&str>, stale: &Arc<Token>) {
        self.login.forget(user, stale).await;
    }

    /// Whether the login can act as another user (the JWT bearer flow).
    pub fn can_act_as(&self) -> bool {
        self.login.can_act_as()
    }

    /// The token for `user` (the integration user when `None`), logging in
    /// if there is none yet.
    pub async fn token(&self, user: Option<&str>) -> Result<Arc<Token>, CallError<A::Failure>> {
        self.token_for(user).await
    }

    /// [`HttpClient::token`] for an exchange over another transport, which
    /// fails in its own terms.
    pub async fn token_for<F>(&self, user: Option<&str>) -> Result<Arc<Token>, CallError<F>> {
        self.login.token(&self.sender, user).await
    }

    /// Sends a call and returns its successful answer (see [`Sender::run`]).
    pub async fn send(&self, call: &Call) -> Result<Answer, CallError<A::Failure>> {
        self.sender.run(&mut HttpExchange { client: self, call }).await
    }

    /// The request of one attempt.
    fn request(&self, call: &Call, token: &Token) -> RequestBuilder {
        let url = format!("{}{}", self.api.base_url(token), call.path);
        let mut req = self.api.decorate(self.client.request(call.method.clone(), &url).bearer_auth(token.access().expose_secret()), call);
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
            Body::Multipart(parts) => {
                let (content_type, body) = crmsync_wire::multipart::encode(parts);
                req.header(CONTENT_TYPE, content_type).body(body)
            }
        };
        if call.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) { req } else { req.header(ACCEPT, "application/json") }
    }

    async fn attempt(&self, call: &Call, token: &Token) -> Attempted<Answer, A::Failure> {
        let span = self.api.span(call);
        let started = Instant::now();
        let lost = |e: &reqwest::Error, usage, never_left: bool| {
            let why = format!("{} {} {}: {}", A::NAME, call.method, call.path, transport_text(e));
            let error = CallError::Connector(ConnectorError::Transient(why));
            // A request that may have reached the server is only resent if
            // resending is harmless.
            let verdict = if call.idempotent || never_left { Verdict::Retry(error) } else { Verdict::Fail(error) };
            Attempted { verdict, outcome: CallOutcome { result: CallResult::Lost, usage } }
        };
        let resp: Response = match self.request(call, token).send().instrument(span.clone()).await {
            Ok(r) => r,
            Err(e) => return lost(&e, None, e.is_connect()),
        };
        let status = resp.status().as_u16();
        span.record("status", status);
        let headers = resp.headers().clone();
        let usage = self.api.usage(&headers);
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return lost(&e, usage, false),
        };
        if (200..300).contains(&status) {
            let answer = Answer::new(A::NAME, body, server_time(&headers, started.elapsed()));
            return Attempted { verdict: Verdict::Done(answer), outcome: CallOutcome { result: CallResult::Done, usage } };
        }
        let failure = self.api.failure(status, &body);
        let judgement = self.api.judge(&failure);
        let verdict = verdict(judgement, call.idempotent, self.api.error(call, failure, judgement));
        Attempted { verdict, outcome: CallOutcome { result: CallResult::Failed(judgement), usage } }
    }
}

/// What the loop does about a failed answer judged so: a refused token
/// means a new one; a retry is only for calls that are harmless to resend
/// or that the server refused before doing anything; the rest end the call.
fn verdict<T, F>(judgement: Judgement, idempotent: bool, error: CallError<F>) -> Verdict<T, F> {
    match judgement {
        Judgement::Reauthenticate => Verdict::Reauthenticate(error),
        Judgement::Retry { unprocessed } if idempotent || unprocessed => Verdict::Retry(error),
        Judgement::Retry { .. } | Judgement::DailyLimit | Judgement::Fatal | Judgement::Refused => Verdict::Fail(error),
    }
}

/// One call of an [`HttpClient`], as the send loop drives it.
#[derive(Debug)]
struct HttpExchange<'a, A> {
    client: &'a HttpClient<A>,
    call: &'a Call,
}

impl<A: HttpApi> Exchange for HttpExchange<'_, A> {
    type Output = Answer;
    type Failure = A::Failure;
    type Ready = Arc<Token>;

    fn kind(&self) -> EndpointKind {
        self.call.kind
    }

    /// The cached token, which another call may have renewed since the
    /// last attempt.
    async fn prepare(&mut self) -> Result<Arc<Token>, CallError<A::Failure>> {
        self.client.token(self.call.as_user.as_deref()).await
    }

    async fn attempt(&mut self, token: &Arc<Token>) -> Attempted<Answer, A::Failure> {
        self.client.attempt(self.call, token).await
    }

    async fn token_refused(&mut self, stale: Arc<Token>) {
        self.client.login.forget(self.call.as_user.as_deref(), &stale).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(judgement: Judgement, idempotent: bool) -> &'static str {
        match verdict::<(), ()>(judgement, idempotent, CallError::Api(())) {
            Verdict::Done(()) => "done",
            Verdict::Retry(_) => "retry",
            Verdict::Reauthenticate(_) => "reauthenticate",
            Verdict::Fail(_) => "fail",
        }
    }

    #[test]
    fn only_what_is_harmless_to_resend_is_retried() {
        let busy = Judgement::Retry { unprocessed: false };
        let refused_unprocessed = Judgement::Retry { unprocessed: true };
        assert_eq!(judged(busy, true), "retry");
        assert_eq!(judged(busy, false), "fail", "a create a 5xx may have made is not sent again");
        assert_eq!(judged(refused_unprocessed, false), "retry", "a 429 did nothing: even a create goes again");
        assert_eq!(judged(Judgement::Reauthenticate, false), "reauthenticate");
        for end in [Judgement::DailyLimit, Judgement::Fatal, Judgement::Refused] {
            assert_eq!(judged(end, true), "fail", "{end:?}");
        }
    }
}
