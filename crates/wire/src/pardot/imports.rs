//! Account Engagement API v5's Import API: prospects upserted in bulk from
//! CSV files, asynchronously.
//!
//! An import is created (`POST /api/v5/imports`, `multipart/form-data`
//! with a JSON [`CreateImport`] part named [`INPUT_PART`] and, optionally,
//! the first CSV file named [`FILE_PART`]), given more files as batches
//! while it is `Open` (`POST {id}/batches`), submitted by setting its status
//! to `Ready` (`PATCH {id}`, or `"status": "Ready"` at creation when the
//! one file holds every row), then waits, is processed and completes. Its
//! status is read with `GET {id}` (`fields` named, as every v5 read), and
//! the rows it refused are a CSV file (`GET {id}/errors`): the rows as they
//! were imported, followed by two columns, the error's type and its
//! description. Rows not in it were created or updated.
//!
//! A row names the prospect it updates in a match column ([`MATCH_ID`],
//! [`MATCH_SALESFORCE_ID`] or [`MATCH_EMAIL`], one value per row); without
//! a match it creates one, unless the import says `createOnNoMatch: false`.
//! A cell, blank ones included, overwrites the prospect's value unless the
//! import's `columns` say otherwise for its column (`overwrite`,
//! `nullOverwrite`, both true by default). A match in the recycle bin is an
//! error unless the import says `restoreDeleted`.
//!
//! Limits: a batch under 10 MB, at most 10 batches an import, 1,000 batches
//! a business unit a day; every call counts against the daily API calls.

use serde::{Deserialize, Serialize};

/// Imports: create; `{IMPORTS_PATH}/{id}` reads and submits one.
pub const IMPORTS_PATH: &str = "/api/v5/imports";
/// The JSON part of a create.
pub const INPUT_PART: &str = "input";
/// The CSV part of a create or a batch.
pub const FILE_PART: &str = "file";

/// A batch's file must be smaller than this.
pub const MAX_BATCH_BYTES: usize = 10 * 1024 * 1024;
/// Batches one import may hold.
pub const MAX_BATCHES: usize = 10;
/// Batches a business unit may import a day.
pub const DAILY_BATCHES: u64 = 1_000;

/// Match columns: the prospect's id, its CRM lead or contact id, its email.
pub const MATCH_ID: &str = "matchId";
pub const MATCH_SALESFORCE_ID: &str = "matchSalesforceId";
pub const MATCH_EMAIL: &str = "matchEmail";
pub const MATCH_COLUMNS: [&str; 3] = [MATCH_ID, MATCH_SALESFORCE_ID, MATCH_EMAIL];

/// The two columns the errors file adds after the row's own.
pub const ERROR_TYPE_COLUMN: &str = "Error Type";
pub const ERROR_DESCRIPTION_COLUMN: &str = "Error Description";

/// Error types of the errors file.
pub mod errors {
    /// The match is in the recycle bin and the import does not restore.
    pub const ARCHIVED: &str = "Archived Prospects";
    pub const INVALID_EMAIL: &str = "Invalid Email";
    /// A value the field does not take (too long, wrong type).
    pub const FIELD_VALIDATION: &str = "Field Validation Failure";
    /// No prospect matched and the import creates none.
    pub const NO_MATCH: &str = "No Match";
    /// More than one match value in a row.
    pub const MULTIPLE_MATCH_VALUES: &str = "Multiple Match Values";
    /// crmsync's fence (the sandbox's extension): a newer writer has
    /// written this prospect.
    pub const FENCED: &str = "crmsync Fence";
}

/// Where an import stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportStatus {
    /// Created: batches may be added.
    Open,
    /// Submitted (what a client sets): no more batches.
    Ready,
    /// Queued for processing.
    Waiting,
    Processing,
    /// Done: counts and the errors file are ready.
    Complete,
}

/// How one CSV column updates existing prospects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Column {
    pub field: String,
    /// False: the column never changes an existing prospect's value.
    #[serde(default = "yes")]
    pub overwrite: bool,
    /// False: a blank cell leaves an existing prospect's value alone.
    #[serde(default = "yes")]
    pub null_overwrite: bool,
}

fn yes() -> bool {
    true
}

/// The JSON part of a create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateImport {
    /// `Upsert`, the only one.
    pub operation: String,
    /// `Prospect`, the only one.
    pub object: String,
    /// `Ready`: the file sent with the create holds every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ImportStatus>,
    #[serde(default)]
    pub restore_deleted: bool,
    #[serde(default = "yes")]
    pub create_on_no_match: bool,
    /// One per CSV column when given, in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<Column>>,
}

/// `PATCH {id}`: the submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateImport {
    pub status: ImportStatus,
}

/// An import as the API shows it (the fields asked for; the create and the
/// submit answer with the first four).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Import {
    pub id: i64,
    pub status: ImportStatus,
    #[serde(default)]
    pub is_expired: bool,
    /// Where batches are added, while the import is `Open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
    /// The errors file, once complete with errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// The fields of a status read.
pub const STATUS_FIELDS: &str = "id,status,isExpired,createdCount,updatedCount,errorCount,errorsRef";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_input_and_the_import_read_as_v5_writes_them() {
        let input: CreateImport = serde_json::from_value(json!({
            "operation": "Upsert", "object": "Prospect", "status": "Ready",
            "columns": [{"field": "matchId"}, {"field": "firstName", "nullOverwrite": false}]
        }))
        .unwrap();
        assert_eq!(input.status, Some(ImportStatus::Ready));
        assert!(input.create_on_no_match && !input.restore_deleted, "the defaults");
        let columns = input.columns.unwrap();
        assert!(columns[0].overwrite && columns[0].null_overwrite);
        assert!(columns[1].overwrite && !columns[1].null_overwrite);
        let i: Import = serde_json::from_value(json!({"id": 7, "status": "Complete", "isExpired": false, "errorCount": 1,
            "errorsRef": "https://pi.pardot.com/api/v5/imports/7/errors"}))
        .unwrap();
        assert_eq!((i.status, i.error_count, i.created_count), (ImportStatus::Complete, Some(1), None));
        assert_eq!(serde_json::to_value(UpdateImport { status: ImportStatus::Ready }).unwrap(), json!({"status": "Ready"}));
    }
}
