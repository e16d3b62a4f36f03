//! The operator's view per connection (identities, feeds, the batch lane,
//! the API calls of the last 24 hours against the allowance, CSQLs, open
//! sync errors) and what is queued on the broker: what `crmsync status`
//! prints (as text, or as JSON: the [`Status`] shape) and the console's
//! overview shows, gathered by the one function, [`gather`].
//!
//! Read-only (I10): it declares nothing on the broker (depths are
//! passive declares; a queue nobody declared yet is said to be so) and
//! writes nothing in PostgreSQL. It answers within its timeouts whatever
//! state the services are in: PostgreSQL is read within
//! `database.command_timeout_ms`, and the broker's connection and every
//! call on it within `amqp.timeout_ms`. What it could not reach it names,
//! after printing what it could, and it then exits 1.

use std::collections::{BTreeMap, HashMap};

use crmsync_domain::Lane;
use crmsync_domain::merge::Side;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_infra::amqp::Stage;
use crmsync_infra::inspect::Inspector;
use crmsync_infra::{Config, db};
use crmsync_store::audit::Activity;
use crmsync_store::connections::{self, Paused};
use crmsync_store::feeds::FeedState;
use crmsync_store::figures;
use crmsync_systems::allowance::{ApiAllowances, ApiUsage24h, batch_eta, connections_usage, system_name};
use serde::Serialize;
use sqlx::PgPool;

/// Everything `status` says; `status --json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// True when PostgreSQL, the broker and (for real APIs) Redis answered.
    pub ok: bool,
    /// Per connection; empty when PostgreSQL could not be read.
    pub connections: Vec<ConnectionStatus>,
    /// Why PostgreSQL could not be read; null when it was.
    pub database_error: Option<String>,
    /// Why the API calls (counted in Redis) could not be read; null when
    /// they were, or no connection reaches a real API.
    pub redis_error: Option<String>,
    pub broker: BrokerStatus,
    /// The replicas of every tier seen in the last ten minutes, with
    /// whether each was ready (empty when PostgreSQL could not be read).
    pub replicas: Vec<ReplicaStatus>,
}

/// A replica of a tier, as it last said.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    pub tier: String,
    pub replica: String,
    /// Seconds since it last wrote; past three beats it is gone.
    pub seen_secs_ago: i64,
    /// Ready when last seen and seen within three beats.
    pub ready: bool,
    /// Why not, when not: "gone", "draining: shutting down", "Redis: no answer"...
    pub not_ready: Option<String>,
}

/// Replicas older than this are not shown.
const REPLICAS_SHOWN_SECS: i64 = 600;

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStatus {
    pub id: String,
    /// Paused by an admin (`crmsync connection pause`): nothing is written
    /// to its systems and its cursors hold still until it is resumed.
    pub paused: bool,
    /// Since when and by whom, while paused; null while running.
    pub paused_since: Option<chrono::DateTime<chrono::Utc>>,
    pub paused_by: Option<String>,
    pub identities: Identities,
    pub feeds: Vec<FeedStatus>,
    pub batch_lane: BatchLane,
    pub immediate_lane: ImmediateLane,
    /// When a feed last published a change; null before the first.
    pub last_change_detected_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The minute of the last write to either system; null before the first.
    pub last_write_minute: Option<chrono::DateTime<chrono::Utc>>,
    /// Per system reached over a real API: its calls in the last 24 hours.
    pub api: Vec<ApiStatus>,
    pub csqls: Csqls,
    /// Open sync errors per category.
    pub sync_errors: BTreeMap<String, i64>,
}

/// Identities by where they stand.
#[derive(Debug, Clone, Serialize)]
pub struct Identities {
    pub in_sync: i64,
    pub pending_assignment: i64,
    /// Waiting for their lead or prospect to be created.
    pub being_created: i64,
    /// Whose creation was refused: an open sync error names why.
    pub creation_failed: i64,
    /// Whose prospect is in the MA's recycle bin (R8).
    pub recycled: i64,
}

/// The immediate lane's recent pace.
#[derive(Debug, Clone, Serialize)]
pub struct ImmediateLane {
    /// Records applied in the last five minutes (and this one so far).
    pub applied_last_5_min: i64,
    /// The same, a second.
    pub per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedStatus {
    pub feed: String,
    pub published: i64,
    pub echoes_dropped: i64,
    pub leased_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchLane {
    pub backlog: i64,
    pub budget_per_hour: u32,
    pub used_last_hour: i64,
    /// The share of the budget the last hour used (1.0: all of it).
    pub used_share: f64,
    /// Until the backlog is done, given both the budget and the API
    /// allowances (the later of the two).
    pub eta_secs: u64,
    /// Until the backlog is done at the budget's pace alone.
    pub budget_eta_secs: u64,
}

/// A connection's calls to one system over the last 24 hours (I8).
#[derive(Debug, Clone, Serialize)]
pub struct ApiStatus {
    /// `crm` or `ma`.
    pub system: &'static str,
    pub used_24h: u64,
    /// `api_daily_allowance`; null when none is set.
    pub allowance: Option<u64>,
    /// Every call per endpoint kind (query, write, bulk, import, events...).
    pub by_kind: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Csqls {
    pub target: String,
    pub record_type: String,
    pub sync_user: String,
    pub cs_platform: bool,
    /// CSQLs per outcome (synced, refused, rejected).
    pub outcomes: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerStatus {
    pub reachable: bool,
    /// Why the broker (or one of its answers) could not be had; null if
    /// every queue was read.
    pub error: Option<String>,
    /// The queues read, in order; those not read are not listed.
    pub queues: Vec<QueueStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub queue: String,
    pub stage: &'static str,
    /// `immediate` or `batch` for a work queue, null for a dead-letter queue.
    pub lane: Option<&'static str>,
    /// Messages ready; null when the queue has not been declared yet.
    pub messages: Option<u32>,
}

/// What a read-only command says when PostgreSQL did not answer in time.
pub fn db_timeout(config: &Config) -> String {
    format!("PostgreSQL did not answer within {} ms (database.command_timeout_ms)", config.database.command_timeout_ms)
}

/// Why a database read failed, for people: a statement PostgreSQL
/// cancelled at the timeout says so.
fn db_failure(e: &anyhow::Error, config: &Config) -> String {
    let cancelled = e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some_and(db::cancelled));
    if cancelled { db_timeout(config) } else { format!("{e:#}") }
}

/// Every figure of the connections asked for, read with one statement
/// each whatever their number, by connection.
struct Figures {
    settings: HashMap<String, ConnectionSettings>,
    batch: HashMap<String, crmsync_applier::BatchFigures>,
    states: HashMap<String, Vec<(String, i64, i64)>>,
    refused: HashMap<String, i64>,
    feeds: HashMap<String, Vec<FeedState>>,
    activity: HashMap<String, Activity>,
    csqls: HashMap<String, BTreeMap<String, i64>>,
    errors: HashMap<String, BTreeMap<String, i64>>,
    paused: HashMap<String, Paused>,
}

impl Figures {
    /// The figures of `ids`; `only`: the settings of the one connection
    /// asked for (`status -c <id>`), read already, so that no other
    /// connection's settings are loaded.
    async fn read(pool: &PgPool, ids: &[String], only: Option<ConnectionSettings>) -> anyhow::Result<Figures> {
        let mut out = Figures {
            settings: HashMap::new(),
            batch: HashMap::new(),
            states: HashMap::new(),
            refused: figures::creations_refused(pool, ids).await?.into_iter().collect(),
            feeds: HashMap::new(),
            activity: figures::activity(pool, ids).await?.into_iter().collect(),
            csqls: HashMap::new(),
            errors: HashMap::new(),
            paused: connections::all_paused(pool).await?.into_iter().collect(),
        };
        match (only, ids) {
            (Some(settings), [id]) => {
                out.batch.insert(id.clone(), crmsync_applier::batch_figures(pool, id).await?);
                out.settings.insert(id.clone(), settings);
            }
            _ => {
                for (id, settings, batch) in crmsync_applier::batch_figures_all(pool).await? {
                    out.settings.insert(id.clone(), settings);
                    out.batch.insert(id, batch);
                }
                // Settings that do not parse are left out of the set read:
                // the connection's own load says why.
                for id in ids.iter().filter(|id| !out.settings.contains_key(*id)) {
                    connections::load(pool, id).await?;
                }
            }
        }
        for (id, state, n, recycled) in figures::identity_counts(pool, ids).await? {
            out.states.entry(id).or_default().push((state, n, recycled));
        }
        for f in figures::feeds(pool, ids).await? {
            out.feeds.entry(f.connection_id.clone()).or_default().push(f);
        }
        for (id, outcome, n) in figures::csql_outcomes(pool, ids).await? {
            out.csqls.entry(id).or_default().insert(outcome, n);
        }
        for (id, category, n) in figures::open_errors(pool, ids).await? {
            out.errors.entry(id).or_default().insert(category, n);
        }
        Ok(out)
    }
}

/// One connection's status from the figures read, with its API calls of
/// the last 24 hours (`usage`: none when it reaches no real API, or Redis
/// could not be read).
fn connection(f: &mut Figures, usage: Vec<(Side, ApiUsage24h)>, id: &str) -> anyhow::Result<ConnectionStatus> {
    let settings = f.settings.remove(id).ok_or_else(|| anyhow::anyhow!("connection {id} is gone"))?;
    let states = f.states.remove(id).unwrap_or_default();
    let count = |s: &str| states.iter().find(|(k, _, _)| k == s).map_or(0, |(_, n, _)| *n);
    let creation_failed = f.refused.remove(id).unwrap_or(0);
    let identities = Identities {
        in_sync: count("linked"),
        pending_assignment: count("pending_assignment"),
        being_created: (count("creating_crm") + count("creating_ma") - creation_failed).max(0),
        creation_failed,
        recycled: states.iter().map(|(_, _, r)| r).sum(),
    };
    let feeds = f.feeds.remove(id).unwrap_or_default();
    let last_change_detected_at = feeds.iter().filter_map(|f| f.last_published_at).max();
    let feeds = feeds
        .into_iter()
        .map(|f| FeedStatus { feed: f.feed, published: f.published, echoes_dropped: f.suppressed, leased_by: f.lease_owner })
        .collect();
    let activity = f.activity.remove(id).unwrap_or(Activity { immediate_applied_recently: 0, last_write_minute: None });
    // Five whole minutes and the one under way: about 5.5 on average.
    let immediate_lane = ImmediateLane {
        applied_last_5_min: activity.immediate_applied_recently,
        per_second: activity.immediate_applied_recently as f64 / 330.0,
    };
    let b = f.batch.remove(id).expect("read with the settings");
    let eta = batch_eta(b.eta, u64::try_from(b.backlog).unwrap_or(0), u64::try_from(b.used_last_hour).unwrap_or(0), &usage);
    let batch_lane = BatchLane {
        backlog: b.backlog,
        budget_per_hour: b.budget_per_hour,
        used_last_hour: b.used_last_hour,
        used_share: b.used_share(),
        eta_secs: eta.as_secs(),
        budget_eta_secs: b.eta.as_secs(),
    };
    let api = usage
        .into_iter()
        .map(|(side, u)| ApiStatus { system: system_name(side), used_24h: u.used, allowance: u.allowance, by_kind: u.by_kind })
        .collect();
    let csqls = Csqls {
        target: settings.csql.target.to_string(),
        record_type: settings.csql.record_type.to_string(),
        sync_user: settings.csql.sync_user.to_string(),
        cs_platform: settings.cs.is_some(),
        outcomes: f.csqls.remove(id).unwrap_or_default(),
    };
    let pause = f.paused.remove(id);
    Ok(ConnectionStatus {
        id: id.to_owned(),
        paused: pause.is_some(),
        paused_since: pause.as_ref().map(|p| p.paused_at),
        paused_by: pause.and_then(|p| p.paused_by),
        identities,
        feeds,
        batch_lane,
        immediate_lane,
        last_change_detected_at,
        last_write_minute: activity.last_write_minute,
        api,
        csqls,
        sync_errors: f.errors.remove(id).unwrap_or_default(),
    })
}

/// Reads every connection's figures (or `only`'s) from PostgreSQL, on
/// `pool` when given (a server that keeps one), else on a pool of its own
/// whose statements time out as a read-only command's do.
async fn connections(
    config: &Config,
    pool: Option<&PgPool>,
    only: Option<&str>,
    redis_error: &mut Option<String>,
) -> anyhow::Result<(Vec<ConnectionStatus>, Vec<ReplicaStatus>)> {
    if let Some(pool) = pool {
        return Ok((connections_on(config, pool, only, redis_error).await?, replicas(pool).await?));
    }
    let pool = db::connect_reading(&config.database).await?;
    db::ensure_migrated(&pool).await?;
    let out = async { Ok((connections_on(config, &pool, only, redis_error).await?, replicas(&pool).await?)) }.await;
    pool.close().await;
    out
}

/// The replicas seen lately; one unseen for three beats is gone.
async fn replicas(pool: &PgPool) -> anyhow::Result<Vec<ReplicaStatus>> {
    let now = chrono::Utc::now();
    let gone_after = 3 * crmsync_infra::health::BEAT.as_secs() as i64;
    Ok(crmsync_store::replicas::recent(pool, REPLICAS_SHOWN_SECS)
        .await?
        .into_iter()
        .map(|r| {
            let seen_secs_ago = (now - r.seen_at).num_seconds().max(0);
            let gone = seen_secs_ago > gone_after;
            ReplicaStatus {
                tier: r.tier,
                replica: r.replica,
                seen_secs_ago,
                ready: r.ready && !gone,
                not_ready: if gone { Some("gone: not seen since".to_owned()) } else { r.not_ready },
            }
        })
        .collect())
}

async fn connections_on(
    config: &Config,
    pool: &PgPool,
    only: Option<&str>,
    redis_error: &mut Option<String>,
) -> anyhow::Result<Vec<ConnectionStatus>> {
    let (ids, only) = match only {
        Some(id) => (vec![id.to_owned()], Some(connections::load(pool, id).await?)),
        None => (connections::ids(pool).await?, None),
    };
    let mut figures = Figures::read(pool, &ids, only).await?;
    // The API calls of every connection asked for, in one round trip to
    // Redis, which is reached only when a connection has a real API.
    // Unreachable: the calls are not shown, and the status says why.
    let allowances = ApiAllowances::new(&config.redis);
    let asked = ids.iter().filter_map(|id| figures.settings.get_key_value(id)).map(|(id, s)| (id.as_str(), s));
    let mut usage = connections_usage(&allowances, asked).await.unwrap_or_else(|e| {
        *redis_error = Some(format!("Redis (API calls of the last 24 h): {e}"));
        HashMap::new()
    });
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let calls = usage.remove(&id).unwrap_or_default();
        out.push(connection(&mut figures, calls, &id)?);
    }
    Ok(out)
}

/// Reads the depth of every queue, stopping at the first call the broker
/// does not answer.
async fn broker(config: &Config, kept: Option<&Inspector>) -> BrokerStatus {
    let own;
    let inspector = match kept {
        Some(kept) => kept,
        None => {
            own = Inspector::new(&config.amqp, "crmsync-status");
            &own
        }
    };
    if let Err(e) = inspector.connect().await {
        return BrokerStatus { reachable: false, error: Some(format!("unreachable: {e}")), queues: Vec::new() };
    }
    let topology = inspector.topology().clone();
    let mut asked: Vec<(String, Stage, Option<Lane>)> =
        topology.shared_queues().into_iter().map(|(stage, lane, q)| (q, stage, Some(lane))).collect();
    asked.extend([Stage::Match, Stage::Apply].map(|stage| (topology.dead_queue(stage), stage, None)));
    let mut status = BrokerStatus { reachable: true, error: None, queues: Vec::new() };
    for (queue, stage, lane) in asked {
        match inspector.depth(&queue).await {
            Ok(messages) => status.queues.push(QueueStatus { queue, stage: stage.as_str(), lane: lane.map(Lane::as_str), messages }),
            Err(e) => {
                status.error = Some(format!("{queue}: {e}"));
                break;
            }
        }
    }
    if kept.is_none() {
        inspector.close().await;
    }
    status
}

/// Gathers the status, each service within its timeout, reading
/// PostgreSQL on `pool` and the broker through `inspector` when given (a
/// server that keeps them: the console), else on connections of its own
/// (a command).
pub async fn gather(config: &Config, pool: Option<&PgPool>, inspector: Option<&Inspector>, only: Option<&str>) -> Status {
    let limit = config.database.command_timeout();
    let mut redis_error = None;
    let ((connections, replicas), database_error) =
        match tokio::time::timeout(limit, connections(config, pool, only, &mut redis_error)).await {
            Ok(Ok(c)) => (c, None),
            Ok(Err(e)) => (Default::default(), Some(db_failure(&e, config))),
            Err(_) => (Default::default(), Some(db_timeout(config))),
        };
    // The queues are shared by every connection: the same few round trips
    // to the broker, whatever the number of connections.
    let broker = broker(config, inspector).await;
    Status {
        ok: database_error.is_none() && broker.error.is_none() && redis_error.is_none(),
        connections,
        database_error,
        redis_error,
        broker,
        replicas,
    }
}

/// A duration for people: "2 h 05 min", "3 min 20 s", "40 s", "now";
/// "never" past a year (a lane the allowance leaves nothing to).
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 365 * 86_400 => "never (raise the API allowance)".into(),
        0 => "now".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}
