//! The engine on change events when events alone would not do: gap events
//! and an overflow for records stamped before the feed's cursor, an expired
//! replay id, a used-up event allocation, an object not selected for
//! Change Data Capture. Nothing is lost in any of them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crmsync_sandbox_server::Limits;
use crmsync_tests::{TestApp, Tier};
use serde_json::json;

use super::engine::{
    World, calls, feed, lead_events_stored, lead_id, limits, pairs, quick, quiet, replay, retitle, set_limits, until_title,
};

/// Retitles leads `ns` in a transaction that stays open while lead
/// `moving` is edited and synced for longer than the overlap window (3 s),
/// so the lead feed's cursor settles past their stamps; `before_commit`
/// runs just before the commit. Returns how far the stamps lie behind
/// the commit.
async fn behind_the_cursor(app: &TestApp, ns: &[i64], title: &str, moving: i64, before_commit: impl AsyncFnOnce()) -> chrono::Duration {
    let (_, crm_admin) = app.admins().await;
    let mut tx = app.pool.begin().await.unwrap();
    for n in ns {
        sqlx::query("UPDATE crm.leads SET title = $1, last_modified_by = $2 WHERE id = $3")
            .bind(title)
            .bind(&crm_admin)
            .bind(lead_id(app, *n).await)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for i in 0..7 {
        let moved = format!("Moving {i}");
        retitle(app, moving, &moved).await;
        until_title(app, moving, &moved).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    before_commit().await;
    let stamped: DateTime<Utc> = sqlx::query_scalar("SELECT modstamp FROM crm.leads WHERE id = $1")
        .bind(lead_id(app, ns[0]).await)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Utc::now() - stamped
}

async fn admin(url: &str, path: &str, body: serde_json::Value) {
    let resp = reqwest::Client::new().post(format!("{url}/sandbox-admin/{path}")).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_event_rereads_its_record_even_when_its_stamp_is_behind_the_cursor() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 3).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    let url = w.url.clone();
    let behind = behind_the_cursor(&w.app, &[1], "Gap", 2, async || admin(&url, "cdc/gaps", json!({"count": 1})).await).await;
    println!("the gap event's record was stamped {} ms before its commit", behind.num_milliseconds());
    assert!(behind > chrono::Duration::seconds(3), "stamped before the overlap window the cursor looks back over");
    // Neither the cursor's query nor its sweep can see that record: only
    // the gap event's id does.
    let took = until_title(&w.app, 1, "Gap").await;
    println!("the gap event's record arrived {} ms after its commit", took.as_millis());
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflow_event_looks_back_past_the_cursor_and_every_record_arrives() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 4).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    let url = w.url.clone();
    let behind =
        behind_the_cursor(&w.app, &[1, 3, 4], "Overflowed", 2, async || admin(&url, "cdc/overflows", json!({"count": 1})).await).await;
    assert!(behind > chrono::Duration::seconds(3), "stamped before the overlap window ({} ms)", behind.num_milliseconds());
    for n in [1, 3, 4] {
        until_title(&w.app, n, "Overflowed").await;
    }
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_replay_id_falls_back_to_a_catch_up_poll_and_loses_nothing() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 2).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    retitle(&w.app, 1, "Before").await;
    until_title(&w.app, 1, "Before").await;
    let stored = Some(lead_events_stored(&w.app).await);

    w.app.stop(Tier::Producer).await;
    let kept = limits(&w.url).await;
    set_limits(&w.url, &Limits { cdc_retention_secs: 1, ..kept.clone() }).await;
    retitle(&w.app, 2, "Expired").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    w.app.start(Tier::Producer);
    let took = until_title(&w.app, 2, "Expired").await;
    println!("an edit whose event expired arrived {} ms after the restart (catch-up poll)", took.as_millis());
    // The subscription went on at LATEST: once the catch-up ran, the
    // cursor carries a position the org has.
    let start = Instant::now();
    while replay(&feed(&w.app, "crm.lead").await) <= stored {
        assert!(start.elapsed() < Duration::from_secs(30), "the stored replay id was never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set_limits(&w.url, &Limits { cdc_retention_secs: kept.cdc_retention_secs, ..limits(&w.url).await }).await;
    retitle(&w.app, 1, "After").await;
    until_title(&w.app, 1, "After").await;
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_event_allocation_falls_back_to_polling_and_loses_nothing() {
    let mut w = World::new(quick()).await;
    pairs(&w.app, 2).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    quiet().await;
    // Whatever comes now is past the org's allocation.
    let l = limits(&w.url).await;
    set_limits(&w.url, &Limits { cdc_delivery_daily: l.cdc_delivered, ..l }).await;
    retitle(&w.app, 1, "Unannounced").await;
    let took = until_title(&w.app, 1, "Unannounced").await;
    println!("with the event allocation used up, the edit arrived by polling in {} ms", took.as_millis());
    let before = calls(&w.url).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let polls = calls(&w.url).await - before;
    println!("meanwhile the feeds poll: {polls} Salesforce calls in 4 s");
    assert!(polls >= 2, "the lead feed polls while its events are unavailable");
    retitle(&w.app, 2, "Polled").await;
    until_title(&w.app, 2, "Polled").await;
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_not_selected_for_change_events_is_polled() {
    let mut w = World::new(quick()).await;
    let resp =
        reqwest::Client::new().put(format!("{}/sandbox-admin/cdc/entities", w.url)).json(&json!({"Lead": false})).send().await.unwrap();
    assert!(resp.status().is_success());
    pairs(&w.app, 2).await;
    w.app.start_pipeline(1, 1);
    w.app.settle().await;
    retitle(&w.app, 1, "Polled").await;
    let took = until_title(&w.app, 1, "Polled").await;
    println!("a lead edit without Lead change events arrived by polling in {} ms", took.as_millis());
    assert_eq!(replay(&feed(&w.app, "crm.lead").await), None, "no event, no replay id");
    w.end().await;
}
