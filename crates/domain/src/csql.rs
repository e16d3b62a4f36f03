//! CSQL (customer-success-qualified leads) synced to the CRM (R9), as the
//! customer-success platform (Gainsight) documents its sync options.
//!
//! Per connection: `target` is `cs` (the default: CSQLs stay in the CS
//! platform) or `crm`; with `crm`, `record_type` is `lead` (the default: a
//! CSQL becomes a CRM lead, kept in the CS lead object) or `opportunity` (a CRM
//! opportunity, kept in the CS opportunity object); `sync_user` is
//! `logged_in` (only a CSM whose CRM user has API access can sync; a CSQL saved
//! by anyone else is refused with a reason and kept) or `integration` (any
//! permitted CSM; the CRM record is written by the integration user and
//! remembers which CSM created it).
//!
//! The guards: switching `target` is refused while the CS object in use holds
//! any record; switching `record_type` needs an explicit confirmation and
//! first says what configuration changes with it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::CrmId;
use crate::records::Fields;
use crate::sync_error::{SyncErrorCategory, SyncIssue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CsqlTarget {
    /// CSQLs are kept in the CS platform only.
    #[default]
    Cs,
    /// CSQLs are synced to the CRM.
    Crm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CsqlRecordType {
    /// A CSQL becomes a CRM lead; the CS platform keeps it in its lead object.
    #[default]
    Lead,
    /// A CSQL becomes a CRM opportunity; kept in the CS opportunity object.
    Opportunity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CsqlSyncUser {
    /// Written as the CSM's own CRM user, which must have API access.
    #[default]
    LoggedIn,
    /// Written as the integration user, remembering the CSM.
    Integration,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
names!(CsqlTarget { Cs => "cs", Crm => "crm" });
names!(CsqlRecordType { Lead => "lead", Opportunity => "opportunity" });
names!(CsqlSyncUser { LoggedIn => "logged_in", Integration => "integration" });

impl CsqlRecordType {
    fn plural(self) -> &'static str {
        match self {
            CsqlRecordType::Lead => "leads",
            CsqlRecordType::Opportunity => "opportunities",
        }
    }

    /// The CS object that holds CSQLs of this type.
    pub fn cs_object(self) -> &'static str {
        match self {
            CsqlRecordType::Lead => "CS lead object",
            CsqlRecordType::Opportunity => "CS opportunity object",
        }
    }
}

/// A connection's CSQL sync options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CsqlSettings {
    pub target: CsqlTarget,
    pub record_type: CsqlRecordType,
    pub sync_user: CsqlSyncUser,
}

/// The kind of a CS user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CsUserType {
    /// A customer success manager (a full licence).
    Csm,
    /// An internal collaborator: a free licence, typically a sales user who
    /// owns CSQLs handed to sales.
    InternalCollaborator,
}

/// A CS user as a CSQL names it (owner, creator, last saver), with the CRM
/// user it is tied to, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsUser {
    pub id: i64,
    pub name: String,
    pub user_type: CsUserType,
    /// Raw CRM user id, if the CS user is tied to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_user_id: Option<String>,
    /// Whether that CRM user has API access (`API Enabled`).
    #[serde(default)]
    pub crm_api_enabled: bool,
    /// Whether that CRM user is active.
    #[serde(default)]
    pub crm_active: bool,
}

/// A CSQL as the CS platform holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsqlRecord {
    pub id: i64,
    pub record_type: CsqlRecordType,
    pub owner: CsUser,
    pub created_by: CsUser,
    /// The user who saved it last (the one a logged-in sync writes as).
    pub saved_by: CsUser,
    #[serde(default)]
    pub is_deleted: bool,
    pub created_at: Timestamp,
    pub modstamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_by: Option<String>,
    /// CSQL fields (`Name`, `Email`, `Company`, `Amount`, ...).
    pub fields: Fields,
}

/// How a CSQL is written to the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsqlWrite {
    /// The CRM user the write is made as (`None`: the CS platform's
    /// integration user).
    pub act_as: Option<CrmId>,
    /// The CRM record's owner: the CSQL owner's CRM user.
    pub owner: Option<CrmId>,
    /// Which CSM created the CSQL, remembered on the CRM record.
    pub created_by: String,
}

/// What to do with a saved CSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsqlDecision {
    /// The target is the CS platform: nothing leaves it.
    Stay,
    Sync(CsqlWrite),
    /// Refused with a reason; the CSQL is kept in the CS platform.
    Refuse(SyncIssue),
}

fn crm_user(u: &CsUser) -> Option<CrmId> {
    u.crm_user_id.as_deref().and_then(|c| CrmId::parse(c).ok())
}

/// R9: whether and how a saved CSQL syncs.
pub fn decide_csql(settings: &CsqlSettings, record: &CsqlRecord) -> CsqlDecision {
    if settings.target == CsqlTarget::Cs || record.is_deleted || record.record_type != settings.record_type {
        return CsqlDecision::Stay;
    }
    let owner = crm_user(&record.owner).filter(|_| record.owner.crm_active);
    let act_as = match settings.sync_user {
        CsqlSyncUser::Integration => None,
        CsqlSyncUser::LoggedIn => {
            let saver = &record.saved_by;
            match crm_user(saver) {
                Some(id) if saver.crm_api_enabled && saver.crm_active => Some(id),
                Some(_) => {
                    return CsqlDecision::Refuse(SyncIssue::new(
                        SyncErrorCategory::CsqlNotPermitted,
                        format!(
                            "CSQL {} was saved by CS user {} ({}), whose CRM user has no API access; with sync user 'logged_in' \
                             only CSMs whose CRM user has API access can sync. Enable API access for that CRM user, or switch \
                             csql.sync_user to 'integration'. The CSQL is kept in the CS platform.",
                            record.id, saver.id, saver.name
                        ),
                    ));
                }
                None => {
                    return CsqlDecision::Refuse(SyncIssue::new(
                        SyncErrorCategory::CsqlNotPermitted,
                        format!(
                            "CSQL {} was saved by CS user {} ({}), who has no CRM user; with sync user 'logged_in' only CSMs \
                             with a CRM user with API access can sync. Tie the CS user to a CRM user, or switch csql.sync_user \
                             to 'integration'. The CSQL is kept in the CS platform.",
                            record.id, saver.id, saver.name
                        ),
                    ));
                }
            }
        }
    };
    CsqlDecision::Sync(CsqlWrite { act_as, owner, created_by: format!("{} (CS user {})", record.created_by.name, record.created_by.id) })
}

/// CSQL field → CRM lead field.
pub const LEAD_FIELDS: &[(&str, &str)] = &[
    ("FirstName", "FirstName"),
    ("LastName", "LastName"),
    ("Email", "Email"),
    ("Company", "Company"),
    ("Title", "Title"),
    ("Phone", "Phone"),
];

/// CSQL field → CRM opportunity field.
pub const OPPORTUNITY_FIELDS: &[(&str, &str)] =
    &[("Name", "Name"), ("Amount", "Amount"), ("Stage", "StageName"), ("CloseDate", "CloseDate")];

impl CsqlRecord {
    /// The CRM field values this CSQL writes (CRM API names).
    pub fn crm_values(&self) -> Vec<(String, serde_json::Value)> {
        let pairs = match self.record_type {
            CsqlRecordType::Lead => LEAD_FIELDS,
            CsqlRecordType::Opportunity => OPPORTUNITY_FIELDS,
        };
        pairs.iter().filter_map(|(cs, crm)| self.fields.get(*cs).map(|f| ((*crm).to_owned(), f.value.clone()))).collect()
    }

    /// When a user last changed any of its fields (the engine's own status
    /// write-backs are not changes).
    pub fn last_user_edit(&self, integration_user: &str) -> Option<Timestamp> {
        self.fields.values().filter(|f| f.by.as_deref() != Some(integration_user)).filter_map(|f| f.at).max()
    }

    /// crmsync's external id for the CRM record this CSQL becomes: a
    /// retried write finds the record the first attempt made.
    pub fn external_id(&self) -> String {
        format!("csql:{}:{}", self.record_type.as_str(), self.id)
    }
}

/// Why a change of the CSQL options was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsqlSwitchError {
    #[error("csql.target cannot change from '{from}' to '{to}': {}. Delete them first, then switch.", held_text(.held))]
    RecordsPresent { from: CsqlTarget, to: CsqlTarget, held: Vec<RecordsHeld> },
    #[error("switching csql.record_type from '{from}' to '{to}' changes configuration; confirm to go ahead:\n{summary}")]
    NeedsConfirmation { from: CsqlRecordType, to: CsqlRecordType, summary: String },
}

/// How the records of a CS object are deleted, for the error that asks for it.
pub fn how_to_delete(record_type: CsqlRecordType) -> &'static str {
    match record_type {
        CsqlRecordType::Lead => "an admin can bulk-delete CS lead records: crmsync sandbox cs delete-all lead --as <CS admin user id>",
        CsqlRecordType::Opportunity => {
            "CS opportunity records can only be deleted with the elevated support privilege: ask support \
             (crmsync sandbox cs delete-all opportunity --as <support user id>)"
        }
    }
}

/// A CS object that still holds records, with how to delete them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsHeld {
    pub object: &'static str,
    pub count: i64,
    pub how: &'static str,
}

fn held_text(held: &[RecordsHeld]) -> String {
    held.iter().map(|h| format!("the {} still holds {} record(s) ({})", h.object, h.count, h.how)).collect::<Vec<_>>().join("; ")
}

/// The guard on `csql.target` (R9): the other option is greyed out while
/// the underlying objects hold lead records *or* opportunity records,
/// whichever record type is in use now (a switch of record type leaves the
/// other object's records where they were). `counts` gives the live records
/// of each CS object.
pub fn check_target_switch(current: &CsqlSettings, to: CsqlTarget, counts: &[(CsqlRecordType, i64)]) -> Result<(), CsqlSwitchError> {
    let held: Vec<RecordsHeld> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| RecordsHeld { object: kind.cs_object(), count: *n, how: how_to_delete(*kind) })
        .collect();
    if current.target == to || held.is_empty() {
        return Ok(());
    }
    Err(CsqlSwitchError::RecordsPresent { from: current.target, to, held })
}

/// What changes when `csql.record_type` switches: printed before the switch
/// is confirmed.
pub fn record_type_switch_summary(from: CsqlRecordType, to: CsqlRecordType, renewal_center: bool) -> Vec<String> {
    let mut lines = vec![
        format!("new CSQLs are kept in the {} instead of the {}", to.cs_object(), from.cs_object()),
        format!("CSQLs sync to the CRM as {} instead of {}", to.plural(), from.plural()),
    ];
    match to {
        CsqlRecordType::Opportunity => {
            lines.push("the lead admin's stages become opportunity stages; table and detail views switch to the opportunity object".into());
            lines.push("email notification settings for opportunities apply".into());
            if renewal_center {
                lines.push(
                    "a renewal center is configured: its stages, table view and detail view are shared with the lead admin; \
                     a change made on either side shows on both"
                        .into(),
                );
            }
        }
        CsqlRecordType::Lead => {
            lines.push("the lead admin's stages become lead statuses; table and detail views switch to the lead object".into());
            lines.push("email notification settings for leads apply (the same settings as before, if any were set)".into());
        }
    }
    lines
}

/// The guard on `csql.record_type` (R9): `confirmed` must be given.
pub fn check_record_type_switch(
    current: &CsqlSettings,
    to: CsqlRecordType,
    renewal_center: bool,
    confirmed: bool,
) -> Result<Vec<String>, CsqlSwitchError> {
    let summary = record_type_switch_summary(current.record_type, to, renewal_center);
    if current.record_type == to || confirmed {
        return Ok(summary);
    }
    Err(CsqlSwitchError::NeedsConfirmation {
        from: current.record_type,
        to,
        summary: summary.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests;
