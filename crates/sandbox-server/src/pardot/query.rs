//! `GET /api/v5/objects/prospects`: the prospect query, with the filters
//! v5 documents that crmsync uses (`updatedAt` and `id` ranges, `email`,
//! `deleted`), `orderBy` on `updatedAt` or `id` (ascending, or `id DESC`),
//! `limit` up to 1000 and `nextPageToken` paging. A token stands for the
//! whole query and where it stopped, so a page continued by it keeps the
//! query's filters and size.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use crmsync_wire::pardot::{self, QueryPage, codes};
use crmsync_wire::time;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{column_of, prospect, requested};
use crate::errors::AeError;
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParams {
    fields: Option<String>,
    order_by: Option<String>,
    limit: Option<usize>,
    updated_at_after: Option<String>,
    updated_at_after_or_equal_to: Option<String>,
    updated_at_before: Option<String>,
    id_greater_than: Option<i64>,
    id_greater_than_or_equal_to: Option<i64>,
    id_less_than_or_equal_to: Option<i64>,
    email: Option<String>,
    deleted: Option<String>,
    next_page_token: Option<String>,
}

/// The query's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Order {
    UpdatedAt,
    Id,
    IdDesc,
}

/// What a `nextPageToken` stands for: the query, and where it stopped.
#[derive(Debug, Serialize, Deserialize)]
struct PageToken {
    fields: Vec<String>,
    order: Order,
    limit: usize,
    /// `updatedAt` at or after; strictly after.
    from: Option<DateTime<Utc>>,
    after_stamp: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
    email: Option<String>,
    deleted: Option<bool>,
    /// `id` strictly above, at or above, at or below.
    id_gt: Option<i64>,
    id_ge: Option<i64>,
    id_le: Option<i64>,
    /// The last prospect returned: (updatedAt in ms, id).
    after: Option<(i64, i64)>,
}

fn encode(t: &PageToken) -> String {
    serde_json::to_vec(t).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(s: &str) -> Option<PageToken> {
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    serde_json::from_slice(&bytes?).ok()
}

fn date(param: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, AeError> {
    v.map(|s| {
        time::parse(s)
            .ok_or_else(|| AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, format!("{param}: not a date-time: {s}")))
    })
    .transpose()
}

fn bad(m: String) -> AeError {
    AeError::new(StatusCode::BAD_REQUEST, codes::INVALID_FIELD_VALUE, m)
}

/// Whether a decoded token asks for no more than a request may.
fn within_bounds(t: &PageToken) -> bool {
    (1..=pardot::MAX_PAGE).contains(&t.limit) && t.fields.len() <= 200 && t.fields.iter().all(|f| f.len() <= 100)
}

/// The query a request without a token asks for.
fn token_of(p: &QueryParams) -> Result<PageToken, AeError> {
    let order = match p.order_by.as_deref().map(|o| o.trim().to_ascii_lowercase()).as_deref() {
        None | Some("updatedat") | Some("updatedat asc") => Order::UpdatedAt,
        Some("id") | Some("id asc") => Order::Id,
        Some("id desc") => Order::IdDesc,
        Some(_) => {
            return Err(bad(format!("orderBy: the sandbox orders by updatedAt or id, not {}", p.order_by.as_deref().unwrap_or_default())));
        }
    };
    let limit = p.limit.unwrap_or(200);
    if limit == 0 || limit > pardot::MAX_PAGE {
        return Err(bad(format!("limit must be between 1 and {}", pardot::MAX_PAGE)));
    }
    let deleted = match p.deleted.as_deref() {
        None | Some("false") => Some(false),
        Some("true") => Some(true),
        Some("all") => None,
        Some(o) => return Err(bad(format!("deleted must be true, false or all, not {o}"))),
    };
    Ok(PageToken {
        fields: requested(p.fields.as_deref())?,
        order,
        limit,
        from: date("updatedAtAfterOrEqualTo", p.updated_at_after_or_equal_to.as_deref())?,
        after_stamp: date("updatedAtAfter", p.updated_at_after.as_deref())?,
        before: date("updatedAtBefore", p.updated_at_before.as_deref())?,
        email: p.email.as_deref().map(|e| e.trim().to_lowercase()),
        deleted,
        id_gt: p.id_greater_than,
        id_ge: p.id_greater_than_or_equal_to,
        id_le: p.id_less_than_or_equal_to,
        after: None,
    })
}

/// Prospects in `updatedAt` (or `id`) order, `limit` at a time (at most
/// 1000), resumed by `nextPageToken`. v5 takes only `fields` beside a token.
pub async fn query(State(st): State<Arc<AppState>>, Query(p): Query<QueryParams>) -> Result<Json<QueryPage>, AeError> {
    let token = match &p.next_page_token {
        // A token is the client's to send back, and so to forge: what it
        // asks for is held to what a first request may ask (a forged one
        // had 1,048 prospects in one page, past the cap of 1,000).
        Some(t) => decode(t).filter(within_bounds).ok_or_else(|| bad("Invalid nextPageToken".into()))?,
        None => token_of(&p)?,
    };
    // Stamps compare at millisecond precision, the precision v5 returns.
    let ms = "(extract(epoch from date_trunc('milliseconds', t.modstamp)) * 1000)::bigint";
    let (order, after) = match token.order {
        Order::Id => ("t.id".to_owned(), "($3::bigint IS NULL OR t.id > $3)".to_owned()),
        Order::IdDesc => ("t.id DESC".to_owned(), "($3::bigint IS NULL OR t.id < $3)".to_owned()),
        Order::UpdatedAt => (format!("{ms}, t.id"), format!("($2::bigint IS NULL OR ({ms}, t.id) > ($2, $3))")),
    };
    // Only the columns asked for (and the page token's): a change feed's
    // light pages ask for `id` and `updatedAt` of a thousand prospects.
    let mut columns = std::collections::BTreeSet::from(["id", "modstamp"]);
    columns.extend(token.fields.iter().filter_map(|f| column_of(f)));
    if token.fields.iter().any(|f| f == "salesforceId") {
        columns.insert("crm_lead_fid");
    }
    let row = crate::soql_sql::row_of(&columns);
    let stamp = "date_trunc('milliseconds', t.modstamp)";
    let sql = format!(
        "SELECT {row} FROM ma.prospects t WHERE t.tenant = $1 AND {after} \
         AND ($4::timestamptz IS NULL OR {stamp} >= $4) \
         AND ($5::timestamptz IS NULL OR {stamp} < $5) \
         AND ($6::text IS NULL OR lower(btrim(t.email)) = $6) \
         AND ($7::bool IS NULL OR t.is_deleted = $7) \
         AND ($9::bigint IS NULL OR t.id > $9) \
         AND ($10::bigint IS NULL OR t.id >= $10) \
         AND ($11::bigint IS NULL OR t.id <= $11) \
         AND ($12::timestamptz IS NULL OR {stamp} > $12) \
         ORDER BY {order} LIMIT $8"
    );
    let rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&st.config.ma_tenant)
        .bind(token.after.map(|a| a.0))
        .bind(token.after.map(|a| a.1))
        .bind(token.from)
        .bind(token.before)
        .bind(&token.email)
        .bind(token.deleted)
        .bind(token.limit as i64 + 1)
        .bind(token.id_gt)
        .bind(token.id_ge)
        .bind(token.id_le)
        .bind(token.after_stamp)
        .fetch_all(&st.pool)
        .await?;
    let more = rows.len() > token.limit;
    let page = &rows[..rows.len().min(token.limit)];
    let fields = token.fields.clone();
    let next_page_token = match page.last() {
        Some(last) if more => {
            let stamp = last.get("modstamp").and_then(Value::as_str).and_then(time::parse).map_or(0, |t| t.timestamp_millis());
            let id = last.get("id").and_then(Value::as_i64).unwrap_or_default();
            Some(encode(&PageToken { after: Some((stamp, id)), ..token }))
        }
        _ => None,
    };
    Ok(Json(QueryPage {
        values: page.iter().map(|r| prospect(r, &fields)).collect(),
        next_page_url: next_page_token.as_ref().map(|t| format!("{}{}?nextPageToken={t}", st.base_url(), pardot::PROSPECTS_PATH)),
        next_page_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A token is the client's to send back: any text decodes to a
        /// token or to nothing, never a panic.
        #[test]
        fn any_page_token_text_decodes_or_is_refused(text in "[0-9a-fA-F]{0,64}|\\PC{0,64}") {
            if let Some(t) = decode(&text) {
                let _ = within_bounds(&t);
            }
        }
    }

    #[test]
    fn a_forged_token_asks_for_no_more_than_a_request_may() {
        let mut t = token_of(&QueryParams { fields: Some("id,email".into()), ..QueryParams::default() }).unwrap();
        assert!(within_bounds(&t));
        for limit in [0, pardot::MAX_PAGE + 48, usize::MAX] {
            t.limit = limit;
            let forged = decode(&encode(&t)).unwrap();
            assert!(!within_bounds(&forged), "limit {limit}");
        }
    }

    #[test]
    fn a_page_token_round_trips_and_orders_read_as_v5_writes_them() {
        let p = QueryParams {
            fields: Some("id".into()),
            order_by: Some("id DESC".into()),
            limit: Some(5),
            email: Some(" A@B.c".into()),
            id_greater_than_or_equal_to: Some(3),
            ..QueryParams::default()
        };
        let t = PageToken { after: Some((1_700_000_000_000, 42)), ..token_of(&p).unwrap() };
        let back = decode(&encode(&t)).unwrap();
        assert_eq!((back.after, back.email.as_deref(), back.limit), (Some((1_700_000_000_000, 42)), Some("a@b.c"), 5));
        assert_eq!((back.order, back.id_ge), (Order::IdDesc, Some(3)));
        assert!(decode("zz").is_none());
        assert!(token_of(&QueryParams { order_by: Some("email".into()), ..p }).is_err());
    }
}
