//! The versioned messages the tiers exchange over the broker.
//!
//! producer → matcher: a [`ChangeBatch`] of detected records.
//! matcher → applier: an [`ApplyBatch`] of commands, one per resolved identity.
//!
//! Every message carries its schema version `v`, the connection id and the
//! lane, and several records, so that one broker round trip moves many
//! records. Decoding checks size, UTF-8, JSON shape and version, and says which
//! of those failed: a message that cannot be read is a named sync error, never
//! a crashed worker (I6).
//!
//! Each record (a [`Change`], and the command it becomes) carries its own W3C
//! trace context, because one message moves many records and each record is
//! one trace from detection to its write (I5). The field is optional so that
//! messages written without it still read.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Timestamp;
use crate::csql::CsqlRecord;
use crate::lane::Lane;
use crate::merge::{Observation, Side};
use crate::mirror::MirrorKey;
use crate::records::SourceRecord;

/// The message schema version this build writes and reads.
pub const MESSAGE_VERSION: u16 = 1;
/// Messages larger than this are refused unread.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Records detected by the producer in one page of one feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    pub v: u16,
    pub batch_id: Uuid,
    pub connection_id: String,
    pub lane: Lane,
    pub detected_at: Timestamp,
    pub changes: Vec<Change>,
}

/// One detected record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Unique per detection; follows the record through every tier.
    pub change_id: Uuid,
    pub record: SourceRecord,
    /// The record's trace: its `detect` span in the producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// A W3C trace context (`traceparent`, `tracestate`) as carried in a message
/// body, one per record. Plain strings: the domain knows nothing of tracing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The W3C trace id (`00-<trace id>-<span id>-<flags>`): the same for
    /// every span of the record, in every tier.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.split('-').nth(1).filter(|t| t.len() == 32)
    }
}

/// Identity-resolved work for the applier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyBatch {
    pub v: u16,
    pub batch_id: Uuid,
    pub connection_id: String,
    pub lane: Lane,
    pub commands: Vec<ApplyCommand>,
    /// Mirrors to reconcile from the CRM (R4-R6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorCommand>,
    /// CSQLs to write to the CRM, or to report as refused (R9).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub csqls: Vec<CsqlCommand>,
}

/// Write a CSQL to the CRM as decided, or report its refusal on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsqlCommand {
    pub command_id: Uuid,
    pub detected_at: Timestamp,
    pub record: CsqlRecord,
    pub decision: CsqlOutcome,
    /// The record's trace: its `match` span in the matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// The matcher's decision on a CSQL, as carried to the applier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CsqlOutcome {
    Sync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        act_as: Option<crate::CrmId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<crate::CrmId>,
        created_by: String,
    },
    Refuse {
        issue: crate::SyncIssue,
    },
}

/// Reconcile one mirror (or a person's related mirrors) from the CRM's
/// current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorCommand {
    /// The change id of the detection this command comes from.
    pub command_id: Uuid,
    pub key: MirrorKey,
    pub source: RecordRef,
    pub detected_at: Timestamp,
    /// The record's trace: its `match` span in the matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// Apply these edits to one identity. What to do with them (update, create the
/// missing counterpart, only remember them while pending) follows from the
/// identity's state in PostgreSQL, read by the applier under the identity's
/// lock, so a redelivered or reordered command is always safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyCommand {
    /// The change id of the detection this command comes from.
    pub command_id: Uuid,
    pub identity_id: Uuid,
    pub source: RecordRef,
    pub detected_at: Timestamp,
    pub observations: Vec<Observation>,
    /// For a contact's change: the account it belongs to (its prospect
    /// account follows it, R4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The stamps of the records whose observations this command carries
    /// whole. Absent from commands of earlier releases: then nothing is
    /// known to be seen, and the applier reads before writing.
    #[serde(default, skip_serializing_if = "Seen::is_empty")]
    pub seen: Seen,
    /// The record's trace: its `match` span in the matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// The records of an identity the matcher read, each with the stamp it was
/// read at, for a command that carries all the edits of those reads.
///
/// The applier merges the command's observations into the identity's state
/// before planning, so its state then holds everything the record held at
/// that stamp. A write conditional on the record being unmodified since
/// then (where the target API can make one) needs no fresh read of the
/// record: if a user edited it meanwhile, the write is refused and the
/// applier reads and merges the edit before writing again (I3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm: Option<SeenRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ma: Option<SeenRecord>,
}

/// One record read, by id, at its system's modification stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRecord {
    pub id: String,
    pub at: Timestamp,
}

impl Seen {
    pub fn is_empty(&self) -> bool {
        self.crm.is_none() && self.ma.is_none()
    }

    /// Also seen: `record`, at its own stamp.
    pub fn with(mut self, record: &SourceRecord) -> Seen {
        let (slot, id, at) = match record {
            SourceRecord::Prospect(p) => (&mut self.ma, p.id.to_string(), p.updated_at),
            // In the form the identity keeps it (an 18-character id).
            SourceRecord::Crm(c) => {
                (&mut self.crm, crate::CrmId::parse(&c.id).map_or_else(|_| c.id.clone(), |i| i.to_string()), c.system_modstamp)
            }
            SourceRecord::Mirror(_) | SourceRecord::Csql(_) => return self,
        };
        *slot = later(slot.take(), Some(SeenRecord { id, at }));
        self
    }

    /// What several commands of one identity saw together, once all their
    /// observations are merged: each record at the later of its stamps. Two
    /// different records of one side (the identity was re-linked between
    /// the reads) leave that side unseen.
    pub fn or_later(self, other: Seen) -> Seen {
        Seen { crm: later(self.crm, other.crm), ma: later(self.ma, other.ma) }
    }

    /// The stamp `record` was seen at on `side`, if it was.
    pub fn of(&self, side: Side, record: &str) -> Option<Timestamp> {
        let seen = match side {
            Side::Crm => self.crm.as_ref(),
            Side::Ma => self.ma.as_ref(),
        };
        seen.filter(|s| s.id == record).map(|s| s.at)
    }
}

fn later(a: Option<SeenRecord>, b: Option<SeenRecord>) -> Option<SeenRecord> {
    match (a, b) {
        (Some(a), Some(b)) if a.id != b.id => None,
        (Some(a), Some(b)) => Some(if b.at > a.at { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A record in one of the systems, for audit and error reporting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub side: Side,
    pub object: String,
    pub id: String,
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("message is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("message is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("message version {0} is not supported (this build reads version {MESSAGE_VERSION})")]
    UnknownVersion(u16),
}

#[derive(Deserialize)]
struct VersionPeek {
    v: u16,
}

/// Reads a message of any kind, checking size, encoding and version first.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: MAX_MESSAGE_BYTES });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
    let peek: VersionPeek = serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if peek.v != MESSAGE_VERSION {
        return Err(DecodeError::UnknownVersion(peek.v));
    }
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Writes a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these plain data types cannot fail.
    serde_json::to_vec(message).expect("messages serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> ApplyBatch {
        ApplyBatch {
            v: MESSAGE_VERSION,
            batch_id: Uuid::new_v4(),
            connection_id: "default".into(),
            lane: Lane::Immediate,
            commands: vec![],
            mirrors: vec![],
            csqls: vec![],
        }
    }

    #[test]
    fn messages_round_trip() {
        let b = batch();
        assert_eq!(decode::<ApplyBatch>(&encode(&b)).unwrap(), b);
    }

    #[test]
    fn unreadable_messages_are_named() {
        assert!(matches!(decode::<ApplyBatch>(b"{not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode::<ApplyBatch>(&[b'{', 0xff, 0xfe]), Err(DecodeError::NotUtf8(1))));
        let mut future = serde_json::to_value(batch()).unwrap();
        future["v"] = 99.into();
        assert_eq!(decode::<ApplyBatch>(future.to_string().as_bytes()), Err(DecodeError::UnknownVersion(99)));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(decode::<ApplyBatch>(&huge), Err(DecodeError::TooLarge { .. })));
        // Right version, wrong shape.
        assert!(matches!(decode::<ChangeBatch>(br#"{"v":1,"changes":3}"#), Err(DecodeError::Malformed(_))));
    }

    fn lead(id: &str, at: Timestamp) -> SourceRecord {
        SourceRecord::Crm(crate::records::CrmPersonRecord::test_lead(id, at, Default::default()))
    }

    #[test]
    fn a_record_is_seen_by_its_id_at_the_later_of_two_reads() {
        let t0 = chrono::Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        // A 15-character id is kept in the 18-character form identities use.
        let id = crate::CrmId::parse("00Q5g00000AbCdE").unwrap().to_string();
        let other_id = crate::CrmId::parse("00Q5g00000ZzZzZ").unwrap().to_string();
        let early = Seen::default().with(&lead("00Q5g00000AbCdE", t0));
        let late = Seen::default().with(&lead(&id, t1));
        assert_eq!(early.clone().or_later(late.clone()).of(Side::Crm, &id), Some(t1));
        assert_eq!(late.clone().or_later(early.clone()).of(Side::Crm, &id), Some(t1));
        assert_eq!(early.of(Side::Crm, &id), Some(t0));
        assert_eq!(late.of(Side::Crm, &other_id), None, "another record was not seen");
        assert_eq!(late.of(Side::Ma, &id), None);
        let other = Seen::default().with(&lead(&other_id, t1));
        assert!(early.or_later(other).is_empty(), "two records of one side: neither is known to be merged alone");
    }

    #[test]
    fn a_command_of_an_earlier_release_has_seen_nothing() {
        let command = ApplyCommand {
            command_id: Uuid::new_v4(),
            identity_id: Uuid::new_v4(),
            source: RecordRef { side: Side::Ma, object: "prospect".into(), id: "1".into() },
            detected_at: chrono::Utc::now(),
            observations: vec![],
            account_id: None,
            seen: Seen::default(),
            trace: None,
        };
        let text = serde_json::to_string(&command).unwrap();
        assert!(!text.contains("seen"), "{text}");
        let read: ApplyCommand = serde_json::from_str(&text).unwrap();
        assert!(read.seen.is_empty());
    }
}
