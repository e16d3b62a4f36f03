//! `GET /api/v5/objects/custom-fields`: the business unit's custom prospect
//! fields, from the sandbox's schema (its prospect columns named `…__c`).
//! v5 has no describe of prospects; a client learns the standard fields
//! from the documentation and the custom ones here, so this is what an
//! admin's field list over HTTP is built from.
//!
//! As v5 does: `fields` is required and every name must be known, at most
//! `limit` (1000) a page, `nextPageToken` resumes with nothing else.

use axum::Json;
use axum::extract::Query;
use crmsync_sandbox::schema::{PROSPECT, data_fields};
use crmsync_wire::pardot::{self, MAX_PAGE};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::invalid_field;
use crate::errors::AeError;

/// The fields of a custom field definition the server returns.
const KNOWN: &[&str] = &["id", "name", "fieldId", "type"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    fields: Option<String>,
    limit: Option<usize>,
    next_page_token: Option<String>,
}

/// v5's type of a sandbox column type.
fn type_of(kind: &str) -> &'static str {
    match kind {
        "integer" | "number" => "Number",
        "date" => "Date",
        "boolean" => "Checkbox",
        _ => "Text",
    }
}

/// Every custom field, in schema order, its id its place in that order.
fn definitions() -> Vec<Map<String, Value>> {
    data_fields(&PROSPECT)
        .into_iter()
        .filter(|f| f.custom)
        .enumerate()
        .map(|(i, f)| {
            let mut m = Map::new();
            m.insert("id".into(), Value::from(i as i64 + 1));
            m.insert("name".into(), Value::from(crate::describe::label_of(&f.name)));
            m.insert("fieldId".into(), Value::from(f.name));
            m.insert("type".into(), Value::from(type_of(&f.kind)));
            m
        })
        .collect()
}

/// A token: where the next page starts, its size and the fields asked for
/// (names have no `.`).
fn encode(offset: usize, limit: usize, fields: &[String]) -> String {
    format!("{offset}.{limit}.{}", fields.join(","))
}

fn decode(token: &str) -> Option<(usize, usize, Vec<String>)> {
    let mut parts = token.splitn(3, '.');
    let offset = parts.next()?.parse().ok()?;
    let limit = parts.next()?.parse().ok()?;
    Some((offset, limit, parts.next()?.split(',').map(str::to_owned).collect()))
}

fn bad(message: &str) -> AeError {
    AeError::new(axum::http::StatusCode::BAD_REQUEST, pardot::codes::INVALID_FIELD_VALUE, message)
}

pub async fn list(Query(p): Query<Params>) -> Result<Json<Value>, AeError> {
    let (offset, limit, fields) = match &p.next_page_token {
        Some(t) => decode(t).ok_or_else(|| bad("Invalid nextPageToken"))?,
        None => {
            let fields = p.fields.as_deref().filter(|f| !f.trim().is_empty()).ok_or_else(|| bad("The fields parameter is required"))?;
            let fields: Vec<String> = fields.split(',').map(|f| f.trim().to_owned()).collect();
            if let Some(f) = fields.iter().find(|f| !KNOWN.contains(&f.as_str())) {
                return Err(invalid_field(f));
            }
            (0, p.limit.unwrap_or(200).clamp(1, MAX_PAGE), fields)
        }
    };
    let all = definitions();
    let values: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|d| Value::Object(fields.iter().map(|f| (f.clone(), d.get(f).cloned().unwrap_or(Value::Null))).collect()))
        .collect();
    let end = offset + values.len();
    let mut page = Map::new();
    page.insert("values".into(), Value::Array(values));
    if end < all.len() {
        page.insert("nextPageToken".into(), Value::from(encode(end, limit, &fields)));
    }
    Ok(Json(Value::Object(page)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandboxs_custom_prospect_fields_are_listed_and_tokens_round_trip() {
        let defs = definitions();
        let ids: Vec<&str> = defs.iter().map(|d| d["fieldId"].as_str().unwrap()).collect();
        assert_eq!(ids, ["Preferred_Language__c"]);
        assert_eq!(defs[0]["name"], "Preferred Language");
        assert_eq!(defs[0]["type"], "Text");
        let fields = vec!["id".to_owned(), "fieldId".to_owned()];
        assert_eq!(decode(&encode(3, 50, &fields)), Some((3, 50, fields)));
        assert_eq!(decode("x"), None);
    }
}
