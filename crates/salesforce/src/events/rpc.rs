//! The Pub/Sub API's calls (gRPC) as the kit's exchanges, so they go
//! through the connector's own send loop: the same token (re-login when
//! the API refuses it), the same gates (counted as `events`, which the
//! org's REST request limit and the connection's allowance leave alone),
//! the same retries.
//!
//! Each call authenticates with the metadata `accesstoken`, `instanceurl`
//! and `tenantid`. A refusal is a gRPC status with Salesforce's reason in
//! the `error-code` trailer, judged here: an unknown session is a new
//! login; an unreachable or failing service a retry; a stale replay id, a
//! topic the org does not publish (the object is not selected for Change
//! Data Capture) or a used-up event allocation is the caller's to handle.

use std::sync::Arc;
use std::time::Duration;

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::{Attempted, CallError, CallOutcome, CallResult, EndpointKind, Exchange, Failure, Judgement, Token, Verdict};
use crmsync_pubsub::proto::pub_sub_client::PubSubClient;
use crmsync_pubsub::proto::{FetchRequest, FetchResponse, SchemaRequest};
use crmsync_pubsub::{error_codes, metadata};
use futures::Stream;
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::http::Http;

/// How long a call may take to be answered (a subscription: to start).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The channel to the Pub/Sub API at `url` (checked: https, or plain http
/// to this machine), connected on first use and again after a failure.
pub(crate) fn channel(url: &str) -> Result<Channel, ConnectorError> {
    let url = crmsync_connector_kit::check_base_url(url)?;
    let bad = |e: &dyn std::fmt::Display| ConnectorError::Fatal(format!("the Pub/Sub API at {url}: {e}"));
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| bad(&e))?
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("crmsync/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| bad(&e))?;
    if url.starts_with("https://") {
        crmsync_connector_kit::install_crypto_provider();
        endpoint = endpoint.tls_config(ClientTlsConfig::new().with_native_roots()).map_err(|e| bad(&e))?;
    }
    Ok(endpoint.connect_lazy())
}

/// A refusal of the Pub/Sub API: the status and Salesforce's reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcFailure {
    pub code: Code,
    /// The `error-code` trailer (empty if none came).
    pub error_code: String,
    pub message: String,
}

impl RpcFailure {
    pub fn of(status: &Status) -> Self {
        let error_code = status.metadata().get(metadata::ERROR_CODE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        RpcFailure { code: status.code(), error_code, message: status.message().to_owned() }
    }

    /// How the send loop takes it.
    pub fn judge(&self) -> Judgement {
        match self.code {
            Code::Unauthenticated => Judgement::Reauthenticate,
            Code::ResourceExhausted if self.error_code == error_codes::DELIVERY_LIMIT_EXCEEDED => Judgement::Refused,
            Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted => {
                Judgement::Retry { unprocessed: true }
            }
            _ => Judgement::Refused,
        }
    }

    /// A CUSTOM replay id the API no longer has (or never had).
    pub fn replay_expired(&self) -> bool {
        self.error_code == error_codes::REPLAY_ID_CORRUPTED
    }

    /// The topic is not the org's: its object is not selected for Change
    /// Data Capture.
    pub fn topic_missing(&self) -> bool {
        self.code == Code::NotFound || self.error_code == error_codes::TOPIC_NOT_FOUND
    }

    /// The org's event delivery allocation is used up.
    pub fn allocation_used_up(&self) -> bool {
        self.error_code == error_codes::DELIVERY_LIMIT_EXCEEDED
    }
}

impl std::fmt::Display for RpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pub/Sub API {:?}", self.code)?;
        if !self.error_code.is_empty() {
            write!(f, " ({})", self.error_code)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Failure for RpcFailure {
    fn into_connector(self) -> ConnectorError {
        match self.judge() {
            Judgement::Retry { .. } | Judgement::Reauthenticate => ConnectorError::Transient(self.to_string()),
            _ => ConnectorError::Fatal(self.to_string()),
        }
    }
}

/// The metadata every call carries.
fn authenticate(md: &mut MetadataMap, token: &Token) -> Result<(), ConnectorError> {
    let value = |v: &str| {
        MetadataValue::try_from(v).map_err(|_| ConnectorError::Fatal("a Salesforce token that cannot travel as gRPC metadata".into()))
    };
    md.insert(metadata::ACCESS_TOKEN, value(token.access().expose_secret())?);
    md.insert(metadata::INSTANCE_URL, value(token.instance_url())?);
    md.insert(metadata::TENANT_ID, value(token.org_id())?);
    Ok(())
}

/// What an attempt that got `status` does next.
fn refused<T>(status: &Status) -> Attempted<T, RpcFailure> {
    let failure = RpcFailure::of(status);
    let judgement = failure.judge();
    let verdict = match judgement {
        Judgement::Reauthenticate => Verdict::Reauthenticate(CallError::Api(failure)),
        Judgement::Retry { .. } => Verdict::Retry(CallError::Api(failure)),
        _ => Verdict::Fail(CallError::Api(failure)),
    };
    Attempted { verdict, outcome: CallOutcome::of(CallResult::Failed(judgement)) }
}

fn timed_out<T>(what: &str) -> Attempted<T, RpcFailure> {
    let e = CallError::Connector(ConnectorError::Transient(format!("the Pub/Sub API did not answer {what} within {CALL_TIMEOUT:?}")));
    Attempted { verdict: Verdict::Retry(e), outcome: CallOutcome::of(CallResult::Lost) }
}

fn unsent<T>(e: ConnectorError) -> Attempted<T, RpcFailure> {
    Attempted { verdict: Verdict::Fail(CallError::Connector(e)), outcome: CallOutcome::of(CallResult::NotSent) }
}

/// An open subscription: where to ask for more events, and the events.
pub(crate) struct Opened {
    pub requests: mpsc::Sender<FetchRequest>,
    pub responses: Streaming<FetchResponse>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opened")
    }
}

/// `Subscribe`, started with its first request.
pub(crate) struct Subscribe<'a> {
    pub http: &'a Http,
    pub channel: Channel,
    pub first: FetchRequest,
}

fn requests(rx: mpsc::Receiver<FetchRequest>) -> impl Stream<Item = FetchRequest> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

impl Exchange for Subscribe<'_> {
    type Output = Opened;
    type Failure = RpcFailure;
    type Ready = Arc<Token>;

    fn kind(&self) -> EndpointKind {
        EndpointKind::Events
    }

    async fn prepare(&mut self) -> Result<Arc<Token>, CallError<RpcFailure>> {
        self.http.token_for(None).await
    }

    async fn attempt(&mut self, token: &Arc<Token>) -> Attempted<Opened, RpcFailure> {
        // A new request stream for every attempt: the first request goes
        // with it, later ones (more events) through the sender kept.
        let (tx, rx) = mpsc::channel(8);
        if tx.try_send(self.first.clone()).is_err() {
            return unsent(ConnectorError::Fatal("cannot queue the first FetchRequest".into()));
        }
        let mut request = tonic::Request::new(requests(rx));
        if let Err(e) = authenticate(request.metadata_mut(), token) {
            return unsent(e);
        }
        let mut client = PubSubClient::new(self.channel.clone());
        match tokio::time::timeout(CALL_TIMEOUT, client.subscribe(request)).await {
            Err(_) => timed_out("a subscription"),
            Ok(Err(status)) => refused(&status),
            Ok(Ok(response)) => Attempted {
                verdict: Verdict::Done(Opened { requests: tx, responses: response.into_inner() }),
                outcome: CallOutcome::of(CallResult::Done),
            },
        }
    }

    async fn token_refused(&mut self, stale: Arc<Token>) {
        self.http.forget_token(None, &stale).await;
    }
}

/// `GetSchema`: the Avro schema (JSON) an event names by id.
pub(crate) struct GetSchema<'a> {
    pub http: &'a Http,
    pub channel: Channel,
    pub schema_id: String,
}

impl Exchange for GetSchema<'_> {
    type Output = String;
    type Failure = RpcFailure;
    type Ready = Arc<Token>;

    fn kind(&self) -> EndpointKind {
        EndpointKind::Events
    }

    async fn prepare(&mut self) -> Result<Arc<Token>, CallError<RpcFailure>> {
        self.http.token_for(None).await
    }

    async fn attempt(&mut self, token: &Arc<Token>) -> Attempted<String, RpcFailure> {
        let mut request = tonic::Request::new(SchemaRequest { schema_id: self.schema_id.clone() });
        if let Err(e) = authenticate(request.metadata_mut(), token) {
            return unsent(e);
        }
        let mut client = PubSubClient::new(self.channel.clone());
        match tokio::time::timeout(CALL_TIMEOUT, client.get_schema(request)).await {
            Err(_) => timed_out("a schema request"),
            Ok(Err(status)) => refused(&status),
            Ok(Ok(info)) => Attempted { verdict: Verdict::Done(info.into_inner().schema_json), outcome: CallOutcome::of(CallResult::Done) },
        }
    }

    async fn token_refused(&mut self, stale: Arc<Token>) {
        self.http.forget_token(None, &stale).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, error_code: &str) -> Status {
        let mut md = MetadataMap::new();
        md.insert(metadata::ERROR_CODE, error_code.parse().unwrap());
        Status::with_metadata(code, "refused rpcId: 1", md)
    }

    #[test]
    fn refusals_are_judged_by_their_status_and_salesforces_reason() {
        let of = |code, reason: &str| RpcFailure::of(&status(code, reason));
        assert_eq!(of(Code::Unauthenticated, error_codes::AUTH).judge(), Judgement::Reauthenticate);
        assert_eq!(of(Code::Unavailable, "").judge(), Judgement::Retry { unprocessed: true });
        let expired = of(Code::InvalidArgument, error_codes::REPLAY_ID_CORRUPTED);
        assert!(expired.replay_expired() && expired.judge() == Judgement::Refused);
        let missing = of(Code::NotFound, error_codes::TOPIC_NOT_FOUND);
        assert!(missing.topic_missing() && missing.judge() == Judgement::Refused);
        let used_up = of(Code::ResourceExhausted, error_codes::DELIVERY_LIMIT_EXCEEDED);
        assert!(used_up.allocation_used_up() && used_up.judge() == Judgement::Refused, "no retry in place: fall back to polling");
        assert_eq!(of(Code::ResourceExhausted, "").judge(), Judgement::Retry { unprocessed: true }, "a busy server is retried");
        assert!(matches!(used_up.into_connector(), ConnectorError::Fatal(m) if m.contains("limit.exceeded")));
        assert!(matches!(of(Code::Unavailable, "").into_connector(), ConnectorError::Transient(_)));
    }

    #[test]
    fn the_endpoint_is_https_or_this_machine() {
        assert!(channel("http://10.0.0.5:7443").is_err(), "plain http elsewhere");
        assert!(channel("nonsense").is_err());
    }

    #[tokio::test]
    async fn loopback_and_salesforces_endpoint_make_channels() {
        assert!(channel("http://127.0.0.1:7443").is_ok());
        // TLS with the platform's roots, where the platform has them.
        if std::path::Path::new("/etc/ssl/certs").is_dir() {
            assert!(channel("https://api.pubsub.salesforce.com:7443").is_ok());
        }
    }
}
