//! Manual edits of the sandbox CS platform, as its users make them: CS
//! users, CSQLs saved by a CSM, the admin's bulk delete (and support's, for
//! opportunity records), and the lead admin's configuration that a renewal
//! center shares.

use crmsync_domain::csql::{CsUserType, CsqlRecordType};
use serde_json::Value;
use sqlx::AssertSqlSafe;

use super::{OpsError, Sandbox};
use crate::store::{self, RowWrite};

impl Sandbox {
    /// Adds a CS user, optionally tied to a CRM user.
    pub async fn create_cs_user(
        &self,
        name: &str,
        email: &str,
        user_type: CsUserType,
        crm_user_id: Option<&str>,
        admin: bool,
        support: bool,
    ) -> Result<i64, OpsError> {
        sqlx::query("SELECT sandbox.ensure_cs_tenant($1)").bind(&self.tenant).execute(&self.pool).await?;
        let kind = match user_type {
            CsUserType::Csm => "csm",
            CsUserType::InternalCollaborator => "internal_collaborator",
        };
        Ok(sqlx::query_scalar(
            "INSERT INTO cs.users (tenant, name, email, user_type, crm_user_id, is_admin, has_support_privilege) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&self.tenant)
        .bind(name)
        .bind(email)
        .bind(kind)
        .bind(crm_user_id)
        .bind(admin)
        .bind(support)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn cs_users(&self) -> Result<Vec<Value>, OpsError> {
        sqlx::query("SELECT sandbox.ensure_cs_tenant($1)").bind(&self.tenant).execute(&self.pool).await?;
        Ok(sqlx::query_scalar("SELECT to_jsonb(u) FROM cs.users u WHERE tenant = $1 ORDER BY id")
            .bind(&self.tenant)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A CSM saves a new CSQL (owned by `owner`, or by the CSM).
    pub async fn create_csql(
        &self,
        kind: CsqlRecordType,
        as_user: i64,
        owner: Option<i64>,
        values: &[(String, String)],
    ) -> Result<i64, OpsError> {
        let def = crate::cs::def_of(kind);
        let mut values = values.to_vec();
        values.push(("Owner".into(), owner.unwrap_or(as_user).to_string()));
        let doc = Self::document(def, &values)?;
        let mut tx = self.pool.begin().await?;
        let RowWrite::Written { id, .. } = store::insert(&mut tx, def, &self.tenant, &doc, &as_user.to_string(), None).await? else {
            unreachable!("an insert either writes or fails")
        };
        sqlx::query(AssertSqlSafe(format!("UPDATE {} SET created_by_id = $2, saved_by_id = $2 WHERE id = $1::bigint", def.table)))
            .bind(&id)
            .bind(as_user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id.parse().expect("bigint ids"))
    }

    /// A CSM edits and saves a CSQL.
    pub async fn update_csql(&self, kind: CsqlRecordType, id: i64, as_user: i64, values: &[(String, String)]) -> Result<(), OpsError> {
        let def = crate::cs::def_of(kind);
        let doc = Self::document(def, values)?;
        let mut tx = self.pool.begin().await?;
        if !matches!(
            store::update(&mut tx, def, &self.tenant, &id.to_string(), &doc, &as_user.to_string(), store::Conditions::default()).await?,
            RowWrite::Written { .. }
        ) {
            return Err(OpsError::NotFound { object: def.name, id: id.to_string(), tenant: self.tenant.clone() });
        }
        sqlx::query(AssertSqlSafe(format!("UPDATE {} SET saved_by_id = $2 WHERE id = $1", def.table)))
            .bind(id)
            .bind(as_user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every CSQL of an object, as CS user `actor`: an admin may
    /// bulk-delete CS lead records; CS opportunity records need the elevated
    /// support privilege.
    pub async fn delete_all_csqls(&self, kind: CsqlRecordType, actor: i64) -> Result<u64, OpsError> {
        let (admin, support): (bool, bool) =
            sqlx::query_as("SELECT is_admin, has_support_privilege FROM cs.users WHERE tenant = $1 AND id = $2")
                .bind(&self.tenant)
                .bind(actor)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| OpsError::NotFound { object: "CS user", id: actor.to_string(), tenant: self.tenant.clone() })?;
        match kind {
            CsqlRecordType::Lead if !admin => {
                return Err(OpsError::Invalid(format!("CS user {actor} is not an admin: only an admin can bulk-delete CS lead records")));
            }
            CsqlRecordType::Opportunity if !support => {
                return Err(OpsError::Invalid(format!(
                    "CS user {actor} lacks the support privilege: CS opportunity records can only be deleted by Gainsight support \
                     (file a support ticket)"
                )));
            }
            _ => {}
        }
        let def = crate::cs::def_of(kind);
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET is_deleted = true, last_modified_by = $2 WHERE tenant = $1 AND NOT is_deleted",
            def.table
        )))
        .bind(&self.tenant)
        .bind(actor.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The area whose row holds `area`'s configuration (the renewal center's,
    /// when shared).
    async fn config_row(&self, area: &str) -> Result<String, OpsError> {
        let shared: Option<Option<String>> = sqlx::query_scalar("SELECT shared_with FROM cs.admin_config WHERE tenant = $1 AND area = $2")
            .bind(&self.tenant)
            .bind(area)
            .fetch_optional(&self.pool)
            .await?;
        match shared {
            None => Err(OpsError::Invalid(format!("no {area} configuration in CS tenant {:?}", self.tenant))),
            Some(s) => Ok(s.unwrap_or_else(|| area.to_owned())),
        }
    }

    /// The lead admin's (or renewal center's) configuration of an area.
    pub async fn cs_config(&self, area: &str) -> Result<Value, OpsError> {
        let row = self.config_row(area).await?;
        let mut v: Value =
            sqlx::query_scalar("SELECT to_jsonb(c) - 'tenant' - 'shared_with' FROM cs.admin_config c WHERE tenant = $1 AND area = $2")
                .bind(&self.tenant)
                .bind(&row)
                .fetch_one(&self.pool)
                .await?;
        if let Some(o) = v.as_object_mut() {
            o.insert("area".into(), Value::String(area.to_owned()));
            o.insert("settings_of".into(), Value::String(row));
        }
        Ok(v)
    }

    /// Changes an area's stages (shared settings change on both sides).
    pub async fn set_cs_stages(&self, area: &str, stages: &[String]) -> Result<(), OpsError> {
        let row = self.config_row(area).await?;
        sqlx::query("UPDATE cs.admin_config SET stages = $3 WHERE tenant = $1 AND area = $2")
            .bind(&self.tenant)
            .bind(&row)
            .bind(serde_json::to_value(stages).expect("strings serialise"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Configures a renewal center (its stages and views).
    pub async fn configure_renewal_center(&self, stages: &[String]) -> Result<(), OpsError> {
        sqlx::query("SELECT sandbox.ensure_cs_tenant($1)").bind(&self.tenant).execute(&self.pool).await?;
        sqlx::query(
            "INSERT INTO cs.admin_config (tenant, area, stages, table_view, detail_view) \
             VALUES ($1, 'renewal', $2, '[\"Name\", \"Stage\", \"Renewal Date\"]', '[\"Name\", \"Stage\", \"ARR\"]') \
             ON CONFLICT (tenant, area) DO UPDATE SET stages = EXCLUDED.stages",
        )
        .bind(&self.tenant)
        .bind(serde_json::to_value(stages).expect("strings serialise"))
        .execute(&self.pool)
        .await?;
        sqlx::query("SELECT sandbox.share_renewal_config($1)").bind(&self.tenant).execute(&self.pool).await?;
        Ok(())
    }
}
