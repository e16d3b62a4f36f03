//! What operators see and change, shared by the `crmsync` command and the
//! admin console so that the two never drift apart: the status of every
//! connection ([`status`]) and guarded, audited setting changes
//! ([`settings`]).

pub mod settings;
pub mod status;
