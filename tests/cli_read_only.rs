//! The operator's read-only commands through the real binary (issue 26):
//! they answer within their timeouts with what they could read, say what
//! they could not reach, create nothing (I10), print JSON for scripts, keep
//! personal data out of their output unless asked, and end quietly when
//! their reader goes away.

use std::time::{Duration, Instant};

use crmsync_domain::{SyncErrorCategory, SyncIssue};
use crmsync_store::sync_errors::{self, NewSyncError};
use crmsync_tests::TestApp;
use serde_json::Value;

/// Runs `crmsync` with `args`; its standard output, after checking it
/// succeeded.
async fn cli(app: &TestApp, args: &[&str]) -> String {
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), args).await;
    assert!(ok, "crmsync {args:?} failed:\n{out}\n{err}");
    out
}

/// An open sync error whose reason quotes an email, as the CRM's refusals do.
async fn error_quoting_an_email(app: &TestApp, prospect: i64) {
    let error = NewSyncError {
        stage: "apply",
        object: "prospect".into(),
        record_id: prospect.to_string(),
        issue: SyncIssue::new(SyncErrorCategory::DuplicateRule, "DUPLICATES_DETECTED: a lead with email jane.doe@pii.example exists"),
        change_id: None,
        payload: Some(serde_json::json!({"email": "jane.doe@pii.example", "lastName": "Doe"})),
    };
    sync_errors::record_many(&app.pool, "default", &[error]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_ends_quietly_when_its_reader_goes_away() {
    let app = TestApp::spawn().await;
    for n in 0..3 {
        app.create_prospect(&[("email", &format!("piped{n}@pipe.example")), ("lastName", "Piped")]).await;
    }
    error_quoting_an_email(&app, 1).await;
    let id = app.sync_errors().await[0].id.to_string();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["errors"],
        &["errors", "list", "--json"],
        &["errors", "show", &id],
        &["errors", "export", "--format", "jsonl"],
        &["report"],
        &["connection", "list"],
        &["sandbox", "list", "prospect"],
    ] {
        let (status, err) = app.run_cli_into_closed_pipe(crmsync_tests::crmsync_exe!(), args).await;
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "crmsync {args:?} into a closed pipe:\n{err}");
        assert!(status.success(), "crmsync {args:?} into a closed pipe ends with success: {status:?}\n{err}");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_set_help_lists_every_key_the_settings_take() {
    let app = TestApp::spawn().await;
    let (ok, help, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["connection", "set", "--help"]).await;
    assert!(ok, "{err}");
    for (key, what) in crmsync_domain::settings::KEYS {
        assert!(help.contains(&format!("- {key}:")) && help.contains(what), "`connection set --help` lists {key}:\n{help}");
    }
    // What the help lists is what the command takes.
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["connection", "set", "default", "ma", "elsewhere"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["connection", "set", "default", "colour", "red"]).await;
    assert!(!ok && err.contains("possible values") && err.contains("crm"), "{err}");
    app.cleanup().await;
}

/// A TCP listener on loopback that accepts connections and never answers:
/// a broker (or a database) that hangs. Returns its port.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test's process ends with it anyway.
        for _ in 0..50 {
            match listener.accept().await {
                Ok((socket, _)) => held.push(socket),
                Err(_) => return,
            }
        }
    });
    port
}

/// Runs `crmsync` with extra environment variables, failing the test if it
/// has not answered after `limit` (today's hang): (success, stdout,
/// stderr, how long it took).
async fn timed(app: &TestApp, args: &[&str], env: &[(&str, &str)], limit: Duration) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let run = app.run_cli_with(crmsync_tests::crmsync_exe!(), args, env, None);
    let (ok, out, err) =
        tokio::time::timeout(limit, run).await.unwrap_or_else(|_| panic!("crmsync {args:?} still running after {limit:?}"));
    (ok, out, err, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_within_its_timeout_when_the_broker_does_not() {
    let app = TestApp::spawn().await;
    app.create_prospect(&[("email", "waiting@status.example"), ("lastName", "Waiting")]).await;
    sqlx::query(
        "INSERT INTO identities (id, connection_id, status, prospect_id) VALUES (gen_random_uuid(), 'default', 'pending_assignment', 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", silent_listener().await);
    let env = [("CRMSYNC_AMQP__URL", url.as_str()), ("CRMSYNC_AMQP__TIMEOUT_MS", "1500")];
    let (ok, out, _, took) = timed(&app, &["status"], &env, Duration::from_secs(60)).await;
    assert!(!ok, "a service it could not reach makes status exit 1");
    assert!(took < Duration::from_secs(20), "answered within its timeout: {took:?}");
    assert!(out.contains("pending assignment   1"), "the database's figures are shown:\n{out}");
    assert!(out.contains("Broker: unreachable: the broker did not answer within 1.5s"), "{out}");
    let (_, json, _, _) = timed(&app, &["status", "--json"], &env, Duration::from_secs(60)).await;
    let status: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["connections"][0]["identities"]["pending_assignment"], 1, "{status}");
    assert_eq!((status["ok"].as_bool(), status["broker"]["reachable"].as_bool()), (Some(false), Some(false)), "{status}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_errors_answer_within_their_timeout_when_postgresql_does_not() {
    let app = TestApp::spawn().await;
    error_quoting_an_email(&app, 1).await;
    // A migration (say) holds the tables the commands read.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE identities, sync_errors IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let env = [("CRMSYNC_DATABASE__COMMAND_TIMEOUT_MS", "1500")];
    let (ok, out, _, took) = timed(&app, &["status"], &env, Duration::from_secs(60)).await;
    assert!(!ok && took < Duration::from_secs(20), "{took:?}\n{out}");
    assert!(out.contains("PostgreSQL: PostgreSQL did not answer within 1500 ms (database.command_timeout_ms)"), "{out}");
    assert!(out.contains("Queued messages (broker)"), "what the broker says is still shown:\n{out}");
    for args in [&["errors"][..], &["errors", "list", "--json"], &["errors", "export"]] {
        let (ok, _, err, took) = timed(&app, args, &env, Duration::from_secs(60)).await;
        assert!(!ok && took < Duration::from_secs(20), "crmsync {args:?}: {took:?}");
        assert!(err.contains("PostgreSQL did not answer within 1500 ms"), "crmsync {args:?}:\n{err}");
    }
    lock.rollback().await.unwrap();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_declare_nothing_on_the_broker() {
    let app = TestApp::spawn().await;
    // Under a prefix nothing ever used, nothing exists afterwards.
    let fresh = format!("{}x", app.config.amqp.prefix);
    let env = [("CRMSYNC_AMQP__PREFIX", fresh.as_str())];
    for args in [&["status"][..], &["status", "--json"], &["errors", "dead-letters"], &["wait-idle", "--timeout-secs", "30"]] {
        let (ok, out, err, _) = timed(&app, args, &env, Duration::from_secs(60)).await;
        assert!(ok, "crmsync {args:?}:\n{out}\n{err}");
    }
    let mut untouched = crmsync_infra::amqp::Topology::new(&crmsync_infra::config::AmqpConfig { prefix: fresh, ..app.config.amqp.clone() })
        .shared_queues()
        .into_iter()
        .map(|(_, _, q)| q)
        .collect::<Vec<_>>();
    untouched.extend(["match", "apply"].map(|s| format!("{}x.{s}.dead", app.config.amqp.prefix)));
    for q in untouched {
        assert_eq!(app.broker.depth(&q).await.unwrap(), None, "{q} was not declared");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_are_redacted_in_every_output_unless_the_operator_asks() {
    use lapin::options::BasicPublishOptions;
    let app = TestApp::spawn().await;
    error_quoting_an_email(&app, 1).await;
    let id = app.sync_errors().await[0].id.to_string();
    // A dead-lettered message carrying a record.
    let channel = app.broker.live().await.unwrap().conn.create_channel().await.unwrap();
    let dead = app.broker.topology().dead_exchange();
    let body = br#"{"email": "jane.doe@pii.example"}"#;
    channel
        .basic_publish(dead.into(), "match".into(), BasicPublishOptions::default(), body, lapin::BasicProperties::default())
        .await
        .unwrap()
        .await
        .unwrap();
    let email = "jane.doe@pii.example";
    let outputs = [
        &["errors"][..],
        &["errors", "list", "--json"],
        &["errors", "show", &id],
        &["errors", "export"],
        &["errors", "export", "--format", "jsonl"],
        &["errors", "dead-letters", "--full"],
        &["report"],
        &["report", "--json"],
        &["status", "--json"],
    ];
    for args in outputs {
        let out = cli(&app, args).await;
        assert!(!out.contains(email), "crmsync {args:?} keeps the email out:\n{out}");
    }
    for args in [
        &["errors", "list", "--json"][..],
        &["errors", "show", &id],
        &["errors", "export", "--format", "jsonl"],
        &["errors", "dead-letters"],
    ] {
        assert!(cli(&app, args).await.contains("<email>"), "crmsync {args:?} says where an email was");
        let shown = [&["--show-pii"][..], args].concat();
        assert!(cli(&app, &shown).await.contains(email), "crmsync {shown:?} shows it");
    }
    // The flag is global: after the subcommand too.
    assert!(cli(&app, &["errors", "show", &id, "--show-pii"]).await.contains(email));
    app.cleanup().await;
}
