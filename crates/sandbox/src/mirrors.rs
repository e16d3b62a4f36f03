//! The MA's read-only mirrors (prospect accounts, opportunities, custom
//! object records) and who sees them, written by the connector only.
//!
//! Every write states the whole mirror: its values and the exact set of
//! prospects that see it. Prospects outside the set lose the link; an absent
//! plan removes the mirror. Writes are fenced like every engine write.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use crmsync_connector::{MirrorState, MirrorWrite, WriteOutcome};
use crmsync_domain::CrmId;
use crmsync_domain::mirror::{MirrorKind, MirrorPlan};
use serde_json::Value;
use sqlx::{PgConnection, Row};

/// Where a kind of mirror lives: its table, the column holding the CRM id,
/// and the table linking it to prospects (prospect accounts link through
/// `ma.prospects.prospect_account_id` instead).
struct Place {
    table: &'static str,
    crm_column: &'static str,
    links: Option<(&'static str, &'static str)>,
}

fn place(kind: &MirrorKind) -> Place {
    match kind {
        MirrorKind::ProspectAccount => Place { table: "ma.prospect_accounts", crm_column: "crm_account_id", links: None },
        MirrorKind::Opportunity => Place {
            table: "ma.opportunities",
            crm_column: "crm_opportunity_id",
            links: Some(("ma.opportunity_prospects", "opportunity_id")),
        },
        MirrorKind::Custom(_) => {
            Place { table: "ma.custom_object_records", crm_column: "crm_id", links: Some(("ma.custom_object_prospects", "record_id")) }
        }
    }
}

fn object_type(kind: &MirrorKind) -> Option<&str> {
    match kind {
        MirrorKind::Custom(name) => Some(name),
        _ => None,
    }
}

/// Inserts or updates the mirror row; `None` if a newer fence holds it.
async fn upsert(
    conn: &mut PgConnection,
    tenant: &str,
    me: &str,
    w: &MirrorWrite,
    fields: &BTreeMap<String, Value>,
) -> Result<Option<(i64, chrono::DateTime<Utc>)>, sqlx::Error> {
    let doc = Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let sql = match &w.kind {
        MirrorKind::ProspectAccount => {
            "INSERT INTO ma.prospect_accounts AS t (tenant, crm_account_id, name, industry, website, city, country, last_modified_by, sync_fence) \
             VALUES ($1, $2, $3->>'name', $3->>'industry', $3->>'website', $3->>'city', $3->>'country', $4, coalesce($5, 0)) \
             ON CONFLICT (tenant, crm_account_id) DO UPDATE SET name = EXCLUDED.name, industry = EXCLUDED.industry, \
               website = EXCLUDED.website, city = EXCLUDED.city, country = EXCLUDED.country, \
               last_modified_by = EXCLUDED.last_modified_by, sync_fence = coalesce($5, t.sync_fence) \
             WHERE t.sync_fence < coalesce($5, 9223372036854775807) RETURNING t.id, t.modstamp"
        }
        MirrorKind::Opportunity => {
            "INSERT INTO ma.opportunities AS t (tenant, crm_opportunity_id, name, stage, amount, close_date, is_closed, is_won, last_modified_by, sync_fence) \
             VALUES ($1, $2, $3->>'name', $3->>'stage', ($3->>'amount')::numeric, ($3->>'closeDate')::date, \
               coalesce(($3->>'isClosed')::boolean, false), coalesce(($3->>'isWon')::boolean, false), $4, coalesce($5, 0)) \
             ON CONFLICT (tenant, crm_opportunity_id) DO UPDATE SET name = EXCLUDED.name, stage = EXCLUDED.stage, \
               amount = EXCLUDED.amount, close_date = EXCLUDED.close_date, is_closed = EXCLUDED.is_closed, is_won = EXCLUDED.is_won, \
               last_modified_by = EXCLUDED.last_modified_by, sync_fence = coalesce($5, t.sync_fence) \
             WHERE t.sync_fence < coalesce($5, 9223372036854775807) RETURNING t.id, t.modstamp"
        }
        MirrorKind::Custom(_) => {
            "INSERT INTO ma.custom_object_records AS t (tenant, object_type, crm_id, fields, last_modified_by, sync_fence) \
             VALUES ($1, $6, $2, $3, $4, coalesce($5, 0)) \
             ON CONFLICT (tenant, object_type, crm_id) DO UPDATE SET fields = EXCLUDED.fields, \
               last_modified_by = EXCLUDED.last_modified_by, sync_fence = coalesce($5, t.sync_fence) \
             WHERE t.sync_fence < coalesce($5, 9223372036854775807) RETURNING t.id, t.modstamp"
        }
    };
    let row = sqlx::query(sql)
        .bind(tenant)
        .bind(w.crm_id.as_str())
        .bind(doc)
        .bind(me)
        .bind(w.fence)
        .bind(object_type(&w.kind))
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| (r.get("id"), r.get("modstamp"))))
}

/// Makes exactly `prospects` see mirror row `id`.
async fn link(conn: &mut PgConnection, tenant: &str, me: &str, kind: &MirrorKind, id: i64, prospects: &[i64]) -> Result<(), sqlx::Error> {
    match place(kind).links {
        None => {
            sqlx::query(
                "UPDATE ma.prospects SET prospect_account_id = $3, last_modified_by = $4 \
                 WHERE tenant = $1 AND id = ANY($2) AND prospect_account_id IS DISTINCT FROM $3",
            )
            .bind(tenant)
            .bind(prospects)
            .bind(id)
            .bind(me)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE ma.prospects SET prospect_account_id = NULL, last_modified_by = $4 \
                 WHERE tenant = $1 AND prospect_account_id = $3 AND NOT (id = ANY($2))",
            )
            .bind(tenant)
            .bind(prospects)
            .bind(id)
            .bind(me)
            .execute(&mut *conn)
            .await?;
        }
        Some((table, column)) => {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE {column} = $1 AND NOT (prospect_id = ANY($2))")))
                .bind(id)
                .bind(prospects)
                .execute(&mut *conn)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} ({column}, prospect_id) \
                 SELECT $1, p FROM unnest($2::bigint[]) p WHERE EXISTS (SELECT 1 FROM ma.prospects WHERE id = p AND tenant = $3) \
                 ON CONFLICT DO NOTHING"
            )))
            .bind(id)
            .bind(prospects)
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Removes a mirror (and every link to it); `false` if a newer fence holds it.
async fn remove(conn: &mut PgConnection, tenant: &str, me: &str, w: &MirrorWrite) -> Result<bool, sqlx::Error> {
    let p = place(&w.kind);
    let filter = if object_type(&w.kind).is_some() { "AND object_type = $3" } else { "AND $3::text IS NULL" };
    let found: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, sync_fence FROM {} WHERE tenant = $1 AND {} = $2 {filter} FOR UPDATE",
        p.table, p.crm_column
    )))
    .bind(tenant)
    .bind(w.crm_id.as_str())
    .bind(object_type(&w.kind))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, fence)) = found else { return Ok(true) };
    if w.fence.is_some_and(|f| fence >= f) {
        return Ok(false);
    }
    if p.links.is_none() {
        // Prospects stop showing the account before it goes.
        link(conn, tenant, me, &w.kind, id, &[]).await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {} WHERE id = $1", p.table))).bind(id).execute(&mut *conn).await?;
    Ok(true)
}

/// Carries out one mirror write.
pub(crate) async fn write(conn: &mut PgConnection, tenant: &str, me: &str, w: &MirrorWrite) -> Result<WriteOutcome, sqlx::Error> {
    match &w.plan {
        MirrorPlan::Present { fields, prospects } => {
            let Some((id, at)) = upsert(conn, tenant, me, w, fields).await? else { return Ok(WriteOutcome::Fenced) };
            let prospects: Vec<i64> = prospects.iter().copied().collect();
            link(conn, tenant, me, &w.kind, id, &prospects).await?;
            Ok(WriteOutcome::Written { id: id.to_string(), created: false, at })
        }
        MirrorPlan::Absent => Ok(if remove(conn, tenant, me, w).await? {
            WriteOutcome::Written { id: w.crm_id.to_string(), created: false, at: Utc::now() }
        } else {
            WriteOutcome::Fenced
        }),
    }
}

/// A mirror as stored, with the prospects that see it.
pub(crate) async fn read(
    conn: &mut PgConnection,
    tenant: &str,
    kind: &MirrorKind,
    crm_id: &CrmId,
) -> Result<Option<MirrorState>, sqlx::Error> {
    let p = place(kind);
    let filter = if object_type(kind).is_some() { "AND t.object_type = $3" } else { "AND $3::text IS NULL" };
    let row: Option<(i64, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT t.id, to_json(t) FROM {} t WHERE t.tenant = $1 AND t.{} = $2 {filter}",
        p.table, p.crm_column
    )))
    .bind(tenant)
    .bind(crm_id.as_str())
    .bind(object_type(kind))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, row)) = row else { return Ok(None) };
    let prospects: Vec<i64> = match p.links {
        None => {
            sqlx::query_scalar("SELECT id FROM ma.prospects WHERE prospect_account_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
        Some((table, column)) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT prospect_id FROM {table} WHERE {column} = $1 ORDER BY prospect_id")))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    let fields: BTreeMap<String, Value> = match kind {
        MirrorKind::Custom(_) => row.get("fields").and_then(Value::as_object).map(|o| o.clone().into_iter().collect()).unwrap_or_default(),
        MirrorKind::ProspectAccount => ["name", "industry", "website", "city", "country"]
            .iter()
            .map(|k| ((*k).to_owned(), row.get(*k).cloned().unwrap_or(Value::Null)))
            .collect(),
        MirrorKind::Opportunity => [
            ("name", "name"),
            ("stage", "stage"),
            ("amount", "amount"),
            ("closeDate", "close_date"),
            ("isClosed", "is_closed"),
            ("isWon", "is_won"),
        ]
        .iter()
        .map(|(k, c)| ((*k).to_owned(), row.get(*c).cloned().unwrap_or(Value::Null)))
        .collect(),
    };
    Ok(Some(MirrorState { fields, prospects: prospects.into_iter().collect::<BTreeSet<i64>>() }))
}
