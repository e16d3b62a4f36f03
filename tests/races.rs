//! Replicas racing on one identity, redelivered and reordered messages:
//! exactly one counterpart per person (I2), no older value over a newer one
//! (I3), and a change the link already carried not applied twice, but never
//! dropped before its values are written (I1).

use chrono::{Duration, Utc};
use crmsync_connector::{CrmApi, MaApi};
use crmsync_domain::mapping::FieldMap;
use crmsync_domain::matching::{IdentityPatch, IdentityStatus};
use crmsync_domain::merge::IdentityFields;
use crmsync_domain::messages::{Change, ChangeBatch, MESSAGE_VERSION};
use crmsync_domain::records::SourceRecord;
use crmsync_domain::{CrmId, CrmObject, Lane};
use crmsync_infra::amqp::Stage;
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_sandbox::{SandboxCrm, SandboxMa};
use crmsync_store::identities::{self, NewIdentity};
use crmsync_tests::{TestApp, Tier};
use uuid::Uuid;

/// A change batch carrying the prospect as it is now, as the producer
/// would have detected it.
async fn detected(app: &TestApp, prospect: i64) -> ChangeBatch {
    let ma = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    let record = ma.prospects_by_id(&[prospect]).await.unwrap().remove(0);
    ChangeBatch {
        v: MESSAGE_VERSION,
        batch_id: Uuid::now_v7(),
        connection_id: "default".into(),
        lane: Lane::Immediate,
        detected_at: Utc::now(),
        changes: vec![Change { change_id: Uuid::now_v7(), record: SourceRecord::Prospect(record), trace: None }],
    }
}

/// Both records of a pair as they are now, as the producer would have
/// detected them a minute ago: (the lead's batch, the prospect's batch).
async fn detected_pair(app: &TestApp, lead: &str, prospect: i64) -> (ChangeBatch, ChangeBatch) {
    let crm = SandboxCrm::connect(app.pool.clone(), "default").await.unwrap();
    let record = crm.people_by_id(&[CrmId::parse(lead).unwrap()]).await.unwrap().remove(0);
    let mut prospect = detected(app, prospect).await;
    prospect.detected_at = Utc::now() - Duration::minutes(1);
    let mut lead = prospect.clone();
    lead.batch_id = Uuid::now_v7();
    lead.changes = vec![Change { change_id: Uuid::now_v7(), record: SourceRecord::Crm(record), trace: None }];
    (lead, prospect)
}

/// What each stage audited of one change, once one has: (stage, action,
/// with an identity). A change published by hand is not in the producers'
/// counts that `settle` waits for, so its outcome is waited for here.
async fn audited(app: &TestApp, change: Uuid) -> Vec<(String, String, bool)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows: Vec<(String, String, bool)> =
            sqlx::query_as("SELECT stage, action, identity_id IS NOT NULL FROM audit_log WHERE change_id = $1 ORDER BY stage")
                .bind(change)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        if !rows.is_empty() || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A copy with fresh ids: a second detection of the same state.
fn again(b: &ChangeBatch) -> ChangeBatch {
    let mut b = b.clone();
    b.batch_id = Uuid::now_v7();
    for c in &mut b.changes {
        c.change_id = Uuid::now_v7();
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_matchers_and_two_appliers_racing_on_one_new_identity_create_exactly_one_counterpart() {
    let mut app = TestApp::spawn().await;
    let (ma_user, crm_user) = app.sales_user("Chika").await;
    let p = app.create_prospect(&[("email", "race@one.example"), ("lastName", "Race"), ("company", "One")]).await;
    app.sandbox.assign(p, Some(ma_user)).await.unwrap();
    // The same person created on both sides at once, for a cross-side race.
    let lead = app.create_lead(&[("LastName", "Both"), ("Company", "Two"), ("Email", "both@two.example")]).await;
    let q = app.create_prospect(&[("email", "both@two.example"), ("lastName", "Both")]).await;
    let batch = detected(&app, p).await;
    app.start_pipeline(2, 2);
    // Eight more detections of the new prospect, all in the queue at once.
    for _ in 0..8 {
        app.publish_changes(&again(&batch)).await;
    }
    app.settle().await;

    let leads = app.with_email("crm.leads", "race@one.example").await;
    assert_eq!(leads.len(), 1, "one lead for one person: {leads:?}");
    assert_eq!(leads[0]["owner_id"], crm_user.as_str());
    let identities: Vec<(i64, Option<String>, String)> =
        sqlx::query_as("SELECT prospect_id, crm_id, status FROM identities ORDER BY prospect_id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(identities.len(), 2, "{identities:?}");
    assert_eq!(identities[0], (p, leads[0]["id"].as_str().map(str::to_owned), "linked".to_owned()));
    assert_eq!(identities[1], (q, Some(lead), "linked".to_owned()));
    assert!(app.with_email("ma.prospects", "both@two.example").await.len() == 1);
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_or_reordered_change_changes_nothing() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Order"), ("Company", "Co"), ("Email", "order@co.example")]).await;
    let p = app.create_prospect(&[("email", "order@co.example"), ("crmLeadFid", &lead), ("jobTitle", "Old")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let old = detected(&app, p).await;

    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "New")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "New");
    let new = detected(&app, p).await;
    let stamp = app.show(&LEAD, &lead).await["modstamp"].clone();

    // The older detection arrives late, then the newer one twice more.
    app.publish_changes(&again(&old)).await;
    app.publish_changes(&again(&new)).await;
    app.publish_changes(&again(&new)).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "New", "an older change never overwrites a newer one");
    assert_eq!(app.prospect(p).await["job_title"], "New");
    assert_eq!(app.show(&LEAD, &lead).await["modstamp"], stamp, "nothing was written again");
    app.cleanup().await;
}

/// A pair edited on both sides: whichever change is matched first links
/// the pair and stores both records' values. The lead's change, detected
/// before the link, brings nothing: the matcher audits it as skipped, and
/// the applier does not work through it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_detected_before_another_linked_its_identity_and_bringing_nothing_is_skipped() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Pair"), ("Company", "Co"), ("Email", "pair@both.example"), ("Title", "CTO")]).await;
    let p = app.create_prospect(&[("email", "pair@both.example"), ("crmLeadFid", &lead), ("phone", "555-0100")]).await;
    let (early, _) = detected_pair(&app, &lead, p).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["phone"], "555-0100");
    assert_eq!(app.prospect(p).await["job_title"], "CTO");
    let stamp = app.show(&LEAD, &lead).await["modstamp"].clone();

    let late = again(&early);
    app.publish_changes(&late).await;
    app.settle().await;
    let change = late.changes[0].change_id;
    assert_eq!(audited(&app, change).await, [("match".to_owned(), "skipped:already_known".to_owned(), true)]);
    assert_eq!(app.show(&LEAD, &lead).await["modstamp"], stamp, "nothing was written again");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

/// The state a crash leaves between storing a new link and publishing its
/// command: the identity holds both records' values, each known only on the
/// side it came from, and nothing was written. The lead's change, detected
/// before the link, is still dropped (the state holds its title), and the
/// values are not lost for it: the linking change's redelivery is applied,
/// and the applier writes all the state holds, the title included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linking_changes_redelivery_is_applied_and_writes_what_a_dropped_change_carried() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Crash"), ("Company", "Co"), ("Email", "crash@link.example"), ("Title", "CTO")]).await;
    let p = app.create_prospect(&[("email", "crash@link.example"), ("crmLeadFid", &lead), ("phone", "555-0199")]).await;
    let (early, linking) = detected_pair(&app, &lead, p).await;
    let map = FieldMap::default();
    let mut fields = IdentityFields::default();
    fields.observe_all(&map, &early.changes[0].record.observations(&map, None));
    fields.observe_all(&map, &linking.changes[0].record.observations(&map, None));
    let patch = IdentityPatch {
        status: Some(IdentityStatus::Linked),
        prospect_id: Some(p),
        crm: Some((CrmId::parse(&lead).unwrap(), CrmObject::Lead)),
        ..IdentityPatch::default()
    };
    let id = Uuid::now_v7();
    let change_id = linking.changes[0].change_id;
    let new = NewIdentity { id, change_id, patch: &patch, email: Some("crash@link.example"), fields: &fields, fence: 1 };
    assert!(identities::insert_many(&app.pool, "default", &[new]).await.unwrap().contains(&id));
    // The prospect already points at the lead: no link left to write either.
    sqlx::query("UPDATE identities SET ma_link_written = true WHERE id = $1").bind(id).execute(&app.pool).await.unwrap();

    app.start_pipeline(1, 1);
    app.publish_changes(&early).await;
    app.settle().await;
    assert_eq!(audited(&app, early.changes[0].change_id).await, [("match".to_owned(), "skipped:already_known".to_owned(), true)]);
    assert_eq!(app.prospect(p).await["job_title"], serde_json::Value::Null, "nothing applied the state yet");
    app.publish_changes(&linking).await;
    app.settle().await;
    assert_eq!(audited(&app, change_id).await, [("apply".to_owned(), "updated".to_owned(), true)]);
    assert_eq!(app.show(&LEAD, &lead).await["phone"], "555-0199");
    assert_eq!(app.prospect(p).await["job_title"], "CTO");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

/// The applier writes the records a linking command saw without reading
/// them again: its write is conditional on the stamps they were read at. A
/// user's edit of the lead after the matcher read it, and before the
/// applier wrote it, must refuse that write, and then be read, kept and
/// synced (I3). No producer runs: the edit reaches the engine only through
/// the applier's read after the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_after_the_matcher_read_a_record_refuses_the_unread_write_and_is_kept() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Window"), ("Company", "Co"), ("Email", "window@edit.example")]).await;
    let p = app.create_prospect(&[("email", "window@edit.example"), ("crmLeadFid", &lead), ("phone", "555-0100")]).await;
    let batch = detected(&app, p).await;
    let change = batch.changes[0].change_id;
    app.start(Tier::Matcher);
    app.publish_changes(&batch).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.queued(Stage::Apply, Lane::Immediate).await == 0 {
        assert!(std::time::Instant::now() < deadline, "the matcher published no command");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.update(&LEAD, &lead, &[("Phone", "555-0999")]).await;

    app.start(Tier::Applier);
    assert_eq!(audited(&app, change).await, [("apply".to_owned(), "updated".to_owned(), true)]);
    assert_eq!(app.show(&LEAD, &lead).await["phone"], "555-0999", "the newer edit on the lead was not overwritten");
    assert_eq!(app.prospect(p).await["phone"], "555-0999", "and it was synced to the prospect");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

/// R8 under reordering: a detection of the prospect from before its email
/// changed, arriving after the change was synced, must not move the
/// identity back to the old email. The matcher can tell only from the
/// identity's stored state of the email field (the newer edit is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_detection_with_the_old_email_leaves_the_identity_on_the_new_one() {
    let mut app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Late"), ("Company", "Co"), ("Email", "late@old.example")]).await;
    let p = app.create_prospect(&[("email", "late@old.example"), ("crmLeadFid", &lead), ("lastName", "Late")]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    let old = detected(&app, p).await;

    app.update(&PROSPECT, &p.to_string(), &[("email", "late@new.example")]).await;
    app.settle().await;
    let key = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT email FROM identities WHERE prospect_id = $1").bind(p).fetch_one(&pool).await.unwrap()
    };
    assert_eq!(key(app.pool.clone()).await, "late@new.example");
    assert_eq!(app.show(&LEAD, &lead).await["email"], "late@new.example");

    // The applier stopped, so that what the matcher decided is seen before
    // the applier would put the key right again.
    app.stop(Tier::Applier).await;
    app.publish_changes(&again(&old)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.queued(Stage::Apply, Lane::Immediate).await == 0 {
        assert!(std::time::Instant::now() < deadline, "the matcher never passed the late detection on");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(key(app.pool.clone()).await, "late@new.example", "the matcher keeps the identity on the newer email");
    app.start(Tier::Applier);
    app.settle().await;
    assert_eq!(key(app.pool.clone()).await, "late@new.example", "the identity keeps the newer email");
    assert_eq!(app.show(&LEAD, &lead).await["email"], "late@new.example");
    assert_eq!(app.prospect(p).await["email"], "late@new.example");
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

/// New identities are stored in one statement; one that clashes with a
/// stored identity (another matcher linked the person first) is left out,
/// and the others of its batch are stored all the same (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_new_identities_with_one_clash_stores_the_others() {
    fn new<'a>(id: Uuid, patch: &'a IdentityPatch, email: &'a str, fields: &'a IdentityFields) -> NewIdentity<'a> {
        NewIdentity { id, change_id: Uuid::now_v7(), patch, email: Some(email), fields, fence: 1 }
    }
    let app = TestApp::spawn().await;
    let patch = |prospect: i64| IdentityPatch {
        status: Some(IdentityStatus::PendingAssignment),
        prospect_id: Some(prospect),
        ..IdentityPatch::default()
    };
    let (first, second, third) = (patch(7001), patch(7002), patch(7003));
    let fields = IdentityFields::default();
    let stored = [new(Uuid::now_v7(), &first, "first@clash.example", &fields)];
    assert_eq!(identities::insert_many(&app.pool, "default", &stored).await.unwrap().len(), 1);

    let fresh = Uuid::now_v7();
    let batch = [new(Uuid::now_v7(), &second, "first@clash.example", &fields), new(fresh, &third, "third@clash.example", &fields)];
    let ids = identities::insert_many(&app.pool, "default", &batch).await.unwrap();
    assert_eq!(ids, [fresh].into_iter().collect(), "the clashing identity is left out, the other stored");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM identities").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 2);
    app.cleanup().await;
}

/// The identity lookup and the applier's redelivery check filter on the
/// connection (and the stage) inside the statement, by primary key, so the
/// planner keeps an index plan: the same keys in another connection, or a
/// change finished by another stage, must not be found (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_lookups_and_the_redelivery_check_keep_to_their_connection_and_stage() {
    use crmsync_domain::matching::{IdentityPatch, IdentityStatus};
    use crmsync_domain::merge::IdentityFields;
    use crmsync_domain::{CrmId, CrmObject};
    use crmsync_store::audit::{self, AuditEntry};
    use crmsync_store::{connections, identities};

    let app = TestApp::spawn().await;
    let settings = connections::load(&app.pool, "default").await.unwrap();
    connections::save(&app.pool, "other", &settings).await.unwrap();
    let lead = CrmId::parse(&app.create_lead(&[("LastName", "Keyed"), ("Company", "Co")]).await).unwrap();
    let patch = IdentityPatch {
        status: Some(IdentityStatus::Linked),
        prospect_id: Some(4242),
        crm: Some((lead.clone(), CrmObject::Lead)),
        ..IdentityPatch::default()
    };
    let mut fields = IdentityFields::default();
    fields.wrote(crmsync_domain::merge::Side::Ma, "email", chrono::Utc::now(), serde_json::json!("keyed@store.example"));
    fields.wrote(crmsync_domain::merge::Side::Crm, "jobTitle", chrono::Utc::now(), serde_json::json!("Buyer"));
    let mut ids = std::collections::HashMap::new();
    for conn in ["default", "other"] {
        let id = Uuid::now_v7();
        let new = identities::NewIdentity {
            id,
            change_id: Uuid::now_v7(),
            patch: &patch,
            email: Some("keyed@store.example"),
            fields: &fields,
            fence: 1,
        };
        assert_eq!(identities::insert_many(&app.pool, conn, &[new]).await.unwrap().len(), 1, "{conn}");
        ids.insert(conn, id);
    }
    let by = |keys: identities::Keys| {
        let pool = app.pool.clone();
        async move {
            identities::find(&pool, "default", &keys, identities::State::All).await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };
    let mine = vec![ids["default"]];
    assert_eq!(by(identities::Keys { prospect_ids: vec![4242], ..Default::default() }).await, mine);
    assert_eq!(by(identities::Keys { crm_ids: vec![lead.to_string()], ..Default::default() }).await, mine);
    assert_eq!(by(identities::Keys { emails: vec!["keyed@store.example".into()], ..Default::default() }).await, mine);
    assert_eq!(by(identities::Keys { ids: vec![ids["other"]], ..Default::default() }).await, Vec::<Uuid>::new());
    let all = identities::Keys {
        ids: vec![ids["default"], ids["other"]],
        prospect_ids: vec![4242],
        crm_ids: vec![lead.to_string()],
        emails: vec!["keyed@store.example".into()],
    };
    assert_eq!(by(all).await, mine, "one row, however many keys find it");
    let state_of = |state: identities::State<'static>| {
        let pool = app.pool.clone();
        let keys = identities::Keys { prospect_ids: vec![4242], ..Default::default() };
        async move {
            let row = identities::find(&pool, "default", &keys, state).await.unwrap().pop().unwrap();
            row.fields.0.keys().cloned().collect::<Vec<_>>()
        }
    };
    assert_eq!(state_of(identities::State::All).await, ["email", "jobTitle"]);
    assert_eq!(state_of(identities::State::Only(&["email", "phone"])).await, ["email"], "only the state asked for, and held");
    assert_eq!(state_of(identities::State::Skip).await, Vec::<String>::new());

    let entry = |change_id, stage| AuditEntry {
        change_id,
        stage,
        identity_id: None,
        source_side: "ma",
        source_object: "prospect".into(),
        source_id: "4242".into(),
        action: "applied".into(),
        writes: serde_json::json!({}),
        detail: None,
        lane: "immediate",
        field_values: None,
        trace_id: None,
    };
    let (applied, matched, elsewhere) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    audit::insert_many(&app.pool, "default", &[entry(applied, "apply"), entry(matched, "match")]).await.unwrap();
    audit::insert_many(&app.pool, "other", &[entry(elsewhere, "apply")]).await.unwrap();
    let done = audit::finished(&app.pool, "default", "apply", &[applied, matched, elsewhere, Uuid::now_v7()]).await.unwrap();
    assert_eq!(done, vec![applied]);
    app.cleanup().await;
}

/// A table a first sync filled from empty gets the planner's statistics
/// from the engine without waiting for autovacuum: once it has changed by
/// as many rows as it holds, by one replica at a time, and not again until
/// it has grown as much once more.
#[tokio::test]
async fn tables_that_grew_from_empty_are_analyzed_once_by_one_replica() {
    use crmsync_domain::matching::{IdentityPatch, IdentityStatus};
    use crmsync_domain::merge::IdentityFields;
    use crmsync_infra::statistics::analyze_grown;
    use crmsync_store::identities;

    let app = TestApp::spawn().await;
    let tables = ["identities", "audit_log"];
    let fields = IdentityFields::default();
    let patches: Vec<IdentityPatch> = (0..1_500)
        .map(|n| IdentityPatch { status: Some(IdentityStatus::PendingAssignment), prospect_id: Some(n), ..IdentityPatch::default() })
        .collect();
    let emails: Vec<String> = (0..patches.len()).map(|n| format!("grown{n}@stats.example")).collect();
    let new: Vec<_> = patches
        .iter()
        .zip(&emails)
        .map(|(patch, email)| identities::NewIdentity {
            id: Uuid::now_v7(),
            change_id: Uuid::now_v7(),
            patch,
            email: Some(email),
            fields: &fields,
            fence: 1,
        })
        .collect();
    assert_eq!(identities::insert_many(&app.pool, "default", &new).await.unwrap().len(), 1_500);
    // Each backend reports its counters when idle, within seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let counted: Option<i64> = sqlx::query_scalar(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'identities' AND schemaname = current_schema()",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        if counted >= Some(1_500) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the inserts were never counted: {counted:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let stats = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stats WHERE tablename = 'identities' AND attname = 'connection_id'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(stats(app.pool.clone()).await, 0, "no statistics before the first ANALYZE");

    // Another replica holds the table's turn: this one leaves it alone.
    let mut other = app.pool.begin().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('crmsync.analyze.identities'))")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held);
    assert_eq!(analyze_grown(&app.pool, &tables, 1_000).await.unwrap(), Vec::<String>::new());
    other.rollback().await.unwrap();

    assert_eq!(analyze_grown(&app.pool, &tables, 1_000).await.unwrap(), vec!["identities".to_owned()]);
    assert_eq!(stats(app.pool.clone()).await, 1, "the planner now knows how the rows spread over connections");
    // Counters are read from the statistics system, which may take a moment
    // to see the ANALYZE; the table has not grown since, so it stays done.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(analyze_grown(&app.pool, &tables, 1_000).await.unwrap(), Vec::<String>::new());
    app.cleanup().await;
}
