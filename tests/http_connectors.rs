//! The whole pipeline with the CRM reached over HTTP: the Salesforce
//! connector against `crmsync sandbox serve`, through change queries paged
//! by `nextRecordsUrl`, sObject Collections writes with a failure inside a
//! call, an expired token, the daily limit hit and lifted, and a change that
//! commits late inside the overlap window.

use std::time::Duration;

use crmsync_infra::CancellationToken;
use crmsync_sandbox::schema::LEAD;
use crmsync_sandbox_server::Limits;
use crmsync_tests::TestApp;
use serde_json::{Value, json};

/// `n` leads and, for each, a prospect with the same email (`p<n>@http.example`).
async fn pairs(app: &TestApp, n: i64) {
    app.seed_pairs(n, "p", "http.example").await;
}

/// The lead of pair `n`.
async fn lead_id(app: &TestApp, n: i64) -> String {
    sqlx::query_scalar("SELECT id FROM crm.leads WHERE email = $1").bind(format!("p{n}@http.example")).fetch_one(&app.pool).await.unwrap()
}

async fn prospect_of(app: &TestApp, n: i64) -> Value {
    let id: i64 = sqlx::query_scalar("SELECT id FROM ma.prospects WHERE email = $1")
        .bind(format!("p{n}@http.example"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.prospect(id).await
}

async fn limits(url: &str) -> Limits {
    reqwest::get(format!("{url}/sandbox-admin/limits")).await.unwrap().json().await.unwrap()
}

async fn set_limits(url: &str, l: &Limits) {
    reqwest::Client::new().put(format!("{url}/sandbox-admin/limits")).json(l).send().await.unwrap();
}

/// Waits (up to a generous deadline, so a slow machine only makes the test
/// longer) until the prospect's job title is `title`.
async fn until_title(app: &TestApp, n: i64, title: &str) {
    for _ in 0..600 {
        if prospect_of(app, n).await["job_title"] == title {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prospect {n} never got the title {title:?}: {}", prospect_of(app, n).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_syncs_through_the_salesforce_api() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(Limits::default(), stop.clone()).await;
    app.use_salesforce(&url, json!({})).await;
    // Small pages: the lead feed takes many change queries and follows
    // nextRecordsUrl.
    app.config.producer.page_size = 60;
    // All 700 first changes in the immediate lane: lanes are tested apart.
    app.set("batch_threshold", "1000").await;
    pairs(&app, 350).await;
    app.start_pipeline(1, 1);
    app.settle().await;

    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM identities WHERE status = 'linked'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(linked, 350, "every lead read over HTTP found its prospect");
    let titled: i64 = sqlx::query_scalar("SELECT count(*) FROM ma.prospects WHERE job_title = 'T' || substr(last_name, 6)")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(titled, 350, "each lead's title filled its prospect's blank one");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    let lead_queries: i64 = limits(&url).await.salesforce_used as i64;
    assert!(lead_queries >= 6, "350 leads in pages of 60 take several calls ({lead_queries})");

    // One record of a collection call refused (Country is 80 characters in
    // the CRM, 255 in the MA), the others written.
    let long = "C".repeat(100);
    // As a marketer (the engine's own writes are not synced back).
    let marketer = app.sandbox.admin(crmsync_sandbox::ops::System::Ma).await.unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    for (n, country) in [(1, "Japan"), (2, long.as_str()), (3, "France")] {
        sqlx::query("UPDATE ma.prospects SET country = $1, last_modified_by = $3 WHERE email = $2")
            .bind(country)
            .bind(format!("p{n}@http.example"))
            .bind(&marketer)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    app.settle().await;
    let countries: Vec<Value> = countries(&app).await;
    assert_eq!(countries, [json!("Japan"), Value::Null, json!("France")]);
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(format!("{errors:?}").contains("STRING_TOO_LONG"), "{errors:?}");

    // Every token expires: the connector logs in again and goes on.
    reqwest::Client::new().post(format!("{url}/sandbox-admin/expire-sessions")).send().await.unwrap();
    app.update(&LEAD, &lead_id(&app, 10).await, &[("Title", "After expiry")]).await;
    app.settle().await;
    assert_eq!(prospect_of(&app, 10).await["job_title"], "After expiry");

    // The daily limit runs out: calls back off, nothing is lost, and the
    // change arrives once the limit is lifted.
    let l = limits(&url).await;
    set_limits(&url, &Limits { salesforce_daily: l.salesforce_used, ..l.clone() }).await;
    app.update(&LEAD, &lead_id(&app, 11).await, &[("Title", "During the limit")]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(prospect_of(&app, 11).await["job_title"], "During the limit", "no call gets through over the limit");
    let refused = limits(&url).await;
    assert_eq!(refused.salesforce_used, l.salesforce_used, "refused calls are not counted");
    set_limits(&url, &Limits { salesforce_daily: 1_000_000, ..refused }).await;
    until_title(&app, 11, "During the limit").await;
    app.settle().await;
    assert_eq!(app.sync_errors().await.len(), 1, "the limit made no sync errors");

    // A change stamped before the feed moved past it, committed later,
    // inside the overlap window.
    let mut late = app.pool.begin().await.unwrap();
    let seller = app.sandbox.admin(crmsync_sandbox::ops::System::Crm).await.unwrap();
    sqlx::query("UPDATE crm.leads SET title = 'Late', last_modified_by = $2 WHERE id = $1")
        .bind(lead_id(&app, 20).await)
        .bind(&seller)
        .execute(&mut *late)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.update(&LEAD, &lead_id(&app, 21).await, &[("Title", "On time")]).await;
    until_title(&app, 21, "On time").await;
    late.commit().await.unwrap();
    until_title(&app, 20, "Late").await;
    app.settle().await;

    stop.cancel();
    app.cleanup().await;
}

/// The CRM countries of leads 1, 2 and 3.
async fn countries(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for n in 1..=3 {
        out.push(app.show(&LEAD, &lead_id(app, n).await).await["country"].clone());
    }
    out
}
