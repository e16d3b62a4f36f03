//! Builds the sandbox systems a connection's settings name, once per tenant.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_connector::{ConnectorError, ConnectorFactory, CsApi, Systems};
use crmsync_domain::settings::ConnectionSettings;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::crm::SandboxCrm;
use crate::cs::SandboxCs;
use crate::ma::SandboxMa;

/// Connects connections to the sandbox systems in one PostgreSQL database,
/// each tenant once.
#[derive(Debug)]
pub struct SandboxFactory {
    pool: PgPool,
    ma: Mutex<HashMap<String, Arc<SandboxMa>>>,
    crm: Mutex<HashMap<String, Arc<SandboxCrm>>>,
    cs: Mutex<HashMap<(String, String), Arc<SandboxCs>>>,
}

impl SandboxFactory {
    pub fn new(pool: PgPool) -> Self {
        SandboxFactory { pool, ma: Mutex::default(), crm: Mutex::default(), cs: Mutex::default() }
    }

    /// The sandbox MA of `tenant`.
    pub async fn ma(&self, tenant: &str) -> Result<Arc<SandboxMa>, ConnectorError> {
        let mut cache = self.ma.lock().await;
        if let Some(m) = cache.get(tenant) {
            return Ok(m.clone());
        }
        let m = Arc::new(SandboxMa::connect(self.pool.clone(), tenant).await?);
        cache.insert(tenant.to_owned(), m.clone());
        Ok(m)
    }

    /// The sandbox CRM of `tenant`.
    pub async fn crm(&self, tenant: &str) -> Result<Arc<SandboxCrm>, ConnectorError> {
        let mut cache = self.crm.lock().await;
        if let Some(c) = cache.get(tenant) {
            return Ok(c.clone());
        }
        let c = Arc::new(SandboxCrm::connect(self.pool.clone(), tenant).await?);
        cache.insert(tenant.to_owned(), c.clone());
        Ok(c)
    }

    /// The sandbox CS platform of `tenant`, tied to the CRM org `crm_tenant`.
    pub async fn cs(&self, tenant: &str, crm_tenant: &str) -> Result<Arc<SandboxCs>, ConnectorError> {
        let key = (tenant.to_owned(), crm_tenant.to_owned());
        let mut cache = self.cs.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(SandboxCs::connect(self.pool.clone(), tenant, crm_tenant).await?);
        cache.insert(key, c.clone());
        Ok(c)
    }
}

fn not_sandbox(system: &str) -> ConnectorError {
    ConnectorError::Fatal(format!("the {system} is not a sandbox tenant; connect it with the systems factory"))
}

#[async_trait]
impl ConnectorFactory for SandboxFactory {
    /// A connection whose systems are all sandbox tenants.
    async fn systems(&self, _connection_id: &str, settings: &ConnectionSettings) -> Result<Systems, ConnectorError> {
        let ma = settings.ma.sandbox_tenant().ok_or_else(|| not_sandbox("MA"))?;
        let crm = settings.crm.sandbox_tenant().ok_or_else(|| not_sandbox("CRM"))?;
        let cs = match &settings.cs {
            None => None,
            Some(e) => Some(self.cs(e.sandbox_tenant().ok_or_else(|| not_sandbox("CS platform"))?, crm).await? as Arc<dyn CsApi>),
        };
        Ok(Systems { ma: self.ma(ma).await?, crm: self.crm(crm).await?, cs })
    }
}

impl SandboxFactory {
    /// The sandbox the configuration names: its own database, or the engine's.
    pub async fn from_config(config: &crmsync_infra::Config, engine: &PgPool) -> Result<Self, sqlx::Error> {
        Self::from_config_sized(config, engine, config.database.max_connections).await
    }

    /// As [`Self::from_config`], with a pool of `connections` when the
    /// sandbox has its own database (`engine` is the pool of the same size
    /// otherwise): a tier's immediate lane has its own.
    pub async fn from_config_sized(config: &crmsync_infra::Config, engine: &PgPool, connections: u32) -> Result<Self, sqlx::Error> {
        use secrecy::ExposeSecret;
        let pool = match &config.sandbox.database_url {
            Some(url) => {
                crmsync_infra::db::connect_url(url.expose_secret(), connections.max(1), std::time::Duration::from_secs(10)).await?
            }
            None => engine.clone(),
        };
        Ok(SandboxFactory::new(pool))
    }

    /// The pool the sandbox lives in (for change notifications).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
