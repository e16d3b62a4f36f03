//! The Account Engagement connector against `crmsync sandbox serve`: the
//! records it reads are the sandbox connector's, field by field; it never
//! has more requests in flight than it may; its writes, refusals and
//! mirrors; and the whole pipeline with both the MA and the CRM reached
//! over HTTP, through paged change queries, an edit each way, an
//! assignment that creates a lead (R3), a refused write inside a batch, a
//! late commit, expired sessions and the daily limit hit and lifted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crmsync_account_engagement::{AccountEngagementMa, Pacing, ProspectFields};
use crmsync_connector::{MaApi, MirrorWrite, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::endpoint::AccountEngagementEndpoint;
use crmsync_domain::mapping::{FieldMap, FieldMapping};
use crmsync_domain::mirror::{MirrorKind, MirrorPlan};
use crmsync_domain::records::ProspectRecord;
use crmsync_domain::{CrmId, Email};
use crmsync_infra::CancellationToken;
use crmsync_sandbox::SandboxMa;
use crmsync_sandbox::schema::{ACCOUNT, CONTACT, LEAD, PROSPECT};
use crmsync_sandbox_server::{Limits, Stats};
use crmsync_tests::{SANDBOX_BUSINESS_UNIT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TestApp};
use crmsync_wire::time;
use serde_json::{Value, json};

/// The connected app's secret, in a file as a deployment would mount it.
fn secret_file(app: &TestApp) -> std::path::PathBuf {
    let secret = std::env::temp_dir().join(format!("{}.ae.secret", app.db_name));
    std::fs::write(&secret, format!("{SANDBOX_CLIENT_SECRET}\n")).unwrap();
    secret
}

fn oauth(url: &str, secret: &std::path::Path) -> Value {
    json!({"login_url": url, "flow": "client_credentials", "client_id": SANDBOX_CLIENT_ID, "client_secret": {"file": secret}})
}

fn ae_endpoint(url: &str, secret: &std::path::Path) -> Value {
    json!({
        "kind": "account_engagement",
        "base_url": url,
        "business_unit_id": SANDBOX_BUSINESS_UNIT,
        "oauth": oauth(url, secret),
        "overlap_secs": 3,
        "limit_probe_secs": 1,
        // Tests wait seconds for a change, not an idle feed's backoff.
        "poll_interval_secs": 1,
        "poll_max_secs": 1,
    })
}

async fn limits(url: &str) -> Limits {
    reqwest::get(format!("{url}/sandbox-admin/limits")).await.unwrap().json().await.unwrap()
}

async fn set_limits(url: &str, l: &Limits) {
    reqwest::Client::new().put(format!("{url}/sandbox-admin/limits")).json(l).send().await.unwrap();
}

async fn stats(url: &str) -> Stats {
    reqwest::get(format!("{url}/sandbox-admin/stats")).await.unwrap().json().await.unwrap()
}

/// Waits (up to a generous deadline, so a slow machine only makes the test
/// longer) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

/// The same prospect as the two connectors return it: every value equal;
/// stamps at v5's millisecond precision; fields without stamps of their
/// own (v5 stamps the prospect, not its fields).
fn assert_same(ae: &ProspectRecord, sandbox: &ProspectRecord) {
    let id = sandbox.id;
    assert_eq!(ae.id, sandbox.id);
    assert_eq!(ae.email, sandbox.email, "{id}");
    assert_eq!(ae.crm_lead_fid, sandbox.crm_lead_fid, "{id}");
    assert_eq!(ae.crm_contact_fid, sandbox.crm_contact_fid, "{id}");
    assert_eq!(ae.assigned_user, sandbox.assigned_user, "{id}");
    assert_eq!(ae.is_deleted, sandbox.is_deleted, "{id}");
    assert_eq!(ae.created_at, time::millis(sandbox.created_at), "{id}");
    assert_eq!(ae.updated_at, time::millis(sandbox.updated_at), "{id}");
    assert_eq!(ae.last_modified_by, sandbox.last_modified_by, "{id}");
    // The sandbox reads every column, its custom fields too; v5 returns the
    // fields asked for, which are the standard ones (a custom field is read
    // once the mapping names it).
    let standard: Vec<&String> = sandbox.fields.keys().filter(|k| !k.ends_with("__c")).collect();
    assert_eq!(ae.fields.keys().collect::<Vec<_>>(), standard, "{id}");
    for (name, f) in sandbox.fields.iter().filter(|(k, _)| !k.ends_with("__c")) {
        assert_eq!(ae.fields[name].value, f.value, "{id}.{name}");
        assert!(ae.fields[name].at.is_none() && ae.fields[name].by.is_none(), "{id}.{name}");
    }
}

fn by_id(records: Vec<ProspectRecord>) -> BTreeMap<i64, ProspectRecord> {
    records.into_iter().map(|r| (r.id, r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_reads_writes_and_mirrors_as_the_sandbox_connector_does() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    // The server admits many requests at once here, so what it sees in
    // flight is the connector's own limit.
    let url = app.serve_sandbox(Limits { pardot_concurrency: 50, ..Limits::default() }, stop.clone()).await;
    let secret = secret_file(&app);
    let (ma_admin, _) = app.admins().await;
    let (sales_ma, _) = app.sales_user("Sato").await;
    let lead = app.create_lead(&[("LastName", "Lead"), ("Company", "Acme"), ("Email", "linked@ae.example")]).await;
    let assigned = app
        .create_prospect(&[
            ("email", "Mixed.Case@AE.example"),
            ("firstName", "Mia"),
            ("company", "Acme"),
            ("score", "12"),
            ("optedOut", "true"),
            ("assignedUserId", &sales_ma.to_string()),
        ])
        .await;
    let linked = app.create_prospect(&[("email", "linked@ae.example"), ("lastName", "Linked"), ("crmLeadFid", &lead)]).await;
    let deleted = app.create_prospect(&[("email", "gone@ae.example"), ("lastName", "Gone")]).await;
    app.sandbox.set_deleted(&PROSPECT, &deleted.to_string(), true).await.unwrap();
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, city, last_modified_by) \
         SELECT 'default', 'bulk' || g || '@ae.example', 'Bulk ' || g, 'Kyoto', $1 FROM generate_series(1, 37) g",
    )
    .bind(&ma_admin)
    .execute(&app.pool)
    .await
    .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM ma.prospects ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(ids.len(), 40);

    let endpoint: AccountEngagementEndpoint = serde_json::from_value({
        let mut e = ae_endpoint(&url, &secret);
        e.as_object_mut().unwrap().remove("kind");
        e
    })
    .unwrap();
    let pacing = Pacing { backoff_base: Duration::from_millis(20), backoff_max: Duration::from_millis(200), ..Pacing::default() };
    let ae = AccountEngagementMa::connect_with(&endpoint, ProspectFields::default(), pacing).await.unwrap();
    let sandbox = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    assert_eq!(ae.integration_user(), sandbox.integration_user(), "the MA user of the Salesforce user crmsync logs in as");

    // By id: 40 reads, at most 5 at once; a missing id is simply absent.
    let mut asked = ids.clone();
    asked.push(999_999);
    let read = by_id(ae.prospects_by_id(&asked).await.unwrap());
    let expected = by_id(sandbox.prospects_by_id(&ids).await.unwrap());
    assert_eq!(read.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (id, r) in &expected {
        assert_same(&read[id], r);
    }
    assert_eq!(read[&assigned].assigned_user.as_ref().and_then(|u| u.crm_user_id.as_deref()).map(str::len), Some(18));
    let high = stats(&url).await.pardot_in_flight_high;
    println!("AE requests in flight at most: {high} (max_concurrency 5, server admits 50)");
    assert!((1..=5).contains(&high), "{high}");

    // By email: any case, live prospects only.
    let emails = [Email::parse("mixed.case@ae.example").unwrap(), Email::parse("gone@ae.example").unwrap()];
    let found = ae.prospects_by_email(&emails).await.unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), [assigned]);
    assert_same(&found[0], &sandbox.prospects_by_email(&emails).await.unwrap()[0]);

    // The change feed, 7 a call: every prospect once, the deleted one too.
    let (mut cursor, mut seen, mut calls) = (None, Vec::new(), 0);
    let before = limits(&url).await.pardot_used;
    loop {
        let page = ae.prospect_changes(cursor.as_ref(), 7).await.unwrap();
        calls += 1;
        seen.extend(page.records);
        cursor = Some(page.next);
        if !page.has_more {
            break;
        }
    }
    let used = limits(&url).await.pardot_used - before;
    println!("feed: 40 prospects in {calls} calls of 7, {used} API requests");
    assert_eq!(seen.iter().map(|r| r.id).collect::<BTreeSet<_>>(), ids.iter().copied().collect());
    assert_eq!(seen.len(), 40, "nothing twice");
    for r in &seen {
        assert_same(r, &expected[&r.id]);
    }
    assert!(!ae.prospect_changes_pending(cursor.as_ref()).await.unwrap());

    // Writes: one outcome each, in order; refusals are outcomes.
    let write = |target, fields: Value, fence| ProspectWrite {
        target,
        fields: serde_json::from_value(fields).unwrap(),
        crm_link: None,
        fence,
        unmodified_since: None,
    };
    let outcomes = ae
        .write_prospects(&[
            write(ProspectTarget::Id(assigned), json!({"lastName": "Written"}), Some(10)),
            write(ProspectTarget::Id(linked), json!({"country": "C".repeat(300)}), Some(10)),
            write(ProspectTarget::Id(999_999), json!({"lastName": "Nobody"}), Some(10)),
            write(ProspectTarget::UpsertByEmail(Email::parse("new@ae.example").unwrap()), json!({"lastName": "New"}), Some(10)),
            write(ProspectTarget::Id(assigned), json!({"lastName": "Stale"}), Some(5)),
        ])
        .await
        .unwrap();
    assert!(matches!(&outcomes[0], WriteOutcome::Written { id, created: false, .. } if *id == assigned.to_string()), "{outcomes:?}");
    assert!(matches!(&outcomes[1], WriteOutcome::Rejected { code, .. } if code == "25"), "{outcomes:?}");
    assert_eq!(outcomes[2], WriteOutcome::NotFound);
    assert!(matches!(&outcomes[3], WriteOutcome::Written { created: true, .. }), "{outcomes:?}");
    assert_eq!(outcomes[4], WriteOutcome::Fenced);
    let row = app.prospect(assigned).await;
    assert_eq!((row["last_name"].as_str(), row["sync_fence"].as_i64()), (Some("Written"), Some(10)));
    assert_eq!(row["last_modified_by"], ae.integration_user(), "the engine's writes carry its MA user (I7)");
    let WriteOutcome::Written { id: made, .. } = &outcomes[3] else { unreachable!() };
    let again = ae.write_prospects(&[write(ProspectTarget::UpsertByEmail(Email::parse("NEW@ae.example").unwrap()), json!({}), None)]).await;
    assert!(
        matches!(&again.unwrap()[0], WriteOutcome::Written { id, created: false, .. } if id == made),
        "a retried create finds the first one"
    );

    // The recycle bin, by id.
    let recycle = |on: bool| write(ProspectTarget::Id(linked), json!({"isDeleted": on}), Some(11));
    assert!(matches!(ae.write_prospects(&[recycle(true)]).await.unwrap()[0], WriteOutcome::Written { .. }));
    assert_eq!(app.prospect(linked).await["is_deleted"], true);
    ae.write_prospects(&[recycle(false)]).await.unwrap();
    let row = app.prospect(linked).await;
    assert_eq!((row["is_deleted"].as_bool(), row["last_modified_by"].as_str()), (Some(false), Some(ae.integration_user())));

    // A prospect account through the sandbox's mirror extension.
    let account = CrmId::parse(&app.create(&ACCOUNT, &[("Name", "Acme")]).await).unwrap();
    let plan = MirrorPlan::Present { fields: BTreeMap::from([("name".to_owned(), json!("Acme"))]), prospects: BTreeSet::from([assigned]) };
    let mirror = MirrorWrite { kind: MirrorKind::ProspectAccount, crm_id: account.clone(), plan, fence: Some(1) };
    assert!(matches!(ae.write_mirrors(&[mirror]).await.unwrap()[0], WriteOutcome::Written { .. }));
    let held = ae.mirror(&MirrorKind::ProspectAccount, &account).await.unwrap().unwrap();
    assert_eq!((held.fields["name"].clone(), held.prospects.clone()), (json!("Acme"), BTreeSet::from([assigned])));
    assert_eq!(held, sandbox.mirror(&MirrorKind::ProspectAccount, &account).await.unwrap().unwrap());
    assert_eq!(ae.prospect_accounts_of(&[assigned, linked]).await.unwrap(), [(assigned, account)]);
    println!("calls today by this connector: {}", ae.calls_today());

    stop.cancel();
    let _ = std::fs::remove_file(secret);
    app.cleanup().await;
}

/// `n` leads and, for each, a prospect with the same email and no job
/// title, saved by the two systems' human admins. A lead's job title is in
/// a 255-character field (see the mapping in the pipeline test).
async fn pairs(app: &TestApp, n: i64, ma_admin: &str, crm_admin: &str) {
    sqlx::query(
        "INSERT INTO crm.leads (tenant, last_name, company, email, csql_created_by, last_modified_by, created_by) \
         SELECT 'default', 'Lead ' || g, 'Acme', 'p' || g || '@ae.example', 'T' || g, $2, $2 FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(crm_admin)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, last_modified_by) \
         SELECT 'default', 'p' || g || '@ae.example', 'Lead ' || g, $2 FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(ma_admin)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn lead_of(app: &TestApp, n: i64) -> String {
    sqlx::query_scalar("SELECT id FROM crm.leads WHERE email = $1").bind(format!("p{n}@ae.example")).fetch_one(&app.pool).await.unwrap()
}

async fn prospect_of(app: &TestApp, n: i64) -> i64 {
    sqlx::query_scalar("SELECT id FROM ma.prospects WHERE email = $1").bind(format!("p{n}@ae.example")).fetch_one(&app.pool).await.unwrap()
}

/// A lead field of pair `n`.
async fn lead_field(app: &TestApp, n: i64, column: &str) -> Value {
    app.show(&LEAD, &lead_of(app, n).await).await[column].clone()
}

/// A prospect column of pair `n`.
async fn prospect_field(app: &TestApp, n: i64, column: &str) -> Value {
    app.prospect(prospect_of(app, n).await).await[column].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_syncs_with_the_ma_and_the_crm_both_over_http() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(Limits::default(), stop.clone()).await;
    let secret = secret_file(&app);
    let crm = json!({"kind": "salesforce", "oauth": oauth(&url, &secret), "overlap_secs": 3, "usage_probe_secs": 1,
                     "poll_interval_secs": 1, "poll_max_secs": 1});
    app.set("crm", &crm.to_string()).await;
    app.set("ma", &ae_endpoint(&url, &secret).to_string()).await;
    // Small pages: each feed takes several change queries.
    app.config.producer.page_size = 40;
    app.set("batch_threshold", "1000").await;
    // Leads keep the job title in a field longer than the prospect's (128
    // characters), so that the MA can refuse one. (Set before the pipeline
    // starts: a change detected under one mapping is judged by it.)
    let mut settings = crmsync_store::connections::load(&app.pool, "default").await.unwrap();
    let mut fields: Vec<FieldMapping> = settings.field_map.iter().cloned().collect();
    fields.iter_mut().find(|f| f.ma == "jobTitle").unwrap().lead = Some("CSQL_Created_By__c".into());
    settings.field_map = FieldMap::new(fields).unwrap();
    crmsync_store::connections::save(&app.pool, "default", &settings).await.unwrap();
    let (ma_admin, crm_admin) = app.admins().await;
    pairs(&app, 120, &ma_admin, &crm_admin).await;
    // A contact in an account, and its prospect: the prospect account is
    // written through the sandbox's mirror extension (R4).
    let acme = app.create(&ACCOUNT, &[("Name", "Acme"), ("BillingCity", "Osaka")]).await;
    let contact = app.create(&CONTACT, &[("LastName", "Aoki"), ("Email", "aoki@ae.example"), ("AccountId", &acme)]).await;
    let aoki = app.create_prospect(&[("email", "aoki@ae.example"), ("lastName", "Aoki"), ("crmContactFid", &contact)]).await;
    // A new prospect nobody is assigned to (R3): no lead yet.
    let newbie = app.create_prospect(&[("email", "newbie@ae.example"), ("lastName", "Newbie"), ("company", "Startup")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;

    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM identities WHERE status = 'linked'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(linked, 121, "every pair and the contact found each other over HTTP");
    let titled: i64 = sqlx::query_scalar("SELECT count(*) FROM ma.prospects WHERE job_title = 'T' || substr(last_name, 6)")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(titled, 120, "each lead's title filled its prospect's blank one, written over v5");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    assert_eq!(app.view(aoki).await["prospect_account"]["crm_account_id"], acme.as_str());
    assert_eq!(app.identity_status(newbie).await.as_deref(), Some("pending_assignment"));
    assert!(app.with_email("crm.leads", "newbie@ae.example").await.is_empty());
    let first = limits(&url).await;
    println!("first sync: {} AE requests, {} Salesforce requests", first.pardot_used, first.salesforce_used);

    // An edit each way.
    app.update(&PROSPECT, &prospect_of(&app, 1).await.to_string(), &[("city", "Nagoya")]).await;
    app.update(&LEAD, &lead_of(&app, 2).await, &[("City", "Sapporo")]).await;
    until("the prospect's city reaches its lead", || async { lead_field(&app, 1, "city").await == "Nagoya" }).await;
    until("the lead's city reaches its prospect", || async { prospect_field(&app, 2, "city").await == "Sapporo" }).await;

    // A sales user the connector has never seen is assigned: exactly one
    // lead, owned by that user's CRM user.
    let (sales_ma, sales_crm) = app.sales_user("Sato").await;
    app.update(&PROSPECT, &newbie.to_string(), &[("assignedUserId", &sales_ma.to_string())]).await;
    until("the assignment creates a lead", || async { !app.with_email("crm.leads", "newbie@ae.example").await.is_empty() }).await;
    app.settle().await;
    let leads = app.with_email("crm.leads", "newbie@ae.example").await;
    assert_eq!(leads.len(), 1, "{leads:?}");
    assert_eq!(leads[0]["owner_id"], sales_crm.as_str());
    assert_eq!(app.prospect(newbie).await["crm_lead_fid"], leads[0]["id"]);

    // One prospect write of a batch refused (the job title is 128
    // characters in the MA), the others written.
    let long = "L".repeat(200);
    let mut tx = app.pool.begin().await.unwrap();
    for (n, v) in [(3, "Alpha"), (4, long.as_str()), (5, "Gamma")] {
        sqlx::query("UPDATE crm.leads SET csql_created_by = $1, last_modified_by = $3 WHERE email = $2")
            .bind(v)
            .bind(format!("p{n}@ae.example"))
            .bind(&crm_admin)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    until("the others are written", || async { prospect_field(&app, 5, "job_title").await == "Gamma" }).await;
    app.settle().await;
    assert_eq!(prospect_field(&app, 3, "job_title").await, "Alpha");
    assert_eq!(prospect_field(&app, 4, "job_title").await, "T4", "the refused write changed nothing");
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(format!("{errors:?}").contains("25"), "{errors:?}");

    // A prospect stamped before the feed moved past it, committed later,
    // inside the overlap window.
    let mut late = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE ma.prospects SET city = 'Late', last_modified_by = $2 WHERE email = $1")
        .bind("p20@ae.example")
        .bind(&ma_admin)
        .execute(&mut *late)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.update(&PROSPECT, &prospect_of(&app, 21).await.to_string(), &[("city", "On time")]).await;
    until("the prompt change arrives", || async { lead_field(&app, 21, "city").await == "On time" }).await;
    late.commit().await.unwrap();
    until("the late commit arrives", || async { lead_field(&app, 20, "city").await == "Late" }).await;

    // Every session expires mid-run: both connectors log in again.
    reqwest::Client::new().post(format!("{url}/sandbox-admin/expire-sessions")).send().await.unwrap();
    app.update(&PROSPECT, &prospect_of(&app, 10).await.to_string(), &[("city", "After expiry")]).await;
    until("a change after the expiry", || async { lead_field(&app, 10, "city").await == "After expiry" }).await;

    // The AE daily limit is met: calls stop (refused ones are not
    // counted), nothing is lost, and the change arrives once it is lifted.
    let l = limits(&url).await;
    set_limits(&url, &Limits { pardot_daily: l.pardot_used, ..l.clone() }).await;
    app.update(&PROSPECT, &prospect_of(&app, 11).await.to_string(), &[("city", "During the limit")]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(lead_field(&app, 11, "city").await, "During the limit", "no AE call gets through over the limit");
    let refused = limits(&url).await;
    assert_eq!(refused.pardot_used, l.pardot_used);
    set_limits(&url, &Limits { pardot_daily: 1_000_000, ..refused }).await;
    until("the change after the limit", || async { lead_field(&app, 11, "city").await == "During the limit" }).await;
    app.settle().await;
    assert_eq!(app.sync_errors().await.len(), 1, "the limit and the expiry made no sync errors");

    let s = stats(&url).await;
    let total = limits(&url).await;
    println!(
        "AE requests: {} (at most {} in flight, {} refused for concurrency); Salesforce requests: {}; {:.1} s",
        total.pardot_used,
        s.pardot_in_flight_high,
        s.pardot_concurrency_refused,
        total.salesforce_used,
        started.elapsed().as_secs_f64()
    );
    assert!(s.pardot_in_flight_high <= 5, "{s:?}");

    stop.cancel();
    let _ = std::fs::remove_file(secret);
    app.cleanup().await;
}
