//! The applier's unit of work: one [`ApplyBatch`] in; field behaviours
//! applied, targets written in batches, state, audit and errors stored.
//!
//! Per identity, under its Redis lock: merge the commands' edits into the
//! stored per-field versions (I3), plan the writes, write the CRM first (a
//! created lead's id is needed on the prospect), then the MA, each write fenced
//! with the lock's token so a paused applier that lost its lock cannot write
//! over a newer one. State is saved fenced with the same token. Identities
//! whose lock is busy, or whose write was fenced, wait for the next round.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorFactory, CrmWrite, MAX_WRITES_PER_CALL, ProspectWrite, Systems, WriteOutcome};
use crmsync_domain::matching::IdentityStatus;
use crmsync_domain::merge::Side;
use crmsync_domain::messages::{ApplyBatch, ApplyCommand};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject, SyncErrorCategory, SyncIssue};
use crmsync_infra::locks::{LockGuard, LockKind, Locks};
use crmsync_infra::worker::StageError;
use crmsync_store::audit::{self, AuditEntry};
use crmsync_store::identities::{self, Applied, Keys, Written};
use crmsync_store::sync_errors::{self, NewSyncError};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::plan::{self, CrmPlan, MaPlan, State};

/// The applier's dependencies.
#[derive(Debug, Clone)]
pub struct Applier {
    pub pool: PgPool,
    pub locks: Locks,
    pub factory: Arc<dyn ConnectorFactory>,
    pub lock_timeout: Duration,
}

/// One identity being applied, with the commands that concern it.
struct Work<'a> {
    commands: Vec<&'a ApplyCommand>,
    token: i64,
    state: Option<State>,
    crm: Option<CrmPlan>,
    ma: Option<MaPlan>,
    written: BTreeMap<&'static str, Vec<String>>,
    created: Option<&'static str>,
    /// Sync errors, reported against the record whose change led here.
    issues: Vec<SyncIssue>,
    retry: bool,
}

impl Work<'_> {
    fn issue(&mut self, category: SyncErrorCategory, reason: String) {
        self.issues.push(SyncIssue::new(category, reason));
    }
}

fn state_of(row: identities::IdentityRow) -> State {
    State {
        id: row.id,
        status: row.status(),
        prospect_id: row.prospect_id,
        crm: row.crm_object().zip(row.crm_id()),
        email: row.email.clone(),
        owner: row.owner_id.as_deref().and_then(|o| CrmId::parse(o).ok()),
        ma_link_written: row.ma_link_written,
        fields: row.fields.0,
    }
}

impl Applier {
    /// Applies every command of a batch.
    pub async fn process(&self, batch: &ApplyBatch) -> Result<(), StageError> {
        let settings =
            crmsync_store::connections::load(&self.pool, &batch.connection_id).await.map_err(|e| StageError::Retry(e.to_string()))?;
        let systems = self.factory.systems(&settings).await?;
        // Commands per identity, in arrival order.
        let mut by_identity: Vec<(Uuid, Vec<&ApplyCommand>)> = Vec::new();
        for c in &batch.commands {
            match by_identity.iter_mut().find(|(id, _)| *id == c.identity_id) {
                Some((_, list)) => list.push(c),
                None => by_identity.push((c.identity_id, vec![c])),
            }
        }
        let mut pending: Vec<usize> = (0..by_identity.len()).collect();
        let deadline = Instant::now() + self.lock_timeout;
        while !pending.is_empty() {
            let sets: Vec<Vec<String>> = pending
                .iter()
                .map(|&i| vec![self.locks.key(&batch.connection_id, LockKind::Identity, &by_identity[i].0.to_string())])
                .collect();
            let guards = self.locks.try_acquire(&sets).await?;
            let mut held: Vec<(usize, LockGuard)> = Vec::new();
            let mut missed = Vec::new();
            for (i, g) in pending.iter().copied().zip(guards) {
                match g {
                    Some(g) => held.push((i, g)),
                    None => missed.push(i),
                }
            }
            if !held.is_empty() {
                let result = self.apply_group(batch, &settings, &systems, &by_identity, &held).await;
                let guards: Vec<LockGuard> = held.iter().map(|(_, g)| g.clone()).collect();
                let released = self.locks.release(&guards).await;
                missed.extend(result?);
                released?;
            }
            pending = missed;
            if !pending.is_empty() {
                if Instant::now() > deadline {
                    return Err(StageError::Retry(format!("{} identities stayed locked or fenced", pending.len())));
                }
                let pause: u64 = rand::random_range(5..25);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        Ok(())
    }

    /// Applies the identities whose locks are held; returns the ones to retry.
    async fn apply_group(
        &self,
        batch: &ApplyBatch,
        settings: &ConnectionSettings,
        systems: &Systems,
        by_identity: &[(Uuid, Vec<&ApplyCommand>)],
        held: &[(usize, LockGuard)],
    ) -> Result<Vec<usize>, StageError> {
        let conn = batch.connection_id.as_str();
        let map = &settings.field_map;
        let ids: Vec<Uuid> = held.iter().map(|(i, _)| by_identity[*i].0).collect();
        let rows = identities::find(&self.pool, conn, &Keys { ids, ..Keys::default() }, true).await?;
        let mut rows: HashMap<Uuid, identities::IdentityRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let mut work: Vec<Work<'_>> = held
            .iter()
            .map(|(i, g)| {
                let (id, commands) = &by_identity[*i];
                let mut state = rows.remove(id).map(state_of);
                if let Some(s) = &mut state {
                    s.fields.observe_all(map, commands.iter().flat_map(|c| c.observations.iter()));
                }
                Work {
                    commands: commands.clone(),
                    token: g.token,
                    state,
                    crm: None,
                    ma: None,
                    written: BTreeMap::new(),
                    created: None,
                    issues: Vec::new(),
                    retry: false,
                }
            })
            .collect();

        // The CRM first: a created lead's id goes onto the prospect.
        for w in work.iter_mut() {
            if let Some(s) = &w.state {
                w.crm = plan::crm_write(s, map);
            }
        }
        self.write_crm(systems, &mut work).await?;
        for w in work.iter_mut().filter(|w| !w.retry) {
            let Some(s) = &w.state else { continue };
            match plan::ma_write(s, map) {
                Ok(p) => w.ma = p,
                Err(plan::MaPlanError::NoEmail) => {
                    w.issue(SyncErrorCategory::InvalidEmail, format!("identity {} has no valid email to create its prospect with", s.id));
                }
            }
        }
        self.write_ma(systems, &mut work).await?;
        self.save(batch, &mut work).await?;
        Ok(held.iter().zip(&work).filter(|(_, w)| w.retry).map(|((i, _), _)| *i).collect())
    }

    async fn write_crm(&self, systems: &Systems, work: &mut [Work<'_>]) -> Result<(), StageError> {
        for object in [CrmObject::Lead, CrmObject::Contact] {
            let idx: Vec<usize> =
                work.iter().enumerate().filter(|(_, w)| w.crm.as_ref().is_some_and(|p| p.object == object)).map(|(i, _)| i).collect();
            for chunk in idx.chunks(MAX_WRITES_PER_CALL) {
                let writes: Vec<CrmWrite> = chunk
                    .iter()
                    .map(|&i| {
                        let p = work[i].crm.as_ref().expect("filtered on plans");
                        CrmWrite {
                            target: p.target.clone(),
                            fields: p.fields.iter().map(|f| (f.api.clone(), f.value.clone())).collect(),
                            owner_id: p.owner.clone(),
                            fence: Some(work[i].token),
                        }
                    })
                    .collect();
                let outcomes = systems.crm.write_people(object, &writes).await?;
                for (&i, outcome) in chunk.iter().zip(outcomes) {
                    let w = &mut work[i];
                    let p = w.crm.take().expect("filtered on plans");
                    let s = w.state.as_mut().expect("planned identities have state");
                    let what = match (&p.target, &s.crm) {
                        (_, Some((_, id))) if !p.creates => format!("{object} {id}"),
                        _ => format!("a new {object}"),
                    };
                    match outcome {
                        WriteOutcome::Written { id, created, at } => {
                            for f in &p.fields {
                                s.fields.wrote(Side::Crm, &f.key, at, f.value.clone());
                            }
                            w.written.insert("crm", p.fields.iter().map(|f| f.key.clone()).collect());
                            if p.creates {
                                match CrmId::parse(&id) {
                                    Ok(new_id) => s.crm = Some((object, new_id)),
                                    Err(e) => return Err(StageError::Retry(format!("the CRM returned an unreadable id: {e}"))),
                                }
                                if s.prospect_id.is_some() {
                                    s.status = IdentityStatus::Linked;
                                }
                                if created {
                                    w.created = Some("created_lead");
                                }
                            }
                        }
                        WriteOutcome::Rejected { code, message } => {
                            w.issue(SyncErrorCategory::TargetRejected, format!("CRM refused writing {what}: {code}: {message}"));
                        }
                        WriteOutcome::Fenced => w.retry = true,
                        WriteOutcome::NotFound => {
                            w.issue(SyncErrorCategory::CrmRecordNotFound, format!("the linked CRM {what} no longer exists"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn write_ma(&self, systems: &Systems, work: &mut [Work<'_>]) -> Result<(), StageError> {
        let idx: Vec<usize> = work.iter().enumerate().filter(|(_, w)| w.ma.is_some() && !w.retry).map(|(i, _)| i).collect();
        for chunk in idx.chunks(MAX_WRITES_PER_CALL) {
            let writes: Vec<ProspectWrite> = chunk
                .iter()
                .map(|&i| {
                    let p = work[i].ma.as_ref().expect("filtered on plans");
                    ProspectWrite {
                        target: p.target.clone(),
                        fields: p.fields.iter().map(|f| (f.api.clone(), f.value.clone())).collect(),
                        crm_link: p.link.clone(),
                        fence: Some(work[i].token),
                    }
                })
                .collect();
            let outcomes = systems.ma.write_prospects(&writes).await?;
            for (&i, outcome) in chunk.iter().zip(outcomes) {
                let w = &mut work[i];
                let p = w.ma.take().expect("filtered on plans");
                let s = w.state.as_mut().expect("planned identities have state");
                let record = s.prospect_id.map_or_else(|| s.id.to_string(), |p| p.to_string());
                match outcome {
                    WriteOutcome::Written { id, created, at } => {
                        for f in &p.fields {
                            s.fields.wrote(Side::Ma, &f.key, at, f.value.clone());
                        }
                        if !p.fields.is_empty() {
                            w.written.insert("ma", p.fields.iter().map(|f| f.key.clone()).collect());
                        }
                        if p.link.is_some() {
                            s.ma_link_written = true;
                        }
                        if p.creates {
                            s.prospect_id = id.parse().ok();
                            s.status = IdentityStatus::Linked;
                            if created {
                                w.created = Some("created_prospect");
                            }
                        }
                    }
                    WriteOutcome::Rejected { code, message } => {
                        w.issue(SyncErrorCategory::TargetRejected, format!("MA refused writing prospect {record}: {code}: {message}"));
                    }
                    WriteOutcome::Fenced => w.retry = true,
                    WriteOutcome::NotFound => {
                        w.issue(SyncErrorCategory::CrmRecordNotFound, format!("the linked prospect {record} no longer exists"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Saves state, audit and errors of the identities that are done, in one
    /// transaction. An identity fenced at this point is retried.
    async fn save(&self, batch: &ApplyBatch, work: &mut [Work<'_>]) -> Result<(), StageError> {
        let conn = batch.connection_id.as_str();
        let lane = batch.lane.as_str();
        let mut tx = self.pool.begin().await?;
        let mut audits = Vec::new();
        let mut errors = Vec::new();
        let mut resolved = Vec::new();
        for w in work.iter_mut().filter(|w| !w.retry) {
            let action = match &w.state {
                None => "identity_missing".to_owned(),
                Some(s) => {
                    let applied = Applied {
                        id: s.id,
                        status: s.status,
                        prospect_id: s.prospect_id,
                        crm: s.crm.clone(),
                        fields: s.fields.clone(),
                        ma_link_written: s.ma_link_written,
                    };
                    match identities::save_applied(&mut *tx, conn, &applied, w.token).await? {
                        Written::Done => {}
                        Written::Fenced => {
                            w.retry = true;
                            continue;
                        }
                        Written::Conflict => {
                            w.issues.push(SyncIssue::new(
                                SyncErrorCategory::DuplicateRecord,
                                format!("identity {} would share its prospect or CRM record with another identity", s.id),
                            ));
                        }
                    }
                    if !w.issues.is_empty() {
                        "rejected".to_owned()
                    } else if let Some(created) = w.created {
                        created.to_owned()
                    } else if !w.written.is_empty() {
                        "updated".to_owned()
                    } else if s.status == IdentityStatus::PendingAssignment {
                        "pending".to_owned()
                    } else {
                        "no_change".to_owned()
                    }
                }
            };
            let detail = (!w.issues.is_empty()).then(|| w.issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
            for c in &w.commands {
                audits.push(AuditEntry {
                    change_id: c.command_id,
                    stage: "apply",
                    identity_id: Some(c.identity_id),
                    source_side: c.source.side.as_str(),
                    source_object: c.source.object.clone(),
                    source_id: c.source.id.clone(),
                    action: action.clone(),
                    writes: json!(w.written),
                    detail: detail.clone(),
                    lane,
                });
                if w.issues.is_empty() {
                    resolved.push((c.source.object.clone(), c.source.id.clone()));
                }
            }
            if let Some(first) = w.commands.first() {
                errors.extend(w.issues.drain(..).map(|issue| NewSyncError {
                    stage: "apply",
                    object: first.source.object.clone(),
                    record_id: first.source.id.clone(),
                    issue,
                    change_id: Some(first.command_id),
                    payload: serde_json::to_value(first).ok(),
                }));
            }
        }
        sync_errors::resolve(&mut *tx, conn, "apply", &resolved).await?;
        sync_errors::record_many(&mut *tx, conn, &errors).await?;
        audit::insert_many(&mut *tx, conn, &audits).await?;
        tx.commit().await?;
        Ok(())
    }
}
