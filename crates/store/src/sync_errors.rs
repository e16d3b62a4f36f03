//! Sync errors (I6): named, parked and kept. One open row per record and
//! category; a repeat counts an occurrence instead of adding a row; a record
//! that later syncs cleanly resolves its open errors of that stage.

use crmsync_domain::SyncIssue;
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewSyncError {
    pub stage: &'static str,
    pub object: String,
    pub record_id: String,
    pub issue: SyncIssue,
    pub change_id: Option<Uuid>,
    /// The record as detected, to retry it later.
    pub payload: Option<Value>,
}

pub async fn record_many<'e>(e: impl PgExecutor<'e>, connection_id: &str, errors: &[NewSyncError]) -> Result<(), sqlx::Error> {
    if errors.is_empty() {
        return Ok(());
    }
    // One row per (object, record, category) in a statement: ON CONFLICT
    // cannot touch the same row twice.
    let mut seen = std::collections::HashSet::new();
    let errors: Vec<&NewSyncError> =
        errors.iter().rev().filter(|x| seen.insert((x.object.clone(), x.record_id.clone(), x.issue.category))).collect();
    for x in &errors {
        metrics::counter!("crmsync_sync_errors_total", "category" => x.issue.category.as_str()).increment(1);
    }
    let stages: Vec<&str> = errors.iter().map(|x| x.stage).collect();
    let objects: Vec<&str> = errors.iter().map(|x| x.object.as_str()).collect();
    let ids: Vec<&str> = errors.iter().map(|x| x.record_id.as_str()).collect();
    let cats: Vec<&str> = errors.iter().map(|x| x.issue.category.as_str()).collect();
    let reasons: Vec<&str> = errors.iter().map(|x| x.issue.reason.as_str()).collect();
    let changes: Vec<Option<Uuid>> = errors.iter().map(|x| x.change_id).collect();
    let payloads: Vec<Option<Value>> = errors.iter().map(|x| x.payload.clone()).collect();
    sqlx::query(
        "INSERT INTO sync_errors (connection_id, stage, object, record_id, category, reason, change_id, payload) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[], $8::jsonb[]) \
         ON CONFLICT (connection_id, object, record_id, category) WHERE status = 'open' DO UPDATE SET \
            occurrences = sync_errors.occurrences + 1, last_seen_at = now(), reason = EXCLUDED.reason, \
            stage = EXCLUDED.stage, change_id = EXCLUDED.change_id, payload = EXCLUDED.payload",
    )
    .bind(connection_id)
    .bind(stages)
    .bind(objects)
    .bind(ids)
    .bind(cats)
    .bind(reasons)
    .bind(changes)
    .bind(payloads)
    .execute(e)
    .await?;
    Ok(())
}

/// Resolves the open errors a stage raised for records that have now synced.
pub async fn resolve<'e>(
    e: impl PgExecutor<'e>,
    connection_id: &str,
    stage: &str,
    records: &[(String, String)],
) -> Result<u64, sqlx::Error> {
    if records.is_empty() {
        return Ok(0);
    }
    let objects: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    let ids: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    let done = sqlx::query(
        "UPDATE sync_errors SET status = 'resolved', closed_at = now() \
         WHERE connection_id = $1 AND stage = $2 AND status = 'open' \
           AND (object, record_id) IN (SELECT * FROM unnest($3::text[], $4::text[]))",
    )
    .bind(connection_id)
    .bind(stage)
    .bind(objects)
    .bind(ids)
    .execute(e)
    .await?;
    Ok(done.rows_affected())
}

/// Open errors per category.
pub async fn open_counts<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = crate::figures::open_errors(e, &[connection_id.to_owned()]).await?;
    Ok(rows.into_iter().map(|(_, category, n)| (category, n)).collect())
}

/// An open error as listed for an operator.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct SyncErrorRow {
    pub id: i64,
    pub stage: String,
    pub object: String,
    pub record_id: String,
    pub category: String,
    pub reason: String,
    pub occurrences: i32,
}

pub async fn list_open<'e>(e: impl PgExecutor<'e>, connection_id: &str, limit: i64) -> Result<Vec<SyncErrorRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, stage, object, record_id, category, reason, occurrences FROM sync_errors \
         WHERE connection_id = $1 AND status = 'open' ORDER BY category, object, record_id LIMIT $2",
    )
    .bind(connection_id)
    .bind(limit)
    .fetch_all(e)
    .await
}

/// The records (object, id) that have an open error.
pub async fn open_records<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT DISTINCT object, record_id FROM sync_errors WHERE connection_id = $1 AND status = 'open'")
        .bind(connection_id)
        .fetch_all(e)
        .await
}

/// Parks a message that could not be read at all (I6) as a sync error under
/// the connection its headers name. A message naming no known connection is
/// only dead-lettered by the caller; a database failure here is logged, not
/// raised: the message goes to the dead-letter queue either way.
pub async fn park_unreadable(pool: &sqlx::PgPool, connection_id: &str, stage: &'static str, message_id: &str, reason: &str) {
    let parked = async {
        let known: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM connections WHERE id = $1").bind(connection_id).fetch_optional(pool).await?;
        if known.is_none() {
            return Ok(false);
        }
        let error = NewSyncError {
            stage,
            object: "message".into(),
            record_id: message_id.to_owned(),
            issue: SyncIssue::new(crmsync_domain::SyncErrorCategory::MalformedMessage, reason),
            change_id: None,
            payload: None,
        };
        record_many(pool, connection_id, &[error]).await.map(|()| true)
    };
    match parked.await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(connection_id, stage, "unreadable message names no known connection; dead-lettered only"),
        Err(e) => tracing::warn!(error = %e, stage, "could not park an unreadable message as a sync error"),
    }
}

/// Which sync errors an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub connection_id: Option<String>,
    pub category: Option<String>,
    pub object: Option<String>,
    pub record_id: Option<String>,
    /// `None` for every status.
    pub status: Option<String>,
    pub ids: Vec<i64>,
}

/// A sync error with everything kept about it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct SyncErrorDetail {
    pub id: i64,
    pub connection_id: String,
    pub stage: String,
    pub object: String,
    pub record_id: String,
    pub category: String,
    pub reason: String,
    pub change_id: Option<Uuid>,
    pub payload: Option<Value>,
    pub status: String,
    pub occurrences: i32,
    pub first_seen_at: chrono::DateTime<chrono::Utc>,
    pub last_seen_at: chrono::DateTime<chrono::Utc>,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The errors matching `filter`, oldest first, at most `limit` (all when
/// `None`).
pub async fn find<'e>(e: impl PgExecutor<'e>, filter: &Filter, limit: Option<i64>) -> Result<Vec<SyncErrorDetail>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, connection_id, stage, object, record_id, category, reason, change_id, payload, status, occurrences, \
                first_seen_at, last_seen_at, closed_at \
         FROM sync_errors \
         WHERE ($1::text IS NULL OR connection_id = $1) AND ($2::text IS NULL OR category = $2) \
           AND ($3::text IS NULL OR object = $3) AND ($4::text IS NULL OR record_id = $4) \
           AND ($5::text IS NULL OR status = $5) AND (cardinality($6::bigint[]) = 0 OR id = ANY($6)) \
         ORDER BY id LIMIT $7",
    )
    .bind(&filter.connection_id)
    .bind(&filter.category)
    .bind(&filter.object)
    .bind(&filter.record_id)
    .bind(&filter.status)
    .bind(&filter.ids)
    .bind(limit.unwrap_or(i64::MAX))
    .fetch_all(e)
    .await
}

/// How many errors match `filter`, per connection and category.
pub async fn count_by_category<'e>(e: impl PgExecutor<'e>, filter: &Filter) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection_id, category, count(*) FROM sync_errors \
         WHERE ($1::text IS NULL OR connection_id = $1) AND ($2::text IS NULL OR category = $2) \
           AND ($3::text IS NULL OR object = $3) AND ($4::text IS NULL OR record_id = $4) \
           AND ($5::text IS NULL OR status = $5) AND (cardinality($6::bigint[]) = 0 OR id = ANY($6)) \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(&filter.connection_id)
    .bind(&filter.category)
    .bind(&filter.object)
    .bind(&filter.record_id)
    .bind(&filter.status)
    .bind(&filter.ids)
    .fetch_all(e)
    .await
}

/// Closes open errors with `status` (`retried` or `dismissed`); returns how
/// many were closed. Errors no longer open are left as they are, and so are
/// errors seen again after `seen_before`: a retried record that already
/// failed again keeps its error open.
pub async fn close<'e>(
    e: impl PgExecutor<'e>,
    ids: &[i64],
    status: &str,
    seen_before: chrono::DateTime<chrono::Utc>,
) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("UPDATE sync_errors SET status = $2, closed_at = now() WHERE id = ANY($1) AND status = 'open' AND last_seen_at <= $3")
            .bind(ids)
            .bind(status)
            .bind(seen_before)
            .execute(e)
            .await?;
    Ok(done.rows_affected())
}
