//! The identity map: who is whose counterpart (I2), and each identity's
//! per-field versions (I3).
//!
//! Rows are changed only under the identity's Redis lock, and every change
//! carries that lock's fencing token: a write with a token older than the
//! row's is refused, so a holder that outlived its lock cannot overwrite a
//! newer decision. The unique indexes on prospect, CRM id and email are the
//! backstop: a second identity for one person cannot be stored at all.
//!
//! The field state is stored in one of two forms (migration 0007): the
//! `fields` jsonb column, which the previous release reads, or the same JSON
//! as text in `fields_text`, which PostgreSQL neither parses nor prints.
//! Rows are read in either form; writes follow `storage_formats`, which
//! every write statement reads for itself (`text_form!`), so a switch
//! takes effect at once on every replica.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use crmsync_domain::echo::KnownIdentity;
use crmsync_domain::matching::{IdentityPatch, IdentityRef, IdentityStatus};
use crmsync_domain::merge::{IdentityFields, Part, Side};
use crmsync_domain::{CrmId, CrmObject};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

/// One identity as stored.
#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub id: Uuid,
    pub status: String,
    pub prospect_id: Option<i64>,
    pub crm_object: Option<String>,
    pub crm_id: Option<String>,
    pub email: Option<String>,
    pub owner_id: Option<String>,
    pub fields: IdentityFields,
    pub ma_link_written: bool,
    pub ma_recycled: bool,
    pub crm_account_id: Option<String>,
    pub mirror_crm_id: Option<String>,
    /// When the identity became linked; `None` while it is not.
    pub linked_at: Option<DateTime<Utc>>,
    /// The change whose matching linked it, where the matcher did
    /// (migration 0011).
    pub linked_by: Option<Uuid>,
}

impl IdentityRow {
    /// A row with as much of its state as `state` asks for, in whichever
    /// form the row holds it. A text row is read in part where only part
    /// is wanted; a jsonb row comes cut by the server or is cut here.
    fn read(row: &PgRow, state: State<'_>) -> Result<Self, sqlx::Error> {
        let fields = match row.try_get::<Option<&str>, _>("fields_text")? {
            Some(text) => match state.part() {
                Some(part) => IdentityFields::parse_part(text, part),
                None => serde_json::from_str(text),
            }
            .map_err(|e| sqlx::Error::ColumnDecode { index: "fields_text".into(), source: e.into() })?,
            None => {
                let mut fields = row.try_get::<Option<Json<IdentityFields>>, _>("fields")?.map(|j| j.0).unwrap_or_default();
                if let Some(part) = state.part() {
                    fields.keep_part(part);
                }
                fields
            }
        };
        Ok(IdentityRow {
            id: row.try_get("id")?,
            status: row.try_get("status")?,
            prospect_id: row.try_get("prospect_id")?,
            crm_object: row.try_get("crm_object")?,
            crm_id: row.try_get("crm_id")?,
            email: row.try_get("email")?,
            owner_id: row.try_get("owner_id")?,
            fields,
            ma_link_written: row.try_get("ma_link_written")?,
            ma_recycled: row.try_get("ma_recycled")?,
            crm_account_id: row.try_get("crm_account_id")?,
            mirror_crm_id: row.try_get("mirror_crm_id")?,
            linked_at: row.try_get("linked_at")?,
            linked_by: row.try_get("linked_by")?,
        })
    }

    pub fn status(&self) -> IdentityStatus {
        // The table's CHECK constraint admits only known statuses.
        IdentityStatus::parse(&self.status).unwrap_or(IdentityStatus::PendingAssignment)
    }

    pub fn crm_object(&self) -> Option<CrmObject> {
        self.crm_object.as_deref().and_then(CrmObject::parse)
    }

    pub fn crm_id(&self) -> Option<CrmId> {
        self.crm_id.as_deref().and_then(|s| CrmId::parse(s).ok())
    }

    pub fn as_ref(&self) -> IdentityRef {
        IdentityRef { id: self.id, status: self.status(), prospect_id: self.prospect_id, crm_id: self.crm_id() }
    }

    /// The row as the echo rule reads it (`crmsync_domain::echo`).
    pub fn known(&self) -> KnownIdentity<'_> {
        KnownIdentity { status: self.status(), fields: &self.fields, crm_account_id: self.crm_account_id.as_deref() }
    }
}

/// Keys to look identities up by; any match returns the row.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub ids: Vec<Uuid>,
    pub prospect_ids: Vec<i64>,
    pub crm_ids: Vec<String>,
    pub emails: Vec<String>,
}

/// How much of each identity's per-field state [`find`] loads: about 3 KB
/// of JSON per identity, sent by the server and parsed by the caller.
#[derive(Debug, Clone, Copy)]
pub enum State<'a> {
    /// All of it (the applier merges into it).
    All,
    /// These fields' state only (the matcher reads the email's, R8).
    Only(&'a [&'a str]),
    /// What the engine knows one side holds, for every field, and nothing
    /// else (the producer's echo filter compares a record with it, I7).
    Known(Side),
    /// None: `fields` comes back empty.
    Skip,
}

impl<'a> State<'a> {
    /// The part of a whole state this keeps, if not all or nothing.
    fn part(self) -> Option<Part<'a>> {
        match self {
            State::All | State::Skip => None,
            State::Only(fields) => Some(Part::Fields(fields)),
            State::Known(side) => Some(Part::Known(side)),
        }
    }
}

/// Identities matching any of the keys, with as much of their per-field
/// state as `state` asks for.
pub async fn find<'e>(e: impl PgExecutor<'e>, connection_id: &str, keys: &Keys, state: State<'_>) -> Result<Vec<IdentityRow>, sqlx::Error> {
    // One index lookup per kind of key, then each identity found by its
    // primary key. A single `id = ANY(..) OR prospect_id = ANY(..) OR ..`
    // made the planner prove each array element against each partial
    // index: 7 ms of planning for 100 keys of each kind, against 0.4 ms for
    // this form. The connection is checked on the row found by `id`, not
    // in an outer `WHERE` over the table: there, with statistics taken
    // while the table was small, the planner read the whole connection
    // through `identities_status` (an index dropped since, migration 0008)
    // to intersect it with the keys (6.6 ms for 50 keys of each kind at
    // 10,000 identities, against 0.9 ms). No form
    // survives a table with no statistics at all: before its first ANALYZE
    // the planner takes `connection_id = $1` to match 0.5% of the rows and
    // hash-joins this one too. The tiers analyze the table as a first sync
    // fills it (`crmsync_infra::statistics`).
    // From a jsonb row a subset is cut by key: the server decompresses the
    // whole state either way, but prints and sends only the subset. A text
    // row is sent whole (cutting it would mean parsing it) and only the part
    // wanted is read from it here.
    let sql = "SELECT i.id, status, prospect_id, crm_object, crm_id, email, owner_id, \
               CASE WHEN i.fields_text IS NOT NULL THEN NULL WHEN $6 THEN fields WHEN $7::text[] IS NULL THEN '{}'::jsonb \
                    ELSE (SELECT coalesce(jsonb_object_agg(f, i.fields -> f), '{}') FROM unnest($7::text[]) f WHERE i.fields ? f) \
               END AS fields, \
               CASE WHEN $6 OR $7::text[] IS NOT NULL THEN i.fields_text END AS fields_text, \
               ma_link_written, ma_recycled, crm_account_id, mirror_crm_id, linked_at, linked_by \
               FROM (SELECT DISTINCT found.id FROM (SELECT unnest($2::uuid[]) AS id \
                     UNION ALL SELECT id FROM identities WHERE connection_id = $1 AND prospect_id = ANY($3) \
                     UNION ALL SELECT id FROM identities WHERE connection_id = $1 AND crm_id = ANY($4) \
                     UNION ALL SELECT id FROM identities WHERE connection_id = $1 AND email = ANY($5)) found) k \
               JOIN identities i ON i.id = k.id WHERE i.connection_id = $1";
    // Not a cached prepared statement: planned for its own keys each time.
    // The table starts empty and a first sync fills it fast, and a generic
    // plan cached while it was empty kept scanning the whole table for
    // every batch (73 ms per 100 keys at 20,000 identities against 1.2 ms
    // through the indexes) until autovacuum happened to analyze it. The
    // same holds for the other batch statements on tables a first sync
    // fills (`persistent(false)` there too).
    let rows = sqlx::query(sql)
        .persistent(false)
        .bind(connection_id)
        .bind(&keys.ids)
        .bind(&keys.prospect_ids)
        .bind(&keys.crm_ids)
        .bind(&keys.emails)
        .bind(matches!(state, State::All | State::Known(_)))
        .bind(match state {
            State::Only(fields) => Some(fields),
            State::All | State::Known(_) | State::Skip => None,
        })
        .fetch_all(e)
        .await?;
    rows.iter().map(|row| IdentityRow::read(row, state)).collect()
}

/// True in a write statement when the state is to be stored as text
/// (`storage_formats`, migration 0007). Evaluated once per statement; a
/// missing row means the previous release's form.
macro_rules! text_form {
    () => {
        "coalesce((SELECT format = 'text' FROM storage_formats WHERE name = 'identity_state'), false)"
    };
}

/// [`insert_many`]'s statement, ending in `tail`.
macro_rules! insert_identities {
    ($tail:literal) => {
        concat!(
            "INSERT INTO identities (id, connection_id, status, prospect_id, crm_object, crm_id, email, owner_id, fence, \
                                     fields, fields_text, linked_at, linked_by) \
             SELECT d.id, $1, d.status, d.prospect_id, d.crm_object, d.crm_id, d.email, d.owner_id, d.fence, \
                    CASE WHEN f.text THEN '{}'::jsonb ELSE d.fields::jsonb END, CASE WHEN f.text THEN d.fields END, \
                    CASE WHEN d.status = 'linked' THEN now() END, CASE WHEN d.status = 'linked' THEN d.change_id END \
             FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], \
                         $11::uuid[]) \
                  AS d(id, status, prospect_id, crm_object, crm_id, email, owner_id, fence, fields, change_id), \
                  (SELECT ",
            text_form!(),
            " AS text) f ",
            $tail,
            " RETURNING id"
        )
    };
}

/// The state as the JSON text both forms are written from: bound as text,
/// it is parsed into jsonb only where the statement stores that form.
fn state_text(fields: &IdentityFields) -> Result<String, sqlx::Error> {
    // Sized for a whole state up front: grown from empty, the buffer was
    // reallocated and copied at every doubling, for every state saved.
    let mut out = Vec::with_capacity(STATE_TEXT_CAPACITY);
    serde_json::to_writer(&mut out, fields).map_err(|e| sqlx::Error::Encode(e.into()))?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Bytes reserved for a state's JSON: a synced lead's (16 fields, both
/// sides stamped) is 2.7 kB; a larger one grows from there.
const STATE_TEXT_CAPACITY: usize = 4096;

/// The form identity states are written in now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateForm {
    /// `fields` (jsonb): what the previous release reads.
    Jsonb,
    /// `fields_text`: neither parsed nor printed by the server.
    Text,
}

impl StateForm {
    pub fn as_str(self) -> &'static str {
        match self {
            StateForm::Jsonb => "jsonb",
            StateForm::Text => "text",
        }
    }
}

/// The form writes use now.
pub async fn state_form<'e>(e: impl PgExecutor<'e>) -> Result<StateForm, sqlx::Error> {
    let text: bool = sqlx::query_scalar(concat!("SELECT ", text_form!())).fetch_one(e).await?;
    Ok(if text { StateForm::Text } else { StateForm::Jsonb })
}

/// Moves writes to `form`. Rows keep the form they are in until next saved;
/// both are read. Text only once no replica of the previous release runs:
/// it reads `fields` alone.
pub async fn set_state_form<'e>(e: impl PgExecutor<'e>, form: StateForm) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO storage_formats (name, format) VALUES ('identity_state', $1) \
         ON CONFLICT (name) DO UPDATE SET format = excluded.format",
    )
    .bind(form.as_str())
    .execute(e)
    .await?;
    Ok(())
}

/// What became of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// A newer token already wrote the row (or the row is gone).
    Fenced,
    /// The write would give a prospect, CRM record or email a second identity.
    Conflict,
}

fn settle(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> Result<Written, sqlx::Error> {
    match result {
        Ok(r) if r.rows_affected() == 1 => Ok(Written::Done),
        Ok(_) => Ok(Written::Fenced),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(Written::Conflict),
        Err(e) => Err(e),
    }
}

/// A new identity for [`insert_many`].
#[derive(Debug, Clone)]
pub struct NewIdentity<'a> {
    pub id: Uuid,
    /// The change whose matching made it: stored as `linked_by` when it is
    /// born linked.
    pub change_id: Uuid,
    pub patch: &'a IdentityPatch,
    pub email: Option<&'a str>,
    pub fields: &'a IdentityFields,
    pub fence: i64,
}

/// Stores new identities in one statement: the ids stored. Each id is
/// fresh, so there is nothing to fence against; one the unique indexes
/// refused (the person already has an identity) is left out. `fields` holds
/// what the matcher already saw of both records, so that echoes of the
/// first writes are recognised even before the applier saves its state.
pub async fn insert_many(pool: &PgPool, connection_id: &str, new: &[NewIdentity<'_>]) -> Result<HashSet<Uuid>, sqlx::Error> {
    if new.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = new.iter().map(|n| n.id).collect();
    let statuses: Vec<&str> = new.iter().map(|n| n.patch.status.unwrap_or(IdentityStatus::PendingAssignment).as_str()).collect();
    let prospects: Vec<Option<i64>> = new.iter().map(|n| n.patch.prospect_id).collect();
    let objects: Vec<Option<&str>> = new.iter().map(|n| n.patch.crm.as_ref().map(|(_, o)| o.as_str())).collect();
    let crm_ids: Vec<Option<&str>> = new.iter().map(|n| n.patch.crm.as_ref().map(|(c, _)| c.as_str())).collect();
    let emails: Vec<Option<&str>> = new.iter().map(|n| n.email).collect();
    let owners: Vec<Option<&str>> = new.iter().map(|n| n.patch.owner.as_ref().map(CrmId::as_str)).collect();
    let fences: Vec<i64> = new.iter().map(|n| n.fence).collect();
    let fields: Vec<String> = new.iter().map(|n| state_text(n.fields)).collect::<Result<_, _>>()?;
    let changes: Vec<Uuid> = new.iter().map(|n| n.change_id).collect();
    // Without a conflict clause first: `ON CONFLICT DO NOTHING` makes every
    // row probe all four unique indexes before its insert (17.5 against
    // 11.5 µs a row, 20,000 rows in one statement). A refusal, two matchers
    // racing for one person, is rare; the statement then runs again with the
    // clause, and stores the rows that do not clash.
    let insert = |sql: &'static str| {
        sqlx::query_scalar::<_, Uuid>(sql)
            .bind(connection_id)
            .bind(&ids)
            .bind(&statuses)
            .bind(&prospects)
            .bind(&objects)
            .bind(&crm_ids)
            .bind(&emails)
            .bind(&owners)
            .bind(&fences)
            .bind(&fields)
            .bind(&changes)
            .fetch_all(pool)
    };
    let stored = match insert(insert_identities!("")).await {
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => insert(insert_identities!("ON CONFLICT DO NOTHING")).await?,
        other => other?,
    };
    Ok(stored.into_iter().collect())
}

/// Changes an identity's status and links as the matcher decided, on
/// `change`'s behalf (stored as `linked_by` if this links it).
pub async fn patch(
    pool: &PgPool,
    connection_id: &str,
    id: Uuid,
    patch: &IdentityPatch,
    fence: i64,
    change: Uuid,
) -> Result<Written, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE identities SET \
            status = coalesce($3, status), prospect_id = coalesce($4, prospect_id), \
            crm_object = coalesce($5, crm_object), crm_id = coalesce($6, crm_id), owner_id = coalesce($7, owner_id), \
            email = coalesce($10, email), \
            fields = CASE WHEN $9 AND fields_text IS NULL \
                          THEN (SELECT coalesce(jsonb_object_agg(k, v #- '{crm,known}'), '{}') FROM jsonb_each(fields) AS e(k, v)) \
                          ELSE fields END, \
            fields_text = CASE WHEN $9 AND fields_text IS NOT NULL \
                          THEN (SELECT coalesce(jsonb_object_agg(k, v #- '{crm,known}'), '{}')::text FROM jsonb_each(fields_text::jsonb) AS e(k, v)) \
                          ELSE fields_text END, \
            ma_link_written = CASE WHEN $6 IS NOT NULL AND $6 IS DISTINCT FROM crm_id THEN false ELSE ma_link_written END, \
            fence = $8, updated_at = now(), \
            linked_at = CASE WHEN $3 = 'linked' AND linked_at IS NULL THEN now() ELSE linked_at END, \
            linked_by = CASE WHEN $3 = 'linked' AND linked_at IS NULL THEN $11 ELSE linked_by END \
         WHERE connection_id = $1 AND id = $2 AND fence < $8",
    )
    .bind(connection_id)
    .bind(id)
    .bind(patch.status.map(IdentityStatus::as_str))
    .bind(patch.prospect_id)
    .bind(patch.crm.as_ref().map(|(_, o)| o.as_str()))
    .bind(patch.crm.as_ref().map(|(c, _)| c.as_str()))
    .bind(patch.owner.as_ref().map(CrmId::as_str))
    .bind(fence)
    .bind(patch.reset_crm_known)
    .bind(&patch.email)
    .bind(change)
    .execute(pool)
    .await;
    settle(result)
}

/// An identity after the applier worked on it.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    pub id: Uuid,
    pub status: IdentityStatus,
    pub prospect_id: Option<i64>,
    pub crm: Option<(CrmObject, CrmId)>,
    /// Borrowed: the state is large (about 40 fields, two sides each) and
    /// only read to be stored.
    pub fields: &'a IdentityFields,
    pub ma_link_written: bool,
    pub ma_recycled: bool,
    pub email: Option<String>,
    pub crm_account_id: Option<String>,
    pub mirror_crm_id: Option<String>,
}

/// Stores what the applier did to an identity.
pub async fn save_applied<'e>(e: impl PgExecutor<'e>, connection_id: &str, a: &Applied<'_>, fence: i64) -> Result<Written, sqlx::Error> {
    let result = sqlx::query(concat!(
        "UPDATE identities SET \
            status = $3, prospect_id = $4, crm_object = $5, crm_id = $6, \
            fields = CASE WHEN f.text THEN '{}'::jsonb ELSE $7::text::jsonb END, fields_text = CASE WHEN f.text THEN $7::text END, \
            ma_link_written = $8, ma_recycled = $10, email = $11, crm_account_id = $12, mirror_crm_id = $13, fence = $9, \
            updated_at = now(), linked_at = CASE WHEN $3 = 'linked' AND linked_at IS NULL THEN now() ELSE linked_at END \
         FROM (SELECT ",
        text_form!(),
        " AS text) f \
         WHERE connection_id = $1 AND id = $2 AND fence < $9",
    ))
    .bind(connection_id)
    .bind(a.id)
    .bind(a.status.as_str())
    .bind(a.prospect_id)
    .bind(a.crm.as_ref().map(|(o, _)| o.as_str()))
    .bind(a.crm.as_ref().map(|(_, c)| c.as_str()))
    .bind(state_text(a.fields)?)
    .bind(a.ma_link_written)
    .bind(fence)
    .bind(a.ma_recycled)
    .bind(&a.email)
    .bind(&a.crm_account_id)
    .bind(&a.mirror_crm_id)
    .execute(e)
    .await;
    settle(result)
}

/// Stores what the applier did to many identities in one statement, each
/// fenced as [`save_applied`] fences one: the ids stored (one missing was
/// fenced). `None` when a unique index refused one of them: the statement
/// stored nothing, and the caller saves them one by one to find which.
pub async fn save_applied_many(
    conn: &mut sqlx::PgConnection,
    connection_id: &str,
    applied: &[(Applied<'_>, i64)],
) -> Result<Option<HashSet<Uuid>>, sqlx::Error> {
    if applied.is_empty() {
        return Ok(Some(HashSet::new()));
    }
    let ids: Vec<Uuid> = applied.iter().map(|(a, _)| a.id).collect();
    let statuses: Vec<&str> = applied.iter().map(|(a, _)| a.status.as_str()).collect();
    let prospects: Vec<Option<i64>> = applied.iter().map(|(a, _)| a.prospect_id).collect();
    let objects: Vec<Option<&str>> = applied.iter().map(|(a, _)| a.crm.as_ref().map(|(o, _)| o.as_str())).collect();
    let crm_ids: Vec<Option<&str>> = applied.iter().map(|(a, _)| a.crm.as_ref().map(|(_, c)| c.as_str())).collect();
    let fields: Vec<String> = applied.iter().map(|(a, _)| state_text(a.fields)).collect::<Result<_, _>>()?;
    let link_written: Vec<bool> = applied.iter().map(|(a, _)| a.ma_link_written).collect();
    let recycled: Vec<bool> = applied.iter().map(|(a, _)| a.ma_recycled).collect();
    let emails: Vec<Option<&str>> = applied.iter().map(|(a, _)| a.email.as_deref()).collect();
    let accounts: Vec<Option<&str>> = applied.iter().map(|(a, _)| a.crm_account_id.as_deref()).collect();
    let mirrors: Vec<Option<&str>> = applied.iter().map(|(a, _)| a.mirror_crm_id.as_deref()).collect();
    let fences: Vec<i64> = applied.iter().map(|(_, f)| *f).collect();
    // Under a savepoint: a refused statement must not abort the caller's
    // transaction.
    sqlx::query("SAVEPOINT save_many").execute(&mut *conn).await?;
    let result: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(concat!(
        "UPDATE identities AS i SET \
            status = d.status, prospect_id = d.prospect_id, crm_object = d.crm_object, crm_id = d.crm_id, \
            fields = CASE WHEN f.text THEN '{}'::jsonb ELSE d.fields::jsonb END, fields_text = CASE WHEN f.text THEN d.fields END, \
            ma_link_written = d.ma_link_written, ma_recycled = d.ma_recycled, email = d.email, crm_account_id = d.crm_account_id, \
            mirror_crm_id = d.mirror_crm_id, fence = d.fence, updated_at = now(), \
            linked_at = CASE WHEN d.status = 'linked' AND i.linked_at IS NULL THEN now() ELSE i.linked_at END \
         FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::bool[], $9::bool[], \
                     $10::text[], $11::text[], $12::text[], $13::bigint[]) \
              AS d(id, status, prospect_id, crm_object, crm_id, fields, ma_link_written, ma_recycled, email, crm_account_id, \
                   mirror_crm_id, fence), \
              (SELECT ",
        text_form!(),
        " AS text) f \
         WHERE i.connection_id = $1 AND i.id = d.id AND i.fence < d.fence \
         RETURNING i.id",
    ))
    .persistent(false) // planned for its own rows: see `find`
    .bind(connection_id)
    .bind(&ids)
    .bind(&statuses)
    .bind(&prospects)
    .bind(&objects)
    .bind(&crm_ids)
    .bind(&fields)
    .bind(&link_written)
    .bind(&recycled)
    .bind(&emails)
    .bind(&accounts)
    .bind(&mirrors)
    .bind(&fences)
    .fetch_all(&mut *conn)
    .await;
    match result {
        Ok(stored) => {
            sqlx::query("RELEASE SAVEPOINT save_many").execute(&mut *conn).await?;
            Ok(Some(stored.into_iter().collect()))
        }
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            sqlx::query("ROLLBACK TO SAVEPOINT save_many").execute(&mut *conn).await?;
            sqlx::query("RELEASE SAVEPOINT save_many").execute(&mut *conn).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Identities per status.
pub async fn status_counts<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM identities WHERE connection_id = $1 GROUP BY status ORDER BY status")
        .bind(connection_id)
        .fetch_all(e)
        .await
}

/// A linked identity's keys, for checking both sides against each other.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LinkedRow {
    pub id: Uuid,
    pub prospect_id: i64,
    pub crm_object: String,
    pub crm_id: String,
    pub owner_id: Option<String>,
}

/// Every linked identity of a connection.
pub async fn linked<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<Vec<LinkedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, prospect_id, crm_object, crm_id, owner_id FROM identities \
         WHERE connection_id = $1 AND status = 'linked' AND prospect_id IS NOT NULL AND crm_id IS NOT NULL ORDER BY prospect_id",
    )
    .bind(connection_id)
    .fetch_all(e)
    .await
}

/// The prospects of the linked identities of these CRM records: who sees a
/// mirror tied to them.
pub async fn prospects_of_crm(pool: &PgPool, connection_id: &str, crm_ids: &[String]) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT crm_id, prospect_id FROM identities \
         WHERE connection_id = $1 AND crm_id = ANY($2) AND status = 'linked' AND prospect_id IS NOT NULL",
    )
    .bind(connection_id)
    .bind(crm_ids)
    .fetch_all(pool)
    .await
}

/// An identity tied to both a prospect and a CRM record, linked or in the
/// recycle bin: what a mapping or sync-scope change can affect.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PairRow {
    pub id: Uuid,
    pub status: String,
    pub prospect_id: i64,
    pub crm_object: String,
    pub crm_id: String,
}

/// Every linked or recycled pair of a connection, in prospect order.
pub async fn pairs<'e>(e: impl PgExecutor<'e>, connection_id: &str) -> Result<Vec<PairRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, prospect_id, crm_object, crm_id FROM identities \
         WHERE connection_id = $1 AND status IN ('linked', 'recycled') AND prospect_id IS NOT NULL AND crm_id IS NOT NULL \
         ORDER BY prospect_id",
    )
    .bind(connection_id)
    .fetch_all(e)
    .await
}
