//! The sandbox CRM and MA as write APIs: a call's records are written
//! together (one statement locks them, one updates them), and each record
//! still gets its own outcome, as with `allOrNone=false`: written, fenced,
//! refused, or not found. A record the database itself refuses rejects only
//! that record.

use chrono::{Duration, Utc};
use crmsync_connector::{CrmApi, CrmTarget, CrmWrite, FieldValues, MaApi, ProspectTarget, ProspectWrite, WriteOutcome};
use crmsync_domain::{CrmId, CrmObject};
use crmsync_sandbox::{SandboxCrm, SandboxMa};
use crmsync_tests::TestApp;
use serde_json::{Value, json};

fn fields(values: &[(&str, &str)]) -> FieldValues {
    values.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect()
}

fn lead_write(target: CrmTarget, title: &str, fence: Option<i64>) -> CrmWrite {
    CrmWrite { target, fields: fields(&[("Title", title)]), owner_id: None, act_as: None, fence, unmodified_since: None }
}

fn crm_id(id: &str) -> CrmTarget {
    CrmTarget::Id(CrmId::parse(id).unwrap())
}

fn prospect_write(id: i64, title: &str, fence: Option<i64>) -> ProspectWrite {
    ProspectWrite { target: ProspectTarget::Id(id), fields: fields(&[("jobTitle", title)]), crm_link: None, fence, unmodified_since: None }
}

fn written(outcome: &WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Written { .. })
}

async fn column(app: &TestApp, table: &str, id: &str, column: &str) -> Value {
    let sql = format!("SELECT to_jsonb(t) -> '{column}' FROM {table} t WHERE id::text = $1");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lead_of_a_call_gets_its_own_outcome() {
    let app = TestApp::spawn().await;
    let crm = SandboxCrm::connect(app.pool.clone(), "default").await.unwrap();
    let mut leads = Vec::new();
    for n in 0..6 {
        leads.push(app.create_lead(&[("LastName", &format!("Lead {n}")), ("Company", "Acme")]).await);
    }
    // Lead 1 is in the recycle bin, lead 2 was written with a newer token,
    // lead 3 changed after the writer read it, lead 5 was converted.
    sqlx::query("UPDATE crm.leads SET is_deleted = true WHERE id = $1").bind(&leads[1]).execute(&app.pool).await.unwrap();
    sqlx::query("UPDATE crm.leads SET is_converted = true WHERE id = $1").bind(&leads[5]).execute(&app.pool).await.unwrap();
    sqlx::query("UPDATE crm.leads SET sync_fence = 100 WHERE id = $1").bind(&leads[2]).execute(&app.pool).await.unwrap();
    let mut stale = lead_write(crm_id(&leads[3]), "Stale", Some(7));
    stale.unmodified_since = Some(Utc::now() - Duration::hours(1));
    // A well-formed id no lead has.
    let missing = CrmId::from_15("00Q000000000ZZZ").unwrap();

    let writes = vec![
        lead_write(crm_id(&leads[0]), "Written", Some(7)),
        lead_write(crm_id(&leads[1]), "Deleted", Some(7)),
        lead_write(crm_id(&leads[2]), "Fenced", Some(7)),
        stale,
        lead_write(CrmTarget::Id(missing), "Missing", Some(7)),
        {
            let mut create = lead_write(CrmTarget::ExternalId("ext-1".into()), "Created", Some(7));
            create.fields.extend(fields(&[("LastName", "New"), ("Company", "Acme")]));
            create
        },
        lead_write(crm_id(&leads[4]), "Also written", None),
        lead_write(crm_id(&leads[5]), "Converted", Some(7)),
    ];
    let out = crm.write_people(CrmObject::Lead, &writes).await.unwrap();
    assert_eq!(out.len(), writes.len());
    assert!(matches!(&out[0], WriteOutcome::Written { id, created: false, .. } if *id == leads[0]), "{out:?}");
    assert!(matches!(&out[1], WriteOutcome::Rejected { code, .. } if code == "ENTITY_IS_DELETED"), "{out:?}");
    assert_eq!(out[2], WriteOutcome::Fenced, "{out:?}");
    assert_eq!(out[3], WriteOutcome::Fenced, "a row changed after the writer read it is refused: {out:?}");
    assert_eq!(out[4], WriteOutcome::NotFound, "{out:?}");
    assert!(matches!(&out[5], WriteOutcome::Written { created: true, .. }), "{out:?}");
    assert!(written(&out[6]), "{out:?}");
    assert!(matches!(&out[7], WriteOutcome::Rejected { code, .. } if code == "CANNOT_UPDATE_CONVERTED_LEAD"), "{out:?}");

    assert_eq!(column(&app, "crm.leads", &leads[0], "title").await, "Written");
    assert_eq!(column(&app, "crm.leads", &leads[0], "sync_fence").await, 7, "the write moved the fence");
    assert_eq!(column(&app, "crm.leads", &leads[2], "title").await, Value::Null, "the fenced lead kept its value");
    assert_eq!(column(&app, "crm.leads", &leads[2], "sync_fence").await, 100);
    assert_eq!(column(&app, "crm.leads", &leads[3], "title").await, Value::Null);
    assert_eq!(column(&app, "crm.leads", &leads[4], "title").await, "Also written");
    assert_eq!(column(&app, "crm.leads", &leads[4], "sync_fence").await, 0, "no token leaves the fence where it was");
    let created: Value =
        sqlx::query_scalar("SELECT to_jsonb(t) FROM crm.leads t WHERE crmsync_id = 'ext-1'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(created["title"], "Created");
    // Each written field carries its own stamp, as with a write of one record.
    assert_eq!(column(&app, "crm.leads", &leads[0], "field_stamps").await["title"]["by"], crm.integration_user());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_is_the_only_one_rejected() {
    let app = TestApp::spawn().await;
    let crm = SandboxCrm::connect(app.pool.clone(), "default").await.unwrap();
    let ma = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    // A constraint the API's own checks do not know: only the database
    // refuses this value, and it refuses the whole statement.
    sqlx::query("ALTER TABLE crm.leads ADD CONSTRAINT no_refused CHECK (title IS DISTINCT FROM 'refused')")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE ma.prospects ADD CONSTRAINT no_refused CHECK (job_title IS DISTINCT FROM 'refused')")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut leads = Vec::new();
    let mut prospects = Vec::new();
    for n in 0..3 {
        leads.push(app.create_lead(&[("LastName", &format!("Lead {n}")), ("Company", "Acme")]).await);
        prospects.push(app.create_prospect(&[("email", &format!("p{n}@refused.example"))]).await);
    }

    let titles = ["first", "refused", "third"];
    let lead_writes: Vec<CrmWrite> = leads.iter().zip(titles).map(|(id, t)| lead_write(crm_id(id), t, Some(3))).collect();
    let out = crm.write_people(CrmObject::Lead, &lead_writes).await.unwrap();
    assert!(written(&out[0]) && written(&out[2]), "{out:?}");
    assert!(
        matches!(&out[1], WriteOutcome::Rejected { code, message } if code == "FIELD_INTEGRITY_EXCEPTION" && message.contains("no_refused")),
        "{out:?}"
    );
    assert_eq!(column(&app, "crm.leads", &leads[0], "title").await, "first");
    assert_eq!(column(&app, "crm.leads", &leads[1], "title").await, Value::Null);
    assert_eq!(column(&app, "crm.leads", &leads[2], "title").await, "third");

    let prospect_writes: Vec<ProspectWrite> = prospects.iter().zip(titles).map(|(id, t)| prospect_write(*id, t, Some(3))).collect();
    let out = ma.write_prospects(&prospect_writes).await.unwrap();
    assert!(written(&out[0]) && written(&out[2]), "{out:?}");
    assert!(matches!(&out[1], WriteOutcome::Rejected { code, .. } if code == "FIELD_INTEGRITY_EXCEPTION"), "{out:?}");
    assert_eq!(column(&app, "ma.prospects", &prospects[0].to_string(), "job_title").await, "first");
    assert_eq!(column(&app, "ma.prospects", &prospects[1].to_string(), "job_title").await, Value::Null);
    assert_eq!(column(&app, "ma.prospects", &prospects[2].to_string(), "sync_fence").await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prospect_named_twice_in_a_call_sees_its_first_write() {
    let app = TestApp::spawn().await;
    let ma = SandboxMa::connect(app.pool.clone(), "default").await.unwrap();
    let id = app.create_prospect(&[("email", "twice@example.com")]).await;
    let other = app.create_prospect(&[("email", "other@example.com")]).await;
    // The second write of the same prospect carries an older token: it is
    // fenced by the first, as two calls one after the other would be.
    let writes = vec![prospect_write(id, "newer", Some(9)), prospect_write(other, "other", Some(9)), prospect_write(id, "older", Some(8))];
    let out = ma.write_prospects(&writes).await.unwrap();
    assert!(written(&out[0]) && written(&out[1]), "{out:?}");
    assert_eq!(out[2], WriteOutcome::Fenced, "{out:?}");
    assert_eq!(column(&app, "ma.prospects", &id.to_string(), "job_title").await, "newer");
    assert_eq!(
        ma.write_prospects(&[prospect_write(i64::MAX, "nobody", None)]).await.unwrap(),
        vec![WriteOutcome::NotFound],
        "an id no prospect has"
    );
    app.cleanup().await;
}

/// A pool whose sessions give up waiting for a row lock after 200 ms.
async fn impatient_pool(app: &TestApp) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with((*app.pool.connect_options()).clone().options([("lock_timeout", "200ms")]))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_is_too_busy_to_write_fails_the_call_as_transient() {
    let app = TestApp::spawn().await;
    let lead = app.create_lead(&[("LastName", "Busy"), ("Company", "Acme")]).await;
    let other = app.create_lead(&[("LastName", "Free"), ("Company", "Acme")]).await;
    // A user's open transaction holds the lead; the sandbox gives up waiting
    // after 200 ms, as a database under a deadlock or timeout would.
    let crm = SandboxCrm::connect(impatient_pool(&app).await, "default").await.unwrap();
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM crm.leads WHERE id = $1 FOR UPDATE").bind(&lead).execute(&mut *holder).await.unwrap();

    // Named twice, the lead goes through the one-record-at-a-time path.
    let writes = vec![
        lead_write(crm_id(&other), "free", Some(4)),
        lead_write(crm_id(&lead), "first", Some(4)),
        lead_write(crm_id(&lead), "again", Some(5)),
    ];
    let err = crm.write_people(CrmObject::Lead, &writes).await.unwrap_err();
    assert!(matches!(err, crmsync_connector::ConnectorError::Transient(_)), "{err:?}");
    // Named once, it goes through the statement that locks the call's rows
    // together: the same.
    let err = crm.write_people(CrmObject::Lead, &writes[..2]).await.unwrap_err();
    assert!(matches!(err, crmsync_connector::ConnectorError::Transient(_)), "{err:?}");
    // The MA updates without locking first: its one update statement meets
    // the lock, and the call fails as transient without trying row by row.
    let prospect = app.create_prospect(&[("email", "busy@example.com")]).await;
    let ma = SandboxMa::connect(impatient_pool(&app).await, "default").await.unwrap();
    let mut prospect_holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM ma.prospects WHERE id = $1 FOR UPDATE").bind(prospect).execute(&mut *prospect_holder).await.unwrap();
    let err = ma.write_prospects(&[prospect_write(prospect, "busy", Some(4))]).await.unwrap_err();
    assert!(matches!(err, crmsync_connector::ConnectorError::Transient(_)), "{err:?}");
    prospect_holder.rollback().await.unwrap();
    holder.rollback().await.unwrap();
    assert_eq!(column(&app, "crm.leads", &other, "title").await, Value::Null, "the failed call wrote nothing");

    // Once the lock is gone the same call goes through.
    let out = crm.write_people(CrmObject::Lead, &writes).await.unwrap();
    assert!(written(&out[0]) && written(&out[1]) && written(&out[2]), "{out:?}");
    assert_eq!(column(&app, "crm.leads", &lead, "title").await, "again");
    app.cleanup().await;
}

/// The row triggers that track changes, compiled per table (sandbox
/// migrations 0006 and 0008): an insert stamps the columns it gives a value, an update
/// the columns it changes, and every write moves the modstamp and the
/// transaction id the change feeds page on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_tracking_stamps_only_the_columns_a_write_gives_or_changes() {
    let app = TestApp::spawn().await;
    // No table is left on the generic, name-by-name trigger function.
    let generic: Vec<String> = sqlx::query_scalar(
        "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'track' AND tgfoid = 'sandbox.track_change'::regproc",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(generic.is_empty(), "still on the generic trigger: {generic:?}");

    let (id, xid): (String, String) = sqlx::query_as(
        "INSERT INTO crm.leads (last_name, company, last_modified_by) VALUES ('Ito', 'Acme', 'user-a') RETURNING id, mod_xid::text",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let stamps = column(&app, "crm.leads", &id, "field_stamps").await;
    let stamped = |s: &Value| s.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    // Defaults count as given values (status, the opt-out flag), as before.
    for key in ["last_name", "company", "status", "has_opted_out_of_email", "is_converted", "is_deleted"] {
        assert_eq!(stamps[key]["by"], "user-a", "{key} in {stamps}");
    }
    assert!(stamps.get("title").is_none() && stamps.get("email").is_none(), "null columns are not stamped: {stamps}");
    assert_eq!(column(&app, "crm.leads", &id, "created_by").await, "user-a");
    let first_at = stamps["company"]["at"].clone();

    // Company is written with the value it has: not a change.
    let xid2: String = sqlx::query_scalar(
        "UPDATE crm.leads SET title = 'CTO', company = 'Acme', last_modified_by = 'user-b' WHERE id = $1 RETURNING mod_xid::text",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let after = column(&app, "crm.leads", &id, "field_stamps").await;
    assert_eq!(after["title"]["by"], "user-b");
    assert_ne!(after["title"]["at"], first_at);
    assert_eq!(after["company"], stamps["company"], "an unchanged column keeps its stamp");
    assert_eq!(after["last_name"], stamps["last_name"]);
    assert_eq!(stamped(&after).len(), stamped(&stamps).len() + 1);
    assert_eq!(column(&app, "crm.leads", &id, "created_by").await, "user-a");
    assert!(xid2.parse::<u64>().unwrap() > xid.parse::<u64>().unwrap(), "the change feed sees the update");
    assert_eq!(column(&app, "crm.leads", &id, "modstamp").await, after["title"]["at"]);

    // Several columns changed by one write share one stamp (migration 0008
    // builds them in one step), and the others keep theirs.
    sqlx::query("UPDATE crm.leads SET first_name = 'Aki', city = 'Kobe', phone = '+81', last_modified_by = 'user-c' WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let third = column(&app, "crm.leads", &id, "field_stamps").await;
    for key in ["first_name", "city", "phone"] {
        assert_eq!(third[key], third["city"], "{key} in {third}");
    }
    assert_eq!(third["city"]["by"], "user-c");
    assert_ne!(third["city"]["at"], after["title"]["at"]);
    assert_eq!(third["title"], after["title"]);
    assert_eq!(stamped(&third).len(), stamped(&after).len() + 3);

    // A write that changes nothing stamps nothing but still moves the row.
    sqlx::query("UPDATE crm.leads SET city = 'Kobe' WHERE id = $1").bind(&id).execute(&app.pool).await.unwrap();
    assert_eq!(column(&app, "crm.leads", &id, "field_stamps").await, third);
    assert_ne!(column(&app, "crm.leads", &id, "modstamp").await, third["city"]["at"]);

    // Every tracked table's trigger names its columns, read back from the
    // functions 0006 compiled, so the next recompilation can start there.
    let columns: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT tgrelid::regclass::text, (string_to_array(encode(tgargs, 'escape'), '\\000'))[1:tgnargs] \
         FROM pg_trigger WHERE tgname = 'track' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(columns.len() >= 12, "{columns:?}");
    assert!(columns.iter().all(|(_, cols)| !cols.is_empty()), "{columns:?}");
    let leads = &columns.iter().find(|(t, _)| t == "crm.leads").unwrap().1;
    assert_eq!(leads.len(), 17, "{leads:?}");
    assert_eq!((leads[0].as_str(), leads[15].as_str(), leads[16].as_str()), ("first_name", "is_deleted", "preferred_language"));
}
