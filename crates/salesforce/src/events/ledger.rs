//! What a feed owes the change events it has received, and which replay id
//! the cursor it hands out may carry (I1: a position advances only after
//! what it covers was published with confirms).
//!
//! The replay id travels inside the feed's cursor, which the producer
//! stores only after the page it came with was confirmed. A cursor may
//! carry an event's replay id once it also carries everything the event
//! asked for (see `signal`): the query that began after the event came
//! (the cursor's position, query locator included, continues that query),
//! the records a gap event named (read into the same page), the look back
//! an overflow asked for (in the cursor itself). Then, should the process
//! die, resubscribing after the stored replay id loses nothing.
//!
//! What the ledger keeps is dropped only once the producer hands back the
//! cursor that carried it: the page was published and the cursor stored.
//! A call that gets an older cursor (the publish failed) does it all
//! again: reads the named records again, looks back again.
//!
//! Entries are merged while no call has planned over them, so the ledger
//! holds a few entries, however many events come between two calls.

use std::collections::{BTreeSet, VecDeque};

use crmsync_connector::Cursor;
use crmsync_domain::Timestamp;

use super::signal::Signal;

/// A replay id: opaque bytes, stored and handed back, never compared.
pub(crate) type ReplayId = Vec<u8>;

/// What the events received between two calls ask for, together.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The order it came in (a later event raises it).
    seq: u64,
    /// The last replay id among its events (none: only the catch-up after
    /// a subscription at LATEST).
    replay: Option<ReplayId>,
    /// A query beginning after it came is needed.
    query: bool,
    /// Records to read by id.
    ids: BTreeSet<String>,
    /// How far back the cursor must look.
    look_back: Option<Timestamp>,
}

impl Entry {
    fn absorb(&mut self, other: Entry) {
        self.seq = other.seq;
        self.replay = other.replay.or(self.replay.take());
        self.query |= other.query;
        self.ids.extend(other.ids);
        self.look_back = match (self.look_back, other.look_back) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// What one call of the feed does for the events received before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The last event it answers for.
    upto: u64,
    /// Records to read by id and add to the page.
    pub ids: Vec<String>,
    /// Where the cursor looks back to before the query.
    pub look_back: Option<Timestamp>,
    /// Whether the call must query (changes it owes a query).
    pub query: bool,
}

/// One feed's events, from receipt until a stored cursor carries them.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    seq: u64,
    entries: VecDeque<Entry>,
    /// The last event a call planned over: later ones are not merged into it.
    planned: u64,
    /// The cursor last handed out, and the last event it carries.
    handed: Option<(Cursor, u64)>,
}

impl Ledger {
    /// An event received, with what it asks for.
    pub fn receive(&mut self, replay: ReplayId, signal: &Signal) {
        let (query, ids, look_back) = match signal {
            Signal::Echo => (false, BTreeSet::new(), None),
            Signal::Changed => (true, BTreeSet::new(), None),
            Signal::Gap(ids) => (false, ids.iter().cloned().collect(), None),
            Signal::LookBack(to) => (false, BTreeSet::new(), Some(*to)),
        };
        self.push(Entry { seq: 0, replay: Some(replay), query, ids, look_back });
    }

    /// A subscription started at LATEST: what came before it is read by a
    /// query from the cursor (the catch-up), which later events wait for.
    pub fn catch_up(&mut self) {
        self.push(Entry { seq: 0, replay: None, query: true, ids: BTreeSet::new(), look_back: None });
    }

    fn push(&mut self, mut entry: Entry) {
        self.seq += 1;
        entry.seq = self.seq;
        match self.entries.back_mut() {
            Some(last) if last.seq > self.planned => last.absorb(entry),
            _ => self.entries.push_back(entry),
        }
    }

    /// Plans a call that reads from `cursor`: first drops what `cursor`
    /// carries (it is the one last handed out, so it was stored), then
    /// gathers what the events received so far ask for.
    pub fn plan(&mut self, cursor: Option<&Cursor>) -> Plan {
        if let (Some((handed, carried)), Some(cursor)) = (&self.handed, cursor)
            && handed == cursor
        {
            let carried = *carried;
            self.entries.retain(|e| e.seq > carried);
        }
        self.planned = self.seq;
        let mut ids = BTreeSet::new();
        let mut look_back: Option<Timestamp> = None;
        let mut query = false;
        for e in &self.entries {
            ids.extend(e.ids.iter().cloned());
            look_back = match (look_back, e.look_back) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            query |= e.query || e.look_back.is_some();
        }
        Plan { upto: self.seq, ids: ids.into_iter().collect(), look_back, query }
    }

    /// The call planned by `plan` is done: `fresh` says whether its first
    /// query began after the plan (not a query locator from before). The
    /// cursor `next` the call hands out may carry the replay id returned
    /// (none: no event it covers has one); [`Ledger::handed`] must then be
    /// told what was handed out.
    pub fn covered(&self, plan: &Plan, fresh: bool) -> (u64, Option<ReplayId>) {
        let mut carried = 0;
        let mut replay = None;
        for e in self.entries.iter().take_while(|e| e.seq <= plan.upto) {
            // Named records were read and the look back applied by the
            // call; a change needs a query that began after it came.
            if e.query && !fresh {
                break;
            }
            carried = e.seq;
            if e.replay.is_some() {
                replay.clone_from(&e.replay);
            }
        }
        (carried, replay)
    }

    /// The cursor handed out, carrying the events up to `carried`.
    pub fn handed(&mut self, cursor: Cursor, carried: u64) {
        self.handed = Some((cursor, carried));
    }

    /// Whether an event received is still owed a query: the feed must
    /// query again soon (the next call began within an older query).
    pub fn owes_query(&self, carried: u64) -> bool {
        self.entries.iter().any(|e| e.seq > carried && (e.query || e.look_back.is_some()))
    }
}

#[cfg(test)]
mod tests;
