//! The fields of leads and contacts, from the org's sObject Describe
//! (`GET /services/data/{v}/sobjects/{Lead|Contact}/describe`): what an
//! admin may map (issue 28's field-mapping page lists them).
//!
//! Of a describe, only the data fields a mapping may name are kept, as the
//! sandbox connector keeps them: fields an API write can set
//! (`updateable`: not `Id`, stamps, formulas, `IsConverted`...), and not
//! the links (`id`, `reference`: owner, account) or crmsync's own fields
//! (external id, fence, the CSQL marker), which the engine writes itself.
//!
//! A describe costs one API call and changes when an admin edits the
//! org's schema, rarely: each is kept for [`TTL`] per connector, so a page
//! that lists the fields again and again costs a call every few minutes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crmsync_connector::{ConnectorError, FieldInfo};
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_domain::CrmObject;
use crmsync_wire::salesforce::{DescribeField, EXTERNAL_ID_FIELD, FENCE_FIELD, SObjectDescribe, describe_path};

use crate::fields::person_sobject;
use crate::http::Http;

/// How long a describe is reused.
pub(crate) const TTL: Duration = Duration::from_secs(5 * 60);

/// Custom fields crmsync installs and writes itself: never mapped.
const OWN_FIELDS: &[&str] = &[EXTERNAL_ID_FIELD, FENCE_FIELD, "CSQL_Created_By__c"];

/// A field's type as [`FieldInfo`] names it: Salesforce's many text types
/// are `text`, a number with no digits after the point an `integer`.
fn kind_of(f: &DescribeField) -> String {
    match f.kind.as_str() {
        "string" | "email" | "phone" | "url" | "textarea" | "picklist" | "multipicklist" | "combobox" | "encryptedstring" => "text",
        "boolean" => "boolean",
        "int" | "long" => "integer",
        "double" | "currency" | "percent" if f.scale == Some(0) => "integer",
        "double" | "currency" | "percent" => "number",
        "date" => "date",
        "datetime" => "datetime",
        other => other,
    }
    .to_owned()
}

/// The mappable fields of a describe, in its order.
pub(crate) fn mappable(describe: &SObjectDescribe) -> Vec<FieldInfo> {
    describe
        .fields
        .iter()
        .filter(|f| f.updateable && !matches!(f.kind.as_str(), "id" | "reference" | "address" | "location"))
        .filter(|f| !OWN_FIELDS.iter().any(|own| own.eq_ignore_ascii_case(&f.name)))
        .map(|f| FieldInfo { name: f.name.clone(), kind: kind_of(f), custom: f.custom })
        .collect()
}

/// Describes read lately, per object.
#[derive(Debug, Default)]
pub(crate) struct Describes {
    cache: Mutex<BTreeMap<CrmObject, (Instant, Vec<FieldInfo>)>>,
}

impl Describes {
    /// The mappable fields of a lead or contact: the cached describe if
    /// younger than [`TTL`], else one call.
    pub async fn person_fields(&self, http: &Http, object: CrmObject) -> Result<Vec<FieldInfo>, ConnectorError> {
        let sobject = person_sobject(object)?;
        if let Some((at, fields)) = self.cache.lock().expect("describe cache").get(&object)
            && at.elapsed() < TTL
        {
            return Ok(fields.clone());
        }
        // Metadata, not a record read: `other` in the call counts, which
        // the connection's allowance counts like any call.
        let call = Call::get(EndpointKind::Other, http.api().data_path(&describe_path(sobject)));
        let describe: SObjectDescribe = http.send(&call).await?.json()?;
        let fields = mappable(&describe);
        self.cache.lock().expect("describe cache").insert(object, (Instant::now(), fields.clone()));
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_describe_maps_to_the_fields_an_admin_may_map() {
        // Salesforce's shape, abridged from a real Lead describe.
        let describe: SObjectDescribe = serde_json::from_value(serde_json::json!({
            "name": "Lead", "label": "Lead", "custom": false, "queryable": true,
            "fields": [
                {"name": "Id", "label": "Lead ID", "type": "id", "custom": false, "updateable": false, "nillable": false, "length": 18},
                {"name": "LastName", "label": "Last Name", "type": "string", "custom": false, "updateable": true, "nillable": false, "length": 80},
                {"name": "Name", "label": "Full Name", "type": "string", "custom": false, "updateable": false, "nillable": false, "length": 121},
                {"name": "Email", "label": "Email", "type": "email", "custom": false, "updateable": true, "nillable": true, "length": 80},
                {"name": "Address", "label": "Address", "type": "address", "custom": false, "updateable": false, "nillable": true},
                {"name": "HasOptedOutOfEmail", "label": "Email Opt Out", "type": "boolean", "custom": false, "updateable": true, "nillable": false},
                {"name": "AnnualRevenue", "type": "currency", "custom": false, "updateable": true, "nillable": true, "scale": 0},
                {"name": "Rating__c", "type": "double", "custom": true, "updateable": true, "nillable": true, "scale": 2},
                {"name": "NumberOfEmployees", "type": "int", "custom": false, "updateable": true, "nillable": true},
                {"name": "OwnerId", "type": "reference", "custom": false, "updateable": true, "nillable": false, "length": 18},
                {"name": "IsConverted", "type": "boolean", "custom": false, "updateable": false, "nillable": false},
                {"name": "SystemModstamp", "type": "datetime", "custom": false, "updateable": false, "nillable": false},
                {"name": "Preferred_Language__c", "label": "Preferred Language", "type": "picklist", "custom": true, "updateable": true, "nillable": true},
                {"name": "crmsync_Id__c", "type": "string", "custom": true, "updateable": true, "nillable": true, "externalId": true},
                {"name": "CSQL_Created_By__c", "type": "string", "custom": true, "updateable": true, "nillable": true},
                {"name": "Last_Touch__c", "type": "date", "custom": true, "updateable": true, "nillable": true}
            ]
        }))
        .unwrap();
        let got: Vec<(String, String, bool)> = mappable(&describe).into_iter().map(|f| (f.name, f.kind, f.custom)).collect();
        let want = [
            ("LastName", "text", false),
            ("Email", "text", false),
            ("HasOptedOutOfEmail", "boolean", false),
            ("AnnualRevenue", "integer", false),
            ("Rating__c", "number", true),
            ("NumberOfEmployees", "integer", false),
            ("Preferred_Language__c", "text", true),
            ("Last_Touch__c", "date", true),
        ];
        assert_eq!(got, want.map(|(n, k, c)| (n.to_owned(), k.to_owned(), c)));
    }
}
