//! The sandbox CRM (Sales Cloud): leads and contacts behind [`CrmApi`], with
//! the API's rules on writes (required fields, active owners, converted leads
//! are read-only) and upsert by crmsync's external id field.

use std::collections::HashMap;

use async_trait::async_trait;
use crmsync_connector::{ChangePage, ConnectorError, CrmApi, CrmTarget, CrmWrite, Cursor, WriteOutcome};
use crmsync_domain::mirror::{CrmObjectRecord, MirrorObject};
use crmsync_domain::records::CrmPersonRecord;
use crmsync_domain::{CrmId, CrmObject, Email};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _};

use crate::objects;
use crate::row::Row;
use crate::rules;
use crate::schema::{CONTACT, LEAD, OPPORTUNITY, ObjectDef};
use crate::store::{self, Step, db_error};
use crate::validate;

/// One CRM org of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxCrm {
    pool: PgPool,
    tenant: String,
    integration_user: String,
    /// The `changeOrigin` its writes' change events carry (see [`crate::cdc`]).
    change_origin: Option<String>,
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

/// A lead or contact from its row as `to_json` prints it.
fn record(object: CrmObject, text: &str) -> Result<CrmPersonRecord, ConnectorError> {
    let row = Row::parse(def_of(object)?, text)?;
    Ok(CrmPersonRecord {
        id: store::text(&row, "id").ok_or_else(|| ConnectorError::Fatal("CRM row without id".into()))?,
        object,
        email: store::text(&row, "email"),
        owner_id: store::text(&row, "owner_id"),
        external_id: store::text(&row, "crmsync_id"),
        is_deleted: store::flag(&row, "is_deleted"),
        is_converted: store::flag(&row, "is_converted"),
        converted_contact_id: store::text(&row, "converted_contact_id"),
        created_at: store::time(&row, "created_at")?,
        system_modstamp: store::time(&row, "modstamp")?,
        last_modified_by: store::text(&row, "last_modified_by"),
        fields: row.into_fields(),
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
        Ok(SandboxCrm { pool, tenant: tenant.to_owned(), integration_user: id, change_origin: None })
    }

    /// This org, writing as an API client: the change events of its writes
    /// carry `origin` as their `changeOrigin` (`com/salesforce/api/rest/60.0;client=crmsync`).
    pub fn with_change_origin(&self, origin: impl Into<String>) -> SandboxCrm {
        SandboxCrm { change_origin: Some(origin.into()), ..self.clone() }
    }

    /// Leads and contacts matching `condition` (on table alias `t`, with `$1`
    /// the tenant and `$2` a text array).
    async fn people_where(&self, condition: &str, arg: &[String]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let sql = format!(
            "SELECT to_json(t)::text AS row, 'lead' AS object FROM crm.leads t WHERE t.tenant = $1 AND {condition} \
             UNION ALL \
             SELECT to_json(t)::text AS row, 'contact' AS object FROM crm.contacts t WHERE t.tenant = $1 AND {condition}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(&self.tenant).bind(arg).fetch_all(&self.pool).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let object = if r.get::<&str, _>("object") == "lead" { CrmObject::Lead } else { CrmObject::Contact };
                record(object, r.get::<&str, _>("row"))
            })
            .collect()
    }

    /// The active and API-enabled flags of every user the writes name as
    /// owner or as the user to act as, in one query for the whole call.
    async fn users_of(&self, conn: &mut PgConnection, writes: &[CrmWrite]) -> Result<Users, sqlx::Error> {
        let mut ids: Vec<&str> =
            writes.iter().flat_map(|w| [w.owner_id.as_ref(), w.act_as.as_ref()]).flatten().map(CrmId::as_str).collect();
        if ids.is_empty() {
            return Ok(Users::new());
        }
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<(String, bool, bool)> =
            sqlx::query_as("SELECT id, is_active, api_enabled FROM crm.users WHERE tenant = $1 AND id = ANY($2)")
                .bind(&self.tenant)
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await?;
        Ok(rows.into_iter().map(|(id, active, api)| (id, (active, api))).collect())
    }

    /// Locks the rows the writes update, all in one statement and in id
    /// order (so two calls locking overlapping rows cannot deadlock), keyed
    /// by id and by external id.
    ///
    /// Without an active rule, [`Self::plan`] reads only a row's id and its
    /// deleted and converted flags, so only those (and the external id) are
    /// read: the whole row as JSON cost PostgreSQL `to_json` and the applier
    /// a parse of every column and stamp, on every record it writes.
    async fn lock_targets(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        rules: &rules::Rules,
        writes: &[CrmWrite],
    ) -> Result<Targets, sqlx::Error> {
        let ids: Vec<&str> =
            writes.iter().filter_map(|w| if let CrmTarget::Id(id) = &w.target { Some(id.as_str()) } else { None }).collect();
        let external: Vec<&str> =
            writes.iter().filter_map(|w| if let CrmTarget::ExternalId(e) = &w.target { Some(e.as_str()) } else { None }).collect();
        if ids.is_empty() && external.is_empty() {
            return Ok(Targets::default());
        }
        let row = if rules.any() { "to_json(t)".to_owned() } else { plan_columns(def) };
        let sql = format!(
            "SELECT {row} AS row FROM {} t WHERE tenant = $1 AND (id = ANY($2) OR crmsync_id = ANY($3)) ORDER BY id FOR UPDATE",
            def.table
        );
        let rows: Vec<Value> =
            sqlx::query_scalar(AssertSqlSafe(sql)).bind(&self.tenant).bind(&ids).bind(&external).fetch_all(&mut *conn).await?;
        let mut targets = Targets::default();
        for row in rows {
            let at = targets.rows.len();
            if let Some(ext) = store::text(&row, "crmsync_id") {
                targets.by_external.insert(ext, at);
            }
            if let Some(id) = store::text(&row, "id") {
                targets.by_id.insert(id, at);
            }
            targets.rows.push(row);
        }
        Ok(targets)
    }

    /// Locks the one row a write updates, if it names one.
    async fn lock_target(&self, conn: &mut PgConnection, def: &ObjectDef, w: &CrmWrite) -> Result<Option<Value>, sqlx::Error> {
        let (column, key) = match &w.target {
            CrmTarget::New => return Ok(None),
            CrmTarget::Id(id) => ("id", id.to_string()),
            CrmTarget::ExternalId(ext) => ("crmsync_id", ext.clone()),
        };
        let lookup = format!("SELECT to_json(t) FROM {} t WHERE tenant = $1 AND {column} = $2 FOR UPDATE", def.table);
        sqlx::query_scalar(AssertSqlSafe(lookup)).bind(&self.tenant).bind(&key).fetch_optional(&mut *conn).await
    }

    /// What one write comes to, given its (locked) row: an outcome decided
    /// without writing (a refusal, a missing record), or the row write to make.
    /// Only the org's own rules may need the database here.
    async fn plan(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        rules: &rules::Rules,
        users: &Users,
        w: &CrmWrite,
        existing: Option<&Value>,
    ) -> Result<Step, sqlx::Error> {
        if let Some(owner) = &w.owner_id {
            match users.get(owner.as_str()) {
                None => {
                    return Ok(Step::Done(rejected("INVALID_CROSS_REFERENCE_KEY", "Owner ID: id value of incorrect type or no such user")));
                }
                Some((false, _)) => return Ok(Step::Done(rejected("INACTIVE_OWNER_OR_USER", "operation performed with inactive user"))),
                Some((true, _)) => {}
            }
        }
        if let Some(user) = &w.act_as {
            let refusal = match users.get(user.as_str()) {
                None => Some(rejected("INVALID_CROSS_REFERENCE_KEY", "no such user to act as")),
                Some((false, _)) => Some(rejected("INACTIVE_OWNER_OR_USER", "operation performed with inactive user")),
                Some((true, false)) => Some(rejected("API_DISABLED_FOR_USER", "The user does not have the API Enabled permission")),
                Some((true, true)) => None,
            };
            if let Some(refusal) = refusal {
                return Ok(Step::Done(refusal));
            }
        }
        let actor = w.act_as.as_ref().map_or(self.integration_user.as_str(), CrmId::as_str).to_owned();
        if let Some(row) = existing {
            if store::flag(row, "is_deleted") {
                return Ok(Step::Done(rejected("ENTITY_IS_DELETED", "entity is deleted")));
            }
            if store::flag(row, "is_converted") {
                return Ok(Step::Done(rejected("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")));
            }
        } else if matches!(w.target, CrmTarget::Id(_)) {
            return Ok(Step::Done(WriteOutcome::NotFound));
        }
        if let Err(r) = validate::check(def, &w.fields, existing.is_none()) {
            return Ok(Step::Done(rejected(r.code, r.message)));
        }
        let mut doc: Map<String, Value> = match store::patch(def, w.fields.clone()) {
            Ok(d) => d,
            Err(message) => return Ok(Step::Done(rejected("INVALID_FIELD", message))),
        };
        if let Some(owner) = &w.owner_id {
            doc.insert("owner_id".into(), Value::String(owner.to_string()));
        }
        let id = existing.and_then(|row| store::text(row, "id"));
        if rules.any() {
            let mut after = existing.and_then(Value::as_object).cloned().unwrap_or_default();
            after.extend(doc.clone());
            if let Some((code, message)) = rules.refusal(conn, def, &self.tenant, id.as_deref(), &after, &doc).await? {
                return Ok(Step::Done(rejected(code, message)));
            }
        }
        Ok(match id {
            Some(id) => Step::Update(store::RowUpdate {
                id,
                patch: doc,
                actor,
                when: store::Conditions { fence: w.fence, unmodified_since: w.unmodified_since },
            }),
            None => {
                if let CrmTarget::ExternalId(ext) = &w.target {
                    doc.insert("crmsync_id".into(), Value::String(ext.clone()));
                }
                // The creating user owns a record created without an owner.
                doc.entry("owner_id").or_insert_with(|| Value::String(actor.clone()));
                Step::Insert { doc, actor, fence: w.fence }
            }
        })
    }

    /// Writes one record at a time, each under its own savepoint: for calls
    /// that name a record twice or meet the org's own rules, where each
    /// write must see the ones before it.
    async fn write_each(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        rules: &rules::Rules,
        users: &Users,
        writes: &[CrmWrite],
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            store::savepoint(conn).await?;
            let result = async {
                let existing = self.lock_target(conn, def, w).await?;
                let step = self.plan(conn, def, rules, users, w, existing.as_ref()).await?;
                store::execute(conn, def, &self.tenant, step).await
            }
            .await;
            out.push(store::settle(conn, result).await?);
        }
        Ok(out)
    }

    /// Writes a call's distinct records together: one statement locks them
    /// all, one updates them all, and only creates go one at a time.
    async fn write_together(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        rules: &rules::Rules,
        users: &Users,
        writes: &[CrmWrite],
    ) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let targets = self.lock_targets(conn, def, rules, writes).await.map_err(db_error)?;
        let existing: Vec<Option<&Value>> = writes
            .iter()
            .map(|w| {
                let at = match &w.target {
                    CrmTarget::New => None,
                    CrmTarget::Id(id) => targets.by_id.get(id.as_str()),
                    CrmTarget::ExternalId(ext) => targets.by_external.get(ext),
                };
                at.map(|&at| &targets.rows[at])
            })
            .collect();
        // One record named by its id in one write and its external id in
        // another: the second must see the first.
        let mut rows = std::collections::HashSet::new();
        if !existing.iter().flatten().all(|row| rows.insert(store::text(*row, "id"))) {
            return self.write_each(conn, def, rules, users, writes).await;
        }
        let mut steps = Vec::with_capacity(writes.len());
        for (w, existing) in writes.iter().zip(existing) {
            steps.push(self.plan(conn, def, rules, users, w, existing).await.map_err(db_error)?);
        }
        store::write_planned(conn, def, &self.tenant, steps).await
    }
}

/// Users named by a call's writes: id → (active, API enabled).
type Users = HashMap<String, (bool, bool)>;

/// A call's locked rows, found by id and by external id.
#[derive(Debug, Default)]
struct Targets {
    rows: Vec<Value>,
    by_id: HashMap<String, usize>,
    by_external: HashMap<String, usize>,
}

/// The columns [`SandboxCrm::plan`] reads from a locked row when no rule
/// needs the rest, as a JSON object shaped like `to_json`'s.
fn plan_columns(def: &ObjectDef) -> String {
    let columns: Vec<String> = ["id", "crmsync_id", "is_deleted", "is_converted"]
        .into_iter()
        .filter(|c| *c == "id" || *c == "crmsync_id" || def.by_column(c).is_some())
        .map(|c| format!("'{c}', t.{c}"))
        .collect();
    format!("json_build_object({})", columns.join(", "))
}

/// Whether every write names a different record (or creates one without an
/// external id), so none needs to see another's effect.
fn distinct_targets(writes: &[CrmWrite]) -> bool {
    let mut seen = std::collections::HashSet::new();
    writes.iter().all(|w| match &w.target {
        CrmTarget::New => true,
        CrmTarget::Id(id) => seen.insert(format!("id:{id}")),
        CrmTarget::ExternalId(ext) => seen.insert(format!("ext:{ext}")),
    })
}

#[async_trait]
impl CrmApi for SandboxCrm {
    fn integration_user(&self) -> &str {
        &self.integration_user
    }

    /// Every update is conditional on the row's `modstamp` (see `store`).
    fn writes_conditionally(&self) -> bool {
        true
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
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT to_json(t)::text FROM {table} t WHERE t.tenant = $1 AND {col} = ANY($2) AND NOT t.is_deleted"
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

    async fn person_fields(&self, object: CrmObject) -> Result<Vec<crmsync_connector::FieldInfo>, ConnectorError> {
        match object {
            CrmObject::Lead => Ok(crate::schema::data_fields(&LEAD)),
            CrmObject::Contact => Ok(crate::schema::data_fields(&CONTACT)),
            other => Err(ConnectorError::Fatal(format!("{other} is not a person object"))),
        }
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
        if let Some(origin) = &self.change_origin {
            crate::cdc::set_origin(&mut tx, origin).await.map_err(db_error)?;
        }
        let rules = rules::Rules::load(&mut tx, def, &self.tenant).await.map_err(db_error)?;
        let users = self.users_of(&mut tx, writes).await.map_err(db_error)?;
        // The org's rules read other rows (duplicates) and a record named
        // twice must see its first write: those calls go one record at a time.
        let out = if rules.any() || !distinct_targets(writes) {
            self.write_each(&mut tx, def, &rules, &users, writes).await?
        } else {
            self.write_together(&mut tx, def, &rules, &users, writes).await?
        };
        tx.commit().await.map_err(db_error)?;
        Ok(out)
    }
}
