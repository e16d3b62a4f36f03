//! The batch lane's backlog and its per-connection lanes (migration 0018):
//! the applier takes batch-lane records in from the shared queue
//! ([`enqueue`]), and drains each connection's lane at its budget, one
//! replica per lane at a time by lease ([`claim_due`], [`next_rows`],
//! [`finish`], [`release`]).
//!
//! Every statement touches one lane or only the lanes with work (a partial
//! index), so an idle deployment costs a query or two a second per applier
//! replica, however many connections it has.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// One record waiting in a lane.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub command_id: Uuid,
    /// `command`, `mirror` or `csql`.
    pub kind: String,
    pub body: serde_json::Value,
    pub batch_id: Uuid,
    /// Whether the audit log already shows it applied: a message taken in
    /// twice, or a chunk applied by a replica that died before removing it.
    pub applied: bool,
}

/// A record to take in.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub command_id: Uuid,
    pub kind: &'static str,
    pub body: serde_json::Value,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Takes a message's records into the connection's lane, in their order;
/// records already there (a redelivered message) are passed over. Returns
/// how many were added. One transaction: the caller acks the message once
/// this returns (I1).
pub async fn enqueue(pool: &PgPool, connection_id: &str, batch_id: Uuid, rows: Vec<NewRow>) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.command_id).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    // Moved, not cloned: a backfill's message holds thousands of bodies.
    let bodies: Vec<serde_json::Value> = rows.into_iter().map(|r| r.body).collect();
    let mut tx = pool.begin().await?;
    // `WITH ORDINALITY` keeps the message's order in the ids handed out.
    let added = sqlx::query(
        "INSERT INTO batch_backlog (connection_id, command_id, kind, body, batch_id) \
         SELECT $1, r.command_id, r.kind, r.body, $2 \
         FROM unnest($3::uuid[], $4::text[], $5::jsonb[]) WITH ORDINALITY AS r(command_id, kind, body, n) ORDER BY r.n \
         ON CONFLICT (connection_id, command_id) DO NOTHING",
    )
    .bind(connection_id)
    .bind(batch_id)
    .bind(&ids)
    .bind(&kinds)
    .bind(&bodies)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if added > 0 {
        sqlx::query(
            "INSERT INTO batch_lanes (connection_id, queued) VALUES ($1, $2) \
             ON CONFLICT (connection_id) DO UPDATE SET queued = batch_lanes.queued + excluded.queued",
        )
        .bind(connection_id)
        .bind(added as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(added)
}

/// Leases up to `limit` lanes that have records and whose budget allows
/// the next chunk now, the longest due first, and that no live lease holds.
/// `SKIP LOCKED`: replicas claiming at once take different lanes.
pub async fn claim_due(pool: &PgPool, owner: &str, lease: Duration, limit: usize) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE batch_lanes SET leased_by = $1, leased_until = now() + make_interval(secs => $2) \
         WHERE connection_id IN ( \
             SELECT connection_id FROM batch_lanes \
             WHERE queued > 0 AND due_at <= now() AND (leased_until IS NULL OR leased_until < now()) \
             ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING connection_id",
    )
    .bind(owner)
    .bind(secs(lease))
    .bind(limit as i64)
    .fetch_all(pool)
    .await
}

/// Renews every lease `owner` holds, in one statement: a live replica
/// keeps its lanes for as long as it works them.
pub async fn renew(pool: &PgPool, owner: &str, lease: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("UPDATE batch_lanes SET leased_until = now() + make_interval(secs => $2) WHERE leased_by = $1")
        .bind(owner)
        .bind(secs(lease))
        .execute(pool)
        .await?
        .rows_affected())
}

/// How long until the next lane not leased now is due (`None`: no lane has
/// records, or every lane with records is leased).
pub async fn next_due(pool: &PgPool) -> Result<Option<Duration>, sqlx::Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT greatest(extract(epoch FROM min(due_at) - now()), 0)::float8 FROM batch_lanes \
         WHERE queued > 0 AND (leased_until IS NULL OR leased_until < now())",
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(Duration::from_secs_f64))
}

/// The next `limit` records of a lane after `after` (the last one this
/// lease handed out), in arrival order, each with whether the audit log
/// already shows it applied.
///
/// The audit probe is in the same statement, one per row returned: a
/// scalar subquery in the select list is never flattened into a join, so
/// it stays one probe of `audit_log_once` per row whatever the statistics
/// say (see `audit::finished` for what a join did), and it runs only for
/// the rows the `LIMIT` lets through. A separate probe cost a second round
/// trip and a planning per chunk, at a chunk of 5 records a fifth of the
/// drain's statements.
pub async fn next_rows<'e>(e: impl PgExecutor<'e>, connection_id: &str, after: i64, limit: usize) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.id, b.command_id, b.kind, b.body, b.batch_id, \
                (SELECT true FROM audit_log a \
                 WHERE a.connection_id = b.connection_id AND a.change_id = b.command_id AND a.stage = 'apply' LIMIT 1) \
                IS NOT NULL AS applied \
         FROM batch_backlog b WHERE b.connection_id = $1 AND b.id > $2 ORDER BY b.id LIMIT $3",
    )
    .bind(connection_id)
    .bind(after)
    .bind(limit as i64)
    .fetch_all(e)
    .await
}

/// Removes records that are done (applied, found already applied, or
/// dead-lettered) from their lane, and counts them off its `queued`: one
/// statement, so one round trip and no transaction of its own.
pub async fn finish(pool: &PgPool, connection_id: &str, ids: &[i64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let removed: i64 = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM batch_backlog WHERE connection_id = $1 AND id = ANY($2) RETURNING 1), \
              n AS (SELECT count(*) AS n FROM gone), \
              counted AS (UPDATE batch_lanes SET queued = greatest(queued - (SELECT n FROM n), 0) \
                          WHERE connection_id = $1 AND (SELECT n FROM n) > 0) \
         SELECT n FROM n",
    )
    .bind(connection_id)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok(removed as u64)
}

/// Gives a lane's lease up, due again in `due_in` (when its budget allows
/// the next chunk, or after a back-off), if `owner` still holds it.
pub async fn release(pool: &PgPool, connection_id: &str, owner: &str, due_in: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batch_lanes SET leased_by = NULL, leased_until = NULL, due_at = now() + make_interval(secs => $3) \
         WHERE connection_id = $1 AND leased_by = $2",
    )
    .bind(connection_id)
    .bind(owner)
    .bind(secs(due_in))
    .execute(pool)
    .await?;
    Ok(())
}

/// Records waiting in one connection's lane.
pub async fn queued<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<i64, sqlx::Error> {
    let n: Option<i64> =
        sqlx::query_scalar("SELECT queued FROM batch_lanes WHERE connection_id = $1").bind(connection_id).fetch_optional(e).await?;
    Ok(n.unwrap_or(0))
}

/// Records waiting in every lane that has any.
pub async fn queued_all<'e>(e: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT connection_id, queued FROM batch_lanes WHERE queued > 0 ORDER BY connection_id").fetch_all(e).await
}

/// Forgets a connection's lane and its records (the connection is gone;
/// the caller has dead-lettered what it wants kept).
pub async fn drop_lane(pool: &PgPool, connection_id: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let removed =
        sqlx::query("DELETE FROM batch_backlog WHERE connection_id = $1").bind(connection_id).execute(&mut *tx).await?.rows_affected();
    sqlx::query("DELETE FROM batch_lanes WHERE connection_id = $1").bind(connection_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(removed)
}
