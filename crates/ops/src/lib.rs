//! What operators see and change, shared by the `crmsync` command and the
//! admin console so that the two never drift apart: the status of every
//! connection ([`status`]), guarded, audited setting changes
//! ([`settings`]), the field mapping ([`mapping`]) and sync scope
//! ([`scope`]) with their previews, dismissing sync errors ([`errors`]),
//! one person's values on both sides ([`records`]) and the one policy for
//! personal data in what either shows ([`pii`]).

pub mod errors;
pub mod mapping;
pub mod pii;
pub mod records;
pub mod scope;
pub mod settings;
pub mod status;
