//! Change Data Capture of the sandbox CRM: the change events Salesforce
//! publishes over the Pub/Sub API, kept in PostgreSQL for
//! `crmsync sandbox serve` to deliver.
//!
//! - Capture (migration `0010_change_events.sql`): the row trigger that
//!   stamps each write of a CRM table also copies the row and the columns
//!   it changed, for the entities the org selected (Setup > Change Data
//!   Capture; [`ChangeLog::select`]), whoever wrote it. A write names its
//!   origin (the `changeOrigin` header field) in the transaction-local
//!   setting [`ORIGIN_SETTING`]; a commit is announced on [`CHANNEL`].
//! - Sequencing ([`sequence`]): committed changes become events with replay
//!   ids in commit order, one per record and transaction.
//! - Reading ([`ChangeLog`]): the events of an org after a replay id, for
//!   one entity or all, within the retention window; pruning; the test
//!   switches that turn events into gap or overflow events.
//!
//! [`entities`] says which fields each entity's events carry.

pub mod entities;
mod sequencer;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgPool;

pub use sequencer::{OVERFLOW_THRESHOLD, sequence};

/// The channel a commit to a sandbox table is announced on (payload: the
/// table, `crm.leads`...), by the tables' `notify` triggers.
pub const CHANNEL: &str = "crmsync_sandbox";

/// The transaction-local setting a write names its change origin in.
pub const ORIGIN_SETTING: &str = "crmsync.change_origin";

/// Names the change origin of the writes of the transaction `conn` is in.
pub async fn set_origin(conn: &mut sqlx::PgConnection, origin: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config($1, $2, true)").bind(ORIGIN_SETTING).bind(origin).execute(conn).await?;
    Ok(())
}

/// An event's `changeType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Undelete,
    GapCreate,
    GapUpdate,
    GapDelete,
    GapUndelete,
    GapOverflow,
}

impl ChangeType {
    /// Every type, in the order of the Avro enum Salesforce declares.
    pub const ALL: [ChangeType; 9] = [
        ChangeType::Create,
        ChangeType::Update,
        ChangeType::Delete,
        ChangeType::Undelete,
        ChangeType::GapCreate,
        ChangeType::GapUpdate,
        ChangeType::GapDelete,
        ChangeType::GapUndelete,
        ChangeType::GapOverflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Create => "CREATE",
            ChangeType::Update => "UPDATE",
            ChangeType::Delete => "DELETE",
            ChangeType::Undelete => "UNDELETE",
            ChangeType::GapCreate => "GAP_CREATE",
            ChangeType::GapUpdate => "GAP_UPDATE",
            ChangeType::GapDelete => "GAP_DELETE",
            ChangeType::GapUndelete => "GAP_UNDELETE",
            ChangeType::GapOverflow => "GAP_OVERFLOW",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeType> {
        ChangeType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The gap event standing for a change of this type.
    pub fn gap(self) -> ChangeType {
        match self {
            ChangeType::Create => ChangeType::GapCreate,
            ChangeType::Update => ChangeType::GapUpdate,
            ChangeType::Delete => ChangeType::GapDelete,
            ChangeType::Undelete => ChangeType::GapUndelete,
            other => other,
        }
    }
}

/// One event of the log. `fields` holds captured values by column (a custom
/// object's data fields by API name): every non-null value for CREATE and
/// UNDELETE, the changed ones (nulls included) for UPDATE, none for DELETE
/// and gap events.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub replay_id: i64,
    pub entity: String,
    pub change_type: ChangeType,
    pub record_ids: Vec<String>,
    pub change_origin: String,
    pub transaction_key: String,
    pub sequence_number: i32,
    pub commit_timestamp: DateTime<Utc>,
    pub commit_number: i64,
    pub commit_user: String,
    pub fields: Map<String, Value>,
    /// The columns an UPDATE changed.
    pub changed: Vec<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    replay_id: i64,
    entity: String,
    change_type: String,
    record_ids: Value,
    change_origin: String,
    transaction_key: String,
    sequence_number: i32,
    commit_timestamp: DateTime<Utc>,
    commit_number: i64,
    commit_user: String,
    fields: Option<Value>,
    changed: Option<Value>,
}

fn strings(v: Option<Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.into_iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

impl From<EventRow> for ChangeEvent {
    fn from(r: EventRow) -> Self {
        ChangeEvent {
            replay_id: r.replay_id,
            entity: r.entity,
            change_type: ChangeType::parse(&r.change_type).unwrap_or(ChangeType::GapUpdate),
            record_ids: strings(Some(r.record_ids)),
            change_origin: r.change_origin,
            transaction_key: r.transaction_key,
            sequence_number: r.sequence_number,
            commit_timestamp: r.commit_timestamp,
            commit_number: r.commit_number,
            commit_user: r.commit_user,
            fields: match r.fields {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            },
            changed: strings(r.changed),
        }
    }
}

/// The change events of one org (a sandbox CRM tenant).
#[derive(Debug, Clone)]
pub struct ChangeLog {
    pool: PgPool,
    tenant: String,
}

impl ChangeLog {
    pub fn new(pool: PgPool, tenant: impl Into<String>) -> Self {
        ChangeLog { pool, tenant: tenant.into() }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Up to `limit` events after `after` and at most `upto`, of `entity`
    /// (all entities when `None`), committed at or after `since`, oldest
    /// first.
    pub async fn events(
        &self,
        after: i64,
        upto: i64,
        entity: Option<&str>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, sqlx::Error> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT replay_id, entity, change_type, record_ids, change_origin, transaction_key, sequence_number, \
                    commit_timestamp, commit_number, commit_user, fields, changed \
             FROM sandbox.cdc_events \
             WHERE tenant = $1 AND replay_id > $2 AND replay_id <= $3 AND ($4::text IS NULL OR entity = $4) \
               AND commit_timestamp >= $5 \
             ORDER BY replay_id LIMIT $6",
        )
        .bind(&self.tenant)
        .bind(after)
        .bind(upto)
        .bind(entity)
        .bind(since)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ChangeEvent::from).collect())
    }

    /// The replay id of the org's newest event (0 without any).
    pub async fn tip(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT coalesce(max(replay_id), 0) FROM sandbox.cdc_events WHERE tenant = $1")
            .bind(&self.tenant)
            .fetch_one(&self.pool)
            .await
    }

    /// Whether the org's event `replay_id` is still retained (committed at
    /// or after `since`): what a subscription may resume after.
    pub async fn retained(&self, replay_id: i64, since: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sandbox.cdc_events WHERE tenant = $1 AND replay_id = $2 AND commit_timestamp >= $3)",
        )
        .bind(&self.tenant)
        .bind(replay_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await
    }

    /// Deletes the org's events committed before `before`.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM sandbox.cdc_events WHERE tenant = $1 AND commit_timestamp < $2")
            .bind(&self.tenant)
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Every entity the org selected or deselected, and the standard ones
    /// it left at their default (selected).
    pub async fn selection(&self) -> Result<BTreeMap<String, bool>, sqlx::Error> {
        let mut out: BTreeMap<String, bool> = entities::STANDARD.iter().map(|e| ((*e).to_owned(), true)).collect();
        let rows: Vec<(String, bool)> = sqlx::query_as("SELECT entity, selected FROM sandbox.cdc_selection WHERE tenant = $1")
            .bind(&self.tenant)
            .fetch_all(&self.pool)
            .await?;
        out.extend(rows);
        Ok(out)
    }

    /// Selects an entity for change events, or deselects it: its changes
    /// from now on are captured, or not.
    pub async fn select(&self, entity: &str, selected: bool) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO sandbox.cdc_selection (tenant, entity, selected) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, entity) DO UPDATE SET selected = EXCLUDED.selected",
        )
        .bind(&self.tenant)
        .bind(entity)
        .bind(selected)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn is_selected(&self, entity: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT sandbox.cdc_selected($1, $2)").bind(&self.tenant).bind(entity).fetch_one(&self.pool).await
    }

    /// Whether the org has a custom object of this name: records of it, or
    /// a selection naming it.
    pub async fn custom_object_exists(&self, entity: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM crm.custom_records WHERE tenant = $1 AND object_type = $2) \
                 OR EXISTS (SELECT 1 FROM sandbox.cdc_selection WHERE tenant = $1 AND entity = $2)",
        )
        .bind(&self.tenant)
        .bind(entity)
        .fetch_one(&self.pool)
        .await
    }

    /// The layout of a custom object's events: the data fields its records
    /// hold, typed by their values.
    pub async fn custom_layout(&self, entity: &str) -> Result<entities::Layout, sqlx::Error> {
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT f.key, array_agg(DISTINCT jsonb_typeof(f.value)) \
             FROM crm.custom_records r, jsonb_each(r.fields) f \
             WHERE r.tenant = $1 AND r.object_type = $2 GROUP BY f.key",
        )
        .bind(&self.tenant)
        .bind(entity)
        .fetch_all(&self.pool)
        .await?;
        let fields: Vec<(String, entities::Kind)> = rows
            .into_iter()
            .map(|(key, types)| {
                let types: Vec<&str> = types.iter().map(String::as_str).filter(|t| *t != "null").collect();
                let kind = match types.as_slice() {
                    ["number"] => entities::Kind::Double,
                    ["boolean"] => entities::Kind::Bool,
                    _ => entities::Kind::Text,
                };
                (key, kind)
            })
            .collect();
        Ok(entities::custom(entity, &fields))
    }

    /// Makes the org's next `count` events gap events (header only).
    pub async fn request_gaps(&self, count: i32) -> Result<(), sqlx::Error> {
        self.switch("gaps", count).await
    }

    /// Makes the org's next `count` transactions overflow events, one per
    /// entity they change.
    pub async fn request_overflows(&self, count: i32) -> Result<(), sqlx::Error> {
        self.switch("overflows", count).await
    }

    async fn switch(&self, column: &'static str, count: i32) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO sandbox.cdc_switches (tenant, {column}) VALUES ($1, $2) \
             ON CONFLICT (tenant) DO UPDATE SET {column} = EXCLUDED.{column}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.tenant).bind(count.max(0)).execute(&self.pool).await?;
        Ok(())
    }

    /// The switches still pending: (gap events, overflowing transactions).
    pub async fn switches(&self) -> Result<(i32, i32), sqlx::Error> {
        let row: Option<(i32, i32)> = sqlx::query_as("SELECT gaps, overflows FROM sandbox.cdc_switches WHERE tenant = $1")
            .bind(&self.tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.unwrap_or_default())
    }
}
