//! `crmsync status` and `crmsync errors`: the operator's view per connection.

use crmsync_infra::Config;
use crmsync_infra::amqp::{self, Topology};
use crmsync_store::{feeds, identities, sync_errors};
use sqlx::PgPool;

/// Prints, per connection: identities by status (in sync, pending
/// assignment, being created), feeds, the batch lane, CSQL options and
/// outcomes, open sync errors by reason; and what is queued per stage on the
/// broker.
pub async fn print(config: &Config, pool: &PgPool, only: Option<&str>) -> anyhow::Result<()> {
    for id in crate::connection_ids(pool, only).await? {
        let statuses = identities::status_counts(pool, &id).await?;
        let count = |s: &str| statuses.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
        outln!("Connection {id}");
        outln!("  in sync              {}", count("linked"));
        outln!("  pending assignment   {}", count("pending_assignment"));
        outln!("  being created        {}", count("creating_crm") + count("creating_ma"));
        for f in feeds::all(pool, &id).await? {
            outln!(
                "  feed {:<30} published {:>8}  echoes dropped {:>8}  leased by {}",
                f.feed,
                f.published,
                f.suppressed,
                f.lease_owner.as_deref().unwrap_or("-")
            );
        }
        let batch = crmsync_applier::batch_figures(pool, &id).await?;
        outln!(
            "  batch lane           backlog {} · budget {}/hour · used {} in the last hour ({:.0}%) · done in {}",
            batch.backlog,
            batch.budget_per_hour,
            batch.used_last_hour,
            batch.used_share() * 100.0,
            human(batch.eta)
        );
        let settings = crmsync_store::connections::load(pool, &id).await?;
        let csqls = crmsync_store::csql_links::outcome_counts(pool, &id).await?;
        outln!(
            "  CSQLs                target {} · record type {} · sync user {}{}{}",
            settings.csql.target,
            settings.csql.record_type,
            settings.csql.sync_user,
            if settings.cs.is_none() { " · no CS platform" } else { "" },
            csqls.iter().map(|(o, n)| format!(" · {o} {n}")).collect::<String>()
        );
        let errors = sync_errors::open_counts(pool, &id).await?;
        if errors.is_empty() {
            outln!("  sync errors          none");
        } else {
            outln!("  sync errors          {}", errors.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "));
        }
    }
    match amqp::connect(&config.amqp, "crmsync-status").await {
        Ok(conn) => {
            let channel = conn.create_channel().await?;
            let topology = Topology::new(&config.amqp);
            topology.declare(&channel).await?;
            outln!("Queued messages (broker)");
            let connections = crate::connection_ids(pool, only).await?;
            for c in &connections {
                topology.declare_connection(&channel, c).await?;
            }
            for (stage, lane, q) in topology.work_queues(&connections) {
                outln!("  {:<45} {:>8}", q, topology.depth(&channel, &q).await?);
                let _ = (stage, lane);
            }
            for stage in [amqp::Stage::Match, amqp::Stage::Apply] {
                let q = topology.dead_queue(stage);
                outln!("  {:<45} {:>8}", q, topology.depth(&channel, &q).await?);
            }
            let _ = conn.close(200, "done".into()).await;
        }
        Err(e) => outln!("Queued: broker unreachable ({e})"),
    }
    Ok(())
}

/// A duration for people: "2 h 05 min", "3 min 20 s", "40 s", "now".
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "now".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}
