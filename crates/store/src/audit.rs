//! The audit log: one row per change and stage that finished it (applied,
//! created, left pending, skipped, rejected), with the fields written, their
//! values before and after and the record's trace id (migration 0016, for
//! the console's record history); and its running tallies (migration
//! 0012), which the figures that count finished changes read instead of
//! the log.

use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub change_id: Uuid,
    pub stage: &'static str,
    pub identity_id: Option<Uuid>,
    pub source_side: &'static str,
    pub source_object: String,
    pub source_id: String,
    pub action: String,
    /// `{"ma": [field...], "crm": [field...]}`
    pub writes: Value,
    pub detail: Option<String>,
    pub lane: &'static str,
    /// The values behind the entry, for the record's history (migration
    /// 0016): `{"detected": {field: [before, seen]}, "ma" | "crm": {field:
    /// [before, written]}}`. `None` where the stage changed no field.
    pub field_values: Option<Value>,
    /// The W3C trace id the record carries through the tiers.
    pub trace_id: Option<String>,
}

/// Inserts entries; an entry already logged (a redelivery) is left alone.
/// A trigger adds the entries inserted to the tallies, in the same
/// transaction (migration 0012).
pub async fn insert_many<'e>(e: impl PgExecutor<'e>, connection_id: &str, entries: &[AuditEntry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    for a in entries {
        let tier = match a.stage {
            "apply" => "applier",
            "match" => "matcher",
            _ => "producer",
        };
        metrics::counter!("crmsync_records_total", "tier" => tier, "stage" => a.stage, "outcome" => a.action.clone()).increment(1);
    }
    let col = |f: fn(&AuditEntry) -> String| entries.iter().map(f).collect::<Vec<String>>();
    let change_ids: Vec<Uuid> = entries.iter().map(|a| a.change_id).collect();
    let identity_ids: Vec<Option<Uuid>> = entries.iter().map(|a| a.identity_id).collect();
    let writes: Vec<Value> = entries.iter().map(|a| a.writes.clone()).collect();
    let details: Vec<Option<String>> = entries.iter().map(|a| a.detail.clone()).collect();
    let values: Vec<Option<Value>> = entries.iter().map(|a| a.field_values.clone()).collect();
    let traces: Vec<Option<String>> = entries.iter().map(|a| a.trace_id.clone()).collect();
    sqlx::query(
        "INSERT INTO audit_log (connection_id, change_id, stage, identity_id, source_side, source_object, source_id, action, writes, detail, lane, field_values, trace_id) \
         SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::jsonb[], $13::text[]) \
         ON CONFLICT (connection_id, change_id, stage) DO NOTHING",
    )
    .bind(connection_id)
    .bind(change_ids)
    .bind(col(|a| a.stage.to_owned()))
    .bind(identity_ids)
    .bind(col(|a| a.source_side.to_owned()))
    .bind(col(|a| a.source_object.clone()))
    .bind(col(|a| a.source_id.clone()))
    .bind(col(|a| a.action.clone()))
    .bind(writes)
    .bind(details)
    .bind(col(|a| a.lane.to_owned()))
    .bind(values)
    .bind(traces)
    .execute(e)
    .await?;
    Ok(())
}

/// How many detected changes have been finished by some stage.
pub async fn finished_changes<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(sum(finished), 0)::bigint FROM change_tallies WHERE connection_id = $1")
        .bind(connection_id)
        .fetch_one(e)
        .await
}

/// One lane's tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct LaneTally {
    /// Changes finished, by any stage.
    pub finished: i64,
    /// Apply-stage entries.
    pub applied: i64,
    /// Apply-stage entries of the last hour, to the minute (the minute an
    /// hour ago counts whole).
    pub applied_last_hour: i64,
}

/// One lane's tallies, from the first entry on.
pub async fn lane_tally<'e>(e: impl PgExecutor<'e>, connection_id: &str, lane: &str) -> Result<LaneTally, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(sum(finished), 0)::bigint AS finished, coalesce(sum(applied), 0)::bigint AS applied, \
                coalesce(sum(applied) FILTER (WHERE minute >= date_trunc('minute', now() - interval '1 hour')), 0)::bigint AS applied_last_hour \
         FROM change_tallies WHERE connection_id = $1 AND lane = $2",
    )
    .bind(connection_id)
    .bind(lane)
    .fetch_one(e)
    .await
}

/// Every connection's tallies of one lane, in one statement (connections
/// without any are left out: all zeros).
pub async fn lane_tallies<'e>(e: impl PgExecutor<'e>, lane: &str) -> Result<Vec<(String, LaneTally)>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT connection_id, coalesce(sum(finished), 0)::bigint, coalesce(sum(applied), 0)::bigint, \
                coalesce(sum(applied) FILTER (WHERE minute >= date_trunc('minute', now() - interval '1 hour')), 0)::bigint \
         FROM change_tallies WHERE lane = $1 GROUP BY connection_id",
    )
    .bind(lane)
    .fetch_all(e)
    .await?;
    Ok(rows.into_iter().map(|(c, finished, applied, applied_last_hour)| (c, LaneTally { finished, applied, applied_last_hour })).collect())
}

/// A connection's recent activity, from the tallies: apply-stage entries
/// of the immediate lane in the last five whole minutes and this one, and
/// the minute of the last apply-stage entry of any lane (to the minute:
/// the tallies keep no finer time, and reading the log itself would scan
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Activity {
    pub immediate_applied_recently: i64,
    pub last_write_minute: Option<chrono::DateTime<chrono::Utc>>,
}

/// Folds the tallies of minutes older than two hours (no figure reads them
/// by minute any more) into one row per connection and lane, so the table
/// holds a couple of hours of minutes whatever the log's age. Concurrent
/// folds are safe: the second waits on the rows the first deletes, and
/// finds them gone.
pub async fn fold_tallies<'e>(e: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH old AS ( \
           DELETE FROM change_tallies WHERE minute > '-infinity' AND minute < now() - interval '2 hours' \
           RETURNING connection_id, lane, finished, applied) \
         INSERT INTO change_tallies AS t (connection_id, lane, minute, backend, finished, applied) \
         SELECT connection_id, lane, '-infinity', 0, sum(finished), sum(applied) FROM old GROUP BY 1, 2 ORDER BY 1, 2 \
         ON CONFLICT (connection_id, lane, minute, backend) DO UPDATE SET finished = t.finished + excluded.finished, applied = t.applied + excluded.applied",
    )
    .execute(e)
    .await?;
    Ok(())
}

/// Counts per action.
pub async fn action_counts<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT action, count(*) FROM audit_log WHERE connection_id = $1 GROUP BY action ORDER BY action")
        .bind(connection_id)
        .fetch_all(e)
        .await
}

/// Which of these changes a stage has already finished (a redelivered
/// message's records, say).
pub async fn finished<'e>(e: impl PgExecutor<'e>, connection_id: &str, stage: &str, change_ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    // One index probe per change, whatever the statistics say. Written as
    // `change_id = ANY($3)`, the planner (with statistics from while the
    // table was small) read every entry of the connection and stage from
    // the index and filtered them: 7.6 ms for 100 changes at 31,000
    // entries, against 0.5 ms. Written as a plain join, it hash-joined the
    // keys with a scan of every entry of the stage until the log held some
    // 50,000 entries: 71 of 155 calls in a 30,000-pair backfill, 4 to 10 ms
    // each. The `LIMIT` keeps the lateral subquery from being flattened
    // into a join, so each key is one probe of `audit_log_once`.
    sqlx::query_scalar(
        "SELECT k.change_id FROM unnest($3::uuid[]) AS k(change_id) \
         CROSS JOIN LATERAL (SELECT 1 FROM audit_log a \
                             WHERE a.connection_id = $1 AND a.change_id = k.change_id AND a.stage = $2 LIMIT 1) done",
    )
    .persistent(false) // planned for its own keys: see `identities::find`
    .bind(connection_id)
    .bind(stage)
    .bind(change_ids)
    .fetch_all(e)
    .await
}

/// One entry of an identity's history, as the console's record page shows
/// it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct HistoryEntry {
    pub at: chrono::DateTime<chrono::Utc>,
    pub change_id: Uuid,
    pub stage: String,
    pub source_side: String,
    pub source_object: String,
    pub source_id: String,
    pub action: String,
    /// `{"ma": [field...], "crm": [field...]}`: the fields written.
    pub writes: Value,
    pub detail: Option<String>,
    pub lane: String,
    /// Before and after of what was detected and written (see
    /// [`AuditEntry::field_values`]); null for entries of earlier releases.
    pub field_values: Option<Value>,
    pub trace_id: Option<String>,
}

/// What the engine did for one identity, newest first, at most `limit`
/// entries (by the identity's own index).
pub async fn history<'e>(
    e: impl PgExecutor<'e>,
    connection_id: &str,
    identity_id: Uuid,
    limit: i64,
) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, change_id, stage, source_side, source_object, source_id, action, writes, detail, lane, field_values, trace_id FROM audit_log \
         WHERE identity_id = $1 AND connection_id = $2 ORDER BY at DESC, id DESC LIMIT $3",
    )
    .bind(identity_id)
    .bind(connection_id)
    .bind(limit)
    .fetch_all(e)
    .await
}
