//! The producer's cheap look at its connections (issue 29, "idle cost").
//!
//! A full poll used to run a pass over every connection every
//! `producer.poll_interval_ms`: take the connection's pass lease (an
//! UPDATE), load its settings, take each feed's lease (an UPDATE each) and
//! read a page of each feed (a SELECT each): some 14 statements per
//! connection per poll, nearly all of them writes, finding nothing. At
//! 100 idle connections that was 790 PostgreSQL transactions a second, and
//! at 1,000 half a core of PostgreSQL and a third of one in the producer.
//!
//! A connection whose systems are all sandbox tenants is now looked at
//! set-based instead: every connection's state is read in one statement
//! (and only again when the table's mark moves, see
//! [`Connections::refresh`]), every feed's stored cursor in one, and
//! whether each feed has rows past its cursor in one more, a single
//! statement over every table ([`crmsync_sandbox::pending`]). Only a
//! connection with something to read gets a pass, and with it leases and
//! settings. The answer is exact, not a heuristic: a sandbox cursor is a
//! (transaction id, row id) position and "rows past it" is the same
//! condition its page reads, so a feed found with nothing pending has
//! nothing a pass would read. A row held back behind a transaction still
//! running counts as pending; the pass then reads nothing and the
//! connection is looked at again a poll interval later, until it has been
//! read (the late commit is never skipped, I1).
//!
//! A connection with a system reached over a real API is not looked at
//! here: its feeds keep their own pace and back-off (`PollGate`) and are
//! visited every poll as before.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use crmsync_connector::Cursor;
use crmsync_domain::settings::ConnectionSettings;
use crmsync_sandbox::pending::{self, Probe};
use crmsync_store::{connections, feeds};
use sqlx::PgPool;

use crate::feed::Feed;

/// A connection as the producer last read it.
#[derive(Debug)]
pub(crate) struct Known {
    pub id: String,
    pub paused: bool,
    updated_at: DateTime<Utc>,
    /// Its settings and feeds, when every feed reads a sandbox tenant (and
    /// the settings parse): such a connection is looked at set-based.
    sandbox: Option<(ConnectionSettings, Vec<Feed>)>,
}

impl Known {
    /// Its feeds, when it is looked at set-based.
    pub fn sandbox_feeds(&self) -> Option<&[Feed]> {
        self.sandbox.as_ref().map(|(_, f)| f.as_slice())
    }
}

/// Every connection, as of the last read.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    pub list: Vec<Known>,
    mark: Option<(i64, Option<DateTime<Utc>>)>,
}

impl Connections {
    /// Reads every connection again (one statement). Returns the ids of
    /// those that are new or changed since the last read.
    pub async fn reload(&mut self, pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
        let mark = connections::version(pool).await?;
        let before: HashMap<String, DateTime<Utc>> = self.list.iter().map(|k| (k.id.clone(), k.updated_at)).collect();
        self.list = connections::load_all_states(pool)
            .await?
            .into_iter()
            .map(|c| {
                let sandbox = c.settings.ok().and_then(|settings| {
                    let feeds = Feed::for_connection(&settings);
                    feeds.iter().all(|f| f.sandbox(&settings).is_some()).then_some((settings, feeds))
                });
                Known { id: c.id, paused: c.paused, updated_at: c.updated_at, sandbox }
            })
            .collect();
        self.mark = Some(mark);
        Ok(self.list.iter().filter(|k| before.get(&k.id) != Some(&k.updated_at)).map(|k| k.id.clone()).collect())
    }

    /// Reads every connection again if the table's mark (count and latest
    /// change) moved since the last read: one small aggregate otherwise.
    /// A created, re-configured, paused or resumed connection is seen at
    /// the next poll, not the next safety poll. (Two changes committed out
    /// of order can leave the mark still; the safety poll's reload catches
    /// those.)
    pub async fn refresh(&mut self, pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
        if self.mark.is_some() && self.mark == Some(connections::version(pool).await?) {
            return Ok(HashSet::new());
        }
        self.reload(pool).await
    }
}

/// Which of the `wanted` feeds have changes to read, by connection (feed
/// names): three statements whatever the number of connections and feeds
/// (the cursors from the engine's database, one look into the sandbox's).
pub(crate) async fn pending_feeds(
    engine: &PgPool,
    sandbox: &PgPool,
    wanted: &[(&Known, Vec<&Feed>)],
) -> anyhow::Result<BTreeMap<String, HashSet<String>>> {
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let ids: Vec<String> = wanted.iter().map(|(k, _)| k.id.clone()).collect();
    let cursors: HashMap<(String, String), Cursor> = feeds::cursors(engine, &ids)
        .await?
        .into_iter()
        .filter_map(|(connection, feed, cursor)| cursor.map(|c| ((connection, feed), Cursor(c))))
        .collect();
    let mut names = Vec::new();
    let mut probes = Vec::new();
    for (known, feeds) in wanted {
        let Some((settings, _)) = &known.sandbox else { continue };
        for feed in feeds {
            let Some((object, tenant)) = feed.sandbox(settings) else { continue };
            let name = feed.name();
            let cursor = cursors.get(&(known.id.clone(), name.clone()));
            probes.push(Probe { object, tenant, cursor });
            names.push((known.id.as_str(), name));
        }
    }
    let answers = pending::pending(sandbox, &probes).await?;
    let mut out: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for ((id, name), pending) in names.into_iter().zip(answers) {
        if pending {
            out.entry(id.to_owned()).or_default().insert(name);
        }
    }
    Ok(out)
}
