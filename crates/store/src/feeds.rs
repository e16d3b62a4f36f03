//! Change-feed cursors and leases.
//!
//! A feed is polled by one producer replica at a time: the one holding its
//! lease. The lease token grows every time the lease changes hands, and a
//! cursor only moves under the token it was read with, so a replica that
//! lost its lease while paused cannot move the cursor (backwards or forwards)
//! when it wakes up.
//!
//! A connection's detection pass has a lease of its own, a row named
//! [`PASS`] among its feeds: the replica holding it is the only one that
//! reads the connection's feeds, so a pass counts the changes of all of them
//! when it picks the lane (R7).

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgExecutor, PgPool, Row};

/// The name of a connection's pass lease among its feeds' rows (no feed is
/// named with a `*`). [`all`] leaves it out.
pub const PASS: &str = "*pass";

/// A held lease on one feed, with the cursor it starts from.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: i64,
    pub cursor: Option<Value>,
}

/// Takes, or renews, `owner`'s lease on a feed for `ttl`. `None` while
/// another replica holds an unexpired lease.
pub async fn lease(pool: &PgPool, connection_id: &str, feed: &str, owner: &str, ttl: Duration) -> Result<Option<Lease>, sqlx::Error> {
    // One statement: a feed seen for the first time is created already
    // leased (token 1, as a first lease of an existing row would be). Every
    // pass leases every feed, so a second round trip here cost a pass six.
    let row = sqlx::query(
        "INSERT INTO feeds AS f (connection_id, feed, lease_owner, lease_token, lease_until) \
         VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4)) \
         ON CONFLICT (connection_id, feed) DO UPDATE SET \
            lease_token = CASE WHEN f.lease_owner = $3 AND f.lease_until > now() THEN f.lease_token ELSE f.lease_token + 1 END, \
            lease_owner = $3, \
            lease_until = now() + make_interval(secs => $4) \
         WHERE f.lease_owner IS NULL OR f.lease_owner = $3 OR f.lease_until < now() \
         RETURNING lease_token, cursor",
    )
    .bind(connection_id)
    .bind(feed)
    .bind(owner)
    .bind(ttl.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Lease { token: r.get("lease_token"), cursor: r.get("cursor") }))
}

/// The stored cursors of the given connections' feeds (the pass leases
/// left out), in one statement: a feed never read has no row. Reading
/// them takes no lease and writes nothing, so every replica may ask.
pub async fn cursors(pool: &PgPool, connection_ids: &[String]) -> Result<Vec<(String, String, Option<Value>)>, sqlx::Error> {
    sqlx::query_as("SELECT connection_id, feed, cursor FROM feeds WHERE connection_id = ANY($1) AND feed <> $2")
        .bind(connection_ids)
        .bind(PASS)
        .fetch_all(pool)
        .await
}

/// What a confirmed page held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Changes published.
    pub published: i64,
    /// Echoes of the engine's own writes, dropped.
    pub suppressed: i64,
    /// The page went to the batch lane.
    pub batch: bool,
}

/// Moves the cursor after a page was confirmed by the broker, counting what
/// was published (and to which lane) and what was dropped as the engine's
/// own writes. Returns false if the lease was lost meanwhile, or the
/// connection was paused (nothing is changed then): a paused connection's
/// cursors hold still, and a page published as the pause began is read
/// again after the resume (its messages are held back meanwhile, and
/// handled twice at worst, which every stage is idempotent to).
pub async fn advance(
    pool: &PgPool,
    connection_id: &str,
    feed: &str,
    owner: &str,
    token: i64,
    cursor: &Value,
    counts: Counts,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE feeds SET cursor = $5, published = published + $6, suppressed = suppressed + $7, \
            published_batch = published_batch + CASE WHEN $8 THEN $6 ELSE 0 END, polled_at = now(), \
            last_published_at = CASE WHEN $6 > 0 THEN now() ELSE last_published_at END \
         WHERE connection_id = $1 AND feed = $2 AND lease_owner = $3 AND lease_token = $4 \
           AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.id = $1 AND c.paused_at IS NOT NULL)",
    )
    .bind(connection_id)
    .bind(feed)
    .bind(owner)
    .bind(token)
    .bind(cursor)
    .bind(counts.published)
    .bind(counts.suppressed)
    .bind(counts.batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up `owner`'s leases (on shutdown), so another replica takes over at
/// once instead of after the lease expires.
pub async fn release_all(pool: &PgPool, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE feeds SET lease_until = now() - interval '1 second' WHERE lease_owner = $1").bind(owner).execute(pool).await?;
    Ok(())
}

/// A feed's state, for status and for waiting until the pipeline is idle.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedState {
    pub connection_id: String,
    pub feed: String,
    pub cursor: Option<Value>,
    pub lease_owner: Option<String>,
    pub published: i64,
    pub suppressed: i64,
    /// When the feed last published a change (migration 0017).
    pub last_published_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Changes every connection's feeds published to the batch lane, in one
/// statement (connections without feeds are left out).
pub async fn published_batch_all<'e>(e: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT connection_id, coalesce(sum(published_batch), 0)::bigint FROM feeds GROUP BY connection_id").fetch_all(e).await
}

pub async fn all(pool: &PgPool, connection_id: &str) -> Result<Vec<FeedState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection_id, feed, cursor, lease_owner, published, suppressed, last_published_at FROM feeds \
         WHERE connection_id = $1 AND feed <> $2 ORDER BY feed",
    )
    .bind(connection_id)
    .bind(PASS)
    .fetch_all(pool)
    .await
}
