//! Account Engagement (Pardot) API v5 payloads, and the sandbox's own
//! extension for the MA's read-only mirrors.
//!
//! Every v5 call carries the Salesforce OAuth bearer token and the business
//! unit in [`BUSINESS_UNIT_HEADER`]. Errors are `{"code": n, "message": ...}`
//! with an HTTP status; the codes crmsync acts on are in [`codes`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod imports;

pub const BUSINESS_UNIT_HEADER: &str = "Pardot-Business-Unit-Id";
/// Prospects: list and create.
pub const PROSPECTS_PATH: &str = "/api/v5/objects/prospects";
/// Users: the MA user behind an assignment, and its Salesforce user.
pub const USERS_PATH: &str = "/api/v5/objects/users";
/// At most this many records per query page.
pub const MAX_PAGE: usize = 1000;
/// At most this many requests in flight per business unit.
pub const MAX_CONCURRENT_REQUESTS: usize = 5;

/// The prospect fields crmsync reads besides the mapped ones, by name.
pub mod prospect {
    pub const ID: &str = "id";
    pub const EMAIL: &str = "email";
    pub const LEAD_ID: &str = "salesforceLeadId";
    pub const CONTACT_ID: &str = "salesforceContactId";
    pub const ASSIGNED_USER: &str = "assignedUserId";
    pub const IS_DELETED: &str = "isDeleted";
    pub const CREATED_AT: &str = "createdAt";
    pub const UPDATED_AT: &str = "updatedAt";
    pub const UPDATED_BY: &str = "updatedById";
}

/// Prospect fields crmsync reads besides the mapped ones.
pub const PROSPECT_SYSTEM_FIELDS: &[&str] = &[
    prospect::ID,
    prospect::EMAIL,
    prospect::LEAD_ID,
    prospect::CONTACT_ID,
    prospect::ASSIGNED_USER,
    prospect::IS_DELETED,
    prospect::CREATED_AT,
    prospect::UPDATED_AT,
    prospect::UPDATED_BY,
];

/// The fencing token of the last crmsync write, a custom field. The sandbox
/// refuses an older token with [`codes::FENCED`]; a real business unit has
/// no validation rules, so there the per-identity lock is the only guard.
pub const FENCE_FIELD: &str = "crmsync_fence__c";

/// Error codes crmsync acts on.
pub mod codes {
    /// The prospect id does not exist.
    pub const INVALID_PROSPECT_ID: i64 = 3;
    /// The email is malformed (create or upsert).
    pub const INVALID_EMAIL: i64 = 4;
    /// A field value was refused (too long, wrong type, read-only).
    pub const INVALID_FIELD_VALUE: i64 = 25;
    /// Too many requests in flight for the business unit.
    pub const CONCURRENT_REQUEST_LIMIT: i64 = 66;
    /// The business unit's daily API calls are used up.
    pub const DAILY_API_LIMIT: i64 = 122;
    /// The `Pardot-Business-Unit-Id` header is missing or wrong.
    pub const INVALID_BUSINESS_UNIT: i64 = 181;
    /// The access token is missing, invalid or expired.
    pub const INVALID_TOKEN: i64 = 184;
    /// The requested operation is not valid (an import in a state that
    /// does not allow it).
    pub const INVALID_ACTION: i64 = 2;
    /// Required parameters are missing.
    pub const MISSING_PARAMETERS: i64 = 13;
    /// An id that names nothing (an import).
    pub const INVALID_ID: i64 = 16;
    /// crmsync's fence (sandbox): a newer writer has written this prospect.
    pub const FENCED: i64 = 10_001;
}

/// Custom field definitions (prospects' custom fields): v5 has no describe
/// of prospects, so the custom fields are listed here and the standard
/// ones are documented.
pub const CUSTOM_FIELDS_PATH: &str = "/api/v5/objects/custom-fields";

/// One custom field as `GET` [`CUSTOM_FIELDS_PATH`] returns it with
/// `fields=id,name,fieldId,type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomField {
    #[serde(default)]
    pub id: i64,
    /// The label shown to users (`Preferred Language`).
    #[serde(default)]
    pub name: String,
    /// The API name a prospect read or write uses (`Preferred_Language__c`).
    pub field_id: String,
    /// `Text`, `Number`, `Date`, `Dropdown`, `Checkbox`...
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A page of custom fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomFieldPage {
    pub values: Vec<CustomField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// An error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
}

/// A page of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryPage {
    pub values: Vec<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_url: Option<String>,
}

/// `POST /api/v5/objects/prospects/do/upsertLatestByEmail`: updates the most
/// recently updated prospect with this email, or creates one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpsertLatestByEmail {
    pub match_email: String,
    pub prospect: Map<String, Value>,
    /// The fields to return.
    pub fields: Vec<String>,
}

/// The sandbox's extension for the MA's read-only mirrors (prospect
/// accounts, opportunities, custom objects), which a real business unit's
/// own Salesforce connector maintains. Not part of Account Engagement.
pub mod mirrors {
    use super::*;

    /// `POST` a list of [`Write`]s; answered with one [`Outcome`] each, in order.
    pub const WRITE_PATH: &str = "/crmsync-sandbox/v1/mirrors";
    /// `GET {STATE_PATH}/{kind}/{crm id}`: the [`State`], or `null` when the
    /// MA holds no such mirror.
    pub const STATE_PATH: &str = "/crmsync-sandbox/v1/mirrors";
    pub const ACCOUNTS_OF_PATH: &str = "/crmsync-sandbox/v1/prospect-accounts-of";

    /// `prospect_account`, `opportunity` or `custom:<Name__c>`.
    pub type Kind = String;
    pub const PROSPECT_ACCOUNT: &str = "prospect_account";
    pub const OPPORTUNITY: &str = "opportunity";
    /// Followed by the custom object's API name.
    pub const CUSTOM_PREFIX: &str = "custom:";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Write {
        pub kind: Kind,
        pub crm_id: String,
        /// `None`: the mirror must not exist.
        pub present: Option<State>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub fence: Option<i64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct State {
        pub fields: Map<String, Value>,
        pub prospects: Vec<i64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "status", rename_all = "snake_case")]
    pub enum Outcome {
        Written { at: String },
        Fenced,
        Rejected { code: String, message: String },
        NotFound,
    }

    /// `POST {ACCOUNTS_OF_PATH}`: which CRM account each prospect's
    /// prospect account mirrors; answered with a list of [`AccountOf`]
    /// (prospects without a prospect account left out).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AccountsOf {
        pub prospect_ids: Vec<i64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AccountOf {
        pub prospect_id: i64,
        pub crm_account_id: String,
    }
}
