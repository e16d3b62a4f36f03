//! Keeps the planner's statistics on the engine's fast-growing tables
//! current while a first sync fills them.
//!
//! A first sync fills `identities` and `audit_log` from empty at thousands
//! of rows a second, and autovacuum analyzes a table at most once per
//! naptime (a minute by default). Until a table's first ANALYZE the planner
//! has no column statistics at all and takes `connection_id = $1` to match
//! 0.5% of the rows, when a deployment's one connection holds all of them.
//! In a 20,000-pair backfill (10 s) that made the identity lookup read the
//! whole connection and hash-join it with its keys in 228 of 372 calls
//! (6 to 49 ms each, against 1.6 ms by key), the applier's identity update
//! do the same, and the redelivery check hash every entry of its stage in
//! 206 of 210 calls (9 ms against 0.4). Statements can be written to resist
//! bad estimates only so far (PostgreSQL has no plan hints); the statistics
//! themselves are the fix.
//!
//! So the matcher and the applier look at the tables' change counters every
//! few seconds and analyze a table once it has changed by as many rows as
//! it holds (at least [`MIN_CHANGES`]): a handful of ANALYZEs over a
//! backfill, none at a steady pace that autovacuum keeps up with. A
//! transaction-scoped advisory lock lets one replica do it while the
//! others skip, and only tables the engine's role owns are considered
//! (ANALYZE skips others with a warning).

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};
use tokio_util::sync::CancellationToken;

/// The engine's tables that grow with the number of people synced. Not
/// `mirror_outbox`: a queue, whose rows are deleted as fast as they come,
/// changes by more than it holds all the time, and analyzing it (its dead
/// rows included) cost 170 ms each time, six times in a 30,000-pair
/// backfill, for plans that are right for a small table anyway.
pub const GROWING: &[&str] = &["identities", "audit_log", "csql_links", "sync_errors"];

/// Fewer changes than this never call for an ANALYZE of our own: small
/// tables plan well enough without statistics.
pub const MIN_CHANGES: i64 = 1_000;

/// How often the change counters are read.
const EVERY: Duration = Duration::from_secs(2);

/// Analyzes each of `tables` that has changed by as many rows as it holds
/// (and by at least `min_changes`) since it was last analyzed, by anyone.
/// Returns the tables analyzed; one another replica is analyzing is left
/// to it.
pub async fn analyze_grown(pool: &PgPool, tables: &[&str], min_changes: i64) -> Result<Vec<String>, sqlx::Error> {
    // The counters are the statistics system's (flushed by each backend
    // about once a second), so a table can be analyzed a moment late but
    // never missed.
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() AND s.relname = ANY($1) \
           AND pg_has_role(current_user, c.relowner, 'MEMBER') \
           AND s.n_mod_since_analyze >= greatest($2, s.n_live_tup) \
         ORDER BY s.relname",
    )
    .bind(tables)
    .bind(min_changes)
    .fetch_all(pool)
    .await?;
    let mut analyzed = Vec::new();
    for table in grown {
        let mut tx = pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('crmsync.analyze.' || $1))")
            .bind(&table)
            .fetch_one(&mut *tx)
            .await?;
        if mine {
            // The name is one the catalog matched against the caller's
            // list, quoted as an identifier all the same.
            let analyze = format!("ANALYZE \"{}\"", table.replace('"', "\"\""));
            sqlx::query(AssertSqlSafe(analyze)).execute(&mut *tx).await?;
            analyzed.push(table);
        }
        tx.commit().await?;
    }
    Ok(analyzed)
}

/// Runs [`analyze_grown`] on [`GROWING`] every few seconds until
/// `shutdown`. A failure is logged and tried again on the next round: the
/// statistics only make plans better, nothing waits for them.
pub async fn keep_current(pool: PgPool, shutdown: CancellationToken) {
    loop {
        match analyze_grown(&pool, GROWING, MIN_CHANGES).await {
            Ok(tables) if !tables.is_empty() => tracing::debug!(?tables, "analyzed tables that grew"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot refresh the planner's statistics; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
