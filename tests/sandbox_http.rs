//! `crmsync sandbox serve` as an ordinary HTTP client sees it: the
//! Salesforce OAuth, REST query, sObject Collections and Bulk API 2.0
//! subset, and Account Engagement v5 prospects, with their limits and error
//! bodies. The client here is plain reqwest with hand-written requests, as a
//! third-party Salesforce client would send them.

use std::time::Duration;

use crmsync_infra::CancellationToken;
use crmsync_sandbox::schema;
use crmsync_sandbox_server::Limits;
use crmsync_tests::{SANDBOX_BUSINESS_UNIT, SANDBOX_CLIENT_ID, TestApp};
use crmsync_wire::pardot;
use crmsync_wire::salesforce::{self, API_VERSION};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn login(url: &str) -> Client {
    let http = http();
    let token = TestApp::sandbox_token(url).await;
    assert_eq!(token["instance_url"], url);
    Client { http, url: url.to_owned(), token: token["access_token"].as_str().unwrap().to_owned() }
}

impl Client {
    fn data(&self, path: &str) -> String {
        format!("{}/services/data/{API_VERSION}{path}", self.url)
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.http.get(url).bearer_auth(&self.token).header(salesforce::QUERY_OPTIONS_HEADER, "batchSize=200").send().await.unwrap()
    }

    async fn query(&self, soql: &str) -> reqwest::Response {
        self.http
            .get(self.data("/query"))
            .query(&[("q", soql)])
            .bearer_auth(&self.token)
            .header(salesforce::QUERY_OPTIONS_HEADER, "batchSize=200")
            .send()
            .await
            .unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self.http.request(method, self.data(path)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    /// A Bulk job's info once it has completed or failed (10 s at most).
    async fn until_job_ends(&self, id: &str) -> Value {
        let mut info = Value::Null;
        for _ in 0..100 {
            info = self.get(&self.data(&format!("/jobs/ingest/{id}"))).await.json().await.unwrap();
            if info["state"] == "JobComplete" || info["state"] == "Failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        info
    }

    fn pardot(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header(pardot::BUSINESS_UNIT_HEADER, SANDBOX_BUSINESS_UNIT)
    }
}

/// The sandbox server on its own port, with `limits`, and a client logged
/// in to it: (stop it with this, its URL, the client).
async fn served(app: &TestApp, limits: Limits) -> (CancellationToken, String, Client) {
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(limits, stop.clone()).await;
    let c = login(&url).await;
    (stop, url, c)
}

async fn leads(app: &TestApp, n: usize) {
    sqlx::query(
        "INSERT INTO crm.leads (id, tenant, last_name, company, email, last_modified_by, created_by) \
         SELECT '00Q' || lpad(g::text, 12, '0') || 'AAA', 'default', 'Lead ' || g, 'Acme', 'lead' || g || '@page.example', 'x', 'x' \
         FROM generate_series(1, $1) g",
    )
    .bind(n as i64)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_query_paging_and_the_usage_header() {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let url = app.serve_sandbox(Limits::default(), stop.clone()).await;

    let bad = http()
        .post(format!("{url}/services/oauth2/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", SANDBOX_CLIENT_ID), ("client_secret", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "invalid_client");

    let c = login(&url).await;
    leads(&app, 450).await;
    let mut resp = c.query("SELECT Id, Email, SystemModstamp FROM Lead WHERE Company = 'Acme' ORDER BY Id").await;
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut usage = Vec::new();
    loop {
        assert_eq!(resp.status(), StatusCode::OK);
        let header = resp.headers().get(salesforce::LIMIT_INFO_HEADER).expect("usage header").to_str().unwrap().to_owned();
        usage.push(salesforce::ApiUsage::parse(&header).expect("api-usage=used/max"));
        let page: salesforce::QueryResult = resp.json().await.unwrap();
        pages += 1;
        assert_eq!(page.total_size, 450, "every page tells the query's total, as Salesforce does");
        ids.extend(page.records.iter().map(|r| r["Id"].as_str().unwrap().to_owned()));
        match page.next_records_url {
            Some(next) => resp = c.get(&format!("{url}{next}")).await,
            None => break,
        }
    }
    assert_eq!(pages, 3, "450 records in pages of 200");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (450, 450), "every record once, in order");
    assert!(usage.windows(2).all(|w| w[1].used == w[0].used + 1), "each call counted: {usage:?}");

    let malformed = c.query("SELECT Id FROM Lead WHERE").await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json::<Value>().await.unwrap()[0]["errorCode"], "MALFORMED_QUERY");
    // 3,000 nested parentheses overflowed the parser's stack and aborted
    // the server (this test's process with it); now it is a bad query.
    let deep = format!("SELECT Id FROM Lead WHERE {}Email = 'a'{}", "(".repeat(3_000), ")".repeat(3_000));
    let refused = c.query(&deep).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body = refused.json::<Value>().await.unwrap();
    assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY", "{body}");
    assert_eq!(c.query("SELECT Id FROM Lead LIMIT 1").await.status(), StatusCode::OK, "the server still answers");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_answer_per_record_and_upserts_are_idempotent() {
    let app = TestApp::spawn().await;
    let (stop, _, c) = served(&app, Limits::default()).await;

    let too_many: Vec<Value> =
        (0..201).map(|i| json!({"attributes": {"type": "Lead"}, "LastName": format!("L{i}"), "Company": "X"})).collect();
    let (status, body) = c.send(reqwest::Method::POST, "/composite/sobjects", json!({"allOrNone": false, "records": too_many})).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("EXCEEDED_ID_LIMIT")));

    let records = json!([
        {"attributes": {"type": "Lead"}, "LastName": "Good", "Company": "Acme", "Email": "good@x.example"},
        {"attributes": {"type": "Lead"}, "LastName": "No company"},
        {"attributes": {"type": "Lead"}, "LastName": "Also good", "Company": "Acme"},
    ]);
    let (status, results) = c.send(reqwest::Method::POST, "/composite/sobjects", json!({"allOrNone": false, "records": records})).await;
    assert_eq!(status, StatusCode::OK);
    let ok: Vec<bool> = results.as_array().unwrap().iter().map(|r| r["success"].as_bool().unwrap()).collect();
    assert_eq!(ok, [true, false, true], "{results}");
    assert_eq!(results[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING", "{results}");
    let good = results[0]["id"].as_str().unwrap().to_owned();
    let shown = app.show(&schema::LEAD, &good).await;
    assert_eq!(shown["last_name"], "Good", "{shown}");

    let upsert = |name: &str| json!({"allOrNone": false, "records": [{"attributes": {"type": "Lead"}, "crmsync_Id__c": "ext-1", "LastName": name, "Company": "Acme"}]});
    let path = format!("/composite/sobjects/Lead/{}", salesforce::EXTERNAL_ID_FIELD);
    let (_, first) = c.send(reqwest::Method::PATCH, &path, upsert("First")).await;
    let (_, again) = c.send(reqwest::Method::PATCH, &path, upsert("Retried")).await;
    assert_eq!((first[0]["created"].as_bool(), again[0]["created"].as_bool()), (Some(true), Some(false)), "{first} {again}");
    assert_eq!(first[0]["id"], again[0]["id"], "a retried upsert finds the record the first one made");

    let (_, updated) = c
        .send(
            reqwest::Method::PATCH,
            "/composite/sobjects",
            json!({"allOrNone": false, "records": [{"attributes": {"type": "Lead"}, "Id": "00Q000000000000AAA", "LastName": "Ghost"}]}),
        )
        .await;
    assert_eq!(updated[0]["errors"][0]["statusCode"], "NOT_FOUND", "{updated}");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_salesforce_keeps_itself_are_refused_on_create_and_update() {
    let app = TestApp::spawn().await;
    let (stop, _, c) = served(&app, Limits::default()).await;
    let (_, made) = c
        .send(
            reqwest::Method::POST,
            "/composite/sobjects",
            json!({"allOrNone": false, "records": [{"attributes": {"type": "Lead"}, "LastName": "Real", "Company": "Acme"}]}),
        )
        .await;
    let lead = made[0]["id"].as_str().unwrap().to_owned();

    let refused = |results: &Value| -> Vec<String> {
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["success"], false, "{r}");
                r["errors"][0]["statusCode"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    // A lead created converted, towards a contact that does not exist
    // (which once made the engine re-link its prospect to it), deleted, or
    // with the ids and stamps the org keeps.
    let creates = json!([
        {"attributes": {"type": "Lead"}, "LastName": "Conv", "Company": "Acme", "IsConverted": true, "ConvertedContactId": "003000000000001AAA"},
        {"attributes": {"type": "Lead"}, "LastName": "Del", "Company": "Acme", "IsDeleted": true},
        {"attributes": {"type": "Lead"}, "LastName": "Stamped", "Company": "Acme", "SystemModstamp": "2020-01-01T00:00:00Z"},
        {"attributes": {"type": "Lead"}, "Id": lead, "LastName": "Id given", "Company": "Acme"},
    ]);
    let (status, results) = c.send(reqwest::Method::POST, "/composite/sobjects", json!({"allOrNone": false, "records": creates})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(refused(&results), vec!["INVALID_FIELD_FOR_INSERT_UPDATE"; 4], "{results}");
    assert!(results[0]["errors"][0]["message"].as_str().unwrap().contains("ConvertedContactId, IsConverted"), "{results}");

    let updates = json!([
        {"attributes": {"type": "Lead"}, "Id": lead, "IsConverted": true},
        {"attributes": {"type": "Lead"}, "Id": lead, "IsDeleted": true},
        {"attributes": {"type": "Lead"}, "Id": lead, "LastName": "Renamed", "CreatedDate": "2020-01-01T00:00:00Z"},
    ]);
    let (_, results) = c.send(reqwest::Method::PATCH, "/composite/sobjects", json!({"allOrNone": false, "records": updates})).await;
    assert_eq!(refused(&results), vec!["INVALID_FIELD_FOR_INSERT_UPDATE"; 3], "{results}");
    let shown = app.show(&schema::LEAD, &lead).await;
    assert_eq!(
        (&shown["last_name"], &shown["is_converted"], &shown["is_deleted"]),
        (&json!("Real"), &json!(false), &json!(false)),
        "nothing of a refused record is written: {shown}"
    );
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.leads").fetch_one(&app.pool).await.unwrap();
    assert_eq!(leads, 1, "no refused create made a lead");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_record_routes_limits_and_error_bodies_answer_as_salesforce_does() {
    use reqwest::Method;
    let app = TestApp::spawn().await;
    let (stop, url, c) = served(&app, Limits::default()).await;

    // simple-salesforce creates at the type's path with a trailing slash,
    // jsforce without.
    let (status, made) =
        c.send(Method::POST, "/sobjects/Lead/", json!({"LastName": "One", "Company": "Acme", "Email": "one@x.example"})).await;
    assert_eq!((status, &made["success"]), (StatusCode::CREATED, &json!(true)), "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let (status, _) = c.send(Method::POST, "/sobjects/Contact", json!({"LastName": "Two", "Email": "two@x.example"})).await;
    assert_eq!(status, StatusCode::CREATED);

    let got: Value = c.get(&c.data(&format!("/sobjects/Lead/{id}"))).await.json().await.unwrap();
    assert_eq!((&got["LastName"], &got["Company"], &got["attributes"]["type"]), (&json!("One"), &json!("Acme"), &json!("Lead")), "{got}");
    let some: Value = c.get(&c.data(&format!("/sobjects/Lead/{id}?fields=Email"))).await.json().await.unwrap();
    assert_eq!(some["Email"], "one@x.example", "{some}");
    assert!(some.get("LastName").is_none(), "only the fields asked for: {some}");

    let (status, body) = c.send(Method::PATCH, &format!("/sobjects/Lead/{id}"), json!({"LastName": "Renamed"})).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(app.show(&schema::LEAD, &id).await["last_name"], "Renamed");
    let (status, body) = c.send(Method::PATCH, &format!("/sobjects/Lead/{id}"), json!({"IsConverted": true})).await;
    assert_eq!((status, &body[0]["errorCode"]), (StatusCode::BAD_REQUEST, &json!("INVALID_FIELD_FOR_INSERT_UPDATE")), "{body}");
    let (status, body) = c.send(Method::PATCH, "/sobjects/Lead/00Q000000000000AAA", json!({"LastName": "Ghost"})).await;
    assert_eq!((status, &body[0]["errorCode"]), (StatusCode::NOT_FOUND, &json!("NOT_FOUND")), "{body}");

    let path = format!("/sobjects/Lead/{}/ext-9", salesforce::EXTERNAL_ID_FIELD);
    let (first, a) = c.send(Method::PATCH, &path, json!({"LastName": "Up", "Company": "Acme"})).await;
    let (again, b) = c.send(Method::PATCH, &path, json!({"LastName": "Up again"})).await;
    assert_eq!((first, again), (StatusCode::CREATED, StatusCode::OK), "{a} {b}");
    assert_eq!((&a["created"], &b["created"], &a["id"]), (&json!(true), &json!(false), &b["id"]), "{a} {b}");

    let (status, _) = c.send(Method::DELETE, &format!("/sobjects/Lead/{id}"), Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.show(&schema::LEAD, &id).await["is_deleted"], true);
    let (status, body) = c.send(Method::DELETE, &format!("/sobjects/Lead/{id}"), Value::Null).await;
    assert_eq!((status, &body[0]["errorCode"]), (StatusCode::NOT_FOUND, &json!("NOT_FOUND")), "{body}");

    let limits: Value = c.get(&c.data("/limits/")).await.json().await.unwrap();
    let daily = &limits["DailyApiRequests"];
    assert!(daily["Max"].as_u64().unwrap() >= daily["Remaining"].as_u64().unwrap(), "{limits}");
    // simple-salesforce's queries end the path with a slash.
    let q = c.http.get(c.data("/query/")).query(&[("q", "SELECT Id FROM Lead")]).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(q.status(), StatusCode::OK);

    // What the router and the extractors refuse has the API's body too.
    let raw = |method: Method, path: &str| c.http.request(method, c.data(path)).bearer_auth(&c.token);
    let shaped = |resp: reqwest::Response| async move {
        let status = resp.status();
        let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(kind.starts_with("application/json"), "{status}: {kind}");
        let body: Value = resp.json().await.unwrap();
        (status, body[0]["errorCode"].as_str().unwrap_or_else(|| panic!("not a Salesforce error list: {body}")).to_owned())
    };
    let cases = [
        (raw(Method::GET, "/no/such/route"), StatusCode::NOT_FOUND, "NOT_FOUND"),
        (raw(Method::PUT, &format!("/sobjects/Lead/{id}")).json(&json!({})), StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        (
            raw(Method::POST, "/sobjects/Lead/").header("content-type", "application/json").body("{not json"),
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
        ),
        (raw(Method::POST, "/sobjects/Lead/").json(&json!(["a list"])), StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR"),
        (
            raw(Method::POST, "/sobjects/Lead/").header("content-type", "text/csv").body("LastName\nX"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (raw(Method::GET, "/query"), StatusCode::BAD_REQUEST, "MALFORMED_QUERY"),
    ];
    for (request, status, code) in cases {
        assert_eq!(shaped(request.send().await.unwrap()).await, (status, code.to_owned()));
    }
    let ae = c.pardot(Method::GET, "/api/v5/objects/nothing").send().await.unwrap();
    assert_eq!(ae.status(), StatusCode::NOT_FOUND);
    let body: Value = ae.json().await.unwrap();
    assert!(body["code"].is_i64() && body["message"].is_string(), "Account Engagement's shape: {body}");

    // The identity URL a token names, called with the older `OAuth`
    // scheme, which Salesforce takes beside `Bearer`.
    let token = TestApp::sandbox_token(&url).await;
    let who: Value = c
        .http
        .get(token["id"].as_str().unwrap())
        .header("authorization", format!("OAuth {}", token["access_token"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["id"], token["id"], "{who}");
    assert!(who["user_id"].as_str().unwrap().starts_with("005") && who["urls"]["query"].is_string(), "{who}");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_and_expired_sessions_answer_as_salesforce_does() {
    let app = TestApp::spawn().await;
    let (stop, url, c) = served(&app, Limits { salesforce_daily: 3, ..Limits::default() }).await;
    for _ in 0..3 {
        assert_eq!(c.query("SELECT Id FROM Lead").await.status(), StatusCode::OK);
    }
    let over = c.query("SELECT Id FROM Lead").await;
    assert_eq!(over.status(), StatusCode::FORBIDDEN);
    assert_eq!(over.headers()[salesforce::LIMIT_INFO_HEADER], "api-usage=3/3");
    assert_eq!(over.json::<Value>().await.unwrap()[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");

    // Lifting the limit (a new day, a bigger edition) lets calls through again.
    let admin = http();
    let limits: Limits = admin.get(format!("{url}/sandbox-admin/limits")).send().await.unwrap().json().await.unwrap();
    admin.put(format!("{url}/sandbox-admin/limits")).json(&Limits { salesforce_daily: 100, ..limits }).send().await.unwrap();
    assert_eq!(c.query("SELECT Id FROM Lead").await.status(), StatusCode::OK);

    admin.post(format!("{url}/sandbox-admin/expire-sessions")).send().await.unwrap();
    let expired = c.query("SELECT Id FROM Lead").await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(expired.json::<Value>().await.unwrap()[0]["errorCode"], "INVALID_SESSION_ID");
    assert_eq!(login(&url).await.query("SELECT Id FROM Lead").await.status(), StatusCode::OK, "a new token works");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_ingest_job_reports_successful_and_failed_rows() {
    let app = TestApp::spawn().await;
    let (stop, _, c) = served(&app, Limits::default()).await;
    let (status, job) = c
        .send(
            reqwest::Method::POST,
            "/jobs/ingest",
            json!({"object": "Lead", "operation": "upsert", "externalIdFieldName": salesforce::EXTERNAL_ID_FIELD, "contentType": "CSV", "lineEnding": "LF"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let csv = "crmsync_Id__c,LastName,Company\nb-1,One,Acme\nb-2,,Acme\nb-3,Three,Acme\n";
    let up = c
        .http
        .put(c.data(&format!("/jobs/ingest/{id}/batches")))
        .bearer_auth(&c.token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), StatusCode::CREATED);
    let (_, closed) = c.send(reqwest::Method::PATCH, &format!("/jobs/ingest/{id}"), json!({"state": "UploadComplete"})).await;
    assert_eq!(closed["state"], "UploadComplete");
    let info = c.until_job_ends(&id).await;
    assert_eq!(
        (info["state"].as_str(), info["numberRecordsProcessed"].as_u64(), info["numberRecordsFailed"].as_u64()),
        (Some("JobComplete"), Some(3), Some(1)),
        "{info}"
    );
    let text = |path: String| {
        let c = &c;
        async move { c.get(&c.data(&path)).await.text().await.unwrap() }
    };
    let ok = text(format!("/jobs/ingest/{id}/successfulResults/")).await;
    let failed = text(format!("/jobs/ingest/{id}/failedResults/")).await;
    let (_, ok_rows) = salesforce::read_csv(ok.as_bytes()).unwrap();
    let (failed_header, failed_rows) = salesforce::read_csv(failed.as_bytes()).unwrap();
    assert_eq!(ok_rows.len(), 2);
    assert_eq!(failed_rows.len(), 1);
    assert_eq!(failed_header[..2], ["sf__Id", "sf__Error"]);
    assert!(failed_rows[0][1].starts_with("REQUIRED_FIELD_MISSING"), "{failed}");
    assert_eq!(failed_rows[0][2], "b-2", "the failed row comes back with its own values");
    // Every row is in one of the two results: none unprocessed (jsforce
    // retries what this lists, so a wrong answer inserts rows twice).
    let unprocessed = text(format!("/jobs/ingest/{id}/unprocessedrecords/")).await;
    assert_eq!(salesforce::read_csv(unprocessed.as_bytes()).unwrap().1.len(), 0, "{unprocessed}");
    let (status, _) = c.send(reqwest::Method::DELETE, &format!("/jobs/ingest/{id}"), Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gone = c.get(&c.data(&format!("/jobs/ingest/{id}"))).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // A job created with Salesforce's defaults (no contentType, no
    // lineEnding), whose rows name a field the org keeps itself: each row
    // is refused on its own, as through Collections.
    let (status, job) = c.send(reqwest::Method::POST, "/jobs/ingest", json!({"object": "Lead", "operation": "insert"})).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let csv = "LastName,Company,IsConverted\nConv,Acme,true\n";
    let up = c.http.put(c.data(&format!("/jobs/ingest/{id}/batches"))).bearer_auth(&c.token).body(csv).send().await.unwrap();
    assert_eq!(up.status(), StatusCode::CREATED);
    let waiting = text(format!("/jobs/ingest/{id}/unprocessedrecords")).await;
    assert_eq!(waiting, csv, "before it runs, every row is unprocessed");
    let (status, body) = c.send(reqwest::Method::DELETE, &format!("/jobs/ingest/{id}"), Value::Null).await;
    assert_eq!((status, &body[0]["errorCode"]), (StatusCode::BAD_REQUEST, &json!("INVALIDJOBSTATE")), "an open job is not deleted");
    c.send(reqwest::Method::PATCH, &format!("/jobs/ingest/{id}"), json!({"state": "UploadComplete"})).await;
    let info = c.until_job_ends(&id).await;
    assert_eq!((info["state"].as_str(), info["numberRecordsFailed"].as_u64()), (Some("JobComplete"), Some(1)), "{info}");
    let failed = text(format!("/jobs/ingest/{id}/failedResults")).await;
    assert!(salesforce::read_csv(failed.as_bytes()).unwrap().1[0][1].starts_with("INVALID_FIELD_FOR_INSERT_UPDATE"), "{failed}");
    stop.cancel();
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_engagement_prospects_page_upsert_delete_and_limits() {
    let app = TestApp::spawn().await;
    let (stop, url, c) = served(&app, Limits::default()).await;
    for i in 0..5 {
        app.create_prospect(&[("email", &format!("p{i}@ae.example")), ("lastName", "Page")]).await;
    }

    let no_bu =
        c.http.get(format!("{url}{}", pardot::PROSPECTS_PATH)).bearer_auth(&c.token).query(&[("fields", "id")]).send().await.unwrap();
    assert_eq!(no_bu.status(), StatusCode::BAD_REQUEST);
    assert_eq!(no_bu.json::<Value>().await.unwrap()["code"], pardot::codes::INVALID_BUSINESS_UNIT);

    let mut seen = Vec::new();
    let mut page: pardot::QueryPage = c
        .pardot(reqwest::Method::GET, pardot::PROSPECTS_PATH)
        .query(&[("fields", "id,email,updatedAt"), ("limit", "2"), ("orderBy", "updatedAt")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    loop {
        seen.extend(page.values.iter().map(|p| p["email"].as_str().unwrap().to_owned()));
        let Some(token) = page.next_page_token.clone() else { break };
        page = c
            .pardot(reqwest::Method::GET, pardot::PROSPECTS_PATH)
            .query(&[("nextPageToken", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    assert_eq!(seen.len(), 5, "{seen:?}");

    let upsert = |name: &str| json!({"matchEmail": "new@ae.example", "prospect": {"email": "new@ae.example", "firstName": name}, "fields": ["id", "firstName"]});
    let first: Value = c
        .pardot(reqwest::Method::POST, &format!("{}/do/upsertLatestByEmail", pardot::PROSPECTS_PATH))
        .json(&upsert("A"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again: Value = c
        .pardot(reqwest::Method::POST, &format!("{}/do/upsertLatestByEmail", pardot::PROSPECTS_PATH))
        .json(&upsert("B"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["id"], again["id"], "upsert latest by email never makes a second prospect");
    assert_eq!(again["firstName"], "B");

    let id = first["id"].as_i64().unwrap();
    let del = c.pardot(reqwest::Method::DELETE, &format!("{}/{id}", pardot::PROSPECTS_PATH)).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let count = |deleted: &'static str| {
        let c = &c;
        async move {
            let p: pardot::QueryPage = c
                .pardot(reqwest::Method::GET, pardot::PROSPECTS_PATH)
                .query(&[("fields", "id"), ("limit", "1000"), ("deleted", deleted)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            p.values.len()
        }
    };
    assert_eq!((count("false").await, count("true").await, count("all").await), (5, 1, 6));
    let back = c.pardot(reqwest::Method::POST, &format!("{}/{id}/do/undelete", pardot::PROSPECTS_PATH)).send().await.unwrap();
    assert_eq!(back.json::<Value>().await.unwrap()["isDeleted"], false);

    let read_only = c
        .pardot(reqwest::Method::PATCH, &format!("{}/{id}", pardot::PROSPECTS_PATH))
        .json(&json!({"updatedAt": "2020-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(read_only.status(), StatusCode::BAD_REQUEST);

    let admin = http();
    let limits: Limits = admin.get(format!("{url}/sandbox-admin/limits")).send().await.unwrap().json().await.unwrap();
    let used = limits.pardot_used;
    admin.put(format!("{url}/sandbox-admin/limits")).json(&Limits { pardot_daily: used, ..limits }).send().await.unwrap();
    let over = c.pardot(reqwest::Method::GET, pardot::PROSPECTS_PATH).query(&[("fields", "id")]).send().await.unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.json::<Value>().await.unwrap()["code"], pardot::codes::DAILY_API_LIMIT);
    stop.cancel();
    app.cleanup().await;
}
