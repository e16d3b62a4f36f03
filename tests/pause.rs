//! Pausing and resuming a connection, and syncing one record now (issue
//! 28), through the real tiers against real RabbitMQ, Redis and
//! PostgreSQL: while paused nothing is written and the cursors hold still,
//! messages already queued are held back without stalling other
//! connections, and a resume catches up with nothing lost or doubled; Sync
//! now sends a record through the immediate lane again, refused to viewers,
//! to forms without their CSRF token and on a paused connection.

use std::time::Duration;

use crmsync_console::users::{self, Role};
use crmsync_domain::settings::{ConnectionSettings, SystemEndpoint};
use crmsync_infra::CancellationToken;
use crmsync_infra::amqp::Stage;
use crmsync_sandbox::ops::Sandbox;
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_store::admin_audit::{self, Actor};
use crmsync_store::{connections, feeds};
use crmsync_tests::console::{Browser, csrf_of, serve};
use crmsync_tests::{Lane, TestApp, Tier, eventually, http_get};
use reqwest::StatusCode;
use serde_json::Value;

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const VIEWER_PASSWORD: &str = "viewer sees all, changes none";

/// Held messages come back this often in these tests.
const HOLD_MS: u64 = 500;

/// Every feed's cursor.
async fn cursors(app: &TestApp) -> Vec<(String, Option<Value>)> {
    feeds::all(&app.pool, "default").await.unwrap().into_iter().map(|f| (f.feed, f.cursor)).collect()
}

/// Long enough for every tier to have done whatever it would do: dozens of
/// poll intervals and several hold periods.
async fn let_the_tiers_run() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn tester() -> Actor {
    Actor { name: "test".into(), via: "cli" }
}

async fn pause(app: &TestApp, paused: bool) {
    crmsync_ops::pause::set_paused(&app.pool, &tester(), "default", paused).await.unwrap();
}

/// A lead and a prospect with the same email, linked by the pipeline.
async fn linked_pair(app: &TestApp, email: &str, title: &str) -> (String, i64) {
    let lead = app.create_lead(&[("LastName", "Doe"), ("Company", "Acme"), ("Email", email), ("Title", title)]).await;
    let p = app.create_prospect(&[("email", email), ("lastName", "Doe"), ("crmLeadFid", &lead)]).await;
    (lead, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_paused_nothing_is_written_and_the_cursors_hold_then_a_resume_catches_up_in_order() {
    let mut app = TestApp::spawn().await;
    app.config.amqp.hold_ms = HOLD_MS;
    let (lead, p) = linked_pair(&app, "jane@acme.example", "CTO").await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.prospect(p).await["job_title"], "CTO");

    // Paused from the CLI, as the operating-system user.
    let exe = crmsync_tests::crmsync_exe!();
    let (ok, out, err) = app.run_cli(exe, &["connection", "pause", "default"]).await;
    assert!(ok && out.contains("default: running → paused"), "{out}\n{err}");
    let (ok, out, _) = app.run_cli(exe, &["connection", "pause", "default"]).await;
    assert!(ok && out.contains("already paused"), "pausing again changes nothing: {out}");
    let held = cursors(&app).await;
    let published = app.published().await;

    // Edits on both sides, the same field twice, and a new pair.
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "CEO")]).await;
    app.update(&LEAD, &lead, &[("City", "Kyoto")]).await;
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "Chair")]).await;
    let lead2 = app.create_lead(&[("LastName", "Roe"), ("Company", "Acme"), ("Email", "rick@acme.example")]).await;
    let p2 = app.create_prospect(&[("email", "rick@acme.example"), ("lastName", "Roe")]).await;
    let_the_tiers_run().await;

    assert_eq!(app.show(&LEAD, &lead).await["title"], "CTO", "nothing is written to the CRM");
    assert_eq!(app.prospect(p).await["city"], Value::Null, "nothing is written to the MA");
    assert_eq!(cursors(&app).await, held, "the cursors hold still");
    assert_eq!(app.published().await, published, "nothing is published");
    assert_eq!(app.identity_status(p2).await, None, "the new pair is not matched yet");

    // Status, as text and JSON, says so.
    let (_, out, _) = app.run_cli(exe, &["status"]).await;
    assert!(out.contains("PAUSED since") && out.contains("connection resume default"), "{out}");
    let (_, out, _) = app.run_cli(exe, &["status", "--json"]).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    let c = &status["connections"][0];
    assert_eq!(c["paused"], true, "{c}");
    assert!(c["paused_by"].as_str().unwrap().starts_with("cli:"), "{c}");

    let (ok, out, err) = app.run_cli(exe, &["connection", "resume", "default"]).await;
    assert!(ok && out.contains("default: paused → running"), "{out}\n{err}");
    app.settle().await;

    // Everything arrives: the last edit of a field wins, nothing doubles.
    assert_eq!(app.show(&LEAD, &lead).await["title"], "Chair");
    assert_eq!(app.prospect(p).await["job_title"], "Chair");
    assert_eq!(app.prospect(p).await["city"], "Kyoto");
    assert_eq!(app.identity_status(p2).await.as_deref(), Some("linked"));
    assert_eq!(app.with_email("crm.leads", "rick@acme.example").await.len(), 1);
    assert_eq!(app.with_email("ma.prospects", "rick@acme.example").await.len(), 1);
    assert_eq!(app.with_email("crm.leads", "jane@acme.example").await.len(), 1);
    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM identities WHERE crm_id IN ($1, $2)")
        .bind(&lead)
        .bind(&lead2)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(linked, 2);
    assert_ne!(cursors(&app).await, held, "the cursors moved on from where they were held");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);

    // Both changes are in the admin audit log, once each.
    let entries = admin_audit::recent(&app.pool, Some("default"), None, 10).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["connection.resume", "connection.pause"]);
    assert_eq!(entries[1].before.as_ref().unwrap()["paused"], false);
    assert_eq!(entries[1].after.as_ref().unwrap()["paused"], true);
    assert!(entries[1].actor.starts_with("cli:") && entries[1].via == "cli");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_before_the_pause_are_held_without_stalling_another_connection_and_applied_on_resume() {
    let mut app = TestApp::spawn().await;
    app.config.amqp.hold_ms = HOLD_MS;
    // One message at a time per lane: a held message that kept its slot
    // would stop every other connection's.
    app.config.matcher.concurrency = 1;
    app.config.applier.concurrency = 1;
    // A second connection, on tenants of its own.
    let second = ConnectionSettings { ma: SystemEndpoint::sandbox("second"), crm: SystemEndpoint::sandbox("second"), ..Default::default() };
    connections::save(&app.pool, "second", &second).await.unwrap();
    let other = Sandbox::new(app.pool.clone(), "second");
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>();
    let other_lead =
        other.create(&LEAD, &pairs(&[("LastName", "Kim"), ("Company", "Globex"), ("Email", "kim@globex.example")]), None).await.unwrap();
    let other_p: i64 = other
        .create(&PROSPECT, &pairs(&[("email", "kim@globex.example"), ("lastName", "Kim"), ("crmLeadFid", &other_lead)]), None)
        .await
        .unwrap()
        .parse()
        .unwrap();

    let (lead, p) = linked_pair(&app, "jane@acme.example", "CTO").await;
    app.start_pipeline(1, 1);
    app.settle().await;
    // An edit matched and waiting for the applier...
    app.stop(Tier::Applier).await;
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "CEO")]).await;
    eventually("the command in the apply queue", || async { app.queued(Stage::Apply, Lane::Immediate).await >= 1 }).await;
    // ...and one detected and waiting for the matcher.
    app.stop(Tier::Matcher).await;
    app.update(&LEAD, &lead, &[("City", "Kyoto")]).await;
    eventually("the change in the match queue", || async { app.queued(Stage::Match, Lane::Immediate).await >= 1 }).await;

    pause(&app, true).await;
    // The applier started now serves the process's metrics.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    app.config.telemetry.http_listen = Some(metrics_addr.clone());
    app.start(Tier::Matcher);
    app.start(Tier::Applier);
    let_the_tiers_run().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CTO", "the queued command is not applied");
    assert_eq!(app.prospect(p).await["city"], Value::Null, "the queued change is not matched and applied");
    assert_eq!(app.dead_letters(Stage::Match).await + app.dead_letters(Stage::Apply).await, 0, "nothing is dead-lettered");

    // The other connection goes on meanwhile, through the same queues.
    other.update(&LEAD, &other_lead, &pairs(&[("Title", "CFO")]), None).await.unwrap();
    eventually("the other connection's edit", || async {
        other.show(&PROSPECT, &other_p.to_string()).await.unwrap()["job_title"] == "CFO"
    })
    .await;

    // Held, not spun: each message comes back once a hold period, and the
    // connection is shown paused.
    let metrics = http_get(&metrics_addr, "/metrics").await;
    let held: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("crmsync_messages_total") && l.contains("outcome=\"held\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!((2.0..=40.0).contains(&held), "held {held} times in a few seconds:\n{metrics}");
    assert!(metrics.contains("crmsync_connection_paused{connection=\"default\"} 1"), "{metrics}");

    pause(&app, false).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CEO");
    assert_eq!(app.prospect(p).await["city"], "Kyoto");
    assert_eq!(app.dead_letters(Stage::Match).await + app.dead_letters(Stage::Apply).await, 0);
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_sends_a_record_again_for_admins_only_and_never_on_a_paused_connection() {
    let mut app = TestApp::spawn().await;
    app.config.amqp.hold_ms = HOLD_MS;
    let stop = CancellationToken::new();
    let url = serve(&app, false, &stop).await;
    users::add(&app.pool, &tester(), "ops", Role::Admin, ADMIN_PASSWORD).await.unwrap();
    users::add(&app.pool, &tester(), "watcher", Role::Viewer, VIEWER_PASSWORD).await.unwrap();
    let (lead, p) = linked_pair(&app, "jane@acme.example", "CTO").await;
    app.start_pipeline(1, 1);
    app.settle().await;

    // The CRM refuses the prospect's new title; the admin dismisses the
    // error, then lifts the rule. Nothing sends the record again by itself.
    app.sandbox.add_validation_rule("lead", "Title_capitals", "title", "^[A-Z]*$", "Title must be capitals").await.unwrap();
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "Vice President")]).await;
    app.settle().await;
    let errors = app.sync_errors().await;
    assert!(errors.iter().any(|e| e.category == "validation_rule"), "{errors:?}");
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["errors", "dismiss", "--category", "validation_rule"]).await;
    assert!(ok, "{out}\n{err}");
    sqlx::query("UPDATE crm.validation_rules SET active = false").execute(&app.pool).await.unwrap();
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CTO");

    let lookup = format!("/records?connection=default&q={p}");
    let pid = p.to_string();

    // A viewer sees no button and is refused, even with its own token.
    let mut viewer = Browser::new(&url);
    assert_eq!(viewer.sign_in("watcher", VIEWER_PASSWORD).await, StatusCode::SEE_OTHER);
    let (_, page) = viewer.get(&lookup).await;
    assert!(!page.contains("Sync now") && !page.contains("/records/sync-now"), "{page}");
    let viewer_csrf = csrf_of(&viewer.get("/").await.1);
    let by_viewer = [("connection", "default"), ("q", pid.as_str()), ("csrf", viewer_csrf.as_str())];
    assert_eq!(viewer.post("/records/sync-now", &by_viewer).await.0, StatusCode::FORBIDDEN);

    // An admin's form without its CSRF token is refused.
    let mut admin = Browser::new(&url);
    assert_eq!(admin.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);
    let (status, page) = admin.get(&lookup).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Sync now") && page.contains(r#"action="/records/sync-now""#), "{page}");
    let csrf = csrf_of(&page);
    let no_csrf = [("connection", "default"), ("q", pid.as_str())];
    assert_eq!(admin.post("/records/sync-now", &no_csrf).await.0, StatusCode::FORBIDDEN);
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CTO", "nothing was sent");
    assert!(admin_audit::recent(&app.pool, Some("default"), None, 10).await.unwrap().iter().all(|e| e.action != "record.sync_now"));

    // Paused from the connection page: Sync now is refused, from the
    // console and from the CLI, and the overview shows it.
    let (_, page) = admin.get("/connections/default").await;
    assert!(page.contains("Running.") && page.contains(r#"action="/connections/default/pause""#), "{page}");
    assert_eq!(admin.post("/connections/default/pause", &[]).await.0, StatusCode::FORBIDDEN, "a pause needs its CSRF token");
    assert_eq!(viewer.post("/connections/default/pause", &[("csrf", &viewer_csrf)]).await.0, StatusCode::FORBIDDEN);
    let (status, location, _) = admin.post("/connections/default/pause", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/connections/default")));
    let (_, page) = admin.get("/connections/default").await;
    assert!(page.contains("Paused") && page.contains("by ops") && page.contains(r#"action="/connections/default/resume""#), "{page}");
    let (_, overview) = viewer.get("/").await;
    assert!(overview.contains("<strong>paused</strong>"), "{overview}");
    let sync_now = [("connection", "default"), ("q", pid.as_str()), ("csrf", csrf.as_str())];
    let (status, _, body) = admin.post("/records/sync-now", &sync_now).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("is paused"), "{body}");
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["records", "sync-now", "-c", "default", &pid]).await;
    assert!(!ok && err.contains("is paused"), "{err}");
    let (status, location, _) = admin.post("/connections/default/resume", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/connections/default")));

    // Resumed: Sync now reads both sides again and the title is written.
    let (status, _, body) = admin.post("/records/sync-now", &sync_now).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(&format!("Sent <code>prospect {p}</code>")) && body.contains(&format!("lead {lead}")), "{body}");
    // (Its changes are not a feed's, which `settle` counts.)
    eventually("the title written", || async { app.show(&LEAD, &lead).await["title"] == "Vice President" }).await;
    let history: Vec<(String, String)> =
        sqlx::query_as("SELECT stage, action FROM audit_log WHERE source_object = 'prospect' ORDER BY id DESC LIMIT 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(history, [("apply".to_owned(), "updated".to_owned())], "applied like a detected change");
    let entries = admin_audit::recent(&app.pool, Some("default"), None, 10).await.unwrap();
    let actions: Vec<(&str, &str, &str)> = entries.iter().map(|e| (e.action.as_str(), e.actor.as_str(), e.via.as_str())).collect();
    assert_eq!(
        &actions[..3],
        [("record.sync_now", "ops", "console"), ("connection.resume", "ops", "console"), ("connection.pause", "ops", "console")]
    );
    assert_eq!(entries[0].target.as_deref(), Some(format!("prospect {p}, lead {lead}").as_str()));

    // The CLI does the same, by email; the record is in sync, so nothing changes.
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["records", "sync-now", "-c", "default", "Jane@Acme.example"]).await;
    assert!(ok && out.contains(&format!("sent prospect {p}")), "{out}\n{err}");
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "Vice President");
    assert_eq!(app.with_email("crm.leads", "jane@acme.example").await.len(), 1);
    stop.cancel();
    app.cleanup().await;
}
