//! The sandbox CS platform (Gainsight): CSQLs in the CS lead object and the
//! CS opportunity object, with the users who own, create and save them,
//! behind [`CsApi`].

use std::collections::HashMap;

use async_trait::async_trait;
use crmsync_connector::{ChangePage, ConnectorError, CsApi, CsqlStatus, Cursor, WriteOutcome};
use crmsync_domain::csql::{CsUser, CsUserType, CsqlRecord, CsqlRecordType};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::schema::{CSQL_LEAD, CSQL_OPPORTUNITY, ObjectDef};
use crate::store::{self, db_error};

/// The object that holds CSQLs of a record type.
pub fn def_of(kind: CsqlRecordType) -> &'static ObjectDef {
    match kind {
        CsqlRecordType::Lead => &CSQL_LEAD,
        CsqlRecordType::Opportunity => &CSQL_OPPORTUNITY,
    }
}

/// One CS tenant, tied to one CRM org (whose users CS users map to).
#[derive(Debug, Clone)]
pub struct SandboxCs {
    pool: PgPool,
    tenant: String,
    crm_tenant: String,
    integration_user: String,
    /// The CRM user this CS platform writes as for the integration sync user.
    crm_user: String,
}

impl SandboxCs {
    pub async fn connect(pool: PgPool, tenant: &str, crm_tenant: &str) -> Result<Self, ConnectorError> {
        sqlx::query("SELECT sandbox.ensure_cs_tenant($1)").bind(tenant).execute(&pool).await.map_err(db_error)?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM cs.users WHERE tenant = $1 AND is_integration")
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        let crm_user: String = sqlx::query_scalar("SELECT sandbox.cs_crm_user($1, $2)")
            .bind(tenant)
            .bind(crm_tenant)
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        Ok(SandboxCs { pool, tenant: tenant.to_owned(), crm_tenant: crm_tenant.to_owned(), integration_user: id.to_string(), crm_user })
    }

    /// The CS users `ids`, with their CRM users' API access and activity.
    async fn users(&self, ids: &[i64]) -> Result<HashMap<i64, CsUser>, ConnectorError> {
        let rows = sqlx::query(
            "SELECT u.id, u.name, u.user_type, u.crm_user_id, coalesce(c.api_enabled, false) AS api, coalesce(c.is_active, false) AS active \
             FROM cs.users u LEFT JOIN crm.users c ON c.tenant = $2 AND left(c.id, 15) = left(u.crm_user_id, 15) \
             WHERE u.id = ANY($1)",
        )
        .bind(ids)
        .bind(&self.crm_tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let user_type = if r.get::<&str, _>("user_type") == "internal_collaborator" {
                    CsUserType::InternalCollaborator
                } else {
                    CsUserType::Csm
                };
                let id: i64 = r.get("id");
                (
                    id,
                    CsUser {
                        id,
                        name: r.get("name"),
                        user_type,
                        crm_user_id: r.get("crm_user_id"),
                        crm_api_enabled: r.get("api"),
                        crm_active: r.get("active"),
                    },
                )
            })
            .collect())
    }

    async fn records(&self, kind: CsqlRecordType, rows: Vec<Value>) -> Result<Vec<CsqlRecord>, ConnectorError> {
        let mut ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| ["owner_id", "created_by_id", "saved_by_id"].map(|c| r.get(c).and_then(Value::as_i64)))
            .flatten()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let users = self.users(&ids).await?;
        let unknown = |id: Option<i64>| CsUser {
            id: id.unwrap_or(0),
            name: "unknown".into(),
            user_type: CsUserType::Csm,
            crm_user_id: None,
            crm_api_enabled: false,
            crm_active: false,
        };
        let user = |row: &Value, col: &str| {
            let id = row.get(col).and_then(Value::as_i64);
            id.and_then(|i| users.get(&i).cloned()).unwrap_or_else(|| unknown(id))
        };
        rows.iter()
            .map(|row| {
                Ok(CsqlRecord {
                    id: row.get("id").and_then(Value::as_i64).ok_or_else(|| ConnectorError::Fatal("CSQL row without id".into()))?,
                    record_type: kind,
                    owner: user(row, "owner_id"),
                    created_by: user(row, "created_by_id"),
                    saved_by: user(row, "saved_by_id"),
                    is_deleted: store::flag(row, "is_deleted"),
                    created_at: store::time(row, "created_at")?,
                    modstamp: store::time(row, "modstamp")?,
                    last_modified_by: store::text(row, "last_modified_by"),
                    fields: store::fields(def_of(kind), row),
                })
            })
            .collect()
    }
}

#[async_trait]
impl CsApi for SandboxCs {
    fn integration_user(&self) -> &str {
        &self.integration_user
    }

    fn crm_integration_user(&self) -> &str {
        &self.crm_user
    }

    async fn csql_changes(
        &self,
        kind: CsqlRecordType,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CsqlRecord>, ConnectorError> {
        let (rows, next, has_more) = store::changes(&self.pool, def_of(kind), &self.tenant, None, cursor, limit).await?;
        let rows = rows.iter().map(|r| store::value(r)).collect::<Result<_, _>>()?;
        Ok(ChangePage { records: self.records(kind, rows).await?, next, has_more })
    }

    async fn csql_changes_pending(&self, kind: CsqlRecordType, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        store::changes_pending(&self.pool, def_of(kind), &self.tenant, None, cursor).await
    }

    async fn csqls_by_id(&self, kind: CsqlRecordType, ids: &[i64]) -> Result<Vec<CsqlRecord>, ConnectorError> {
        let sql = format!("SELECT to_json(t) FROM {} t WHERE tenant = $1 AND id = ANY($2)", def_of(kind).table);
        let rows: Vec<Value> =
            sqlx::query_scalar(AssertSqlSafe(sql)).bind(&self.tenant).bind(ids).fetch_all(&self.pool).await.map_err(db_error)?;
        self.records(kind, rows).await
    }

    async fn csql_count(&self, kind: CsqlRecordType) -> Result<i64, ConnectorError> {
        let sql = format!("SELECT count(*) FROM {} WHERE tenant = $1 AND NOT is_deleted", def_of(kind).table);
        sqlx::query_scalar(AssertSqlSafe(sql)).bind(&self.tenant).fetch_one(&self.pool).await.map_err(db_error)
    }

    async fn write_csql_status(&self, kind: CsqlRecordType, statuses: &[CsqlStatus]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let sql = format!(
            "UPDATE {} SET crm_id = coalesce($3, crm_id), sync_status = $4, sync_error = $5, last_modified_by = $6, \
                sync_fence = coalesce($7, sync_fence) \
             WHERE tenant = $1 AND id = $2 AND sync_fence < coalesce($7, 9223372036854775807) RETURNING modstamp",
            def_of(kind).table
        );
        let mut out = Vec::with_capacity(statuses.len());
        for s in statuses {
            let at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                .bind(&self.tenant)
                .bind(s.id)
                .bind(&s.crm_id)
                .bind(s.status)
                .bind(&s.error)
                .bind(&self.integration_user)
                .bind(s.fence)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
            out.push(match at {
                Some(at) => WriteOutcome::Written { id: s.id.to_string(), created: false, at },
                None => WriteOutcome::Fenced,
            });
        }
        Ok(out)
    }

    async fn renewal_center_configured(&self) -> Result<bool, ConnectorError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cs.admin_config WHERE tenant = $1 AND area = 'renewal')")
            .bind(&self.tenant)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    async fn switch_csql_record_type(&self, kind: CsqlRecordType) -> Result<(), ConnectorError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO cs.csql_settings (tenant, record_type) VALUES ($1, $2) \
             ON CONFLICT (tenant) DO UPDATE SET record_type = EXCLUDED.record_type",
        )
        .bind(&self.tenant)
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("SELECT sandbox.share_renewal_config($1)").bind(&self.tenant).execute(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }
}
