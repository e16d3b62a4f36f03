//! The admin console in a real browser (issue 28): headless Chromium signs
//! in and clicks through the pages against a running pipeline (a setting,
//! a field's behaviour with its preview, pause and resume, Sync now, a
//! sync-scope rule, an error retry, a record's history), and each change is
//! checked where it lands (settings, systems, sync errors, the admin audit
//! log). A viewer's change and a form without its CSRF token
//! are refused. Every page is photographed into `target/artefacts/console`.

use crmsync_console::users::{self, Role};
use crmsync_domain::SyncErrorCategory;
use crmsync_domain::mapping::SyncBehaviour;
use crmsync_infra::CancellationToken;
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_store::admin_audit::{self, Actor};
use crmsync_store::connections;
use crmsync_tests::chromium::Chromium;
use crmsync_tests::console::{serve, sync_error};
use crmsync_tests::{TestApp, eventually};

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const VIEWER_PASSWORD: &str = "viewer sees all, changes none";

async fn user(app: &TestApp, name: &str, role: Role, password: &str) {
    users::add(&app.pool, &Actor { name: "test".into(), via: "cli" }, name, role, password).await.unwrap();
}

/// Submits the form around the input labelled `key` on a connection page
/// after typing `value` into it.
async fn set_setting(browser: &Chromium, key: &str, value: &str) {
    browser.fill(&format!("input[aria-label='{key}']"), value).await;
    browser.click_to_next_page(&browser.xpath(&format!("//input[@aria-label='{key}']/ancestor::form//button")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_sync_from_a_browser_and_a_viewer_changes_nothing() {
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let base = serve(&app, false, &stop).await;
    user(&app, "ops", Role::Admin, ADMIN_PASSWORD).await;
    user(&app, "watcher", Role::Viewer, VIEWER_PASSWORD).await;
    let lead =
        app.create_lead(&[("LastName", "Browser"), ("Company", "Acme"), ("Email", "browser@console.example"), ("Title", "CTO")]).await;
    let prospect = app.create_prospect(&[("email", "browser@console.example"), ("lastName", "Browser"), ("crmLeadFid", &lead[..15])]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    app.update(&PROSPECT, &prospect.to_string(), &[("jobTitle", "CEO")]).await;
    app.settle().await;

    let admin = Chromium::start("admin").await;
    admin.goto(&base).await;
    assert!(admin.client.current_url().await.unwrap().path().starts_with("/sign-in"), "pages need a sign-in");
    admin.screenshot("sign-in").await;
    admin.sign_in(&base, "ops", ADMIN_PASSWORD).await;

    // The overview: the connection and its figures.
    let text = admin.text().await;
    assert!(text.contains("default") && text.contains("ops (admin)"), "{text}");
    admin.screenshot("overview").await;

    // A setting changed through its form lands in the settings and the
    // admin audit log.
    admin.goto(&format!("{base}/connections/default")).await;
    admin.screenshot("connection").await;
    set_setting(&admin, "batch_threshold", "250").await;
    assert!(admin.text().await.contains("batch_threshold: 400 → 250"), "{}", admin.text().await);
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_threshold, 250);
    let newest = &admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap()[0];
    assert_eq!((newest.actor.as_str(), newest.via.as_str(), newest.target.as_deref()), ("ops", "console", Some("batch_threshold")));

    // The same form with its CSRF token taken out is refused.
    admin.goto(&format!("{base}/connections/default")).await;
    admin
        .client
        .execute("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())", vec![])
        .await
        .expect("the script runs (WebDriver's scripts are not the page's)");
    set_setting(&admin, "batch_threshold", "7").await;
    assert!(admin.text().await.contains("CSRF"), "{}", admin.text().await);
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_threshold, 250, "a change without its CSRF token");

    // A record's page: both sides now, and why the lead's title changed.
    admin.goto(&format!("{base}/records")).await;
    admin.fill("input[name=q]", &prospect.to_string()).await;
    admin.click_button("Look up").await;
    let text = admin.text().await;
    assert!(text.contains("Values now") && text.contains("History"), "{text}");
    assert!(text.contains("CTO → CEO"), "the title's write, old → new: {text}");
    assert!(!text.contains("browser@console.example"), "emails are redacted");
    admin.screenshot("record").await;

    // A sync error retried from its category: the record goes through the
    // pipeline again and the error is closed.
    let error = sync_error(&app, SyncErrorCategory::ValidationRule, &prospect.to_string()).await;
    admin.goto(&format!("{base}/errors")).await;
    admin.screenshot("errors").await;
    admin.goto(&format!("{base}/errors/{error}")).await;
    assert!(admin.text().await.contains("The record as detected"));
    admin.screenshot("error").await;
    admin.click_button("Retry").await;
    assert!(admin.text().await.contains("Retried 1 record(s)"), "{}", admin.text().await);
    let status: String = sqlx::query_scalar("SELECT status FROM sync_errors WHERE id = $1").bind(error).fetch_one(&app.pool).await.unwrap();
    assert_eq!(status, "retried");
    app.settle().await;

    // A field's behaviour changed, preview first: nothing is saved until
    // the admin confirms.
    admin.goto(&format!("{base}/connections/default/mapping")).await;
    admin.screenshot("mapping").await;
    let row = "//tr[td/code[text()='jobTitle']]";
    admin.xpath(&format!("{row}//select[@name='sync']")).await.select_by_value("crm_wins").await.unwrap();
    admin.click_to_next_page(&admin.xpath(&format!("{row}//button[@value='preview']")).await).await;
    let text = admin.text().await;
    assert!(text.contains("Preview") && text.contains("linked pairs"), "{text}");
    admin.screenshot("mapping-preview").await;
    let behaviour = |app: &TestApp| {
        let pool = app.pool.clone();
        async move { connections::load(&pool, "default").await.unwrap().field_map.by_ma_field("jobTitle").unwrap().sync }
    };
    assert_eq!(behaviour(&app).await, SyncBehaviour::MostRecent, "a preview saves nothing");
    admin.click_button("Save, and re-sync").await;
    assert_eq!(behaviour(&app).await, SyncBehaviour::CrmWins);
    let newest = &admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap()[0];
    assert_eq!((newest.actor.as_str(), newest.target.as_deref()), ("ops", Some("jobTitle")), "{newest:?}");
    app.settle().await;

    // Paused, an edit waits; resumed, it arrives.
    admin.goto(&format!("{base}/connections/default")).await;
    admin.click_button("Pause").await;
    assert!(connections::paused(&app.pool, "default", false).await.unwrap().is_some());
    admin.goto(&base).await;
    assert!(admin.text().await.contains("paused"), "the overview shows the pause");
    admin.screenshot("overview-paused").await;
    app.update(&PROSPECT, &prospect.to_string(), &[("city", "Lyon")]).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_ne!(app.show(&LEAD, &lead).await["city"], "Lyon", "nothing is written while paused");
    admin.goto(&format!("{base}/connections/default")).await;
    admin.click_button("Resume").await;
    assert!(connections::paused(&app.pool, "default", false).await.unwrap().is_none());
    eventually("the edit to arrive on resume", || async { app.show(&LEAD, &lead).await["city"] == "Lyon" }).await;
    app.settle().await;

    // Sync now, from the record's page.
    admin.goto(&format!("{base}/records?q={prospect}")).await;
    admin.click_button("Sync now").await;
    assert!(admin.text().await.contains("through the immediate lane"), "{}", admin.text().await);
    admin.screenshot("sync-now").await;
    app.settle().await;

    // A scope rule: the lead leaves the scope, its prospect goes to the MA
    // recycle bin.
    admin.goto(&format!("{base}/connections/default/scope")).await;
    admin.fill("textarea[name=rules]", "lead.City:not_equals:Lyon").await;
    admin.click_button("Preview").await;
    let text = admin.text().await;
    assert!(app.prospect(prospect).await["is_deleted"] == false, "a preview changes nothing");
    admin.screenshot("scope-preview").await;
    let before = app.batch_applied_so_far().await;
    admin.click_button("Save this scope").await;
    assert!(!connections::load(&app.pool, "default").await.unwrap().sync_scope.is_empty(), "{text}");
    app.batch_applied(before + 1).await;
    assert_eq!(app.prospect(prospect).await["is_deleted"], true, "out of scope: in the MA recycle bin");
    admin.screenshot("scope").await;

    admin.goto(&format!("{base}/audit")).await;
    let text = admin.text().await;
    assert!(text.contains("errors.retry") && text.contains("batch_threshold"), "{text}");
    admin.screenshot("audit").await;
    admin.close().await;

    // A viewer sees the pages without a single form to change them, and a
    // change posted anyway (its own session's CSRF token and all) is
    // refused.
    let viewer = Chromium::start("viewer").await;
    viewer.sign_in(&base, "watcher", VIEWER_PASSWORD).await;
    viewer.goto(&format!("{base}/connections/default")).await;
    assert!(
        viewer.client.find(fantoccini::Locator::Css("input[aria-label='batch_threshold']")).await.is_err(),
        "a viewer is offered a change"
    );
    viewer.screenshot("connection").await;
    let csrf = viewer.find("form[action='/sign-out'] input[name=csrf]").await.attr("value").await.unwrap().expect("a token");
    viewer.mark_page().await;
    viewer
        .client
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/connections/default/settings';
             for (const [k, v] of [['key', 'batch_threshold'], ['value', '3'], ['csrf', arguments[0]]]) {
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
             }
             document.body.appendChild(f); f.submit();",
            vec![serde_json::json!(csrf)],
        )
        .await
        .unwrap();
    viewer.wait_for_next_page().await;
    let text = viewer.text().await;
    assert!(text.to_lowercase().contains("admin"), "the refusal says why: {text}");
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_threshold, 250, "a viewer's change");
    viewer.screenshot("refused").await;
    viewer.close().await;

    stop.cancel();
    app.cleanup().await;
}

/// The processes, zombies left out, of process group `group`: (pid, command line).
fn group_members(group: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name in parentheses: state, ppid, pgrp.
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let (state, _, pgrp) = (rest.next()?, rest.next()?, rest.next()?.parse::<u32>().ok()?);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (pgrp == group && state != "Z").then(|| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// A browser test that panics (an assertion fails mid-page) leaves no
/// Chromium behind: the session is dropped while the panic unwinds, and
/// with it chromedriver's whole process group, the browsers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_test_that_panics_leaves_no_chromium_running() {
    let (seen, group) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let browser = Chromium::start("panics").await;
        browser.goto("about:blank").await;
        let group = browser.process_group();
        seen.send((group, group_members(group))).expect("the test waits");
        panic!("a browser test fails with its browser open");
    });
    assert!(failing.await.expect_err("it panicked").is_panic());
    let (group, running) = group.await.expect("the group was seen");
    assert!(
        running.iter().any(|(pid, cmd)| *pid != group && cmd.contains("chromium")),
        "Chromium runs in chromedriver's process group: {running:?}"
    );
    eventually("the browser's processes to end", || async { group_members(group).is_empty() }).await;
}
