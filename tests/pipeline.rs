//! Both directions of the prospect ↔ lead/contact sync (R1, R2) through the
//! real tiers, and no echo of the engine's own writes (I7).

use crmsync_sandbox::schema::{CONTACT, LEAD, PROSPECT};
use crmsync_tests::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prospect_edit_reaches_the_crm_and_a_crm_edit_comes_back() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Doe"), ("Company", "Acme"), ("Email", "jane@acme.example"), ("Title", "CTO")]).await;
    // The MA holds the lead's id in its 15-character form.
    let p = app.create_prospect(&[("email", "jane@acme.example"), ("lastName", "Doe"), ("crmLeadFid", &lead[..15])]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let prospect = app.prospect(p).await;
    assert_eq!(prospect["job_title"], "CTO", "the lead's title fills the prospect's blank one");
    assert_eq!(prospect["crm_lead_fid"], lead.as_str(), "the prospect shows its lead's 18-character id");

    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "CEO")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CEO");

    app.update(&LEAD, &lead, &[("Title", "Chair")]).await;
    app.settle().await;
    assert_eq!(app.prospect(p).await["job_title"], "Chair");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_own_writes_are_not_detected_as_new_changes() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Roe"), ("Company", "Acme"), ("Email", "rick@acme.example")]).await;
    let p = app.create_prospect(&[("email", "rick@acme.example"), ("lastName", "Roe"), ("crmLeadFid", &lead)]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let before = app.published().await;

    app.update(&PROSPECT, &p.to_string(), &[("city", "Kyoto")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["city"], "Kyoto");
    let after = app.published().await;
    let delta = |feed: &str| {
        let b = before.iter().find(|f| f.0 == feed).unwrap();
        let a = after.iter().find(|f| f.0 == feed).unwrap();
        (a.1 - b.1, a.2 - b.2)
    };
    assert_eq!(delta("ma.prospect").0, 1, "the user's edit is published once");
    let (published, dropped) = delta("crm.lead");
    assert_eq!(published, 0, "the applier's write to the lead is not published back");
    assert!(dropped >= 1, "the write was seen and dropped as an echo");
    // And nothing keeps moving: the lead is written exactly once.
    let stamp = app.show(&LEAD, &lead).await["modstamp"].clone();
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["modstamp"], stamp);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_any_form_and_emails_in_any_case_match_the_same_record() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Kim"), ("Company", "Globex"), ("Email", "kim@globex.example")]).await;
    let contact = app.create(&CONTACT, &[("LastName", "Lee"), ("Email", "lee@globex.example")]).await;
    // A case-lost 18-character id, and an email spelled differently.
    let by_id = app.create_prospect(&[("email", "kim@globex.example"), ("crmLeadFid", &lead.to_lowercase())]).await;
    let by_email = app.create_prospect(&[("email", "  LEE@Globex.Example ")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let linked: Vec<(i64, String)> =
        sqlx::query_as("SELECT prospect_id, crm_id FROM identities WHERE status = 'linked' ORDER BY prospect_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(linked, vec![(by_id, lead.clone()), (by_email, contact.clone())]);
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_behaviours_hold_end_to_end() {
    let mut app = TestApp::spawn().await;
    let contact = app
        .create(&CONTACT, &[("LastName", "Ito"), ("Email", "ito@hokuto.example"), ("Phone", "+81-3-0000-0001"), ("MailingCity", "Sapporo")])
        .await;
    let p = app.create_prospect(&[("email", "ito@hokuto.example"), ("crmContactFid", &contact), ("score", "10")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let c = app.show(&CONTACT, &contact).await;
    assert_eq!(c["pi_score"], 10, "score flows from the MA (read-only in the CRM)");
    assert_eq!(app.prospect(p).await["phone"], "+81-3-0000-0001");

    // crm_wins: the MA's phone edit loses to the CRM's value and is reverted.
    app.update(&PROSPECT, &p.to_string(), &[("phone", "+81-3-9999-9999")]).await;
    // blank never erases: clearing the city in the CRM does not blank the MA.
    app.update(&CONTACT, &contact, &[("MailingCity", "")]).await;
    // read_only: a CRM edit of the score does not reach the MA.
    app.update(&CONTACT, &contact, &[("pi__score__c", "99")]).await;
    app.settle().await;
    let prospect = app.prospect(p).await;
    assert_eq!(prospect["phone"], "+81-3-0000-0001");
    assert_eq!(prospect["city"], "Sapporo");
    assert_eq!(app.show(&CONTACT, &contact).await["mailing_city"], "Sapporo", "the blanked field is filled again");
    assert_eq!(prospect["score"], 10);
    // The MA's next score change overwrites the CRM's edit.
    app.update(&PROSPECT, &p.to_string(), &[("score", "11")]).await;
    app.settle().await;
    assert_eq!(app.show(&CONTACT, &contact).await["pi_score"], 11);
    app.cleanup().await;
}
