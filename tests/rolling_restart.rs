//! A rolling restart during a burst (issue 7): SIGTERM a matcher and an
//! applier while they hold work, start their replacements, and check that
//! nothing was lost or duplicated: every assigned prospect has exactly one
//! lead, owned by its user's CRM user, and every change was applied once.

use std::time::Duration;

use crmsync_sandbox::ops::System;
use crmsync_tests::{TestApp, Tier};

/// Prospects assigned to `ma_user` in one transaction: each creates one lead.
async fn assigned_prospects(app: &TestApp, ma_user: i64, n: i64) {
    let admin = app.sandbox.admin(System::Ma).await.unwrap();
    sqlx::query(
        "INSERT INTO ma.prospects (tenant, email, last_name, company, assigned_user_id, last_modified_by) \
         SELECT 'default', 'roll' || g || '@restart.example', 'Roll ' || g, 'Restart Co', $1, $2 FROM generate_series(1, $3) g",
    )
    .bind(ma_user)
    .bind(&admin)
    .bind(n)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn applied(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE stage = 'apply'").fetch_one(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_loses_and_duplicates_nothing() {
    let mut app = TestApp::spawn().await;
    const N: i64 = 300;
    let (ma_user, crm_user) = app.sales_user("Rolling").await;
    // Small messages, so a replica always holds some when it is stopped.
    app.config.producer.records_per_message = 10;
    app.set("batch_threshold", "1000").await;
    app.start(Tier::Producer);
    let exe = crmsync_tests::crmsync_exe!();
    let first = [app.spawn_process(exe, Tier::Matcher), app.spawn_process(exe, Tier::Applier)];
    let mut others = vec![app.spawn_process(exe, Tier::Matcher), app.spawn_process(exe, Tier::Applier)];
    tokio::time::sleep(Duration::from_secs(2)).await;
    assigned_prospects(&app, ma_user, N).await;

    // Stop the first pair once the burst is under way, as a rolling update
    // would, and start their replacements.
    let started = std::time::Instant::now();
    while applied(&app).await < N / 10 {
        assert!(started.elapsed() < Duration::from_secs(60), "the burst never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_stop = applied(&app).await;
    for t in first {
        assert!(t.terminate().await, "a replica stopped mid-burst drains and exits 0");
    }
    others.push(app.spawn_process(exe, Tier::Matcher));
    others.push(app.spawn_process(exe, Tier::Applier));
    app.settle().await;
    println!("stopped 2 replicas at {at_stop} of {N} applied");
    assert!(at_stop < N, "the stop came mid-burst ({at_stop} of {N} applied)");

    let per_email: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT email, count(*), count(*) FILTER (WHERE owner_id = $1) FROM crm.leads \
         WHERE email LIKE '%@restart.example' GROUP BY email",
    )
    .bind(&crm_user)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(per_email.len() as i64, N, "every prospect has its lead: nothing lost");
    let doubled: Vec<_> = per_email.iter().filter(|(_, n, _)| *n != 1).collect();
    assert!(doubled.is_empty(), "one lead per prospect, nothing duplicated: {doubled:?}");
    assert!(per_email.iter().all(|(_, _, owned)| *owned == 1), "each owned by the user's CRM user");
    let linked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid WHERE p.email LIKE '%@restart.example'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(linked, N, "every prospect points at its lead");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    for t in others {
        assert!(t.terminate().await);
    }
    app.cleanup().await;
}
