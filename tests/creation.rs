//! Creation rules (R3): a prospect creates a lead only once an MA user is
//! assigned; a CRM record creates a prospect only with auto-creation on, and
//! not retroactively.

use crmsync_domain::SyncErrorCategory;
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_tests::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unassigned_prospect_creates_nothing_until_assigned_then_exactly_one_lead_owned_by_the_users_crm_user() {
    let mut app = TestApp::spawn().await;
    let (ma_user, crm_user) = app.sales_user("Aiko").await;
    let p = app.create_prospect(&[("email", "new@lead.example"), ("lastName", "New"), ("company", "Lead Co")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert!(app.with_email("crm.leads", "new@lead.example").await.is_empty(), "no lead before assignment");
    assert_eq!(app.identity_status(p).await.as_deref(), Some("pending_assignment"));

    app.sandbox.assign(p, Some(ma_user)).await.unwrap();
    app.settle().await;
    let leads = app.with_email("crm.leads", "new@lead.example").await;
    assert_eq!(leads.len(), 1, "exactly one lead: {leads:?}");
    assert_eq!(leads[0]["owner_id"], crm_user.as_str());
    assert_eq!(leads[0]["company"], "Lead Co");
    assert_eq!(app.identity_status(p).await.as_deref(), Some("linked"));
    assert_eq!(app.prospect(p).await["crm_lead_fid"], leads[0]["id"]);

    // Later edits update that lead; they never make another.
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "Buyer")]).await;
    app.settle().await;
    let leads = app.with_email("crm.leads", "new@lead.example").await;
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0]["title"], "Buyer");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_user_without_a_crm_user_leaves_the_prospect_pending_with_a_reason() {
    let mut app = TestApp::spawn().await;
    let intern = app.sandbox.create_ma_user("intern@ma.example", "In", "Tern", None).await.unwrap();
    let p = app.create_prospect(&[("email", "owner@less.example"), ("lastName", "Less"), ("company", "Co")]).await;
    app.sandbox.assign(p, Some(intern)).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;
    assert!(app.with_email("crm.leads", "owner@less.example").await.is_empty());
    assert_eq!(app.identity_status(p).await.as_deref(), Some("pending_assignment"));
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].category, SyncErrorCategory::MissingOwner.as_str());
    assert!(errors[0].reason.contains(&format!("MA user {intern}")), "{}", errors[0].reason);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_lead_creates_a_prospect_only_with_auto_create_and_not_retroactively() {
    let mut app = TestApp::spawn().await;
    let old = app.create_lead(&[("LastName", "Old"), ("Company", "Co"), ("Email", "old@crm.example")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert!(app.with_email("ma.prospects", "old@crm.example").await.is_empty(), "auto-creation is off by default");

    app.set("auto_create_prospects", "true").await;
    let new = app.create_lead(&[("LastName", "New"), ("Company", "Co"), ("Email", "new@crm.example")]).await;
    app.update(&LEAD, &old, &[("Title", "Touched after the switch")]).await;
    app.settle().await;
    let created = app.with_email("ma.prospects", "new@crm.example").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["last_name"], "New");
    assert_eq!(created[0]["crm_lead_fid"], new.as_str());
    assert!(app.with_email("ma.prospects", "old@crm.example").await.is_empty(), "a lead from before the switch creates nothing");
    // Without an email nothing can be created.
    app.create_lead(&[("LastName", "Nomail"), ("Company", "Co")]).await;
    app.settle().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ma.prospects").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 1);
    // ... and the operator is told why.
    let errors = app.sync_errors().await;
    assert_eq!(errors.iter().map(|e| e.category.as_str()).collect::<Vec<_>>(), ["missing_email"], "{errors:?}");
    assert!(errors[0].reason.contains("has no email"), "{}", errors[0].reason);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_the_crm_refuses_is_a_sync_error_until_fixed() {
    let mut app = TestApp::spawn().await;
    // Without a placeholder, the CRM's own rule decides.
    app.set("lead_placeholder", "off").await;
    let (ma_user, _) = app.sales_user("Ben").await;
    // A lead needs a company; this prospect has none.
    let p = app.create_prospect(&[("email", "no@company.example"), ("lastName", "Nocomp")]).await;
    app.sandbox.assign(p, Some(ma_user)).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].category, "target_rejected");
    assert!(errors[0].reason.contains("REQUIRED_FIELD_MISSING") && errors[0].reason.contains("Company"), "{}", errors[0].reason);
    assert!(app.with_email("crm.leads", "no@company.example").await.is_empty());

    app.update(&PROSPECT, &p.to_string(), &[("company", "Found Co")]).await;
    app.settle().await;
    assert_eq!(app.with_email("crm.leads", "no@company.example").await.len(), 1);
    assert!(app.sync_errors().await.is_empty(), "the error is resolved once the lead exists");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_prospect_without_company_or_last_name_becomes_a_lead_with_placeholders_that_never_reach_the_prospect() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Cleo").await;
    // A form fill: an email and a first name, nothing else.
    let p = app.create_prospect(&[("email", "form@fill.example"), ("firstName", "Fay")]).await;
    app.sandbox.assign(p, Some(ma_user)).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;
    let leads = app.with_email("crm.leads", "form@fill.example").await;
    assert_eq!(leads.len(), 1, "the lead is created: {leads:?}");
    assert_eq!(leads[0]["company"], "[[unknown]]");
    assert_eq!(leads[0]["last_name"], "[[unknown]]");
    assert_eq!(leads[0]["first_name"], "Fay");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    assert_eq!(app.identity_status(p).await.as_deref(), Some("linked"));
    // The placeholder is the engine's own write: the prospect stays blank.
    let prospect = app.prospect(p).await;
    assert!(prospect["company"].is_null() && prospect["last_name"].is_null(), "{prospect}");

    // A real value, once the prospect has one, replaces the placeholder.
    app.update(&PROSPECT, &p.to_string(), &[("company", "Real Co")]).await;
    // A CRM user's edit of another field does not send the placeholder back.
    app.update(&LEAD, leads[0]["id"].as_str().unwrap(), &[("Title", "Buyer")]).await;
    app.settle().await;
    let lead = &app.with_email("crm.leads", "form@fill.example").await[0];
    assert_eq!(lead["company"], "Real Co");
    assert_eq!(lead["last_name"], "[[unknown]]");
    let prospect = app.prospect(p).await;
    assert_eq!(prospect["job_title"], "Buyer");
    assert!(prospect["last_name"].is_null(), "{prospect}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_records_sharing_an_email_that_no_prospect_has_raise_no_ambiguity_without_auto_create() {
    let mut app = TestApp::spawn().await;
    app.create_lead(&[("LastName", "One"), ("Company", "Co"), ("Email", "twice@crm.example")]).await;
    app.create_lead(&[("LastName", "Two"), ("Company", "Co"), ("Email", "twice@crm.example")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert!(app.sync_errors().await.is_empty(), "nothing to guess: no prospect, no auto-creation");

    // A prospect taking that email is where the engine would have to guess.
    let p = app.create_prospect(&[("email", "twice@crm.example"), ("lastName", "Twice")]).await;
    app.settle().await;
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].category, SyncErrorCategory::AmbiguousMatch.as_str());
    assert_eq!(errors[0].record_id, p.to_string());
    app.cleanup().await;
}
