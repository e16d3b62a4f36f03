//! The daily API allowance (I8) through the real tiers, with the CRM
//! reached over HTTP (the Salesforce connector against `crmsync sandbox
//! serve`, whose own count of the calls it answered is the ground truth):
//! the batch lane stops at 90% of it, the immediate lane uses the rest,
//! nothing goes past it, and `status` shows the calls and the ETA.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crmsync_connector_kit::{CallGate, EndpointKind};
use crmsync_domain::merge::Side;
use crmsync_infra::CancellationToken;
use crmsync_sandbox_server::Limits;
use crmsync_store::connections;
use crmsync_systems::allowance::{ApiAllowances, ApiUsage24h, connection_usage, connections_usage};
use crmsync_tests::{TestApp, crmsync_exe};
use serde_json::{Value, json};

/// `n` leads and, for each, a prospect with the same email (`a<n>@allowance.example`).
async fn pairs(app: &TestApp, n: i64) {
    app.seed_pairs(n, "a", "allowance.example").await;
}

/// A marketer retitles prospects `from..=to` in one transaction.
async fn retitle(app: &TestApp, from: i64, to: i64, title: &str) {
    let marketer = app.sandbox.admin(crmsync_sandbox::ops::System::Ma).await.unwrap();
    sqlx::query(
        "UPDATE ma.prospects SET job_title = $1 || substr(email, 2, strpos(email, '@') - 2), last_modified_by = $2 \
         WHERE substr(email, 2, strpos(email, '@') - 2)::int BETWEEN $3 AND $4",
    )
    .bind(title)
    .bind(&marketer)
    .bind(from)
    .bind(to)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn lead_title(app: &TestApp, n: i64) -> Value {
    let title: Option<String> = sqlx::query_scalar("SELECT title FROM crm.leads WHERE email = $1")
        .bind(format!("a{n}@allowance.example"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    title.map_or(Value::Null, Value::from)
}

/// The Salesforce calls the sandbox server answered.
async fn answered(url: &str) -> u64 {
    let l: Limits = reqwest::get(format!("{url}/sandbox-admin/limits")).await.unwrap().json().await.unwrap();
    l.salesforce_used
}

/// Waits until lead `n` has `title`; false after `within`.
async fn arrives(app: &TestApp, n: i64, title: &str, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if lead_title(app, n).await == title {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_lane_stops_at_ninety_percent_of_the_allowance_the_immediate_lane_uses_the_rest_and_none_is_overspent() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(Limits::default(), stop.clone()).await;
    // The CRM's feeds are read once at the start: this test spends the
    // allowance on writes, MA → CRM, and the MA is detected by notification.
    app.use_salesforce(&url, json!({"poll_interval_secs": 3600})).await;
    app.set("batch_threshold", "1000").await;
    pairs(&app, 450).await;
    app.start_pipeline(1, 1);
    // Not `settle`: its probe asks the org whether anything is pending,
    // and the engine's own writes are, until a poll an hour away reads them.
    let started = Instant::now();
    loop {
        let titled: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ma.prospects WHERE job_title IS NOT NULL").fetch_one(&app.pool).await.unwrap();
        if titled == 450 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the first sync did not finish: {titled} of 450");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An allowance with 60 calls left: the batch lane may take it to 90%.
    let base = answered(&url).await;
    let allowance = base + 60;
    let batch_limit = (allowance as f64 * 0.9).floor() as u64;
    app.use_salesforce(&url, json!({"poll_interval_secs": 3600, "api_daily_allowance": allowance})).await;
    app.set("batch_threshold", "400").await;
    app.set("batch_budget_per_hour", "3600000").await;
    app.set("batch_burst", "10").await;
    retitle(&app, 1, 450, "Batch ").await;

    // The batch lane runs until it has used its 90%, then waits.
    let counts = ApiAllowances::new(&app.config.redis);
    let started = Instant::now();
    let mut steady_since: Option<(Instant, u64)> = None;
    loop {
        let used = counts.usage("default", Side::Crm, Some(allowance)).await.unwrap().used;
        assert!(answered(&url).await <= batch_limit, "the batch lane never goes past 90%");
        match steady_since {
            Some((at, n)) if n == used && at.elapsed() > Duration::from_secs(3) => break,
            Some((_, n)) if n == used => {}
            _ => steady_since = Some((Instant::now(), used)),
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the batch lane never settled at its share ({used} of {allowance})");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let backlog = crmsync_applier::batch_figures(&app.pool, "default").await.unwrap().backlog;
    assert!(backlog > 0, "the allowance, not the backlog, stopped the lane");
    let used = counts.usage("default", Side::Crm, Some(allowance)).await.unwrap();
    assert!(used.used >= batch_limit - 2 && used.used <= batch_limit, "stopped at its share: {used:?} (limit {batch_limit})");
    assert!(answered(&url).await <= used.used, "every call answered was counted first");

    // The status says so: the calls, the allowance, and an ETA the
    // allowance holds back.
    let (_, out, _) = app.run_cli(crmsync_exe!(), &["status", "--json"]).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    let c = &status["connections"][0];
    assert_eq!(c["api"][0]["system"], "crm", "{c}");
    assert_eq!(c["api"][0]["allowance"], allowance);
    assert!(c["api"][0]["used_24h"].as_u64().unwrap() >= batch_limit - 2, "{c}");
    assert!(c["api"][0]["by_kind"]["write"].as_u64().unwrap() > 0, "{c}");
    assert!(c["batch_lane"]["eta_secs"].as_u64() > c["batch_lane"]["budget_eta_secs"].as_u64(), "the allowance holds the ETA back: {c}");

    // The immediate lane still has the last 10%: one edit at a time gets
    // through until it too is spent, and nothing is ever overspent.
    let mut synced = 0;
    for n in 1..=30 {
        // Prospect n's title is its batch title, or not yet: a new one.
        retitle(&app, n, n, "Now ").await;
        if !arrives(&app, n, &format!("Now {n}"), Duration::from_secs(6)).await {
            break;
        }
        synced += 1;
        assert!(answered(&url).await <= allowance, "never past the allowance");
    }
    assert!(synced >= 1, "the immediate lane used the share the batch lane left");
    assert!(synced < 30, "the immediate lane too stopped at the allowance");
    let spent = counts.usage("default", Side::Crm, Some(allowance)).await.unwrap().used;
    assert!(spent <= allowance && spent >= allowance - 2, "spent to the allowance, never past it: {spent} of {allowance}");
    assert!(answered(&url).await <= allowance);
    println!("allowance {allowance}: batch lane stopped at {}, immediate edits synced after it {synced}", used.used);

    stop.cancel();
    app.cleanup().await;
}

/// `status` and the applier's metrics read the API calls of every
/// connection at once (one pipeline to Redis): each connection gets its
/// own figures per system, in the order of its systems, with its own
/// allowance, as reading it alone gives; a connection whose systems are
/// all the embedded sandbox is not asked about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_read_every_connections_api_calls_at_once() {
    let app = TestApp::spawn().await;
    let now = chrono::Utc::now();
    let oauth = json!({"login_url": "http://127.0.0.1:9", "flow": "client_credentials", "client_id": "id", "client_secret": {"env": "CRMSYNC_TEST_UNUSED_SECRET"}});
    let sandbox = connections::load(&app.pool, "default").await.unwrap();
    let mut crm_only = sandbox.clone();
    crm_only.set("crm", &json!({"kind": "salesforce", "oauth": oauth, "api_daily_allowance": 5000}).to_string(), now).unwrap();
    let mut both = crm_only.clone();
    let ma = json!({"kind": "account_engagement", "base_url": "http://127.0.0.1:9", "business_unit_id": "0Uv000000000001AAA",
                    "oauth": oauth, "api_daily_allowance": 700});
    both.set("ma", &ma.to_string(), now).unwrap();

    let counts = ApiAllowances::new(&app.config.redis);
    let calls = |id: &'static str, side: Side, kinds: &'static [EndpointKind]| {
        let gate = counts.gate(id, side, None);
        async move {
            for kind in kinds {
                assert!(gate.admit(*kind).await.is_ok());
            }
        }
    };
    calls("crm-only", Side::Crm, &[EndpointKind::Query, EndpointKind::Query, EndpointKind::Write]).await;
    calls("both", Side::Crm, &[EndpointKind::Bulk]).await;
    calls("both", Side::Ma, &[EndpointKind::Query, EndpointKind::Import, EndpointKind::Import, EndpointKind::Events]).await;

    let asked = [("sandboxed", &sandbox), ("crm-only", &crm_only), ("both", &both), ("idle", &both)];
    let all = connections_usage(&counts, asked.iter().map(|(id, s)| (*id, *s))).await.unwrap();
    let figures = |allowance: u64, kinds: &[(&str, u64)], counted: u64| ApiUsage24h {
        used: counted,
        allowance: Some(allowance),
        by_kind: kinds.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        by_lane: if counted > 0 { BTreeMap::from([("immediate".to_owned(), counted)]) } else { BTreeMap::new() },
        batch_last_hour: 0,
    };
    assert!(!all.contains_key("sandboxed"), "{all:?}");
    assert_eq!(all["crm-only"], [(Side::Crm, figures(5000, &[("query", 2), ("write", 1)], 3))]);
    assert_eq!(
        all["both"],
        [(Side::Crm, figures(5000, &[("bulk", 1)], 1)), (Side::Ma, figures(700, &[("events", 1), ("import", 2), ("query", 1)], 3))],
        "events are listed, not counted"
    );
    assert_eq!(all["idle"], [(Side::Crm, figures(5000, &[], 0)), (Side::Ma, figures(700, &[], 0))]);
    for (id, settings) in &asked[1..] {
        assert_eq!(connection_usage(&counts, id, settings).await.unwrap(), all[*id], "{id} read alone");
    }
    assert!(connections_usage(&counts, [("sandboxed", &sandbox)]).await.unwrap().is_empty());
    app.cleanup().await;
}
