//! The sequencer: turns captured changes of committed transactions into
//! events with replay ids.
//!
//! Each round takes the sequencer row's lock (so sequencers take turns),
//! reads the changes of transactions that have committed (the only ones
//! its snapshot sees), numbers their events after every event numbered
//! before, writes them to the log and deletes the changes, in one
//! transaction. A transaction still running is not seen; when it commits
//! it is numbered in a later round, after what was numbered meanwhile. So
//! replay ids follow commit order, and a subscriber resuming after any
//! replay id misses nothing, however late a transaction commits.
//!
//! Within a transaction, as in Salesforce, the changes of one record make
//! one event of the first change's type with the values committed at the
//! end; a transaction changing more than the overflow threshold (100,000 on
//! Salesforce; a record created, deleted or undeleted counts one, an update
//! one per changed field) makes events for the first changes and one
//! `GAP_OVERFLOW` event per entity for the rest. The org's test switches
//! (`sandbox.cdc_switches`) turn the next events into gap events or the
//! next transactions into overflow events.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};

use super::ChangeType;

/// Transactions read per round at most (a round takes them whole).
const TRANSACTIONS_PER_ROUND: i64 = 500;

/// Salesforce's overflow threshold: changes in one transaction that are
/// published one by one.
pub const OVERFLOW_THRESHOLD: u64 = 100_000;

#[derive(Debug, sqlx::FromRow)]
struct Raw {
    tenant: String,
    entity: String,
    record_id: String,
    change_type: String,
    xid: String,
    at: DateTime<Utc>,
    commit_user: String,
    origin: String,
    fields: Option<Value>,
}

/// One record's changes in a transaction, merged.
#[derive(Debug)]
struct Merged {
    tenant: String,
    entity: String,
    record_ids: Vec<String>,
    change_type: ChangeType,
    fields: Option<Map<String, Value>>,
    commit_user: String,
    origin: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Switches {
    gaps: i32,
    overflows: i32,
}

/// Rounds per call at most: under a steady stream of writes a call ends,
/// and the caller comes back for the rest.
const ROUNDS_PER_CALL: usize = 20;

/// Sequences the committed changes (all of them, unless writes keep coming
/// faster than [`ROUNDS_PER_CALL`] rounds take); returns how many events it
/// wrote.
pub async fn sequence(pool: &PgPool, overflow_threshold: u64) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    for _ in 0..ROUNDS_PER_CALL {
        let mut tx = pool.begin().await?;
        let n = round(&mut tx, overflow_threshold).await?;
        tx.commit().await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

async fn round(conn: &mut PgConnection, overflow_threshold: u64) -> Result<usize, sqlx::Error> {
    let (mut replay_id, mut commit_number, mut last_commit_at): (i64, i64, DateTime<Utc>) = sqlx::query_as(
        "SELECT last_replay_id, last_commit_number, greatest(last_commit_at, '1970-01-01') \
         FROM sandbox.cdc_sequencer WHERE id = 1 FOR UPDATE",
    )
    .fetch_one(&mut *conn)
    .await?;
    // Transactions in the order they committed, as near as their last
    // change tells.
    let raws: Vec<Raw> = sqlx::query_as(
        "WITH txs AS (SELECT xid, max(id) AS last FROM sandbox.cdc_pending GROUP BY xid ORDER BY last LIMIT $1) \
         SELECT c.tenant, c.entity, c.record_id, c.change_type, c.xid::text AS xid, c.at, c.commit_user, c.origin, c.fields \
         FROM sandbox.cdc_pending c JOIN txs t ON t.xid = c.xid ORDER BY t.last, c.id",
    )
    .bind(TRANSACTIONS_PER_ROUND)
    .fetch_all(&mut *conn)
    .await?;
    if raws.is_empty() {
        return Ok(0);
    }
    let mut switches: HashMap<String, Switches> = sqlx::query_as::<_, (String, i32, i32)>(
        "SELECT tenant, gaps, overflows FROM sandbox.cdc_switches WHERE gaps > 0 OR overflows > 0 FOR UPDATE",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(t, gaps, overflows)| (t, Switches { gaps, overflows }))
    .collect();
    let switched: Vec<String> = switches.keys().cloned().collect();

    let mut out = Rows::default();
    let mut start = 0;
    while start < raws.len() {
        let end = start + raws[start..].iter().take_while(|r| r.xid == raws[start].xid).count();
        let changes = &raws[start..end];
        start = end;
        // The switch makes this whole transaction overflow, once per org.
        let mut threshold = overflow_threshold;
        let mut tenants: Vec<&str> = changes.iter().map(|c| c.tenant.as_str()).collect();
        tenants.dedup();
        for t in tenants {
            if let Some(s) = switches.get_mut(t).filter(|s| s.overflows > 0) {
                s.overflows -= 1;
                threshold = 0;
            }
        }
        commit_number += 1;
        let at = changes.iter().map(|c| c.at).max().unwrap_or(last_commit_at).max(last_commit_at);
        last_commit_at = at;
        let key = transaction_key(&changes[0].xid);
        for (seq, mut event) in merge(changes, threshold).into_iter().enumerate() {
            if let Some(s) = switches.get_mut(&event.tenant).filter(|s| s.gaps > 0)
                && event.change_type != ChangeType::GapOverflow
            {
                s.gaps -= 1;
                event.change_type = event.change_type.gap();
                event.fields = None;
            }
            replay_id += 1;
            out.push(replay_id, event, &key, seq as i32 + 1, at, commit_number);
        }
    }
    let written = out.replay_ids.len();
    out.insert(&mut *conn).await?;
    let mut xids: Vec<&str> = raws.iter().map(|r| r.xid.as_str()).collect();
    xids.dedup();
    sqlx::query("SELECT sandbox.cdc_consume($1::text[]::xid8[])").bind(&xids).execute(&mut *conn).await?;
    for tenant in switched {
        let s = switches[&tenant];
        sqlx::query("UPDATE sandbox.cdc_switches SET gaps = $2, overflows = $3 WHERE tenant = $1")
            .bind(&tenant)
            .bind(s.gaps)
            .bind(s.overflows)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("UPDATE sandbox.cdc_sequencer SET last_replay_id = $1, last_commit_number = $2, last_commit_at = $3 WHERE id = 1")
        .bind(replay_id)
        .bind(commit_number)
        .bind(last_commit_at)
        .execute(&mut *conn)
        .await?;
    Ok(written)
}

/// How much a change counts towards the overflow threshold.
fn weight(change: &Raw) -> u64 {
    match (change.change_type.as_str(), &change.fields) {
        ("UPDATE", Some(Value::Object(f))) => f.keys().filter(|k| *k != "modstamp" && *k != "last_modified_by").count().max(1) as u64,
        _ => 1,
    }
}

/// One transaction's changes as events: one per record, of its first
/// change's type, with the values it was left with; past the threshold,
/// one overflow event per entity instead.
fn merge(changes: &[Raw], threshold: u64) -> Vec<Merged> {
    let mut events: Vec<Merged> = Vec::new();
    let mut by_record: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut overflowed: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut used = 0u64;
    for c in changes {
        let w = weight(c);
        if used + w > threshold {
            let next = events.len() + overflowed.len();
            overflowed.entry((c.tenant.clone(), c.entity.clone())).or_insert(next);
            continue;
        }
        used += w;
        let incoming = c.fields.as_ref().and_then(Value::as_object);
        match by_record.get(&(c.tenant.as_str(), c.entity.as_str(), c.record_id.as_str())) {
            Some(&at) => {
                let e = &mut events[at];
                if let (Some(fields), Some(incoming)) = (e.fields.as_mut(), incoming) {
                    fields.extend(incoming.clone());
                }
                e.commit_user.clone_from(&c.commit_user);
                e.origin.clone_from(&c.origin);
            }
            None => {
                by_record.insert((&c.tenant, &c.entity, &c.record_id), events.len());
                let change_type = ChangeType::parse(&c.change_type).unwrap_or(ChangeType::Update);
                events.push(Merged {
                    tenant: c.tenant.clone(),
                    entity: c.entity.clone(),
                    record_ids: vec![c.record_id.clone()],
                    change_type,
                    fields: if change_type == ChangeType::Delete { None } else { Some(incoming.cloned().unwrap_or_default()) },
                    commit_user: c.commit_user.clone(),
                    origin: c.origin.clone(),
                });
            }
        }
    }
    // Created and undeleted records carry their values, never nulls.
    for e in &mut events {
        if matches!(e.change_type, ChangeType::Create | ChangeType::Undelete)
            && let Some(fields) = &mut e.fields
        {
            fields.retain(|_, v| !v.is_null());
        }
    }
    let mut overflow: Vec<(usize, Merged)> = overflowed
        .into_iter()
        .map(|((tenant, entity), at)| {
            let last = changes.iter().rev().find(|c| c.tenant == tenant && c.entity == entity);
            let event = Merged {
                commit_user: last.map(|c| c.commit_user.clone()).unwrap_or_default(),
                origin: last.map(|c| c.origin.clone()).unwrap_or_default(),
                tenant,
                entity,
                record_ids: Vec::new(),
                change_type: ChangeType::GapOverflow,
                fields: None,
            };
            (at, event)
        })
        .collect();
    overflow.sort_by_key(|(at, _)| *at);
    events.extend(overflow.into_iter().map(|(_, e)| e));
    events
}

/// A transaction's key: a UUID-shaped digest of its id, the same for every
/// event of the transaction.
fn transaction_key(xid: &str) -> String {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let n: u64 = xid.parse().unwrap_or(0);
    let (a, b) = (mix(n), mix(n ^ 0x5EED));
    format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xFFFF, a & 0xFFFF, b >> 48, b & 0xFFFF_FFFF_FFFF)
}

/// Events of a round, column by column, for one INSERT.
#[derive(Debug, Default)]
struct Rows {
    replay_ids: Vec<i64>,
    tenants: Vec<String>,
    entities: Vec<String>,
    types: Vec<&'static str>,
    record_ids: Vec<Value>,
    origins: Vec<String>,
    keys: Vec<String>,
    sequence_numbers: Vec<i32>,
    commit_at: Vec<DateTime<Utc>>,
    commit_numbers: Vec<i64>,
    users: Vec<String>,
    fields: Vec<Option<Value>>,
    changed: Vec<Option<Value>>,
}

impl Rows {
    fn push(&mut self, replay_id: i64, e: Merged, key: &str, seq: i32, at: DateTime<Utc>, commit_number: i64) {
        self.replay_ids.push(replay_id);
        self.types.push(e.change_type.as_str());
        self.record_ids.push(Value::from(e.record_ids));
        self.origins.push(e.origin);
        self.keys.push(key.to_owned());
        self.sequence_numbers.push(seq);
        self.commit_at.push(at);
        self.commit_numbers.push(commit_number);
        self.users.push(e.commit_user);
        let changed = (e.change_type == ChangeType::Update)
            .then(|| e.fields.as_ref().map(|f| Value::from(f.keys().cloned().collect::<Vec<_>>())))
            .flatten();
        self.changed.push(changed);
        self.fields.push(e.fields.map(Value::Object));
        self.tenants.push(e.tenant);
        self.entities.push(e.entity);
    }

    async fn insert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO sandbox.cdc_events (replay_id, tenant, entity, change_type, record_ids, change_origin, transaction_key, \
                sequence_number, commit_timestamp, commit_number, commit_user, fields, changed) \
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::text[], \
                $8::int4[], $9::timestamptz[], $10::int8[], $11::text[], $12::jsonb[], $13::jsonb[])",
        )
        .bind(&self.replay_ids)
        .bind(&self.tenants)
        .bind(&self.entities)
        .bind(&self.types)
        .bind(&self.record_ids)
        .bind(&self.origins)
        .bind(&self.keys)
        .bind(&self.sequence_numbers)
        .bind(&self.commit_at)
        .bind(&self.commit_numbers)
        .bind(&self.users)
        .bind(&self.fields)
        .bind(&self.changed)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(_order: i64, record: &str, change_type: &str, fields: Value) -> Raw {
        Raw {
            tenant: "t".into(),
            entity: "Lead".into(),
            record_id: record.into(),
            change_type: change_type.into(),
            xid: "7".into(),
            at: Utc::now(),
            commit_user: "005".into(),
            origin: String::new(),
            fields: (!fields.is_null()).then_some(fields),
        }
    }

    #[test]
    fn a_record_changed_twice_in_a_transaction_is_one_event_of_its_first_type() {
        let changes = [
            raw(1, "a", "CREATE", serde_json::json!({"last_name": "Kim", "title": "CTO"})),
            raw(2, "a", "UPDATE", serde_json::json!({"title": null, "modstamp": "x"})),
            raw(3, "b", "UPDATE", serde_json::json!({"email": "b@x"})),
        ];
        let events = merge(&changes, OVERFLOW_THRESHOLD);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].change_type, ChangeType::Create);
        assert_eq!(events[0].fields.as_ref().unwrap(), serde_json::json!({"last_name": "Kim", "modstamp": "x"}).as_object().unwrap());
        assert_eq!(events[1].record_ids, ["b"]);
    }

    #[test]
    fn changes_past_the_threshold_become_one_overflow_event_per_entity() {
        let changes = [
            raw(1, "a", "CREATE", serde_json::json!({"last_name": "A"})),
            raw(2, "b", "CREATE", serde_json::json!({"last_name": "B"})),
            raw(3, "c", "UPDATE", serde_json::json!({"email": "c@x", "title": "T", "modstamp": "x"})),
            raw(4, "d", "DELETE", Value::Null),
        ];
        let events = merge(&changes, 3);
        let types: Vec<ChangeType> = events.iter().map(|e| e.change_type).collect();
        // a and b count one each; c's update counts two fields: past 3.
        assert_eq!(types, [ChangeType::Create, ChangeType::Create, ChangeType::Delete, ChangeType::GapOverflow]);
        assert!(events[3].record_ids.is_empty() && events[3].fields.is_none());
        assert_eq!(merge(&changes, 0).len(), 1);
    }

    #[test]
    fn transaction_keys_are_stable_and_uuid_shaped() {
        let k = transaction_key("123456");
        assert_eq!(k, transaction_key("123456"));
        assert_ne!(k, transaction_key("123457"));
        assert_eq!(k.len(), 36);
        assert_eq!(k.matches('-').count(), 4);
    }
}
