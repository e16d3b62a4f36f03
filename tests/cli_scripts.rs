//! What scripts need from the CLI (issue 26), through the real binary and
//! tiers: `status --json`, `wait-idle`, refused creations told apart from
//! ones under way.

use std::time::{Duration, Instant};

use crmsync_tests::TestApp;
use serde_json::Value;

async fn cli(app: &TestApp, args: &[&str]) -> String {
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), args).await;
    assert!(ok, "crmsync {args:?} failed:\n{out}\n{err}");
    out
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_refused_creations_from_ones_under_way_in_text_and_json() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Rita").await;
    app.sandbox.add_validation_rule("lead", "Phone_10_digits", "phone", "^$|^[0-9]{10}$", "Phone must have 10 digits").await.unwrap();
    let refused = app.create_prospect(&[("email", "refused@status.example"), ("lastName", "Refused"), ("company", "Co"), ("phone", "1")]).await;
    app.sandbox.assign(refused, Some(ma_user)).await.unwrap();
    app.create_prospect(&[("email", "pending@status.example"), ("lastName", "Pending")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.identity_status(refused).await.as_deref(), Some("creating_crm"));

    let text = cli(&app, &["status"]).await;
    assert!(text.contains("being created        0") && text.contains("creation failed      1"), "{text}");
    let s = json(&cli(&app, &["status", "--json"]).await);
    assert_eq!(s["ok"], true);
    let c = &s["connections"][0];
    assert_eq!(c["id"], "default");
    assert_eq!(c["identities"], serde_json::json!({"in_sync": 0, "pending_assignment": 1, "being_created": 0, "creation_failed": 1}));
    assert_eq!(c["sync_errors"], serde_json::json!({"validation_rule": 1}));
    let feed = c["feeds"].as_array().unwrap().iter().find(|f| f["feed"] == "ma.prospect").unwrap_or_else(|| panic!("{c}"));
    assert!(feed["published"].as_i64().unwrap() >= 2, "{feed}");
    for key in ["echoes_dropped", "leased_by"] {
        assert!(feed.get(key).is_some(), "{key} in {feed}");
    }
    for key in ["backlog", "budget_per_hour", "used_last_hour", "used_share", "eta_secs"] {
        assert!(c["batch_lane"][key].is_number(), "{key} in {}", c["batch_lane"]);
    }
    assert_eq!(c["csqls"]["target"], "cs");
    let queues = s["broker"]["queues"].as_array().unwrap();
    let batch = queues.iter().find(|q| q["queue"].as_str().unwrap().ends_with(".apply.batch.default")).unwrap();
    assert_eq!((batch["stage"].as_str(), batch["lane"].as_str(), batch["messages"].as_u64()), (Some("apply"), Some("batch"), Some(0)));
    let dead = queues.iter().find(|q| q["queue"].as_str().unwrap().ends_with(".match.dead")).unwrap();
    assert_eq!(dead["lane"], Value::Null);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_waits_for_the_pipeline_and_fails_on_its_timeout() {
    let mut app = TestApp::spawn().await;
    let p = app.create_prospect(&[("email", "unread@idle.example"), ("lastName", "Unread")]).await;
    // No tiers: the prospect is never read.
    let started = Instant::now();
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["wait-idle", "--timeout-secs", "2"]).await;
    assert!(!ok && err.contains("did not settle within 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "gave up at its timeout: {:?}", started.elapsed());

    app.start_pipeline(1, 1);
    let out = cli(&app, &["wait-idle", "-c", "default", "--timeout-secs", "60"]).await;
    assert!(out.starts_with("idle after") && out.contains("1 change(s) published, 1 finished"), "{out}");
    assert_eq!(app.identity_status(p).await.as_deref(), Some("pending_assignment"), "the change was through when it said idle");
    app.cleanup().await;
}
