//! Writes of leads, contacts and opportunities: sObject Collections (at most
//! 200 records a call, `allOrNone=false`, one result per record in request
//! order), the Bulk API for large batches, writes as another user, and the
//! stamps of written records read back for [`WriteOutcome::Written`].
//!
//! A create of the engine goes by crmsync's external id (an upsert), so a
//! retried call finds the record the first attempt made; updates go by id.
//! The fencing token travels in `crmsync_Fence__c`, which a validation rule
//! in the org refuses to move backwards.

use std::collections::{BTreeMap, HashMap};

use crmsync_connector::ConnectorError;
use crmsync_connector::{CrmTarget, CrmWrite, WriteOutcome};
use crmsync_connector_kit::row::{Row, text};
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_domain::{CrmId, CrmObject, Timestamp};
use crmsync_wire::salesforce::{
    CollectionRequest, EXTERNAL_ID_FIELD, FENCE_FIELD, FENCE_MESSAGE, MAX_COLLECTION_RECORDS, SaveResult, codes,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::bulk;
use crate::fields::{ID, OWNER_ID, SYSTEM_MODSTAMP, writable_sobject};
use crate::http::{CallError, Http};
use crate::query;
use crate::records;

/// How a write addresses its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Mode {
    Create,
    Update,
    Upsert,
}

impl Mode {
    pub fn of(target: &CrmTarget) -> Mode {
        match target {
            CrmTarget::New => Mode::Create,
            CrmTarget::Id(_) => Mode::Update,
            CrmTarget::ExternalId(_) => Mode::Upsert,
        }
    }
}

/// A write's record as the API takes it: its type, its fields, the owner,
/// the fencing token, and the key the mode needs.
pub(crate) fn body(sobject: &str, w: &CrmWrite) -> Row {
    let mut r = Row::new();
    r.insert("attributes".into(), json!({ "type": sobject }));
    for (k, v) in &w.fields {
        r.insert(k.clone(), v.clone());
    }
    if let Some(owner) = &w.owner_id {
        r.insert(OWNER_ID.into(), Value::String(owner.to_string()));
    }
    if let Some(fence) = w.fence {
        r.insert(FENCE_FIELD.into(), Value::from(fence));
    }
    match &w.target {
        CrmTarget::Id(id) => {
            r.insert(ID.into(), Value::String(id.to_string()));
        }
        CrmTarget::ExternalId(ext) => {
            r.insert(EXTERNAL_ID_FIELD.into(), Value::String(ext.clone()));
        }
        CrmTarget::New => {}
    }
    r
}

/// One record's result before its stamp is known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Saved {
    Written { id: String, created: bool },
    Failed(WriteOutcome),
}

/// The outcome of a record the API refused, from its errors (code, message):
/// the fence's validation rule means a newer writer got there first; a
/// missing or deleted record is `NotFound`; anything else is a rejection the
/// engine parks as a sync error.
pub(crate) fn refusal<'a>(errors: impl IntoIterator<Item = (&'a str, &'a str)>) -> WriteOutcome {
    let errors: Vec<(&str, &str)> = errors.into_iter().collect();
    if errors.iter().any(|(code, message)| *code == codes::FIELD_CUSTOM_VALIDATION_EXCEPTION && message.contains(FENCE_MESSAGE)) {
        return WriteOutcome::Fenced;
    }
    if errors.iter().any(|(code, _)| *code == codes::NOT_FOUND || *code == codes::ENTITY_IS_DELETED) {
        return WriteOutcome::NotFound;
    }
    match errors.first() {
        Some((code, _)) => {
            WriteOutcome::Rejected { code: (*code).to_owned(), message: errors.iter().map(|(_, m)| *m).collect::<Vec<_>>().join("; ") }
        }
        None => WriteOutcome::Rejected { code: "UNKNOWN_EXCEPTION".into(), message: "the record was refused without a reason".into() },
    }
}

/// One record's collection result.
pub(crate) fn saved(result: &SaveResult, mode: Mode) -> Saved {
    match (&result.id, result.success) {
        (Some(id), true) => Saved::Written { id: id.clone(), created: result.created.unwrap_or(mode == Mode::Create) },
        (None, true) => Saved::Failed(refusal([("UNKNOWN_EXCEPTION", "saved, but the answer gives no id")])),
        (_, false) => Saved::Failed(refusal(result.errors.iter().map(|e| (e.status_code.as_str(), e.message.as_str())))),
    }
}

/// One sObject Collections call (at most 200 records).
async fn collection(http: &Http, sobject: &str, mode: Mode, batch: &[&CrmWrite], as_user: Option<&str>) -> Result<Vec<Saved>, CallError> {
    let request = CollectionRequest { all_or_none: false, records: batch.iter().map(|w| body(sobject, w)).collect() };
    let call = match mode {
        // A plain create is not idempotent: only resent if it never left.
        Mode::Create => Call::new(EndpointKind::Write, Method::POST, http.api().data_path("composite/sobjects")).not_idempotent(),
        Mode::Update => Call::new(EndpointKind::Write, Method::PATCH, http.api().data_path("composite/sobjects")),
        Mode::Upsert => Call::new(
            EndpointKind::Write,
            Method::PATCH,
            http.api().data_path(&format!("composite/sobjects/{sobject}/{EXTERNAL_ID_FIELD}")),
        ),
    };
    let body = serde_json::to_value(&request).map_err(|e| ConnectorError::Fatal(format!("cannot encode the records: {e}")))?;
    let answer = http.send(&call.json(body).acting_as(as_user.map(str::to_owned))).await?;
    let results: Vec<SaveResult> = answer.json()?;
    if results.len() != batch.len() {
        return Err(CallError::Connector(ConnectorError::Fatal(format!(
            "Salesforce answered {} results for {} records",
            results.len(),
            batch.len()
        ))));
    }
    Ok(results.iter().map(|r| saved(r, mode)).collect())
}

/// Writes through collections, grouped by mode and cut into calls of 200.
async fn collections(
    http: &Http,
    sobject: &str,
    items: &[(usize, &CrmWrite)],
    as_user: Option<&str>,
) -> Result<Vec<(usize, Saved)>, CallError> {
    let mut by_mode: BTreeMap<Mode, Vec<(usize, &CrmWrite)>> = BTreeMap::new();
    for (i, w) in items {
        by_mode.entry(Mode::of(&w.target)).or_default().push((*i, *w));
    }
    let mut out = Vec::with_capacity(items.len());
    for (mode, group) in by_mode {
        for chunk in group.chunks(MAX_COLLECTION_RECORDS) {
            let writes: Vec<&CrmWrite> = chunk.iter().map(|(_, w)| *w).collect();
            let results = collection(http, sobject, mode, &writes, as_user).await?;
            out.extend(chunk.iter().map(|(i, _)| *i).zip(results));
        }
    }
    Ok(out)
}

/// Why a user cannot be written as, from the token endpoint's refusal.
fn act_as_refusal(description: &str) -> WriteOutcome {
    let lower = description.to_ascii_lowercase();
    let code = if lower.contains("inactive") {
        "INACTIVE_OWNER_OR_USER"
    } else if lower.contains("api enabled") || lower.contains("api_enabled") {
        "API_DISABLED_FOR_USER"
    } else {
        "INVALID_GRANT"
    };
    WriteOutcome::Rejected { code: code.into(), message: format!("cannot write as this user: {description}") }
}

/// The usernames of users to write as, or why a user cannot be: unknown or
/// inactive users are refused here, as the API would refuse their writes.
async fn usernames(http: &Http, users: &[&CrmId]) -> Result<HashMap<CrmId, Result<String, WriteOutcome>>, ConnectorError> {
    let ids: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    let select = ["Id".to_owned(), "Username".to_owned(), "IsActive".to_owned()];
    let rows = query::all_rows_of(http, &query::in_queries(&select, "User", ID, &ids, None), false).await?;
    let mut found: HashMap<CrmId, Result<String, WriteOutcome>> = HashMap::new();
    for row in &rows {
        let Some(id) = text(row, ID).and_then(|i| CrmId::parse(&i).ok()) else { continue };
        let active = row.get("IsActive").and_then(Value::as_bool).unwrap_or(true);
        let entry = match text(row, "Username") {
            _ if !active => Err(WriteOutcome::Rejected {
                code: "INACTIVE_OWNER_OR_USER".into(),
                message: "operation performed with inactive user".into(),
            }),
            Some(name) => Ok(name),
            None => Err(WriteOutcome::Rejected { code: "INVALID_CROSS_REFERENCE_KEY".into(), message: "the user has no username".into() }),
        };
        found.insert(id, entry);
    }
    for u in users {
        found.entry((*u).clone()).or_insert_with(|| {
            Err(WriteOutcome::Rejected { code: "INVALID_CROSS_REFERENCE_KEY".into(), message: "no such user to act as".into() })
        });
    }
    Ok(found)
}

/// Reads the `SystemModstamp` of written records: the API's write results
/// do not carry it, and the engine keeps it as the version it wrote.
async fn stamps(http: &Http, sobject: &str, ids: &[String]) -> Result<HashMap<String, Timestamp>, ConnectorError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let select = [ID.to_owned(), SYSTEM_MODSTAMP.to_owned()];
    let normalised: Vec<String> = ids.iter().map(|i| query::normalise_id(i)).collect();
    // queryAll: a record deleted since the write still has its stamp.
    let rows = query::all_rows_of(http, &query::in_queries(&select, sobject, ID, &normalised, None), true).await?;
    let mut out = HashMap::new();
    for row in &rows {
        let (id, at) = records::id_and_stamp(row, sobject)?;
        out.insert(query::normalise_id(&id), at);
    }
    Ok(out)
}

/// Writes `writes` to `object`; one outcome per write, in order.
pub(crate) async fn write_people(
    http: &Http,
    object: CrmObject,
    writes: &[CrmWrite],
    bulk_threshold: usize,
) -> Result<Vec<WriteOutcome>, ConnectorError> {
    let sobject = writable_sobject(object)?;
    let mut done: Vec<(usize, Saved)> = Vec::with_capacity(writes.len());

    // Who each write is made as: the integration user, or a user's own login.
    let mut as_integration: Vec<(usize, &CrmWrite)> = Vec::new();
    let mut as_users: BTreeMap<&CrmId, Vec<(usize, &CrmWrite)>> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        match &w.act_as {
            None => as_integration.push((i, w)),
            Some(u) => as_users.entry(u).or_default().push((i, w)),
        }
    }

    if !as_users.is_empty() {
        if !http.can_act_as() {
            let refusal = WriteOutcome::Rejected {
                code: "ACT_AS_UNSUPPORTED".into(),
                message: "writing as another user needs the JWT bearer flow; this connection logs in with client credentials".into(),
            };
            done.extend(as_users.values().flatten().map(|(i, _)| (*i, Saved::Failed(refusal.clone()))));
        } else {
            let users: Vec<&CrmId> = as_users.keys().copied().collect();
            let names = usernames(http, &users).await?;
            for (user, items) in &as_users {
                match &names[*user] {
                    Err(refusal) => done.extend(items.iter().map(|(i, _)| (*i, Saved::Failed(refusal.clone())))),
                    Ok(username) => match collections(http, sobject, items, Some(username)).await {
                        Ok(saved) => done.extend(saved),
                        // The user may not log in (no API access, not
                        // approved for the app): their writes are refused.
                        Err(CallError::Login(o)) if o.error == "invalid_grant" => {
                            let refusal = act_as_refusal(&o.error_description);
                            done.extend(items.iter().map(|(i, _)| (*i, Saved::Failed(refusal.clone()))));
                        }
                        Err(e) => return Err(e.into()),
                    },
                }
            }
        }
    }

    if !as_integration.is_empty() {
        let (bulked, rest): (Vec<_>, Vec<_>) = if writes.len() >= bulk_threshold {
            // Creates without an external id cannot be matched to a Bulk
            // result row: they stay on collections.
            as_integration.into_iter().partition(|(_, w)| Mode::of(&w.target) != Mode::Create)
        } else {
            (Vec::new(), as_integration)
        };
        if !bulked.is_empty() {
            done.extend(bulk::write(http, sobject, &bulked).await?);
        }
        done.extend(collections(http, sobject, &rest, None).await?);
    }

    let written: Vec<String> = done
        .iter()
        .filter_map(|(_, s)| match s {
            Saved::Written { id, .. } => Some(id.clone()),
            Saved::Failed(_) => None,
        })
        .collect();
    let stamps = stamps(http, sobject, &written).await?;
    let gathered = done.into_iter().map(|(i, s)| {
        let outcome = match s {
            Saved::Written { id, created } => {
                let at = stamps.get(&query::normalise_id(&id)).copied().unwrap_or_else(|| {
                    tracing::warn!(object = sobject, "a written record's stamp could not be read back; using the local clock");
                    chrono::Utc::now()
                });
                WriteOutcome::Written { id, created, at }
            }
            Saved::Failed(outcome) => outcome,
        };
        (i, outcome)
    });
    crmsync_connector::outcomes_in_order(writes.len(), gathered)
}

#[cfg(test)]
mod tests {
    use crmsync_connector::FieldValues;
    use crmsync_wire::salesforce::SaveError;

    use super::*;

    fn write(target: CrmTarget) -> CrmWrite {
        let mut fields = FieldValues::new();
        fields.insert("LastName".into(), json!("O'Brien"));
        fields.insert("Title".into(), Value::Null);
        CrmWrite {
            target,
            fields,
            owner_id: Some(CrmId::parse("0055g000000AbCd").unwrap()),
            act_as: None,
            fence: Some(42),
            unmodified_since: None,
        }
    }

    #[test]
    fn bodies_carry_type_fields_owner_fence_and_key() {
        let upsert = body("Lead", &write(CrmTarget::ExternalId("ext-1".into())));
        assert_eq!(
            Value::Object(upsert),
            json!({
                "attributes": {"type": "Lead"},
                "LastName": "O'Brien",
                "Title": null,
                "OwnerId": CrmId::parse("0055g000000AbCd").unwrap().as_str(),
                "crmsync_Fence__c": 42,
                "crmsync_Id__c": "ext-1"
            })
        );
        let id = CrmId::parse("00Q5g00000AbCdE").unwrap();
        let update = body("Lead", &write(CrmTarget::Id(id.clone())));
        assert_eq!(update["Id"], json!(id.as_str()));
        assert!(!update.contains_key(EXTERNAL_ID_FIELD));
        let create = body("Contact", &write(CrmTarget::New));
        assert!(!create.contains_key("Id") && !create.contains_key(EXTERNAL_ID_FIELD));
        assert_eq!(Mode::of(&CrmTarget::New), Mode::Create);
    }

    fn failed(code: &str, message: &str) -> SaveResult {
        SaveResult {
            id: None,
            success: false,
            errors: vec![SaveError { status_code: code.into(), message: message.into(), fields: vec![] }],
            created: None,
        }
    }

    #[test]
    fn results_map_to_outcomes() {
        let ok = SaveResult { id: Some("00Q5g00000AbCdEEAA".into()), success: true, errors: vec![], created: Some(true) };
        assert_eq!(saved(&ok, Mode::Upsert), Saved::Written { id: "00Q5g00000AbCdEEAA".into(), created: true });
        let ok_update = SaveResult { created: None, ..ok };
        assert_eq!(saved(&ok_update, Mode::Update), Saved::Written { id: "00Q5g00000AbCdEEAA".into(), created: false });
        assert_eq!(saved(&ok_update, Mode::Create), Saved::Written { id: "00Q5g00000AbCdEEAA".into(), created: true });
        assert_eq!(
            saved(&failed(codes::FIELD_CUSTOM_VALIDATION_EXCEPTION, FENCE_MESSAGE), Mode::Update),
            Saved::Failed(WriteOutcome::Fenced)
        );
        assert_eq!(saved(&failed(codes::NOT_FOUND, "entity not found"), Mode::Update), Saved::Failed(WriteOutcome::NotFound));
        assert_eq!(saved(&failed(codes::ENTITY_IS_DELETED, "entity is deleted"), Mode::Upsert), Saved::Failed(WriteOutcome::NotFound));
        // Another validation rule is a plain rejection.
        assert_eq!(
            saved(&failed(codes::FIELD_CUSTOM_VALIDATION_EXCEPTION, "Phone must have 10 digits"), Mode::Update),
            Saved::Failed(WriteOutcome::Rejected {
                code: codes::FIELD_CUSTOM_VALIDATION_EXCEPTION.into(),
                message: "Phone must have 10 digits".into()
            })
        );
        assert_eq!(
            saved(&failed("REQUIRED_FIELD_MISSING", "Required fields are missing: [Company]"), Mode::Create),
            Saved::Failed(WriteOutcome::Rejected {
                code: "REQUIRED_FIELD_MISSING".into(),
                message: "Required fields are missing: [Company]".into()
            })
        );
    }

    #[test]
    fn refused_logins_as_a_user_become_rejections() {
        assert!(matches!(act_as_refusal("user is inactive"), WriteOutcome::Rejected { code, .. } if code == "INACTIVE_OWNER_OR_USER"));
        assert!(matches!(
            act_as_refusal("the user does not have the API Enabled permission"),
            WriteOutcome::Rejected { code, .. } if code == "API_DISABLED_FOR_USER"
        ));
        assert!(
            matches!(act_as_refusal("user hasn't approved this consumer"), WriteOutcome::Rejected { code, .. } if code == "INVALID_GRANT")
        );
    }
}
