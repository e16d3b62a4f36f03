//! Where a connection's systems live: the embedded sandbox, or the real
//! APIs (Salesforce REST and Account Engagement v5) with their OAuth
//! credentials.
//!
//! Settings are stored in PostgreSQL and shown by `crmsync connection
//! show`, so a credential is never stored itself, only where to read it: an
//! environment variable or a file (a Kubernetes or Docker secret).

use serde::{Deserialize, Serialize};

/// Where a credential is read from when the connector starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// An environment variable of the tier's process.
    Env(String),
    /// A file whose content (trimmed) is the secret.
    File(String),
}

/// How crmsync authenticates to Salesforce (and to Account Engagement, which
/// takes Salesforce tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "flow", rename_all = "snake_case")]
pub enum OAuthFlow {
    /// OAuth 2.0 client credentials: the connected app runs as its
    /// configured integration user.
    ClientCredentials { client_id: String, client_secret: SecretSource },
    /// OAuth 2.0 JWT bearer: a JWT signed with the connected app's private
    /// key (RS256) for `username`. Needed to write as another user (a
    /// CSQL's logged-in sync).
    JwtBearer { client_id: String, username: String, private_key: SecretSource },
}

/// The token endpoint and the flow. (Unknown keys are refused by the flow:
/// serde cannot refuse them on a flattened struct.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth {
    /// `https://login.salesforce.com`, `https://test.salesforce.com` or the
    /// org's My Domain; the token endpoint is `{login_url}/services/oauth2/token`.
    pub login_url: String,
    #[serde(flatten)]
    pub flow: OAuthFlow,
}

fn default_api_version() -> String {
    "v60.0".to_owned()
}
fn default_api_share() -> f64 {
    0.5
}
fn default_overlap_secs() -> u64 {
    60
}
fn default_poll_interval_secs() -> u64 {
    5
}
fn default_poll_max_secs() -> u64 {
    120
}
fn default_import_threshold() -> usize {
    50
}
fn default_import_poll_secs() -> u64 {
    2
}
fn default_bulk_threshold() -> usize {
    2_000
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_usage_probe_secs() -> u64 {
    300
}
fn default_concurrency() -> usize {
    5
}
fn default_pubsub_url() -> String {
    "https://api.pubsub.salesforce.com:7443".to_owned()
}
fn is_default_pubsub_url(url: &str) -> bool {
    url == default_pubsub_url()
}
fn yes() -> bool {
    true
}
fn is_yes(b: &bool) -> bool {
    *b
}
fn default_sweep_secs() -> u64 {
    3_600
}
fn is_default_sweep_secs(secs: &u64) -> bool {
    *secs == default_sweep_secs()
}
fn default_call_client() -> String {
    "crmsync".to_owned()
}
fn is_default_call_client(client: &str) -> bool {
    client == default_call_client()
}

/// A Salesforce org reached through its REST APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceEndpoint {
    pub oauth: OAuth,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The share of the org's daily API requests crmsync may use (read from
    /// `Sforce-Limit-Info`); past it, calls wait.
    #[serde(default = "default_api_share")]
    pub api_share: f64,
    /// Past the share, one call goes through this often to learn whether
    /// usage has fallen (the limit is a rolling 24 hours).
    #[serde(default = "default_usage_probe_secs")]
    pub usage_probe_secs: u64,
    /// Change queries look back this far for late commits.
    #[serde(default = "default_overlap_secs")]
    pub overlap_secs: u64,
    /// A feed that has read everything, having found changes, queries the
    /// org again after this long: each poll is an API call.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// Each poll that finds nothing new (or only the engine's own writes)
    /// doubles the wait, up to this. Five idle feeds at 2 minutes are
    /// 3,600 calls a day; a change brings the wait back to
    /// `poll_interval_secs`. Polling is what a feed does without change
    /// events (see `change_events`).
    #[serde(default = "default_poll_max_secs")]
    pub poll_max_secs: u64,
    /// Whether the connector listens for the org's change events (Change
    /// Data Capture over the Pub/Sub API) instead of polling: an event
    /// wakes its object's feed, and a feed with live events only queries
    /// as a reconciliation sweep (`sweep_secs`). A feed whose events are
    /// not to be had (the object is not selected for Change Data Capture,
    /// the org's event allocation is used up, the Pub/Sub API cannot be
    /// reached) polls as above meanwhile, and its subscription is tried
    /// again later. (Settings written with a default are left out when
    /// stored, so an older release still reads them.)
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub change_events: bool,
    /// Where the Pub/Sub API is: Salesforce's, over TLS verified against the
    /// platform's roots; plain `http://` only to this machine (the sandbox
    /// server's listener).
    #[serde(default = "default_pubsub_url", skip_serializing_if = "is_default_pubsub_url")]
    pub pubsub_url: String,
    /// With a feed's change events live, it queries the org this often
    /// anyway (a reconciliation sweep), and once more an overlap window
    /// after a query that found changes (late commits).
    #[serde(default = "default_sweep_secs", skip_serializing_if = "is_default_sweep_secs")]
    pub sweep_secs: u64,
    /// The client id the engine's calls name in `Sforce-Call-Options:
    /// client=<id>`, which the org writes into the `changeOrigin` of the
    /// change events its writes cause: events naming it are the engine's
    /// own and wake nothing (I7). Calls made as another user (a CSM's
    /// logged-in CSQL sync) carry none: those writes are that user's.
    #[serde(default = "default_call_client", skip_serializing_if = "is_default_call_client")]
    pub call_client: String,
    /// Batch-lane writes of at least this many records go through a Bulk
    /// API 2.0 job (a job costs about six calls whatever its size, a
    /// collection call one per 200 records, so Bulk pays from about 1,200).
    /// A batch-lane chunk is at most the connection's `batch_burst` records
    /// and one message's worth (`producer.records_per_message`): both must
    /// reach this for a job to be used. The immediate lane never uses Bulk.
    #[serde(default = "default_bulk_threshold")]
    pub bulk_threshold: usize,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The API calls this connection may make to the org in any 24 hours,
    /// across every replica of every tier (I8). The batch lane stops at 90%
    /// of it, the immediate lane and detection may use the rest; none:
    /// calls are counted, and only `api_share` holds them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_daily_allowance: Option<u64>,
}

/// Who keeps the MA's read-only mirrors of CRM accounts, opportunities and
/// custom objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MirrorKeeper {
    /// crmsync reconciles them (the sandbox's mirror extension).
    #[default]
    Engine,
    /// The MA's own CRM connector does (a real business unit): crmsync
    /// leaves them alone.
    Ma,
}

/// An Account Engagement business unit reached through API v5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEngagementEndpoint {
    /// `https://pi.pardot.com` (or the demo domain).
    pub base_url: String,
    /// The 18-character business unit id (`0Uv...`).
    pub business_unit_id: String,
    pub oauth: OAuth,
    /// Requests in flight at once, across all replicas (the API allows 5).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// API calls crmsync may make per day (its share of the business unit's
    /// quota); none: only the API's own limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<u64>,
    #[serde(default = "default_overlap_secs")]
    pub overlap_secs: u64,
    /// Once the API says its daily limit is met (code 122), one call goes
    /// through this often to learn whether it was lifted; the others wait.
    #[serde(default = "default_usage_probe_secs")]
    pub limit_probe_secs: u64,
    #[serde(default)]
    pub mirrors: MirrorKeeper,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The prospect feed, caught up after finding changes, queries again
    /// after this long; each poll that finds nothing new (or only the
    /// engine's own writes) doubles the wait up to `poll_max_secs`. One
    /// idle feed at 2 minutes is 720 calls a day.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    #[serde(default = "default_poll_max_secs")]
    pub poll_max_secs: u64,
    /// Batch-lane prospect writes of at least this many records go through
    /// an import (the Import API: about three calls whatever its size,
    /// against one call per prospect; the business unit may import 1,000
    /// batches a day). A batch-lane chunk is at most `batch_burst` records
    /// and one message's worth. The immediate lane never waits for one.
    #[serde(default = "default_import_threshold")]
    pub import_threshold: usize,
    /// An import's status is first asked this long after it is submitted,
    /// then at doubling intervals up to a minute (each ask is a call).
    #[serde(default = "default_import_poll_secs")]
    pub import_poll_secs: u64,
    /// The API calls this connection may make to the business unit in any
    /// 24 hours, across every replica of every tier (I8); see
    /// [`SalesforceEndpoint::api_daily_allowance`]. Unlike `daily_quota`
    /// (one connector's count of a UTC day), it holds for the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_daily_allowance: Option<u64>,
}

/// Where one system of a connection lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SystemEndpoint {
    /// The embedded sandbox in PostgreSQL; `tenant` is the MA business unit or
    /// CRM org inside it.
    Sandbox {
        #[serde(default = "default_tenant")]
        tenant: String,
        /// For the sandbox CS platform only: the sandbox CRM org it writes
        /// CSQLs into and reads its users' CRM permissions from, when the
        /// connection reaches that org over HTTP (`crmsync sandbox serve`);
        /// by default the connection's own sandbox CRM tenant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crm_org: Option<String>,
    },
    /// A Salesforce org (the CRM).
    Salesforce(SalesforceEndpoint),
    /// An Account Engagement business unit (the MA).
    AccountEngagement(AccountEngagementEndpoint),
}

fn default_tenant() -> String {
    "default".to_owned()
}

impl Default for SystemEndpoint {
    fn default() -> Self {
        SystemEndpoint::sandbox(&default_tenant())
    }
}

impl SystemEndpoint {
    /// A sandbox tenant.
    pub fn sandbox(tenant: &str) -> Self {
        SystemEndpoint::Sandbox { tenant: tenant.to_owned(), crm_org: None }
    }

    /// The sandbox tenant, if the system is the embedded sandbox.
    pub fn sandbox_tenant(&self) -> Option<&str> {
        match self {
            SystemEndpoint::Sandbox { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The connection's daily API allowance on this system, if one is set
    /// (the sandbox has no API to count).
    pub fn api_daily_allowance(&self) -> Option<u64> {
        match self {
            SystemEndpoint::Sandbox { .. } => None,
            SystemEndpoint::Salesforce(s) => s.api_daily_allowance,
            SystemEndpoint::AccountEngagement(a) => a.api_daily_allowance,
        }
    }

    /// Whether this system is reached over a real API, whose calls count.
    pub fn is_api(&self) -> bool {
        !matches!(self, SystemEndpoint::Sandbox { .. })
    }

    /// Whether crmsync keeps the MA's mirrors (when this is the MA).
    pub fn engine_keeps_mirrors(&self) -> bool {
        !matches!(self, SystemEndpoint::AccountEngagement(a) if a.mirrors == MirrorKeeper::Ma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_reads_from_json_with_defaults_and_refuses_unknown_keys() {
        let e: SystemEndpoint = serde_json::from_value(serde_json::json!({
            "kind": "salesforce",
            "oauth": {"login_url": "https://login.salesforce.com", "flow": "client_credentials",
                      "client_id": "3MVG9", "client_secret": {"env": "SF_SECRET"}}
        }))
        .unwrap();
        let SystemEndpoint::Salesforce(sf) = e else { panic!() };
        assert_eq!((sf.api_version.as_str(), sf.api_share, sf.overlap_secs), ("v60.0", 0.5, 60));
        assert!(sf.change_events);
        assert_eq!(
            (sf.pubsub_url.as_str(), sf.sweep_secs, sf.call_client.as_str()),
            ("https://api.pubsub.salesforce.com:7443", 3_600, "crmsync")
        );
        let stored = serde_json::to_value(&sf).unwrap();
        for key in ["change_events", "pubsub_url", "sweep_secs", "call_client"] {
            assert!(stored.get(key).is_none(), "{key} at its default is not stored (an older release refuses unknown keys)");
        }
        let mut off = sf.clone();
        off.change_events = false;
        off.pubsub_url = "http://127.0.0.1:7443".into();
        let stored = serde_json::to_value(&off).unwrap();
        assert_eq!((stored["change_events"].clone(), stored["pubsub_url"].clone()), (false.into(), "http://127.0.0.1:7443".into()));
        assert_eq!(serde_json::from_value::<SalesforceEndpoint>(stored).unwrap(), off);
        assert_eq!(
            sf.oauth.flow,
            OAuthFlow::ClientCredentials { client_id: "3MVG9".into(), client_secret: SecretSource::Env("SF_SECRET".into()) }
        );
        let unknown =
            serde_json::from_value::<SystemEndpoint>(serde_json::json!({"kind": "sandbox", "tenant": "x", "password": "hunter2"}));
        assert!(unknown.is_err());
        let sandbox: SystemEndpoint = serde_json::from_value(serde_json::json!({"kind": "sandbox"})).unwrap();
        assert_eq!(sandbox.sandbox_tenant(), Some("default"));
    }
}
