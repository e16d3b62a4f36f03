//! The MA connector for Salesforce Account Engagement (Pardot) over API v5:
//! [`AccountEngagementMa`] implements [`MaApi`], returning the same records
//! as the sandbox connector, built from what the API returns.
//!
//! The login (Salesforce tokens), the HTTP client, the send loop with its
//! retries, the gates (requests in flight, crmsync's daily share, the API's
//! daily limit) and the change-feed paging are the connector kit's
//! (`crmsync-connector-kit`); what is Account Engagement's is here:
//!
//! - `http`: API v5 as the kit sees it (base URL, business unit header);
//! - `errors`: which failures are transient, which fatal, which a write's outcome;
//! - `fields`: which prospect fields are read;
//! - `records`: prospects turned into domain records;
//! - `schema`: which prospect fields the business unit has;
//! - `users`: the users cache (a prospect's assigned user's CRM user);
//! - `feed`: the prospects' change feed as a page source, polled less
//!   often while idle;
//! - `reads`: many prospects by id or email in few calls;
//! - `write`: prospect writes one by one; `import`, `import_file`: a
//!   batch-lane chunk through the Import API;
//! - `mirrors`: the sandbox's mirror extension.

mod errors;
mod feed;
mod fields;
mod http;
mod import;
mod import_file;
mod mirrors;
mod reads;
mod records;
mod schema;
mod users;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use crmsync_connector::stamp_cursor::Overlap;
use crmsync_connector::{ChangePage, ConnectorError, Cursor, FieldInfo, MaApi, MirrorState, MirrorWrite, ProspectWrite, WriteOutcome};
pub use crmsync_connector_kit::Pacing;
use crmsync_connector_kit::row::Row;
use crmsync_connector_kit::{CallGate, DailyLimitGate, DailyQuota, Gates, HttpClient, Login, PollGate, Slots, StampFeed, check_base_url};
use crmsync_domain::endpoint::{AccountEngagementEndpoint, MirrorKeeper};
use crmsync_domain::mirror::MirrorKind;
use crmsync_domain::records::ProspectRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, Email, Timestamp};

use crate::feed::ProspectFeed;
pub use crate::fields::ProspectFields;
use crate::http::{Http, V5};
use crate::import::Imports;
use crate::users::Users;

/// An Account Engagement business unit behind [`MaApi`].
#[derive(Debug)]
pub struct AccountEngagementMa {
    http: Http,
    /// How many calls may be in flight at once (the API refuses more).
    max_concurrency: usize,
    /// The calls counted today; one of the client's gates.
    quota: Arc<DailyQuota>,
    reads: ProspectFields,
    users: Users,
    integration_user: String,
    overlap: Overlap,
    /// When the prospect feed may poll again (backing off while idle).
    polls: PollGate,
    imports: Imports,
    mirrors: MirrorKeeper,
    /// The prospect fields, listed lately.
    schema: schema::Schema,
}

impl AccountEngagementMa {
    /// Logs in to the business unit `endpoint` names, reading the fields
    /// `reads` says.
    pub async fn connect(endpoint: &AccountEngagementEndpoint, reads: ProspectFields) -> Result<Self, ConnectorError> {
        Self::connect_with(endpoint, reads, Pacing::default()).await
    }

    /// Like [`AccountEngagementMa::connect`], reading a connection's field
    /// mapping from its settings.
    /// Every call passes `allowance` (the connection's daily API allowance,
    /// shared by every replica) as well as the connector's own gates.
    pub async fn from_settings(
        endpoint: &AccountEngagementEndpoint,
        settings: &ConnectionSettings,
        allowance: Arc<dyn CallGate>,
    ) -> Result<Self, ConnectorError> {
        let pacing = Pacing { budget_probe: Duration::from_secs(endpoint.limit_probe_secs.max(1)), ..Pacing::default() };
        Self::connect_gated(endpoint, ProspectFields::new(&settings.field_map)?, pacing, Some(allowance)).await
    }

    /// [`AccountEngagementMa::connect`] with other timings (tests shorten
    /// them). Of [`Pacing`], `retries` and the backoff apply as for
    /// Salesforce, and `budget_probe` is how often one call tries again
    /// once the API's daily limit is met.
    pub async fn connect_with(endpoint: &AccountEngagementEndpoint, reads: ProspectFields, pacing: Pacing) -> Result<Self, ConnectorError> {
        Self::connect_gated(endpoint, reads, pacing, None).await
    }

    async fn connect_gated(
        endpoint: &AccountEngagementEndpoint,
        reads: ProspectFields,
        pacing: Pacing,
        allowance: Option<Arc<dyn CallGate>>,
    ) -> Result<Self, ConnectorError> {
        check_business_unit(&endpoint.business_unit_id)?;
        if endpoint.max_concurrency == 0 {
            return Err(ConnectorError::Fatal("max_concurrency must be at least 1".into()));
        }
        let timeout = Duration::from_secs(endpoint.timeout_secs.max(1));
        let login = Login::new(&endpoint.oauth, timeout)?;
        let api = V5::new(check_base_url(&endpoint.base_url)?, &endpoint.business_unit_id);
        let slots = Slots::new(endpoint.max_concurrency);
        let max_concurrency = slots.max();
        let quota = Arc::new(DailyQuota::new(http::NAME, endpoint.daily_quota));
        // The API's limit first: while it holds, a call neither waits for a
        // slot nor counts against the share or the allowance. A call counts
        // against the share once it has its slot, just before it goes.
        let mut gates: Vec<Arc<dyn CallGate>> = vec![Arc::new(DailyLimitGate::new(http::NAME, "code 122", pacing.budget_probe))];
        gates.extend(allowance);
        gates.extend([Arc::new(slots) as Arc<dyn CallGate>, quota.clone()]);
        let gates = Gates::new(gates);
        let http = HttpClient::new(api, login, Arc::new(gates), timeout, pacing)?;
        let users = Users::default();
        // One login now: bad credentials fail here. The token names the
        // Salesforce user crmsync logs in as; its MA user is the one the
        // engine's writes carry (I7).
        let token = http.token(None).await?;
        let me = users.of_crm_user(&http, token.user_id()).await?.ok_or_else(|| {
            ConnectorError::Fatal(format!(
                "no Account Engagement user of business unit {} is tied to the Salesforce user crmsync logs in as ({}); \
                 sync that user to the business unit",
                endpoint.business_unit_id,
                token.user_id()
            ))
        })?;
        tracing::info!(user = me, "logged in to Account Engagement");
        Ok(AccountEngagementMa {
            http,
            max_concurrency,
            quota,
            reads,
            users,
            integration_user: me.to_string(),
            overlap: Overlap::new(Duration::from_secs(endpoint.overlap_secs)),
            polls: PollGate::new(Duration::from_secs(endpoint.poll_interval_secs), Duration::from_secs(endpoint.poll_max_secs)),
            imports: Imports { threshold: endpoint.import_threshold, first_poll: Duration::from_secs(endpoint.import_poll_secs) },
            mirrors: endpoint.mirrors,
            schema: schema::Schema::default(),
        })
    }

    /// Calls this connector made today (UTC).
    pub fn calls_today(&self) -> u64 {
        self.quota.used(Utc::now())
    }

    /// How long the prospect feed waits after its last poll before the
    /// next (none before the first): it backs off while idle.
    pub fn poll_wait(&self) -> Option<Duration> {
        self.polls.wait_of(feed::NAME)
    }

    /// Rows as records, with their assigned users' CRM users.
    async fn records(&self, rows: Vec<Row>) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let assigned: BTreeSet<i64> = rows.iter().filter_map(records::assigned_user_id).collect();
        let users: HashMap<i64, Option<String>> = self.users.crm_users(&self.http, &assigned.into_iter().collect::<Vec<_>>()).await?;
        rows.iter().map(|r| records::prospect(r, self.reads.data(), &users)).collect()
    }
}

/// `0Uv` and 15 more letters and digits: the header carries it as given.
fn check_business_unit(id: &str) -> Result<(), ConnectorError> {
    let ok = id.len() == 18 && id.starts_with("0Uv") && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ConnectorError::Fatal(format!("{id:?} is not an Account Engagement business unit id (0Uv..., 18 characters)")))
    }
}

#[async_trait]
impl MaApi for AccountEngagementMa {
    fn integration_user(&self) -> &str {
        &self.integration_user
    }

    async fn prospect_changes(&self, cursor: Option<&Cursor>, limit: usize) -> Result<ChangePage<ProspectRecord>, ConnectorError> {
        let fields = self.reads.param();
        let feed = ProspectFeed { http: &self.http, fields: &fields, me: &self.integration_user };
        let page = StampFeed::new(&feed, self.overlap).polled_by(&self.polls).changes(cursor, limit).await?;
        // Rows become records afterwards: that needs the users.
        Ok(ChangePage { records: self.records(page.records).await?, next: page.next, has_more: page.has_more })
    }

    async fn prospect_changes_pending(&self, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        // A pending check reads positions only: no fields to name. It is
        // asked on demand (status, wait-idle), not by the tiers: not gated.
        StampFeed::new(&ProspectFeed { http: &self.http, fields: "", me: &self.integration_user }, self.overlap).pending(cursor).await
    }

    async fn prospects_by_id(&self, ids: &[i64]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let rows = reads::by_ids(&self.http, &self.reads.param(), ids, None).await?;
        self.records(rows).await
    }

    /// Two seeks at most: the prospects never seen, in full; those seen,
    /// only as far as they changed after the earliest stamp they were seen
    /// at (each then kept if it changed after its own).
    async fn prospects_changed_since(&self, seen: &[(i64, Option<Timestamp>)]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let fields = self.reads.param();
        let unseen: Vec<i64> = seen.iter().filter(|(_, at)| at.is_none()).map(|(id, _)| *id).collect();
        let mut rows = reads::by_ids(&self.http, &fields, &unseen, None).await?;
        let at: std::collections::HashMap<i64, Timestamp> = seen.iter().filter_map(|(id, at)| Some((*id, (*at)?))).collect();
        if let Some(earliest) = at.values().min() {
            let ids: Vec<i64> = at.keys().copied().collect();
            let changed = reads::by_ids(&self.http, &fields, &ids, Some(*earliest)).await?;
            rows.extend(
                changed
                    .into_iter()
                    .filter(|r| records::id_and_stamp(r).is_ok_and(|(id, stamp)| at.get(&id).is_none_or(|seen| stamp > *seen))),
            );
        }
        self.records(rows).await
    }

    async fn prospects_by_email(&self, emails: &[Email]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let rows = reads::by_emails(&self.http, &self.reads.param(), emails, self.max_concurrency).await?;
        self.records(rows).await
    }

    async fn write_prospects(&self, writes: &[ProspectWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        write::write_prospects(&self.http, writes, self.max_concurrency).await
    }

    async fn write_prospects_in_bulk(&self, writes: &[ProspectWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        import::write_in_bulk(&self.http, writes, self.max_concurrency, &self.imports).await
    }

    async fn write_mirrors(&self, writes: &[MirrorWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        mirrors::check_keeper(self.mirrors)?;
        mirrors::write(&self.http, writes).await
    }

    async fn mirror(&self, kind: &MirrorKind, crm_id: &CrmId) -> Result<Option<MirrorState>, ConnectorError> {
        mirrors::check_keeper(self.mirrors)?;
        mirrors::read(&self.http, kind, crm_id).await
    }

    async fn prospect_accounts_of(&self, prospect_ids: &[i64]) -> Result<Vec<(i64, CrmId)>, ConnectorError> {
        mirrors::check_keeper(self.mirrors)?;
        mirrors::accounts_of(&self.http, prospect_ids).await
    }

    async fn prospect_fields(&self) -> Result<Vec<FieldInfo>, ConnectorError> {
        self.schema.prospect_fields(&self.http).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(base_url: &str, bu: &str) -> AccountEngagementEndpoint {
        serde_json::from_value(serde_json::json!({
            "base_url": base_url, "business_unit_id": bu,
            "oauth": {"login_url": "http://127.0.0.1:1", "flow": "client_credentials",
                      "client_id": "app", "client_secret": {"env": "PATH"}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn plain_http_and_bad_business_units_are_refused_before_any_login() {
        let err = AccountEngagementMa::connect(&endpoint("http://pi.pardot.com", "0Uv000000000042AAA"), ProspectFields::default())
            .await
            .unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("plain http")), "{err}");
        for bad in ["", "0Uv00000000004", "001000000000042AAA", "0Uv00000000004,AAA"] {
            let err = AccountEngagementMa::connect(&endpoint("https://pi.pardot.com", bad), ProspectFields::default()).await.unwrap_err();
            assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("business unit")), "{bad}: {err}");
        }
    }
}
