//! One detection pass over a connection: read each feed from its cursor
//! until caught up, drop echoes, publish the rest with confirms, and only then
//! move the cursor (I1).
//!
//! The lane is chosen once per pass, for the connection as a whole (R7): the
//! first page of every feed that holds real changes is read before anything
//! is published, and if together they hold more than the connection's
//! threshold (400 by default), the whole pass goes to the batch lane. A first
//! page reads at least threshold + 1 records, so a burst on one feed is always
//! counted in full. Pages that hold only echoes of the engine's own writes are
//! passed over (and their cursor moved) without counting.
//!
//! So a pass over a connection is one replica's at a time: it runs only
//! under the connection's pass lease ([`feeds::PASS`], taken by the
//! caller). Were two replicas to split a connection's feeds, each would
//! count only its own share: 300 prospects and 300 leads changed at once
//! would both go to the immediate lane. And in a first sync, where both records of a pair changed, the
//! prospect and the lead would be published side by side, before either was
//! matched, so the second would reach the matcher only to be dropped (a
//! fifth to three fifths of the pairs of a 200,000-pair backfill with two
//! producers). Read in turn, the lead is read after its pair was linked,
//! and the producer's echo filter drops it. Other replicas stand by, and
//! take the connection over when the lease expires or is given up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use crmsync_connector::{Cursor, Systems};
use crmsync_domain::echo::worth_publishing;
use crmsync_domain::merge::Side;
use crmsync_domain::messages::{self, Change, ChangeBatch, MESSAGE_VERSION};
use crmsync_domain::records::SourceRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, Lane};
use crmsync_infra::amqp::{Outgoing, Stage, Topology};
use crmsync_infra::broker::Broker;
use crmsync_infra::priority::Priority;
use crmsync_infra::propagation::{RecordSpans, RecordStage, context_of, record_span};
use crmsync_infra::worker::StageError;
use crmsync_store::batch_lanes;
use crmsync_store::feeds::{self, Lease};
use crmsync_store::identities::{self, IdentityRow, Keys};
use sqlx::PgPool;
use tracing::{debug, info};
use uuid::Uuid;

use crate::feed::Feed;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub detected: usize,
    pub published: usize,
    pub suppressed: usize,
    pub messages: usize,
    pub lane: Option<Lane>,
    /// The pass stopped (or did not start) because the connection's batch
    /// lane already holds what its budget will take a while to apply.
    pub ahead: bool,
}

/// The fewest records a connection's batch lane may hold before its
/// detection waits, whatever its budget: enough for the drain's chunks and
/// for tests and benches that fill a lane while the budget is held at
/// almost nothing.
pub const MIN_AHEAD_RECORDS: i64 = 1_000;

/// How long a batch-lane publication counts as on its way to the lane: the
/// matcher and the applier's intake take it in within seconds, and until
/// they have, the lane's count does not show it. Without it, the next pass
/// (half a second later) saw a lane still filling and read as much again:
/// 6,000 records read ahead for a limit of 3,000.
const ON_ITS_WAY: Duration = Duration::from_secs(5);

/// What this replica published to each connection's batch lane in the last
/// [`ON_ITS_WAY`], for the passes that follow.
#[derive(Debug, Default)]
pub struct RecentlyPublished(std::sync::Mutex<HashMap<String, VecDeque<(Instant, i64)>>>);

impl RecentlyPublished {
    /// Records published for `connection_id` lately (older ones forgotten).
    fn on_their_way(&self, connection_id: &str) -> i64 {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, q| {
            while q.front().is_some_and(|(at, _)| at.elapsed() > ON_ITS_WAY) {
                q.pop_front();
            }
            !q.is_empty()
        });
        all.get(connection_id).map_or(0, |q| q.iter().map(|(_, n)| n).sum())
    }

    fn add(&self, connection_id: &str, records: i64) {
        if records > 0 {
            let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
            all.entry(connection_id.to_owned()).or_default().push_back((Instant::now(), records));
        }
    }
}

/// How many records a connection's batch lane may hold before its
/// detection stops reading further: `ahead` of its budget, at least
/// [`MIN_AHEAD_RECORDS`]. A lifted budget lifts it too.
pub fn ahead_limit(settings: &ConnectionSettings, ahead: Duration) -> i64 {
    let of_budget = f64::from(settings.batch_budget_per_hour) * ahead.as_secs_f64() / 3600.0;
    (of_budget as i64).max(MIN_AHEAD_RECORDS)
}

/// What a pass needs from its tier.
#[derive(Debug)]
pub struct PassContext<'a> {
    pub pool: &'a PgPool,
    pub broker: &'a Broker,
    pub owner: &'a str,
    pub lease_ttl: Duration,
    pub page_size: usize,
    pub records_per_message: usize,
    /// The same for a connection with a system reached over a real API.
    pub api_records_per_message: usize,
    /// The replica's live work: a pass counts as live until it has chosen
    /// the batch lane, and from then on gives way before each page (see
    /// `crmsync_infra::priority`).
    pub priority: &'a Arc<Priority>,
    /// How far ahead of its budget a connection's backlog is read (see
    /// [`ahead_limit`]).
    pub batch_ahead: Duration,
    pub recently_published: &'a RecentlyPublished,
}

/// The identities of a page's records, found by the records' keys.
struct Known {
    rows: Vec<IdentityRow>,
    /// Record key (see [`key_of`]) to its identity in `rows`.
    by_key: HashMap<String, usize>,
}

impl Known {
    fn get(&self, key: &str) -> Option<&IdentityRow> {
        self.by_key.get(key).map(|&i| &self.rows[i])
    }
}

/// The identities of a page's records. Each row is kept once and found by
/// either key: a copy per key cloned the identity's field state, about 40
/// entries, for every linked record.
async fn identities_of(pool: &PgPool, connection_id: &str, records: &[SourceRecord]) -> Result<Known, sqlx::Error> {
    let mut keys = Keys::default();
    for r in records {
        match r {
            SourceRecord::Prospect(p) => keys.prospect_ids.push(p.id),
            SourceRecord::Crm(c) => {
                if let Ok(id) = CrmId::parse(&c.id) {
                    keys.crm_ids.push(id.to_string());
                }
            }
            SourceRecord::Mirror(_) | SourceRecord::Csql(_) => {}
        }
    }
    if keys.prospect_ids.is_empty() && keys.crm_ids.is_empty() {
        return Ok(Known { rows: Vec::new(), by_key: HashMap::new() });
    }
    // The echo filter compares each record with what the engine knows its
    // side holds, and nothing else of the state: a page of one side (a
    // feed's page always is) reads only that.
    let state = match (keys.prospect_ids.is_empty(), keys.crm_ids.is_empty()) {
        (false, true) => identities::State::Known(Side::Ma),
        (true, false) => identities::State::Known(Side::Crm),
        _ => identities::State::All,
    };
    let rows = identities::find(pool, connection_id, &keys, state).await?;
    let mut by_key = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(p) = row.prospect_id {
            by_key.insert(format!("p:{p}"), i);
        }
        if let Some(c) = &row.crm_id {
            by_key.insert(format!("c:{c}"), i);
        }
    }
    Ok(Known { rows, by_key })
}

fn key_of(r: &SourceRecord) -> String {
    match r {
        SourceRecord::Prospect(p) => format!("p:{}", p.id),
        SourceRecord::Crm(c) => format!("c:{}", CrmId::parse(&c.id).map(|i| i.to_string()).unwrap_or_else(|_| c.id.clone())),
        SourceRecord::Mirror(m) => format!("m:{}", m.id),
        SourceRecord::Csql(c) => format!("q:{}", c.id),
    }
}

/// CSQLs with an edit the sync has not seen yet (the engine's own status
/// write-backs on them are not edits).
async fn csqls_worth_publishing(
    pool: &PgPool,
    connection_id: &str,
    records: Vec<SourceRecord>,
    me: &str,
) -> Result<(Vec<SourceRecord>, usize), sqlx::Error> {
    let csqls: Vec<(String, i64)> = records
        .iter()
        .filter_map(|r| match r {
            SourceRecord::Csql(c) => Some((c.record_type.as_str().to_owned(), c.id)),
            _ => None,
        })
        .collect();
    let Some((kind, _)) = csqls.first() else { return Ok((records, 0)) };
    let ids: Vec<i64> = csqls.iter().map(|(_, id)| *id).collect();
    let seen: HashMap<i64, Option<chrono::DateTime<Utc>>> =
        crmsync_store::csql_links::find(pool, connection_id, kind, &ids).await?.into_iter().map(|l| (l.cs_id, l.seen_edit_at)).collect();
    let total = records.len();
    let keep: Vec<SourceRecord> = records
        .into_iter()
        .filter(|r| match r {
            SourceRecord::Csql(c) => match seen.get(&c.id) {
                None => true,
                Some(seen) => c.last_user_edit(me) > *seen,
            },
            _ => true,
        })
        .collect();
    let dropped = total - keep.len();
    Ok((keep, dropped))
}

/// A page read and filtered, not yet published.
#[derive(Debug)]
struct Page {
    keep: Vec<SourceRecord>,
    dropped: usize,
    next: Cursor,
    has_more: bool,
}

/// A feed this replica holds the lease of, during a pass.
#[derive(Debug)]
struct Held {
    feed: Feed,
    name: String,
    lease: Lease,
    cursor: Option<Cursor>,
    me: String,
    /// Still reading (the lease holds and changes remain).
    open: bool,
}

async fn read(
    ctx: &PassContext<'_>,
    connection_id: &str,
    settings: &ConnectionSettings,
    systems: &Systems,
    h: &Held,
    limit: usize,
) -> Result<Page, StageError> {
    let (records, next, has_more) = h.feed.page(systems, h.cursor.as_ref(), limit).await?;
    if matches!(h.feed, Feed::Csql(_)) {
        let (keep, dropped) = csqls_worth_publishing(ctx.pool, connection_id, records, &h.me).await?;
        return Ok(Page { keep, dropped, next, has_more });
    }
    // A CRM record outside the connection's sync scope is, for the sync, as
    // if deleted: judged (and sent) so, its prospect is recycled (issue 28).
    // Judged here, before the echo rule below, because a record that leaves
    // the scope through a field the mapping does not carry brings no field
    // news and would be dropped: marked deleted, it is lifecycle news. The
    // matcher judges again (see `Matcher::match_all`).
    let mut records = records;
    for r in records.iter_mut() {
        settings.sync_scope.apply(r);
    }
    let known = identities_of(ctx.pool, connection_id, &records).await?;
    let total = records.len();
    let keep: Vec<SourceRecord> = records
        .into_iter()
        .filter(|r| worth_publishing(r, known.get(&key_of(r)).map(IdentityRow::known).as_ref(), &settings.field_map, &h.me))
        .collect();
    Ok(Page { dropped: total - keep.len(), keep, next, has_more })
}

/// The messages that carry `records` to the matcher as changes detected
/// now, `per_message` records each, each record with its own trace started
/// in `spans`.
pub fn change_messages(
    connection_id: &str,
    records: &[SourceRecord],
    lane: Lane,
    per_message: usize,
    spans: &mut RecordSpans,
) -> Vec<Outgoing> {
    let detected_at = Utc::now();
    let mut out = Vec::new();
    for chunk in records.chunks(per_message.max(1)) {
        let changes: Vec<Change> = chunk
            .iter()
            .map(|r| {
                let change_id = Uuid::now_v7();
                let span = record_span(RecordStage::Detect, connection_id, r.object(), &r.record_id(), lane, None);
                let trace = context_of(&span);
                spans.insert(change_id, span);
                Change { change_id, record: r.clone(), trace }
            })
            .collect();
        let batch = ChangeBatch {
            v: MESSAGE_VERSION,
            batch_id: Uuid::now_v7(),
            connection_id: connection_id.to_owned(),
            lane,
            detected_at,
            changes,
        };
        out.push(Outgoing {
            routing_key: Topology::routing_key(Stage::Match, lane),
            body: messages::encode(&batch),
            message_id: batch.batch_id.to_string(),
            headers: vec![("x-connection-id".into(), connection_id.to_owned()), ("x-lane".into(), lane.as_str().into())],
            links: batch.changes.iter().filter_map(|c| c.trace.clone()).collect(),
        });
    }
    out
}

/// Publishes a page in `lane`, confirmed, then moves the feed's cursor.
/// False if the lease was lost meanwhile (another replica took the feed; it
/// starts from the old cursor, so nothing is lost, at worst sent twice).
async fn publish(
    ctx: &PassContext<'_>,
    connection_id: &str,
    per_message: usize,
    h: &mut Held,
    page: Page,
    lane: Lane,
    stats: &mut PassStats,
) -> Result<bool, StageError> {
    // Each record starts its own trace here (I5); the span ends once the
    // record is confirmed published, or the page failed.
    let mut spans = RecordSpans::default();
    let out = change_messages(connection_id, &page.keep, lane, per_message, &mut spans);
    stats.messages += out.len();
    // Confirmed by the broker before the cursor moves: a crash in between
    // publishes the page again, never skips it.
    let published = ctx.broker.publish_confirmed(out).await;
    let outcome = if published.is_ok() { "published" } else { "retry" };
    spans.outcome_all("detected", outcome);
    drop(spans);
    published?;
    let counts = feeds::Counts { published: page.keep.len() as i64, suppressed: page.dropped as i64, batch: lane == Lane::Batch };
    if !feeds::advance(ctx.pool, connection_id, &h.name, ctx.owner, h.lease.token, &page.next.0, counts).await? {
        info!(connection_id, feed = %h.name, "feed lease lost, or the connection paused, during a pass; stopping it");
        h.open = false;
        return Ok(false);
    }
    stats.published += page.keep.len();
    stats.suppressed += page.dropped;
    h.cursor = Some(page.next);
    h.open = page.has_more;
    Ok(true)
}

/// A page with nothing in it can still move the cursor (a stamp cursor
/// arming its look back over the overlap window): keeps that, or the look
/// back would never happen and a late commit would be missed.
async fn keep_cursor(ctx: &PassContext<'_>, connection_id: &str, h: &mut Held, page: Page) -> Result<(), StageError> {
    if h.cursor.as_ref() == Some(&page.next) {
        return Ok(());
    }
    let counts = feeds::Counts { published: 0, suppressed: 0, batch: false };
    if feeds::advance(ctx.pool, connection_id, &h.name, ctx.owner, h.lease.token, &page.next.0, counts).await? {
        h.cursor = Some(page.next);
    }
    Ok(())
}

/// Which of a connection's feeds a pass reads.
#[derive(Debug, Clone, Copy)]
pub enum Select<'a> {
    /// Every feed.
    All,
    /// The feeds of these notified tables, and any feed no table names.
    Tables(&'a HashSet<String>),
    /// The feeds of these names (found with changes by the set-based check).
    Feeds(&'a HashSet<String>),
}

impl Select<'_> {
    fn wants(&self, feed: &Feed) -> bool {
        match self {
            Select::All => true,
            Select::Tables(tables) => feed.table().is_none_or(|t| tables.contains(t)),
            Select::Feeds(names) => names.contains(&feed.name()),
        }
    }
}

/// Runs one pass, under the connection's pass lease `pass`, over the feeds
/// of the connection `select` names that this replica can lease.
pub async fn run_pass(
    ctx: &PassContext<'_>,
    connection_id: &str,
    settings: &ConnectionSettings,
    systems: &Systems,
    select: Select<'_>,
    mut pass: Lease,
) -> Result<PassStats, StageError> {
    // A backlog is read no further ahead than its budget applies it: at
    // 12,000 records an hour, a million read at once would wait 83 hours
    // in the lane (growing stale, and costing an API's calls and the
    // machine's work up front, beside every other connection's live
    // edits). Its own later changes wait behind it in its feeds anyway.
    let limit = ahead_limit(settings, ctx.batch_ahead);
    let queued = batch_lanes::queued(ctx.pool, connection_id).await? + ctx.recently_published.on_their_way(connection_id);
    if queued >= limit {
        debug!(connection_id, queued, limit, "the batch lane is ahead of its budget; not reading further yet");
        return Ok(PassStats { ahead: true, ..PassStats::default() });
    }
    // Live until the lane is known: most passes are a few live changes.
    let mut live = Some(ctx.priority.live());
    let mut held = Vec::new();
    let wanted = |feed: &Feed| select.wants(feed);
    for feed in Feed::for_connection(settings).into_iter().filter(wanted) {
        let name = feed.name();
        if let Some(lease) = feeds::lease(ctx.pool, connection_id, &name, ctx.owner, ctx.lease_ttl).await? {
            let me = feed.integration_user(systems).to_owned();
            held.push(Held { cursor: lease.cursor.clone().map(Cursor), feed, name, lease, me, open: true });
        }
    }
    let mut stats = PassStats::default();
    // First pages with real changes, to choose the lane.
    // Just enough to tell a backfill from live changes: a larger first page
    // of a backfill is a burst of work the read-ahead bound cannot hold
    // back (both feeds' first pages are read before the lane is known).
    let first_limit = settings.batch_threshold + 1;
    // Over an API every message costs calls downstream (a look-up, a read
    // before writing, a write or an import per message and system), so a
    // connection with one carries more records a message (I8).
    let per_message = if settings.ma.is_api() || settings.crm.is_api() { ctx.api_records_per_message } else { ctx.records_per_message };
    let mut first: Vec<Option<Page>> = Vec::with_capacity(held.len());
    for h in held.iter_mut() {
        let mut found = None;
        while h.open {
            let page = read(ctx, connection_id, settings, systems, h, first_limit).await?;
            stats.detected += page.keep.len() + page.dropped;
            if !page.keep.is_empty() {
                found = Some(page);
                break;
            }
            // Only echoes (or nothing): pass them over at once.
            if page.dropped == 0 {
                keep_cursor(ctx, connection_id, h, page).await?;
                h.open = false;
                break;
            }
            publish(ctx, connection_id, per_message, h, page, Lane::Immediate, &mut stats).await?;
        }
        first.push(found);
    }
    let changes: usize = first.iter().flatten().map(|p| p.keep.len()).sum();
    let lane = Lane::for_pass(changes, settings.batch_threshold);
    if changes > 0 {
        stats.lane = Some(lane);
    }
    let batch = lane == Lane::Batch;
    if batch {
        // A backfill's pages wait for the live passes running beside it.
        live = None;
    }
    // Set when the pass lease is lost: the pages read and not yet published
    // are left to the new holder, from the cursors as stored (I1).
    let mut lost = false;
    for (h, page) in held.iter_mut().zip(first) {
        if lost {
            break;
        }
        if let Some(page) = page {
            if batch {
                ctx.priority.give_way().await;
            }
            publish(ctx, connection_id, per_message, h, page, lane, &mut stats).await?;
        }
        // The rest of the pass follows the lane chosen.
        while h.open {
            if batch {
                if queued + stats.published as i64 >= limit {
                    // The cursor stays after the last page published; the
                    // next pass reads on once the lane has drained.
                    debug!(connection_id, queued, published = stats.published, limit, "read a budget's worth ahead; stopping the pass");
                    stats.ahead = true;
                    break;
                }
                ctx.priority.give_way().await;
            }
            // A backfill's pages stop at the read-ahead bound.
            let size = if batch {
                ctx.page_size.min(usize::try_from(limit - queued - stats.published as i64).unwrap_or(1).max(1))
            } else {
                ctx.page_size
            };
            let page = read(ctx, connection_id, settings, systems, h, size).await?;
            stats.detected += page.keep.len() + page.dropped;
            if page.keep.is_empty() && page.dropped == 0 {
                keep_cursor(ctx, connection_id, h, page).await?;
                break;
            }
            publish(ctx, connection_id, per_message, h, page, lane, &mut stats).await?;
            // Long passes keep their leases alive; a pass that lost the
            // connection's stops (another replica's pass has begun).
            match feeds::lease(ctx.pool, connection_id, feeds::PASS, ctx.owner, ctx.lease_ttl).await? {
                Some(l) if l.token == pass.token => pass = l,
                _ => {
                    info!(connection_id, "the connection's pass lease was lost; stopping the pass");
                    lost = true;
                    break;
                }
            }
            match feeds::lease(ctx.pool, connection_id, &h.name, ctx.owner, ctx.lease_ttl).await? {
                Some(l) if l.token == h.lease.token => h.lease = l,
                _ => h.open = false,
            }
        }
    }
    if batch {
        ctx.recently_published.add(connection_id, stats.published as i64);
    }
    if stats.detected > 0 {
        debug!(connection_id, ?stats, "pass done");
    }
    drop(live);
    Ok(stats)
}

#[cfg(test)]
mod ahead_tests {
    use super::*;

    #[test]
    fn a_backlog_is_read_five_minutes_of_budget_ahead_and_never_less_than_the_floor() {
        let mut s = ConnectionSettings::default();
        let five_minutes = Duration::from_secs(300);
        s.batch_budget_per_hour = 36_000;
        assert_eq!(ahead_limit(&s, five_minutes), 3_000);
        s.batch_budget_per_hour = 1;
        assert_eq!(ahead_limit(&s, five_minutes), MIN_AHEAD_RECORDS, "a budget held at nothing still fills a lane");
        s.batch_budget_per_hour = u32::MAX;
        assert!(ahead_limit(&s, five_minutes) > 300_000_000, "a lifted budget lifts it");
    }

    #[test]
    fn what_was_just_published_counts_until_the_lane_can_show_it() {
        let recent = RecentlyPublished::default();
        recent.add("a", 600);
        recent.add("a", 400);
        recent.add("b", 0);
        assert_eq!((recent.on_their_way("a"), recent.on_their_way("b")), (1_000, 0));
    }
}
