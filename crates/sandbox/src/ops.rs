//! Manual edits of the sandbox, as a user of the MA or CRM would make them:
//! create, update, assign, look at. The command line (`crmsync sandbox ...`)
//! is a thin layer over these, so the sync behaviour can be tried by hand.
//!
//! Edits are made as the tenant's admin user (or a user named with `actor`),
//! never as the integration user: they are ordinary changes the engine must
//! pick up.

use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgPool};

use crate::schema::{self, ObjectDef};
use crate::store::{self, RowWrite};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{object} {id} does not exist in tenant {tenant:?}")]
    NotFound { object: &'static str, id: String, tenant: String },
    #[error("sandbox database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Which system a user belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Ma,
    Crm,
}

/// Manual access to one tenant of the sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pool: PgPool,
    tenant: String,
}

impl Sandbox {
    pub fn new(pool: PgPool, tenant: impl Into<String>) -> Self {
        Sandbox { pool, tenant: tenant.into() }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Creates the tenant's admin and integration users if missing.
    pub async fn init(&self) -> Result<(), OpsError> {
        sqlx::query("SELECT sandbox.ensure_tenant($1)").bind(&self.tenant).execute(&self.pool).await?;
        Ok(())
    }

    /// The id of the tenant's human admin in `system` (who edits act as).
    pub async fn admin(&self, system: System) -> Result<String, OpsError> {
        self.init().await?;
        Ok(match system {
            System::Ma => {
                let id: i64 =
                    sqlx::query_scalar("SELECT id FROM ma.users WHERE tenant = $1 AND lower(email) = 'admin@' || $1 || '.ma.invalid'")
                        .bind(&self.tenant)
                        .fetch_one(&self.pool)
                        .await?;
                id.to_string()
            }
            System::Crm => {
                sqlx::query_scalar("SELECT id FROM crm.users WHERE tenant = $1 AND email = 'admin@' || $1 || '.crm.invalid'")
                    .bind(&self.tenant)
                    .fetch_one(&self.pool)
                    .await?
            }
        })
    }

    fn system_of(def: &ObjectDef) -> System {
        if def.table.starts_with("ma.") { System::Ma } else { System::Crm }
    }

    /// Turns `name=value` text pairs into a column-named document.
    fn document(def: &ObjectDef, values: &[(String, String)]) -> Result<Map<String, Value>, OpsError> {
        let mut typed = Vec::with_capacity(values.len());
        for (name, raw) in values {
            let col = def.by_name(name).ok_or_else(|| {
                let known: Vec<&str> = def.columns.iter().map(|c| c.api).collect();
                OpsError::Invalid(format!("{} has no field {name:?}; fields: {}", def.name, known.join(", ")))
            })?;
            typed.push((col.api.to_owned(), schema::parse_value(col, raw).map_err(OpsError::Invalid)?));
        }
        store::patch(def, typed).map_err(OpsError::Invalid)
    }

    async fn actor(&self, def: &ObjectDef, actor: Option<&str>) -> Result<String, OpsError> {
        match actor {
            Some(a) => Ok(a.to_owned()),
            None => self.admin(Self::system_of(def)).await,
        }
    }

    /// Creates a record; returns its id.
    pub async fn create(&self, def: &ObjectDef, values: &[(String, String)], actor: Option<&str>) -> Result<String, OpsError> {
        let doc = Self::document(def, values)?;
        let missing: Vec<&str> =
            def.required.iter().copied().filter(|f| def.by_api(f).is_none_or(|c| doc.get(c.column).is_none_or(Value::is_null))).collect();
        if !missing.is_empty() {
            return Err(OpsError::Invalid(format!("a {} needs {}", def.name, missing.join(", "))));
        }
        let actor = self.actor(def, actor).await?;
        let mut conn = self.pool.acquire().await?;
        match store::insert(&mut conn, def, &self.tenant, &doc, &actor, None).await? {
            RowWrite::Written { id, .. } => Ok(id),
            _ => unreachable!("an insert either writes or fails"),
        }
    }

    /// Changes fields of a record.
    pub async fn update(&self, def: &ObjectDef, id: &str, values: &[(String, String)], actor: Option<&str>) -> Result<(), OpsError> {
        let doc = Self::document(def, values)?;
        let actor = self.actor(def, actor).await?;
        let mut conn = self.pool.acquire().await?;
        match store::update(&mut conn, def, &self.tenant, id, &doc, &actor, None).await? {
            RowWrite::Written { .. } => Ok(()),
            _ => Err(OpsError::NotFound { object: def.name, id: id.to_owned(), tenant: self.tenant.clone() }),
        }
    }

    /// Assigns a prospect to an MA user (or unassigns it with `None`).
    pub async fn assign(&self, prospect_id: i64, ma_user_id: Option<i64>) -> Result<(), OpsError> {
        if let Some(u) = ma_user_id {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM ma.users WHERE tenant = $1 AND id = $2")
                .bind(&self.tenant)
                .bind(u)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(OpsError::NotFound { object: "MA user", id: u.to_string(), tenant: self.tenant.clone() });
            }
        }
        let value = ma_user_id.map_or(String::new(), |u| u.to_string());
        self.update(&schema::PROSPECT, &prospect_id.to_string(), &[("assignedUserId".into(), value)], None).await
    }

    /// One record as stored, with its change-tracking columns.
    pub async fn show(&self, def: &ObjectDef, id: &str) -> Result<Value, OpsError> {
        let id_type = if def.numeric_id { "bigint" } else { "text" };
        let sql = format!("SELECT to_jsonb(t) FROM {} t WHERE tenant = $1 AND id = $2::{id_type}", def.table);
        sqlx::query_scalar::<_, Value>(AssertSqlSafe(sql))
            .bind(&self.tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| OpsError::NotFound { object: def.name, id: id.to_owned(), tenant: self.tenant.clone() })
    }

    /// The most recently changed records of an object.
    pub async fn list(&self, def: &ObjectDef, limit: i64) -> Result<Vec<Value>, OpsError> {
        let sql = format!("SELECT to_jsonb(t) FROM {} t WHERE tenant = $1 ORDER BY modstamp DESC, id DESC LIMIT $2", def.table);
        Ok(sqlx::query_scalar(AssertSqlSafe(sql)).bind(&self.tenant).bind(limit).fetch_all(&self.pool).await?)
    }

    /// Adds an MA user, optionally tied to a CRM user.
    pub async fn create_ma_user(&self, email: &str, first: &str, last: &str, crm_user_id: Option<&str>) -> Result<i64, OpsError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO ma.users (tenant, email, first_name, last_name, crm_user_id) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&self.tenant)
        .bind(email)
        .bind(first)
        .bind(last)
        .bind(crm_user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Adds a CRM user.
    pub async fn create_crm_user(&self, name: &str, email: &str, active: bool, api_enabled: bool) -> Result<String, OpsError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO crm.users (tenant, name, email, is_active, api_enabled) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&self.tenant)
        .bind(name)
        .bind(email)
        .bind(active)
        .bind(api_enabled)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Users of a system, as stored.
    pub async fn users(&self, system: System) -> Result<Vec<Value>, OpsError> {
        let sql = match system {
            System::Ma => "SELECT to_jsonb(u) FROM ma.users u WHERE tenant = $1 ORDER BY id",
            System::Crm => "SELECT to_jsonb(u) FROM crm.users u WHERE tenant = $1 ORDER BY created_at, id",
        };
        Ok(sqlx::query_scalar(sql).bind(&self.tenant).fetch_all(&self.pool).await?)
    }
}
