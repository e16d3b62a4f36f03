//! One detection pass over one feed: read pages from the cursor until caught
//! up, drop echoes, publish the rest with confirms, and only then move the
//! cursor (I1). The lane is chosen once per pass (R7): a pass that finds more
//! changes than the connection's threshold sends all of them to the batch lane.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use crmsync_connector::{Cursor, Systems};
use crmsync_domain::messages::{self, Change, ChangeBatch, MESSAGE_VERSION};
use crmsync_domain::records::SourceRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, Lane};
use crmsync_infra::amqp::{Outgoing, Publisher, Stage, Topology};
use crmsync_infra::worker::StageError;
use crmsync_store::feeds;
use crmsync_store::identities::{self, IdentityRow, Keys};
use sqlx::PgPool;
use tracing::{debug, info};
use uuid::Uuid;

use crate::echo::worth_publishing;
use crate::feed::Feed;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub detected: usize,
    pub published: usize,
    pub suppressed: usize,
    pub messages: usize,
}

/// What a pass needs from its tier.
#[derive(Debug)]
pub struct PassContext<'a> {
    pub pool: &'a PgPool,
    pub publisher: &'a Publisher,
    pub owner: &'a str,
    pub lease_ttl: Duration,
    pub page_size: usize,
    pub records_per_message: usize,
}

/// The identities of a page's records, keyed by the record's id.
async fn identities_of(pool: &PgPool, connection_id: &str, records: &[SourceRecord]) -> Result<HashMap<String, IdentityRow>, sqlx::Error> {
    let mut keys = Keys::default();
    for r in records {
        match r {
            SourceRecord::Prospect(p) => keys.prospect_ids.push(p.id),
            SourceRecord::Crm(c) => {
                if let Ok(id) = CrmId::parse(&c.id) {
                    keys.crm_ids.push(id.to_string());
                }
            }
            SourceRecord::Mirror(_) => {}
        }
    }
    let rows = identities::find(pool, connection_id, &keys, true).await?;
    let mut out = HashMap::new();
    for row in rows {
        if let Some(p) = row.prospect_id {
            out.insert(format!("p:{p}"), row.clone());
        }
        if let Some(c) = &row.crm_id {
            out.insert(format!("c:{c}"), row);
        }
    }
    Ok(out)
}

fn key_of(r: &SourceRecord) -> String {
    match r {
        SourceRecord::Prospect(p) => format!("p:{}", p.id),
        SourceRecord::Crm(c) => format!("c:{}", CrmId::parse(&c.id).map(|i| i.to_string()).unwrap_or_else(|_| c.id.clone())),
        SourceRecord::Mirror(m) => format!("m:{}", m.id),
    }
}

/// Runs one pass over `feed` of one connection. Returns `None` when another
/// replica holds the feed's lease.
pub async fn run_pass(
    ctx: &PassContext<'_>,
    connection_id: &str,
    settings: &ConnectionSettings,
    systems: &Systems,
    feed: &Feed,
) -> Result<Option<PassStats>, StageError> {
    let name = feed.name();
    let Some(mut lease) = feeds::lease(ctx.pool, connection_id, &name, ctx.owner, ctx.lease_ttl).await? else {
        return Ok(None);
    };
    let mut stats = PassStats::default();
    let mut cursor: Option<Cursor> = lease.cursor.clone().map(Cursor);
    let me = feed.integration_user(systems).to_owned();
    // The first page reads one past the threshold, which is enough to tell
    // whether this pass is a batch.
    let first_limit = ctx.page_size.max(settings.batch_threshold + 1);
    let mut lane: Option<Lane> = None;
    loop {
        let limit = if lane.is_none() { first_limit } else { ctx.page_size };
        let (records, next, has_more) = feed.page(systems, cursor.as_ref(), limit).await?;
        if records.is_empty() {
            break;
        }
        let lane = *lane.get_or_insert_with(|| {
            let seen = if has_more { settings.batch_threshold + 1 } else { records.len() };
            Lane::for_pass(seen, settings.batch_threshold)
        });
        stats.detected += records.len();
        let known = identities_of(ctx.pool, connection_id, &records).await?;
        let (keep, dropped): (Vec<SourceRecord>, Vec<SourceRecord>) =
            records.into_iter().partition(|r| worth_publishing(r, known.get(&key_of(r)), &settings.field_map, &me));
        let detected_at = Utc::now();
        let mut out = Vec::new();
        for chunk in keep.chunks(ctx.records_per_message.max(1)) {
            let batch = ChangeBatch {
                v: MESSAGE_VERSION,
                batch_id: Uuid::now_v7(),
                connection_id: connection_id.to_owned(),
                lane,
                detected_at,
                changes: chunk.iter().map(|r| Change { change_id: Uuid::now_v7(), record: r.clone() }).collect(),
            };
            out.push(Outgoing {
                routing_key: Topology::routing_key(Stage::Match, lane),
                body: messages::encode(&batch),
                message_id: batch.batch_id.to_string(),
                headers: vec![("x-connection-id".into(), connection_id.to_owned()), ("x-lane".into(), lane.as_str().into())],
            });
        }
        stats.messages += out.len();
        // Confirmed by the broker before the cursor moves: a crash in between
        // publishes the page again, never skips it.
        ctx.publisher.publish_confirmed(out).await?;
        let advanced =
            feeds::advance(ctx.pool, connection_id, &name, ctx.owner, lease.token, &next.0, keep.len() as i64, dropped.len() as i64)
                .await?;
        if !advanced {
            // Another replica took the feed while we worked; it starts from
            // the old cursor, so nothing is lost (at worst published twice).
            info!(connection_id, feed = %name, "feed lease lost during a pass; stopping");
            break;
        }
        stats.published += keep.len();
        stats.suppressed += dropped.len();
        cursor = Some(next);
        if !has_more {
            break;
        }
        // Long passes keep their lease alive.
        match feeds::lease(ctx.pool, connection_id, &name, ctx.owner, ctx.lease_ttl).await? {
            Some(l) if l.token == lease.token => lease = l,
            _ => break,
        }
    }
    if stats.detected > 0 {
        debug!(connection_id, feed = %name, ?stats, "pass done");
    }
    Ok(Some(stats))
}
