//! `crmsync sandbox ...`: create, change, assign and look at sandbox records
//! by hand, seed the data set, reset a tenant.

use anyhow::{Context, bail};
use crmsync_infra::Config;
use crmsync_sandbox::ops::{Sandbox, System};
use crmsync_sandbox::{schema, seed};
use sqlx::PgPool;

use crate::args::{KeyValue, SandboxCmd, SystemArg};

fn object(name: &str) -> anyhow::Result<&'static schema::ObjectDef> {
    schema::object(name).with_context(|| {
        let names: Vec<&str> = schema::OBJECTS.iter().map(|o| o.name).collect();
        format!("no sandbox object {name:?}; objects: {}", names.join(", "))
    })
}

fn pairs(set: Vec<KeyValue>) -> Vec<(String, String)> {
    set.into_iter().map(|KeyValue(k, v)| (k, v)).collect()
}

fn system(s: SystemArg) -> System {
    match s {
        SystemArg::Ma => System::Ma,
        SystemArg::Crm => System::Crm,
    }
}

pub async fn run(config: &Config, pool: &PgPool, cmd: SandboxCmd) -> anyhow::Result<()> {
    // The sandbox may live in a database of its own.
    let factory = crmsync_sandbox::SandboxFactory::from_config(config, pool).await?;
    let pool = factory.pool().clone();
    crmsync_sandbox::migrate(&pool).await.context("sandbox migrations")?;
    let sb = |tenant: &str| Sandbox::new(pool.clone(), tenant);
    match cmd {
        SandboxCmd::Seed { tenant, scale, seed } => {
            if !(scale > 0.0 && scale <= 100.0) {
                bail!("--scale must be above 0 and at most 100");
            }
            let summary = seed::seed(&sb(&tenant), &seed::SeedOptions { scale, seed }).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        SandboxCmd::Reset { tenant } => {
            seed::reset(&sb(&tenant)).await?;
            println!("tenant {tenant} emptied");
        }
        SandboxCmd::Create { object: o, set, tenant } => {
            let id = sb(&tenant).create(object(&o)?, &pairs(set), None).await?;
            println!("{id}");
        }
        SandboxCmd::Update { object: o, id, set, tenant } => {
            sb(&tenant).update(object(&o)?, &id, &pairs(set), None).await?;
            println!("{o} {id} updated");
        }
        SandboxCmd::Assign { prospect, user, unassign: _, tenant } => {
            sb(&tenant).assign(prospect, user).await?;
            match user {
                Some(u) => println!("prospect {prospect} assigned to MA user {u}"),
                None => println!("prospect {prospect} unassigned"),
            }
        }
        SandboxCmd::Show { object: o, id, tenant } => {
            println!("{}", serde_json::to_string_pretty(&sb(&tenant).show(object(&o)?, &id).await?)?);
        }
        SandboxCmd::List { object: o, limit, tenant } => {
            for row in sb(&tenant).list(object(&o)?, limit).await? {
                println!("{row}");
            }
        }
        SandboxCmd::Users { system: s, tenant } => {
            for row in sb(&tenant).users(system(s)).await? {
                println!("{row}");
            }
        }
        SandboxCmd::AddUser { system: s, email, name, crm_user, no_api, tenant } => {
            let sandbox = sb(&tenant);
            sandbox.init().await?;
            match system(s) {
                System::Ma => {
                    let (first, last) = name.split_once(' ').unwrap_or((name.as_str(), ""));
                    println!("{}", sandbox.create_ma_user(&email, first, last, crm_user.as_deref()).await?);
                }
                System::Crm => println!("{}", sandbox.create_crm_user(&name, &email, true, !no_api).await?),
            }
        }
    }
    Ok(())
}
