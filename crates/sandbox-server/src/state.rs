//! What the server keeps between requests: sessions, the API limits and
//! their counters, query locators and Bulk jobs, all in memory (a restart
//! logs every client out, as a real org's session reset would).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crmsync_sandbox::{SandboxCrm, SandboxMa};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::ServerConfig;
use crate::bulk::Job;

/// A logged-in client: the CRM user its token acts as.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub expires: Instant,
}

/// The MA user an Account Engagement request acts as: the one tied to the
/// session's Salesforce user (`salesforceId`). Its writes carry this user.
#[derive(Debug, Clone, Copy)]
pub struct MaUser(pub i64);

/// What the server saw, for tests and demos (`/sandbox-admin/stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Account Engagement requests in flight now.
    pub pardot_in_flight: usize,
    /// The most Account Engagement requests ever admitted in flight at once.
    pub pardot_in_flight_high: usize,
    /// Account Engagement requests refused for too many in flight (code 66).
    pub pardot_concurrency_refused: u64,
}

/// The limits, changeable at run time through `/sandbox-admin/limits`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Salesforce REST calls allowed per day (`Sforce-Limit-Info`).
    pub salesforce_daily: u64,
    /// Calls made today.
    pub salesforce_used: u64,
    /// Account Engagement calls allowed per day.
    pub pardot_daily: u64,
    pub pardot_used: u64,
    /// Account Engagement requests allowed in flight at once.
    pub pardot_concurrency: usize,
    /// How long a token lives.
    pub token_ttl_secs: u64,
}

/// A query's remaining records: their ids, in order (the rows are read when
/// each batch is asked for).
#[derive(Debug)]
pub struct Locator {
    pub object: String,
    pub fields: Vec<String>,
    pub ids: Vec<String>,
    pub batch: usize,
    pub created: Instant,
}

/// How long a query locator stays valid.
pub const LOCATOR_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
pub struct AppState {
    pub config: ServerConfig,
    pub pool: PgPool,
    pub crm: Arc<SandboxCrm>,
    pub ma: Arc<SandboxMa>,
    pub sessions: Mutex<HashMap<String, Session>>,
    pub limits: Mutex<Limits>,
    /// The UTC day the counters are for; they reset when it changes.
    pub day: Mutex<chrono::NaiveDate>,
    pub locators: Mutex<HashMap<String, Locator>>,
    pub jobs: Mutex<HashMap<String, Arc<Mutex<Job>>>>,
    /// Account Engagement requests in flight.
    pub pardot_in_flight: AtomicUsize,
    /// Their high-water mark, and how many were refused for concurrency.
    pub pardot_in_flight_high: AtomicUsize,
    pub pardot_concurrency_refused: AtomicU64,
    pub org_id: String,
}

impl AppState {
    /// Resets the daily counters when the UTC day has changed.
    pub async fn roll_day(&self, now: DateTime<Utc>) {
        let mut day = self.day.lock().await;
        if now.date_naive() != *day {
            *day = now.date_naive();
            let mut l = self.limits.lock().await;
            l.salesforce_used = 0;
            l.pardot_used = 0;
        }
    }

    pub fn base_url(&self) -> &str {
        &self.config.public_url
    }

    pub fn stats(&self) -> Stats {
        Stats {
            pardot_in_flight: self.pardot_in_flight.load(Ordering::SeqCst),
            pardot_in_flight_high: self.pardot_in_flight_high.load(Ordering::SeqCst),
            pardot_concurrency_refused: self.pardot_concurrency_refused.load(Ordering::SeqCst),
        }
    }
}

/// Counts an Account Engagement request in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(pub &'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
