//! Salesforce REST's single-record routes (the sObject Rows resources) and
//! `limits`, which the common clients use for everything that is not a
//! query: simple-salesforce's `sf.Lead.create/get/update/upsert/delete`,
//! jsforce's `sobject('Lead').create/retrieve/update/upsert/destroy` and
//! `limits()`.
//!
//! Writes go through the same preparation as sObject Collections
//! ([`rest::prepare`]: read-only fields refused, the acting user, the
//! fence), so a record written one at a time obeys the same rules as one
//! written in a batch. Answers are shaped as Salesforce's: a create is 201
//! with `{id, success, errors}`, an update or delete 204 without a body, an
//! upsert 201 (created) or 200 (updated) with `created`, and an error a
//! list of `{message, errorCode, fields}` with the status Salesforce gives
//! it (400, or 404 for a record that does not exist).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use crmsync_connector::CrmApi;
use crmsync_domain::{CrmId, CrmObject};
use crmsync_sandbox::ops::Sandbox;
use crmsync_wire::salesforce::{EXTERNAL_ID_FIELD, SaveError, SaveResult, codes};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::errors::SfError;
use crate::rest::{self, Mode};
use crate::soql_sql::{self, Table};
use crate::state::{AppState, Session};

/// What Salesforce answers for a path naming no record.
fn not_found() -> SfError {
    SfError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "The requested resource does not exist")
}

/// One refused record as a whole response: the record's errors, 404 for a
/// record that is not there, else 400.
fn refused(errors: Vec<SaveError>) -> SfError {
    let status = if errors.iter().any(|e| e.status_code == codes::NOT_FOUND || e.status_code == codes::ENTITY_IS_DELETED) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    SfError {
        status,
        errors: errors
            .into_iter()
            .map(|e| crmsync_wire::salesforce::ApiError { message: e.message, error_code: e.status_code, fields: e.fields })
            .collect(),
    }
}

/// Writes one record (`body` with the path's type) and returns its result.
async fn write_one(
    st: &AppState,
    session: &Session,
    mode: Mode,
    object: &str,
    mut body: Map<String, Value>,
    origin: &str,
) -> Result<SaveResult, SfError> {
    body.insert("attributes".into(), json!({"type": object}));
    let integration = st.crm.integration_user().to_owned();
    let prepared = vec![rest::prepare(mode, session, &integration, &body)];
    let result = rest::write(st, mode, prepared, origin).await?.pop().ok_or_else(|| SfError::internal("no result for the record"))?;
    if result.success { Ok(result) } else { Err(refused(result.errors)) }
}

/// `POST /sobjects/{type}` (and with a trailing slash): creates a record.
pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path((version, object)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Map<String, Value>>,
) -> Result<Response, SfError> {
    let origin = rest::change_origin("rest", &version, &headers);
    let r = write_one(&st, &session, Mode::Create, &object, body, &origin).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": r.id, "success": true, "errors": []}))).into_response())
}

/// `PATCH /sobjects/{type}/{id}`: updates it; 204 without a body.
pub async fn update(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path((version, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<StatusCode, SfError> {
    if body.contains_key("Id") {
        return Err(SfError::bad_request(codes::INVALID_FIELD_FOR_INSERT_UPDATE, "Id is the path's, not a field to update"));
    }
    body.insert("Id".into(), Value::String(id));
    let origin = rest::change_origin("rest", &version, &headers);
    write_one(&st, &session, Mode::Update, &object, body, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /sobjects/{type}/{field}/{value}`: upsert by external id; 201
/// when it created the record, 200 when it updated one.
pub async fn upsert(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path((version, object, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<Response, SfError> {
    if field != EXTERNAL_ID_FIELD {
        return Err(SfError::bad_request(codes::INVALID_FIELD, format!("{field} is not an external id field of {object}")));
    }
    body.insert(EXTERNAL_ID_FIELD.into(), Value::String(value));
    let origin = rest::change_origin("rest", &version, &headers);
    let r = write_one(&st, &session, Mode::Upsert, &object, body, &origin).await?;
    let created = r.created.unwrap_or(false);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"id": r.id, "success": true, "errors": [], "created": created}))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Fields {
    fields: Option<String>,
}

/// `GET /sobjects/{type}/{id}`: the record, with every field its describe
/// lists or the ones `?fields=` names.
pub async fn retrieve(
    State(st): State<Arc<AppState>>,
    Path((version, object, id)): Path<(String, String, String)>,
    QueryParams(p): QueryParams<Fields>,
) -> Result<Json<Map<String, Value>>, SfError> {
    let table = Table::resolve(&object)?;
    let fields: Vec<String> = match (p.fields.as_deref().filter(|f| !f.trim().is_empty()), &table) {
        (Some(f), _) => f.split(',').map(|s| s.trim().to_owned()).collect(),
        (None, Table::Standard { object, def }) => crate::describe::describe_of(object, def).fields.into_iter().map(|f| f.name).collect(),
        (None, _) => vec!["Id".to_owned()],
    };
    let found = soql_sql::records(&st.pool, &st.config.crm_tenant, &table, &fields, std::slice::from_ref(&id), &version).await?;
    found.into_iter().next().map(Json).ok_or_else(not_found)
}

/// `DELETE /sobjects/{type}/{id}`: moves the record to the recycle bin.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path((version, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, SfError> {
    let def = match (Table::resolve(&object)?, CrmId::parse(&id).ok().and_then(|i| i.object())) {
        (Table::Standard { def, .. }, Some(CrmObject::Lead | CrmObject::Contact | CrmObject::Opportunity)) => def,
        (Table::Standard { .. }, _) => return Err(not_found()),
        _ => return Err(SfError::bad_request(codes::INVALID_TYPE, format!("the sandbox API deletes standard records, not {object}"))),
    };
    let sandbox =
        Sandbox::new(st.pool.clone(), st.config.crm_tenant.clone()).with_change_origin(rest::change_origin("rest", &version, &headers));
    // Absent, already deleted or of another type: as Salesforce, not found.
    let exists = sandbox.show(def, &id).await.ok().is_some_and(|r| r.get("is_deleted") == Some(&Value::Bool(false)));
    if !exists {
        return Err(not_found());
    }
    sandbox.set_deleted(def, &id, true).await.map_err(|e| SfError::new(StatusCode::NOT_FOUND, codes::ENTITY_IS_DELETED, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /limits`: the org's limits as Salesforce lists them, each
/// `{Max, Remaining}`; the daily API requests are the sandbox's own count.
pub async fn limits(State(st): State<Arc<AppState>>) -> Json<Value> {
    let l = st.current_limits().await;
    let of = |max: u64, used: u64| json!({"Max": max, "Remaining": max.saturating_sub(used)});
    Json(json!({
        "DailyApiRequests": of(l.salesforce_daily, l.salesforce_used),
        "DailyBulkV2QueryJobs": of(10_000, 0),
        "DailyBulkApiBatches": of(15_000, 0),
        "DailyBulkV2QueryFileStorageMB": of(976_562, 0),
        "ConcurrentAsyncGetReportInstances": of(200, 0),
        "DataStorageMB": of(5, 0),
        "FileStorageMB": of(20, 0),
    }))
}
