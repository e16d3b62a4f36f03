use chrono::Utc;
use serde_json::json;

use super::*;
use crate::merge::Side;
use crate::records::{CrmPersonRecord, FieldValue, Fields};

const ME: &str = "005INTEGRATION";
const USER: &str = "005USER";

fn lead(title: &str, by: &str, last_by: &str) -> SourceRecord {
    let at = Utc::now();
    let mut fields = Fields::new();
    fields.insert("Title".into(), FieldValue { value: json!(title), at: Some(at), by: Some(by.into()) });
    let lead = CrmPersonRecord::test_lead("00Q5g00000AbCdEAAA", at, fields);
    SourceRecord::Crm(CrmPersonRecord { last_modified_by: Some(last_by.into()), ..lead })
}

fn view(status: IdentityStatus, fields: &IdentityFields) -> KnownIdentity<'_> {
    KnownIdentity { status, fields, crm_account_id: None }
}

fn known_title(title: &str) -> IdentityFields {
    let mut f = IdentityFields::default();
    f.wrote(Side::Crm, "jobTitle", Utc::now(), json!(title));
    f
}

#[test]
fn a_pending_identitys_record_touched_by_a_user_is_published() {
    let map = FieldMap::default();
    let f = known_title("CTO");
    // Same title as known, but a user saved the record (an assignment, say).
    assert!(worth_publishing(&lead("CTO", USER, USER), Some(&view(IdentityStatus::PendingAssignment, &f)), &map, ME));
    assert!(!worth_publishing(&lead("CTO", USER, USER), Some(&view(IdentityStatus::CreatingCrm, &f)), &map, ME));
}

#[test]
fn the_engines_own_write_is_not_published() {
    let f = known_title("CTO");
    assert!(!worth_publishing(&lead("CTO", ME, ME), Some(&view(IdentityStatus::Linked, &f)), &FieldMap::default(), ME));
}

#[test]
fn a_value_the_engine_already_knows_is_not_published() {
    let f = known_title("CTO");
    assert!(!worth_publishing(&lead("CTO", USER, USER), Some(&view(IdentityStatus::Linked, &f)), &FieldMap::default(), ME));
}

#[test]
fn a_user_edit_is_published() {
    let f = known_title("CTO");
    assert!(worth_publishing(&lead("CEO", USER, USER), Some(&view(IdentityStatus::Linked, &f)), &FieldMap::default(), ME));
}

#[test]
fn unlinked_records_go_to_the_matcher_unless_the_engine_made_them() {
    let map = FieldMap::default();
    assert!(worth_publishing(&lead("CEO", USER, USER), None, &map, ME));
    assert!(!worth_publishing(&lead("CEO", ME, ME), None, &map, ME));
    // Made by the engine, then touched by a user.
    assert!(worth_publishing(&lead("CEO", ME, USER), None, &map, ME));
}

#[test]
fn a_record_whose_values_a_link_observed_is_no_news() {
    // What the matcher drops: the other change of a pair edited on both
    // sides, detected before the link, which stored this record's values.
    let map = FieldMap::default();
    let lead = lead("CTO", USER, USER);
    let mut state = IdentityFields::default();
    state.observe_all(&map, &lead.observations(&map, Some(ME)));
    assert!(!worth_publishing(&lead, Some(&view(IdentityStatus::Linked, &state)), &map, ME));
    assert!(worth_publishing(&lead, Some(&view(IdentityStatus::Linked, &IdentityFields::default())), &map, ME));
}
