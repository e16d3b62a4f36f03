//! Reading many prospects in few calls. v5 reads one prospect per call by
//! id and one email per query, and has no "id in (...)" filter; but its
//! prospect query takes id ranges (`idGreaterThanOrEqualTo`,
//! `idLessThanOrEqualTo`), `updatedAtAfter`, `deleted`, `orderBy=id` and
//! pages of up to 1,000 ([`MAX_PAGE`]).
//!
//! - [`by_ids`] seeks: one query from the smallest id not yet read up to
//!   the largest asked for, 1,000 prospects in id order; the next starts at
//!   the first asked-for id past that page. Every call reads at least the
//!   id it starts at and the pages never overlap, so `n` ids spread over a
//!   range holding `r` prospects cost at most `min(n, ⌈r / 1000⌉)` calls
//!   (one per 1,000 for a batch of neighbours, as a backfill's are), never
//!   more than reading them one by one. With `changed_after`, only
//!   prospects changed since then come back, so the pages thin out to the
//!   changes.
//! - [`by_emails`] asks per email while that is cheaper than listing the
//!   business unit's live prospects in pages of 1,000 (its id range, learnt
//!   from two one-row queries, bounds how many there are): at most
//!   `min(k, 2 + ⌈id range / 1000⌉)` calls for `k` emails (`k` when few).

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use crmsync_connector_kit::row::{Row, flag, text};
use crmsync_connector_kit::{Call, EndpointKind};
use crmsync_domain::Email;
use crmsync_wire::pardot::{MAX_PAGE, PROSPECTS_PATH, QueryPage};
use crmsync_wire::time;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::fields::{EMAIL, ID, IS_DELETED};
use crate::http::Http;

/// Emails looked up one by one without first weighing a listing.
const FEW_EMAILS: usize = 8;

fn id_of(row: &Row) -> Option<i64> {
    row.get(ID).and_then(Value::as_i64)
}

/// The query of the prospects with ids from `from` to `to`, in id order,
/// deleted ones included, changed after `changed_after` if given.
pub(crate) fn seek_query(fields: &str, from: i64, to: i64, changed_after: Option<DateTime<Utc>>) -> Call {
    let call = Call::get(EndpointKind::Query, PROSPECTS_PATH)
        .query("fields", fields)
        .query("orderBy", ID)
        .query("deleted", "all")
        .query("limit", MAX_PAGE.to_string())
        .query("idGreaterThanOrEqualTo", from.to_string())
        .query("idLessThanOrEqualTo", to.to_string());
    match changed_after {
        Some(t) => call.query("updatedAtAfter", time::pardot(t)),
        None => call,
    }
}

/// Where the next seek starts: the first wanted id past `last` (ids sorted).
pub(crate) fn next_start(ids: &[i64], last: i64) -> usize {
    ids.partition_point(|id| *id <= last)
}

/// The prospects of `ids` (deleted ones included; missing ones absent),
/// only those changed after `changed_after` when given.
pub(crate) async fn by_ids(
    http: &Http,
    fields: &str,
    ids: &[i64],
    changed_after: Option<DateTime<Utc>>,
) -> Result<Vec<Row>, ConnectorError> {
    let ids: Vec<i64> = ids.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let wanted: HashSet<i64> = ids.iter().copied().collect();
    let Some(&to) = ids.last() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut at = 0;
    while at < ids.len() {
        let page: QueryPage = http.send(&seek_query(fields, ids[at], to, changed_after)).await?.json()?;
        let last = page.values.last().and_then(id_of);
        out.extend(page.values.into_iter().filter(|r| id_of(r).is_some_and(|id| wanted.contains(&id))));
        match (page.next_page_token, last) {
            // A full page: more may follow past its last prospect.
            (Some(_), Some(last)) => at = next_start(&ids, last),
            _ => break,
        }
    }
    Ok(out)
}

/// Whether `row` is a live prospect with one of `emails` (compared as v5
/// does, then exactly).
fn live_with(row: &Row, emails: &HashSet<&str>) -> bool {
    !flag(row, IS_DELETED) && text(row, EMAIL).is_some_and(|e| emails.contains(e.trim().to_lowercase().as_str()))
}

/// Live prospects with `email`, one query (and its pages).
async fn with_email(http: &Http, fields: &str, email: &Email) -> Result<Vec<Row>, ConnectorError> {
    let one = HashSet::from([email.as_str()]);
    let mut out = Vec::new();
    let mut call = Call::get(EndpointKind::Query, PROSPECTS_PATH)
        .query("fields", fields)
        .query("email", email.as_str())
        .query("limit", MAX_PAGE.to_string());
    loop {
        let page: QueryPage = http.send(&call).await?.json()?;
        out.extend(page.values.into_iter().filter(|r| live_with(r, &one)));
        match page.next_page_token {
            Some(t) => call = Call::get(EndpointKind::Query, PROSPECTS_PATH).query("nextPageToken", t),
            None => return Ok(out),
        }
    }
}

/// The live prospect with the smallest id (`desc`: the largest), if any.
async fn edge_id(http: &Http, desc: bool) -> Result<Option<i64>, ConnectorError> {
    let order = if desc { "id DESC" } else { "id" };
    let call = Call::get(EndpointKind::Query, PROSPECTS_PATH).query("fields", ID).query("orderBy", order).query("limit", "1");
    let page: QueryPage = http.send(&call).await?.json()?;
    Ok(page.values.first().and_then(id_of))
}

/// Pages a listing of every live prospect takes at most, given its ids
/// span `from..=to` (ids are unique, so no more prospects than that).
pub(crate) fn listing_pages(from: i64, to: i64) -> usize {
    usize::try_from(to.saturating_sub(from).saturating_add(1)).unwrap_or(usize::MAX).div_ceil(MAX_PAGE)
}

/// Every live prospect, in id order, with `emails` kept.
async fn listing(http: &Http, fields: &str, emails: &HashSet<&str>) -> Result<Vec<Row>, ConnectorError> {
    let mut out = Vec::new();
    let mut call =
        Call::get(EndpointKind::Query, PROSPECTS_PATH).query("fields", fields).query("orderBy", ID).query("limit", MAX_PAGE.to_string());
    loop {
        let page: QueryPage = http.send(&call).await?.json()?;
        out.extend(page.values.into_iter().filter(|r| live_with(r, emails)));
        match page.next_page_token {
            Some(t) => call = Call::get(EndpointKind::Query, PROSPECTS_PATH).query("nextPageToken", t),
            None => return Ok(out),
        }
    }
}

/// Live prospects with any of `emails`, by the cheaper of the two ways.
pub(crate) async fn by_emails(http: &Http, fields: &str, emails: &[Email], at_once: usize) -> Result<Vec<Row>, ConnectorError> {
    let emails: BTreeSet<&Email> = emails.iter().collect();
    if emails.len() > FEW_EMAILS {
        let span = match (edge_id(http, false).await?, edge_id(http, true).await?) {
            (Some(from), Some(to)) => listing_pages(from, to),
            _ => return Ok(Vec::new()),
        };
        if span < emails.len() {
            let set: HashSet<&str> = emails.iter().map(|e| e.as_str()).collect();
            return listing(http, fields, &set).await;
        }
    }
    // The futures are made first: a stream of borrowing closures trips the
    // `Send` check of the trait's boxed future.
    let reads: Vec<_> = emails.into_iter().map(|e| with_email(http, fields, e)).collect();
    let found: Vec<Vec<Row>> = futures::stream::iter(reads).buffered(at_once).try_collect().await?;
    Ok(found.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_seek_reads_a_range_in_id_order_and_the_next_starts_past_its_page() {
        let after = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let q: Vec<(&str, String)> = seek_query("id,updatedAt", 7, 900, Some(after)).query.into_iter().collect();
        assert_eq!(
            q,
            [
                ("fields", "id,updatedAt".to_owned()),
                ("orderBy", "id".to_owned()),
                ("deleted", "all".to_owned()),
                ("limit", "1000".to_owned()),
                ("idGreaterThanOrEqualTo", "7".to_owned()),
                ("idLessThanOrEqualTo", "900".to_owned()),
                ("updatedAtAfter", "2023-11-14T22:13:20.123Z".to_owned())
            ]
        );
        let ids = [3, 5, 1_200, 1_201, 9_000];
        assert_eq!(next_start(&ids, 1_002), 2, "the page ended at 1,002: go on from 1,200");
        assert_eq!(next_start(&ids, 1_200), 3);
        assert_eq!(next_start(&ids, 9_000), 5, "nothing left");
        assert_eq!(next_start(&ids, 1), 0);
    }

    #[test]
    fn a_listing_is_weighed_by_the_id_range() {
        assert_eq!(listing_pages(1, 1_000), 1);
        assert_eq!(listing_pages(1, 1_001), 2);
        assert_eq!(listing_pages(500, 500), 1);
        assert!(listing_pages(0, i64::MAX) >= usize::try_from(i64::MAX / 1_000).unwrap(), "no overflow");
    }
}
