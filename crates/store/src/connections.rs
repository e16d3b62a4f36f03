//! Connections and their settings (shared by every replica of every tier).

use chrono::{DateTime, Utc};
use crmsync_domain::settings::ConnectionSettings;
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no connection {0:?}; create it with `crmsync connection create {0}`")]
    Unknown(String),
    #[error("stored settings of connection {id:?} are unreadable: {error}")]
    Corrupt { id: String, error: String },
    /// Paused by an admin (migration 0014): nothing is to be written to
    /// its systems until it is resumed.
    #[error("connection {id:?} is paused (since {since}); resume it with `crmsync connection resume {id}`")]
    Paused { id: String, since: DateTime<Utc> },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl ConnectionError {
    /// The connection does not exist (never created, or deleted).
    pub fn is_unknown(&self) -> bool {
        matches!(self, ConnectionError::Unknown(_))
    }

    /// The connection is paused ([`load_running`]).
    pub fn is_paused(&self) -> bool {
        matches!(self, ConnectionError::Paused { .. })
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

/// Every connection's settings, in id order, in one statement; a
/// connection whose settings do not parse is left out (its own load says
/// why).
pub async fn load_all(pool: &PgPool) -> Result<Vec<(String, ConnectionSettings)>, sqlx::Error> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as("SELECT id, settings FROM connections ORDER BY id").fetch_all(pool).await?;
    Ok(rows.into_iter().filter_map(|(id, raw)| parse(&id, Some(raw)).ok().map(|s| (id, s))).collect())
}

/// A connection as the producer's cheap look at every connection sees it
/// (issue 29): its settings (or why they do not parse), whether it is
/// paused, and when it last changed.
#[derive(Debug, Clone)]
pub struct ConnectionState {
    pub id: String,
    pub settings: Result<ConnectionSettings, String>,
    pub paused: bool,
    pub updated_at: DateTime<Utc>,
}

/// Every connection's state, in id order, in one statement: what each
/// replica of the producer reads once a safety poll instead of one
/// statement per connection per poll.
pub async fn load_all_states(pool: &PgPool) -> Result<Vec<ConnectionState>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        settings: serde_json::Value,
        paused_at: Option<DateTime<Utc>>,
        updated_at: DateTime<Utc>,
    }
    let rows: Vec<Row> = sqlx::query_as("SELECT id, settings, paused_at, updated_at FROM connections ORDER BY id").fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let settings = parse(&r.id, Some(r.settings)).map_err(|e| e.to_string());
            ConnectionState { id: r.id, settings, paused: r.paused_at.is_some(), updated_at: r.updated_at }
        })
        .collect())
}

/// A cheap mark of the connections table: how many there are, and the
/// latest change to any (a create, a settings save, a pause or resume
/// moves `updated_at`). One aggregate over the table, no settings read.
pub async fn version(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT count(*)::bigint, max(updated_at) FROM connections").fetch_one(pool).await
}

/// Every connection id, in order.
pub async fn ids(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM connections ORDER BY id").fetch_all(pool).await
}

/// Stores a connection's settings (creating the connection if new). Its
/// batch lane, if waiting for budget, is made due at once: a lane told to
/// wait hours by a budget of a few records an hour follows a lifted budget
/// within a second, not when the old wait ends.
pub async fn save<'e>(e: impl PgExecutor<'e>, id: &str, settings: &ConnectionSettings) -> Result<(), sqlx::Error> {
    let value = serde_json::to_value(settings).map_err(|err| sqlx::Error::Protocol(err.to_string()))?;
    sqlx::query(
        "WITH saved AS (INSERT INTO connections (id, settings) VALUES ($1, $2) \
                        ON CONFLICT (id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = now() RETURNING id) \
         UPDATE batch_lanes SET due_at = least(due_at, now()) WHERE connection_id IN (SELECT id FROM saved)",
    )
    .bind(id)
    .bind(value)
    .execute(e)
    .await?;
    Ok(())
}

/// Who paused a connection, and when (migration 0014).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Paused {
    pub paused_at: DateTime<Utc>,
    /// The admin audit log's name for them (`ops`, `cli:alice`).
    pub paused_by: Option<String>,
}

/// The settings of a connection that is running, or
/// [`ConnectionError::Paused`]: what every tier loads before it works on a
/// connection, so that the pause is read in the same statement as the
/// settings, at no extra cost per message.
pub async fn load_running(pool: &PgPool, id: &str) -> Result<ConnectionSettings, ConnectionError> {
    match load_with_pause(pool, id).await? {
        (_, Some(since)) => Err(ConnectionError::Paused { id: id.to_owned(), since }),
        (settings, None) => Ok(settings),
    }
}

/// The settings of a connection and, when it is paused, since when: one
/// statement, for whoever needs both (the batch lane's pace).
pub async fn load_with_pause(pool: &PgPool, id: &str) -> Result<(ConnectionSettings, Option<DateTime<Utc>>), ConnectionError> {
    let row: Option<(serde_json::Value, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT settings, paused_at FROM connections WHERE id = $1").bind(id).fetch_optional(pool).await?;
    match row {
        Some((raw, since)) => Ok((parse(id, Some(raw))?, since)),
        None => Err(ConnectionError::Unknown(id.to_owned())),
    }
}

/// Whether a connection is paused, and since when; `Unknown` when there is
/// no such connection. With `lock`, the row stays locked until the
/// transaction ends, so that a pause and a resume made at once (two console
/// replicas, the CLI) are serialised and each audits what it really
/// changed.
pub async fn paused<'e>(e: impl PgExecutor<'e>, id: &str, lock: bool) -> Result<Option<Paused>, ConnectionError> {
    let sql = if lock {
        "SELECT paused_at, paused_by FROM connections WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT paused_at, paused_by FROM connections WHERE id = $1"
    };
    let row: Option<(Option<DateTime<Utc>>, Option<String>)> = sqlx::query_as(sql).bind(id).fetch_optional(e).await?;
    match row {
        None => Err(ConnectionError::Unknown(id.to_owned())),
        Some((at, by)) => Ok(at.map(|paused_at| Paused { paused_at, paused_by: by })),
    }
}

/// Every paused connection, by id (for status and metrics).
pub async fn all_paused(pool: &PgPool) -> Result<Vec<(String, Paused)>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, Option<String>)> =
        sqlx::query_as("SELECT id, paused_at, paused_by FROM connections WHERE paused_at IS NOT NULL ORDER BY id").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id, paused_at, paused_by)| (id, Paused { paused_at, paused_by })).collect())
}

/// Pauses a connection as `by` (`Some`), or resumes it (`None`). Call it
/// through `crmsync_ops::pause::set_paused`, which audits the change.
pub async fn set_paused<'e>(e: impl PgExecutor<'e>, id: &str, by: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connections SET paused_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END, paused_by = $2, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(by)
    .execute(e)
    .await?;
    Ok(())
}

/// The settings and pause of these connections, in one statement (the
/// batch lane's pace book, for every lane it works on at once). A
/// connection not in the answer does not exist; one whose settings cannot
/// be read is there with `None`.
pub async fn load_many_with_pause(
    pool: &PgPool,
    ids: &[String],
) -> Result<Vec<(String, Option<ConnectionSettings>, Option<DateTime<Utc>>)>, sqlx::Error> {
    let rows: Vec<(String, serde_json::Value, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT id, settings, paused_at FROM connections WHERE id = ANY($1)").bind(ids).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id, raw, since)| (parse(&id, Some(raw)).ok(), since, id)).map(|(s, since, id)| (id, s, since)).collect())
}
