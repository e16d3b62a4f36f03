//! Many manual edits in one transaction (`crmsync sandbox batch`): creates,
//! updates, deletes and restores on any object, custom objects included,
//! committed together or not at all.
//!
//! One transaction is what makes a burst: the producer pages changes by
//! transaction, so a single detection pass finds every record of the batch
//! together and, past the connection's threshold, sends them all to the
//! batch lane (R7), as a user's import or a mass update in a real system
//! would. Each record is written by the same statements as the single-record
//! commands, so change tracking (stamps, `mod_xid`) and the tables'
//! notifications are the same; PostgreSQL delivers the notifications at the
//! commit.
//!
//! Every operation is checked before the transaction begins (object, field
//! names and values, required fields), so a typo fails the batch without
//! holding a lock; a write the database refuses, or an id that does not
//! exist, rolls everything back. Errors name the line.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::custom::Target;
use super::{OpsError, Sandbox, System};
use crate::schema::ObjectDef;

/// One operation: a line of JSON such as
/// `{"op": "update", "object": "lead", "id": "00Q...", "set": {"Title": "CTO"}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOp {
    Create {
        object: String,
        #[serde(default)]
        set: Map<String, Value>,
    },
    Update {
        object: String,
        id: RecordId,
        set: Map<String, Value>,
    },
    Delete {
        object: String,
        id: RecordId,
    },
    Undelete {
        object: String,
        id: RecordId,
    },
}

/// A record id as JSON gives it: a number (the MA's) or text (the CRM's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RecordId {
    Number(i64),
    Text(String),
}

impl RecordId {
    fn text(&self) -> String {
        match self {
            RecordId::Number(n) => n.to_string(),
            RecordId::Text(s) => s.clone(),
        }
    }
}

/// What one operation did: printed as a line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchResult {
    pub line: usize,
    pub op: &'static str,
    pub object: String,
    pub id: String,
}

impl BatchOp {
    /// Reads operations, one JSON object a line; blank lines and lines
    /// starting with `#` are passed over. Each comes with its line number.
    pub fn parse_lines(text: &str) -> Result<Vec<(usize, BatchOp)>, OpsError> {
        let mut ops = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let op = serde_json::from_str(trimmed).map_err(|e| OpsError::Invalid(format!("line {line_no}: {e}")))?;
            ops.push((line_no, op));
        }
        Ok(ops)
    }

    fn name(&self) -> &'static str {
        match self {
            BatchOp::Create { .. } => "create",
            BatchOp::Update { .. } => "update",
            BatchOp::Delete { .. } => "delete",
            BatchOp::Undelete { .. } => "undelete",
        }
    }

    fn object(&self) -> &str {
        match self {
            BatchOp::Create { object, .. }
            | BatchOp::Update { object, .. }
            | BatchOp::Delete { object, .. }
            | BatchOp::Undelete { object, .. } => object,
        }
    }
}

/// `set` as the single-record commands take it (`name=value` text): JSON
/// strings as they are, numbers and booleans as written, null as a blank.
fn text_values(set: &Map<String, Value>) -> Result<Vec<(String, String)>, OpsError> {
    set.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => return Err(OpsError::Invalid(format!("field {k:?}: a value is a string, a number, true, false or null"))),
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// An operation checked and ready to write.
#[derive(Debug)]
enum Write<'a> {
    Insert(&'static ObjectDef, Map<String, Value>),
    Update(&'static ObjectDef, String, Map<String, Value>),
    InsertCustom(&'a str, Vec<(String, String)>),
    UpdateCustom(&'a str, String, Vec<(String, String)>, Option<bool>),
}

fn plan(op: &BatchOp) -> Result<(Target<'_>, Write<'_>), OpsError> {
    let target = Target::parse(op.object())?;
    let write = match (target, op) {
        (Target::Object(def), BatchOp::Create { set, .. }) => Write::Insert(def, Sandbox::new_document(def, &text_values(set)?)?),
        (Target::Object(def), BatchOp::Update { id, set, .. }) => {
            Sandbox::writable(def)?;
            Write::Update(def, id.text(), Sandbox::document(def, &text_values(set)?)?)
        }
        (Target::Object(def), BatchOp::Delete { id, .. } | BatchOp::Undelete { id, .. }) => {
            Sandbox::writable(def)?;
            let deleted = matches!(op, BatchOp::Delete { .. });
            Write::Update(def, id.text(), Sandbox::document(def, &Sandbox::deletion(def, deleted)?)?)
        }
        (Target::Custom(kind), BatchOp::Create { set, .. }) => Write::InsertCustom(kind, text_values(set)?),
        (Target::Custom(kind), BatchOp::Update { id, set, .. }) => Write::UpdateCustom(kind, id.text(), text_values(set)?, None),
        (Target::Custom(kind), BatchOp::Delete { id, .. }) => Write::UpdateCustom(kind, id.text(), Vec::new(), Some(true)),
        (Target::Custom(kind), BatchOp::Undelete { id, .. }) => Write::UpdateCustom(kind, id.text(), Vec::new(), Some(false)),
    };
    Ok((target, write))
}

impl Sandbox {
    /// Applies `ops` (with their line numbers) in one transaction, each as
    /// its system's admin: every write or none.
    pub async fn apply_batch(&self, ops: &[(usize, BatchOp)]) -> Result<Vec<BatchResult>, OpsError> {
        let at = |line: usize| move |e: OpsError| OpsError::Invalid(format!("line {line}: {e}; nothing was changed"));
        let mut planned = Vec::with_capacity(ops.len());
        for (line, op) in ops {
            planned.push(plan(op).map_err(at(*line))?);
        }
        // Who edits, resolved before the transaction: it may create the
        // tenant's users.
        let (mut ma, mut crm) = (None, None);
        for (target, _) in &planned {
            let slot = match target.system() {
                System::Ma => &mut ma,
                System::Crm => &mut crm,
            };
            if slot.is_none() {
                *slot = Some(self.admin(target.system()).await?);
            }
        }
        let mut tx = self.pool.begin().await?;
        let mut done = Vec::with_capacity(ops.len());
        for ((line, op), (target, write)) in ops.iter().zip(planned) {
            let actor = match target.system() {
                System::Ma => ma.as_deref(),
                System::Crm => crm.as_deref(),
            }
            .unwrap_or_default();
            let id = match write {
                Write::Insert(def, doc) => self.insert_on(&mut tx, def, &doc, actor).await,
                Write::Update(def, id, doc) => self.update_on(&mut tx, def, &id, &doc, actor).await.map(|()| id),
                Write::InsertCustom(kind, values) => self.insert_custom_on(&mut tx, kind, &values, actor).await,
                Write::UpdateCustom(kind, id, values, deleted) => {
                    self.update_custom_on(&mut tx, kind, &id, &values, deleted, actor).await.map(|()| id)
                }
            }
            .map_err(at(*line))?;
            done.push(BatchResult { line: *line, op: op.name(), object: op.object().to_owned(), id });
        }
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_as_operations_with_their_numbers() {
        let text = r#"
# a comment, then a blank line

{"op": "create", "object": "prospect", "set": {"email": "a@b.example", "score": 3, "optedOut": false}}
{"op": "update", "object": "prospect", "id": 42, "set": {"jobTitle": null}}
{"op": "delete", "object": "custom:Subscription__c", "id": "a0X000000000001AAA"}
"#;
        let ops = BatchOp::parse_lines(text).unwrap();
        assert_eq!(ops.iter().map(|(n, op)| (*n, op.name())).collect::<Vec<_>>(), [(4, "create"), (5, "update"), (6, "delete")]);
        let (_, BatchOp::Update { id, set, .. }) = &ops[1] else { panic!("an update") };
        assert_eq!(id.text(), "42");
        assert_eq!(text_values(set).unwrap(), [("jobTitle".to_owned(), String::new())]);
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = BatchOp::parse_lines("{\"op\": \"create\", \"object\": \"lead\"}\n{\"op\": \"rename\"}").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
        let e = BatchOp::parse_lines(r#"{"op": "delete", "object": "lead", "id": "x", "set": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn operations_are_checked_before_anything_is_written() {
        let op = |s: &str| BatchOp::parse_lines(s).unwrap().remove(0).1;
        let no_company = op(r#"{"op": "create", "object": "lead", "set": {"LastName": "Kim"}}"#);
        assert!(plan(&no_company).unwrap_err().to_string().contains("needs Company"));
        let unknown = op(r#"{"op": "update", "object": "lead", "id": "x", "set": {"Colour": "red"}}"#);
        assert!(plan(&unknown).unwrap_err().to_string().contains("no field \"Colour\""));
        let mirror = op(r#"{"op": "delete", "object": "ma-opportunity", "id": "1"}"#);
        assert!(plan(&mirror).unwrap_err().to_string().contains("read-only"));
        let nested = op(r#"{"op": "create", "object": "custom:Visit__c", "set": {"Notes": {"a": 1}}}"#);
        assert!(plan(&nested).is_err());
    }
}
