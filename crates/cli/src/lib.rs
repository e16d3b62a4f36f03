//! The `crmsync` command. Each module is one group of commands; the tiers
//! themselves live in their own crates and are only started from here.
//!
//! Commands print through [`out`], never `println!`: see there why.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod out;

pub mod args;
pub mod bench;
pub mod connection_cmd;
mod console_cmd;
mod dead_letters;
pub mod demo;
mod errors_cmd;
mod mapping_cmd;
mod mirror_check;
pub mod progress;
mod records_cmd;
pub use crmsync_ops::pii;
pub mod report;
mod sandbox_cmd;
mod status;

use std::process::ExitCode;

use anyhow::Context;
use args::{Cli, Command};
use crmsync_infra::{Config, db, shutdown, telemetry};
use crmsync_store::{connections, identities};
use sqlx::PgPool;

/// The `crmsync` binary: parses the command line and runs it.
pub fn main() -> ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    // reqwest is built without a TLS crypto provider: ring is chosen once
    // here, for every HTTP client the process makes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out::err_line(format_args!("crmsync: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // The reader of standard output went away (`| head`): what it
        // wanted was printed, and nothing is wrong.
        Err(e) if out::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            out::err_line(format_args!("crmsync: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Runs a tier until it returns, giving it `grace` to drain once `stop` is
/// cancelled. Past it the tier is abandoned: its unacked messages go back
/// to the queue when the process exits, so nothing is lost, only redone.
async fn within_grace(
    tier: impl std::future::Future<Output = anyhow::Result<()>>,
    stop: &crmsync_infra::CancellationToken,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        done = tier => done,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            anyhow::bail!("the tier did not drain within the {grace:?} grace period; its unacked work returns to the queue")
        }
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let service = match &cli.command {
        Command::Producer => "crmsync-producer",
        Command::Matcher => "crmsync-matcher",
        Command::Applier => "crmsync-applier",
        Command::Console { cmd: None | Some(args::ConsoleCmd::Serve) } => "crmsync-console",
        _ => "crmsync",
    };
    let telemetry = match &cli.command {
        // The demo prints its own story; its tiers log to files. Its own
        // process logs warnings only (RUST_LOG still overrides).
        Command::Demo(_) => {
            let mut quiet = config.telemetry.clone();
            quiet.log_filter = "warn".into();
            telemetry::init(&quiet, service)
        }
        Command::Producer | Command::Matcher | Command::Applier | Command::Console { cmd: None | Some(args::ConsoleCmd::Serve) } => {
            telemetry::init(&config.telemetry, service)
        }
        // An operator command says itself what it could not reach; lapin
        // would also log, as an error, every passive declare of a queue not
        // declared yet, which is an answer, not a failure.
        _ => {
            let mut commands = config.telemetry.clone();
            commands.log_filter = format!("{},lapin=off", commands.log_filter);
            telemetry::init(&commands, service)
        }
    };
    let result = Box::pin(run_command(cli, config.clone())).await.map_err(|e| explain(e, &config));
    // Every exit path, error or not, flushes the spans still buffered: a
    // tier stopped by SIGTERM exports the traces of its last records.
    telemetry.shutdown().await;
    result
}

async fn run_command(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    let pii = pii::Pii { show: cli.show_pii };
    match cli.command {
        Command::Producer => {
            let stop = shutdown::on_signals();
            within_grace(crmsync_producer::run(config.clone(), stop.clone()), &stop, config.shutdown.grace()).await?;
        }
        Command::Matcher => {
            let stop = shutdown::on_signals();
            within_grace(crmsync_matcher::run(config.clone(), stop.clone()), &stop, config.shutdown.grace()).await?;
        }
        Command::Applier => {
            let stop = shutdown::on_signals();
            within_grace(crmsync_applier::run(config.clone(), stop.clone()), &stop, config.shutdown.grace()).await?;
        }
        Command::Migrate { identity_state } => {
            let pool = connect(&config).await?;
            migrate(&pool).await?;
            if let Some(form) = identity_state {
                let form = match form {
                    args::IdentityStateForm::Jsonb => identities::StateForm::Jsonb,
                    args::IdentityStateForm::Text => identities::StateForm::Text,
                };
                identities::set_state_form(&pool, form).await.context("setting the identity state's form")?;
            }
            let form = identities::state_form(&pool).await?;
            outln!("migrations applied; identity states are written as {}", form.as_str());
        }
        Command::Status(c) => {
            let ok = status::print(&config, c.connection.as_deref(), c.json).await?;
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Report(c) => {
            let pool = connect_reading(&config).await?;
            let ok = report::print_all(&config, &pool, c.connection.as_deref(), c.json, pii).await?;
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::WaitIdle(a) => {
            progress::wait_idle(&config, &connect_reading(&config).await?, a.connection.as_deref(), a.timeout_secs).await?;
        }
        Command::Errors { cmd, filter, limit } => {
            let cmd = cmd.unwrap_or(args::ErrorsCmd::List { filter, limit, json: false });
            return errors_cmd::run(&config, cmd, pii).await;
        }
        Command::Console { cmd: None | Some(args::ConsoleCmd::Serve) } => {
            let stop = shutdown::on_signals();
            within_grace(crmsync_console::run(config.clone(), stop.clone()), &stop, config.shutdown.grace()).await?;
        }
        Command::Console { cmd: Some(cmd) } => console_cmd::run(&connect(&config).await?, cmd).await?,
        Command::Connection(cmd) => connection_cmd::run(&config, &connect(&config).await?, cmd).await?,
        Command::Records(cmd) => records_cmd::run(&config, &connect(&config).await?, cmd).await?,
        Command::Sandbox(cmd) => sandbox_cmd::run(&config, &connect(&config).await?, cmd).await?,
        Command::Demo(args) => return demo::run(&config, args).await,
        Command::Bench(args::BenchCmd::Suite(args)) => bench::suite::run(&config, args).await?,
        Command::Bench(args::BenchCmd::Console(args)) => bench::console::run(&config, args).await?,
        Command::Bench(args::BenchCmd::Connections(args)) => bench::connections::run(&config, args).await?,
        Command::Bench(args::BenchCmd::Budget { records, per_second, out }) => bench::budget(&config, records, per_second, out).await?,
        Command::Bench(args::BenchCmd::Latency { rates, seconds, pairs, direction, mode, out }) => {
            bench::latency_cmd(&config, (mode, direction), &rates, seconds, pairs, out).await?;
        }
        Command::Bench(args::BenchCmd::Ceiling { messages, bytes, prefetch, out }) => {
            bench::ceiling_cmd(&config, messages, bytes, prefetch, out).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Names a statement PostgreSQL cancelled at a read-only command's timeout
/// as what it is: the database did not answer in time.
fn explain(e: anyhow::Error, config: &Config) -> anyhow::Error {
    if e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some_and(db::cancelled)) {
        return e.context(crmsync_ops::status::db_timeout(config));
    }
    e
}

pub(crate) async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    db::connect(&config.database).await.context("connecting to PostgreSQL (is it running? scripts/services.sh starts it)")
}

/// The pool of a command that only reads: its statements are cancelled
/// after `database.command_timeout_ms` (see [`db::connect_reading`]).
pub(crate) async fn connect_reading(config: &Config) -> anyhow::Result<PgPool> {
    let pool =
        db::connect_reading(&config.database).await.context("connecting to PostgreSQL (is it running? scripts/services.sh starts it)")?;
    db::ensure_migrated(&pool).await?;
    Ok(pool)
}

/// Applies the engine's and the sandbox's migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    db::migrate(pool).await.context("engine migrations")?;
    crmsync_sandbox::migrate(pool).await.context("sandbox migrations")?;
    Ok(())
}

/// Connection ids to report on: the one asked for, or all.
pub async fn connection_ids(pool: &PgPool, only: Option<&str>) -> anyhow::Result<Vec<String>> {
    Ok(match only {
        Some(id) => {
            connections::load(pool, id).await?;
            vec![id.to_owned()]
        }
        None => connections::ids(pool).await?,
    })
}
