//! Reconnection (issue 8): the tiers lose their RabbitMQ connections and
//! their PostgreSQL sessions mid-run, as they would when either service
//! restarts, and carry on by themselves: no restart, no lost change.
//!
//! Only this test's own connections are cut (the broker's
//! `close_connection` on connections named after this test's prefix, and
//! `pg_terminate_backend` on its own database), so the services stay up for
//! the tests running alongside. Restarting the services themselves is the
//! fault suite's job (`tests/faults.rs`), which runs alone.

use std::time::{Duration, Instant};

use crmsync_sandbox::schema::LEAD;
use crmsync_tests::{TestApp, http_get};

/// Runs `rabbitmqctl` and returns its standard output.
fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs (scripts/services.sh installs it)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes every broker connection whose name carries `prefix` (each tier
/// names its connection `crmsync-<tier> (<prefix>)`); how many it closed.
fn close_broker_connections(prefix: &str) -> usize {
    // One line per connection: its pid (in the form `close_connection`
    // takes, which the JSON formatter does not print), a tab, its properties.
    let listed = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]);
    let ours: Vec<String> =
        listed.lines().filter(|l| l.contains(&format!("({prefix})"))).filter_map(|l| l.split('\t').next().map(str::to_owned)).collect();
    for pid in &ours {
        rabbitmqctl(&["close_connection", pid, "reconnect test"]);
    }
    ours.len()
}

/// Ends every PostgreSQL session on the test's database but the caller's.
async fn terminate_sessions(app: &TestApp) -> i64 {
    let admin = crmsync_infra::db::connect_url(
        &crmsync_cli::demo::with_database(secrecy::ExposeSecret::expose_secret(&app.config.database.url), "crmsync").unwrap(),
        1,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&app.db_name)
            .fetch_one(&admin)
            .await
            .unwrap();
    admin.close().await;
    n
}

/// Waits until the lead's title reads `title`; how long that took.
async fn synced(app: &TestApp, lead: &str, title: &str) -> Duration {
    let started = Instant::now();
    loop {
        // The test's own pool may hand out a session that was just ended.
        if let Ok(v) = app.sandbox.show(&LEAD, lead).await
            && v["title"] == title
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{title:?} never reached the lead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiers_reconnect_to_the_broker_and_the_database_by_themselves() {
    let mut app = TestApp::spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    app.config.telemetry.http_listen = Some(addr.clone());
    app.start_pipeline(1, 1);
    let lead = app.create_lead(&[("LastName", "Cut"), ("Company", "Co"), ("Email", "cut@reconnect.example")]).await;
    let prospect = app.create_prospect(&[("email", "cut@reconnect.example"), ("crmLeadFid", &lead), ("jobTitle", "Before")]).await;
    synced(&app, &lead, "Before").await;

    // Both services "restart" under the running tiers, three times over.
    let mut recoveries = Vec::new();
    for round in 1..=3 {
        let closed = close_broker_connections(&app.config.amqp.prefix);
        assert!(closed >= 3, "round {round}: the producer's, matcher's and applier's connections at least ({closed})");
        let ended = terminate_sessions(&app).await;
        assert!(ended >= 1, "round {round}: the tiers held PostgreSQL sessions");
        let title = format!("After cut {round}");
        app.update(&crmsync_sandbox::schema::PROSPECT, &prospect.to_string(), &[("jobTitle", &title)]).await;
        recoveries.push(synced(&app, &lead, &title).await);
    }
    println!("change synced after both connections were cut: {recoveries:?}");

    app.settle().await;
    let ready = http_get(&addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200") || ready.starts_with("HTTP/1.0 200"), "ready again: {ready}");
    let metrics = http_get(&addr, "/metrics").await;
    let reconnects: f64 = metrics
        .lines()
        .filter(|l| l.starts_with(crmsync_infra::metrics::BROKER_RECONNECTS))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(reconnects >= 3.0, "reconnections are counted: {reconnects} in\n{metrics}");
    assert!(app.sync_errors().await.is_empty(), "lost connections are not sync errors: {:?}", app.sync_errors().await);
    app.cleanup().await;
}
