//! What operators see and change, shared by the `crmsync` command and the
//! admin console so that the two never drift apart: the status of every
//! connection ([`status`]), guarded, audited setting changes
//! ([`settings`]), dismissing sync errors ([`errors`]) and the one policy
//! for personal data in what either shows ([`pii`]); pausing and resuming
//! a connection ([`pause`]) and syncing one record now ([`records`]).

pub mod errors;
pub mod pause;
pub mod pii;
pub mod records;
pub mod settings;
pub mod status;
