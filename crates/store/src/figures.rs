//! The figures `status` and the console's overview show, for many
//! connections at once: each statement reads every connection asked for
//! and groups by connection, so a deployment of a thousand connections
//! costs the same handful of statements as one (issue 29: `status` asked
//! about ten things per connection, one connection after another).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::audit::Activity;
use crate::feeds::{FeedState, PASS};

/// Identities per connection and state, with how many of them have their
/// prospect in the MA's recycle bin: `(connection, state, count, recycled)`.
pub async fn identity_counts<'e>(e: impl PgExecutor<'e>, ids: &[String]) -> Result<Vec<(String, String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection_id, status, count(*), count(*) FILTER (WHERE ma_recycled) FROM identities \
         WHERE connection_id = ANY($1) GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(ids)
    .fetch_all(e)
    .await
}

/// Identities whose creation was refused, per connection: waiting to
/// create the CRM lead (`creating_crm`) or the prospect (`creating_ma`)
/// with an open sync error on the record that asked for it (the prospect;
/// the lead or contact). They are not being created: someone must act on
/// the error first.
pub async fn creations_refused<'e>(e: impl PgExecutor<'e>, ids: &[String]) -> Result<Vec<(String, i64)>, sqlx::Error> {
    // A CRM record's error names it by the id its source gave, 18 or 15
    // characters; identities keep the 18-character form.
    sqlx::query_as(
        "SELECT i.connection_id, count(*) FROM identities i \
         WHERE i.connection_id = ANY($1) AND i.status IN ('creating_crm', 'creating_ma') \
           AND EXISTS (SELECT 1 FROM sync_errors e WHERE e.connection_id = i.connection_id AND e.status = 'open' \
                 AND CASE WHEN i.status = 'creating_crm' THEN e.object = 'prospect' AND e.record_id = i.prospect_id::text \
                          ELSE e.object = i.crm_object AND e.record_id IN (i.crm_id, left(i.crm_id, 15)) END) \
         GROUP BY 1",
    )
    .bind(ids)
    .fetch_all(e)
    .await
}

/// The feeds of these connections (not the pass bookkeeping), by
/// connection and feed.
pub async fn feeds<'e>(e: impl PgExecutor<'e>, ids: &[String]) -> Result<Vec<FeedState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection_id, feed, cursor, lease_owner, published, suppressed, last_published_at FROM feeds \
         WHERE connection_id = ANY($1) AND feed <> $2 ORDER BY connection_id, feed",
    )
    .bind(ids)
    .bind(PASS)
    .fetch_all(e)
    .await
}

/// Each connection's recent activity (see [`Activity`]), from the tallies.
pub async fn activity<'e>(e: impl PgExecutor<'e>, ids: &[String]) -> Result<Vec<(String, Activity)>, sqlx::Error> {
    let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT connection_id, \
                coalesce(sum(applied) FILTER (WHERE lane = 'immediate' AND minute >= date_trunc('minute', now() - interval '5 minutes')), 0)::bigint, \
                max(minute) FILTER (WHERE applied > 0 AND minute > '-infinity') \
         FROM change_tallies WHERE connection_id = ANY($1) GROUP BY 1",
    )
    .bind(ids)
    .fetch_all(e)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, immediate_applied_recently, last_write_minute)| (c, Activity { immediate_applied_recently, last_write_minute }))
        .collect())
}

/// CSQLs per connection and outcome.
pub async fn csql_outcomes<'e>(e: impl PgExecutor<'e>, ids: &[String]) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT connection_id, outcome, count(*) FROM csql_links WHERE connection_id = ANY($1) GROUP BY 1, 2 ORDER BY 1, 2")
        .bind(ids)
        .fetch_all(e)
        .await
}

/// Open sync errors per connection and category, the most frequent
/// categories first.
pub async fn open_errors<'e>(e: impl PgExecutor<'e>, ids: &[String]) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT connection_id, category, count(*) FROM sync_errors WHERE connection_id = ANY($1) AND status = 'open' \
         GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2",
    )
    .bind(ids)
    .fetch_all(e)
    .await
}
