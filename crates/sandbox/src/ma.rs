//! The sandbox MA (Account Engagement): prospects and MA users, behind
//! [`MaApi`].

use std::collections::HashMap;

use async_trait::async_trait;
use crmsync_connector::{ChangePage, ConnectorError, Cursor, MaApi, MirrorState, MirrorWrite, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::mirror::MirrorKind;
use crmsync_domain::records::{AssignedUser, ProspectRecord};
use crmsync_domain::{CrmId, CrmObject, Email};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Row as _};

use crate::mirrors;
use crate::row::Row;
use crate::schema::PROSPECT;
use crate::store::{self, Step, db_error};
use crate::validate;

/// One MA business unit of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxMa {
    pool: PgPool,
    tenant: String,
    integration_user: String,
}

impl SandboxMa {
    /// Connects to business unit `tenant`, creating its users if it is new.
    pub async fn connect(pool: PgPool, tenant: &str) -> Result<Self, ConnectorError> {
        sqlx::query("SELECT sandbox.ensure_tenant($1)").bind(tenant).execute(&pool).await.map_err(db_error)?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM ma.users WHERE tenant = $1 AND is_integration")
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        Ok(SandboxMa { pool, tenant: tenant.to_owned(), integration_user: id.to_string() })
    }

    /// The same business unit, writing as MA user `user` instead of the
    /// integration user: the sandbox server's writes are those of the MA
    /// user its session's Salesforce user is tied to, as in Account
    /// Engagement.
    pub fn acting_as(&self, user: i64) -> SandboxMa {
        SandboxMa { integration_user: user.to_string(), ..self.clone() }
    }

    /// The CRM user of each MA user the rows are assigned to.
    async fn assigned_users(&self, rows: &[Row]) -> Result<HashMap<i64, Option<String>>, ConnectorError> {
        let mut ids: Vec<i64> = rows.iter().filter_map(|r| store::int(r, "assigned_user_id")).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let found = sqlx::query("SELECT id, crm_user_id FROM ma.users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(found.into_iter().map(|r| (r.get::<i64, _>("id"), r.get::<Option<String>, _>("crm_user_id"))).collect())
    }

    /// Prospects from rows as `to_json` prints them.
    async fn records(&self, texts: Vec<String>) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let rows = texts.iter().map(|t| Row::parse(&PROSPECT, t)).collect::<Result<Vec<_>, _>>()?;
        let users = self.assigned_users(&rows).await?;
        rows.into_iter()
            .map(|row| {
                let assigned = store::int(&row, "assigned_user_id");
                Ok(ProspectRecord {
                    id: store::int(&row, "id").ok_or_else(|| ConnectorError::Fatal("prospect row without id".into()))?,
                    email: store::text(&row, "email"),
                    crm_lead_fid: store::text(&row, "crm_lead_fid"),
                    crm_contact_fid: store::text(&row, "crm_contact_fid"),
                    assigned_user: assigned.map(|id| AssignedUser { id, crm_user_id: users.get(&id).cloned().flatten() }),
                    is_deleted: store::flag(&row, "is_deleted"),
                    created_at: store::time(&row, "created_at")?,
                    updated_at: store::time(&row, "modstamp")?,
                    last_modified_by: store::text(&row, "last_modified_by"),
                    fields: row.into_fields(),
                })
            })
            .collect()
    }

    /// The prospect a write updates, if it names one: by id as given, or
    /// (for an upsert) the newest live prospect with the email, locked.
    async fn target_of(&self, conn: &mut PgConnection, w: &ProspectWrite) -> Result<Option<i64>, sqlx::Error> {
        match &w.target {
            ProspectTarget::Id(id) => Ok(Some(*id)),
            ProspectTarget::New => Ok(None),
            ProspectTarget::UpsertByEmail(email) => {
                sqlx::query_scalar(
                    "SELECT id FROM ma.prospects WHERE tenant = $1 AND lower(btrim(email)) = $2 AND NOT is_deleted \
                     ORDER BY modstamp DESC, id DESC LIMIT 1 FOR UPDATE",
                )
                .bind(&self.tenant)
                .bind(email.as_str())
                .fetch_optional(&mut *conn)
                .await
            }
        }
    }

    /// What one write comes to, given the prospect it updates (if any).
    fn plan(&self, w: &ProspectWrite, existing: Option<i64>) -> Step {
        let mut values = w.fields.clone();
        if let (None, ProspectTarget::UpsertByEmail(email)) = (existing, &w.target) {
            values.entry("email".into()).or_insert_with(|| Value::String(email.to_string()));
        }
        if let Err(r) = validate::check(&PROSPECT, &values, existing.is_none()) {
            return Step::Done(WriteOutcome::Rejected { code: r.code.into(), message: r.message });
        }
        let mut doc: Map<String, Value> = match store::patch(&PROSPECT, values) {
            Ok(d) => d,
            Err(message) => return Step::Done(WriteOutcome::Rejected { code: "INVALID_FIELD".into(), message }),
        };
        if let Some((object, id)) = &w.crm_link {
            let column = if *object == CrmObject::Contact { "crm_contact_fid" } else { "crm_lead_fid" };
            doc.insert(column.into(), Value::String(id.to_string()));
        }
        let actor = self.integration_user.clone();
        match existing {
            Some(id) => Step::Update(store::RowUpdate {
                id: id.to_string(),
                patch: doc,
                actor,
                when: store::Conditions { fence: w.fence, unmodified_since: w.unmodified_since },
            }),
            None => Step::Insert { doc, actor, fence: w.fence },
        }
    }
}

/// Whether every write updates a different prospect named by id: then none
/// needs to see another's effect, and they are written together.
fn distinct_ids(writes: &[ProspectWrite]) -> bool {
    let mut seen = std::collections::HashSet::new();
    writes.iter().all(|w| matches!(w.target, ProspectTarget::Id(id) if seen.insert(id)))
}

#[async_trait]
impl MaApi for SandboxMa {
    fn integration_user(&self) -> &str {
        &self.integration_user
    }

    /// Every update is conditional on the row's `modstamp` (see `store`).
    fn writes_conditionally(&self) -> bool {
        true
    }

    async fn prospect_changes(&self, cursor: Option<&Cursor>, limit: usize) -> Result<ChangePage<ProspectRecord>, ConnectorError> {
        let (rows, next, has_more) = store::changes(&self.pool, &PROSPECT, &self.tenant, None, cursor, limit).await?;
        Ok(ChangePage { records: self.records(rows).await?, next, has_more })
    }

    async fn prospect_changes_pending(&self, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        store::changes_pending(&self.pool, &PROSPECT, &self.tenant, None, cursor).await
    }

    async fn prospects_by_id(&self, ids: &[i64]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT to_json(t)::text FROM ma.prospects t WHERE tenant = $1 AND id = ANY($2)")
            .bind(&self.tenant)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        self.records(rows).await
    }

    async fn prospects_by_email(&self, emails: &[Email]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let emails: Vec<&str> = emails.iter().map(Email::as_str).collect();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT to_json(t)::text FROM ma.prospects t WHERE tenant = $1 AND lower(btrim(email)) = ANY($2) AND NOT is_deleted",
        )
        .bind(&self.tenant)
        .bind(&emails)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        self.records(rows).await
    }

    async fn write_mirrors(&self, writes: &[MirrorWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            store::savepoint(&mut tx).await?;
            let result = mirrors::write(&mut tx, &self.tenant, &self.integration_user, w).await;
            out.push(store::settle(&mut tx, result).await?);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(out)
    }

    async fn mirror(&self, kind: &MirrorKind, crm_id: &CrmId) -> Result<Option<MirrorState>, ConnectorError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        mirrors::read(&mut conn, &self.tenant, kind, crm_id).await.map_err(db_error)
    }

    async fn prospect_accounts_of(&self, prospect_ids: &[i64]) -> Result<Vec<(i64, CrmId)>, ConnectorError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT p.id, a.crm_account_id FROM ma.prospects p JOIN ma.prospect_accounts a ON a.id = p.prospect_account_id \
             WHERE p.tenant = $1 AND p.id = ANY($2)",
        )
        .bind(&self.tenant)
        .bind(prospect_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().filter_map(|(p, a)| CrmId::parse(&a).ok().map(|a| (p, a))).collect())
    }

    async fn prospect_fields(&self) -> Result<Vec<crmsync_connector::FieldInfo>, ConnectorError> {
        Ok(crate::schema::data_fields(&PROSPECT))
    }

    async fn write_prospects(&self, writes: &[ProspectWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let out = if distinct_ids(writes) {
            let steps = writes.iter().map(|w| self.plan(w, if let ProspectTarget::Id(id) = w.target { Some(id) } else { None })).collect();
            store::write_planned(&mut tx, &PROSPECT, &self.tenant, steps).await?
        } else {
            // Upserts by email, creates and a prospect named twice go one at
            // a time, each seeing the writes before it.
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                store::savepoint(&mut tx).await?;
                let result = async {
                    let existing = self.target_of(&mut tx, w).await?;
                    store::execute(&mut tx, &PROSPECT, &self.tenant, self.plan(w, existing)).await
                }
                .await;
                out.push(store::settle(&mut tx, result).await?);
            }
            out
        };
        tx.commit().await.map_err(db_error)?;
        Ok(out)
    }
}
