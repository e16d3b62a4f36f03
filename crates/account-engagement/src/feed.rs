//! The prospect change feed over `updatedAt` with the connector crate's
//! [`StampCursor`]: `GET /api/v5/objects/prospects` ordered by `updatedAt`,
//! from `updatedAtAfterOrEqualTo`, deleted prospects included
//! (`deleted=all`: a deletion is a change too), continued through
//! `nextPageToken` (the cursor's locator), with the overlap window that
//! catches late commits. v5 stamps have millisecond precision; a query
//! from a position re-reads that millisecond, and the cursor passes over
//! what it already delivered.
//!
//! A call returns at most `limit` records and asks for pages of what room
//! is left, but a page continued by `nextPageToken` keeps the size of the
//! query it continues: when such a page holds more new records than room,
//! it is cut after the last one returned and the cursor gets [`REQUERY`]
//! instead of the token, so the next call queries again from its position.
//! The same happens when a token is refused (expired).
//!
//! Rescans are read light while they meet only prospects delivered before:
//! `id` and `updatedAt`, in pages of the API's largest size, handed to
//! [`StampCursor::pass_over`].

use chrono::{DateTime, Utc};
use crmsync_connector::stamp_cursor::{Overlap, StampCursor};
use crmsync_connector::{ChangePage, ConnectorError, Cursor};
use crmsync_wire::pardot::{MAX_PAGE, PROSPECTS_PATH, QueryPage};
use crmsync_wire::time;

use crate::errors::CallError;
use crate::fields::{UPDATED_AT, position_param};
use crate::http::{Call, Http};
use crate::records::{Positioned, Row};

/// A locator meaning "query again from the cursor's position" (v5's own
/// tokens are opaque, but never this word).
pub(crate) const REQUERY: &str = "requery";

/// Pages read in one call at most, so a call stays short even when most of
/// what it reads was delivered before.
const MAX_PAGES_PER_CALL: usize = 5;

/// One page of the change query.
#[derive(Debug)]
pub(crate) struct Page {
    pub rows: Vec<Row>,
    pub next: Option<String>,
    pub server_time: DateTime<Utc>,
}

/// The change query from `from` (stamps at or after it), `limit` a page.
pub(crate) fn change_query(fields: &str, from: Option<DateTime<Utc>>, limit: usize) -> Call {
    let call = Call::get(PROSPECTS_PATH)
        .query("fields", fields)
        .query("orderBy", UPDATED_AT)
        .query("deleted", "all")
        .query("limit", limit.clamp(1, MAX_PAGE).to_string());
    match from {
        // `pardot` writes milliseconds, rounding down: the query re-reads
        // rather than skips.
        Some(t) => call.query("updatedAtAfterOrEqualTo", time::pardot(t)),
        None => call,
    }
}

async fn page_of(http: &Http, call: &Call) -> Result<Page, CallError> {
    let answer = http.send(call).await?;
    let page: QueryPage = answer.json()?;
    Ok(Page { rows: page.values, next: page.next_page_token, server_time: answer.server_time })
}

/// The page after `token`.
pub(crate) async fn next_page(http: &Http, token: &str) -> Result<Page, CallError> {
    page_of(http, &Call::get(PROSPECTS_PATH).query("nextPageToken", token)).await
}

async fn fetch(http: &Http, fields: &str, cursor: &StampCursor, room: usize) -> Result<Page, ConnectorError> {
    let fresh = || change_query(fields, cursor.query_from(), room);
    match cursor.locator() {
        Some(token) if token != REQUERY => match next_page(http, token).await {
            Ok(page) => Ok(page),
            // Tokens expire: start over from the position.
            Err(CallError::Api(f)) if f.status == 400 || f.status == 404 => {
                tracing::debug!(error = %f.summary(), "a nextPageToken was refused; querying again from the cursor");
                Ok(page_of(http, &fresh()).await?)
            }
            Err(e) => Err(e.into()),
        },
        _ => Ok(page_of(http, &fresh()).await?),
    }
}

/// Keeps the rows of a page up to and including the `room`-th one the
/// cursor has not delivered; says whether rows were cut off.
pub(crate) fn cut(cursor: &StampCursor, mut rows: Vec<Positioned>, room: usize) -> (Vec<Positioned>, bool) {
    let mut new = 0;
    let mut keep = rows.len();
    for (i, r) in rows.iter().enumerate() {
        if cursor.any_new([(r.stamp, r.key.as_str())]) {
            new += 1;
            if new == room {
                keep = i + 1;
                break;
            }
        }
    }
    let cut_off = keep < rows.len();
    rows.truncate(keep);
    (rows, cut_off)
}

/// Prospect rows changed after `cursor`, at most `limit`, and the cursor
/// after them (rows become records afterwards: that needs the users).
pub(crate) async fn changes(
    http: &Http,
    fields: &str,
    cursor: Option<&Cursor>,
    limit: usize,
    overlap: Overlap,
) -> Result<ChangePage<Row>, ConnectorError> {
    let limit = limit.max(1);
    let mut state = StampCursor::load(cursor)?;
    let mut out = Vec::new();
    let mut has_more = false;
    for _ in 0..MAX_PAGES_PER_CALL {
        if state.light() {
            let page = page_of(http, &change_query(&position_param(), state.query_from(), MAX_PAGE)).await?;
            let positions = page.rows.into_iter().map(Positioned::of).collect::<Result<Vec<_>, _>>()?;
            has_more = state.pass_over(positions, page.server_time, page.next, REQUERY, overlap);
            if !has_more {
                break;
            }
            continue;
        }
        let room = limit - out.len();
        let page = fetch(http, fields, &state, room).await?;
        let rows = page.rows.into_iter().map(Positioned::of).collect::<Result<Vec<_>, _>>()?;
        let (rows, cut_off) = cut(&state, rows, room);
        let next = if cut_off { Some(REQUERY.to_owned()) } else { page.next };
        let (fresh, more) = state.accept(rows, page.server_time, next, overlap);
        out.extend(fresh.into_iter().map(|p| p.row));
        has_more = more;
        if !has_more || out.len() >= limit {
            break;
        }
    }
    Ok(ChangePage { records: out, next: state.save(), has_more })
}

/// Whether anything changed after `cursor` that it has not delivered,
/// including prospects a change query would only reach on a later rescan.
pub(crate) async fn pending(http: &Http, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
    let state = StampCursor::load(cursor)?;
    if state.locator().is_some() {
        // A query in progress has more to give.
        return Ok(true);
    }
    let from = state.pending_from();
    // A fresh feed: any prospect at all is pending.
    let size = if from.is_none() { 1 } else { MAX_PAGE };
    let mut page = page_of(http, &change_query(&position_param(), from, size)).await?;
    loop {
        let rows = std::mem::take(&mut page.rows).into_iter().map(Positioned::of).collect::<Result<Vec<_>, _>>()?;
        if state.any_new(rows.iter().map(|r| (r.stamp, r.key.as_str()))) {
            return Ok(true);
        }
        match page.next.take() {
            Some(token) if from.is_some() => page = next_page(http, &token).await?,
            _ => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use crmsync_domain::Timestamp;

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
    }

    fn rows(ids: &[(i64, i64)]) -> Vec<Positioned> {
        ids.iter().map(|(id, ms)| Positioned { stamp: at(*ms), key: id.to_string(), row: Row::new() }).collect()
    }

    fn keys(rows: &[Positioned]) -> Vec<&str> {
        rows.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn the_change_query_asks_for_deleted_prospects_in_stamp_order_from_a_millisecond() {
        let from = at(123) + chrono::Duration::microseconds(999);
        let call = change_query("id,updatedAt", Some(from), 5_000);
        let q: Vec<(&str, &str)> = call.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            q,
            [
                ("fields", "id,updatedAt"),
                ("orderBy", "updatedAt"),
                ("deleted", "all"),
                ("limit", "1000"),
                ("updatedAtAfterOrEqualTo", "2023-11-14T22:13:20.123Z")
            ]
        );
        assert_eq!(call.path, PROSPECTS_PATH);
        assert!(!change_query("id", None, 0).query.iter().any(|(k, _)| *k == "updatedAtAfterOrEqualTo"));
        assert!(change_query("id", None, 0).query.contains(&("limit", "1".to_owned())));
    }

    #[test]
    fn a_page_is_cut_after_the_last_new_record_that_fits() {
        let cursor = StampCursor::default();
        let (kept, cut_off) = cut(&cursor, rows(&[(1, 1), (2, 2), (3, 3)]), 2);
        assert_eq!(keys(&kept), ["1", "2"]);
        assert!(cut_off);
        let (kept, cut_off) = cut(&cursor, rows(&[(1, 1), (2, 2)]), 2);
        assert_eq!(kept.len(), 2);
        assert!(!cut_off);
    }

    #[test]
    fn a_requery_inside_one_millisecond_still_makes_progress() {
        let overlap = Overlap::new(Duration::from_secs(60));
        let mut cursor = StampCursor::default();
        let (fresh, more) = cursor.accept(rows(&[(1, 5), (2, 5)]), at(100_000), Some(REQUERY.into()), overlap);
        assert_eq!((fresh.len(), more), (2, true));
        assert_eq!(cursor.query_from(), Some(at(5)), "the next query re-reads the millisecond");
        let (kept, cut_off) = cut(&cursor, rows(&[(1, 5), (2, 5), (3, 5), (4, 5)]), 1);
        assert_eq!(keys(&kept), ["1", "2", "3"]);
        assert!(cut_off);
        let (fresh, _) = cursor.accept(kept, at(100_001), Some(REQUERY.into()), overlap);
        assert_eq!(keys(&fresh), ["3"]);
    }

    #[test]
    fn a_late_commit_inside_the_window_is_delivered_on_the_rescan_and_nothing_twice() {
        let overlap = Overlap { window: Duration::from_secs(10), rescan_every: Duration::from_secs(2) };
        let mut cursor = StampCursor::default();
        // The scan reads 1 and 3; prospect 2, stamped between them,
        // commits only after the scan passed it.
        let (fresh, more) = cursor.accept(rows(&[(1, 1_000), (3, 3_000)]), at(4_000), None, overlap);
        assert_eq!((keys(&fresh), more), (vec!["1", "3"], false));
        // A later query from the position: 3 again (passed over), nothing new.
        let (fresh, _) = cursor.accept(rows(&[(3, 3_000)]), at(7_000), None, overlap);
        assert!(fresh.is_empty());
        // The rescan from `settled` finds the late one, and only it.
        assert!(cursor.query_from().unwrap() <= at(2_000), "{:?}", cursor.query_from());
        assert!(cursor.any_new([(at(2_000), "2")]));
        let (fresh, _) = cursor.accept(rows(&[(1, 1_000), (2, 2_000), (3, 3_000)]), at(8_000), None, overlap);
        assert_eq!(keys(&fresh), ["2"]);
        let stored = StampCursor::load(Some(&cursor.save())).unwrap();
        assert!(!stored.any_new([(at(2_000), "2"), (at(3_000), "3")]));
    }
}
