//! Bad input is named, parked and kept (I6): malformed emails and ids become
//! sync errors with reasons; unreadable messages are dead-lettered; the
//! workers keep going.

use crmsync_domain::Lane;
use crmsync_infra::amqp::Stage;
use crmsync_tests::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_emails_and_ids_become_sync_errors_and_the_worker_keeps_going() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Dan").await;
    let bad_email = app.create_prospect(&[("email", "jane(at)example.com"), ("lastName", "Bad"), ("company", "Co")]).await;
    app.sandbox.assign(bad_email, Some(ma_user)).await.unwrap();
    let bad_id = app.create_prospect(&[("email", "id@bad.example"), ("crmLeadFid", "00Q123")]).await;
    let good = app.create_prospect(&[("email", "good@fine.example"), ("lastName", "Good"), ("company", "Co")]).await;
    app.sandbox.assign(good, Some(ma_user)).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;

    let errors = app.sync_errors().await;
    let find = |category: &str| errors.iter().find(|e| e.category == category).unwrap_or_else(|| panic!("no {category} in {errors:?}"));
    let e = find("invalid_email");
    assert_eq!((e.object.as_str(), e.record_id.clone()), ("prospect", bad_email.to_string()));
    assert!(e.reason.contains("exactly one '@'"), "{}", e.reason);
    let e = find("invalid_crm_id");
    assert_eq!(e.record_id, bad_id.to_string());
    assert!(e.reason.contains("00Q123") && e.reason.contains("15 or 18"), "{}", e.reason);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(app.with_email("crm.leads", "good@fine.example").await.len(), 1, "the good record synced");
    assert!(app.with_email("crm.leads", "jane(at)example.com").await.is_empty());

    // Fixing the record resolves its error.
    app.update(&crmsync_sandbox::schema::PROSPECT, &bad_email.to_string(), &[("email", "jane@example.com")]).await;
    app.settle().await;
    assert_eq!(app.with_email("crm.leads", "jane@example.com").await.len(), 1);
    assert!(app.sync_errors().await.iter().all(|e| e.category != "invalid_email"));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_is_named_dead_lettered_and_the_queue_moves_on() {
    let mut app = TestApp::spawn().await;
    app.start_pipeline(1, 1);
    app.publish_raw(Stage::Match, Lane::Immediate, b"{not json".to_vec()).await;
    app.publish_raw(Stage::Match, Lane::Immediate, br#"{"v": 99, "changes": []}"#.to_vec()).await;
    app.publish_raw(Stage::Match, Lane::Immediate, vec![b'{', 0xff, 0xfe, b'}']).await;
    app.publish_raw(Stage::Apply, Lane::Immediate, b"[]".to_vec()).await;
    let lead = app.create_lead(&[("LastName", "After"), ("Company", "Co"), ("Email", "after@poison.example")]).await;
    let p = app.create_prospect(&[("email", "after@poison.example"), ("crmLeadFid", &lead), ("jobTitle", "Survivor")]).await;
    app.settle().await;

    assert_eq!(app.show(&crmsync_sandbox::schema::LEAD, &lead).await["title"], "Survivor", "the change behind the poison synced");
    let errors = app.sync_errors().await;
    let malformed: Vec<_> = errors.iter().filter(|e| e.category == "malformed_message").collect();
    assert_eq!(malformed.len(), 4, "{errors:?}");
    assert!(malformed.iter().any(|e| e.reason.contains("version 99")), "{malformed:?}");
    assert!(malformed.iter().any(|e| e.reason.contains("UTF-8")), "{malformed:?}");
    assert_eq!(app.dead_letters(Stage::Match).await, 3);
    assert_eq!(app.dead_letters(Stage::Apply).await, 1);
    let _ = p;
    app.cleanup().await;
}
