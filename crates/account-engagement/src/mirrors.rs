//! The MA's read-only mirrors of CRM accounts, opportunities and custom
//! objects, through the sandbox's extension ([`crmsync_wire::pardot::mirrors`]).
//!
//! A real business unit keeps these itself (its own Salesforce connector
//! does) and API v5 cannot write them, so with `mirrors: ma` the engine
//! leaves mirrors alone (it checks `engine_keeps_mirrors()`), and these
//! methods answer a fatal error that says so if still called: there is
//! nothing honest to read or write, and a silent no-op would report
//! mirrors reconciled that were not.

use crmsync_connector::{ConnectorError, MirrorState, MirrorWrite, WriteOutcome};
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_domain::CrmId;
use crmsync_domain::endpoint::MirrorKeeper;
use crmsync_domain::mirror::{MirrorKind, MirrorPlan};
use crmsync_wire::pardot::mirrors::{self, AccountOf, AccountsOf, Kind, Outcome, State, Write};
use crmsync_wire::time;
use reqwest::Method;

use crate::http::Http;

/// Mirror writes per request: the bodies stay small.
const WRITES_PER_CALL: usize = 200;

/// Refuses mirror calls when the business unit keeps its own mirrors.
pub(crate) fn check_keeper(keeper: MirrorKeeper) -> Result<(), ConnectorError> {
    match keeper {
        MirrorKeeper::Engine => Ok(()),
        MirrorKeeper::Ma => Err(ConnectorError::Fatal(
            "this business unit's own Salesforce connector keeps its mirrors (`mirrors: ma`): crmsync neither reads nor writes them".into(),
        )),
    }
}

pub(crate) fn kind(k: &MirrorKind) -> Kind {
    match k {
        MirrorKind::ProspectAccount => mirrors::PROSPECT_ACCOUNT.to_owned(),
        MirrorKind::Opportunity => mirrors::OPPORTUNITY.to_owned(),
        MirrorKind::Custom(name) => format!("{}{name}", mirrors::CUSTOM_PREFIX),
    }
}

pub(crate) fn write_of(w: &MirrorWrite) -> Write {
    let present = match &w.plan {
        MirrorPlan::Absent => None,
        MirrorPlan::Present { fields, prospects } => {
            Some(State { fields: fields.clone().into_iter().collect(), prospects: prospects.iter().copied().collect() })
        }
    };
    Write { kind: kind(&w.kind), crm_id: w.crm_id.to_string(), present, fence: w.fence }
}

pub(crate) fn outcome(w: &MirrorWrite, o: Outcome) -> Result<WriteOutcome, ConnectorError> {
    Ok(match o {
        Outcome::Written { at } => WriteOutcome::Written {
            id: w.crm_id.to_string(),
            created: false,
            at: time::parse(&at).ok_or_else(|| ConnectorError::Fatal(format!("a mirror write answered the stamp {at:?}")))?,
        },
        Outcome::Fenced => WriteOutcome::Fenced,
        Outcome::NotFound => WriteOutcome::NotFound,
        Outcome::Rejected { code, message } => WriteOutcome::Rejected { code, message },
    })
}

pub(crate) async fn write(http: &Http, writes: &[MirrorWrite]) -> Result<Vec<WriteOutcome>, ConnectorError> {
    let mut out = Vec::with_capacity(writes.len());
    for chunk in writes.chunks(WRITES_PER_CALL) {
        let body: Vec<Write> = chunk.iter().map(write_of).collect();
        let body = serde_json::to_value(&body).map_err(|e| ConnectorError::Fatal(format!("cannot encode the mirrors: {e}")))?;
        let outcomes: Vec<Outcome> =
            http.send(&Call::new(EndpointKind::Write, Method::POST, mirrors::WRITE_PATH).json(body)).await?.json()?;
        if outcomes.len() != chunk.len() {
            return Err(ConnectorError::Fatal(format!(
                "the mirror extension answered {} outcomes for {} writes",
                outcomes.len(),
                chunk.len()
            )));
        }
        for (w, o) in chunk.iter().zip(outcomes) {
            out.push(outcome(w, o)?);
        }
    }
    Ok(out)
}

pub(crate) async fn read(http: &Http, k: &MirrorKind, crm_id: &CrmId) -> Result<Option<MirrorState>, ConnectorError> {
    let path = format!("{}/{}/{crm_id}", mirrors::STATE_PATH, kind(k));
    let held: Option<State> = http.send(&Call::get(EndpointKind::Query, path)).await?.json()?;
    Ok(held.map(|s| MirrorState { fields: s.fields.into_iter().collect(), prospects: s.prospects.into_iter().collect() }))
}

pub(crate) async fn accounts_of(http: &Http, prospect_ids: &[i64]) -> Result<Vec<(i64, CrmId)>, ConnectorError> {
    if prospect_ids.is_empty() {
        return Ok(Vec::new());
    }
    let body = serde_json::to_value(AccountsOf { prospect_ids: prospect_ids.to_vec() })
        .map_err(|e| ConnectorError::Fatal(format!("cannot encode the prospect ids: {e}")))?;
    let found: Vec<AccountOf> =
        http.send(&Call::new(EndpointKind::Query, Method::POST, mirrors::ACCOUNTS_OF_PATH).json(body)).await?.json()?;
    // An account id the MA holds that is not a CRM id cannot be reconciled.
    Ok(found.into_iter().filter_map(|a| CrmId::parse(&a.crm_account_id).ok().map(|id| (a.prospect_id, id))).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;

    use super::*;

    #[test]
    fn writes_and_outcomes_cross_the_wire_intact() {
        let w = MirrorWrite {
            kind: MirrorKind::Custom("Subscription__c".into()),
            crm_id: CrmId::parse("a015g00000AbCdE").unwrap(),
            plan: MirrorPlan::Present {
                fields: BTreeMap::from([("Plan__c".to_owned(), json!("Gold"))]),
                prospects: BTreeSet::from([3, 1]),
            },
            fence: Some(9),
        };
        let wire = write_of(&w);
        assert_eq!(wire.kind, "custom:Subscription__c");
        assert_eq!(wire.crm_id.len(), 18);
        assert_eq!(wire.present.as_ref().unwrap().prospects, [1, 3]);
        let gone = write_of(&MirrorWrite { plan: MirrorPlan::Absent, kind: MirrorKind::ProspectAccount, ..w.clone() });
        assert_eq!((gone.kind.as_str(), gone.present), ("prospect_account", None));
        let at = "2024-05-01T10:20:30.123Z".to_owned();
        assert!(matches!(outcome(&w, Outcome::Written { at }).unwrap(), WriteOutcome::Written { id, .. } if id == w.crm_id.as_str()));
        assert_eq!(outcome(&w, Outcome::Fenced).unwrap(), WriteOutcome::Fenced);
        assert!(outcome(&w, Outcome::Written { at: "soon".into() }).is_err());
    }

    #[test]
    fn a_business_unit_that_keeps_its_own_mirrors_is_left_alone() {
        assert!(check_keeper(MirrorKeeper::Engine).is_ok());
        let err = check_keeper(MirrorKeeper::Ma).unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("mirrors: ma")), "{err}");
    }
}
