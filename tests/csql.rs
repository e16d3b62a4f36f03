//! CSQLs (R9): each combination of the sync options through the real tiers,
//! the rejected logged-in sync, the guards on switching, and idempotency
//! under redelivery.

use crmsync_connector::ConnectorFactory;
use crmsync_domain::Lane;
use crmsync_domain::csql::{CsUserType, CsqlRecordType};
use crmsync_domain::messages::{self, ApplyBatch, CsqlCommand, CsqlOutcome, MESSAGE_VERSION};
use crmsync_infra::amqp::Stage;
use crmsync_tests::{TestApp, crmsync_exe};
use serde_json::Value;
use uuid::Uuid;

const LEAD: CsqlRecordType = CsqlRecordType::Lead;
const OPPORTUNITY: CsqlRecordType = CsqlRecordType::Opportunity;

/// A test world whose connection has the sandbox CS platform.
async fn with_cs() -> TestApp {
    let app = TestApp::spawn().await;
    app.set("cs", "default").await;
    app
}

fn lead_values(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FirstName", "Casey".to_owned()),
        ("LastName", name.to_owned()),
        ("Email", format!("{}@expansion.example", name.to_lowercase())),
        ("Company", format!("{name} Holdings")),
        ("Title", "Head of Ops".to_owned()),
    ]
}

fn borrowed<'a>(values: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    values.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn one_record(app: &TestApp, kind: CsqlRecordType, id: i64) -> Value {
    let mut records = app.crm_records_of_csql(kind, id).await;
    assert_eq!(records.len(), 1, "exactly one CRM record for CSQL {id}: {records:?}");
    records.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_target_cs_csqls_stay_in_the_cs_platform() {
    let mut app = with_cs().await;
    let (csm, _) = app.cs_user("Stay CSM", CsUserType::Csm, Some(true)).await;
    app.start_pipeline(1, 1);
    let q = app.create_csql(LEAD, csm, None, &borrowed(&lead_values("Stays"))).await;
    app.settle().await;

    assert!(app.crm_records_of_csql(LEAD, q).await.is_empty(), "nothing reaches the CRM");
    assert!(app.with_email("crm.leads", "stays@expansion.example").await.is_empty());
    let row = app.csql(LEAD, q).await;
    assert_eq!(row["sync_status"], "not_synced");
    assert!(app.published().await.iter().all(|(feed, _, _)| !feed.starts_with("cs.")), "no CS feed is read");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_lead_logged_in_writes_as_the_csm_and_rejects_a_csm_without_api_access() {
    let mut app = with_cs().await;
    app.set_guarded("csql.target", "crm", false).await.unwrap();
    let (csm, csm_crm) = app.cs_user("Api CSM", CsUserType::Csm, Some(true)).await;
    let (no_api, _) = app.cs_user("NoApi CSM", CsUserType::Csm, Some(false)).await;
    let (no_crm, _) = app.cs_user("Solo CSM", CsUserType::Csm, None).await;
    app.start_pipeline(1, 1);

    let ok = app.create_csql(LEAD, csm, None, &borrowed(&lead_values("Granted"))).await;
    let refused = app.create_csql(LEAD, no_api, None, &borrowed(&lead_values("Refused"))).await;
    let orphan = app.create_csql(LEAD, no_crm, None, &borrowed(&lead_values("Orphan"))).await;
    app.settle().await;

    // The permitted CSM's CSQL is a CRM lead written as that CSM's CRM user.
    let lead = one_record(&app, LEAD, ok).await;
    let csm_crm = csm_crm.unwrap();
    assert_eq!(lead["email"], "granted@expansion.example");
    assert_eq!(lead["company"], "Granted Holdings");
    assert_eq!(lead["created_by"], csm_crm.as_str(), "written as the CSM's own CRM user");
    assert_eq!(lead["owner_id"], csm_crm.as_str(), "owned by the CSM's CRM user");
    let row = app.csql(LEAD, ok).await;
    assert_eq!(row["sync_status"], "synced");
    assert_eq!(row["crm_id"], lead["id"]);

    // The others are rejected with a specific reason, and kept.
    for (q, why) in [(refused, "no API access"), (orphan, "has no CRM user")] {
        assert!(app.crm_records_of_csql(LEAD, q).await.is_empty());
        let row = app.csql(LEAD, q).await;
        assert_eq!(row["sync_status"], "rejected", "{row}");
        assert!(row["sync_error"].as_str().unwrap().contains(why), "{row}");
        assert_eq!(row["is_deleted"], false, "the CSQL is kept");
    }
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e.category == "csql_not_permitted" && e.object == "csql_lead"), "{errors:?}");

    // An edit by the CSM updates the same lead; the refused CSQL syncs once a
    // permitted CSM saves it, and its error is resolved.
    app.sandbox.update_csql(LEAD, ok, csm, &[("Title".into(), "VP Operations".into())]).await.unwrap();
    app.sandbox.update_csql(LEAD, refused, csm, &[("Phone".into(), "+81 3 0000 0000".into())]).await.unwrap();
    app.settle().await;
    assert_eq!(one_record(&app, LEAD, ok).await["title"], "VP Operations");
    let now_synced = one_record(&app, LEAD, refused).await;
    assert_eq!(now_synced["created_by"], csm_crm.as_str());
    assert_eq!(app.csql(LEAD, refused).await["sync_status"], "synced");
    let errors = app.sync_errors().await;
    assert_eq!(errors.len(), 1, "only the CSM without a CRM user is still refused: {errors:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_lead_integration_writes_as_the_integration_user_remembering_the_csm_and_owned_by_the_sales_collaborator() {
    let mut app = with_cs().await;
    app.set_guarded("csql.target", "crm", false).await.unwrap();
    app.set_guarded("csql.sync_user", "integration", false).await.unwrap();
    app.set("auto_create_prospects", "true").await;
    let (no_api, _) = app.cs_user("Quiet CSM", CsUserType::Csm, Some(false)).await;
    let (seller, seller_crm) = app.cs_user("Sam Seller", CsUserType::InternalCollaborator, Some(true)).await;
    app.start_pipeline(1, 1);

    let handed = app.create_csql(LEAD, no_api, Some(seller), &borrowed(&lead_values("Handed"))).await;
    let own = app.create_csql(LEAD, no_api, None, &borrowed(&lead_values("Unowned"))).await;
    app.settle().await;

    let integration: String = sqlx::query_scalar("SELECT id FROM crm.users WHERE email = 'cs-integration@default.cs.invalid'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let lead = one_record(&app, LEAD, handed).await;
    assert_eq!(lead["created_by"], integration.as_str(), "written as the CS platform's integration user");
    assert_eq!(lead["owner_id"], seller_crm.unwrap().as_str(), "the internal collaborator's sales user owns it");
    assert!(lead["csql_created_by"].as_str().unwrap().contains("Quiet CSM"), "the CRM record remembers the CSM: {lead}");
    let unowned = one_record(&app, LEAD, own).await;
    assert!(unowned["csql_created_by"].as_str().unwrap().contains("Quiet CSM"));
    assert_eq!(app.csql(LEAD, own).await["sync_status"], "synced");
    // The new lead is an ordinary CRM change to the MA sync: with
    // auto-creation on, it becomes a prospect with all its fields.
    let prospect = app.with_email("ma.prospects", "handed@expansion.example").await;
    assert_eq!(prospect.len(), 1, "{prospect:?}");
    assert_eq!(prospect[0]["last_name"], "Handed");
    assert_eq!(prospect[0]["company"], "Handed Holdings");
    assert_eq!(prospect[0]["crm_lead_fid"], lead["id"]);
    assert!(app.sync_errors().await.is_empty(), "{:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_opportunity_under_both_sync_users() {
    let mut app = with_cs().await;
    app.set_guarded("csql.record_type", "opportunity", true).await.unwrap();
    app.set_guarded("csql.target", "crm", false).await.unwrap();
    let (csm, csm_crm) = app.cs_user("Opp CSM", CsUserType::Csm, Some(true)).await;
    let (no_api, _) = app.cs_user("Opp NoApi", CsUserType::Csm, Some(false)).await;
    app.start_pipeline(1, 1);

    let values =
        |name: &'static str| vec![("Name", name), ("Company", "Expansion Co"), ("Amount", "12500.50"), ("CloseDate", "2027-03-31")];
    let logged_in = app.create_csql(OPPORTUNITY, csm, None, &values("Upsell seats")).await;
    let refused = app.create_csql(OPPORTUNITY, no_api, None, &values("Refused upsell")).await;
    // A CSQL in the lead object is not synced while the type is opportunity.
    let lead_csql = app.create_csql(LEAD, csm, None, &borrowed(&lead_values("Ignored"))).await;
    app.settle().await;

    let opp = one_record(&app, OPPORTUNITY, logged_in).await;
    assert_eq!(opp["name"], "Upsell seats");
    assert_eq!(opp["stage_name"], "Prospecting", "the CS stage becomes the CRM stage");
    assert_eq!(opp["amount"].as_f64(), Some(12500.5));
    assert_eq!(opp["close_date"], "2027-03-31");
    assert_eq!(opp["created_by"], csm_crm.unwrap().as_str());
    assert!(app.crm_records_of_csql(OPPORTUNITY, refused).await.is_empty());
    assert_eq!(app.csql(OPPORTUNITY, refused).await["sync_status"], "rejected");
    assert!(app.crm_records_of_csql(LEAD, lead_csql).await.is_empty());

    // With the integration user, the same CSM's next save goes through.
    app.set_guarded("csql.sync_user", "integration", false).await.unwrap();
    app.sandbox.update_csql(OPPORTUNITY, refused, no_api, &[("Stage".into(), "Qualification".into())]).await.unwrap();
    app.settle().await;
    let opp = one_record(&app, OPPORTUNITY, refused).await;
    assert_eq!(opp["stage_name"], "Qualification");
    assert!(opp["csql_created_by"].as_str().unwrap().contains("Opp NoApi"));
    assert_eq!(app.csql(OPPORTUNITY, refused).await["sync_status"], "synced");
    assert!(app.sync_errors().await.is_empty(), "the refusal is resolved: {:?}", app.sync_errors().await);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_target_is_refused_while_records_exist_and_allowed_after_deletion() {
    let app = with_cs().await;
    let (csm, _) = app.cs_user("Guard CSM", CsUserType::Csm, Some(true)).await;
    let admin = app.sandbox.create_cs_user("CS Admin 2", "admin2@cs.example", CsUserType::Csm, None, true, false).await.unwrap();
    let support = app.sandbox.create_cs_user("Support", "support2@cs.example", CsUserType::Csm, None, false, true).await.unwrap();
    for name in ["One", "Two"] {
        app.create_csql(LEAD, csm, None, &borrowed(&lead_values(name))).await;
    }

    let refused = app.set_guarded("csql.target", "crm", false).await.unwrap_err().to_string();
    assert!(refused.contains("2 record(s)") && refused.contains("CS lead object"), "{refused}");
    assert!(refused.contains("bulk-delete"), "says how to delete them: {refused}");
    assert_eq!(crmsync_store::connections::load(&app.pool, "default").await.unwrap().csql.target.as_str(), "cs", "unchanged");

    // Only an admin may bulk-delete CS lead records.
    let denied = app.sandbox.delete_all_csqls(LEAD, csm).await.unwrap_err().to_string();
    assert!(denied.contains("not an admin"), "{denied}");
    assert_eq!(app.sandbox.delete_all_csqls(LEAD, admin).await.unwrap(), 2);
    app.set_guarded("csql.target", "crm", false).await.unwrap();

    // Back to `cs` with the opportunity object in use: its records need
    // the support privilege to go, an admin is not enough.
    app.set_guarded("csql.record_type", "opportunity", true).await.unwrap();
    app.create_csql(OPPORTUNITY, csm, None, &[("Name", "Blocker"), ("CloseDate", "2027-01-31")]).await;
    let refused = app.set_guarded("csql.target", "cs", false).await.unwrap_err().to_string();
    assert!(refused.contains("1 record(s)") && refused.contains("support"), "{refused}");
    let denied = app.sandbox.delete_all_csqls(OPPORTUNITY, admin).await.unwrap_err().to_string();
    assert!(denied.contains("support privilege"), "{denied}");
    assert_eq!(app.sandbox.delete_all_csqls(OPPORTUNITY, support).await.unwrap(), 1);
    app.set_guarded("csql.target", "cs", false).await.unwrap();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_target_is_refused_while_the_object_of_the_other_record_type_still_holds_records() {
    let app = with_cs().await;
    let (csm, _) = app.cs_user("Other CSM", CsUserType::Csm, Some(true)).await;
    let admin = app.sandbox.create_cs_user("CS Admin 3", "admin3@cs.example", CsUserType::Csm, None, true, false).await.unwrap();
    for name in ["One", "Two", "Three"] {
        app.create_csql(LEAD, csm, None, &borrowed(&lead_values(name))).await;
    }
    // The record type moves to opportunity; the lead object keeps its three.
    app.set_guarded("csql.record_type", "opportunity", true).await.unwrap();
    let refused = app.set_guarded("csql.target", "crm", false).await.unwrap_err().to_string();
    assert!(refused.contains("CS lead object still holds 3 record(s)") && refused.contains("bulk-delete"), "{refused}");
    assert_eq!(crmsync_store::connections::load(&app.pool, "default").await.unwrap().csql.target.as_str(), "cs", "unchanged");
    assert_eq!(app.sandbox.delete_all_csqls(LEAD, admin).await.unwrap(), 3);
    app.set_guarded("csql.target", "crm", false).await.unwrap();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_record_type_needs_confirmation_and_shares_the_renewal_center_settings() {
    let app = with_cs().await;
    app.sandbox.configure_renewal_center(&["Renewal Open".into(), "Renewed".into(), "Churned".into()]).await.unwrap();
    let exe = crmsync_exe!();

    // The command line says what changes and refuses without --yes.
    let (ok, _, stderr) = app.run_cli(exe, &["connection", "set", "default", "csql.record_type", "opportunity"]).await;
    assert!(!ok, "refused without confirmation");
    for says in ["stages", "table and detail views", "email notification", "renewal center", "--yes"] {
        assert!(stderr.contains(says), "the refusal mentions {says:?}: {stderr}");
    }
    assert_eq!(crmsync_store::connections::load(&app.pool, "default").await.unwrap().csql.record_type, LEAD);
    let (ok, stdout, stderr) = app.run_cli(exe, &["connection", "set", "default", "csql.record_type", "opportunity", "--yes"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("renewal center") && stdout.contains("csql.record_type = opportunity"), "{stdout}");

    // Shared: a change from either side shows on both.
    let stages = |v: Value| v["stages"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(stages(app.sandbox.cs_config("opportunity").await.unwrap()), ["Renewal Open", "Renewed", "Churned"]);
    app.sandbox.set_cs_stages("opportunity", &["Open".into(), "Won".into()]).await.unwrap();
    assert_eq!(stages(app.sandbox.cs_config("renewal").await.unwrap()), ["Open", "Won"]);
    app.sandbox.set_cs_stages("renewal", &["Open".into(), "Won".into(), "Lost".into()]).await.unwrap();
    assert_eq!(stages(app.sandbox.cs_config("opportunity").await.unwrap()), ["Open", "Won", "Lost"]);

    // Back to leads: confirmed again, and the opportunity area has its own settings once more.
    let err = app.set_guarded("csql.record_type", "lead", false).await.unwrap_err().to_string();
    assert!(err.contains("--yes"), "{err}");
    let notes = app.set_guarded("csql.record_type", "lead", true).await.unwrap();
    assert!(notes.iter().any(|n| n.contains("lead statuses")), "{notes:?}");
    assert_eq!(stages(app.sandbox.cs_config("opportunity").await.unwrap())[0], "Prospecting");
    app.cleanup().await;
}

/// Waits until the applier has finished a batch published by hand (the
/// producer never counted it, so `settle` cannot know of it), then settles.
async fn applied(app: &TestApp, batch: &ApplyBatch) {
    let ids: Vec<Uuid> = batch.csqls.iter().map(|c| c.command_id).collect();
    for _ in 0..600 {
        let done = crmsync_store::audit::finished(&app.pool, "default", "apply", &ids).await.unwrap();
        if done.len() == ids.len() {
            app.settle().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the applier did not finish the batch within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_csql_commands_leave_one_crm_record() {
    let mut app = with_cs().await;
    app.set_guarded("csql.target", "crm", false).await.unwrap();
    let (csm, _) = app.cs_user("Redo CSM", CsUserType::Csm, Some(true)).await;
    app.start_pipeline(1, 2);
    let q = app.create_csql(LEAD, csm, None, &borrowed(&lead_values("Twice"))).await;
    app.settle().await;
    let first = one_record(&app, LEAD, q).await;

    // The same decision delivered again, twice at once to two appliers, and
    // once more after the link (the applier's commit point) was lost, as if
    // an applier died between writing the CRM and saving the link.
    let settings = crmsync_store::connections::load(&app.pool, "default").await.unwrap();
    let factory = crmsync_sandbox::SandboxFactory::new(app.pool.clone());
    let cs = factory.systems("default", &settings).await.unwrap().cs.unwrap();
    let record = cs.csqls_by_id(LEAD, &[q]).await.unwrap().pop().unwrap();
    let batch = |record| ApplyBatch {
        v: MESSAGE_VERSION,
        batch_id: Uuid::new_v4(),
        connection_id: "default".into(),
        lane: Lane::Immediate,
        commands: vec![],
        mirrors: vec![],
        csqls: vec![CsqlCommand {
            command_id: Uuid::new_v4(),
            detected_at: chrono::Utc::now(),
            record,
            decision: CsqlOutcome::Sync { act_as: None, owner: None, created_by: "Redo CSM".into() },
            trace: None,
        }],
    };
    let again = batch(record.clone());
    app.publish_raw(Stage::Apply, Lane::Immediate, messages::encode(&again)).await;
    app.publish_raw(Stage::Apply, Lane::Immediate, messages::encode(&again)).await;
    applied(&app, &again).await;
    assert_eq!(one_record(&app, LEAD, q).await, first, "a redelivery changes nothing");

    sqlx::query("DELETE FROM csql_links").execute(&app.pool).await.unwrap();
    let retried = batch(record);
    app.publish_raw(Stage::Apply, Lane::Immediate, messages::encode(&retried)).await;
    applied(&app, &retried).await;
    let after = one_record(&app, LEAD, q).await;
    assert_eq!(after["id"], first["id"], "the retried write found the record the first one made");
    // The two messages of this test, by their commands: the pipeline's own
    // changes (the CS platform's status write-backs, detected again) may be
    // audited around them, unchanged, at any time.
    let ids = [again.csqls[0].command_id, retried.csqls[0].command_id];
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log WHERE change_id = ANY($1) AND stage = 'apply' ORDER BY at")
        .bind(&ids[..])
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(actions, ["csql_unchanged", "csql_updated"], "{actions:?}");
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE source_object = 'csql_lead' AND stage = 'apply' AND action = 'csql_created'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(created, 1, "one create, whatever was delivered again");
    app.cleanup().await;
}
