//! `crmsync connection ...`: list, show, create and change connections.
//!
//! Changing a CSQL option goes through its guard (R9): `csql.target` cannot
//! switch while either CS object (lead or opportunity) holds records, and `csql.record_type`
//! first says what configuration changes with it and needs `--yes`. Every
//! change is written to the admin audit log, as the console's are, and
//! so are pausing and resuming a connection.

use anyhow::bail;
use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_infra::Config;
use crmsync_ops::settings;
use crmsync_store::admin_audit::Actor;
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
        ConnectionCmd::Mapping { id, json, change } => crate::mapping_cmd::mapping(config, pool, &id, json, change).await?,
        ConnectionCmd::Scope { id, json, change } => crate::mapping_cmd::scope(config, pool, &id, json, change).await?,
        ConnectionCmd::Pause { id } => pause(pool, &id, true).await?,
        ConnectionCmd::Resume { id } => pause(pool, &id, false).await?,
        ConnectionCmd::Set { id, key, value, yes } => {
            for line in set(config, pool, &id, &key, &value, yes).await? {
                outln!("  - {line}");
            }
            outln!("{id}: {key} = {value}");
        }
    }
    Ok(())
}

/// Changes one setting of a connection, through its guard (see
/// [`crmsync_ops::settings::set`]), recorded in the admin audit log as the
/// operating-system user running the command; returns what changed with
/// it, to be shown.
pub async fn set(config: &Config, pool: &PgPool, id: &str, key: &str, value: &str, confirmed: bool) -> anyhow::Result<Vec<String>> {
    let factory = SystemsFactory::from_config(config, pool).await?;
    match settings::set(pool, &factory, &Actor::cli(), id, key, value, confirmed).await {
        Ok(changed) => Ok(changed.notes),
        Err(e) if settings::needs_confirmation(&e) => Err(anyhow::anyhow!("{e}\nrun it again with --yes to switch")),
        Err(e) => Err(e),
    }
}

/// Pauses or resumes a connection through [`crmsync_ops::pause::set_paused`]
/// (audited as the operating-system user running the command).
async fn pause(pool: &PgPool, id: &str, paused: bool) -> anyhow::Result<()> {
    let change = crmsync_ops::pause::set_paused(pool, &Actor::cli(), id, paused).await?;
    outln!("{}", change.describe());
    if change.changed() && !paused {
        outln!("{id} catches up from its held cursors at the producer's next poll");
    }
    Ok(())
}
