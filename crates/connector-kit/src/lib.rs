//! What crmsync's connectors to real APIs share, so that each connector
//! keeps only what its vendor's API makes different (its paths, payloads,
//! error bodies and codes).
//!
//! - `auth`, `login`: Salesforce OAuth 2.0 (client credentials, JWT bearer)
//!   and the token cache. Salesforce, Account Engagement and the Pub/Sub API
//!   all take Salesforce tokens;
//! - `client`: the HTTP client (TLS, no redirects) and which URLs may be
//!   handed a token;
//! - `send`: the one send loop, [`Sender::run`]: fetch a token, ask the
//!   gate, attempt, tell the gate, then done, retry with backoff, log in
//!   again once, or fail. It drives any [`Exchange`] (one call over any
//!   transport);
//! - `http`: [`HttpClient`], the [`Exchange`] of an HTTP API described by an
//!   [`HttpApi`] (its base URL, headers, error bodies and how an answer is
//!   judged); `call`: the [`Call`] and its [`Answer`];
//! - `gate`: the admission hook every call passes, [`CallGate`], keyed by
//!   [`EndpointKind`]; `usage`, `quota`: today's gates (a share of the usage
//!   the API reports, a daily count of our own, the API's own daily limit,
//!   calls in flight); `pacing`: backoff and timings;
//! - `feed`: the change-feed driver over a [`PageSource`] with the stamp
//!   cursor; `poll`: how often a caught-up feed may query again (backing
//!   off while idle); `row`: fields of JSON rows.
//!
//! A third API plugs in at the level that fits it: a REST API implements
//! [`HttpApi`] and uses [`HttpClient`]; a transport of its own (gRPC, for
//! the Pub/Sub API's change events) implements [`Exchange`] for its calls
//! and hands them to the same [`Sender`], so the same tokens, gates,
//! retries and re-login apply; its event stream can feed [`StampFeed`]
//! through a [`PageSource`] or the engine directly.

mod auth;
mod call;
mod client;
mod feed;
mod gate;
mod http;
mod login;
mod pacing;
mod poll;
mod quota;
pub mod row;
mod send;
mod usage;

pub use crmsync_wire::salesforce::ApiUsage;

pub use crate::auth::Token;
pub use crate::call::{Answer, Body, Call};
pub use crate::client::{check_base_url, client, install_crypto_provider, server_time, transport_text};
pub use crate::feed::{MAX_PAGES_PER_CALL, Page, PageSize, PageSource, Positioned, REQUERY, StampFeed, cut};
pub use crate::gate::{Admission, CallGate, CallOutcome, CallResult, EndpointKind, Gates, Open};
pub use crate::http::{HttpApi, HttpClient};
pub use crate::login::Login;
pub use crate::pacing::Pacing;
pub use crate::poll::{Listening, PollGate, Polled, next_wait};
pub use crate::quota::{DailyLimitGate, DailyQuota, Slots};
pub use crate::send::{Attempted, CallError, Exchange, Failure, Judgement, Sender, Verdict, login_error};
pub use crate::usage::UsageGate;
