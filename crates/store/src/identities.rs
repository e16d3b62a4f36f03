//! The identity map: who is whose counterpart (I2), and each identity's
//! per-field versions (I3).
//!
//! Rows are changed only under the identity's Redis lock, and every change
//! carries that lock's fencing token: a write with a token older than the
//! row's is refused, so a holder that outlived its lock cannot overwrite a
//! newer decision. The unique indexes on prospect, CRM id and email are the
//! backstop: a second identity for one person cannot be stored at all.

use crmsync_domain::matching::{IdentityPatch, IdentityRef, IdentityStatus};
use crmsync_domain::merge::IdentityFields;
use crmsync_domain::{CrmId, CrmObject};
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// One identity as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityRow {
    pub id: Uuid,
    pub status: String,
    pub prospect_id: Option<i64>,
    pub crm_object: Option<String>,
    pub crm_id: Option<String>,
    pub email: Option<String>,
    pub owner_id: Option<String>,
    pub fields: Json<IdentityFields>,
    pub ma_link_written: bool,
    pub ma_recycled: bool,
    pub crm_account_id: Option<String>,
    pub mirror_crm_id: Option<String>,
}

impl IdentityRow {
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
}

/// Keys to look identities up by; any match returns the row.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub ids: Vec<Uuid>,
    pub prospect_ids: Vec<i64>,
    pub crm_ids: Vec<String>,
    pub emails: Vec<String>,
}

/// Identities matching any of the keys. `with_fields` loads the per-field
/// state too (the applier and the producer's echo filter need it; the
/// matcher does not).
pub async fn find<'e>(
    e: impl PgExecutor<'e>,
    connection_id: &str,
    keys: &Keys,
    with_fields: bool,
) -> Result<Vec<IdentityRow>, sqlx::Error> {
    let sql = if with_fields {
        "SELECT id, status, prospect_id, crm_object, crm_id, email, owner_id, fields, ma_link_written, ma_recycled, crm_account_id, mirror_crm_id FROM identities \
         WHERE connection_id = $1 AND (id = ANY($2) OR prospect_id = ANY($3) OR crm_id = ANY($4) OR email = ANY($5))"
    } else {
        "SELECT id, status, prospect_id, crm_object, crm_id, email, owner_id, '{}'::jsonb AS fields, ma_link_written, ma_recycled, crm_account_id, mirror_crm_id \
         FROM identities \
         WHERE connection_id = $1 AND (id = ANY($2) OR prospect_id = ANY($3) OR crm_id = ANY($4) OR email = ANY($5))"
    };
    sqlx::query_as(sql)
        .bind(connection_id)
        .bind(&keys.ids)
        .bind(&keys.prospect_ids)
        .bind(&keys.crm_ids)
        .bind(&keys.emails)
        .fetch_all(e)
        .await
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

/// Stores a new identity (its id is fresh, so there is nothing to fence
/// against; the unique indexes refuse a duplicate person). `fields` holds
/// what the matcher already saw of both records, so that echoes of the first
/// writes are recognised even before the applier saves its state.
pub async fn insert(
    pool: &PgPool,
    connection_id: &str,
    id: Uuid,
    patch: &IdentityPatch,
    email: Option<&str>,
    fields: &IdentityFields,
    fence: i64,
) -> Result<Written, sqlx::Error> {
    let status = patch.status.unwrap_or(IdentityStatus::PendingAssignment);
    let result = sqlx::query(
        "INSERT INTO identities (id, connection_id, status, prospect_id, crm_object, crm_id, email, owner_id, fence, fields, linked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $3 = 'linked' THEN now() END)",
    )
    .bind(id)
    .bind(connection_id)
    .bind(status.as_str())
    .bind(patch.prospect_id)
    .bind(patch.crm.as_ref().map(|(_, o)| o.as_str()))
    .bind(patch.crm.as_ref().map(|(c, _)| c.as_str()))
    .bind(email)
    .bind(patch.owner.as_ref().map(CrmId::as_str))
    .bind(fence)
    .bind(Json(fields))
    .execute(pool)
    .await;
    settle(result)
}

/// Changes an identity's status and links as the matcher decided.
pub async fn patch(pool: &PgPool, connection_id: &str, id: Uuid, patch: &IdentityPatch, fence: i64) -> Result<Written, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE identities SET \
            status = coalesce($3, status), prospect_id = coalesce($4, prospect_id), \
            crm_object = coalesce($5, crm_object), crm_id = coalesce($6, crm_id), owner_id = coalesce($7, owner_id), \
            email = coalesce($10, email), \
            fields = CASE WHEN $9 THEN (SELECT coalesce(jsonb_object_agg(k, v #- '{crm,known}'), '{}') FROM jsonb_each(fields) AS e(k, v)) \
                          ELSE fields END, \
            ma_link_written = CASE WHEN $6 IS NOT NULL AND $6 IS DISTINCT FROM crm_id THEN false ELSE ma_link_written END, \
            fence = $8, updated_at = now(), \
            linked_at = CASE WHEN $3 = 'linked' AND linked_at IS NULL THEN now() ELSE linked_at END \
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
    .execute(pool)
    .await;
    settle(result)
}

/// An identity after the applier worked on it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub id: Uuid,
    pub status: IdentityStatus,
    pub prospect_id: Option<i64>,
    pub crm: Option<(CrmObject, CrmId)>,
    pub fields: IdentityFields,
    pub ma_link_written: bool,
    pub ma_recycled: bool,
    pub email: Option<String>,
    pub crm_account_id: Option<String>,
    pub mirror_crm_id: Option<String>,
}

/// Stores what the applier did to an identity.
pub async fn save_applied<'e>(e: impl PgExecutor<'e>, connection_id: &str, a: &Applied, fence: i64) -> Result<Written, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE identities SET \
            status = $3, prospect_id = $4, crm_object = $5, crm_id = $6, fields = $7, ma_link_written = $8, \
            ma_recycled = $10, email = $11, crm_account_id = $12, mirror_crm_id = $13, fence = $9, updated_at = now(), \
            linked_at = CASE WHEN $3 = 'linked' AND linked_at IS NULL THEN now() ELSE linked_at END \
         WHERE connection_id = $1 AND id = $2 AND fence < $9",
    )
    .bind(connection_id)
    .bind(a.id)
    .bind(a.status.as_str())
    .bind(a.prospect_id)
    .bind(a.crm.as_ref().map(|(o, _)| o.as_str()))
    .bind(a.crm.as_ref().map(|(_, c)| c.as_str()))
    .bind(Json(&a.fields))
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
