//! What scripts need from the CLI (issue 26), through the real binary and
//! tiers: `status --json` and `report --json`, `wait-idle`, refused
//! creations told apart from ones under way, and a report that lists what
//! waits in the batch lane apart from real mismatches.

use std::time::{Duration, Instant};

use crmsync_tests::{TestApp, Tier};
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
    let refused =
        app.create_prospect(&[("email", "refused@status.example"), ("lastName", "Refused"), ("company", "Co"), ("phone", "1")]).await;
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
    assert_eq!(
        c["identities"],
        serde_json::json!({"in_sync": 0, "pending_assignment": 1, "being_created": 0, "creation_failed": 1, "recycled": 0})
    );
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
    let batch = queues.iter().find(|q| q["queue"].as_str().unwrap().ends_with(".apply.batch")).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_lists_what_waits_in_the_batch_lane_and_fails_only_on_real_mismatches() {
    let mut app = TestApp::spawn().await;
    app.set("batch_threshold", "2").await;
    let mut pairs = Vec::new();
    for n in 0..4 {
        let email = format!("pair{n}@report.example");
        let lead = app.create_lead(&[("LastName", "Pair"), ("Company", "Co"), ("Email", &email), ("Title", "Dev")]).await;
        let prospect = app.create_prospect(&[("email", &email), ("lastName", "Pair"), ("crmLeadFid", &lead)]).await;
        pairs.push((prospect, lead));
    }
    app.start_pipeline(1, 1);
    app.settle().await;
    assert!(json(&cli(&app, &["report", "--json"]).await)["ok"].as_bool().unwrap());

    // Three edits in one transaction take the batch lane, where no applier
    // runs now: they wait there.
    app.stop(Tier::Applier).await;
    let ops: Vec<String> = pairs[..3]
        .iter()
        .map(|(p, _)| format!("{{\"op\": \"update\", \"object\": \"prospect\", \"id\": {p}, \"set\": {{\"jobTitle\": \"CTO\"}}}}"))
        .collect();
    let (ok, _, err) = app.run_cli_with(crmsync_tests::crmsync_exe!(), &["sandbox", "batch"], &[], Some(&ops.join("\n"))).await;
    assert!(ok, "{err}");
    let started = Instant::now();
    while crmsync_applier::batch_figures(&app.pool, "default").await.unwrap().backlog < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "the edits reach the batch lane");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A real mismatch beside them: the fourth lead's title changed by a
    // write no change will ever bring (as the integration user, so the
    // producer drops it as the engine's own).
    let rogue = |title: Option<&'static str>| {
        sqlx::query(
            "UPDATE crm.leads SET title = $2, last_modified_by = (SELECT id FROM crm.users WHERE tenant = 'default' AND is_integration) \
             WHERE id = $1",
        )
        .bind(pairs[3].1.clone())
        .bind(title)
    };
    rogue(Some("Rogue")).execute(&app.pool).await.unwrap();

    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["report", "--json"]).await;
    assert!(!ok, "a real mismatch fails the report:\n{out}\n{err}");
    let r = &json(&out)["connections"][0];
    let fields =
        |key: &str| r[key].as_array().unwrap().iter().map(|m| (m["prospect_id"].as_i64().unwrap(), m["field"].clone())).collect::<Vec<_>>();
    assert_eq!(fields("mismatches"), [(pairs[3].0, Value::from("jobTitle"))], "{r}");
    assert_eq!(fields("waiting_in_batch_lane"), pairs[..3].iter().map(|(p, _)| (*p, Value::from("jobTitle"))).collect::<Vec<_>>(), "{r}");
    assert!(r["batch_backlog"].as_i64().unwrap() >= 3, "{r}");

    // Only the batch lane's backlog left: the report passes, and says so.
    rogue(Some("Dev")).execute(&app.pool).await.unwrap();
    let text = cli(&app, &["report"]).await;
    assert!(text.contains("3 field(s) waiting in the batch lane") && text.contains("OK: both sides agree"), "{text}");
    assert_eq!(json(&cli(&app, &["report", "--json"]).await)["ok"], true);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_many_connections_at_once_and_asks_the_broker_only_about_busy_queues() {
    let app = TestApp::spawn().await;
    // 120 connections more (each figure read once for all of them), one of
    // them with a batch-lane backlog.
    let settings = crmsync_store::connections::load(&app.pool, "default").await.unwrap();
    for n in 0..120 {
        crmsync_store::connections::save(&app.pool, &format!("c{n:03}"), &settings).await.unwrap();
    }
    app.create_prospect(&[("email", "many@status.example"), ("lastName", "Many")]).await;
    sqlx::query("INSERT INTO feeds (connection_id, feed, published, published_batch) VALUES ('c007', 'ma.prospect', 3, 3)")
        .execute(&app.pool)
        .await
        .unwrap();
    let s = json(&cli(&app, &["status", "--json"]).await);
    let connections = s["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 121);
    let of = |id: &str| connections.iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("{id}"));
    assert_eq!(of("c007")["batch_lane"]["backlog"], 3);
    assert_eq!(of("c008")["batch_lane"]["backlog"], 0);
    assert_eq!(of("c007")["feeds"][0]["published"], 3);
    assert_eq!(of("c119")["identities"]["in_sync"], 0);
    // The broker is asked about the shared queues only: one batch-lane
    // queue for every connection.
    let batch_queues: Vec<&str> = s["broker"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["lane"] == "batch" && q["stage"] == "apply")
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(batch_queues.len(), 1, "{batch_queues:?}");
    assert!(batch_queues[0].ends_with(".apply.batch"), "{batch_queues:?}");
    assert_eq!(of("default")["identities"]["pending_assignment"], 0, "no producer ran: the prospect is not detected");
    // One connection asked for: its own figures.
    let one = json(&cli(&app, &["status", "--json", "-c", "c007"]).await);
    assert_eq!(one["connections"].as_array().unwrap().len(), 1);
    assert_eq!(one["connections"][0]["batch_lane"]["backlog"], 3);
    app.cleanup().await;
}
