//! Account Engagement v5's Import API (see `crmsync_wire::pardot::imports`
//! for the protocol): create an import (with its first file, and `Ready`
//! at once when that file is all), add batches while it is `Open`, submit
//! it, read its status, download its errors file once `Complete`.
//!
//! A submitted import goes `Waiting`, then `Processing` in the background,
//! then `Complete`. Its rows are matched (`matchId`, `matchSalesforceId`,
//! `matchEmail`: the newest live prospect with the email, else one in the
//! recycle bin), turned into prospect writes by the import's column
//! options (`overwrite`, `nullOverwrite`: a blank cell leaves a value alone
//! only where the import says so) and written through the same sandbox
//! writes as the rest of v5, as the user who created the import, so the
//! same validation, stamps and fencing apply. A row refused is a row of
//! the errors file; the others count as created or updated.
//!
//! The imports live in memory, beside the routes (a restart forgets them,
//! as it logs everyone out), with the documented limits: batches under
//! 10 MB, 10 per import, the same header in each, 1,000 a day.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use crmsync_wire::multipart::{self, Part};
use crmsync_wire::pardot::imports::{
    CreateImport, DAILY_BATCHES, ERROR_DESCRIPTION_COLUMN, ERROR_TYPE_COLUMN, FILE_PART, IMPORTS_PATH, INPUT_PART, Import, ImportStatus,
    MATCH_COLUMNS, MAX_BATCH_BYTES, MAX_BATCHES, UpdateImport,
};
use crmsync_wire::pardot::{FENCE_FIELD, codes};
use crmsync_wire::{salesforce, time};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::errors::AeError;
use crate::pardot::{READ_ONLY, column_of, invalid_field};
use crate::state::{AppState, MaUser};

mod process;

/// One import and what became of it.
#[derive(Debug)]
struct Job {
    id: i64,
    user: MaUser,
    input: CreateImport,
    status: ImportStatus,
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
    batches: usize,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created: u64,
    updated: u64,
    /// Refused rows: the row's cells, then the error's type and description.
    errors: Vec<Vec<String>>,
}

/// Every import of the server, and today's batch count.
#[derive(Debug, Default)]
pub struct Imports {
    next_id: AtomicI64,
    jobs: Mutex<HashMap<i64, Arc<Mutex<Job>>>>,
    day: Mutex<(Option<NaiveDate>, u64)>,
}

/// The Import API's routes, behind the same gate as the rest of v5.
pub fn routes() -> Router<Arc<AppState>> {
    let imports = Arc::new(Imports { next_id: AtomicI64::new(1), ..Imports::default() });
    Router::new()
        .route(IMPORTS_PATH, post(create))
        .route(&format!("{IMPORTS_PATH}/{{id}}"), get(read).patch(submit))
        .route(&format!("{IMPORTS_PATH}/{{id}}/batches"), post(add_batch))
        .route(&format!("{IMPORTS_PATH}/{{id}}/errors"), get(errors))
        .layer(Extension(imports))
}

fn bad(code: i64, message: impl Into<String>) -> AeError {
    AeError::new(StatusCode::BAD_REQUEST, code, message)
}

fn invalid_state(job: &Job, what: &str) -> AeError {
    bad(codes::INVALID_ACTION, format!("import {} is {:?}: it cannot {what}", job.id, job.status))
}

/// Counts a batch against the business unit's day.
async fn count_batch(imports: &Imports) -> Result<(), AeError> {
    let mut day = imports.day.lock().await;
    let today = Utc::now().date_naive();
    if day.0 != Some(today) {
        *day = (Some(today), 0);
    }
    if day.1 >= DAILY_BATCHES {
        return Err(bad(codes::INVALID_ACTION, format!("the business unit has imported its {DAILY_BATCHES} batches today")));
    }
    day.1 += 1;
    Ok(())
}

/// Adds one CSV file to `job`: its columns must all be prospect fields (or
/// match columns), and the same as the import's earlier batches'.
fn add_file(job: &mut Job, data: &[u8]) -> Result<(), AeError> {
    if data.len() >= MAX_BATCH_BYTES {
        return Err(bad(codes::INVALID_ACTION, format!("a batch must be smaller than {MAX_BATCH_BYTES} bytes")));
    }
    if job.batches >= MAX_BATCHES {
        return Err(bad(codes::INVALID_ACTION, format!("an import holds at most {MAX_BATCHES} batches")));
    }
    let (header, rows) = salesforce::read_csv(data).map_err(|e| bad(codes::INVALID_FIELD_VALUE, format!("the CSV cannot be read: {e}")))?;
    for column in &header {
        let known = MATCH_COLUMNS.contains(&column.as_str()) || column == FENCE_FIELD || column_of(column).is_some();
        if !known || READ_ONLY.contains(&column.as_str()) {
            return Err(invalid_field(column));
        }
    }
    if let Some(columns) = &job.input.columns
        && (columns.len() != header.len() || !header.iter().all(|h| columns.iter().any(|c| &c.field == h)))
    {
        return Err(bad(codes::INVALID_FIELD_VALUE, "the import's columns must name each of the file's columns once"));
    }
    match &job.header {
        Some(h) if *h != header => return Err(bad(codes::INVALID_FIELD_VALUE, "every batch must have the same header")),
        _ => job.header = Some(header),
    }
    job.rows.extend(rows);
    job.batches += 1;
    Ok(())
}

/// The parts of a multipart request, by name.
fn parts(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, Part>, AeError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let parts = multipart::parse(content_type, body).map_err(|e| bad(codes::MISSING_PARAMETERS, e))?;
    Ok(parts.into_iter().map(|p| (p.name.clone(), p)).collect())
}

/// The import as its create and submit answer.
fn shown(st: &AppState, job: &Job) -> Import {
    Import {
        id: job.id,
        status: job.status,
        is_expired: false,
        batches_ref: (job.status == ImportStatus::Open).then(|| format!("{}{IMPORTS_PATH}/{}/batches", st.base_url(), job.id)),
        created_count: None,
        updated_count: None,
        error_count: None,
        errors_ref: None,
        created_at: Some(time::pardot(job.created_at)),
        updated_at: Some(time::pardot(job.updated_at)),
    }
}

/// Queues `job` and processes it in the background.
fn start(st: &Arc<AppState>, handle: &Arc<Mutex<Job>>, job: &mut Job) {
    job.status = ImportStatus::Waiting;
    job.updated_at = Utc::now();
    let (st, handle) = (st.clone(), handle.clone());
    tokio::spawn(async move { process::run(&st, &handle).await });
}

/// `POST /api/v5/imports`: JSON input alone, or multipart with the input
/// and the first file.
async fn create(
    State(st): State<Arc<AppState>>,
    Extension(imports): Extension<Arc<Imports>>,
    Extension(user): Extension<MaUser>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Import>), AeError> {
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"));
    let (input, file) = if is_json {
        (body.to_vec(), None)
    } else {
        let mut parts = parts(&headers, &body)?;
        let input = parts.remove(INPUT_PART).ok_or_else(|| bad(codes::MISSING_PARAMETERS, format!("the {INPUT_PART} part is required")))?;
        (input.data, parts.remove(FILE_PART).map(|p| p.data))
    };
    let input: CreateImport =
        serde_json::from_slice(&input).map_err(|e| bad(codes::MISSING_PARAMETERS, format!("the import's input cannot be read: {e}")))?;
    if input.operation != "Upsert" || input.object != "Prospect" {
        return Err(bad(codes::INVALID_ACTION, "imports support the Upsert operation on the Prospect object"));
    }
    let ready = match input.status {
        None | Some(ImportStatus::Open) => false,
        Some(ImportStatus::Ready) if file.is_some() => true,
        Some(ImportStatus::Ready) => return Err(bad(codes::MISSING_PARAMETERS, "a Ready import needs its file")),
        Some(s) => return Err(bad(codes::INVALID_ACTION, format!("an import cannot be created {s:?}"))),
    };
    let now = Utc::now();
    let id = imports.next_id.fetch_add(1, Ordering::SeqCst);
    let mut job = Job {
        id,
        user,
        input,
        status: ImportStatus::Open,
        header: None,
        rows: Vec::new(),
        batches: 0,
        created_at: now,
        updated_at: now,
        created: 0,
        updated: 0,
        errors: Vec::new(),
    };
    if let Some(data) = file {
        count_batch(&imports).await?;
        add_file(&mut job, &data)?;
    }
    let handle = Arc::new(Mutex::new(job));
    let mut job = handle.lock().await;
    if ready {
        start(&st, &handle, &mut job);
    }
    imports.jobs.lock().await.insert(id, handle.clone());
    Ok((StatusCode::CREATED, Json(shown(&st, &job))))
}

async fn job(imports: &Imports, id: i64) -> Result<Arc<Mutex<Job>>, AeError> {
    imports.jobs.lock().await.get(&id).cloned().ok_or_else(|| AeError::new(StatusCode::NOT_FOUND, codes::INVALID_ID, "Invalid import ID"))
}

/// `POST {id}/batches`: one more file, while the import is `Open`.
async fn add_batch(
    Extension(imports): Extension<Arc<Imports>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AeError> {
    let handle = job(&imports, id).await?;
    let mut job = handle.lock().await;
    if job.status != ImportStatus::Open {
        return Err(invalid_state(&job, "take batches"));
    }
    let file = parts(&headers, &body)?
        .remove(FILE_PART)
        .ok_or_else(|| bad(codes::MISSING_PARAMETERS, format!("the {FILE_PART} part is required")))?;
    count_batch(&imports).await?;
    add_file(&mut job, &file.data)?;
    job.updated_at = Utc::now();
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH {id}` with `{"status": "Ready"}`: submits an `Open` import.
async fn submit(
    State(st): State<Arc<AppState>>,
    Extension(imports): Extension<Arc<Imports>>,
    Path(id): Path<i64>,
    Json(req): Json<UpdateImport>,
) -> Result<Json<Import>, AeError> {
    let handle = job(&imports, id).await?;
    let mut job = handle.lock().await;
    match (job.status, req.status) {
        (ImportStatus::Open, ImportStatus::Ready) if job.batches > 0 => start(&st, &handle, &mut job),
        (ImportStatus::Open, ImportStatus::Ready) => return Err(bad(codes::MISSING_PARAMETERS, "an import needs a batch to be submitted")),
        _ => return Err(invalid_state(&job, &format!("become {:?}", req.status))),
    }
    Ok(Json(shown(&st, &job)))
}

#[derive(Debug, Deserialize)]
struct Fields {
    fields: Option<String>,
}

/// `GET {id}?fields=...`: the fields asked for (v5 requires them).
async fn read(
    State(st): State<Arc<AppState>>,
    Extension(imports): Extension<Arc<Imports>>,
    Path(id): Path<i64>,
    Query(f): Query<Fields>,
) -> Result<Json<Map<String, Value>>, AeError> {
    let fields =
        f.fields.filter(|f| !f.trim().is_empty()).ok_or_else(|| bad(codes::INVALID_FIELD_VALUE, "The fields parameter is required"))?;
    let handle = job(&imports, id).await?;
    let job = handle.lock().await;
    let complete = job.status == ImportStatus::Complete;
    let errors = job.errors.len() as u64;
    let full = Import {
        created_count: complete.then_some(job.created),
        updated_count: complete.then_some(job.updated),
        error_count: complete.then_some(errors),
        errors_ref: (complete && errors > 0).then(|| format!("{}{IMPORTS_PATH}/{}/errors", st.base_url(), job.id)),
        ..shown(&st, &job)
    };
    let Value::Object(all) = serde_json::to_value(&full).map_err(AeError::internal)? else {
        return Err(AeError::internal("not an object"));
    };
    let known =
        ["id", "status", "isExpired", "batchesRef", "createdCount", "updatedCount", "errorCount", "errorsRef", "createdAt", "updatedAt"];
    let mut out = Map::new();
    for name in fields.split(',').map(str::trim) {
        if !known.contains(&name) {
            return Err(bad(codes::INVALID_FIELD_VALUE, format!("Invalid field name: {name}")));
        }
        out.insert(name.to_owned(), all.get(name).cloned().unwrap_or(Value::Null));
    }
    Ok(Json(out))
}

/// `GET {id}/errors`: the refused rows as imported, with the error's type
/// and description after them.
async fn errors(Extension(imports): Extension<Arc<Imports>>, Path(id): Path<i64>) -> Result<Response, AeError> {
    let handle = job(&imports, id).await?;
    let job = handle.lock().await;
    if job.status != ImportStatus::Complete {
        return Err(invalid_state(&job, "give its errors yet"));
    }
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    let mut head = job.header.clone().unwrap_or_default();
    head.extend([ERROR_TYPE_COLUMN.to_owned(), ERROR_DESCRIPTION_COLUMN.to_owned()]);
    w.write_record(&head).map_err(AeError::internal)?;
    for row in &job.errors {
        w.write_record(row).map_err(AeError::internal)?;
    }
    let body = w.into_inner().map_err(AeError::internal)?;
    Ok(([(header::CONTENT_TYPE, "text/csv")], body).into_response())
}
