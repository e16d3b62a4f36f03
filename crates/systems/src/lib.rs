//! Connects a connection to the systems its settings name, per system: the
//! embedded sandbox tenants in PostgreSQL, a Salesforce org or an Account
//! Engagement business unit over HTTP.
//!
//! Connectors are kept between calls (an HTTP connector holds its token,
//! its view of the API's limits, its requests in flight and, for Account
//! Engagement, its users), one per connection and endpoint, and made anew
//! when the settings they were made from change. Every call an HTTP
//! connector makes passes its connection's API allowance first (see
//! `allowance`). A connector that hears of changes by itself (Salesforce's
//! change events) says so through the factory's [`ChangeSignals`], so the
//! producer reads that connection at once instead of at its next poll.

pub mod allowance;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_account_engagement::AccountEngagementMa;
use crmsync_connector::{ConnectorError, ConnectorFactory, CrmApi, CsApi, MaApi, Systems};
use crmsync_domain::merge::Side;
use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_salesforce::SalesforceCrm;
use crmsync_sandbox::SandboxFactory;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};

use crate::allowance::ApiAllowances;

/// The connections whose connectors heard of changes to read now (a change
/// event came), for whoever reads the feeds to wait on.
#[derive(Debug, Default)]
pub struct ChangeSignals {
    connections: std::sync::Mutex<HashSet<String>>,
    notify: Notify,
}

impl ChangeSignals {
    /// `connection_id` has changes to read.
    pub fn signal(&self, connection_id: &str) {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(connection_id.to_owned());
        self.notify.notify_one();
    }

    /// Until a connection is signalled (at once if one was since the last
    /// [`ChangeSignals::take`]).
    pub async fn signalled(&self) {
        self.notify.notified().await;
    }

    /// The connections signalled since the last call.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Connectors by endpoint, each with the settings it was made from.
type Cache<T> = Mutex<HashMap<String, (String, Arc<T>)>>;

/// Builds the systems of any connection.
#[derive(Debug)]
pub struct SystemsFactory {
    sandbox: SandboxFactory,
    /// Shared with the factory of the tier's other lane.
    salesforce: Arc<Cache<SalesforceCrm>>,
    account_engagement: Arc<Cache<AccountEngagementMa>>,
    allowances: ApiAllowances,
    signals: Arc<ChangeSignals>,
    /// Whether its Salesforce connectors subscribe to change events: only
    /// for the producer, which reads the feeds (see [`Self::hearing_changes`]).
    hears_changes: bool,
}

/// The cache key of a connection's endpoint, and what a connector is made
/// from: what it reads depends on the field map (and the custom objects),
/// so other settings make another connector. The connection is part of the
/// key: its calls count against its own allowance.
fn keys(connection_id: &str, endpoint: &impl serde::Serialize, settings: &ConnectionSettings) -> Result<(String, String), ConnectorError> {
    let text = |r: serde_json::Result<String>| r.map_err(|e| ConnectorError::Fatal(e.to_string()));
    Ok((format!("{connection_id}\n{}", text(serde_json::to_string(endpoint))?), text(serde_json::to_string(settings))?))
}

impl SystemsFactory {
    pub fn new(sandbox: SandboxFactory, allowances: ApiAllowances) -> Self {
        SystemsFactory {
            sandbox,
            salesforce: Arc::default(),
            account_engagement: Arc::default(),
            allowances,
            signals: Arc::default(),
            hears_changes: false,
        }
    }

    /// This factory's Salesforce connectors subscribe to the org's change
    /// events (where their endpoints allow it) and say through
    /// [`Self::change_signals`] which connection has changes. Only the
    /// producer reads feeds; the other tiers and the CLI's one-off reads
    /// (a report's mirror check) would only hold streams open for nothing.
    pub fn hearing_changes(mut self) -> Self {
        self.hears_changes = true;
        self
    }

    /// Where this factory's connectors say that a connection has changes to
    /// read now.
    pub fn change_signals(&self) -> &Arc<ChangeSignals> {
        &self.signals
    }

    /// The factory the configuration names (the sandbox's own database, or
    /// the engine's), counting API calls in its Redis.
    pub async fn from_config(config: &crmsync_infra::Config, engine: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self::new(SandboxFactory::from_config(config, engine).await?, ApiAllowances::new(&config.redis)))
    }

    /// The factory of a tier, counting API calls through the tier's own
    /// Redis connection.
    pub async fn from_services(config: &crmsync_infra::Config, services: &crmsync_infra::services::Services) -> Result<Self, sqlx::Error> {
        let allowances = ApiAllowances::with_connection(&config.redis, services.redis.clone());
        Ok(Self::new(SandboxFactory::from_config(config, &services.pool).await?, allowances))
    }

    /// The factory of the tier's immediate lane: the same connectors (one
    /// token, one view of the limits per endpoint) and allowances, with the
    /// sandbox systems over the lane's own connections
    /// ([`Services::lane_pool`](crmsync_infra::services::Services::lane_pool)),
    /// so that a live change never queues for one behind a backfill.
    pub async fn for_immediate_lane(
        &self,
        config: &crmsync_infra::Config,
        services: &crmsync_infra::services::Services,
    ) -> Result<Self, sqlx::Error> {
        let connections = match config.database.immediate_connections {
            0 => config.database.max_connections,
            n => n,
        };
        Ok(SystemsFactory {
            sandbox: SandboxFactory::from_config_sized(config, &services.immediate_pool, connections).await?,
            salesforce: self.salesforce.clone(),
            account_engagement: self.account_engagement.clone(),
            allowances: self.allowances.clone(),
            signals: self.signals.clone(),
            hears_changes: self.hears_changes,
        })
    }

    /// Where this factory's connectors count their calls.
    pub fn allowances(&self) -> &ApiAllowances {
        &self.allowances
    }

    /// The sandbox's database (change notifications come from it).
    pub fn pool(&self) -> &PgPool {
        self.sandbox.pool()
    }

    pub fn sandbox(&self) -> &SandboxFactory {
        &self.sandbox
    }

    async fn crm(&self, connection_id: &str, settings: &ConnectionSettings) -> Result<Arc<dyn CrmApi>, ConnectorError> {
        match &settings.crm {
            SystemEndpoint::Sandbox { tenant, .. } => Ok(self.sandbox.crm(tenant).await?),
            SystemEndpoint::Salesforce(endpoint) => {
                let (key, made_from) = keys(connection_id, endpoint, settings)?;
                let mut cache = self.salesforce.lock().await;
                if let Some((from, crm)) = cache.get(&key)
                    && *from == made_from
                {
                    return Ok(crm.clone());
                }
                let allowance = self.allowances.gate(connection_id, Side::Crm, endpoint.api_daily_allowance);
                let wake = self.hears_changes.then(|| {
                    let (signals, id) = (self.signals.clone(), connection_id.to_owned());
                    Arc::new(move || signals.signal(&id)) as crmsync_salesforce::Wake
                });
                let crm = Arc::new(SalesforceCrm::from_settings(endpoint, settings, allowance, wake).await?);
                tracing::debug!(url = %endpoint.oauth.login_url, "connected to Salesforce");
                cache.insert(key, (made_from, crm.clone()));
                Ok(crm)
            }
            SystemEndpoint::AccountEngagement(_) => {
                Err(ConnectorError::Fatal("the CRM endpoint is an Account Engagement business unit".into()))
            }
        }
    }

    async fn ma(&self, connection_id: &str, settings: &ConnectionSettings) -> Result<Arc<dyn MaApi>, ConnectorError> {
        match &settings.ma {
            SystemEndpoint::Sandbox { tenant, .. } => Ok(self.sandbox.ma(tenant).await?),
            SystemEndpoint::AccountEngagement(endpoint) => {
                let (key, made_from) = keys(connection_id, endpoint, settings)?;
                let mut cache = self.account_engagement.lock().await;
                if let Some((from, ma)) = cache.get(&key)
                    && *from == made_from
                {
                    return Ok(ma.clone());
                }
                let allowance = self.allowances.gate(connection_id, Side::Ma, endpoint.api_daily_allowance);
                let ma = Arc::new(AccountEngagementMa::from_settings(endpoint, settings, allowance).await?);
                tracing::debug!(url = %endpoint.base_url, business_unit = %endpoint.business_unit_id, "connected to Account Engagement");
                cache.insert(key, (made_from, ma.clone()));
                Ok(ma)
            }
            SystemEndpoint::Salesforce(_) => Err(ConnectorError::Fatal("the MA endpoint is a Salesforce org".into())),
        }
    }
}

#[async_trait]
impl ConnectorFactory for SystemsFactory {
    async fn systems(&self, connection_id: &str, settings: &ConnectionSettings) -> Result<Systems, ConnectorError> {
        let crm = self.crm(connection_id, settings).await?;
        let ma = self.ma(connection_id, settings).await?;
        let cs = match &settings.cs {
            None => None,
            Some(SystemEndpoint::Sandbox { tenant, crm_org }) => {
                // The sandbox CS platform writes CSQLs into a sandbox CRM org:
                // the connection's, or the one it names when the engine
                // reaches that org over HTTP.
                let crm_tenant = crm_org.as_deref().or(settings.crm.sandbox_tenant()).ok_or_else(|| {
                    ConnectorError::Fatal(
                        "the sandbox CS platform writes CSQLs into a sandbox CRM org: the CRM is not a sandbox tenant, so name the org \
                         the CS endpoint's `crm_org` (cs = {\"kind\": \"sandbox\", \"tenant\": ..., \"crm_org\": ...})"
                            .into(),
                    )
                })?;
                Some(self.sandbox.cs(tenant, crm_tenant).await? as Arc<dyn CsApi>)
            }
            Some(_) => return Err(ConnectorError::Fatal("the CS platform must be a sandbox tenant".into())),
        };
        Ok(Systems { ma, crm, cs })
    }
}
