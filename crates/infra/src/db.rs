//! The engine's PostgreSQL: pool and versioned migrations (`migrations/`).

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};

use crate::config::DatabaseConfig;

/// The engine's migrations, embedded at build time from the workspace's
/// `migrations/` folder. Each step is backward compatible with the replicas
/// still running the previous version (add, never rename or drop in place).
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool to `url` with the configured limits.
pub async fn connect_url(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("crmsync");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
}

/// Opens the engine's pool.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    connect_url(cfg.url.expose_secret(), cfg.max_connections, Duration::from_millis(cfg.acquire_timeout_ms)).await
}

/// Applies the engine's pending migrations (safe to run from several
/// processes at once: sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
