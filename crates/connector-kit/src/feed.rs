//! The change-feed driver for APIs that can only be asked "what changed
//! since T" (SOQL on `SystemModstamp`, Account Engagement's `updatedAt`),
//! over the connector crate's [`StampCursor`]: paging from the cursor's
//! position with the overlap window that catches late commits, continued
//! through the API's own locator (`nextRecordsUrl`, `nextPageToken`).
//!
//! An API is a [`PageSource`]: its change query from a stamp, its locators,
//! and a light query of positions (key and stamp) only. [`StampFeed`] does
//! the rest, the same for every API:
//!
//! - a call returns at most `limit` records, but APIs page in batches of
//!   their own. When a page holds more new records than the call may
//!   return, it is [`cut`] after the last one returned and the cursor gets
//!   [`REQUERY`] instead of the API's locator: the next call queries again
//!   from the cursor's position, and what it already delivered is passed
//!   over by the cursor. The same happens when a locator has expired;
//! - rescans are read light while they meet only records delivered before,
//!   handed to [`StampCursor::pass_over`];
//! - a feed that caught up a moment ago does not query again before its
//!   [`PollGate`] says so (every poll is an API call); a poll that found
//!   only records the engine wrote itself ([`PageSource::is_own`]) tells
//!   the gate the feed is idle, so the engine's own traffic does not keep
//!   an idle connection polling at the fast pace.

use std::future::Future;
use std::time::Instant;

use crmsync_connector::stamp_cursor::{Overlap, StampCursor, Stamped};
use crmsync_connector::{ChangePage, ConnectorError, Cursor};
use crmsync_domain::Timestamp;

use crate::poll::{PollGate, Polled};

/// A locator meaning "query again from the cursor's position" (the APIs'
/// own locators are paths or opaque tokens, never this word).
pub const REQUERY: &str = "requery";

/// Pages read in one call at most, so a call stays short even when most of
/// what it reads was delivered before.
pub const MAX_PAGES_PER_CALL: usize = 5;

/// A record with its feed position, for the stamp cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Positioned<T> {
    pub stamp: Timestamp,
    /// The record's id, as text.
    pub key: String,
    pub record: T,
}

impl<T> Stamped for Positioned<T> {
    fn stamp(&self) -> Timestamp {
        self.stamp
    }
    fn key(&self) -> &str {
        &self.key
    }
}

/// One page of a change query, in (stamp, key) order.
#[derive(Debug)]
pub struct Page<T> {
    pub records: Vec<Positioned<T>>,
    /// The API's locator of the rest of the query, if any.
    pub next: Option<String>,
    /// A server time no later than when the query was evaluated.
    pub server_time: Timestamp,
}

impl<T> Page<T> {
    /// The page with its records' positions only.
    pub fn positions_only(self) -> Page<()> {
        let records = self.records.into_iter().map(|p| Positioned { stamp: p.stamp, key: p.key, record: () }).collect();
        Page { records, next: self.next, server_time: self.server_time }
    }
}

/// How many positions a light query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// One: whether a fresh feed has anything at all.
    One,
    /// The API's default page: a pending check.
    Default,
    /// The API's largest page: a rescan passing over what it delivered.
    Largest,
}

/// One feed of one API: its change query and its locators.
pub trait PageSource: Sync {
    type Record: Send;

    /// The feed's name, for its poll turn and logs (an object's name).
    fn name(&self) -> &str;

    /// Records stamped at or after `from` (from the start when `None`), in
    /// full; `room` is how many the call can still return, a wish for the
    /// page size.
    fn query(&self, from: Option<Timestamp>, room: usize) -> impl Future<Output = Result<Page<Self::Record>, ConnectorError>> + Send;

    /// The page `locator` continues to, in full; `None` when the API no
    /// longer knows the locator (they expire), so the driver queries again
    /// from the cursor.
    fn resume(&self, locator: &str, room: usize) -> impl Future<Output = Result<Option<Page<Self::Record>>, ConnectorError>> + Send;

    /// Positions only, stamped at or after `from`.
    fn positions(&self, from: Option<Timestamp>, size: PageSize) -> impl Future<Output = Result<Page<()>, ConnectorError>> + Send;

    /// The positions `locator` continues to.
    fn more_positions(&self, locator: &str) -> impl Future<Output = Result<Page<()>, ConnectorError>> + Send;

    /// Whether the engine itself made `record`'s last change (its
    /// integration user did): such a change is not activity for the poll
    /// gate. None is, unless the API says who changed a record.
    fn is_own(&self, _record: &Self::Record) -> bool {
        false
    }
}

/// Keeps the records of a page up to and including the `room`-th one the
/// cursor has not delivered; says whether records were cut off.
pub fn cut<T>(cursor: &StampCursor, mut records: Vec<Positioned<T>>, room: usize) -> (Vec<Positioned<T>>, bool) {
    let mut new = 0;
    let mut keep = records.len();
    for (i, r) in records.iter().enumerate() {
        if cursor.any_new([(r.stamp, r.key.as_str())]) {
            new += 1;
            if new == room {
                keep = i + 1;
                break;
            }
        }
    }
    let cut_off = keep < records.len();
    records.truncate(keep);
    (records, cut_off)
}

/// A change feed over a [`PageSource`].
#[derive(Debug)]
pub struct StampFeed<'a, S> {
    source: &'a S,
    overlap: Overlap,
    polls: Option<&'a PollGate>,
}

impl<'a, S: PageSource> StampFeed<'a, S> {
    pub fn new(source: &'a S, overlap: Overlap) -> Self {
        StampFeed { source, overlap, polls: None }
    }

    /// Caught up, the feed waits for its turn at `polls` before querying.
    pub fn polled_by(self, polls: &'a PollGate) -> Self {
        StampFeed { polls: Some(polls), ..self }
    }

    /// Records changed after `cursor`, at most `limit`.
    pub async fn changes(&self, cursor: Option<&Cursor>, limit: usize) -> Result<ChangePage<S::Record>, ConnectorError> {
        let limit = limit.max(1);
        let mut state = StampCursor::load(cursor)?;
        if let Some(polls) = self.polls
            && state.locator().is_none()
            && !polls.may_poll(self.source.name(), Instant::now())
        {
            // Caught up a moment ago: not worth an API call yet.
            return Ok(ChangePage { records: Vec::new(), next: state.save(), has_more: false });
        }
        let mut out = Vec::new();
        let mut has_more = false;
        // Whether a record someone other than the engine changed came back.
        let mut active = false;
        for _ in 0..MAX_PAGES_PER_CALL {
            if state.light() {
                let page = self.source.positions(state.query_from(), PageSize::Largest).await?;
                has_more = state.pass_over(page.records, page.server_time, page.next, REQUERY, self.overlap);
                if !has_more {
                    break;
                }
                continue;
            }
            let room = limit - out.len();
            let page = self.fetch(&state, room).await?;
            let (records, cut_off) = cut(&state, page.records, room);
            let next = if cut_off { Some(REQUERY.to_owned()) } else { page.next };
            let (fresh, more) = state.accept(records, page.server_time, next, self.overlap);
            active |= fresh.iter().any(|p| !self.source.is_own(&p.record));
            out.extend(fresh.into_iter().map(|p| p.record));
            has_more = more;
            if !has_more || out.len() >= limit {
                break;
            }
        }
        if let Some(polls) = self.polls {
            let how = if has_more {
                Polled::More
            } else if active {
                Polled::Active
            } else {
                Polled::Idle
            };
            polls.polled(self.source.name(), how, Instant::now());
        }
        Ok(ChangePage { records: out, next: state.save(), has_more })
    }

    /// The next full page: where the API's locator leads, or the query
    /// from the cursor's position.
    async fn fetch(&self, state: &StampCursor, room: usize) -> Result<Page<S::Record>, ConnectorError> {
        if let Some(locator) = state.locator()
            && locator != REQUERY
        {
            match self.source.resume(locator, room).await? {
                Some(page) => return Ok(page),
                None => tracing::debug!(feed = self.source.name(), "the query's locator expired; querying again from the cursor"),
            }
        }
        self.source.query(state.query_from(), room).await
    }

    /// Whether anything changed after `cursor` that it has not delivered,
    /// including records a change query would only reach on a later rescan.
    pub async fn pending(&self, cursor: Option<&Cursor>) -> Result<bool, ConnectorError> {
        let state = StampCursor::load(cursor)?;
        if state.locator().is_some() {
            // A query in progress has more to give.
            return Ok(true);
        }
        let from = state.pending_from();
        // A fresh feed: any record at all is pending.
        let size = if from.is_none() { PageSize::One } else { PageSize::Default };
        let mut page = self.source.positions(from, size).await?;
        loop {
            if state.any_new(page.records.iter().map(|p| (p.stamp, p.key.as_str()))) {
                return Ok(true);
            }
            match page.next.take() {
                Some(locator) => page = self.source.more_positions(&locator).await?,
                None => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests;
