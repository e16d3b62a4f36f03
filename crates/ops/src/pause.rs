//! Pausing and resuming a connection (issue 28), audited: what `crmsync
//! connection pause | resume` and the console's buttons both call, through
//! the one function [`set_paused`].
//!
//! While a connection is paused nothing is written to its systems and its
//! change cursors hold still; on resume the engine catches up from the held
//! cursors, in order, losing nothing. How each tier keeps to that:
//! - the producer runs no pass for it, and a cursor cannot move once the
//!   pause is committed (`crmsync_store::feeds::advance` checks it in the
//!   same statement);
//! - the matcher and the applier read the pause with the settings, before
//!   any look-up or write; a message of a paused connection on a shared
//!   lane goes to the hold queue and comes back after `amqp.hold_ms`
//!   (`crmsync_infra::worker`), and one on the connection's own batch-lane
//!   queue waits in place, between chunks (`crmsync_applier`);
//! - left-over mirror reconciliations of a paused connection wait too.

use chrono::{DateTime, Utc};
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::connections::{self, ConnectionError, Paused};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

/// What a pause or a resume did.
#[derive(Debug, Clone, Serialize)]
pub struct PauseChange {
    pub connection: String,
    pub paused_before: bool,
    pub paused_after: bool,
    /// When the connection was paused (now, or earlier if it already was);
    /// null once resumed.
    pub paused_at: Option<DateTime<Utc>>,
}

impl PauseChange {
    /// Whether anything changed (pausing a paused connection does not).
    pub fn changed(&self) -> bool {
        self.paused_before != self.paused_after
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let word = |p: bool| if p { "paused" } else { "running" };
        if self.changed() {
            format!("{}: {} → {}", self.connection, word(self.paused_before), word(self.paused_after))
        } else {
            format!("{}: already {}", self.connection, word(self.paused_after))
        }
    }
}

/// The audit log's value of a pause state.
fn state(p: Option<&Paused>) -> serde_json::Value {
    match p {
        Some(p) => json!({ "paused": true, "since": p.paused_at, "by": p.paused_by }),
        None => json!({ "paused": false }),
    }
}

/// Pauses (`paused`) or resumes a connection as `actor`, in one transaction
/// with its entry in the admin audit log (action `connection.pause` or
/// `connection.resume`, state before → after). Asking for the state the
/// connection is already in changes nothing and records nothing.
pub async fn set_paused(pool: &PgPool, actor: &Actor, id: &str, paused: bool) -> Result<PauseChange, ConnectionError> {
    let mut tx = pool.begin().await?;
    let before = connections::paused(&mut *tx, id, true).await?;
    if before.is_some() == paused {
        tx.rollback().await?;
        return Ok(PauseChange {
            connection: id.to_owned(),
            paused_before: paused,
            paused_after: paused,
            paused_at: before.map(|p| p.paused_at),
        });
    }
    connections::set_paused(&mut *tx, id, paused.then_some(actor.name.as_str())).await?;
    let after = connections::paused(&mut *tx, id, false).await?;
    let entry = NewEntry {
        actor,
        connection_id: Some(id),
        action: if paused { "connection.pause" } else { "connection.resume" },
        target: Some("paused"),
        before: Some(state(before.as_ref())),
        after: Some(state(after.as_ref())),
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    Ok(PauseChange { connection: id.to_owned(), paused_before: !paused, paused_after: paused, paused_at: after.map(|p| p.paused_at) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(before: bool, after: bool) -> PauseChange {
        PauseChange { connection: "default".into(), paused_before: before, paused_after: after, paused_at: None }
    }

    #[test]
    fn a_change_says_what_it_did_and_a_repeat_says_it_did_nothing() {
        assert_eq!(change(false, true).describe(), "default: running → paused");
        assert_eq!(change(true, false).describe(), "default: paused → running");
        assert!(!change(true, true).changed());
        assert_eq!(change(true, true).describe(), "default: already paused");
    }

    #[test]
    fn the_audit_entry_says_who_paused_and_when() {
        let at = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z").unwrap().with_timezone(&Utc);
        let p = Paused { paused_at: at, paused_by: Some("ops".into()) };
        assert_eq!(state(Some(&p)), json!({ "paused": true, "since": "2025-01-02T03:04:05Z", "by": "ops" }));
        assert_eq!(state(None), json!({ "paused": false }));
    }
}
