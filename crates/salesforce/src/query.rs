//! SOQL: the queries the connector sends (built with the wire crate's AST,
//! so literals are escaped by one tested printer), `IN` lists cut into
//! chunks that keep a query short, and paging through `nextRecordsUrl`.

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::row::Row;
use crmsync_connector_kit::{Answer, Call, EndpointKind};
use crmsync_domain::{CrmId, Timestamp};
use crmsync_wire::salesforce::{QUERY_OPTIONS_HEADER, QueryResult};
use crmsync_wire::soql::{Cond, Literal, Op, Order, Query};

use crate::fields::{ID, SYSTEM_MODSTAMP};
use crate::http::{CallError, Http};

/// At most this many values in one `IN` list.
pub(crate) const IN_MAX_VALUES: usize = 200;
/// And at most about this many characters of them: a query travels in the
/// URL of a GET, and servers and proxies cap URLs at a few kilobytes.
pub(crate) const IN_MAX_CHARS: usize = 4_000;

/// Cuts `values` into `IN` lists of at most `max_values` values and about
/// `max_chars` characters each, dropping duplicates and blanks.
pub(crate) fn chunk_values(values: &[String], max_values: usize, max_chars: usize) -> Vec<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut chars = 0;
    for v in values {
        if v.trim().is_empty() || !seen.insert(v.as_str()) {
            continue;
        }
        // Quotes and the separator count too.
        let cost = v.len() + 4;
        match out.last_mut() {
            Some(chunk) if chunk.len() < max_values && chars + cost <= max_chars => {
                chunk.push(v.clone());
                chars += cost;
            }
            _ => {
                out.push(vec![v.clone()]);
                chars = cost;
            }
        }
    }
    out
}

/// An id in its 18-character form (the API accepts both, but results carry
/// 18 and the cursor compares texts); other text as given.
pub(crate) fn normalise_id(value: &str) -> String {
    CrmId::parse(value).map_or_else(|_| value.trim().to_owned(), |id| id.to_string())
}

/// `SELECT select FROM sobject WHERE field IN (...) [AND extra]`, one query
/// per chunk of values.
pub(crate) fn in_queries(select: &[String], sobject: &str, field: &str, values: &[String], extra: Option<&Cond>) -> Vec<Query> {
    chunk_values(values, IN_MAX_VALUES, IN_MAX_CHARS)
        .into_iter()
        .map(|chunk| {
            let q = Query::select(select.iter().cloned(), sobject).and_where(Cond::is_in(field, chunk.into_iter().map(Literal::Str)));
            match extra {
                Some(c) => q.and_where(c.clone()),
                None => q,
            }
        })
        .collect()
}

/// The change query: records stamped at or after `from`, in stamp order
/// (then id, so a page boundary inside one millisecond is well defined).
pub(crate) fn change_query(select: &[String], sobject: &str, from: Option<Timestamp>) -> Query {
    let q = Query::select(select.iter().cloned(), sobject);
    let q = match from {
        Some(t) => q.and_where(Cond::cmp(SYSTEM_MODSTAMP, Op::Ge, Literal::DateTime(t))),
        None => q,
    };
    q.order_by(SYSTEM_MODSTAMP, Order::Asc).order_by(ID, Order::Asc)
}

/// One page of query results.
#[derive(Debug)]
pub(crate) struct Rows {
    pub records: Vec<Row>,
    /// `nextRecordsUrl`: the rest of the query, if any.
    pub next: Option<String>,
    /// A server time no later than when the query was evaluated.
    pub server_time: Timestamp,
}

fn batch_header(call: Call, batch: Option<usize>) -> Call {
    match batch {
        // The API takes 200 to 2,000; a smaller wish still gets 200.
        Some(n) => call.header(QUERY_OPTIONS_HEADER, format!("batchSize={}", n.clamp(200, 2_000))),
        None => call,
    }
}

fn page_of(answer: &Answer) -> Result<Rows, CallError> {
    let r: QueryResult = answer.json()?;
    let next = if r.done { None } else { r.next_records_url };
    Ok(Rows { records: r.records, next, server_time: answer.server_time })
}

/// Runs a query: `queryAll` (deleted records included) when `all`.
pub(crate) async fn first_page(http: &Http, q: &Query, all: bool, batch: Option<usize>) -> Result<Rows, CallError> {
    let call = Call::get(EndpointKind::Query, http.api().data_path(if all { "queryAll" } else { "query" })).query("q", q.to_string());
    page_of(&http.send(&batch_header(call, batch)).await?)
}

/// The next page of a query, from its `nextRecordsUrl`.
pub(crate) async fn next_page(http: &Http, locator: &str, batch: Option<usize>) -> Result<Rows, CallError> {
    // The locator is the server's; it must stay a path on the same API.
    if !locator.starts_with("/services/data/") || locator.contains("..") || locator.contains('?') {
        return Err(CallError::Connector(ConnectorError::Fatal(format!("unexpected nextRecordsUrl {locator:?}"))));
    }
    page_of(&http.send(&batch_header(Call::get(EndpointKind::Query, locator), batch)).await?)
}

/// Every record a query returns, following `nextRecordsUrl`.
pub(crate) async fn all_rows(http: &Http, q: &Query, all: bool) -> Result<Vec<Row>, ConnectorError> {
    let mut page = first_page(http, q, all, None).await?;
    let mut rows = std::mem::take(&mut page.records);
    while let Some(next) = page.next.take() {
        page = next_page(http, &next, None).await?;
        rows.append(&mut page.records);
    }
    Ok(rows)
}

/// Every record of several queries (the chunks of one look-up).
pub(crate) async fn all_rows_of(http: &Http, queries: &[Query], all: bool) -> Result<Vec<Row>, ConnectorError> {
    let mut rows = Vec::new();
    for q in queries {
        rows.extend(all_rows(http, q, all).await?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn values_are_chunked_by_count_and_by_length_without_duplicates() {
        let ids: Vec<String> = (0..450).map(|i| format!("v{i:03}")).collect();
        let chunks = chunk_values(&ids, 200, 100_000);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [200, 200, 50]);
        let long: Vec<String> = (0..10).map(|i| format!("{i}{}", "x".repeat(95))).collect();
        let chunks = chunk_values(&long, 200, 400);
        assert!(chunks.iter().all(|c| c.len() <= 4 && !c.is_empty()), "{:?}", chunks.iter().map(Vec::len).collect::<Vec<_>>());
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 10);
        let dup = vec!["a".to_owned(), "a".to_owned(), " ".to_owned(), "b".to_owned()];
        assert_eq!(chunk_values(&dup, 200, 4_000), vec![vec!["a".to_owned(), "b".to_owned()]]);
        assert!(chunk_values(&[], 200, 4_000).is_empty());
    }

    #[test]
    fn fifteen_character_ids_are_normalised() {
        assert_eq!(normalise_id("001A0000006Vm9r"), "001A0000006Vm9rIAC");
        assert_eq!(normalise_id("001A0000006Vm9rIAC"), "001A0000006Vm9rIAC");
        assert_eq!(normalise_id("jane@example.com"), "jane@example.com");
    }

    #[test]
    fn change_queries_order_by_stamp_then_id_from_the_cursor() {
        let select = ["Id".to_owned(), "SystemModstamp".to_owned(), "Email".to_owned()];
        let from = Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap() + chrono::Duration::milliseconds(123);
        assert_eq!(
            change_query(&select, "Lead", Some(from)).to_string(),
            "SELECT Id, SystemModstamp, Email FROM Lead WHERE SystemModstamp >= 2024-05-01T10:20:30.123Z ORDER BY SystemModstamp ASC, Id ASC"
        );
        assert_eq!(
            change_query(&select, "Contact", None).to_string(),
            "SELECT Id, SystemModstamp, Email FROM Contact ORDER BY SystemModstamp ASC, Id ASC"
        );
    }

    #[test]
    fn look_ups_are_in_lists_with_escaped_literals() {
        let select = ["Id".to_owned()];
        let live = Cond::cmp("IsDeleted", Op::Eq, Literal::Bool(false));
        let qs = in_queries(&select, "Contact", "Email", &["o'brien@example.com".to_owned(), "a@example.com".to_owned()], Some(&live));
        assert_eq!(qs.len(), 1);
        let text = qs[0].to_string();
        assert_eq!(text, r"SELECT Id FROM Contact WHERE Email IN ('o\'brien@example.com', 'a@example.com') AND IsDeleted = false");
        // What the sandbox server parses back is what was meant.
        assert_eq!(crmsync_wire::soql::parse(&text).unwrap(), qs[0]);
        let many: Vec<String> = (0..401).map(|i| format!("00Q5g00000A{i:04}")).collect();
        assert_eq!(in_queries(&select, "Lead", "Id", &many, None).len(), 3);
    }
}
