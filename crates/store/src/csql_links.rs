//! Which CRM record each CSQL became (R9), and what the sync last saw of it.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// A CSQL's link as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CsqlLink {
    pub cs_id: i64,
    pub crm_id: Option<String>,
    pub outcome: String,
    pub error: Option<String>,
    pub seen_edit_at: Option<DateTime<Utc>>,
}

pub async fn find(pool: &PgPool, connection_id: &str, record_type: &str, cs_ids: &[i64]) -> Result<Vec<CsqlLink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT cs_id, crm_id, outcome, error, seen_edit_at FROM csql_links WHERE connection_id = $1 AND record_type = $2 AND cs_id = ANY($3)",
    )
    .bind(connection_id)
    .bind(record_type)
    .bind(cs_ids)
    .fetch_all(pool)
    .await
}

/// What a sync of one CSQL did.
#[derive(Debug, Clone)]
pub struct Synced<'a> {
    pub record_type: &'a str,
    pub cs_id: i64,
    pub crm_object: Option<&'a str>,
    pub crm_id: Option<&'a str>,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    pub seen_edit_at: Option<DateTime<Utc>>,
}

/// Records a sync, fenced by the CSQL's lock token.
pub async fn save<'e>(e: impl PgExecutor<'e>, connection_id: &str, s: &Synced<'_>, fence: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO csql_links (connection_id, record_type, cs_id, crm_object, crm_id, outcome, seen_edit_at, fence, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (connection_id, record_type, cs_id) DO UPDATE SET \
            crm_object = coalesce(EXCLUDED.crm_object, csql_links.crm_object), crm_id = coalesce(EXCLUDED.crm_id, csql_links.crm_id), \
            outcome = EXCLUDED.outcome, error = EXCLUDED.error, seen_edit_at = EXCLUDED.seen_edit_at, fence = EXCLUDED.fence, updated_at = now() \
         WHERE csql_links.fence < EXCLUDED.fence",
    )
    .bind(connection_id)
    .bind(s.record_type)
    .bind(s.cs_id)
    .bind(s.crm_object)
    .bind(s.crm_id)
    .bind(s.outcome)
    .bind(s.seen_edit_at)
    .bind(fence)
    .bind(s.error)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}
