//! Processing a submitted import: match each row, turn it into a prospect
//! write by the import's column options, write the rows in collection-sized
//! chunks as the import's user, and keep the refused rows with their error.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use crmsync_connector::{MaApi, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::CrmId;
use crmsync_sandbox::schema::{Kind, PROSPECT};
use crmsync_wire::pardot::FENCE_FIELD;
use crmsync_wire::pardot::imports::{
    Column, CreateImport, ImportStatus, MATCH_COLUMNS, MATCH_EMAIL, MATCH_ID, MATCH_SALESFORCE_ID, errors,
};
use crmsync_wire::salesforce::MAX_COLLECTION_RECORDS;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::Job;
use crate::pardot::{write_of, writer};
use crate::state::{AppState, MaUser};

/// A blank cell: empty or spaces only, as the Import API judges it.
fn blank(cell: &str) -> bool {
    cell.trim().is_empty()
}

/// A cell as the field's JSON value.
fn typed(field: &str, text: &str) -> Value {
    let text = text.trim();
    let number = || text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned()));
    if field == FENCE_FIELD {
        return number();
    }
    match PROSPECT.by_api(field).map(|c| c.kind) {
        Some(Kind::Bool) if text.eq_ignore_ascii_case("true") => Value::Bool(true),
        Some(Kind::Bool) if text.eq_ignore_ascii_case("false") => Value::Bool(false),
        Some(Kind::Int) => number(),
        Some(Kind::Decimal) => text.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())),
        _ => Value::String(text.to_owned()),
    }
}

/// A prospect a match value found: its id, and whether it is in the recycle bin.
type Found = (i64, bool);

/// The prospects the rows' match values name, per match column.
async fn matches(st: &AppState, header: &[String], rows: &[Vec<String>]) -> Result<HashMap<(String, String), Found>, sqlx::Error> {
    let values = |column: &str| -> Vec<String> {
        let Some(i) = header.iter().position(|h| h == column) else { return Vec::new() };
        rows.iter().filter_map(|r| r.get(i)).filter(|c| !blank(c)).map(|c| c.trim().to_owned()).collect()
    };
    let mut out = HashMap::new();
    let ids: Vec<i64> = values(MATCH_ID).iter().filter_map(|v| v.parse().ok()).collect();
    let found: Vec<(i64, bool)> = sqlx::query_as("SELECT id, is_deleted FROM ma.prospects WHERE tenant = $1 AND id = ANY($2)")
        .bind(&st.config.ma_tenant)
        .bind(&ids)
        .fetch_all(&st.pool)
        .await?;
    for (id, deleted) in found {
        out.insert((MATCH_ID.to_owned(), id.to_string()), (id, deleted));
    }
    // The newest live prospect with the email, else the newest deleted one.
    let emails: Vec<String> = values(MATCH_EMAIL).iter().map(|e| e.to_lowercase()).collect();
    let found: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT DISTINCT ON (lower(btrim(email))) lower(btrim(email)), id, is_deleted FROM ma.prospects \
         WHERE tenant = $1 AND lower(btrim(email)) = ANY($2) ORDER BY lower(btrim(email)), is_deleted, modstamp DESC, id DESC",
    )
    .bind(&st.config.ma_tenant)
    .bind(&emails)
    .fetch_all(&st.pool)
    .await?;
    for (email, id, deleted) in found {
        out.insert((MATCH_EMAIL.to_owned(), email), (id, deleted));
    }
    let crm_ids: Vec<String> = values(MATCH_SALESFORCE_ID).iter().filter_map(|v| CrmId::parse(v).ok()).map(|c| c.to_string()).collect();
    let found: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT DISTINCT ON (f) f, id, is_deleted FROM (SELECT coalesce(crm_contact_fid, crm_lead_fid) AS f, id, is_deleted, modstamp \
         FROM ma.prospects WHERE tenant = $1 AND (crm_lead_fid = ANY($2) OR crm_contact_fid = ANY($2))) m \
         ORDER BY f, is_deleted, modstamp DESC, id DESC",
    )
    .bind(&st.config.ma_tenant)
    .bind(&crm_ids)
    .fetch_all(&st.pool)
    .await?;
    for (crm_id, id, deleted) in found {
        out.insert((MATCH_SALESFORCE_ID.to_owned(), crm_id), (id, deleted));
    }
    Ok(out)
}

/// What one row comes to: a write, or the error it is refused with.
fn plan(
    header: &[String],
    row: &[String],
    input: &CreateImport,
    found: &HashMap<(String, String), Found>,
) -> Result<ProspectWrite, (&'static str, String)> {
    let given: Vec<(&str, &str)> = header
        .iter()
        .zip(row)
        .filter(|(h, c)| MATCH_COLUMNS.contains(&h.as_str()) && !blank(c))
        .map(|(h, c)| (h.as_str(), c.trim()))
        .collect();
    if given.len() > 1 {
        return Err((errors::MULTIPLE_MATCH_VALUES, "only one match value may be set per row".into()));
    }
    let key = given.first().map(|(column, value)| {
        let value = match *column {
            MATCH_EMAIL => value.to_lowercase(),
            MATCH_SALESFORCE_ID => CrmId::parse(value).map_or_else(|_| (*value).to_owned(), |c| c.to_string()),
            _ => (*value).to_owned(),
        };
        ((*column).to_owned(), value)
    });
    let matched = key.as_ref().and_then(|k| found.get(k)).copied();
    let (target, restore) = match matched {
        Some((_, true)) if !input.restore_deleted => {
            return Err((errors::ARCHIVED, "the matching prospect is in the recycle bin and the import does not restore".into()));
        }
        Some((id, deleted)) => (ProspectTarget::Id(id), deleted),
        None if !input.create_on_no_match => return Err((errors::NO_MATCH, "no prospect matches and the import creates none".into())),
        None => (ProspectTarget::New, false),
    };
    let creating = target == ProspectTarget::New;
    let options = |field: &str| -> Column {
        let listed = input.columns.as_ref().and_then(|cs| cs.iter().find(|c| c.field == field));
        listed.cloned().unwrap_or(Column { field: field.to_owned(), overwrite: true, null_overwrite: true })
    };
    let mut body = Map::new();
    for (field, cell) in header.iter().zip(row) {
        if MATCH_COLUMNS.contains(&field.as_str()) {
            continue;
        }
        let column = options(field);
        let value = match (blank(cell), creating) {
            (true, true) => continue,
            (true, false) if !column.null_overwrite || !column.overwrite => continue,
            (true, false) => Value::Null,
            (false, false) if !column.overwrite => continue,
            (false, _) => typed(field, cell),
        };
        body.insert(field.clone(), value);
    }
    if let (true, Some((MATCH_EMAIL, email))) = (creating, given.first()) {
        body.entry("email").or_insert_with(|| Value::String((*email).to_owned()));
    }
    let mut w = write_of(target, &body).map_err(|e| (errors::FIELD_VALIDATION, e.body.message))?;
    if restore {
        w.fields.insert("isDeleted".into(), Value::Bool(false));
    }
    Ok(w)
}

/// What processing gave: created and updated counts, refused rows.
type Done = (u64, u64, Vec<Vec<String>>);

async fn process(st: &AppState, header: &[String], rows: &[Vec<String>], input: &CreateImport, user: MaUser) -> Result<Done, String> {
    let found = matches(st, header, rows).await.map_err(|e| e.to_string())?;
    let refused = |row: &[String], kind: &str, why: String| -> Vec<String> { row.iter().cloned().chain([kind.to_owned(), why]).collect() };
    let (mut created, mut updated, mut failed) = (0, 0, Vec::new());
    let mut planned: Vec<(&Vec<String>, ProspectWrite)> = Vec::new();
    for row in rows {
        match plan(header, row, input, &found) {
            Ok(w) => planned.push((row, w)),
            Err((kind, why)) => failed.push(refused(row, kind, why)),
        }
    }
    let ma = writer(st, user);
    for chunk in planned.chunks(MAX_COLLECTION_RECORDS) {
        let writes: Vec<ProspectWrite> = chunk.iter().map(|(_, w)| w.clone()).collect();
        let outcomes = ma.write_prospects(&writes).await.map_err(|e| e.to_string())?;
        for ((row, _), outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                WriteOutcome::Written { created: true, .. } => created += 1,
                WriteOutcome::Written { .. } => updated += 1,
                WriteOutcome::Rejected { code, message } => {
                    let kind = if code.contains("EMAIL") { errors::INVALID_EMAIL } else { errors::FIELD_VALIDATION };
                    failed.push(refused(row, kind, message));
                }
                WriteOutcome::Fenced => failed.push(refused(row, errors::FENCED, "a newer writer has written this prospect".into())),
                WriteOutcome::NotFound => failed.push(refused(row, errors::NO_MATCH, "the prospect no longer exists".into())),
            }
        }
    }
    Ok((created, updated, failed))
}

/// Processes a submitted import to `Complete`.
pub(super) async fn run(st: &AppState, handle: &Arc<Mutex<Job>>) {
    let (header, rows, input, user) = {
        let mut job = handle.lock().await;
        job.status = ImportStatus::Processing;
        job.updated_at = Utc::now();
        (job.header.clone().unwrap_or_default(), std::mem::take(&mut job.rows), job.input.clone(), job.user)
    };
    let outcome = process(st, &header, &rows, &input, user).await;
    let mut job = handle.lock().await;
    match outcome {
        Ok((created, updated, failed)) => {
            job.created = created;
            job.updated = updated;
            job.errors = failed;
        }
        Err(e) => {
            tracing::warn!(import = job.id, error = %e, "an import failed");
            job.errors = rows.iter().map(|r| r.iter().cloned().chain(["System Error".to_owned(), e.clone()]).collect()).collect();
        }
    }
    job.status = ImportStatus::Complete;
    job.updated_at = Utc::now();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(columns: Option<Vec<Column>>) -> CreateImport {
        CreateImport {
            operation: "Upsert".into(),
            object: "Prospect".into(),
            status: None,
            restore_deleted: false,
            create_on_no_match: false,
            columns,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn blank_cells_erase_only_where_the_column_says_and_matches_pick_the_target() {
        let header = s(&["matchId", "firstName", "jobTitle", "score", FENCE_FIELD]);
        let found =
            HashMap::from([(("matchId".to_owned(), "7".to_owned()), (7, false)), (("matchId".to_owned(), "8".to_owned()), (8, true))]);
        let keep = Column { field: "jobTitle".into(), overwrite: true, null_overwrite: false };
        let w = plan(&header, &s(&["7", "Ann", " ", "12", "3"]), &input(Some(vec![keep])), &found).unwrap();
        assert_eq!(w.target, ProspectTarget::Id(7));
        assert_eq!(w.fence, Some(3));
        assert_eq!(w.fields.get("score"), Some(&Value::from(12)));
        assert!(!w.fields.contains_key("jobTitle"), "a blank under nullOverwrite false leaves the value");
        let w = plan(&header, &s(&["7", "", "", "", "3"]), &input(None), &found).unwrap();
        assert_eq!(w.fields.get("firstName"), Some(&Value::Null), "by default a blank cell erases");
        let archived = plan(&header, &s(&["8", "A", "", "", ""]), &input(None), &found).unwrap_err();
        assert_eq!(archived.0, errors::ARCHIVED);
        assert_eq!(plan(&header, &s(&["9", "A", "", "", ""]), &input(None), &found).unwrap_err().0, errors::NO_MATCH);
        let two = s(&["matchId", "matchEmail", "firstName"]);
        assert_eq!(plan(&two, &s(&["7", "a@b.c", "A"]), &input(None), &found).unwrap_err().0, errors::MULTIPLE_MATCH_VALUES);
        let create = CreateImport { create_on_no_match: true, ..input(None) };
        let w = plan(&two, &s(&["", "New@B.c", "A"]), &create, &found).unwrap();
        assert_eq!((w.target, w.fields.get("email")), (ProspectTarget::New, Some(&Value::from("New@B.c"))));
    }
}
