//! The one send loop every connector call goes through, whatever its
//! transport: [`Sender::run`] drives an [`Exchange`] (an HTTP call, a
//! login, a gRPC call) attempt by attempt:
//!
//! 1. the exchange gets ready (fetches its token) before the gate is asked,
//!    so a login never waits inside a slot another call needs;
//! 2. the connector's [`CallGate`] admits the call (or refuses it at once);
//! 3. one attempt, after which the gate hears how it went;
//! 4. done, or a retry after a jittered backoff (`pacing.retries` at most,
//!    then transient), or one new login when the API refused the token, or
//!    failure.
//!
//! How an answer is judged is the API's: each says, through its
//! [`Judgement`], which failures are worth a retry, which mean a new token,
//! which are its daily limit, and which are the caller's business.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::OAuthError;

use crate::gate::{CallGate, CallOutcome, EndpointKind};
use crate::pacing::Pacing;

/// How an API judges a failed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The token expired or was revoked: log in again, then retry once.
    Reauthenticate,
    /// Busy, over a short-term limit, or a server failure: back off and
    /// retry a bounded number of times, then report it as transient.
    /// `unprocessed`: the server refused it before doing anything, so even
    /// a call that is not idempotent may be sent again.
    Retry { unprocessed: bool },
    /// The API's daily calls are used up: no retry now; the gates hear it.
    DailyLimit,
    /// The configuration is wrong: retrying cannot help.
    Fatal,
    /// The request was refused on its merits (a bad value, an unknown
    /// record): the caller decides (a write's outcome).
    Refused,
}

/// An API's failed answer, as its connector reads it.
pub trait Failure: Debug + Send + 'static {
    /// The failure in the engine's terms, once nobody looks at it any more.
    fn into_connector(self) -> ConnectorError;
}

/// No failure at all: what a login's exchange fails with (it fails with
/// [`CallError::Login`] or [`CallError::Connector`] only).
impl Failure for Infallible {
    fn into_connector(self) -> ConnectorError {
        match self {}
    }
}

/// Why a call failed, before it is put in the engine's terms: callers look
/// at the API's failure (an expired query locator, a refused write, a user
/// who may not log in) before deciding.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError<F> {
    /// The API refused the request; `F` says why, in its own terms.
    Api(F),
    /// The token endpoint refused a login.
    Login(OAuthError),
    /// Already in the engine's terms (retries exhausted, a transport
    /// failure, a limit, a configuration problem found locally).
    Connector(ConnectorError),
}

impl<F> From<ConnectorError> for CallError<F> {
    fn from(e: ConnectorError) -> Self {
        CallError::Connector(e)
    }
}

impl<F: Failure> From<CallError<F>> for ConnectorError {
    fn from(e: CallError<F>) -> Self {
        match e {
            CallError::Api(f) => f.into_connector(),
            CallError::Login(o) => login_error(&o),
            CallError::Connector(c) => c,
        }
    }
}

impl CallError<Infallible> {
    /// A login's error as any call's.
    pub fn widen<F>(self) -> CallError<F> {
        match self {
            CallError::Api(never) => match never {},
            CallError::Login(o) => CallError::Login(o),
            CallError::Connector(c) => CallError::Connector(c),
        }
    }
}

/// A refused login: bad credentials, an unknown client, a user who may not
/// log in. None of these heals by waiting, except the server's own failure.
pub fn login_error(o: &OAuthError) -> ConnectorError {
    let text = format!("Salesforce login refused: {}: {}", o.error, o.error_description);
    match o.error.as_str() {
        "server_error" | "temporarily_unavailable" => ConnectorError::Transient(text),
        _ => ConnectorError::Fatal(text),
    }
}

/// What the loop does after one attempt.
#[derive(Debug)]
pub enum Verdict<T, F> {
    Done(T),
    /// Back off and try again if attempts remain; the error is what the
    /// caller gets when none do.
    Retry(CallError<F>),
    /// The token was refused: forget it, log in again and try once more.
    Reauthenticate(CallError<F>),
    Fail(CallError<F>),
}

/// One attempt: what the loop does next, and what the gate hears.
#[derive(Debug)]
pub struct Attempted<T, F> {
    pub verdict: Verdict<T, F>,
    pub outcome: CallOutcome,
}

/// One call as the loop drives it, over whatever transport.
pub trait Exchange: Send {
    type Output: Send;
    type Failure: Failure;
    /// What an attempt needs that is fetched before the gate is asked: the
    /// token.
    type Ready: Send + Sync;

    /// What the call costs, for the gate.
    fn kind(&self) -> EndpointKind;

    /// Gets ready for the next attempt: fetches the token (logging in if
    /// need be). A failure ends the call.
    fn prepare(&mut self) -> impl Future<Output = Result<Self::Ready, CallError<Self::Failure>>> + Send;

    /// One attempt.
    fn attempt(&mut self, ready: &Self::Ready) -> impl Future<Output = Attempted<Self::Output, Self::Failure>> + Send;

    /// The API refused the token `ready` holds: forget it, so the next
    /// `prepare` logs in again.
    fn token_refused(&mut self, ready: Self::Ready) -> impl Future<Output = ()> + Send;
}

/// The loop of one connector: its gate and its pacing, shared by its calls.
#[derive(Debug, Clone)]
pub struct Sender {
    api: &'static str,
    gate: Arc<dyn CallGate>,
    pacing: Pacing,
}

/// The text of an error, without the engine's prefix.
fn text(e: ConnectorError) -> String {
    match e {
        ConnectorError::Transient(m) | ConnectorError::Fatal(m) => m,
    }
}

impl Sender {
    /// `api` names the API in error texts.
    pub fn new(api: &'static str, gate: Arc<dyn CallGate>, pacing: Pacing) -> Self {
        Sender { api, gate, pacing }
    }

    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// Runs `exchange` to its end (see the module documentation). Transient
    /// failures are retried `pacing.retries` times with backoff, then
    /// reported as [`ConnectorError::Transient`]; a refused token gets one
    /// new login.
    pub async fn run<E: Exchange>(&self, exchange: &mut E) -> Result<E::Output, CallError<E::Failure>> {
        let kind = exchange.kind();
        let mut retries = 0;
        let mut reauthenticated = false;
        loop {
            let ready = exchange.prepare().await?;
            let admission = self.gate.admit(kind).await?;
            let attempted = exchange.attempt(&ready).await;
            self.gate.record(kind, &attempted.outcome).await;
            drop(admission);
            match attempted.verdict {
                Verdict::Done(out) => return Ok(out),
                Verdict::Fail(e) => return Err(e),
                Verdict::Reauthenticate(e) => {
                    exchange.token_refused(ready).await;
                    if reauthenticated {
                        // A brand-new token refused too: not worth a loop.
                        let why = text(ConnectorError::from(e));
                        return Err(CallError::Connector(ConnectorError::Transient(format!("{} refused a fresh token: {why}", self.api))));
                    }
                    reauthenticated = true;
                }
                Verdict::Retry(e) => {
                    if retries >= self.pacing.retries {
                        let why = text(ConnectorError::from(e));
                        return Err(CallError::Connector(ConnectorError::Transient(format!("{why} (after {} attempts)", retries + 1))));
                    }
                    tokio::time::sleep(self.pacing.backoff_now(retries)).await;
                    retries += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
