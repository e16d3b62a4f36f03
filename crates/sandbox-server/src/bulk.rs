//! Bulk API 2.0 ingest jobs: create a job, upload CSV, mark it
//! `UploadComplete`, poll it while it runs, read its successful and failed
//! results as CSV. The records go through the same writes as sObject
//! Collections, 200 at a time, each row with its own result; their change
//! events name the Bulk API (`com/salesforce/api/bulkapi/<version>`, the
//! API name Salesforce documents for changeOrigin) and the client the job's
//! creation named in `Sforce-Call-Options`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crmsync_connector::CrmApi;
use crmsync_sandbox::schema::Kind;
use crmsync_wire::salesforce::{
    self, AllJobs, BULK_CREATED_COLUMN, BULK_ERROR_COLUMN, BULK_ID_COLUMN, BULK_NULL, BulkOperation, CreateJob, EXTERNAL_ID_FIELD,
    FENCE_FIELD, JobInfo, JobState, SaveResult, UpdateJob, codes,
};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::errors::SfError;
use crate::rest::{self, Mode};
use crate::soql_sql::Table;
use crate::state::{AppState, Session};

/// One ingest job and what it produced.
#[derive(Debug)]
pub struct Job {
    pub info: JobInfo,
    data: Vec<u8>,
    session: Session,
    /// The `changeOrigin` of the job's writes.
    origin: String,
    header: Vec<String>,
    successful: Vec<Vec<String>>,
    failed: Vec<Vec<String>>,
    created: std::time::Instant,
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Json(req): Json<CreateJob>,
) -> Result<(StatusCode, Json<JobInfo>), SfError> {
    Table::resolve(&req.object)?;
    if req.operation == BulkOperation::Upsert && req.external_id_field_name.as_deref() != Some(EXTERNAL_ID_FIELD) {
        return Err(SfError::bad_request(codes::INVALID_FIELD, format!("upsert jobs take externalIdFieldName {EXTERNAL_ID_FIELD}")));
    }
    if req.content_type != "CSV" {
        return Err(SfError::bad_request("INVALIDJOB", "contentType must be CSV"));
    }
    if !room_for_a_job(&st).await {
        return Err(SfError::bad_request("LIMIT_EXCEEDED", format!("at most {MAX_JOBS} jobs may be open at once")));
    }
    let info = JobInfo {
        id: format!("750{}", uuid::Uuid::new_v4().simple()),
        object: req.object.clone(),
        operation: req.operation,
        state: JobState::Open,
        number_records_processed: 0,
        number_records_failed: 0,
        error_message: None,
    };
    let job = Job {
        info: info.clone(),
        data: Vec::new(),
        session,
        origin: rest::change_origin("bulkapi", &version, &headers),
        header: Vec::new(),
        successful: Vec::new(),
        failed: Vec::new(),
        created: std::time::Instant::now(),
    };
    st.jobs.lock().await.insert(info.id.clone(), Arc::new(Mutex::new(job)));
    Ok((StatusCode::OK, Json(info)))
}

/// `GET /jobs/ingest`: every job, oldest first.
pub async fn list(State(st): State<Arc<AppState>>) -> Json<AllJobs> {
    let handles: Vec<Arc<Mutex<Job>>> = st.jobs.lock().await.values().cloned().collect();
    let mut records = Vec::with_capacity(handles.len());
    for h in handles {
        let job = h.lock().await;
        records.push((job.created, job.info.clone()));
    }
    records.sort_by_key(|(created, _)| *created);
    Json(AllJobs { done: true, records: records.into_iter().map(|(_, info)| info).collect(), next_records_url: None })
}

async fn job(st: &AppState, id: &str) -> Result<Arc<Mutex<Job>>, SfError> {
    st.jobs
        .lock()
        .await
        .get(id)
        .cloned()
        .ok_or_else(|| SfError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "The requested resource does not exist"))
}

/// CSV data one job may hold: Salesforce's 150 MB a job.
pub const MAX_JOB_BYTES: usize = 150 * 1024 * 1024;

/// Jobs kept at once; past it, the oldest finished ones (complete, failed
/// or aborted) go first, and a new job is refused while every kept job is
/// still open. Salesforce keeps jobs for 7 days, which is also the longest
/// any job is kept here.
pub const MAX_JOBS: usize = 200;
const JOB_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 60 * 60);

/// CSV bytes all jobs together may hold before they run.
pub const MAX_HELD_BYTES: usize = 512 * 1024 * 1024;

/// Takes a job's uploaded data out, counting it off what jobs hold.
fn take_data(st: &AppState, job: &mut Job) -> Vec<u8> {
    let data = std::mem::take(&mut job.data);
    st.bulk_bytes.fetch_sub(data.len(), Ordering::SeqCst);
    data
}

/// Makes room for one more job; false when none can be made.
async fn room_for_a_job(st: &AppState) -> bool {
    let mut jobs = st.jobs.lock().await;
    let mut expired = Vec::new();
    let mut finished = Vec::new();
    for (id, handle) in jobs.iter() {
        // A job being worked is locked: it is neither ended nor waited for.
        let Ok(mut job) = handle.try_lock() else { continue };
        if job.created.elapsed() > JOB_TTL {
            take_data(st, &mut job);
            expired.push(id.clone());
        } else if matches!(job.info.state, JobState::JobComplete | JobState::Failed | JobState::Aborted) {
            finished.push((job.created, id.clone()));
        }
    }
    for id in expired {
        jobs.remove(&id);
    }
    finished.sort();
    let mut oldest_first = finished.into_iter();
    while jobs.len() >= MAX_JOBS {
        let Some((_, id)) = oldest_first.next() else { break };
        jobs.remove(&id);
    }
    jobs.len() < MAX_JOBS
}

pub async fn upload(State(st): State<Arc<AppState>>, Path((_v, id)): Path<(String, String)>, body: Bytes) -> Result<StatusCode, SfError> {
    let job = job(&st, &id).await?;
    let mut job = job.lock().await;
    if job.info.state != JobState::Open {
        return Err(SfError::new(StatusCode::CONFLICT, "INVALIDJOBSTATE", "data can only be uploaded to an Open job"));
    }
    if job.data.len() + body.len() > MAX_JOB_BYTES {
        return Err(SfError::bad_request(
            "EXCEEDED_QUOTA",
            format!("a job holds at most {} MB of CSV data", MAX_JOB_BYTES / (1024 * 1024)),
        ));
    }
    if st.bulk_bytes.fetch_add(body.len(), Ordering::SeqCst) + body.len() > MAX_HELD_BYTES {
        st.bulk_bytes.fetch_sub(body.len(), Ordering::SeqCst);
        return Err(SfError::bad_request(
            "EXCEEDED_QUOTA",
            format!("jobs not run yet hold {} MB of CSV data, the most the server keeps", MAX_HELD_BYTES / (1024 * 1024)),
        ));
    }
    job.data.extend_from_slice(&body);
    Ok(StatusCode::CREATED)
}

/// `DELETE /jobs/ingest/{id}`: removes a job that is no longer running,
/// and its data and results.
pub async fn delete(State(st): State<Arc<AppState>>, Path((_v, id)): Path<(String, String)>) -> Result<StatusCode, SfError> {
    let handle = job(&st, &id).await?;
    {
        let mut job = handle.lock().await;
        let state = job.info.state;
        if matches!(state, JobState::Open | JobState::InProgress) {
            return Err(SfError::bad_request("INVALIDJOBSTATE", format!("a job cannot be deleted while it is {state:?}")));
        }
        take_data(&st, &mut job);
    }
    st.jobs.lock().await.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /jobs/ingest/{id}/unprocessedrecords`: the rows of the job that
/// were not processed: none once it has run (each row is in the successful
/// or the failed results) or was aborted (its data is let go then), all of
/// its data while it waits to run.
pub async fn unprocessed(State(st): State<Arc<AppState>>, Path((_v, id)): Path<(String, String)>) -> Result<Response, SfError> {
    let job = job(&st, &id).await?;
    let job = job.lock().await;
    if !job.data.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "text/csv")], job.data.clone()).into_response());
    }
    Ok(csv_response(job.header.clone(), &[]))
}

pub async fn update(
    State(st): State<Arc<AppState>>,
    Path((_v, id)): Path<(String, String)>,
    Json(req): Json<UpdateJob>,
) -> Result<Json<JobInfo>, SfError> {
    let handle = job(&st, &id).await?;
    let mut job = handle.lock().await;
    match (job.info.state, req.state) {
        (JobState::Open, JobState::UploadComplete) => {
            job.info.state = JobState::UploadComplete;
            let (st, handle) = (st.clone(), handle.clone());
            tokio::spawn(async move { run(&st, &handle).await });
        }
        (JobState::Open | JobState::UploadComplete, JobState::Aborted) => {
            job.info.state = JobState::Aborted;
            // Nothing of it will run: its data is let go at once.
            take_data(&st, &mut job);
        }
        (from, to) => {
            return Err(SfError::bad_request("INVALIDJOBSTATE", format!("a job cannot go from {from:?} to {to:?}")));
        }
    }
    Ok(Json(job.info.clone()))
}

pub async fn status(State(st): State<Arc<AppState>>, Path((_v, id)): Path<(String, String)>) -> Result<Json<JobInfo>, SfError> {
    Ok(Json(job(&st, &id).await?.lock().await.info.clone()))
}

fn csv_response(header: Vec<String>, rows: &[Vec<String>]) -> Response {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    let _ = w.write_record(&header);
    for r in rows {
        let _ = w.write_record(r);
    }
    let body = w.into_inner().unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/csv")], body).into_response()
}

pub async fn successful(State(st): State<Arc<AppState>>, Path((_v, id)): Path<(String, String)>) -> Result<Response, SfError> {
    let job = job(&st, &id).await?;
    let job = job.lock().await;
    let header = [BULK_ID_COLUMN.to_owned(), BULK_CREATED_COLUMN.to_owned()].into_iter().chain(job.header.iter().cloned()).collect();
    Ok(csv_response(header, &job.successful))
}

pub async fn failed(State(st): State<Arc<AppState>>, Path((_v, id)): Path<(String, String)>) -> Result<Response, SfError> {
    let job = job(&st, &id).await?;
    let job = job.lock().await;
    let header = [BULK_ID_COLUMN.to_owned(), BULK_ERROR_COLUMN.to_owned()].into_iter().chain(job.header.iter().cloned()).collect();
    Ok(csv_response(header, &job.failed))
}

/// A CSV cell as the field's JSON value; `None` leaves the field alone.
fn cell(kind: Option<Kind>, column: &str, text: &str) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    if text == BULK_NULL {
        return Some(Value::Null);
    }
    if column == FENCE_FIELD {
        return Some(text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())));
    }
    Some(match kind {
        Some(Kind::Bool) => Value::Bool(text.eq_ignore_ascii_case("true")),
        Some(Kind::Int) => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())),
        Some(Kind::Decimal) => text.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())),
        _ => Value::String(text.to_owned()),
    })
}

/// Runs an uploaded job to its end.
async fn run(st: &AppState, handle: &Arc<Mutex<Job>>) {
    let (object, operation, data, session, origin) = {
        let mut job = handle.lock().await;
        job.info.state = JobState::InProgress;
        (job.info.object.clone(), job.info.operation, take_data(st, &mut job), job.session.clone(), job.origin.clone())
    };
    let outcome = process(st, &object, operation, &data, &session, &origin).await;
    let mut job = handle.lock().await;
    match outcome {
        Ok((header, successful, failed)) => {
            job.info.number_records_processed = (successful.len() + failed.len()) as u64;
            job.info.number_records_failed = failed.len() as u64;
            job.header = header;
            job.successful = successful;
            job.failed = failed;
            job.info.state = JobState::JobComplete;
        }
        Err(message) => {
            job.info.state = JobState::Failed;
            job.info.error_message = Some(message);
        }
    }
}

type Results = (Vec<String>, Vec<Vec<String>>, Vec<Vec<String>>);

async fn process(
    st: &AppState,
    object: &str,
    operation: BulkOperation,
    data: &[u8],
    session: &Session,
    origin: &str,
) -> Result<Results, String> {
    let (header, rows) = salesforce::read_csv(data).map_err(|e| format!("InvalidBatch : the CSV cannot be read: {e}"))?;
    let def = match Table::resolve(object).map_err(|_| format!("InvalidJob : unknown object {object}"))? {
        Table::Standard { def, .. } => Some(def),
        _ => None,
    };
    let mode = match operation {
        BulkOperation::Insert => Mode::Create,
        BulkOperation::Update => Mode::Update,
        BulkOperation::Upsert => Mode::Upsert,
    };
    let integration = st.crm.integration_user().to_owned();
    let mut successful = Vec::new();
    let mut failed = Vec::new();
    for chunk in rows.chunks(salesforce::MAX_COLLECTION_RECORDS) {
        let records: Vec<Map<String, Value>> = chunk
            .iter()
            .map(|row| {
                let mut r = Map::new();
                r.insert("attributes".into(), serde_json::json!({"type": object}));
                for (column, text) in header.iter().zip(row) {
                    let kind = def.and_then(|d| d.by_api(column)).map(|c| c.kind);
                    if let Some(v) = cell(kind, column, text) {
                        r.insert(column.clone(), v);
                    }
                }
                r
            })
            .collect();
        let prepared = records.iter().map(|r| rest::prepare(mode, session, &integration, r)).collect();
        let results: Vec<SaveResult> = rest::write(st, mode, prepared, origin).await.map_err(|e| format!("{:?}", e.errors))?;
        for (row, result) in chunk.iter().zip(results) {
            let id = result.id.clone().unwrap_or_default();
            if result.success {
                let created = result.created.unwrap_or(mode == Mode::Create);
                successful.push([id, created.to_string()].into_iter().chain(row.iter().cloned()).collect());
            } else {
                let why = result.errors.iter().map(|e| format!("{}:{}", e.status_code, e.message)).collect::<Vec<_>>().join("; ");
                failed.push([id, why].into_iter().chain(row.iter().cloned()).collect());
            }
        }
    }
    Ok((header, successful, failed))
}
