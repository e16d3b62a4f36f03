//! Taking batch-lane messages in (R7, I1): every connection's batch-lane
//! messages arrive on one shared queue, and the applier moves their records
//! into the connection's lane in PostgreSQL at once, acking each message
//! only once its records are committed there. The queue never holds a
//! backlog (one connection's million records would sit in front of
//! everyone else's), and the broker carries no queue per connection.
//!
//! A record is one row, in arrival order, keyed by its command id, so a
//! message taken in twice (redelivered after a crash between the commit and
//! the ack) adds nothing the second time. [`chunk_of`] turns rows back into
//! the apply batch the drain applies.

use crmsync_domain::Lane;
use crmsync_domain::messages::{ApplyBatch, ApplyCommand, CsqlCommand, MESSAGE_VERSION, MirrorCommand};
use crmsync_infra::worker::StageError;
use crmsync_store::batch_lanes::{self, NewRow, Row};
use sqlx::PgPool;
use uuid::Uuid;

const COMMAND: &str = "command";
const MIRROR: &str = "mirror";
const CSQL: &str = "csql";

fn value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    // The message types serialise to JSON objects by construction; a
    // failure here would be a bug in them, not bad input.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// A batch's records as lane rows, commands first, then mirrors, then
/// CSQLs (the order a batch lists them in).
pub fn rows_of(batch: &ApplyBatch) -> Vec<NewRow> {
    let commands = batch.commands.iter().map(|c| NewRow { command_id: c.command_id, kind: COMMAND, body: value(c) });
    let mirrors = batch.mirrors.iter().map(|m| NewRow { command_id: m.command_id, kind: MIRROR, body: value(m) });
    let csqls = batch.csqls.iter().map(|q| NewRow { command_id: q.command_id, kind: CSQL, body: value(q) });
    commands.chain(mirrors).chain(csqls).collect()
}

/// Lane rows as one batch-lane apply batch. A row that cannot be read back
/// (written by a version that no longer parses) is returned apart, to be
/// dead-lettered with its reason.
pub fn chunk_of(connection_id: &str, rows: &[Row]) -> (ApplyBatch, Vec<(i64, String)>) {
    let mut batch = ApplyBatch {
        v: MESSAGE_VERSION,
        // The chunk's own id: it is a new unit of work, made of records
        // from one or more messages.
        batch_id: Uuid::now_v7(),
        connection_id: connection_id.to_owned(),
        lane: Lane::Batch,
        commands: Vec::new(),
        mirrors: Vec::new(),
        csqls: Vec::new(),
    };
    let mut unreadable = Vec::new();
    for row in rows {
        let body = row.body.clone();
        let read = match row.kind.as_str() {
            COMMAND => serde_json::from_value::<ApplyCommand>(body).map(|c| batch.commands.push(c)),
            MIRROR => serde_json::from_value::<MirrorCommand>(body).map(|m| batch.mirrors.push(m)),
            CSQL => serde_json::from_value::<CsqlCommand>(body).map(|q| batch.csqls.push(q)),
            other => {
                unreadable.push((row.id, format!("unknown batch-lane record kind {other:?}")));
                continue;
            }
        };
        if let Err(e) = read {
            unreadable.push((row.id, format!("unreadable batch-lane record: {e}")));
        }
    }
    (batch, unreadable)
}

/// Takes a batch-lane message's records into its connection's lane.
/// A message for a connection that does not exist is misaddressed (the
/// worker gives it back, and past the delivery limit it is dead-lettered);
/// a database away is a retry.
pub async fn take_in(pool: &PgPool, batch: &ApplyBatch) -> Result<u64, StageError> {
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM connections WHERE id = $1")
        .bind(&batch.connection_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| StageError::Retry(e.to_string()))?;
    if known.is_none() {
        return Err(StageError::Misaddressed(format!("no connection {:?} for a batch-lane message", batch.connection_id)));
    }
    batch_lanes::enqueue(pool, &batch.connection_id, batch.batch_id, rows_of(batch)).await.map_err(|e| StageError::Retry(e.to_string()))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use crmsync_domain::merge::Side;
    use crmsync_domain::messages::RecordRef;

    use super::*;

    fn command(id: &str) -> ApplyCommand {
        ApplyCommand {
            command_id: Uuid::new_v4(),
            identity_id: Uuid::new_v4(),
            source: RecordRef { side: Side::Ma, object: "prospect".into(), id: id.into() },
            detected_at: Utc::now(),
            observations: vec![],
            account_id: None,
            seen: Default::default(),
            trace: None,
        }
    }

    #[test]
    fn records_taken_in_come_back_as_the_same_commands_in_order() {
        let batch = ApplyBatch {
            v: MESSAGE_VERSION,
            batch_id: Uuid::new_v4(),
            connection_id: "c1".into(),
            lane: Lane::Batch,
            commands: (0..3).map(|i| command(&i.to_string())).collect(),
            mirrors: vec![],
            csqls: vec![],
        };
        let rows: Vec<Row> = rows_of(&batch)
            .into_iter()
            .enumerate()
            .map(|(i, r)| Row {
                id: i as i64 + 1,
                command_id: r.command_id,
                kind: r.kind.to_owned(),
                body: r.body,
                batch_id: batch.batch_id,
                applied: false,
            })
            .collect();
        let (chunk, unreadable) = chunk_of("c1", &rows);
        assert!(unreadable.is_empty());
        assert_eq!(chunk.lane, Lane::Batch);
        assert_eq!(chunk.connection_id, "c1");
        let ids: Vec<Uuid> = chunk.commands.iter().map(|c| c.command_id).collect();
        assert_eq!(ids, batch.commands.iter().map(|c| c.command_id).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_that_cannot_be_read_back_is_set_apart_with_its_reason() {
        let rows = vec![
            Row {
                id: 7,
                command_id: Uuid::new_v4(),
                kind: COMMAND.into(),
                body: serde_json::json!({"nonsense": 1}),
                batch_id: Uuid::new_v4(),
                applied: false,
            },
            Row {
                id: 8,
                command_id: Uuid::new_v4(),
                kind: "gadget".into(),
                body: serde_json::json!({}),
                batch_id: Uuid::new_v4(),
                applied: false,
            },
        ];
        let (chunk, unreadable) = chunk_of("c1", &rows);
        assert!(chunk.commands.is_empty());
        assert_eq!(unreadable.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [7, 8]);
        assert!(unreadable[1].1.contains("gadget"));
    }
}
