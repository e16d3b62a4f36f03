//! What to write where, for one identity, from its merged field state: pure
//! functions over the identity's state, so the write decisions are tested
//! without services.
//!
//! - a linked identity gets the fields whose known value differs from the
//!   value its behaviour wants (R2), on each side;
//! - an identity being created in the CRM (R3) gets a lead with every desired
//!   value, owned by the assigned user's CRM user, keyed by crmsync's external
//!   id so a retried create finds the first attempt's lead; the lead's
//!   required fields the prospect leaves blank get the connection's
//!   placeholder, as Account Engagement's connector does;
//! - an identity being created in the MA gets a prospect, upserted by email;
//! - a pending identity gets nothing until it is assigned.

use crmsync_connector::{CrmTarget, ProspectTarget};
use crmsync_domain::mapping::FieldMap;
use crmsync_domain::matching::IdentityStatus;
use crmsync_domain::merge::{IdentityFields, Side, is_blank};
use crmsync_domain::settings::REQUIRED_LEAD_FIELDS;
use crmsync_domain::{CrmId, CrmObject, Email};
use serde_json::Value;
use uuid::Uuid;

/// An identity as the applier works on it.
#[derive(Debug, Clone)]
pub struct State {
    pub id: Uuid,
    pub status: IdentityStatus,
    pub prospect_id: Option<i64>,
    pub crm: Option<(CrmObject, CrmId)>,
    pub email: Option<String>,
    pub owner: Option<CrmId>,
    pub fields: IdentityFields,
    pub ma_link_written: bool,
    /// The engine has put the prospect in the MA recycle bin.
    pub ma_recycled: bool,
    pub crm_account_id: Option<String>,
}

/// One field to write: its MA name (the state's key), the target system's
/// name for it, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldWrite {
    pub key: String,
    pub api: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrmPlan {
    pub object: CrmObject,
    pub target: CrmTarget,
    pub fields: Vec<FieldWrite>,
    pub owner: Option<CrmId>,
    pub creates: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MaPlan {
    pub target: ProspectTarget,
    pub fields: Vec<FieldWrite>,
    pub link: Option<(CrmObject, CrmId)>,
    pub creates: bool,
    /// Move the prospect to the recycle bin (`true`) or out of it (R8).
    pub recycle: Option<bool>,
}

/// The CRM write this identity needs, if any. `placeholder` fills the
/// required fields of a lead being created that have no value.
pub fn crm_write(state: &State, map: &FieldMap, placeholder: Option<&str>) -> Option<CrmPlan> {
    let fields_for = |object: CrmObject| -> Vec<FieldWrite> {
        let mappings: Vec<_> = map.for_object(object).collect();
        state
            .fields
            .plan(mappings.iter().map(|(m, _)| *m), Side::Crm)
            .into_iter()
            .filter_map(|(key, value)| {
                let api = mappings.iter().find(|(m, _)| m.ma == key).map(|(_, api)| (*api).to_owned())?;
                Some(FieldWrite { key, api, value })
            })
            .collect()
    };
    match (state.status, &state.crm) {
        (IdentityStatus::Linked | IdentityStatus::CreatingMa, Some((object, id))) => {
            let fields = fields_for(*object);
            (!fields.is_empty()).then(|| CrmPlan {
                object: *object,
                target: CrmTarget::Id(id.clone()),
                fields,
                owner: None,
                creates: false,
            })
        }
        (IdentityStatus::CreatingCrm, None) => {
            let mut fields = fields_for(CrmObject::Lead);
            if let Some(text) = placeholder {
                fill_required(&mut fields, map, text);
            }
            Some(CrmPlan {
                object: CrmObject::Lead,
                target: CrmTarget::ExternalId(state.id.to_string()),
                fields,
                owner: state.owner.clone(),
                creates: true,
            })
        }
        _ => None,
    }
}

/// Gives each required lead field that `fields` leaves blank the
/// placeholder. A mapped field is keyed by its MA name, so the applier
/// records the placeholder as the value the CRM holds: a later real value
/// on either side differs from it and is written, and the CRM record read
/// back holding it is recognised as the engine's own (I7), never synced to
/// the prospect as if a user had typed it.
fn fill_required(fields: &mut Vec<FieldWrite>, map: &FieldMap, placeholder: &str) {
    for api in REQUIRED_LEAD_FIELDS {
        match fields.iter_mut().find(|f| f.api == *api) {
            Some(f) if is_blank(&f.value) => f.value = Value::from(placeholder),
            Some(_) => {}
            None => {
                let key = map.by_crm_field(CrmObject::Lead, api).map_or_else(|| (*api).to_owned(), |m| m.ma.clone());
                fields.push(FieldWrite { key, api: (*api).to_owned(), value: Value::from(placeholder) });
            }
        }
    }
}

/// Why a prospect cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaPlanError {
    /// A prospect must be created but the identity has no valid email.
    NoEmail,
}

/// The MA write this identity needs, if any, once the CRM side is settled
/// (`state.crm` may have just been set by a create).
pub fn ma_write(state: &State, map: &FieldMap) -> Result<Option<MaPlan>, MaPlanError> {
    let fields: Vec<FieldWrite> =
        state.fields.plan(map.iter(), Side::Ma).into_iter().map(|(key, value)| FieldWrite { api: key.clone(), key, value }).collect();
    let link = if state.ma_link_written { None } else { state.crm.clone() };
    let recycle = match (state.status, state.ma_recycled) {
        (IdentityStatus::Recycled, false) => Some(true),
        (IdentityStatus::Linked, true) => Some(false),
        _ => None,
    };
    match (state.status, state.prospect_id) {
        (IdentityStatus::CreatingMa, None) => {
            let email = state.email.as_deref().and_then(|e| Email::parse(e).ok()).ok_or(MaPlanError::NoEmail)?;
            Ok(Some(MaPlan { target: ProspectTarget::UpsertByEmail(email), fields, link, creates: true, recycle: None }))
        }
        // In the recycle bin nothing is synced; only the move itself is written.
        (IdentityStatus::Recycled, Some(id)) => {
            Ok(recycle.map(|r| MaPlan { target: ProspectTarget::Id(id), fields: vec![], link: None, creates: false, recycle: Some(r) }))
        }
        (IdentityStatus::Linked, Some(id)) if !fields.is_empty() || link.is_some() || recycle.is_some() => {
            Ok(Some(MaPlan { target: ProspectTarget::Id(id), fields, link, creates: false, recycle }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use crmsync_domain::merge::Observation;
    use serde_json::json;

    use super::*;

    fn state(status: IdentityStatus) -> State {
        State {
            id: Uuid::new_v4(),
            status,
            prospect_id: Some(7),
            crm: None,
            email: Some("a@example.com".into()),
            owner: Some(CrmId::parse("0055g00000OwNeR").unwrap()),
            fields: IdentityFields::default(),
            ma_link_written: false,
            ma_recycled: false,
            crm_account_id: None,
        }
    }

    fn observe(s: &mut State, side: Side, field: &str, v: Value) {
        s.fields.observe_all(&FieldMap::default(), &[Observation { field: field.into(), side, at: Utc::now(), value: v, coarse: false }]);
    }

    #[test]
    fn a_pending_identity_writes_nothing() {
        let mut s = state(IdentityStatus::PendingAssignment);
        observe(&mut s, Side::Ma, "lastName", json!("Doe"));
        let map = FieldMap::default();
        assert_eq!(crm_write(&s, &map, None), None);
        assert_eq!(ma_write(&s, &map), Ok(None));
    }

    #[test]
    fn creating_a_lead_writes_every_desired_value_under_crm_names_with_the_owner() {
        let mut s = state(IdentityStatus::CreatingCrm);
        observe(&mut s, Side::Ma, "lastName", json!("Doe"));
        observe(&mut s, Side::Ma, "company", json!("Acme"));
        observe(&mut s, Side::Ma, "score", json!(42));
        let plan = crm_write(&s, &FieldMap::default(), None).unwrap();
        assert!(plan.creates);
        assert_eq!(plan.target, CrmTarget::ExternalId(s.id.to_string()));
        assert_eq!(plan.owner, s.owner);
        let apis: Vec<&str> = plan.fields.iter().map(|f| f.api.as_str()).collect();
        assert!(apis.contains(&"LastName") && apis.contains(&"Company") && apis.contains(&"pi__score__c"));
    }

    #[test]
    fn a_new_leads_blank_required_fields_get_the_placeholder_and_nothing_else_does() {
        let mut s = state(IdentityStatus::CreatingCrm);
        observe(&mut s, Side::Ma, "lastName", json!("Doe"));
        observe(&mut s, Side::Ma, "jobTitle", json!(""));
        let map = FieldMap::default();
        let plan = crm_write(&s, &map, Some("[[unknown]]")).unwrap();
        let value = |api: &str| plan.fields.iter().find(|f| f.api == api).map(|f| (f.key.as_str(), f.value.clone()));
        assert_eq!(value("LastName"), Some(("lastName", json!("Doe"))), "a value the prospect has is kept");
        assert_eq!(value("Company"), Some(("company", json!("[[unknown]]"))), "keyed by the MA field, so the write is recorded");
        assert_eq!(value("Title"), None, "only required fields are filled");
        // Off: the CRM gets the blanks, and refuses the create itself.
        let plan = crm_write(&s, &map, None).unwrap();
        assert_eq!(plan.fields.iter().find(|f| f.api == "Company"), None);
        // A linked lead is never given a placeholder.
        s.status = IdentityStatus::Linked;
        s.crm = Some((CrmObject::Lead, CrmId::parse("00Q5g00000AbCdE").unwrap()));
        let plan = crm_write(&s, &map, Some("[[unknown]]")).unwrap();
        assert!(plan.fields.iter().all(|f| f.value != json!("[[unknown]]")), "{plan:?}");
    }

    #[test]
    fn a_linked_identity_writes_only_what_differs_and_links_the_prospect_once() {
        let mut s = state(IdentityStatus::Linked);
        s.crm = Some((CrmObject::Contact, CrmId::parse("0035g00000AbCdE").unwrap()));
        observe(&mut s, Side::Crm, "jobTitle", json!("CTO"));
        observe(&mut s, Side::Ma, "jobTitle", json!("CTO"));
        let map = FieldMap::default();
        assert_eq!(crm_write(&s, &map, None), None);
        let ma = ma_write(&s, &map).unwrap().unwrap();
        assert!(ma.fields.is_empty());
        assert_eq!(ma.link, s.crm);
        s.ma_link_written = true;
        assert_eq!(ma_write(&s, &map), Ok(None));
    }

    #[test]
    fn contacts_get_contact_field_names_and_no_company() {
        let mut s = state(IdentityStatus::Linked);
        s.crm = Some((CrmObject::Contact, CrmId::parse("0035g00000AbCdE").unwrap()));
        s.ma_link_written = true;
        observe(&mut s, Side::Ma, "city", json!("Osaka"));
        observe(&mut s, Side::Ma, "company", json!("Acme"));
        let plan = crm_write(&s, &FieldMap::default(), None).unwrap();
        assert_eq!(plan.fields, vec![FieldWrite { key: "city".into(), api: "MailingCity".into(), value: json!("Osaka") }]);
    }

    #[test]
    fn creating_a_prospect_upserts_by_email_and_needs_one() {
        let mut s = state(IdentityStatus::CreatingMa);
        s.prospect_id = None;
        s.crm = Some((CrmObject::Lead, CrmId::parse("00Q5g00000AbCdE").unwrap()));
        let plan = ma_write(&s, &FieldMap::default()).unwrap().unwrap();
        assert!(plan.creates);
        assert!(matches!(plan.target, ProspectTarget::UpsertByEmail(_)));
        s.email = None;
        assert_eq!(ma_write(&s, &FieldMap::default()), Err(MaPlanError::NoEmail));
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::*;

    fn linked() -> State {
        State {
            id: Uuid::new_v4(),
            status: IdentityStatus::Linked,
            prospect_id: Some(7),
            crm: Some((CrmObject::Lead, CrmId::parse("00Q5g00000AbCdE").unwrap())),
            email: None,
            owner: None,
            fields: IdentityFields::default(),
            ma_link_written: true,
            ma_recycled: false,
            crm_account_id: None,
        }
    }

    #[test]
    fn a_recycled_identity_moves_its_prospect_to_the_recycle_bin_and_syncs_nothing_else() {
        let mut s = linked();
        s.status = IdentityStatus::Recycled;
        let map = FieldMap::default();
        assert_eq!(crm_write(&s, &map, None), None);
        let plan = ma_write(&s, &map).unwrap().unwrap();
        assert_eq!(plan.recycle, Some(true));
        assert!(plan.fields.is_empty());
        s.ma_recycled = true;
        assert_eq!(ma_write(&s, &map), Ok(None), "already in the recycle bin");
    }

    #[test]
    fn a_restored_identity_brings_its_prospect_back() {
        let mut s = linked();
        s.ma_recycled = true;
        let plan = ma_write(&s, &FieldMap::default()).unwrap().unwrap();
        assert_eq!(plan.recycle, Some(false));
    }
}
