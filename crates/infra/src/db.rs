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
    PgPoolOptions::new().max_connections(max_connections).acquire_timeout(acquire_timeout).connect_with(options).await
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

/// Why the database cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no crmsync schema yet: run `crmsync migrate`")]
    Empty,
    #[error("the database is at migration {have}, this build needs {need}: run `crmsync migrate`")]
    Behind { have: i64, need: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks that every migration this build knows is applied. A database
/// ahead of the build is fine: each migration keeps older replicas working.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), SchemaError> {
    let need = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Err(SchemaError::Empty);
    }
    let have: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    match have {
        None => Err(SchemaError::Empty),
        Some(have) if have < need => Err(SchemaError::Behind { have, need }),
        Some(_) => Ok(()),
    }
}
