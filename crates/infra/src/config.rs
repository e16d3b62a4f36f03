//! One typed configuration for every tier and command, layered: built-in
//! defaults, then a TOML file, then `CRMSYNC_*` environment variables
//! (`CRMSYNC_AMQP__PREFETCH=32` sets `amqp.prefetch`).
//!
//! Every tunable lives here with a named default; unknown keys are refused so a
//! typo fails loudly; connection strings are secrets and never printed.
//! Per-connection sync settings (threshold, budget, mapping...) are not here:
//! they live in PostgreSQL so that all replicas share them.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

/// Where the built-in defaults point: the services `scripts/services.sh` starts.
pub const DEFAULT_DATABASE_URL: &str = "postgres://crmsync:crmsync@127.0.0.1:5432/crmsync";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub sandbox: SandboxConfig,
    pub amqp: AmqpConfig,
    pub redis: RedisConfig,
    pub locks: LockConfig,
    pub producer: ProducerConfig,
    pub matcher: WorkerConfig,
    pub applier: WorkerConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The engine's PostgreSQL database.
    pub url: SecretString,
    pub max_connections: u32,
    /// The connections of a tier's second pool, kept for its immediate lane
    /// (the matcher's and the applier's live changes, and the sandbox
    /// systems they read and write when embedded): a backfill's chunks
    /// take every connection of the main pool, and a live change queued
    /// behind them for one (sqlx hands connections out in turn) waited
    /// seconds. 0 shares the main pool.
    pub immediate_connections: u32,
    pub acquire_timeout_ms: u64,
    /// How long an operator command that only reads (`status`, `report`,
    /// `errors` list/show/export, `wait-idle`) lets one statement run
    /// (PostgreSQL's `statement_timeout`), and waits for the database at
    /// all, before it says PostgreSQL did not answer. The tiers are not
    /// bound by it.
    pub command_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: DEFAULT_DATABASE_URL.into(),
            max_connections: 8,
            immediate_connections: 4,
            acquire_timeout_ms: 10_000,
            command_timeout_ms: 30_000,
        }
    }
}

impl DatabaseConfig {
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The database holding the sandbox systems; the engine's own by default.
    pub database_url: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    pub url: SecretString,
    /// Prefix of every exchange and queue name: deployments and tests that
    /// share a broker stay apart.
    pub prefix: String,
    /// Unacknowledged messages a consumer may hold (per queue).
    pub prefetch: u16,
    /// Deliveries of one message before it is dead-lettered (poison messages).
    pub delivery_limit: u32,
    /// Delete queues unused for this long (tests only; off in production).
    pub queue_expires_ms: Option<u64>,
    /// How long connecting to the broker, and each call on it (a declare, a
    /// queue's depth), may take before it fails: a broker that accepts TCP
    /// and never answers must not hold a tier or a command.
    pub timeout_ms: u64,
    /// How long a message for a paused connection waits in the hold queue
    /// before it goes back to its work queue to be looked at again (see
    /// `crate::worker`): the longest a held message lags a resume, and
    /// what a paused connection's messages cost (one round trip each per
    /// period). May differ between replicas and change at any time.
    pub hold_ms: u64,
    /// How long a delivery whose handling keeps failing transiently is
    /// retried in place (holding its consumer slot) before it is given
    /// back to the queue, counting a delivery: with `delivery_limit` 5 and
    /// 5 minutes, a message that fails for 25 minutes on end is
    /// dead-lettered, where `crmsync dead-letters` shows it.
    pub retry_in_place_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: DEFAULT_AMQP_URL.into(),
            prefix: "crmsync".into(),
            prefetch: 8,
            delivery_limit: 5,
            queue_expires_ms: None,
            timeout_ms: 10_000,
            hold_ms: 5_000,
            retry_in_place_ms: 300_000,
        }
    }
}

impl AmqpConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn retry_in_place(&self) -> Duration {
        Duration::from_millis(self.retry_in_place_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: SecretString,
    /// Prefix of every key.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig { url: DEFAULT_REDIS_URL.into(), prefix: "crmsync".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockConfig {
    /// A lock expires after this long even if its holder never releases it.
    pub ttl_ms: u64,
    /// Give up on a contended lock after this long and retry the message later.
    pub acquire_timeout_ms: u64,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig { ttl_ms: 30_000, acquire_timeout_ms: 15_000 }
    }
}

impl LockConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// How often each feed is polled when no notification wakes it sooner.
    /// For a connection whose systems are all sandbox tenants, this is the
    /// pace of the safety poll while change notifications are NOT heard
    /// (the listener is down), and of the re-checks of feeds found with
    /// changes not yet readable (behind a transaction still running).
    pub poll_interval_ms: u64,
    /// How often the safety poll looks at every sandbox connection's feeds
    /// while change notifications are heard (issue 29). The sandbox
    /// notifies every commit, so this poll only catches what no
    /// notification announced (a change made with the trigger off, a
    /// notification sent while the listener was reconnecting is already
    /// caught by the full check every reconnect makes). It is one set-based
    /// check for all connections at once, a few statements whatever their
    /// number, so its cost is small either way; the interval bounds how
    /// late such a change can be.
    pub safety_poll_interval_ms: u64,
    /// Records read per change-query page.
    pub page_size: usize,
    /// Records carried per message to the matcher (and on to the applier).
    /// Each message costs every tier a fixed set of statements and round
    /// trips, so a backfill moves faster in larger ones, but a replica holds
    /// `concurrency` messages' records, identity states and rows at once.
    /// In a 30,000-pair direct backfill 100, 200 and 500 gave about 6,200,
    /// 7,100 and 7,550 records/s; through a 300,000-change backlog the
    /// applier peaked at 78 MB with 200, 98 MB with 300 and 133 MB with 500
    /// (the target is 100 MB). With 500, two appliers over HTTP also held
    /// each other's identity locks long enough to halve their throughput.
    /// A live change rarely waits for company, so the immediate lane's
    /// messages stay small either way.
    pub records_per_message: usize,
    /// Records per message for a connection with a system reached over a
    /// real API (Salesforce, Account Engagement), where each message costs
    /// API calls at every tier: a look-up, a read before writing, a write or
    /// an import per system (I8). In a 10,000-pair HTTP backfill, 200 a
    /// message cost about 30 calls per 1,000 records.
    pub api_records_per_message: usize,
    /// A feed lease lasts this long unless renewed; another replica takes
    /// over a feed whose holder died after at most this.
    pub lease_ttl_ms: u64,
    /// Connections a replica passes over at once. A pass mostly waits (for
    /// its reads, the broker's confirms, its cursor's commit), so passes
    /// one after another left the producer idle between round trips: with
    /// 1,000 small connections changing at once, the initial sync waited on
    /// the producer's passes in turn (issue 29). At most half of
    /// `database.max_connections` are used, so that passes never wait on
    /// one another for the pool.
    pub pass_concurrency: usize,
    /// How far ahead of its budget a connection's backlog is read: once
    /// its batch lane holds this many seconds of its budget (and at least
    /// 1,000 records), its detection waits for the lane to drain. 300 s at
    /// 12,000 records an hour is 1,000 records. A million-record backfill
    /// read all at once kept the machine busy for minutes and slowed every
    /// other connection's live edits 19-fold, to wait 83 hours in the lane.
    pub batch_ahead_secs: u64,
    /// This replica's name in feed leases; host name and pid by default.
    pub replica_id: Option<String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            poll_interval_ms: 500,
            safety_poll_interval_ms: 10_000,
            page_size: 1000,
            records_per_message: 200,
            api_records_per_message: 1000,
            lease_ttl_ms: 15_000,
            pass_concurrency: 8,
            batch_ahead_secs: 300,
            replica_id: None,
        }
    }
}

impl ProducerConfig {
    pub fn batch_ahead(&self) -> Duration {
        Duration::from_secs(self.batch_ahead_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    pub fn safety_poll_interval(&self) -> Duration {
        Duration::from_millis(self.safety_poll_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Messages processed at once by one replica.
    pub concurrency: usize,
    /// First retry delay of a message that failed for a transient reason;
    /// doubles per attempt.
    pub retry_backoff_ms: u64,
    /// Batch-lane chunks one applier replica applies at once, over all
    /// lanes, and at most in one lane (the applier only). The connections'
    /// budgets pace them, so this changes nothing while the budgets are the
    /// brake; when they are not (many connections at full budget, a lifted
    /// budget for a backfill), it bounds the replica's throughput: each
    /// chunk crosses a dozen round trips to PostgreSQL, Redis and both
    /// systems, and the replica sits idle on them unless other chunks fill
    /// the wait.
    pub batch_concurrency: usize,
    /// Batch lanes (connections with a backlog) one applier replica works
    /// on at once. A lane in hand costs a small task and its lease; lanes
    /// beyond this wait their turn, the longest due first.
    pub batch_lanes: usize,
    /// The most records in one batch-lane chunk, whatever the burst: a
    /// budget lifted for a backfill is applied in chunks of this size,
    /// several at once.
    pub batch_chunk: usize,
    /// How long a replica's lease on a lane lasts unless renewed: a dead
    /// replica's lanes are taken over once this has passed. A live replica
    /// renews all its leases at once, three times per lease.
    pub batch_lease_secs: u64,
    /// How long a replica works a lane before it gives it back to be taken
    /// again by whoever is free, so that lanes rotate fairly between
    /// replicas when there are more lanes with work than `batch_lanes`.
    pub batch_turn_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        // 8 batch messages: with 4, a 60,000-pair direct backfill ran at
        // 7,960 records/s with one applier and 7,170 with two, against 8,220
        // and 8,220 with 8 (interleaved runs on 2 cores). The applier waited
        // on round trips with cores idle; 8 messages of 200 records hold a
        // few MB more.
        WorkerConfig {
            concurrency: 4,
            retry_backoff_ms: 200,
            batch_concurrency: 8,
            batch_lanes: 1_000,
            batch_chunk: 200,
            batch_lease_secs: 10,
            batch_turn_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub log_filter: String,
    /// Serve `/livez`, `/readyz` and Prometheus `/metrics` at this address,
    /// e.g. `0.0.0.0:9464` (`metrics_listen`, its former name, still works).
    #[serde(alias = "metrics_listen")]
    pub http_listen: Option<String>,
}

/// How a tier stops on SIGTERM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long a tier may take to finish and ack its in-flight work after
    /// SIGTERM before it gives up (what is unacked returns to the queue).
    /// Keep the orchestrator's grace period longer.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_secs: 30 }
    }
}

impl ShutdownConfig {
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_secs)
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { log_format: LogFormat::Text, log_filter: "info,sqlx=warn,lapin=warn".into(), http_listen: None }
    }
}

/// The admin console (`crmsync console`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Where the console's web UI and JSON API listen. Loopback by default:
    /// put it behind a TLS-terminating proxy to reach it from elsewhere.
    pub listen: String,
    /// Mark the console's cookies `Secure` (sent over HTTPS only). Turn it
    /// on whenever the console is reached over HTTPS, as it is behind a
    /// TLS-terminating proxy; browsers drop Secure cookies over plain HTTP.
    pub secure_cookies: bool,
    /// How long a sign-in lasts.
    pub session_ttl_secs: u64,
    /// A link to one trace in the tracing backend, with `{trace_id}` where
    /// the id goes (Jaeger: `http://jaeger:16686/trace/{trace_id}`; Tempo
    /// through Grafana: its explore URL). Unset: trace ids are shown, not
    /// linked.
    pub trace_url: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { listen: "127.0.0.1:8790".into(), secure_cookies: false, session_ttl_secs: 8 * 3600, trace_url: None }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// `CRMSYNC_*` variables that belong to command-line flags (clap reads
/// them), not to the configuration: without this list, setting one (say the
/// sandbox server's secret file) failed every command with "unknown field".
pub const COMMAND_LINE_ENV: &[&str] = &["config", "sandbox_client_secret_file"];

impl Config {
    /// Defaults, then the TOML file at `path` if given (it must exist), then
    /// `CRMSYNC_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError(Box::new(figment::Error::from(format!("config file {} does not exist", p.display())))));
            }
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(Env::prefixed("CRMSYNC_").split("__").ignore(COMMAND_LINE_ENV));
        fig.extract().map_err(|e| ConfigError(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn defaults_point_at_loopback_services() {
        let c = Config::default();
        assert_eq!(c.database.url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(c.amqp.prefix, "crmsync");
        assert_eq!(c.locks.ttl_ms, 30_000);
    }

    #[test]
    fn secrets_never_print() {
        let text = format!("{:?}", Config::default());
        assert!(!text.contains("crmsync:crmsync@"), "{text}");
        assert!(!text.contains("guest:guest"), "{text}");
    }

    #[test]
    // figment's test jail returns its own (large) error type.
    #[allow(clippy::result_large_err)]
    fn file_then_environment_and_unknown_keys_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[amqp]\nprefix = \"from-file\"\nprefetch = 3\n")?;
            jail.set_env("CRMSYNC_AMQP__PREFETCH", "32");
            let c = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(c.amqp.prefix, "from-file");
            assert_eq!(c.amqp.prefetch, 32);
            jail.create_file("bad.toml", "[amqp]\nprefetchh = 3\n")?;
            let e = Config::load(Some(Path::new("bad.toml"))).unwrap_err().to_string();
            assert!(e.contains("prefetchh"), "{e}");
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_command_lines_own_variables_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CRMSYNC_SANDBOX_CLIENT_SECRET_FILE", "/run/secrets/sf");
            jail.set_env("CRMSYNC_CONFIG", "elsewhere.toml");
            assert!(Config::load(None).is_ok());
            Ok(())
        });
    }
}
