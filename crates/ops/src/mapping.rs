//! Editing a connection's field mapping (R2, issue 28): listing it with the
//! fields the two systems actually have, previewing what an edit would
//! write on each side, and saving it — validated, audited (before → after)
//! and followed by a re-sync of the affected pairs through the batch lane.
//! `crmsync connection mapping` and the console's mapping page both call
//! these, so neither can skip a check the other makes.
//!
//! The preview is computed with the same pure rules the applier writes by
//! (`IdentityFields::plan` over each pair's per-field state): what it
//! counts is what saving makes the engine write. A newly mapped field has
//! no state yet, so for an addition both sides' current values are read
//! from the systems and observed as the matcher would.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, bail};
use crmsync_connector::{ConnectorFactory, FieldInfo, Systems};
use crmsync_domain::mapping::{FieldMap, FieldMapping, MappingEdit};
use crmsync_domain::merge::{IdentityFields, Side};
use crmsync_domain::records::SourceRecord;
use crmsync_domain::{CrmId, CrmObject, Lane};
use crmsync_infra::Config;
use crmsync_infra::broker::Broker;
use crmsync_producer::RecordName;
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::connections;
use crmsync_store::identities::{self, Keys, PairRow, State};
use crmsync_systems::SystemsFactory;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Pairs read (identity states, and both sides' records for an addition) at a time.
const CHUNK: usize = 500;
/// Pairs shown in a preview's sample.
const SAMPLE: usize = 10;
/// Pairs re-synced per published message: both records of a pair travel in
/// one message, so the applier merges their values before it writes.
const RESYNC_CHUNK: usize = 100;

/// The fields each system has, as its own schema lists them; a system
/// that cannot list them says why.
#[derive(Debug, Clone, Serialize)]
pub struct Available {
    #[serde(serialize_with = "listed")]
    pub ma: Result<Vec<FieldInfo>, String>,
    #[serde(serialize_with = "listed")]
    pub lead: Result<Vec<FieldInfo>, String>,
    #[serde(serialize_with = "listed")]
    pub contact: Result<Vec<FieldInfo>, String>,
}

/// A listing as JSON: the fields, or `{"error": why not}`.
fn listed<S: serde::Serializer>(list: &Result<Vec<FieldInfo>, String>, s: S) -> Result<S::Ok, S::Error> {
    match list {
        Ok(fields) => fields.serialize(s),
        Err(e) => serde_json::json!({ "error": e }).serialize(s),
    }
}

impl Available {
    /// Refuses an addition naming a field a system that lists its fields
    /// does not have.
    fn check(&self, f: &FieldMapping) -> anyhow::Result<()> {
        let has = |list: &Result<Vec<FieldInfo>, String>, name: &str| list.as_ref().map_or(true, |l| l.iter().any(|i| i.name == name));
        if !has(&self.ma, &f.ma) {
            bail!("the MA has no prospect field {:?}; see the fields it lists", f.ma);
        }
        for (object, list, name) in [("lead", &self.lead, &f.lead), ("contact", &self.contact, &f.contact)] {
            if let Some(name) = name
                && !has(list, name)
            {
                bail!("the CRM has no {object} field {name:?}; see the fields it lists");
            }
        }
        Ok(())
    }

    /// Refuses a sync-scope rule on a CRM field a CRM that lists its
    /// fields does not have: a real org would refuse every read that
    /// selects it, and the connection would stop syncing.
    pub fn check_scope(&self, scope: &crmsync_domain::scope::SyncScope) -> anyhow::Result<()> {
        for (object, list) in [(CrmObject::Lead, &self.lead), (CrmObject::Contact, &self.contact)] {
            let Ok(list) = list else { continue };
            for field in scope.fields_for(object) {
                if !list.iter().any(|i| i.name.eq_ignore_ascii_case(field)) {
                    bail!("the CRM has no {object} field {field:?}; see the fields it lists on the field-mapping page");
                }
            }
        }
        Ok(())
    }
}

/// A connection's mapping with the fields the systems have.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub fields: FieldMap,
    pub available: Available,
}

/// The fields the systems of a connection have.
pub async fn available(systems: &Systems) -> Available {
    let text = |e: crmsync_connector::ConnectorError| e.to_string();
    Available {
        ma: systems.ma.prospect_fields().await.map_err(text),
        lead: systems.crm.person_fields(CrmObject::Lead).await.map_err(text),
        contact: systems.crm.person_fields(CrmObject::Contact).await.map_err(text),
    }
}

/// The mapping of connection `id` and the fields its systems have.
pub async fn list(pool: &PgPool, factory: &SystemsFactory, id: &str) -> anyhow::Result<Listing> {
    let settings = connections::load(pool, id).await?;
    let systems = factory.systems(id, &settings).await?;
    Ok(Listing { available: available(&systems).await, fields: settings.field_map })
}

/// One field a pair would get written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    /// What the engine knows the side holds now.
    pub from: Value,
    pub to: Value,
}

/// One pair an edit would change, with its writes per side.
#[derive(Debug, Clone, Serialize)]
pub struct PairChange {
    pub prospect_id: i64,
    pub crm_object: String,
    pub crm_id: String,
    pub ma: Vec<FieldChange>,
    pub crm: Vec<FieldChange>,
}

/// What an edit would do, before it is saved.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub edit: MappingEdit,
    pub before: Option<FieldMapping>,
    pub after: Option<FieldMapping>,
    /// Linked pairs looked at.
    pub linked: usize,
    /// Pairs whose prospect would be written.
    pub ma_writes: usize,
    /// Pairs whose lead or contact would be written.
    pub crm_writes: usize,
    /// Some of the pairs that would change.
    pub sample: Vec<PairChange>,
    /// Every pair that would change (not shown; what saving re-syncs).
    #[serde(skip)]
    pub affected: Vec<PairRow>,
}

/// The writes `side` of a pair needs under `map` that it does not need
/// under `before`: what the edit itself causes.
fn caused(state: &IdentityFields, before: &FieldMap, after: &FieldMap, side: Side, object: CrmObject) -> Vec<FieldChange> {
    let plan = |map: &FieldMap| -> Vec<(String, Value)> {
        match side {
            Side::Ma => state.plan(map.iter(), Side::Ma),
            Side::Crm => state.plan(map.for_object(object).map(|(m, _)| m), Side::Crm),
        }
    };
    let old = plan(before);
    plan(after)
        .into_iter()
        .filter(|w| !old.contains(w))
        .map(|(field, to)| {
            let from = state.get(&field).and_then(|f| f.side(side).known.as_ref()).map(|k| k.value.clone()).unwrap_or(Value::Null);
            FieldChange { field, from, to }
        })
        .collect()
}

/// Computes what `edit` would write, pair by pair, from the engine's state
/// (and, for an added field, both sides' current values).
pub async fn preview(pool: &PgPool, factory: &SystemsFactory, id: &str, edit: &MappingEdit) -> anyhow::Result<Preview> {
    let settings = connections::load(pool, id).await?;
    let before = settings.field_map.clone();
    let after = before.edited(edit)?;
    let systems = factory.systems(id, &settings).await?;
    if let MappingEdit::Add(f) = edit {
        available(&systems).await.check(f)?;
    }
    preview_with(pool, &systems, id, edit, &before, &after).await
}

async fn preview_with(
    pool: &PgPool,
    systems: &Systems,
    id: &str,
    edit: &MappingEdit,
    before: &FieldMap,
    after: &FieldMap,
) -> anyhow::Result<Preview> {
    let linked: Vec<PairRow> = identities::pairs(pool, id).await?.into_iter().filter(|p| p.status == "linked").collect();
    let added: BTreeSet<String> = after.changed_fields(before).into_iter().filter(|f| before.by_ma_field(f).is_none()).collect();
    let mut out = Preview {
        edit: edit.clone(),
        before: before.by_ma_field(edit.field()).cloned(),
        after: after.by_ma_field(edit.field()).cloned(),
        linked: linked.len(),
        ma_writes: 0,
        crm_writes: 0,
        sample: Vec::new(),
        affected: Vec::new(),
    };
    for chunk in linked.chunks(CHUNK) {
        let keys = Keys { ids: chunk.iter().map(|p| p.id).collect(), ..Keys::default() };
        let rows = identities::find(pool, id, &keys, State::All).await?;
        let mut states: HashMap<Uuid, IdentityFields> = rows.into_iter().map(|r| (r.id, r.fields)).collect();
        if !added.is_empty() {
            observe_current(systems, chunk, after, &added, &mut states).await?;
        }
        for pair in chunk {
            let Some(state) = states.get(&pair.id) else { continue };
            let Some(object) = CrmObject::parse(&pair.crm_object) else { continue };
            let ma = caused(state, before, after, Side::Ma, object);
            let crm = caused(state, before, after, Side::Crm, object);
            if ma.is_empty() && crm.is_empty() {
                continue;
            }
            out.ma_writes += usize::from(!ma.is_empty());
            out.crm_writes += usize::from(!crm.is_empty());
            if out.sample.len() < SAMPLE {
                out.sample.push(PairChange {
                    prospect_id: pair.prospect_id,
                    crm_object: pair.crm_object.clone(),
                    crm_id: pair.crm_id.clone(),
                    ma,
                    crm,
                });
            }
            out.affected.push(pair.clone());
        }
    }
    Ok(out)
}

/// Observes, into each pair's state, both sides' current values of the
/// newly mapped fields, as the matcher would from the records.
async fn observe_current(
    systems: &Systems,
    pairs: &[PairRow],
    after: &FieldMap,
    added: &BTreeSet<String>,
    states: &mut HashMap<Uuid, IdentityFields>,
) -> anyhow::Result<()> {
    let prospects = systems.ma.prospects_by_id(&pairs.iter().map(|p| p.prospect_id).collect::<Vec<_>>()).await?;
    let crm_ids: Vec<CrmId> = pairs.iter().filter_map(|p| CrmId::parse(&p.crm_id).ok()).collect();
    let people = systems.crm.people_by_id(&crm_ids).await?;
    let by_prospect: HashMap<i64, SourceRecord> = prospects.into_iter().map(|p| (p.id, SourceRecord::Prospect(p))).collect();
    let by_crm: HashMap<String, SourceRecord> =
        people.into_iter().filter_map(|c| CrmId::parse(&c.id).ok().map(|id| (id.to_string(), SourceRecord::Crm(c)))).collect();
    for pair in pairs {
        let Some(state) = states.get_mut(&pair.id) else { continue };
        let records = [by_prospect.get(&pair.prospect_id), by_crm.get(&pair.crm_id)];
        for record in records.into_iter().flatten() {
            let me = systems.integration_user(record.side());
            let obs: Vec<_> = record.observations(after, Some(me)).into_iter().filter(|o| added.contains(&o.field)).collect();
            state.observe_all(after, &obs);
        }
    }
    Ok(())
}

/// What saving did.
#[derive(Debug, Clone, Serialize)]
pub struct Saved {
    pub preview: Preview,
    /// Records sent to the batch lane to re-sync the affected pairs.
    pub resynced: usize,
}

/// Saves `edit` to connection `id`'s mapping: validated, in one transaction
/// with its admin audit entry (the field's mapping before → after), then
/// re-syncs the pairs the preview finds affected through the batch lane, so
/// that the change reaches existing records within the batch budget (R7).
pub async fn save(
    config: &Config,
    pool: &PgPool,
    factory: &SystemsFactory,
    actor: &Actor,
    id: &str,
    edit: &MappingEdit,
) -> anyhow::Result<Saved> {
    let mut tx = pool.begin().await?;
    let mut settings = connections::load_for_update(&mut *tx, id).await?;
    let before = settings.field_map.clone();
    let after = before.edited(edit)?;
    let systems = factory.systems(id, &settings).await?;
    if let MappingEdit::Add(f) = edit {
        available(&systems).await.check(f)?;
    }
    let preview = preview_with(pool, &systems, id, edit, &before, &after).await?;
    settings.field_map = after;
    connections::save(&mut *tx, id, &settings).await?;
    let to_value = |m: &Option<FieldMapping>| m.as_ref().map(|m| serde_json::to_value(m).unwrap_or(Value::Null));
    let entry = NewEntry {
        actor,
        connection_id: Some(id),
        action: edit.action(),
        target: Some(edit.field()),
        before: to_value(&preview.before),
        after: to_value(&preview.after),
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    // A new field's values live only in the records so far: both sides are
    // read again. Otherwise the engine's state holds everything, and one
    // side's record is enough for the applier to plan both sides' writes.
    let both = matches!(edit, MappingEdit::Add(_));
    let resynced = resync(config, &systems, id, &preview.affected, both)
        .await
        .context("the mapping is saved, but its re-sync was not sent: run the change again or wait for the records' next edit")?;
    Ok(Saved { preview, resynced })
}

/// Sends pairs' records through the batch lane, as changes detected now.
pub(crate) async fn resync(config: &Config, systems: &Systems, id: &str, pairs: &[PairRow], both: bool) -> anyhow::Result<usize> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let broker = Broker::new(&config.amqp, "crmsync-resync");
    broker.live().await.context("connecting to RabbitMQ")?;
    let result = async {
        let mut sent = 0;
        for chunk in pairs.chunks(RESYNC_CHUNK) {
            let mut names = Vec::new();
            for p in chunk {
                if both {
                    names.push(RecordName { object: "prospect".into(), id: p.prospect_id.to_string() });
                }
                names.push(RecordName { object: p.crm_object.clone(), id: p.crm_id.clone() });
            }
            let done = crmsync_producer::redetect(&broker, systems, id, &names, Lane::Batch, names.len())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            sent += done.published.len();
        }
        anyhow::Ok(sent)
    }
    .await;
    broker.close().await;
    result
}
