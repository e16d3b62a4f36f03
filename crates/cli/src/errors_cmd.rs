//! `crmsync errors`: the operator's sync-error queue (I6). Errors are listed
//! by connection, category and record, shown in full, retried (the record's
//! current state goes through the normal pipeline again), dismissed or
//! exported; the dead-letter queues are inspected and replayed
//! (`dead_letters`). What they print keeps emails redacted unless the
//! operator asks (`crate::pii`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use crmsync_infra::Config;
use crmsync_ops::errors;
use crmsync_store::admin_audit::Actor;
use crmsync_store::sync_errors::{self, Filter, SyncErrorDetail};
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

use crate::args::{ErrorFilter, ErrorStatus, ErrorsCmd, ExportFormat};
use crate::dead_letters;
use crate::pii::Pii;

fn filter_of(f: &ErrorFilter) -> Filter {
    let status = match f.status {
        ErrorStatus::Open => Some("open"),
        ErrorStatus::Retried => Some("retried"),
        ErrorStatus::Dismissed => Some("dismissed"),
        ErrorStatus::Resolved => Some("resolved"),
        ErrorStatus::All => None,
    };
    Filter {
        connection_id: f.connection.clone(),
        category: f.category.clone(),
        object: f.object.clone(),
        record_id: f.record.clone(),
        status: status.map(str::to_owned),
        ids: Vec::new(),
    }
}

/// The open errors a retry or a dismissal works on: the ids given, or every
/// open error of a category.
fn targets(ids: Vec<i64>, category: Option<String>, connection: Option<String>) -> Filter {
    Filter { connection_id: connection, category, status: Some("open".into()), ids, ..Filter::default() }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max { flat } else { format!("{}…", flat.chars().take(max - 1).collect::<String>()) }
}

/// Runs an `errors` command. Those that only read (list, show, export,
/// dead-letters) read PostgreSQL within `database.command_timeout_ms` and
/// the broker within `amqp.timeout_ms`, and create nothing.
pub async fn run(config: &Config, cmd: ErrorsCmd, pii: Pii) -> anyhow::Result<ExitCode> {
    match cmd {
        ErrorsCmd::List { filter, limit, json } => {
            list(&crate::connect_reading(config).await?, &filter_of(&filter), limit, json, pii).await?;
        }
        ErrorsCmd::Show { id } => show(&crate::connect_reading(config).await?, id, pii).await?,
        ErrorsCmd::Retry { ids, category, connection } => {
            return retry(config, &crate::connect(config).await?, targets(ids, category, connection)).await;
        }
        ErrorsCmd::Dismiss { ids, category, connection } => {
            let pool = crate::connect(config).await?;
            let closed = errors::dismiss(&pool, &Actor::cli(), &targets(ids, category, connection)).await?;
            outln!("dismissed {closed} open sync error(s)");
        }
        ErrorsCmd::Export { filter, format, output } => {
            export(&crate::connect_reading(config).await?, &filter_of(&filter), format, output, pii).await?;
        }
        ErrorsCmd::DeadLetters { stage, full } => dead_letters::list(config, stage, full, pii).await?,
        ErrorsCmd::Replay { stage, messages, all } => {
            return dead_letters::replay(config, &crate::connect(config).await?, stage, &messages, all).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(pool: &PgPool, filter: &Filter, limit: i64, json: bool, pii: Pii) -> anyhow::Result<()> {
    let rows: Vec<SyncErrorDetail> = sync_errors::find(pool, filter, Some(limit)).await?.iter().map(|e| pii.error(e)).collect();
    if json {
        let mut out = std::io::BufWriter::new(crate::out::Stdout);
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    // The counts cover every matching error, not only the ones shown.
    let counts = sync_errors::count_by_category(pool, filter).await?;
    let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
    let summary: Vec<String> = counts.iter().map(|(c, k, n)| format!("{c}/{k} {n}")).collect();
    outln!("{total} sync error(s){}", if summary.is_empty() { String::new() } else { format!(": {}", summary.join(", ")) });
    if rows.is_empty() {
        return Ok(());
    }
    outln!(
        "{:>7}  {:<10} {:<20} {:<16} {:<20} {:>4}  {:<16}  reason",
        "id",
        "connection",
        "category",
        "object",
        "record",
        "×",
        "last seen"
    );
    for r in &rows {
        outln!(
            "{:>7}  {:<10} {:<20} {:<16} {:<20} {:>4}  {:<16}  {}",
            r.id,
            one_line(&r.connection_id, 10),
            r.category,
            one_line(&r.object, 16),
            one_line(&r.record_id, 20),
            r.occurrences,
            r.last_seen_at.format("%Y-%m-%d %H:%M"),
            one_line(&r.reason, 80)
        );
    }
    if total > rows.len() as i64 {
        outln!("({} more; --limit shows more, `crmsync errors export` writes them all)", total - rows.len() as i64);
    }
    Ok(())
}

async fn show(pool: &PgPool, id: i64, pii: Pii) -> anyhow::Result<()> {
    let filter = Filter { ids: vec![id], ..Filter::default() };
    let e = sync_errors::find(pool, &filter, Some(1)).await?.pop().with_context(|| format!("no sync error #{id}"))?;
    let e = pii.error(&e);
    outln!("sync error #{}", e.id);
    outln!("  connection   {}", e.connection_id);
    outln!("  status       {}{}", e.status, e.closed_at.map(|t| format!(" (closed {t})")).unwrap_or_default());
    outln!("  category     {}", e.category);
    outln!("  stage        {}", e.stage);
    outln!("  record       {} {}", e.object, e.record_id);
    outln!("  occurrences  {} (first {}, last {})", e.occurrences, e.first_seen_at, e.last_seen_at);
    if let Some(change) = e.change_id {
        outln!("  change       {change}");
    }
    outln!("  reason       {}", e.reason);
    if let Some(payload) = &e.payload {
        outln!("  record as detected:");
        for line in serde_json::to_string_pretty(payload)?.lines() {
            outln!("    {line}");
        }
    }
    Ok(())
}

/// Retries open errors: messages are replayed from the dead-letter queue;
/// records are read again from their source and published to the matcher.
/// Each error is closed as `retried` only once its record (or message) is
/// confirmed back in the pipeline.
async fn retry(config: &Config, pool: &PgPool, targets: Filter) -> anyhow::Result<ExitCode> {
    let found = sync_errors::find(pool, &targets, None).await?;
    if found.is_empty() {
        outln!("no open sync error to retry");
        return Ok(ExitCode::SUCCESS);
    }
    let (messages, records): (Vec<&SyncErrorDetail>, Vec<&SyncErrorDetail>) = found.iter().partition(|e| e.object == "message");
    let mut failed = false;
    if !messages.is_empty() {
        let ids: Vec<String> = messages.iter().map(|e| e.record_id.clone()).collect();
        failed |= dead_letters::replay(config, pool, None, &ids, false).await? != ExitCode::SUCCESS;
    }
    if records.is_empty() {
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    let progress = crate::progress::bar(records.len() as u64, "retrying");
    let records: Vec<SyncErrorDetail> = records.into_iter().cloned().collect();
    let factory = SystemsFactory::from_config(config, pool).await?;
    let done = errors::retry_records(config, pool, &factory, &Actor::cli(), &records, |n| progress.inc(n as u64)).await;
    progress.finish_and_clear();
    let done = done?;
    for r in &done.gone {
        outln!("  {} {}: no longer in its source; dismiss it", r.object, r.id);
    }
    for (r, why) in &done.unsupported {
        failed = true;
        outln!("  {} {}: {why}", r.object, r.id);
    }
    outln!("retried {} record(s): they are back in the pipeline; a record that fails again gets a new open error", done.retried);
    if !done.gone.is_empty() {
        outln!("{} record(s) are no longer in their source", done.gone.len());
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn export(pool: &PgPool, filter: &Filter, format: ExportFormat, output: Option<std::path::PathBuf>, pii: Pii) -> anyhow::Result<()> {
    let rows: Vec<SyncErrorDetail> = sync_errors::find(pool, filter, None).await?.iter().map(|e| pii.error(e)).collect();
    let sink: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(crate::out::Stdout),
    };
    let mut sink = std::io::BufWriter::new(sink);
    match format {
        ExportFormat::Jsonl => {
            for r in &rows {
                writeln!(sink, "{}", serde_json::to_string(r)?)?;
            }
        }
        ExportFormat::Csv => crmsync_ops::errors::write_csv(&mut sink, &rows)?,
    }
    sink.flush()?;
    if let Some(path) = output {
        crate::out::err_line(format_args!("wrote {} sync error(s) to {}", rows.len(), path.display()));
    }
    Ok(())
}
