//! The pure parts of writing through the Import API: which writes of a
//! chunk an import carries, the CSV file they make, and the errors file
//! read back as (match value, error type, description).
//!
//! An import row carries only what the engine writes: a cell the row does
//! not write is blank, and every column is imported with
//! `nullOverwrite: false`, so a blank cell never erases a value. The other
//! side of that: a write that means to blank a field cannot go in an
//! import, nor can a recycle-bin move (v5 moves prospects with `DELETE`
//! and `undelete`, not a field), nor a plain create, nor a second write to
//! a prospect already in the import (the order of an import's rows is not
//! kept): those are written one by one, as small batches are.

use std::collections::HashSet;

use crmsync_connector::{ConnectorError, ProspectTarget, ProspectWrite};
use crmsync_domain::CrmObject;
use crmsync_domain::merge::is_blank;
use crmsync_wire::pardot::FENCE_FIELD;
use crmsync_wire::pardot::imports::{Column, MATCH_EMAIL, MATCH_ID};
use serde_json::Value;

use crate::fields::{CONTACT_ID, IS_DELETED, LEAD_ID};

/// Which writes of a chunk go in imports, by index.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Split {
    /// Updates by id: an import that creates nothing.
    pub updates: Vec<usize>,
    /// The engine's creates, upserts by email.
    pub creates: Vec<usize>,
    /// The rest, written one by one once the imports are done.
    pub per_record: Vec<usize>,
}

/// Whether an import can carry `w` (were it the first to its prospect).
fn importable(w: &ProspectWrite) -> bool {
    matches!(w.target, ProspectTarget::Id(_) | ProspectTarget::UpsertByEmail(_))
        && !w.fields.contains_key(IS_DELETED)
        && !w.fields.values().any(is_blank)
}

/// The prospect a write goes to, as text.
fn key(w: &ProspectWrite) -> Option<String> {
    match &w.target {
        ProspectTarget::Id(id) => Some(format!("id:{id}")),
        ProspectTarget::UpsertByEmail(e) => Some(format!("email:{}", e.as_str())),
        ProspectTarget::New => None,
    }
}

pub(crate) fn split(writes: &[ProspectWrite]) -> Split {
    let mut out = Split::default();
    let mut seen = HashSet::new();
    for (i, w) in writes.iter().enumerate() {
        let first = key(w).is_some_and(|k| seen.insert(k));
        match &w.target {
            ProspectTarget::Id(_) if first && importable(w) => out.updates.push(i),
            ProspectTarget::UpsertByEmail(_) if first && importable(w) => out.creates.push(i),
            _ => out.per_record.push(i),
        }
    }
    out
}

/// A value as a cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The match value of a write in its import's match column.
pub(crate) fn match_value(w: &ProspectWrite) -> String {
    match &w.target {
        ProspectTarget::Id(id) => id.to_string(),
        ProspectTarget::UpsertByEmail(e) => e.as_str().to_owned(),
        ProspectTarget::New => String::new(),
    }
}

/// The header and rows of `writes`, all by id or all by email: the match
/// column, the fields any of them writes, then the fence and the CRM links.
pub(crate) fn table(writes: &[&ProspectWrite], by_email: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec![if by_email { MATCH_EMAIL } else { MATCH_ID }.to_owned()];
    let add = |h: &mut Vec<String>, f: &str| {
        if !h.iter().any(|x| x == f) {
            h.push(f.to_owned());
        }
    };
    for w in writes {
        for f in w.fields.keys() {
            add(&mut header, f);
        }
    }
    if writes.iter().any(|w| w.fence.is_some()) {
        add(&mut header, FENCE_FIELD);
    }
    for (object, field) in [(CrmObject::Lead, LEAD_ID), (CrmObject::Contact, CONTACT_ID)] {
        if writes.iter().any(|w| w.crm_link.as_ref().is_some_and(|(o, _)| *o == object)) {
            add(&mut header, field);
        }
    }
    let rows = writes
        .iter()
        .map(|w| {
            header
                .iter()
                .enumerate()
                .map(|(i, h)| match h.as_str() {
                    _ if i == 0 => match_value(w),
                    FENCE_FIELD => w.fence.map(|f| f.to_string()).unwrap_or_default(),
                    LEAD_ID | CONTACT_ID => {
                        let object = if h == LEAD_ID { CrmObject::Lead } else { CrmObject::Contact };
                        w.crm_link.as_ref().filter(|(o, _)| *o == object).map(|(_, id)| id.to_string()).unwrap_or_default()
                    }
                    f => w.fields.get(f).map(cell).unwrap_or_default(),
                })
                .collect()
        })
        .collect();
    (header, rows)
}

/// Every column overwrites an existing value, none with a blank cell.
pub(crate) fn columns(header: &[String]) -> Vec<Column> {
    header.iter().map(|f| Column { field: f.clone(), overwrite: true, null_overwrite: false }).collect()
}

fn csv_of(header: &[String], rows: &[&Vec<String>]) -> Result<Vec<u8>, ConnectorError> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    let fail = |e: csv::Error| ConnectorError::Fatal(format!("cannot write the import file: {e}"));
    w.write_record(header).map_err(fail)?;
    for r in rows {
        w.write_record(*r).map_err(fail)?;
    }
    w.into_inner().map_err(|e| ConnectorError::Fatal(format!("cannot write the import file: {e}")))
}

/// The rows as CSV files (each with the header) of at most `max_bytes`,
/// with the rows each holds (a row over the size on its own still goes,
/// alone, for the API to refuse).
pub(crate) fn files(header: &[String], rows: &[Vec<String>], max_bytes: usize) -> Result<Vec<(Vec<u8>, usize)>, ConnectorError> {
    let head = csv_of(header, &[])?.len();
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = head;
    for (i, r) in rows.iter().enumerate() {
        let len = csv_of(header, &[r])?.len() - head;
        if i > start && size + len > max_bytes {
            out.push((csv_of(header, &rows[start..i].iter().collect::<Vec<_>>())?, i - start));
            start = i;
            size = head;
        }
        size += len;
    }
    if start < rows.len() {
        out.push((csv_of(header, &rows[start..].iter().collect::<Vec<_>>())?, rows.len() - start));
    }
    Ok(out)
}

/// One refused row of an errors file: its match value, the error's type
/// and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub matched: String,
    pub kind: String,
    pub description: String,
}

/// The errors file: the rows as imported, then the error's type and
/// description (the last two columns, whatever their names).
pub(crate) fn refused(data: &[u8]) -> Result<Vec<Refused>, ConnectorError> {
    let bad = |e: &dyn std::fmt::Display| ConnectorError::Fatal(format!("Account Engagement sent an errors file crmsync cannot read: {e}"));
    let mut r = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(data);
    let header: Vec<String> = r.headers().map_err(|e| bad(&e))?.iter().map(str::to_owned).collect();
    let at = header.iter().position(|h| h == MATCH_ID || h == MATCH_EMAIL).ok_or_else(|| bad(&"no match column"))?;
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| bad(&e))?;
        let n = rec.len();
        if n < 2 || at >= n - 2 {
            return Err(bad(&"a row without its error"));
        }
        out.push(Refused { matched: rec[at].trim().to_owned(), kind: rec[n - 2].to_owned(), description: rec[n - 1].to_owned() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crmsync_connector::FieldValues;
    use crmsync_domain::{CrmId, Email};
    use serde_json::json;

    use super::*;

    fn write(target: ProspectTarget, fields: Value) -> ProspectWrite {
        let fields: FieldValues = serde_json::from_value(fields).unwrap();
        ProspectWrite { target, fields, crm_link: None, fence: Some(9), unmodified_since: None }
    }

    #[test]
    fn imports_carry_the_first_write_to_each_prospect_that_blanks_and_moves_nothing() {
        let email = |e: &str| ProspectTarget::UpsertByEmail(Email::parse(e).unwrap());
        let writes = [
            write(ProspectTarget::Id(1), json!({"jobTitle": "CTO"})),
            write(ProspectTarget::Id(2), json!({"jobTitle": null})),
            write(ProspectTarget::Id(3), json!({"isDeleted": true})),
            write(email("a@x.example"), json!({"lastName": "A"})),
            write(ProspectTarget::Id(1), json!({"city": "Kyoto"})),
            write(ProspectTarget::New, json!({"lastName": "N"})),
            write(ProspectTarget::Id(4), json!({"city": " "})),
        ];
        assert_eq!(split(&writes), Split { updates: vec![0], creates: vec![3], per_record: vec![1, 2, 4, 5, 6] });
    }

    #[test]
    fn a_file_holds_what_each_row_writes_and_blanks_the_rest() {
        let lead = CrmId::parse("00Q5g00000AbCdE").unwrap();
        let mut a = write(ProspectTarget::Id(7), json!({"lastName": "O'Brien, Jr.", "score": 12, "optedOut": true}));
        a.crm_link = Some((CrmObject::Lead, lead.clone()));
        let b = write(ProspectTarget::Id(8), json!({"city": "Line\nbreak"}));
        let (header, rows) = table(&[&a, &b], false);
        assert_eq!(header, ["matchId", "lastName", "optedOut", "score", "city", FENCE_FIELD, "salesforceLeadId"]);
        assert_eq!(rows[0], ["7", "O'Brien, Jr.", "true", "12", "", "9", lead.as_str()]);
        assert_eq!(rows[1], ["8", "", "", "", "Line\nbreak", "9", ""]);
        assert!(columns(&header).iter().all(|c| c.overwrite && !c.null_overwrite));
        let one = files(&header, &rows, usize::MAX).unwrap();
        assert_eq!(one.len(), 1);
        let text = String::from_utf8(one[0].0.clone()).unwrap();
        assert!(text.starts_with("matchId,lastName,") && text.contains("\"O'Brien, Jr.\"") && text.contains("\"Line\nbreak\""), "{text}");
        let split = files(&header, &rows, one[0].0.len() - 1).unwrap();
        assert_eq!(split.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 1], "too big for one file: two, each with the header");
        assert!(split.iter().all(|(f, _)| f.starts_with(b"matchId,")));
    }

    #[test]
    fn the_errors_file_reads_as_match_values_with_their_errors() {
        let file = b"matchId,jobTitle,crmsync_fence__c,Error Type,Error Description\n\
                     7,\"A, very long title\",9,Field Validation Failure,jobTitle: too long\n\
                     8,,9,crmsync Fence,a newer writer has written this prospect\n";
        let r = refused(file).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Refused { matched: "7".into(), kind: "Field Validation Failure".into(), description: "jobTitle: too long".into() }
        );
        assert_eq!((r[1].matched.as_str(), r[1].kind.as_str()), ("8", "crmsync Fence"));
        assert!(refused(b"matchEmail,Error Type,Error Description\n").unwrap().is_empty());
        assert!(refused(b"firstName,Error Type,Error Description\nA,x,y\n").is_err(), "no match column");
    }
}
