//! Record lookup: one person by email, prospect id or CRM id (15 or 18
//! characters), with its identity link and its history (every change the
//! engine detected and every write, newest first: time, side, the mapped
//! fields written (by their MA names; values are not kept), lane, outcome). Read-only; emails are redacted as everywhere in the
//! console. Both sides' current values and "Sync now" are to come.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use crmsync_domain::{CrmId, Email};
use crmsync_ops::pii::Pii;
use crmsync_store::audit::{self, HistoryEntry};
use crmsync_store::identities::{self, IdentityRow, Keys};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::pages::{answer, unavailable};
use crate::session::Principal;
use crate::view::page;

/// History entries shown per record.
const HISTORY: i64 = 200;

#[derive(Debug, Default, Deserialize)]
pub struct Lookup {
    connection: Option<String>,
    /// An email, a prospect id or a CRM id.
    q: Option<String>,
}

/// What a lookup text names.
fn keys_of(q: &str) -> Result<Keys, String> {
    let q = q.trim();
    if q.contains('@') {
        let email = Email::parse(q).map_err(|e| format!("not an email: {e}"))?;
        return Ok(Keys { emails: vec![email.as_str().to_owned()], ..Keys::default() });
    }
    if let Ok(prospect) = q.parse::<i64>() {
        return Ok(Keys { prospect_ids: vec![prospect], ..Keys::default() });
    }
    let id = CrmId::parse(q).map_err(|e| format!("not an email, a prospect id or a CRM id: {e}"))?;
    Ok(Keys { crm_ids: vec![id.as_str().to_owned()], ..Keys::default() })
}

/// An identity as shown: its link, not its field state.
fn identity_json(i: &IdentityRow, pii: Pii) -> Value {
    json!({
        "id": i.id,
        "status": i.status,
        "prospect_id": i.prospect_id,
        "crm_object": i.crm_object,
        "crm_id": i.crm_id,
        "email": i.email.as_deref().map(|e| pii.text(e).into_owned()),
        "prospect_recycled": i.ma_recycled,
        "linked_at": i.linked_at,
    })
}

/// `GET /records?connection=<id>&q=<email | prospect id | CRM id>`.
pub async fn lookup(State(state): State<AppState>, who: Principal, Query(l): Query<Lookup>, headers: HeaderMap) -> Response {
    let connection = l.connection.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| "default".to_owned());
    let Some(q) = l.q.clone().filter(|q| !q.trim().is_empty()) else {
        return answer(
            &headers,
            StatusCode::OK,
            || json!({ "identities": [] }),
            || page("Record lookup", Some(&who), form(&connection, "", None)),
        );
    };
    let keys = match keys_of(&q) {
        Ok(k) => k,
        Err(msg) => {
            return answer(
                &headers,
                StatusCode::BAD_REQUEST,
                || json!({ "error": msg }),
                || page("Record lookup", Some(&who), form(&connection, &q, Some(&msg))),
            );
        }
    };
    let read = async {
        let found = identities::find(&state.pool, &connection, &keys, identities::State::Skip).await?;
        let mut out = Vec::new();
        for i in found {
            let history = audit::history(&state.pool, &connection, i.id, HISTORY).await?;
            out.push((i, history));
        }
        Ok::<_, sqlx::Error>(out)
    };
    let found = match read.await {
        Ok(f) => f,
        Err(e) => return unavailable(&headers, Some(&who), &e.into()),
    };
    let pii = Pii::default();
    let status = if found.is_empty() { StatusCode::NOT_FOUND } else { StatusCode::OK };
    answer(
        &headers,
        status,
        || {
            let identities: Vec<Value> = found
                .iter()
                .map(|(i, h)| {
                    let history: Vec<HistoryEntry> = h
                        .iter()
                        .map(|e| HistoryEntry { detail: e.detail.as_deref().map(|d| pii.text(d).into_owned()), ..e.clone() })
                        .collect();
                    json!({ "identity": identity_json(i, pii), "history": history })
                })
                .collect();
            json!({ "identities": identities })
        },
        || page("Record lookup", Some(&who), results(&connection, &q, &found, pii)),
    )
}

fn form(connection: &str, q: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { p.error { (e) } }
        form.inline method="get" action="/records" {
            label { "Connection " input name="connection" value=(connection); }
            label { "Email, prospect id or CRM id " input name="q" value=(q) size="40" autofocus; }
            button type="submit" { "Look up" }
        }
    }
}

fn results(connection: &str, q: &str, found: &[(IdentityRow, Vec<HistoryEntry>)], pii: Pii) -> Markup {
    let names = |writes: &Value, side: &str| -> String {
        writes
            .get(side)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    html! {
        (form(connection, q, None))
        @if found.is_empty() { p { "No identity of connection " code { (connection) } " has that key." } }
        @for (i, history) in found {
            h2 { "Identity " code { (i.id) } }
            table {
                tr { th { "Status" } td { (i.status) @if i.ma_recycled { " (prospect in the recycle bin)" } } }
                tr { th { "Prospect" } td { @if let Some(p) = i.prospect_id { code { (p) } } } }
                tr { th { "CRM record" } td { @if let (Some(o), Some(c)) = (&i.crm_object, &i.crm_id) { (o) " " code { (c) } } } }
                tr { th { "Email" } td { @if let Some(e) = &i.email { (pii.text(e)) } } }
                tr { th { "Linked" } td { @if let Some(t) = i.linked_at { (t.format("%Y-%m-%d %H:%M:%S")) } } }
            }
            h3 { "History" }
            table {
                tr { th { "When (UTC)" } th { "Stage" } th { "From" } th { "Outcome" } th { "Fields written to the MA" } th { "Fields written to the CRM" } th { "Lane" } th { "Detail" } }
                @for e in history {
                    tr {
                        td { (e.at.format("%Y-%m-%d %H:%M:%S%.3f")) }
                        td { (e.stage) }
                        td { (e.source_side) " " (e.source_object) " " code { (pii.text(&e.source_id)) } }
                        td { (e.action) }
                        td { (names(&e.writes, "ma")) }
                        td { (names(&e.writes, "crm")) }
                        td { (e.lane) }
                        td { @if let Some(d) = &e.detail { (pii.text(d)) } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keys_of;

    #[test]
    fn a_lookup_names_an_email_a_prospect_or_a_crm_record() {
        assert_eq!(keys_of(" Jane@Example.com ").unwrap().emails.len(), 1);
        assert_eq!(keys_of("42").unwrap().prospect_ids, vec![42]);
        let crm = keys_of("00Q000000000001").unwrap().crm_ids;
        assert_eq!(crm.len(), 1);
        assert_eq!(crm[0].len(), 18, "a 15-character id is looked up as its 18-character form");
        assert!(keys_of("not a key").is_err());
    }
}
