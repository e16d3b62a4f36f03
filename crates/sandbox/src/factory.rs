//! Builds the sandbox systems a connection's settings name, once per tenant.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_connector::{ConnectorError, ConnectorFactory, Systems};
use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::crm::SandboxCrm;
use crate::cs::SandboxCs;
use crate::ma::SandboxMa;

/// The sandbox tenants a connection uses: MA, CRM and (if any) CS.
type Tenants = (String, String, Option<String>);

/// Connects connections to the sandbox systems in one PostgreSQL database.
#[derive(Debug)]
pub struct SandboxFactory {
    pool: PgPool,
    cache: Mutex<HashMap<Tenants, Systems>>,
}

impl SandboxFactory {
    pub fn new(pool: PgPool) -> Self {
        SandboxFactory { pool, cache: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl ConnectorFactory for SandboxFactory {
    async fn systems(&self, settings: &ConnectionSettings) -> Result<Systems, ConnectorError> {
        let SystemEndpoint::Sandbox { tenant: ma } = &settings.ma;
        let SystemEndpoint::Sandbox { tenant: crm } = &settings.crm;
        let cs = settings.cs.as_ref().map(|SystemEndpoint::Sandbox { tenant }| tenant.clone());
        let key = (ma.clone(), crm.clone(), cs.clone());
        let mut cache = self.cache.lock().await;
        if let Some(s) = cache.get(&key) {
            return Ok(s.clone());
        }
        let systems = Systems {
            ma: Arc::new(SandboxMa::connect(self.pool.clone(), ma).await?),
            crm: Arc::new(SandboxCrm::connect(self.pool.clone(), crm).await?),
            cs: match &cs {
                Some(t) => Some(Arc::new(SandboxCs::connect(self.pool.clone(), t, crm).await?)),
                None => None,
            },
        };
        cache.insert(key, systems.clone());
        Ok(systems)
    }
}

impl SandboxFactory {
    /// The sandbox the configuration names: its own database, or the engine's.
    pub async fn from_config(config: &crmsync_infra::Config, engine: &PgPool) -> Result<Self, sqlx::Error> {
        use secrecy::ExposeSecret;
        let pool = match &config.sandbox.database_url {
            Some(url) => {
                crmsync_infra::db::connect_url(url.expose_secret(), config.database.max_connections, std::time::Duration::from_secs(10))
                    .await?
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
