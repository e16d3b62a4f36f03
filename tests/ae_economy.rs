//! Account Engagement's API allowance is money (I8): through the real tiers
//! and `crmsync sandbox serve`, a backfill costs AE calls by the page and
//! the import, not by the prospect; a batch-lane chunk goes through the
//! Import API, whose refused rows become per-record outcomes and sync
//! errors while the good rows are written; an import's blank cells never
//! erase a value the engine did not mean to; and an idle connection polls
//! less and less, the engine's own writes not waking it, a user's change
//! bringing the fast pace back.

use std::time::{Duration, Instant};

use crmsync_account_engagement::{AccountEngagementMa, Pacing, ProspectFields};
use crmsync_connector::{MaApi, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::Email;
use crmsync_domain::endpoint::AccountEngagementEndpoint;
use crmsync_infra::CancellationToken;
use crmsync_sandbox::schema::PROSPECT;
use crmsync_sandbox_server::Limits;
use crmsync_tests::{SANDBOX_BUSINESS_UNIT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TestApp};
use serde_json::{Value, json};

/// Limits no test here reaches: calls are counted, not refused.
fn roomy() -> Limits {
    Limits { pardot_daily: 10_000_000, salesforce_daily: 10_000_000, ..Limits::default() }
}

/// The AE endpoint of the served business unit, with `extra` keys.
fn ae_endpoint(app: &TestApp, url: &str, extra: Value) -> Value {
    let secret = app.secret_file("ae-secret", &format!("{SANDBOX_CLIENT_SECRET}\n"));
    let mut e = json!({
        "kind": "account_engagement",
        "base_url": url,
        "business_unit_id": SANDBOX_BUSINESS_UNIT,
        "oauth": {"login_url": url, "flow": "client_credentials", "client_id": SANDBOX_CLIENT_ID, "client_secret": {"file": secret}},
        "overlap_secs": 3,
        "limit_probe_secs": 1,
        "poll_interval_secs": 1,
        "poll_max_secs": 1,
        "import_poll_secs": 1,
    });
    e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    e
}

/// The connector itself, on `endpoint` (an [`ae_endpoint`]).
async fn connector(endpoint: &Value) -> AccountEngagementMa {
    let mut e = endpoint.clone();
    e.as_object_mut().unwrap().remove("kind");
    let endpoint: AccountEngagementEndpoint = serde_json::from_value(e).unwrap();
    let pacing = Pacing { backoff_base: Duration::from_millis(20), backoff_max: Duration::from_millis(200), ..Pacing::default() };
    AccountEngagementMa::connect_with(&endpoint, ProspectFields::default(), pacing).await.unwrap()
}

async fn limits(url: &str) -> Limits {
    reqwest::get(format!("{url}/sandbox-admin/limits")).await.unwrap().json().await.unwrap()
}

/// Waits up to `secs` until `check` holds.
async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("never: {what}");
}

/// `n` linked pairs, each side holding a value only it has: the lead a
/// title, its prospect a phone.
async fn linked_pairs(app: &TestApp, n: i64) {
    let (ma_admin, crm_admin) = app.admins().await;
    sqlx::query(
        "INSERT INTO crm.leads (tenant, last_name, company, email, title, last_modified_by) \
         SELECT 'default', 'Pair ' || g, 'Acme', 'pair' || g || '@economy.example', 'title-' || g, $2 FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(&crm_admin)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, company, phone, crm_lead_fid, last_modified_by) \
         SELECT 'default', l.email, l.last_name, l.company, 'phone-' || l.last_name, l.id, $1 \
         FROM crm.leads l WHERE l.tenant = 'default' AND l.email LIKE '%@economy.example' ORDER BY l.last_name",
    )
    .bind(&ma_admin)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// Pairs holding both values on both sides.
async fn converged(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid \
         WHERE p.email LIKE '%@economy.example' AND p.job_title = l.title AND l.phone = p.phone",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Both systems over HTTP, the batch lane from 100 changes, unpaced, in
/// chunks of up to 1,000 records.
async fn over_http(app: &mut TestApp, stop: &CancellationToken, ma: Value) -> String {
    let url = app.serve_sandbox(roomy(), stop.clone()).await;
    app.use_salesforce(&url, json!({})).await;
    app.set("ma", &ae_endpoint(app, &url, ma).to_string()).await;
    app.set("batch_threshold", "100").await;
    app.set("batch_burst", "10000").await;
    app.set("batch_budget_per_hour", "3600000000").await;
    app.config.producer.records_per_message = 1_000;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_costs_account_engagement_calls_by_the_thousand_not_by_the_prospect() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = over_http(&mut app, &stop, json!({"import_threshold": 50})).await;
    let pairs = 2_000;
    linked_pairs(&app, pairs).await;
    let before = limits(&url).await;
    let started = Instant::now();
    app.start_pipeline(1, 1);
    until("every pair holds both values on both sides", 300, || async { converged(&app).await == pairs }).await;
    let after = limits(&url).await;
    let (ae, sf) = (after.pardot_used - before.pardot_used, after.salesforce_used - before.salesforce_used);
    println!(
        "backfill of {pairs} pairs ({} records): {ae} AE calls, {sf} Salesforce calls, {:.1} s",
        2 * pairs,
        started.elapsed().as_secs_f64()
    );
    // Per 1,000 prospects: the feed's pages (and its re-reads of what the
    // engine wrote), the matcher's listing of the business unit, the
    // applier's seeks before writing, and an import's three or so steps
    // per chunk. One call per prospect would be 4,000 here.
    assert!(ae <= 120, "{ae} AE calls for {pairs} prospects");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_chunks_refused_row_is_a_sync_error_and_the_others_are_written() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = over_http(&mut app, &stop, json!({"import_threshold": 50})).await;
    linked_pairs(&app, 300).await;
    app.start_pipeline(1, 1);
    until("the first sync", 180, || async { converged(&app).await == 300 }).await;
    app.settle().await;
    // Every lead's title changes in one transaction: 300 changes, the batch
    // lane; one title is longer than the prospect's field (128).
    let crm_admin = app.admins().await.1;
    let long = "L".repeat(200);
    sqlx::query(
        "UPDATE crm.leads SET title = CASE WHEN last_name = 'Pair 7' THEN $2 ELSE 'new-' || last_name END, last_modified_by = $1 \
         WHERE email LIKE '%@economy.example'",
    )
    .bind(&crm_admin)
    .bind(&long)
    .execute(&app.pool)
    .await
    .unwrap();
    let before = limits(&url).await.pardot_used;
    let new_titles = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ma.prospects WHERE job_title LIKE 'new-Pair %'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    until("the 299 good rows are written", 120, || async { new_titles().await == 299 }).await;
    app.settle().await;
    let used = limits(&url).await.pardot_used - before;
    println!("a batch of 300 prospect writes, one refused: {used} AE calls");
    assert!(used < 60, "{used} AE calls for 300 writes: not one each");
    let refused: Value =
        sqlx::query_scalar("SELECT to_json(p) FROM ma.prospects p WHERE last_name = 'Pair 7'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(refused["job_title"], "title-7", "the refused row changed nothing");
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(format!("{errors:?}").contains("Field Validation Failure"), "{errors:?}");
    stop.cancel();
    app.cleanup().await;
}

fn write(target: ProspectTarget, fields: Value, fence: Option<i64>) -> ProspectWrite {
    ProspectWrite { target, fields: serde_json::from_value(fields).unwrap(), crm_link: None, fence, unmodified_since: None }
}

async fn prospect_by_email(app: &TestApp, email: &str) -> Value {
    sqlx::query_scalar("SELECT to_json(p) FROM ma.prospects p WHERE email = $1").bind(email).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_gives_each_row_its_outcome_and_a_blank_cell_erases_only_what_the_engine_blanks() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(roomy(), stop.clone()).await;
    let endpoint = ae_endpoint(&app, &url, json!({"import_threshold": 2}));
    let mut ids = Vec::new();
    for n in 1..=6 {
        let email = format!("row{n}@import.example");
        ids.push(app.create_prospect(&[("email", &email), ("lastName", "Row"), ("city", "Kyoto"), ("jobTitle", "Before")]).await);
    }
    sqlx::query("UPDATE ma.prospects SET sync_fence = 10 WHERE id = $1").bind(ids[3]).execute(&app.pool).await.unwrap();
    let ae = connector(&endpoint).await;
    let before = limits(&url).await.pardot_used;
    let writes = [
        // The city column is in the file (the next row writes it): blank
        // here, it must leave Kyoto alone.
        write(ProspectTarget::Id(ids[0]), json!({"jobTitle": "After"}), Some(11)),
        write(ProspectTarget::Id(ids[1]), json!({"city": "Osaka"}), Some(11)),
        write(ProspectTarget::Id(ids[2]), json!({"jobTitle": "J".repeat(200)}), Some(11)),
        write(ProspectTarget::Id(ids[3]), json!({"lastName": "Stale"}), Some(5)),
        write(ProspectTarget::Id(999_999), json!({"lastName": "Nobody"}), Some(11)),
        // Meant: the engine blanks this job title (written on its own).
        write(ProspectTarget::Id(ids[4]), json!({"jobTitle": null}), Some(11)),
        write(ProspectTarget::UpsertByEmail(Email::parse("fresh@import.example").unwrap()), json!({"lastName": "Fresh"}), Some(11)),
        write(ProspectTarget::UpsertByEmail(Email::parse("ROW6@import.example").unwrap()), json!({"company": "Upserted"}), Some(11)),
    ];
    let outcomes = ae.write_prospects_in_bulk(&writes).await.unwrap();
    let used = limits(&url).await.pardot_used - before;
    println!("{} writes, two imports and one write by id: {used} AE calls; outcomes {outcomes:?}", writes.len());
    assert!(matches!(&outcomes[0], WriteOutcome::Written { id, created: false, .. } if *id == ids[0].to_string()), "{outcomes:?}");
    assert!(matches!(&outcomes[1], WriteOutcome::Written { created: false, .. }), "{outcomes:?}");
    assert!(
        matches!(&outcomes[2], WriteOutcome::Rejected { code, message } if code == "Field Validation Failure" && message.contains("jobTitle")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[3], WriteOutcome::Fenced);
    assert_eq!(outcomes[4], WriteOutcome::NotFound);
    assert!(matches!(&outcomes[5], WriteOutcome::Written { .. }), "{outcomes:?}");
    let fresh = prospect_by_email(&app, "fresh@import.example").await;
    assert!(
        matches!(&outcomes[6], WriteOutcome::Written { id, created: true, .. } if Some(id.as_str()) == fresh["id"].as_i64().map(|i| i.to_string()).as_deref()),
        "{outcomes:?} {fresh}"
    );
    assert!(matches!(&outcomes[7], WriteOutcome::Written { id, created: false, .. } if *id == ids[5].to_string()), "{outcomes:?}");
    let row = |i: usize| app.prospect(ids[i]);
    let first = row(0).await;
    assert_eq!((first["job_title"].as_str(), first["city"].as_str()), (Some("After"), Some("Kyoto")), "a blank cell erased nothing");
    let second = row(1).await;
    assert_eq!((second["city"].as_str(), second["job_title"].as_str()), (Some("Osaka"), Some("Before")));
    assert_eq!(row(2).await["job_title"], "Before", "the refused row changed nothing");
    assert_eq!(row(3).await["last_name"], "Row", "the stale writer was fenced");
    assert_eq!(row(4).await["job_title"], Value::Null, "the blank the engine meant was written");
    assert_eq!(row(5).await["company"], "Upserted", "upserted by email onto the live prospect");
    assert_eq!(first["last_modified_by"], ae.integration_user(), "an import writes as the engine's MA user (I7)");
    assert_eq!(fresh["last_modified_by"], ae.integration_user());
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_polls_less_and_less() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(roomy(), stop.clone()).await;
    let backoff = json!({"poll_interval_secs": 1, "poll_max_secs": 8});
    app.use_salesforce(&url, backoff.clone()).await;
    app.set("ma", &ae_endpoint(&app, &url, backoff).to_string()).await;
    linked_pairs(&app, 20).await;
    app.start_pipeline(1, 1);
    until("the first sync", 120, || async { converged(&app).await == 20 }).await;
    app.settle().await;
    let before = limits(&url).await;
    let idle = Duration::from_secs(24);
    tokio::time::sleep(idle).await;
    let after = limits(&url).await;
    let (ae, sf) = (after.pardot_used - before.pardot_used, after.salesforce_used - before.salesforce_used);
    println!("idle for {idle:?}: {ae} AE calls (one feed), {sf} Salesforce calls (five feeds)");
    // Waits of 1, 2, 4, 8, 8 s...: about 6 polls a feed in 24 s where a
    // fixed second would be 24 (and the producer's half second 48).
    assert!(ae <= 8, "{ae} AE calls while idle");
    assert!(sf <= 5 * 8, "{sf} Salesforce calls while idle");
    stop.cancel();
    app.cleanup().await;
}

/// Calls the feed every 50 ms until a call reaches the API; the page.
async fn next_poll(ae: &AccountEngagementMa, url: &str, cursor: &mut Option<crmsync_connector::Cursor>) -> usize {
    loop {
        let before = limits(url).await.pardot_used;
        let page = ae.prospect_changes(cursor.as_ref(), 1_000).await.unwrap();
        *cursor = Some(page.next);
        if limits(url).await.pardot_used > before {
            return page.records.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_write_keeps_the_feed_backing_off_and_a_users_change_brings_the_fast_pace_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(roomy(), stop.clone()).await;
    let ae = connector(&ae_endpoint(&app, &url, json!({"poll_interval_secs": 1, "poll_max_secs": 4}))).await;
    let prospect = app.create_prospect(&[("email", "idle@poll.example"), ("lastName", "Idle")]).await;
    let (s, max) = (Duration::from_secs(1), Duration::from_secs(4));
    let mut cursor = None;
    assert_eq!(next_poll(&ae, &url, &mut cursor).await, 1);
    assert_eq!(ae.poll_wait(), Some(s), "a user's prospect: the fast pace");
    let before = limits(&url).await.pardot_used;
    let started = Instant::now();
    for wait in [2, 4, 4] {
        assert_eq!(next_poll(&ae, &url, &mut cursor).await, 0);
        assert_eq!(ae.poll_wait(), Some(wait * s), "idle: the wait doubles up to the cap");
    }
    let polls = limits(&url).await.pardot_used - before;
    println!("idle: {polls} polls in {:.1} s of asking every 50 ms", started.elapsed().as_secs_f64());
    assert_eq!(polls, 3);
    let written = ae.write_prospects(&[write(ProspectTarget::Id(prospect), json!({"city": "Engine"}), Some(1))]).await.unwrap();
    assert!(matches!(written[0], WriteOutcome::Written { .. }));
    assert_eq!(next_poll(&ae, &url, &mut cursor).await, 1, "the feed reads the engine's write");
    assert_eq!(ae.poll_wait(), Some(max), "the engine's own write is no activity: still backing off");
    app.update(&PROSPECT, &prospect.to_string(), &[("city", "User")]).await;
    assert_eq!(next_poll(&ae, &url, &mut cursor).await, 1);
    assert_eq!(ae.poll_wait(), Some(s), "a user's change: the fast pace again");
    stop.cancel();
    app.cleanup().await;
}
