//! Account Engagement API v5 prospects and users: query (filters on
//! `updatedAt` and `id`, `nextPageToken` paging, deleted prospects on
//! request), read, create, update, upsert latest by email, delete and
//! undelete; every answer in v5's JSON, every error as `{code, message}`.
//!
//! Field names are v5's (`salesforceLeadId`, `updatedAt`...), translated to
//! the sandbox's columns here. Writes go through the sandbox MA's writes, so
//! the same validation, stamps and fencing apply as for the engine, and are
//! made as the MA user of the session's Salesforce user (`updatedById`), as
//! Account Engagement attributes them.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use crmsync_connector::{FieldValues, MaApi, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::{CrmId, CrmObject, Email};
use crmsync_sandbox::SandboxMa;
use crmsync_sandbox::schema::PROSPECT;
use crmsync_wire::pardot::{self, FENCE_FIELD, QueryPage, UpsertLatestByEmail, codes};
use crmsync_wire::time;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::errors::AeError;
use crate::state::{AppState, MaUser};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(pardot::PROSPECTS_PATH, get(query).post(create))
        .route(&format!("{}/do/upsertLatestByEmail", pardot::PROSPECTS_PATH), post(upsert_latest_by_email))
        .route(&format!("{}/{{id}}", pardot::PROSPECTS_PATH), get(read).patch(update).delete(delete))
        .route(&format!("{}/{{id}}/do/undelete", pardot::PROSPECTS_PATH), post(undelete))
        .route(pardot::USERS_PATH, get(users))
}

/// v5 names of the fields the sandbox stores in columns of its own.
const SYSTEM: &[(&str, &str)] = &[
    ("id", "id"),
    ("salesforceLeadId", "crm_lead_fid"),
    ("salesforceContactId", "crm_contact_fid"),
    ("assignedUserId", "assigned_user_id"),
    ("isDeleted", "is_deleted"),
    ("createdAt", "created_at"),
    ("updatedAt", "modstamp"),
    ("updatedById", "last_modified_by"),
    (FENCE_FIELD, "sync_fence"),
];

/// Fields a client may not write.
const READ_ONLY: &[&str] = &["id", "isDeleted", "createdAt", "updatedAt", "updatedById"];

fn column_of(field: &str) -> Option<&'static str> {
    SYSTEM
        .iter()
        .find(|(api, _)| *api == field)
        .map(|(_, c)| *c)
        .or_else(|| PROSPECT.by_api(field).filter(|c| !c.api.starts_with("crm")).map(|c| c.column))
}

fn invalid_field(field: &str) -> AeError {
    AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, format!("Invalid field name: {field}"))
}

/// The `fields` parameter: required by v5, every name known.
fn requested(fields: Option<&str>) -> Result<Vec<String>, AeError> {
    let fields = fields.filter(|f| !f.trim().is_empty()).ok_or_else(|| {
        AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, "The fields parameter is required: name the fields to return")
    })?;
    let names: Vec<String> = fields.split(',').map(|f| f.trim().to_owned()).collect();
    for f in &names {
        column_of(f).ok_or_else(|| invalid_field(f))?;
    }
    Ok(names)
}

/// A row of `ma.prospects` (its columns as `to_json` gives them) as a v5
/// prospect with `fields`.
fn prospect(row: &Value, fields: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    for f in fields {
        let column = column_of(f).unwrap_or_default();
        let v = row.get(column).cloned().unwrap_or(Value::Null);
        let v = match column {
            "created_at" | "modstamp" => v.as_str().and_then(time::parse).map_or(Value::Null, |t| Value::String(time::pardot(t))),
            // v5 user ids are numbers.
            "last_modified_by" => match v.as_str().map(str::parse::<i64>) {
                Some(Ok(n)) => Value::from(n),
                _ => v,
            },
            _ => v,
        };
        out.insert(f.clone(), v);
    }
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParams {
    fields: Option<String>,
    order_by: Option<String>,
    limit: Option<usize>,
    updated_at_after_or_equal_to: Option<String>,
    updated_at_before: Option<String>,
    id_greater_than: Option<i64>,
    email: Option<String>,
    deleted: Option<String>,
    next_page_token: Option<String>,
}

/// What a `nextPageToken` stands for: the query, and where it stopped.
#[derive(Debug, Serialize, Deserialize)]
struct PageToken {
    fields: Vec<String>,
    by_id: bool,
    limit: usize,
    from: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
    email: Option<String>,
    deleted: Option<bool>,
    id_gt: Option<i64>,
    /// The last prospect returned: (updatedAt in ms, id).
    after: Option<(i64, i64)>,
}

fn encode(t: &PageToken) -> String {
    serde_json::to_vec(t).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(s: &str) -> Option<PageToken> {
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    serde_json::from_slice(&bytes?).ok()
}

fn date(param: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, AeError> {
    v.map(|s| {
        time::parse(s)
            .ok_or_else(|| AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, format!("{param}: not a date-time: {s}")))
    })
    .transpose()
}

/// `GET /api/v5/objects/prospects`: prospects in `updatedAt` (or `id`)
/// order, `limit` at a time (at most 1000), resumed by `nextPageToken`.
pub async fn query(State(st): State<Arc<AppState>>, Query(p): Query<QueryParams>) -> Result<Json<QueryPage>, AeError> {
    let bad = |m: String| AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, m);
    let token = match &p.next_page_token {
        Some(t) => decode(t).ok_or_else(|| bad("Invalid nextPageToken".into()))?,
        None => {
            let by_id = match p.order_by.as_deref().map(str::trim) {
                None | Some("updatedAt") | Some("updatedAt ASC") | Some("updatedAt asc") => false,
                Some("id") | Some("id ASC") | Some("id asc") => true,
                Some(o) => return Err(bad(format!("orderBy: the sandbox orders by updatedAt or id, ascending, not {o}"))),
            };
            let limit = p.limit.unwrap_or(200);
            if limit == 0 || limit > pardot::MAX_PAGE {
                return Err(bad(format!("limit must be between 1 and {}", pardot::MAX_PAGE)));
            }
            let deleted = match p.deleted.as_deref() {
                None | Some("false") => Some(false),
                Some("true") => Some(true),
                Some("all") => None,
                Some(o) => return Err(bad(format!("deleted must be true, false or all, not {o}"))),
            };
            PageToken {
                fields: requested(p.fields.as_deref())?,
                by_id,
                limit,
                from: date("updatedAtAfterOrEqualTo", p.updated_at_after_or_equal_to.as_deref())?,
                before: date("updatedAtBefore", p.updated_at_before.as_deref())?,
                email: p.email.as_deref().map(|e| e.trim().to_lowercase()),
                deleted,
                id_gt: p.id_greater_than,
                after: None,
            }
        }
    };
    // Stamps compare at millisecond precision, the precision v5 returns.
    let ms = "(extract(epoch from date_trunc('milliseconds', t.modstamp)) * 1000)::bigint";
    let (order, after) = if token.by_id {
        ("t.id".to_owned(), "($3::bigint IS NULL OR t.id > $3)".to_owned())
    } else {
        (format!("{ms}, t.id"), format!("($2::bigint IS NULL OR ({ms}, t.id) > ($2, $3))"))
    };
    // Only the columns asked for (and the page token's): a change feed's
    // light pages ask for `id` and `updatedAt` of a thousand prospects.
    let mut columns = std::collections::BTreeSet::from(["id", "modstamp"]);
    columns.extend(token.fields.iter().filter_map(|f| column_of(f)));
    let row = crate::soql_sql::row_of(&columns);
    let sql = format!(
        "SELECT {row} FROM ma.prospects t WHERE t.tenant = $1 AND {after} \
         AND ($4::timestamptz IS NULL OR date_trunc('milliseconds', t.modstamp) >= $4) \
         AND ($5::timestamptz IS NULL OR date_trunc('milliseconds', t.modstamp) < $5) \
         AND ($6::text IS NULL OR lower(btrim(t.email)) = $6) \
         AND ($7::bool IS NULL OR t.is_deleted = $7) \
         AND ($9::bigint IS NULL OR t.id > $9) \
         ORDER BY {order} LIMIT $8"
    );
    let rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&st.config.ma_tenant)
        .bind(token.after.map(|a| a.0))
        .bind(token.after.map(|a| a.1))
        .bind(token.from)
        .bind(token.before)
        .bind(&token.email)
        .bind(token.deleted)
        .bind(token.limit as i64 + 1)
        .bind(token.id_gt)
        .fetch_all(&st.pool)
        .await?;
    let more = rows.len() > token.limit;
    let page = &rows[..rows.len().min(token.limit)];
    let fields = token.fields.clone();
    let next_page_token = match page.last() {
        Some(last) if more => {
            let stamp = last.get("modstamp").and_then(Value::as_str).and_then(time::parse).map_or(0, |t| t.timestamp_millis());
            let id = last.get("id").and_then(Value::as_i64).unwrap_or_default();
            Some(encode(&PageToken { after: Some((stamp, id)), ..token }))
        }
        _ => None,
    };
    Ok(Json(QueryPage {
        values: page.iter().map(|r| prospect(r, &fields)).collect(),
        next_page_url: next_page_token.as_ref().map(|t| format!("{}{}?nextPageToken={t}", st.base_url(), pardot::PROSPECTS_PATH)),
        next_page_token,
    }))
}

#[derive(Debug, Deserialize)]
pub struct Fields {
    fields: Option<String>,
}

async fn row(st: &AppState, id: i64) -> Result<Value, AeError> {
    sqlx::query_scalar("SELECT to_json(t) FROM ma.prospects t WHERE tenant = $1 AND id = $2")
        .bind(&st.config.ma_tenant)
        .bind(id)
        .fetch_optional(&st.pool)
        .await?
        .ok_or_else(|| AeError::new(StatusCode::NOT_FOUND, codes::INVALID_PROSPECT_ID, "Invalid prospect ID"))
}

pub async fn read(
    State(st): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Query(f): Query<Fields>,
) -> Result<Json<Map<String, Value>>, AeError> {
    let fields = requested(f.fields.as_deref())?;
    Ok(Json(prospect(&row(&st, id).await?, &fields)))
}

/// A v5 body as a sandbox write: its fields, the CRM link it sets, its fence.
fn write_of(target: ProspectTarget, body: &Map<String, Value>) -> Result<ProspectWrite, AeError> {
    let mut fields = FieldValues::new();
    let mut crm_link = None;
    let mut fence = None;
    for (k, v) in body {
        match k.as_str() {
            f if READ_ONLY.contains(&f) => {
                return Err(AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, format!("{f} is read-only")));
            }
            FENCE_FIELD => fence = v.as_i64(),
            "salesforceLeadId" | "salesforceContactId" => {
                if let Some(id) = v.as_str() {
                    let id = CrmId::parse(id)
                        .map_err(|e| AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, format!("{k}: {e}")))?;
                    crm_link = Some((if k == "salesforceLeadId" { CrmObject::Lead } else { CrmObject::Contact }, id));
                }
            }
            f => {
                PROSPECT.by_api(f).filter(|c| !c.api.starts_with("crm")).ok_or_else(|| invalid_field(f))?;
                fields.insert(f.to_owned(), v.clone());
            }
        }
    }
    Ok(ProspectWrite { target, fields, crm_link, fence, unmodified_since: None })
}

/// The business unit as the request's MA user writes to it.
fn writer(st: &AppState, user: MaUser) -> SandboxMa {
    st.ma.acting_as(user.0)
}

/// Writes one prospect as `user` and answers with it, or with the v5 error.
async fn write_and_read(
    st: &AppState,
    user: MaUser,
    w: ProspectWrite,
    fields: Option<&str>,
) -> Result<(StatusCode, Json<Map<String, Value>>), AeError> {
    let fields = requested(fields.or(Some("id,email,updatedAt")))?;
    let outcome = writer(st, user).write_prospects(std::slice::from_ref(&w)).await?.pop().ok_or_else(|| AeError::internal("no outcome"))?;
    match outcome {
        WriteOutcome::Written { id, created, .. } => {
            let id: i64 = id.parse().map_err(AeError::internal)?;
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(prospect(&row(st, id).await?, &fields))))
        }
        WriteOutcome::Rejected { code, message } => {
            let code = if code.contains("EMAIL") { codes::INVALID_EMAIL } else { codes::INVALID_FIELD_VALUE };
            Err(AeError::new(StatusCode::BAD_REQUEST, code, message))
        }
        WriteOutcome::Fenced => {
            Err(AeError::new(StatusCode::CONFLICT, codes::FENCED, "crmsync fence: a newer writer has written this prospect"))
        }
        WriteOutcome::NotFound => Err(AeError::new(StatusCode::NOT_FOUND, codes::INVALID_PROSPECT_ID, "Invalid prospect ID")),
    }
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<MaUser>,
    Query(f): Query<Fields>,
    Json(body): Json<Map<String, Value>>,
) -> Result<(StatusCode, Json<Map<String, Value>>), AeError> {
    write_and_read(&st, user, write_of(ProspectTarget::New, &body)?, f.fields.as_deref()).await
}

pub async fn update(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<MaUser>,
    Path(id): Path<i64>,
    Query(f): Query<Fields>,
    Json(body): Json<Map<String, Value>>,
) -> Result<(StatusCode, Json<Map<String, Value>>), AeError> {
    let (_, body) = write_and_read(&st, user, write_of(ProspectTarget::Id(id), &body)?, f.fields.as_deref()).await?;
    Ok((StatusCode::OK, body))
}

pub async fn upsert_latest_by_email(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<MaUser>,
    Json(req): Json<UpsertLatestByEmail>,
) -> Result<(StatusCode, Json<Map<String, Value>>), AeError> {
    let email = Email::parse(&req.match_email).map_err(|e| AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_EMAIL, e.to_string()))?;
    let w = write_of(ProspectTarget::UpsertByEmail(email), &req.prospect)?;
    let fields = req.fields.join(",");
    let (_, body) = write_and_read(&st, user, w, Some(&fields)).await?;
    // v5 answers 200 for both an update and a create here.
    Ok((StatusCode::OK, body))
}

/// Moves a prospect in or out of the recycle bin, as `user`.
async fn set_deleted(st: &AppState, user: MaUser, id: i64, deleted: bool) -> Result<(), AeError> {
    let mut fields = FieldValues::new();
    fields.insert("isDeleted".into(), Value::Bool(deleted));
    let w = ProspectWrite { target: ProspectTarget::Id(id), fields, crm_link: None, fence: None, unmodified_since: None };
    write_and_read(st, user, w, Some("id")).await.map(drop)
}

/// Moves a prospect to the recycle bin.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<MaUser>,
    Path(id): Path<i64>,
) -> Result<StatusCode, AeError> {
    set_deleted(&st, user, id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restores a prospect from the recycle bin.
pub async fn undelete(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<MaUser>,
    Path(id): Path<i64>,
    Query(f): Query<Fields>,
) -> Result<Json<Map<String, Value>>, AeError> {
    set_deleted(&st, user, id, false).await?;
    let fields = requested(f.fields.as_deref().or(Some("id,email,isDeleted,updatedAt")))?;
    Ok(Json(prospect(&row(&st, id).await?, &fields)))
}

/// `GET /api/v5/objects/users`: the business unit's users with their
/// Salesforce user (`salesforceId`), for a prospect's assigned user.
pub async fn users(State(st): State<Arc<AppState>>) -> Result<Json<QueryPage>, AeError> {
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, email, crm_user_id FROM ma.users WHERE tenant = $1 ORDER BY id")
            .bind(&st.config.ma_tenant)
            .fetch_all(&st.pool)
            .await?;
    let values = rows
        .into_iter()
        .map(|(id, email, crm)| {
            let mut m = Map::new();
            m.insert("id".into(), Value::from(id));
            m.insert("email".into(), Value::from(email));
            m.insert("salesforceId".into(), crm.map_or(Value::Null, Value::from));
            m
        })
        .collect();
    Ok(Json(QueryPage { values, next_page_token: None, next_page_url: None }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_names_map_to_columns_and_sandbox_names_stay_hidden() {
        assert_eq!(column_of("salesforceLeadId"), Some("crm_lead_fid"));
        assert_eq!(column_of("updatedAt"), Some("modstamp"));
        assert_eq!(column_of("firstName"), Some("first_name"));
        assert_eq!(column_of("crmLeadFid"), None, "the sandbox's own names are not v5's");
        assert!(requested(None).is_err(), "v5 requires fields");
        assert!(requested(Some("id,nope")).is_err());
    }

    #[test]
    fn a_page_token_round_trips() {
        let t = PageToken {
            fields: vec!["id".into()],
            by_id: false,
            limit: 5,
            from: None,
            before: None,
            email: Some("a@b.c".into()),
            deleted: None,
            id_gt: None,
            after: Some((1_700_000_000_000, 42)),
        };
        let back = decode(&encode(&t)).unwrap();
        assert_eq!((back.after, back.email.as_deref(), back.limit), (Some((1_700_000_000_000, 42)), Some("a@b.c"), 5));
        assert!(decode("zz").is_none());
    }

    #[test]
    fn read_only_and_unknown_fields_are_refused() {
        let body = |k: &str| serde_json::json!({k: "x"}).as_object().unwrap().clone();
        assert!(write_of(ProspectTarget::New, &body("updatedAt")).is_err());
        assert!(write_of(ProspectTarget::New, &body("favouriteColour")).is_err());
        let ok = write_of(ProspectTarget::Id(1), &body("firstName")).unwrap();
        assert_eq!(ok.fields.get("firstName"), Some(&Value::from("x")));
    }
}
