//! Batch-lane prospect writes through v5's Import API: a chunk of at least
//! `import_threshold` writes becomes up to two imports (updates by
//! `matchId`, which create nothing; the engine's creates by `matchEmail`),
//! each created with its file and submitted in one call when the file is
//! under the batch size (else created `Open`, given its batches, then
//! submitted), polled with a doubling wait until `Complete`, and its
//! errors file read back when it has errors. Every step is an
//! [`EndpointKind::Import`] call: about three an import of any size.
//!
//! Each write gets its outcome, in order: a refused row is `Rejected` with
//! the error's type and description (`Fenced` for the sandbox's fence,
//! `NotFound` for an id that matches nothing or a prospect in the recycle
//! bin); a row not refused was written. An import tells no row's stamp, so
//! a write is stamped with a server time no later than the import's
//! submission, never after a user's edit that followed it (I3). A create
//! needs its new id: the prospects changed since the submission are listed
//! (a page of 1,000 per call) and matched by email; any not found are asked
//! for one by one.
//!
//! What an import cannot carry ([`import_file::split`]) is written one by
//! one afterwards, as is a create whose email matched only a prospect in
//! the recycle bin (so both lanes create the same way), and every row of
//! an import the API refuses to create (its 1,000 batches a day used up).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crmsync_connector::{ConnectorError, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_connector_kit::row::{Row, stamp, text};
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_wire::multipart::Part;
use crmsync_wire::pardot::imports::{
    CreateImport, FILE_PART, IMPORTS_PATH, INPUT_PART, Import, ImportStatus, MAX_BATCH_BYTES, MAX_BATCHES, STATUS_FIELDS, UpdateImport,
    errors,
};
use crmsync_wire::pardot::{MAX_PAGE, PROSPECTS_PATH, QueryPage};
use reqwest::Method;

use crate::fields::{CREATED_AT, EMAIL, ID, UPDATED_AT};
use crate::http::{CallError, Http};
use crate::import_file::{self, Refused};
use crate::write;

/// How imports are made and waited for.
#[derive(Debug, Clone)]
pub(crate) struct Imports {
    /// Chunks of fewer importable writes go one by one.
    pub threshold: usize,
    /// The first wait before asking an import's status; it doubles up to
    /// [`MAX_POLL`].
    pub first_poll: Duration,
}

/// The longest wait between two asks of an import's status.
const MAX_POLL: Duration = Duration::from_secs(60);
/// An import still not complete after this long fails the chunk (retried).
const GIVE_UP: Duration = Duration::from_secs(30 * 60);
/// Files stay this far under the batch limit (the multipart envelope).
const FILE_BYTES: usize = MAX_BATCH_BYTES - 64 * 1024;

fn encode(v: &CreateImport) -> Result<Vec<u8>, ConnectorError> {
    serde_json::to_vec(v).map_err(|e| ConnectorError::Fatal(format!("cannot encode an import: {e}")))
}

fn file_part(data: Vec<u8>) -> Part {
    Part::file(FILE_PART, "prospects.csv", "text/csv", data)
}

/// Creates and submits one import of `files`; its id and a server time no
/// later than its submission, or `None` if the API refused to create it.
async fn submit(http: &Http, input: &CreateImport, files: Vec<Vec<u8>>) -> Result<Option<(i64, DateTime<Utc>)>, ConnectorError> {
    let one = files.len() == 1;
    let input = CreateImport { status: one.then_some(ImportStatus::Ready), ..input.clone() };
    let mut files = files.into_iter();
    let first = files.next().ok_or_else(|| ConnectorError::Fatal("an import without rows".into()))?;
    let parts = vec![Part::new(INPUT_PART, "application/json", encode(&input)?), file_part(first)];
    // Sent twice, an import would write its rows twice: not resent unless
    // it certainly was not processed.
    let create = Call::new(EndpointKind::Import, Method::POST, IMPORTS_PATH).multipart(parts).not_idempotent();
    let answer = match http.send(&create).await {
        Ok(a) => a,
        // Refused on its merits (the day's batches used up, imports not
        // allowed to this user): the rows are written one by one instead.
        Err(CallError::Api(f)) => {
            tracing::warn!(error = %f.summary(), "Account Engagement refused an import; writing its prospects one by one");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let made: Import = answer.json()?;
    if one {
        return Ok(Some((made.id, answer.server_time)));
    }
    let path = format!("{IMPORTS_PATH}/{}", made.id);
    for file in files {
        let batch =
            Call::new(EndpointKind::Import, Method::POST, format!("{path}/batches")).multipart(vec![file_part(file)]).not_idempotent();
        http.send(&batch).await?;
    }
    let ready = serde_json::to_value(UpdateImport { status: ImportStatus::Ready }).map_err(|e| ConnectorError::Fatal(e.to_string()))?;
    let answer = http.send(&Call::new(EndpointKind::Import, Method::PATCH, &path).json(ready)).await?;
    Ok(Some((made.id, answer.server_time)))
}

/// Waits for import `id` to complete; its refused rows.
async fn finish(http: &Http, id: i64, first_poll: Duration) -> Result<Vec<Refused>, ConnectorError> {
    let path = format!("{IMPORTS_PATH}/{id}");
    let mut wait = first_poll;
    let mut waited = Duration::ZERO;
    let done = loop {
        tokio::time::sleep(wait).await;
        waited += wait;
        let status: Import = http.send(&Call::get(EndpointKind::Import, &path).query("fields", STATUS_FIELDS)).await?.json()?;
        if status.status == ImportStatus::Complete {
            break status;
        }
        if waited >= GIVE_UP {
            return Err(ConnectorError::Transient(format!("Account Engagement import {id} is still {:?} after {waited:?}", status.status)));
        }
        wait = (wait * 2).min(MAX_POLL);
    };
    if done.error_count.unwrap_or(0) == 0 {
        return Ok(Vec::new());
    }
    let call = Call::get(EndpointKind::Import, format!("{path}/errors")).header("Accept", "text/csv");
    import_file::refused(&http.send(&call).await?.body)
}

/// What the imports of some writes came to: each refusal keyed by its
/// match value, a time no later than the first submission, and the match
/// values of rows whose import the API would not create.
type Imported = (HashMap<String, Refused>, DateTime<Utc>, Vec<String>);

/// Runs the imports of `writes` (all by id, or all by email).
async fn import(http: &Http, writes: &[&ProspectWrite], by_email: bool, cfg: &Imports) -> Result<Imported, ConnectorError> {
    let (header, rows) = import_file::table(writes, by_email);
    let input = CreateImport {
        operation: "Upsert".into(),
        object: "Prospect".into(),
        status: None,
        restore_deleted: false,
        create_on_no_match: by_email,
        columns: Some(import_file::columns(&header)),
    };
    let files = import_file::files(&header, &rows, FILE_BYTES)?;
    let mut refused = HashMap::new();
    let mut not_made = Vec::new();
    let mut first_submit: Option<DateTime<Utc>> = None;
    let mut row = 0;
    for group in files.chunks(MAX_BATCHES) {
        let n: usize = group.iter().map(|(_, n)| n).sum();
        let submitted = submit(http, &input, group.iter().map(|(f, _)| f.clone()).collect()).await?;
        let from = row;
        row += n;
        let Some((id, at)) = submitted else {
            not_made.extend(rows[from..row].iter().map(|r| r[0].clone()));
            continue;
        };
        first_submit = Some(first_submit.map_or(at, |t| t.min(at)));
        for r in finish(http, id, cfg.first_poll).await? {
            let key = if by_email { r.matched.trim().to_lowercase() } else { r.matched.clone() };
            refused.insert(key, r);
        }
    }
    Ok((refused, first_submit.unwrap_or_else(Utc::now), not_made))
}

/// The outcome of a refused row (`None`: write it one by one instead).
fn outcome_of(r: &Refused, by_email: bool) -> Option<WriteOutcome> {
    match r.kind.as_str() {
        errors::FENCED => Some(WriteOutcome::Fenced),
        errors::NO_MATCH if !by_email => Some(WriteOutcome::NotFound),
        errors::ARCHIVED if !by_email => Some(WriteOutcome::NotFound),
        errors::ARCHIVED => None,
        kind => Some(WriteOutcome::Rejected { code: kind.to_owned(), message: r.description.clone() }),
    }
}

/// The prospects created or updated since `since` with these emails
/// (lowercased), newest last: the creates of an import, read back.
async fn created_since(http: &Http, since: DateTime<Utc>, emails: &[String]) -> Result<HashMap<String, Row>, ConnectorError> {
    let wanted: std::collections::HashSet<&str> = emails.iter().map(String::as_str).collect();
    let fields = [ID, EMAIL, CREATED_AT, UPDATED_AT].join(",");
    let mut found: HashMap<String, Row> = HashMap::new();
    let mut call = crate::feed::change_query(&fields, Some(since), MAX_PAGE);
    // A page holds 1,000: the creates and whatever else changed meanwhile.
    for _ in 0..emails.len().div_ceil(MAX_PAGE) + 2 {
        let page: QueryPage = http.send(&call).await?.json()?;
        for row in page.values {
            if let Some(e) = text(&row, EMAIL).map(|e| e.trim().to_lowercase()).filter(|e| wanted.contains(e.as_str())) {
                found.insert(e, row);
            }
        }
        match page.next_page_token {
            Some(t) if found.len() < wanted.len() => call = Call::get(EndpointKind::Query, PROSPECTS_PATH).query("nextPageToken", t),
            _ => break,
        }
    }
    let missing: Vec<&String> = emails.iter().filter(|e| !found.contains_key(*e)).collect();
    for email in missing {
        let call =
            Call::get(EndpointKind::Query, PROSPECTS_PATH).query("fields", &fields).query("email", email).query("orderBy", UPDATED_AT);
        let page: QueryPage = http.send(&call).await?.json()?;
        if let Some(row) = page.values.into_iter().last() {
            found.insert(email.clone(), row);
        }
    }
    Ok(found)
}

/// Writes a batch-lane chunk: imports when enough of it can go in one,
/// the rest (or all) one by one; one outcome each, in order.
pub(crate) async fn write_in_bulk(
    http: &Http,
    writes: &[ProspectWrite],
    at_once: usize,
    cfg: &Imports,
) -> Result<Vec<WriteOutcome>, ConnectorError> {
    let split = import_file::split(writes);
    if split.updates.len() + split.creates.len() < cfg.threshold.max(1) {
        return write::write_prospects(http, writes, at_once).await;
    }
    let mut done: Vec<(usize, WriteOutcome)> = Vec::with_capacity(writes.len());
    let mut one_by_one = split.per_record.clone();
    for (idx, by_email) in [(&split.updates, false), (&split.creates, true)] {
        if idx.is_empty() {
            continue;
        }
        let rows: Vec<&ProspectWrite> = idx.iter().map(|&i| &writes[i]).collect();
        let (refused, at, not_made) = import(http, &rows, by_email, cfg).await?;
        let key = |w: &ProspectWrite| if by_email { import_file::match_value(w).to_lowercase() } else { import_file::match_value(w) };
        let not_made: std::collections::HashSet<String> =
            not_made.iter().map(|k| if by_email { k.to_lowercase() } else { k.clone() }).collect();
        let mut created = Vec::new();
        for &i in idx {
            if not_made.contains(&key(&writes[i])) {
                one_by_one.push(i);
                continue;
            }
            match refused.get(&key(&writes[i])).map(|r| outcome_of(r, by_email)) {
                Some(Some(o)) => done.push((i, o)),
                Some(None) => one_by_one.push(i),
                None if by_email => created.push(i),
                None => {
                    let ProspectTarget::Id(id) = writes[i].target else { unreachable!("updates are by id") };
                    done.push((i, WriteOutcome::Written { id: id.to_string(), created: false, at }));
                }
            }
        }
        if !created.is_empty() {
            let emails: Vec<String> = created.iter().map(|&i| key(&writes[i])).collect();
            let found = created_since(http, at, &emails).await?;
            for (&i, email) in created.iter().zip(&emails) {
                let row = found.get(email).ok_or_else(|| {
                    ConnectorError::Transient("a prospect an import created is not readable yet; the chunk goes again".into())
                })?;
                let id =
                    row.get(ID).and_then(serde_json::Value::as_i64).ok_or_else(|| ConnectorError::Fatal("a prospect without id".into()))?;
                let created = stamp(row, CREATED_AT).is_some_and(|c| c >= at);
                done.push((i, WriteOutcome::Written { id: id.to_string(), created, at }));
            }
        }
    }
    one_by_one.sort_unstable();
    if !one_by_one.is_empty() {
        let rest: Vec<ProspectWrite> = one_by_one.iter().map(|&i| writes[i].clone()).collect();
        let outcomes = write::write_prospects(http, &rest, at_once).await?;
        done.extend(one_by_one.into_iter().zip(outcomes));
    }
    tracing::debug!(
        writes = writes.len(),
        imported = split.updates.len() + split.creates.len(),
        "prospects written through the Import API"
    );
    crmsync_connector::outcomes_in_order(writes.len(), done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(kind: &str) -> Refused {
        Refused { matched: "7".into(), kind: kind.into(), description: "why".into() }
    }

    #[test]
    fn refused_rows_become_the_outcomes_a_write_by_id_would_have() {
        assert_eq!(outcome_of(&refused(errors::FENCED), false), Some(WriteOutcome::Fenced));
        assert_eq!(outcome_of(&refused(errors::NO_MATCH), false), Some(WriteOutcome::NotFound));
        assert_eq!(outcome_of(&refused(errors::ARCHIVED), false), Some(WriteOutcome::NotFound));
        assert_eq!(outcome_of(&refused(errors::ARCHIVED), true), None, "a create matching the recycle bin goes one by one");
        assert_eq!(
            outcome_of(&refused(errors::FIELD_VALIDATION), false),
            Some(WriteOutcome::Rejected { code: errors::FIELD_VALIDATION.into(), message: "why".into() })
        );
    }
}
