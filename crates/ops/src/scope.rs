//! Changing a connection's sync scope (issue 28): which CRM records sync.
//! A preview counts the CRM records and the synced pairs in and out of a
//! proposed scope; saving is validated, audited (before → after) and sends
//! the pairs whose side of the scope changed through the batch lane, so a
//! pair leaving the scope has its prospect recycled and one entering it is
//! restored without waiting for the record's next edit. `crmsync
//! connection scope` and the console's scope page both call these.

use anyhow::Context;
use crmsync_connector::{ConnectorFactory, Systems};
use crmsync_domain::records::CrmPersonRecord;
use crmsync_domain::scope::SyncScope;
use crmsync_domain::{CrmId, CrmObject};
use crmsync_infra::Config;
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::connections;
use crmsync_store::identities::{self, PairRow};
use crmsync_systems::SystemsFactory;
use serde::Serialize;
use sqlx::PgPool;

/// CRM records counted at most per object: past this the count says so.
const COUNT_LIMIT: usize = 100_000;
/// Records read per call.
const PAGE: usize = 2_000;

/// How many are in and out of a scope.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InOut {
    pub in_scope: usize,
    pub out_of_scope: usize,
}

/// What a scope would do, before it is saved.
#[derive(Debug, Clone, Serialize)]
pub struct ScopePreview {
    pub before: SyncScope,
    pub after: SyncScope,
    /// Live leads and contacts in the CRM.
    pub records: InOut,
    /// Whether the CRM held more records than were counted.
    pub records_capped: bool,
    /// Pairs (linked, or recycled for leaving the scope) whose CRM record
    /// is in and out of the proposed scope.
    pub pairs: InOut,
    /// Linked pairs whose prospect would go to the recycle bin.
    pub leaving: usize,
    /// Recycled pairs whose prospect would come back.
    pub entering: usize,
    /// Some of the pairs leaving, as (prospect id, CRM id).
    pub sample_leaving: Vec<(i64, String)>,
    /// Every pair whose side of the scope changes (what saving re-syncs).
    #[serde(skip)]
    pub changing: Vec<PairRow>,
}

/// Counts, for `after`, the CRM's live leads and contacts and the
/// connection's pairs in and out of it.
pub async fn preview(pool: &PgPool, factory: &SystemsFactory, id: &str, after: &SyncScope) -> anyhow::Result<ScopePreview> {
    after.validate()?;
    let settings = connections::load(pool, id).await?;
    let systems = factory.systems(id, &settings).await?;
    preview_with(pool, &systems, id, &settings.sync_scope, after).await
}

async fn preview_with(pool: &PgPool, systems: &Systems, id: &str, before: &SyncScope, after: &SyncScope) -> anyhow::Result<ScopePreview> {
    let mut out = ScopePreview {
        before: before.clone(),
        after: after.clone(),
        records: InOut::default(),
        records_capped: false,
        pairs: InOut::default(),
        leaving: 0,
        entering: 0,
        sample_leaving: Vec::new(),
        changing: Vec::new(),
    };
    // Every live lead and contact, paged through the change feed from its
    // beginning (the one listing every connector has).
    for object in [CrmObject::Lead, CrmObject::Contact] {
        let mut cursor = None;
        let mut seen = 0;
        loop {
            let page = systems.crm.person_changes(object, cursor.as_ref(), PAGE).await?;
            for r in page.records.iter().filter(|r| !r.is_deleted && !r.is_converted) {
                if after.includes_record(r) {
                    out.records.in_scope += 1;
                } else {
                    out.records.out_of_scope += 1;
                }
            }
            seen += page.records.len();
            if !page.has_more || page.records.is_empty() {
                break;
            }
            if seen >= COUNT_LIMIT {
                out.records_capped = true;
                break;
            }
            cursor = Some(page.next);
        }
    }
    let pairs = identities::pairs(pool, id).await?;
    for chunk in pairs.chunks(PAGE) {
        let ids: Vec<CrmId> = chunk.iter().filter_map(|p| CrmId::parse(&p.crm_id).ok()).collect();
        let read: Vec<CrmPersonRecord> = systems.crm.people_by_id(&ids).await?;
        for pair in chunk {
            let Some(r) = read.iter().find(|r| CrmId::parse(&r.id).is_ok_and(|i| i.as_str() == pair.crm_id)) else { continue };
            // A record deleted in the CRM stays recycled whatever the scope.
            if r.is_deleted {
                continue;
            }
            let now_in = after.includes_record(r);
            if now_in {
                out.pairs.in_scope += 1;
            } else {
                out.pairs.out_of_scope += 1;
            }
            match (pair.status.as_str(), now_in) {
                ("linked", false) => {
                    out.leaving += 1;
                    if out.sample_leaving.len() < 10 {
                        out.sample_leaving.push((pair.prospect_id, pair.crm_id.clone()));
                    }
                    out.changing.push(pair.clone());
                }
                // Recycled while the record is live: it left the scope, and
                // comes back now.
                ("recycled", true) => {
                    out.entering += 1;
                    out.changing.push(pair.clone());
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// What saving a scope did.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeSaved {
    pub preview: ScopePreview,
    pub resynced: usize,
}

/// Saves connection `id`'s sync scope: validated, in one transaction with
/// its admin audit entry (the rules before → after), then the pairs whose
/// side of the scope changes are re-synced through the batch lane.
pub async fn save(
    config: &Config,
    pool: &PgPool,
    factory: &SystemsFactory,
    actor: &Actor,
    id: &str,
    after: &SyncScope,
) -> anyhow::Result<ScopeSaved> {
    after.validate()?;
    let mut tx = pool.begin().await?;
    let mut settings = connections::load_for_update(&mut *tx, id).await?;
    let systems = factory.systems(id, &settings).await?;
    crate::mapping::available(&systems).await.check_scope(after)?;
    let preview = preview_with(pool, &systems, id, &settings.sync_scope, after).await?;
    let entry = NewEntry {
        actor,
        connection_id: Some(id),
        action: "scope.set",
        target: Some("sync_scope"),
        before: Some(serde_json::to_value(&settings.sync_scope)?),
        after: Some(serde_json::to_value(after)?),
    };
    settings.sync_scope = after.clone();
    connections::save(&mut *tx, id, &settings).await?;
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    let resynced = crate::mapping::resync(config, &systems, id, &preview.changing, false)
        .await
        .context("the scope is saved, but its re-sync was not sent: the pairs follow at their records' next edit")?;
    Ok(ScopeSaved { preview, resynced })
}
