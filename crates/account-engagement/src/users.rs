//! The business unit's users and their Salesforce users (`salesforceId`),
//! kept in memory: a prospect's assigned user needs its CRM user (R3: the
//! lead made on assignment is owned by it), and the users list names the
//! MA user crmsync itself writes as. Refreshed when a user id shows up
//! that the cache does not know, and when it is older than [`MAX_AGE`]
//! (a user linked to a CRM user later).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::row::text;
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_domain::CrmId;
use crmsync_wire::pardot::{QueryPage, USERS_PATH};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::http::Http;

/// How long the list is trusted for users it knows.
const MAX_AGE: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Known {
    /// MA user id → raw Salesforce user id.
    crm: HashMap<i64, Option<String>>,
    loaded: Option<Instant>,
}

/// The users cache of one connector.
#[derive(Debug, Default)]
pub(crate) struct Users {
    known: Mutex<Known>,
}

/// Every user, following `nextPageToken`.
async fn list(http: &Http) -> Result<HashMap<i64, Option<String>>, ConnectorError> {
    let mut out = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let call = match &token {
            Some(t) => Call::get(EndpointKind::Query, USERS_PATH).query("nextPageToken", t.clone()),
            None => Call::get(EndpointKind::Query, USERS_PATH).query("fields", "id,email,salesforceId").query("limit", "1000"),
        };
        let page: QueryPage = http.send(&call).await?.json()?;
        for u in &page.values {
            if let Some(id) = u.get("id").and_then(Value::as_i64) {
                out.insert(id, text(u, "salesforceId"));
            }
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

impl Users {
    /// The Salesforce user of each of `ids` (`None`: the MA user has none,
    /// or does not exist). Reloads the list once if any id is unknown or
    /// the list is old.
    pub async fn crm_users(&self, http: &Http, ids: &[i64]) -> Result<HashMap<i64, Option<String>>, ConnectorError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut known = self.known.lock().await;
        let stale = known.loaded.is_none_or(|t| t.elapsed() >= MAX_AGE);
        if stale || ids.iter().any(|id| !known.crm.contains_key(id)) {
            known.crm = list(http).await?;
            known.loaded = Some(Instant::now());
            tracing::debug!(users = known.crm.len(), "Account Engagement users loaded");
        }
        Ok(ids.iter().map(|id| (*id, known.crm.get(id).cloned().flatten())).collect())
    }

    /// The MA user tied to Salesforce user `crm_user` (15 or 18 characters
    /// on either side).
    pub async fn of_crm_user(&self, http: &Http, crm_user: &str) -> Result<Option<i64>, ConnectorError> {
        let mut known = self.known.lock().await;
        known.crm = list(http).await?;
        known.loaded = Some(Instant::now());
        Ok(find(&known.crm, crm_user))
    }
}

/// The MA user whose Salesforce user is `crm_user`, the lowest id first
/// should several be.
fn find(users: &HashMap<i64, Option<String>>, crm_user: &str) -> Option<i64> {
    let wanted = CrmId::parse(crm_user).ok()?;
    users.iter().filter(|(_, sf)| sf.as_deref().and_then(|s| CrmId::parse(s).ok()).as_ref() == Some(&wanted)).map(|(id, _)| *id).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ma_user_of_a_salesforce_user_is_found_in_either_id_form() {
        let users = HashMap::from([
            (1, None),
            (2, Some("005A0000006Vm9r".to_owned())),
            (3, Some("005A0000006Vm9sIAC".to_owned())),
            (4, Some("not an id".to_owned())),
        ]);
        assert_eq!(find(&users, "005A0000006Vm9rIAC"), Some(2));
        assert_eq!(find(&users, "005A0000006Vm9s"), Some(3));
        assert_eq!(find(&users, "005A0000006Vm9t"), None);
        assert_eq!(find(&users, "nonsense"), None);
    }
}
