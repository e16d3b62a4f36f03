//! Scale-out (issue 29, I10): several replicas of every tier share many
//! connections. Producers share connections by lease, matchers and
//! appliers share the queues, and appliers share the batch lanes by lease:
//! every connection is served and every replica does part of the work.

use std::time::{Duration, Instant};

use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_sandbox::ops::{Pairs, Sandbox};
use crmsync_store::connections;
use crmsync_tests::{TestApp, Tier, http_get};

const CONNECTIONS: usize = 200;
const PAIRS: i64 = 3;

/// `PAIRS` linked prospect ↔ lead pairs in `tenant`, each needing a write
/// each way.
async fn seed(app: &TestApp, tenant: &str) {
    let pairs = Pairs { tag: "p", domain: "scale.example", pairs: PAIRS, people: PAIRS };
    Sandbox::new(app.pool.clone(), tenant).seed_pairs(&pairs).await.unwrap();
}

/// Connections whose every pair holds both values on both sides.
async fn converged_connections(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT p.tenant FROM ma.prospects p JOIN crm.leads l ON l.id = p.crm_lead_fid \
         WHERE p.email LIKE '%@scale.example' AND p.job_title = l.title AND l.phone = p.phone \
         GROUP BY p.tenant HAVING count(*) = $1) t",
    )
    .bind(PAIRS)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// The sum of a counter's series whose labels contain `labels`.
fn counter(scrape: &str, name: &str, labels: &str) -> f64 {
    scrape.lines().filter(|l| l.starts_with(name) && l.contains(labels)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_each_tier_serve_all_200_connections_and_none_starves() {
    let app = TestApp::spawn().await;
    sqlx::query("DELETE FROM connections WHERE id = 'default'").execute(&app.pool).await.unwrap();
    for i in 1..=CONNECTIONS {
        let tenant = format!("s{i:03}");
        seed(&app, &tenant).await;
        let settings = ConnectionSettings {
            ma: SystemEndpoint::sandbox(&tenant),
            crm: SystemEndpoint::sandbox(&tenant),
            // Every first pass (six changes) goes down the batch lane, so
            // that lanes, not only queues, are shared.
            batch_threshold: 2,
            ..ConnectionSettings::default()
        };
        connections::save(&app.pool, &format!("c{i:03}"), &settings).await.unwrap();
    }
    let mut replicas = Vec::new();
    for tier in [Tier::Producer, Tier::Matcher, Tier::Applier] {
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            let p = app.spawn_process_with_env(crmsync_tests::crmsync_exe!(), tier, &[("CRMSYNC_TELEMETRY__HTTP_LISTEN", addr.as_str())]);
            replicas.push((tier, addr, p));
        }
    }
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed() < Duration::from_secs(100) {
        done = converged_connections(&app).await;
        if done == CONNECTIONS as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    assert_eq!(done, CONNECTIONS as i64, "every connection is served, within {took:?}");
    println!("3 × 3 replicas, {CONNECTIONS} connections × {PAIRS} pairs converged in {:.1} s", took.as_secs_f64());
    let batch: i64 = sqlx::query_scalar("SELECT count(DISTINCT connection_id) FROM batch_lanes").fetch_one(&app.pool).await.unwrap();
    assert_eq!(batch, CONNECTIONS as i64, "every connection's first pass went down the batch lane");

    // Each replica did part of the work: records detected by each
    // producer, matched by each matcher, applied by each applier.
    for (tier, addr, _) in &replicas {
        let scrape = http_get(addr, "/metrics").await;
        let (stage, labels) = match tier {
            Tier::Producer => ("detect", "tier=\"producer\""),
            Tier::Matcher => ("match", "tier=\"matcher\""),
            Tier::Applier => ("apply", "tier=\"applier\""),
        };
        let n = counter(&scrape, "crmsync_records_total", &format!("stage=\"{stage}\""));
        println!("{tier:?} at {addr}: {n} records ({labels})");
        assert!(n > 0.0, "the {tier:?} replica at {addr} did some of the work:\n{scrape}");
    }
    // The broker carries the same queues as with one connection.
    let queues = app.broker.topology().shared_queues();
    assert_eq!(queues.len(), 4);
    for (_, _, p) in replicas {
        assert!(p.terminate().await, "each replica drains and exits 0");
    }
    app.cleanup().await;
}
