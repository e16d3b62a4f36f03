//! The prospect fields a business unit has: what an admin may map (issue
//! 28's field-mapping page lists them).
//!
//! API v5 has no describe of prospects. Its standard prospect fields are
//! documented, so they are a list here ([`STANDARD`]: those the engine
//! syncs, the sandbox's standard prospect fields); the custom ones are
//! the business unit's own and come from
//! `GET /api/v5/objects/custom-fields?fields=id,name,fieldId,type`, paged
//! by `nextPageToken`, each named by its `fieldId` (the name prospect reads
//! and writes use). The list changes when an admin adds a field, rarely:
//! it is kept for [`TTL`] per connector.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorError, FieldInfo};
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_wire::pardot::{CUSTOM_FIELDS_PATH, CustomField, CustomFieldPage, FENCE_FIELD, MAX_PAGE};

use crate::http::Http;

/// How long the list is reused.
pub(crate) const TTL: Duration = Duration::from_secs(5 * 60);

/// The standard prospect data fields (no ids, CRM links, assignment,
/// stamps) with their types, as Account Engagement documents them.
pub(crate) const STANDARD: &[(&str, &str)] = &[
    ("email", "text"),
    ("firstName", "text"),
    ("lastName", "text"),
    ("company", "text"),
    ("jobTitle", "text"),
    ("phone", "text"),
    ("city", "text"),
    ("country", "text"),
    ("optedOut", "boolean"),
    ("score", "integer"),
    ("grade", "text"),
];

/// A custom field's type as [`FieldInfo`] names it. A v5 `Checkbox` is a
/// set of options (like `Multi-Select`), not a flag: text.
fn kind_of(v5_type: &str) -> &'static str {
    match v5_type {
        "Number" => "number",
        "Date" => "date",
        _ => "text",
    }
}

/// The standard fields, then the custom ones (crmsync's fence left out:
/// the engine writes it itself).
pub(crate) fn prospect_fields(custom: &[CustomField]) -> Vec<FieldInfo> {
    let standard = STANDARD.iter().map(|(name, kind)| FieldInfo { name: (*name).to_owned(), kind: (*kind).to_owned(), custom: false });
    let custom = custom.iter().filter(|f| !f.field_id.is_empty() && !f.field_id.eq_ignore_ascii_case(FENCE_FIELD)).map(|f| FieldInfo {
        name: f.field_id.clone(),
        kind: kind_of(&f.kind).to_owned(),
        custom: true,
    });
    standard.chain(custom).collect()
}

/// Every custom field definition, following `nextPageToken`.
async fn custom_fields(http: &Http) -> Result<Vec<CustomField>, ConnectorError> {
    let mut out = Vec::new();
    let mut call =
        Call::get(EndpointKind::Query, CUSTOM_FIELDS_PATH).query("fields", "id,name,fieldId,type").query("limit", MAX_PAGE.to_string());
    loop {
        let page: CustomFieldPage = http.send(&call).await?.json()?;
        out.extend(page.values);
        match page.next_page_token {
            // v5 takes the token alone.
            Some(t) => call = Call::get(EndpointKind::Query, CUSTOM_FIELDS_PATH).query("nextPageToken", t),
            None => return Ok(out),
        }
    }
}

/// The prospect fields read lately.
#[derive(Debug, Default)]
pub(crate) struct Schema {
    cache: Mutex<Option<(Instant, Vec<FieldInfo>)>>,
}

impl Schema {
    /// The prospect fields: the cached list if younger than [`TTL`], else
    /// the custom fields listed again.
    pub async fn prospect_fields(&self, http: &Http) -> Result<Vec<FieldInfo>, ConnectorError> {
        if let Some((at, fields)) = &*self.cache.lock().expect("schema cache")
            && at.elapsed() < TTL
        {
            return Ok(fields.clone());
        }
        let fields = prospect_fields(&custom_fields(http).await?);
        *self.cache.lock().expect("schema cache") = Some((Instant::now(), fields.clone()));
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_fields_follow_the_standard_ones_by_their_field_ids() {
        let page: CustomFieldPage = serde_json::from_value(serde_json::json!({
            "values": [
                {"id": 1, "name": "Preferred Language", "fieldId": "Preferred_Language__c", "type": "Text"},
                {"id": 2, "name": "Seats", "fieldId": "Seats__c", "type": "Number"},
                {"id": 3, "name": "Renewal", "fieldId": "Renewal__c", "type": "Date"},
                {"id": 4, "name": "Interests", "fieldId": "Interests__c", "type": "Checkbox"},
                {"id": 5, "name": "crmsync fence", "fieldId": "crmsync_fence__c", "type": "Number"}
            ],
            "nextPageToken": "abc"
        }))
        .unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("abc"));
        let fields = prospect_fields(&page.values);
        assert_eq!(fields.len(), STANDARD.len() + 4);
        assert_eq!(fields[0], FieldInfo { name: "email".into(), kind: "text".into(), custom: false });
        let custom: Vec<(&str, &str)> = fields.iter().filter(|f| f.custom).map(|f| (f.name.as_str(), f.kind.as_str())).collect();
        assert_eq!(custom, [("Preferred_Language__c", "text"), ("Seats__c", "number"), ("Renewal__c", "date"), ("Interests__c", "text")]);
        assert!(fields.iter().filter(|f| !f.custom).all(|f| !f.name.ends_with("__c")));
    }
}
