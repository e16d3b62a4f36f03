//! Bulk API 2.0 ingest jobs, for write batches of at least the endpoint's
//! `bulk_threshold`: one call per job step instead of one per 200 records.
//!
//! A job is created, its CSV uploaded, marked `UploadComplete`, polled with
//! backoff until it ends, and its successful and failed results read back.
//! Result rows come in no promised order, so each is matched to its write by
//! the key column: crmsync's external id for upserts, `Id` for updates.
//! Both are idempotent, so a job that outlives the wait (reported as
//! transient) is harmless to run again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorError, CrmWrite, WriteOutcome};
use crmsync_connector_kit::row::Row;
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_wire::salesforce::{
    self, BULK_CREATED_COLUMN, BULK_ERROR_COLUMN, BULK_ID_COLUMN, BulkOperation, CreateJob, EXTERNAL_ID_FIELD, JobInfo, JobState, UpdateJob,
};
use reqwest::Method;

use crate::fields::ID;
use crate::http::{CallError, Http};
use crate::query::normalise_id;
use crate::write::{self, Mode, Saved};

/// The key column of a mode's job, and the key of one write.
fn key_column(mode: Mode) -> &'static str {
    match mode {
        Mode::Upsert => EXTERNAL_ID_FIELD,
        Mode::Update | Mode::Create => ID,
    }
}

/// Keys are compared in one form: ids at 18 characters.
fn key_of(mode: Mode, raw: &str) -> String {
    match mode {
        Mode::Update => normalise_id(raw),
        _ => raw.to_owned(),
    }
}

/// The CSV columns of a job: the key first, then every other field any
/// record sets (a record that leaves a field out has an empty cell, which
/// leaves the field alone).
pub(crate) fn columns(mode: Mode, rows: &[Row]) -> Vec<String> {
    let key = key_column(mode);
    let others: BTreeSet<&str> =
        rows.iter().flat_map(|r| r.keys().map(String::as_str)).filter(|k| *k != key && *k != "attributes").collect();
    std::iter::once(key.to_owned()).chain(others.into_iter().map(str::to_owned)).collect()
}

/// `sf__Error` is `CODE:message` (sometimes with more after further colons):
/// the code, and the rest as the message.
pub(crate) fn parse_error(cell: &str) -> (String, String) {
    match cell.split_once(':') {
        Some((code, rest)) if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') => {
            (code.to_owned(), rest.trim().to_owned())
        }
        _ => ("UNKNOWN_EXCEPTION".to_owned(), cell.trim().to_owned()),
    }
}

/// Matches result rows to writes by key. `pending` maps each key to the
/// writes (by position) still waiting for a result, in order.
pub(crate) fn match_results(
    mode: Mode,
    pending: &mut HashMap<String, VecDeque<usize>>,
    successful: &[u8],
    failed: &[u8],
) -> Result<Vec<(usize, Saved)>, ConnectorError> {
    let unreadable = |e: csv::Error| ConnectorError::Fatal(format!("a Bulk API result cannot be read: {e}"));
    let mut out = Vec::new();
    let key = key_column(mode);
    for (data, ok) in [(successful, true), (failed, false)] {
        if data.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (header, rows) = salesforce::read_csv(data).map_err(unreadable)?;
        let col = |name: &str| header.iter().position(|h| h == name);
        let key_at = col(key).ok_or_else(|| ConnectorError::Fatal(format!("a Bulk API result has no {key} column")))?;
        let (id_at, second_at) = (col(BULK_ID_COLUMN), col(if ok { BULK_CREATED_COLUMN } else { BULK_ERROR_COLUMN }));
        for row in rows {
            let cell = |at: Option<usize>| at.and_then(|i| row.get(i)).map(String::as_str).unwrap_or("");
            let Some(index) = pending.get_mut(&key_of(mode, cell(Some(key_at)))).and_then(VecDeque::pop_front) else {
                continue;
            };
            let saved = if ok {
                Saved::Written { id: cell(id_at).to_owned(), created: cell(second_at).eq_ignore_ascii_case("true") }
            } else {
                let (code, message) = parse_error(cell(second_at));
                Saved::Failed(write::refusal([(code.as_str(), message.as_str())]))
            };
            out.push((index, saved));
        }
    }
    Ok(out)
}

fn job_path(http: &Http, id: &str, rest: &str) -> String {
    // Job ids are the server's; keep them to what an id can be.
    let id: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    http.api().data_path(&format!("jobs/ingest/{id}{rest}"))
}

async fn set_state(http: &Http, id: &str, state: JobState) -> Result<JobInfo, CallError> {
    let body = serde_json::to_value(UpdateJob { state }).map_err(|e| ConnectorError::Fatal(e.to_string()))?;
    Ok(http.send(&Call::new(EndpointKind::Bulk, Method::PATCH, job_path(http, id, "")).json(body)).await?.json()?)
}

/// Polls a job until it ends, backing off between polls.
async fn wait_for(http: &Http, id: &str) -> Result<JobInfo, ConnectorError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let info: JobInfo = http.send(&Call::get(EndpointKind::Bulk, job_path(http, id, ""))).await?.json()?;
        if matches!(info.state, JobState::JobComplete | JobState::Failed | JobState::Aborted) {
            return Ok(info);
        }
        if start.elapsed() >= http.pacing().bulk_wait {
            return Err(ConnectorError::Transient(format!("Bulk API job {id} is still {:?}; its writes are retried later", info.state)));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Runs one job of `mode` over `items`.
async fn job(http: &Http, sobject: &str, mode: Mode, items: &[(usize, &CrmWrite)]) -> Result<Vec<(usize, Saved)>, ConnectorError> {
    let rows: Vec<Row> = items.iter().map(|(_, w)| write::body(sobject, w)).collect();
    let cols = columns(mode, &rows);
    let csv = salesforce::bulk_csv(&cols, &rows).map_err(|e| ConnectorError::Fatal(format!("cannot write the Bulk API CSV: {e}")))?;
    let mut pending: HashMap<String, VecDeque<usize>> = HashMap::new();
    for ((i, _), row) in items.iter().zip(&rows) {
        let key = row.get(key_column(mode)).and_then(|v| v.as_str()).unwrap_or_default();
        pending.entry(key_of(mode, key)).or_default().push_back(*i);
    }

    let create = CreateJob {
        object: sobject.to_owned(),
        operation: if mode == Mode::Upsert { BulkOperation::Upsert } else { BulkOperation::Update },
        external_id_field_name: (mode == Mode::Upsert).then(|| EXTERNAL_ID_FIELD.to_owned()),
        content_type: "CSV".into(),
        line_ending: "LF".into(),
    };
    let body = serde_json::to_value(&create).map_err(|e| ConnectorError::Fatal(e.to_string()))?;
    let info: JobInfo =
        http.send(&Call::new(EndpointKind::Bulk, Method::POST, http.api().data_path("jobs/ingest")).json(body)).await?.json()?;
    tracing::info!(job = %info.id, object = sobject, records = items.len(), "Bulk API job created");

    // Sending the data twice would add the rows twice: not resent blindly.
    let upload = Call::new(EndpointKind::Bulk, Method::PUT, job_path(http, &info.id, "/batches")).csv(csv).not_idempotent();
    let closed = match http.send(&upload).await {
        Ok(_) => set_state(http, &info.id, JobState::UploadComplete).await,
        Err(e) => Err(e),
    };
    if let Err(e) = closed {
        // Best effort: an open job would otherwise linger in the org.
        let _ = set_state(http, &info.id, JobState::Aborted).await;
        return Err(e.into());
    }
    let end = wait_for(http, &info.id).await?;

    let results = |rest: &'static str| Call::get(EndpointKind::Bulk, job_path(http, &info.id, rest)).header("Accept", "text/csv");
    let successful = http.send(&results("/successfulResults/")).await?.body;
    let failed = http.send(&results("/failedResults/")).await?.body;
    let mut out = match_results(mode, &mut pending, &successful, &failed)?;
    // Writes the job reports nothing for (it failed or was aborted before
    // reaching them) are refused with the job's reason.
    let reason =
        end.error_message.clone().unwrap_or_else(|| format!("the Bulk API job ended {:?} without a result for this record", end.state));
    for index in pending.into_values().flatten() {
        out.push((index, Saved::Failed(WriteOutcome::Rejected { code: "BULK_NO_RESULT".into(), message: reason.clone() })));
    }
    Ok(out)
}

/// Writes updates and upserts through Bulk API jobs (one per mode).
pub(crate) async fn write(http: &Http, sobject: &str, items: &[(usize, &CrmWrite)]) -> Result<Vec<(usize, Saved)>, ConnectorError> {
    let mut out = Vec::with_capacity(items.len());
    for mode in [Mode::Update, Mode::Upsert] {
        let group: Vec<(usize, &CrmWrite)> = items.iter().filter(|(_, w)| Mode::of(&w.target) == mode).copied().collect();
        if !group.is_empty() {
            out.extend(job(http, sobject, mode, &group).await?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_put_the_key_first_and_take_every_field_once() {
        let rows = vec![
            json!({"attributes": {"type": "Lead"}, "crmsync_Id__c": "a", "LastName": "X", "crmsync_Fence__c": 3})
                .as_object()
                .unwrap()
                .clone(),
            json!({"attributes": {"type": "Lead"}, "crmsync_Id__c": "b", "Title": null}).as_object().unwrap().clone(),
        ];
        assert_eq!(columns(Mode::Upsert, &rows), ["crmsync_Id__c", "LastName", "Title", "crmsync_Fence__c"]);
        let csv = String::from_utf8(salesforce::bulk_csv(&columns(Mode::Upsert, &rows), &rows).unwrap()).unwrap();
        assert_eq!(csv, "crmsync_Id__c,LastName,Title,crmsync_Fence__c\na,X,,3\nb,,#N/A,\n");
    }

    #[test]
    fn error_cells_split_into_code_and_message() {
        assert_eq!(
            parse_error("FIELD_CUSTOM_VALIDATION_EXCEPTION:crmsync fence: a newer writer has written this record"),
            ("FIELD_CUSTOM_VALIDATION_EXCEPTION".to_owned(), "crmsync fence: a newer writer has written this record".to_owned())
        );
        assert_eq!(parse_error("something odd"), ("UNKNOWN_EXCEPTION".to_owned(), "something odd".to_owned()));
    }

    #[test]
    fn result_rows_are_matched_by_key_whatever_their_order() {
        let mut pending: HashMap<String, VecDeque<usize>> = HashMap::new();
        for (key, i) in [("a", 0), ("b", 1), ("c", 2), ("d", 3)] {
            pending.entry(key.to_owned()).or_default().push_back(i);
        }
        let successful = b"sf__Id,sf__Created,crmsync_Id__c,LastName\n00Q000000000002AAA,false,c,Z\n00Q000000000001AAA,true,a,X\n";
        let failed = format!(
            "sf__Id,sf__Error,crmsync_Id__c,LastName\n,REQUIRED_FIELD_MISSING:Required fields are missing: [LastName],b,\n,FIELD_CUSTOM_VALIDATION_EXCEPTION:{},d,W\n",
            salesforce::FENCE_MESSAGE
        );
        let mut out = match_results(Mode::Upsert, &mut pending, successful, failed.as_bytes()).unwrap();
        out.sort_by_key(|(i, _)| *i);
        assert_eq!(out[0], (0, Saved::Written { id: "00Q000000000001AAA".into(), created: true }));
        assert!(matches!(&out[1], (1, Saved::Failed(WriteOutcome::Rejected { code, .. })) if code == "REQUIRED_FIELD_MISSING"));
        assert_eq!(out[2], (2, Saved::Written { id: "00Q000000000002AAA".into(), created: false }));
        assert_eq!(out[3], (3, Saved::Failed(WriteOutcome::Fenced)));
        assert!(pending.values().all(VecDeque::is_empty));
    }

    #[test]
    fn update_results_match_ids_in_either_form() {
        let id18 = normalise_id("001A0000006Vm9r");
        let mut pending: HashMap<String, VecDeque<usize>> = HashMap::from([(id18.clone(), VecDeque::from([7]))]);
        let successful = b"sf__Id,sf__Created,Id\n001A0000006Vm9rIAC,false,001A0000006Vm9r\n";
        let out = match_results(Mode::Update, &mut pending, successful, b"").unwrap();
        assert_eq!(out, vec![(7, Saved::Written { id: id18, created: false })]);
    }
}
