//! Creation rules (R3): a new prospect creates nothing in the CRM until an MA
//! user is assigned to it, and then a lead owned by that user's CRM user.

use crate::ids::{CrmId, CrmIdError};
use crate::records::ProspectRecord;

/// Who would own a lead created for a prospect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// No MA user is assigned: the prospect is pending assignment.
    Unassigned,
    /// Assigned to an MA user whose CRM user will own the lead.
    Owner(CrmId),
    /// Assigned to an MA user with no CRM user: nobody can own the lead.
    NoCrmUser { ma_user_id: i64 },
    /// Assigned to an MA user whose CRM user id is malformed.
    InvalidCrmUser { ma_user_id: i64, error: CrmIdError },
}

impl Assignment {
    pub fn of(prospect: &ProspectRecord) -> Assignment {
        match &prospect.assigned_user {
            None => Assignment::Unassigned,
            Some(u) => match u.crm_user_id.as_deref().filter(|s| !s.trim().is_empty()) {
                None => Assignment::NoCrmUser { ma_user_id: u.id },
                Some(raw) => match CrmId::parse(raw) {
                    Ok(id) => Assignment::Owner(id),
                    Err(error) => Assignment::InvalidCrmUser { ma_user_id: u.id, error },
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::records::{AssignedUser, Fields};

    fn prospect(user: Option<AssignedUser>) -> ProspectRecord {
        ProspectRecord {
            id: 7,
            email: Some("a@example.com".into()),
            crm_lead_fid: None,
            crm_contact_fid: None,
            assigned_user: user,
            is_deleted: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_modified_by: None,
            fields: Fields::new(),
        }
    }

    #[test]
    fn an_unassigned_prospect_has_no_owner() {
        assert_eq!(Assignment::of(&prospect(None)), Assignment::Unassigned);
    }

    #[test]
    fn the_owner_is_the_assigned_users_crm_user_in_18_characters() {
        let a = Assignment::of(&prospect(Some(AssignedUser { id: 3, crm_user_id: Some("0055g00000AbCdE".into()) })));
        assert_eq!(a, Assignment::Owner(CrmId::parse("0055g00000AbCdE").unwrap()));
    }

    #[test]
    fn an_assigned_user_without_a_crm_user_is_named() {
        assert_eq!(Assignment::of(&prospect(Some(AssignedUser { id: 3, crm_user_id: None }))), Assignment::NoCrmUser { ma_user_id: 3 });
        assert!(matches!(
            Assignment::of(&prospect(Some(AssignedUser { id: 3, crm_user_id: Some("005bad".into()) }))),
            Assignment::InvalidCrmUser { ma_user_id: 3, .. }
        ));
    }
}
