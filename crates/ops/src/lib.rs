//! What operators see and change, shared by the `crmsync` command and the
//! admin console so that the two never drift apart: the status of every
//! connection ([`status`]), guarded, audited setting changes
//! ([`settings`]), the field mapping ([`mapping`]) and sync scope
//! ([`scope`]) with their previews, pausing and resuming a connection
//! ([`pause`]), dismissing sync errors ([`errors`]), looking up one record
//! and syncing it now ([`records`]) with its values on both sides
//! ([`values`]), and the one policy for personal data in what either shows
//! ([`pii`]).
//!
//! What reaches the systems takes the caller's [`crmsync_systems::SystemsFactory`]
//! rather than making its own: the console keeps one for its life and a
//! command makes one for its run. Its connectors hold their logins and a
//! Salesforce org's describes; a factory per call threw both away, so that
//! every page view paid a login and two describes against the org's API
//! allowance (I8).

pub mod errors;
pub mod mapping;
pub mod pause;
pub mod pii;
pub mod records;
pub mod scope;
pub mod settings;
pub mod status;
pub mod values;
