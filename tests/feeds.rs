//! Change feeds: a late commit is never skipped (I1), two producers never
//! poll one feed, and the sandbox's ids are the ones the domain expects.

use crmsync_connector::MaApi;
use crmsync_domain::CrmId;
use crmsync_sandbox::SandboxMa;
use crmsync_tests::{TestApp, Tier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_late_is_never_skipped() {
    let app = TestApp::spawn().await;
    let (ma_admin, _) = app.admins().await;
    let ma = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    // A long transaction writes first and commits last.
    let mut slow = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO ma.prospects (email, last_modified_by) VALUES ('slow@late.example', $1)")
        .bind(&ma_admin)
        .execute(&mut *slow)
        .await
        .unwrap();
    app.create_prospect(&[("email", "fast@early.example")]).await;

    let page = ma.prospect_changes(None, 100).await.unwrap();
    assert!(page.records.is_empty(), "nothing past a transaction still running: {:?}", page.records);
    assert!(ma.prospect_changes_pending(None).await.unwrap(), "the committed change is reported as pending");

    slow.commit().await.unwrap();
    // Other tests' transactions may hold the horizon back a moment longer.
    let mut page = ma.prospect_changes(Some(&page.next), 100).await.unwrap();
    for _ in 0..100 {
        if page.records.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        page = ma.prospect_changes(None, 100).await.unwrap();
    }
    let emails: Vec<_> = page.records.iter().map(|p| p.email.clone().unwrap()).collect();
    assert_eq!(emails, ["slow@late.example", "fast@early.example"]);
    let after = ma.prospect_changes(Some(&page.next), 100).await.unwrap();
    assert!(after.records.is_empty());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_never_poll_one_feed_twice() {
    let mut app = TestApp::spawn().await;
    app.start(Tier::Producer);
    app.start(Tier::Producer);
    app.start(Tier::Matcher);
    app.start(Tier::Applier);
    for i in 0..60 {
        app.create_prospect(&[("email", &format!("p{i}@leases.example"))]).await;
    }
    app.settle().await;
    let published = app.published().await;
    let prospects = published.iter().find(|f| f.0 == "ma.prospect").unwrap();
    assert_eq!(prospects.1, 60, "each change published exactly once: {published:?}");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identities WHERE status = 'pending_assignment'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(pending, 60);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_ids_carry_the_case_suffix_the_domain_computes() {
    let app = TestApp::spawn().await;
    for i in 0..50 {
        let id = app.create_lead(&[("LastName", &format!("L{i}")), ("Company", "Co")]).await;
        let parsed = CrmId::parse(&id[..15]).unwrap();
        assert_eq!(parsed.as_str(), id, "the 15-character form normalises to the stored id");
        assert_eq!(CrmId::parse(&id.to_lowercase()).unwrap().as_str(), id);
    }
    app.cleanup().await;
}
