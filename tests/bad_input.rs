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
    // Over the 8 MiB limit: refused before it is parsed.
    let mut huge = br#"{"v": 1, "pad": ""#.to_vec();
    huge.resize(crmsync_domain::messages::MAX_MESSAGE_BYTES + 1024, b'x');
    huge.extend_from_slice(br#""}"#);
    app.publish_raw(Stage::Match, Lane::Immediate, huge).await;
    let lead = app.create_lead(&[("LastName", "After"), ("Company", "Co"), ("Email", "after@poison.example")]).await;
    let p = app.create_prospect(&[("email", "after@poison.example"), ("crmLeadFid", &lead), ("jobTitle", "Survivor")]).await;
    app.settle().await;

    assert_eq!(app.show(&crmsync_sandbox::schema::LEAD, &lead).await["title"], "Survivor", "the change behind the poison synced");
    let errors = app.sync_errors().await;
    let malformed: Vec<_> = errors.iter().filter(|e| e.category == "malformed_message").collect();
    assert_eq!(malformed.len(), 5, "{errors:?}");
    assert!(malformed.iter().any(|e| e.reason.contains("over the 8388608-byte limit")), "{malformed:?}");
    assert!(malformed.iter().any(|e| e.reason.contains("version 99")), "{malformed:?}");
    assert!(malformed.iter().any(|e| e.reason.contains("UTF-8")), "{malformed:?}");
    assert_eq!(app.dead_letters(Stage::Match).await, 4);
    assert_eq!(app.dead_letters(Stage::Apply).await, 1);
    let _ = p;
    app.cleanup().await;
}

/// The CRM's refusals each become a sync error named for what the operator
/// must do about them: a value too long for the target field, a validation
/// rule, a duplicate rule, an inactive owner. The other records sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_target_refusal_is_a_named_sync_error() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Rita").await;
    let (gone_user, gone_crm) = app.sales_user("Gone").await;
    sqlx::query("UPDATE crm.users SET is_active = false WHERE id = $1").bind(&gone_crm).execute(&app.pool).await.unwrap();
    app.sandbox.add_validation_rule("lead", "Phone_10_digits", "phone", "^$|^[0-9]{10}$", "Phone must have 10 digits").await.unwrap();
    app.sandbox.add_duplicate_rule("lead", "Same_company", "company").await.unwrap();
    app.create_lead(&[("LastName", "First"), ("Company", "Taken Co"), ("Email", "first@taken.example")]).await;

    // An AE country may hold 255 characters; a Sales Cloud one only 80.
    let long_country = "Q".repeat(100);
    // (email, fields set on the prospect, its assigned user)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], i64);
    let cases: [Case<'_>; 5] = [
        ("long@refuse.example", &[("country", &long_country)], ma_user),
        ("phone@refuse.example", &[("phone", "12345")], ma_user),
        ("dup@refuse.example", &[("company", "taken co")], ma_user),
        ("owner@refuse.example", &[], gone_user),
        ("fine@refuse.example", &[("phone", "5551234567")], ma_user),
    ];
    let mut ids = Vec::new();
    for (email, extra, user) in cases {
        // Each its own company: the duplicate rule matches on it.
        let company = format!("{email} Co");
        let mut values = vec![("email", email), ("lastName", "Refused"), ("company", company.as_str())];
        values.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        values.extend_from_slice(extra);
        let p = app.create_prospect(&values).await;
        app.sandbox.assign(p, Some(user)).await.unwrap();
        ids.push(p);
    }
    app.start_pipeline(1, 1);
    app.settle().await;

    let errors = app.sync_errors().await;
    let of = |p: i64| errors.iter().find(|e| e.record_id == p.to_string()).unwrap_or_else(|| panic!("no error for {p} in {errors:?}"));
    let expected = [
        ("field_too_long", "STRING_TOO_LONG"),
        ("validation_rule", "Phone must have 10 digits"),
        ("duplicate_rule", "Same_company"),
        ("missing_owner", "INACTIVE_OWNER_OR_USER"),
    ];
    for (p, (category, says)) in ids.iter().zip(expected) {
        let e = of(*p);
        assert_eq!(e.category, category, "{e:?}");
        assert!(e.reason.contains(says), "{category}: {}", e.reason);
    }
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(!errors.iter().any(|e| e.reason.contains('@')), "no email in a reason: {errors:?}");
    assert_eq!(app.with_email("crm.leads", "fine@refuse.example").await.len(), 1, "the good record synced");

    // Fixing the record in the source clears its error.
    app.update(&crmsync_sandbox::schema::PROSPECT, &ids[1].to_string(), &[("phone", "5550001111")]).await;
    app.settle().await;
    assert_eq!(app.with_email("crm.leads", "phone@refuse.example").await.len(), 1);
    assert!(app.sync_errors().await.iter().all(|e| e.category != "validation_rule"));
    app.cleanup().await;
}
