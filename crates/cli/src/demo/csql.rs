//! The demo's CSQL section (R9): CSQLs saved by CSMs under each sync option,
//! with a rejected logged-in sync, a refused target switch, the admin's bulk
//! delete, and a record-type switch that shares the renewal center's settings.
//!
//! Every change goes through the same commands a user would run (the guarded
//! `connection set`, the sandbox's CS operations) and through the running
//! tiers; each phase waits for the pipeline to be idle before it shows what
//! reached the CRM.

use crmsync_domain::csql::{CsUserType, CsqlRecordType};
use crmsync_infra::Config;
use crmsync_sandbox::ops::Sandbox;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use super::CONNECTION;
use crate::connection_cmd;
use crate::progress::Progress;

const LEAD: CsqlRecordType = CsqlRecordType::Lead;
const OPPORTUNITY: CsqlRecordType = CsqlRecordType::Opportunity;

/// The CS users of the demo.
struct People {
    /// A CSM whose CRM user has API access.
    cleo: i64,
    /// A CSM whose CRM user has no API access.
    noah: i64,
    /// An internal collaborator from sales (a free CS user), tied to a CRM sales user.
    sam: i64,
    sam_crm: String,
    admin: i64,
}

async fn people(sb: &Sandbox) -> anyhow::Result<People> {
    let cleo_crm = sb.create_crm_user("Cleo CSM", "cleo@cs.example", true, true).await?;
    let noah_crm = sb.create_crm_user("Noah CSM", "noah@cs.example", true, false).await?;
    let sam_crm = sb.create_crm_user("Sam Seller", "sam@sales.example", true, true).await?;
    let cleo = sb.create_cs_user("Cleo CSM", "cleo@cs.example", CsUserType::Csm, Some(&cleo_crm), false, false).await?;
    let noah = sb.create_cs_user("Noah CSM", "noah@cs.example", CsUserType::Csm, Some(&noah_crm), false, false).await?;
    let sam = sb.create_cs_user("Sam Seller", "sam@sales.example", CsUserType::InternalCollaborator, Some(&sam_crm), false, false).await?;
    let admin = sb.create_cs_user("Ada Admin", "ada@cs.example", CsUserType::Csm, None, true, false).await?;
    Ok(People { cleo, noah, sam, sam_crm, admin })
}

fn lead(name: &str) -> Vec<(String, String)> {
    [
        ("FirstName", "Demo"),
        ("LastName", name),
        ("Company", &format!("{name} Expansion Ltd")),
        ("Email", &format!("{}@csql.example", name.to_lowercase())),
        ("Title", "Operations lead"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn opportunity(name: &str) -> Vec<(String, String)> {
    [("Name", name), ("Company", "Expansion Co"), ("Amount", "24000"), ("CloseDate", "2027-03-31")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The CRM record a CSQL became, if any.
async fn crm_record(pool: &PgPool, kind: CsqlRecordType, id: i64) -> anyhow::Result<Option<Value>> {
    let table = match kind {
        CsqlRecordType::Lead => "crm.leads",
        CsqlRecordType::Opportunity => "crm.opportunities",
    };
    Ok(sqlx::query_scalar(AssertSqlSafe(format!("SELECT to_jsonb(t) FROM {table} t WHERE crmsync_id = $1")))
        .bind(format!("csql:{}:{id}", kind.as_str()))
        .fetch_optional(pool)
        .await?)
}

/// One line on what became of a CSQL.
async fn outcome(pool: &PgPool, sb: &Sandbox, kind: CsqlRecordType, id: i64, who: &str) -> anyhow::Result<String> {
    let row = sb.show(crmsync_sandbox::cs::def_of(kind), &id.to_string()).await?;
    let status = row["sync_status"].as_str().unwrap_or("?");
    Ok(match crm_record(pool, kind, id).await? {
        Some(r) => format!(
            "CSQL {kind} {id} saved by {who}: {status} → CRM {kind} {} (written as {}, owner {}{})",
            r["id"].as_str().unwrap_or("?"),
            r["created_by"].as_str().unwrap_or("?"),
            r["owner_id"].as_str().unwrap_or("?"),
            r["csql_created_by"].as_str().map(|c| format!(", created by {c}")).unwrap_or_default(),
        ),
        None => format!(
            "CSQL {kind} {id} saved by {who}: {status}{}",
            row["sync_error"].as_str().map(|e| format!(" (kept in the CS platform) — {e}")).unwrap_or_default()
        ),
    })
}

async fn set(config: &Config, pool: &PgPool, key: &str, value: &str, confirmed: bool) -> anyhow::Result<Vec<String>> {
    connection_cmd::set(config, pool, CONNECTION, key, value, confirmed).await
}

/// Runs the CSQL section with the CS platform `cs` (a `cs` setting's
/// value); `settle` waits until the tiers are idle.
pub async fn run(
    config: &Config,
    pool: &PgPool,
    sb: &Sandbox,
    cs: &str,
    mut settle: impl AsyncFnMut() -> anyhow::Result<Progress>,
) -> anyhow::Result<()> {
    let p = people(sb).await?;
    set(config, pool, "cs", cs, false).await?;
    outln!("   CS users: Cleo (CSM, CRM user with API access), Noah (CSM, CRM user without), Sam (internal collaborator from sales)");

    // Target `cs` (the default): nothing leaves the CS platform.
    let kept = [sb.create_csql(LEAD, p.cleo, None, &lead("Keepsake")).await?, sb.create_csql(LEAD, p.cleo, None, &lead("Homebody")).await?];
    settle().await?;
    let in_crm = leads_in_crm(pool, &kept).await?;
    outln!("   - target cs: Cleo saved {} CSQLs; {in_crm} reached the CRM (they stay in the CS platform)", kept.len());

    // The guard: no switch while the CS lead object holds records.
    match set(config, pool, "csql.target", "crm", false).await {
        Err(e) => outln!("   - switching csql.target to crm is refused: {e}"),
        Ok(_) => anyhow::bail!("the target switch should have been refused while CS lead records exist"),
    }
    let deleted = sb.delete_all_csqls(LEAD, p.admin).await?;
    set(config, pool, "csql.target", "crm", false).await?;
    outln!("   - the CS admin bulk-deleted {deleted} CS lead records; csql.target = crm is now accepted");

    // crm + lead + logged_in.
    let by_cleo = sb.create_csql(LEAD, p.cleo, Some(p.sam), &lead("Handover")).await?;
    let by_noah = sb.create_csql(LEAD, p.noah, None, &lead("Blocked")).await?;
    settle().await?;
    outln!("   - crm + lead + logged_in:");
    outln!("       {}", outcome(pool, sb, LEAD, by_cleo, "Cleo, owned by Sam").await?);
    outln!("       {}", outcome(pool, sb, LEAD, by_noah, "Noah").await?);
    outln!("       (Sam's CRM user is {}: the sales collaborator owns the lead)", p.sam_crm);

    // crm + lead + integration: Noah's CSQL goes through when saved again.
    set(config, pool, "csql.sync_user", "integration", false).await?;
    sb.update_csql(LEAD, by_noah, p.noah, &[("Title".into(), "Head of Operations".into())]).await?;
    settle().await?;
    outln!("   - crm + lead + integration (Noah saves his CSQL again):");
    outln!("       {}", outcome(pool, sb, LEAD, by_noah, "Noah").await?);

    // The record type: confirmation first, with what changes.
    sb.configure_renewal_center(&["Renewal Open".into(), "Renewal Committed".into(), "Renewed".into(), "Churned".into()]).await?;
    match set(config, pool, "csql.record_type", "opportunity", false).await {
        Err(e) => {
            outln!("   - switching csql.record_type without confirmation is refused, saying what changes:");
            for line in e.to_string().lines() {
                outln!("       {line}");
            }
        }
        Ok(_) => anyhow::bail!("the record-type switch should need confirmation"),
    }
    set(config, pool, "csql.record_type", "opportunity", true).await?;
    sb.set_cs_stages("renewal", &["Open".into(), "Committed".into(), "Won".into(), "Lost".into()]).await?;
    let shared = sb.cs_config("opportunity").await?;
    outln!(
        "   - confirmed (--yes); the renewal center's stages, edited there, now show on the CSQL opportunity side: {}",
        shared["stages"]
    );

    // crm + opportunity, under both sync users.
    set(config, pool, "csql.sync_user", "logged_in", false).await?;
    let opp_cleo = sb.create_csql(OPPORTUNITY, p.cleo, None, &opportunity("Seat expansion")).await?;
    let opp_noah = sb.create_csql(OPPORTUNITY, p.noah, None, &opportunity("Premium support")).await?;
    settle().await?;
    outln!("   - crm + opportunity + logged_in:");
    outln!("       {}", outcome(pool, sb, OPPORTUNITY, opp_cleo, "Cleo").await?);
    outln!("       {}", outcome(pool, sb, OPPORTUNITY, opp_noah, "Noah").await?);
    set(config, pool, "csql.sync_user", "integration", false).await?;
    sb.update_csql(OPPORTUNITY, opp_noah, p.noah, &[("Stage".into(), "Qualification".into())]).await?;
    settle().await?;
    outln!("   - crm + opportunity + integration (Noah saves again):");
    outln!("       {}", outcome(pool, sb, OPPORTUNITY, opp_noah, "Noah").await?);
    Ok(())
}

/// How many of these CSQL leads reached the CRM.
async fn leads_in_crm(pool: &PgPool, ids: &[i64]) -> anyhow::Result<usize> {
    let mut n = 0;
    for id in ids {
        n += usize::from(crm_record(pool, LEAD, *id).await?.is_some());
    }
    Ok(n)
}
