//! `crmsync bench console`: how long each admin console page takes to
//! render at scale (issue 28's target: 200 ms with 1,000,000 audit entries
//! and 100,000 identities in one connection).
//!
//! The data is written straight into a fresh database with set-based SQL
//! (minutes of pipeline work otherwise): the identities, ten engine audit
//! entries each (the record history), the admin audit log and a few
//! thousand sync errors; one person also exists in the sandbox systems, so
//! the record page reads both sides as it would in use. The console is
//! served in this process and each page is fetched over HTTP with an API
//! token, as HTML and as JSON, `requests` times after a warm-up: wall time
//! per request, p50/p95/max. Printed, and written as JSON when asked;
//! nothing is asserted.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use crmsync_console::users::{self, Role};
use crmsync_infra::{CancellationToken, Config};
use crmsync_sandbox::ops::Sandbox;
use crmsync_sandbox::schema;
use crmsync_store::admin_audit::Actor;
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;

/// What to build and how often to ask.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Identities in the connection.
    #[arg(long, default_value_t = 100_000)]
    pub identities: i64,
    /// Admin audit log entries (the engine's audit log gets ten per identity).
    #[arg(long, default_value_t = 1_000_000)]
    pub audit: i64,
    /// Requests per page and format, after two to warm up.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One page's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PageFigures {
    pub page: String,
    pub format: &'static str,
    pub status: u16,
    pub bytes: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsoleBench {
    pub identities: i64,
    pub engine_audit_entries: i64,
    pub admin_audit_entries: i64,
    pub sync_errors: i64,
    pub setup_seconds: f64,
    pub pages: Vec<PageFigures>,
}

/// Writes the data set: identities, their history, the admin log, errors.
async fn fill(pool: &PgPool, identities: i64, audit: i64) -> anyhow::Result<i64> {
    sqlx::query(
        "INSERT INTO identities (id, connection_id, status, prospect_id, crm_object, crm_id, email, fields, linked_at) \
         SELECT gen_random_uuid(), 'default', 'linked', 1000000 + n, 'lead', \
                '00Q' || lpad(n::text, 12, '0') || 'AAA', 'person' || n || '@bench.example', '{}', now() \
         FROM generate_series(1, $1) AS n",
    )
    .bind(identities)
    .execute(pool)
    .await
    .context("identities")?;
    sqlx::query(
        "INSERT INTO audit_log (connection_id, change_id, stage, identity_id, source_side, source_object, source_id, action, writes, lane, at, field_values) \
         SELECT 'default', gen_random_uuid(), 'apply', i.id, 'ma', 'prospect', i.prospect_id::text, 'updated', \
                '{\"crm\": [\"jobTitle\"]}', 'immediate', now() - make_interval(mins => k), \
                jsonb_build_object('detected', jsonb_build_object('jobTitle', jsonb_build_array('Title ' || k, 'Title ' || (k + 1))), \
                                   'crm', jsonb_build_object('jobTitle', jsonb_build_array('Title ' || k, 'Title ' || (k + 1)))) \
         FROM identities i CROSS JOIN generate_series(1, 10) AS k WHERE i.connection_id = 'default'",
    )
    .execute(pool)
    .await
    .context("the engine's audit log")?;
    sqlx::query(
        "INSERT INTO admin_audit (at, actor, via, connection_id, action, target, before, after) \
         SELECT now() - make_interval(secs => n), 'ops', 'console', 'default', 'setting.set', 'batch_threshold', to_jsonb(n), to_jsonb(n + 1) \
         FROM generate_series(1, $1) AS n",
    )
    .bind(audit)
    .execute(pool)
    .await
    .context("the admin audit log")?;
    let errors = (identities / 20).max(1);
    sqlx::query(
        "INSERT INTO sync_errors (connection_id, stage, object, record_id, category, reason, payload) \
         SELECT 'default', 'apply', 'prospect', (1000000 + n)::text, (ARRAY['validation_rule', 'duplicate_rule', 'invalid_email'])[1 + n % 3], \
                'FIELD_CUSTOM_VALIDATION_EXCEPTION: a rule refused the write', jsonb_build_object('id', 1000000 + n) \
         FROM generate_series(1, $1) AS n",
    )
    .bind(errors)
    .execute(pool)
    .await
    .context("sync errors")?;
    sqlx::query("ANALYZE identities, audit_log, admin_audit, sync_errors").execute(pool).await?;
    Ok(errors)
}

/// One person in the sandbox systems, linked, with a history: the page the
/// record lookup is timed on.
async fn person(pool: &PgPool) -> anyhow::Result<(i64, String)> {
    let sb = Sandbox::new(pool.clone(), "default");
    let text = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>();
    let lead =
        sb.create(&schema::LEAD, &text(&[("LastName", "Bench"), ("Company", "Acme"), ("Email", "bench@bench.example")]), None).await?;
    let prospect = sb
        .create(&schema::PROSPECT, &text(&[("lastName", "Bench"), ("email", "bench@bench.example"), ("crmLeadFid", &lead)]), None)
        .await?;
    let prospect: i64 = prospect.parse()?;
    sqlx::query(
        "WITH i AS (INSERT INTO identities (id, connection_id, status, prospect_id, crm_object, crm_id, email, fields, linked_at) \
                    VALUES (gen_random_uuid(), 'default', 'linked', $1, 'lead', $2, 'bench@bench.example', '{}', now()) RETURNING id) \
         INSERT INTO audit_log (connection_id, change_id, stage, identity_id, source_side, source_object, source_id, action, writes, lane) \
         SELECT 'default', gen_random_uuid(), 'apply', i.id, 'ma', 'prospect', $1::text, 'updated', '{\"crm\": [\"jobTitle\"]}', 'immediate' \
         FROM i CROSS JOIN generate_series(1, 10)",
    )
    .bind(prospect)
    .bind(&lead)
    .execute(pool)
    .await?;
    Ok((prospect, lead))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(config: &Config, args: ConsoleArgs) -> anyhow::Result<()> {
    let base_url = config.database.url.expose_secret().to_owned();
    let (mut config, _url, pool) = super::fresh_world(config, &base_url, "crmsync_bench_console", "crmsync-bench-console").await?;
    let t = Instant::now();
    crate::out::err_line(format_args!(
        "writing {} identities, {} engine audit entries and {} admin audit entries...",
        args.identities,
        args.identities * 10,
        args.audit
    ));
    let errors = fill(&pool, args.identities, args.audit).await?;
    let (prospect, lead) = person(&pool).await?;
    let setup = t.elapsed().as_secs_f64();

    let actor = Actor { name: "bench".into(), via: "cli" };
    users::add(&pool, &actor, "bench", Role::Admin, &users::random_token()).await?;
    let token = users::add_token(&pool, &actor, "bench", "bench").await?;
    config.console.listen = "127.0.0.1:0".into();
    let console = crmsync_console::Console::bind_with(config, pool.clone()).await?;
    let base = format!("http://{}", console.addr()?);
    let stop = CancellationToken::new();
    let served = tokio::spawn(console.serve(stop.clone()));

    let error_id: i64 = sqlx::query_scalar("SELECT min(id) FROM sync_errors").fetch_one(&pool).await?;
    let middle = 1_000_000 + args.identities / 2;
    let pages = [
        "/".to_owned(),
        "/connections/default".to_owned(),
        "/audit".to_owned(),
        "/audit?connection=default".to_owned(),
        format!("/audit?connection=default&before={}", args.audit / 2),
        "/records?q=bench%40bench.example".to_owned(),
        format!("/records?q={prospect}"),
        format!("/records?q={lead}"),
        format!("/records?q={middle}"),
        "/errors".to_owned(),
        "/errors?category=validation_rule".to_owned(),
        format!("/errors/{error_id}"),
    ];
    let http = reqwest::Client::new();
    let mut figures = Vec::new();
    for page in &pages {
        for (format, accept) in [("html", "text/html"), ("json", "application/json")] {
            let mut times = Vec::with_capacity(args.requests);
            let (mut status, mut bytes) = (0, 0);
            for i in 0..args.requests + 2 {
                let t = Instant::now();
                let r = http.get(format!("{base}{page}")).bearer_auth(&token).header("accept", accept).send().await?;
                status = r.status().as_u16();
                bytes = r.bytes().await?.len();
                if i >= 2 {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            times.sort_by(f64::total_cmp);
            figures.push(PageFigures {
                page: page.clone(),
                format,
                status,
                bytes,
                p50_ms: percentile(&times, 0.5),
                p95_ms: percentile(&times, 0.95),
                max_ms: *times.last().unwrap_or(&0.0),
            });
        }
    }
    stop.cancel();
    let _ = served.await;

    let result = ConsoleBench {
        identities: args.identities + 1,
        engine_audit_entries: (args.identities + 1) * 10,
        admin_audit_entries: args.audit,
        sync_errors: errors,
        setup_seconds: setup,
        pages: figures,
    };
    outln!(
        "console pages with {} identities, {} engine audit entries, {} admin audit entries, {} sync errors (setup {:.0} s); {} requests each",
        result.identities,
        result.engine_audit_entries,
        result.admin_audit_entries,
        result.sync_errors,
        result.setup_seconds,
        args.requests
    );
    outln!("{:<48} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9}", "page", "as", "status", "bytes", "p50 ms", "p95 ms", "max ms");
    for f in &result.pages {
        outln!("{:<48} {:>5} {:>6} {:>9} {:>9.1} {:>9.1} {:>9.1}", f.page, f.format, f.status, f.bytes, f.p50_ms, f.p95_ms, f.max_ms);
    }
    if let Some(out) = args.out {
        std::fs::write(&out, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {}", out.display()))?;
    }
    pool.close().await;
    Ok(())
}
