//! Writing CSQLs to the CRM (R9), as the matcher decided.
//!
//! Each CSQL is handled under its own Redis lock, in three steps whose order
//! makes a redelivery harmless: the CRM upsert by crmsync's external id for
//! the CSQL (a retried create finds the record the first attempt made), then
//! the link saved in PostgreSQL with the outcome and the last user edit it
//! covers, then the outcome reported on the CSQL for its CSM to see. The link
//! is the commit point: a message whose CSQL edit it already covers is passed
//! over (an older snapshot never overwrites a newer one, I3), apart from
//! reporting the link's outcome on the CSQL again, in case the earlier
//! attempt died before it did. Saving the link before the report also means
//! the producer, reading the report's change, always finds the link that says
//! it is no edit.
//!
//! A refused sync (`logged_in` and a CSM without API access) and a write the
//! CRM rejects are both kept: the CSQL stays in the CS platform marked
//! `rejected` with the reason, and an open sync error says the same; saving
//! the CSQL again (by a permitted CSM) syncs it.

use crmsync_connector::{CrmTarget, CrmWrite, CsApi, CsqlStatus, FieldValues, Systems, WriteOutcome};
use crmsync_domain::csql::CsqlRecordType;
use crmsync_domain::messages::{ApplyBatch, CsqlCommand, CsqlOutcome};
use crmsync_domain::records::SourceRecord;
use crmsync_domain::{CrmId, CrmObject, SyncErrorCategory, SyncIssue};
use crmsync_infra::locks::LockKind;
use crmsync_infra::propagation::RecordSpans;
use crmsync_infra::worker::StageError;
use crmsync_store::audit::{self, AuditEntry};
use crmsync_store::csql_links::{self, Synced};
use crmsync_store::sync_errors::{self, NewSyncError};
use serde_json::{Value, json};
use tracing::info;

use crate::process::Applier;

/// The CRM field that remembers which CSM created a CSQL.
pub const CREATED_BY_FIELD: &str = "CSQL_Created_By__c";

fn crm_object(kind: CsqlRecordType) -> CrmObject {
    match kind {
        CsqlRecordType::Lead => CrmObject::Lead,
        CsqlRecordType::Opportunity => CrmObject::Opportunity,
    }
}

/// What applying one CSQL came to.
struct Applied {
    /// `synced`, `refused` (not permitted) or `rejected` (by the CRM).
    outcome: &'static str,
    action: &'static str,
    crm_id: Option<String>,
    issue: Option<SyncIssue>,
}

impl Applier {
    /// Applies a batch's CSQL commands in order, each under its lock.
    pub(crate) async fn apply_csqls(&self, batch: &ApplyBatch, systems: &Systems, spans: &RecordSpans) -> Result<(), StageError> {
        if batch.csqls.is_empty() {
            return Ok(());
        }
        let Some(cs) = systems.cs.as_deref() else {
            // Settings changed under the message: wait until they say again
            // where the CS platform is, rather than drop the CSQLs.
            return Err(StageError::Retry("CSQLs to apply but the connection names no CS platform".into()));
        };
        for command in &batch.csqls {
            let key = self.locks.key(&batch.connection_id, LockKind::Csql, &command.record.external_id());
            let Some(guard) = self.locks.acquire_within(&key, self.lock_timeout).await? else {
                return Err(StageError::Retry(format!("CSQL {} stayed locked", command.record.external_id())));
            };
            let result = self.apply_csql(batch, systems, cs, command, guard.token).await;
            self.locks.release(&[guard]).await?;
            let action = result?;
            spans.outcome(
                &command.command_id,
                action,
                if matches!(action, "csql_refused" | "csql_rejected") { "rejected" } else { "applied" },
            );
        }
        Ok(())
    }

    async fn apply_csql(
        &self,
        batch: &ApplyBatch,
        systems: &Systems,
        cs: &dyn CsApi,
        command: &CsqlCommand,
        fence: i64,
    ) -> Result<&'static str, StageError> {
        let conn = batch.connection_id.as_str();
        let r = &command.record;
        let kind = r.record_type.as_str();
        let edit = r.last_user_edit(cs.integration_user());
        let link = csql_links::find(&self.pool, conn, kind, &[r.id]).await?.pop();
        if let Some(l) = &link
            && l.seen_edit_at.is_some()
            && l.seen_edit_at >= edit
        {
            // A redelivery, or a snapshot older than the one applied. The
            // report on the CSQL may be what the earlier attempt did not
            // finish: it is written again from the link.
            let status = CsqlStatus {
                id: r.id,
                status: if l.outcome == "synced" { "synced" } else { "rejected" },
                crm_id: l.crm_id.clone(),
                error: l.error.clone(),
                fence: Some(fence),
            };
            cs.write_csql_status(r.record_type, &[status]).await?;
            audit::insert_many(&self.pool, conn, &[csql_audit(batch, command, "csql_unchanged", json!({}), None)]).await?;
            return Ok("csql_unchanged");
        }
        let applied = match &command.decision {
            CsqlOutcome::Refuse { issue } => {
                Applied { outcome: "refused", action: "csql_refused", crm_id: None, issue: Some(issue.clone()) }
            }
            CsqlOutcome::Sync { act_as, owner, created_by } => {
                let mut fields: FieldValues = r.crm_values().into_iter().collect();
                fields.insert(CREATED_BY_FIELD.into(), Value::String(created_by.clone()));
                // No CSM to act as: the CS platform's own CRM user writes it.
                let act_as = act_as.clone().or_else(|| CrmId::parse(cs.crm_integration_user()).ok());
                let write = CrmWrite {
                    target: CrmTarget::ExternalId(r.external_id()),
                    fields,
                    owner_id: owner.clone(),
                    act_as,
                    fence: Some(fence),
                    // Written whole from the CSQL, never merged field by field.
                    unmodified_since: None,
                };
                let object = crm_object(r.record_type);
                match systems.crm.write_people(object, &[write]).await?.pop() {
                    Some(WriteOutcome::Written { id, created, .. }) => Applied {
                        outcome: "synced",
                        action: if created { "csql_created" } else { "csql_updated" },
                        crm_id: Some(id),
                        issue: None,
                    },
                    Some(WriteOutcome::Rejected { code, message }) => Applied {
                        outcome: "rejected",
                        action: "csql_rejected",
                        crm_id: None,
                        issue: Some(SyncIssue::new(
                            SyncErrorCategory::of_rejection(&code, &message),
                            format!(
                                "the CRM refused the {object} for CSQL {}: {code}: {message}. The CSQL is kept in the CS platform; \
                                 saving it again retries.",
                                r.id
                            ),
                        )),
                    },
                    Some(WriteOutcome::Fenced) => {
                        return Err(StageError::Retry(format!("the CRM record of CSQL {} was written by a newer holder", r.id)));
                    }
                    Some(WriteOutcome::NotFound) | None => {
                        return Err(StageError::Retry(format!("the CRM returned no outcome for CSQL {}", r.id)));
                    }
                }
            }
        };
        let object = SourceRecord::Csql(r.clone()).object().to_owned();
        let mut tx = self.pool.begin().await?;
        let saved = csql_links::save(
            &mut *tx,
            conn,
            &Synced {
                record_type: kind,
                cs_id: r.id,
                crm_object: applied.crm_id.as_ref().map(|_| crm_object(r.record_type).as_str()),
                crm_id: applied.crm_id.as_deref(),
                outcome: applied.outcome,
                error: applied.issue.as_ref().map(|i| i.reason.as_str()),
                seen_edit_at: edit,
            },
            fence,
        )
        .await?;
        if !saved {
            return Err(StageError::Retry(format!("CSQL {} was saved by a newer holder", r.id)));
        }
        match &applied.issue {
            Some(issue) => {
                let error = NewSyncError {
                    stage: "apply",
                    object,
                    record_id: r.id.to_string(),
                    issue: issue.clone(),
                    change_id: Some(command.command_id),
                    payload: serde_json::to_value(command).ok(),
                };
                sync_errors::record_many(&mut *tx, conn, &[error]).await?;
            }
            None => {
                sync_errors::resolve(&mut *tx, conn, "apply", &[(object, r.id.to_string())]).await?;
            }
        }
        let writes = match &applied.crm_id {
            Some(id) => json!({ "crm": [format!("{} {id}", crm_object(r.record_type))] }),
            None => json!({}),
        };
        let detail = applied.issue.as_ref().map(ToString::to_string);
        audit::insert_many(&mut *tx, conn, &[csql_audit(batch, command, applied.action, writes, detail)]).await?;
        tx.commit().await?;
        // Tell the CSM. Fenced means a newer holder already reported; a
        // failure here is retried, and the retry reports from the link.
        let status = CsqlStatus {
            id: r.id,
            status: if applied.outcome == "synced" { "synced" } else { "rejected" },
            crm_id: applied.crm_id.clone(),
            error: applied.issue.as_ref().map(|i| i.reason.clone()),
            fence: Some(fence),
        };
        cs.write_csql_status(r.record_type, &[status]).await?;
        info!(csql = r.id, record_type = kind, outcome = applied.outcome, crm_id = applied.crm_id.as_deref(), "CSQL applied");
        Ok(applied.action)
    }
}

fn csql_audit(batch: &ApplyBatch, c: &CsqlCommand, action: &str, writes: Value, detail: Option<String>) -> AuditEntry {
    let record = SourceRecord::Csql(c.record.clone());
    AuditEntry {
        change_id: c.command_id,
        stage: "apply",
        identity_id: None,
        source_side: record.system(),
        source_object: record.object().to_owned(),
        source_id: record.record_id(),
        action: action.to_owned(),
        writes,
        detail,
        lane: batch.lane.as_str(),
        field_values: None,
        trace_id: c.trace.as_ref().and_then(|t| t.trace_id()).map(str::to_owned),
    }
}
