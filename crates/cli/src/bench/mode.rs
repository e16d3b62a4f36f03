//! How a benchmark reaches the sandbox systems: directly (the embedded
//! sandbox, PostgreSQL schemas read and written by the tiers themselves) or
//! over HTTP, through the Salesforce and Account Engagement connectors
//! against `crmsync sandbox serve`, so the cost of the wire path shows.

use std::path::Path;

use clap::ValueEnum;
use crmsync_store::connections;
use serde::Serialize;
use sqlx::PgPool;

use crate::demo::http::SandboxServer;

/// API calls a day the served org and business unit allow during a
/// benchmark: far more than any run makes, so no run waits for a new day.
const BENCH_DAILY_ALLOWANCE: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Direct,
    Http,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Http => "http",
        }
    }

    /// Points the connection at the sandbox the way this mode reaches it;
    /// over HTTP, starts the server first (the caller stops it).
    pub async fn connect(self, pool: &PgPool, url: &str, work_dir: &Path) -> anyhow::Result<Option<SandboxServer>> {
        if self == Mode::Direct {
            return Ok(None);
        }
        let exe = std::env::current_exe()?;
        let env = [("CRMSYNC_DATABASE__URL", url.to_owned()), ("RUST_LOG", "warn".to_owned())];
        let server =
            SandboxServer::start_with_allowance(&exe, &env, work_dir, work_dir, BENCH_DAILY_ALLOWANCE, BENCH_DAILY_ALLOWANCE).await?;
        let integration: String =
            sqlx::query_scalar("SELECT email FROM crm.users WHERE tenant = 'default' AND is_integration").fetch_one(pool).await?;
        let mut settings = connections::load(pool, "default").await?;
        let mut crm = server.crm_endpoint(&integration);
        // The org's change events wake the producer (see `crm_endpoint`);
        // the poll is only the fallback where they fail.
        crm["poll_interval_secs"] = 1.into();
        crm["poll_max_secs"] = 1.into();
        crm["overlap_secs"] = 3.into();
        let mut ma = server.ma_endpoint(&integration);
        ma["overlap_secs"] = 3.into();
        // A benchmark measures the pipeline, not an idle connection's
        // backoff: the MA's feed polls every second, as the CRM's.
        ma["poll_interval_secs"] = 1.into();
        ma["poll_max_secs"] = 1.into();
        settings.set("crm", &crm.to_string(), chrono::Utc::now())?;
        settings.set("ma", &ma.to_string(), chrono::Utc::now())?;
        connections::save(pool, "default", &settings).await?;
        Ok(Some(server))
    }
}
