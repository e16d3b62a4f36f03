//! The report's check of the MA's read-only mirrors (R4–R6): every CRM
//! account, opportunity and declared custom record is read back, what the
//! rules say its mirror should be is worked out afresh (from the CRM and the
//! identity map, with the same pure rules), and compared with what the MA
//! holds: values and the exact set of prospects that see it.

use std::collections::{BTreeMap, BTreeSet};

use crmsync_connector::Systems;
use crmsync_domain::merge::same_value;
use crmsync_domain::mirror::{self, CrmObjectRecord, MirrorKind, MirrorObject, MirrorPlan};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject};
use crmsync_store::identities;
use sqlx::PgPool;

/// What the check found for one kind of mirror.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MirrorCounts {
    pub kind: String,
    /// CRM records looked at.
    pub sources: usize,
    /// Of which the rules say the MA shows.
    pub expected: usize,
    /// Links to prospects the rules expect, in total.
    pub links: usize,
    /// Records whose MA mirror differs from what the rules say.
    pub wrong: Vec<String>,
}

async fn all(systems: &Systems, object: &MirrorObject) -> anyhow::Result<Vec<CrmObjectRecord>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = systems.crm.object_changes(object, cursor.as_ref(), 1000).await?;
        out.extend(page.records);
        cursor = Some(page.next);
        if !page.has_more {
            return Ok(out);
        }
    }
}

/// CRM id → prospect, for every linked identity.
async fn prospect_of(pool: &PgPool, connection_id: &str) -> anyhow::Result<BTreeMap<CrmId, i64>> {
    Ok(identities::linked(pool, connection_id)
        .await?
        .into_iter()
        .filter_map(|l| CrmId::parse(&l.crm_id).ok().map(|c| (c, l.prospect_id)))
        .collect())
}

async fn compare(systems: &Systems, kind: MirrorKind, id: &CrmId, plan: &MirrorPlan, counts: &mut MirrorCounts) -> anyhow::Result<()> {
    let held = systems.ma.mirror(&kind, id).await?;
    let right = match (plan, &held) {
        (MirrorPlan::Absent, None) => true,
        (MirrorPlan::Present { fields, prospects }, Some(h)) => {
            counts.expected += 1;
            counts.links += prospects.len();
            h.prospects == *prospects && fields.iter().all(|(k, v)| h.fields.get(k).is_some_and(|m| same_value(m, v) || numeric_eq(m, v)))
        }
        (MirrorPlan::Present { prospects, .. }, None) => {
            counts.expected += 1;
            counts.links += prospects.len();
            false
        }
        (MirrorPlan::Absent, Some(_)) => false,
    };
    if !right {
        counts.wrong.push(id.to_string());
    }
    Ok(())
}

/// Amounts come back from the database as numbers in another notation.
fn numeric_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let num = |v: &serde_json::Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    matches!((num(a), num(b)), (Some(x), Some(y)) if (x - y).abs() < 1e-9)
}

/// Checks every mirror of a connection.
pub async fn check(
    pool: &PgPool,
    connection_id: &str,
    settings: &ConnectionSettings,
    systems: &Systems,
) -> anyhow::Result<Vec<MirrorCounts>> {
    let prospects = prospect_of(pool, connection_id).await?;
    // Contacts of each account, once, for accounts and account-tied customs.
    let mut contacts_of: BTreeMap<CrmId, Vec<CrmId>> = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = systems.crm.person_changes(CrmObject::Contact, cursor.as_ref(), 1000).await?;
        for c in page.records.iter().filter(|c| !c.is_deleted) {
            let account = c.fields.get("AccountId").and_then(|f| f.value.as_str()).and_then(|a| CrmId::parse(a).ok());
            if let (Some(a), Ok(id)) = (account, CrmId::parse(&c.id)) {
                contacts_of.entry(a).or_default().push(id);
            }
        }
        cursor = Some(page.next);
        if !page.has_more {
            break;
        }
    }
    let seen_by_account =
        |a: &CrmId| -> BTreeSet<i64> { contacts_of.get(a).into_iter().flatten().filter_map(|c| prospects.get(c).copied()).collect() };

    let mut out = Vec::new();
    let mut accounts = MirrorCounts { kind: "prospect accounts".into(), ..Default::default() };
    for a in all(systems, &MirrorObject::Account).await? {
        let Ok(id) = CrmId::parse(&a.id) else { continue };
        accounts.sources += 1;
        let plan = mirror::account_plan(Some(&a), seen_by_account(&id));
        compare(systems, MirrorKind::ProspectAccount, &id, &plan, &mut accounts).await?;
    }
    out.push(accounts);

    let roles = all(systems, &MirrorObject::ContactRole).await?;
    let mut opportunities = MirrorCounts { kind: "opportunities".into(), ..Default::default() };
    for o in all(systems, &MirrorObject::Opportunity).await? {
        let Ok(id) = CrmId::parse(&o.id) else { continue };
        opportunities.sources += 1;
        let own: Vec<CrmObjectRecord> = roles.iter().filter(|r| r.lookup("OpportunityId").as_ref() == Some(&id)).cloned().collect();
        let plan = mirror::opportunity_plan(Some(&o), &own, &prospects);
        compare(systems, MirrorKind::Opportunity, &id, &plan, &mut opportunities).await?;
    }
    out.push(opportunities);

    for decl in &settings.custom_objects {
        let mut counts = MirrorCounts { kind: decl.name.clone(), ..Default::default() };
        for r in all(systems, &MirrorObject::Custom(decl.name.clone())).await? {
            let Ok(id) = CrmId::parse(&r.id) else { continue };
            counts.sources += 1;
            let seen = match (r.lookup(&decl.lookup_field), decl.lookup_object) {
                (None, _) => BTreeSet::new(),
                (Some(t), CrmObject::Account) => seen_by_account(&t),
                (Some(t), _) => prospects.get(&t).copied().into_iter().collect(),
            };
            let plan = mirror::custom_plan(Some(&r), decl, seen);
            compare(systems, MirrorKind::Custom(decl.name.clone()), &id, &plan, &mut counts).await?;
        }
        out.push(counts);
    }
    Ok(out)
}
