//! The prospect change feed as a page source of the kit's [`StampFeed`]:
//! `GET /api/v5/objects/prospects` ordered by `updatedAt`, from
//! `updatedAtAfterOrEqualTo`, deleted prospects included (`deleted=all`: a
//! deletion is a change too), continued through `nextPageToken`. The kit
//! does the paging from the cursor, the overlap window and the rescans.
//!
//! v5 stamps have millisecond precision; a query from a position re-reads
//! that millisecond, and the cursor passes over what it already delivered.
//! A page continued by `nextPageToken` keeps the size of the query it
//! continues, whatever room is left; a token v5 refuses has expired, and
//! the feed starts over from the cursor. Light pages (rescans, pending
//! checks) ask for `id` and `updatedAt` only. Prospects saved last by the
//! engine's MA user are its own writes: a poll that finds only those is
//! idle to the poll gate.
//!
//! [`StampFeed`]: crmsync_connector_kit::StampFeed

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use crmsync_connector_kit::row::{Row, text};
use crmsync_connector_kit::{Call, EndpointKind, Page, PageSize, PageSource};
use crmsync_wire::pardot::{MAX_PAGE, PROSPECTS_PATH, QueryPage};
use crmsync_wire::time;

use crate::fields::{UPDATED_AT, UPDATED_BY, position_param};
use crate::http::{CallError, Http};
use crate::records::positioned;

/// The change query from `from` (stamps at or after it), `limit` a page.
pub(crate) fn change_query(fields: &str, from: Option<DateTime<Utc>>, limit: usize) -> Call {
    let call = Call::get(EndpointKind::Query, PROSPECTS_PATH)
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

/// The feed's name, for its poll turn.
pub(crate) const NAME: &str = "prospects";

/// The prospects' feed, reading the fields `fields` names; `me` is the MA
/// user the engine writes as.
pub(crate) struct ProspectFeed<'a> {
    pub http: &'a Http,
    pub fields: &'a str,
    pub me: &'a str,
}

impl ProspectFeed<'_> {
    async fn page(&self, call: &Call) -> Result<Page<Row>, CallError> {
        let answer = self.http.send(call).await?;
        let page: QueryPage = answer.json()?;
        let records = page.values.into_iter().map(positioned).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { records, next: page.next_page_token, server_time: answer.server_time })
    }

    async fn after(&self, token: &str) -> Result<Page<Row>, CallError> {
        self.page(&Call::get(EndpointKind::Query, PROSPECTS_PATH).query("nextPageToken", token)).await
    }
}

impl PageSource for ProspectFeed<'_> {
    type Record = Row;

    fn name(&self) -> &str {
        NAME
    }

    async fn query(&self, from: Option<DateTime<Utc>>, room: usize) -> Result<Page<Row>, ConnectorError> {
        Ok(self.page(&change_query(self.fields, from, room)).await?)
    }

    async fn resume(&self, token: &str, _room: usize) -> Result<Option<Page<Row>>, ConnectorError> {
        match self.after(token).await {
            Ok(page) => Ok(Some(page)),
            // Tokens expire: start over from the position.
            Err(CallError::Api(f)) if f.status == 400 || f.status == 404 => {
                tracing::debug!(error = %f.summary(), "a nextPageToken was refused; querying again from the cursor");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn positions(&self, from: Option<DateTime<Utc>>, size: PageSize) -> Result<Page<()>, ConnectorError> {
        let limit = if size == PageSize::One { 1 } else { MAX_PAGE };
        Ok(self.page(&change_query(&position_param(), from, limit)).await?.positions_only())
    }

    async fn more_positions(&self, token: &str) -> Result<Page<()>, ConnectorError> {
        Ok(self.after(token).await?.positions_only())
    }

    /// Saved last by the engine's MA user: its own write (I7).
    fn is_own(&self, row: &Row) -> bool {
        text(row, UPDATED_BY).is_some_and(|by| by == self.me)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_change_query_asks_for_deleted_prospects_in_stamp_order_from_a_millisecond() {
        let from = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap() + chrono::Duration::microseconds(999);
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
}
