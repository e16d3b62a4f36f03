//! The CRM connector for Salesforce Sales Cloud over HTTP: [`SalesforceCrm`]
//! implements [`CrmApi`] on the Salesforce REST API, returning the same
//! records as the sandbox, built from what the API returns.
//!
//! The login, the HTTP client, the send loop with its retries, the gates on
//! the org's API usage and the change-feed paging are the connector kit's
//! (`crmsync-connector-kit`); what is Salesforce's is here:
//!
//! - `http`: the REST API as the kit sees it (instance URL, usage header);
//! - `errors`: error bodies, and which failures are transient, which fatal;
//! - `fields`: which fields are read per object;
//! - `describe`: which fields leads and contacts have (sObject Describe);
//! - `query`: SOQL text, `IN` chunks and paging;
//! - `feed`: an object's change feed as a page source;
//! - `records`: rows turned into domain records;
//! - `write`: sObject Collections writes; `bulk`: Bulk API 2.0 jobs;
//! - `events`: the org's change events (Pub/Sub API), which wake the feeds
//!   so that an idle feed only sweeps.

mod bulk;
mod describe;
mod errors;
mod events;
mod feed;
mod fields;
mod http;
mod query;
mod records;
mod write;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crmsync_connector::stamp_cursor::{Overlap, StampCursor};
use crmsync_connector::{ChangePage, ConnectorError, CrmApi, CrmWrite, Cursor, FieldInfo, WriteOutcome};
use crmsync_connector_kit::row::Row;
pub use crmsync_connector_kit::{ApiUsage, Pacing};
use crmsync_connector_kit::{CallGate, Gates, HttpClient, Listening, Login, PollGate, REQUERY, StampFeed, UsageGate};
use crmsync_domain::endpoint::SalesforceEndpoint;
use crmsync_domain::mirror::{CrmObjectRecord, MirrorObject};
use crmsync_domain::records::CrmPersonRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject, Email};

pub use crate::events::Wake;
use crate::events::{Events, Settings};
use crate::feed::SoqlFeed;
pub use crate::fields::ReadSet;
use crate::http::{Http, Rest};

/// A Salesforce org behind [`CrmApi`].
#[derive(Debug)]
pub struct SalesforceCrm {
    http: Arc<Http>,
    /// The org's usage as answers report it; one of the client's gates.
    usage: Arc<UsageGate>,
    reads: ReadSet,
    integration_user: String,
    overlap: Overlap,
    polls: Arc<PollGate>,
    /// The org's change events, unless the endpoint turned them off or no
    /// one reads the feeds through this connector.
    events: Option<Events>,
    /// Whether the endpoint has change events on: then the producer's
    /// feeds skip the engine's own writes (echoes) and so does a pending
    /// check, whichever connector makes it (`status`, `wait-idle`).
    change_events: bool,
    bulk_threshold: usize,
    /// Leads' and contacts' fields, described lately.
    describes: describe::Describes,
}

/// A field name as SOQL takes it: the connector prints field names into
/// queries, so only API-name characters are let through.
fn check_field(field: &str) -> Result<(), ConnectorError> {
    let ok = !field.is_empty() && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok { Ok(()) } else { Err(ConnectorError::Fatal(format!("{field:?} is not a Salesforce field name"))) }
}

/// The client id of `Sforce-Call-Options`: it travels in a header and
/// comes back inside `changeOrigin` (`...;client=<id>`), so it is kept to
/// characters that cannot end either.
fn check_client(client: &str) -> Result<(), ConnectorError> {
    let ok = !client.is_empty() && client.len() <= 64 && client.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if ok { Ok(()) } else { Err(ConnectorError::Fatal(format!("call_client {client:?} must be 1 to 64 letters, digits or -_./"))) }
}

/// `v60.0`: the version is part of every path.
fn check_version(v: &str) -> Result<(), ConnectorError> {
    let ok = v.strip_prefix('v').and_then(|n| n.split_once('.')).is_some_and(|(major, minor)| {
        !major.is_empty() && !minor.is_empty() && major.bytes().all(|b| b.is_ascii_digit()) && minor.bytes().all(|b| b.is_ascii_digit())
    });
    if ok { Ok(()) } else { Err(ConnectorError::Fatal(format!("{v:?} is not a Salesforce API version (like v60.0)"))) }
}

impl SalesforceCrm {
    /// Logs in to the org `endpoint` names, reading the fields `reads` says.
    pub async fn connect(endpoint: &SalesforceEndpoint, reads: ReadSet) -> Result<Self, ConnectorError> {
        Self::connect_with(endpoint, reads, Pacing::default()).await
    }

    /// Like [`SalesforceCrm::connect`], reading a connection's field mapping
    /// and custom objects from its settings.
    /// Every call passes `allowance` (the connection's daily API allowance,
    /// shared by every replica) before the org's usage gate. With `wake`
    /// (someone reads the feeds and hears it), the connector subscribes to
    /// the org's change events if the endpoint allows; without it, feeds
    /// poll (a one-off read has no use for a stream).
    pub async fn from_settings(
        endpoint: &SalesforceEndpoint,
        settings: &ConnectionSettings,
        allowance: Arc<dyn CallGate>,
        wake: Option<Wake>,
    ) -> Result<Self, ConnectorError> {
        let pacing = Pacing { budget_probe: Duration::from_secs(endpoint.usage_probe_secs.max(1)), ..Pacing::default() };
        Self::connect_gated(endpoint, ReadSet::for_settings(settings), pacing, Some(allowance), wake).await
    }

    /// [`SalesforceCrm::connect`] with other timings (tests shorten them).
    pub async fn connect_with(endpoint: &SalesforceEndpoint, reads: ReadSet, pacing: Pacing) -> Result<Self, ConnectorError> {
        Self::connect_gated(endpoint, reads, pacing, None, None).await
    }

    async fn connect_gated(
        endpoint: &SalesforceEndpoint,
        reads: ReadSet,
        pacing: Pacing,
        allowance: Option<Arc<dyn CallGate>>,
        wake: Option<Wake>,
    ) -> Result<Self, ConnectorError> {
        check_version(&endpoint.api_version)?;
        check_client(&endpoint.call_client)?;
        if endpoint.api_share.is_nan() || endpoint.api_share <= 0.0 {
            return Err(ConnectorError::Fatal(format!("api_share {} must be above 0", endpoint.api_share)));
        }
        let timeout = Duration::from_secs(endpoint.timeout_secs.max(1));
        let login = Login::new(&endpoint.oauth, timeout)?;
        // The connection's allowance, then the org's usage: a call the
        // usage gate holds back has been counted against the allowance, and
        // one it refuses is given back.
        let usage = Arc::new(UsageGate::new("Salesforce", endpoint.api_share, pacing.clone()));
        let mut gates: Vec<Arc<dyn CallGate>> = allowance.into_iter().collect();
        gates.push(usage.clone());
        let rest = Rest::new(&endpoint.api_version, &endpoint.call_client);
        let http = Arc::new(HttpClient::new(rest, login, Arc::new(Gates::new(gates)), timeout, pacing)?);
        // One login now: bad credentials fail here, and the token names
        // the integration user whose changes are the engine's own.
        let token = http.token(None).await?;
        let integration_user = CrmId::parse(token.user_id()).map_or_else(|_| token.user_id().to_owned(), |id| id.to_string());
        tracing::info!(user = %integration_user, "logged in to Salesforce");
        let polls = Arc::new(PollGate::new(Duration::from_secs(endpoint.poll_interval_secs), Duration::from_secs(endpoint.poll_max_secs)));
        let events = if let (true, Some(wake)) = (endpoint.change_events, wake) {
            let listening = Listening {
                sweep: Duration::from_secs(endpoint.sweep_secs.max(1)),
                // One look back a window after changes: late commits.
                look_back: Duration::from_secs(endpoint.overlap_secs.max(1)),
            };
            let settings = Settings { url: endpoint.pubsub_url.clone(), client: endpoint.call_client.clone(), listening };
            Some(Events::new(http.clone(), polls.clone(), settings, Some(wake))?)
        } else {
            None
        };
        Ok(SalesforceCrm {
            http,
            usage,
            reads,
            integration_user,
            overlap: Overlap::new(Duration::from_secs(endpoint.overlap_secs)),
            polls,
            events,
            change_events: endpoint.change_events,
            bulk_threshold: endpoint.bulk_threshold,
            describes: describe::Describes::default(),
        })
    }

    /// The org's API usage as the last answer reported it
    /// (`Sforce-Limit-Info`), if any answer has yet.
    pub fn api_usage(&self) -> Option<ApiUsage> {
        self.usage.current()
    }

    /// Whether that usage is at or over crmsync's share, so calls wait.
    pub fn over_api_share(&self) -> bool {
        self.usage.over()
    }

    /// Changes of `sobject`, read as `convert` says; `own` says which
    /// records the engine itself saved last (not activity for the poll gate).
    /// With change events, the call also does what the events received
    /// before it ask (see `events`): a look back, records read by id (gap
    /// events), a query however long the sweep; and the cursor it hands
    /// out carries the replay id of what it covers. `written`: the engine
    /// writes these records (its own writes' events are echoes).
    #[allow(clippy::too_many_arguments)]
    async fn changes<T: Send>(
        &self,
        sobject: &str,
        select: &[String],
        convert: &(dyn Fn(&Row) -> Result<T, ConnectorError> + Sync),
        own: &(dyn Fn(&T) -> bool + Sync),
        id_of: &(dyn Fn(&T) -> &str + Sync),
        written: bool,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<T>, ConnectorError> {
        let source = SoqlFeed { http: &self.http, sobject, select, convert, own, pending_skips: None };
        let feed = StampFeed::new(&source, self.overlap).polled_by(&self.polls);
        let Some(events) = &self.events else { return feed.changes(cursor, limit).await };
        let reading = events.begin(sobject, written, cursor);
        let looked_back;
        let mut from = cursor;
        if let Some(to) = reading.plan().look_back {
            let mut state = StampCursor::load(cursor)?;
            state.look_back_to(to);
            looked_back = state.save();
            from = Some(&looked_back);
        }
        // Whether the call's first query begins now (not a locator of a
        // query from before the events it answers for).
        let fresh = StampCursor::load(from)?.locator().is_none_or(|l| l == REQUERY) && self.polls.may_poll(sobject, Instant::now());
        let mut page = feed.changes(from, limit).await?;
        let ids = &reading.plan().ids;
        if !ids.is_empty() {
            // Gap events' records, whatever their stamps.
            let have: HashSet<&str> = page.records.iter().map(id_of).collect();
            let wanted: Vec<String> = ids.iter().filter(|id| !have.contains(id.as_str())).cloned().collect();
            let rows = query::all_rows_of(&self.http, &query::in_queries(select, sobject, fields::ID, &wanted, None), true).await?;
            for row in &rows {
                page.records.push(convert(row)?);
            }
        }
        page.next = reading.finish(&self.polls, fresh, page.next);
        Ok(page)
    }

    /// Whether `sobject`'s feed has changes after `cursor`. With change
    /// events on the endpoint, the engine's own writes to the records it
    /// writes (`written`) are not: the producer's feed does not read them
    /// (their events are echoes), though this connector may be a one-off's
    /// with no events of its own.
    async fn pending(&self, sobject: &str, written: bool, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        // A pending check reads positions only: nothing to select or convert.
        let pending_skips = (written && self.change_events).then_some(self.integration_user.as_str());
        let source = SoqlFeed { http: &self.http, sobject, select: &[], convert: &|_| Ok(()), own: &|_| false, pending_skips };
        StampFeed::new(&source, self.overlap).pending(cursor).await
    }

    async fn people_in(
        &self,
        object: CrmObject,
        field: &str,
        values: &[String],
        all: bool,
    ) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let sel = self.reads.person(object)?;
        let rows = query::all_rows_of(&self.http, &query::in_queries(&sel.select, &sel.sobject, field, values, None), all).await?;
        rows.iter().map(|r| records::person(object, &sel.data, r)).collect()
    }
}

#[async_trait]
impl CrmApi for SalesforceCrm {
    fn integration_user(&self) -> &str {
        &self.integration_user
    }

    async fn person_changes(
        &self,
        object: CrmObject,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CrmPersonRecord>, ConnectorError> {
        let sel = self.reads.person(object)?;
        let convert = |row: &Row| records::person(object, &sel.data, row);
        let own = |r: &CrmPersonRecord| r.last_modified_by.as_deref() == Some(self.integration_user.as_str());
        self.changes(&sel.sobject, &sel.select, &convert, &own, &|r| r.id.as_str(), true, cursor, limit).await
    }

    async fn person_changes_pending(&self, object: CrmObject, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        self.pending(fields::person_sobject(object)?, true, cursor).await
    }

    async fn people_by_id(&self, ids: &[CrmId]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let mut out = Vec::new();
        for object in [CrmObject::Lead, CrmObject::Contact] {
            let of_object: Vec<String> = ids.iter().filter(|id| id.object() == Some(object)).map(|id| id.to_string()).collect();
            if !of_object.is_empty() {
                // Deleted records included, as a look-up by id finds them.
                out.extend(self.people_in(object, fields::ID, &of_object, true).await?);
            }
        }
        Ok(out)
    }

    async fn people_by_email(&self, emails: &[Email]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        let wanted: Vec<String> = emails.iter().map(|e| e.as_str().to_owned()).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let set: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        for object in [CrmObject::Lead, CrmObject::Contact] {
            // `query` (not `queryAll`): live records only.
            for r in self.people_in(object, fields::EMAIL, &wanted, false).await? {
                // SOQL compares emails without regard to case; keep exactly
                // the records whose normalised email was asked for.
                if r.email.as_deref().is_some_and(|e| set.contains(e.trim().to_lowercase().as_str())) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    async fn write_people(&self, object: CrmObject, writes: &[CrmWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // The immediate lane: collections only, a Bulk job's polling is
        // latency it must not pay.
        write::write_people(&self.http, object, writes, usize::MAX).await
    }

    async fn write_people_in_bulk(&self, object: CrmObject, writes: &[CrmWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        write::write_people(&self.http, object, writes, self.bulk_threshold).await
    }

    async fn people_where(&self, object: CrmObject, field: &str, values: &[String]) -> Result<Vec<CrmPersonRecord>, ConnectorError> {
        check_field(field)?;
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<String> =
            if field.ends_with("Id") { values.iter().map(|v| query::normalise_id(v)).collect() } else { values.to_vec() };
        self.people_in(object, field, &values, false).await
    }

    async fn object_changes(
        &self,
        object: &MirrorObject,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CrmObjectRecord>, ConnectorError> {
        let sel = self.reads.object(object)?;
        let convert = |row: &Row| records::object(object, &sel.data, row);
        // Objects it mirrors: not the engine's writes to judge as its own.
        self.changes(&sel.sobject, &sel.select, &convert, &|_| false, &|r| r.id.as_str(), false, cursor, limit).await
    }

    async fn object_changes_pending(&self, object: &MirrorObject, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        let sel = self.reads.object(object)?;
        self.pending(&sel.sobject, false, cursor).await
    }

    async fn objects_where(&self, object: &MirrorObject, field: &str, values: &[String]) -> Result<Vec<CrmObjectRecord>, ConnectorError> {
        check_field(field)?;
        let sel = self.reads.object(object)?;
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<String> =
            if self.reads.is_id_field(object, field) { values.iter().map(|v| query::normalise_id(v)).collect() } else { values.to_vec() };
        // `queryAll`: deleted records included, flagged `is_deleted`.
        let rows = query::all_rows_of(&self.http, &query::in_queries(&sel.select, &sel.sobject, field, &values, None), true).await?;
        let mut out = rows.iter().map(|r| records::object(object, &sel.data, r)).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn person_fields(&self, object: CrmObject) -> Result<Vec<FieldInfo>, ConnectorError> {
        self.describes.person_fields(&self.http, object).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_and_versions_are_checked_before_they_reach_a_query() {
        assert!(check_field("AccountId").is_ok());
        assert!(check_field("Subscription__c").is_ok());
        for bad in ["", "Email) OR (Id", "Name'", "a b"] {
            assert!(check_field(bad).is_err(), "{bad:?}");
        }
        assert!(check_version("v60.0").is_ok());
        assert!(check_client("crmsync").is_ok() && check_client("acme/crmsync-1.2").is_ok());
        for bad in ["", "a;b", "a,b", "a b", "a=b"] {
            assert!(check_client(bad).is_err(), "{bad:?}");
        }
        for bad in ["60.0", "v60", "v60.x", "v../x.0"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn plain_http_to_another_host_is_refused_before_any_login() {
        let endpoint: SalesforceEndpoint = serde_json::from_value(serde_json::json!({
            "oauth": {"login_url": "http://login.example.com", "flow": "client_credentials",
                      "client_id": "app", "client_secret": {"env": "PATH"}}
        }))
        .unwrap();
        let err = SalesforceCrm::connect(&endpoint, ReadSet::default()).await.unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("plain http")), "{err}");
    }
}
