//! The sandbox objects: which table holds each, and how API field names map to
//! its columns, with the field lengths and required fields the real APIs
//! enforce (Salesforce's `LastName` is 80 characters, a lead needs a
//! `Company`...).

use serde_json::Value;

/// The type of a column, for turning command-line text into values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Int,
    Decimal,
    Date,
}

/// One field of an object.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The name the API uses (and the field mapping refers to).
    pub api: &'static str,
    pub column: &'static str,
    pub kind: Kind,
    pub max_len: Option<usize>,
}

const fn text(api: &'static str, column: &'static str, max: usize) -> Column {
    Column { api, column, kind: Kind::Text, max_len: Some(max) }
}
const fn typed(api: &'static str, column: &'static str, kind: Kind) -> Column {
    Column { api, column, kind, max_len: None }
}

/// An object of a sandbox system.
#[derive(Debug)]
pub struct ObjectDef {
    /// Name on the command line and in errors.
    pub name: &'static str,
    pub table: &'static str,
    /// Whether the id is a bigint (MA) or a Salesforce-style text id (CRM).
    pub numeric_id: bool,
    /// The writable fields.
    pub columns: &'static [Column],
    /// API names of fields a create must set.
    pub required: &'static [&'static str],
    /// Whether users of the system may create and edit records by hand. The
    /// MA's opportunities (and other mirrors) are written by the connector only.
    pub user_writable: bool,
}

impl ObjectDef {
    pub fn by_name(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.api.eq_ignore_ascii_case(name) || c.column.eq_ignore_ascii_case(name))
    }

    pub fn by_api(&self, api: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.api == api)
    }

    pub fn by_column(&self, column: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.column == column)
    }

    /// Comma-separated column list, for SQL.
    pub fn column_list(&self, prefix: &str) -> String {
        self.columns.iter().map(|c| format!("{prefix}{}", c.column)).collect::<Vec<_>>().join(", ")
    }
}

pub static PROSPECT: ObjectDef = ObjectDef {
    name: "prospect",
    table: "ma.prospects",
    numeric_id: true,
    columns: &[
        text("email", "email", 255),
        text("firstName", "first_name", 40),
        text("lastName", "last_name", 80),
        text("company", "company", 255),
        text("jobTitle", "job_title", 128),
        text("phone", "phone", 40),
        text("city", "city", 40),
        text("country", "country", 255),
        typed("optedOut", "opted_out", Kind::Bool),
        typed("score", "score", Kind::Int),
        text("grade", "grade", 2),
        text("crmLeadFid", "crm_lead_fid", 18),
        text("crmContactFid", "crm_contact_fid", 18),
        typed("assignedUserId", "assigned_user_id", Kind::Int),
        typed("isDeleted", "is_deleted", Kind::Bool),
        text("Preferred_Language__c", "preferred_language", 40),
    ],
    required: &["email"],
    user_writable: true,
};

pub static LEAD: ObjectDef = ObjectDef {
    name: "lead",
    table: "crm.leads",
    numeric_id: false,
    columns: &[
        text("FirstName", "first_name", 40),
        text("LastName", "last_name", 80),
        text("Email", "email", 80),
        text("Company", "company", 255),
        text("Title", "title", 128),
        text("Phone", "phone", 40),
        text("City", "city", 40),
        text("Country", "country", 80),
        typed("HasOptedOutOfEmail", "has_opted_out_of_email", Kind::Bool),
        typed("pi__score__c", "pi_score", Kind::Int),
        text("pi__grade__c", "pi_grade", 2),
        text("Status", "status", 40),
        text("OwnerId", "owner_id", 18),
        text("CSQL_Created_By__c", "csql_created_by", 255),
        typed("IsConverted", "is_converted", Kind::Bool),
        text("ConvertedContactId", "converted_contact_id", 18),
        typed("IsDeleted", "is_deleted", Kind::Bool),
        text("Preferred_Language__c", "preferred_language", 40),
    ],
    required: &["LastName", "Company"],
    user_writable: true,
};

pub static CONTACT: ObjectDef = ObjectDef {
    name: "contact",
    table: "crm.contacts",
    numeric_id: false,
    columns: &[
        text("FirstName", "first_name", 40),
        text("LastName", "last_name", 80),
        text("Email", "email", 80),
        text("Title", "title", 128),
        text("Phone", "phone", 40),
        text("MailingCity", "mailing_city", 40),
        text("MailingCountry", "mailing_country", 80),
        typed("HasOptedOutOfEmail", "has_opted_out_of_email", Kind::Bool),
        typed("pi__score__c", "pi_score", Kind::Int),
        text("pi__grade__c", "pi_grade", 2),
        text("AccountId", "account_id", 18),
        text("OwnerId", "owner_id", 18),
        typed("IsDeleted", "is_deleted", Kind::Bool),
        text("Preferred_Language__c", "preferred_language", 40),
    ],
    required: &["LastName"],
    user_writable: true,
};

pub static ACCOUNT: ObjectDef = ObjectDef {
    name: "account",
    table: "crm.accounts",
    numeric_id: false,
    columns: &[
        text("Name", "name", 255),
        text("Industry", "industry", 40),
        text("Website", "website", 255),
        text("BillingCity", "billing_city", 40),
        text("BillingCountry", "billing_country", 80),
        text("OwnerId", "owner_id", 18),
        typed("IsDeleted", "is_deleted", Kind::Bool),
    ],
    required: &["Name"],
    user_writable: true,
};

pub static OPPORTUNITY: ObjectDef = ObjectDef {
    name: "opportunity",
    table: "crm.opportunities",
    numeric_id: false,
    columns: &[
        text("Name", "name", 120),
        text("AccountId", "account_id", 18),
        text("StageName", "stage_name", 255),
        typed("Amount", "amount", Kind::Decimal),
        typed("CloseDate", "close_date", Kind::Date),
        typed("IsClosed", "is_closed", Kind::Bool),
        typed("IsWon", "is_won", Kind::Bool),
        text("OwnerId", "owner_id", 18),
        text("CSQL_Created_By__c", "csql_created_by", 255),
        typed("IsDeleted", "is_deleted", Kind::Bool),
    ],
    required: &["Name", "StageName", "CloseDate"],
    user_writable: true,
};

pub static CONTACT_ROLE: ObjectDef = ObjectDef {
    name: "contact-role",
    table: "crm.opportunity_contact_roles",
    numeric_id: false,
    columns: &[
        text("OpportunityId", "opportunity_id", 18),
        text("ContactId", "contact_id", 18),
        text("Role", "role", 40),
        typed("IsPrimary", "is_primary", Kind::Bool),
        typed("IsDeleted", "is_deleted", Kind::Bool),
    ],
    required: &["OpportunityId", "ContactId"],
    user_writable: true,
};

/// The MA's mirror of a CRM account (R4): MA users may edit it; the next CRM
/// change to the account overwrites their edit.
pub static PROSPECT_ACCOUNT: ObjectDef = ObjectDef {
    name: "prospect-account",
    table: "ma.prospect_accounts",
    numeric_id: true,
    columns: &[
        text("name", "name", 255),
        text("industry", "industry", 40),
        text("website", "website", 255),
        text("city", "city", 40),
        text("country", "country", 80),
    ],
    required: &["name"],
    user_writable: true,
};

/// The MA's mirror of a CRM opportunity (R5): read-only in the MA.
pub static MA_OPPORTUNITY: ObjectDef = ObjectDef {
    name: "ma-opportunity",
    table: "ma.opportunities",
    numeric_id: true,
    columns: &[
        text("name", "name", 120),
        text("stage", "stage", 255),
        typed("amount", "amount", Kind::Decimal),
        typed("closeDate", "close_date", Kind::Date),
        typed("isClosed", "is_closed", Kind::Bool),
        typed("isWon", "is_won", Kind::Bool),
    ],
    required: &[],
    user_writable: false,
};

/// CRM custom object records, every type in one table with its fields in
/// JSON; the type is chosen per call (`custom:Subscription__c` on the command line).
pub static CUSTOM: ObjectDef = ObjectDef {
    name: "custom",
    table: "crm.custom_records",
    numeric_id: false,
    columns: &[typed("IsDeleted", "is_deleted", Kind::Bool)],
    required: &[],
    user_writable: true,
};

/// CSQLs kept in the CS lead object (R9).
pub static CSQL_LEAD: ObjectDef = ObjectDef {
    name: "csql-lead",
    table: "cs.lead_records",
    numeric_id: true,
    columns: &[
        text("FirstName", "first_name", 40),
        text("LastName", "last_name", 80),
        text("Email", "email", 80),
        text("Company", "company", 255),
        text("Title", "title", 128),
        text("Phone", "phone", 40),
        text("Status", "status", 40),
        // Not `OwnerId`: a CSQL's owner is a CS user, and a change of owner
        // is an edit the sync must see.
        typed("Owner", "owner_id", Kind::Int),
        typed("IsDeleted", "is_deleted", Kind::Bool),
    ],
    required: &["LastName", "Company"],
    user_writable: true,
};

/// CSQLs kept in the CS opportunity object (R9).
pub static CSQL_OPPORTUNITY: ObjectDef = ObjectDef {
    name: "csql-opportunity",
    table: "cs.opportunity_records",
    numeric_id: true,
    columns: &[
        text("Name", "name", 120),
        text("Company", "company", 255),
        typed("Amount", "amount", Kind::Decimal),
        text("Stage", "stage", 255),
        typed("CloseDate", "close_date", Kind::Date),
        typed("Owner", "owner_id", Kind::Int),
        typed("IsDeleted", "is_deleted", Kind::Bool),
    ],
    required: &["Name", "CloseDate"],
    user_writable: true,
};

impl Kind {
    /// The type as a schema listing names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Bool => "boolean",
            Kind::Int => "integer",
            Kind::Decimal => "number",
            Kind::Date => "date",
        }
    }
}

/// The data fields of a person object (prospect, lead, contact), as the
/// sandbox's schema describes them: every column but the system ones (ids,
/// links, owner, lifecycle flags, what the engine itself writes), which
/// no mapping may name.
pub fn data_fields(def: &ObjectDef) -> Vec<crmsync_connector::FieldInfo> {
    def.columns
        .iter()
        .filter(|c| !crate::store::is_attribute(c.api) && !matches!(c.api, "CSQL_Created_By__c" | "AccountId"))
        .map(|c| crmsync_connector::FieldInfo { name: c.api.to_owned(), kind: c.kind.as_str().to_owned(), custom: c.api.ends_with("__c") })
        .collect()
}

/// Every object, for look-up by name.
pub static OBJECTS: [&ObjectDef; 8] =
    [&PROSPECT, &LEAD, &CONTACT, &ACCOUNT, &OPPORTUNITY, &CONTACT_ROLE, &PROSPECT_ACCOUNT, &MA_OPPORTUNITY];

pub fn object(name: &str) -> Option<&'static ObjectDef> {
    OBJECTS.iter().copied().find(|o| o.name == name)
}

/// Turns command-line text into a value of the column's type; the empty
/// string is a blank (null).
pub fn parse_value(col: &Column, raw: &str) -> Result<Value, String> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    let bad = |what: &str| format!("{} needs {what}, got {raw:?}", col.api);
    Ok(match col.kind {
        Kind::Text | Kind::Date => Value::String(raw.to_owned()),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err(bad("true or false")),
        },
        Kind::Int => Value::from(raw.parse::<i64>().map_err(|_| bad("a whole number"))?),
        Kind::Decimal => serde_json::from_str::<serde_json::Number>(raw).map(Value::Number).map_err(|_| bad("a number"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_by_api_or_column_name() {
        assert_eq!(LEAD.by_name("FirstName").unwrap().column, "first_name");
        assert_eq!(LEAD.by_name("first_name").unwrap().api, "FirstName");
        assert_eq!(PROSPECT.by_name("jobtitle").unwrap().column, "job_title");
        assert!(object("lead").is_some() && object("nope").is_none());
    }

    #[test]
    fn command_line_values_are_typed() {
        let b = PROSPECT.by_api("optedOut").unwrap();
        assert_eq!(parse_value(b, "yes").unwrap(), Value::Bool(true));
        assert!(parse_value(b, "maybe").is_err());
        let n = PROSPECT.by_api("score").unwrap();
        assert_eq!(parse_value(n, "42").unwrap(), Value::from(42));
        assert_eq!(parse_value(n, "").unwrap(), Value::Null);
    }
}
