//! `crmsync sandbox` through the real binary and tiers (issue 26): custom
//! object records deleted, restored, shown and listed by type.

use crmsync_domain::CrmObject;
use crmsync_sandbox::schema::CONTACT;
use crmsync_tests::TestApp;
use serde_json::Value;

async fn cli(app: &TestApp, args: &[&str]) -> String {
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), args).await;
    assert!(ok, "crmsync {args:?} failed:\n{out}\n{err}");
    out
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
