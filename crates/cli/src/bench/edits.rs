//! Live edits at a fixed rate, and their latency from commit to commit:
//! what `crmsync bench latency` measures on one connection and the
//! isolation scenario of `crmsync bench connections` on several.
//!
//! Each edit writes a unique title (`lat-{label}-{seq}`: the prospect's job
//! title in the MA, or the lead's title in the CRM) as that system's admin
//! (a user, not the engine). Row triggers the benchmark installs record the
//! commit time of every such value on either side (`clock_timestamp()` in
//! the writing transaction), so the latency of an edit is the time between
//! its value's commit on one side and on the other, whatever process wrote
//! it. The triggers' `WHEN` clauses keep every other write (a backfill's
//! million rows) out of PL/pgSQL: they cost the measured writes, not the
//! load around them.

use std::time::Duration;

use crmsync_sandbox::ops::{Sandbox, System};
use serde::Serialize;
use sqlx::PgPool;

/// Which side the edits are made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Prospect edits synced to the CRM.
    MaToCrm,
    /// Lead edits synced to the MA.
    CrmToMa,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::MaToCrm => "MA → CRM",
            Direction::CrmToMa => "CRM → MA",
        }
    }

    /// The commit-log side names of the source and the target.
    pub(super) fn sides(self) -> (&'static str, &'static str) {
        match self {
            Direction::MaToCrm => ("ma", "crm"),
            Direction::CrmToMa => ("crm", "ma"),
        }
    }
}

/// Records the commit time of every `lat-` job title (MA) and title (CRM).
const TRIGGERS: &str = r"
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE bench.commits (side text NOT NULL, value text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.commits (side, value) VALUES (TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1]);
  RETURN NEW;
END $$;
CREATE TRIGGER bench_commit AFTER UPDATE ON ma.prospects FOR EACH ROW
  WHEN (NEW.job_title LIKE 'lat-%' AND NEW.job_title IS DISTINCT FROM OLD.job_title)
  EXECUTE FUNCTION bench.record('ma', 'job_title');
CREATE TRIGGER bench_commit AFTER UPDATE ON crm.leads FOR EACH ROW
  WHEN (NEW.title LIKE 'lat-%' AND NEW.title IS DISTINCT FROM OLD.title)
  EXECUTE FUNCTION bench.record('crm', 'title');
";

/// Installs the commit-time triggers (once per database).
pub(super) async fn install(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(TRIGGERS).execute(pool).await?;
    Ok(())
}

/// Removes the triggers and the commit log. Dropping a trigger locks its
/// table whole while the pipeline may still be writing both tables (a
/// backfill finishing): PostgreSQL can find a deadlock and end either
/// side, so the drop is tried again a few times (the pipeline retries its
/// own side as it always does).
pub(super) async fn remove(pool: &PgPool) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dropped = sqlx::raw_sql(
            "DROP TRIGGER IF EXISTS bench_commit ON ma.prospects; DROP TRIGGER IF EXISTS bench_commit ON crm.leads; \
             DROP SCHEMA IF EXISTS bench CASCADE;",
        )
        .execute(pool)
        .await;
        match dropped {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 10 => {
                crate::out::err_line(format_args!("  removing the bench's commit triggers (attempt {attempt}): {e}; trying again"));
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One record to edit, and the admin of its tenant who edits it.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub id: String,
    pub admin: String,
}

/// The source-side records of `tenants` whose email is `LIKE email_like`,
/// ordered so that consecutive edits go to different tenants.
pub(super) async fn targets(pool: &PgPool, direction: Direction, tenants: &[String], email_like: &str) -> anyhow::Result<Vec<Target>> {
    let (select, system) = match direction {
        Direction::MaToCrm => (
            "SELECT tenant, id::text FROM ma.prospects WHERE tenant = ANY($1) AND email LIKE $2 \
             ORDER BY row_number() OVER (PARTITION BY tenant ORDER BY id), tenant",
            System::Ma,
        ),
        Direction::CrmToMa => (
            "SELECT tenant, id FROM crm.leads WHERE tenant = ANY($1) AND email LIKE $2 \
             ORDER BY row_number() OVER (PARTITION BY tenant ORDER BY id), tenant",
            System::Crm,
        ),
    };
    let rows: Vec<(String, String)> = sqlx::query_as(select).bind(tenants).bind(email_like).fetch_all(pool).await?;
    let mut admins = std::collections::HashMap::new();
    for tenant in tenants {
        admins.insert(tenant.clone(), Sandbox::new(pool.clone(), tenant).admin(system).await?);
    }
    Ok(rows.into_iter().map(|(tenant, id)| Target { admin: admins[&tenant].clone(), id }).collect())
}

/// Edits `targets` round-robin at `rate` a second for `seconds`, from
/// `writers` database connections, each value `lat-{label}-{seq}`; returns
/// the number of edits committed.
pub(super) async fn offer(
    pool: &PgPool,
    direction: Direction,
    targets: &[Target],
    label: &str,
    rate: f64,
    seconds: f64,
    writers: usize,
) -> anyhow::Result<u64> {
    let update = match direction {
        Direction::MaToCrm => "UPDATE ma.prospects SET job_title = $1, last_modified_by = $2 WHERE id = $3::bigint",
        Direction::CrmToMa => "UPDATE crm.leads SET title = $1, last_modified_by = $2 WHERE id = $3",
    };
    anyhow::ensure!(!targets.is_empty(), "no records to edit");
    let targets = std::sync::Arc::new(targets.to_vec());
    let total = (rate * seconds).round() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(writers * 4);
    // The writers share one queue of due edits.
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (rx, pool, targets, label) = (rx.clone(), pool.clone(), targets.clone(), label.to_owned());
        tasks.spawn(async move {
            let mut done = 0u64;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(seq) = next else { break };
                let t = &targets[(seq as usize) % targets.len()];
                sqlx::query(update).bind(format!("lat-{label}-{seq}")).bind(&t.admin).bind(&t.id).execute(&pool).await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    // Edits are due on a fixed schedule; a writer that falls behind shows
    // as an achieved rate below the offered one.
    let started = tokio::time::Instant::now();
    for seq in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(seq as f64 / rate)).await;
        tx.send(seq).await?;
    }
    drop(tx);
    let mut committed = 0;
    while let Some(done) = tasks.join_next().await {
        committed += done??;
    }
    Ok(committed)
}

/// The `LIKE` pattern of one label's values.
fn pattern(label: &str) -> String {
    format!("lat-{label}-%")
}

/// The latencies of `label`'s edits that reached the other side, ms,
/// sorted. An edit a newer one of the same record overtook before it was
/// written never arrives: it has none.
pub(super) async fn latencies<'e>(e: impl sqlx::PgExecutor<'e>, direction: Direction, label: &str) -> anyhow::Result<Vec<f64>> {
    let (from, to) = direction.sides();
    let mut ms: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM (t.at - s.at)) * 1000.0)::float8 FROM bench.commits s \
         JOIN bench.commits t ON t.side = $2 AND t.value = s.value WHERE s.side = $1 AND s.value LIKE $3",
    )
    .bind(from)
    .bind(to)
    .bind(pattern(label))
    .fetch_all(e)
    .await?;
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// The last target-side commit of `label` after its last source-side
/// commit, ms: how far behind the pipeline was when the edits stopped.
pub(super) async fn lag_at_end(pool: &PgPool, direction: Direction, label: &str) -> anyhow::Result<f64> {
    let (from, to) = direction.sides();
    Ok(sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM max(at) FILTER (WHERE side = $2) - max(at) FILTER (WHERE side = $1)) * 1000.0, 0)::float8 \
         FROM bench.commits WHERE value LIKE $3",
    )
    .bind(from)
    .bind(to)
    .bind(pattern(label))
    .fetch_one(pool)
    .await?)
}

/// Source-side records of `label` whose latest value has not reached the
/// other side yet: zero once the pipeline has caught up with the edits.
pub(super) async fn behind(pool: &PgPool, label: &str, tenants: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid \
         WHERE p.tenant = ANY($1) AND (p.job_title LIKE $2 OR l.title LIKE $2) AND p.job_title IS DISTINCT FROM l.title",
    )
    .bind(tenants)
    .bind(pattern(label))
    .fetch_one(pool)
    .await?)
}

/// For each prospect of `tenants` whose latest `label` job title (an MA →
/// CRM edit) has not reached its lead yet, how long it has waited so far,
/// ms: a lower bound of its latency, for a window whose edits did not all
/// arrive.
pub(super) async fn waiting<'e>(e: impl sqlx::PgExecutor<'e>, label: &str, tenants: &[String]) -> anyhow::Result<Vec<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT (extract(epoch FROM (clock_timestamp() - c.at)) * 1000.0)::float8 \
         FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid JOIN bench.commits c ON c.side = 'ma' AND c.value = p.job_title \
         WHERE p.tenant = ANY($1) AND p.job_title LIKE $2 AND p.job_title IS DISTINCT FROM l.title",
    )
    .bind(tenants)
    .bind(pattern(label))
    .fetch_all(e)
    .await?)
}

/// The value at percentile `p` (0–100) of `sorted` (nearest rank); 0 when
/// there is none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `loaded` over `quiet`: how many times the quiet figure the loaded one
/// is; none when the quiet one is not a positive number.
pub fn ratio(loaded: f64, quiet: f64) -> Option<f64> {
    (quiet > 0.0 && quiet.is_finite() && loaded.is_finite()).then(|| loaded / quiet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank_and_an_empty_set_has_zeros() {
        let ms: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&ms, 50.0), 51.0);
        assert_eq!(percentile(&ms, 99.0), 99.0);
        assert_eq!(percentile(&ms, 100.0), 100.0);
        assert_eq!(percentile(&ms, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn a_ratio_needs_a_positive_quiet_figure() {
        assert_eq!(ratio(300.0, 150.0), Some(2.0));
        assert_eq!(ratio(5.0, 0.0), None);
        assert_eq!(ratio(5.0, f64::NAN), None);
    }
}
