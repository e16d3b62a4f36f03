//! crmsync's durable state in PostgreSQL (tables created by `migrations/`).
//!
//! Every function takes the connection id: state is per connection. Writes
//! that must not be made by a stale lock holder take its fencing token and
//! are refused when a newer token already wrote the row.

pub mod admin_audit;
pub mod audit;
pub mod batch_lanes;
pub mod connections;
pub mod csql_links;
pub mod feeds;
pub mod figures;
pub mod identities;
pub mod mirror_outbox;
pub mod replicas;
pub mod sync_errors;
