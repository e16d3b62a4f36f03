//! `crmsync sandbox` through the real binary and tiers (issue 26): custom
//! object records deleted, restored, shown and listed by type, and many
//! changes on any object made in one transaction (`sandbox batch`).

use std::collections::BTreeMap;

use crmsync_domain::CrmObject;
use crmsync_sandbox::schema::CONTACT;
use crmsync_store::connections;
use crmsync_tests::TestApp;
use serde_json::Value;

async fn cli(app: &TestApp, args: &[&str]) -> String {
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), args).await;
    assert!(ok, "crmsync {args:?} failed:\n{out}\n{err}");
    out
}

/// `crmsync sandbox batch` with `ops` on its standard input.
async fn batch(app: &TestApp, ops: &str) -> (bool, String, String) {
    app.run_cli_with(crmsync_tests::crmsync_exe!(), &["sandbox", "batch"], &[], Some(ops)).await
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_records_are_deleted_restored_shown_and_listed_by_type_and_their_mirrors_follow() {
    let mut app = TestApp::spawn().await;
    app.declare_custom("Subscription__c", &["Plan__c"], "Contact__c", CrmObject::Contact).await;
    let contact = app.create(&CONTACT, &[("LastName", "Custom"), ("Email", "custom@cli.example")]).await;
    let prospect = app.create_prospect(&[("email", "custom@cli.example"), ("lastName", "Custom"), ("crmContactFid", &contact)]).await;
    let contact_lookup = format!("Contact__c={contact}");
    let sub = cli(&app, &["sandbox", "create", "custom:Subscription__c", "--set", "Plan__c=Gold", "--set", &contact_lookup]).await;
    let sub = sub.trim();
    let visit = cli(&app, &["sandbox", "create", "custom:Visit__c", "--set", "Venue__c=Kyoto"]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.view(prospect).await["custom_objects"][0]["crm_id"], sub);

    // Shown and listed within their type.
    let shown: Value = serde_json::from_str(&cli(&app, &["sandbox", "show", "custom:Subscription__c", sub]).await).unwrap();
    assert_eq!((shown["fields"]["Plan__c"].as_str(), shown["is_deleted"].as_bool()), (Some("Gold"), Some(false)));
    let listed = json_lines(&cli(&app, &["sandbox", "list", "custom:Subscription__c"]).await);
    assert_eq!(listed.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), [sub]);
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["sandbox", "delete", "custom:Subscription__c", visit.trim()]).await;
    assert!(!ok && err.contains("does not exist"), "a record of another type is not found: {err}");

    // Deleted from the command line: the MA's mirror goes; restored: back.
    cli(&app, &["sandbox", "delete", "custom:Subscription__c", sub]).await;
    app.settle().await;
    assert_eq!(app.mirror_count("ma.custom_object_records").await, 0);
    let shown: Value = serde_json::from_str(&cli(&app, &["sandbox", "show", "custom:Subscription__c", sub]).await).unwrap();
    assert_eq!(shown["is_deleted"], true);
    cli(&app, &["sandbox", "undelete", "custom:Subscription__c", sub]).await;
    app.settle().await;
    assert_eq!(app.view(prospect).await["custom_objects"][0]["crm_id"], sub);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_transaction_that_a_single_pass_sends_to_the_batch_lane() {
    let mut app = TestApp::spawn().await;
    let mut s = connections::load(&app.pool, "default").await.unwrap();
    (s.batch_budget_per_hour, s.batch_burst) = (3_600_000, 50);
    connections::save(&app.pool, "default", &s).await.unwrap();
    let lead = app.create_lead(&[("LastName", "Batched"), ("Company", "Co")]).await;
    let contact = app.create(&CONTACT, &[("LastName", "Gone")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;

    // A bad line anywhere leaves everything as it was.
    let bad = format!(
        "{{\"op\": \"update\", \"object\": \"lead\", \"id\": \"{lead}\", \"set\": {{\"Title\": \"CTO\"}}}}\n\
         {{\"op\": \"delete\", \"object\": \"lead\", \"id\": \"00Q000000000000AAA\"}}\n"
    );
    let (ok, _, err) = batch(&app, &bad).await;
    assert!(!ok && err.contains("line 2") && err.contains("nothing was changed"), "{err}");
    assert_eq!(app.show(&crmsync_sandbox::schema::LEAD, &lead).await["title"], Value::Null);

    // 399 new prospects, a lead update, a contact delete (401 changes) and
    // a record of a custom object no connection mirrors, in one transaction.
    let mut ops: Vec<String> = (0..399)
        .map(|n| {
            format!("{{\"op\": \"create\", \"object\": \"prospect\", \"set\": {{\"email\": \"b{n}@batch.example\", \"score\": {n}}}}}")
        })
        .collect();
    ops.push(format!("{{\"op\": \"update\", \"object\": \"lead\", \"id\": \"{lead}\", \"set\": {{\"Title\": \"CTO\"}}}}"));
    ops.push(format!("{{\"op\": \"delete\", \"object\": \"contact\", \"id\": \"{contact}\"}}"));
    ops.push("{\"op\": \"create\", \"object\": \"custom:Visit__c\", \"set\": {\"Venue__c\": \"Kyoto\"}}".into());
    let (ok, out, err) = batch(&app, &ops.join("\n")).await;
    assert!(ok, "{out}\n{err}");
    let done = json_lines(&out);
    assert_eq!(done.len(), 402);
    assert_eq!(done[399]["op"], "update");
    assert_eq!(done[399]["id"], lead.as_str());
    // Written as the admins, with the usual change tracking, in one
    // transaction.
    let xids: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT x) FROM (SELECT mod_xid::text x FROM ma.prospects UNION ALL SELECT mod_xid::text FROM crm.leads \
         UNION ALL SELECT mod_xid::text FROM crm.contacts WHERE is_deleted UNION ALL SELECT mod_xid::text FROM crm.custom_records) t",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(xids, 1);
    let lead_row = app.show(&crmsync_sandbox::schema::LEAD, &lead).await;
    assert_eq!(lead_row["title"], "CTO");
    assert_eq!(lead_row["last_modified_by"], app.admins().await.1.as_str());
    assert!(lead_row["field_stamps"]["title"]["at"].is_string(), "{lead_row}");

    // One pass finds all 401: past the threshold of 400, the batch lane.
    app.settle().await;
    let lanes: BTreeMap<String, i64> = sqlx::query_as("SELECT lane, count(DISTINCT change_id) FROM audit_log GROUP BY lane")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(lanes, BTreeMap::from([("batch".to_owned(), 401), ("immediate".to_owned(), 2)]), "{lanes:?}");
    app.cleanup().await;
}
