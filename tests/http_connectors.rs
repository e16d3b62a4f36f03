//! The whole pipeline with the CRM reached over HTTP: the Salesforce
//! connector against `crmsync sandbox serve`, through change queries paged
//! by `nextRecordsUrl`, sObject Collections writes with a failure inside a
//! call, an expired token, the daily limit hit and lifted, and a change that
//! commits late inside the overlap window. And the fields an admin may map,
//! listed over HTTP (sObject Describe, v5 custom fields) as the sandbox
//! connectors list them from the schema.

use std::time::Duration;

use crmsync_account_engagement::{AccountEngagementMa, ProspectFields};
use crmsync_connector::{CrmApi, MaApi};
use crmsync_domain::CrmObject;
use crmsync_domain::endpoint::{AccountEngagementEndpoint, SalesforceEndpoint};
use crmsync_infra::CancellationToken;
use crmsync_salesforce::{ReadSet, SalesforceCrm};
use crmsync_sandbox::schema::LEAD;
use crmsync_sandbox::{SandboxCrm, SandboxMa};
use crmsync_sandbox_server::Limits;
use crmsync_tests::{SANDBOX_BUSINESS_UNIT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TestApp};
use crmsync_wire::salesforce::API_VERSION;
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

/// The fields the console's mapping page offers, read from the org and the
/// business unit over HTTP (the Salesforce connector's sObject Describe,
/// the Account Engagement connector's standard list and custom-fields
/// call), are exactly the sandbox connectors' from the schema: names,
/// types and custom flags, the custom `Preferred_Language__c` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fields_to_map_read_over_http_are_the_sandboxs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(Limits::default(), stop.clone()).await;
    let secret = app.secret_file("fields-secret", &format!("{SANDBOX_CLIENT_SECRET}\n"));
    let oauth = json!({"login_url": url, "flow": "client_credentials", "client_id": SANDBOX_CLIENT_ID, "client_secret": {"file": secret}});
    let sf: SalesforceEndpoint = serde_json::from_value(json!({"oauth": oauth})).unwrap();
    let crm = SalesforceCrm::connect(&sf, ReadSet::default()).await.unwrap();
    let ae: AccountEngagementEndpoint =
        serde_json::from_value(json!({"base_url": url, "business_unit_id": SANDBOX_BUSINESS_UNIT, "oauth": oauth})).unwrap();
    let ma = AccountEngagementMa::connect(&ae, ProspectFields::default()).await.unwrap();
    let sandbox_crm = SandboxCrm::connect(app.pool.clone(), "default").await.unwrap();
    let sandbox_ma = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();

    for object in [CrmObject::Lead, CrmObject::Contact] {
        let before = limits(&url).await.salesforce_used;
        let over_http = crm.person_fields(object).await.unwrap();
        assert_eq!(limits(&url).await.salesforce_used, before + 1, "one describe call, counted as any call");
        assert_eq!(over_http, sandbox_crm.person_fields(object).await.unwrap(), "{object}");
        assert!(over_http.iter().any(|f| f.name == "Preferred_Language__c" && f.custom), "{over_http:?}");
        assert!(!over_http.iter().any(|f| ["OwnerId", "AccountId", "crmsync_Id__c"].contains(&f.name.as_str())), "{over_http:?}");
        // Described lately: the next listing costs nothing.
        assert_eq!(crm.person_fields(object).await.unwrap(), over_http);
        assert_eq!(limits(&url).await.salesforce_used, before + 1, "the describe is reused");
    }
    let over_http = ma.prospect_fields().await.unwrap();
    assert_eq!(over_http, sandbox_ma.prospect_fields().await.unwrap());
    assert!(over_http.iter().any(|f| f.name == "Preferred_Language__c" && f.custom), "{over_http:?}");

    // An sObject the org does not have: Salesforce's 404 and error list;
    // without a token, no describe at all.
    let token = TestApp::sandbox_token(&url).await["access_token"].as_str().unwrap().to_owned();
    let describe = |object: &str| format!("{url}/services/data/{API_VERSION}/sobjects/{object}/describe");
    let http = reqwest::Client::new();
    let resp = http.get(describe("Widget")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
    );
    let lead: Value = http.get(describe("Lead")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let email = lead["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Email").unwrap().clone();
    assert_eq!(
        (email["type"].clone(), email["length"].clone(), email["updateable"].clone(), email["nillable"].clone()),
        (json!("email"), json!(80), json!(true), json!(true))
    );
    let anonymous = http.get(describe("Lead")).send().await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);

    stop.cancel();
    app.cleanup().await;
}
