//! The replicas of each tier and whether they were ready when last seen
//! (migration 0017): each replica writes its own row every few seconds, and
//! the console's overview and `status` read them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

/// A replica as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Replica {
    pub tier: String,
    pub replica: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub ready: bool,
    pub not_ready: Option<String>,
}

/// Says this replica is alive, and whether it is ready (and why not).
pub async fn beat<'e>(e: impl PgExecutor<'e>, tier: &str, replica: &str, not_ready: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO replicas (tier, replica, ready, not_ready) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tier, replica) DO UPDATE SET seen_at = now(), ready = excluded.ready, not_ready = excluded.not_ready",
    )
    .bind(tier)
    .bind(replica)
    .bind(not_ready.is_none())
    .bind(not_ready)
    .execute(e)
    .await?;
    Ok(())
}

/// Forgets replicas unseen for a day (those that were replaced).
pub async fn forget_old<'e>(e: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM replicas WHERE seen_at < now() - interval '1 day'").execute(e).await?.rows_affected())
}

/// The replicas seen in the last `within_secs` seconds, by tier and name.
pub async fn recent<'e>(e: impl PgExecutor<'e>, within_secs: i64) -> Result<Vec<Replica>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tier, replica, started_at, seen_at, ready, not_ready FROM replicas \
         WHERE seen_at > now() - make_interval(secs => $1) ORDER BY tier, replica",
    )
    .bind(within_secs as f64)
    .fetch_all(e)
    .await
}
