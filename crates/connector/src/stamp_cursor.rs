//! Change feeds for APIs that can only be asked "what changed since T":
//! SOQL on `SystemModstamp`, Account Engagement's `updatedAt`.
//!
//! A record's stamp is set when it is written, but the write may commit a
//! little later (a long transaction): a query that has already passed T can
//! miss a record stamped before T that commits afterwards. The cure is an
//! overlap window: every record is assumed to commit within `overlap` of its
//! stamp (server clock), so everything stamped more than `overlap` before a
//! scan began is visible to that scan. The cursor keeps
//!
//! - `settled`: every record stamped before it has been read;
//! - `pos`: the last record read (stamp, id), where the next query resumes;
//! - `scan_start`: a server time no later than the first query of the
//!   current scan (the scan is the run of queries since the last rescan);
//! - `seen`: the records read with a stamp at or after `settled`, so a rescan
//!   from `settled` passes over what it already delivered;
//! - `locator`: the API's own continuation of the query in progress
//!   (`nextRecordsUrl`, `nextPageToken`).
//!
//! When a scan has caught up, `settled` moves to `scan_start - overlap`, and
//! every `rescan_every` the scan restarts from `settled` to pick up late
//! commits. So a late commit within the window is delivered (at the latest
//! one rescan later), nothing is delivered twice by the feed itself, and
//! `seen` holds only the records of roughly the last `overlap + rescan_every`.
//!
//! A rescan reads again every record of the last `overlap + rescan_every`,
//! almost all of them delivered before: each record is read about five
//! times. So a rescan starts *light*: the feed lists positions only (id and
//! stamp) and hands them to [`StampCursor::pass_over`], which moves over
//! what was delivered and stops before the first record that was not. From
//! there the scan reads records in full again. A light page never leaves
//! the server's locator in the cursor (it continues by querying again from
//! the position), so a replica that does not know light pages, reading the
//! stored cursor during a rolling update, only ever continues a full query.

use std::collections::BTreeMap;
use std::time::Duration;

use crmsync_domain::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{ConnectorError, Cursor};

/// How far back a feed looks for late commits, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// A record commits within this long of its stamp.
    pub window: Duration,
    /// A caught-up scan restarts from `settled` after this long.
    pub rescan_every: Duration,
}

impl Overlap {
    pub fn new(window: Duration) -> Self {
        // Rescanning a quarter-window apart finds a late commit well inside
        // the window, and keeps re-reads to a few per record.
        Overlap { window, rescan_every: window / 4 }
    }
}

/// The state of one change feed over a modification stamp (see the module
/// documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StampCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settled: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pos: Option<(Timestamp, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan_start: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seen: BTreeMap<String, Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    locator: Option<String>,
    /// The scan in progress is a rescan that has met only delivered records
    /// so far: its pages are read light.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    light: bool,
}

/// A record as the feed needs to see it.
pub trait Stamped {
    fn stamp(&self) -> Timestamp;
    fn key(&self) -> &str;
}

impl StampCursor {
    /// The cursor a feed stored (a fresh one when it has none).
    pub fn load(cursor: Option<&Cursor>) -> Result<Self, ConnectorError> {
        match cursor {
            None => Ok(StampCursor::default()),
            Some(c) => serde_json::from_value(c.0.clone())
                .map_err(|e| ConnectorError::Fatal(format!("a stored feed cursor is not a stamp cursor ({e}); reset the feed"))),
        }
    }

    pub fn save(&self) -> Cursor {
        Cursor(serde_json::to_value(self).expect("a stamp cursor serialises"))
    }

    /// Where a new query starts: records stamped at or after this (from the
    /// beginning when `None`). Callers may round it down (an API that takes
    /// whole seconds); records read again are passed over.
    pub fn query_from(&self) -> Option<Timestamp> {
        self.pos.as_ref().map(|(s, _)| *s).or(self.settled)
    }

    /// The continuation of the query in progress, if any.
    pub fn locator(&self) -> Option<&str> {
        self.locator.as_deref()
    }

    /// Whether `record` has already been delivered by this feed.
    fn delivered(&self, stamp: Timestamp, key: &str) -> bool {
        self.settled.is_some_and(|s| stamp < s) || self.seen.get(key) == Some(&stamp)
    }

    /// Takes one page of a query, in (stamp, id) order: returns the records
    /// not delivered before, and whether more are waiting. `query_time` is a
    /// server time no later than when the query was evaluated (for example
    /// the response's `Date` less the round trip); `next_locator` continues
    /// the query, `None` when it is exhausted.
    pub fn accept<T: Stamped>(
        &mut self,
        records: Vec<T>,
        query_time: Timestamp,
        next_locator: Option<String>,
        overlap: Overlap,
    ) -> (Vec<T>, bool) {
        let scan_start = *self.scan_start.get_or_insert(query_time);
        let mut fresh = Vec::with_capacity(records.len());
        for r in records {
            let (stamp, key) = (r.stamp(), r.key().to_owned());
            if self.pos.as_ref().is_none_or(|(s, k)| (stamp, key.as_str()) > (*s, k.as_str())) {
                self.pos = Some((stamp, key.clone()));
            }
            if !self.delivered(stamp, &key) {
                self.seen.insert(key, stamp);
                fresh.push(r);
            }
        }
        let has_more = next_locator.is_some();
        self.locator = next_locator;
        let window = chrono::Duration::from_std(overlap.window).unwrap_or(chrono::Duration::MAX);
        let committed_before = scan_start - window;
        // Everything stamped before this has been read: all of it committed
        // before the scan began, and the scan has passed it.
        let settled = match (&self.pos, has_more) {
            (Some((s, _)), true) => Some(committed_before.min(*s)),
            (None, true) => None,
            (_, false) => Some(committed_before),
        };
        if let Some(settled) = settled
            && self.settled.is_none_or(|s| settled > s)
        {
            self.settled = Some(settled);
            self.seen.retain(|_, s| *s >= settled);
        }
        if !has_more {
            let every = chrono::Duration::from_std(overlap.rescan_every).unwrap_or(chrono::Duration::MAX);
            // Look back over the window for late commits, light; or go on
            // from the position, in full.
            self.light = query_time - scan_start >= every;
            if self.light {
                self.pos = None;
                self.scan_start = None;
            }
        }
        (fresh, has_more)
    }

    /// Whether the next page is to be read light: positions only, taken
    /// with [`pass_over`](Self::pass_over).
    pub fn light(&self) -> bool {
        self.light
    }

    /// Takes one light page (positions in (stamp, id) order, from
    /// `query_from()`): moves over the records delivered before and stops
    /// just before the first that was not, from where the scan goes on in
    /// full. `requery` is the feed's marker for "query again from the
    /// position", the locator a light page leaves instead of `next_locator`.
    /// Returns whether more is waiting.
    pub fn pass_over<T: Stamped>(
        &mut self,
        mut positions: Vec<T>,
        query_time: Timestamp,
        next_locator: Option<String>,
        requery: &str,
        overlap: Overlap,
    ) -> bool {
        let before = self.pos.clone();
        let first_new = positions.iter().position(|r| !self.delivered(r.stamp(), r.key()));
        if let Some(n) = first_new {
            positions.truncate(n);
            self.accept(positions, query_time, Some(requery.to_owned()), overlap);
            self.light = false;
            return true;
        }
        let (_, more) = self.accept(positions, query_time, next_locator.map(|_| requery.to_owned()), overlap);
        if more && self.pos == before {
            // A page's worth of records share the position's stamp (a
            // query from it cannot pass them): the full query's locator can.
            self.light = false;
        }
        more
    }

    /// Whether any of these (stamp, id) pairs, read from `query_from()`
    /// onwards, has not been delivered: the feed has pending changes.
    pub fn any_new<'a>(&self, records: impl IntoIterator<Item = (Timestamp, &'a str)>) -> bool {
        records.into_iter().any(|(stamp, key)| !self.delivered(stamp, key))
    }

    /// Reads again, from `to`, what the cursor may have passed: a signal
    /// (a change event saying that one transaction changed more records
    /// than it could list) tells of changes stamped as early as `to` that
    /// committed only now, later than the overlap window allows for. The
    /// settled point goes back to `to` (never forward) and a light rescan
    /// starts from it: records still at the stamp they were delivered at
    /// are passed over; the others, those delivered before the settled
    /// point had moved past them included, are delivered again (the engine
    /// drops what it already knows). A cursor that has read nothing yet
    /// has nothing to read again.
    pub fn look_back_to(&mut self, to: Timestamp) {
        let Some(settled) = self.settled else { return };
        self.settled = Some(settled.min(to));
        self.pos = None;
        self.scan_start = None;
        self.locator = None;
        self.light = true;
    }

    /// Where a pending check starts: everything not yet settled.
    pub fn pending_from(&self) -> Option<Timestamp> {
        self.settled
    }

    /// How many records the cursor remembers (for metrics and tests).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests;
