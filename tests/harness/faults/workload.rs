//! The fault suite's data and the users editing it: linked prospect ↔
//! lead/contact pairs (by CRM id and by email only), new prospects assigned
//! to a sales user while the faults go on (each must create exactly one
//! lead, R3), and a writer that keeps editing mapped fields on both sides
//! with values never written before, remembering the last one per record
//! and field so the verifier knows what each side must end up holding.
//!
//! Every record lives under `@faults.example`, apart from the sandbox's own
//! seed data the run may add around it; the writer edits through SQL as the
//! systems' admins (never the integration user, whose writes are echoes).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::task::JoinHandle;

use crate::TestApp;
use crmsync_infra::CancellationToken;

pub const DOMAIN: &str = "@faults.example";

/// Which system a value was written in: the engine's own notion of a side.
pub use crmsync_domain::merge::Side;

/// The CRM object a prospect is linked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrmKind {
    Lead,
    Contact,
}

/// The mapped fields the writer edits (the connection's default mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    FirstName,
    LastName,
    Title,
    City,
    /// `crm_wins`: edited in the CRM only, so its value must reach the MA.
    Phone,
}

impl Field {
    pub const ALL: [Field; 5] = [Field::FirstName, Field::LastName, Field::Title, Field::City, Field::Phone];
    /// The `most_recent` fields: the later edit wins, from either side.
    pub const MOST_RECENT: [Field; 4] = [Field::FirstName, Field::LastName, Field::Title, Field::City];

    pub fn column(self, side: Side, kind: CrmKind) -> &'static str {
        match (self, side, kind) {
            (Field::FirstName, _, _) => "first_name",
            (Field::LastName, _, _) => "last_name",
            (Field::Title, Side::Ma, _) => "job_title",
            (Field::Title, Side::Crm, _) => "title",
            (Field::City, Side::Crm, CrmKind::Contact) => "mailing_city",
            (Field::City, _, _) => "city",
            (Field::Phone, _, _) => "phone",
        }
    }

    /// A value no one has written before.
    fn value(self, seq: u64) -> String {
        match self {
            Field::FirstName => format!("First w{seq}"),
            Field::LastName => format!("Last w{seq}"),
            Field::Title => format!("Title w{seq}"),
            Field::City => format!("City w{seq}"),
            Field::Phone => format!("555-{seq:06}"),
        }
    }
}

pub fn table(side: Side, kind: CrmKind) -> &'static str {
    match (side, kind) {
        (Side::Ma, _) => "ma.prospects",
        (Side::Crm, CrmKind::Lead) => "crm.leads",
        (Side::Crm, CrmKind::Contact) => "crm.contacts",
    }
}

/// A prospect and its CRM record, linked before the run.
#[derive(Debug, Clone)]
pub struct Pair {
    pub prospect: i64,
    pub kind: CrmKind,
    pub crm_id: String,
    pub email: String,
}

impl Pair {
    fn id(&self, side: Side) -> String {
        match side {
            Side::Ma => self.prospect.to_string(),
            Side::Crm => self.crm_id.clone(),
        }
    }
}

/// A record the writer edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `Workload::pairs[i]`.
    Pair(usize),
    /// `Ledger::created[i]`: edited in the MA only (its lead's id is the
    /// engine's to make).
    Created(usize),
}

/// The last value written to one field of one record.
#[derive(Debug, Clone)]
pub struct LastWrite {
    pub value: String,
    pub side: Side,
    pub seq: u64,
    /// When the system stamped the edit (its field change time).
    pub at: String,
}

/// A prospect created and assigned during the run.
#[derive(Debug, Clone)]
pub struct Created {
    pub prospect: i64,
    pub email: String,
}

/// What the writer did.
#[derive(Debug, Default)]
pub struct Ledger {
    pub last: HashMap<(Target, Field), LastWrite>,
    pub created: Vec<Created>,
    pub edits: u64,
    /// Writes retried because PostgreSQL was away.
    pub retries: u64,
}

/// The users the workload acts as.
#[derive(Debug, Clone)]
pub struct Actors {
    pub ma_admin: String,
    pub crm_admin: String,
    /// The sales user new prospects are assigned to, and its CRM user.
    pub ma_user: i64,
    pub crm_owner: String,
}

impl Actors {
    fn of(&self, side: Side) -> &str {
        match side {
            Side::Ma => &self.ma_admin,
            Side::Crm => &self.crm_admin,
        }
    }
}

/// The linked data set, before any tier runs.
#[derive(Debug)]
pub struct Workload {
    pub pairs: Vec<Pair>,
    /// A pair the writer never touches: recovery probes edit it.
    pub probe: Pair,
    pub actors: Actors,
}

/// Sizes of the data set.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub leads_by_id: i64,
    pub contacts_by_id: i64,
    pub leads_by_email: i64,
}

/// Inserts `n` CRM records (leads or contacts) and, for each, a prospect with
/// the same email and values, linked by id when `link` says so.
async fn linked(app: &TestApp, a: &Actors, kind: CrmKind, tag: &str, n: i64, link: bool) -> Vec<Pair> {
    let crm = match kind {
        CrmKind::Lead => {
            "INSERT INTO crm.leads (tenant, first_name, last_name, company, email, title, city, phone, owner_id, last_modified_by, created_by) \
             SELECT 'default', 'First ' || g, 'Last ' || g, 'Faults Co', $1 || g || $2, 'Title 0', 'City 0', '555-0', $3, $4, $4 \
             FROM generate_series(1, $5) g RETURNING id, email"
        }
        CrmKind::Contact => {
            "INSERT INTO crm.contacts (tenant, first_name, last_name, email, title, mailing_city, phone, owner_id, last_modified_by, created_by) \
             SELECT 'default', 'First ' || g, 'Last ' || g, $1 || g || $2, 'Title 0', 'City 0', '555-0', $3, $4, $4 \
             FROM generate_series(1, $5) g RETURNING id, email"
        }
    };
    let rows: Vec<(String, String)> =
        sqlx::query_as(crm).bind(tag).bind(DOMAIN).bind(&a.crm_owner).bind(&a.crm_admin).bind(n).fetch_all(&app.pool).await.unwrap();
    let link_column = match kind {
        CrmKind::Lead => "crm_lead_fid",
        CrmKind::Contact => "crm_contact_fid",
    };
    let mut pairs = Vec::new();
    for (crm_id, email) in rows {
        let g = email.trim_start_matches(tag).trim_end_matches(DOMAIN).to_owned();
        let prospect: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO ma.prospects (tenant, email, first_name, last_name, company, job_title, city, phone, {link_column}, last_modified_by) \
             VALUES ('default', $1, 'First ' || $2, 'Last ' || $2, 'Faults Co', 'Title 0', 'City 0', '555-0', $3, $4) RETURNING id"
        )))
        .bind(&email)
        .bind(&g)
        .bind(link.then_some(&crm_id))
        .bind(&a.ma_admin)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        pairs.push(Pair { prospect, kind, crm_id, email });
    }
    pairs
}

impl Workload {
    /// Creates the data set: the sandbox's seed data around it when
    /// `background_scale` is above 0, then the linked pairs.
    pub async fn setup(app: &TestApp, sizes: Sizes, background_scale: f64, seed: u64) -> Workload {
        if background_scale > 0.0 {
            let opts = crmsync_sandbox::seed::SeedOptions { scale: background_scale, seed };
            crmsync_sandbox::seed::seed(&app.sandbox, &opts).await.expect("the sandbox's seed data");
        }
        let (ma_user, crm_owner) = app.sales_user("Faultline").await;
        let (ma_admin, crm_admin) = app.admins().await;
        let actors = Actors { ma_admin, crm_admin, ma_user, crm_owner };
        let mut pairs = linked(app, &actors, CrmKind::Lead, "lead", sizes.leads_by_id, true).await;
        pairs.extend(linked(app, &actors, CrmKind::Contact, "contact", sizes.contacts_by_id, true).await);
        pairs.extend(linked(app, &actors, CrmKind::Lead, "byemail", sizes.leads_by_email, false).await);
        let probe = linked(app, &actors, CrmKind::Lead, "probe", 1, true).await.remove(0);
        Workload { pairs, probe, actors }
    }
}

/// Runs `f` until it succeeds: PostgreSQL may be restarting. Gives up after
/// two minutes (no restart lasts that long). Returns the retries it took.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> (T, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let started = Instant::now();
    let mut retries = 0;
    loop {
        match f().await {
            Ok(v) => return (v, retries),
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(120), "{what} kept failing: {e}");
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Writes `value` into one field of one record, as the side's admin: the
/// change time the system stamped on the field, and the retries it took.
pub async fn write(pool: &PgPool, actors: &Actors, side: Side, kind: CrmKind, id: &str, field: Field, value: &str) -> (String, u64) {
    let table = table(side, kind);
    let column = field.column(side, kind);
    let cast = if side == Side::Ma { "::bigint" } else { "" };
    let sql = format!(
        "UPDATE {table} SET {column} = $1, last_modified_by = $2 WHERE id = $3{cast} \
         RETURNING coalesce(field_stamps->'{column}'->>'at', '')"
    );
    retrying("a workload edit", || {
        sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone())).bind(value).bind(actors.of(side)).bind(id).fetch_one(pool)
    })
    .await
}

/// Reads one field of one record.
pub async fn read(pool: &PgPool, side: Side, kind: CrmKind, id: &str, field: Field) -> Option<String> {
    let cast = if side == Side::Ma { "::bigint" } else { "" };
    let sql = format!("SELECT {} FROM {} WHERE id = $1{cast}", field.column(side, kind), table(side, kind));
    sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(sql)).bind(id).fetch_one(pool).await.ok().flatten()
}

/// Creates a prospect assigned to the sales user; safe to retry (a lost
/// commit acknowledgement is found again by email, never created twice).
async fn create_assigned(pool: &PgPool, actors: &Actors, n: usize) -> (Created, u64) {
    let email = format!("new{n}{DOMAIN}");
    let (prospect, retries) = retrying("creating a prospect", || async {
        if let Some(id) =
            sqlx::query_scalar::<_, i64>("SELECT id FROM ma.prospects WHERE email = $1").bind(&email).fetch_optional(pool).await?
        {
            return Ok(id);
        }
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO ma.prospects (tenant, email, first_name, last_name, company, job_title, city, assigned_user_id, last_modified_by) \
             VALUES ('default', $1, 'New', 'Prospect ' || $2, 'Faults New Co', 'Title 0', 'City 0', $3, $4) RETURNING id",
        )
        .bind(&email)
        .bind(n.to_string())
        .bind(actors.ma_user)
        .bind(&actors.ma_admin)
        .fetch_one(pool)
        .await
    })
    .await;
    (Created { prospect, email }, retries)
}

/// How the writer behaves.
#[derive(Debug, Clone, Copy)]
pub struct WriterPace {
    /// Pause between two actions.
    pub every: Duration,
    /// Share of actions that create an assigned prospect.
    pub create_share: f64,
    /// Most prospects created in a run.
    pub max_created: usize,
}

/// Pairs edited far more often than the rest, as a busy account is by sales
/// and marketing at once: edits of one field on both sides close together,
/// the races most-recent-wins and the locks are there for.
const HOT_PAIRS: usize = 16;

/// Starts the writer; it runs until `stop` and hands back what it did.
/// Setting `burst` to n makes it edit hot pairs n times without pausing
/// (so a replica about to be paused or killed holds work).
pub fn spawn_writer(
    pool: PgPool,
    pairs: Vec<Pair>,
    actors: Actors,
    pace: WriterPace,
    seed: u64,
    burst: Arc<AtomicU32>,
    stop: CancellationToken,
) -> JoinHandle<Ledger> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let hot: Vec<usize> = rand::seq::index::sample(&mut rng, pairs.len(), HOT_PAIRS.min(pairs.len())).into_vec();
        let mut ledger = Ledger::default();
        let mut seq = 0u64;
        while !stop.is_cancelled() {
            seq += 1;
            let created = ledger.created.len();
            let bursting = burst.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if !bursting && created < pace.max_created && rng.random_bool(pace.create_share) {
                let (c, retries) = create_assigned(&pool, &actors, created + 1).await;
                ledger.created.push(c);
                ledger.retries += retries;
            } else if !bursting && !ledger.created.is_empty() && rng.random_bool(0.2) {
                // An edit of a prospect whose lead may still be in the making.
                let i = rng.random_range(0..ledger.created.len());
                let field = *Field::MOST_RECENT.choose(&mut rng).unwrap();
                let value = field.value(seq);
                let id = ledger.created[i].prospect.to_string();
                let (at, retries) = write(&pool, &actors, Side::Ma, CrmKind::Lead, &id, field, &value).await;
                ledger.retries += retries;
                ledger.last.insert((Target::Created(i), field), LastWrite { value, side: Side::Ma, seq, at });
                ledger.edits += 1;
            } else {
                let i = if bursting || rng.random_bool(0.25) { *hot.choose(&mut rng).unwrap() } else { rng.random_range(0..pairs.len()) };
                let field = *Field::ALL.choose(&mut rng).unwrap();
                let side = if field == Field::Phone || rng.random_bool(0.5) { Side::Crm } else { Side::Ma };
                let value = field.value(seq);
                let pair = &pairs[i];
                let (at, retries) = write(&pool, &actors, side, pair.kind, &pair.id(side), field, &value).await;
                ledger.retries += retries;
                ledger.last.insert((Target::Pair(i), field), LastWrite { value, side, seq, at });
                ledger.edits += 1;
            }
            if bursting {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pace.every) => {}
            }
        }
        ledger
    })
}

/// Edits the probe pair's title on `from` and waits until the other side
/// shows it: how long the change took, or `None` past `limit`.
pub async fn probe(pool: &PgPool, w: &Workload, n: u32, from: Side, limit: Duration) -> Option<Duration> {
    let value = format!("Probe {n}");
    let p = &w.probe;
    let _ = write(pool, &w.actors, from, p.kind, &p.id(from), Field::Title, &value).await;
    let started = Instant::now();
    let to = from.other();
    while started.elapsed() < limit {
        if read(pool, to, p.kind, &p.id(to), Field::Title).await.as_deref() == Some(value.as_str()) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
