//! The sandbox's extension for the MA's read-only mirrors (prospect
//! accounts, opportunities, custom object records), which a real business
//! unit's own Salesforce connector keeps: crmsync's Account Engagement
//! connector reconciles them through these paths when the connection says
//! the engine keeps the mirrors. Served behind the same gate as API v5
//! (token, business unit, daily quota, requests in flight), delegating to
//! the sandbox MA, so writes are fenced and validated as the engine's are.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use crmsync_connector::{MaApi, MirrorWrite, WriteOutcome};
use crmsync_domain::CrmId;
use crmsync_domain::mirror::{MirrorKind, MirrorPlan};
use crmsync_wire::pardot::codes;
use crmsync_wire::pardot::mirrors::{self, AccountOf, AccountsOf, Outcome, State as Mirror, Write};
use crmsync_wire::time;

use crate::errors::AeError;
use crate::state::{AppState, MaUser};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(mirrors::WRITE_PATH, post(write))
        .route(&format!("{}/{{kind}}/{{crm_id}}", mirrors::STATE_PATH), get(read))
        .route(mirrors::ACCOUNTS_OF_PATH, post(accounts_of))
}

/// A wire kind as the sandbox's.
fn kind(text: &str) -> Option<MirrorKind> {
    match text {
        mirrors::PROSPECT_ACCOUNT => Some(MirrorKind::ProspectAccount),
        mirrors::OPPORTUNITY => Some(MirrorKind::Opportunity),
        other => other.strip_prefix(mirrors::CUSTOM_PREFIX).filter(|n| !n.is_empty()).map(|n| MirrorKind::Custom(n.to_owned())),
    }
}

fn rejected(message: String) -> Outcome {
    Outcome::Rejected { code: "INVALID_FIELD_VALUE".into(), message }
}

/// A wire write as the sandbox MA's, or why it cannot be one.
fn write_of(w: &Write) -> Result<MirrorWrite, Outcome> {
    let kind = kind(&w.kind).ok_or_else(|| rejected(format!("unknown mirror kind {:?}", w.kind)))?;
    let crm_id = CrmId::parse(&w.crm_id).map_err(|e| rejected(format!("crm_id: {e}")))?;
    let plan = match &w.present {
        None => MirrorPlan::Absent,
        Some(m) => MirrorPlan::Present { fields: m.fields.clone().into_iter().collect(), prospects: m.prospects.iter().copied().collect() },
    };
    Ok(MirrorWrite { kind, crm_id, plan, fence: w.fence })
}

fn outcome(o: WriteOutcome) -> Outcome {
    match o {
        WriteOutcome::Written { at, .. } => Outcome::Written { at: time::pardot(at) },
        WriteOutcome::Fenced => Outcome::Fenced,
        WriteOutcome::NotFound => Outcome::NotFound,
        WriteOutcome::Rejected { code, message } => Outcome::Rejected { code, message },
    }
}

/// `POST`: one outcome per write, in order; a malformed write is refused on
/// its own, the others are still made.
pub async fn write(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<MaUser>,
    Json(writes): Json<Vec<Write>>,
) -> Result<Json<Vec<Outcome>>, AeError> {
    let parsed: Vec<Result<MirrorWrite, Outcome>> = writes.iter().map(write_of).collect();
    let valid: Vec<MirrorWrite> = parsed.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
    let mut written = st.ma.acting_as(user.0).write_mirrors(&valid).await?.into_iter();
    let out = parsed
        .into_iter()
        .map(|p| match p {
            Ok(_) => written.next().map(outcome).ok_or_else(|| AeError::internal("a mirror write got no outcome")),
            Err(refused) => Ok(refused),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(out))
}

/// `GET {kind}/{crm id}`: the mirror, or `null`.
pub async fn read(State(st): State<Arc<AppState>>, Path((k, crm_id)): Path<(String, String)>) -> Result<Json<Option<Mirror>>, AeError> {
    let bad = |m: String| AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, m);
    let kind = kind(&k).ok_or_else(|| bad(format!("unknown mirror kind {k:?}")))?;
    let crm_id = CrmId::parse(&crm_id).map_err(|e| bad(format!("crm_id: {e}")))?;
    let held = st.ma.mirror(&kind, &crm_id).await?;
    Ok(Json(held.map(|m| Mirror { fields: m.fields.into_iter().collect(), prospects: m.prospects.into_iter().collect() })))
}

/// `POST`: the CRM account each prospect's prospect account mirrors.
pub async fn accounts_of(State(st): State<Arc<AppState>>, Json(req): Json<AccountsOf>) -> Result<Json<Vec<AccountOf>>, AeError> {
    let found = st.ma.prospect_accounts_of(&req.prospect_ids).await?;
    Ok(Json(found.into_iter().map(|(prospect_id, a)| AccountOf { prospect_id, crm_account_id: a.to_string() }).collect()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_read_as_the_sandboxs_and_bad_writes_are_refused_alone() {
        assert_eq!(kind("prospect_account"), Some(MirrorKind::ProspectAccount));
        assert_eq!(kind("custom:Subscription__c"), Some(MirrorKind::Custom("Subscription__c".into())));
        assert_eq!(kind("custom:"), None);
        assert_eq!(kind("account"), None);
        let w: Write = serde_json::from_value(json!({
            "kind": "opportunity", "crm_id": "006000000000001",
            "present": {"fields": {"name": "Big deal"}, "prospects": [3, 1]}, "fence": 7
        }))
        .unwrap();
        let m = write_of(&w).unwrap();
        assert_eq!(m.kind, MirrorKind::Opportunity);
        assert_eq!(m.fence, Some(7));
        assert!(matches!(&m.plan, MirrorPlan::Present { prospects, .. } if prospects.iter().copied().collect::<Vec<_>>() == [1, 3]));
        let bad = Write { crm_id: "nope".into(), ..w };
        assert!(matches!(write_of(&bad), Err(Outcome::Rejected { .. })));
    }
}
