//! Field mapping and sync scope edits (issue 28) through the real tiers:
//! a behaviour change's preview counts what saving then writes in the
//! sandbox systems, through the batch lane; a custom field listed from the
//! sandbox's schema mapped and unmapped; invalid mappings refused with a
//! clear error; a sync scope's preview count, a record edited out of scope
//! recycling its prospect and edited back restoring it; the console's
//! mapping and scope pages for admins only, with their CSRF token.

use crmsync_console::users::{self, Role};
use crmsync_domain::mapping::{FieldMapping, MappingEdit, SyncBehaviour};
use crmsync_domain::scope::{Condition, SyncScope};
use crmsync_infra::CancellationToken;
use crmsync_ops::{mapping, scope};
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_store::admin_audit::{self, Actor};
use crmsync_store::connections;
use crmsync_systems::SystemsFactory;
use crmsync_tests::console::{Browser, csrf_of, serve};
use crmsync_tests::{TestApp, eventually};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde_json::Value;

fn admin() -> Actor {
    Actor { name: "test-admin".into(), via: "cli" }
}

/// The lead and prospect of seeded pair `i` (`<prefix><i>@<domain>`).
async fn pair(app: &TestApp, prefix: &str, i: i64) -> (String, i64) {
    let email = format!("{prefix}{i}@map.example");
    let lead: String = app.with_email("crm.leads", &email).await[0]["id"].as_str().unwrap().to_owned();
    let prospect = app.with_email("ma.prospects", &email).await[0]["id"].as_i64().unwrap();
    (lead, prospect)
}

/// Pairs written on `side` (`ma`, `crm`) through the batch lane: both
/// records of a re-synced pair are applied together, and each of their
/// audit rows names the writes.
async fn batch_writes(app: &TestApp, side: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT identity_id) FROM audit_log WHERE connection_id = 'default' AND stage = 'apply' AND lane = 'batch' \
         AND jsonb_array_length(coalesce(writes -> $1, '[]')) > 0",
    )
    .bind(side)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn last_admin_entry(app: &TestApp) -> admin_audit::Entry {
    admin_audit::recent(&app.pool, Some("default"), None, 1).await.unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_behaviour_change_previews_exactly_what_saving_writes_through_the_batch_lane() {
    let mut app = TestApp::spawn().await;
    let factory = SystemsFactory::from_config(&app.config, &app.pool).await.unwrap();
    app.seed_pairs(6, "b", "map.example").await;
    app.start_pipeline(1, 1);
    app.settle().await;
    // Pairs 1-3: the MA's user sets the title; then pairs 1-2: the CRM's
    // user sets it again, later, so that under most_recent both sides hold
    // the CRM's value.
    for i in 1..=3 {
        let (_, prospect) = pair(&app, "b", i).await;
        app.update(&PROSPECT, &prospect.to_string(), &[("jobTitle", &format!("MA{i}"))]).await;
    }
    app.settle().await;
    for i in 1..=2 {
        let (lead, _) = pair(&app, "b", i).await;
        app.update(&LEAD, &lead, &[("Title", &format!("CRM{i}"))]).await;
    }
    app.settle().await;
    assert_eq!(app.prospect(pair(&app, "b", 1).await.1).await["job_title"], "CRM1");
    let immediate_before = (batch_writes(&app, "ma").await, batch_writes(&app, "crm").await);
    assert_eq!(immediate_before, (0, 0), "nothing went through the batch lane yet");

    // ma_wins: the MA user's value wins where there is one (pairs 1-2 change
    // on both sides; pair 3 holds it already; pairs 4-6 have none).
    let edit = MappingEdit::Set { ma: "jobTitle".into(), sync: SyncBehaviour::MaWins, blank_overwrites: false, source: None };
    let preview = mapping::preview(&app.pool, &factory, "default", &edit).await.unwrap();
    assert_eq!((preview.linked, preview.ma_writes, preview.crm_writes), (6, 2, 2), "{preview:?}");
    assert_eq!(preview.sample.len(), 2);
    let s = &preview.sample[0];
    assert_eq!(
        (s.ma[0].field.as_str(), &s.ma[0].to),
        ("jobTitle", &Value::from(format!("MA{}", if s.prospect_id == pair(&app, "b", 1).await.1 { 1 } else { 2 })))
    );
    // A preview changes nothing.
    assert_eq!(
        connections::load(&app.pool, "default").await.unwrap().field_map.by_ma_field("jobTitle").unwrap().sync,
        SyncBehaviour::MostRecent
    );

    let saved = mapping::save(&app.config, &app.pool, &factory, &admin(), "default", &edit).await.unwrap();
    assert_eq!(saved.resynced, 2, "one CRM record per affected pair");
    app.batch_applied(2).await;
    for i in 1..=3 {
        let (lead, prospect) = pair(&app, "b", i).await;
        assert_eq!(app.prospect(prospect).await["job_title"], format!("MA{i}"), "pair {i}");
        assert_eq!(app.show(&LEAD, &lead).await["title"], format!("MA{i}"), "pair {i}");
    }
    for i in 4..=6 {
        let (lead, prospect) = pair(&app, "b", i).await;
        assert_eq!(app.prospect(prospect).await["job_title"], format!("T{i}"));
        assert_eq!(app.show(&LEAD, &lead).await["title"], format!("T{i}"));
    }
    // What the preview counted is what the batch lane wrote.
    assert_eq!((batch_writes(&app, "ma").await, batch_writes(&app, "crm").await), (2, 2));
    let entry = last_admin_entry(&app).await;
    assert_eq!((entry.action.as_str(), entry.target.as_deref(), entry.actor.as_str()), ("mapping.set", Some("jobTitle"), "test-admin"));
    assert_eq!(entry.before.unwrap()["sync"], "most_recent");
    assert_eq!(entry.after.unwrap()["sync"], "ma_wins");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_field_from_the_sandbox_schema_is_mapped_and_unmapped_and_invalid_mappings_are_refused() {
    let mut app = TestApp::spawn().await;
    let factory = SystemsFactory::from_config(&app.config, &app.pool).await.unwrap();
    app.seed_pairs(4, "c", "map.example").await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let field = "Preferred_Language__c";
    let listing = mapping::list(&app.pool, &factory, "default").await.unwrap();
    for list in [&listing.available.ma, &listing.available.lead, &listing.available.contact] {
        let found = list.as_ref().unwrap().iter().find(|f| f.name == field).expect("the custom field is listed");
        assert!(found.custom && found.kind == "text", "{found:?}");
    }
    assert!(listing.fields.by_ma_field(field).is_none(), "unmapped by default");
    // Values set before the field is mapped: nothing syncs them yet.
    for i in 1..=2 {
        let (lead, _) = pair(&app, "c", i).await;
        app.update(&LEAD, &lead, &[(field, "fr")]).await;
    }
    let (_, prospect3) = pair(&app, "c", 3).await;
    app.update(&PROSPECT, &prospect3.to_string(), &[(field, "de")]).await;
    app.settle().await;
    assert_eq!(app.prospect(pair(&app, "c", 1).await.1).await["preferred_language"], Value::Null);

    let mut mapped = FieldMapping::new(field, Some(field), Some(field), SyncBehaviour::MostRecent);
    mapped.blank_overwrites = false;
    let add = MappingEdit::Add(mapped);
    let preview = mapping::preview(&app.pool, &factory, "default", &add).await.unwrap();
    assert_eq!((preview.ma_writes, preview.crm_writes), (2, 1), "{preview:?}");
    let saved = mapping::save(&app.config, &app.pool, &factory, &admin(), "default", &add).await.unwrap();
    assert_eq!(saved.resynced, 6, "both records of each of the 3 pairs");
    app.batch_applied(6).await;
    for i in 1..=2 {
        assert_eq!(app.prospect(pair(&app, "c", i).await.1).await["preferred_language"], "fr");
    }
    let (lead3, _) = pair(&app, "c", 3).await;
    assert_eq!(app.show(&LEAD, &lead3).await["preferred_language"], "de");
    assert_eq!(batch_writes(&app, "ma").await, 2);
    assert_eq!(batch_writes(&app, "crm").await, 1);
    // Mapped, a new edit syncs at once.
    let (lead4, prospect4) = pair(&app, "c", 4).await;
    app.update(&LEAD, &lead4, &[(field, "it")]).await;
    // Waited for, not only settled: right after a re-sync, the idle probe
    // has been seen to answer before this edit was picked up (2 runs in 6
    // here under load; see the closing note of issue 28).
    eventually("the mapped field's edit", || async { app.prospect(prospect4).await["preferred_language"] == "it" }).await;
    app.settle().await;

    // Removed: writes nothing, and an edit no longer syncs.
    let remove = MappingEdit::Remove { ma: field.into() };
    let preview = mapping::preview(&app.pool, &factory, "default", &remove).await.unwrap();
    assert_eq!((preview.ma_writes, preview.crm_writes), (0, 0));
    mapping::save(&app.config, &app.pool, &factory, &admin(), "default", &remove).await.unwrap();
    assert_eq!(last_admin_entry(&app).await.action, "mapping.remove");
    app.update(&LEAD, &lead4, &[(field, "es")]).await;
    app.settle().await;
    assert_eq!(app.prospect(prospect4).await["preferred_language"], "it");

    // Refused, each with what is wrong, and nothing saved.
    let before = connections::load(&app.pool, "default").await.unwrap().field_map;
    let refuse = |edit: MappingEdit| {
        let (app, factory) = (&app, &factory);
        async move { format!("{:#}", mapping::save(&app.config, &app.pool, factory, &admin(), "default", &edit).await.unwrap_err()) }
    };
    let e = refuse(MappingEdit::Remove { ma: "email".into() }).await;
    assert!(e.contains("email field cannot be removed"), "{e}");
    let e = refuse(MappingEdit::Add(FieldMapping::new("title2", Some("Title"), None, SyncBehaviour::MostRecent))).await;
    assert!(e.contains("CRM lead field \"Title\" is mapped twice"), "{e}");
    let e = refuse(MappingEdit::Add(FieldMapping::new(field, Some("Shoe_Size__c"), None, SyncBehaviour::MostRecent))).await;
    assert!(e.contains("no lead field \"Shoe_Size__c\""), "{e}");
    let e = refuse(MappingEdit::Set {
        ma: "city".into(),
        sync: SyncBehaviour::MaWins,
        blank_overwrites: false,
        source: Some(crmsync_domain::Side::Ma),
    })
    .await;
    assert!(e.contains("sets `source` but is not read_only"), "{e}");
    assert_eq!(connections::load(&app.pool, "default").await.unwrap().field_map, before);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_edited_out_of_the_sync_scope_recycles_its_prospect_and_back_in_restores_it() {
    let mut app = TestApp::spawn().await;
    let factory = SystemsFactory::from_config(&app.config, &app.pool).await.unwrap();
    app.seed_pairs(4, "s", "map.example").await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let (lead1, prospect1) = pair(&app, "s", 1).await;
    app.update(&LEAD, &lead1, &[("Status", "Closed")]).await;
    app.settle().await;

    let rules = SyncScope::new(vec![Condition::parse("lead.Status:not_equals:Closed").unwrap()]).unwrap();
    let preview = scope::preview(&app.pool, &factory, "default", &rules).await.unwrap();
    assert_eq!((preview.records.in_scope, preview.records.out_of_scope), (3, 1), "{preview:?}");
    assert_eq!((preview.pairs.in_scope, preview.pairs.out_of_scope, preview.leaving), (3, 1, 1));
    assert_eq!(preview.sample_leaving, vec![(prospect1, lead1.clone())]);
    assert!(app.prospect(prospect1).await["is_deleted"] == false, "a preview changes nothing");

    // A rule on a field the CRM does not list is refused: a real org would
    // refuse every read that selects it.
    let typo = SyncScope::new(vec![Condition::parse("lead.Stauts:not_equals:Closed").unwrap()]).unwrap();
    let refused = scope::save(&app.config, &app.pool, &factory, &admin(), "default", &typo).await.unwrap_err();
    assert!(format!("{refused:#}").contains("the CRM has no lead field \"Stauts\""), "{refused:#}");
    let saved = scope::save(&app.config, &app.pool, &factory, &admin(), "default", &rules).await.unwrap();
    assert_eq!(saved.resynced, 1);
    assert_eq!(last_admin_entry(&app).await.action, "scope.set");
    app.batch_applied(1).await;
    assert_eq!(app.prospect(prospect1).await["is_deleted"], true, "out of scope: in the MA recycle bin");
    assert_eq!(app.identity_status(prospect1).await.as_deref(), Some("recycled"));

    // Edited out of scope, then back in.
    let (lead2, prospect2) = pair(&app, "s", 2).await;
    app.update(&LEAD, &lead2, &[("Status", "Closed")]).await;
    eventually("the prospect recycled", || async { app.prospect(prospect2).await["is_deleted"] == true }).await;
    app.settle().await;
    // Out of scope, an edit is not synced.
    app.update(&LEAD, &lead2, &[("Title", "Hidden")]).await;
    app.settle().await;
    assert_ne!(app.prospect(prospect2).await["job_title"], "Hidden");
    app.update(&LEAD, &lead2, &[("Status", "Working")]).await;
    eventually("back in scope: restored", || async { app.prospect(prospect2).await["is_deleted"] == false }).await;
    app.settle().await;
    assert_eq!(app.identity_status(prospect2).await.as_deref(), Some("linked"));
    app.update(&LEAD, &lead2, &[("Title", "Back")]).await;
    eventually("in scope, it syncs again", || async { app.prospect(prospect2).await["job_title"] == "Back" }).await;

    // Clearing the scope brings the first one back too, through the batch lane.
    let cleared = scope::save(&app.config, &app.pool, &factory, &admin(), "default", &SyncScope::default()).await.unwrap();
    assert_eq!((cleared.preview.entering, cleared.resynced), (1, 1));
    app.batch_applied(2).await;
    assert_eq!(app.prospect(prospect1).await["is_deleted"], false);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_previews_and_saves_mapping_and_scope_changes_for_admins_only() {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = serve(&app, false, &stop).await;
    let cli = Actor { name: "test".into(), via: "cli" };
    users::add(&app.pool, &cli, "ops", Role::Admin, "correct horse battery staple").await.unwrap();
    users::add(&app.pool, &cli, "watcher", Role::Viewer, "viewer sees all, changes none").await.unwrap();

    let mut admin = Browser::new(&url);
    assert_eq!(admin.sign_in("ops", "correct horse battery staple").await, StatusCode::SEE_OTHER);
    let (status, page) = admin.get("/connections/default/mapping").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Preferred_Language__c (custom)") && page.contains("<code>jobTitle</code>"), "{page}");
    let csrf = csrf_of(&page);
    let set = [("edit", "set"), ("ma", "city"), ("sync", "crm_wins"), ("source", ""), ("blank_overwrites", "yes")];
    let with = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        set.iter().chain(extra.iter()).map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let form = |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();

    // Without the CSRF token, or as a viewer: refused, nothing changed.
    let no_csrf = form(&with(&[("step", "save")]));
    let pairs: Vec<(&str, &str)> = no_csrf.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(admin.post("/connections/default/mapping", &pairs).await.0, StatusCode::FORBIDDEN);
    let mut viewer = Browser::new(&url);
    assert_eq!(viewer.sign_in("watcher", "viewer sees all, changes none").await, StatusCode::SEE_OTHER);
    let (status, viewer_page) = viewer.get("/connections/default/mapping").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!viewer_page.contains("Map another field"), "a viewer gets no form");
    let viewer_csrf = csrf_of(&viewer.get("/").await.1);
    let as_viewer = form(&with(&[("step", "save"), ("csrf", &viewer_csrf)]));
    let pairs: Vec<(&str, &str)> = as_viewer.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(viewer.post("/connections/default/mapping", &pairs).await.0, StatusCode::FORBIDDEN);
    let (status, _, _) =
        viewer.post("/connections/default/scope", &[("rules", "Status:is_blank"), ("step", "save"), ("csrf", &viewer_csrf)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = admin.post("/connections/default/scope", &[("rules", "Status:is_blank"), ("step", "save")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let city = || async { connections::load(&app.pool, "default").await.unwrap().field_map.by_ma_field("city").unwrap().clone() };
    assert_eq!(city().await.sync, SyncBehaviour::MostRecent);

    // The preview first, then the save it offers.
    let preview = form(&with(&[("step", "preview"), ("csrf", &csrf)]));
    let pairs: Vec<(&str, &str)> = preview.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, page) = admin.post("/connections/default/mapping", &pairs).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Preview: mapping.set") && page.contains("0 linked pairs"), "{page}");
    assert!(page.contains(r#"name="step" value="save""#), "{page}");
    assert_eq!(city().await.sync, SyncBehaviour::MostRecent, "a preview saves nothing");
    let save = form(&with(&[("step", "save"), ("csrf", &csrf)]));
    let pairs: Vec<(&str, &str)> = save.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, page) = admin.post("/connections/default/mapping", &pairs).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let c = city().await;
    assert_eq!((c.sync, c.blank_overwrites), (SyncBehaviour::CrmWins, true));
    let entry = last_admin_entry(&app).await;
    assert_eq!((entry.action.as_str(), entry.actor.as_str(), entry.via.as_str()), ("mapping.set", "ops", "console"));

    // An invalid mapping is refused with its reason.
    let dup = [("edit", "add"), ("ma", "title2"), ("lead", "Title"), ("sync", "most_recent"), ("step", "save"), ("csrf", &csrf)];
    let (status, _, page) = admin.post("/connections/default/mapping", &dup).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("mapped twice"), "{page}");

    // The scope page: a preview count, then saved.
    let (status, _, page) = admin
        .post(
            "/connections/default/scope",
            &[("rules", "lead.Status:in:Open,Working\nEmail:contains:@"), ("step", "preview"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("CRM records: 0 in scope, 0 out"), "{page}");
    let (status, _, page) = admin
        .post(
            "/connections/default/scope",
            &[("rules", "lead.Status:in:Open,Working\nEmail:contains:@"), ("step", "save"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let saved = connections::load(&app.pool, "default").await.unwrap().sync_scope;
    assert_eq!(saved.conditions.len(), 2);
    let (status, _, page) =
        admin.post("/connections/default/scope", &[("rules", "Status:like:x"), ("step", "save"), ("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("unknown operator"), "{page}");

    // The JSON twins.
    let r = admin
        .http
        .get(format!("{url}/connections/default/scope"))
        .header("cookie", admin.cookie_header())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sync_scope"][0]["field"], "Status");
    let r = admin
        .http
        .get(format!("{url}/connections/default/mapping"))
        .header("cookie", admin.cookie_header())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["mapping"]["available"]["lead"].as_array().unwrap().iter().any(|f| f["name"] == "Preferred_Language__c"), "{body}");
    stop.cancel();
    app.cleanup().await;
}
