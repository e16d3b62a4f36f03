//! The CSQL sync options and their guards (R9).

use chrono::Utc;

use super::*;

fn user(id: i64, crm: Option<&str>, api: bool) -> CsUser {
    CsUser {
        id,
        name: format!("User {id}"),
        user_type: CsUserType::Csm,
        crm_user_id: crm.map(str::to_owned),
        crm_api_enabled: api,
        crm_active: true,
    }
}

const CRM_API: &str = "0055g00000ApIoK";
const CRM_NO_API: &str = "0055g00000NoApI";
const SALES: &str = "0055g00000SaLeS";

fn csql(saved_by: CsUser, owner: CsUser) -> CsqlRecord {
    CsqlRecord {
        id: 9,
        record_type: CsqlRecordType::Lead,
        created_by: saved_by.clone(),
        saved_by,
        owner,
        is_deleted: false,
        created_at: Utc::now(),
        modstamp: Utc::now(),
        last_modified_by: None,
        fields: Fields::new(),
    }
}

fn settings(target: CsqlTarget, sync_user: CsqlSyncUser) -> CsqlSettings {
    CsqlSettings { target, record_type: CsqlRecordType::Lead, sync_user }
}

#[test]
fn the_defaults_keep_csqls_in_the_cs_platform() {
    let s = CsqlSettings::default();
    assert_eq!((s.target, s.record_type, s.sync_user), (CsqlTarget::Cs, CsqlRecordType::Lead, CsqlSyncUser::LoggedIn));
    let r = csql(user(1, Some(CRM_API), true), user(1, Some(CRM_API), true));
    assert_eq!(decide_csql(&s, &r), CsqlDecision::Stay);
}

#[test]
fn a_logged_in_sync_writes_as_the_csms_own_crm_user() {
    let r = csql(user(1, Some(CRM_API), true), user(1, Some(CRM_API), true));
    let CsqlDecision::Sync(w) = decide_csql(&settings(CsqlTarget::Crm, CsqlSyncUser::LoggedIn), &r) else { panic!() };
    assert_eq!(w.act_as, Some(CrmId::parse(CRM_API).unwrap()));
}

#[test]
fn a_logged_in_sync_by_a_csm_without_api_access_is_refused_with_the_reason() {
    for saver in [user(2, Some(CRM_NO_API), false), user(3, None, false)] {
        let r = csql(saver.clone(), saver);
        let CsqlDecision::Refuse(issue) = decide_csql(&settings(CsqlTarget::Crm, CsqlSyncUser::LoggedIn), &r) else { panic!() };
        assert_eq!(issue.category, SyncErrorCategory::CsqlNotPermitted);
        assert!(issue.reason.contains("logged_in") && issue.reason.contains("kept"), "{}", issue.reason);
    }
}

#[test]
fn an_integration_sync_writes_as_the_integration_user_and_remembers_the_csm() {
    let r = csql(user(3, None, false), user(3, None, false));
    let CsqlDecision::Sync(w) = decide_csql(&settings(CsqlTarget::Crm, CsqlSyncUser::Integration), &r) else { panic!() };
    assert_eq!(w.act_as, None);
    assert!(w.created_by.contains("User 3"), "{}", w.created_by);
}

#[test]
fn an_internal_collaborator_owner_makes_their_sales_user_the_owner() {
    let mut owner = user(4, Some(SALES), false);
    owner.user_type = CsUserType::InternalCollaborator;
    let r = csql(user(1, Some(CRM_API), true), owner);
    let CsqlDecision::Sync(w) = decide_csql(&settings(CsqlTarget::Crm, CsqlSyncUser::LoggedIn), &r) else { panic!() };
    assert_eq!(w.owner, Some(CrmId::parse(SALES).unwrap()));
}

#[test]
fn switching_the_target_is_refused_while_the_cs_object_holds_records() {
    use CsqlRecordType::{Lead, Opportunity};
    let s = settings(CsqlTarget::Cs, CsqlSyncUser::LoggedIn);
    let e = check_target_switch(&s, CsqlTarget::Crm, &[(Lead, 12), (Opportunity, 0)]).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("12 record(s)") && text.contains("CS lead object") && text.contains("bulk-delete"), "{text}");
    assert!(!text.contains("opportunity object"), "an empty object is not named: {text}");
    assert!(check_target_switch(&s, CsqlTarget::Crm, &[(Lead, 0), (Opportunity, 0)]).is_ok());
    let opp = CsqlSettings { record_type: Opportunity, ..s };
    assert!(check_target_switch(&opp, CsqlTarget::Crm, &[(Lead, 0), (Opportunity, 1)]).unwrap_err().to_string().contains("support"));
}

#[test]
fn switching_the_target_is_refused_while_the_object_of_the_other_record_type_holds_records() {
    use CsqlRecordType::{Lead, Opportunity};
    // The record type moved to opportunity; the CS lead object still holds 3.
    let s = CsqlSettings { record_type: Opportunity, ..settings(CsqlTarget::Crm, CsqlSyncUser::LoggedIn) };
    let text = check_target_switch(&s, CsqlTarget::Cs, &[(Lead, 3), (Opportunity, 0)]).unwrap_err().to_string();
    assert!(text.contains("CS lead object still holds 3 record(s)") && text.contains("bulk-delete"), "{text}");
    let both = check_target_switch(&s, CsqlTarget::Cs, &[(Lead, 3), (Opportunity, 2)]).unwrap_err().to_string();
    assert!(both.contains("3 record(s)") && both.contains("2 record(s)") && both.contains("support"), "{both}");
}

#[test]
fn switching_the_record_type_needs_confirmation_and_says_what_changes() {
    let s = settings(CsqlTarget::Crm, CsqlSyncUser::LoggedIn);
    let e = check_record_type_switch(&s, CsqlRecordType::Opportunity, true, false).unwrap_err().to_string();
    assert!(e.contains("stages") && e.contains("table and detail views") && e.contains("email notification"), "{e}");
    assert!(e.contains("renewal center") && e.contains("shows on both"), "{e}");
    let without = check_record_type_switch(&s, CsqlRecordType::Opportunity, false, true).unwrap();
    assert!(!without.iter().any(|l| l.contains("renewal")));
}
