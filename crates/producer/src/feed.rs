//! The change feeds of a connection: one per source object.

use crmsync_connector::{ConnectorError, Cursor, Systems};
use crmsync_domain::CrmObject;
use crmsync_domain::records::SourceRecord;

/// A source object whose changes are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Prospects,
    Leads,
    Contacts,
}

impl Feed {
    pub const ALL: [Feed; 3] = [Feed::Prospects, Feed::Leads, Feed::Contacts];

    /// The feed's name in the `feeds` table and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Feed::Prospects => "ma.prospect",
            Feed::Leads => "crm.lead",
            Feed::Contacts => "crm.contact",
        }
    }

    /// The user the engine writes as in this feed's system.
    pub fn integration_user(self, systems: &Systems) -> &str {
        match self {
            Feed::Prospects => systems.ma.integration_user(),
            Feed::Leads | Feed::Contacts => systems.crm.integration_user(),
        }
    }

    /// Whether changes were committed after `cursor` (pageable yet or not).
    pub async fn pending(self, systems: &Systems, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        match self {
            Feed::Prospects => systems.ma.prospect_changes_pending(cursor).await,
            Feed::Leads => systems.crm.person_changes_pending(CrmObject::Lead, cursor).await,
            Feed::Contacts => systems.crm.person_changes_pending(CrmObject::Contact, cursor).await,
        }
    }

    /// One page of changes after `cursor`.
    pub async fn page(
        self,
        systems: &Systems,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<SourceRecord>, Cursor, bool), ConnectorError> {
        Ok(match self {
            Feed::Prospects => {
                let p = systems.ma.prospect_changes(cursor, limit).await?;
                (p.records.into_iter().map(SourceRecord::Prospect).collect(), p.next, p.has_more)
            }
            Feed::Leads | Feed::Contacts => {
                let object = if self == Feed::Leads { CrmObject::Lead } else { CrmObject::Contact };
                let p = systems.crm.person_changes(object, cursor, limit).await?;
                (p.records.into_iter().map(SourceRecord::Crm).collect(), p.next, p.has_more)
            }
        })
    }
}
