//! What the engine's schema keeps and what it leaves out for speed:
//! deleting a connection still takes its identities and audit log with it
//! once their foreign keys are gone (migration 0010), and the payload
//! columns get no planner statistics while the keys the tiers look up by
//! keep theirs (migration 0009 and the sandbox's 0009); and the audit log's
//! running tallies (0012) count what the log holds, each change once, and
//! keep their counts when old minutes are folded.

use chrono::Utc;
use crmsync_domain::matching::{IdentityPatch, IdentityStatus};
use crmsync_domain::merge::{IdentityFields, Side};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_store::audit::{self, AuditEntry, LaneTally};
use crmsync_store::connections;
use crmsync_store::identities::{self, NewIdentity};
use crmsync_tests::{TestApp, audit_entry as entry};
use serde_json::json;
use uuid::Uuid;

/// One identity and one audit entry of `connection`, by email.
async fn person(app: &TestApp, connection: &str, email: &str) {
    let mut fields = IdentityFields::default();
    fields.wrote(Side::Ma, "email", Utc::now(), json!(email));
    let patch = IdentityPatch { status: Some(IdentityStatus::PendingAssignment), ..IdentityPatch::default() };
    let id = Uuid::now_v7();
    let new = NewIdentity { id, change_id: Uuid::now_v7(), patch: &patch, email: Some(email), fields: &fields, fence: 1 };
    assert_eq!(identities::insert_many(&app.pool, connection, &[new]).await.unwrap().len(), 1);
    let entry = AuditEntry { identity_id: Some(id), action: "created".into(), ..entry(Uuid::now_v7(), "match", "batch") };
    audit::insert_many(&app.pool, connection, &[entry]).await.unwrap();
}

/// A connection's identities, audit entries and finished changes as tallied.
async fn rows_of(app: &TestApp, connection: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM identities WHERE connection_id = $1), (SELECT count(*) FROM audit_log WHERE connection_id = $1), \
                (SELECT coalesce(sum(finished), 0)::bigint FROM change_tallies WHERE connection_id = $1)",
    )
    .bind(connection)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_connection_takes_its_identities_and_audit_log_with_it() {
    let app = TestApp::spawn().await;
    connections::save(&app.pool, "leaving", &ConnectionSettings::default()).await.unwrap();
    person(&app, "leaving", "gone@schema.example").await;
    person(&app, "leaving", "gone-too@schema.example").await;
    person(&app, "default", "stays@schema.example").await;
    assert_eq!(rows_of(&app, "leaving").await, (2, 2, 2));

    sqlx::query("DELETE FROM connections WHERE id = 'leaving'").execute(&app.pool).await.unwrap();
    assert_eq!(rows_of(&app, "leaving").await, (0, 0, 0), "the connection's rows went with it");
    assert_eq!(rows_of(&app, "default").await, (1, 1, 1), "another connection's rows stay");
}

/// The columns of `table` that have statistics after an ANALYZE.
async fn analyzed_columns(app: &TestApp, schema: &str, table: &str) -> Vec<String> {
    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {schema}.{table}"))).execute(&app.pool).await.unwrap();
    sqlx::query_scalar("SELECT attname::text FROM pg_stats WHERE schemaname = $1 AND tablename = $2 ORDER BY attname")
        .bind(schema)
        .bind(table)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_columns_get_no_planner_statistics_and_keys_keep_theirs() {
    let app = TestApp::spawn().await;
    person(&app, "default", "one@schema.example").await;
    person(&app, "default", "two@schema.example").await;
    app.create_lead(&[("LastName", "Stats"), ("Company", "Co"), ("Email", "lead@schema.example")]).await;

    let identities = analyzed_columns(&app, "public", "identities").await;
    assert!(identities.contains(&"email".to_owned()) && identities.contains(&"connection_id".to_owned()), "{identities:?}");
    assert!(!identities.contains(&"fields".to_owned()) && !identities.contains(&"fields_text".to_owned()), "{identities:?}");
    let audit = analyzed_columns(&app, "public", "audit_log").await;
    assert!(audit.contains(&"change_id".to_owned()), "{audit:?}");
    assert!(!audit.contains(&"writes".to_owned()) && !audit.contains(&"detail".to_owned()), "{audit:?}");
    let leads = analyzed_columns(&app, "crm", "leads").await;
    assert!(leads.contains(&"email".to_owned()), "{leads:?}");
    assert!(!leads.contains(&"field_stamps".to_owned()), "{leads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_tallies_count_each_finished_change_once_and_keep_their_counts_when_folded() {
    let app = TestApp::spawn().await;
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let pool = &app.pool;
    audit::insert_many(pool, "default", &[entry(a, "apply", "batch"), entry(b, "match", "batch"), entry(c, "apply", "immediate")])
        .await
        .unwrap();
    // A redelivered entry, and a change finished by the matcher audited
    // again by the applier: neither is a newly finished change, and only
    // the second is a new apply entry.
    audit::insert_many(pool, "default", &[entry(a, "apply", "batch"), entry(b, "apply", "batch")]).await.unwrap();

    let batch = LaneTally { finished: 2, applied: 2, applied_last_hour: 2 };
    assert_eq!(audit::lane_tally(pool, "default", "batch").await.unwrap(), batch);
    assert_eq!(audit::lane_tally(pool, "default", "immediate").await.unwrap(), LaneTally { finished: 1, applied: 1, applied_last_hour: 1 });
    let in_log: i64 = sqlx::query_scalar("SELECT count(DISTINCT change_id) FROM audit_log WHERE connection_id = 'default'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((audit::finished_changes(pool, "default").await.unwrap(), in_log), (3, 3), "the tallies count what the log holds");

    // Three hours later the minutes fold into one row per lane, twice over
    // (two appliers folding), and only the last hour's use is gone.
    sqlx::query("UPDATE change_tallies SET minute = minute - interval '3 hours'").execute(pool).await.unwrap();
    audit::fold_tallies(pool).await.unwrap();
    audit::fold_tallies(pool).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM change_tallies").fetch_one(pool).await.unwrap();
    assert_eq!(rows, 2, "one row per lane");
    assert_eq!(audit::lane_tally(pool, "default", "batch").await.unwrap(), LaneTally { applied_last_hour: 0, ..batch });
    assert_eq!(audit::finished_changes(pool, "default").await.unwrap(), 3);

    // New entries add to the folded counts, written as this release does
    // or as the previous one did (a rolling update), without the tallies.
    audit::insert_many(pool, "default", &[entry(Uuid::now_v7(), "apply", "batch")]).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_log (connection_id, change_id, stage, source_side, source_object, source_id, action, lane) \
         VALUES ('default', $1, 'apply', 'ma', 'prospect', '2', 'updated', 'batch')",
    )
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(audit::lane_tally(pool, "default", "batch").await.unwrap(), LaneTally { finished: 4, applied: 4, applied_last_hour: 2 });
}
