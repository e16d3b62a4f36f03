//! The operator's read-only commands through the real binary (issue 26):
//! they answer within their timeouts with what they could read, say what
//! they could not reach, create nothing (I10), print JSON for scripts, keep
//! personal data out of their output unless asked, and end quietly when
//! their reader goes away.

use crmsync_domain::{SyncErrorCategory, SyncIssue};
use crmsync_store::sync_errors::{self, NewSyncError};
use crmsync_tests::TestApp;

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
