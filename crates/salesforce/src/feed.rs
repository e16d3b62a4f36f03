//! Change feeds over `SystemModstamp` with the connector crate's
//! [`StampCursor`]: `queryAll` (so deletions arrive as `IsDeleted = true`)
//! ordered by stamp and id, continued through `nextRecordsUrl` (the
//! cursor's locator), with the overlap window that catches late commits.
//!
//! A call returns at most `limit` records, but the API pages in batches of
//! at least 200. When a page holds more new records than the call may
//! return, the page is cut after the last one returned and the cursor gets
//! [`REQUERY`] instead of the server's locator: the next call queries again
//! from the cursor's position, and what it already delivered is passed over
//! by the cursor. The same happens when a locator has expired.
//!
//! Rescans are read light while they meet only records delivered before:
//! `Id` and `SystemModstamp`, in pages of the API's largest size, handed
//! to [`StampCursor::pass_over`].

use std::time::Instant;

use crmsync_connector::stamp_cursor::{Overlap, StampCursor};
use crmsync_connector::{ChangePage, ConnectorError, Cursor};
use crmsync_wire::salesforce::codes;
use crmsync_wire::soql::Query;

use crate::errors::CallError;
use crate::fields::{ID, SYSTEM_MODSTAMP};
use crate::http::Http;
use crate::poll::PollGate;
use crate::query::{self, Page};
use crate::records::{self, Positioned, Row};

/// A locator meaning "query again from the cursor's position" (the server's
/// own locators are paths, so they never look like this).
pub(crate) const REQUERY: &str = "requery";

/// Pages read in one call at most, so a call stays short even when most of
/// what it reads was delivered before.
const MAX_PAGES_PER_CALL: usize = 5;

/// Rows in a light page: the API's largest batch.
const LIGHT_PAGE: usize = 2_000;

/// One object's feed: what to select and how a row becomes a record.
pub(crate) struct Feed<'a, T> {
    pub sobject: &'a str,
    pub select: &'a [String],
    pub convert: &'a (dyn Fn(&Row) -> Result<T, ConnectorError> + Sync),
}

/// Keeps the rows of a page up to and including the `room`-th one the
/// cursor has not delivered; says whether rows were cut off.
pub(crate) fn cut<T>(cursor: &StampCursor, rows: Vec<Positioned<T>>, room: usize) -> (Vec<Positioned<T>>, bool) {
    let mut new = 0;
    let mut keep = rows.len();
    for (i, r) in rows.iter().enumerate() {
        if cursor.any_new([(r.stamp, r.id.as_str())]) {
            new += 1;
            if new == room {
                keep = i + 1;
                break;
            }
        }
    }
    let cut_off = keep < rows.len();
    let mut rows = rows;
    rows.truncate(keep);
    (rows, cut_off)
}

async fn fetch(http: &Http, feed_sobject: &str, select: &[String], cursor: &StampCursor, room: usize) -> Result<Page, ConnectorError> {
    let batch = Some(room);
    let fresh = |from| query::change_query(select, feed_sobject, from);
    match cursor.locator() {
        Some(locator) if locator != REQUERY => match query::next_page(http, locator, batch).await {
            Ok(page) => Ok(page),
            // Locators expire (15 minutes): start over from the position.
            Err(CallError::Api(f)) if f.has_code(codes::INVALID_QUERY_LOCATOR) => {
                tracing::debug!(object = feed_sobject, "query locator expired; querying again from the cursor");
                Ok(query::first_page(http, &fresh(cursor.query_from()), true, batch).await?)
            }
            Err(e) => Err(e.into()),
        },
        _ => Ok(query::first_page(http, &fresh(cursor.query_from()), true, batch).await?),
    }
}

/// Records changed after `cursor`, at most `limit`.
pub(crate) async fn changes<T>(
    http: &Http,
    feed: &Feed<'_, T>,
    cursor: Option<&Cursor>,
    limit: usize,
    overlap: Overlap,
    gate: &PollGate,
) -> Result<ChangePage<T>, ConnectorError> {
    let limit = limit.max(1);
    let mut state = StampCursor::load(cursor)?;
    if state.locator().is_none() && !gate.may_poll(feed.sobject, Instant::now()) {
        // Caught up a moment ago: not worth an API call yet.
        return Ok(ChangePage { records: Vec::new(), next: state.save(), has_more: false });
    }
    let mut out = Vec::new();
    let mut has_more = false;
    for _ in 0..MAX_PAGES_PER_CALL {
        if state.light() {
            has_more = pass_over(http, feed.sobject, &mut state, overlap).await?;
            if !has_more {
                break;
            }
            continue;
        }
        let room = limit - out.len();
        let page = fetch(http, feed.sobject, feed.select, &state, room).await?;
        let rows = page
            .records
            .iter()
            .map(|row| {
                let (id, stamp) = records::id_and_stamp(row, feed.sobject)?;
                Ok(Positioned { stamp, id, record: (feed.convert)(row)? })
            })
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        let (rows, cut_off) = cut(&state, rows, room);
        let next = if cut_off { Some(REQUERY.to_owned()) } else { page.next };
        let (fresh, more) = state.accept(rows, page.server_time, next, overlap);
        out.extend(fresh.into_iter().map(|p| p.record));
        has_more = more;
        if !has_more || out.len() >= limit {
            break;
        }
    }
    gate.polled(feed.sobject, has_more, Instant::now());
    Ok(ChangePage { records: out, next: state.save(), has_more })
}

/// Reads one light page of a rescan into `state`; returns whether more is
/// waiting.
async fn pass_over(http: &Http, sobject: &str, state: &mut StampCursor, overlap: Overlap) -> Result<bool, ConnectorError> {
    let select = [ID.to_owned(), SYSTEM_MODSTAMP.to_owned()];
    let page = query::first_page(http, &query::change_query(&select, sobject, state.query_from()), true, Some(LIGHT_PAGE)).await?;
    let positions = page
        .records
        .iter()
        .map(|row| records::id_and_stamp(row, sobject).map(|(id, stamp)| Positioned { stamp, id, record: () }))
        .collect::<Result<Vec<_>, ConnectorError>>()?;
    Ok(state.pass_over(positions, page.server_time, page.next, REQUERY, overlap))
}

/// Whether anything changed after `cursor` that it has not delivered,
/// including records a change query would only reach on a later rescan.
pub(crate) async fn pending(http: &Http, sobject: &str, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
    let state = StampCursor::load(cursor)?;
    if state.locator().is_some() {
        // A query in progress has more to give.
        return Ok(true);
    }
    let select = [ID.to_owned(), SYSTEM_MODSTAMP.to_owned()];
    let from = state.pending_from();
    let mut q: Query = query::change_query(&select, sobject, from);
    if from.is_none() {
        // A fresh feed: any record at all is pending.
        q = q.limit(1);
    }
    let mut page = query::first_page(http, &q, true, None).await?;
    loop {
        let pairs = page.records.iter().map(|row| records::id_and_stamp(row, sobject)).collect::<Result<Vec<_>, ConnectorError>>()?;
        if state.any_new(pairs.iter().map(|(id, stamp)| (*stamp, id.as_str()))) {
            return Ok(true);
        }
        match page.next.take() {
            Some(next) => page = query::next_page(http, &next, None).await?,
            None => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};
    use crmsync_domain::Timestamp;

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
    }

    fn rows(ids: &[(&str, i64)]) -> Vec<Positioned<()>> {
        ids.iter().map(|(id, ms)| Positioned { stamp: at(*ms), id: (*id).to_owned(), record: () }).collect()
    }

    #[test]
    fn a_page_is_cut_after_the_last_new_record_that_fits() {
        let cursor = StampCursor::default();
        let (kept, cut_off) = cut(&cursor, rows(&[("a", 1), ("b", 2), ("c", 3)]), 2);
        assert_eq!(kept.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(cut_off);
        let (kept, cut_off) = cut(&cursor, rows(&[("a", 1), ("b", 2)]), 2);
        assert_eq!(kept.len(), 2);
        assert!(!cut_off);
    }

    #[test]
    fn records_delivered_before_do_not_use_up_the_room() {
        let overlap = Overlap::new(Duration::from_secs(60));
        let mut cursor = StampCursor::default();
        // "a" and "b" delivered; the query was cut, so the next one starts over.
        let (fresh, more) = cursor.accept(rows(&[("a", 1), ("b", 1)]), at(100_000), Some(REQUERY.into()), overlap);
        assert_eq!((fresh.len(), more), (2, true));
        assert_eq!(cursor.locator(), Some(REQUERY));
        assert_eq!(cursor.query_from(), Some(at(1)));
        // The re-query returns them again, with two more in the same millisecond.
        let (kept, cut_off) = cut(&cursor, rows(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]), 1);
        assert_eq!(kept.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(cut_off);
        let (fresh, _) = cursor.accept(kept, at(100_001), Some(REQUERY.into()), overlap);
        assert_eq!(fresh.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["c"], "progress even inside one millisecond");
    }

    #[test]
    fn a_cursor_survives_storage_with_the_requery_marker() {
        let overlap = Overlap::new(Duration::from_secs(60));
        let mut cursor = StampCursor::default();
        cursor.accept(rows(&[("a", 1)]), at(100_000), Some(REQUERY.into()), overlap);
        let back = StampCursor::load(Some(&cursor.save())).unwrap();
        assert_eq!(back.locator(), Some(REQUERY));
        assert!(!back.any_new([(at(1), "a")]));
    }
}
