//! Reconciling the MA's read-only mirrors from the CRM (R4–R6).
//!
//! A key is reconciled under its own Redis lock: read the CRM's current
//! state (the record, the contact roles or contacts that tie it to people)
//! and the identity map, decide with the pure rules in
//! `crmsync_domain::mirror`, and write the whole mirror, fenced. Reading the
//! current state each time makes every trigger (a changed opportunity, a new
//! role, a new link, a conversion, a delete) converge on the same result in
//! any order. A person key expands into the mirrors tied to that person.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use crmsync_connector::{MirrorWrite, Systems, WriteOutcome};
use crmsync_domain::mirror::{self, CrmObjectRecord, MirrorKey, MirrorKind, MirrorObject, MirrorPlan};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject};
use crmsync_domain::{SyncErrorCategory, SyncIssue};
use crmsync_infra::locks::{LockKind, Locks};
use crmsync_infra::worker::StageError;
use crmsync_store::identities;
use crmsync_store::sync_errors::{self, NewSyncError};
use sqlx::PgPool;

/// What reconciling a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The mirror exists and was written.
    Mirrored,
    /// The mirror does not (or no longer) exist.
    Absent,
    /// A person key, expanded into the mirrors tied to it.
    Expanded,
    /// Nothing done: the MA keeps its own mirrors (`mirrors: ma`).
    LeftToMa,
    /// The MA refused the mirror: parked as a sync error, not retried in
    /// place (a refusal does not pass with time, and retrying would hold
    /// the whole message).
    Refused,
}

impl Reconciled {
    pub fn as_str(self) -> &'static str {
        match self {
            Reconciled::Mirrored => "mirrored",
            Reconciled::Absent => "not_mirrored",
            Reconciled::Expanded => "mirrors_checked",
            Reconciled::LeftToMa => "left_to_ma",
            Reconciled::Refused => "rejected",
        }
    }
}

/// Reconciles mirrors of one connection.
#[derive(Debug)]
pub struct Reconciler<'a> {
    pub pool: &'a PgPool,
    pub locks: &'a Locks,
    pub systems: &'a Systems,
    pub settings: &'a ConnectionSettings,
    pub connection_id: &'a str,
    pub lock_timeout: Duration,
}

fn one(mut records: Vec<CrmObjectRecord>) -> Option<CrmObjectRecord> {
    records.pop()
}

impl Reconciler<'_> {
    /// Reconciles `keys` and every key they lead to; returns the outcome per
    /// key asked for.
    pub async fn run(&self, keys: &[MirrorKey]) -> Result<Vec<(MirrorKey, Reconciled)>, StageError> {
        if !self.settings.ma.engine_keeps_mirrors() {
            // A business unit's own CRM connector keeps them: the engine
            // neither reads nor writes them (nor asks the CRM about them).
            return Ok(keys.iter().map(|k| (k.clone(), Reconciled::LeftToMa)).collect());
        }
        let mut queue: VecDeque<MirrorKey> = keys.iter().cloned().collect();
        let mut seen: HashSet<MirrorKey> = HashSet::new();
        let mut outcomes = Vec::new();
        while let Some(key) = queue.pop_front() {
            if !seen.insert(key.clone()) {
                continue;
            }
            let (outcome, more) = match &key {
                MirrorKey::Person { id } => (Reconciled::Expanded, self.expand_person(id).await?),
                _ => self.locked(&key).await?,
            };
            queue.extend(more);
            if keys.contains(&key) {
                outcomes.push((key, outcome));
            }
        }
        Ok(outcomes)
    }

    /// Reconciles one mirror key under its lock.
    async fn locked(&self, key: &MirrorKey) -> Result<(Reconciled, Vec<MirrorKey>), StageError> {
        let lock_key = self.locks.key(self.connection_id, LockKind::Mirror, &key.text());
        let Some(guard) = self.locks.acquire_within(&lock_key, self.lock_timeout).await? else {
            return Err(StageError::Retry(format!("mirror {} stayed locked", key.text())));
        };
        let result = self.reconcile(key, guard.token).await;
        self.locks.release(&[guard]).await?;
        result
    }

    async fn reconcile(&self, key: &MirrorKey, fence: i64) -> Result<(Reconciled, Vec<MirrorKey>), StageError> {
        let crm = &self.systems.crm;
        let (kind, id, plan, more) = match key {
            MirrorKey::Account { id } => {
                let account = one(crm.objects_where(&MirrorObject::Account, "Id", &[id.to_string()]).await?);
                let plan = mirror::account_plan(account.as_ref(), self.prospects_of_accounts(std::slice::from_ref(id)).await?);
                // Custom records tied to the account are seen by its prospects.
                let mut more = Vec::new();
                for c in self.settings.custom_objects.iter().filter(|c| c.lookup_object == CrmObject::Account) {
                    let object = MirrorObject::Custom(c.name.clone());
                    for r in crm.objects_where(&object, &c.lookup_field, &[id.to_string()]).await? {
                        if let Ok(rid) = CrmId::parse(&r.id) {
                            more.push(MirrorKey::Custom { object: c.name.clone(), id: rid });
                        }
                    }
                }
                (MirrorKind::ProspectAccount, id, plan, more)
            }
            MirrorKey::Opportunity { id } => {
                let opportunity = one(crm.objects_where(&MirrorObject::Opportunity, "Id", &[id.to_string()]).await?);
                let roles = crm.objects_where(&MirrorObject::ContactRole, "OpportunityId", &[id.to_string()]).await?;
                let contacts: Vec<String> = roles.iter().filter_map(|r| r.lookup("ContactId")).map(|c| c.to_string()).collect();
                let prospect_of: BTreeMap<CrmId, i64> = identities::prospects_of_crm(self.pool, self.connection_id, &contacts)
                    .await?
                    .into_iter()
                    .filter_map(|(c, p)| CrmId::parse(&c).ok().map(|c| (c, p)))
                    .collect();
                (MirrorKind::Opportunity, id, mirror::opportunity_plan(opportunity.as_ref(), &roles, &prospect_of), Vec::new())
            }
            MirrorKey::Custom { object, id } => {
                let record = one(crm.objects_where(&MirrorObject::Custom(object.clone()), "Id", &[id.to_string()]).await?);
                let plan = match self.settings.custom_object(object) {
                    // No longer declared: its mirrors go.
                    None => MirrorPlan::Absent,
                    Some(decl) => {
                        let target = record.as_ref().and_then(|r| r.lookup(&decl.lookup_field));
                        let prospects = match (target, decl.lookup_object) {
                            (None, _) => BTreeSet::new(),
                            (Some(t), CrmObject::Account) => self.prospects_of_accounts(&[t]).await?,
                            (Some(t), _) => identities::prospects_of_crm(self.pool, self.connection_id, &[t.to_string()])
                                .await?
                                .into_iter()
                                .map(|(_, p)| p)
                                .collect(),
                        };
                        mirror::custom_plan(record.as_ref(), decl, prospects)
                    }
                };
                (MirrorKind::Custom(object.clone()), id, plan, Vec::new())
            }
            MirrorKey::Person { .. } => unreachable!("person keys are expanded, not locked"),
        };
        let absent = plan == MirrorPlan::Absent;
        let write = MirrorWrite { kind, crm_id: id.clone(), plan, fence: Some(fence) };
        let record = [("mirror".to_owned(), key.text())];
        match self.systems.ma.write_mirrors(&[write]).await?.pop() {
            Some(WriteOutcome::Written { .. }) => {
                sync_errors::resolve(self.pool, self.connection_id, "apply", &record).await?;
                Ok((if absent { Reconciled::Absent } else { Reconciled::Mirrored }, more))
            }
            Some(WriteOutcome::Fenced) => Err(StageError::Retry(format!("mirror {} was written by a newer holder", key.text()))),
            Some(WriteOutcome::Rejected { code, message }) => {
                let [(object, record_id)] = record;
                let error = NewSyncError {
                    stage: "apply",
                    object,
                    record_id,
                    issue: SyncIssue::new(
                        SyncErrorCategory::of_rejection(&code, &message),
                        format!("the MA refused mirror {}: {code}: {message}", key.text()),
                    ),
                    change_id: None,
                    payload: None,
                };
                sync_errors::record_many(self.pool, self.connection_id, &[error]).await?;
                Ok((Reconciled::Refused, more))
            }
            Some(WriteOutcome::NotFound) | None => Err(StageError::Retry(format!("the MA returned no outcome for mirror {}", key.text()))),
        }
    }

    /// The syncing prospects whose contacts belong to these accounts.
    async fn prospects_of_accounts(&self, accounts: &[CrmId]) -> Result<BTreeSet<i64>, StageError> {
        let ids: Vec<String> = accounts.iter().map(ToString::to_string).collect();
        let contacts: Vec<String> =
            self.systems.crm.people_where(CrmObject::Contact, "AccountId", &ids).await?.into_iter().map(|c| c.id).collect();
        if contacts.is_empty() {
            return Ok(BTreeSet::new());
        }
        Ok(identities::prospects_of_crm(self.pool, self.connection_id, &contacts).await?.into_iter().map(|(_, p)| p).collect())
    }

    /// The mirrors tied to a lead or contact: its account (now and as the
    /// prospect shows it), the opportunities it has roles on, custom records
    /// pointing at it.
    async fn expand_person(&self, id: &CrmId) -> Result<Vec<MirrorKey>, StageError> {
        let crm = &self.systems.crm;
        let mut keys = Vec::new();
        let object = id.object();
        // The applier queues only the people this allows (the outbox);
        // nothing below may find a mirror for anyone else.
        if !self.settings.person_has_mirrors(object) {
            return Ok(keys);
        }
        if object == Some(CrmObject::Contact) {
            if let Some(contact) = crm.people_by_id(std::slice::from_ref(id)).await?.pop()
                && let Some(account) = contact.fields.get("AccountId").and_then(|f| f.value.as_str()).and_then(|a| CrmId::parse(a).ok())
            {
                keys.push(MirrorKey::Account { id: account });
            }
            let prospects = identities::prospects_of_crm(self.pool, self.connection_id, &[id.to_string()]).await?;
            let prospect_ids: Vec<i64> = prospects.iter().map(|(_, p)| *p).collect();
            // The account the prospect shows now, if the contact moved away.
            let keys_known: Vec<i64> = {
                let ids = identities::find(
                    self.pool,
                    self.connection_id,
                    &identities::Keys { crm_ids: vec![id.to_string()], ..Default::default() },
                    identities::State::Skip,
                )
                .await?;
                ids.into_iter().filter_map(|r| r.prospect_id).chain(prospect_ids).collect()
            };
            for (_, account) in self.systems.ma.prospect_accounts_of(&keys_known).await? {
                keys.push(MirrorKey::Account { id: account });
            }
            for role in crm.objects_where(&MirrorObject::ContactRole, "ContactId", &[id.to_string()]).await? {
                if let Some(o) = role.lookup("OpportunityId") {
                    keys.push(MirrorKey::Opportunity { id: o });
                }
            }
        }
        for c in self.settings.custom_objects.iter().filter(|c| Some(c.lookup_object) == object) {
            for r in crm.objects_where(&MirrorObject::Custom(c.name.clone()), &c.lookup_field, &[id.to_string()]).await? {
                if let Ok(rid) = CrmId::parse(&r.id) {
                    keys.push(MirrorKey::Custom { object: c.name.clone(), id: rid });
                }
            }
        }
        Ok(keys)
    }
}
