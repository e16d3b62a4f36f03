//! The matcher's unit of work: one [`ChangeBatch`] in, identity decisions
//! made and stored, one [`ApplyBatch`] of commands out.
//!
//! Each record is matched under a Redis lock on its keys (prospect id, CRM
//! id, normalised email), taken all-or-nothing. Facts are gathered for all
//! records holding their locks at once (one identity query, one CRM look-up
//! by email, one MA look-up by email), the pure rules decide, and the
//! decisions are written fenced by the lock's token. Records whose locks are
//! busy wait for the next round; the message is acked only after the commands
//! are confirmed by the broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorFactory, Systems};
use crmsync_domain::csql::{CsqlDecision, decide_csql};
use crmsync_domain::echo::worth_publishing;
use crmsync_domain::mapping::EMAIL_FIELD;
use crmsync_domain::matching::{
    CrmCandidate, CrmFacts, Decision, IdentityPatch, ProspectFacts, SkipReason, decide_crm, decide_prospect, prospect_needs_crm_lookup,
};
use crmsync_domain::merge::{IdentityFields, Observation, Side};
use crmsync_domain::messages::{ApplyCommand, Change, ChangeBatch, CsqlCommand, CsqlOutcome, MirrorCommand, RecordRef, Seen};
use crmsync_domain::records::{CrmPersonRecord, ProspectRecord, SourceRecord};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, Email, SyncErrorCategory, SyncIssue};
use crmsync_infra::locks::{LockGuard, LockKind, Locks, pause_before_retry};
use crmsync_infra::propagation::{RecordSpans, RecordStage, record_span};
use crmsync_infra::worker::StageError;
use crmsync_store::audit::AuditEntry;
use crmsync_store::identities::{self, IdentityRow, Keys, NewIdentity, Written};
use crmsync_store::sync_errors::NewSyncError;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::parse::{Candidate, Refusal, mirror_key, parse};

/// What one message produced, to be stored and published.
#[derive(Debug, Default)]
pub struct Output {
    pub commands: Vec<ApplyCommand>,
    /// Mirrors to reconcile (R4-R6).
    pub mirrors: Vec<MirrorCommand>,
    /// CSQLs to write to the CRM or report as refused (R9).
    pub csqls: Vec<CsqlCommand>,
    pub errors: Vec<NewSyncError>,
    pub audits: Vec<AuditEntry>,
    /// Records matched cleanly: their open match-stage errors are resolved.
    pub resolved: Vec<(String, String)>,
}

impl Output {
    fn reject(&mut self, record: &SourceRecord, change_id: Uuid, issue: SyncIssue, lane: &'static str) {
        self.audits.push(audit(record, change_id, None, format!("rejected:{}", issue.category), lane));
        self.note(record, change_id, issue);
    }

    fn skip(&mut self, record: &SourceRecord, change_id: Uuid, reason: SkipReason, lane: &'static str) {
        self.audits.push(audit(record, change_id, None, format!("skipped:{}", reason.as_str()), lane));
    }

    fn note(&mut self, record: &SourceRecord, change_id: Uuid, issue: SyncIssue) {
        self.errors.push(NewSyncError {
            stage: "match",
            object: record.object().to_owned(),
            record_id: record.record_id(),
            issue,
            change_id: Some(change_id),
            payload: serde_json::to_value(record).ok(),
        });
    }
}

fn audit(record: &SourceRecord, change_id: Uuid, identity: Option<Uuid>, action: String, lane: &'static str) -> AuditEntry {
    AuditEntry {
        change_id,
        stage: "match",
        identity_id: identity,
        source_side: record.system(),
        source_object: record.object().to_owned(),
        source_id: record.record_id(),
        action,
        writes: json!({}),
        detail: None,
        lane,
        field_values: None,
        // Filled in from the record's span when the stage stores it.
        trace_id: None,
    }
}

/// The matcher's dependencies.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub pool: PgPool,
    pub locks: Locks,
    pub factory: Arc<dyn ConnectorFactory>,
    pub lock_timeout: Duration,
}

/// Identity rows of a group, by each of their keys.
#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<Uuid, IdentityRow>,
    by_prospect: HashMap<i64, Uuid>,
    by_crm: HashMap<String, Uuid>,
    by_email: HashMap<String, Uuid>,
}

impl Index {
    fn new(rows: Vec<IdentityRow>) -> Self {
        let mut ix = Index::default();
        for r in rows {
            if let Some(p) = r.prospect_id {
                ix.by_prospect.insert(p, r.id);
            }
            if let Some(c) = &r.crm_id {
                ix.by_crm.insert(c.clone(), r.id);
            }
            if let Some(e) = &r.email {
                ix.by_email.insert(e.clone(), r.id);
            }
            ix.by_id.insert(r.id, r);
        }
        ix
    }
    fn get(&self, id: Option<&Uuid>) -> Option<&IdentityRow> {
        id.and_then(|i| self.by_id.get(i))
    }
    fn prospect(&self, id: i64) -> Option<&IdentityRow> {
        self.get(self.by_prospect.get(&id))
    }
    fn crm(&self, id: &CrmId) -> Option<&IdentityRow> {
        self.get(self.by_crm.get(id.as_str()))
    }
    fn email(&self, e: &Email) -> Option<&IdentityRow> {
        self.get(self.by_email.get(e.as_str()))
    }
}

/// Records found in the systems while gathering facts.
#[derive(Debug, Default)]
struct Found {
    crm_by_id: HashMap<CrmId, (CrmCandidate, CrmPersonRecord)>,
    crm_by_email: HashMap<Email, Vec<CrmCandidate>>,
    ma_by_email: HashMap<Email, Vec<i64>>,
    ma_by_id: HashMap<i64, ProspectRecord>,
}

impl Found {
    fn add_crm(&mut self, r: CrmPersonRecord) {
        let Ok(id) = CrmId::parse(&r.id) else { return };
        let cand = CrmCandidate { id: id.clone(), object: r.object, is_converted: r.is_converted };
        if let Some(e) = r.email.as_deref().and_then(|e| Email::parse(e).ok()) {
            let list = self.crm_by_email.entry(e).or_default();
            if !list.contains(&cand) {
                list.push(cand.clone());
            }
        }
        self.crm_by_id.insert(id, (cand, r));
    }
}

/// One record that holds its locks, being matched.
struct Item<'a> {
    candidate: &'a Candidate<'a>,
    token: i64,
}

/// Outcome of one round for a group of records.
struct RoundResult {
    out: Output,
    /// Positions (in the group) to try again next round.
    retry: Vec<usize>,
}

impl Matcher {
    fn lock_keys(&self, connection_id: &str, c: &Candidate<'_>) -> Vec<String> {
        let mut keys = Vec::with_capacity(3);
        match c {
            Candidate::Prospect { p, email, crm_id, .. } => {
                keys.push(self.locks.key(connection_id, LockKind::Prospect, &p.id.to_string()));
                keys.push(self.locks.key(connection_id, LockKind::Email, email.as_str()));
                if let Some(id) = crm_id {
                    keys.push(self.locks.key(connection_id, LockKind::CrmId, id.as_str()));
                }
            }
            Candidate::Crm { id, .. } => {
                keys.push(self.locks.key(connection_id, LockKind::CrmId, id.as_str()));
                if let Some(e) = c.email() {
                    keys.push(self.locks.key(connection_id, LockKind::Email, e.as_str()));
                }
            }
        }
        keys
    }

    /// Matches every record of a batch. Returns what to store and publish.
    /// Each record is matched under a `match` span in its own trace (I5),
    /// whose context its command carries on to the applier.
    pub async fn process(&self, batch: &ChangeBatch) -> Result<Output, StageError> {
        let mut spans = RecordSpans::default();
        for change in &batch.changes {
            let r = &change.record;
            let span = record_span(RecordStage::Match, &batch.connection_id, r.object(), &r.record_id(), batch.lane, change.trace.as_ref());
            spans.insert(change.change_id, span);
        }
        // Its look-ups are the lane's calls, against the API allowance (I8).
        let mut result = crmsync_connector::lane::in_lane(batch.lane, self.match_all(batch)).await;
        match &mut result {
            Ok(out) => trace_outcomes(&spans, out),
            Err(_) => spans.outcome_all("match", "retry"),
        }
        result
    }

    async fn match_all(&self, batch: &ChangeBatch) -> Result<Output, StageError> {
        let settings = crmsync_store::connections::load_running(&self.pool, &batch.connection_id)
            .await
            .map_err(|e| StageError::of_connection(e.is_unknown(), e.is_paused(), e.to_string()))?;
        let systems = self.factory.systems(&batch.connection_id, &settings).await?;
        // A CRM record outside the sync scope is matched as if deleted (its
        // prospect goes to the recycle bin), and one back in scope as
        // restored. Judged here too, with the settings of now, because a
        // change may have been detected (or retried) under another scope,
        // and because records sent again by hand (sync now, a retried
        // error, a mapping or scope change's re-sync: the producer's
        // `redetect`) never pass the producer's feed read, which judges
        // them first so that its echo rule keeps a record that left the
        // scope through an unmapped field. Judging twice is harmless (a
        // record marked deleted stays so), and this second judgement can
        // only narrow: a record the producer marked out of a scope that
        // has since widened stays deleted here (back at the record's next
        // change, if the scope save's re-sync passed it first).
        let scoped;
        let batch = if settings.sync_scope.is_empty() {
            batch
        } else {
            let mut copy = batch.clone();
            for change in copy.changes.iter_mut() {
                settings.sync_scope.apply(&mut change.record);
            }
            scoped = copy;
            &scoped
        };
        let lane = batch.lane.as_str();
        let mut out = Output::default();
        let mut candidates = Vec::with_capacity(batch.changes.len());
        for change in &batch.changes {
            // Mirrors need no identity decision: the applier reconciles them.
            if let SourceRecord::Mirror(r) = &change.record {
                match mirror_key(r) {
                    Ok(key) => {
                        out.mirrors.push(MirrorCommand {
                            command_id: change.change_id,
                            key,
                            source: RecordRef { side: change.record.side(), object: change.record.object().to_owned(), id: r.id.clone() },
                            detected_at: batch.detected_at,
                            trace: None,
                        });
                        out.resolved.push((change.record.object().to_owned(), r.id.clone()));
                    }
                    Err(issue) => out.reject(&change.record, change.change_id, issue, lane),
                }
                continue;
            }
            // A CSQL's sync options decide it (R9); the applier writes it.
            if let SourceRecord::Csql(r) = &change.record {
                let decision = match decide_csql(&settings.csql, r) {
                    CsqlDecision::Stay => {
                        out.skip(&change.record, change.change_id, SkipReason::CsqlStaysInCs, lane);
                        continue;
                    }
                    CsqlDecision::Sync(w) => CsqlOutcome::Sync { act_as: w.act_as, owner: w.owner, created_by: w.created_by },
                    CsqlDecision::Refuse(issue) => CsqlOutcome::Refuse { issue },
                };
                out.csqls.push(CsqlCommand {
                    command_id: change.change_id,
                    detected_at: batch.detected_at,
                    record: r.clone(),
                    decision,
                    trace: None,
                });
                continue;
            }
            match parse(change) {
                Ok(c) => candidates.push(c),
                Err(Refusal::Issue(issue)) => out.reject(&change.record, change.change_id, issue, lane),
                Err(Refusal::Skip(reason)) => out.skip(&change.record, change.change_id, reason, lane),
            }
        }
        let mut pending: Vec<usize> = (0..candidates.len()).collect();
        let mut conflicts: HashMap<usize, u32> = HashMap::new();
        let deadline = Instant::now() + self.lock_timeout;
        while !pending.is_empty() {
            let sets: Vec<Vec<String>> = pending.iter().map(|&i| self.lock_keys(&batch.connection_id, &candidates[i])).collect();
            let (held, mut missed) = self.locks.partition(&pending, &sets).await?;
            if !held.is_empty() {
                let items: Vec<Item<'_>> = held.iter().map(|(i, g)| Item { candidate: &candidates[*i], token: g.token }).collect();
                let result = self.match_group(batch, &settings, &systems, &items, &conflicts).await;
                let guards: Vec<LockGuard> = held.iter().map(|(_, g)| g.clone()).collect();
                // Release even when the round failed; the locks would expire anyway.
                let released = self.locks.release(&guards).await;
                let round = result?;
                released?;
                for pos in round.retry {
                    let i = held[pos].0;
                    *conflicts.entry(i).or_default() += 1;
                    missed.push(i);
                }
                out.commands.extend(round.out.commands);
                out.mirrors.extend(round.out.mirrors);
                out.errors.extend(round.out.errors);
                out.audits.extend(round.out.audits);
                out.resolved.extend(round.out.resolved);
            }
            pending = missed;
            if !pending.is_empty() && pause_before_retry(deadline).await.is_err() {
                return Err(StageError::Retry(format!("{} records' identity locks stayed busy", pending.len())));
            }
        }
        Ok(out)
    }

    async fn gather(&self, systems: &Systems, items: &[Item<'_>], ix: &Index) -> Result<Found, StageError> {
        let mut crm_emails: Vec<Email> = Vec::new();
        let mut crm_ids: Vec<CrmId> = Vec::new();
        let mut ma_emails: Vec<Email> = Vec::new();
        // Prospects that name their CRM record are matched by it (R1); their
        // email is looked up only if that record is gone or converted. Over
        // an API a look-up by email is a query per CRM object, by id one for
        // the object the id names: a first sync of pairs costs half the calls.
        let mut email_unless_found: Vec<(CrmId, Email)> = Vec::new();
        for item in items {
            match item.candidate {
                Candidate::Prospect { p, email, crm_id, .. } => {
                    if prospect_needs_crm_lookup(ix.prospect(p.id).map(IdentityRow::as_ref).as_ref()) {
                        match crm_id.as_ref().filter(|id| ix.crm(id).is_none()) {
                            Some(id) => {
                                crm_ids.push(id.clone());
                                email_unless_found.push((id.clone(), email.clone()));
                            }
                            None => crm_emails.push(email.clone()),
                        }
                    }
                }
                c @ Candidate::Crm { id, .. } => {
                    if let Some(e) = c.email().filter(|e| ix.crm(id).is_none() && ix.email(e).is_none()) {
                        ma_emails.push(e.clone());
                        // Other CRM records with this email make it ambiguous.
                        crm_emails.push(e.clone());
                    }
                    // The identity holding this email is linked to another
                    // record: was it a lead converted into this contact?
                    if let Some(other) = c.email().filter(|_| ix.crm(id).is_none()).and_then(|e| ix.email(e)).and_then(IdentityRow::crm_id)
                        && other != *id
                    {
                        crm_ids.push(other);
                    }
                }
            }
        }
        for v in [&mut crm_emails, &mut ma_emails] {
            v.sort();
            v.dedup();
        }
        crm_ids.sort();
        crm_ids.dedup();
        let mut found = Found::default();
        if !crm_emails.is_empty() {
            for r in systems.crm.people_by_email(&crm_emails).await? {
                found.add_crm(r);
            }
        }
        crm_ids.retain(|id| !found.crm_by_id.contains_key(id));
        if !crm_ids.is_empty() {
            for r in systems.crm.people_by_id(&crm_ids).await? {
                found.add_crm(r);
            }
        }
        // The prospects whose record was not there, or was converted: by
        // email after all, as if they named none.
        let mut fallback: Vec<Email> = email_unless_found
            .into_iter()
            .filter(|(id, _)| found.crm_by_id.get(id).is_none_or(|(c, _)| c.is_converted))
            .map(|(_, e)| e)
            .filter(|e| !crm_emails.contains(e))
            .collect();
        fallback.sort();
        fallback.dedup();
        if !fallback.is_empty() {
            for r in systems.crm.people_by_email(&fallback).await? {
                found.add_crm(r);
            }
        }
        if !ma_emails.is_empty() {
            for p in systems.ma.prospects_by_email(&ma_emails).await? {
                if let Some(e) = p.email.as_deref().and_then(|e| Email::parse(e).ok()) {
                    found.ma_by_email.entry(e).or_default().push(p.id);
                }
                found.ma_by_id.insert(p.id, p);
            }
        }
        Ok(found)
    }

    fn decide(&self, settings: &ConnectionSettings, c: &Candidate<'_>, ix: &Index, found: &Found) -> Decision {
        match c {
            Candidate::Prospect { p, email, crm_id, assignment, .. } => {
                let no_candidates: Vec<CrmCandidate> = Vec::new();
                decide_prospect(&ProspectFacts {
                    prospect_id: p.id,
                    crm_id: crm_id.as_ref(),
                    assignment,
                    by_prospect: ix.prospect(p.id).map(IdentityRow::as_ref).as_ref(),
                    by_crm_id: crm_id.as_ref().and_then(|id| ix.crm(id)).map(IdentityRow::as_ref).as_ref(),
                    by_email: ix.email(email).map(IdentityRow::as_ref).as_ref(),
                    crm_by_id: crm_id.as_ref().and_then(|id| found.crm_by_id.get(id)).map(|(c, _)| c),
                    crm_by_email: found.crm_by_email.get(email).unwrap_or(&no_candidates),
                })
            }
            Candidate::Crm { r, id, email, external, converted_contact, .. } => {
                let by_external = ix.get(external.as_ref()).map(IdentityRow::as_ref);
                let valid_email = email.as_ref().ok().and_then(Option::as_ref);
                let by_email = valid_email.and_then(|e| ix.email(e));
                // The lead that identity is linked to, if it became this contact.
                let by_email_converted_to = by_email
                    .and_then(IdentityRow::crm_id)
                    .and_then(|lead| found.crm_by_id.get(&lead))
                    .filter(|(_, rec)| rec.is_converted)
                    .and_then(|(_, rec)| rec.converted_contact_id.as_deref())
                    .and_then(|c| CrmId::parse(c).ok());
                let prospects: Vec<i64> = valid_email.and_then(|e| found.ma_by_email.get(e)).cloned().unwrap_or_default();
                let same_email: Vec<CrmCandidate> = valid_email.and_then(|e| found.crm_by_email.get(e)).cloned().unwrap_or_default();
                let decision = decide_crm(&CrmFacts {
                    crm_id: id,
                    object: r.object,
                    email: valid_email,
                    is_converted: r.is_converted,
                    converted_contact: converted_contact.as_ref(),
                    is_deleted: r.is_deleted,
                    by_email_converted_to: by_email_converted_to.as_ref(),
                    by_external_id: by_external.as_ref(),
                    by_crm_id: ix.crm(id).map(IdentityRow::as_ref).as_ref(),
                    by_email: by_email.map(IdentityRow::as_ref).as_ref(),
                    crm_with_email: &same_email,
                    prospects_by_email: &prospects,
                    may_auto_create: settings.may_auto_create(r.created_at),
                });
                match (decision, email) {
                    // Unmatched, and the email that would match it is malformed.
                    (Decision::Skip(SkipReason::NoEmail), Err(e)) => {
                        Decision::Reject(SyncIssue::new(SyncErrorCategory::InvalidEmail, format!("{} {id}: {e}", r.object)))
                    }
                    (d, _) => d,
                }
            }
        }
    }

    /// The edits a command carries: the record's own, plus, when this
    /// decision links it to a record on the other side for the first time,
    /// that record's current values; and the stamps of the records read.
    fn observations(
        &self,
        systems: &Systems,
        settings: &ConnectionSettings,
        c: &Candidate<'_>,
        patch: &IdentityPatch,
        found: &Found,
    ) -> Observed {
        let map = &settings.field_map;
        let record = &c.change().record;
        let me = |record: &SourceRecord| systems.integration_user(record.side());
        let mut obs = record.observations(map, Some(me(record)));
        let mut seen = Seen::default().with(record);
        let counterpart = match c {
            Candidate::Prospect { .. } => {
                patch.crm.as_ref().and_then(|(id, _)| found.crm_by_id.get(id)).map(|(_, r)| SourceRecord::Crm(r.clone()))
            }
            Candidate::Crm { .. } => patch.prospect_id.and_then(|p| found.ma_by_id.get(&p)).map(|p| SourceRecord::Prospect(p.clone())),
        };
        if let Some(other) = counterpart {
            obs.extend(other.observations(map, Some(me(&other))));
            seen = seen.with(&other);
        }
        Observed { obs, seen }
    }

    /// Sends on the changes detected before another change linked their
    /// identity, except those that bring nothing the identity's state does
    /// not hold (`crmsync_domain::echo`): those are audited as skipped. The
    /// producer judged them before the link existed, with nothing to judge
    /// against; every other change of an identity it judged already.
    async fn settle_late(
        &self,
        batch: &ChangeBatch,
        settings: &ConnectionSettings,
        systems: &Systems,
        items: &[Item<'_>],
        late: Vec<Late>,
        out: &mut Output,
    ) -> Result<(), StageError> {
        if late.is_empty() {
            return Ok(());
        }
        // What the engine knows of each record's own side is all the rule reads.
        let mut known: HashMap<Uuid, IdentityRow> = HashMap::new();
        for side in [Side::Ma, Side::Crm] {
            let ids: Vec<Uuid> = late.iter().filter(|l| items[l.pos].candidate.change().record.side() == side).map(|l| l.id).collect();
            if !ids.is_empty() {
                let keys = Keys { ids, ..Keys::default() };
                let rows = identities::find(&self.pool, batch.connection_id.as_str(), &keys, identities::State::Known(side)).await?;
                known.extend(rows.into_iter().map(|r| (r.id, r)));
            }
        }
        for Late { pos, id, observed } in late {
            let change = items[pos].candidate.change();
            let record = &change.record;
            let me = systems.integration_user(record.side());
            match known.get(&id) {
                Some(row) if !worth_publishing(record, Some(&row.known()), &settings.field_map, me) => {
                    out.audits.push(audit(record, change.change_id, Some(id), "skipped:already_known".to_owned(), batch.lane.as_str()));
                }
                _ => out.commands.push(command(batch, change, id, observed)),
            }
            out.resolved.push((record.object().to_owned(), record.record_id()));
        }
        Ok(())
    }

    async fn match_group(
        &self,
        batch: &ChangeBatch,
        settings: &ConnectionSettings,
        systems: &Systems,
        items: &[Item<'_>],
        conflicts: &HashMap<usize, u32>,
    ) -> Result<RoundResult, StageError> {
        let conn = batch.connection_id.as_str();
        let lane = batch.lane.as_str();
        let mut keys = Keys::default();
        for item in items {
            let c = item.candidate;
            match c {
                Candidate::Prospect { p, crm_id, .. } => {
                    keys.prospect_ids.push(p.id);
                    keys.crm_ids.extend(crm_id.iter().map(|i| i.to_string()));
                }
                Candidate::Crm { id, external, .. } => {
                    keys.crm_ids.push(id.to_string());
                    keys.ids.extend(external.iter().copied());
                }
            }
            keys.emails.extend(c.email().map(|e| e.to_string()));
        }
        let ix = Index::new(identities::find(&self.pool, conn, &keys, identities::State::Only(&[EMAIL_FIELD])).await?);
        let found = self.gather(systems, items, &ix).await?;
        let mut result = RoundResult { out: Output::default(), retry: Vec::new() };
        let out = &mut result.out;
        // Patches to existing identities need those identities' locks too.
        let mut patches: Vec<(usize, Uuid, IdentityPatch)> = Vec::new();
        // New identities are stored together after the loop: one statement
        // (and one commit) for the group, not one per record.
        let mut news: Vec<New> = Vec::new();
        let mut late: Vec<Late> = Vec::new();
        for (pos, item) in items.iter().enumerate() {
            let c = item.candidate;
            let change = c.change();
            let record = &change.record;
            let command = |identity_id: Uuid, observed: Observed| command(batch, change, identity_id, observed);
            match self.decide(settings, c, &ix, &found) {
                Decision::Existing { id, mut patch, issue } => {
                    if let Some(issue) = issue {
                        out.note(record, change.change_id, issue);
                    }
                    // An email change moves the identity's key now, under the
                    // new email's lock, so that a record arriving with that
                    // email next finds this person (R8).
                    if let Some(row) = ix.by_id.get(&id) {
                        let mut fields = row.fields.clone();
                        fields.observe_all(&settings.field_map, &self.observations(systems, settings, c, &patch, &found).obs);
                        patch.email =
                            fields.desired_email(&settings.field_map).map(|e| e.to_string()).filter(|e| row.email.as_ref() != Some(e));
                    }
                    if patch.is_empty() && ix.by_id.get(&id).is_some_and(|row| linked_by_another_since(row, batch, change)) {
                        late.push(Late { pos, id, observed: self.observations(systems, settings, c, &patch, &found) });
                    } else if patch.is_empty() {
                        out.commands.push(command(id, self.observations(systems, settings, c, &patch, &found)));
                        out.resolved.push((record.object().to_owned(), record.record_id()));
                    } else {
                        patches.push((pos, id, patch));
                    }
                }
                Decision::New { patch, issue } => {
                    let observed = self.observations(systems, settings, c, &patch, &found);
                    let mut fields = IdentityFields::default();
                    fields.observe_all(&settings.field_map, &observed.obs);
                    news.push(New { pos, id: Uuid::now_v7(), patch, issue, observed, fields });
                }
                Decision::Reject(issue) => out.reject(record, change.change_id, issue, lane),
                Decision::Skip(reason) => out.skip(record, change.change_id, reason, lane),
            }
        }
        self.settle_late(batch, settings, systems, items, late, out).await?;
        let rows: Vec<NewIdentity<'_>> = news
            .iter()
            .map(|n| NewIdentity {
                id: n.id,
                change_id: items[n.pos].candidate.change().change_id,
                patch: &n.patch,
                email: items[n.pos].candidate.email().map(Email::as_str),
                fields: &n.fields,
                fence: items[n.pos].token,
            })
            .collect();
        let stored = identities::insert_many(&self.pool, conn, &rows).await?;
        for n in news {
            let change = items[n.pos].candidate.change();
            let record = &change.record;
            if stored.contains(&n.id) {
                if let Some(issue) = n.issue {
                    out.note(record, change.change_id, issue);
                } else {
                    out.resolved.push((record.object().to_owned(), record.record_id()));
                }
                out.commands.push(command(batch, change, n.id, n.observed));
            } else if conflicts.get(&n.pos).copied().unwrap_or(0) >= 2 {
                // The person has an identity already (another replica made
                // it meanwhile): matched again next round, refused after two.
                out.reject(record, change.change_id, conflict_issue(record), lane);
            } else {
                result.retry.push(n.pos);
            }
        }
        if !patches.is_empty() {
            // The identity's lock, and the locks of the emails it is re-keyed
            // from and to (unless this record's own lock already covers one).
            let sets: Vec<Vec<String>> = patches
                .iter()
                .map(|(pos, id, patch)| {
                    let held = items[*pos].candidate.email().map(|e| e.to_string());
                    let old = ix.by_id.get(id).and_then(|r| r.email.clone());
                    let mut set = vec![self.locks.key(conn, LockKind::Identity, &id.to_string())];
                    if patch.email.is_some() {
                        for e in old.iter().chain(patch.email.iter()).filter(|e| Some(*e) != held.as_ref()) {
                            set.push(self.locks.key(conn, LockKind::Email, e));
                        }
                    }
                    set
                })
                .collect();
            let guards = self.locks.try_acquire(&sets).await?;
            let mut taken = Vec::new();
            for ((pos, id, patch), guard) in patches.into_iter().zip(guards) {
                let Some(guard) = guard else {
                    result.retry.push(pos);
                    continue;
                };
                let token = guard.token;
                taken.push(guard);
                let c = items[pos].candidate;
                let change = c.change();
                let mut written = identities::patch(&self.pool, conn, id, &patch, token, change.change_id).await;
                let mut applied = patch.clone();
                if matches!(written, Ok(Written::Conflict)) && patch.email.is_some() {
                    // The new email keys another person: sync the change under
                    // the old key and name the clash; never merge two people.
                    result.out.note(
                        &change.record,
                        change.change_id,
                        SyncIssue::new(
                            SyncErrorCategory::DuplicateRecord,
                            format!(
                                "{} {}: its new email already belongs to another synced person",
                                change.record.object(),
                                change.record.record_id()
                            ),
                        ),
                    );
                    applied.email = None;
                    written = if applied.is_empty() {
                        Ok(Written::Done)
                    } else {
                        identities::patch(&self.pool, conn, id, &applied, token, change.change_id).await
                    };
                }
                match written {
                    Ok(Written::Done) => {
                        let observed = self.observations(systems, settings, c, &applied, &found);
                        result.out.commands.push(command(batch, change, id, observed));
                        result.out.resolved.push((change.record.object().to_owned(), change.record.record_id()));
                    }
                    Ok(_) if conflicts.get(&pos).copied().unwrap_or(0) >= 2 => {
                        result.out.reject(&change.record, change.change_id, conflict_issue(&change.record), lane);
                    }
                    Ok(_) => result.retry.push(pos),
                    Err(e) => {
                        self.locks.release(&taken).await?;
                        return Err(e.into());
                    }
                }
            }
            self.locks.release(&taken).await?;
        }
        Ok(result)
    }
}

/// Whether another change linked the identity after this one was detected.
/// The linking change itself is never judged late: its command is what
/// writes everything the link stored, and after a crash between storing the
/// link and publishing the command, its redelivery is that command.
/// Identities whose linker is not recorded (linked by the applier's create,
/// or before migration 0011) are not judged either. `detected_at` is the
/// producer's clock and `linked_at` the database's: a skew between them
/// only changes which changes are judged here, and one judged needlessly
/// meets the rule the producer already applied to it.
fn linked_by_another_since(row: &IdentityRow, batch: &ChangeBatch, change: &Change) -> bool {
    row.linked_at.is_some_and(|at| at > batch.detected_at) && row.linked_by.is_some_and(|by| by != change.change_id)
}

/// A change of an existing identity detected before another change linked
/// that identity, with the observations its command would carry.
struct Late {
    pos: usize,
    id: Uuid,
    observed: Observed,
}

/// What a command carries of the records the matcher read: their edits,
/// and the stamps they were read at.
struct Observed {
    obs: Vec<Observation>,
    seen: Seen,
}

/// A new identity the matcher decided on, stored with the others of its
/// group in one statement.
struct New {
    pos: usize,
    id: Uuid,
    patch: IdentityPatch,
    issue: Option<SyncIssue>,
    observed: Observed,
    fields: IdentityFields,
}

/// Records each record's outcome on its span, and hands the span's context
/// on with the record's command.
fn trace_outcomes(spans: &RecordSpans, out: &mut Output) {
    for c in &mut out.commands {
        spans.outcome(&c.command_id, "command", "matched");
        c.trace = spans.context(&c.command_id);
    }
    for m in &mut out.mirrors {
        spans.outcome(&m.command_id, "mirror", "matched");
        m.trace = spans.context(&m.command_id);
    }
    for q in &mut out.csqls {
        let outcome = match q.decision {
            CsqlOutcome::Sync { .. } => "matched",
            CsqlOutcome::Refuse { .. } => "refused",
        };
        spans.outcome(&q.command_id, "csql", outcome);
        q.trace = spans.context(&q.command_id);
    }
    for a in &out.audits {
        let outcome = a.action.split(':').next().unwrap_or("");
        spans.outcome(&a.change_id, &a.action, outcome);
    }
}

/// The apply command for one matched change.
fn command(batch: &ChangeBatch, change: &Change, identity_id: Uuid, observed: Observed) -> ApplyCommand {
    let r = &change.record;
    let account_id = match r {
        SourceRecord::Crm(c) if c.object == crmsync_domain::CrmObject::Contact => {
            c.fields.get("AccountId").and_then(|f| f.value.as_str()).map(str::to_owned)
        }
        _ => None,
    };
    ApplyCommand {
        command_id: change.change_id,
        identity_id,
        source: RecordRef { side: r.side(), object: r.object().to_owned(), id: r.record_id() },
        detected_at: batch.detected_at,
        observations: observed.obs,
        account_id,
        seen: observed.seen,
        // Filled from the record's `match` span once matching is done.
        trace: None,
    }
}

fn conflict_issue(record: &SourceRecord) -> SyncIssue {
    SyncIssue::new(
        SyncErrorCategory::DuplicateRecord,
        format!(
            "{} {} would give a person a second identity (another record already holds its email or id)",
            record.object(),
            record.record_id()
        ),
    )
}
