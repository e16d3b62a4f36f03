//! Prospect writes, one request per prospect (v5 has no batch write):
//! `PATCH /prospects/{id}` by id, `POST .../do/upsertLatestByEmail` for the
//! engine's creates (a retried create updates the prospect the first
//! attempt made instead of making a second), a plain `POST` for `New`.
//! They run concurrently up to the connector's limit, except that writes to
//! the same prospect run one after the other in batch order (as the
//! sandbox applies a batch), and each gets its outcome, in order; a refusal
//! is that write's outcome, the others go on.
//!
//! The fencing token travels in [`FENCE_FIELD`], the CRM link in
//! `salesforceLeadId`/`salesforceContactId`. Moving a prospect to or from
//! the recycle bin (the engine's `isDeleted`, which v5 does not let a
//! write set) is `DELETE` or `do/undelete`: a recycle is made after the
//! fenced `PATCH`, so a stale writer is refused before it moves anything;
//! a restore before it (v5 does not update a prospect in the recycle bin).

use crmsync_connector::{ConnectorError, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_connector_kit::row::{Row, stamp};
use crmsync_connector_kit::{Answer, Call, EndpointKind};
use crmsync_domain::CrmObject;
use crmsync_wire::pardot::{FENCE_FIELD, PROSPECTS_PATH, UpsertLatestByEmail};
use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::{Map, Value};

use crate::errors::refusal;
use crate::fields::{CONTACT_ID, CREATED_AT, ID, IS_DELETED, LEAD_ID, UPDATED_AT};
use crate::http::{CallError, Http};
use crate::records::id_and_stamp;

/// What a write asks the API to return.
const RETURNED: [&str; 3] = [ID, CREATED_AT, UPDATED_AT];

/// The body of a write: its fields (without `isDeleted`), the fence, the link.
pub(crate) fn body(w: &ProspectWrite) -> Map<String, Value> {
    let mut b: Map<String, Value> =
        w.fields.iter().filter(|(k, _)| k.as_str() != IS_DELETED).map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(fence) = w.fence {
        b.insert(FENCE_FIELD.into(), Value::from(fence));
    }
    if let Some((object, id)) = &w.crm_link {
        let field = if *object == CrmObject::Contact { CONTACT_ID } else { LEAD_ID };
        b.insert(field.into(), Value::String(id.to_string()));
    }
    b
}

/// The engine's recycle-bin move, if the write asks for one.
fn recycle(w: &ProspectWrite) -> Option<bool> {
    w.fields.get(IS_DELETED).and_then(Value::as_bool)
}

/// A written prospect as the answer shows it. `created` when the request
/// says; otherwise (an upsert answers 200 either way) a prospect whose
/// creation is its last save was created by it.
pub(crate) fn written(answer: &Answer, created: Option<bool>) -> Result<WriteOutcome, ConnectorError> {
    let row: Row = answer.json()?;
    let (id, at) = id_and_stamp(&row)?;
    let created = created.unwrap_or_else(|| stamp(&row, CREATED_AT) == Some(at));
    Ok(WriteOutcome::Written { id: id.to_string(), created, at })
}

/// Which prospect a write goes to, for keeping writes to one in order
/// (`None`: a plain create, which goes to a prospect of its own).
fn target_key(w: &ProspectWrite) -> Option<String> {
    match &w.target {
        ProspectTarget::Id(id) => Some(format!("id:{id}")),
        ProspectTarget::UpsertByEmail(e) => Some(format!("email:{}", e.as_str())),
        ProspectTarget::New => None,
    }
}

/// The writes in groups that must run in order: one group per prospect,
/// in the order each prospect first appears; writes as indices.
pub(crate) fn groups(writes: &[ProspectWrite]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut by_key: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        match target_key(w) {
            Some(k) => match by_key.get(&k) {
                Some(&g) => out[g].push(i),
                None => {
                    by_key.insert(k, out.len());
                    out.push(vec![i]);
                }
            },
            None => out.push(vec![i]),
        }
    }
    out
}

/// A refusal on the merits is the write's outcome; anything else fails the call.
fn settle(result: Result<WriteOutcome, CallError>) -> Result<WriteOutcome, ConnectorError> {
    match result {
        Ok(o) => Ok(o),
        Err(CallError::Api(f)) => Ok(refusal(&f)),
        Err(e) => Err(e.into()),
    }
}

fn fields_param() -> String {
    RETURNED.join(",")
}

async fn by_id(http: &Http, id: i64, w: &ProspectWrite) -> Result<WriteOutcome, CallError> {
    let path = format!("{PROSPECTS_PATH}/{id}");
    let recycle = recycle(w);
    if recycle == Some(false) {
        http.send(&Call::new(EndpointKind::Write, Method::POST, format!("{path}/do/undelete")).query("fields", fields_param())).await?;
    }
    let answer = http
        .send(&Call::new(EndpointKind::Write, Method::PATCH, &path).query("fields", fields_param()).json(Value::Object(body(w))))
        .await?;
    if recycle != Some(true) {
        return Ok(written(&answer, Some(false))?);
    }
    http.send(&Call::new(EndpointKind::Write, Method::DELETE, &path)).await?;
    // A delete answers 204 without a body: its stamp is read back.
    let back = http.send(&Call::get(EndpointKind::Query, &path).query("fields", fields_param())).await?;
    Ok(written(&back, Some(false))?)
}

async fn one(http: &Http, w: &ProspectWrite) -> Result<WriteOutcome, ConnectorError> {
    let result = match &w.target {
        ProspectTarget::Id(id) => by_id(http, *id, w).await,
        ProspectTarget::UpsertByEmail(email) => {
            let req = UpsertLatestByEmail {
                match_email: email.to_string(),
                prospect: body(w),
                fields: RETURNED.iter().map(|f| (*f).to_owned()).collect(),
            };
            let req = serde_json::to_value(&req).map_err(|e| ConnectorError::Fatal(format!("cannot encode the prospect: {e}")))?;
            let call = Call::new(EndpointKind::Write, Method::POST, format!("{PROSPECTS_PATH}/do/upsertLatestByEmail")).json(req);
            async { Ok(written(&http.send(&call).await?, None)?) }.await
        }
        ProspectTarget::New => {
            // A plain create: only resent if it certainly was not processed.
            let call = Call::new(EndpointKind::Write, Method::POST, PROSPECTS_PATH)
                .query("fields", fields_param())
                .json(Value::Object(body(w)))
                .not_idempotent();
            async { Ok(written(&http.send(&call).await?, Some(true))?) }.await
        }
    };
    settle(result)
}

/// Writes `writes`, up to `at_once` at a time; one outcome each, in order.
pub(crate) async fn write_prospects(http: &Http, writes: &[ProspectWrite], at_once: usize) -> Result<Vec<WriteOutcome>, ConnectorError> {
    if writes.iter().any(|w| recycle(w).is_some() && !matches!(w.target, ProspectTarget::Id(_))) {
        return Err(ConnectorError::Fatal("a prospect is moved to or from the recycle bin by id only".into()));
    }
    // The futures are made first: a stream of borrowing closures trips the
    // `Send` check of the trait's boxed future.
    let each: Vec<_> = groups(writes)
        .into_iter()
        .map(|group| async move {
            let mut done = Vec::with_capacity(group.len());
            for i in group {
                done.push((i, one(http, &writes[i]).await?));
            }
            Ok::<_, ConnectorError>(done)
        })
        .collect();
    let done: Vec<Vec<(usize, WriteOutcome)>> = futures::stream::iter(each).buffer_unordered(at_once).try_collect().await?;
    crmsync_connector::outcomes_in_order(writes.len(), done.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use crmsync_connector::FieldValues;
    use crmsync_domain::CrmId;
    use serde_json::json;

    use super::*;

    /// A fenced write of a blank job title and an apostrophe, linked to a lead.
    fn write(target: ProspectTarget) -> ProspectWrite {
        let fields: FieldValues = serde_json::from_value(json!({"lastName": "O'Brien", "jobTitle": null})).unwrap();
        let lead = CrmId::parse("00Q5g00000AbCdE").unwrap();
        ProspectWrite { target, fields, crm_link: Some((CrmObject::Lead, lead)), fence: Some(42), unmodified_since: None }
    }

    #[test]
    fn bodies_carry_fields_fence_and_link_but_never_the_recycle_flag() {
        let mut w = write(ProspectTarget::Id(7));
        w.fields.insert("isDeleted".into(), json!(true));
        assert_eq!(
            Value::Object(body(&w)),
            json!({
                "lastName": "O'Brien",
                "jobTitle": null,
                "crmsync_fence__c": 42,
                "salesforceLeadId": CrmId::parse("00Q5g00000AbCdE").unwrap().as_str()
            })
        );
        assert_eq!(recycle(&w), Some(true));
        let contact =
            ProspectWrite { crm_link: Some((CrmObject::Contact, CrmId::parse("0035g00000AbCdE").unwrap())), ..write(ProspectTarget::New) };
        assert!(body(&contact).contains_key("salesforceContactId"));
        assert_eq!(recycle(&contact), None);
    }

    fn answer(body: Value) -> Answer {
        Answer::new("Account Engagement", serde_json::to_vec(&body).unwrap(), chrono::Utc::now())
    }

    #[test]
    fn an_answer_says_whether_the_write_created_the_prospect() {
        let updated = answer(json!({"id": 5, "createdAt": "2024-05-01T10:00:00.000Z", "updatedAt": "2024-05-01T10:20:30.123Z"}));
        assert!(matches!(written(&updated, None).unwrap(), WriteOutcome::Written { id, created: false, .. } if id == "5"));
        let made = answer(json!({"id": 6, "createdAt": "2024-05-01T10:20:30.123Z", "updatedAt": "2024-05-01T10:20:30.123Z"}));
        assert!(matches!(written(&made, None).unwrap(), WriteOutcome::Written { created: true, .. }), "an upsert that created");
        assert!(matches!(written(&made, Some(false)).unwrap(), WriteOutcome::Written { created: false, .. }), "a write by id");
        assert!(written(&answer(json!({"id": 6})), None).is_err());
    }

    #[test]
    fn writes_to_one_prospect_keep_their_order_and_others_run_alongside() {
        let email = |e: &str| write(ProspectTarget::UpsertByEmail(crmsync_domain::Email::parse(e).unwrap()));
        let writes = [
            write(ProspectTarget::Id(1)),
            write(ProspectTarget::Id(2)),
            write(ProspectTarget::New),
            email("a@example.com"),
            write(ProspectTarget::Id(1)),
            email("A@Example.com "),
            write(ProspectTarget::New),
        ];
        assert_eq!(groups(&writes), [vec![0, 4], vec![1], vec![2], vec![3, 5], vec![6]]);
    }

    #[test]
    fn refusals_on_the_merits_are_outcomes_and_the_rest_errors() {
        let f = crate::errors::AeFailure { status: 400, code: Some(25), message: "country: too long".into() };
        assert_eq!(
            settle(Err(CallError::Api(f))).unwrap(),
            WriteOutcome::Rejected { code: "25".into(), message: "country: too long".into() }
        );
        let e = settle(Err(CallError::Connector(ConnectorError::Transient("busy".into())))).unwrap_err();
        assert_eq!(e, ConnectorError::Transient("busy".into()));
    }
}
