//! The admin console (issue 28): a web UI and a JSON API for the people who
//! run the sync, served by `crmsync console`.
//!
//! Stateless like the tiers: every session, failed-sign-in count and audit
//! entry is in PostgreSQL, so any number of replicas can run behind a load
//! balancer. Pages are rendered on the server (no script, one small
//! stylesheet in the binary); each is also JSON, at the same path with
//! `Accept: application/json`. What the console shows and changes goes
//! through the same code as the CLI's (`crmsync_ops`), so the two cannot
//! drift apart.

pub mod errors;
pub mod mapping;
pub mod pages;
pub mod pause;
pub mod records;
pub mod session;
pub mod sign_in;
pub mod users;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use crmsync_infra::inspect::Inspector;
use crmsync_infra::{CancellationToken, Config, db};
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    /// Kept for the overview's queue depths: one broker connection for the
    /// replica's life rather than a handshake per page.
    pub inspector: Arc<Inspector>,
    /// Kept for the replica's life, like the inspector: its connectors hold
    /// their logins and the Salesforce describes, so a page that reads the
    /// systems (a record's values, the mapping's fields, a scope preview)
    /// costs no login or describe per view against a real org's API
    /// allowance (I8). Made with change events off: the console reads no
    /// feeds.
    pub factory: Arc<SystemsFactory>,
}

/// A console bound to its address, not yet serving.
#[derive(Debug)]
pub struct Console {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl Console {
    /// Connects to PostgreSQL (which must be migrated) and binds
    /// `console.listen` (port 0 picks a free port: see [`Console::addr`]).
    pub async fn bind(config: Config) -> anyhow::Result<Console> {
        let pool = db::connect(&config.database).await.context("connecting to PostgreSQL")?;
        db::ensure_migrated(&pool).await?;
        Self::bind_with(config, pool).await
    }

    /// As [`Console::bind`], on a pool the caller made.
    pub async fn bind_with(config: Config, pool: PgPool) -> anyhow::Result<Console> {
        let listener = tokio::net::TcpListener::bind(&config.console.listen)
            .await
            .with_context(|| format!("binding the console to {} (console.listen)", config.console.listen))?;
        let inspector = Arc::new(Inspector::new(&config.amqp, "crmsync-console"));
        let factory = Arc::new(SystemsFactory::from_config(&config, &pool).await.context("reaching the sandbox's database")?);
        Ok(Console { listener, state: AppState { pool, config: Arc::new(config), inspector, factory } })
    }

    /// The address it listens at.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in
    /// hand.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr()?, "console serving");
        let inspector = self.state.inspector.clone();
        axum::serve(self.listener, router(self.state)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
        inspector.close().await;
        Ok(())
    }
}

/// Runs the console until `shutdown` is cancelled (`crmsync console`).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Console::bind(config).await?.serve(shutdown).await
}

/// Every route. Each page answers HTML, or JSON to `Accept: application/json`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/connections/{id}", get(pages::connection))
        .route("/connections/{id}/settings", post(pages::change_setting))
        .route("/connections/{id}/mapping", get(mapping::show).post(mapping::change))
        .route("/connections/{id}/scope", get(mapping::show_scope).post(mapping::change_scope))
        .route("/connections/{id}/pause", post(pause::pause))
        .route("/connections/{id}/resume", post(pause::resume))
        .route("/audit", get(pages::audit))
        .route("/records", get(records::lookup))
        .route("/records/sync-now", post(records::sync_now))
        .route("/errors", get(errors::list))
        .route("/errors/export.csv", get(errors::export_csv))
        .route("/errors/{id}", get(errors::show))
        .route("/errors/dismiss", post(errors::dismiss))
        .route("/errors/retry", post(errors::retry))
        .route("/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/style.css", get(view::stylesheet))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(axum::middleware::map_response(guarded))
        .with_state(state)
}

/// `GET /readyz`: 200 while PostgreSQL answers (within 2 s), which is all
/// the console needs to serve its pages; 503 otherwise, so a load balancer
/// sends requests to another replica.
async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> (axum::http::StatusCode, &'static str) {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (axum::http::StatusCode::OK, "ready"),
        _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL does not answer"),
    }
}

/// What a browser is told about every answer: never to frame it (no other
/// site can overlay a page and trick a click on its buttons), to load
/// nothing from elsewhere and run no script, to post forms only here, and
/// not to keep pages that show settings in its cache.
async fn guarded(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Every change the console makes, with an example of the CLI command that
/// makes the same change, so that scripts and the UI never drift apart (a
/// test of the CLI parses each with its own parser). A new action adds its
/// line here.
pub const ACTIONS: &[(&str, &str)] = &[
    ("POST /connections/{id}/settings", "crmsync connection set default csql.record_type opportunity --yes"),
    ("POST /errors/dismiss (an id)", "crmsync errors dismiss 42"),
    ("POST /errors/dismiss (a category)", "crmsync errors dismiss --category invalid_email -c default"),
    ("POST /errors/retry (an id)", "crmsync errors retry 42"),
    ("POST /errors/retry (a category)", "crmsync errors retry --category invalid_email -c default"),
    ("POST /connections/{id}/mapping (preview)", "crmsync connection mapping default set city --sync ma_wins --preview"),
    ("POST /connections/{id}/mapping (set)", "crmsync connection mapping default set score --sync read_only --source ma"),
    (
        "POST /connections/{id}/mapping (add)",
        "crmsync connection mapping default add Preferred_Language__c --lead Preferred_Language__c --contact Preferred_Language__c --sync most_recent",
    ),
    ("POST /connections/{id}/mapping (remove)", "crmsync connection mapping default remove Preferred_Language__c"),
    ("POST /connections/{id}/scope (preview)", "crmsync connection scope default set --rule lead.Status:not_equals:Closed --preview"),
    ("POST /connections/{id}/scope (set)", "crmsync connection scope default set --rule LeadSource:in:Web,Event --rule Email:contains:@"),
    ("POST /connections/{id}/scope (clear)", "crmsync connection scope default clear"),
    ("POST /connections/{id}/pause", "crmsync connection pause default"),
    ("POST /connections/{id}/resume", "crmsync connection resume default"),
    ("POST /records/sync-now", "crmsync records sync-now -c default jane@example.com"),
];

#[cfg(test)]
mod tests {
    /// The routes that change something: every `post(...)` route of
    /// [`super::router`], read from this file's source (axum lists no
    /// routes at run time), except signing in and out, which change no
    /// sync.
    fn change_routes() -> Vec<String> {
        let source = include_str!("lib.rs");
        let body = &source[source.find("pub fn router(").expect("the router")..];
        let body = &body[..body.find("\n}\n").expect("its end")];
        body.lines()
            .filter(|l| l.contains(".route(") && l.contains("post("))
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .filter(|path| path != "/sign-in" && path != "/sign-out")
            .collect()
    }

    #[test]
    fn every_route_that_changes_something_is_an_action_with_a_cli_command_and_back() {
        let routes = change_routes();
        assert!(routes.len() >= 8, "{routes:?}");
        for route in &routes {
            assert!(
                super::ACTIONS.iter().any(|(action, _)| action.strip_prefix("POST ").is_some_and(|a| a.split(' ').next() == Some(route))),
                "POST {route} changes something but has no line in ACTIONS (and so no CLI command)"
            );
        }
        for (action, _) in super::ACTIONS {
            let path = action.strip_prefix("POST ").and_then(|a| a.split(' ').next()).expect("POST <path>");
            assert!(routes.iter().any(|r| r == path), "ACTIONS lists {action}, which the router does not serve");
        }
    }
}
