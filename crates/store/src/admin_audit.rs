//! The admin audit log (migration 0013): every change an admin makes to how
//! the sync runs, whether through the console, its JSON API or the CLI,
//! with who made it, when, and the value before and after.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;

/// Who made a change and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// A console user's name, or `cli:<operating-system user>`.
    pub name: String,
    /// `console` (a signed-in page), `api` (an API token) or `cli`.
    pub via: &'static str,
}

impl Actor {
    /// The person running the `crmsync` command, as the operating system
    /// names them: the CLI has no sign-in of its own. Under sudo, the
    /// person who ran sudo, not root.
    pub fn cli() -> Actor {
        let user = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        Actor { name: format!("cli:{user}"), via: "cli" }
    }
}

/// One change to record.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub actor: &'a Actor,
    pub connection_id: Option<&'a str>,
    /// What was done: `setting.set`, `user.add`, `token.add`...
    pub action: &'a str,
    /// What it was done to: the setting's key, the user's name...
    pub target: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// One recorded change.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub via: String,
    pub connection_id: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Records a change; in the caller's transaction when given one, so that
/// the change and its entry commit together.
pub async fn record<'e>(e: impl PgExecutor<'e>, entry: &NewEntry<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO admin_audit (actor, via, connection_id, action, target, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&entry.actor.name)
    .bind(entry.actor.via)
    .bind(entry.connection_id)
    .bind(entry.action)
    .bind(entry.target)
    .bind(&entry.before)
    .bind(&entry.after)
    .fetch_one(e)
    .await
}

/// The newest entries first, all connections' or one's, at most `limit`,
/// older than entry `before_id` when given (the next page).
///
/// Two statements rather than one with `$1 IS NULL OR ...`: a prepared
/// statement's generic plan could not use the per-connection index for
/// that, and would scan the whole log backwards for a quiet connection.
pub async fn recent<'e>(
    e: impl PgExecutor<'e>,
    connection_id: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let before_id = before_id.unwrap_or(i64::MAX);
    match connection_id {
        Some(c) => {
            sqlx::query_as(
                "SELECT id, at, actor, via, connection_id, action, target, before, after FROM admin_audit \
                 WHERE connection_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(c)
            .bind(before_id)
            .bind(limit)
            .fetch_all(e)
            .await
        }
        None => {
            sqlx::query_as(
                "SELECT id, at, actor, via, connection_id, action, target, before, after FROM admin_audit \
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(before_id)
            .bind(limit)
            .fetch_all(e)
            .await
        }
    }
}
