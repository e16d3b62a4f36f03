//! `crmsync connection mapping` and `crmsync connection scope`: the field
//! mapping (R2) and the sync scope of a connection, listed, previewed and
//! changed through the same audited functions as the console's pages
//! (`crmsync_ops::mapping`, `crmsync_ops::scope`).

use anyhow::Context;
use crmsync_domain::mapping::{FieldMapping, MappingEdit, SyncBehaviour};
use crmsync_domain::merge::Side;
use crmsync_domain::scope::{Condition, SyncScope};
use crmsync_infra::Config;
use crmsync_ops::mapping::{self, Preview};
use crmsync_ops::scope::{self, ScopePreview};
use crmsync_store::admin_audit::Actor;
use crmsync_store::connections;
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

use crate::args::{BehaviourArgs, MappingCmd, ScopeCmd};

fn side(s: Option<&str>) -> Option<Side> {
    s.map(|s| if s == "ma" { Side::Ma } else { Side::Crm })
}

fn behaviour(b: &BehaviourArgs) -> anyhow::Result<SyncBehaviour> {
    SyncBehaviour::parse(&b.sync).with_context(|| format!("unknown behaviour {:?}", b.sync))
}

/// The edit a command asks for, and whether it only previews.
fn edit_of(change: MappingCmd) -> anyhow::Result<(MappingEdit, bool)> {
    Ok(match change {
        MappingCmd::Set { ma_field, behaviour: b } => (
            MappingEdit::Set {
                ma: ma_field,
                sync: behaviour(&b)?,
                blank_overwrites: b.blank_overwrites,
                source: side(b.source.as_deref()),
            },
            b.preview,
        ),
        MappingCmd::Add { ma_field, lead, contact, behaviour: b } => {
            let sync = behaviour(&b)?;
            let mut f = FieldMapping::new(&ma_field, lead.as_deref(), contact.as_deref(), sync);
            f.blank_overwrites = b.blank_overwrites;
            f.source = match side(b.source.as_deref()) {
                None if sync == SyncBehaviour::ReadOnly => Some(Side::Crm),
                s => s,
            };
            (MappingEdit::Add(f), b.preview)
        }
        MappingCmd::Remove { ma_field, preview } => (MappingEdit::Remove { ma: ma_field }, preview),
    })
}

fn print_preview(p: &Preview) -> anyhow::Result<()> {
    outln!("{} linked pairs; {} prospects and {} CRM records would be written", p.linked, p.ma_writes, p.crm_writes);
    for s in &p.sample {
        outln!("  prospect {} / {} {}", s.prospect_id, s.crm_object, s.crm_id);
        for (label, writes) in [("MA", &s.ma), ("CRM", &s.crm)] {
            for w in writes {
                outln!("    {label} {}: {} -> {}", w.field, w.from, w.to);
            }
        }
    }
    Ok(())
}

/// `crmsync connection mapping <id> [set|add|remove ...]`.
pub async fn mapping(config: &Config, pool: &PgPool, id: &str, json: bool, change: Option<MappingCmd>) -> anyhow::Result<()> {
    // One factory for the command: its connectors log in once.
    let factory = SystemsFactory::from_config(config, pool).await?;
    let Some(change) = change else {
        let listing = mapping::list(pool, &factory, id).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&listing)?);
            return Ok(());
        }
        outln!("MA field\tlead field\tcontact field\tbehaviour\tblank overwrites");
        for f in listing.fields.iter() {
            let sync = match f.sync {
                SyncBehaviour::ReadOnly => format!("read_only (from the {})", f.read_only_source().as_str()),
                other => other.as_str().to_owned(),
            };
            outln!(
                "{}\t{}\t{}\t{sync}\t{}",
                f.ma,
                f.lead.as_deref().unwrap_or("-"),
                f.contact.as_deref().unwrap_or("-"),
                if f.blank_overwrites { "yes" } else { "no" }
            );
        }
        for (system, list) in
            [("MA prospect", &listing.available.ma), ("CRM lead", &listing.available.lead), ("CRM contact", &listing.available.contact)]
        {
            match list {
                Ok(fields) => {
                    let names: Vec<String> =
                        fields.iter().map(|f| if f.custom { format!("{} (custom)", f.name) } else { f.name.clone() }).collect();
                    outln!("{system} fields: {}", names.join(", "));
                }
                Err(e) => outln!("{system} fields: not listed ({e})"),
            }
        }
        return Ok(());
    };
    let (edit, preview_only) = edit_of(change)?;
    if preview_only {
        let p = mapping::preview(pool, &factory, id, &edit).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            print_preview(&p)?;
        }
        return Ok(());
    }
    let saved = mapping::save(config, pool, &factory, &Actor::cli(), id, &edit).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&saved)?);
    } else {
        print_preview(&saved.preview)?;
        outln!("{id}: {} {} saved; {} records sent to the batch lane to re-sync", edit.action(), edit.field(), saved.resynced);
    }
    Ok(())
}

fn print_scope_preview(p: &ScopePreview) -> anyhow::Result<()> {
    let capped = if p.records_capped { " (counted up to the limit)" } else { "" };
    outln!("CRM records: {} in scope, {} out{capped}", p.records.in_scope, p.records.out_of_scope);
    outln!("synced pairs: {} in scope, {} out", p.pairs.in_scope, p.pairs.out_of_scope);
    outln!("{} prospects would go to the recycle bin, {} would come back", p.leaving, p.entering);
    for (prospect, crm) in &p.sample_leaving {
        outln!("  leaving: prospect {prospect} / {crm}");
    }
    Ok(())
}

/// `crmsync connection scope <id> [set --rule ...|clear]`.
pub async fn scope(config: &Config, pool: &PgPool, id: &str, json: bool, change: Option<ScopeCmd>) -> anyhow::Result<()> {
    let (after, preview_only) = match change {
        None => {
            let s = connections::load(pool, id).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&s.sync_scope)?);
            } else if s.sync_scope.is_empty() {
                outln!("{id}: no rules; every CRM record syncs");
            } else {
                for c in &s.sync_scope.conditions {
                    outln!("{}", c.to_rule());
                }
            }
            return Ok(());
        }
        Some(ScopeCmd::Set { rules, preview }) => {
            let conditions = rules.iter().map(|r| Condition::parse(r)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            (SyncScope::new(conditions)?, preview)
        }
        Some(ScopeCmd::Clear { preview }) => (SyncScope::default(), preview),
    };
    let factory = SystemsFactory::from_config(config, pool).await?;
    if preview_only {
        let p = scope::preview(pool, &factory, id, &after).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            print_scope_preview(&p)?;
        }
        return Ok(());
    }
    let saved = scope::save(config, pool, &factory, &Actor::cli(), id, &after).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&saved)?);
    } else {
        print_scope_preview(&saved.preview)?;
        outln!("{id}: sync scope saved; {} records sent to the batch lane to re-sync", saved.resynced);
    }
    Ok(())
}
