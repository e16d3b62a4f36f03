//! The applier's unit of work: one [`ApplyBatch`] in; field behaviours
//! applied, targets written in batches, state, audit and errors stored,
//! mirrors reconciled, CSQLs written (see `csql`).
//!
//! Per identity, under its Redis lock: merge the commands' edits into the
//! stored per-field versions (I3), plan the writes, write the CRM first (a
//! created lead's id is needed on the prospect), then the MA, each write fenced
//! with the lock's token so a paused applier that lost its lock cannot write
//! over a newer one. State is saved fenced with the same token, together with
//! the mirrors the change affects (an outbox, reconciled right after).
//! Identities whose lock is busy, or whose write was fenced, wait for the next
//! round.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorFactory, CrmWrite, MAX_WRITES_PER_CALL, ProspectWrite, Systems, WriteOutcome};
use crmsync_domain::matching::IdentityStatus;
use crmsync_domain::merge::Side;
use crmsync_domain::messages::{ApplyBatch, ApplyCommand, Seen};
use crmsync_domain::mirror::MirrorKey;
use crmsync_domain::records::SourceRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject, Lane, SyncErrorCategory, SyncIssue};
use crmsync_infra::locks::{LockGuard, LockKind, Locks, pause_before_retry};
use crmsync_infra::propagation::{RecordSpans, RecordStage, record_span};
use crmsync_infra::telemetry::redact;
use crmsync_infra::worker::StageError;
use crmsync_store::audit::{self, AuditEntry};
use crmsync_store::identities::{self, Applied, Keys, Written};
use crmsync_store::mirror_outbox;
use crmsync_store::sync_errors::{self, NewSyncError};
use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::warn;
use uuid::Uuid;

use crate::mirrors::Reconciler;
use crate::plan::{self, CrmPlan, MaPlan, State};

/// The applier's dependencies.
#[derive(Debug, Clone)]
pub struct Applier {
    pub pool: PgPool,
    pub locks: Locks,
    pub factory: Arc<dyn ConnectorFactory>,
    pub lock_timeout: Duration,
}

/// The CRM record the mirrors should show this identity linked to, if any.
fn mirror_view(s: &State) -> Option<String> {
    (s.status == IdentityStatus::Linked).then(|| s.crm.as_ref().map(|(_, c)| c.to_string())).flatten()
}

/// One identity being applied, with the commands that concern it.
struct Work<'a> {
    commands: Vec<&'a ApplyCommand>,
    token: i64,
    state: Option<State>,
    /// What the mirrors showed this identity linked to when last reconciled.
    mirrored: Option<String>,
    crm: Option<CrmPlan>,
    ma: Option<MaPlan>,
    written: BTreeMap<&'static str, Vec<String>>,
    /// Per side written: field -> [the value the engine knew it held, the
    /// value written], for the record's history.
    values: BTreeMap<&'static str, serde_json::Map<String, Value>>,
    /// Per command: the edits it carried that were news, field -> [known
    /// before, seen].
    detected: Vec<Option<Value>>,
    created: Option<&'static str>,
    /// Sync errors, reported against the record whose change led here.
    issues: Vec<SyncIssue>,
    /// The contact moved to another account.
    account_moved: bool,
    /// The normalised email the identity should be keyed by from now on.
    email_move: Option<String>,
    email_guard: Option<LockGuard>,
    /// The CRM refused a write to a converted lead: follow it to its contact.
    converted_lead: bool,
    /// Try again in the next round (without saving).
    retry: bool,
    /// Save, then go round once more (the CRM side changed under us).
    again: bool,
    /// The CRM record's and the prospect's stamps as read just before
    /// writing (`refresh`), or as the commands saw them: each write is
    /// conditional on them.
    seen_crm: Option<chrono::DateTime<chrono::Utc>>,
    seen_ma: Option<chrono::DateTime<chrono::Utc>>,
    /// The records the commands saw, on their first round only: a later
    /// round may follow this applier's own writes, which moved the stamps.
    seen: Seen,
}

/// The commands of one identity in a batch.
struct Commands<'a> {
    identity: Uuid,
    commands: Vec<&'a ApplyCommand>,
    /// Applied in an earlier round already (fenced, or sent round again).
    tried: bool,
}

impl Work<'_> {
    /// The stamp at which the commands saw the record this identity is
    /// linked to on `side`, if they saw it (and it is still the linked one).
    fn seen_at(&self, side: Side) -> Option<chrono::DateTime<chrono::Utc>> {
        let s = self.state.as_ref()?;
        let id = match side {
            Side::Crm => s.crm.as_ref()?.1.to_string(),
            Side::Ma => s.prospect_id?.to_string(),
        };
        self.seen.of(side, &id)
    }

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
        ma_recycled: row.ma_recycled,
        crm_account_id: row.crm_account_id.clone(),
        fields: row.fields,
    }
}

/// What a group of identities left to do after it was saved.
#[derive(Debug, Default)]
struct GroupResult {
    retry: Vec<usize>,
    mirrors: Vec<String>,
}

impl Applier {
    /// Applies every command of a batch, then reconciles the mirrors the
    /// batch asks for and the ones its identity changes affect. Each record
    /// is applied under an `apply` span in its own trace (I5).
    pub async fn process(&self, batch: &ApplyBatch) -> Result<(), StageError> {
        let mut spans = RecordSpans::default();
        let conn = batch.connection_id.as_str();
        for c in &batch.commands {
            let span = record_span(RecordStage::Apply, conn, &c.source.object, &c.source.id, batch.lane, c.trace.as_ref());
            spans.insert(c.command_id, span);
        }
        for m in &batch.mirrors {
            let span = record_span(RecordStage::Apply, conn, &m.source.object, &m.source.id, batch.lane, m.trace.as_ref());
            spans.insert(m.command_id, span);
        }
        for q in &batch.csqls {
            let record = SourceRecord::Csql(q.record.clone());
            let span = record_span(RecordStage::Apply, conn, record.object(), &record.record_id(), batch.lane, q.trace.as_ref());
            spans.insert(q.command_id, span);
        }
        // Its reads and writes are the lane's calls, against the API
        // allowance (I8): the batch lane stops at 90% of it.
        let result = crmsync_connector::lane::in_lane(batch.lane, self.apply_all(batch, &spans)).await;
        if result.is_err() {
            spans.outcome_all("apply", "retry");
        }
        result
    }

    async fn apply_all(&self, batch: &ApplyBatch, spans: &RecordSpans) -> Result<(), StageError> {
        let settings = crmsync_store::connections::load_running(&self.pool, &batch.connection_id)
            .await
            .map_err(|e| StageError::of_connection(e.is_unknown(), e.is_paused(), e.to_string()))?;
        let systems = self.factory.systems(&batch.connection_id, &settings).await?;
        // Commands per identity, in arrival order.
        let mut by_identity: Vec<Commands<'_>> = Vec::new();
        // Found by id: a batch-lane chunk holds thousands of identities.
        let mut position: HashMap<Uuid, usize> = HashMap::new();
        for c in &batch.commands {
            match position.get(&c.identity_id) {
                Some(&i) => by_identity[i].commands.push(c),
                None => {
                    position.insert(c.identity_id, by_identity.len());
                    by_identity.push(Commands { identity: c.identity_id, commands: vec![c], tried: false });
                }
            }
        }
        let mut outbox: Vec<String> = Vec::new();
        let mut pending: Vec<usize> = (0..by_identity.len()).collect();
        let deadline = Instant::now() + self.lock_timeout;
        while !pending.is_empty() {
            let sets: Vec<Vec<String>> = pending
                .iter()
                .map(|&i| vec![self.locks.key(&batch.connection_id, LockKind::Identity, &by_identity[i].identity.to_string())])
                .collect();
            let (held, mut missed) = self.locks.partition(&pending, &sets).await?;
            if !held.is_empty() {
                let result = self.apply_group(batch, &settings, &systems, &by_identity, &held, spans).await;
                for (i, _) in &held {
                    by_identity[*i].tried = true;
                }
                let guards: Vec<LockGuard> = held.iter().map(|(_, g)| g.clone()).collect();
                let released = self.locks.release(&guards).await;
                let group = result?;
                released?;
                missed.extend(group.retry);
                outbox.extend(group.mirrors);
            }
            pending = missed;
            if !pending.is_empty() && pause_before_retry(deadline).await.is_err() {
                return Err(StageError::Retry(format!("{} identities stayed locked or fenced", pending.len())));
            }
        }
        let reconciler = Reconciler {
            pool: &self.pool,
            locks: &self.locks,
            systems: &systems,
            settings: &settings,
            connection_id: &batch.connection_id,
            lock_timeout: self.lock_timeout,
        };
        // Identity changes: their mirrors are queued durably; a failure here
        // leaves them to the outbox sweeper instead of failing the message.
        if !outbox.is_empty() {
            let entries = mirror_outbox::entries(&self.pool, &batch.connection_id, &outbox).await?;
            let keys: Vec<MirrorKey> = entries.iter().filter_map(|e| MirrorKey::parse(&e.key)).collect();
            match reconciler.run(&keys).await {
                Ok(_) => mirror_outbox::done(&self.pool, &entries).await?,
                Err(e) => warn!(error = %redact(&e.to_string()), "mirror reconciliation deferred to the outbox sweeper"),
            }
        }
        // Mirror commands from the CRM's changes: the message carries them.
        if !batch.mirrors.is_empty() {
            let keys: Vec<MirrorKey> = batch.mirrors.iter().map(|m| m.key.clone()).collect();
            let outcomes: HashMap<MirrorKey, &'static str> =
                reconciler.run(&keys).await?.into_iter().map(|(k, o)| (k, o.as_str())).collect();
            let audits: Vec<AuditEntry> = batch
                .mirrors
                .iter()
                .map(|m| AuditEntry {
                    change_id: m.command_id,
                    stage: "apply",
                    identity_id: None,
                    source_side: m.source.side.as_str(),
                    source_object: m.source.object.clone(),
                    source_id: m.source.id.clone(),
                    action: outcomes.get(&m.key).copied().unwrap_or("mirrored").to_owned(),
                    writes: json!({}),
                    detail: Some(m.key.text()),
                    lane: batch.lane.as_str(),
                    field_values: None,
                    trace_id: m.trace.as_ref().and_then(|t| t.trace_id()).map(str::to_owned),
                })
                .collect();
            audit::insert_many(&self.pool, &batch.connection_id, &audits).await?;
            trace_outcomes(spans, &audits);
        }
        // CSQLs to the CRM (R9).
        self.apply_csqls(batch, &systems, spans).await?;
        let now = chrono::Utc::now();
        for detected in batch.commands.iter().map(|c| c.detected_at).chain(batch.csqls.iter().map(|q| q.detected_at)) {
            let lag = (now - detected).to_std().unwrap_or_default().as_secs_f64();
            metrics::histogram!(crmsync_infra::metrics::SYNC_LAG, "connection" => batch.connection_id.clone()).record(lag);
        }
        Ok(())
    }

    /// Applies the identities whose locks are held.
    async fn apply_group(
        &self,
        batch: &ApplyBatch,
        settings: &ConnectionSettings,
        systems: &Systems,
        by_identity: &[Commands<'_>],
        held: &[(usize, LockGuard)],
        spans: &RecordSpans,
    ) -> Result<GroupResult, StageError> {
        let conn = batch.connection_id.as_str();
        let map = &settings.field_map;
        let ids: Vec<Uuid> = held.iter().map(|(i, _)| by_identity[*i].identity).collect();
        let rows = identities::find(&self.pool, conn, &Keys { ids, ..Keys::default() }, identities::State::All).await?;
        let mut rows: HashMap<Uuid, identities::IdentityRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let mut work: Vec<Work<'_>> = held
            .iter()
            .map(|(i, g)| {
                let Commands { identity: id, commands, tried } = &by_identity[*i];
                let row = rows.remove(id);
                let mirrored = row.as_ref().and_then(|r| r.mirror_crm_id.clone());
                let mut state = row.map(state_of);
                let mut account_moved = false;
                let mut email_move = None;
                let detected = commands.iter().map(|c| state.as_ref().and_then(|s| detected_values(&s.fields, c))).collect();
                if let Some(s) = &mut state {
                    s.fields.observe_all(map, commands.iter().flat_map(|c| c.observations.iter()));
                    // A contact's account, as its latest change says (R4).
                    let own = s.crm.as_ref().map(|(_, c)| c.to_string());
                    for c in commands.iter().filter(|c| c.source.object == "contact" && Some(&c.source.id) == own.as_ref()) {
                        if c.account_id != s.crm_account_id {
                            s.crm_account_id.clone_from(&c.account_id);
                            account_moved = true;
                        }
                    }
                    email_move = s.fields.desired_email(map).map(|e| e.to_string()).filter(|e| s.email.as_deref() != Some(e.as_str()));
                }
                Work {
                    commands: commands.clone(),
                    token: g.token,
                    state,
                    mirrored,
                    crm: None,
                    ma: None,
                    written: BTreeMap::new(),
                    values: BTreeMap::new(),
                    detected,
                    created: None,
                    issues: Vec::new(),
                    account_moved,
                    email_move,
                    email_guard: None,
                    converted_lead: false,
                    retry: false,
                    again: false,
                    seen_crm: None,
                    seen_ma: None,
                    seen: if *tried { Seen::default() } else { commands.iter().fold(Seen::default(), |s, c| s.or_later(c.seen.clone())) },
                }
            })
            .collect();

        // The CRM first: a created lead's id goes onto the prospect.
        let placeholder = settings.lead_placeholder.as_deref();
        plan_crm_writes(&mut work, map, placeholder);
        if self.refresh(systems, map, &mut work, Side::Crm).await? > 0 {
            plan_crm_writes(&mut work, map, placeholder);
        }
        self.write_crm(systems, batch.lane, &mut work).await?;
        self.follow_conversions(systems, &mut work).await?;
        plan_ma_writes(&mut work, map, true);
        if self.refresh(systems, map, &mut work, Side::Ma).await? > 0 {
            plan_ma_writes(&mut work, map, false);
        }
        self.write_ma(systems, batch.lane, &mut work).await?;
        self.lock_email_moves(conn, &mut work).await?;
        let saved = self.save(batch, settings, &mut work, spans).await;
        let guards: Vec<LockGuard> = work.iter_mut().filter_map(|w| w.email_guard.take()).collect();
        self.locks.release(&guards).await?;
        let mirrors = saved?;
        let retry = held.iter().zip(&work).filter(|(_, w)| w.retry || w.again).map(|((i, _), _)| *i).collect();
        Ok(GroupResult { retry, mirrors })
    }

    /// Reads again, just before writing, the records about to be updated on
    /// `side`, and merges the user edits made there since the engine last
    /// saw them (I3). Without this, an edit made on the target after the
    /// change being applied was detected, but before its write, would be
    /// overwritten by the older value, and then never synced at all: its
    /// record now reads as last changed by the engine, so it is taken for an
    /// echo. Under the identity's lock, so no other writer of the engine
    /// moves the record meanwhile; a user edit landing between this read and
    /// the write is the window left (milliseconds, against the seconds a
    /// change spends between detection and write under load or an outage).
    /// Returns how many identities learnt something, so the caller plans
    /// again; an identity that learnt from the MA goes round once more, as
    /// its CRM write is already done. Creates are not read: there is nothing
    /// there yet. Nor, where the target makes writes conditional, is a
    /// record the identity's commands read (see `Seen`) on their first
    /// round: the state holds all it held then, and the write, conditional
    /// on its stamp, is refused if a user edited it since; the retry reads
    /// it. A backfill's commands saw both records at the link, so its
    /// writes need no reads at all. Where writes are not conditional (the
    /// MA over v5), the records seen are passed with their stamps and the
    /// connector returns only those changed since, listing them in a few
    /// calls rather than reading each.
    async fn refresh(
        &self,
        systems: &Systems,
        map: &crmsync_domain::mapping::FieldMap,
        work: &mut [Work<'_>],
        side: Side,
    ) -> Result<usize, StageError> {
        let updates = |w: &Work<'_>| match side {
            Side::Crm => w.crm.as_ref().is_some_and(|p| !p.creates),
            Side::Ma => w.ma.as_ref().is_some_and(|p| !p.creates),
        };
        let conditional = systems.writes_conditionally(side);
        let mut idx: Vec<usize> = Vec::new();
        for (i, w) in work.iter_mut().enumerate().filter(|(_, w)| !w.retry && updates(w)) {
            // Seen by this identity's commands, whose edits are merged
            // already: the write is made conditional on that stamp instead.
            match w.seen_at(side).filter(|_| conditional) {
                Some(at) => match side {
                    Side::Crm => w.seen_crm = Some(at),
                    Side::Ma => w.seen_ma = Some(at),
                },
                None => idx.push(i),
            }
        }
        if idx.is_empty() {
            return Ok(0);
        }
        let mut fresh: HashMap<usize, SourceRecord> = HashMap::new();
        match side {
            Side::Crm => {
                let ids: Vec<CrmId> = idx.iter().filter_map(|&i| work[i].state.as_ref()?.crm.as_ref().map(|(_, id)| id.clone())).collect();
                // Keyed by id: a batch-lane chunk holds up to 10,000 records.
                let mut records: HashMap<CrmId, _> =
                    systems.crm.people_by_id(&ids).await?.into_iter().filter_map(|r| CrmId::parse(&r.id).ok().map(|id| (id, r))).collect();
                for &i in &idx {
                    let Some((_, id)) = work[i].state.as_ref().and_then(|s| s.crm.as_ref()) else { continue };
                    if let Some(r) = records.remove(id) {
                        fresh.insert(i, SourceRecord::Crm(r));
                    }
                }
            }
            Side::Ma => {
                // Each prospect with the stamp its commands saw it at (first
                // round only): one unchanged since holds nothing the state
                // lacks, so the connector may leave it out and read only the
                // changed ones (v5 lists them in a call or two).
                let seen: Vec<(i64, Option<chrono::DateTime<chrono::Utc>>)> =
                    idx.iter().filter_map(|&i| work[i].state.as_ref()?.prospect_id.map(|p| (p, work[i].seen_at(Side::Ma)))).collect();
                let mut records: HashMap<i64, _> =
                    systems.ma.prospects_changed_since(&seen).await?.into_iter().map(|r| (r.id, r)).collect();
                for &i in &idx {
                    let Some(id) = work[i].state.as_ref().and_then(|s| s.prospect_id) else { continue };
                    if let Some(r) = records.remove(&id) {
                        fresh.insert(i, SourceRecord::Prospect(r));
                    }
                }
            }
        }
        let me = systems.integration_user(side);
        let mut learnt = 0;
        for (i, record) in fresh {
            // The write is made conditional on the record as read now.
            match &record {
                SourceRecord::Crm(r) => work[i].seen_crm = Some(r.system_modstamp),
                SourceRecord::Prospect(p) => work[i].seen_ma = Some(p.updated_at),
                SourceRecord::Mirror(_) | SourceRecord::Csql(_) => {}
            }
            let w = &mut work[i];
            let Some(s) = w.state.as_mut() else { continue };
            if s.fields.observe_all(map, &record.observations(map, Some(me))) > 0 {
                learnt += 1;
                // The CRM was written already this round: what the MA
                // taught must reach it in another. It must not wait for the
                // edit's own change, which would now read as known (an echo).
                if side == Side::Ma {
                    w.again = true;
                }
            }
        }
        if learnt > 0 {
            tracing::debug!(side = ?side, identities = learnt, "edits made on the target since detection merged before writing");
        }
        Ok(learnt)
    }

    /// Writes the planned CRM records. The batch lane hands its whole chunk
    /// (already paced by the budget) to the connector in one call, so a
    /// large one can become a Bulk job; the immediate lane writes calls of
    /// at most 200.
    async fn write_crm(&self, systems: &Systems, lane: Lane, work: &mut [Work<'_>]) -> Result<(), StageError> {
        for object in [CrmObject::Lead, CrmObject::Contact] {
            let idx: Vec<usize> =
                work.iter().enumerate().filter(|(_, w)| w.crm.as_ref().is_some_and(|p| p.object == object)).map(|(i, _)| i).collect();
            let per_call = if lane == Lane::Batch { idx.len().max(1) } else { MAX_WRITES_PER_CALL };
            for chunk in idx.chunks(per_call) {
                let writes: Vec<CrmWrite> = chunk
                    .iter()
                    .map(|&i| {
                        let p = work[i].crm.as_ref().expect("filtered on plans");
                        CrmWrite {
                            target: p.target.clone(),
                            fields: p.fields.iter().map(|f| (f.api.clone(), f.value.clone())).collect(),
                            owner_id: p.owner.clone(),
                            act_as: None,
                            fence: Some(work[i].token),
                            unmodified_since: work[i].seen_crm,
                        }
                    })
                    .collect();
                let outcomes = match lane {
                    Lane::Batch => systems.crm.write_people_in_bulk(object, &writes).await?,
                    Lane::Immediate => systems.crm.write_people(object, &writes).await?,
                };
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
                            let values = w.values.entry("crm").or_default();
                            for f in &p.fields {
                                values.insert(f.key.clone(), json!([s.fields.known(Side::Crm, &f.key), f.value]));
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
                        // Converted since the identity was read: never write
                        // to it; follow the conversion instead (R8).
                        WriteOutcome::Rejected { code, .. } if code == "CANNOT_UPDATE_CONVERTED_LEAD" => w.converted_lead = true,
                        WriteOutcome::Rejected { code, message } => {
                            let category = SyncErrorCategory::of_rejection(&code, &message);
                            w.issue(category, format!("CRM refused writing {what}: {code}: {message}"));
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

    /// Re-links identities whose lead turned out to be converted to the
    /// contact it became; their CRM writes are redone there next round.
    async fn follow_conversions(&self, systems: &Systems, work: &mut [Work<'_>]) -> Result<(), StageError> {
        let leads: Vec<CrmId> =
            work.iter().filter(|w| w.converted_lead).filter_map(|w| w.state.as_ref()?.crm.as_ref().map(|(_, c)| c.clone())).collect();
        if leads.is_empty() {
            return Ok(());
        }
        let found = systems.crm.people_by_id(&leads).await?;
        for w in work.iter_mut().filter(|w| w.converted_lead) {
            let s = w.state.as_mut().expect("converted leads come from planned identities");
            let lead = s.crm.as_ref().map(|(_, c)| c.to_string());
            let contact = found
                .iter()
                .find(|r| Some(&r.id) == lead.as_ref())
                .and_then(|r| r.converted_contact_id.as_deref())
                .and_then(|c| CrmId::parse(c).ok());
            match contact {
                Some(c) => {
                    s.crm = Some((CrmObject::Contact, c));
                    s.fields.forget_known(Side::Crm);
                    s.ma_link_written = false;
                    w.again = true;
                }
                None => w.retry = true,
            }
        }
        Ok(())
    }

    /// Writes the planned prospects: like the CRM's, the batch lane's
    /// whole chunk in one call (a large one can become an import), the
    /// immediate lane's in calls of at most 200.
    async fn write_ma(&self, systems: &Systems, lane: Lane, work: &mut [Work<'_>]) -> Result<(), StageError> {
        let idx: Vec<usize> = work.iter().enumerate().filter(|(_, w)| w.ma.is_some() && !w.retry).map(|(i, _)| i).collect();
        let per_call = if lane == Lane::Batch { idx.len().max(1) } else { MAX_WRITES_PER_CALL };
        for chunk in idx.chunks(per_call) {
            let writes: Vec<ProspectWrite> = chunk
                .iter()
                .map(|&i| {
                    let p = work[i].ma.as_ref().expect("filtered on plans");
                    let mut fields: crmsync_connector::FieldValues = p.fields.iter().map(|f| (f.api.clone(), f.value.clone())).collect();
                    if let Some(r) = p.recycle {
                        fields.insert("isDeleted".into(), r.into());
                    }
                    ProspectWrite {
                        target: p.target.clone(),
                        fields,
                        crm_link: p.link.clone(),
                        fence: Some(work[i].token),
                        unmodified_since: work[i].seen_ma,
                    }
                })
                .collect();
            let outcomes = match lane {
                Lane::Batch => systems.ma.write_prospects_in_bulk(&writes).await?,
                Lane::Immediate => systems.ma.write_prospects(&writes).await?,
            };
            for (&i, outcome) in chunk.iter().zip(outcomes) {
                let w = &mut work[i];
                let p = w.ma.take().expect("filtered on plans");
                let s = w.state.as_mut().expect("planned identities have state");
                let record = s.prospect_id.map_or_else(|| s.id.to_string(), |p| p.to_string());
                match outcome {
                    WriteOutcome::Written { id, created, at } => {
                        let values = w.values.entry("ma").or_default();
                        for f in &p.fields {
                            values.insert(f.key.clone(), json!([s.fields.known(Side::Ma, &f.key), f.value]));
                            s.fields.wrote(Side::Ma, &f.key, at, f.value.clone());
                        }
                        if !p.fields.is_empty() {
                            w.written.insert("ma", p.fields.iter().map(|f| f.key.clone()).collect());
                        }
                        if p.link.is_some() {
                            s.ma_link_written = true;
                        }
                        if let Some(r) = p.recycle {
                            s.ma_recycled = r;
                            w.created = Some(if r { "recycled" } else { "restored" });
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
                        let category = SyncErrorCategory::of_rejection(&code, &message);
                        w.issue(category, format!("MA refused writing prospect {record}: {code}: {message}"));
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

    /// An identity whose email changed (R8) is re-keyed under the locks of
    /// both its old and its new email, so no matcher decides on either
    /// meanwhile. Busy locks send the identity round again.
    async fn lock_email_moves(&self, conn: &str, work: &mut [Work<'_>]) -> Result<(), StageError> {
        let idx: Vec<usize> = work.iter().enumerate().filter(|(_, w)| !w.retry && w.email_move.is_some()).map(|(i, _)| i).collect();
        if idx.is_empty() {
            return Ok(());
        }
        let sets: Vec<Vec<String>> = idx
            .iter()
            .map(|&i| {
                let w = &work[i];
                let old = w.state.as_ref().and_then(|s| s.email.clone());
                old.iter().chain(w.email_move.iter()).map(|e| self.locks.key(conn, LockKind::Email, e)).collect()
            })
            .collect();
        for (&i, guard) in idx.iter().zip(self.locks.try_acquire(&sets).await?) {
            match guard {
                Some(g) => work[i].email_guard = Some(g),
                None => work[i].retry = true,
            }
        }
        Ok(())
    }

    /// Saves one identity under a savepoint, so that a refused save does not
    /// abort the others in the transaction. An email move onto an email that
    /// already keys another identity keeps the old key and says so: two
    /// people are never merged.
    /// `moved_from` holds the email the identity had before a move.
    async fn save_one(
        &self,
        tx: &mut sqlx::PgConnection,
        conn: &str,
        token: i64,
        s: &mut State,
        moved_from: Option<Option<String>>,
        issues: &mut Vec<SyncIssue>,
    ) -> Result<Written, StageError> {
        sqlx::query("SAVEPOINT identity").execute(&mut *tx).await?;
        let mut written = identities::save_applied(&mut *tx, conn, &applied_of(s), token).await?;
        if written == Written::Conflict {
            sqlx::query("ROLLBACK TO SAVEPOINT identity").execute(&mut *tx).await?;
        }
        if written == Written::Conflict
            && let Some(old_email) = moved_from
        {
            issues.push(SyncIssue::new(
                SyncErrorCategory::DuplicateRecord,
                format!("identity {}: its new email already belongs to another synced person; the old one still keys it", s.id),
            ));
            s.email = old_email;
            written = identities::save_applied(&mut *tx, conn, &applied_of(s), token).await?;
            if written == Written::Conflict {
                sqlx::query("ROLLBACK TO SAVEPOINT identity").execute(&mut *tx).await?;
            }
        }
        sqlx::query("RELEASE SAVEPOINT identity").execute(&mut *tx).await?;
        Ok(written)
    }

    /// Saves state, audit, errors and queued mirrors of the identities that
    /// are done, in one transaction; returns the mirror keys queued.
    async fn save(
        &self,
        batch: &ApplyBatch,
        settings: &ConnectionSettings,
        work: &mut [Work<'_>],
        spans: &RecordSpans,
    ) -> Result<Vec<String>, StageError> {
        let conn = batch.connection_id.as_str();
        let lane = batch.lane.as_str();
        let mut tx = self.pool.begin().await?;
        let mut audits = Vec::new();
        let mut errors = Vec::new();
        let mut resolved = Vec::new();
        let mut mirrors: Vec<String> = Vec::new();
        // Every identity in one statement; only when a unique index refuses
        // one of them (an email move onto another person's) are they saved
        // one by one, under savepoints, to find which and say so.
        // Email moves first, so the statement stores the new key; the old
        // one is kept for the fallback.
        let mut moved_from: HashMap<Uuid, Option<String>> = HashMap::new();
        for w in work.iter_mut().filter(|w| !w.retry) {
            if let (Some(s), Some(e)) = (&mut w.state, &w.email_move) {
                moved_from.insert(s.id, s.email.replace(e.clone()));
            }
        }
        let together: Vec<(Applied<'_>, i64)> =
            work.iter().filter(|w| !w.retry).filter_map(|w| Some((applied_of(w.state.as_ref()?), w.token))).collect();
        let stored_together = identities::save_applied_many(&mut tx, conn, &together).await?;
        for w in work.iter_mut().filter(|w| !w.retry) {
            let action = match &mut w.state {
                None => "identity_missing".to_owned(),
                Some(s) => {
                    let written = match &stored_together {
                        Some(stored) if stored.contains(&s.id) => Written::Done,
                        Some(_) => Written::Fenced,
                        None => self.save_one(&mut tx, conn, w.token, s, moved_from.remove(&s.id), &mut w.issues).await?,
                    };
                    match written {
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
                    // Mirrors follow a changed link (R4-R6), whoever changed it.
                    let now = mirror_view(s);
                    // Only people with mirrors are queued: a backfill links
                    // thousands of leads, and each key cost the outbox three
                    // statements to find nothing to reconcile.
                    if now != w.mirrored || w.account_moved {
                        let people = w.mirrored.iter().chain(now.iter()).filter_map(|c| CrmId::parse(c).ok());
                        for id in people.filter(|id| settings.person_has_mirrors(id.object())) {
                            let key = MirrorKey::Person { id }.text();
                            if !mirrors.contains(&key) {
                                mirrors.push(key);
                            }
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
            for (c, detected) in w.commands.iter().zip(&w.detected) {
                let mut field_values = serde_json::Map::new();
                if let Some(d) = detected {
                    field_values.insert("detected".into(), d.clone());
                }
                for (side, values) in w.values.iter().filter(|(_, v)| !v.is_empty()) {
                    field_values.insert((*side).into(), Value::Object(values.clone()));
                }
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
                    field_values: (!field_values.is_empty()).then_some(Value::Object(field_values)),
                    trace_id: c.trace.as_ref().and_then(|t| t.trace_id()).map(str::to_owned),
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
        mirror_outbox::enqueue(&mut *tx, conn, &mirrors).await?;
        tx.commit().await?;
        trace_outcomes(spans, &audits);
        Ok(mirrors)
    }
}

/// What the applier stores of an identity's state.
fn applied_of(s: &State) -> Applied<'_> {
    Applied {
        id: s.id,
        status: s.status,
        prospect_id: s.prospect_id,
        crm: s.crm.clone(),
        fields: &s.fields,
        ma_link_written: s.ma_link_written,
        ma_recycled: s.ma_recycled,
        email: s.email.clone(),
        crm_account_id: s.crm_account_id.clone(),
        mirror_crm_id: mirror_view(s),
    }
}

/// Plans each identity's CRM write.
fn plan_crm_writes(work: &mut [Work<'_>], map: &crmsync_domain::mapping::FieldMap, placeholder: Option<&str>) {
    for w in work.iter_mut() {
        if let Some(s) = &w.state {
            w.crm = plan::crm_write(s, map, placeholder);
        }
    }
}

/// Plans each identity's MA write; `report` raises the sync error of an
/// identity that has no email to create its prospect with (once, on the
/// first planning of a round).
fn plan_ma_writes(work: &mut [Work<'_>], map: &crmsync_domain::mapping::FieldMap, report: bool) {
    for w in work.iter_mut().filter(|w| !w.retry) {
        let Some(s) = &w.state else { continue };
        match plan::ma_write(s, map) {
            Ok(p) => w.ma = p,
            Err(plan::MaPlanError::NoEmail) if report => {
                let reason = format!("identity {} has no valid email to create its prospect with", s.id);
                w.issue(SyncErrorCategory::InvalidEmail, reason);
            }
            Err(plan::MaPlanError::NoEmail) => {}
        }
    }
}

/// Records on each record's span what was done with it, as audited.
/// The edits a command carried that differ from what the engine knew the
/// source side held: field -> [before, seen]. `None` when there are none.
fn detected_values(fields: &crmsync_domain::merge::IdentityFields, c: &ApplyCommand) -> Option<Value> {
    let news: serde_json::Map<String, Value> = c
        .observations
        .iter()
        .filter_map(|o| {
            let before = fields.known(o.side, &o.field);
            (!crmsync_domain::merge::same_value(&before, &o.value)).then(|| (o.field.clone(), json!([before, o.value])))
        })
        .collect();
    (!news.is_empty()).then_some(Value::Object(news))
}

pub(crate) fn trace_outcomes(spans: &RecordSpans, audits: &[AuditEntry]) {
    for a in audits {
        let outcome = match a.action.as_str() {
            "rejected" | "identity_missing" | "csql_refused" | "csql_rejected" => "rejected",
            _ => "applied",
        };
        spans.outcome(&a.change_id, &a.action, outcome);
    }
}

impl Applier {
    /// Reconciles outbox entries left behind (a replica died, or its
    /// reconciliation failed). Returns how many were done.
    pub async fn sweep_outbox(&self, older_than: Duration) -> Result<usize, StageError> {
        let entries = mirror_outbox::stale(&self.pool, older_than.as_millis() as i64, 200).await?;
        let mut by_connection: BTreeMap<String, Vec<mirror_outbox::Queued>> = BTreeMap::new();
        for e in entries {
            by_connection.entry(e.connection_id.clone()).or_default().push(e);
        }
        let mut done = 0;
        for (connection_id, entries) in by_connection {
            let settings = match crmsync_store::connections::load_running(&self.pool, &connection_id).await {
                Ok(s) => s,
                // A paused connection's reconciliations wait for its
                // resume; the other connections' go on.
                Err(e) if e.is_paused() => continue,
                Err(e) => return Err(StageError::of_connection(e.is_unknown(), false, e.to_string())),
            };
            let systems = self.factory.systems(&connection_id, &settings).await?;
            let reconciler = Reconciler {
                pool: &self.pool,
                locks: &self.locks,
                systems: &systems,
                settings: &settings,
                connection_id: &connection_id,
                lock_timeout: self.lock_timeout,
            };
            let keys: Vec<MirrorKey> = entries.iter().filter_map(|e| MirrorKey::parse(&e.key)).collect();
            reconciler.run(&keys).await?;
            mirror_outbox::done(&self.pool, &entries).await?;
            done += entries.len();
        }
        Ok(done)
    }
}
