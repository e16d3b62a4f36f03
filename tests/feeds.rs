//! Change feeds: a late commit is never skipped (I1), two producers never
//! poll one feed, a connection's pass is one producer's and picks the lane
//! over all its feeds (R7), and the sandbox's ids are the ones the domain
//! expects.

use std::time::{Duration, Instant};

use crmsync_connector::MaApi;
use crmsync_domain::CrmId;
use crmsync_sandbox::SandboxMa;
use crmsync_sandbox::ops::{Sandbox, System};
use crmsync_store::feeds;
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

/// Per feed: changes published, and of those to the batch lane.
async fn published_by_lane(app: &TestApp) -> Vec<(String, i64, i64)> {
    sqlx::query_as("SELECT feed, published, published_batch FROM feeds WHERE connection_id = 'default' AND feed <> $1 ORDER BY feed")
        .bind(feeds::PASS)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// Waits until the feeds have published `n` changes in all.
async fn wait_published(app: &TestApp, n: i64) -> Vec<(String, i64, i64)> {
    let started = Instant::now();
    loop {
        let published = published_by_lane(app).await;
        if published.iter().map(|f| f.1).sum::<i64>() >= n {
            return published;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{n} changes were not published: {published:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_pick_the_lane_over_all_of_a_connections_feeds() {
    let mut app = TestApp::spawn().await;
    app.start(Tier::Producer);
    app.start(Tier::Producer);
    // 250 prospects and 250 leads in one transaction: one change set of
    // 500, over the threshold of 400, though each feed holds fewer.
    let sb = Sandbox::new(app.pool.clone(), "default");
    let (ma_admin, crm_admin) = (sb.admin(System::Ma).await.unwrap(), sb.admin(System::Crm).await.unwrap());
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, last_modified_by) \
         SELECT 'default', 'p' || g || '@lanes.example', 'Burst', $1 FROM generate_series(1, 250) g",
    )
    .bind(&ma_admin)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO crm.leads (tenant, last_name, company, email, last_modified_by) \
         SELECT 'default', 'Burst', 'Co', 'l' || g || '@lanes.example', $1 FROM generate_series(1, 250) g",
    )
    .bind(&crm_admin)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let published = wait_published(&app, 500).await;
    let of = |feed: &str| published.iter().find(|f| f.0 == feed).map(|f| (f.1, f.2));
    assert_eq!((of("ma.prospect"), of("crm.lead")), (Some((250, 250)), Some((250, 250))), "all to the batch lane: {published:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_pass_another_replica_holds_waits_for_its_lease_to_end() {
    let mut app = TestApp::spawn().await;
    // Another replica's pass over the connection, for the next minute.
    sqlx::query(
        "INSERT INTO feeds (connection_id, feed, lease_owner, lease_token, lease_until) \
         VALUES ('default', $1, 'another-replica', 1, now() + interval '1 minute')",
    )
    .bind(feeds::PASS)
    .execute(&app.pool)
    .await
    .unwrap();
    app.start(Tier::Producer);
    app.create_prospect(&[("email", "waits@leases.example")]).await;
    // Four poll intervals, and a notification, go by.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(published_by_lane(&app).await, vec![], "no feed read while another replica holds the connection's pass");

    // The other replica stops (its lease given up): this one takes over.
    sqlx::query("UPDATE feeds SET lease_until = now() - interval '1 second' WHERE feed = $1")
        .bind(feeds::PASS)
        .execute(&app.pool)
        .await
        .unwrap();
    let published = wait_published(&app, 1).await;
    assert!(published.contains(&("ma.prospect".to_owned(), 1, 0)), "{published:?}");
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

/// The producer's set-based check (issue 29) says of each feed what the
/// feed's own pending check says: rows past the cursor, in that tenant
/// (and custom type), and a cursor it cannot read is "look at it".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_set_based_pending_check_answers_as_each_feed_does() {
    use crmsync_connector::{CrmApi, Cursor};
    use crmsync_domain::CrmObject;
    use crmsync_domain::mirror::MirrorObject;
    use crmsync_sandbox::SandboxCrm;
    use crmsync_sandbox::pending::{FeedObject, Probe, pending};

    let app = TestApp::spawn().await;
    let ma = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    let crm = SandboxCrm::connect(app.pool.clone(), "default").await.unwrap();
    app.create_prospect(&[("email", "one@check.example")]).await;
    app.create_lead(&[("LastName", "Lead"), ("Company", "Acme"), ("Email", "lead@check.example")]).await;
    // The prospect feed read to its end: nothing past that cursor.
    let mut read = ma.prospect_changes(None, 100).await.unwrap();
    for _ in 0..100 {
        if !read.records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        read = ma.prospect_changes(None, 100).await.unwrap();
    }
    let caught_up = read.next.clone();
    let garbage = Cursor(serde_json::json!({"not": "a sandbox cursor"}));
    let invoice = MirrorObject::Custom("Invoice__c".into());
    let probes = [
        Probe { object: FeedObject::Prospects, tenant: "default", cursor: None },
        Probe { object: FeedObject::Prospects, tenant: "default", cursor: Some(&caught_up) },
        Probe { object: FeedObject::Person(CrmObject::Lead), tenant: "default", cursor: None },
        Probe { object: FeedObject::Person(CrmObject::Contact), tenant: "default", cursor: None },
        Probe { object: FeedObject::Mirror(&invoice), tenant: "default", cursor: None },
        Probe { object: FeedObject::Prospects, tenant: "another-tenant", cursor: None },
        Probe { object: FeedObject::Person(CrmObject::Lead), tenant: "default", cursor: Some(&garbage) },
    ];
    let answers = pending(&app.pool, &probes).await.unwrap();
    let own = [
        ma.prospect_changes_pending(None).await.unwrap(),
        ma.prospect_changes_pending(Some(&caught_up)).await.unwrap(),
        crm.person_changes_pending(CrmObject::Lead, None).await.unwrap(),
        crm.person_changes_pending(CrmObject::Contact, None).await.unwrap(),
        crm.object_changes_pending(&invoice, None).await.unwrap(),
    ];
    assert_eq!(answers[..5], own, "as each feed's own check");
    assert_eq!(answers, [true, false, true, false, false, false, true]);
    app.cleanup().await;
}

/// A change no notification announced (written with the table's notify
/// trigger off) is still read, by the safety poll's set-based check (I1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_notification_announced_is_read_by_the_safety_poll() {
    let mut app = TestApp::spawn().await;
    app.config.producer.safety_poll_interval_ms = 1_000;
    app.start(Tier::Producer);
    app.create_prospect(&[("email", "heard@notified.example")]).await;
    wait_published(&app, 1).await;

    sqlx::query("ALTER TABLE ma.prospects DISABLE TRIGGER notify").execute(&app.pool).await.unwrap();
    app.create_prospect(&[("email", "unheard@silent.example")]).await;
    sqlx::query("ALTER TABLE ma.prospects ENABLE TRIGGER notify").execute(&app.pool).await.unwrap();
    let published = wait_published(&app, 2).await;
    assert!(published.contains(&("ma.prospect".to_owned(), 2, 0)), "{published:?}");
    app.cleanup().await;
}

/// While nothing changes, the producer writes nothing: no pass lease and no
/// feed lease is taken or renewed, for any number of polls (issue 29: it
/// was an UPDATE per connection and per feed every poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_the_producer_no_writes() {
    let mut app = TestApp::spawn().await;
    app.config.producer.safety_poll_interval_ms = 300;
    app.start(Tier::Producer);
    app.create_prospect(&[("email", "once@idle.example")]).await;
    wait_published(&app, 1).await;
    let rows = || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT feed, xmin::text FROM feeds ORDER BY feed").fetch_all(&app.pool).await.unwrap();
        rows
    };
    // The pass that published may still be finishing its look at the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rows().await;
    assert!(before.iter().any(|(f, _)| f == feeds::PASS), "the pass lease was taken for the pass: {before:?}");
    // Twenty poll intervals and several safety polls go by.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows().await, before, "no lease or cursor written while idle");
    app.cleanup().await;
}
