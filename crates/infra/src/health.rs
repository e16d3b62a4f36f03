//! Liveness, readiness and metrics over HTTP: every tier serves `/livez`,
//! `/readyz` and `/metrics` on `telemetry.http_listen` (e.g. `0.0.0.0:9464`)
//! for its orchestrator's probes and Prometheus.
//!
//! Live: the process answers. Ready: PostgreSQL, Redis and RabbitMQ answer
//! now (each checked on the request, with a short timeout, so a lost
//! service shows at once) and the tier is taking work; not while it drains
//! after SIGTERM, so no new traffic is routed to a replica on its way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::metrics::{self, MetricsError};
use crate::services::Services;

/// How long one service may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a replica writes whether it is ready to PostgreSQL, for the
/// console's overview and `status` (which call a replica unseen for three
/// of these gone).
pub const BEAT: Duration = Duration::from_secs(10);

/// This process's name among its tier's replicas: the host (a pod's name
/// in Kubernetes, a container's id in Docker) and the process id.
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// What a tier's readiness is made of.
#[derive(Debug)]
pub struct Health {
    tier: &'static str,
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    broker: Arc<Broker>,
    working: AtomicBool,
    draining: AtomicBool,
    /// Woken when the tier starts taking work, so its replica row says so
    /// at once rather than a beat later.
    started: tokio::sync::Notify,
}

impl Health {
    pub fn new(tier: &'static str, services: &Services) -> Arc<Health> {
        Arc::new(Health {
            tier,
            pool: services.pool.clone(),
            redis: services.redis.clone(),
            broker: services.broker.clone(),
            working: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            started: tokio::sync::Notify::new(),
        })
    }

    /// The tier has started taking work (its consumers or its poll loop).
    pub fn working(&self) {
        self.working.store(true, Ordering::SeqCst);
        self.started.notify_one();
    }

    /// Marks the tier draining as soon as `shutdown` is cancelled.
    pub fn drain_on(self: &Arc<Self>, shutdown: CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            health.draining.store(true, Ordering::SeqCst);
            ::metrics::gauge!("crmsync_ready", "tier" => health.tier).set(0.0);
        });
    }

    /// Writes this replica's readiness to PostgreSQL every [`BEAT`] until
    /// `shutdown`, then once more as draining, so the overview shows each
    /// replica of each tier without reaching into the replicas themselves.
    pub fn report(self: &Arc<Self>, shutdown: CancellationToken) {
        let health = self.clone();
        let name = replica_name();
        tokio::spawn(async move {
            let _ = crmsync_store::replicas::forget_old(&health.pool).await;
            let mut tick = tokio::time::interval(BEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = health.started.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                let not = health.check().await.err().map(|n| n.join("; "));
                if let Err(e) = crmsync_store::replicas::beat(&health.pool, health.tier, &name, not.as_deref()).await {
                    tracing::debug!(error = %e, "could not write this replica's readiness");
                }
            }
            let _ = crmsync_store::replicas::beat(&health.pool, health.tier, &name, Some("draining: shutting down")).await;
        });
    }

    /// Ready, or what is not.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let mut not = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            not.push("draining".to_owned());
        } else if !self.working.load(Ordering::SeqCst) {
            not.push("not taking work yet".to_owned());
        }
        // Asking for the live connection reconnects a tier that had no
        // reason to since the broker came back (an idle producer).
        let broker = tokio::time::timeout(CHECK_TIMEOUT, self.broker.live()).await;
        if !matches!(broker, Ok(Ok(_))) {
            not.push("RabbitMQ: not connected".to_owned());
        }
        let pg = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await;
        if !matches!(pg, Ok(Ok(_))) {
            not.push("PostgreSQL: no answer".to_owned());
        }
        let mut redis = self.redis.clone();
        let ping = tokio::time::timeout(CHECK_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut redis)).await;
        if !matches!(ping, Ok(Ok(_))) {
            not.push("Redis: no answer".to_owned());
        }
        ::metrics::gauge!("crmsync_ready", "tier" => self.tier).set(if not.is_empty() { 1.0 } else { 0.0 });
        if not.is_empty() { Ok(()) } else { Err(not) }
    }
}

async fn livez() -> &'static str {
    "live\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(not) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", not.join("; "))),
    }
}

async fn render() -> String {
    metrics::render()
}

/// Installs the metrics recorder and serves the three endpoints at
/// `listen` (when configured) until the task is aborted; the tier aborts it
/// after it has drained, so probes answer "draining" meanwhile.
pub async fn serve(listen: Option<&str>, health: Arc<Health>) -> Result<Option<JoinHandle<()>>, MetricsError> {
    metrics::install();
    let Some(listen) = listen else { return Ok(None) };
    let addr: SocketAddr = listen.parse().map_err(|_| MetricsError::Address(listen.to_owned()))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| MetricsError::Install(format!("{listen}: {e}")))?;
    let app = Router::new().route("/livez", get(livez)).route("/readyz", get(readyz)).route("/metrics", get(render)).with_state(health);
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the health and metrics server stopped");
        }
    })))
}
