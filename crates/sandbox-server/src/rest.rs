//! Salesforce REST: `query` and `queryAll` with `nextRecordsUrl` paging, and
//! sObject Collections create, update, upsert by external id and delete, at
//! most 200 records a call, one result per record (`allOrNone` false).
//!
//! Writes name their origin for the change events they cause
//! (`changeOrigin`): the API and its version, and the client id a request
//! gives in `Sforce-Call-Options: client=<id>`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Extension, Path, Query as QueryParams, State};
use axum::http::HeaderMap;
use crmsync_connector::{CrmApi, CrmTarget, CrmWrite, FieldValues, WriteOutcome};
use crmsync_domain::{CrmId, CrmObject};
use crmsync_sandbox::ops::Sandbox;
use crmsync_wire::salesforce::{
    self, CollectionRequest, EXTERNAL_ID_FIELD, FENCE_FIELD, FENCE_MESSAGE, QueryResult, READ_ONLY_FIELDS, SaveError, SaveResult, codes,
};
use crmsync_wire::soql;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::errors::SfError;
use crate::soql_sql::{self, Table};
use crate::state::{AppState, LOCATOR_TTL, Locator, Session};

#[derive(Debug, Deserialize)]
pub struct Q {
    q: String,
}

/// The batch size a client asked for (`Sforce-Query-Options: batchSize=n`).
fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get(salesforce::QUERY_OPTIONS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|p| p.trim().strip_prefix("batchSize=")).and_then(|n| n.parse().ok()))
        .map_or(2000, |n: usize| n.clamp(200, 2000))
}

/// Query cursors a user may hold open: Salesforce releases the oldest of
/// ten when an eleventh is opened, so a client that never reads its
/// queries to the end does not pile them up.
pub const MAX_CURSORS_PER_USER: usize = 10;

async fn run_query(
    st: &AppState,
    session: &Session,
    text: &str,
    include_deleted: bool,
    batch: usize,
    version: &str,
) -> Result<QueryResult, SfError> {
    let q = soql::parse(text).map_err(|e| SfError::bad_request(codes::MALFORMED_QUERY, e.message.clone() + &format!(" (at {})", e.at)))?;
    let table = Table::resolve(&q.object)?;
    let ids = soql_sql::select_ids(&st.pool, &st.config.crm_tenant, &table, &q, include_deleted).await?;
    let total = ids.len();
    let (first, rest) = ids.split_at(batch.min(total));
    let records = soql_sql::records(&st.pool, &st.config.crm_tenant, &table, &q.fields, first, version).await?;
    let next_records_url = if rest.is_empty() {
        None
    } else {
        let id = format!("01g{}", uuid::Uuid::new_v4().simple());
        let url = format!("/services/data/{version}/query/{id}-{batch}");
        let mut locators = st.locators.lock().await;
        locators.retain(|_, l| l.created.elapsed() < LOCATOR_TTL);
        let mut own: Vec<(Instant, String)> =
            locators.iter().filter(|(_, l)| l.owner == session.user_id).map(|(k, l)| (l.created, k.clone())).collect();
        if own.len() >= MAX_CURSORS_PER_USER {
            own.sort();
            for (_, k) in &own[..=own.len() - MAX_CURSORS_PER_USER] {
                locators.remove(k);
            }
        }
        locators.insert(
            id,
            Locator {
                owner: session.user_id.clone(),
                object: q.object.clone(),
                fields: q.fields.clone(),
                ids: rest.to_vec(),
                batch,
                total,
                created: Instant::now(),
            },
        );
        Some(url)
    };
    Ok(QueryResult { total_size: total as u64, done: next_records_url.is_none(), next_records_url, records })
}

pub async fn query(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(p): QueryParams<Q>,
) -> Result<Json<QueryResult>, SfError> {
    Ok(Json(run_query(&st, &session, &p.q, false, batch_size(&headers), &version).await?))
}

pub async fn query_all(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(p): QueryParams<Q>,
) -> Result<Json<QueryResult>, SfError> {
    Ok(Json(run_query(&st, &session, &p.q, true, batch_size(&headers), &version).await?))
}

/// `GET /services/data/{v}/query/{locator}-{n}`: the next batch.
pub async fn query_more(
    State(st): State<Arc<AppState>>,
    Path((version, locator)): Path<(String, String)>,
) -> Result<Json<QueryResult>, SfError> {
    let id = locator.split('-').next().unwrap_or_default().to_owned();
    let invalid = || SfError::bad_request(codes::INVALID_QUERY_LOCATOR, "invalid query locator");
    let (table, fields, page, rest_len, batch, total) = {
        let mut locators = st.locators.lock().await;
        locators.retain(|_, l| l.created.elapsed() < LOCATOR_TTL);
        let l = locators.remove(&id).ok_or_else(invalid)?;
        let take = l.batch.min(l.ids.len());
        let page: Vec<String> = l.ids[..take].to_vec();
        let rest: Vec<String> = l.ids[take..].to_vec();
        let (table, fields, batch, total) = (Table::resolve(&l.object)?, l.fields.clone(), l.batch, l.total);
        let rest_len = rest.len();
        if !rest.is_empty() {
            locators.insert(id.clone(), Locator { ids: rest, created: Instant::now(), ..l });
        }
        (table, fields, page, rest_len, batch, total)
    };
    let records = soql_sql::records(&st.pool, &st.config.crm_tenant, &table, &fields, &page, &version).await?;
    let next_records_url = (rest_len > 0).then(|| format!("/services/data/{version}/query/{id}-{batch}"));
    // The query's total, as Salesforce reports it on every page (jsforce
    // and simple-salesforce read it from the last page they fetched).
    Ok(Json(QueryResult { total_size: total as u64, done: rest_len == 0, next_records_url, records }))
}

/// The header a client names itself in (`client=<id>`, among other options).
const CALL_OPTIONS_HEADER: &str = "sforce-call-options";

/// The `changeOrigin` of a write through `api` (`rest`, `bulkapi`) at path
/// version `v60.0`, as Salesforce writes it:
/// `com/salesforce/api/rest/60.0;client=<id>`, the client part only when the
/// request named one.
pub(crate) fn change_origin(api: &str, version: &str, headers: &HeaderMap) -> String {
    let version = version.strip_prefix('v').unwrap_or(version);
    let client = headers
        .get(CALL_OPTIONS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split([',', ';']).find_map(|p| p.trim().strip_prefix("client=")).map(str::trim))
        .filter(|c| !c.is_empty());
    match client {
        Some(c) => format!("com/salesforce/api/{api}/{version};client={c}"),
        None => format!("com/salesforce/api/{api}/{version}"),
    }
}

/// The objects the sandbox writes through the API.
fn writable(name: &str) -> Result<CrmObject, SaveError> {
    match name.to_ascii_lowercase().as_str() {
        "lead" => Ok(CrmObject::Lead),
        "contact" => Ok(CrmObject::Contact),
        "opportunity" => Ok(CrmObject::Opportunity),
        _ => Err(SaveError {
            status_code: codes::INVALID_TYPE.into(),
            message: format!("the sandbox API writes Lead, Contact and Opportunity records, not {name}"),
            fields: vec![],
        }),
    }
}

fn failed(e: SaveError) -> SaveResult {
    SaveResult { id: None, success: false, errors: vec![e], created: None }
}

fn error(code: &str, message: impl Into<String>) -> SaveError {
    SaveError { status_code: code.into(), message: message.into(), fields: vec![] }
}

/// How a collection call addresses its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Create,
    Update,
    Upsert,
}

/// One record of a collection call, ready to write, or why it cannot be.
pub(crate) fn prepare(
    mode: Mode,
    session: &Session,
    integration: &str,
    r: &Map<String, Value>,
) -> Result<(CrmObject, CrmWrite), SaveError> {
    let object = r
        .get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| error(codes::INVALID_TYPE, "every record needs attributes.type"))
        .and_then(writable)?;
    // As Salesforce: the whole record is refused, naming every such field.
    let read_only: Vec<&str> = r.keys().map(String::as_str).filter(|k| READ_ONLY_FIELDS.contains(k)).collect();
    if !read_only.is_empty() {
        return Err(error(
            codes::INVALID_FIELD_FOR_INSERT_UPDATE,
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is \
                 read/write for your profile or permission set.",
                read_only.join(", ")
            ),
        ));
    }
    if mode == Mode::Create && r.keys().any(|k| k == "Id" || k == "id") {
        return Err(error(codes::INVALID_FIELD_FOR_INSERT_UPDATE, "cannot specify Id in an insert call"));
    }
    let mut fields = FieldValues::new();
    let mut id = None;
    let mut owner = None;
    let mut fence = None;
    let mut external = None;
    for (k, v) in r {
        match k.as_str() {
            "attributes" => {}
            "Id" | "id" => id = v.as_str().map(str::to_owned),
            "OwnerId" => owner = v.as_str().map(str::to_owned),
            FENCE_FIELD => fence = v.as_i64(),
            EXTERNAL_ID_FIELD => external = v.as_str().map(str::to_owned),
            _ => {
                fields.insert(k.clone(), v.clone());
            }
        }
    }
    let owner_id = match owner {
        Some(o) => Some(CrmId::parse(&o).map_err(|e| error("MALFORMED_ID", format!("OwnerId: {e}")))?),
        None => None,
    };
    let target = match mode {
        Mode::Create => CrmTarget::New,
        Mode::Update => {
            let id = id.ok_or_else(|| error("MISSING_ARGUMENT", "Id not specified in an update call"))?;
            CrmTarget::Id(CrmId::parse(&id).map_err(|e| error("MALFORMED_ID", format!("Id: {e}")))?)
        }
        Mode::Upsert => CrmTarget::ExternalId(
            external.ok_or_else(|| error("MISSING_ARGUMENT", format!("{EXTERNAL_ID_FIELD} not specified in an upsert by it")))?,
        ),
    };
    let act_as = (session.user_id != integration).then(|| CrmId::parse(&session.user_id).ok()).flatten();
    Ok((object, CrmWrite { target, fields, owner_id, act_as, fence, unmodified_since: None }))
}

fn result_of(mode: Mode, outcome: WriteOutcome) -> SaveResult {
    match outcome {
        WriteOutcome::Written { id, created, .. } => {
            SaveResult { id: Some(id), success: true, errors: vec![], created: (mode == Mode::Upsert).then_some(created) }
        }
        WriteOutcome::Rejected { code, message } => failed(error(&code, message)),
        WriteOutcome::Fenced => failed(error(codes::FIELD_CUSTOM_VALIDATION_EXCEPTION, FENCE_MESSAGE)),
        WriteOutcome::NotFound => failed(error(codes::NOT_FOUND, "entity not found")),
    }
}

/// Writes the prepared records, consecutive records of one object together.
pub(crate) async fn write(
    st: &AppState,
    mode: Mode,
    prepared: Vec<Result<(CrmObject, CrmWrite), SaveError>>,
    origin: &str,
) -> Result<Vec<SaveResult>, SfError> {
    let crm = st.crm.with_change_origin(origin);
    let mut out: Vec<Option<SaveResult>> = vec![None; prepared.len()];
    let mut i = 0;
    while i < prepared.len() {
        match &prepared[i] {
            Err(e) => {
                out[i] = Some(failed(e.clone()));
                i += 1;
            }
            Ok((object, _)) => {
                let object = *object;
                let mut j = i;
                let mut group = Vec::new();
                while j < prepared.len() && matches!(&prepared[j], Ok((o, _)) if *o == object) {
                    if let Ok((_, w)) = &prepared[j] {
                        group.push(w.clone());
                    }
                    j += 1;
                }
                let outcomes = crm.write_people(object, &group).await?;
                for (k, outcome) in outcomes.into_iter().enumerate() {
                    out[i + k] = Some(result_of(mode, outcome));
                }
                i = j;
            }
        }
    }
    Ok(out.into_iter().map(|r| r.expect("every record has a result")).collect())
}

async fn collection(
    st: &AppState,
    session: &Session,
    mode: Mode,
    body: CollectionRequest,
    origin: &str,
) -> Result<Json<Vec<SaveResult>>, SfError> {
    if body.records.len() > salesforce::MAX_COLLECTION_RECORDS {
        return Err(SfError::bad_request(
            codes::EXCEEDED_ID_LIMIT,
            format!("record limit reached. cannot submit more than {} records into this call", salesforce::MAX_COLLECTION_RECORDS),
        ));
    }
    if body.all_or_none {
        return Err(SfError::bad_request("INVALID_OPERATION", "the sandbox API supports allOrNone=false only"));
    }
    let integration = st.crm.integration_user().to_owned();
    let prepared = body.records.iter().map(|r| prepare(mode, session, &integration, r)).collect();
    Ok(Json(write(st, mode, prepared, origin).await?))
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CollectionRequest>,
) -> Result<Json<Vec<SaveResult>>, SfError> {
    collection(&st, &session, Mode::Create, body, &change_origin("rest", &version, &headers)).await
}

pub async fn update(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CollectionRequest>,
) -> Result<Json<Vec<SaveResult>>, SfError> {
    collection(&st, &session, Mode::Update, body, &change_origin("rest", &version, &headers)).await
}

pub async fn upsert(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path((version, object, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(mut body): Json<CollectionRequest>,
) -> Result<Json<Vec<SaveResult>>, SfError> {
    if field != EXTERNAL_ID_FIELD {
        return Err(SfError::bad_request(codes::INVALID_FIELD, format!("{field} is not an external id field of {object}")));
    }
    // The path names the type; records may leave it out.
    for r in &mut body.records {
        r.entry("attributes").or_insert_with(|| serde_json::json!({"type": object}));
    }
    collection(&st, &session, Mode::Upsert, body, &change_origin("rest", &version, &headers)).await
}

#[derive(Debug, Deserialize)]
pub struct Ids {
    ids: String,
}

/// `DELETE /composite/sobjects?ids=...`: moves records to the recycle bin.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(p): QueryParams<Ids>,
) -> Result<Json<Vec<SaveResult>>, SfError> {
    let sandbox = Sandbox::new(st.pool.clone(), st.config.crm_tenant.clone()).with_change_origin(change_origin("rest", &version, &headers));
    let mut out = Vec::new();
    let ids: Vec<&str> = p.ids.split(',').filter(|s| !s.is_empty()).collect();
    if ids.len() > salesforce::MAX_COLLECTION_RECORDS {
        return Err(SfError::bad_request(codes::EXCEEDED_ID_LIMIT, "cannot delete more than 200 records in one call"));
    }
    for id in ids {
        let def = match CrmId::parse(id).ok().and_then(|i| i.object()) {
            Some(CrmObject::Lead) => &crmsync_sandbox::schema::LEAD,
            Some(CrmObject::Contact) => &crmsync_sandbox::schema::CONTACT,
            _ => {
                out.push(failed(error("INVALID_ID_FIELD", format!("the sandbox API deletes leads and contacts, not {id}"))));
                continue;
            }
        };
        out.push(match sandbox.set_deleted(def, id, true).await {
            Ok(()) => SaveResult { id: Some(id.to_owned()), success: true, errors: vec![], created: None },
            Err(e) => failed(error("ENTITY_IS_DELETED", e.to_string())),
        });
    }
    Ok(Json(out))
}

/// `GET /services/data`: the versions served.
pub async fn versions() -> Json<Value> {
    let v = salesforce::API_VERSION;
    Json(serde_json::json!([{"label": "crmsync sandbox", "url": format!("/services/data/{v}"), "version": v.trim_start_matches('v')}]))
}
