//! One test per matching rule (R1) and creation rule (R3).

use super::*;

fn id(s: &str) -> CrmId {
    CrmId::parse(s).unwrap()
}

fn ident(status: IdentityStatus, prospect_id: Option<i64>, crm: Option<&str>) -> IdentityRef {
    IdentityRef { id: Uuid::new_v4(), status, prospect_id, crm_id: crm.map(id) }
}

fn lead(s: &str) -> CrmCandidate {
    CrmCandidate { id: id(s), object: CrmObject::Lead, is_converted: false }
}

const LEAD: &str = "00Q5g00000AbCdE";
const LEAD2: &str = "00Q5g00000XyZzZ";
const CONTACT: &str = "0035g00000AbCdE";
const OWNER: &str = "0055g00000OwNeR";

fn prospect_facts<'a>(assignment: &'a Assignment) -> ProspectFacts<'a> {
    ProspectFacts {
        prospect_id: 42,
        crm_id: None,
        assignment,
        by_prospect: None,
        by_crm_id: None,
        by_email: None,
        crm_by_id: None,
        crm_by_email: &[],
    }
}

#[test]
fn a_linked_prospect_updates_its_identity() {
    let a = Assignment::Unassigned;
    let i = ident(IdentityStatus::Linked, Some(42), Some(LEAD));
    let d = decide_prospect(&ProspectFacts { by_prospect: Some(&i), ..prospect_facts(&a) });
    assert_eq!(d, Decision::Existing { id: i.id, patch: IdentityPatch::default(), issue: None });
    assert!(!prospect_needs_crm_lookup(Some(&i)));
}

#[test]
fn a_new_prospect_matches_by_crm_id_first() {
    let a = Assignment::Unassigned;
    let cid = id(CONTACT);
    let contact = CrmCandidate { id: cid.clone(), object: CrmObject::Contact, is_converted: false };
    let other = lead(LEAD2); // same email, but the CRM id decides
    let d = decide_prospect(&ProspectFacts {
        crm_id: Some(&cid),
        crm_by_id: Some(&contact),
        crm_by_email: std::slice::from_ref(&other),
        ..prospect_facts(&a)
    });
    let Decision::New { patch, issue: None } = d else { panic!("{d:?}") };
    assert_eq!(patch.crm, Some((cid, CrmObject::Contact)));
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
    assert_eq!(patch.prospect_id, Some(42));
}

#[test]
fn a_new_prospect_matches_one_crm_record_by_email() {
    let a = Assignment::Unassigned;
    let l = lead(LEAD);
    let d = decide_prospect(&ProspectFacts { crm_by_email: std::slice::from_ref(&l), ..prospect_facts(&a) });
    let Decision::New { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.crm, Some((id(LEAD), CrmObject::Lead)));
}

#[test]
fn several_crm_records_with_the_email_and_no_id_is_ambiguous() {
    let a = Assignment::Owner(id(OWNER));
    let both = [lead(LEAD), lead(LEAD2)];
    let d = decide_prospect(&ProspectFacts { crm_by_email: &both, ..prospect_facts(&a) });
    let Decision::Reject(issue) = d else { panic!("{d:?}") };
    assert_eq!(issue.category, SyncErrorCategory::AmbiguousMatch);
    assert!(issue.reason.contains(LEAD2), "{}", issue.reason);
}

#[test]
fn converted_leads_are_not_match_candidates() {
    let a = Assignment::Unassigned;
    let converted = CrmCandidate { is_converted: true, ..lead(LEAD) };
    let d = decide_prospect(&ProspectFacts { crm_by_email: &[converted, lead(LEAD2)], ..prospect_facts(&a) });
    let Decision::New { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.crm.unwrap().0, id(LEAD2));
}

#[test]
fn an_unassigned_prospect_with_no_match_is_pending_assignment() {
    let a = Assignment::Unassigned;
    let d = decide_prospect(&prospect_facts(&a));
    let Decision::New { patch, issue: None } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::PendingAssignment));
    assert_eq!(patch.crm, None);
    assert_eq!(patch.owner, None);
}

#[test]
fn an_assigned_prospect_with_no_match_creates_a_lead_owned_by_the_users_crm_user() {
    let a = Assignment::Owner(id(OWNER));
    let d = decide_prospect(&prospect_facts(&a));
    let Decision::New { patch, issue: None } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::CreatingCrm));
    assert_eq!(patch.owner, Some(id(OWNER)));
}

#[test]
fn assigning_a_pending_prospect_starts_the_lead_creation() {
    let a = Assignment::Owner(id(OWNER));
    let i = ident(IdentityStatus::PendingAssignment, Some(42), None);
    assert!(prospect_needs_crm_lookup(Some(&i)));
    let d = decide_prospect(&ProspectFacts { by_prospect: Some(&i), ..prospect_facts(&a) });
    let Decision::Existing { id: got, patch, issue: None } = d else { panic!("{d:?}") };
    assert_eq!(got, i.id);
    assert_eq!(patch.status, Some(IdentityStatus::CreatingCrm));
}

#[test]
fn a_pending_prospect_links_to_a_crm_record_that_appeared_instead_of_creating_one() {
    let a = Assignment::Owner(id(OWNER));
    let i = ident(IdentityStatus::PendingAssignment, Some(42), None);
    let l = lead(LEAD);
    let d = decide_prospect(&ProspectFacts { by_prospect: Some(&i), crm_by_email: std::slice::from_ref(&l), ..prospect_facts(&a) });
    let Decision::Existing { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
    assert_eq!(patch.owner, None);
}

#[test]
fn a_pending_prospect_that_stays_unassigned_changes_nothing() {
    let a = Assignment::Unassigned;
    let i = ident(IdentityStatus::PendingAssignment, Some(42), None);
    let d = decide_prospect(&ProspectFacts { by_prospect: Some(&i), ..prospect_facts(&a) });
    assert_eq!(d, Decision::Existing { id: i.id, patch: IdentityPatch::default(), issue: None });
}

#[test]
fn an_assigned_user_without_a_crm_user_leaves_the_prospect_pending_with_a_reason() {
    let a = Assignment::NoCrmUser { ma_user_id: 9 };
    let d = decide_prospect(&prospect_facts(&a));
    let Decision::New { patch, issue: Some(issue) } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::PendingAssignment));
    assert_eq!(issue.category, SyncErrorCategory::MissingOwner);
    assert!(issue.reason.contains("MA user 9"), "{}", issue.reason);
}

#[test]
fn a_prospect_pointing_at_a_missing_crm_record_is_rejected() {
    let a = Assignment::Unassigned;
    let cid = id(LEAD);
    let d = decide_prospect(&ProspectFacts { crm_id: Some(&cid), ..prospect_facts(&a) });
    let Decision::Reject(issue) = d else { panic!("{d:?}") };
    assert_eq!(issue.category, SyncErrorCategory::CrmRecordNotFound);
}

#[test]
fn a_second_prospect_for_an_already_linked_crm_record_is_a_duplicate() {
    let a = Assignment::Unassigned;
    let cid = id(LEAD);
    let i = ident(IdentityStatus::Linked, Some(1), Some(LEAD));
    let d = decide_prospect(&ProspectFacts { crm_id: Some(&cid), by_crm_id: Some(&i), ..prospect_facts(&a) });
    let Decision::Reject(issue) = d else { panic!("{d:?}") };
    assert_eq!(issue.category, SyncErrorCategory::DuplicateRecord);
}

#[test]
fn a_second_prospect_with_a_synced_email_is_a_duplicate() {
    let a = Assignment::Unassigned;
    let i = ident(IdentityStatus::Linked, Some(1), Some(LEAD));
    let d = decide_prospect(&ProspectFacts { by_email: Some(&i), ..prospect_facts(&a) });
    assert!(matches!(d, Decision::Reject(SyncIssue { category: SyncErrorCategory::DuplicateRecord, .. })));
}

#[test]
fn a_prospect_attaches_to_an_identity_created_from_the_crm_side() {
    let a = Assignment::Unassigned;
    let i = ident(IdentityStatus::CreatingMa, None, Some(LEAD));
    let d = decide_prospect(&ProspectFacts { by_email: Some(&i), ..prospect_facts(&a) });
    let Decision::Existing { id: got, patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(got, i.id);
    assert_eq!(patch.prospect_id, Some(42));
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
}

fn crm_facts<'a>(crm_id: &'a CrmId, email: Option<&'a Email>) -> CrmFacts<'a> {
    CrmFacts {
        crm_id,
        object: CrmObject::Lead,
        email,
        is_converted: false,
        converted_contact: None,
        is_deleted: false,
        by_email_converted_to: None,
        by_external_id: None,
        by_crm_id: None,
        by_email: None,
        crm_with_email: &[],
        prospects_by_email: &[],
        may_auto_create: false,
    }
}

#[test]
fn a_new_crm_lead_creates_no_prospect_without_auto_create() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    assert_eq!(decide_crm(&crm_facts(&cid, Some(&e))), Decision::Skip(SkipReason::AutoCreateOff));
}

#[test]
fn a_new_crm_lead_creates_a_prospect_with_auto_create() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    let d = decide_crm(&CrmFacts { may_auto_create: true, ..crm_facts(&cid, Some(&e)) });
    let Decision::New { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::CreatingMa));
}

#[test]
fn a_crm_record_without_email_never_creates_a_prospect() {
    let cid = id(LEAD);
    // With auto-creation on, the missing email is named as the reason.
    let d = decide_crm(&CrmFacts { may_auto_create: true, ..crm_facts(&cid, None) });
    let Decision::Reject(issue) = d else { panic!("{d:?}") };
    assert_eq!(issue.category, SyncErrorCategory::MissingEmail);
    // Without it, nothing was expected: a quiet skip.
    let d = decide_crm(&CrmFacts { may_auto_create: false, ..crm_facts(&cid, None) });
    assert_eq!(d, Decision::Skip(SkipReason::NoEmail));
}

#[test]
fn a_crm_record_links_to_the_one_prospect_with_its_email() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    let d = decide_crm(&CrmFacts { prospects_by_email: &[7], ..crm_facts(&cid, Some(&e)) });
    let Decision::New { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.prospect_id, Some(7));
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
}

#[test]
fn a_crm_record_links_a_pending_prospect_with_its_email() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    let i = ident(IdentityStatus::PendingAssignment, Some(7), None);
    let d = decide_crm(&CrmFacts { by_email: Some(&i), ..crm_facts(&cid, Some(&e)) });
    let Decision::Existing { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
    assert_eq!(patch.crm, Some((cid, CrmObject::Lead)));
}

#[test]
fn the_engines_own_lead_links_by_external_id() {
    let cid = id(LEAD);
    let i = ident(IdentityStatus::CreatingCrm, Some(7), None);
    let d = decide_crm(&CrmFacts { by_external_id: Some(&i), ..crm_facts(&cid, None) });
    let Decision::Existing { id: got, patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(got, i.id);
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
}

#[test]
fn a_second_crm_record_with_a_synced_email_is_a_duplicate() {
    let cid = id(LEAD2);
    let e = Email::parse("a@example.com").unwrap();
    let i = ident(IdentityStatus::Linked, Some(7), Some(LEAD));
    let d = decide_crm(&CrmFacts { by_email: Some(&i), ..crm_facts(&cid, Some(&e)) });
    let Decision::Reject(issue) = d else { panic!("{d:?}") };
    assert_eq!(issue.category, SyncErrorCategory::DuplicateRecord);
    assert!(!issue.reason.contains("example.com"), "no personal data in reasons: {}", issue.reason);
}

#[test]
fn several_prospects_with_the_crm_records_email_is_ambiguous() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    let d = decide_crm(&CrmFacts { prospects_by_email: &[7, 8], may_auto_create: true, ..crm_facts(&cid, Some(&e)) });
    assert!(matches!(d, Decision::Reject(SyncIssue { category: SyncErrorCategory::AmbiguousMatch, .. })));
}

#[test]
fn a_converted_lead_nobody_synced_is_skipped() {
    let cid = id(LEAD);
    let contact = id(CONTACT);
    let d = decide_crm(&CrmFacts { is_converted: true, converted_contact: Some(&contact), ..crm_facts(&cid, None) });
    assert_eq!(d, Decision::Skip(SkipReason::ConvertedLead));
}

#[test]
fn a_converted_lead_relinks_its_prospect_to_the_contact() {
    let cid = id(LEAD);
    let contact = id(CONTACT);
    let i = ident(IdentityStatus::Linked, Some(7), Some(LEAD));
    let d = decide_crm(&CrmFacts { is_converted: true, converted_contact: Some(&contact), by_crm_id: Some(&i), ..crm_facts(&cid, None) });
    let Decision::Existing { id: got, patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(got, i.id, "the same person, not a second identity");
    assert_eq!(patch.crm, Some((contact, CrmObject::Contact)));
    assert!(patch.reset_crm_known);
}

#[test]
fn the_contact_of_a_conversion_seen_first_relinks_the_identity_too() {
    let contact = id(CONTACT);
    let e = Email::parse("a@example.com").unwrap();
    let i = ident(IdentityStatus::Linked, Some(7), Some(LEAD));
    let d = decide_crm(&CrmFacts {
        object: CrmObject::Contact,
        by_email: Some(&i),
        by_email_converted_to: Some(&contact),
        ..crm_facts(&contact, Some(&e))
    });
    let Decision::Existing { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.crm, Some((contact.clone(), CrmObject::Contact)));
    // Another contact with that email is still a duplicate.
    let other = id("0035g00000OtHeR");
    let d = decide_crm(&CrmFacts {
        object: CrmObject::Contact,
        by_email: Some(&i),
        by_email_converted_to: Some(&contact),
        ..crm_facts(&other, Some(&e))
    });
    assert!(matches!(d, Decision::Reject(SyncIssue { category: SyncErrorCategory::DuplicateRecord, .. })), "{d:?}");
}

#[test]
fn a_deleted_crm_record_recycles_its_prospect_and_a_restore_brings_it_back() {
    let cid = id(LEAD);
    let linked = ident(IdentityStatus::Linked, Some(7), Some(LEAD));
    let d = decide_crm(&CrmFacts { is_deleted: true, by_crm_id: Some(&linked), ..crm_facts(&cid, None) });
    let Decision::Existing { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::Recycled));
    let recycled = ident(IdentityStatus::Recycled, Some(7), Some(LEAD));
    let d = decide_crm(&CrmFacts { by_crm_id: Some(&recycled), ..crm_facts(&cid, None) });
    let Decision::Existing { patch, .. } = d else { panic!("{d:?}") };
    assert_eq!(patch.status, Some(IdentityStatus::Linked));
    // A deleted record nobody synced is simply not synced.
    assert_eq!(decide_crm(&CrmFacts { is_deleted: true, ..crm_facts(&cid, None) }), Decision::Skip(SkipReason::Deleted));
}

#[test]
fn a_crm_record_sharing_its_email_with_another_is_ambiguous_from_the_crm_side_too() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    let both = [lead(LEAD), CrmCandidate { id: id(CONTACT), object: CrmObject::Contact, is_converted: false }];
    let d = decide_crm(&CrmFacts { crm_with_email: &both, prospects_by_email: &[7], ..crm_facts(&cid, Some(&e)) });
    let Decision::Reject(issue) = d else { panic!("{d:?}") };
    assert_eq!(issue.category, SyncErrorCategory::AmbiguousMatch);
    assert!(issue.reason.contains(CONTACT), "{}", issue.reason);
    // Only itself: not ambiguous.
    let d = decide_crm(&CrmFacts { crm_with_email: &both[..1], prospects_by_email: &[7], ..crm_facts(&cid, Some(&e)) });
    assert!(matches!(d, Decision::New { .. }), "{d:?}");
}

#[test]
fn crm_records_sharing_an_email_no_prospect_has_are_not_ambiguous_without_auto_create() {
    let cid = id(LEAD);
    let e = Email::parse("a@example.com").unwrap();
    let both = [lead(LEAD), CrmCandidate { id: id(CONTACT), object: CrmObject::Contact, is_converted: false }];
    // Nothing to link and nothing to create: no guess to make.
    let d = decide_crm(&CrmFacts { crm_with_email: &both, ..crm_facts(&cid, Some(&e)) });
    assert_eq!(d, Decision::Skip(SkipReason::AutoCreateOff));
    // With auto-creation on, creating a prospect from either would be a guess.
    let d = decide_crm(&CrmFacts { crm_with_email: &both, may_auto_create: true, ..crm_facts(&cid, Some(&e)) });
    assert!(matches!(d, Decision::Reject(SyncIssue { category: SyncErrorCategory::AmbiguousMatch, .. })), "{d:?}");
}
