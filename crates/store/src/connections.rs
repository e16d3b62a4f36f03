//! Connections and their settings (shared by every replica of every tier).

use crmsync_domain::settings::ConnectionSettings;
use sqlx::{PgExecutor, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no connection {0:?}; create it with `crmsync connection create {0}`")]
    Unknown(String),
    #[error("stored settings of connection {id:?} are unreadable: {error}")]
    Corrupt { id: String, error: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl ConnectionError {
    /// The connection does not exist (never created, or deleted).
    pub fn is_unknown(&self) -> bool {
        matches!(self, ConnectionError::Unknown(_))
    }
}

impl From<ConnectionError> for sqlx::Error {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Db(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        }
    }
}

/// The settings of one connection, with defaults for keys not stored.
pub async fn load(pool: &PgPool, id: &str) -> Result<ConnectionSettings, ConnectionError> {
    let raw: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT settings FROM connections WHERE id = $1").bind(id).fetch_optional(pool).await?;
    parse(id, raw)
}

/// As [`load`], locking the connection's row until the transaction ends:
/// a change read, checked and saved in it cannot lose another made at the
/// same time (by another console replica, or the CLI).
pub async fn load_for_update<'e>(e: impl PgExecutor<'e>, id: &str) -> Result<ConnectionSettings, ConnectionError> {
    let raw: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT settings FROM connections WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(e).await?;
    parse(id, raw)
}

fn parse(id: &str, raw: Option<serde_json::Value>) -> Result<ConnectionSettings, ConnectionError> {
    let raw = raw.ok_or_else(|| ConnectionError::Unknown(id.to_owned()))?;
    serde_json::from_value(raw).map_err(|e| ConnectionError::Corrupt { id: id.to_owned(), error: e.to_string() })
}

/// Every connection id, in order.
pub async fn ids(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM connections ORDER BY id").fetch_all(pool).await
}

/// Stores a connection's settings (creating the connection if new).
pub async fn save<'e>(e: impl PgExecutor<'e>, id: &str, settings: &ConnectionSettings) -> Result<(), sqlx::Error> {
    let value = serde_json::to_value(settings).map_err(|err| sqlx::Error::Protocol(err.to_string()))?;
    sqlx::query(
        "INSERT INTO connections (id, settings) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()",
    )
    .bind(id)
    .bind(value)
    .execute(e)
    .await?;
    Ok(())
}
