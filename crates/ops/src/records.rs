//! One record, by the key an admin knows it by (an email, a prospect id, a
//! CRM id of 15 or 18 characters), and **Sync now** (issue 28): what
//! `crmsync records sync-now` and the console's record lookup both call.
//!
//! Sync now reads both sides of the record again from the connection's
//! systems (the prospect and the lead or contact its identity links) and
//! publishes them to the matcher in the immediate lane, as the producer
//! publishes a change it detected (`crmsync_producer::redetect`): each
//! record is traced, matched under its locks, merged by its per-field
//! versions and applied like any other change, so an older value still
//! never overwrites a newer one (I3). It is what an admin reaches for after
//! a refusal was fixed at its source (a validation rule changed, an error
//! dismissed): the identity's state is written again to whichever side
//! lacks it. Refused on a paused connection, which must not be written.

use anyhow::Context;
use crmsync_connector::ConnectorFactory;
use crmsync_domain::{CrmId, Email, Lane};
use crmsync_infra::Config;
use crmsync_infra::broker::Broker;
use crmsync_producer::RecordName;
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::connections;
use crmsync_store::identities::{self, Keys};
use crmsync_systems::SystemsFactory;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// What a lookup names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Email(Email),
    Prospect(i64),
    /// A lead or contact, by its 18-character id.
    Crm(CrmId),
}

impl RecordKey {
    /// An email (it has an `@`), a prospect id (a number) or a CRM id (15
    /// or 18 characters; a 15-character id is read as its 18-character
    /// form).
    pub fn parse(q: &str) -> Result<RecordKey, String> {
        let q = q.trim();
        if q.contains('@') {
            return Email::parse(q).map(RecordKey::Email).map_err(|e| format!("not an email: {e}"));
        }
        if let Ok(prospect) = q.parse::<i64>() {
            return Ok(RecordKey::Prospect(prospect));
        }
        CrmId::parse(q).map(RecordKey::Crm).map_err(|e| format!("not an email, a prospect id or a CRM id: {e}"))
    }

    /// The identity keys it is looked up by.
    pub fn keys(&self) -> Keys {
        match self {
            RecordKey::Email(e) => Keys { emails: vec![e.as_str().to_owned()], ..Keys::default() },
            RecordKey::Prospect(p) => Keys { prospect_ids: vec![*p], ..Keys::default() },
            RecordKey::Crm(id) => Keys { crm_ids: vec![id.as_str().to_owned()], ..Keys::default() },
        }
    }
}

/// Why Sync now did nothing.
#[derive(Debug, thiserror::Error)]
pub enum SyncNowError {
    #[error("{0}")]
    BadKey(String),
    /// No such connection, or it is paused, or the database is away.
    #[error(transparent)]
    Connection(#[from] connections::ConnectionError),
    #[error(
        "connection {connection:?} has no identity with that email: give the prospect id or the CRM id to read a record it has not synced yet"
    )]
    NotFound { connection: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What Sync now sent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncedNow {
    /// The identities the key found (none for a record not synced yet).
    pub identities: Vec<Uuid>,
    /// Records read again and published to the matcher, confirmed.
    pub published: Vec<String>,
    /// Records no longer in their system.
    pub gone: Vec<String>,
}

/// The records of both sides to read again for `key`: those of every
/// identity it finds; or, when it finds none, the record it names itself
/// (a prospect or CRM record that never synced), read from its system.
fn records_of(key: &RecordKey, found: &[identities::IdentityRow]) -> Vec<RecordName> {
    let mut names: Vec<RecordName> = Vec::new();
    for i in found {
        if let Some(p) = i.prospect_id {
            names.push(RecordName { object: "prospect".into(), id: p.to_string() });
        }
        if let (Some(o), Some(c)) = (&i.crm_object, &i.crm_id) {
            names.push(RecordName { object: o.clone(), id: c.clone() });
        }
    }
    if found.is_empty() {
        match key {
            RecordKey::Prospect(p) => names.push(RecordName { object: "prospect".into(), id: p.to_string() }),
            // Read as a person: a lead and a contact are read alike.
            RecordKey::Crm(id) => names.push(RecordName { object: "lead".into(), id: id.as_str().to_owned() }),
            RecordKey::Email(_) => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn named(n: &RecordName) -> String {
    format!("{} {}", n.object, n.id)
}

/// Reads both sides of the record `key` names again and sends them through
/// the immediate lane, as `actor`; one admin audit entry names the records
/// sent (ids only: the key may be an email, which the log does not keep).
pub async fn sync_now(
    config: &Config,
    pool: &PgPool,
    factory: &SystemsFactory,
    actor: &Actor,
    connection: &str,
    key: &str,
) -> Result<SyncedNow, SyncNowError> {
    let key = RecordKey::parse(key).map_err(SyncNowError::BadKey)?;
    let settings = connections::load_running(pool, connection).await?;
    let found =
        identities::find(pool, connection, &key.keys(), identities::State::Skip).await.map_err(connections::ConnectionError::from)?;
    let names = records_of(&key, &found);
    if names.is_empty() {
        return Err(SyncNowError::NotFound { connection: connection.to_owned() });
    }
    let systems = factory.systems(connection, &settings).await.context("reaching the connection's systems")?;
    let broker = Broker::new(&config.amqp, "crmsync-sync-now");
    let done = async {
        broker.live().await.context("connecting to RabbitMQ")?;
        crmsync_producer::redetect(&broker, &systems, connection, &names, Lane::Immediate, config.producer.records_per_message)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
    .await;
    broker.close().await;
    let done = done?;
    let out = SyncedNow {
        identities: found.iter().map(|i| i.id).collect(),
        published: done.published.iter().map(named).collect(),
        gone: done.gone.iter().map(named).chain(done.unsupported.iter().map(|(n, why)| format!("{}: {why}", named(n)))).collect(),
    };
    let target = names.iter().map(named).collect::<Vec<_>>().join(", ");
    let entry = NewEntry {
        actor,
        connection_id: Some(connection),
        action: "record.sync_now",
        target: Some(&target),
        before: None,
        after: Some(json!({ "published": out.published, "gone": out.gone })),
    };
    admin_audit::record(pool, &entry).await.context("recording the admin audit entry")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(prospect: Option<i64>, crm: Option<(&str, &str)>) -> identities::IdentityRow {
        identities::IdentityRow {
            id: Uuid::nil(),
            status: "linked".into(),
            prospect_id: prospect,
            crm_object: crm.map(|(o, _)| o.to_owned()),
            crm_id: crm.map(|(_, i)| i.to_owned()),
            email: None,
            owner_id: None,
            fields: Default::default(),
            ma_link_written: true,
            ma_recycled: false,
            crm_account_id: None,
            mirror_crm_id: None,
            linked_at: None,
            linked_by: None,
        }
    }

    #[test]
    fn a_key_is_an_email_a_prospect_id_or_a_crm_id_in_either_form() {
        assert!(matches!(RecordKey::parse(" Jane@Example.com "), Ok(RecordKey::Email(_))));
        assert_eq!(RecordKey::parse("42"), Ok(RecordKey::Prospect(42)));
        let Ok(RecordKey::Crm(id)) = RecordKey::parse("00Q000000000001") else { panic!("a CRM id") };
        assert_eq!(id.as_str().len(), 18, "a 15-character id is read as its 18-character form");
        assert!(RecordKey::parse("not a key").is_err());
    }

    #[test]
    fn both_sides_of_a_linked_identity_are_read_again() {
        let key = RecordKey::parse("42").unwrap();
        let lead = "00Q000000000001AAA";
        let names = records_of(&key, &[identity(Some(42), Some(("lead", lead)))]);
        assert_eq!(names.iter().map(named).collect::<Vec<_>>(), vec!["prospect 42".to_owned(), format!("lead {lead}")]);
    }

    #[test]
    fn a_record_never_synced_is_read_by_its_own_key_and_an_unknown_email_names_nothing() {
        assert_eq!(records_of(&RecordKey::parse("7").unwrap(), &[]).iter().map(named).collect::<Vec<_>>(), ["prospect 7"]);
        let crm = records_of(&RecordKey::parse("00Q000000000001").unwrap(), &[]);
        assert_eq!(crm.len(), 1);
        assert!(records_of(&RecordKey::parse("who@nowhere.example").unwrap(), &[]).is_empty());
    }
}
