//! Row-level access shared by the sandbox systems: gap-free change paging,
//! rows as JSON, and fenced inserts and updates.
//!
//! Rows travel as `to_json(row)` and are written with
//! `jsonb_populate_record`, so one code path serves every object and every
//! column type, and a write only changes the fields it names. Reads use
//! `to_json`, not `to_jsonb`: the client parses the text either way, and
//! `to_json` writes it directly where `to_jsonb` first builds and sorts a
//! binary document only to print it again (5.7 against 9.5 µs per lead).

use chrono::{DateTime, Utc};
use crmsync_connector::{ConnectorError, Cursor};
use crmsync_domain::records::{FieldValue, Fields};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};

use crate::schema::ObjectDef;

/// Turns a database error into the connector's terms: the sandbox being
/// unreachable or overloaded is transient.
pub(crate) fn db_error(e: sqlx::Error) -> ConnectorError {
    ConnectorError::Transient(format!("sandbox database: {e}"))
}

/// Position in a change feed: the (transaction id, row id) of the last row read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct XidCursor {
    pub(crate) xid: String,
    pub(crate) id: String,
}

/// Fields that a record carries as attributes of its own rather than in
/// `fields` (links, ownership, lifecycle).
pub(crate) fn is_attribute(api: &str) -> bool {
    matches!(
        api,
        "crmLeadFid" | "crmContactFid" | "assignedUserId" | "isDeleted" | "OwnerId" | "IsConverted" | "ConvertedContactId" | "IsDeleted"
    )
}

/// The condition on a custom record's type, as parameter `$n` (a no-op on
/// tables that hold one object only).
fn type_filter(object_type: Option<&str>, n: usize) -> String {
    match object_type {
        Some(_) => format!("AND t.object_type = ${n}"),
        None => format!("AND ${n}::text IS NULL"),
    }
}

pub(crate) fn start_of(def: &ObjectDef, cursor: Option<&Cursor>) -> Result<XidCursor, ConnectorError> {
    match cursor {
        Some(c) => serde_json::from_value::<XidCursor>(c.0.clone())
            .map_err(|e| ConnectorError::Fatal(format!("unreadable sandbox cursor {}: {e}", c.0))),
        None => Ok(XidCursor { xid: "0".into(), id: if def.numeric_id { "0".into() } else { String::new() } }),
    }
}

/// Whether rows were committed after `cursor`, pageable yet or not (a row
/// behind a still-running older transaction is committed but not yet paged).
pub(crate) async fn changes_pending(
    pool: &PgPool,
    def: &ObjectDef,
    tenant: &str,
    object_type: Option<&str>,
    cursor: Option<&Cursor>,
) -> Result<bool, ConnectorError> {
    let start = start_of(def, cursor)?;
    let id_type = if def.numeric_id { "bigint" } else { "text" };
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {table} t WHERE t.tenant = $1 AND (t.mod_xid, t.id) > ($2::text::xid8, $3::text::{id_type}) {filter})",
        table = def.table,
        filter = type_filter(object_type, 4),
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&start.xid)
        .bind(&start.id)
        .bind(object_type)
        .fetch_one(pool)
        .await
        .map_err(db_error)
}

/// A page of rows changed after `cursor`, oldest transaction first, each as
/// `to_json`'s text: person feeds read it as a [`crate::row::Row`], the
/// others with [`value`].
///
/// Only rows written by transactions older than every transaction still in
/// flight are returned, so a transaction that commits late cannot slip
/// behind a cursor that has already moved past its id.
pub(crate) async fn changes(
    pool: &PgPool,
    def: &ObjectDef,
    tenant: &str,
    object_type: Option<&str>,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<(Vec<String>, Cursor, bool), ConnectorError> {
    let start = start_of(def, cursor)?;
    let id_type = if def.numeric_id { "bigint" } else { "text" };
    let sql = format!(
        "SELECT to_json(t)::text AS row, t.mod_xid::text AS xid, t.id::text AS id FROM {table} t \
         WHERE t.tenant = $1 AND (t.mod_xid, t.id) > ($2::text::xid8, $3::text::{id_type}) \
           AND t.mod_xid < pg_snapshot_xmin(pg_current_snapshot()) {filter} \
         ORDER BY t.mod_xid, t.id LIMIT $4",
        table = def.table,
        filter = type_filter(object_type, 5),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&start.xid)
        .bind(&start.id)
        .bind((limit + 1) as i64)
        .bind(object_type)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    let has_more = rows.len() > limit;
    let mut next = start;
    let mut out = Vec::with_capacity(rows.len().min(limit));
    for r in rows.into_iter().take(limit) {
        next = XidCursor { xid: r.get("xid"), id: r.get("id") };
        out.push(r.get::<String, _>("row"));
    }
    Ok((out, Cursor(serde_json::to_value(next).expect("cursor serialises")), has_more))
}

/// A row's `to_json` text as a value tree.
pub(crate) fn value(text: &str) -> Result<Value, ConnectorError> {
    serde_json::from_str(text).map_err(|e| ConnectorError::Fatal(format!("unreadable sandbox row: {e}")))
}

/// The record's fields (API name → value, with per-field stamps).
pub(crate) fn fields(def: &ObjectDef, row: &Value) -> Fields {
    let stamps = row.get("field_stamps");
    def.columns
        .iter()
        .filter(|c| !is_attribute(c.api))
        .map(|c| {
            let stamp = stamps.and_then(|s| s.get(c.column));
            let value = FieldValue {
                value: row.get(c.column).cloned().unwrap_or(Value::Null),
                at: stamp.and_then(|s| s.get("at")).and_then(Value::as_str).and_then(crmsync_domain::time::parse),
                by: stamp.and_then(|s| s.get("by")).and_then(Value::as_str).map(str::to_owned),
            };
            (c.api.to_owned(), value)
        })
        .collect()
}

/// A row's columns by name: a `to_json` value tree, or a
/// [`crate::row::Row`] read for a record.
pub(crate) trait Columns {
    fn column(&self, name: &str) -> Option<&Value>;
}

impl Columns for Value {
    fn column(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

pub(crate) fn text(row: &impl Columns, column: &str) -> Option<String> {
    match row.column(column)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub(crate) fn flag(row: &impl Columns, column: &str) -> bool {
    row.column(column).and_then(Value::as_bool).unwrap_or(false)
}

pub(crate) fn int(row: &impl Columns, column: &str) -> Option<i64> {
    row.column(column).and_then(Value::as_i64)
}

pub(crate) fn time(row: &impl Columns, column: &str) -> Result<DateTime<Utc>, ConnectorError> {
    row.column(column)
        .and_then(Value::as_str)
        .and_then(crmsync_domain::time::parse)
        .ok_or_else(|| ConnectorError::Fatal(format!("sandbox row has no valid {column}")))
}

/// Turns API-named values into a column-named JSON patch. Unknown fields are
/// an error the caller reports per record.
pub(crate) fn patch(def: &ObjectDef, values: impl IntoIterator<Item = (String, Value)>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (api, v) in values {
        let col =
            def.by_api(&api).or_else(|| def.by_name(&api)).ok_or_else(|| format!("No such column '{api}' on entity '{}'", def.name))?;
        // A blank checkbox is an unchecked one.
        let v = if col.kind == crate::schema::Kind::Bool && v.is_null() { Value::Bool(false) } else { v };
        out.insert(col.column.to_owned(), v);
    }
    Ok(out)
}

/// Outcome of a fenced single-row write.
#[derive(Debug)]
pub(crate) enum RowWrite {
    Written { id: String, created: bool, at: DateTime<Utc> },
    Fenced,
    NotFound,
}

/// Updates one row with `patch` as `actor`, unless a newer fencing token
/// already wrote it. Without a token (manual edits) the fence is neither
/// checked nor moved.
/// What an update must find to go ahead: no newer fencing token, and no
/// change since the writer read the row.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Conditions {
    pub fence: Option<i64>,
    pub unmodified_since: Option<chrono::DateTime<chrono::Utc>>,
}

pub(crate) async fn update(
    conn: &mut PgConnection,
    def: &ObjectDef,
    tenant: &str,
    id: &str,
    patch: &Map<String, Value>,
    actor: &str,
    when: Conditions,
) -> Result<RowWrite, sqlx::Error> {
    let id_type = if def.numeric_id { "bigint" } else { "text" };
    // Refused like a stale fence when the row changed after the writer read
    // it: the writer reads it again and merges (I3).
    let sql = format!(
        "UPDATE {table} AS t SET ({cols}, last_modified_by, sync_fence) = \
           (SELECT {rcols}, $4, coalesce($5, t.sync_fence) FROM jsonb_populate_record(t, $3) r) \
         WHERE t.tenant = $1 AND t.id = $2::{id_type} AND t.sync_fence < coalesce($5, 9223372036854775807) \
           AND ($6::timestamptz IS NULL OR t.modstamp <= $6) \
         RETURNING t.id::text AS id, t.modstamp",
        table = def.table,
        cols = def.column_list(""),
        rcols = def.column_list("r."),
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .bind(Value::Object(patch.clone()))
        .bind(actor)
        .bind(when.fence)
        .bind(when.unmodified_since)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(r) = row {
        return Ok(RowWrite::Written { id: r.get("id"), created: false, at: r.get("modstamp") });
    }
    let exists = sqlx::query(AssertSqlSafe(format!("SELECT 1 FROM {} WHERE tenant = $1 AND id = $2::{id_type}", def.table)))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(if exists.is_some() { RowWrite::Fenced } else { RowWrite::NotFound })
}

/// One row's update in a set-based write: the row's id, its column-named
/// patch, who writes it and on what conditions.
#[derive(Debug)]
pub(crate) struct RowUpdate {
    pub id: String,
    pub patch: Map<String, Value>,
    pub actor: String,
    pub when: Conditions,
}

/// Updates many distinct rows in one statement, with the same fence and
/// read conditions per row as [`update`]: a write call of a hundred records
/// costs the database one statement instead of a hundred (the sandbox CRM and
/// MA stand in for remote systems, and on one machine their per-record round
/// trips were most of the database's time).
///
/// Returns one outcome per update, in order, or `None` when the database
/// refused the statement (a value too long for its column, a unique index):
/// the statement ran under a savepoint and changed nothing, and the caller
/// writes the rows one at a time to tell the refused one from the rest.
pub(crate) async fn update_many(
    conn: &mut PgConnection,
    def: &ObjectDef,
    tenant: &str,
    updates: &[RowUpdate],
) -> Result<Option<Vec<RowWrite>>, sqlx::Error> {
    if updates.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let id_type = if def.numeric_id { "bigint" } else { "text" };
    let sql = format!(
        "UPDATE {table} AS t SET ({cols}, last_modified_by, sync_fence) = \
           (SELECT {rcols}, u.actor, coalesce(u.fence, t.sync_fence) FROM jsonb_populate_record(t, u.patch) r) \
         FROM unnest($2::text[], $3::jsonb[], $4::text[], $5::int8[], $6::timestamptz[]) AS u(id, patch, actor, fence, since) \
         WHERE t.tenant = $1 AND t.id = u.id::{id_type} AND t.sync_fence < coalesce(u.fence, 9223372036854775807) \
           AND (u.since IS NULL OR t.modstamp <= u.since) \
         RETURNING t.id::text AS id, t.modstamp",
        table = def.table,
        cols = def.column_list(""),
        rcols = def.column_list("r."),
    );
    let ids: Vec<&str> = updates.iter().map(|u| u.id.as_str()).collect();
    let patches: Vec<Value> = updates.iter().map(|u| Value::Object(u.patch.clone())).collect();
    let actors: Vec<&str> = updates.iter().map(|u| u.actor.as_str()).collect();
    let fences: Vec<Option<i64>> = updates.iter().map(|u| u.when.fence).collect();
    let since: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.when.unmodified_since).collect();
    sqlx::query("SAVEPOINT many_rows").execute(&mut *conn).await?;
    let written = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&ids)
        .bind(&patches)
        .bind(&actors)
        .bind(&fences)
        .bind(&since)
        .fetch_all(&mut *conn)
        .await;
    let written = match written {
        Ok(rows) => rows,
        // A busy database is no row's fault: writing the rows one by one
        // would only meet the same lock again, so the call fails as transient.
        Err(sqlx::Error::Database(e)) if !busy(e.as_ref()) => {
            sqlx::query("ROLLBACK TO SAVEPOINT many_rows").execute(&mut *conn).await?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    sqlx::query("RELEASE SAVEPOINT many_rows").execute(&mut *conn).await?;
    let mut at: std::collections::HashMap<String, DateTime<Utc>> =
        written.iter().map(|r| (r.get::<String, _>("id"), r.get::<DateTime<Utc>, _>("modstamp"))).collect();
    // A row the statement did not write is fenced if it exists, as in `update`.
    let unwritten: Vec<&str> = ids.iter().copied().filter(|id| !at.contains_key(*id)).collect();
    let existing: std::collections::HashSet<String> = if unwritten.is_empty() {
        Default::default()
    } else {
        let sql = format!("SELECT id::text FROM {} WHERE tenant = $1 AND id = ANY($2::text[]::{id_type}[])", def.table);
        sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).bind(&unwritten).fetch_all(&mut *conn).await?.into_iter().collect()
    };
    Ok(Some(
        updates
            .iter()
            .map(|u| match at.remove(&u.id) {
                Some(at) => RowWrite::Written { id: u.id.clone(), created: false, at },
                None if existing.contains(&u.id) => RowWrite::Fenced,
                None => RowWrite::NotFound,
            })
            .collect(),
    ))
}

/// Inserts one row from `doc` (column-named) as `actor`. Columns the doc
/// does not name take their defaults.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    def: &ObjectDef,
    tenant: &str,
    doc: &Map<String, Value>,
    actor: &str,
    fence: Option<i64>,
) -> Result<RowWrite, sqlx::Error> {
    // Only columns the object declares (or its external id) reach the SQL text.
    let named: Vec<&str> = doc.keys().map(String::as_str).filter(|k| def.by_column(k).is_some() || *k == "crmsync_id").collect();
    let cols: String = named.iter().map(|c| format!("{c}, ")).collect();
    let rcols: String = named.iter().map(|c| format!("r.{c}, ")).collect();
    let sql = format!(
        "INSERT INTO {table} ({cols}tenant, last_modified_by, sync_fence) \
         SELECT {rcols}$1, $3, coalesce($4, 0) FROM jsonb_populate_record(NULL::{table}, $2) r \
         RETURNING id::text AS id, modstamp",
        table = def.table,
    );
    let r =
        sqlx::query(AssertSqlSafe(sql)).bind(tenant).bind(Value::Object(doc.clone())).bind(actor).bind(fence).fetch_one(&mut *conn).await?;
    Ok(RowWrite::Written { id: r.get("id"), created: true, at: r.get("modstamp") })
}

/// One record's write, planned: an outcome decided without writing (a
/// refusal, a missing record), or the row write to make.
#[derive(Debug)]
pub(crate) enum Step {
    Done(crmsync_connector::WriteOutcome),
    Update(RowUpdate),
    Insert { doc: Map<String, Value>, actor: String, fence: Option<i64> },
}

/// Makes one planned write.
pub(crate) async fn execute(
    conn: &mut PgConnection,
    def: &ObjectDef,
    tenant: &str,
    step: Step,
) -> Result<crmsync_connector::WriteOutcome, sqlx::Error> {
    Ok(match step {
        Step::Done(outcome) => outcome,
        Step::Update(u) => update(conn, def, tenant, &u.id, &u.patch, &u.actor, u.when).await?.outcome(),
        Step::Insert { doc, actor, fence } => insert(conn, def, tenant, &doc, &actor, fence).await?.outcome(),
    })
}

/// Makes a call's planned writes, which name distinct records: the updates
/// in one statement, creates one at a time. If the database refuses the
/// update statement, the updates are made one at a time too, so that only
/// the refused record is rejected (`allOrNone=false`).
pub(crate) async fn write_planned(
    conn: &mut PgConnection,
    def: &ObjectDef,
    tenant: &str,
    steps: Vec<Step>,
) -> Result<Vec<crmsync_connector::WriteOutcome>, ConnectorError> {
    let mut out = Vec::with_capacity(steps.len());
    let (mut updates, mut updated_at, mut one_by_one) = (Vec::new(), Vec::new(), Vec::new());
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Done(outcome) => out.push(Some(outcome)),
            Step::Update(u) => {
                updates.push(u);
                updated_at.push(i);
                out.push(None);
            }
            insert @ Step::Insert { .. } => {
                one_by_one.push((i, insert));
                out.push(None);
            }
        }
    }
    match update_many(conn, def, tenant, &updates).await.map_err(db_error)? {
        Some(written) => {
            for (i, w) in updated_at.into_iter().zip(written) {
                out[i] = Some(w.outcome());
            }
        }
        None => one_by_one.extend(updated_at.into_iter().zip(updates.into_iter().map(Step::Update))),
    }
    for (i, step) in one_by_one {
        savepoint(conn).await?;
        let result = execute(conn, def, tenant, step).await;
        out[i] = Some(settle(conn, result).await?);
    }
    Ok(out.into_iter().map(|o| o.expect("every write has an outcome")).collect())
}

/// Whether the database refused a statement for being busy (a deadlock, a
/// serialization failure, a lock or statement timeout) rather than for what
/// it wrote.
fn busy(e: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(e.code().as_deref(), Some("40P01" | "40001" | "55P03" | "57014"))
}

/// Opens a savepoint before one record's write inside a batch, so that a
/// record the database refuses does not undo the others (`allOrNone=false`).
pub(crate) async fn savepoint(conn: &mut PgConnection) -> Result<(), ConnectorError> {
    sqlx::query("SAVEPOINT one_record").execute(conn).await.map(drop).map_err(db_error)
}

/// Closes the savepoint of one record's write: a database refusal (a
/// constraint, a bad value) becomes that record's rejection; losing the
/// database fails the whole call as transient.
pub(crate) async fn settle(
    conn: &mut PgConnection,
    result: Result<crmsync_connector::WriteOutcome, sqlx::Error>,
) -> Result<crmsync_connector::WriteOutcome, ConnectorError> {
    match result {
        Ok(outcome) => {
            sqlx::query("RELEASE SAVEPOINT one_record").execute(conn).await.map_err(db_error)?;
            Ok(outcome)
        }
        // The record is fine and the database was busy: the whole call fails
        // as transient and is retried, instead of the record being rejected
        // as a sync error a user would have to retry by hand.
        Err(sqlx::Error::Database(e)) if busy(e.as_ref()) => {
            Err(ConnectorError::Transient(format!("sandbox database busy: {}", e.message())))
        }
        Err(sqlx::Error::Database(e)) => {
            sqlx::query("ROLLBACK TO SAVEPOINT one_record").execute(conn).await.map_err(db_error)?;
            let code = match e.kind() {
                sqlx::error::ErrorKind::UniqueViolation => "DUPLICATE_VALUE",
                sqlx::error::ErrorKind::ForeignKeyViolation => "INVALID_CROSS_REFERENCE_KEY",
                sqlx::error::ErrorKind::NotNullViolation => "REQUIRED_FIELD_MISSING",
                _ => "FIELD_INTEGRITY_EXCEPTION",
            };
            Ok(crmsync_connector::WriteOutcome::Rejected { code: code.to_owned(), message: e.message().to_owned() })
        }
        Err(e) => Err(db_error(e)),
    }
}

impl RowWrite {
    pub(crate) fn outcome(self) -> crmsync_connector::WriteOutcome {
        use crmsync_connector::WriteOutcome;
        match self {
            RowWrite::Written { id, created, at } => WriteOutcome::Written { id, created, at },
            RowWrite::Fenced => WriteOutcome::Fenced,
            RowWrite::NotFound => WriteOutcome::NotFound,
        }
    }
}
