//! The Salesforce Pub/Sub API (`eventbus.v1`): the gRPC messages, client and
//! server generated from `proto/pubsub_api.proto` (crmsync's own copy,
//! wire-compatible with the file Salesforce publishes), and what the API
//! leaves to convention: the metadata a call authenticates with, the error
//! codes Salesforce puts in the `error-code` trailer, topic names of change
//! events, replay ids, and the bitmaps change events name fields with
//! ([`bitmap`]).
//!
//! `crmsync sandbox serve` serves this API over the sandbox CRM; the
//! engine's change-event client uses the same types against Salesforce.

pub mod bitmap;
mod topic;

pub use topic::Topic;

/// The generated messages, client (`pub_sub_client`) and server
/// (`pub_sub_server`).
#[allow(clippy::all, clippy::pedantic, missing_debug_implementations, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("eventbus.v1");
}

/// The gRPC metadata a call authenticates with: an OAuth access token, the
/// org's instance URL and its org id, as Salesforce's OAuth flows hand them
/// out.
pub mod metadata {
    pub const ACCESS_TOKEN: &str = "accesstoken";
    pub const INSTANCE_URL: &str = "instanceurl";
    pub const TENANT_ID: &str = "tenantid";
    /// The trailer in which Salesforce names the cause of an error status.
    pub const ERROR_CODE: &str = "error-code";
    /// The trailer carrying the id of the failed call.
    pub const RPC_ID: &str = "rpc-id";
}

/// The error codes Salesforce sends in the `error-code` trailer (the ones
/// the sandbox returns). The gRPC status alone does not say what to do; the
/// code does.
pub mod error_codes {
    /// The session is not valid, or the headers do not match it.
    pub const AUTH: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
    /// A required authentication header is missing or blank.
    pub const AUTH_HEADERS_INVALID: &str = "sfdc.platform.eventbus.grpc.service.auth.headers.invalid";
    /// No such topic in the org.
    pub const TOPIC_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.topic.not.found";
    /// The topic name is blank.
    pub const TOPIC_EMPTY: &str = "sfdc.platform.eventbus.grpc.topic.validation.empty";
    /// No schema with that id that the caller may read.
    pub const SCHEMA_ACCESS: &str = "sfdc.platform.eventbus.grpc.schema.meta.permission";
    /// The schema id is blank.
    pub const SCHEMA_EMPTY: &str = "sfdc.platform.eventbus.grpc.schema.validation.failed";
    /// A CUSTOM replay id that is not valid or no longer retained (72 hours).
    pub const REPLAY_ID_CORRUPTED: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
    /// CUSTOM without a replay id.
    pub const REPLAY_ID_MISSING: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed";
    /// `num_requested` was not above zero.
    pub const REQUESTED_EVENTS_INVALID: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid";
    /// A later FetchRequest named another topic than the first.
    pub const TOPIC_MISMATCH: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.topic.mismatch";
    /// The org's event delivery allocation (last 24 hours) is used up.
    pub const DELIVERY_LIMIT_EXCEEDED: &str = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded";
}

/// Replay ids as the sandbox writes them: a position in its event log as an
/// 8-byte big-endian integer. Salesforce's are opaque bytes too: a client
/// stores and hands them back, and never computes with them.
pub mod replay_id {
    pub fn encode(position: i64) -> Vec<u8> {
        position.to_be_bytes().to_vec()
    }

    /// The position in a replay id, if it is one the sandbox could have made.
    pub fn decode(bytes: &[u8]) -> Option<i64> {
        let bytes: [u8; 8] = bytes.try_into().ok()?;
        Some(i64::from_be_bytes(bytes)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ids_round_trip_and_reject_what_was_never_handed_out() {
        assert_eq!(replay_id::decode(&replay_id::encode(42)), Some(42));
        assert_eq!(replay_id::encode(1), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(replay_id::decode(&[1, 2, 3]), None);
        assert_eq!(replay_id::decode(&replay_id::encode(0)), None);
    }
}
