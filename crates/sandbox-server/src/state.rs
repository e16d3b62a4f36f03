//! What the server keeps between requests: sessions, the API limits and
//! their counters, query locators and Bulk jobs, all in memory (a restart
//! logs every client out, as a real org's session reset would).

use std::collections::{HashMap, VecDeque};
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
    /// Tokens granted (`/services/oauth2/token`): the logins of every client.
    #[serde(default)]
    pub logins: u64,
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
    /// How long change events are kept (Salesforce: 72 hours); a replay id
    /// older than that has expired.
    #[serde(default = "defaults::cdc_retention_secs")]
    pub cdc_retention_secs: u64,
    /// Change events the Pub/Sub API delivers to subscribers in any 24
    /// hours (Developer Edition: 10,000); past it, Subscribe fails with
    /// Salesforce's `subscription.limit.exceeded`.
    #[serde(default = "defaults::cdc_delivery_daily")]
    pub cdc_delivery_daily: u64,
    /// Events delivered in the last 24 hours (setting it restarts the
    /// window at that count).
    #[serde(default)]
    pub cdc_delivered: u64,
    /// How long an idle subscription waits before an empty keepalive
    /// response (Salesforce: within 270 seconds).
    #[serde(default = "defaults::pubsub_keepalive_ms")]
    pub pubsub_keepalive_ms: u64,
    /// Changes of one transaction published one by one; the rest make one
    /// overflow event per entity (Salesforce: 100,000).
    #[serde(default = "defaults::cdc_overflow_threshold")]
    pub cdc_overflow_threshold: u64,
}

/// Defaults of the change event limits, for configurations that predate them.
pub(crate) mod defaults {
    pub fn cdc_retention_secs() -> u64 {
        72 * 60 * 60
    }
    pub fn cdc_delivery_daily() -> u64 {
        10_000
    }
    pub fn pubsub_keepalive_ms() -> u64 {
        270_000
    }
    pub fn cdc_overflow_threshold() -> u64 {
        crmsync_sandbox::cdc::OVERFLOW_THRESHOLD
    }
}

/// A query's remaining records: their ids, in order (the rows are read when
/// each batch is asked for).
#[derive(Debug)]
pub struct Locator {
    /// The user whose query it is (at most ten open a user).
    pub owner: String,
    pub object: String,
    pub fields: Vec<String>,
    pub ids: Vec<String>,
    pub batch: usize,
    /// The whole query's size: every page reports it as `totalSize`.
    pub total: usize,
    pub created: Instant,
}

/// The window of the event delivery allocation.
pub const DELIVERY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

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
    /// CSV bytes uploaded to jobs and not run yet, over every job.
    pub bulk_bytes: AtomicUsize,
    /// Account Engagement requests in flight.
    pub pardot_in_flight: AtomicUsize,
    /// Their high-water mark, and how many were refused for concurrency.
    pub pardot_in_flight_high: AtomicUsize,
    pub pardot_concurrency_refused: AtomicU64,
    /// Tokens granted.
    pub logins: AtomicU64,
    pub org_id: String,
    /// Change events delivered, by when, for the 24-hour delivery allocation.
    pub deliveries: Mutex<VecDeque<(Instant, u64)>>,
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

    /// The limits as they stand, with the events delivered in the last 24
    /// hours.
    pub async fn current_limits(&self) -> Limits {
        let mut l = self.limits.lock().await;
        let mut window = self.deliveries.lock().await;
        while window.front().is_some_and(|(at, _)| at.elapsed() >= DELIVERY_WINDOW) {
            window.pop_front();
        }
        l.cdc_delivered = window.iter().map(|(_, n)| n).sum();
        l.clone()
    }

    /// Replaces the limits; a changed delivery count restarts the window at it.
    pub async fn set_limits(&self, new: Limits) -> Limits {
        let mut l = self.limits.lock().await;
        let mut window = self.deliveries.lock().await;
        let current: u64 = window.iter().map(|(_, n)| n).sum();
        if new.cdc_delivered != current {
            window.clear();
            window.push_back((Instant::now(), new.cdc_delivered));
        }
        *l = new;
        l.clone()
    }

    /// Change events that may still be delivered in the current 24 hours.
    pub async fn delivery_allowance(&self) -> u64 {
        let l = self.current_limits().await;
        l.cdc_delivery_daily.saturating_sub(l.cdc_delivered)
    }

    /// Counts up to `n` events as delivered, as many as the allocation
    /// still allows; returns how many.
    pub async fn reserve_deliveries(&self, n: u64) -> u64 {
        let l = self.limits.lock().await;
        let mut window = self.deliveries.lock().await;
        while window.front().is_some_and(|(at, _)| at.elapsed() >= DELIVERY_WINDOW) {
            window.pop_front();
        }
        let used: u64 = window.iter().map(|(_, n)| n).sum();
        let granted = n.min(l.cdc_delivery_daily.saturating_sub(used));
        if granted > 0 {
            window.push_back((Instant::now(), granted));
        }
        granted
    }

    pub fn base_url(&self) -> &str {
        &self.config.public_url
    }

    pub fn stats(&self) -> Stats {
        Stats {
            pardot_in_flight: self.pardot_in_flight.load(Ordering::SeqCst),
            pardot_in_flight_high: self.pardot_in_flight_high.load(Ordering::SeqCst),
            pardot_concurrency_refused: self.pardot_concurrency_refused.load(Ordering::SeqCst),
            logins: self.logins.load(Ordering::SeqCst),
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
