//! The engine on change events: the real tiers, the Salesforce connector
//! subscribed to the sandbox server's Pub/Sub API, polling effectively off
//! (a reconciliation sweep an hour). A CRM edit wakes its feed and reaches
//! the MA at once; the engine's own CRM writes wake nothing; an idle
//! connection makes no Salesforce call; a producer that was stopped
//! resumes after the replay id its feed's cursor stored.

use std::time::{Duration, Instant};

use crmsync_infra::CancellationToken;
use crmsync_sandbox::schema::LEAD;
use crmsync_sandbox_server::Limits;
use crmsync_store::feeds::{self, FeedState};
use crmsync_systems::allowance::ApiAllowances;
use crmsync_tests::{TestApp, Tier};
use serde_json::{Value, json};

/// A test app serving its sandbox over HTTP and Pub/Sub, its CRM the
/// served org with change events; no tier runs yet.
pub(super) struct World {
    pub app: TestApp,
    pub stop: CancellationToken,
    pub url: String,
}

impl World {
    pub async fn new(limits: Limits) -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let app = TestApp::spawn().await;
        let stop = CancellationToken::new();
        let (url, pubsub) = app.serve_sandbox_pubsub(limits, stop.clone()).await;
        app.use_salesforce_events(&url, &pubsub, json!({})).await;
        World { app, stop, url }
    }

    /// Stops the tiers, then the server (so no stream ends under them).
    /// The server shares the test's pool, and its streams and commit
    /// listener hold connections of it until it stops: the pool can only
    /// close (in `cleanup`) after the server has.
    pub async fn end(mut self) {
        for tier in [Tier::Producer, Tier::Matcher, Tier::Applier] {
            self.app.stop(tier).await;
        }
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.app.cleanup().await;
    }
}

/// Keepalives every half second, so streams are never quiet for long.
pub(super) fn quick() -> Limits {
    Limits { pubsub_keepalive_ms: 500, ..Limits::default() }
}

/// `n` leads and, for each, a prospect with the same email (`c<n>@cdc.example`).
pub(super) async fn pairs(app: &TestApp, n: i64) {
    app.seed_pairs(n, "c", "cdc.example").await;
}

pub(super) async fn lead_id(app: &TestApp, n: i64) -> String {
    sqlx::query_scalar("SELECT id FROM crm.leads WHERE email = $1").bind(format!("c{n}@cdc.example")).fetch_one(&app.pool).await.unwrap()
}

/// A salesperson retitles lead `n` (by hand, as in the CRM's UI).
pub(super) async fn retitle(app: &TestApp, n: i64, title: &str) {
    app.update(&LEAD, &lead_id(app, n).await, &[("Title", title)]).await;
}

async fn prospect_title(app: &TestApp, n: i64) -> Value {
    let title: Option<String> = sqlx::query_scalar("SELECT job_title FROM ma.prospects WHERE email = $1")
        .bind(format!("c{n}@cdc.example"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    title.map_or(Value::Null, Value::from)
}

/// Waits until prospect `n` shows `title`; how long it took. A generous
/// deadline only: a slow machine makes the test longer, not red.
pub(super) async fn until_title(app: &TestApp, n: i64, title: &str) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if prospect_title(app, n).await == title {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("prospect {n} never got the title {title:?} (it has {})", prospect_title(app, n).await);
}

pub(super) async fn limits(url: &str) -> Limits {
    reqwest::get(format!("{url}/sandbox-admin/limits")).await.unwrap().json().await.unwrap()
}

pub(super) async fn set_limits(url: &str, l: &Limits) {
    reqwest::Client::new().put(format!("{url}/sandbox-admin/limits")).json(l).send().await.unwrap().error_for_status().unwrap();
}

/// The REST calls the served org has answered today.
pub(super) async fn calls(url: &str) -> u64 {
    limits(url).await.salesforce_used
}

pub(super) async fn feed(app: &TestApp, name: &str) -> FeedState {
    feeds::all(&app.pool, "default").await.unwrap().into_iter().find(|f| f.feed == name).expect("the feed is stored")
}

/// The replay id a stored cursor carries (the sandbox's: a position).
pub(super) fn replay(f: &FeedState) -> Option<i64> {
    use base64::Engine;
    let text = f.cursor.as_ref()?.get("replay_id")?.as_str()?;
    crmsync_pubsub::replay_id::decode(&base64::engine::general_purpose::STANDARD.decode(text).ok()?)
}

/// The stamp cursor alone, without the replay id.
fn stamp_part(f: &FeedState) -> Value {
    let mut c = f.cursor.clone().unwrap_or_default();
    if let Some(o) = c.as_object_mut() {
        o.remove("replay_id");
    }
    c
}

/// Waits until the lead feed's stored cursor carries the last lead event;
/// its replay id.
pub(super) async fn lead_events_stored(app: &TestApp) -> i64 {
    let start = Instant::now();
    loop {
        let tip: Option<i64> =
            sqlx::query_scalar("SELECT max(replay_id) FROM sandbox.cdc_events WHERE tenant = 'default' AND entity = 'Lead'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let stored = replay(&feed(app, "crm.lead").await);
        if tip.is_some() && stored >= tip {
            return stored.unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the lead feed's cursor never carried event {tip:?} (it has {stored:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets the look back after the first sync's changes go (an overlap
/// window, 3 s here, after them), so what follows is a quiet connection.
pub(super) async fn quiet() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_edit_reaches_the_ma_at_once_and_an_idle_connection_makes_no_salesforce_call() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 6).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    quiet().await;

    let before = calls(&w.url).await;
    let window = Duration::from_secs(12);
    tokio::time::sleep(window).await;
    let idle = calls(&w.url).await - before;
    println!("Salesforce API calls over {window:?} with nothing changing: {idle} (keepalives every 500 ms are not API calls)");
    assert_eq!(idle, 0, "an idle connection with live change events does not query");

    let before = calls(&w.url).await;
    let mut latencies = Vec::new();
    for n in 1..=6 {
        let title = format!("Edited {n}");
        let start = Instant::now();
        retitle(&w.app, n, &title).await;
        until_title(&w.app, n, &title).await;
        latencies.push(start.elapsed());
    }
    let spent = calls(&w.url).await - before;
    latencies.sort();
    let ms: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
    println!("CRM → MA latency over HTTP, woken by change events (ms, sorted): {ms:?}; Salesforce calls for 6 edits: {spent}");
    assert!(spent <= 6 * 3, "a woken feed queries once or twice an edit ({spent} calls)");
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_own_crm_writes_wake_no_feed() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 3).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    quiet().await;
    let allowances = ApiAllowances::new(&w.app.config.redis);
    let usage = || async { allowances.usage("default", crmsync_domain::merge::Side::Crm, None).await.unwrap().by_kind };
    let (lead_before, calls_before, kinds_before) = (feed(&w.app, "crm.lead").await, calls(&w.url).await, usage().await);

    // A marketer edits a prospect: the engine writes its lead, naming
    // itself in Sforce-Call-Options, and the org's event says so.
    let marketer = w.app.sandbox.admin(crmsync_sandbox::ops::System::Ma).await.unwrap();
    sqlx::query("UPDATE ma.prospects SET country = 'Japan', last_modified_by = $1 WHERE email = 'c1@cdc.example'")
        .bind(&marketer)
        .execute(&w.app.pool)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let country: Option<String> =
            sqlx::query_scalar("SELECT country FROM crm.leads WHERE email = 'c1@cdc.example'").fetch_one(&w.app.pool).await.unwrap();
        if country.as_deref() == Some("Japan") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the engine never wrote the lead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for any wake to show.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let lead_after = feed(&w.app, "crm.lead").await;
    let (spent, kinds_after) = (calls(&w.url).await - calls_before, usage().await);
    let delta = |k: &str| kinds_after.get(k).copied().unwrap_or(0) - kinds_before.get(k).copied().unwrap_or(0);
    println!(
        "the engine's own CRM write cost {spent} Salesforce calls: {} write, {} query (the matcher's and the applier's reads)",
        delta("write"),
        delta("query")
    );
    assert_eq!(stamp_part(&lead_after), stamp_part(&lead_before), "the lead feed did not query");
    assert_eq!(lead_after.published, lead_before.published);
    assert!(replay(&lead_after) > replay(&lead_before), "its replay id moved past the engine's own event without a query");
    // The matcher's lookup of the lead the prospect names, the applier's
    // read before its write, the write: no feed query after it.
    assert_eq!((delta("write"), delta("query")), (1, 2), "one write, the matcher's and the applier's reads: no feed query");
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_while_the_producer_is_stopped_arrive_from_the_stored_replay_id() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 3).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    retitle(&w.app, 1, "Before").await;
    until_title(&w.app, 1, "Before").await;
    // The cursor carrying the edit's event is stored after the page's publish.
    let stored = lead_events_stored(&w.app).await;

    w.app.stop(Tier::Producer).await;
    let published = feed(&w.app, "crm.lead").await.published;
    retitle(&w.app, 2, "While stopped 2").await;
    retitle(&w.app, 3, "While stopped 3").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replay(&feed(&w.app, "crm.lead").await), Some(stored), "nothing moves while no producer runs");
    let delivered = limits(&w.url).await.cdc_delivered;

    w.app.start(Tier::Producer);
    // Watch the stored cursor as the producer catches up: its replay id
    // never passes the two edits before they are published.
    let start = Instant::now();
    loop {
        let f = feed(&w.app, "crm.lead").await;
        if replay(&f) > Some(stored) {
            assert!(f.published >= published + 2, "the replay id moved before the edits it covers were published: {f:?}");
        }
        if prospect_title(&w.app, 2).await == "While stopped 2"
            && prospect_title(&w.app, 3).await == "While stopped 3"
            && replay(&f) > Some(stored)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the edits made while stopped never arrived: {f:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redelivered = limits(&w.url).await.cdc_delivered - delivered;
    println!("after the restart the org delivered {redelivered} events: those after the stored replay id");
    assert_eq!(redelivered, 2, "the subscription resumed after the stored replay id (CUSTOM), not at LATEST");
    w.end().await;
}
