//! The Salesforce connector's two heavier paths through the whole pipeline,
//! against `crmsync sandbox serve`: the OAuth 2.0 JWT bearer flow with an
//! RSA key made by `openssl` (the integration user's login and a CSM's own
//! login for a logged-in CSQL), and a batch-lane chunk written as a Bulk
//! API 2.0 ingest job, with a failed row that becomes a sync error.

use std::process::Command;

use crmsync_domain::csql::{CsUserType, CsqlRecordType};
use crmsync_domain::endpoint::SalesforceEndpoint;
use crmsync_infra::CancellationToken;
use crmsync_salesforce::{ReadSet, SalesforceCrm};
use crmsync_sandbox_server::Limits;
use crmsync_tests::{SANDBOX_CLIENT_ID, TestApp};
use crmsync_wire::salesforce::{AllJobs, BulkOperation};
use serde_json::{Value, json};

/// An RSA key pair made with the openssl CLI, as a connected app's owner
/// would: (private key file, public key PEM).
fn rsa_key_pair(app: &TestApp, name: &str) -> (String, String) {
    let private = app.secret_file(&format!("{name}.key"), "");
    let ok = Command::new("openssl").args(["genrsa", "-out", &private, "2048"]).output().expect("run openssl").status.success();
    assert!(ok, "openssl genrsa");
    let public = Command::new("openssl").args(["rsa", "-in", &private, "-pubout"]).output().expect("run openssl");
    assert!(public.status.success(), "openssl rsa -pubout");
    (private, String::from_utf8(public.stdout).unwrap())
}

fn jwt_oauth(url: &str, username: &str, key_file: &str) -> Value {
    json!({"login_url": url, "flow": "jwt_bearer", "client_id": SANDBOX_CLIENT_ID, "username": username,
           "private_key": {"file": key_file}})
}

async fn integration_username(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT email FROM crm.users WHERE tenant = 'default' AND is_integration").fetch_one(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bearer_flow_logs_in_and_a_logged_in_csql_is_written_as_its_csm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let (key, public_pem) = rsa_key_pair(&app, "app");
    let mut config = TestApp::sandbox_server_config(Limits::default());
    config.jwt_public_key_pem = Some(public_pem);
    let url = app.serve_sandbox_with(config, stop.clone()).await;

    // A key the org does not know is refused at login, as invalid_grant.
    let (stranger, _) = rsa_key_pair(&app, "stranger");
    let username = integration_username(&app).await;
    let endpoint: SalesforceEndpoint = serde_json::from_value(json!({"oauth": jwt_oauth(&url, &username, &stranger)})).unwrap();
    let refused = SalesforceCrm::connect(&endpoint, ReadSet::default()).await.unwrap_err().to_string();
    assert!(refused.contains("invalid_grant"), "{refused}");

    app.use_salesforce_with(jwt_oauth(&url, &username, &key), json!({})).await;
    // The CS platform writes into the org the server serves.
    app.set("cs", &json!({"kind": "sandbox", "tenant": "default", "crm_org": "default"}).to_string()).await;
    app.set_guarded("csql.target", "crm", false).await.unwrap();
    let (csm, csm_crm) = app.cs_user("Jwt CSM", CsUserType::Csm, Some(true)).await;
    let lead = app.create_lead(&[("LastName", "Bearer"), ("Company", "Jwt Co"), ("Email", "bearer@jwt.example"), ("Title", "CTO")]).await;
    let prospect = app.create_prospect(&[("email", "bearer@jwt.example"), ("last_name", "Bearer")]).await;
    app.start_pipeline(1, 1);
    let csql = app
        .create_csql(
            CsqlRecordType::Lead,
            csm,
            None,
            &[("FirstName", "Kei"), ("LastName", "Signed"), ("Email", "signed@jwt.example"), ("Company", "Signed KK")],
        )
        .await;
    app.settle().await;

    // The integration user's JWT login reads and writes the org.
    assert_eq!(app.prospect(prospect).await["job_title"], "CTO", "lead {lead} synced to its prospect");
    // The CSM's own JWT login wrote the CSQL's lead.
    let records = app.crm_records_of_csql(CsqlRecordType::Lead, csql).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let csm_crm = csm_crm.unwrap();
    assert_eq!(records[0]["created_by"], csm_crm.as_str(), "written as the CSM's CRM user, through their own login");
    assert_eq!(records[0]["email"], "signed@jwt.example");
    assert_eq!(app.csql(CsqlRecordType::Lead, csql).await["sync_status"], "synced");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);

    stop.cancel();
    app.cleanup().await;
}

/// `n` prospects with a job title and, for each, a lead with the same email
/// and none: the first sync writes every lead's title.
async fn pairs_titled_in_the_ma(app: &TestApp, n: i64) {
    sqlx::query(
        "INSERT INTO crm.leads (tenant, last_name, company, email, last_modified_by, created_by) \
         SELECT 'default', 'Lead ' || g, 'Acme', 'b' || g || '@bulk.example', 'x', 'x' FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, job_title, last_modified_by) \
         SELECT 'default', 'b' || g || '@bulk.example', 'Lead ' || g, 'Bulk ' || g, 'x' FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// The org's ingest jobs, as any Bulk API client lists them.
async fn ingest_jobs(url: &str) -> AllJobs {
    let token = TestApp::sandbox_token(url).await;
    reqwest::Client::new()
        .get(format!("{url}/services/data/v60.0/jobs/ingest"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_lane_chunk_is_written_as_a_bulk_job_and_its_failed_row_is_a_sync_error() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(Limits::default(), stop.clone()).await;
    // Chunks of 50 or more go to a Bulk job. The budget is lifted, as for a
    // first load, with a burst that lets a whole message be one chunk.
    app.use_salesforce(&url, json!({"bulk_threshold": 50})).await;
    app.set("batch_threshold", "100").await;
    app.set("batch_budget_per_hour", "3600000").await;
    app.set("batch_burst", "1000").await;
    pairs_titled_in_the_ma(&app, 250).await;
    // One batch-lane message at a time: concurrent messages holding the two
    // sides of one pair would leave a retried remainder smaller than the
    // Bulk threshold, written through sObject Collections instead, and this
    // test is about the failure inside a job.
    app.config.applier.batch_concurrency = 1;
    // Country is 80 characters in the CRM: this row fails inside the job.
    sqlx::query("UPDATE ma.prospects SET country = repeat('C', 100) WHERE email = 'b7@bulk.example'").execute(&app.pool).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;

    let titled: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.leads WHERE title = 'Bulk ' || substr(last_name, 6)")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(titled, 249, "every lead but the refused one got its prospect's title");
    let refused: Value =
        sqlx::query_scalar("SELECT to_jsonb(l) FROM crm.leads l WHERE email = 'b7@bulk.example'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(refused["title"], Value::Null, "the failed row wrote nothing: {refused}");
    // One error per source record whose change tried the write: the
    // prospect's, and the lead's when its own change came through apart.
    let errors = app.sync_errors().await;
    assert!((1..=2).contains(&errors.len()), "{errors:?}");
    let lead_id = refused["id"].as_str().unwrap();
    assert!(
        errors.iter().all(|e| e.category == "field_too_long" && e.reason.contains(lead_id) && e.reason.contains("STRING_TOO_LONG")),
        "{errors:?}"
    );

    let jobs = ingest_jobs(&url).await.records;
    let bulked: u64 = jobs.iter().map(|j| j.number_records_processed).sum();
    let failed: u64 = jobs.iter().map(|j| j.number_records_failed).sum();
    println!("{} Bulk jobs: {bulked} rows, {failed} failed", jobs.len());
    assert!(!jobs.is_empty(), "the batch lane's chunks went through Bulk jobs");
    assert!(jobs.iter().all(|j| j.object == "Lead" && j.operation == BulkOperation::Update), "{jobs:?}");
    // The refused row fails once in a job for each source change that tried
    // it (the count of sync errors above); never more, never in none.
    assert!((1..=errors.len() as u64).contains(&failed), "the long country failed in its job, once per error {errors:?}: {jobs:?}");
    assert!(bulked >= 100, "most writes went through jobs ({bulked} rows)");

    stop.cancel();
    app.cleanup().await;
}
