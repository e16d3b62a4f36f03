//! What a benchmark run cost in API calls (I8: the customer's API
//! allowance is money): per system and endpoint kind, read from the counts
//! every call to a real API is admitted against (`crmsync_systems::
//! allowance`, in Redis under the run's prefix), as the difference between
//! a snapshot before the run and one after it. The sandbox server's own
//! count of the calls it answered is the check on these (backfill table).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crmsync_domain::merge::Side;
use crmsync_infra::Config;
use crmsync_systems::allowance::{ApiAllowances, system_name};

/// Calls per system (`crm`, `ma`), per endpoint kind.
pub type Calls = BTreeMap<String, BTreeMap<String, u64>>;

/// The connection's calls of the last 24 hours, per system and kind.
pub async fn snapshot(config: &Config) -> anyhow::Result<Calls> {
    snapshot_of(config, "default").await
}

/// `connection_id`'s calls of the last 24 hours, per system and kind.
pub async fn snapshot_of(config: &Config, connection_id: &str) -> anyhow::Result<Calls> {
    let allowances = ApiAllowances::new(&config.redis);
    let mut out = Calls::new();
    for side in [Side::Crm, Side::Ma] {
        let u = allowances.usage(connection_id, side, None).await?;
        out.insert(system_name(side).to_owned(), u.by_kind);
    }
    Ok(out)
}

/// The calls made between two snapshots.
pub fn since(after: &Calls, before: &Calls) -> Calls {
    after
        .iter()
        .map(|(system, kinds)| {
            let was = before.get(system);
            let kinds = kinds
                .iter()
                .map(|(k, n)| (k.clone(), n.saturating_sub(was.and_then(|w| w.get(k)).copied().unwrap_or(0))))
                .filter(|(_, n)| *n > 0)
                .collect();
            (system.clone(), kinds)
        })
        .collect()
}

/// Kinds that are API requests (change-event subscriptions are not: they
/// draw on the org's event allocation).
fn is_request(kind: &str) -> bool {
    kind != "events" && kind != "auth"
}

/// API requests of one system.
pub fn requests(calls: &Calls, system: &str) -> u64 {
    calls.get(system).map_or(0, |k| k.iter().filter(|(k, _)| is_request(k)).map(|(_, n)| n).sum())
}

/// API requests of both systems per 1,000 of `per` (records, edits).
pub fn per_thousand(calls: &Calls, per: u64) -> f64 {
    (requests(calls, "crm") + requests(calls, "ma")) as f64 * 1000.0 / per.max(1) as f64
}

const KINDS: [&str; 6] = ["query", "write", "bulk", "import", "other", "events"];

/// A Markdown table of `rows` (each row's own cells under `keys`, then its
/// calls and what they are per): per system, the requests per 1,000 and
/// the split per kind.
pub fn table<'a>(s: &mut String, what: &str, keys: &[&str], rows: impl IntoIterator<Item = (Vec<String>, &'a Calls, u64)>) {
    let _ = writeln!(s, "API calls per 1,000 {what}, per system (events are subscriptions, not API requests):\n");
    let kind_cells = KINDS.iter().map(|k| format!("{k} (CRM / MA)")).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(s, "| {} | CRM | MA | both | {kind_cells} |", keys.join(" | "));
    let _ = writeln!(s, "|{}{}", "---|".repeat(keys.len()), "---:|".repeat(3 + KINDS.len()));
    for (cells, calls, per) in rows {
        let k = |n: u64| format!("{:.1}", n as f64 * 1000.0 / per.max(1) as f64);
        let of = |system: &str, kind: &str| calls.get(system).and_then(|c| c.get(kind)).copied().unwrap_or(0);
        let kinds = KINDS.iter().map(|kind| format!("{} / {}", k(of("crm", kind)), k(of("ma", kind)))).collect::<Vec<_>>().join(" | ");
        let _ = writeln!(
            s,
            "| {} | {} | {} | **{:.1}** | {kinds} |",
            cells.join(" | "),
            k(requests(calls, "crm")),
            k(requests(calls, "ma")),
            per_thousand(calls, per)
        );
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(entries: &[(&str, &str, u64)]) -> Calls {
        let mut c = Calls::new();
        for (system, kind, n) in entries {
            c.entry((*system).to_owned()).or_default().insert((*kind).to_owned(), *n);
        }
        c
    }

    #[test]
    fn a_run_costs_what_its_snapshots_differ_by_and_events_are_not_requests() {
        let before = calls(&[("crm", "query", 10), ("ma", "write", 3)]);
        let after = calls(&[("crm", "query", 25), ("crm", "events", 4), ("ma", "write", 3), ("ma", "import", 2)]);
        let run = since(&after, &before);
        assert_eq!(run, calls(&[("crm", "query", 15), ("crm", "events", 4), ("ma", "import", 2)]));
        assert_eq!(requests(&run, "crm"), 15);
        assert!((per_thousand(&run, 17_000) - 1.0).abs() < 1e-9);
        let mut s = String::new();
        table(&mut s, "records", &["mode"], [(vec!["http".to_owned()], &run, 17_000)]);
        assert!(s.contains("| http | 0.9 | 0.1 | **1.0** | 0.9 / 0.0 |"), "{s}");
    }
}
