//! The engine's PostgreSQL: pool and versioned migrations (`migrations/`).

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};

use crate::config::DatabaseConfig;

/// The engine's migrations, embedded at build time from the workspace's
/// `migrations/` folder. Each step is backward compatible with the replicas
/// still running the previous version (add, never rename or drop in place).
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool to `url` with the configured limits.
pub async fn connect_url(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(max_connections).acquire_timeout(acquire_timeout).connect_with(options(url)?).await
}

/// The engine's session options for `url`.
fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    // No parallel query plans. The tiers' statements read or write batches
    // of rows by key, and the planner's estimate for `= ANY(array)` on the
    // partial identity indexes runs about 4x high, enough to choose a
    // Gather: two worker processes started for each call. A 100-key
    // identity lookup took 15 ms that way against 7.5 ms without (at 30,000
    // identities; in a 30,000-pair backfill the lookups' summed execution
    // time fell from 9.8 to 3.7 s). The few whole-connection counts (the
    // CLI's reports) run serially too, which at this scale costs little.
    Ok(options.application_name("crmsync").options([("max_parallel_workers_per_gather", "0")]))
}

/// Opens the engine's pool.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    connect_sized(cfg, cfg.max_connections).await
}

/// Opens another pool to the engine's database, of `connections`.
pub async fn connect_sized(cfg: &DatabaseConfig, connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_url(cfg.url.expose_secret(), connections, Duration::from_millis(cfg.acquire_timeout_ms)).await
}

/// Opens a pool for an operator command that only reads: PostgreSQL
/// cancels any of its statements after `command_timeout_ms` (a table
/// locked by a migration, a server too busy to answer in time), so the
/// command says so instead of hanging. Connecting is bounded by the
/// acquire timeout, and the caller bounds the whole with the same
/// timeout against a server that does not answer at all.
pub async fn connect_reading(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options = options(cfg.url.expose_secret())?.options([("statement_timeout", cfg.command_timeout_ms)]);
    let acquire = Duration::from_millis(cfg.acquire_timeout_ms.min(cfg.command_timeout_ms));
    PgPoolOptions::new().max_connections(cfg.max_connections).acquire_timeout(acquire).connect_with(options).await
}

/// Whether PostgreSQL cancelled a statement for running past its
/// `statement_timeout` (or an operator's cancel).
pub fn cancelled(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("57014"))
}

/// Applies the engine's pending migrations (safe to run from several
/// processes at once: sqlx takes an advisory lock).
///
/// A database with no migrations at all is new: no replica of an older
/// release has run on it, so its storage formats start at the newest this
/// release writes (see `migrations/0007_identity_state_text.sql`). An
/// existing database keeps its formats until the operator moves them.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let fresh: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NULL").fetch_one(pool).await?;
    MIGRATOR.run(pool).await?;
    if fresh {
        sqlx::query("UPDATE storage_formats SET format = 'text' WHERE name = 'identity_state'").execute(pool).await?;
    }
    Ok(())
}

/// Why the database cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no crmsync schema yet: run `crmsync migrate`")]
    Empty,
    #[error("the database is at migration {have}, this build needs {need}: run `crmsync migrate`")]
    Behind { have: i64, need: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks that every migration this build knows is applied. A database
/// ahead of the build is fine: each migration keeps older replicas working.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), SchemaError> {
    let need = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Err(SchemaError::Empty);
    }
    let have: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    match have {
        None => Err(SchemaError::Empty),
        Some(have) if have < need => Err(SchemaError::Behind { have, need }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! Migrations run while the previous release's replicas are still up
    //! (a rolling update), so each step must leave the old code working:
    //! add tables, columns with defaults, indexes, wider constraints, drop
    //! foreign keys; never drop, rename, retype or tighten in place. This
    //! check reads every migration, the engine's and the sandbox's, and
    //! refuses the steps that would break an old replica.

    use std::path::Path;

    /// The statements of a migration, upper-cased, comments removed.
    fn statements(sql: &str) -> Vec<String> {
        let code: String = sql.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join(" ");
        code.split(';').map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase()).filter(|s| !s.is_empty()).collect()
    }

    /// Why a statement would break a replica of the previous release.
    fn breaks_old_replicas(statement: &str, whole: &[String]) -> Option<&'static str> {
        let has = |p: &str| statement.contains(p);
        if has("DROP TABLE") || has("DROP COLUMN") {
            return Some("drops what old replicas read");
        }
        if has(" RENAME ") {
            return Some("renames what old replicas name");
        }
        if has("ALTER COLUMN") && (has(" TYPE ") || has("SET NOT NULL")) {
            return Some("retypes or tightens a column in place");
        }
        if has("ADD COLUMN") && has("NOT NULL") && !has("DEFAULT") {
            return Some("adds a NOT NULL column without a default: old replicas' inserts fail");
        }
        if let Some(rest) = statement.split("DROP CONSTRAINT ").nth(1) {
            // Widening a CHECK is dropping it and adding it again, wider.
            let name = rest.trim_start_matches("IF EXISTS ").split_whitespace().next().unwrap_or_default();
            // A foreign key (PostgreSQL names an inline REFERENCES
            // `<table>_<column>_fkey`) only ever refused rows that old
            // replicas never write; what they read does not depend on it.
            let foreign_key = name.ends_with("_FKEY");
            if !foreign_key && !whole.iter().any(|s| s.contains(&format!("ADD CONSTRAINT {name}"))) {
                return Some("drops a constraint without adding it back");
            }
        }
        None
    }

    #[test]
    fn every_migration_is_safe_while_old_replicas_run() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut checked = 0;
        for dir in ["migrations", "crates/sandbox/migrations"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let all = statements(&std::fs::read_to_string(&path).unwrap());
                for s in &all {
                    if let Some(why) = breaks_old_replicas(s, &all) {
                        panic!("{}: {why}: {s}", path.display());
                    }
                }
                checked += 1;
            }
        }
        assert!(checked >= 9, "found the migrations ({checked})");
    }

    #[test]
    fn the_check_refuses_what_breaks_old_replicas() {
        for bad in [
            "ALTER TABLE feeds DROP COLUMN cursor",
            "ALTER TABLE feeds RENAME COLUMN cursor TO position",
            "ALTER TABLE feeds ALTER COLUMN cursor TYPE bytea",
            "ALTER TABLE feeds ADD COLUMN owner text NOT NULL",
            "ALTER TABLE feeds DROP CONSTRAINT feeds_check",
            "ALTER TABLE feeds DROP CONSTRAINT IF EXISTS feeds_check",
        ] {
            let all = statements(bad);
            assert!(breaks_old_replicas(&all[0], &all).is_some(), "{bad}");
        }
        let widened = statements("ALTER TABLE t DROP CONSTRAINT c; ALTER TABLE t ADD CONSTRAINT c CHECK (x IN (1, 2))");
        assert!(widened.iter().all(|s| breaks_old_replicas(s, &widened).is_none()));
        let unkeyed = statements("ALTER TABLE identities DROP CONSTRAINT IF EXISTS identities_connection_id_fkey");
        assert!(breaks_old_replicas(&unkeyed[0], &unkeyed).is_none(), "old replicas never write a row a foreign key refuses");
        let added = statements("ALTER TABLE t ADD COLUMN n bigint NOT NULL DEFAULT 0");
        assert!(breaks_old_replicas(&added[0], &added).is_none());
    }
}
