//! Account Engagement API v5 prospects, users and custom fields: query
//! (`query`), read, create, update, upsert latest by email, delete and
//! undelete; the custom prospect fields (`custom_fields`); every answer in
//! v5's JSON, every error as `{code, message}`.
//!
//! Field names are v5's (`salesforceLeadId`, `updatedAt`...), translated to
//! the sandbox's columns here. Writes go through the sandbox MA's writes, so
//! the same validation, stamps and fencing apply as for the engine, and are
//! made as the MA user of the session's Salesforce user (`updatedById`), as
//! Account Engagement attributes them.

use std::sync::Arc;

mod custom_fields;
mod query;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use crmsync_connector::{FieldValues, MaApi, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::{CrmId, CrmObject, Email};
use crmsync_sandbox::SandboxMa;
use crmsync_sandbox::schema::PROSPECT;
use crmsync_wire::pardot::{self, FENCE_FIELD, QueryPage, UpsertLatestByEmail, codes};
use crmsync_wire::time;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::errors::AeError;
use crate::state::{AppState, MaUser};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(pardot::PROSPECTS_PATH, get(query::query).post(create))
        .route(&format!("{}/do/upsertLatestByEmail", pardot::PROSPECTS_PATH), post(upsert_latest_by_email))
        .route(&format!("{}/{{id}}", pardot::PROSPECTS_PATH), get(read).patch(update).delete(delete))
        .route(&format!("{}/{{id}}/do/undelete", pardot::PROSPECTS_PATH), post(undelete))
        .route(pardot::USERS_PATH, get(users))
        .route(pardot::CUSTOM_FIELDS_PATH, get(custom_fields::list))
}

/// v5 names of the fields the sandbox stores in columns of its own.
const SYSTEM: &[(&str, &str)] = &[
    ("id", "id"),
    ("salesforceLeadId", "crm_lead_fid"),
    ("salesforceContactId", "crm_contact_fid"),
    (SALESFORCE_ID, "crm_contact_fid"),
    ("assignedUserId", "assigned_user_id"),
    ("isDeleted", "is_deleted"),
    ("createdAt", "created_at"),
    ("updatedAt", "modstamp"),
    ("updatedById", "last_modified_by"),
    (FENCE_FIELD, "sync_fence"),
];

/// Fields a client may not write.
pub(crate) const READ_ONLY: &[&str] = &["id", "isDeleted", "createdAt", "updatedAt", "updatedById", SALESFORCE_ID];

/// v5's `salesforceId`: the CRM record the prospect is synced with, its
/// contact's id once it has one, else its lead's. Read from the contact
/// column; [`prospect`] falls back to the lead's.
const SALESFORCE_ID: &str = "salesforceId";

pub(crate) fn column_of(field: &str) -> Option<&'static str> {
    SYSTEM
        .iter()
        .find(|(api, _)| *api == field)
        .map(|(_, c)| *c)
        .or_else(|| PROSPECT.by_api(field).filter(|c| !c.api.starts_with("crm")).map(|c| c.column))
}

pub(crate) fn invalid_field(field: &str) -> AeError {
    AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, format!("Invalid field name: {field}"))
}

/// The `fields` parameter: required by v5, every name known.
pub(crate) fn requested(fields: Option<&str>) -> Result<Vec<String>, AeError> {
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
pub(crate) fn prospect(row: &Value, fields: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    for f in fields {
        let column = column_of(f).unwrap_or_default();
        let mut v = row.get(column).cloned().unwrap_or(Value::Null);
        if f == SALESFORCE_ID && v.is_null() {
            v = row.get("crm_lead_fid").cloned().unwrap_or(Value::Null);
        }
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
pub(crate) fn write_of(target: ProspectTarget, body: &Map<String, Value>) -> Result<ProspectWrite, AeError> {
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
pub(crate) fn writer(st: &AppState, user: MaUser) -> SandboxMa {
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
    fn salesforce_id_is_the_contact_once_there_is_one_else_the_lead() {
        let fields = vec!["id".to_owned(), SALESFORCE_ID.to_owned()];
        requested(Some("id,salesforceId")).unwrap();
        let lead_only = serde_json::json!({"id": 1, "crm_lead_fid": "00Q000000000001AAA", "crm_contact_fid": null});
        assert_eq!(prospect(&lead_only, &fields)[SALESFORCE_ID], "00Q000000000001AAA");
        let both = serde_json::json!({"id": 1, "crm_lead_fid": "00Q000000000001AAA", "crm_contact_fid": "003000000000001AAA"});
        assert_eq!(prospect(&both, &fields)[SALESFORCE_ID], "003000000000001AAA");
        let neither = serde_json::json!({"id": 1});
        assert_eq!(prospect(&neither, &fields)[SALESFORCE_ID], Value::Null);
        let body = serde_json::json!({SALESFORCE_ID: "00Q000000000001AAA"}).as_object().unwrap().clone();
        assert!(write_of(ProspectTarget::Id(1), &body).is_err(), "read-only, as in v5");
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
