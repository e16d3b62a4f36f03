//! Manual edits of the sandbox, as a user of the MA or CRM would make them:
//! create, update, assign, look at. The command line (`crmsync sandbox ...`)
//! is a thin layer over these, so the sync behaviour can be tried by hand.
//!
//! Edits are made as the tenant's admin user (or a user named with `actor`),
//! never as the integration user: they are ordinary changes the engine must
//! pick up.

use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::schema::{self, ObjectDef};

mod batch;
mod cs;
mod custom;
mod seed;
use crate::store::{self, RowWrite};
pub use batch::{BatchOp, BatchResult};
pub use custom::Target;
pub use seed::Pairs;

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
    /// The `changeOrigin` of its edits' change events (none: a user's edit).
    change_origin: Option<String>,
}

impl Sandbox {
    pub fn new(pool: PgPool, tenant: impl Into<String>) -> Self {
        Sandbox { pool, tenant: tenant.into(), change_origin: None }
    }

    /// Edits made through an API rather than by hand: their change events
    /// carry `origin` (see [`crate::cdc`]).
    pub fn with_change_origin(&self, origin: impl Into<String>) -> Sandbox {
        Sandbox { change_origin: Some(origin.into()), ..self.clone() }
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

    fn writable(def: &ObjectDef) -> Result<(), OpsError> {
        if def.user_writable {
            Ok(())
        } else {
            Err(OpsError::Invalid(format!(
                "{} records are read-only in the MA: they are created and updated from the CRM only (R5)",
                def.name
            )))
        }
    }

    /// A create's values as a column-named document, checked: a writable
    /// object, known fields, typed values, the required ones present.
    fn new_document(def: &ObjectDef, values: &[(String, String)]) -> Result<Map<String, Value>, OpsError> {
        Self::writable(def)?;
        let doc = Self::document(def, values)?;
        let missing: Vec<&str> =
            def.required.iter().copied().filter(|f| def.by_api(f).is_none_or(|c| doc.get(c.column).is_none_or(Value::is_null))).collect();
        if !missing.is_empty() {
            return Err(OpsError::Invalid(format!("a {} needs {}", def.name, missing.join(", "))));
        }
        Ok(doc)
    }

    /// Inserts a checked document as `actor` on `conn` (which may be a
    /// transaction's); returns the new id.
    async fn insert_on(&self, conn: &mut PgConnection, def: &ObjectDef, doc: &Map<String, Value>, actor: &str) -> Result<String, OpsError> {
        match store::insert(conn, def, &self.tenant, doc, actor, None).await? {
            RowWrite::Written { id, .. } => Ok(id),
            _ => unreachable!("an insert either writes or fails"),
        }
    }

    /// Updates a record with a checked document as `actor` on `conn`.
    async fn update_on(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        id: &str,
        doc: &Map<String, Value>,
        actor: &str,
    ) -> Result<(), OpsError> {
        match store::update(conn, def, &self.tenant, id, doc, actor, store::Conditions::default()).await? {
            RowWrite::Written { .. } => Ok(()),
            _ => Err(OpsError::NotFound { object: def.name, id: id.to_owned(), tenant: self.tenant.clone() }),
        }
    }

    /// Creates a record; returns its id.
    pub async fn create(&self, def: &ObjectDef, values: &[(String, String)], actor: Option<&str>) -> Result<String, OpsError> {
        let doc = Self::new_document(def, values)?;
        let actor = self.actor(def, actor).await?;
        let mut conn = self.pool.acquire().await?;
        self.insert_on(&mut conn, def, &doc, &actor).await
    }

    /// Changes fields of a record.
    pub async fn update(&self, def: &ObjectDef, id: &str, values: &[(String, String)], actor: Option<&str>) -> Result<(), OpsError> {
        Self::writable(def)?;
        let doc = Self::document(def, values)?;
        let actor = self.actor(def, actor).await?;
        match &self.change_origin {
            None => {
                let mut conn = self.pool.acquire().await?;
                self.update_on(&mut conn, def, id, &doc, &actor).await
            }
            // The origin is the transaction's: the change capture reads it.
            Some(origin) => {
                let mut tx = self.pool.begin().await?;
                crate::cdc::set_origin(&mut tx, origin).await?;
                self.update_on(&mut tx, def, id, &doc, &actor).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// The values that move a record to its system's recycle bin, or out.
    fn deletion(def: &ObjectDef, deleted: bool) -> Result<Vec<(String, String)>, OpsError> {
        let col = def.by_name("is_deleted").ok_or_else(|| OpsError::Invalid(format!("{} records cannot be deleted", def.name)))?;
        Ok(vec![(col.api.to_owned(), deleted.to_string())])
    }

    /// Adds (or replaces) a CRM validation rule: `object` ("lead" or
    /// "contact") records whose column `field` does not match the POSIX
    /// regular expression `must_match` are refused with `message`.
    pub async fn add_validation_rule(
        &self,
        object: &str,
        name: &str,
        field: &str,
        must_match: &str,
        message: &str,
    ) -> Result<(), OpsError> {
        sqlx::query(
            "INSERT INTO crm.validation_rules (tenant, object, name, field, must_match, message) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, object, name) DO UPDATE SET field = EXCLUDED.field, must_match = EXCLUDED.must_match, \
                message = EXCLUDED.message, active = true",
        )
        .bind(&self.tenant)
        .bind(object)
        .bind(name)
        .bind(field)
        .bind(must_match)
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds (or replaces) a CRM duplicate rule blocking a second live
    /// `object` record with the same value in column `field`.
    pub async fn add_duplicate_rule(&self, object: &str, name: &str, field: &str) -> Result<(), OpsError> {
        sqlx::query(
            "INSERT INTO crm.duplicate_rules (tenant, object, name, field) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, object, name) DO UPDATE SET field = EXCLUDED.field, active = true",
        )
        .bind(&self.tenant)
        .bind(object)
        .bind(name)
        .bind(field)
        .execute(&self.pool)
        .await?;
        Ok(())
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
        let sql = format!("SELECT to_json(t) FROM {} t WHERE tenant = $1 AND id = $2::{id_type}", def.table);
        sqlx::query_scalar::<_, Value>(AssertSqlSafe(sql))
            .bind(&self.tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| OpsError::NotFound { object: def.name, id: id.to_owned(), tenant: self.tenant.clone() })
    }

    /// The most recently changed records of an object.
    pub async fn list(&self, def: &ObjectDef, limit: i64) -> Result<Vec<Value>, OpsError> {
        let sql = format!("SELECT to_json(t) FROM {} t WHERE tenant = $1 ORDER BY modstamp DESC, id DESC LIMIT $2", def.table);
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

/// What converting a lead made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conversion {
    pub contact_id: String,
    pub account_id: String,
    pub opportunity_id: Option<String>,
}

impl Sandbox {
    /// Moves a record to its system's recycle bin, or restores it.
    pub async fn set_deleted(&self, def: &ObjectDef, id: &str, deleted: bool) -> Result<(), OpsError> {
        self.update(def, id, &Self::deletion(def, deleted)?, None).await
    }

    /// Converts a lead as the CRM does: a contact (in the given account, or a
    /// new one named after the lead's company) and, optionally, an
    /// opportunity with the contact in a primary contact role. The lead is
    /// read-only from then on.
    pub async fn convert_lead(&self, lead_id: &str, account_id: Option<&str>, opportunity: Option<&str>) -> Result<Conversion, OpsError> {
        let me = self.admin(System::Crm).await?;
        let mut tx = self.pool.begin().await?;
        let lead: Option<Value> = sqlx::query_scalar("SELECT to_json(t) FROM crm.leads t WHERE tenant = $1 AND id = $2 FOR UPDATE")
            .bind(&self.tenant)
            .bind(lead_id)
            .fetch_optional(&mut *tx)
            .await?;
        let lead = lead.ok_or_else(|| OpsError::NotFound { object: "lead", id: lead_id.to_owned(), tenant: self.tenant.clone() })?;
        if lead["is_converted"] == Value::Bool(true) || lead["is_deleted"] == Value::Bool(true) {
            return Err(OpsError::Invalid(format!("lead {lead_id} is already converted or deleted")));
        }
        let account: String = match account_id {
            Some(a) => a.to_owned(),
            None => {
                let name = lead["company"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .map_or_else(|| format!("{} Account", lead["last_name"].as_str().unwrap_or("Converted")), str::to_owned);
                sqlx::query_scalar(
                    "INSERT INTO crm.accounts (tenant, name, owner_id, last_modified_by) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(&self.tenant)
                .bind(name)
                .bind(lead["owner_id"].as_str())
                .bind(&me)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let contact: String = sqlx::query_scalar(
            "INSERT INTO crm.contacts (tenant, account_id, first_name, last_name, email, title, phone, mailing_city, mailing_country, \
                has_opted_out_of_email, pi_score, pi_grade, owner_id, last_modified_by) \
             SELECT tenant, $3, first_name, last_name, email, title, phone, city, country, has_opted_out_of_email, pi_score, pi_grade, \
                owner_id, $4 FROM crm.leads WHERE tenant = $1 AND id = $2 RETURNING id",
        )
        .bind(&self.tenant)
        .bind(lead_id)
        .bind(&account)
        .bind(&me)
        .fetch_one(&mut *tx)
        .await?;
        let opportunity_id: Option<String> = match opportunity {
            None => None,
            Some(name) => {
                let id: String = sqlx::query_scalar(
                    "INSERT INTO crm.opportunities (tenant, name, account_id, stage_name, close_date, owner_id, last_modified_by) \
                     VALUES ($1, $2, $3, 'Prospecting', current_date + 30, $4, $5) RETURNING id",
                )
                .bind(&self.tenant)
                .bind(name)
                .bind(&account)
                .bind(lead["owner_id"].as_str())
                .bind(&me)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO crm.opportunity_contact_roles (tenant, opportunity_id, contact_id, role, is_primary, last_modified_by) \
                     VALUES ($1, $2, $3, 'Decision Maker', true, $4)",
                )
                .bind(&self.tenant)
                .bind(&id)
                .bind(&contact)
                .bind(&me)
                .execute(&mut *tx)
                .await?;
                Some(id)
            }
        };
        sqlx::query(
            "UPDATE crm.leads SET is_converted = true, converted_contact_id = $3, converted_account_id = $4, \
                converted_opportunity_id = $5, status = 'Closed - Converted', last_modified_by = $6 WHERE tenant = $1 AND id = $2",
        )
        .bind(&self.tenant)
        .bind(lead_id)
        .bind(&contact)
        .bind(&account)
        .bind(&opportunity_id)
        .bind(&me)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Conversion { contact_id: contact, account_id: account, opportunity_id })
    }

    /// A prospect as an MA user sees it: its fields, its prospect account,
    /// and the opportunities and custom object records shown on it.
    pub async fn prospect_view(&self, id: i64) -> Result<Value, OpsError> {
        let mut view = self.show(&schema::PROSPECT, &id.to_string()).await?;
        let account: Option<Value> = sqlx::query_scalar(
            "SELECT jsonb_build_object('crm_account_id', a.crm_account_id, 'name', a.name, 'industry', a.industry, 'city', a.city, 'country', a.country) \
             FROM ma.prospects p JOIN ma.prospect_accounts a ON a.id = p.prospect_account_id WHERE p.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let opportunities: Vec<Value> = sqlx::query_scalar(
            "SELECT jsonb_build_object('crm_opportunity_id', o.crm_opportunity_id, 'name', o.name, 'stage', o.stage, 'amount', o.amount, \
                'close_date', o.close_date, 'is_closed', o.is_closed, 'is_won', o.is_won) \
             FROM ma.opportunity_prospects l JOIN ma.opportunities o ON o.id = l.opportunity_id WHERE l.prospect_id = $1 ORDER BY o.crm_opportunity_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let custom: Vec<Value> = sqlx::query_scalar(
            "SELECT jsonb_build_object('object', r.object_type, 'crm_id', r.crm_id, 'fields', r.fields) \
             FROM ma.custom_object_prospects l JOIN ma.custom_object_records r ON r.id = l.record_id WHERE l.prospect_id = $1 ORDER BY r.crm_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        view["prospect_account"] = account.unwrap_or(Value::Null);
        view["opportunities"] = Value::Array(opportunities);
        view["custom_objects"] = Value::Array(custom);
        Ok(view)
    }
}
