//! `crmsync connection ...`: list, show, create and change connections.
//!
//! Changing a CSQL option goes through its guard (R9): `csql.target` cannot
//! switch while either CS object (lead or opportunity) holds records, and `csql.record_type`
//! first says what configuration changes with it and needs `--yes`.

use anyhow::{Context, bail};
use crmsync_connector::ConnectorFactory;
use crmsync_domain::csql::{self, CsqlRecordType, CsqlSwitchError};
use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_infra::Config;
use crmsync_store::connections;
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

use crate::args::ConnectionCmd;

pub async fn run(config: &Config, pool: &PgPool, cmd: ConnectionCmd) -> anyhow::Result<()> {
    match cmd {
        ConnectionCmd::List => {
            for id in connections::ids(pool).await? {
                let s = connections::load(pool, &id).await?;
                outln!(
                    "{id}\tauto_create_prospects={}\tbatch_threshold={}\tbatch_budget_per_hour={}\tcsql.target={}",
                    s.auto_create_prospects,
                    s.batch_threshold,
                    s.batch_budget_per_hour,
                    s.csql.target
                );
            }
        }
        ConnectionCmd::Show { id } => {
            outln!("{}", serde_json::to_string_pretty(&connections::load(pool, &id).await?)?);
        }
        ConnectionCmd::Create { id, ma_tenant, crm_tenant } => {
            if connections::ids(pool).await?.contains(&id) {
                bail!("connection {id:?} already exists");
            }
            let settings = ConnectionSettings {
                ma: SystemEndpoint::sandbox(&ma_tenant),
                crm: SystemEndpoint::sandbox(&crm_tenant),
                ..ConnectionSettings::default()
            };
            connections::save(pool, &id, &settings).await?;
            outln!("connection {id} created");
        }
        ConnectionCmd::AddCustomObject { id, name, fields, lookup_field, lookup_object } => {
            let lookup_object = crmsync_domain::CrmObject::parse(&lookup_object)
                .ok_or_else(|| anyhow::anyhow!("--lookup-object must be lead, contact or account, not {lookup_object:?}"))?;
            let mut s = connections::load(pool, &id).await?;
            s.declare_custom_object(crmsync_domain::mirror::CustomObject { name: name.clone(), fields, lookup_field, lookup_object })?;
            connections::save(pool, &id, &s).await?;
            outln!("{id}: custom object {name} is mirrored into the MA");
        }
        ConnectionCmd::Set { id, key, value, yes } => {
            for line in set(config, pool, &id, &key, &value, yes).await? {
                outln!("  - {line}");
            }
            outln!("{id}: {key} = {value}");
        }
    }
    Ok(())
}

/// Changes one setting of a connection, through its guard; returns what
/// changed with it, to be shown.
pub async fn set(config: &Config, pool: &PgPool, id: &str, key: &str, value: &str, confirmed: bool) -> anyhow::Result<Vec<String>> {
    let before = connections::load(pool, id).await?;
    let mut after = before.clone();
    after.set(key, value, chrono::Utc::now())?;
    let mut notes = Vec::new();
    let mut switch_cs_config = None;
    if key.starts_with("csql.") {
        let factory = SystemsFactory::from_config(config, pool).await?;
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
            notes = csql::check_record_type_switch(&before.csql, after.csql.record_type, renewal, confirmed).map_err(|e| match e {
                CsqlSwitchError::NeedsConfirmation { .. } => anyhow::anyhow!("{e}\nrun it again with --yes to switch"),
                other => other.into(),
            })?;
        }
        // Applied even when unchanged: running the command again finishes
        // a switch whose CS half failed.
        if key == "csql.record_type" {
            switch_cs_config = cs;
        }
    }
    connections::save(pool, id, &after).await?;
    if let Some(cs) = switch_cs_config {
        cs.switch_csql_record_type(after.csql.record_type)
            .await
            .with_context(|| format!("{key} is saved, but the CS configuration did not switch; run the command again"))?;
    }
    Ok(notes)
}
