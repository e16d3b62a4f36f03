//! The report: what the engine did for a connection, and a check of both
//! sides against each other.
//!
//! For every linked identity the prospect and its CRM record are read back
//! through the connectors and compared field by field over the mapping: once
//! the pipeline is idle, every mapped field must hold the same value on both
//! sides (pairs with an open sync error are counted apart: they are waiting
//! for someone to act). Leads the engine created must be owned by the assigned
//! user's CRM user (R3). Only ids and field names are printed, never values
//! (the sync errors' samples quote the systems, emails redacted: `crate::pii`).
//!
//! A report run while the batch lane has a backlog (R7) finds pairs whose
//! edit is published and paced, not yet applied: those are listed as
//! waiting in the batch lane, and only real mismatches fail the report. A
//! differing field is waiting when the connection's batch lane has a
//! backlog and one side holds a user's edit the engine has not finished:
//! a value that is neither what the engine knows is there (its identity
//! state) nor the engine's own write. Which change a record is waiting on
//! is not kept per record, so an edit not even detected yet counts as
//! waiting too while a backlog lasts; once the lane is drained, any
//! difference left is a mismatch.

use std::collections::{BTreeMap, HashMap, HashSet};

use crmsync_connector::{ConnectorFactory, Systems};
use crmsync_domain::mapping::SyncBehaviour;
use crmsync_domain::merge::{IdentityFields, Side, is_blank, same_value};
use crmsync_domain::records::{CrmPersonRecord, FieldValue, ProspectRecord};
use crmsync_domain::settings::{ConnectionSettings, REQUIRED_LEAD_FIELDS};
use crmsync_domain::{CrmId, CrmObject};
use crmsync_infra::Config;
use crmsync_store::sync_errors::{self, SyncErrorRow};
use crmsync_store::{audit, connections, identities};
use crmsync_systems::SystemsFactory;

use crate::mirror_check::MirrorCounts;
use crate::pii::Pii;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A field that differs between the two sides of a linked pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub identity: Uuid,
    pub prospect_id: i64,
    pub crm_id: String,
    pub field: String,
}

/// One connection's report; `report --json` prints it as it is (the
/// `(name, count)` lists as two-element arrays).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub connection_id: String,
    pub statuses: Vec<(String, i64)>,
    pub actions: Vec<(String, i64)>,
    pub open_errors: Vec<(String, i64)>,
    pub error_samples: Vec<SyncErrorRow>,
    pub pairs_compared: usize,
    pub pairs_waiting_on_errors: usize,
    pub mismatches: Vec<Mismatch>,
    /// Differing fields whose edit is still waiting in the batch lane: not
    /// failures.
    pub waiting_in_batch_lane: Vec<Mismatch>,
    /// The batch lane's backlog when the report was made, and when it will
    /// be done at the budget's pace.
    pub batch_backlog: i64,
    pub batch_eta_secs: u64,
    /// Linked identities whose prospect or CRM record cannot be found.
    pub missing: Vec<Uuid>,
    pub created_leads_checked: usize,
    pub wrong_owners: Vec<String>,
    /// The read-only mirrors, checked against the CRM (R4-R6).
    pub mirrors: Vec<MirrorCounts>,
}

impl Report {
    /// Both sides agree and every created lead has the right owner.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
            && self.missing.is_empty()
            && self.wrong_owners.is_empty()
            && self.mirrors.iter().all(|m| m.wrong.is_empty())
    }

    pub fn count(&self, action: &str) -> i64 {
        self.actions.iter().filter(|(a, _)| a == action).map(|(_, n)| n).sum()
    }

    pub fn status(&self, status: &str) -> i64 {
        self.statuses.iter().filter(|(s, _)| s == status).map(|(_, n)| n).sum()
    }

    pub fn errors(&self, category: &str) -> i64 {
        self.open_errors.iter().filter(|(c, _)| c == category).map(|(_, n)| n).sum()
    }
}

async fn prospects(systems: &Systems, ids: &[i64]) -> anyhow::Result<HashMap<i64, ProspectRecord>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        out.extend(systems.ma.prospects_by_id(chunk).await?.into_iter().map(|p| (p.id, p)));
    }
    Ok(out)
}

async fn people(systems: &Systems, ids: &[CrmId]) -> anyhow::Result<HashMap<String, CrmPersonRecord>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        out.extend(systems.crm.people_by_id(chunk).await?.into_iter().map(|r| (r.id.clone(), r)));
    }
    Ok(out)
}

/// The mapped fields on which the two records disagree, by their MA and
/// CRM names. Two-way fields must hold one value; a read-only field must
/// hold its source's value once the source has one (before that, the rules
/// have no opinion).
fn compare(
    settings: &ConnectionSettings,
    p: &ProspectRecord,
    c: &CrmPersonRecord,
    state: Option<&IdentityFields>,
) -> Vec<(String, String)> {
    settings
        .field_map
        .for_object(c.object)
        .filter(|(m, api)| {
            let (Some(ma), Some(crm)) = (p.fields.get(&m.ma), c.fields.get(*api)) else { return false };
            if m.sync == SyncBehaviour::ReadOnly {
                let source = m.read_only_source();
                let defined = state.and_then(|s| s.get(&m.ma)).is_some_and(|f| f.side(source).last.is_some());
                if !defined {
                    return false;
                }
            }
            !same_value(&ma.value, &crm.value) && !placeholder_for_blank(settings, c.object, api, &ma.value, &crm.value)
        })
        .map(|(m, api)| (m.ma.clone(), api.to_owned()))
        .collect()
}

/// Whether a lead's required field holds the connection's placeholder
/// where the prospect has nothing: what the engine wrote on purpose when it
/// created the lead (R3), not a difference.
fn placeholder_for_blank(settings: &ConnectionSettings, object: CrmObject, api: &str, ma: &Value, crm: &Value) -> bool {
    object == CrmObject::Lead
        && REQUIRED_LEAD_FIELDS.contains(&api)
        && is_blank(ma)
        && settings.lead_placeholder.as_deref().is_some_and(|text| crm.as_str() == Some(text))
}

/// Whether `side`'s value of a field is a user's edit the engine has not
/// finished: not the engine's own write, and not what the engine knows the
/// side holds.
fn unfinished_edit(state: Option<&IdentityFields>, field: &str, side: Side, value: &FieldValue, integration_user: &str) -> bool {
    if value.by.as_deref() == Some(integration_user) {
        return false;
    }
    match state.and_then(|s| s.get(field)).and_then(|f| f.side(side).known.as_ref()) {
        Some(known) => !same_value(&known.value, &value.value),
        None => !is_blank(&value.value),
    }
}

/// Builds the report of one connection.
pub async fn build(pool: &PgPool, factory: &SystemsFactory, connection_id: &str) -> anyhow::Result<Report> {
    let settings = connections::load(pool, connection_id).await?;
    let systems = factory.systems(connection_id, &settings).await?;
    let mut r = Report {
        connection_id: connection_id.to_owned(),
        statuses: identities::status_counts(pool, connection_id).await?,
        actions: audit::action_counts(pool, connection_id).await?,
        open_errors: sync_errors::open_counts(pool, connection_id).await?,
        ..Report::default()
    };
    let batch = crmsync_applier::batch_figures(pool, connection_id).await?;
    (r.batch_backlog, r.batch_eta_secs) = (batch.backlog, batch.eta.as_secs());
    let samples = sync_errors::list_open(pool, connection_id, 10_000).await?;
    let mut per_category: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        let n = per_category.entry(s.category.clone()).or_default();
        if *n < 2 {
            r.error_samples.push(s);
        }
        *n += 1;
    }
    let erring: HashSet<(String, String)> = sync_errors::open_records(pool, connection_id).await?.into_iter().collect();
    let linked = identities::linked(pool, connection_id).await?;
    let ids: Vec<i64> = linked.iter().map(|l| l.prospect_id).collect();
    let crm_ids: Vec<CrmId> = linked.iter().filter_map(|l| CrmId::parse(&l.crm_id).ok()).collect();
    let ma = prospects(&systems, &ids).await?;
    let crm = people(&systems, &crm_ids).await?;
    let mut states: HashMap<Uuid, IdentityFields> = HashMap::new();
    for chunk in linked.chunks(5000) {
        let keys = identities::Keys { ids: chunk.iter().map(|l| l.id).collect(), ..Default::default() };
        states.extend(identities::find(pool, connection_id, &keys, identities::State::All).await?.into_iter().map(|r| (r.id, r.fields)));
    }
    for l in &linked {
        let (Some(p), Some(c)) = (ma.get(&l.prospect_id), crm.get(&l.crm_id)) else {
            r.missing.push(l.id);
            continue;
        };
        if erring.contains(&("prospect".to_owned(), l.prospect_id.to_string()))
            || erring.contains(&(l.crm_object.clone(), l.crm_id.clone()))
        {
            r.pairs_waiting_on_errors += 1;
            continue;
        }
        r.pairs_compared += 1;
        let state = states.get(&l.id);
        for (field, api) in compare(&settings, p, c, state) {
            let waiting = r.batch_backlog > 0
                && (p.fields.get(&field).is_some_and(|v| unfinished_edit(state, &field, Side::Ma, v, systems.integration_user(Side::Ma)))
                    || c.fields
                        .get(&api)
                        .is_some_and(|v| unfinished_edit(state, &field, Side::Crm, v, systems.integration_user(Side::Crm))));
            let m = Mismatch { identity: l.id, prospect_id: l.prospect_id, crm_id: l.crm_id.clone(), field };
            if waiting { r.waiting_in_batch_lane.push(m) } else { r.mismatches.push(m) }
        }
        if let Some(owner) = &l.owner_id
            && c.object == CrmObject::Lead
            && c.external_id.is_some()
        {
            r.created_leads_checked += 1;
            if c.owner_id.as_deref() != Some(owner.as_str()) {
                r.wrong_owners.push(c.id.clone());
            }
        }
    }
    r.mirrors = crate::mirror_check::check(pool, connection_id, &settings, &systems).await?;
    Ok(r)
}

fn join(pairs: &[(String, i64)]) -> String {
    if pairs.is_empty() {
        return "none".into();
    }
    pairs.iter().map(|(k, n)| format!("{} {n}", k.replace('_', " "))).collect::<Vec<_>>().join(" · ")
}

/// Prints a report for people.
pub fn print(r: &Report) -> std::io::Result<()> {
    outln!("Connection {}", r.connection_id);
    outln!("  Identities    {}", join(&r.statuses));
    let (skips, actions): (Vec<_>, Vec<_>) = r.actions.iter().cloned().partition(|(a, _)| a.starts_with("skipped:"));
    let (rejects, actions): (Vec<_>, Vec<_>) = actions.into_iter().partition(|(a, _)| a.starts_with("rejected"));
    outln!("  Changes       {}", join(&actions));
    if !skips.is_empty() {
        outln!(
            "  Not synced    {}",
            join(&skips.iter().map(|(a, n)| (a.trim_start_matches("skipped:").to_owned(), *n)).collect::<Vec<_>>())
        );
    }
    if !rejects.is_empty() {
        outln!("  Rejected      {}", rejects.iter().map(|(_, n)| n).sum::<i64>());
    }
    outln!("  Sync errors   {}", join(&r.open_errors));
    for s in &r.error_samples {
        outln!("                · {} {} {}: {}", s.category, s.object, s.record_id, s.reason);
    }
    outln!(
        "  Check         {} linked pairs compared field by field: {} mismatched field(s); {} pair(s) waiting on an open sync error; {} missing record(s)",
        r.pairs_compared,
        r.mismatches.len(),
        r.pairs_waiting_on_errors,
        r.missing.len()
    );
    for m in r.mismatches.iter().take(10) {
        outln!("                ✗ prospect {} / {}: {} differs", m.prospect_id, m.crm_id, m.field);
    }
    if !r.waiting_in_batch_lane.is_empty() {
        outln!(
            "                {} field(s) waiting in the batch lane (backlog {}, done in {}): not failures",
            r.waiting_in_batch_lane.len(),
            r.batch_backlog,
            crmsync_ops::status::human(std::time::Duration::from_secs(r.batch_eta_secs))
        );
        for m in r.waiting_in_batch_lane.iter().take(10) {
            outln!("                ⧗ prospect {} / {}: {} waiting in the batch lane", m.prospect_id, m.crm_id, m.field);
        }
    }
    outln!("                {} lead(s) created by the engine checked for owner: {} wrong", r.created_leads_checked, r.wrong_owners.len());
    for m in &r.mirrors {
        outln!(
            "                {}: {} in the CRM, {} mirrored in the MA ({} prospect link(s)), {} wrong",
            m.kind,
            m.sources,
            m.expected,
            m.links,
            m.wrong.len()
        );
        for id in m.wrong.iter().take(5) {
            outln!("                ✗ {} {id}: the MA's mirror differs from what the rules say", m.kind);
        }
    }
    outln!("  Result        {}", if r.ok() { "OK: both sides agree" } else { "FAILED" });
    Ok(())
}

/// What `report --json` prints.
#[derive(Debug, Serialize)]
struct Reports<'a> {
    /// Every connection's report is OK.
    ok: bool,
    connections: &'a [Report],
}

/// Builds and prints the report of each connection, as text or as one JSON
/// document; true if all are OK.
pub async fn print_all(config: &Config, pool: &PgPool, only: Option<&str>, json: bool, pii: Pii) -> anyhow::Result<bool> {
    let factory = SystemsFactory::from_config(config, pool).await?;
    let mut reports = Vec::new();
    for id in crate::connection_ids(pool, only).await? {
        let mut r = build(pool, &factory, &id).await?;
        // The samples quote the systems' refusals.
        r.error_samples = r.error_samples.iter().map(|s| pii.sample(s)).collect();
        if !json {
            print(&r)?;
        }
        reports.push(r);
    }
    let ok = reports.iter().all(Report::ok);
    if json {
        // Printed whole: serde_json's writer errors hide a closed pipe.
        outln!("{}", serde_json::to_string_pretty(&Reports { ok, connections: &reports })?);
    }
    Ok(ok)
}
