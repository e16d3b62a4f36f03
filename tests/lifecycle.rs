//! Lifecycle (R8): lead conversion, deletes and restores, email changes,
//! with the races that matter.

use crmsync_sandbox::schema::{CONTACT, LEAD, PROSPECT};
use crmsync_tests::{TestApp, Tier};

async fn linked_lead(app: &TestApp, name: &str) -> (String, i64) {
    let email = format!("{}@life.example", name.to_lowercase());
    let lead = app.create_lead(&[("LastName", name), ("Company", "Lifecycle Co"), ("Email", &email), ("City", "Nara")]).await;
    let p = app.create_prospect(&[("email", &email), ("lastName", name), ("crmLeadFid", &lead)]).await;
    (lead, p)
}

async fn identity(app: &TestApp, prospect: i64) -> (String, String, String) {
    sqlx::query_as("SELECT status, crm_object, crm_id FROM identities WHERE prospect_id = $1")
        .bind(prospect)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_lead_relinks_its_prospect_to_the_contact_and_is_never_written_again() {
    let mut app = TestApp::spawn().await;
    let (lead, p) = linked_lead(&app, "Convert").await;
    app.start_pipeline(1, 1);
    app.settle().await;

    let c = app.sandbox.convert_lead(&lead, None, Some("Converted deal")).await.unwrap();
    app.settle().await;
    assert_eq!(identity(&app, p).await, ("linked".into(), "contact".into(), c.contact_id.clone()));
    let view = app.view(p).await;
    assert_eq!(view["crm_contact_fid"], c.contact_id.as_str(), "the prospect shows its contact");
    assert_eq!(view["prospect_account"]["crm_account_id"], c.account_id.as_str(), "and the contact's account");
    assert_eq!(app.opportunities_seen(p).await, vec![c.opportunity_id.clone().unwrap()], "and the opportunity it holds a role on");
    let identities: i64 = sqlx::query_scalar("SELECT count(*) FROM identities").fetch_one(&app.pool).await.unwrap();
    assert_eq!(identities, 1, "one person");

    let lead_after = app.show(&LEAD, &lead).await;
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "After conversion")]).await;
    app.settle().await;
    assert_eq!(app.show(&CONTACT, &c.contact_id).await["title"], "After conversion");
    assert_eq!(app.show(&LEAD, &lead).await, lead_after, "nothing is written to the converted lead");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_while_an_update_for_the_old_lead_is_still_queued() {
    let mut app = TestApp::spawn().await;
    let (lead, p) = linked_lead(&app, "Queued").await;
    app.start_pipeline(1, 1);
    app.settle().await;

    // The prospect's edit is matched to the lead and waits for the applier;
    // then the lead is converted, and its conversion waits for the matcher.
    app.stop(Tier::Applier).await;
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "In flight")]).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    app.stop(Tier::Matcher).await;
    let c = app.sandbox.convert_lead(&lead, None, None).await.unwrap();
    let lead_after = app.show(&LEAD, &lead).await;
    app.start(Tier::Applier);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    app.start(Tier::Matcher);
    app.settle().await;

    assert_eq!(app.show(&LEAD, &lead).await, lead_after, "the in-flight update did not touch the converted lead");
    assert_eq!(app.show(&CONTACT, &c.contact_id).await["title"], "In flight", "it went to the contact");
    assert_eq!(identity(&app, p).await.2, c.contact_id);
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_crm_record_recycles_its_prospect_and_a_restore_brings_it_back_linked() {
    let mut app = TestApp::spawn().await;
    let (lead, p) = linked_lead(&app, "Bin").await;
    app.start_pipeline(1, 1);
    app.settle().await;

    app.sandbox.set_deleted(&LEAD, &lead, true).await.unwrap();
    app.settle().await;
    assert_eq!(app.prospect(p).await["is_deleted"], true, "the prospect is in the MA recycle bin");
    assert_eq!(identity(&app, p).await.0, "recycled");
    // A prospect in the recycle bin is not synced.
    app.sandbox.update(&PROSPECT, &p.to_string(), &[("jobTitle".into(), "While recycled".into())], None).await.unwrap();
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], serde_json::Value::Null);

    app.sandbox.set_deleted(&LEAD, &lead, false).await.unwrap();
    app.settle().await;
    let prospect = app.prospect(p).await;
    assert_eq!(prospect["is_deleted"], false, "restored");
    assert_eq!(prospect["crm_lead_fid"], lead.as_str(), "with its link");
    assert_eq!(identity(&app, p).await, ("linked".into(), "lead".into(), lead.clone()));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_change_updates_the_other_side_and_the_identity_key_never_a_second_record() {
    let mut app = TestApp::spawn().await;
    let (lead, p) = linked_lead(&app, "Mover").await;
    app.start_pipeline(1, 1);
    app.settle().await;

    app.update(&PROSPECT, &p.to_string(), &[("email", "mover@new.example")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["email"], "mover@new.example");
    let key: String = sqlx::query_scalar("SELECT email FROM identities WHERE prospect_id = $1").bind(p).fetch_one(&app.pool).await.unwrap();
    assert_eq!(key, "mover@new.example");
    assert_eq!(app.with_email("crm.leads", "mover@new.example").await.len(), 1);
    assert!(app.with_email("crm.leads", "mover@life.example").await.is_empty());

    // The old email is free for another person; the new one is taken.
    app.set("auto_create_prospects", "true").await;
    app.create_lead(&[("LastName", "Newcomer"), ("Company", "Co"), ("Email", "mover@life.example")]).await;
    let dup = app.create_lead(&[("LastName", "Copy"), ("Company", "Co"), ("Email", "mover@new.example")]).await;
    app.settle().await;
    assert_eq!(app.with_email("ma.prospects", "mover@life.example").await.len(), 1, "a new person with the old email");
    assert_eq!(app.with_email("ma.prospects", "mover@new.example").await.len(), 1, "no second prospect for the new email");
    let errors = app.sync_errors().await;
    assert!(errors.iter().any(|e| e.record_id == dup && e.category == "duplicate_record"), "{errors:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_change_racing_a_new_prospect_with_the_new_email_makes_no_second_record() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Racer").await;
    let (lead, p) = linked_lead(&app, "Racing").await;
    app.start_pipeline(2, 2);
    app.settle().await;

    // At once: the linked prospect takes a new email, and a new prospect with
    // that email is assigned (which alone would create a lead).
    app.update(&PROSPECT, &p.to_string(), &[("email", "taken@race.example")]).await;
    let q = app.create_prospect(&[("email", "taken@race.example"), ("lastName", "Other"), ("company", "Co")]).await;
    app.sandbox.assign(q, Some(ma_user)).await.unwrap();
    app.settle().await;

    // Both changes are detected in one page, the email change first; the
    // matcher serialises them on the email's lock.
    let leads = app.with_email("crm.leads", "taken@race.example").await;
    assert_eq!(leads.len(), 1, "never a second lead for one email: {leads:?}");
    assert_eq!(leads[0]["id"], lead.as_str(), "the linked lead took the new email; no lead was made for the newcomer");
    let identities: Vec<(Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT prospect_id, crm_id FROM identities WHERE email = 'taken@race.example'").fetch_all(&app.pool).await.unwrap();
    assert_eq!(identities.len(), 1, "one identity holds the email: {identities:?}");
    let errors = app.sync_errors().await;
    assert!(errors.iter().any(|e| e.record_id == q.to_string() && e.category == "duplicate_record"), "the newcomer is named: {errors:?}");
    app.cleanup().await;
}
