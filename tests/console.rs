//! The admin console (issue 28) served for real against the test's
//! PostgreSQL (and the pipeline where figures and history need it):
//! sign-in with argon2id passwords and slowed-down failures, session
//! cookies, CSRF tokens on every change, viewers refused, a setting changed
//! through the same guard as the CLI and written to the admin audit log,
//! sync errors retried and dismissed, record lookup with its history, the
//! JSON twins of the pages, API tokens, and the `crmsync console` binary.

use crmsync_console::users::{self, Role};
use crmsync_domain::merge::Side;
use crmsync_infra::CancellationToken;
use crmsync_sandbox_server::{Limits, Stats};
use crmsync_store::admin_audit::{self, Actor};
use crmsync_store::connections;
use crmsync_systems::allowance::ApiAllowances;
use crmsync_tests::console::{Browser, csrf_of, serve, sync_error};
use crmsync_tests::{TestApp, Tier};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, LOCATION};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const VIEWER_PASSWORD: &str = "viewer sees all, changes none";

/// A user made through the library, as `crmsync console add-user` makes one.
async fn user(app: &TestApp, name: &str, role: Role, password: &str) {
    users::add(&app.pool, &Actor { name: "test".into(), via: "cli" }, name, role, password).await.unwrap();
}

/// A page's JSON twin, as the signed-in browser.
async fn json_page(browser: &Browser, url: &str, path: &str) -> Value {
    let r = browser
        .http
        .get(format!("{url}{path}"))
        .header("cookie", browser.cookie_header())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

async fn budget(app: &TestApp) -> u32 {
    connections::load(&app.pool, "default").await.unwrap().batch_budget_per_hour
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_takes_the_right_password_and_slows_down_wrong_ones() {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = serve(&app, false, &stop).await;

    // The password comes on standard input, and only its argon2id hash is kept.
    let stdin = format!("{ADMIN_PASSWORD}\n");
    let (ok, out, err) =
        app.run_cli_with(crmsync_tests::crmsync_exe!(), &["console", "add-user", "ops", "--role", "admin"], &[], Some(&stdin)).await;
    assert!(ok, "{out}\n{err}");
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM console_users WHERE name = 'ops'").fetch_one(&app.pool).await.unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(ADMIN_PASSWORD), "{stored}");
    // A short password is refused.
    let (ok, _, err) =
        app.run_cli_with(crmsync_tests::crmsync_exe!(), &["console", "add-user", "weak", "--role", "viewer"], &[], Some("short\n")).await;
    assert!(!ok && err.contains("at least 12 characters"), "{err}");

    let mut browser = Browser::new(&url);
    // Not signed in: pages send to the sign-in form, JSON is refused.
    let r = browser.http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/sign-in");
    let r = browser.http.get(format!("{url}/")).header(ACCEPT, "application/json").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // No other site may frame a page (to trick a click), and none runs a script.
    let r = browser.http.get(format!("{url}/sign-in")).send().await.unwrap();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let policy = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'none'"), "{policy}");

    // A sign-in form without its CSRF token is refused, right password or not.
    browser.get("/sign-in").await;
    let (status, _, _) = browser.post("/sign-in", &[("name", "ops"), ("password", ADMIN_PASSWORD)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!browser.cookies.contains_key("crmsync_session"));

    // A wrong password, then the right one.
    assert_eq!(browser.sign_in("ops", "not the password at all").await, StatusCode::UNAUTHORIZED);
    assert_eq!(browser.sign_in("nobody", ADMIN_PASSWORD).await, StatusCode::UNAUTHORIZED);
    assert!(!browser.cookies.contains_key("crmsync_session"));
    assert_eq!(browser.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);
    let session = browser.set_cookies.iter().find(|c| c.starts_with("crmsync_session=")).expect("a session cookie").clone();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict") && !session.contains("Secure"), "{session}");
    let (status, page) = browser.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Overview") && page.contains(r#"href="/connections/default""#), "{page}");
    // No page shows a credential: not the session's token, not the hash.
    let token = browser.cookies["crmsync_session"].clone();
    for path in ["/", "/connections/default", "/audit"] {
        let (_, page) = browser.get(path).await;
        assert!(!page.contains(&token) && !page.contains("$argon2id$"), "{path} shows a credential");
    }
    // Only the session token's digest is stored.
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions WHERE token_hash = $1")
        .bind(users::digest(&token))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(found, 1);

    // Failures in a row lock the user out, even from the right password,
    // and the lock is in PostgreSQL, for every replica.
    let mut other = Browser::new(&url);
    for _ in 0..users::FREE_ATTEMPTS {
        assert_eq!(other.sign_in("ops", "still not the password").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(other.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);
    let (failed, locked): (i32, bool) =
        sqlx::query_as("SELECT failed_signins, locked_until > now() + interval '20 seconds' FROM console_users WHERE name = 'ops'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((failed, locked), (users::FREE_ATTEMPTS, true));
    let another_replica = serve(&app, false, &stop).await;
    assert_eq!(Browser::new(&another_replica).sign_in("ops", ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);
    // Once the lock is over, the right password works again and clears the count.
    sqlx::query("UPDATE console_users SET locked_until = now() WHERE name = 'ops'").execute(&app.pool).await.unwrap();
    assert_eq!(other.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);
    let failed: i32 = sqlx::query_scalar("SELECT failed_signins FROM console_users WHERE name = 'ops'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(failed, 0);

    // Guesses sent all at once are each counted before any password is
    // checked: no more than the free attempts are tried, the rest refused.
    let mut guessers = Vec::new();
    for _ in 0..12 {
        let mut b = Browser::new(&url);
        let (_, form) = b.get("/sign-in").await;
        guessers.push((csrf_of(&form), b.cookie_header(), b.http.clone()));
    }
    let guesses = guessers.iter().map(|(csrf, cookie, http)| {
        http.post(format!("{url}/sign-in"))
            .header("cookie", cookie)
            .form(&[("name", "ops"), ("password", "a guess in parallel"), ("csrf", csrf)])
            .send()
    });
    let answers: Vec<StatusCode> = futures::future::join_all(guesses).await.into_iter().map(|r| r.unwrap().status()).collect();
    let tried = answers.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let refused = answers.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((tried, refused), (users::FREE_ATTEMPTS as usize, 12 - users::FREE_ATTEMPTS as usize), "{answers:?}");
    sqlx::query("UPDATE console_users SET locked_until = now() WHERE name = 'ops'").execute(&app.pool).await.unwrap();
    assert_eq!(other.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);

    // Signing out ends the session in PostgreSQL, not only in the browser.
    let (_, page) = browser.get("/").await;
    let (status, location, _) = browser.post("/sign-out", &[("csrf", &csrf_of(&page))]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/sign-in")));
    let r = browser.http.get(format!("{url}/")).header("cookie", format!("crmsync_session={token}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the old session cookie still opens the console");

    // A new password (from a file) ends the user's sessions; the old one
    // no longer opens the console.
    let mut signed_in = Browser::new(&url);
    assert_eq!(signed_in.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);
    let file = app.secret_file("new-password", "a new password for ops\n");
    let (ok, out, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["console", "set-password", "ops", "--password-file", &file]).await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(signed_in.get("/").await.0, StatusCode::SEE_OTHER, "a session from before the new password");
    assert_eq!(Browser::new(&url).sign_in("ops", ADMIN_PASSWORD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(signed_in.sign_in("ops", "a new password for ops").await, StatusCode::SEE_OTHER);
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["console", "set-password", "ops", "--password-file", &file]).await;
    assert!(ok, "{err}");

    // Behind HTTPS (console.secure_cookies), the cookies are Secure.
    let secure = serve(&app, true, &stop).await;
    let mut behind_tls = Browser::new(&secure);
    assert_eq!(behind_tls.sign_in("ops", "a new password for ops").await, StatusCode::SEE_OTHER);
    let session = behind_tls.set_cookies.iter().find(|c| c.starts_with("crmsync_session=")).unwrap();
    assert!(session.contains("Secure") && session.contains("HttpOnly"), "{session}");

    // A removed user's sessions end with it.
    let (ok, _, err) = app.run_cli(crmsync_tests::crmsync_exe!(), &["console", "remove-user", "ops"]).await;
    assert!(ok, "{err}");
    assert_eq!(behind_tls.get("/").await.0, StatusCode::SEE_OTHER);
    let actions: Vec<String> = admin_audit::recent(&app.pool, None, None, 10).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions[..3], ["user.remove", "user.set_password", "user.set_password"], "{actions:?}");

    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_needs_its_csrf_token_and_an_admin_and_lands_in_the_settings_and_the_audit_log() {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = serve(&app, false, &stop).await;
    user(&app, "ops", Role::Admin, ADMIN_PASSWORD).await;
    user(&app, "watcher", Role::Viewer, VIEWER_PASSWORD).await;
    let before = budget(&app).await;

    let mut admin = Browser::new(&url);
    assert_eq!(admin.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);
    let (status, page) = admin.get("/connections/default").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("batch_budget_per_hour") && page.contains("csql.record_type"), "{page}");
    // The field mapping, field by field with its behaviour.
    assert!(page.contains("<td><code>jobTitle</code></td><td><code>Title</code></td><td><code>Title</code></td><td>most_recent"), "{page}");
    let csrf = csrf_of(&page);

    // Without the CSRF token (as a forged form from another page would be).
    let change = [("key", "batch_budget_per_hour"), ("value", "6000")];
    let (status, _, _) = admin.post("/connections/default/settings", &change).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = admin.post("/connections/default/settings", &[change[0], change[1], ("csrf", "forged")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(budget(&app).await, before);

    // A viewer sees the settings, with no form to change them, and is
    // refused a change even with its own CSRF token.
    let mut viewer = Browser::new(&url);
    assert_eq!(viewer.sign_in("watcher", VIEWER_PASSWORD).await, StatusCode::SEE_OTHER);
    let (status, page) = viewer.get("/connections/default").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("batch_budget_per_hour") && !page.contains(r#"action="/connections/default/settings""#));
    let (_, overview) = viewer.get("/").await;
    let viewer_csrf = csrf_of(&overview);
    let (status, _, body) = viewer.post("/connections/default/settings", &[change[0], change[1], ("csrf", &viewer_csrf)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(budget(&app).await, before);

    // A value the CLI would refuse is refused the same way.
    let (status, _, body) =
        admin.post("/connections/default/settings", &[("key", "batch_budget_per_hour"), ("value", "lots"), ("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("a positive whole number"), "{body}");
    assert_eq!(budget(&app).await, before);

    // The admin's change lands in the connection's settings...
    let (status, _, body) = admin.post("/connections/default/settings", &[change[0], change[1], ("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("batch_budget_per_hour: 12000 → 6000"), "{body}");
    assert_eq!(budget(&app).await, 6000);

    // ...and in the admin audit log: who, through what, before and after.
    let entries = admin_audit::recent(&app.pool, Some("default"), None, 10).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!((e.actor.as_str(), e.via.as_str(), e.action.as_str()), ("ops", "console", "setting.set"));
    assert_eq!(e.target.as_deref(), Some("batch_budget_per_hour"));
    assert_eq!((e.before.clone(), e.after.clone()), (Some(json!(before)), Some(json!(6000))));
    let (status, page) = viewer.get("/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("batch_budget_per_hour") && page.contains("ops") && page.contains("6000"), "{page}");

    // The CLI's changes are in the same log, as the operating-system user.
    let (ok, out, err) = app
        .run_cli_with(
            crmsync_tests::crmsync_exe!(),
            &["connection", "set", "default", "batch_burst", "7"],
            &[("SUDO_USER", ""), ("USER", "alice")],
            None,
        )
        .await;
    assert!(ok, "{out}\n{err}");
    let newest = &admin_audit::recent(&app.pool, None, None, 1).await.unwrap()[0];
    assert_eq!((newest.actor.as_str(), newest.via.as_str()), ("cli:alice", "cli"));
    assert_eq!((newest.before.clone(), newest.after.clone()), (Some(json!(5)), Some(json!(7))));

    // A script using a session sends the token as a header with JSON.
    let json_change = |csrf: Option<&str>| {
        let mut r = admin
            .http
            .post(format!("{url}/connections/default/settings"))
            .header("cookie", admin.cookie_header())
            .header(ACCEPT, "application/json")
            .json(&json!({"key": "batch_burst", "value": "8"}));
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    assert_eq!(json_change(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(json_change(Some("forged")).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_burst, 7);
    assert_eq!(json_change(Some(&csrf)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_burst, 8);

    // A switch that needs confirming is refused with what changes with it,
    // and goes through once confirmed, as `--yes` does on the CLI.
    let (status, _, body) =
        admin.post("/connections/default/settings", &[("key", "csql.record_type"), ("value", "opportunity"), ("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("Confirm: set csql.record_type to opportunity"), "{body}");
    let record_type = || async { connections::load(&app.pool, "default").await.unwrap().csql.record_type.to_string() };
    assert_eq!(record_type().await, "lead");
    let confirmed = [("key", "csql.record_type"), ("value", "opportunity"), ("confirm", "yes"), ("csrf", csrf.as_str())];
    let (status, _, body) = admin.post("/connections/default/settings", &confirmed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(record_type().await, "opportunity");

    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_api_tokens_with_the_same_figures_as_the_cli() {
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = serve(&app, false, &stop).await;
    user(&app, "ops", Role::Admin, ADMIN_PASSWORD).await;
    user(&app, "watcher", Role::Viewer, VIEWER_PASSWORD).await;
    for n in 0..3 {
        app.create_prospect(&[("email", &format!("json{n}@console.example")), ("lastName", "Json")]).await;
    }
    let lead = app.create_lead(&[("LastName", "Pair"), ("Company", "Acme"), ("Email", "pair@console.example"), ("Title", "CTO")]).await;
    let prospect = app.create_prospect(&[("email", "pair@console.example"), ("lastName", "Pair"), ("crmLeadFid", &lead[..15])]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    app.update(&crmsync_sandbox::schema::PROSPECT, &prospect.to_string(), &[("jobTitle", "CEO")]).await;
    app.settle().await;

    // Tokens are made by the CLI, printed once; only their digest is kept.
    let exe = crmsync_tests::crmsync_exe!();
    let (ok, admin_token, err) = app.run_cli(exe, &["console", "add-token", "ops", "--name", "deploy-script"]).await;
    assert!(ok, "{err}");
    let admin_token = admin_token.trim().to_owned();
    assert!(admin_token.starts_with(users::TOKEN_PREFIX), "{admin_token}");
    let (ok, viewer_token, _) = app.run_cli(exe, &["console", "add-token", "watcher"]).await;
    assert!(ok);
    let viewer_token = viewer_token.trim().to_owned();
    let stored = |bytes: Vec<u8>| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM console_api_tokens WHERE token_hash = $1")
                .bind(bytes)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(stored(users::digest(&admin_token)).await, 1);
    assert_eq!(stored(admin_token.as_bytes().to_vec()).await, 0);

    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        http.get(format!("{url}{path}")).header(ACCEPT, "application/json").header(AUTHORIZATION, format!("Bearer {token}")).send()
    };

    // The overview's JSON twin is `crmsync status --json`.
    let r = get("/", &viewer_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let overview: Value = r.json().await.unwrap();
    let (ok, cli, err) = app.run_cli(exe, &["status", "--json"]).await;
    assert!(ok, "{err}");
    let cli: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(overview["connections"][0]["id"], "default");
    assert_eq!(overview["connections"][0]["identities"], cli["connections"][0]["identities"]);
    assert_eq!(overview["connections"][0]["identities"]["pending_assignment"], 3, "{overview}");
    assert_eq!(overview["connections"][0]["batch_lane"], cli["connections"][0]["batch_lane"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&overview), keys(&cli));
    // When the last change was detected and written, and every tier's
    // replica, seen and ready.
    let c = &overview["connections"][0];
    assert!(c["last_change_detected_at"].is_string() && c["last_write_minute"].is_string(), "{c}");
    assert!(c["immediate_lane"]["applied_last_5_min"].as_i64().unwrap() >= 1, "the title's write: {c}");
    let tiers: Vec<&str> =
        overview["replicas"].as_array().unwrap().iter().filter(|r| r["ready"] == true).map(|r| r["tier"].as_str().unwrap()).collect();
    for tier in ["applier", "matcher", "producer"] {
        assert!(tiers.contains(&tier), "a ready {tier} replica: {}", overview["replicas"]);
    }

    // The settings' JSON twin: every settable key with its value.
    let settings: Value = get("/connections/default", &viewer_token).await.unwrap().json().await.unwrap();
    let budget_row = settings["settable"].as_array().unwrap().iter().find(|s| s["key"] == "batch_budget_per_hour").unwrap();
    assert_eq!(budget_row["value"], 12_000);
    let audit: Value = get("/audit", &viewer_token).await.unwrap().json().await.unwrap();
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "token.add" && e["target"] == "ops"), "{audit}");

    // A token that is not ours opens nothing.
    let r = get("/", "crmsync_not-a-token").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = get("/connections/nonesuch", &viewer_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Changes with a token need no CSRF token (a browser never sends the
    // header by itself), but still an admin.
    let post = |token: &str, body: Value| {
        http.post(format!("{url}/connections/default/settings"))
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .json(&body)
            .send()
    };
    let r = post(&viewer_token, json!({"key": "batch_threshold", "value": "50"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_threshold, 400);
    let r = post(&admin_token, json!({"key": "batch_threshold", "value": "50"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let changed: Value = r.json().await.unwrap();
    assert_eq!((changed["before"].clone(), changed["after"].clone()), (json!(400), json!(50)));
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().batch_threshold, 50);
    let newest = &admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap()[0];
    assert_eq!((newest.actor.as_str(), newest.via.as_str()), ("ops", "api"));
    let r = post(&admin_token, json!({"key": "csql.record_type", "value": "opportunity"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["needs_confirmation"], true, "{refused}");

    // A record is found by email, prospect id or CRM id (either length),
    // with its link and its history; its email is not shown.
    let mut found = Vec::new();
    for q in ["pair@console.example", &prospect.to_string(), &lead, &lead[..15]] {
        let r = get(&format!("/records?q={}", q.replace('@', "%40")), &viewer_token).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{q}");
        found.push(r.json::<Value>().await.unwrap());
    }
    let first = &found[0]["identities"][0];
    assert!(found.iter().all(|f| f["identities"][0]["identity"]["id"] == first["identity"]["id"]), "{found:?}");
    assert_eq!(first["identity"]["status"], "linked");
    assert_eq!(first["identity"]["crm_id"], lead.as_str());
    assert_eq!(first["identity"]["email"], "<email>");
    let history = first["history"].as_array().unwrap();
    assert!(
        history.iter().any(|e| e["source_side"] == "ma" && e["writes"]["crm"].as_array().is_some_and(|w| w.contains(&json!("jobTitle")))),
        "the prospect's title change and its write to the lead: {history:?}"
    );
    // Why the lead's title changed: the prospect's edit, old → new, and the
    // write it made, old → new.
    let title = history.iter().find(|e| e["written"]["crm"]["jobTitle"].is_array()).expect("the title's write");
    assert_eq!(title["written"]["crm"]["jobTitle"], json!(["CTO", "CEO"]), "{title}");
    assert_eq!(title["detected"]["jobTitle"][1], "CEO", "{title}");
    assert_eq!(title["source_side"], "ma");
    // Both sides now, read from the systems, emails redacted.
    let now = &first["current"];
    assert_eq!((now["prospect_found"].clone(), now["crm_found"].clone()), (json!(true), json!(true)), "{now}");
    let field = |name: &str| now["fields"].as_array().unwrap().iter().find(|f| f["ma_field"] == name).unwrap().clone();
    assert_eq!((field("jobTitle")["ma"].clone(), field("jobTitle")["crm"].clone()), (json!("CEO"), json!("CEO")));
    assert_eq!(field("email")["ma"], "<email>");
    assert!(now["fields"].as_array().unwrap().iter().all(|f| f["differs"] == false), "{now}");
    let r = get("/records?q=nobody%40console.example", &viewer_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get("/records?q=not+a+key", &viewer_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A revoked token opens nothing from its next request on.
    let (ok, _, err) = app.run_cli(exe, &["console", "revoke-token", "ops", "--name", "deploy-script"]).await;
    assert!(ok, "{err}");
    assert_eq!(get("/", &admin_token).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get("/", &viewer_token).await.unwrap().status(), StatusCode::OK);

    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crmsync_console_serves_until_sigterm() {
    let app = TestApp::spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = app
        .cli_command(crmsync_tests::crmsync_exe!())
        .arg("console")
        .env("CRMSYNC_CONSOLE__LISTEN", &addr)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start crmsync console");
    let console = crmsync_tests::TierProcess::new(crmsync_tests::Tier::Applier, child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut answer = String::new();
    while std::time::Instant::now() < deadline && !answer.ends_with("ok") {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        answer = crmsync_tests::http_get(&addr, "/livez").await;
    }
    assert!(answer.starts_with("HTTP/1.0 200") && answer.ends_with("ok"), "{answer}");
    assert!(crmsync_tests::http_get(&addr, "/readyz").await.starts_with("HTTP/1.0 200"));
    // Pages need a sign-in.
    assert!(crmsync_tests::http_get(&addr, "/").await.contains("location: /sign-in"));
    assert!(console.terminate().await, "crmsync console did not exit 0 on SIGTERM");
    app.cleanup().await;
}

/// Whether a page has a link to `href` (as HTML escapes it).
fn page_links_to(page: &str, href: &str) -> bool {
    page.contains(&format!(r#"href="{}""#, href.replace('&', "&amp;")))
}

async fn error_status(app: &TestApp, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM sync_errors WHERE id = $1").bind(id).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_errors_are_shown_without_emails_and_retried_or_dismissed_by_admins_only() {
    use crmsync_domain::SyncErrorCategory::{DuplicateRule, ValidationRule};
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = serve(&app, false, &stop).await;
    user(&app, "ops", Role::Admin, ADMIN_PASSWORD).await;
    user(&app, "watcher", Role::Viewer, VIEWER_PASSWORD).await;
    let first = sync_error(&app, DuplicateRule, "101").await;
    let second = sync_error(&app, DuplicateRule, "102").await;
    let other = sync_error(&app, ValidationRule, "103").await;

    let mut viewer = Browser::new(&url);
    assert_eq!(viewer.sign_in("watcher", VIEWER_PASSWORD).await, StatusCode::SEE_OTHER);
    let (status, page) = viewer.get("/errors").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("3 sync error(s)") && page.contains("duplicate_rule") && page.contains("validation_rule"), "{page}");
    assert!(!page.contains("jane.doe@pii.example") && page.contains("&lt;email&gt;"), "{page}");
    assert!(!page.contains(r#"action="/errors/dismiss""#), "a viewer is offered a dismissal");
    let (status, page) = viewer.get(&format!("/errors/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("The record as detected") && !page.contains("jane.doe@pii.example"), "{page}");
    let (_, filtered) = viewer.get("/errors?category=validation_rule").await;
    assert!(filtered.contains("1 sync error(s)"), "{filtered}");
    assert_eq!(viewer.get("/errors/999999").await.0, StatusCode::NOT_FOUND);
    // The list's CSV export: every error the filters select, emails
    // redacted, the CLI's columns.
    assert!(page_links_to(&viewer.get("/errors?category=duplicate_rule").await.1, "/errors/export.csv?category=duplicate_rule"));
    let (status, csv) = viewer.get("/errors/export.csv?category=duplicate_rule").await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,connection,status,category"), "{csv}");
    assert_eq!(lines.len(), 3, "a header and the two duplicate_rule errors: {csv}");
    assert!(!csv.contains("jane.doe@pii.example") && csv.contains("<email>"), "{csv}");

    // A viewer's dismissal is refused, CSRF token or not.
    let viewer_csrf = csrf_of(&page);
    let (status, _, _) = viewer.post("/errors/dismiss", &[("id", &first.to_string()), ("csrf", &viewer_csrf)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_status(&app, first).await, "open");

    // An admin dismisses a whole category of one connection; the other stays.
    let mut admin = Browser::new(&url);
    assert_eq!(admin.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);
    let (_, page) = admin.get("/errors").await;
    assert!(page.contains("Dismiss all 2"), "{page}");
    let csrf = csrf_of(&page);
    let (status, _, _) = admin.post("/errors/dismiss", &[("connection", "default"), ("category", "duplicate_rule")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a dismissal without its CSRF token");
    let (status, _, body) =
        admin.post("/errors/dismiss", &[("connection", "default"), ("category", "duplicate_rule"), ("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Dismissed 2 open sync error(s)"), "{body}");
    assert_eq!((error_status(&app, first).await, error_status(&app, second).await), ("dismissed".into(), "dismissed".into()));
    assert_eq!(error_status(&app, other).await, "open");
    let newest = &admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap()[0];
    assert_eq!((newest.actor.as_str(), newest.via.as_str(), newest.action.as_str()), ("ops", "console", "errors.dismiss"));
    assert_eq!(newest.before, Some(json!({ "open": [first, second] })));

    // A retry reads the record again from its source and sends it through
    // the pipeline; a record gone from its source keeps its error.
    let prospect = app.create_prospect(&[("email", "retry@console.example"), ("lastName", "Retry")]).await;
    let real = sync_error(&app, ValidationRule, &prospect.to_string()).await;
    let ghost = sync_error(&app, ValidationRule, "424242").await;
    let retry = [("connection", "default"), ("category", "validation_rule"), ("csrf", viewer_csrf.as_str())];
    assert_eq!(viewer.post("/errors/retry", &retry).await.0, StatusCode::FORBIDDEN);
    assert_eq!(error_status(&app, real).await, "open");
    let queued_before = app.queued(crmsync_infra::amqp::Stage::Match, crmsync_tests::Lane::Immediate).await;
    let (status, _, body) =
        admin.post("/errors/retry", &[("connection", "default"), ("category", "validation_rule"), ("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Retried 1 record(s)") && body.contains("prospect 424242: no longer in its source"), "{body}");
    assert_eq!((error_status(&app, real).await, error_status(&app, ghost).await), ("retried".into(), "open".into()));
    assert!(app.queued(crmsync_infra::amqp::Stage::Match, crmsync_tests::Lane::Immediate).await > queued_before, "nothing was sent");
    let newest = &admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap()[0];
    assert_eq!((newest.action.as_str(), newest.before.clone()), ("errors.retry", Some(json!({ "open": [real] }))));

    // The CLI's dismissal is audited the same way.
    let (ok, out, err) = app
        .run_cli_with(
            crmsync_tests::crmsync_exe!(),
            &["errors", "dismiss", &ghost.to_string()],
            &[("SUDO_USER", ""), ("USER", "bob")],
            None,
        )
        .await;
    assert!(ok && out.contains("dismissed 1"), "{out}\n{err}");
    assert_eq!(error_status(&app, ghost).await, "dismissed");
    let newest = &admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap()[0];
    assert_eq!((newest.actor.as_str(), newest.action.as_str()), ("cli:bob", "errors.dismiss"));

    stop.cancel();
    app.cleanup().await;
}

/// The mapping page and a record's page, whose JSON shows that each read
/// the org: its lead fields listed, the record's values found in it.
async fn views_reading_the_org(browser: &Browser, url: &str) {
    let mapping = json_page(browser, url, "/connections/default/mapping").await;
    let lead_fields = mapping["mapping"]["available"]["lead"].as_array().unwrap_or_else(|| panic!("lead fields listed: {mapping}"));
    assert!(lead_fields.iter().any(|f| f["name"] == "Email"), "{mapping}");
    let record = json_page(browser, url, "/records?connection=default&q=shared@console.example").await;
    assert_eq!(record["identities"][0]["current"]["crm_found"], true, "{record}");
}

/// I8: the console keeps one systems factory for its life, so that pages
/// reading a Salesforce org (a record's values, the mapping's fields) log
/// in once and describe the lead and the contact once, however many times
/// they are viewed; a factory made per request paid a login and both
/// describes on every view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_views_share_one_factory_so_a_real_org_sees_one_login_and_one_describe() {
    let mut app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    // A pair synced on the embedded sandbox; then the tiers stop, so that
    // every login and call counted below is the console's.
    let lead = app.create_lead(&[("LastName", "Shared"), ("Company", "Acme"), ("Email", "shared@console.example")]).await;
    app.create_prospect(&[("email", "shared@console.example"), ("lastName", "Shared"), ("crmLeadFid", &lead[..15])]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    for tier in [Tier::Producer, Tier::Matcher, Tier::Applier] {
        app.stop(tier).await;
    }
    // The same org, now reached as Salesforce over HTTP.
    let org = app.serve_sandbox(Limits::default(), stop.clone()).await;
    app.use_salesforce(&org, json!({})).await;
    let url = serve(&app, false, &stop).await;
    user(&app, "ops", Role::Admin, ADMIN_PASSWORD).await;
    let mut browser = Browser::new(&url);
    assert_eq!(browser.sign_in("ops", ADMIN_PASSWORD).await, StatusCode::SEE_OTHER);

    let logins = || async { reqwest::get(format!("{org}/sandbox-admin/stats")).await.unwrap().json::<Stats>().await.unwrap().logins };
    let allowances = ApiAllowances::new(&app.config.redis);
    // Describes are metadata calls: `other` in the connection's counts.
    let describes = || async { allowances.usage("default", Side::Crm, None).await.unwrap().by_kind.get("other").copied().unwrap_or(0) };
    let (logins_before, describes_before) = (logins().await, describes().await);
    views_reading_the_org(&browser, &url).await;
    let first = (logins().await - logins_before, describes().await - describes_before);
    assert_eq!(first, (1, 2), "the first views: one login, the lead's and the contact's describes");
    for _ in 0..3 {
        views_reading_the_org(&browser, &url).await;
    }
    let after = (logins().await - logins_before, describes().await - describes_before);
    assert_eq!(after, first, "views after the first log in and describe nothing more");
    stop.cancel();
    app.cleanup().await;
}
