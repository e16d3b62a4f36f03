//! The sandbox systems over HTTP (`crmsync sandbox serve`).
//!
//! Serves one sandbox CRM org and one MA business unit through the same
//! paths, payloads, status codes and error bodies as Salesforce (OAuth 2.0,
//! REST query, sObject Describe and sObject Collections, Bulk API 2.0
//! ingest) and Account Engagement API v5 (prospects, users, custom fields
//! and the Import API, and the sandbox's own extension for the MA's
//! read-only mirrors), with their limits: 200 records per collection call,
//! the `Sforce-Limit-Info` header, daily quotas that answer with the real
//! limit errors, five Account Engagement requests in flight.
//! The HTTP connectors are tested against it, and ordinary Salesforce
//! clients can talk to it.
//!
//! With [`Server::bind_pubsub`] it also serves the Salesforce Pub/Sub API
//! (gRPC) on a listener of its own: Change Data Capture events of the CRM
//! org, see [`pubsub`].
//!
//! `/sandbox-admin` changes the limits at run time and expires sessions, so
//! tests can hit a quota or a token expiry on purpose, switches change
//! events (selection, gap and overflow events), and reports what the server
//! saw (the most AE requests in flight at once); it is open to anyone who
//! can reach the port, so the server binds to loopback by default.

mod admin;
mod bulk;
mod describe;
mod errors;
mod imports;
mod mirrors;
mod oauth;
mod pardot;
pub mod pubsub;
mod rest;
mod sobject;
mod soql_sql;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use crmsync_connector::ConnectorError;
use crmsync_sandbox::{SandboxCrm, SandboxMa};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use admin::CdcSettings;
pub use state::{Limits, Stats};

/// What the server serves, and to whom.
#[derive(Clone)]
pub struct ServerConfig {
    /// The URL clients reach the server at (the `instance_url` handed out
    /// with tokens); the bound address when empty.
    pub public_url: String,
    /// The sandbox CRM org served as Salesforce.
    pub crm_tenant: String,
    /// The sandbox MA business unit served as Account Engagement.
    pub ma_tenant: String,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret (client credentials flow).
    pub client_secret: String,
    /// The certificate of the connected app (PEM public key) for the JWT
    /// bearer flow; without it that flow is refused.
    pub jwt_public_key_pem: Option<String>,
    /// The business unit id clients must send in `Pardot-Business-Unit-Id`.
    pub business_unit_id: String,
    pub limits: Limits,
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("public_url", &self.public_url)
            .field("crm_tenant", &self.crm_tenant)
            .field("ma_tenant", &self.ma_tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("jwt", &self.jwt_public_key_pem.is_some())
            .field("business_unit_id", &self.business_unit_id)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A Developer Edition org's allowance.
            salesforce_daily: 15_000,
            salesforce_used: 0,
            // Account Engagement Growth edition.
            pardot_daily: 25_000,
            pardot_used: 0,
            pardot_concurrency: crmsync_wire::pardot::MAX_CONCURRENT_REQUESTS,
            token_ttl_secs: 2 * 60 * 60,
            cdc_retention_secs: state::defaults::cdc_retention_secs(),
            cdc_delivery_daily: state::defaults::cdc_delivery_daily(),
            cdc_delivered: 0,
            pubsub_keepalive_ms: state::defaults::pubsub_keepalive_ms(),
            cdc_overflow_threshold: state::defaults::cdc_overflow_threshold(),
        }
    }
}

/// A bound server, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    /// The Pub/Sub API's listener and URL, when bound.
    pubsub: Option<(TcpListener, String)>,
    state: Arc<state::AppState>,
}

impl Server {
    /// Binds `addr` and connects to the sandbox tenants the configuration
    /// names (both must exist: `crmsync sandbox init`).
    pub async fn bind(mut config: ServerConfig, addr: SocketAddr, pool: PgPool) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        if config.public_url.is_empty() {
            config.public_url = format!("http://{}", listener.local_addr()?);
        }
        let fatal = |e: ConnectorError| anyhow::anyhow!("{e}");
        let crm = Arc::new(SandboxCrm::connect(pool.clone(), &config.crm_tenant).await.map_err(fatal)?);
        let ma = Arc::new(SandboxMa::connect(pool.clone(), &config.ma_tenant).await.map_err(fatal)?);
        let org_id: String = sqlx::query_scalar("SELECT '00D' || substr(md5($1), 1, 15)").bind(&config.crm_tenant).fetch_one(&pool).await?;
        let limits = config.limits.clone();
        let state = Arc::new(state::AppState {
            config,
            pool,
            crm,
            ma,
            sessions: Default::default(),
            limits: tokio::sync::Mutex::new(limits),
            day: tokio::sync::Mutex::new(chrono::Utc::now().date_naive()),
            locators: Default::default(),
            jobs: Default::default(),
            bulk_bytes: AtomicUsize::new(0),
            pardot_in_flight: AtomicUsize::new(0),
            pardot_in_flight_high: AtomicUsize::new(0),
            pardot_concurrency_refused: Default::default(),
            logins: Default::default(),
            org_id,
            deliveries: Default::default(),
        });
        Ok(Server { listener, pubsub: None, state })
    }

    /// Binds `addr` for the Pub/Sub API (gRPC, plain HTTP/2) as well.
    pub async fn bind_pubsub(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        self.pubsub = Some((listener, url));
        Ok(())
    }

    /// The address clients reach the server at.
    pub fn url(&self) -> &str {
        &self.state.config.public_url
    }

    /// The address of the Pub/Sub API, when bound.
    pub fn pubsub_url(&self) -> Option<&str> {
        self.pubsub.as_ref().map(|(_, url)| url.as_str())
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in
    /// flight (a Pub/Sub subscription ends).
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let pubsub = self.pubsub.map(|(listener, _)| {
            let service = pubsub::Service::start(self.state.clone(), shutdown.clone());
            let shutdown = shutdown.clone();
            tonic::transport::Server::builder()
                .add_service(crmsync_pubsub::proto::pub_sub_server::PubSubServer::new(service))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async move {
                    shutdown.cancelled().await;
                })
        });
        let app = router(self.state);
        let http = serve_http(self.listener, app, shutdown);
        match pubsub {
            None => http.await,
            Some(grpc) => {
                let grpc = async move { grpc.await.map_err(std::io::Error::other) };
                tokio::try_join!(http, grpc).map(|_| ())
            }
        }
    }
}

/// How long a client may take to send a request's headers: a connection
/// that sends them slowly, or never, is closed (hyper's timer), so that
/// half-sent requests cannot hold the server's sockets for ever.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long one request may take, its body read included (the largest, a
/// Bulk upload, is at most axum's 2 MB a request): past it, 408.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves `app` on `listener` until `shutdown`, then lets the connections
/// in flight finish. hyper's own connection builder rather than
/// `axum::serve`, which sets no timer and so no header-read timeout.
async fn serve_http(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was taken: not the server's end.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Ends a request that takes longer than [`REQUEST_TIMEOUT`] (a body sent
/// slowly, or never finished) with 408.
async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (axum::http::StatusCode::REQUEST_TIMEOUT, "the request took too long").into_response(),
    }
}

fn router(st: Arc<state::AppState>) -> Router {
    use axum::routing::{delete, patch, put};
    let salesforce = Router::new()
        .route("/services/data/{v}/query", get(rest::query))
        .route("/services/data/{v}/query/", get(rest::query))
        .route("/services/data/{v}/queryAll", get(rest::query_all))
        .route("/services/data/{v}/queryAll/", get(rest::query_all))
        .route("/services/data/{v}/limits", get(sobject::limits))
        .route("/services/data/{v}/limits/", get(sobject::limits))
        .route("/services/data/{v}/sobjects/{object}", post(sobject::create))
        .route("/services/data/{v}/sobjects/{object}/", post(sobject::create))
        .route("/services/data/{v}/sobjects/{object}/{id}", get(sobject::retrieve).patch(sobject::update).delete(sobject::delete))
        .route("/services/data/{v}/sobjects/{object}/{field}/{value}", patch(sobject::upsert))
        .route("/services/data/{v}/sobjects/{object}/describe/", get(describe::describe))
        .route("/services/data/{v}/query/{locator}", get(rest::query_more))
        .route("/services/data/{v}/queryAll/{locator}", get(rest::query_more))
        .route("/services/data/{v}/sobjects/{object}/describe", get(describe::describe))
        .route("/services/data/{v}/composite/sobjects", post(rest::create).patch(rest::update).delete(rest::delete))
        .route("/services/data/{v}/composite/sobjects/{object}/{field}", patch(rest::upsert))
        .route("/services/data/{v}/jobs/ingest", post(bulk::create).get(bulk::list))
        .route("/services/data/{v}/jobs/ingest/{id}", get(bulk::status).patch(bulk::update).delete(bulk::delete))
        .route("/services/data/{v}/jobs/ingest/{id}/unprocessedrecords", get(bulk::unprocessed))
        .route("/services/data/{v}/jobs/ingest/{id}/unprocessedrecords/", get(bulk::unprocessed))
        .route("/services/data/{v}/jobs/ingest/{id}/batches", put(bulk::upload))
        .route("/services/data/{v}/jobs/ingest/{id}/successfulResults", get(bulk::successful))
        .route("/services/data/{v}/jobs/ingest/{id}/successfulResults/", get(bulk::successful))
        .route("/services/data/{v}/jobs/ingest/{id}/failedResults", get(bulk::failed))
        .route("/services/data/{v}/jobs/ingest/{id}/failedResults/", get(bulk::failed))
        .route_layer(middleware::from_fn_with_state(st.clone(), oauth::salesforce_gate));
    let pardot = pardot::routes()
        .merge(mirrors::routes())
        .merge(imports::routes())
        .route_layer(middleware::from_fn_with_state(st.clone(), oauth::pardot_gate));
    let admin = Router::new()
        .route("/sandbox-admin/limits", get(admin::limits).put(admin::set_limits))
        .route("/sandbox-admin/expire-sessions", post(admin::expire_sessions))
        .route("/sandbox-admin/stats", get(admin::stats))
        .route("/sandbox-admin/sessions", delete(admin::expire_sessions))
        .route("/sandbox-admin/cdc", get(admin::cdc))
        .route("/sandbox-admin/cdc/entities", put(admin::select_entities))
        .route("/sandbox-admin/cdc/gaps", post(admin::request_gaps))
        .route("/sandbox-admin/cdc/overflows", post(admin::request_overflows));
    Router::new()
        .route("/services/oauth2/token", post(oauth::token))
        .route("/services/data", get(rest::versions))
        .route("/id/{org}/{user}", get(oauth::identity))
        .merge(salesforce)
        .merge(pardot)
        .merge(admin)
        .layer(middleware::from_fn(request_timeout))
        .layer(middleware::from_fn(errors::api_shaped))
        .layer(middleware::from_fn(trace))
        .with_state(st)
}

/// One span per request, with its method and path (never its headers: they
/// carry tokens).
async fn trace(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!("sandbox_http", method = %req.method(), path = %req.uri().path(), status = tracing::field::Empty);
    async move {
        let resp = next.run(req).await;
        tracing::Span::current().record("status", resp.status().as_u16());
        resp
    }
    .instrument(span)
    .await
}
