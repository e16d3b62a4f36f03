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
//! - `users`: the users cache (a prospect's assigned user's CRM user);
//! - `feed`: the prospects' change feed as a page source;
//! - `write`: prospect writes; `mirrors`: the sandbox's mirror extension.

mod errors;
mod feed;
mod fields;
mod http;
mod mirrors;
mod records;
mod users;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use crmsync_connector::stamp_cursor::Overlap;
use crmsync_connector::{ChangePage, ConnectorError, Cursor, MaApi, MirrorState, MirrorWrite, ProspectWrite, WriteOutcome};
pub use crmsync_connector_kit::Pacing;
use crmsync_connector_kit::row::{Row, flag, text};
use crmsync_connector_kit::{
    Call, CallGate, DailyLimitGate, DailyQuota, EndpointKind, Gates, HttpClient, Login, Slots, StampFeed, check_base_url,
};
use crmsync_domain::endpoint::{AccountEngagementEndpoint, MirrorKeeper};
use crmsync_domain::mirror::MirrorKind;
use crmsync_domain::records::ProspectRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, Email};
use crmsync_wire::pardot::{MAX_PAGE, PROSPECTS_PATH, QueryPage};
use futures::{StreamExt, TryStreamExt};

use crate::feed::ProspectFeed;
use crate::fields::EMAIL;
pub use crate::fields::ProspectFields;
use crate::http::{CallError, Http, V5};
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
    mirrors: MirrorKeeper,
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
            mirrors: endpoint.mirrors,
        })
    }

    /// Calls this connector made today (UTC).
    pub fn calls_today(&self) -> u64 {
        self.quota.used(Utc::now())
    }

    /// Rows as records, with their assigned users' CRM users.
    async fn records(&self, rows: Vec<Row>) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let assigned: BTreeSet<i64> = rows.iter().filter_map(records::assigned_user_id).collect();
        let users: HashMap<i64, Option<String>> = self.users.crm_users(&self.http, &assigned.into_iter().collect::<Vec<_>>()).await?;
        rows.iter().map(|r| records::prospect(r, self.reads.data(), &users)).collect()
    }

    /// One prospect by id, `None` if there is none.
    async fn read(&self, id: i64) -> Result<Option<Row>, ConnectorError> {
        let call = Call::get(EndpointKind::Query, format!("{PROSPECTS_PATH}/{id}")).query("fields", self.reads.param());
        match self.http.send(&call).await {
            Ok(answer) => Ok(Some(answer.json()?)),
            Err(CallError::Api(f)) if f.code == Some(crmsync_wire::pardot::codes::INVALID_PROSPECT_ID) || f.status == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Live prospects with `email` (compared as v5 does, then exactly).
    async fn with_email(&self, email: &Email) -> Result<Vec<Row>, ConnectorError> {
        let mut out = Vec::new();
        let mut call = Call::get(EndpointKind::Query, PROSPECTS_PATH)
            .query("fields", self.reads.param())
            .query("email", email.as_str())
            .query("limit", MAX_PAGE.to_string());
        loop {
            let page: QueryPage = self.http.send(&call).await?.json()?;
            out.extend(
                page.values
                    .into_iter()
                    .filter(|r| !flag(r, fields::IS_DELETED) && text(r, EMAIL).is_some_and(|e| e.trim().to_lowercase() == email.as_str())),
            );
            match page.next_page_token {
                Some(t) => call = Call::get(EndpointKind::Query, PROSPECTS_PATH).query("nextPageToken", t),
                None => return Ok(out),
            }
        }
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
        let page = StampFeed::new(&ProspectFeed { http: &self.http, fields: &fields }, self.overlap).changes(cursor, limit).await?;
        // Rows become records afterwards: that needs the users.
        Ok(ChangePage { records: self.records(page.records).await?, next: page.next, has_more: page.has_more })
    }

    async fn prospect_changes_pending(&self, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        // A pending check reads positions only: no fields to name.
        StampFeed::new(&ProspectFeed { http: &self.http, fields: "" }, self.overlap).pending(cursor).await
    }

    async fn prospects_by_id(&self, ids: &[i64]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let ids: BTreeSet<i64> = ids.iter().copied().collect();
        let rows: Vec<Option<Row>> =
            futures::stream::iter(ids).map(|id| self.read(id)).buffered(self.max_concurrency).try_collect().await?;
        self.records(rows.into_iter().flatten().collect()).await
    }

    async fn prospects_by_email(&self, emails: &[Email]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let emails: BTreeSet<&Email> = emails.iter().collect();
        // The futures are made first: a stream of borrowing closures trips
        // the `Send` check of the trait's boxed future.
        let reads: Vec<_> = emails.into_iter().map(|e| self.with_email(e)).collect();
        let found: Vec<Vec<Row>> = futures::stream::iter(reads).buffered(self.max_concurrency).try_collect().await?;
        self.records(found.into_iter().flatten().collect()).await
    }

    async fn write_prospects(&self, writes: &[ProspectWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        write::write_prospects(&self.http, writes, self.max_concurrency).await
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
