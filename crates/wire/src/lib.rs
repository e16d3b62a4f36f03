//! The wire formats crmsync speaks with the real systems, in one place so
//! that the HTTP connectors and the sandbox's HTTP server agree on them:
//!
//! - [`soql`]: the SOQL subset of the change and look-up queries;
//! - [`salesforce`]: Salesforce REST payloads (OAuth tokens, query results,
//!   sObject Collections, Bulk API 2.0 jobs, errors, the limit header);
//! - [`pardot`]: Account Engagement API v5 payloads, and its Import API;
//! - [`multipart`]: `multipart/form-data` bodies (the Import API's files);
//! - [`time`]: the date-time formats both APIs use.

pub mod multipart;
pub mod pardot;
pub mod salesforce;
pub mod soql;
pub mod time;
