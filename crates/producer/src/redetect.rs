//! Detecting records again on an operator's request (`crmsync errors
//! retry`): each record's *current* state is read from its source system and
//! published to the matcher like a change the producer found, so a retried
//! record goes through the normal pipeline: matching, locks, fencing, per-
//! field versions, audit, and a new sync error if it fails again.

use crmsync_connector::Systems;
use crmsync_domain::records::SourceRecord;
use crmsync_domain::{CrmId, Lane};
use crmsync_infra::broker::Broker;
use crmsync_infra::propagation::RecordSpans;
use crmsync_infra::worker::StageError;

use crate::pass::change_messages;

/// A record to detect again, as a sync error names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordName {
    pub object: String,
    pub id: String,
}

/// What became of the records asked for.
#[derive(Debug, Default)]
pub struct Redetected {
    /// Published to the matcher, confirmed.
    pub published: Vec<RecordName>,
    /// No longer in their source (deleted for good): nothing to retry.
    pub gone: Vec<RecordName>,
    /// Objects that cannot be read again, with why.
    pub unsupported: Vec<(RecordName, String)>,
}

/// Reads `records` from their sources and publishes them in `lane`,
/// `per_message` records a message, confirmed by the broker.
pub async fn redetect(
    broker: &Broker,
    systems: &Systems,
    connection_id: &str,
    records: &[RecordName],
    lane: Lane,
    per_message: usize,
) -> Result<Redetected, StageError> {
    let mut out = Redetected::default();
    let mut prospects = Vec::new();
    let mut people = Vec::new();
    let mut csqls: Vec<(crmsync_domain::csql::CsqlRecordType, i64, &RecordName)> = Vec::new();
    for r in records {
        let numeric = r.id.parse::<i64>();
        match (r.object.as_str(), numeric) {
            ("prospect", Ok(id)) => prospects.push((id, r)),
            ("lead" | "contact", _) => match CrmId::parse(&r.id) {
                Ok(id) => people.push((id, r)),
                Err(e) => out.unsupported.push((r.clone(), format!("not a CRM id: {e}"))),
            },
            ("csql_lead", Ok(id)) => csqls.push((crmsync_domain::csql::CsqlRecordType::Lead, id, r)),
            ("csql_opportunity", Ok(id)) => csqls.push((crmsync_domain::csql::CsqlRecordType::Opportunity, id, r)),
            (object, _) => out.unsupported.push((r.clone(), format!("a {object} cannot be read again from its source"))),
        }
    }
    let mut found: Vec<SourceRecord> = Vec::new();
    let ids: Vec<i64> = prospects.iter().map(|(id, _)| *id).collect();
    let read = if ids.is_empty() { Vec::new() } else { systems.ma.prospects_by_id(&ids).await? };
    for (id, name) in &prospects {
        match read.iter().find(|p| p.id == *id) {
            Some(p) => found.push(SourceRecord::Prospect(p.clone())),
            None => out.gone.push((*name).clone()),
        }
    }
    let ids: Vec<CrmId> = people.iter().map(|(id, _)| id.clone()).collect();
    let read = if ids.is_empty() { Vec::new() } else { systems.crm.people_by_id(&ids).await? };
    for (id, name) in &people {
        match read.iter().find(|p| CrmId::parse(&p.id).is_ok_and(|i| i == *id)) {
            Some(p) => found.push(SourceRecord::Crm(p.clone())),
            None => out.gone.push((*name).clone()),
        }
    }
    for kind in [crmsync_domain::csql::CsqlRecordType::Lead, crmsync_domain::csql::CsqlRecordType::Opportunity] {
        let of_kind: Vec<&(_, i64, &RecordName)> = csqls.iter().filter(|(k, _, _)| *k == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let Some(cs) = &systems.cs else {
            for (_, _, name) in of_kind {
                out.unsupported.push(((*name).clone(), "the connection has no CS platform".into()));
            }
            continue;
        };
        let ids: Vec<i64> = of_kind.iter().map(|(_, id, _)| *id).collect();
        let read = cs.csqls_by_id(kind, &ids).await?;
        for (_, id, name) in of_kind {
            match read.iter().find(|c| c.id == *id) {
                Some(c) => found.push(SourceRecord::Csql(c.clone())),
                None => out.gone.push((*name).clone()),
            }
        }
    }
    if found.is_empty() {
        return Ok(out);
    }
    let mut spans = RecordSpans::default();
    let messages = change_messages(connection_id, &found, lane, per_message, &mut spans);
    let published = broker.publish_confirmed(messages).await;
    spans.outcome_all("redetected", if published.is_ok() { "published" } else { "retry" });
    published?;
    out.published = found.iter().map(|r| RecordName { object: r.object().to_owned(), id: r.record_id() }).collect();
    Ok(out)
}
