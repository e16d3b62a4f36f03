//! `crmsync sandbox ...`: create, change, assign and look at sandbox records
//! by hand, seed the data set, reset a tenant.

use anyhow::{Context, bail};
use crmsync_infra::Config;
use crmsync_sandbox::ops::{BatchOp, Sandbox, System, Target};
use crmsync_sandbox::seed;
use sqlx::PgPool;

use crmsync_domain::csql::{CsUserType, CsqlRecordType};

use crate::args::{CsCmd, KeyValue, SandboxCmd, ServeArgs, SystemArg};

fn pairs(set: Vec<KeyValue>) -> Vec<(String, String)> {
    set.into_iter().map(|KeyValue(k, v)| (k, v)).collect()
}

/// The MA or the CRM; the CS platform's users are handled apart.
fn system(s: SystemArg) -> Option<System> {
    match s {
        SystemArg::Ma => Some(System::Ma),
        SystemArg::Crm => Some(System::Crm),
        SystemArg::Cs => None,
    }
}

pub async fn run(config: &Config, pool: &PgPool, cmd: SandboxCmd) -> anyhow::Result<()> {
    // The sandbox may live in a database of its own.
    let factory = crmsync_sandbox::SandboxFactory::from_config(config, pool).await?;
    let pool = factory.pool().clone();
    crmsync_sandbox::migrate(&pool).await.context("sandbox migrations")?;
    let sb = |tenant: &str| Sandbox::new(pool.clone(), tenant);
    match cmd {
        SandboxCmd::Serve(args) => serve(pool, args).await?,
        SandboxCmd::Seed { tenant, scale, seed } => {
            if !(scale > 0.0 && scale <= 100.0) {
                bail!("--scale must be above 0 and at most 100");
            }
            let summary = seed::seed(&sb(&tenant), &seed::SeedOptions { scale, seed }).await?;
            outln!("{}", serde_json::to_string_pretty(&summary)?);
        }
        SandboxCmd::Reset { tenant } => {
            seed::reset(&sb(&tenant)).await?;
            outln!("tenant {tenant} emptied");
        }
        SandboxCmd::Create { object: o, set, tenant } => {
            outln!("{}", sb(&tenant).create_target(Target::parse(&o)?, &pairs(set)).await?);
        }
        SandboxCmd::Update { object: o, id, set, tenant } => {
            sb(&tenant).update_target(Target::parse(&o)?, &id, &pairs(set)).await?;
            outln!("{o} {id} updated");
        }
        SandboxCmd::Delete { object: o, id, tenant } => {
            sb(&tenant).set_target_deleted(Target::parse(&o)?, &id, true).await?;
            outln!("{o} {id} moved to the recycle bin");
        }
        SandboxCmd::Undelete { object: o, id, tenant } => {
            sb(&tenant).set_target_deleted(Target::parse(&o)?, &id, false).await?;
            outln!("{o} {id} restored");
        }
        SandboxCmd::Batch { file, tenant } => batch(&sb(&tenant), file.as_deref()).await?,
        SandboxCmd::ConvertLead { lead, account, opportunity, tenant } => {
            let c = sb(&tenant).convert_lead(&lead, account.as_deref(), opportunity.as_deref()).await?;
            outln!("{}", serde_json::to_string_pretty(&c)?);
        }
        SandboxCmd::Assign { prospect, user, unassign: _, tenant } => {
            sb(&tenant).assign(prospect, user).await?;
            match user {
                Some(u) => outln!("prospect {prospect} assigned to MA user {u}"),
                None => outln!("prospect {prospect} unassigned"),
            }
        }
        SandboxCmd::Show { object: o, id, tenant } => {
            let shown = match o.as_str() {
                "prospect" => sb(&tenant).prospect_view(id.parse().context("a prospect id is a number")?).await?,
                _ => sb(&tenant).show_target(Target::parse(&o)?, &id).await?,
            };
            outln!("{}", serde_json::to_string_pretty(&shown)?);
        }
        SandboxCmd::List { object: o, limit, tenant } => {
            for row in sb(&tenant).list_target(Target::parse(&o)?, limit).await? {
                outln!("{row}");
            }
        }
        SandboxCmd::Users { system: s, tenant } => {
            let rows = match system(s) {
                Some(s) => sb(&tenant).users(s).await?,
                None => sb(&tenant).cs_users().await?,
            };
            for row in rows {
                outln!("{row}");
            }
        }
        SandboxCmd::AddUser { system: s, email, name, crm_user, no_api, internal_collaborator, admin, support_privilege, tenant } => {
            let sandbox = sb(&tenant);
            sandbox.init().await?;
            if (internal_collaborator || admin || support_privilege) && !matches!(s, SystemArg::Cs) {
                bail!("--internal-collaborator, --admin and --support-privilege are for CS users");
            }
            match system(s) {
                Some(System::Ma) => {
                    let (first, last) = name.split_once(' ').unwrap_or((name.as_str(), ""));
                    outln!("{}", sandbox.create_ma_user(&email, first, last, crm_user.as_deref()).await?);
                }
                Some(System::Crm) => outln!("{}", sandbox.create_crm_user(&name, &email, true, !no_api).await?),
                None => {
                    let kind = if internal_collaborator { CsUserType::InternalCollaborator } else { CsUserType::Csm };
                    let id = sandbox.create_cs_user(&name, &email, kind, crm_user.as_deref(), admin, support_privilege).await?;
                    outln!("{id}");
                }
            }
        }
        SandboxCmd::Cs(cmd) => cs(&pool, cmd).await?,
    }
    Ok(())
}

/// `crmsync sandbox batch`: the operations of a file (or standard input),
/// one JSON object a line, in one transaction; prints what each did.
async fn batch(sandbox: &Sandbox, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = match file {
        Some(path) if path != std::path::Path::new("-") => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        _ => std::io::read_to_string(std::io::stdin()).context("reading the operations from standard input")?,
    };
    let ops = BatchOp::parse_lines(&text)?;
    if ops.is_empty() {
        bail!(
            "no operations: give one JSON object a line, e.g. {{\"op\": \"create\", \"object\": \"prospect\", \"set\": {{\"email\": \"a@example.com\"}}}}"
        );
    }
    let done = sandbox.apply_batch(&ops).await?;
    for result in &done {
        outln!("{}", serde_json::to_string(result)?);
    }
    crate::out::err_line(format_args!("{} operation(s) committed in one transaction", done.len()));
    Ok(())
}

/// `crmsync sandbox cs ...`: CSQLs as CSMs save them, and the CS admin's side.
async fn cs(pool: &PgPool, cmd: CsCmd) -> anyhow::Result<()> {
    let sb = |tenant: &str| Sandbox::new(pool.clone(), tenant);
    match cmd {
        CsCmd::Create { record_type, as_user, owner, set, tenant } => {
            outln!("{}", sb(&tenant).create_csql(record_type.into(), as_user, owner, &pairs(set)).await?);
        }
        CsCmd::Update { record_type, id, as_user, set, tenant } => {
            sb(&tenant).update_csql(record_type.into(), id, as_user, &pairs(set)).await?;
            outln!("CSQL {id} saved");
        }
        CsCmd::Show { record_type, id, tenant } => {
            let def = crmsync_sandbox::cs::def_of(record_type.into());
            outln!("{}", serde_json::to_string_pretty(&sb(&tenant).show(def, &id.to_string()).await?)?);
        }
        CsCmd::List { record_type, limit, tenant } => {
            for row in sb(&tenant).list(crmsync_sandbox::cs::def_of(record_type.into()), limit).await? {
                outln!("{row}");
            }
        }
        CsCmd::DeleteAll { record_type, as_user, tenant } => {
            let kind: CsqlRecordType = record_type.into();
            let n = sb(&tenant).delete_all_csqls(kind, as_user).await?;
            outln!("{n} record(s) deleted from the {}", kind.cs_object());
        }
        CsCmd::Config { area, tenant } => {
            outln!("{}", serde_json::to_string_pretty(&sb(&tenant).cs_config(area.as_str()).await?)?);
        }
        CsCmd::SetStages { area, stages, tenant } => {
            sb(&tenant).set_cs_stages(area.as_str(), &stages).await?;
            outln!("{} stages: {}", area.as_str(), stages.join(", "));
        }
        CsCmd::RenewalCenter { stages, tenant } => {
            sb(&tenant).configure_renewal_center(&stages).await?;
            outln!("renewal center configured; stages: {}", stages.join(", "));
        }
    }
    Ok(())
}

/// `crmsync sandbox serve`: until SIGINT or SIGTERM.
async fn serve(pool: PgPool, args: ServeArgs) -> anyhow::Result<()> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read_to_string(path).with_context(|| format!("reading the {what} from {}", path.display()))
    };
    let client_secret = read(&args.client_secret_file, "client secret")?.trim().to_owned();
    if client_secret.is_empty() {
        bail!("the client secret file {} is empty", args.client_secret_file.display());
    }
    let jwt_public_key_pem = args.jwt_public_key.as_deref().map(|p| read(p, "JWT certificate")).transpose()?;
    let config = crmsync_sandbox_server::ServerConfig {
        public_url: args.public_url.unwrap_or_default(),
        crm_tenant: args.crm_tenant,
        ma_tenant: args.ma_tenant,
        client_id: args.client_id,
        client_secret,
        jwt_public_key_pem,
        business_unit_id: args.business_unit_id,
        limits: crmsync_sandbox_server::Limits {
            salesforce_daily: args.salesforce_daily_limit,
            pardot_daily: args.pardot_daily_limit,
            token_ttl_secs: args.token_ttl_secs,
            ..Default::default()
        },
    };
    let mut server = crmsync_sandbox_server::Server::bind(config, args.bind, pool).await?;
    let pubsub = args.pubsub_bind.unwrap_or(([127, 0, 0, 1], 7443).into());
    match server.bind_pubsub(pubsub).await {
        Ok(()) => {}
        // The default port is taken (another sandbox server, say): serve the rest.
        Err(e) if args.pubsub_bind.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            crate::out::err_line(format_args!("Pub/Sub API not served: {pubsub} is in use (choose another address with --pubsub-bind)"));
        }
        Err(e) => return Err(e).with_context(|| format!("binding the Pub/Sub API to {pubsub}")),
    }
    // The line scripts and tests wait for first (they may stop reading
    // after it: output to a closed pipe is dropped), then the Pub/Sub
    // API's, when it is served.
    outln!("sandbox serving at {}", server.url());
    if let Some(url) = server.pubsub_url() {
        outln!("pubsub serving at {url}");
    }
    server.serve(crmsync_infra::shutdown::on_signals()).await?;
    Ok(())
}
