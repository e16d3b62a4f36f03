//! Changing one setting of a connection: through its guard (R9), in one
//! transaction with its entry in the admin audit log (the value before and
//! after). `crmsync connection set` and the console's settings page both
//! call [`set`], so neither can skip a check the other makes.

use anyhow::{Context, bail};
use crmsync_connector::ConnectorFactory;
use crmsync_domain::csql::{self, CsqlRecordType, CsqlSwitchError};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::connections;
use crmsync_systems::SystemsFactory;
use serde_json::Value;
use sqlx::PgPool;

/// What a change did.
#[derive(Debug, Clone)]
pub struct Changed {
    /// What changed with it, to be shown (a record-type switch's list).
    pub notes: Vec<String>,
    pub before: Value,
    pub after: Value,
}

/// The value of one settable key (`csql.target`, `cs`...) as stored: null
/// when unset.
pub fn value_of(settings: &ConnectionSettings, key: &str) -> Value {
    let whole = serde_json::to_value(settings).unwrap_or(Value::Null);
    key.split('.').try_fold(&whole, |v, part| v.get(part)).cloned().unwrap_or(Value::Null)
}

/// Whether an error is a switch that needs to be confirmed (and was not):
/// its message lists what changes with it.
pub fn needs_confirmation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<CsqlSwitchError>(), Some(CsqlSwitchError::NeedsConfirmation { .. })))
}

/// Changes one setting of a connection through its guard, and records it,
/// as `actor`, in the admin audit log.
pub async fn set(
    pool: &PgPool,
    factory: &SystemsFactory,
    actor: &Actor,
    id: &str,
    key: &str,
    value: &str,
    confirmed: bool,
) -> anyhow::Result<Changed> {
    let mut tx = pool.begin().await?;
    let before = connections::load_for_update(&mut *tx, id).await?;
    let mut after = before.clone();
    after.set(key, value, chrono::Utc::now())?;
    let mut notes = Vec::new();
    let mut switch_cs_config = None;
    if key.starts_with("csql.") {
        let cs = match &before.cs {
            Some(_) => factory.systems(id, &before).await?.cs,
            None => None,
        };
        if after.csql.target != before.csql.target {
            let Some(cs) = &cs else {
                bail!("connection {id} has no CS platform: set one first (crmsync connection set {id} cs <CS tenant>)");
            };
            // Both objects, whatever the record type: a record-type switch
            // leaves the other object's records where they were (R9).
            let mut counts = Vec::new();
            for kind in [CsqlRecordType::Lead, CsqlRecordType::Opportunity] {
                counts.push((kind, cs.csql_count(kind).await.context("counting CS records")?));
            }
            csql::check_target_switch(&before.csql, after.csql.target, &counts)?;
        }
        if after.csql.record_type != before.csql.record_type {
            let renewal = match &cs {
                Some(cs) => cs.renewal_center_configured().await?,
                None => false,
            };
            notes = csql::check_record_type_switch(&before.csql, after.csql.record_type, renewal, confirmed)?;
        }
        // Applied even when unchanged: making the change again finishes a
        // switch whose CS half failed.
        if key == "csql.record_type" {
            switch_cs_config = cs;
        }
    }
    let changed = Changed { notes, before: value_of(&before, key), after: value_of(&after, key) };
    connections::save(&mut *tx, id, &after).await?;
    let entry = NewEntry {
        actor,
        connection_id: Some(id),
        action: "setting.set",
        target: Some(key),
        before: Some(changed.before.clone()),
        after: Some(changed.after.clone()),
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    if let Some(cs) = switch_cs_config {
        cs.switch_csql_record_type(after.csql.record_type)
            .await
            .with_context(|| format!("{key} is saved, but the CS configuration did not switch; make the change again"))?;
    }
    Ok(changed)
}
