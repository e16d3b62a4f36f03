//! The change feeds of a connection: one per source object. People (leads,
//! contacts, prospects) are synced both ways; accounts, opportunities,
//! contact roles and declared custom objects feed the MA's read-only mirrors.

use crmsync_connector::{ConnectorError, Cursor, Systems};
use crmsync_domain::CrmObject;
use crmsync_domain::csql::{CsqlRecordType, CsqlTarget};
use crmsync_domain::mirror::MirrorObject;
use crmsync_domain::records::SourceRecord;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_sandbox::pending::FeedObject;

/// A source object whose changes are detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    Prospects,
    Leads,
    Contacts,
    /// A CRM object the MA mirrors (R4-R6).
    Mirror(MirrorObject),
    /// CSQLs of the CS object in use, while they sync to the CRM (R9).
    Csql(CsqlRecordType),
}

impl Feed {
    /// The feeds of a connection: people, and, when the engine keeps the
    /// MA's mirrors (a business unit with `mirrors: ma` keeps its own), the
    /// standard mirrored objects and each declared custom object.
    pub fn for_connection(settings: &ConnectionSettings) -> Vec<Feed> {
        let mut feeds = vec![Feed::Prospects, Feed::Leads, Feed::Contacts];
        if settings.ma.engine_keeps_mirrors() {
            feeds.extend([
                Feed::Mirror(MirrorObject::Account),
                Feed::Mirror(MirrorObject::Opportunity),
                Feed::Mirror(MirrorObject::ContactRole),
            ]);
            feeds.extend(settings.custom_objects.iter().map(|c| Feed::Mirror(MirrorObject::Custom(c.name.clone()))));
        }
        if settings.csql.target == CsqlTarget::Crm && settings.cs.is_some() {
            feeds.push(Feed::Csql(settings.csql.record_type));
        }
        feeds
    }

    /// The feed's name in the `feeds` table and in logs.
    pub fn name(&self) -> String {
        match self {
            Feed::Prospects => "ma.prospect".into(),
            Feed::Leads => "crm.lead".into(),
            Feed::Contacts => "crm.contact".into(),
            Feed::Mirror(MirrorObject::Custom(name)) => format!("crm.custom.{name}"),
            Feed::Mirror(o) => format!("crm.{}", o.name()),
            Feed::Csql(kind) => format!("cs.csql_{}", kind.as_str()),
        }
    }

    /// The sandbox table whose change notifications name this feed, when
    /// one does: a pass woken by a notification reads only the feeds it
    /// names.
    pub fn table(&self) -> Option<&'static str> {
        Some(match self {
            Feed::Prospects => "ma.prospects",
            Feed::Leads => "crm.leads",
            Feed::Contacts => "crm.contacts",
            Feed::Mirror(MirrorObject::Account) => "crm.accounts",
            Feed::Mirror(MirrorObject::Opportunity) => "crm.opportunities",
            Feed::Mirror(MirrorObject::ContactRole) => "crm.opportunity_contact_roles",
            Feed::Mirror(MirrorObject::Custom(_)) => "crm.custom_records",
            Feed::Csql(_) => return None,
        })
    }

    /// The sandbox object and tenant this feed reads, when its system is a
    /// sandbox tenant: such a feed can be asked whether it has changes in
    /// one statement together with every other (see `check`).
    pub fn sandbox<'a>(&'a self, settings: &'a ConnectionSettings) -> Option<(FeedObject<'a>, &'a str)> {
        Some(match self {
            Feed::Prospects => (FeedObject::Prospects, settings.ma.sandbox_tenant()?),
            Feed::Csql(kind) => (FeedObject::Csql(*kind), settings.cs.as_ref()?.sandbox_tenant()?),
            Feed::Mirror(o) => (FeedObject::Mirror(o), settings.crm.sandbox_tenant()?),
            _ => (FeedObject::Person(self.person().expect("a person feed")), settings.crm.sandbox_tenant()?),
        })
    }

    /// The user the engine writes as in this feed's system.
    pub fn integration_user<'s>(&self, systems: &'s Systems) -> &'s str {
        match (self, &systems.cs) {
            (Feed::Prospects, _) => systems.ma.integration_user(),
            (Feed::Csql(_), Some(cs)) => cs.integration_user(),
            _ => systems.crm.integration_user(),
        }
    }

    fn cs(systems: &Systems) -> Result<&dyn crmsync_connector::CsApi, ConnectorError> {
        systems.cs.as_deref().ok_or_else(|| ConnectorError::Fatal("CSQLs sync to the CRM but the connection has no CS platform".into()))
    }

    fn person(&self) -> Option<CrmObject> {
        match self {
            Feed::Leads => Some(CrmObject::Lead),
            Feed::Contacts => Some(CrmObject::Contact),
            _ => None,
        }
    }

    /// Whether changes were committed after `cursor` (pageable yet or not).
    pub async fn pending(&self, systems: &Systems, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        match self {
            Feed::Prospects => systems.ma.prospect_changes_pending(cursor).await,
            Feed::Mirror(o) => systems.crm.object_changes_pending(o, cursor).await,
            Feed::Csql(kind) => Self::cs(systems)?.csql_changes_pending(*kind, cursor).await,
            _ => systems.crm.person_changes_pending(self.person().expect("a person feed"), cursor).await,
        }
    }

    /// One page of changes after `cursor`.
    pub async fn page(
        &self,
        systems: &Systems,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<SourceRecord>, Cursor, bool), ConnectorError> {
        Ok(match self {
            Feed::Prospects => {
                let p = systems.ma.prospect_changes(cursor, limit).await?;
                (p.records.into_iter().map(SourceRecord::Prospect).collect(), p.next, p.has_more)
            }
            Feed::Mirror(o) => {
                let p = systems.crm.object_changes(o, cursor, limit).await?;
                (p.records.into_iter().map(SourceRecord::Mirror).collect(), p.next, p.has_more)
            }
            Feed::Csql(kind) => {
                let p = Self::cs(systems)?.csql_changes(*kind, cursor, limit).await?;
                (p.records.into_iter().map(SourceRecord::Csql).collect(), p.next, p.has_more)
            }
            _ => {
                let p = systems.crm.person_changes(self.person().expect("a person feed"), cursor, limit).await?;
                (p.records.into_iter().map(SourceRecord::Crm).collect(), p.next, p.has_more)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crmsync_domain::settings::SystemEndpoint;

    use super::*;

    /// A feed named after a table the sandbox does not notify on would
    /// never be read by a notified pass: its changes would wait for the
    /// next full poll.
    #[test]
    fn every_feed_table_is_one_the_sandbox_notifies_on() {
        let migrations = [
            include_str!("../../sandbox/migrations/0001_sandbox.sql"),
            include_str!("../../sandbox/migrations/0002_mirrors.sql"),
            include_str!("../../sandbox/migrations/0003_cs.sql"),
        ]
        .concat();
        let feeds = [
            Feed::Prospects,
            Feed::Leads,
            Feed::Contacts,
            Feed::Mirror(MirrorObject::Account),
            Feed::Mirror(MirrorObject::Opportunity),
            Feed::Mirror(MirrorObject::ContactRole),
            Feed::Mirror(MirrorObject::Custom("Invoice__c".into())),
        ];
        for feed in feeds {
            let table = feed.table().expect("a sandbox table");
            let trigger = format!("CREATE TRIGGER notify AFTER INSERT OR UPDATE ON {table} FOR EACH STATEMENT");
            assert!(migrations.contains(&trigger), "{} reads {table}, which does not notify", feed.name());
        }
        // No table names the CSQL feed: every pass reads it.
        assert_eq!(Feed::Csql(CsqlRecordType::Lead).table(), None);
    }

    #[test]
    fn mirror_feeds_only_when_the_engine_keeps_the_mirrors() {
        let mut settings = ConnectionSettings::default();
        assert_eq!(Feed::for_connection(&settings).len(), 6);
        let ae = |keeper: &str| -> SystemEndpoint {
            serde_json::from_value(serde_json::json!({
                "kind": "account_engagement", "base_url": "https://pi.pardot.com", "business_unit_id": "0Uv000000000042AAA",
                "oauth": {"login_url": "https://login.salesforce.com", "flow": "client_credentials",
                          "client_id": "app", "client_secret": {"env": "SECRET"}},
                "mirrors": keeper
            }))
            .unwrap()
        };
        settings.ma = ae("engine");
        assert_eq!(Feed::for_connection(&settings).len(), 6);
        settings.ma = ae("ma");
        assert_eq!(Feed::for_connection(&settings), [Feed::Prospects, Feed::Leads, Feed::Contacts]);
    }
}
