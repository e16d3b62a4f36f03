//! The figures of `crmsync bench connections` as Markdown: what is printed
//! at the end of a run and committed under `bench/`, next to the JSON.
//! Apart from the scenario so that the suite's report can include it too.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::connections::ConnectionsRun;
use super::isolation::{Isolation, LiveEdits};

fn pct(v: Option<&f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.1}%"))
}

fn mb(v: Option<&f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.0} MB"))
}

/// The run as a Markdown section (a level-2 heading and its tables).
pub fn markdown(r: &ConnectionsRun) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "## Connections: {} small connections on one deployment\n", r.connections);
    let _ = writeln!(
        s,
        "{} connections, each with its own sandbox MA and CRM tenants: {} prospects linked to {} of its {} CRM leads (each pair \
         holding a value only one side has, so a write each way), the other leads read and skipped. Replicas: {} producer, \
         {} matcher, {} applier, each its own process.\n",
        r.connections,
        r.prospects_per_connection,
        r.prospects_per_connection,
        r.people_per_connection,
        r.replicas.get("producer").unwrap_or(&0),
        r.replicas.get("matcher").unwrap_or(&0),
        r.replicas.get("applier").unwrap_or(&0),
    );
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {:.0} GB, {}; {} build, commit `{}`, {}. Services: {}.\n",
        m.cores,
        m.cpu,
        m.memory_gb,
        m.kernel,
        m.build,
        m.commit,
        m.date,
        m.services.join(", ")
    );
    let _ = writeln!(s, "Command: `{}`\n", r.command);

    let _ = writeln!(s, "### Initial sync\n");
    let _ = writeln!(s, "| run | connections | records | converged in | records/s |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let row = |s: &mut String, name: &str, f: &super::connections::SyncFigures| {
        let _ = writeln!(s, "| {name} | {} | {} | {:.1} s | **{:.0}** |", f.connections, f.records, f.seconds, f.records_per_second);
    };
    row(&mut s, "every connection", &r.many);
    match &r.single {
        Some(one) => {
            row(&mut s, "the same records in one connection (budget lifted)", one);
            let _ = writeln!(s, "\nRatio: the N connections take **{:.1}×** as long as one connection.", r.many.seconds / one.seconds);
        }
        None => {
            let _ = writeln!(s, "| the same records in one connection | not measured | | | |");
        }
    }
    let _ = writeln!(
        s,
        "\nFrom the tiers' start (their own start-up included) to the last pair converged and every published change \
         finished (the last write or audit entry, on the database's clock). In one connection the records arrive as one \
         detection pass far above the batch threshold, so they take the batch lane; its budget is lifted there so that \
         only the pipeline sets the pace.\n"
    );

    let _ = writeln!(s, "### Idle\n");
    let _ = writeln!(
        s,
        "Nothing changing: {:.0} s after convergence (for the feeds to back off), CPU over a {:.0} s window, as % of one core. \
         *Background*: the services over {:.0} s before the tiers started (this machine is shared; the services serve other \
         work too).\n",
        r.idle_warmup_seconds, r.idle_seconds, r.baseline_seconds
    );
    let _ = writeln!(s, "| process | idle CPU | background CPU | memory |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let mut tiers: Vec<&String> = r.idle_cpu_percent.keys().filter(|k| !r.baseline_cpu_percent.contains_key(*k)).collect();
    tiers.sort();
    for t in &tiers {
        let _ = writeln!(s, "| {t} | {} | | {} |", pct(r.idle_cpu_percent.get(*t)), mb(r.memory_mb.get(*t)));
    }
    let together: f64 = tiers.iter().filter_map(|t| r.idle_cpu_percent.get(*t)).sum();
    let _ = writeln!(s, "| **tiers together** | **{together:.1}%** | | |");
    for svc in ["postgresql", "redis", "rabbitmq"] {
        let _ = writeln!(
            s,
            "| {svc} | {} | {} | {} |",
            pct(r.idle_cpu_percent.get(svc)),
            pct(r.baseline_cpu_percent.get(svc)),
            mb(r.memory_mb.get(svc))
        );
    }
    let _ = writeln!(
        s,
        "\nPostgreSQL while idle: **{:.1} transactions/s** in the bench's database (pg_stat_database); statements/s: {}. \
         Memory: RSS per tier; PSS summed over a service's processes (PostgreSQL's shared buffers count once), for every \
         database and queue on the server, not only the bench's. RabbitMQ's before the bench declared anything: {:.0} MB.\n",
        r.idle_pg_transactions_per_second,
        r.idle_pg_statements_per_second.map_or("not counted (pg_stat_statements not loaded)".to_owned(), |v| format!("{v:.1}")),
        r.broker_memory_before_mb
    );
    let _ = writeln!(s, "Load average (1/5/15 min) at the window's start and end: {} → {}.\n", r.load_average.0, r.load_average.1);

    let _ = writeln!(s, "### The broker's queues\n");
    let l = &r.batch_lanes;
    let opt = |v: Option<usize>| v.map_or("–".to_owned(), |v| v.to_string());
    let _ = writeln!(
        s,
        "| connections | the run's queues on the broker | with a consumer | warnings in the applier logs | queues on the broker (all prefixes) |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | **{}** | {} | {} |",
        r.connections,
        opt(l.declared),
        opt(l.consumed),
        l.applier_warnings,
        opt(l.broker_queues)
    );
    let _ = writeln!(s, "\nAsked with: {}.\n", l.note);

    if let Some(f) = &r.full_budget {
        let _ = writeln!(s, "### All connections at their full budget at once\n");
        let _ = writeln!(
            s,
            "Every lane filled (at least {} records each, in {:.0} s) while the budgets were held at 1 record an hour; then every \
             budget set to {} an hour (burst {}) in one statement, {:.0} s of warm-up, and the batch-lane applies of the next {:.0} s \
             counted from the audit log.\n",
            f.queued_per_connection_min, f.fill_seconds, f.budget_per_hour, f.burst, f.warmup_seconds, f.window_seconds
        );
        let _ = writeln!(
            s,
            "| connections | records/s achieved | the budgets' sum | share of its budget: min / median / max | worst 1-s overshoot beyond rate + burst |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---|---:|");
        let _ = writeln!(
            s,
            "| {} | **{:.0}** | {:.0} | {:.0}% / {:.0}% / {:.0}% | {:.1} records |\n",
            f.connections,
            f.records_per_second,
            f.budgets_per_second,
            f.share_min * 100.0,
            f.share_median * 100.0,
            f.share_max * 100.0,
            f.worst_overshoot_records
        );
        if f.cpu_ms_per_record > 0.0 {
            let cpu: Vec<String> = f.cpu_percent.iter().map(|(k, v)| format!("{k} {v:.0}%")).collect();
            let _ = writeln!(
                s,
                "Where the window's CPU went: **{:.2} ms per record** over every tier and service ({}, % of one core).\n",
                f.cpu_ms_per_record,
                cpu.join(", ")
            );
        }
        if !f.pg_statement_ms_per_record.is_empty() {
            let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
            let _ = writeln!(s, "PostgreSQL statement time per record (planning and execution, `pg_stat_statements`):\n");
            let _ = writeln!(s, "| statements on | ms per record | statements per record |");
            let _ = writeln!(s, "|---|---:|---:|");
            for (k, label) in [("sandbox", "the sandbox systems (in production: the vendors' APIs)"), ("engine", "the engine's own tables")]
            {
                let _ =
                    writeln!(s, "| {label} | {:.2} | {:.1} |", get(&f.pg_statement_ms_per_record, k), get(&f.pg_statements_per_record, k));
            }
            let _ = writeln!(s);
        }
    }

    if let Some(i) = &r.isolation {
        isolation(&mut s, i);
    }

    let _ = writeln!(s, "### Read-only commands\n");
    let _ = writeln!(s, "Each run as a subprocess against the bench's world (wall time, start-up included), the pipeline idle.\n");
    let _ = writeln!(s, "| command | wall time | outcome |");
    let _ = writeln!(s, "|---|---:|---|");
    for c in &r.commands {
        let _ =
            writeln!(s, "| `{}` | {:.2} s | {}{} |", c.command, c.seconds, if c.ok { "" } else { "FAILED: " }, c.note.replace('|', "\\|"));
    }
    for e in &r.cleanup_errors {
        let _ = writeln!(s, "\n**Clean-up failed:** {e}");
    }
    let _ = writeln!(s, "\n### Not measured yet\n");
    for n in &r.not_measured {
        let _ = writeln!(s, "- {n}");
    }
    s
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.0} ms"))
}

fn times(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.2}×"))
}

/// The isolation scenario: the editors' latency in each window, then what
/// the backfilling and the failing connection did.
fn isolation(s: &mut String, i: &Isolation) {
    let _ = writeln!(s, "### Isolation\n");
    let _ = writeln!(
        s,
        "{} connections make live edits ({} records edited round-robin, each edit a new job title on a prospect, by the MA's admin; \
         few enough per connection for the immediate lane) for {:.0} s per window. Latency: the edit's commit in the MA to the \
         same value's commit in the CRM, both stamped by row triggers. *Merged*: edits a newer edit of the same record overtook \
         before they were written. Target: p99 with another connection's trouble at most 2× the quiet p99.\n",
        i.editors, i.edited_records, i.window_seconds
    );
    let _ = writeln!(
        s,
        "| window | edits | achieved/s | synced | merged | p50 | p95 | p99 | max | p50 / p99 vs quiet | caught up after the last edit |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |s: &mut String, l: &LiveEdits, ratios: Option<(Option<f64>, Option<f64>)>| {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {} | {:.0} ms | {:.0} ms | **{:.0} ms** | {:.0} ms | {} | {} |",
            l.window,
            l.edits,
            l.achieved_per_second,
            l.synced,
            l.merged,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            ratios.map_or("–".to_owned(), |(p50, p99)| format!("{} / **{}**", times(p50), times(p99))),
            l.caught_up_seconds.map_or_else(
                || {
                    format!(
                        "not within {} s: {} still on their way, counted at their wait so far (the figures are lower bounds)",
                        super::isolation::CATCH_UP.as_secs(),
                        l.still_waiting
                    )
                },
                |c| format!("{c:.1} s")
            )
        );
    };
    row(s, &i.quiet, None);
    if let Some(b) = &i.backfill {
        if let Some(h) = &b.held {
            row(s, &h.live, Some((h.p50_ratio, h.p99_ratio)));
        }
        row(s, &b.live, Some((b.p50_ratio, b.p99_ratio)));
    }
    if let Some(f) = &i.failing_crm {
        row(s, &f.live, Some((f.p50_ratio, f.p99_ratio)));
    }
    if let Some(b) = &i.backfill {
        if let Some(h) = &b.held {
            let _ = writeln!(
                s,
                "\n**Backfill at its own budget.** {} backfilled {} records ({} linked pairs), seeded set-based in {:.1} s while it \
                 was paused, then resumed at its own budget ({} records an hour, burst {}) as the first window began: its producer \
                 reads the backlog no further ahead of that budget than `producer.batch_ahead_secs` allows, and its writes wait \
                 for the budget. In the {:.0}-s window its producer published {} changes, {} were applied, and {} records were waiting \
                 in its lane at the end.",
                b.connection,
                b.records,
                b.pairs,
                b.seed_seconds,
                h.budget_per_hour,
                h.burst,
                h.window_seconds,
                h.published_in_window,
                h.applied_in_window,
                h.queued_at_window_end,
            );
        }
        let _ = writeln!(
            s,
            "\n**Backfill, budget lifted.** {} backfilled {} records ({} linked pairs, each needing a write each way) with its batch \
             budget then lifted (as the single-connection run), seeded set-based in {:.1} s while it was paused. In the \
             {:.0}-s window (from the lift until the editors' last values had arrived) its producer published {} changes and \
             applied **{} of them ({:.0}/s)** (apply entries: a pair's two changes are mostly applied as one, writing both \
             records); {}. {}",
            b.connection,
            b.records,
            b.pairs,
            b.seed_seconds,
            b.window_seconds,
            b.published_in_window,
            b.applied_in_window,
            b.applied_per_second,
            if b.running_at_window_end { "it was still running at the window's end" } else { "it had finished within the window" },
            b.finished_seconds.map_or("It did not finish within its limit and was paused.".to_owned(), |f| format!(
                "All of it was done {f:.1} s after the lift ({:.0} records/s).",
                b.records as f64 / f
            )),
        );
    }
    if let Some(f) = &i.failing_crm {
        let c = &f.crm;
        let _ = writeln!(
            s,
            "\n**A CRM refusing every call.** {}'s CRM pointed at a {} for {:.0} s, while its own MA records were edited once a \
             second ({} edits). What it showed:\n",
            c.connection, c.endpoint, c.window_seconds, c.own_edits
        );
        let _ = writeln!(s, "| figure | value |");
        let _ = writeln!(s, "|---|---|");
        let by_path = c.requests_by_path.iter().map(|(p, n)| format!("`{p}` {n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "| requests the endpoint received | {} ({by_path}) |", c.requests);
        let _ = writeln!(s, "| attempts a minute | **{:.1}** |", c.requests_per_minute);
        let _ = writeln!(s, "| shortest / median gap between two | {} / {} |", ms(c.shortest_gap_ms), ms(c.median_gap_ms));
        let calls = c
            .api_calls
            .iter()
            .flat_map(|(system, kinds)| kinds.iter().map(move |(k, n)| format!("{system} {k} {n}")))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| API calls counted against its allowance | {} |",
            if calls.is_empty() { "none (logins are not API requests, and it got no further)".to_owned() } else { calls }
        );
        let errors = c.sync_errors.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "| open sync errors | {} |", if errors.is_empty() { "none".to_owned() } else { errors });
        let warnings = c.log_warnings.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "| warnings naming it in the tiers' logs | {warnings} |");
        let _ = writeln!(
            s,
            "| its edits reached its CRM after it was given back | {} |",
            c.recovered_seconds.map_or("not within 120 s".to_owned(), |r| format!("{r:.1} s"))
        );
        if let Some(w) = &c.sample_warning {
            let _ = writeln!(s, "\nA warning it caused, as logged:\n\n```text\n{w}\n```");
        }
        let _ = writeln!(s);
    }
}
