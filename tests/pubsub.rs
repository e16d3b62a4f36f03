//! `crmsync sandbox serve` as Salesforce's Pub/Sub API: change events of
//! the sandbox CRM, subscribed to with a gRPC client, decoded from Avro with
//! the schemas the server hands out; the same events read by a client that
//! is not ours (Python, generated from Salesforce's published proto); and
//! the engine's Salesforce connector living on them (`engine`, `fallbacks`).

use std::time::Duration;

use crmsync_infra::CancellationToken;
use crmsync_pubsub::proto::{FetchRequest, ReplayPreset};
use crmsync_pubsub::{error_codes, metadata, replay_id};
use crmsync_sandbox::schema;
use crmsync_sandbox_server::{CdcSettings, Limits};
use crmsync_tests::TestApp;
use crmsync_tests::pubsub::{Decoded, PubSub, Subscription};
use serde_json::{Value, json};
use tonic::Code;

// The engine on change events, through the real tiers.
#[path = "pubsub/engine.rs"]
mod engine;
#[path = "pubsub/fallbacks.rs"]
mod fallbacks;

const WAIT: Duration = Duration::from_secs(10);
const LEADS: &str = "/data/LeadChangeEvent";

/// A test app serving its sandbox over HTTP and Pub/Sub, and a logged-in client.
async fn served(limits: Limits) -> (TestApp, CancellationToken, String, PubSub) {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let (url, pubsub_url) = app.serve_sandbox_pubsub(limits, stop.clone()).await;
    let client = PubSub::connect(&url, &pubsub_url).await;
    (app, stop, url, client)
}

/// Short keepalives, so idle streams answer within a test's patience.
fn quick() -> Limits {
    Limits { pubsub_keepalive_ms: 300, ..Limits::default() }
}

async fn decode_all(client: &mut PubSub, sub: &mut Subscription, n: usize) -> Vec<Decoded> {
    let mut out = Vec::new();
    for e in sub.events(n, WAIT).await {
        out.push(client.decode(&e).await);
    }
    out
}

async fn admin(url: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new().request(method, format!("{url}/sandbox-admin/{path}")).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn limits(url: &str) -> Limits {
    reqwest::get(format!("{url}/sandbox-admin/limits")).await.unwrap().json().await.unwrap()
}

fn error_code(status: &tonic::Status) -> &str {
    status.metadata().get(metadata::ERROR_CODE).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn creates_updates_deletes_and_undeletes_are_published_with_salesforces_headers() {
    let (app, stop, _url, mut client) = served(quick()).await;
    let mut sub = client.subscribe(LEADS, ReplayPreset::Latest, vec![], 10).await.unwrap();
    let (_, crm_admin) = app.admins().await;

    let id = app.create_lead(&[("FirstName", "Ada"), ("LastName", "Lovelace"), ("Company", "Engines"), ("City", "London")]).await;
    app.update(&schema::LEAD, &id, &[("Title", "Analyst"), ("FirstName", "")]).await;
    app.sandbox.set_deleted(&schema::LEAD, &id, true).await.unwrap();
    app.sandbox.set_deleted(&schema::LEAD, &id, false).await.unwrap();
    let events = decode_all(&mut client, &mut sub, 4).await;

    let types: Vec<&str> = events.iter().map(Decoded::change_type).collect();
    assert_eq!(types, ["CREATE", "UPDATE", "DELETE", "UNDELETE"]);
    for e in &events {
        assert_eq!(e.header("entityName"), "Lead");
        assert_eq!(e.record_ids(), [id.as_str()]);
        assert_eq!(e.header("commitUser"), crm_admin.as_str());
        // Made by hand, as in the UI: no API origin.
        assert_eq!(e.header("changeOrigin"), "");
        assert_eq!(e.header("sequenceNumber"), 1);
        assert_eq!(e.header("transactionKey").as_str().unwrap().len(), 36);
    }
    let replay_ids: Vec<i64> = events.iter().map(|e| e.replay_id).collect();
    assert!(replay_ids.windows(2).all(|w| w[0] < w[1]), "replay ids grow: {replay_ids:?}");
    let commits: Vec<i64> = events.iter().map(|e| e.header("commitNumber").as_i64().unwrap()).collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "one commit each: {commits:?}");

    let created = &events[0];
    assert_eq!(created.json["Name"], json!({"Salutation": null, "FirstName": "Ada", "LastName": "Lovelace"}));
    assert_eq!(created.json["Address"]["City"], "London");
    assert_eq!(created.json["Company"], "Engines");
    assert_eq!(created.json["Status"], "Open - Not Contacted");
    assert_eq!(created.json["CreatedById"], crm_admin.as_str());
    assert!(created.json["CreatedDate"].as_i64().unwrap() > 1_700_000_000_000, "epoch milliseconds");
    assert!(created.changed.is_empty() && created.nulled.is_empty(), "a create names no changed fields");

    let updated = &events[1];
    assert_eq!(updated.changed, ["Title", "LastModifiedDate", "Name.FirstName"]);
    assert_eq!(updated.nulled, ["Name.FirstName"]);
    assert_eq!(updated.json["Title"], "Analyst");
    assert_eq!(updated.json["Name"], json!({"Salutation": null, "FirstName": null, "LastName": null}));
    assert!(updated.json["Company"].is_null(), "unchanged fields are null");
    assert!(updated.json["LastModifiedDate"].as_i64().unwrap() >= created.json["LastModifiedDate"].as_i64().unwrap());

    assert!(events[2].values().is_empty(), "a delete carries no values: {:?}", events[2].values());
    let undeleted = &events[3];
    assert_eq!(undeleted.json["Title"], "Analyst");
    assert_eq!(undeleted.json["Name"]["LastName"], "Lovelace");
    assert!(undeleted.changed.is_empty());
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn a_rest_write_names_its_client_in_the_change_origin() {
    let (app, stop, url, mut client) = served(quick()).await;
    let mut sub = client.subscribe(LEADS, ReplayPreset::Latest, vec![], 5).await.unwrap();
    let token = TestApp::sandbox_token(&url).await;
    let rest = |path: &str| format!("{url}/services/data/v60.0{path}");
    let http = reqwest::Client::new();
    let created: Value = http
        .post(rest("/composite/sobjects"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("Sforce-Call-Options", "client=crmsync-engine")
        .json(&json!({"allOrNone": false, "records": [{"attributes": {"type": "Lead"}, "LastName": "Hopper", "Company": "Navy"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created[0]["id"].as_str().unwrap().to_owned();
    // Without a client id, the API alone.
    http.delete(rest(&format!("/composite/sobjects?ids={id}")))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let events = decode_all(&mut client, &mut sub, 2).await;
    assert_eq!(events[0].change_type(), "CREATE");
    assert_eq!(events[0].header("changeOrigin"), "com/salesforce/api/rest/60.0;client=crmsync-engine");
    let integration: String =
        sqlx::query_scalar("SELECT id FROM crm.users WHERE tenant = 'default' AND is_integration").fetch_one(&app.pool).await.unwrap();
    assert_eq!(events[0].header("commitUser"), integration.as_str());
    assert_eq!(events[1].change_type(), "DELETE");
    assert_eq!(events[1].header("changeOrigin"), "com/salesforce/api/rest/60.0");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn a_subscriber_gets_no_more_events_than_it_asked_for() {
    let (app, stop, _url, mut client) = served(quick()).await;
    for i in 0..5 {
        app.create_lead(&[("LastName", &format!("Flow {i}")), ("Company", "Acme")]).await;
    }
    let mut sub = client.subscribe(LEADS, ReplayPreset::Earliest, vec![], 2).await.unwrap();
    let first = sub.next(WAIT).await.unwrap().unwrap();
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.pending_num_requested, 0);
    assert_eq!(first.latest_replay_id, first.events[1].replay_id, "where the subscriber stands");
    // Nothing more comes but keepalives: empty, with the latest replay id.
    for _ in 0..2 {
        let idle = sub.next(WAIT).await.unwrap().unwrap();
        assert!(idle.events.is_empty(), "only 2 were requested");
        assert_eq!(idle.latest_replay_id, first.latest_replay_id);
        assert_eq!(idle.pending_num_requested, 0);
    }
    // Requests add up: 1 + 10 more, of which 3 are there.
    sub.request(1).await;
    sub.request(10).await;
    let mut got = Vec::new();
    let mut pending = 0;
    while got.len() < 3 {
        let r = sub.next(WAIT).await.unwrap().unwrap();
        pending = r.pending_num_requested;
        got.extend(r.events);
    }
    assert_eq!(got.len(), 3);
    assert_eq!(pending, 8, "11 asked for, 3 delivered");
    // A 6th lead arrives on the open request at once.
    app.create_lead(&[("LastName", "Late"), ("Company", "Acme")]).await;
    let late = sub.events(1, WAIT).await;
    assert_eq!(client.decode(&late[0]).await.json["Name"]["LastName"], "Late");
    // A request for no events is refused, as Salesforce does.
    sub.send(FetchRequest { num_requested: 0, ..Default::default() }).await;
    let refused = loop {
        match sub.next(WAIT).await.unwrap() {
            Ok(keepalive) => assert!(keepalive.events.is_empty()),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(error_code(&refused), error_codes::REQUESTED_EVENTS_INVALID);
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn resuming_after_a_replay_id_misses_no_transaction_that_commits_late() {
    let (app, stop, _url, mut client) = served(quick()).await;
    let mut live = client.subscribe(LEADS, ReplayPreset::Latest, vec![], 10).await.unwrap();
    // A starts first and writes, B commits, then A commits.
    let mut a = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO crm.leads (tenant, last_name, company, last_modified_by) VALUES ('default', 'Early', 'A', 'sql')")
        .execute(&mut *a)
        .await
        .unwrap();
    app.create_lead(&[("LastName", "Quick"), ("Company", "B")]).await;
    let b = client.decode(&live.events(1, WAIT).await[0]).await;
    assert_eq!(b.json["Name"]["LastName"], "Quick", "B is published while A still runs");
    a.commit().await.unwrap();
    let a_event = client.decode(&live.events(1, WAIT).await[0]).await;
    assert_eq!(a_event.json["Name"]["LastName"], "Early");
    assert!(a_event.replay_id > b.replay_id, "replay ids follow commit order");

    // A subscriber that stored B's replay id resumes and still gets A.
    let mut resumed = client.subscribe(LEADS, ReplayPreset::Custom, replay_id::encode(b.replay_id), 10).await.unwrap();
    let after_b = client.decode(&resumed.events(1, WAIT).await[0]).await;
    assert_eq!(after_b.replay_id, a_event.replay_id);
    assert_eq!(after_b.json["Name"]["LastName"], "Early");
    assert!(resumed.next(Duration::from_millis(700)).await.unwrap().unwrap().events.is_empty(), "and nothing twice");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn an_expired_or_unknown_replay_id_is_refused_as_salesforce_refuses_it() {
    let (app, stop, url, mut client) = served(quick()).await;
    let mut sub = client.subscribe(LEADS, ReplayPreset::Latest, vec![], 1).await.unwrap();
    app.create_lead(&[("LastName", "Old"), ("Company", "Acme")]).await;
    let old = client.decode(&sub.events(1, WAIT).await[0]).await.replay_id;
    // Within retention it is a valid place to resume.
    assert!(client.subscribe(LEADS, ReplayPreset::Custom, replay_id::encode(old), 1).await.is_ok());

    let l = limits(&url).await;
    admin(&url, reqwest::Method::PUT, "limits", serde_json::to_value(Limits { cdc_retention_secs: 1, ..l }).unwrap()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let refusal = |r: Result<Subscription, tonic::Status>| r.expect_err("refused");
    for stale in [replay_id::encode(old), replay_id::encode(old + 1_000_000), b"not a replay id".to_vec()] {
        let status = refusal(client.subscribe(LEADS, ReplayPreset::Custom, stale, 1).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(error_code(&status), error_codes::REPLAY_ID_CORRUPTED);
        assert!(status.message().contains("Replay ID validation failed") && status.message().contains("rpcId: "), "{}", status.message());
    }
    let missing = refusal(client.subscribe(LEADS, ReplayPreset::Custom, vec![], 1).await);
    assert_eq!(error_code(&missing), error_codes::REPLAY_ID_MISSING);
    // EARLIEST starts after what expired.
    let mut earliest = client.subscribe(LEADS, ReplayPreset::Earliest, vec![], 5).await.unwrap();
    assert!(earliest.next(Duration::from_millis(700)).await.unwrap().unwrap().events.is_empty());
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn a_used_up_delivery_allocation_ends_the_subscription() {
    let (app, stop, url, mut client) = served(Limits { cdc_delivery_daily: 3, ..quick() }).await;
    for i in 0..5 {
        app.create_lead(&[("LastName", &format!("Busy {i}")), ("Company", "Acme")]).await;
    }
    let mut sub = client.subscribe(LEADS, ReplayPreset::Earliest, vec![], 10).await.unwrap();
    let mut delivered = 0;
    let status = loop {
        match sub.next(WAIT).await.expect("an answer") {
            Ok(r) => delivered += r.events.len(),
            Err(status) => break status,
        }
    };
    assert_eq!(delivered, 3, "the allocation's worth, no more");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&status), error_codes::DELIVERY_LIMIT_EXCEEDED);
    assert!(status.message().starts_with("You have exceeded the event delivery limit for your org."));
    let again = client.subscribe(LEADS, ReplayPreset::Earliest, vec![], 1).await.expect_err("refused at once");
    assert_eq!(error_code(&again), error_codes::DELIVERY_LIMIT_EXCEEDED);
    let l = limits(&url).await;
    assert_eq!((l.cdc_delivered, l.cdc_delivery_daily), (3, 3));
    // Lifting it lets the subscriber resume where it stopped (REST calls were not spent).
    admin(&url, reqwest::Method::PUT, "limits", serde_json::to_value(Limits { cdc_delivery_daily: 100, ..l }).unwrap()).await;
    let mut resumed = client.subscribe(LEADS, ReplayPreset::Earliest, vec![], 10).await.unwrap();
    assert_eq!(resumed.events(5, WAIT).await.len(), 5);
    assert_eq!(limits(&url).await.salesforce_used, 0, "Pub/Sub calls are not REST API calls");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn gap_and_overflow_switches_send_header_only_events() {
    let (app, stop, url, mut client) = served(quick()).await;
    let mut sub = client.subscribe("/data/ChangeEvents", ReplayPreset::Latest, vec![], 20).await.unwrap();
    let settings: CdcSettings = serde_json::from_value(admin(&url, reqwest::Method::POST, "cdc/gaps", json!({"count": 2})).await).unwrap();
    assert_eq!(settings.gaps, 2);
    let ids = [
        app.create_lead(&[("LastName", "Gap 1"), ("Company", "A")]).await,
        app.create_lead(&[("LastName", "Gap 2"), ("Company", "A")]).await,
        app.create_lead(&[("LastName", "Whole"), ("Company", "A")]).await,
    ];
    let events = decode_all(&mut client, &mut sub, 3).await;
    assert_eq!(events.iter().map(Decoded::change_type).collect::<Vec<_>>(), ["GAP_CREATE", "GAP_CREATE", "CREATE"]);
    for (e, id) in events.iter().zip(&ids) {
        assert_eq!(e.record_ids(), [id.as_str()]);
    }
    assert!(events[0].values().is_empty() && events[0].changed.is_empty(), "a gap event is its header");
    assert_eq!(events[2].json["Name"]["LastName"], "Whole");

    // The next transaction overflows: one event per entity, no record ids.
    admin(&url, reqwest::Method::POST, "cdc/overflows", json!({"count": 1})).await;
    let mut tx = app.pool.begin().await.unwrap();
    for sql in [
        "INSERT INTO crm.leads (tenant, last_name, company, last_modified_by) SELECT 'default', 'Bulk ' || g, 'A', 'sql' FROM generate_series(1, 3) g",
        "INSERT INTO crm.contacts (tenant, last_name, last_modified_by) VALUES ('default', 'Bulk contact', 'sql')",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let overflow = decode_all(&mut client, &mut sub, 2).await;
    assert_eq!(
        overflow.iter().map(|e| (e.change_type(), e.header("entityName").as_str().unwrap())).collect::<Vec<_>>(),
        [("GAP_OVERFLOW", "Lead"), ("GAP_OVERFLOW", "Contact")]
    );
    assert!(overflow.iter().all(|e| e.record_ids().is_empty() && e.values().is_empty()));
    assert_eq!(overflow[0].header("transactionKey"), overflow[1].header("transactionKey"));

    // Past the overflow threshold (2 here; 100,000 on Salesforce) a transaction overflows by itself.
    let l = limits(&url).await;
    admin(&url, reqwest::Method::PUT, "limits", serde_json::to_value(Limits { cdc_overflow_threshold: 2, ..l }).unwrap()).await;
    sqlx::query("INSERT INTO crm.leads (tenant, last_name, company, last_modified_by) SELECT 'default', 'Many ' || g, 'A', 'sql' FROM generate_series(1, 4) g")
        .execute(&app.pool)
        .await
        .unwrap();
    let many = decode_all(&mut client, &mut sub, 3).await;
    assert_eq!(many.iter().map(Decoded::change_type).collect::<Vec<_>>(), ["CREATE", "CREATE", "GAP_OVERFLOW"]);
    assert_eq!(many.iter().map(|e| e.header("sequenceNumber").as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn only_selected_entities_publish_change_events() {
    let (app, stop, url, mut client) = served(quick()).await;
    let settings: CdcSettings =
        serde_json::from_value(admin(&url, reqwest::Method::PUT, "cdc/entities", json!({"Lead": false, "Subscription__c": true})).await)
            .unwrap();
    assert_eq!(settings.entities.get("Lead"), Some(&false));
    assert_eq!(settings.entities.get("Contact"), Some(&true));
    let mut sub = client.subscribe("/data/ChangeEvents", ReplayPreset::Latest, vec![], 10).await.unwrap();
    app.create_lead(&[("LastName", "Unseen"), ("Company", "A")]).await;
    app.create(&schema::CONTACT, &[("LastName", "Seen")]).await;
    let custom =
        app.sandbox.create_custom("Subscription__c", &[("Plan__c".into(), "Gold".into()), ("Seats__c".into(), "5".into())]).await.unwrap();
    app.sandbox.create_custom("Unselected__c", &[("X__c".into(), "1".into())]).await.unwrap();
    let events = decode_all(&mut client, &mut sub, 2).await;
    assert_eq!(events.iter().map(|e| e.header("entityName").as_str().unwrap()).collect::<Vec<_>>(), ["Contact", "Subscription__c"]);
    assert_eq!(events[1].record_ids(), [custom.as_str()]);
    assert_eq!(events[1].json["Plan__c"], "Gold");
    assert_eq!(events[1].json["Seats__c"], 5.0);
    assert!(sub.next(Duration::from_millis(700)).await.unwrap().unwrap().events.is_empty(), "nothing for Lead or Unselected__c");

    let topic = client.topic("/data/Subscription__ChangeEvent").await.unwrap();
    assert!(topic.can_subscribe && !topic.can_publish);
    // As Salesforce answers for an object not selected: no such topic.
    let unselected = client.topic(LEADS).await.unwrap_err();
    assert_eq!((unselected.code(), error_code(&unselected)), (Code::NotFound, error_codes::TOPIC_NOT_FOUND));
    let refused = client.subscribe(LEADS, ReplayPreset::Latest, vec![], 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let unknown = client.topic("/data/Nothing__ChangeEvent").await.unwrap_err();
    assert_eq!((unknown.code(), error_code(&unknown)), (Code::NotFound, error_codes::TOPIC_NOT_FOUND));
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn topics_and_schemas_are_served_and_calls_need_a_session() {
    let (app, stop, _url, mut client) = served(quick()).await;
    let topic = client.topic(LEADS).await.unwrap();
    assert_eq!(topic.topic_name, LEADS);
    assert!(topic.can_subscribe && !topic.can_publish);
    assert_eq!(topic.tenant_guid, client.tenant_id);
    let schema = client.schema(&topic.schema_id).await.unwrap();
    let json: Value = serde_json::from_str(&schema.schema_json).unwrap();
    assert_eq!(json["name"], "LeadChangeEvent");
    assert_eq!(json["namespace"], "com.sforce.eventbus");
    assert_eq!(json["fields"][0]["name"], "ChangeEventHeader");
    let header: Vec<&str> = json["fields"][0]["type"]["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        header,
        [
            "entityName",
            "recordIds",
            "changeType",
            "changeOrigin",
            "transactionKey",
            "sequenceNumber",
            "commitTimestamp",
            "commitNumber",
            "commitUser",
            "nulledFields",
            "diffFields",
            "changedFields"
        ]
    );
    assert_eq!(json["fields"][1]["name"], "Name");
    assert_eq!(json["fields"][1]["type"][1]["name"], "Switchable_PersonName");
    assert!(client.topic("/data/ChangeEvents").await.unwrap().schema_id.is_empty(), "each event names its schema");
    assert_eq!(client.topic("/event/Order__e").await.unwrap_err().code(), Code::NotFound);

    let mut stranger = client.clone();
    stranger.token = "00D000000000000!nope".into();
    let refused = stranger.topic(LEADS).await.unwrap_err();
    assert_eq!((refused.code(), error_code(&refused)), (Code::Unauthenticated, error_codes::AUTH));
    let mut elsewhere = client.clone();
    elsewhere.tenant_id = "00D000000000000AAA".into();
    assert_eq!(elsewhere.subscribe(LEADS, ReplayPreset::Latest, vec![], 1).await.unwrap_err().code(), Code::Unauthenticated);
    stop.cancel();
    app.cleanup().await;
}

/// The Python client's interpreter, with its environment: installed on first
/// use by `scripts/pubsub-python.sh` (scripts/test.sh runs it up front).
fn python(root: &std::path::Path) -> (String, [(String, String); 2]) {
    let out = std::process::Command::new("bash").arg("scripts/pubsub-python.sh").current_dir(root).output().expect("run bash");
    assert!(out.status.success(), "installing the Python client failed: {}", String::from_utf8_lossy(&out.stderr));
    let py = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dir = std::path::Path::new(&py).ancestors().nth(3).unwrap().to_owned();
    let env = [
        ("PUBSUB_GEN_DIR".to_owned(), dir.join("gen").display().to_string()),
        ("PUBSUB_PUBLISHED_DIR".to_owned(), dir.join("published").display().to_string()),
    ];
    (py, env)
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "the Python client failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[tokio::test]
async fn a_client_generated_from_salesforces_published_proto_reads_the_events() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (py, env) = python(&root);
    // Our proto and Salesforce's describe the same wire.
    let compared = std::process::Command::new(&py)
        .args(["tests/python/pubsub_client.py", "compare-proto", "crates/pubsub/proto/pubsub_api.proto"])
        .envs(env.clone())
        .current_dir(&root)
        .output()
        .unwrap();
    let compared = &json_lines(&compared)[0];
    assert_eq!(compared["same_descriptors"], true, "{compared}");
    assert_eq!(compared["package"], "eventbus.v1");

    let (app, stop, url, client) = served(quick()).await;
    let token = TestApp::sandbox_token(&url).await;
    let created: Value = reqwest::Client::new()
        .post(format!("{url}/services/data/v60.0/composite/sobjects"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("Sforce-Call-Options", "client=wire-test")
        .json(&json!({"allOrNone": false, "records": [{"attributes": {"type": "Lead"}, "FirstName": "Grace", "LastName": "Hopper",
                       "Company": "Navy", "Email": "grace@navy.example", "City": "Arlington"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created[0]["id"].as_str().unwrap().to_owned();
    app.update(&schema::LEAD, &id, &[("Title", "Rear Admiral"), ("FirstName", "")]).await;

    let target = client_target(&client);
    let out = tokio::process::Command::new(&py)
        .args(["tests/python/pubsub_client.py", "subscribe", "--target", &target, "--topic", LEADS, "--events", "2"])
        .args(["--token", &client.token, "--instance-url", &client.instance_url, "--tenant-id", &client.tenant_id])
        .envs(env)
        .current_dir(&root)
        .output()
        .await
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines[0], json!({"topic": LEADS, "can_subscribe": true, "can_publish": false, "tenant_guid": client.tenant_id}));
    let (create, update) = (&lines[1], &lines[2]);
    assert_eq!(create["header"]["entityName"], "Lead");
    assert_eq!(create["header"]["changeType"], "CREATE");
    assert_eq!(create["header"]["recordIds"], json!([id]));
    assert_eq!(create["header"]["changeOrigin"], "com/salesforce/api/rest/60.0;client=wire-test");
    assert_eq!(create["header"]["changedFields"], json!([]));
    assert_eq!(create["fields"]["Name"], json!({"Salutation": null, "FirstName": "Grace", "LastName": "Hopper"}));
    assert_eq!(create["fields"]["Email"], "grace@navy.example");
    assert_eq!(create["fields"]["Address"]["City"], "Arlington");
    assert!(create["fields"]["CreatedDate"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(update["header"]["changeType"], "UPDATE");
    assert_eq!(update["header"]["changeOrigin"], "");
    // Edited by the admin, created by the integration user: the modifier changed too.
    assert_eq!(update["header"]["changedFields"], json!(["Title", "LastModifiedDate", "LastModifiedById", "Name.FirstName"]));
    assert_eq!(update["fields"]["LastModifiedById"], app.admins().await.1.as_str());
    assert_eq!(update["header"]["nulledFields"], json!(["Name.FirstName"]));
    assert_eq!(update["fields"]["Title"], "Rear Admiral");
    assert!(update["fields"].get("Company").is_none(), "unchanged fields are null: {}", update["fields"]);
    assert!(update["replay_id"].as_i64().unwrap() > create["replay_id"].as_i64().unwrap());
    assert_eq!(create["header"]["transactionKey"].as_str().unwrap().len(), 36);
    stop.cancel();
    app.cleanup().await;
}

/// `host:port` of the client's Pub/Sub URL, as grpcio takes it.
fn client_target(client: &PubSub) -> String {
    client.url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn tracking_compiled_again_keeps_capturing_and_the_ma_is_never_captured() {
    let app = TestApp::spawn().await;
    // As a later migration would: recompile every tracking trigger from its own columns.
    sqlx::query(
        "SELECT sandbox.track_columns(tr.tgrelid::regclass, (string_to_array(encode(tr.tgargs, 'escape'), '\\000'))[1:tr.tgnargs]) \
         FROM pg_trigger tr WHERE tr.tgname = 'track'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let lead = app.create_lead(&[("LastName", "Kept"), ("Company", "A")]).await;
    app.update(&schema::LEAD, &lead, &[("Title", "CEO")]).await;
    app.create_prospect(&[("email", "never@captured.example")]).await;
    let captured: Vec<(String, String)> =
        sqlx::query_as("SELECT entity, change_type FROM sandbox.cdc_pending ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(captured, [("Lead".to_owned(), "CREATE".to_owned()), ("Lead".to_owned(), "UPDATE".to_owned())]);
    let ma_captures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sandbox.cdc_captured WHERE relation::text LIKE 'ma.%' OR relation::text LIKE 'cs.%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(ma_captures, 0);
    app.cleanup().await;
}
