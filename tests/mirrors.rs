//! Read-only mirrors (R4, R5, R6) through the real tiers: prospect accounts,
//! opportunities seen through contact roles, declared custom objects.

use crmsync_domain::CrmObject;
use crmsync_sandbox::schema::{ACCOUNT, CONTACT, CONTACT_ROLE, LEAD, MA_OPPORTUNITY, OPPORTUNITY, PROSPECT_ACCOUNT};
use crmsync_tests::{TestApp, Tier};

/// A contact in `account` and its linked prospect.
async fn person(app: &TestApp, name: &str, account: Option<&str>) -> (String, i64) {
    let email = format!("{}@mirror.example", name.to_lowercase());
    let mut values = vec![("LastName", name), ("Email", email.as_str())];
    if let Some(a) = account {
        values.push(("AccountId", a));
    }
    let contact = app.create(&CONTACT, &values).await;
    let prospect = app.create_prospect(&[("email", &email), ("lastName", name), ("crmContactFid", &contact)]).await;
    (contact, prospect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prospect_account_mirrors_its_contacts_account_and_ma_edits_never_reach_the_crm() {
    let mut app = TestApp::spawn().await;
    let acme = app.create(&ACCOUNT, &[("Name", "Acme"), ("BillingCity", "Osaka"), ("Industry", "Retail")]).await;
    let globex = app.create(&ACCOUNT, &[("Name", "Globex")]).await;
    let unrelated = app.create(&ACCOUNT, &[("Name", "Nobody Synced Here")]).await;
    app.create(&CONTACT, &[("LastName", "Unsynced"), ("AccountId", unrelated.as_str())]).await;
    let (contact, p) = person(&app, "Aoki", Some(&acme)).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let account = app.view(p).await["prospect_account"].clone();
    assert_eq!(account["crm_account_id"], acme.as_str());
    assert_eq!(account["name"], "Acme");
    assert_eq!(account["city"], "Osaka");
    assert_eq!(app.mirror_count("ma.prospect_accounts").await, 1, "only accounts of syncing prospects are mirrored");

    // An MA user edits the prospect account: the CRM never hears of it.
    let mirror_id: i64 = sqlx::query_scalar("SELECT id FROM ma.prospect_accounts").fetch_one(&app.pool).await.unwrap();
    app.update(&PROSPECT_ACCOUNT, &mirror_id.to_string(), &[("name", "Edited in the MA")]).await;
    app.settle().await;
    assert_eq!(app.show(&ACCOUNT, &acme).await["name"], "Acme");
    assert_eq!(app.view(p).await["prospect_account"]["name"], "Edited in the MA");
    // The next CRM change to the account overwrites the MA edit.
    app.update(&ACCOUNT, &acme, &[("BillingCity", "Kobe")]).await;
    app.settle().await;
    let account = app.view(p).await["prospect_account"].clone();
    assert_eq!((account["name"].as_str(), account["city"].as_str()), (Some("Acme"), Some("Kobe")));

    // The contact moves: the prospect follows; the old account is unmirrored.
    app.update(&CONTACT, &contact, &[("AccountId", &globex)]).await;
    app.settle().await;
    assert_eq!(app.view(p).await["prospect_account"]["crm_account_id"], globex.as_str());
    assert_eq!(app.mirror_count("ma.prospect_accounts").await, 1);
    // Deleting the CRM account removes its mirror.
    app.sandbox.set_deleted(&ACCOUNT, &globex, true).await.unwrap();
    app.settle().await;
    assert_eq!(app.view(p).await["prospect_account"], serde_json::Value::Null);
    assert_eq!(app.mirror_count("ma.prospect_accounts").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunities_are_seen_only_through_contact_roles_and_are_read_only_in_the_ma() {
    let mut app = TestApp::spawn().await;
    let account = app.create(&ACCOUNT, &[("Name", "Initech")]).await;
    let (c1, p1) = person(&app, "Ono", Some(&account)).await;
    let (c2, p2) = person(&app, "Sato", Some(&account)).await;
    let unsynced = app.create(&CONTACT, &[("LastName", "Nobody"), ("AccountId", account.as_str())]).await;
    let opp =
        |name: &'static str| [("Name", name), ("AccountId", account.as_str()), ("StageName", "Prospecting"), ("CloseDate", "2027-01-31")];
    let seen = app.create(&OPPORTUNITY, &opp("Seen")).await;
    let hidden = app.create(&OPPORTUNITY, &opp("Only an unsynced contact")).await;
    let roleless = app.create(&OPPORTUNITY, &opp("No roles")).await;
    let role1 = app.create(&CONTACT_ROLE, &[("OpportunityId", seen.as_str()), ("ContactId", c1.as_str())]).await;
    app.create(&CONTACT_ROLE, &[("OpportunityId", hidden.as_str()), ("ContactId", unsynced.as_str())]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.opportunities_seen(p1).await, vec![seen.clone()]);
    assert!(app.opportunities_seen(p2).await.is_empty());
    assert_eq!(app.mirror_count("ma.opportunities").await, 1, "{hidden} and {roleless} are not in the MA at all");

    // A new role links it; an opportunity change reaches every linked view.
    app.create(&CONTACT_ROLE, &[("OpportunityId", seen.as_str()), ("ContactId", c2.as_str())]).await;
    app.update(&OPPORTUNITY, &seen, &[("StageName", "Closed Won"), ("Amount", "25000"), ("IsClosed", "true"), ("IsWon", "true")]).await;
    app.settle().await;
    for p in [p1, p2] {
        let view = app.view(p).await;
        let o = &view["opportunities"][0];
        assert_eq!((o["stage"].as_str(), o["is_won"].as_bool()), (Some("Closed Won"), Some(true)), "prospect {p}");
        assert_eq!(o["amount"], 25000.0);
    }
    // Removing a role unlinks it.
    app.sandbox.set_deleted(&CONTACT_ROLE, &role1, true).await.unwrap();
    app.settle().await;
    assert!(app.opportunities_seen(p1).await.is_empty());
    assert_eq!(app.opportunities_seen(p2).await, vec![seen.clone()]);

    // The MA offers no way to create or edit one.
    let refused = app.sandbox.create(&MA_OPPORTUNITY, &[("name".into(), "Made in the MA".into())], None).await.unwrap_err();
    assert!(refused.to_string().contains("read-only in the MA"), "{refused}");
    let mirror_id: i64 = sqlx::query_scalar("SELECT id FROM ma.opportunities").fetch_one(&app.pool).await.unwrap();
    assert!(app.sandbox.update(&MA_OPPORTUNITY, &mirror_id.to_string(), &[("stage".into(), "Lost".into())], None).await.is_err());

    // Deleting the CRM opportunity removes its mirror.
    app.sandbox.set_deleted(&OPPORTUNITY, &seen, true).await.unwrap();
    app.settle().await;
    assert_eq!(app.mirror_count("ma.opportunities").await, 0);
    assert!(app.opportunities_seen(p2).await.is_empty());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_role_removed_while_the_opportunity_update_is_in_flight() {
    let mut app = TestApp::spawn().await;
    let (c1, p1) = person(&app, "Race", None).await;
    let opp = app.create(&OPPORTUNITY, &[("Name", "Flight"), ("StageName", "Prospecting"), ("CloseDate", "2027-02-01")]).await;
    let role = app.create(&CONTACT_ROLE, &[("OpportunityId", opp.as_str()), ("ContactId", c1.as_str())]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.opportunities_seen(p1).await, vec![opp.clone()]);

    // The update is matched and waits for the applier; then the role goes.
    app.stop(Tier::Applier).await;
    app.update(&OPPORTUNITY, &opp, &[("StageName", "Negotiation")]).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    app.sandbox.set_deleted(&CONTACT_ROLE, &role, true).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    app.start(Tier::Applier);
    app.settle().await;
    assert!(app.opportunities_seen(p1).await.is_empty(), "the stale update did not bring the link back");
    assert_eq!(app.mirror_count("ma.opportunities").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_custom_objects_are_mirrored_read_only() {
    let mut app = TestApp::spawn().await;
    app.declare_custom("Subscription__c", &["Plan__c", "Seats__c"], "Contact__c", CrmObject::Contact).await;
    let (c1, p1) = person(&app, "Custom", None).await;
    let unsynced = app.create(&CONTACT, &[("LastName", "Elsewhere")]).await;
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, x)| ((*k).to_owned(), (*x).to_owned())).collect::<Vec<_>>();
    let sub = app
        .sandbox
        .create_custom("Subscription__c", &pairs(&[("Plan__c", "Gold"), ("Seats__c", "25"), ("Internal__c", "x"), ("Contact__c", &c1)]))
        .await
        .unwrap();
    app.sandbox.create_custom("Subscription__c", &pairs(&[("Plan__c", "Silver"), ("Contact__c", &unsynced)])).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;
    let view = app.view(p1).await;
    let customs = view["custom_objects"].as_array().unwrap();
    assert_eq!(customs.len(), 1, "{customs:?}");
    assert_eq!(customs[0]["crm_id"], sub.as_str());
    assert_eq!(customs[0]["fields"], serde_json::json!({"Plan__c": "Gold", "Seats__c": 25}), "only the declared fields");
    assert_eq!(app.mirror_count("ma.custom_object_records").await, 1);

    app.sandbox.update_custom("Subscription__c", &sub, &pairs(&[("Plan__c", "Platinum")])).await.unwrap();
    app.settle().await;
    assert_eq!(app.view(p1).await["custom_objects"][0]["fields"]["Plan__c"], "Platinum");
    app.sandbox.set_deleted(&crmsync_sandbox::schema::CUSTOM, &sub, true).await.unwrap();
    app.settle().await;
    assert_eq!(app.mirror_count("ma.custom_object_records").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_object_that_looks_up_leads_is_mirrored_when_a_lead_links() {
    // The applier queues a person's mirrors only when the person can have
    // any; a lead has none of its own, but a declared object may point at it.
    let mut app = TestApp::spawn().await;
    app.declare_custom("Visit__c", &["Venue__c"], "Lead__c", CrmObject::Lead).await;
    let lead = app.create(&LEAD, &[("LastName", "Visitor"), ("Company", "Visits Inc"), ("Email", "visitor@mirror.example")]).await;
    let plain = app.create(&LEAD, &[("LastName", "Plain"), ("Company", "Plain Inc"), ("Email", "plain@mirror.example")]).await;
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, x)| ((*k).to_owned(), (*x).to_owned())).collect::<Vec<_>>();
    let visit = app.sandbox.create_custom("Visit__c", &pairs(&[("Venue__c", "Kyoto"), ("Lead__c", &lead)])).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.mirror_count("ma.custom_object_records").await, 0, "no prospect shows the lead yet");
    // The visit is old news when the lead links: only the link brings it.
    let p = app.create_prospect(&[("email", "visitor@mirror.example"), ("lastName", "Visitor"), ("crmLeadFid", &lead)]).await;
    let other = app.create_prospect(&[("email", "plain@mirror.example"), ("lastName", "Plain"), ("crmLeadFid", &plain)]).await;
    app.settle().await;
    let customs = app.view(p).await["custom_objects"].clone();
    assert_eq!(customs.as_array().map(Vec::len), Some(1), "{customs}");
    assert_eq!(customs[0]["crm_id"], visit.as_str());
    assert_eq!(customs[0]["fields"], serde_json::json!({"Venue__c": "Kyoto"}));
    assert_eq!(app.view(other).await["custom_objects"], serde_json::json!([]));
    assert_eq!(app.mirror_count("ma.custom_object_records").await, 1);
    app.cleanup().await;
}
