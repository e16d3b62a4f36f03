//! Salesforce's sObject Describe (`GET /services/data/{v}/sobjects/{type}/describe`)
//! for the objects the server serves, built from the sandbox's schema, so
//! that a client lists the fields of the sandbox org as it would a real
//! org's: the system fields every object has, the object's columns with
//! their lengths and whether a write may set them, and crmsync's own
//! custom fields (external id, fence) that an installation adds.
//!
//! Types follow Salesforce's names (`string`, `email`, `phone`, `url`,
//! `boolean`, `int`, `double`, `date`, `datetime`, `id`, `reference`), so a
//! client maps them exactly as it would a real org's.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use crmsync_sandbox::schema::{self, Column, Kind, ObjectDef};
use crmsync_wire::salesforce::{DescribeField, EXTERNAL_ID_FIELD, FENCE_FIELD, READ_ONLY_FIELDS, SObjectDescribe, codes};

use crate::errors::SfError;

/// The objects described: the ones the server queries by schema. (Custom
/// objects keep their fields in JSON without a schema; `User` has no
/// fields an admin maps.)
fn object(name: &str) -> Option<(&'static str, &'static ObjectDef)> {
    match name.to_ascii_lowercase().as_str() {
        "lead" => Some(("Lead", &schema::LEAD)),
        "contact" => Some(("Contact", &schema::CONTACT)),
        "account" => Some(("Account", &schema::ACCOUNT)),
        "opportunity" => Some(("Opportunity", &schema::OPPORTUNITY)),
        "opportunitycontactrole" => Some(("OpportunityContactRole", &schema::CONTACT_ROLE)),
        _ => None,
    }
}

/// A field's label as Salesforce shows one: the API name without its
/// namespace and `__c`, words split at capitals and underscores
/// (`Preferred_Language__c` → `Preferred Language`, `pi__score__c` → `Score`).
pub(crate) fn label_of(api: &str) -> String {
    let base = api.strip_suffix("__c").unwrap_or(api);
    let base = base.rsplit_once("__").map_or(base, |(_, rest)| rest);
    let mut out = String::new();
    let mut prev_lower = false;
    for ch in base.chars() {
        if ch == '_' {
            out.push(' ');
            prev_lower = false;
            continue;
        }
        if ch.is_ascii_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = ch.is_ascii_lowercase() || ch.is_ascii_digit();
        out.push(if out.is_empty() || out.ends_with(' ') { ch.to_ascii_uppercase() } else { ch });
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn field(name: &str, kind: &str, length: u64) -> DescribeField {
    DescribeField {
        name: name.to_owned(),
        label: label_of(name),
        kind: kind.to_owned(),
        custom: name.ends_with("__c"),
        createable: false,
        updateable: false,
        nillable: false,
        length,
        scale: None,
        external_id: false,
    }
}

/// The Salesforce type of a column of the sandbox's schema.
fn kind_of(c: &Column) -> &'static str {
    match c.kind {
        Kind::Text if c.max_len == Some(18) && c.api.ends_with("Id") => "reference",
        Kind::Text => match c.api {
            "Email" => "email",
            "Phone" => "phone",
            "Website" => "url",
            _ => "string",
        },
        Kind::Bool => "boolean",
        Kind::Int => "int",
        Kind::Decimal => "double",
        Kind::Date => "date",
    }
}

/// The describe of `def`, served as `name`.
pub(crate) fn describe_of(name: &str, def: &ObjectDef) -> SObjectDescribe {
    let mut fields = vec![field("Id", "id", 18)];
    for c in def.columns {
        let mut f = field(c.api, kind_of(c), c.max_len.unwrap_or(0) as u64);
        f.updateable = !READ_ONLY_FIELDS.contains(&c.api);
        f.createable = f.updateable;
        // Checkboxes are never null; required fields cannot be blanked.
        f.nillable = c.kind != Kind::Bool && !def.required.contains(&c.api);
        if c.kind == Kind::Decimal {
            f.scale = Some(2);
        }
        fields.push(f);
    }
    for (api, kind) in [
        ("CreatedDate", "datetime"),
        ("CreatedById", "reference"),
        ("LastModifiedDate", "datetime"),
        ("LastModifiedById", "reference"),
        ("SystemModstamp", "datetime"),
    ] {
        fields.push(field(api, kind, if kind == "reference" { 18 } else { 0 }));
    }
    // crmsync's own custom fields, as the server reads and writes them.
    if matches!(name, "Lead" | "Contact" | "Opportunity") {
        let mut f = field(EXTERNAL_ID_FIELD, "string", 255);
        (f.createable, f.updateable, f.nillable, f.external_id) = (true, true, true, true);
        fields.push(f);
    }
    let mut fence = field(FENCE_FIELD, "double", 0);
    (fence.createable, fence.updateable, fence.nillable, fence.scale) = (true, true, true, Some(0));
    fields.push(fence);
    SObjectDescribe { name: name.to_owned(), label: label_of(name), fields }
}

/// `GET /services/data/{v}/sobjects/{type}/describe`.
pub async fn describe(Path((_version, sobject)): Path<(String, String)>) -> Result<Json<SObjectDescribe>, SfError> {
    let (name, def) =
        object(&sobject).ok_or_else(|| SfError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "The requested resource does not exist"))?;
    Ok(Json(describe_of(name, def)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_salesforce_shows_them() {
        assert_eq!(label_of("FirstName"), "First Name");
        assert_eq!(label_of("Preferred_Language__c"), "Preferred Language");
        assert_eq!(label_of("pi__score__c"), "Score");
        assert_eq!(label_of("HasOptedOutOfEmail"), "Has Opted Out Of Email");
        assert_eq!(label_of("Id"), "Id");
    }

    #[test]
    fn a_lead_is_described_with_its_columns_system_fields_and_crmsyncs_own() {
        let d = describe_of("Lead", &schema::LEAD);
        let by = |n: &str| d.fields.iter().find(|f| f.name == n).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(d.fields[0].name, "Id");
        assert!(!by("Id").updateable);
        let email = by("Email");
        assert_eq!((email.kind.as_str(), email.length, email.updateable, email.nillable), ("email", 80, true, true));
        let last = by("LastName");
        assert!(!last.nillable, "required");
        assert_eq!(by("OwnerId").kind, "reference");
        assert!(!by("IsConverted").updateable && !by("ConvertedContactId").updateable);
        assert!(by("Preferred_Language__c").custom && by("Preferred_Language__c").updateable);
        assert!(by(EXTERNAL_ID_FIELD).external_id);
        assert_eq!(by("pi__score__c").kind, "int");
        assert_eq!(by("SystemModstamp").kind, "datetime");
        assert!(object("Contact").is_some() && object("lead").is_some() && object("Widget__c").is_none());
    }
}
