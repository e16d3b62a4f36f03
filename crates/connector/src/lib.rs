//! How the engine reaches the systems it syncs.
//!
//! The traits are shaped by the real APIs, not by the sandbox: change queries
//! are paged by an opaque cursor over a modification stamp (SOQL on
//! `SystemModstamp`, Account Engagement's `updatedAt`), look-ups go by id and by
//! email in batches, and writes are batches that return one outcome per record
//! (sObject Collections with `allOrNone=false`), so partial success is normal.
//!
//! Implementations: the sandbox in PostgreSQL (`crmsync-sandbox`), and over
//! HTTP Salesforce (`crmsync-salesforce`) and Account Engagement
//! (`crmsync-account-engagement`), both on `crmsync-connector-kit`.

pub mod lane;
pub mod stamp_cursor;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_domain::csql::{CsqlRecord, CsqlRecordType};
use crmsync_domain::merge::Side;
use crmsync_domain::mirror::{CrmObjectRecord, MirrorKind, MirrorObject, MirrorPlan};
use crmsync_domain::records::{CrmPersonRecord, ProspectRecord};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_domain::{CrmId, CrmObject, Email, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a change feed stands: opaque to the engine, meaningful to the
/// connector that produced it. Stored by the producer after each confirmed page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Cursor(pub Value);

/// One page of a change feed.
#[derive(Debug, Clone)]
pub struct ChangePage<T> {
    pub records: Vec<T>,
    /// The cursor after this page; pass it to get the next one.
    pub next: Cursor,
    /// More changes were already waiting past this page.
    pub has_more: bool,
}

/// How a connector call failed, in terms of what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// Worth retrying later: timeouts, lost connections, rate limits.
    #[error("temporarily unavailable: {0}")]
    Transient(String),
    /// Retrying will not help until someone changes the configuration.
    #[error("misconfigured: {0}")]
    Fatal(String),
}

/// The result of one record's write inside a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Written; `at` is the system's modification stamp of the write.
    Written { id: String, created: bool, at: Timestamp },
    /// The system refused this record (validation rule, required field...).
    Rejected { code: String, message: String },
    /// A write with a newer fencing token already reached the record: this
    /// writer's view is stale and it must not write.
    Fenced,
    /// The record does not exist (any more).
    NotFound,
}

/// Puts outcomes gathered out of order (`(index of the write, outcome)`)
/// back in the order of the `n` writes; a write left without one is a
/// connector bug, reported rather than guessed.
pub fn outcomes_in_order(n: usize, gathered: impl IntoIterator<Item = (usize, WriteOutcome)>) -> Result<Vec<WriteOutcome>, ConnectorError> {
    let mut out: Vec<Option<WriteOutcome>> = vec![None; n];
    for (i, o) in gathered {
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(o);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, o)| o.ok_or_else(|| ConnectorError::Fatal(format!("write {i} of the batch got no outcome"))))
        .collect()
}

/// Field name (as the system's API spells it) → value.
pub type FieldValues = BTreeMap<String, Value>;

/// Which prospect a write goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum ProspectTarget {
    Id(i64),
    /// Create, or update the most recently updated prospect with this email
    /// (Account Engagement's "upsert latest by email"): idempotent creates.
    UpsertByEmail(Email),
    /// A plain create: a retry makes another prospect. Only for clients
    /// other than the engine (the sandbox's HTTP API).
    New,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProspectWrite {
    pub target: ProspectTarget,
    pub fields: FieldValues,
    /// Point the prospect at its CRM record.
    pub crm_link: Option<(CrmObject, CrmId)>,
    /// Fencing token: refused if a newer one already wrote this record.
    pub fence: Option<i64>,
    /// Refused, as fenced, if the record changed after this time: the
    /// engine read it then and planned the write on what it saw, so a user
    /// edit made since is merged on the retry instead of overwritten (I3).
    /// Connectors whose API cannot make a write conditional ignore it.
    pub unmodified_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which CRM record a write goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum CrmTarget {
    Id(CrmId),
    /// Upsert by crmsync's external id field: a retried create finds the
    /// record the first attempt made instead of making a second one.
    ExternalId(String),
    /// A plain create, without an external id: a retry makes another record.
    /// Only for clients other than the engine (the sandbox's HTTP API).
    New,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrmWrite {
    pub target: CrmTarget,
    pub fields: FieldValues,
    pub owner_id: Option<CrmId>,
    /// Write as this CRM user (a CSM's "logged-in" sync) instead of the
    /// integration user; refused if that user may not use the API.
    pub act_as: Option<CrmId>,
    pub fence: Option<i64>,
    /// Refused, as fenced, if the record changed after this time: the
    /// engine read it then and planned the write on what it saw, so a user
    /// edit made since is merged on the retry instead of overwritten (I3).
    /// Connectors whose API cannot make a write conditional ignore it.
    pub unmodified_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// A mirror write: make the MA's mirror of a CRM record what `plan` says
/// (present with these values and seen by exactly these prospects, or absent).
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorWrite {
    pub kind: MirrorKind,
    pub crm_id: CrmId,
    pub plan: MirrorPlan,
    pub fence: Option<i64>,
}

/// A mirror as the MA holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorState {
    pub fields: BTreeMap<String, Value>,
    pub prospects: std::collections::BTreeSet<i64>,
}

/// A field a system's object has, as its schema describes it (Salesforce's
/// describe, Account Engagement's fields): what an admin can map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldInfo {
    /// The name the API uses, and the field mapping refers to.
    pub name: String,
    /// `text`, `boolean`, `integer`, `number`, `date`...
    #[serde(rename = "type")]
    pub kind: String,
    /// A custom field (`__c`, or declared by the customer), not a standard one.
    pub custom: bool,
}

/// What a connector without a schema call answers when asked for its fields.
pub fn no_schema(system: &str) -> ConnectorError {
    ConnectorError::Fatal(format!("{system} cannot list its fields through this connector"))
}

/// The marketing-automation system (Account Engagement).
#[async_trait]
pub trait MaApi: Send + Sync + Debug {
    /// The user the engine reads and writes as; changes made by it are the
    /// engine's own and are not synced back (I7).
    fn integration_user(&self) -> &str;

    /// Whether writes honour `unmodified_since` (refuse, as fenced, a record
    /// changed after it). Only then may the engine write a record it has
    /// seen at a known stamp without reading it again first (I3); an API
    /// that ignores the condition leaves the applier reading before writing.
    fn writes_conditionally(&self) -> bool {
        false
    }

    /// Prospects changed after `cursor` (from the beginning when `None`), in
    /// stamp order, at most `limit`. Never skips a change that commits late.
    async fn prospect_changes(&self, cursor: Option<&Cursor>, limit: usize) -> Result<ChangePage<ProspectRecord>, ConnectorError>;

    /// Whether any prospect change was committed after `cursor`, including
    /// ones a change query cannot return yet (for lag and idleness).
    async fn prospect_changes_pending(&self, cursor: Option<&Cursor>) -> Result<bool, ConnectorError>;

    async fn prospects_by_id(&self, ids: &[i64]) -> Result<Vec<ProspectRecord>, ConnectorError>;

    /// Of the prospects `seen` names, each with the stamp it was last seen
    /// at (`None`: never), those changed since then, read in full; the
    /// others are left out (the caller holds all they hold). The
    /// read-before-write of an API that cannot make a write conditional
    /// (I3): a connector may list the candidates cheaply instead of reading
    /// every prospect. By default: [`MaApi::prospects_by_id`], compared.
    async fn prospects_changed_since(&self, seen: &[(i64, Option<Timestamp>)]) -> Result<Vec<ProspectRecord>, ConnectorError> {
        let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
        let at: std::collections::HashMap<i64, Option<Timestamp>> = seen.iter().copied().collect();
        let read = self.prospects_by_id(&ids).await?;
        Ok(read.into_iter().filter(|p| at.get(&p.id).copied().flatten().is_none_or(|t| p.updated_at > t)).collect())
    }

    /// Live (not deleted) prospects whose email is one of `emails`, compared
    /// case-insensitively.
    async fn prospects_by_email(&self, emails: &[Email]) -> Result<Vec<ProspectRecord>, ConnectorError>;

    /// One outcome per write, in order. At most [`MAX_WRITES_PER_CALL`]
    /// writes per call; callers chunk.
    async fn write_prospects(&self, writes: &[ProspectWrite]) -> Result<Vec<WriteOutcome>, ConnectorError>;

    /// Writes a batch-lane chunk of any size; one outcome per write, in
    /// order. There latency matters less than API calls, so a connector may
    /// use a bulk import (Account Engagement's Import API) when the chunk
    /// is large; the immediate lane never waits for one. By default: calls
    /// of [`MAX_WRITES_PER_CALL`] through [`MaApi::write_prospects`].
    async fn write_prospects_in_bulk(&self, writes: &[ProspectWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let mut out = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(MAX_WRITES_PER_CALL) {
            out.extend(self.write_prospects(chunk).await?);
        }
        Ok(out)
    }

    /// Creates, updates or removes read-only mirrors (connector privilege:
    /// MA users cannot do this for opportunities). One outcome per write.
    async fn write_mirrors(&self, writes: &[MirrorWrite]) -> Result<Vec<WriteOutcome>, ConnectorError>;

    /// A mirror as the MA holds it now.
    async fn mirror(&self, kind: &MirrorKind, crm_id: &CrmId) -> Result<Option<MirrorState>, ConnectorError>;

    /// The CRM account whose prospect account each prospect shows.
    async fn prospect_accounts_of(&self, prospect_ids: &[i64]) -> Result<Vec<(i64, CrmId)>, ConnectorError>;

    /// The prospect's data fields (no system fields: ids, links, stamps),
    /// from the system's own schema: what a field mapping may name.
    async fn prospect_fields(&self) -> Result<Vec<FieldInfo>, ConnectorError> {
        Err(no_schema("the MA"))
    }
}

/// The CRM (Sales Cloud): leads and contacts.
#[async_trait]
pub trait CrmApi: Send + Sync + Debug {
    fn integration_user(&self) -> &str;

    /// Whether writes honour `unmodified_since` (refuse, as fenced, a record
    /// changed after it). Only then may the engine write a record it has
    /// seen at a known stamp without reading it again first (I3); an API
    /// that ignores the condition leaves the applier reading before writing.
    fn writes_conditionally(&self) -> bool {
        false
    }

    /// Leads or contacts changed after `cursor`, in stamp order, at most `limit`.
    async fn person_changes(
        &self,
        object: CrmObject,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CrmPersonRecord>, ConnectorError>;

    /// Whether any change of `object` was committed after `cursor`.
    async fn person_changes_pending(&self, object: CrmObject, cursor: Option<&Cursor>) -> Result<bool, ConnectorError>;

    /// Leads and contacts by id (any mix); missing ids are simply absent.
    async fn people_by_id(&self, ids: &[CrmId]) -> Result<Vec<CrmPersonRecord>, ConnectorError>;

    /// Live leads and contacts whose email is one of `emails`.
    async fn people_by_email(&self, emails: &[Email]) -> Result<Vec<CrmPersonRecord>, ConnectorError>;

    /// Writes leads, contacts or opportunities; one outcome per write, in
    /// order. At most 200 writes per call, as with sObject Collections;
    /// callers chunk.
    async fn write_people(&self, object: CrmObject, writes: &[CrmWrite]) -> Result<Vec<WriteOutcome>, ConnectorError>;

    /// Writes a batch-lane chunk of any size; one outcome per write, in
    /// order. There latency matters less than API calls, so a connector may
    /// use a bulk job (Salesforce Bulk API 2.0) when the chunk is large; the
    /// immediate lane never waits for one. By default: calls of
    /// [`MAX_WRITES_PER_CALL`] through [`CrmApi::write_people`].
    async fn write_people_in_bulk(&self, object: CrmObject, writes: &[CrmWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
        let mut out = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(MAX_WRITES_PER_CALL) {
            out.extend(self.write_people(object, chunk).await?);
        }
        Ok(out)
    }

    /// Live leads or contacts whose `field` holds one of `values` (SOQL
    /// `WHERE field IN (...)`), e.g. contacts by `AccountId`.
    async fn people_where(&self, object: CrmObject, field: &str, values: &[String]) -> Result<Vec<CrmPersonRecord>, ConnectorError>;

    /// Changes of a mirrored object (accounts, opportunities, contact roles,
    /// custom objects), deleted records included, like `queryAll`.
    async fn object_changes(
        &self,
        object: &MirrorObject,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CrmObjectRecord>, ConnectorError>;

    async fn object_changes_pending(&self, object: &MirrorObject, cursor: Option<&Cursor>) -> Result<bool, ConnectorError>;

    /// Records of `object` whose `field` holds one of `values`; `Id` looks up
    /// by id. Deleted records are included (their `is_deleted` says so).
    async fn objects_where(&self, object: &MirrorObject, field: &str, values: &[String]) -> Result<Vec<CrmObjectRecord>, ConnectorError>;

    /// The data fields of leads or contacts (no system fields), from the
    /// system's own schema (Salesforce's describe): what a field mapping or
    /// a sync scope rule may name.
    async fn person_fields(&self, object: CrmObject) -> Result<Vec<FieldInfo>, ConnectorError> {
        let _ = object;
        Err(no_schema("the CRM"))
    }
}

/// What a CSQL's sync did, reported on the CSQL for its CSM to see.
#[derive(Debug, Clone, PartialEq)]
pub struct CsqlStatus {
    pub id: i64,
    /// `synced` or `rejected`.
    pub status: &'static str,
    pub crm_id: Option<String>,
    pub error: Option<String>,
    pub fence: Option<i64>,
}

/// The customer-success platform (Gainsight): CSQLs (R9).
#[async_trait]
pub trait CsApi: Send + Sync + Debug {
    /// The CS user the engine reports sync outcomes as.
    fn integration_user(&self) -> &str;

    /// The CRM user the CS platform writes CSQLs as under the `integration`
    /// sync user: the platform's own connected user in the CRM org (not
    /// crmsync's), so the MA sync sees those records as ordinary changes.
    fn crm_integration_user(&self) -> &str;

    /// CSQLs of the object for `kind` changed after `cursor`, with their
    /// owner, creator and last saver (and those users' CRM users).
    async fn csql_changes(
        &self,
        kind: CsqlRecordType,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage<CsqlRecord>, ConnectorError>;

    async fn csql_changes_pending(&self, kind: CsqlRecordType, cursor: Option<&Cursor>) -> Result<bool, ConnectorError>;

    async fn csqls_by_id(&self, kind: CsqlRecordType, ids: &[i64]) -> Result<Vec<CsqlRecord>, ConnectorError>;

    /// Live records in the object for `kind` (the guard on switching the target).
    async fn csql_count(&self, kind: CsqlRecordType) -> Result<i64, ConnectorError>;

    /// Reports sync outcomes on the CSQLs, as the integration user.
    async fn write_csql_status(&self, kind: CsqlRecordType, statuses: &[CsqlStatus]) -> Result<Vec<WriteOutcome>, ConnectorError>;

    /// Whether a renewal center is configured (its settings are then shared
    /// with CSQLs synced as opportunities).
    async fn renewal_center_configured(&self) -> Result<bool, ConnectorError>;

    /// Applies a record-type switch to the CS configuration: with
    /// opportunities and a renewal center, their stage and view settings
    /// become one.
    async fn switch_csql_record_type(&self, kind: CsqlRecordType) -> Result<(), ConnectorError>;
}

/// The largest batch [`CrmApi::write_people`] and [`MaApi::write_prospects`] take.
pub const MAX_WRITES_PER_CALL: usize = 200;

/// The systems of one connection.
#[derive(Debug, Clone)]
pub struct Systems {
    pub ma: Arc<dyn MaApi>,
    pub crm: Arc<dyn CrmApi>,
    /// The CS platform, if the connection has one.
    pub cs: Option<Arc<dyn CsApi>>,
}

impl Systems {
    /// The user the engine writes as on `side`: its writes there are its own (I7).
    pub fn integration_user(&self, side: Side) -> &str {
        match side {
            Side::Ma => self.ma.integration_user(),
            Side::Crm => self.crm.integration_user(),
        }
    }

    /// Whether writes on `side` honour `unmodified_since`.
    pub fn writes_conditionally(&self, side: Side) -> bool {
        match side {
            Side::Ma => self.ma.writes_conditionally(),
            Side::Crm => self.crm.writes_conditionally(),
        }
    }
}

/// Builds the systems a connection's settings point at.
#[async_trait]
pub trait ConnectorFactory: Send + Sync + Debug {
    /// The systems of connection `connection_id`, whose settings these are
    /// (its calls to real APIs count against its own allowance).
    async fn systems(&self, connection_id: &str, settings: &ConnectionSettings) -> Result<Systems, ConnectorError>;
}
