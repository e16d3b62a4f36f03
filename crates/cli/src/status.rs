//! `crmsync status`: prints the operator's view of every connection (see
//! [`crmsync_ops::status`], which gathers it) as text, or as JSON
//! (`--json`, the [`Status`] shape).

use crmsync_infra::Config;
use crmsync_ops::status::{Status, gather, human};

/// Prints the status as text or JSON; false if a service could not be read.
pub async fn print(config: &Config, only: Option<&str>, json: bool) -> anyhow::Result<bool> {
    let status = gather(config, None, None, only).await;
    if json {
        // Printed whole: serde_json's writer errors hide a closed pipe.
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        text(&status)?;
    }
    Ok(status.ok)
}

fn text(s: &Status) -> std::io::Result<()> {
    for c in &s.connections {
        let i = &c.identities;
        outln!("Connection {}", c.id);
        match c.paused_since {
            Some(since) => outln!(
                "  state                PAUSED since {} by {}: nothing is written, cursors hold (`crmsync connection resume {}`)",
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                c.paused_by.as_deref().unwrap_or("?"),
                c.id
            ),
            None => outln!("  state                running"),
        }
        outln!("  in sync              {}", i.in_sync);
        outln!("  pending assignment   {}", i.pending_assignment);
        outln!("  being created        {}", i.being_created);
        if i.creation_failed > 0 {
            outln!("  creation failed      {} (see `crmsync errors`)", i.creation_failed);
        }
        if i.recycled > 0 {
            outln!("  recycled             {} (prospect in the MA's recycle bin)", i.recycled);
        }
        let ago = |at: Option<chrono::DateTime<chrono::Utc>>| {
            at.map_or_else(
                || "never".to_owned(),
                |t| format!("{} ago", human(std::time::Duration::from_secs((chrono::Utc::now() - t).num_seconds().max(0).unsigned_abs()))),
            )
        };
        outln!(
            "  activity             last change detected {} · last write {} · immediate lane {:.1} records/s (last 5 min)",
            ago(c.last_change_detected_at),
            ago(c.last_write_minute),
            c.immediate_lane.per_second
        );
        for f in &c.feeds {
            outln!(
                "  feed {:<30} published {:>8}  echoes dropped {:>8}  leased by {}",
                f.feed,
                f.published,
                f.echoes_dropped,
                f.leased_by.as_deref().unwrap_or("-")
            );
        }
        let b = &c.batch_lane;
        let held = if b.eta_secs > b.budget_eta_secs { " (held back by the API allowance)" } else { "" };
        outln!(
            "  batch lane           backlog {} · budget {}/hour · used {} in the last hour ({:.0}%) · done in {}{held}",
            b.backlog,
            b.budget_per_hour,
            b.used_last_hour,
            b.used_share * 100.0,
            human(std::time::Duration::from_secs(b.eta_secs))
        );
        for a in &c.api {
            let of = a.allowance.map_or_else(
                || "no allowance set".to_owned(),
                |n| format!("of {n} allowed ({:.0}%)", 100.0 * a.used_24h as f64 / n.max(1) as f64),
            );
            let kinds = a.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(" · ");
            outln!(
                "  API {:<16} {} calls in the last 24 h {of}{}",
                a.system,
                a.used_24h,
                if kinds.is_empty() { String::new() } else { format!(" · {kinds}") }
            );
        }
        let q = &c.csqls;
        outln!(
            "  CSQLs                target {} · record type {} · sync user {}{}{}",
            q.target,
            q.record_type,
            q.sync_user,
            if q.cs_platform { "" } else { " · no CS platform" },
            q.outcomes.iter().map(|(o, n)| format!(" · {o} {n}")).collect::<String>()
        );
        if c.sync_errors.is_empty() {
            outln!("  sync errors          none");
        } else {
            outln!("  sync errors          {}", c.sync_errors.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "));
        }
    }
    if !s.replicas.is_empty() {
        outln!("Replicas (seen in the last 10 min)");
        for r in &s.replicas {
            let ready = if r.ready { "ready".to_owned() } else { format!("not ready: {}", r.not_ready.as_deref().unwrap_or("")) };
            outln!("  {:<10} {:<40} seen {:>4} s ago  {ready}", r.tier, r.replica, r.seen_secs_ago);
        }
    }
    if let Some(e) = &s.database_error {
        outln!("PostgreSQL: {e}");
    }
    if let Some(e) = &s.redis_error {
        outln!("{e}");
    }
    if s.broker.reachable {
        outln!("Queued messages (broker)");
    }
    for q in &s.broker.queues {
        match q.messages {
            Some(n) => outln!("  {:<45} {:>8}", q.queue, n),
            None => outln!("  {:<45} not declared yet", q.queue),
        }
    }
    if let Some(e) = &s.broker.error {
        outln!("Broker: {e}");
    }
    Ok(())
}
