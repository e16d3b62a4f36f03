//! An object's change feed as a page source of the kit's [`StampFeed`]:
//! `queryAll` (so deletions arrive as `IsDeleted = true`) on
//! `SystemModstamp`, ordered by stamp and id, continued through
//! `nextRecordsUrl`. The kit does the paging from the cursor, the overlap
//! window and the rescans.
//!
//! The API pages in batches of 200 to 2,000, asked for with
//! `Sforce-Query-Options: batchSize`; a query locator expires after 15
//! minutes (`INVALID_QUERY_LOCATOR`), and the feed then starts over from the
//! cursor. Light pages (rescans, pending checks) select `Id` and
//! `SystemModstamp` only; a pending check of a feed woken by change events
//! also `LastModifiedById`, to pass over the engine's own writes, which
//! such a feed does not read (their events wake nothing), so that they do
//! not look like unread changes forever.
//!
//! [`StampFeed`]: crmsync_connector_kit::StampFeed

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::row::{Row, text};
use crmsync_connector_kit::{Page, PageSize, PageSource, Positioned};
use crmsync_domain::Timestamp;
use crmsync_wire::salesforce::codes;

use crate::fields::{ID, LAST_MODIFIED_BY, SYSTEM_MODSTAMP};
use crate::http::{CallError, Http};
use crate::query::{self, Rows};
use crate::records;

/// Rows in a light page of a rescan: the API's largest batch.
const LIGHT_PAGE: usize = 2_000;

/// One object's feed: what to select and how a row becomes a record.
pub(crate) struct SoqlFeed<'a, T> {
    pub http: &'a Http,
    pub sobject: &'a str,
    pub select: &'a [String],
    pub convert: &'a (dyn Fn(&Row) -> Result<T, ConnectorError> + Sync),
    /// Whether the engine's integration user saved the record last.
    pub own: &'a (dyn Fn(&T) -> bool + Sync),
    /// In pending checks, rows this user saved last are not pending.
    pub pending_skips: Option<&'a str>,
}

impl<T> SoqlFeed<'_, T> {
    /// A page of rows as records with their positions.
    fn positioned<R>(&self, rows: Rows, record: impl Fn(&Row) -> Result<R, ConnectorError>) -> Result<Page<R>, ConnectorError> {
        let records = rows
            .records
            .iter()
            .map(|row| {
                let (key, stamp) = records::id_and_stamp(row, self.sobject)?;
                Ok(Positioned { stamp, key, record: record(row)? })
            })
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        Ok(Page { records, next: rows.next, server_time: rows.server_time })
    }

    fn full(&self, rows: Rows) -> Result<Page<T>, ConnectorError> {
        self.positioned(rows, self.convert)
    }

    fn light(&self, rows: Rows) -> Result<Page<()>, ConnectorError> {
        self.positioned(rows, |_| Ok(()))
    }

    fn position_select() -> Vec<String> {
        vec![ID.to_owned(), SYSTEM_MODSTAMP.to_owned()]
    }

    /// A pending check's page: positions, less the rows `pending_skips`
    /// saved last.
    fn pending_page(&self, mut rows: Rows) -> Result<Page<()>, ConnectorError> {
        if let Some(me) = self.pending_skips {
            rows.records.retain(|row| text(row, LAST_MODIFIED_BY).as_deref() != Some(me));
        }
        self.light(rows)
    }
}

impl<T: Send> PageSource for SoqlFeed<'_, T> {
    type Record = T;

    fn name(&self) -> &str {
        self.sobject
    }

    async fn query(&self, from: Option<Timestamp>, room: usize) -> Result<Page<T>, ConnectorError> {
        let q = query::change_query(self.select, self.sobject, from);
        self.full(query::first_page(self.http, &q, true, Some(room)).await?)
    }

    async fn resume(&self, locator: &str, room: usize) -> Result<Option<Page<T>>, ConnectorError> {
        match query::next_page(self.http, locator, Some(room)).await {
            Ok(rows) => Ok(Some(self.full(rows)?)),
            // Locators expire (15 minutes): start over from the position.
            Err(CallError::Api(f)) if f.has_code(codes::INVALID_QUERY_LOCATOR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn positions(&self, from: Option<Timestamp>, size: PageSize) -> Result<Page<()>, ConnectorError> {
        let mut select = Self::position_select();
        // Pending checks of a feed that has read before (not a rescan's
        // light pages, which must meet every record, nor a fresh feed's one
        // row) may pass over the engine's own writes.
        let pending = size == PageSize::Default && self.pending_skips.is_some();
        if pending {
            select.push(LAST_MODIFIED_BY.to_owned());
        }
        let q = query::change_query(&select, self.sobject, from);
        let (q, batch) = match size {
            PageSize::One => (q.limit(1), None),
            PageSize::Default => (q, None),
            PageSize::Largest => (q, Some(LIGHT_PAGE)),
        };
        let rows = query::first_page(self.http, &q, true, batch).await?;
        if pending { self.pending_page(rows) } else { self.light(rows) }
    }

    /// Only pending checks page on.
    async fn more_positions(&self, locator: &str) -> Result<Page<()>, ConnectorError> {
        self.pending_page(query::next_page(self.http, locator, None).await?)
    }

    fn is_own(&self, record: &T) -> bool {
        (self.own)(record)
    }
}
