//! One connection's trouble reaches no other (issue 29), through the real
//! tiers: a connection whose CRM refuses every call is retried on its own
//! back-off while another connection's live change goes through, and once
//! its CRM is given back nothing it missed is lost (I1).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_sandbox::ops::Sandbox;
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_store::connections;
use crmsync_tests::{TestApp, eventually};

/// A Salesforce that answers `503 Service Unavailable` to everything, its
/// token endpoint included, and counts what it is asked.
struct Refuser {
    url: String,
    requests: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Refuser {
    async fn start() -> Refuser {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let app = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down for maintenance")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Refuser { url, requests, server }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn pairs(values: &[(&str, &str)]) -> Vec<(String, String)> {
    values.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A lead and its linked prospect in `sb`'s tenants.
async fn linked_pair(sb: &Sandbox, email: &str) -> (String, String) {
    let lead = sb.create(&LEAD, &pairs(&[("LastName", "Kim"), ("Company", "Globex"), ("Email", email)]), None).await.unwrap();
    let prospect = sb.create(&PROSPECT, &pairs(&[("email", email), ("lastName", "Kim"), ("crmLeadFid", &lead)]), None).await.unwrap();
    (lead, prospect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_crm_refuses_every_call_delays_no_other_and_loses_nothing() {
    let mut app = TestApp::spawn().await;
    let refuser = Refuser::start().await;
    let secret = std::env::temp_dir().join(format!("crmsync-test-{}.secret", uuid::Uuid::new_v4()));
    std::fs::write(&secret, "the-endpoint-refuses-everything").unwrap();
    let sandboxed =
        ConnectionSettings { ma: SystemEndpoint::sandbox("broken"), crm: SystemEndpoint::sandbox("broken"), ..Default::default() };
    let mut broken = sandboxed.clone();
    // The Pub/Sub address too: nothing leaves this machine.
    broken.crm = SystemEndpoint::Salesforce(
        serde_json::from_value(serde_json::json!({
            "oauth": {"login_url": refuser.url, "flow": "client_credentials", "client_id": "crmsync-test",
                      "client_secret": {"file": secret.to_string_lossy()}},
            "pubsub_url": refuser.url,
        }))
        .unwrap(),
    );
    connections::save(&app.pool, "broken", &broken).await.unwrap();
    let other = Sandbox::new(app.pool.clone(), "broken");
    let (other_lead, other_prospect) = linked_pair(&other, "kim@globex.example").await;
    let (lead, prospect) = linked_pair(&app.sandbox, "jane@acme.example").await;

    app.start_pipeline(1, 1);
    app.settle().await;
    eventually("the broken connection's CRM being tried", || async { refuser.requests() >= 2 }).await;

    // A live change on the healthy connection goes through while the
    // broken one is being retried...
    let tried_before = refuser.requests();
    app.update(&PROSPECT, &prospect, &[("jobTitle", "Went through")]).await;
    eventually("the healthy connection's live change", || async { app.show(&LEAD, &lead).await["title"] == "Went through" }).await;
    // ...and work the broken one cannot do waits for it.
    other.update(&PROSPECT, &other_prospect, &pairs(&[("jobTitle", "Waited")]), None).await.unwrap();
    eventually("the broken connection still being tried", || async { refuser.requests() > tried_before }).await;
    assert_ne!(other.show(&LEAD, &other_lead).await.unwrap()["title"], "Waited", "written through a CRM that refuses everything");

    // Retried on a back-off, not in a tight loop: over a few seconds, a
    // handful of logins (each up to five attempts), never hundreds.
    let (from, start) = (refuser.requests(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_second = (refuser.requests() - from) as f64 / start.elapsed().as_secs_f64();
    assert!(per_second < 20.0, "the refusing CRM was asked {per_second:.1} times a second");

    // Given back (an operator fixed its settings): tried again at once,
    // whatever its back-off, and what it missed arrives.
    connections::save(&app.pool, "broken", &sandboxed).await.unwrap();
    eventually("the broken connection's change once its CRM is back", || async {
        other.show(&LEAD, &other_lead).await.unwrap()["title"] == "Waited"
    })
    .await;
    let healthy = app.settle().await;
    assert_eq!(app.dead_letters(crmsync_infra::amqp::Stage::Apply).await, 0, "nothing is dead-lettered: {healthy:?}");
    refuser.server.abort();
    let _ = std::fs::remove_file(&secret);
    app.cleanup().await;
}
