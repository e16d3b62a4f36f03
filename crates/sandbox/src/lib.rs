//! The sandbox systems: an MA, a CRM and a CS platform as PostgreSQL
//! schemas of their own (`ma`, `crm`, `cs`), reached by the engine only
//! through the connector traits, like the real APIs.
//!
//! It is the embedded default for the demo, the tests and the benchmarks, and
//! a place to try a configuration safely: [`ops`] edits records by hand (as
//! the command line does) and [`seed`] fills it with a realistic data set.

pub mod cdc;
pub mod crm;
pub mod cs;
pub mod factory;
pub mod ma;
mod mirrors;
mod objects;
pub mod ops;
pub mod pending;
mod row;
mod rules;
pub mod schema;
pub mod seed;
mod store;
pub mod validate;

pub use crm::SandboxCrm;
pub use cs::SandboxCs;
pub use factory::SandboxFactory;
pub use ma::SandboxMa;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The sandbox's own migrations, tracked in `sandbox._sqlx_migrations`,
/// apart from the engine's.
pub fn migrator() -> Migrator {
    let mut migrator: Migrator = sqlx::migrate!("./migrations");
    migrator.create_schema("sandbox");
    migrator.dangerous_set_table_name("sandbox._sqlx_migrations");
    migrator
}

/// Applies the sandbox's migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}
