//! Read-only mirrors of CRM objects in the MA (R4, R5, R6).
//!
//! A mirror is derived state: whether it exists, what it holds and which
//! prospects see it follow from the CRM and the identity map alone. The
//! engine never applies a mirror change as a delta; it *reconciles* a mirror
//! key from the current CRM state, so a stale or reordered message can only
//! cause a redundant reconciliation, never a wrong mirror.
//!
//! - a prospect account mirrors the CRM account of the prospect's contact, and
//!   exists only while some syncing prospect's contact belongs to it (R4);
//! - an opportunity is visible on a prospect only while that prospect's
//!   contact holds a contact role on it, and is not in the MA at all without
//!   one (R5);
//! - a declared custom object record is visible on the prospects its lookup
//!   leads to: the prospect of the lead or contact it points at, or the
//!   prospects of the account it points at (R6).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Timestamp;
use crate::ids::{CrmId, CrmObject};
use crate::records::Fields;

/// A CRM object the MA mirrors, or whose records decide mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorObject {
    Account,
    Opportunity,
    /// Decides which prospects see an opportunity.
    ContactRole,
    /// A custom object declared in the connection's settings, by API name.
    Custom(String),
}

impl MirrorObject {
    /// The name in feeds, sync errors and the audit log.
    pub fn name(&self) -> &str {
        match self {
            MirrorObject::Account => "account",
            MirrorObject::Opportunity => "opportunity",
            MirrorObject::ContactRole => "contact_role",
            MirrorObject::Custom(name) => name,
        }
    }
}

impl fmt::Display for MirrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A record of a mirrored CRM object, as the CRM returns it (unvalidated ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmObjectRecord {
    pub id: String,
    pub object: MirrorObject,
    #[serde(default)]
    pub is_deleted: bool,
    pub system_modstamp: Timestamp,
    /// API name → value (lookups such as `AccountId` or `ContactId` included).
    pub fields: Fields,
}

impl CrmObjectRecord {
    /// A lookup field's target, if it holds a valid id.
    pub fn lookup(&self, field: &str) -> Option<CrmId> {
        self.fields.get(field)?.value.as_str().and_then(|s| CrmId::parse(s).ok())
    }
}

/// What the MA holds a mirror of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "object")]
pub enum MirrorKind {
    ProspectAccount,
    Opportunity,
    Custom(String),
}

/// A mirror to reconcile, or a CRM person whose related mirrors must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "key")]
pub enum MirrorKey {
    Account {
        id: CrmId,
    },
    Opportunity {
        id: CrmId,
    },
    Custom {
        object: String,
        id: CrmId,
    },
    /// Everything a lead or contact is tied to: its account, the
    /// opportunities it has roles on, custom records pointing at it.
    Person {
        id: CrmId,
    },
}

impl MirrorKey {
    /// A stable text form: lock keys and the outbox use it.
    pub fn text(&self) -> String {
        match self {
            MirrorKey::Account { id } => format!("account:{id}"),
            MirrorKey::Opportunity { id } => format!("opportunity:{id}"),
            MirrorKey::Custom { object, id } => format!("custom:{object}:{id}"),
            MirrorKey::Person { id } => format!("person:{id}"),
        }
    }

    pub fn parse(text: &str) -> Option<MirrorKey> {
        let (kind, rest) = text.split_once(':')?;
        Some(match kind {
            "account" => MirrorKey::Account { id: CrmId::parse(rest).ok()? },
            "opportunity" => MirrorKey::Opportunity { id: CrmId::parse(rest).ok()? },
            "person" => MirrorKey::Person { id: CrmId::parse(rest).ok()? },
            "custom" => {
                let (object, id) = rest.rsplit_once(':')?;
                MirrorKey::Custom { object: object.to_owned(), id: CrmId::parse(id).ok()? }
            }
            _ => return None,
        })
    }
}

/// A custom object declared in a connection's settings (R6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomObject {
    /// API name, e.g. `Subscription__c`.
    pub name: String,
    /// The fields mirrored into the MA.
    pub fields: Vec<String>,
    /// The lookup field that ties a record to a lead, contact or account.
    pub lookup_field: String,
    pub lookup_object: CrmObject,
}

/// Why a custom object declaration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomObjectError {
    #[error("custom object name {0:?} must be an API name ending in __c")]
    Name(String),
    #[error("custom object {0}: the lookup must point at a lead, contact or account, not {1}")]
    Lookup(String, CrmObject),
    #[error("custom object {0}: list at least one field to mirror")]
    NoFields(String),
}

impl CustomObject {
    pub fn validate(&self) -> Result<(), CustomObjectError> {
        let api = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !self.name.ends_with("__c") || !api(&self.name) {
            return Err(CustomObjectError::Name(self.name.clone()));
        }
        if !matches!(self.lookup_object, CrmObject::Lead | CrmObject::Contact | CrmObject::Account) {
            return Err(CustomObjectError::Lookup(self.name.clone(), self.lookup_object));
        }
        if self.fields.is_empty() {
            return Err(CustomObjectError::NoFields(self.name.clone()));
        }
        Ok(())
    }
}

/// The fields a prospect account mirrors: CRM account field → MA field.
pub const ACCOUNT_FIELDS: &[(&str, &str)] =
    &[("Name", "name"), ("Industry", "industry"), ("Website", "website"), ("BillingCity", "city"), ("BillingCountry", "country")];

/// The fields an opportunity mirrors: CRM field → MA field.
pub const OPPORTUNITY_FIELDS: &[(&str, &str)] = &[
    ("Name", "name"),
    ("StageName", "stage"),
    ("Amount", "amount"),
    ("CloseDate", "closeDate"),
    ("IsClosed", "isClosed"),
    ("IsWon", "isWon"),
];

/// What a mirror should be.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorPlan {
    /// The mirror exists with these values (MA field names), seen by exactly
    /// these prospects.
    Present { fields: BTreeMap<String, Value>, prospects: BTreeSet<i64> },
    /// No mirror: the source is gone, or no syncing prospect is tied to it.
    Absent,
}

fn pick(record: &CrmObjectRecord, pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(crm, ma)| ((*ma).to_owned(), record.fields.get(*crm).map_or(Value::Null, |f| f.value.clone()))).collect()
}

fn present_if_seen(fields: BTreeMap<String, Value>, prospects: BTreeSet<i64>) -> MirrorPlan {
    if prospects.is_empty() { MirrorPlan::Absent } else { MirrorPlan::Present { fields, prospects } }
}

/// R4: the prospect account for CRM account `account`, seen by the prospects
/// whose contacts belong to it.
pub fn account_plan(account: Option<&CrmObjectRecord>, prospects: BTreeSet<i64>) -> MirrorPlan {
    match account {
        Some(a) if !a.is_deleted => present_if_seen(pick(a, ACCOUNT_FIELDS), prospects),
        _ => MirrorPlan::Absent,
    }
}

/// R5: the opportunity, seen by the prospects of the contacts holding a live
/// contact role on it. `prospect_of` maps a contact to its syncing prospect.
pub fn opportunity_plan(
    opportunity: Option<&CrmObjectRecord>,
    roles: &[CrmObjectRecord],
    prospect_of: &BTreeMap<CrmId, i64>,
) -> MirrorPlan {
    let Some(o) = opportunity.filter(|o| !o.is_deleted) else { return MirrorPlan::Absent };
    let own_id = CrmId::parse(&o.id).ok();
    let prospects: BTreeSet<i64> = roles
        .iter()
        .filter(|r| !r.is_deleted && r.lookup("OpportunityId") == own_id)
        .filter_map(|r| r.lookup("ContactId"))
        .filter_map(|c| prospect_of.get(&c).copied())
        .collect();
    present_if_seen(pick(o, OPPORTUNITY_FIELDS), prospects)
}

/// R6: a custom object record, seen by the prospects its lookup leads to.
pub fn custom_plan(record: Option<&CrmObjectRecord>, declaration: &CustomObject, prospects: BTreeSet<i64>) -> MirrorPlan {
    let Some(r) = record.filter(|r| !r.is_deleted) else { return MirrorPlan::Absent };
    let fields: BTreeMap<String, Value> =
        declaration.fields.iter().map(|f| (f.clone(), r.fields.get(f).map_or(Value::Null, |v| v.value.clone()))).collect();
    present_if_seen(fields, prospects)
}

#[cfg(test)]
mod tests;
