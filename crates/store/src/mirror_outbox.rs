//! Mirrors waiting to be reconciled after an identity changed, kept in
//! PostgreSQL so the work survives a crash (a transactional outbox).

use sqlx::{PgExecutor, PgPool};

/// A queued key and the version of its entry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Queued {
    pub connection_id: String,
    pub key: String,
    pub seq: i64,
}

/// Queues keys (again, if already queued: the entry's version moves).
pub async fn enqueue<'e>(e: impl PgExecutor<'e>, connection_id: &str, keys: &[String]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO mirror_outbox (connection_id, key) SELECT $1, k FROM unnest($2::text[]) k \
         ON CONFLICT (connection_id, key) DO UPDATE SET seq = nextval('mirror_outbox_seq'), queued_at = now()",
    )
    .bind(connection_id)
    .bind(keys)
    .execute(e)
    .await?;
    Ok(())
}

/// The entries for these keys as they are now.
pub async fn entries(pool: &PgPool, connection_id: &str, keys: &[String]) -> Result<Vec<Queued>, sqlx::Error> {
    sqlx::query_as("SELECT connection_id, key, seq FROM mirror_outbox WHERE connection_id = $1 AND key = ANY($2)")
        .persistent(false) // planned for its own keys: see `identities::find`
        .bind(connection_id)
        .bind(keys)
        .fetch_all(pool)
        .await
}

/// Entries queued longer ago than `older_than_ms`: left by a replica that
/// died or failed before reconciling them.
pub async fn stale(pool: &PgPool, older_than_ms: i64, limit: i64) -> Result<Vec<Queued>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection_id, key, seq FROM mirror_outbox WHERE queued_at < now() - make_interval(secs => $1 / 1000.0) \
         ORDER BY queued_at LIMIT $2",
    )
    .bind(older_than_ms as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Removes entries that were reconciled, unless queued again meanwhile.
pub async fn done(pool: &PgPool, entries: &[Queued]) -> Result<(), sqlx::Error> {
    // One statement for the lot: a backfill links thousands of identities
    // a message, and a round trip (and commit) per entry was the cost.
    let conns: Vec<&str> = entries.iter().map(|q| q.connection_id.as_str()).collect();
    let keys: Vec<&str> = entries.iter().map(|q| q.key.as_str()).collect();
    let seqs: Vec<i64> = entries.iter().map(|q| q.seq).collect();
    sqlx::query(
        "DELETE FROM mirror_outbox m USING unnest($1::text[], $2::text[], $3::bigint[]) AS d(connection_id, key, seq) \
         WHERE m.connection_id = d.connection_id AND m.key = d.key AND m.seq = d.seq",
    )
    .persistent(false) // planned for its own keys: see `identities::find`
    .bind(&conns)
    .bind(&keys)
    .bind(&seqs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Entries waiting for a connection.
pub async fn count(pool: &PgPool, connection_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM mirror_outbox WHERE connection_id = $1").bind(connection_id).fetch_one(pool).await
}
