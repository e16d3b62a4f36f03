//! The mirror and visibility rules (R4–R6), without services.

use chrono::Utc;
use serde_json::json;

use super::*;
use crate::records::FieldValue;

const OPP: &str = "0065g00000OpPoR";
const C1: &str = "0035g00000CoNt1";
const C2: &str = "0035g00000CoNt2";
const C3: &str = "0035g00000CoNt3";

fn id(s: &str) -> CrmId {
    CrmId::parse(s).unwrap()
}

fn record(object: MirrorObject, rid: &str, fields: &[(&str, serde_json::Value)]) -> CrmObjectRecord {
    CrmObjectRecord {
        id: rid.to_owned(),
        object,
        is_deleted: false,
        system_modstamp: Utc::now(),
        fields: fields.iter().map(|(k, v)| ((*k).to_owned(), FieldValue::new(v.clone()))).collect(),
    }
}

fn role(contact: &str) -> CrmObjectRecord {
    record(MirrorObject::ContactRole, "00K5g00000RoLe1", &[("OpportunityId", json!(id(OPP).to_string())), ("ContactId", json!(contact))])
}

fn opp() -> CrmObjectRecord {
    record(MirrorObject::Opportunity, OPP, &[("Name", json!("Big deal")), ("StageName", json!("Prospecting")), ("Amount", json!(1000))])
}

#[test]
fn an_opportunity_is_visible_only_on_prospects_whose_contact_has_a_role() {
    let prospects: BTreeMap<CrmId, i64> = [(id(C1), 1), (id(C2), 2)].into();
    // C3 has a role but no syncing prospect; C2 is synced but has no role.
    let plan = opportunity_plan(Some(&opp()), &[role(C1), role(C3)], &prospects);
    let MirrorPlan::Present { fields, prospects: seen } = plan else { panic!("{plan:?}") };
    assert_eq!(seen, [1].into());
    assert_eq!(fields["name"], json!("Big deal"));
    assert_eq!(fields["stage"], json!("Prospecting"));
}

#[test]
fn an_opportunity_without_a_role_on_a_synced_contact_is_not_in_the_ma() {
    let prospects: BTreeMap<CrmId, i64> = [(id(C1), 1)].into();
    assert_eq!(opportunity_plan(Some(&opp()), &[role(C3)], &prospects), MirrorPlan::Absent);
    assert_eq!(opportunity_plan(Some(&opp()), &[], &prospects), MirrorPlan::Absent);
}

#[test]
fn removing_the_role_removes_the_link_and_a_deleted_opportunity_its_mirror() {
    let prospects: BTreeMap<CrmId, i64> = [(id(C1), 1), (id(C2), 2)].into();
    let mut removed = role(C1);
    removed.is_deleted = true;
    let MirrorPlan::Present { prospects: seen, .. } = opportunity_plan(Some(&opp()), &[removed, role(C2)], &prospects) else { panic!() };
    assert_eq!(seen, [2].into());
    let mut gone = opp();
    gone.is_deleted = true;
    assert_eq!(opportunity_plan(Some(&gone), &[role(C2)], &prospects), MirrorPlan::Absent);
    assert_eq!(opportunity_plan(None, &[role(C2)], &prospects), MirrorPlan::Absent);
}

#[test]
fn a_role_on_another_opportunity_does_not_count() {
    let prospects: BTreeMap<CrmId, i64> = [(id(C1), 1)].into();
    let other =
        record(MirrorObject::ContactRole, "00K5g00000RoLe2", &[("OpportunityId", json!("0065g00000OtHeR")), ("ContactId", json!(C1))]);
    assert_eq!(opportunity_plan(Some(&opp()), &[other], &prospects), MirrorPlan::Absent);
}

#[test]
fn an_account_is_mirrored_only_while_a_syncing_prospect_belongs_to_it() {
    let account = record(MirrorObject::Account, "0015g00000AcCt1", &[("Name", json!("Acme")), ("BillingCity", json!("Kobe"))]);
    let MirrorPlan::Present { fields, prospects } = account_plan(Some(&account), [7, 8].into()) else { panic!() };
    assert_eq!(fields["name"], json!("Acme"));
    assert_eq!(fields["city"], json!("Kobe"));
    assert_eq!(fields["industry"], json!(null));
    assert_eq!(prospects, [7, 8].into());
    assert_eq!(account_plan(Some(&account), BTreeSet::new()), MirrorPlan::Absent);
    let mut deleted = account;
    deleted.is_deleted = true;
    assert_eq!(account_plan(Some(&deleted), [7].into()), MirrorPlan::Absent);
}

#[test]
fn a_custom_record_mirrors_its_declared_fields_only() {
    let decl = CustomObject {
        name: "Subscription__c".into(),
        fields: vec!["Plan__c".into()],
        lookup_field: "Contact__c".into(),
        lookup_object: CrmObject::Contact,
    };
    decl.validate().unwrap();
    let r =
        record(MirrorObject::Custom("Subscription__c".into()), "a005g00000SuBs1", &[("Plan__c", json!("Gold")), ("Secret__c", json!("x"))]);
    let MirrorPlan::Present { fields, .. } = custom_plan(Some(&r), &decl, [3].into()) else { panic!() };
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["Plan__c"]);
    assert_eq!(custom_plan(Some(&r), &decl, BTreeSet::new()), MirrorPlan::Absent);
}

#[test]
fn custom_object_declarations_are_checked() {
    let mut decl =
        CustomObject { name: "Bad".into(), fields: vec!["A__c".into()], lookup_field: "X__c".into(), lookup_object: CrmObject::Lead };
    assert!(matches!(decl.validate(), Err(CustomObjectError::Name(_))));
    decl.name = "Ok__c".into();
    decl.lookup_object = CrmObject::Opportunity;
    assert!(matches!(decl.validate(), Err(CustomObjectError::Lookup(..))));
}

#[test]
fn mirror_keys_round_trip_through_text() {
    for key in [
        MirrorKey::Account { id: id("0015g00000AcCt1") },
        MirrorKey::Opportunity { id: id(OPP) },
        MirrorKey::Person { id: id(C1) },
        MirrorKey::Custom { object: "Subscription__c".into(), id: id("a005g00000SuBs1") },
    ] {
        assert_eq!(MirrorKey::parse(&key.text()), Some(key.clone()));
    }
    assert_eq!(MirrorKey::parse("nonsense"), None);
}
