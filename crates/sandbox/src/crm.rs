//! The sandbox CRM (Sales Cloud): leads and contacts behind [`CrmApi`], with
//! the API's rules on writes (required fields, active owners, converted leads
//! are read-only) and upsert by crmsync's external id field.

use async_trait::async_trait;
use crmsync_connector::{ChangePage, ConnectorError, CrmApi, CrmTarget, CrmWrite, Cursor, WriteOutcome};
use crmsync_domain::mirror::{CrmObjectRecord, MirrorObject};
use crmsync_domain::records::CrmPersonRecord;
use crmsync_domain::{CrmId, CrmObject, Email};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};

use crate::objects;
use crate::rules;
use crate::schema::{CONTACT, LEAD, OPPORTUNITY, ObjectDef};
use crate::store::{self, db_error};
use crate::validate;

/// One CRM org of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxCrm {
    pool: PgPool,
    tenant: String,
    integration_user: String,
}

fn def_of(object: CrmObject) -> Result<&'static ObjectDef, ConnectorError> {
    match object {
        CrmObject::Lead => Ok(&LEAD),
        CrmObject::Contact => Ok(&CONTACT),
        other => Err(ConnectorError::Fatal(format!("{other} is not a person object"))),
    }
}

/// The objects the engine writes: people, and opportunities made from CSQLs.
fn writable(object: CrmObject) -> Result<&'static ObjectDef, ConnectorError> {
    match object {
        CrmObject::Opportunity => Ok(&OPPORTUNITY),
        other => def_of(other),
    }
}

fn rejected(code: &str, message: impl Into<String>) -> WriteOutcome {
    WriteOutcome::Rejected { code: code.to_owned(), message: message.into() }
}

fn record(object: CrmObject, row: &Value) -> Result<CrmPersonRecord, ConnectorError> {
    let def = def_of(object)?;
    Ok(CrmPersonRecord {
        id: store::text(row, "id").ok_or_else(|| ConnectorError::Fatal("CRM row without id".into()))?,
        object,
        email: store::text(row, "email"),
        owner_id: store::text(row, "owner_id"),
        external_id: store::text(row, "crmsync_id"),
        is_deleted: store::flag(row, "is_deleted"),
        is_converted: store::flag(row, "is_converted"),
        converted_contact_id: store::text(row, "converted_contact_id"),
        created_at: store::time(row, "created_at")?,
        system_modstamp: store::time(row, "modstamp")?,
        last_modified_by: store::text(row, "last_modified_by"),
        fields: store::fields(def, row),
    })
}

impl SandboxCrm {
    /// Connects to org `tenant`, creating its users if it is new.
    pub async fn connect(pool: PgPool, tenant: &str) -> Result<Self, ConnectorError> {
        sqlx::query("SELECT sandbox.ensure_tenant($1)").bind(tenant).execute(&pool).await.map_err(db_error)?;
        let id: String = sqlx::query_scalar("SELECT id FROM crm.users WHERE tenant = $1 AND is_integration")
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        Ok(SandboxCrm { pool, tenant: tenant.to_owned(), integration_user: id })
    }

    /// Leads and contacts matching `condition` (on table alias `t`, with `$1`
    /// the tenant and `$2` a text array).
    async fn people_where(&self, condition: &str, arg: &[String]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let sql = format!(
            "SELECT to_jsonb(t) AS row, 'lead' AS object FROM crm.leads t WHERE t.tenant = $1 AND {condition} \
             UNION ALL \
             SELECT to_jsonb(t) AS row, 'contact' AS object FROM crm.contacts t WHERE t.tenant = $1 AND {condition}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(&self.tenant).bind(arg).fetch_all(&self.pool).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let object = if r.get::<&str, _>("object") == "lead" { CrmObject::Lead } else { CrmObject::Contact };
                record(object, &r.get::<Value, _>("row"))
            })
            .collect()
    }

    /// Why `user` cannot write through the API, if it cannot.
    async fn api_problem(&self, conn: &mut PgConnection, user: &CrmId) -> Result<Option<WriteOutcome>, sqlx::Error> {
        let flags: Option<(bool, bool)> = sqlx::query_as("SELECT is_active, api_enabled FROM crm.users WHERE tenant = $1 AND id = $2")
            .bind(&self.tenant)
            .bind(user.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match flags {
            None => Some(rejected("INVALID_CROSS_REFERENCE_KEY", "no such user to act as")),
            Some((false, _)) => Some(rejected("INACTIVE_OWNER_OR_USER", "operation performed with inactive user")),
            Some((true, false)) => Some(rejected("API_DISABLED_FOR_USER", "The user does not have the API Enabled permission")),
            Some((true, true)) => None,
        })
    }

    /// Why `owner` cannot own a record, if it cannot.
    async fn owner_problem(&self, conn: &mut PgConnection, owner: &CrmId) -> Result<Option<WriteOutcome>, sqlx::Error> {
        let active: Option<bool> = sqlx::query_scalar("SELECT is_active FROM crm.users WHERE tenant = $1 AND id = $2")
            .bind(&self.tenant)
            .bind(owner.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match active {
            None => Some(rejected("INVALID_CROSS_REFERENCE_KEY", "Owner ID: id value of incorrect type or no such user")),
            Some(false) => Some(rejected("INACTIVE_OWNER_OR_USER", "operation performed with inactive user")),
            Some(true) => None,
        })
    }

    async fn write_one(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        rules: &rules::Rules,
        w: &CrmWrite,
    ) -> Result<WriteOutcome, sqlx::Error> {
        if let Some(owner) = &w.owner_id
            && let Some(problem) = self.owner_problem(conn, owner).await?
        {
            return Ok(problem);
        }
        if let Some(user) = &w.act_as
            && let Some(problem) = self.api_problem(conn, user).await?
        {
            return Ok(problem);
        }
        let actor = w.act_as.as_ref().map_or(self.integration_user.as_str(), CrmId::as_str);
        // Which row, and whether it may be written at all.
        let existing = match &w.target {
            CrmTarget::New => None,
            CrmTarget::Id(_) | CrmTarget::ExternalId(_) => {
                let (column, key) = match &w.target {
                    CrmTarget::Id(id) => ("id", id.to_string()),
                    CrmTarget::ExternalId(ext) => ("crmsync_id", ext.clone()),
                    CrmTarget::New => unreachable!("matched above"),
                };
                let lookup = format!("SELECT id, to_jsonb(t) AS row FROM {} t WHERE tenant = $1 AND {column} = $2 FOR UPDATE", def.table);
                sqlx::query(AssertSqlSafe(lookup)).bind(&self.tenant).bind(&key).fetch_optional(&mut *conn).await?
            }
        };
        if let Some(r) = &existing {
            let row: Value = r.get("row");
            if store::flag(&row, "is_deleted") {
                return Ok(rejected("ENTITY_IS_DELETED", "entity is deleted"));
            }
            if store::flag(&row, "is_converted") {
                return Ok(rejected("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead"));
            }
        } else if matches!(w.target, CrmTarget::Id(_)) {
            return Ok(WriteOutcome::NotFound);
        }
        if let Err(r) = validate::check(def, &w.fields, existing.is_none()) {
            return Ok(rejected(r.code, r.message));
        }
        let mut doc: Map<String, Value> = match store::patch(def, w.fields.clone()) {
            Ok(d) => d,
            Err(message) => return Ok(rejected("INVALID_FIELD", message)),
        };
        if let Some(owner) = &w.owner_id {
            doc.insert("owner_id".into(), Value::String(owner.to_string()));
        }
        let mut after = match &existing {
            Some(r) => r.get::<Value, _>("row").as_object().cloned().unwrap_or_default(),
            None => Map::new(),
        };
        after.extend(doc.clone());
        let id = existing.as_ref().map(|r| r.get::<String, _>("id"));
        if let Some((code, message)) = rules.refusal(conn, def, &self.tenant, id.as_deref(), &after, &doc).await? {
            return Ok(rejected(code, message));
        }
        let written = match existing {
            Some(r) => {
                let when = store::Conditions { fence: w.fence, unmodified_since: w.unmodified_since };
                store::update(conn, def, &self.tenant, r.get::<&str, _>("id"), &doc, actor, when).await?
            }
            None => {
                if let CrmTarget::ExternalId(ext) = &w.target {
                    doc.insert("crmsync_id".into(), Value::String(ext.clone()));
                }
                // The creating user owns a record created without an owner.
                doc.entry("owner_id").or_insert_with(|| Value::String(actor.to_owned()));
                store::insert(conn, def, &self.tenant, &doc, actor, w.fence).await?
            }
        };
        Ok(written.outcome())
    }
}

#[async_trait]
impl CrmApi for SandboxCrm {
    fn integration_user(&self) -> &str {
        &self.integration_user
    }

    async fn person_changes(
        &self,
        object: CrmObject,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CrmPersonRecord>, ConnectorError> {
        let def = def_of(object)?;
        let (rows, next, has_more) = store::changes(&self.pool, def, &self.tenant, None, cursor, limit).await?;
        let records = rows.iter().map(|r| record(object, r)).collect::<Result<_, _>>()?;
        Ok(ChangePage { records, next, has_more })
    }

    async fn person_changes_pending(&self, object: CrmObject, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        store::changes_pending(&self.pool, def_of(object)?, &self.tenant, None, cursor).await
    }

    async fn people_by_id(&self, ids: &[CrmId]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.people_where("t.id = ANY($2)", &ids).await
    }

    async fn people_by_email(&self, emails: &[Email]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let emails: Vec<String> = emails.iter().map(|e| e.to_string()).collect();
        self.people_where("lower(btrim(t.email)) = ANY($2) AND NOT t.is_deleted", &emails).await
    }

    async fn people_where(&self, object: CrmObject, field: &str, values: &[String]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let col = objects::column(def_of(object)?, false, field)?;
        let table = def_of(object)?.table;
        let rows: Vec<Value> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT to_jsonb(t) FROM {table} t WHERE t.tenant = $1 AND {col} = ANY($2) AND NOT t.is_deleted"
        )))
        .bind(&self.tenant)
        .bind(values)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(|r| record(object, r)).collect()
    }

    async fn object_changes(
        &self,
        object: &MirrorObject,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CrmObjectRecord>, ConnectorError> {
        objects::changes(&self.pool, &self.tenant, object, cursor, limit).await
    }

    async fn object_changes_pending(&self, object: &MirrorObject, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        objects::changes_pending(&self.pool, &self.tenant, object, cursor).await
    }

    async fn objects_where(&self, object: &MirrorObject, field: &str, values: &[String]) -> Result<Vec<CrmObjectRecord>, ConnectorError> {
        objects::objects_where(&self.pool, &self.tenant, object, field, values).await
    }

    async fn write_people(&self, object: CrmObject, writes: &[CrmWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let def = writable(object)?;
        if writes.len() > crmsync_connector::MAX_WRITES_PER_CALL {
            return Err(ConnectorError::Fatal(format!(
                "{} records in one call; the limit is {}",
                writes.len(),
                crmsync_connector::MAX_WRITES_PER_CALL
            )));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let rules = rules::Rules::load(&mut tx, def, &self.tenant).await.map_err(db_error)?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            store::savepoint(&mut tx).await?;
            let result = self.write_one(&mut tx, def, &rules, w).await;
            out.push(store::settle(&mut tx, result).await?);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(out)
    }
}
