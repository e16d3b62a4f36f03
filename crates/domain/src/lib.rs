//! The sync rules of crmsync, with no I/O.
//!
//! Everything here is a pure function over typed values: the tiers gather facts
//! (records, identity rows, look-ups), call into this crate to decide, and then
//! carry the decision out. Keeping the rules here makes them testable without
//! services and keeps every tier applying exactly the same rules.
//!
//! - [`ids`] and [`email`]: parsing and normalisation of the identity keys (R1).
//! - [`mapping`] and [`merge`]: field behaviours and per-field versions (R2, I3).
//! - [`matching`] and [`creation`]: who is whose counterpart, and when a record
//!   may be created at all (R1, R3).
//! - [`echo`]: which changes carry nothing new, so that a sync never echoes
//!   and a change already applied is not applied again (I7).
//! - [`records`] and [`messages`]: the records connectors return and the
//!   versioned messages the tiers exchange.
//! - [`mirror`]: read-only mirrors of accounts, opportunities and custom
//!   objects, and who sees them (R4-R6).
//! - [`csql`]: customer-success-qualified leads synced to the CRM, with the
//!   sync options and their guards (R9).
//! - [`scope`]: which CRM records sync at all (the sync scope's rules).
//! - [`settings`], [`endpoint`], [`lane`], [`sync_error`]: per-connection
//!   settings and the systems they point at, lane choice (R7) and the named
//!   sync-error categories (I6).

pub mod creation;
pub mod csql;
pub mod echo;
pub mod email;
pub mod endpoint;
pub mod ids;
pub mod lane;
pub mod mapping;
pub mod matching;
pub mod merge;
pub mod messages;
pub mod mirror;
pub mod records;
pub mod scope;
pub mod settings;
pub mod sync_error;
pub mod time;

pub use email::Email;
pub use ids::{CrmId, CrmObject};
pub use lane::Lane;
pub use merge::Side;
pub use sync_error::{SyncErrorCategory, SyncIssue};

/// A point in time as every system and message carries it.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
