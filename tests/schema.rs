//! What the engine's schema keeps and what it leaves out for speed:
//! deleting a connection still takes its identities and audit log with it
//! once their foreign keys are gone (migration 0010), and the payload
//! columns get no planner statistics while the keys the tiers look up by
//! keep theirs (migration 0009 and the sandbox's 0009).

use chrono::Utc;
use crmsync_domain::matching::{IdentityPatch, IdentityStatus};
use crmsync_domain::merge::{IdentityFields, Side};
use crmsync_domain::settings::ConnectionSettings;
use crmsync_store::audit::{self, AuditEntry};
use crmsync_store::connections;
use crmsync_store::identities::{self, NewIdentity};
use crmsync_tests::TestApp;
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
    let entry = AuditEntry {
        change_id: Uuid::now_v7(),
        stage: "match",
        identity_id: Some(id),
        source_side: "ma",
        source_object: "prospect".into(),
        source_id: "1".into(),
        action: "created".into(),
        writes: json!({}),
        detail: None,
        lane: "batch",
    };
    audit::insert_many(&app.pool, connection, &[entry]).await.unwrap();
}

async fn rows_of(app: &TestApp, connection: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM identities WHERE connection_id = $1), (SELECT count(*) FROM audit_log WHERE connection_id = $1)",
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
    assert_eq!(rows_of(&app, "leaving").await, (2, 2));

    sqlx::query("DELETE FROM connections WHERE id = 'leaving'").execute(&app.pool).await.unwrap();
    assert_eq!(rows_of(&app, "leaving").await, (0, 0), "the connection's rows went with it");
    assert_eq!(rows_of(&app, "default").await, (1, 1), "another connection's rows stay");
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
