//! `crmsync records ...`: work on one record. `sync-now` reads both sides
//! of a record again and sends them through the immediate lane, through
//! the same function as the console's Sync now button
//! ([`crmsync_ops::records::sync_now`]), audited as the operating-system
//! user running the command.

use crmsync_infra::Config;
use crmsync_store::admin_audit::Actor;
use crmsync_systems::SystemsFactory;
use sqlx::PgPool;

use crate::args::RecordsCmd;

pub async fn run(config: &Config, pool: &PgPool, cmd: RecordsCmd) -> anyhow::Result<()> {
    match cmd {
        RecordsCmd::SyncNow { connection, key } => {
            let factory = SystemsFactory::from_config(config, pool).await?;
            let done = crmsync_ops::records::sync_now(config, pool, &factory, &Actor::cli(), &connection, &key).await?;
            for r in &done.published {
                outln!("sent {r} through the immediate lane");
            }
            for r in &done.gone {
                outln!("not sent: {r} (no longer in its system)");
            }
            if done.published.is_empty() {
                anyhow::bail!("nothing was sent: no record of that key is in the connection's systems any more");
            }
        }
    }
    Ok(())
}
