//! The operator's sync-error queue (issue 8): `crmsync errors` lists, shows,
//! retries, dismisses and exports sync errors, and inspects and replays
//! dead-lettered messages. Retried records and replayed messages go through
//! the normal pipeline again; nothing is lost on the way.

use std::time::{Duration, Instant};

use crmsync_connector::MaApi;
use crmsync_domain::Lane;
use crmsync_domain::messages::{self, Change, ChangeBatch, MESSAGE_VERSION};
use crmsync_domain::records::SourceRecord;
use crmsync_infra::amqp::Stage;
use crmsync_tests::{TestApp, Tier};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

/// Runs `crmsync` with `args`; its standard output, after checking it
/// succeeded.
async fn cli(app: &TestApp, args: &[&str]) -> String {
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), args).await;
    assert!(ok, "crmsync {args:?} failed:\n{out}\n{err}");
    out
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

async fn wait_for_lead(app: &TestApp, email: &str) {
    let started = Instant::now();
    while app.with_email("crm.leads", email).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "no lead for {email}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_listed_shown_retried_dismissed_and_exported() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Olga").await;
    app.sandbox.add_validation_rule("lead", "Phone_10_digits", "phone", "^$|^[0-9]{10}$", "Phone must have 10 digits").await.unwrap();
    let ruled = app.create_prospect(&[("email", "ruled@errors.example"), ("lastName", "Ruled"), ("company", "Co"), ("phone", "123")]).await;
    app.sandbox.assign(ruled, Some(ma_user)).await.unwrap();
    let bad = app.create_prospect(&[("email", "bad(at)errors.example"), ("lastName", "Bad"), ("company", "Co")]).await;
    app.sandbox.assign(bad, Some(ma_user)).await.unwrap();
    app.start_pipeline(1, 1);
    app.settle().await;

    // List: a table with a count per category, or JSON lines with filters.
    let table = cli(&app, &["errors"]).await;
    assert!(table.contains("2 sync error(s): default/invalid_email 1, default/validation_rule 1"), "{table}");
    let listed = json_lines(&cli(&app, &["errors", "list", "--json", "--category", "validation_rule"]).await);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["object"].as_str(), listed[0]["record_id"].as_str()), (Some("prospect"), Some(ruled.to_string().as_str())));
    let id = listed[0]["id"].as_i64().unwrap().to_string();
    let by_record = json_lines(&cli(&app, &["errors", "list", "--json", "--object", "prospect", "--record", &bad.to_string()]).await);
    assert_eq!(by_record.iter().map(|e| e["category"].as_str().unwrap()).collect::<Vec<_>>(), ["invalid_email"]);

    // Show: the whole reason.
    let shown = cli(&app, &["errors", "show", &id]).await;
    assert!(
        shown.contains("FIELD_CUSTOM_VALIDATION_EXCEPTION: Phone must have 10 digits") && shown.contains("status       open"),
        "{shown}"
    );

    // The admin relaxes the rule; a retry sends the record through again.
    sqlx::query("UPDATE crm.validation_rules SET active = false").execute(&app.pool).await.unwrap();
    let retried = cli(&app, &["errors", "retry", &id]).await;
    assert!(retried.contains("retried 1 record(s)"), "{retried}");
    // (Retried records are not counted by the feeds `settle` reads.)
    wait_for_lead(&app, "ruled@errors.example").await;
    app.settle().await;
    let after = json_lines(&cli(&app, &["errors", "list", "--json", "--status", "all"]).await);
    let states: Vec<(&str, &str)> = after.iter().map(|e| (e["category"].as_str().unwrap(), e["status"].as_str().unwrap())).collect();
    assert_eq!(states, [("invalid_email", "open"), ("validation_rule", "retried")], "{after:?}");

    // Dismiss by category.
    assert!(cli(&app, &["errors", "dismiss", "--category", "invalid_email"]).await.contains("dismissed 1"));
    assert!(cli(&app, &["errors"]).await.starts_with("0 sync error(s)"));

    // Export every error, as CSV and as JSON lines.
    let dir = std::env::temp_dir();
    let csv_path = dir.join(format!("{}.errors.csv", app.db_name));
    cli(&app, &["errors", "export", "--status", "all", "--output", csv_path.to_str().unwrap()]).await;
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(reader.headers().unwrap().get(3), Some("category"));
    assert_eq!(rows.iter().map(|r| (r[3].to_owned(), r[2].to_owned())).collect::<Vec<_>>().len(), 2);
    assert!(rows.iter().any(|r| &r[2] == "dismissed" && r[10].contains("exactly one '@'")), "{rows:?}");
    let _ = std::fs::remove_file(&csv_path);
    let jsonl = json_lines(&cli(&app, &["errors", "export", "--status", "all", "--format", "jsonl"]).await);
    assert_eq!(jsonl.len(), 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_without_loss() {
    let mut app = TestApp::spawn().await;
    let (ma_user, _) = app.sales_user("Dora").await;
    // No producer: the only way the record reaches the pipeline is the
    // replayed message.
    app.start(Tier::Matcher);
    app.start(Tier::Applier);
    let p = app.create_prospect(&[("email", "replayed@dead.example"), ("lastName", "Replayed"), ("company", "Co")]).await;
    app.sandbox.assign(p, Some(ma_user)).await.unwrap();
    let ma = crmsync_sandbox::ma::SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    let record = ma.prospects_by_id(&[p]).await.unwrap().pop().unwrap();
    let batch = ChangeBatch {
        v: MESSAGE_VERSION,
        batch_id: uuid::Uuid::now_v7(),
        connection_id: "default".into(),
        lane: Lane::Immediate,
        detected_at: chrono::Utc::now(),
        changes: vec![Change { change_id: uuid::Uuid::now_v7(), record: SourceRecord::Prospect(record), trace: None }],
    };
    // A valid message that was dead-lettered (as by a delivery limit during
    // an outage), beside an unreadable one.
    let channel = app.broker.live().await.unwrap().conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("x-connection-id".into(), AMQPValue::LongString(LongString::from("default")));
    headers.insert("x-lane".into(), AMQPValue::LongString(LongString::from("immediate")));
    let props = BasicProperties::default().with_delivery_mode(2).with_message_id(batch.batch_id.to_string().into()).with_headers(headers);
    channel
        .basic_publish(
            app.broker.topology().dead_exchange().into(),
            Stage::Match.as_str().into(),
            BasicPublishOptions::default(),
            &messages::encode(&batch),
            props,
        )
        .await
        .unwrap();
    app.publish_raw(Stage::Match, Lane::Immediate, b"{not json".to_vec()).await;
    let started = Instant::now();
    while app.dead_letters(Stage::Match).await < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the unreadable message was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Listing does not consume.
    let listed = cli(&app, &["errors", "dead-letters", "--stage", "match"]).await;
    assert!(listed.contains(&batch.batch_id.to_string()) && listed.contains("2 message(s)"), "{listed}");
    assert!(!listed.contains("replayed@dead.example"), "emails are redacted: {listed}");
    // (A quorum queue counts returned messages again a moment later.)
    let started = Instant::now();
    while app.dead_letters(Stage::Match).await != 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "listing consumed nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Replaying the valid one syncs it; the unreadable one stays.
    let replayed = cli(&app, &["errors", "replay", "--message", &batch.batch_id.to_string()]).await;
    assert!(replayed.contains("replayed 1 message(s)"), "{replayed}");
    wait_for_lead(&app, "replayed@dead.example").await;
    assert_eq!(app.dead_letters(Stage::Match).await, 1);

    // Replaying everything puts the unreadable one back through: it is
    // dead-lettered again, and its error counted again; nothing is lost.
    let malformed = json_lines(&cli(&app, &["errors", "list", "--json", "--category", "malformed_message"]).await);
    assert_eq!(malformed.len(), 1, "{malformed:?}");
    cli(&app, &["errors", "retry", "--category", "malformed_message"]).await;
    let started = Instant::now();
    loop {
        let again = json_lines(&cli(&app, &["errors", "list", "--json", "--category", "malformed_message"]).await);
        if app.dead_letters(Stage::Match).await == 1 && again.len() == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the replayed poison message did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.cleanup().await;
}
