//! Salesforce REST API payloads: OAuth 2.0 tokens, query results, sObject
//! Collections, Bulk API 2.0 ingest jobs, error bodies and the API-usage
//! header, as the Salesforce documentation gives them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The REST API version crmsync speaks.
pub const API_VERSION: &str = "v60.0";

/// Every REST response carries the org's API usage: `api-usage=25/15000`.
pub const LIMIT_INFO_HEADER: &str = "Sforce-Limit-Info";
/// Asks a query for smaller or larger batches: `batchSize=200` (200 to 2,000).
pub const QUERY_OPTIONS_HEADER: &str = "Sforce-Query-Options";
/// Names the client making a call: `client=<id>` (REST and Bulk API 2.0).
/// The org writes it into the `changeOrigin` of the change events the
/// call's writes cause: `com/salesforce/api/rest/60.0;client=<id>`.
pub const CALL_OPTIONS_HEADER: &str = "Sforce-Call-Options";
/// At most this many records per sObject Collections call.
pub const MAX_COLLECTION_RECORDS: usize = 200;

/// crmsync's external id field on leads, contacts and opportunities it
/// creates: an upsert by it makes a retried create find the first attempt's
/// record.
pub const EXTERNAL_ID_FIELD: &str = "crmsync_Id__c";
/// The fencing token of the last crmsync write. A validation rule in the org
/// (`crmsync_Fence__c < PRIORVALUE(crmsync_Fence__c)`) refuses an older
/// token with [`FENCE_MESSAGE`]: a writer that lost its lock cannot
/// overwrite a newer write.
pub const FENCE_FIELD: &str = "crmsync_Fence__c";
/// The validation rule's message, which tells a fenced write from others.
pub const FENCE_MESSAGE: &str = "crmsync fence: a newer writer has written this record";

/// Error codes crmsync tells apart.
pub mod codes {
    pub const INVALID_SESSION_ID: &str = "INVALID_SESSION_ID";
    pub const REQUEST_LIMIT_EXCEEDED: &str = "REQUEST_LIMIT_EXCEEDED";
    pub const EXCEEDED_ID_LIMIT: &str = "EXCEEDED_ID_LIMIT";
    pub const MALFORMED_QUERY: &str = "MALFORMED_QUERY";
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    pub const INVALID_TYPE: &str = "INVALID_TYPE";
    pub const INVALID_QUERY_LOCATOR: &str = "INVALID_QUERY_LOCATOR";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const ENTITY_IS_DELETED: &str = "ENTITY_IS_DELETED";
    pub const FIELD_CUSTOM_VALIDATION_EXCEPTION: &str = "FIELD_CUSTOM_VALIDATION_EXCEPTION";
    pub const INVALID_CROSS_REFERENCE_KEY: &str = "INVALID_CROSS_REFERENCE_KEY";
    pub const API_DISABLED_FOR_ORG: &str = "API_DISABLED_FOR_ORG";
    pub const JSON_PARSER_ERROR: &str = "JSON_PARSER_ERROR";
    pub const INVALID_FIELD_FOR_INSERT_UPDATE: &str = "INVALID_FIELD_FOR_INSERT_UPDATE";
}

/// Fields Salesforce computes or keeps itself: no create or update through
/// the API sets them, and a write naming one is refused whole with
/// [`codes::INVALID_FIELD_FOR_INSERT_UPDATE`]. Conversion and deletion
/// have operations of their own; `IsClosed` and `IsWon` follow an
/// opportunity's stage.
pub const READ_ONLY_FIELDS: &[&str] = &[
    "IsDeleted",
    "IsConverted",
    "ConvertedContactId",
    "ConvertedAccountId",
    "ConvertedOpportunityId",
    "ConvertedDate",
    "MasterRecordId",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
    "LastActivityDate",
    "IsClosed",
    "IsWon",
];

/// A successful token response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub instance_url: String,
    /// `https://login.salesforce.com/id/<org id>/<user id>`: the user the
    /// token acts as.
    pub id: String,
    pub token_type: String,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl TokenResponse {
    /// The user id at the end of `id`.
    pub fn user_id(&self) -> Option<&str> {
        self.id.rsplit('/').next().filter(|s| !s.is_empty())
    }

    /// The org id before the user id in `id` (the Pub/Sub API's `tenantid`).
    pub fn org_id(&self) -> Option<&str> {
        self.id.rsplit('/').nth(1).filter(|s| !s.is_empty())
    }
}

/// An OAuth error (`invalid_grant`, `invalid_client`...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

/// The JWT bearer flow's grant type.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The claims of a JWT bearer assertion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JwtClaims {
    /// The connected app's consumer key.
    pub iss: String,
    /// The username the token is for.
    pub sub: String,
    /// The login URL (`https://login.salesforce.com`).
    pub aud: String,
    /// Expiry, seconds since the epoch (at most a few minutes ahead).
    pub exp: i64,
}

/// One error of a REST call; bodies are lists of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub message: String,
    pub error_code: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

impl ApiError {
    /// Reads an error body as the list it should be; a body that is not (a
    /// proxy's HTML page, a single object) becomes one error, a page's first
    /// characters as the message and `HTTP_{status}` as the code.
    pub fn list_of(status: u16, body: &[u8]) -> Vec<ApiError> {
        if let Ok(errors) = serde_json::from_slice::<Vec<ApiError>>(body)
            && !errors.is_empty()
        {
            return errors;
        }
        if let Ok(one) = serde_json::from_slice::<ApiError>(body) {
            return vec![one];
        }
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        vec![ApiError { message: text, error_code: format!("HTTP_{status}"), fields: vec![] }]
    }

    /// `CODE: message; CODE: message`, for error texts.
    pub fn summary(errors: &[ApiError]) -> String {
        errors.iter().map(|e| format!("{}: {}", e.error_code, e.message)).collect::<Vec<_>>().join("; ")
    }
}

/// A page of query results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    pub total_size: u64,
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_records_url: Option<String>,
    pub records: Vec<Map<String, Value>>,
}

/// A record's `attributes`: its type (and URL, in responses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    #[serde(rename = "type")]
    pub sobject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// An sObject Collections create, update or upsert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionRequest {
    /// crmsync always sends `false`: one record's failure must not undo the rest.
    pub all_or_none: bool,
    /// Each with `attributes.type` and its fields (and `Id` for updates).
    pub records: Vec<Map<String, Value>>,
}

/// `GET /services/data/{v}/sobjects/{type}/describe`: an object's schema,
/// the parts crmsync reads of it (Salesforce sends dozens more keys per
/// field; they are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SObjectDescribe {
    pub name: String,
    #[serde(default)]
    pub label: String,
    pub fields: Vec<DescribeField>,
}

/// One field of a describe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeField {
    pub name: String,
    #[serde(default)]
    pub label: String,
    /// `string`, `email`, `boolean`, `int`, `double`, `reference`, `id`...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub custom: bool,
    #[serde(default)]
    pub createable: bool,
    #[serde(default)]
    pub updateable: bool,
    #[serde(default)]
    pub nillable: bool,
    /// Characters, for text fields; 0 for the others.
    #[serde(default)]
    pub length: u64,
    /// Digits after the point, for numbers (`double` with scale 0 holds
    /// whole numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    #[serde(default)]
    pub external_id: bool,
}

/// The describe path of `sobject` under `/services/data/{v}/`.
pub fn describe_path(sobject: &str) -> String {
    format!("sobjects/{sobject}/describe")
}

/// One record's error inside a collection result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveError {
    pub status_code: String,
    pub message: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// One record's result of a collection call, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaveResult {
    #[serde(default)]
    pub id: Option<String>,
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<SaveError>,
    /// Upserts only: whether the record was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

/// `Sforce-Limit-Info`: calls used in the last 24 hours, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUsage {
    pub used: u64,
    pub max: u64,
}

impl ApiUsage {
    pub fn parse(header: &str) -> Option<ApiUsage> {
        let usage = header.split(',').map(str::trim).find_map(|p| p.strip_prefix("api-usage="))?;
        let (used, max) = usage.split_once('/')?;
        Some(ApiUsage { used: used.trim().parse().ok()?, max: max.trim().parse().ok()? })
    }

    pub fn header(&self) -> String {
        format!("api-usage={}/{}", self.used, self.max)
    }

    pub fn share(&self) -> f64 {
        self.used as f64 / self.max.max(1) as f64
    }
}

/// Bulk API 2.0: what an ingest job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkOperation {
    Insert,
    Update,
    Upsert,
}

/// Bulk API 2.0: a job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

/// Bulk API 2.0: `POST /jobs/ingest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateJob {
    pub object: String,
    pub operation: BulkOperation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id_field_name: Option<String>,
    /// Always `CSV` (Salesforce's default when left out).
    #[serde(default = "csv_content")]
    pub content_type: String,
    /// `LF` (the default when left out).
    #[serde(default = "lf_ending")]
    pub line_ending: String,
}

fn csv_content() -> String {
    "CSV".to_owned()
}

fn lf_ending() -> String {
    "LF".to_owned()
}

/// Bulk API 2.0: a job, as returned by create, update and status calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub id: String,
    pub object: String,
    pub operation: BulkOperation,
    pub state: JobState,
    #[serde(default)]
    pub number_records_processed: u64,
    #[serde(default)]
    pub number_records_failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Bulk API 2.0: `GET /jobs/ingest`, every ingest job of the org (one page:
/// the sandbox keeps few).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllJobs {
    pub done: bool,
    pub records: Vec<JobInfo>,
    #[serde(default)]
    pub next_records_url: Option<String>,
}

/// Bulk API 2.0: `PATCH /jobs/ingest/{id}` (`UploadComplete` or `Aborted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateJob {
    pub state: JobState,
}

/// Bulk API 2.0 result columns, before the record's own columns.
pub const BULK_ID_COLUMN: &str = "sf__Id";
pub const BULK_CREATED_COLUMN: &str = "sf__Created";
pub const BULK_ERROR_COLUMN: &str = "sf__Error";
/// A Bulk CSV cell that sets a field to null (an empty cell leaves it alone).
pub const BULK_NULL: &str = "#N/A";

/// Writes records as a Bulk API CSV: a header of `columns`, then one line per
/// record (a missing field is an empty cell, a JSON null is `#N/A`).
pub fn bulk_csv(columns: &[String], records: &[Map<String, Value>]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(columns)?;
    for r in records {
        w.write_record(columns.iter().map(|c| match r.get(c) {
            None => String::new(),
            Some(Value::Null) => BULK_NULL.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }))?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// Reads a Bulk API CSV into (header, rows of cells).
pub fn read_csv(data: &[u8]) -> Result<(Vec<String>, Vec<Vec<String>>), csv::Error> {
    let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(data);
    let header: Vec<String> = r.headers()?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        rows.push(rec?.iter().map(str::to_owned).collect());
    }
    Ok((header, rows))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_limit_header_parses_and_prints() {
        let u = ApiUsage::parse("api-usage=25/15000").unwrap();
        assert_eq!(u, ApiUsage { used: 25, max: 15000 });
        assert_eq!(ApiUsage::parse(&u.header()), Some(u));
        assert_eq!(ApiUsage::parse("per-app-api-usage=1/2, api-usage=3/4"), Some(ApiUsage { used: 3, max: 4 }));
        assert_eq!(ApiUsage::parse("nonsense"), None);
    }

    #[test]
    fn error_bodies_read_as_lists_objects_or_text() {
        let listed = ApiError::list_of(400, br#"[{"message":"bad","errorCode":"MALFORMED_QUERY"}]"#);
        assert_eq!(ApiError::summary(&listed), "MALFORMED_QUERY: bad");
        let one = ApiError::list_of(401, br#"{"message":"expired","errorCode":"INVALID_SESSION_ID"}"#);
        assert_eq!(one[0].error_code, "INVALID_SESSION_ID");
        let page = ApiError::list_of(502, b"<html>Bad Gateway</html>");
        assert_eq!(ApiError::summary(&page), "HTTP_502: <html>Bad Gateway</html>");
        assert_eq!(ApiError::list_of(500, b"[]")[0].error_code, "HTTP_500", "an empty list says nothing");
    }

    #[test]
    fn collection_results_read_as_documented() {
        let body = json!([
            {"id": "00Q5g00000AbCdEEAA", "success": true, "errors": [], "created": true},
            {"id": null, "success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Company]", "fields": ["Company"]}]}
        ]);
        let results: Vec<SaveResult> = serde_json::from_value(body).unwrap();
        assert_eq!(results[0].created, Some(true));
        assert_eq!(results[1].errors[0].status_code, "REQUIRED_FIELD_MISSING");
    }

    #[test]
    fn bulk_csv_writes_nulls_and_quotes() {
        let columns = vec!["crmsync_Id__c".to_owned(), "LastName".to_owned(), "Title".to_owned()];
        let rows = vec![json!({"crmsync_Id__c": "a", "LastName": "O'Brien, Jr.", "Title": null}).as_object().unwrap().clone()];
        let csv = String::from_utf8(bulk_csv(&columns, &rows).unwrap()).unwrap();
        assert_eq!(csv, "crmsync_Id__c,LastName,Title\na,\"O'Brien, Jr.\",#N/A\n");
        let (header, cells) = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(header, columns);
        assert_eq!(cells, vec![vec!["a".to_owned(), "O'Brien, Jr.".to_owned(), "#N/A".to_owned()]]);
    }

    #[test]
    fn the_token_names_its_user_and_org() {
        let t = TokenResponse {
            access_token: "x".into(),
            instance_url: "https://example.my.salesforce.com".into(),
            id: "https://login.salesforce.com/id/00D5g000000AbCdEAK/0055g000000AbCdEAK".into(),
            token_type: "Bearer".into(),
            issued_at: "1700000000000".into(),
            scope: None,
        };
        assert_eq!(t.user_id(), Some("0055g000000AbCdEAK"));
        assert_eq!(t.org_id(), Some("00D5g000000AbCdEAK"));
    }
}
