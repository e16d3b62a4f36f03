//! The identity state's two stored forms (migration 0007): the previous
//! release's `fields` jsonb and this release's `fields_text`. Rows are read
//! in either form, writes follow the switch, and a sync carries on across
//! the switch with no value lost, stale or echoed back (I3, I7).

use chrono::Utc;
use crmsync_domain::matching::{IdentityPatch, IdentityStatus};
use crmsync_domain::merge::{IdentityFields, Part, Side};
use crmsync_domain::{CrmId, CrmObject};
use crmsync_sandbox::schema::{LEAD, PROSPECT};
use crmsync_store::identities::{self, Applied, Keys, NewIdentity, State, StateForm};
use crmsync_tests::TestApp;
use serde_json::json;
use uuid::Uuid;

/// What is in the row's two columns: `fields` as the previous release
/// reads it, and `fields_text`.
async fn stored(app: &TestApp, id: Uuid) -> (IdentityFields, Option<String>) {
    let (fields, text): (serde_json::Value, Option<String>) =
        sqlx::query_as("SELECT fields::json, fields_text FROM identities WHERE id = $1").bind(id).fetch_one(&app.pool).await.unwrap();
    (serde_json::from_value(fields).unwrap(), text)
}

async fn state(app: &TestApp, id: Uuid, state: State<'_>) -> IdentityFields {
    identities::find(&app.pool, "default", &Keys { ids: vec![id], ..Keys::default() }, state).await.unwrap().remove(0).fields
}

/// Every field's `known` on `side` and nothing else, cut from a whole state.
fn known_of(fields: &IdentityFields, side: Side) -> IdentityFields {
    let mut known = fields.clone();
    known.keep_part(Part::Known(side));
    known
}

fn crm_known(fields: &IdentityFields, field: &str) -> Option<serde_json::Value> {
    fields.get(field).and_then(|f| f.side(Side::Crm).known.as_ref()).map(|v| v.value.clone())
}

fn applied<'a>(id: Uuid, lead: &CrmId, fields: &'a IdentityFields) -> Applied<'a> {
    Applied {
        id,
        status: IdentityStatus::Linked,
        prospect_id: Some(7),
        crm: Some((CrmObject::Lead, lead.clone())),
        fields,
        ma_link_written: true,
        ma_recycled: false,
        email: Some("forms@store.example".into()),
        crm_account_id: None,
        mirror_crm_id: None,
    }
}

/// The applier's batch save, in its own transaction.
async fn save_many(app: &TestApp, a: Applied<'_>, fence: i64) -> Option<std::collections::HashSet<Uuid>> {
    let mut tx = app.pool.begin().await.unwrap();
    let saved = identities::save_applied_many(&mut tx, "default", &[(a, fence)]).await.unwrap();
    tx.commit().await.unwrap();
    saved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_is_read_in_either_form_and_written_in_the_one_switched_to() {
    let app = TestApp::spawn().await;
    assert_eq!(identities::state_form(&app.pool).await.unwrap(), StateForm::Text, "a database this release creates starts at text");

    // An existing database: the previous release's form.
    identities::set_state_form(&app.pool, StateForm::Jsonb).await.unwrap();
    let lead = CrmId::parse(&app.create_lead(&[("LastName", "Forms"), ("Company", "Co")]).await).unwrap();
    let mut fields = IdentityFields::default();
    fields.wrote(Side::Ma, "email", Utc::now(), json!("forms@store.example"));
    fields.wrote(Side::Crm, "jobTitle", Utc::now(), json!("Buyer"));
    let id = Uuid::now_v7();
    let patch = IdentityPatch {
        status: Some(IdentityStatus::Linked),
        prospect_id: Some(7),
        crm: Some((lead.clone(), CrmObject::Lead)),
        ..IdentityPatch::default()
    };
    let new = NewIdentity { id, change_id: Uuid::now_v7(), patch: &patch, email: Some("forms@store.example"), fields: &fields, fence: 1 };
    assert_eq!(identities::insert_many(&app.pool, "default", &[new]).await.unwrap().len(), 1);
    assert_eq!(stored(&app, id).await, (fields.clone(), None), "the previous release reads the whole state from `fields`");
    assert_eq!(state(&app, id, State::All).await, fields);
    assert_eq!(state(&app, id, State::Only(&["email"])).await.0.keys().collect::<Vec<_>>(), ["email"]);
    assert_eq!(state(&app, id, State::Known(Side::Crm)).await, known_of(&fields, Side::Crm));
    assert_eq!(state(&app, id, State::Skip).await, IdentityFields::default());

    // A conversion forgets what the CRM side held, in the row's own form.
    let reset = IdentityPatch { reset_crm_known: true, ..IdentityPatch::default() };
    assert_eq!(identities::patch(&app.pool, "default", id, &reset, 2, Uuid::now_v7()).await.unwrap(), identities::Written::Done);
    assert_eq!(crm_known(&state(&app, id, State::All).await, "jobTitle"), None);
    assert_eq!(stored(&app, id).await.1, None);

    // Every replica runs this release: the next save writes text.
    identities::set_state_form(&app.pool, StateForm::Text).await.unwrap();
    let mut newer = state(&app, id, State::All).await;
    newer.wrote(Side::Crm, "jobTitle", Utc::now(), json!("Head Buyer"));
    assert_eq!(identities::save_applied(&app.pool, "default", &applied(id, &lead, &newer), 3).await.unwrap(), identities::Written::Done);
    let (jsonb, text) = stored(&app, id).await;
    assert_eq!(jsonb, IdentityFields::default(), "`fields` is left empty");
    assert_eq!(serde_json::from_str::<IdentityFields>(&text.unwrap()).unwrap(), newer);
    assert_eq!(state(&app, id, State::All).await, newer);
    assert_eq!(state(&app, id, State::Only(&["jobTitle", "phone"])).await.0.keys().collect::<Vec<_>>(), ["jobTitle"]);
    for side in [Side::Ma, Side::Crm] {
        let known = state(&app, id, State::Known(side)).await;
        assert_eq!(known, known_of(&newer, side), "{side:?}");
    }
    assert_eq!(crm_known(&state(&app, id, State::Known(Side::Crm)).await, "jobTitle"), Some(json!("Head Buyer")));
    assert_eq!(state(&app, id, State::Skip).await, IdentityFields::default());
    assert_eq!(identities::patch(&app.pool, "default", id, &reset, 4, Uuid::now_v7()).await.unwrap(), identities::Written::Done);
    let after_reset = state(&app, id, State::All).await;
    assert_eq!(crm_known(&after_reset, "jobTitle"), None);
    assert_eq!(after_reset.get("email"), newer.get("email"), "the rest of the state is kept");
    assert!(stored(&app, id).await.1.is_some(), "a reset keeps the text form");

    // Back to the previous form (a rollback): the next save moves the row too.
    identities::set_state_form(&app.pool, StateForm::Jsonb).await.unwrap();
    assert_eq!(save_many(&app, applied(id, &lead, &newer), 5).await, Some([id].into_iter().collect()));
    assert_eq!(stored(&app, id).await, (newer.clone(), None));
    // A fenced save writes nothing, in either form.
    identities::set_state_form(&app.pool, StateForm::Text).await.unwrap();
    assert_eq!(save_many(&app, applied(id, &lead, &fields), 5).await, Some(Default::default()));
    assert_eq!(stored(&app, id).await, (newer, None));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_again_keeps_a_databases_form_until_the_operator_moves_it() {
    let app = TestApp::spawn().await;
    identities::set_state_form(&app.pool, StateForm::Jsonb).await.unwrap();
    crmsync_cli::migrate(&app.pool).await.unwrap();
    assert_eq!(identities::state_form(&app.pool).await.unwrap(), StateForm::Jsonb, "only a new database starts at text");
    let exe = crmsync_tests::crmsync_exe!();
    let (ok, out, err) = app.run_cli(exe, &["migrate", "--identity-state", "text"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("identity states are written as text"), "{out}");
    assert_eq!(identities::state_form(&app.pool).await.unwrap(), StateForm::Text);
    let (ok, out, _) = app.run_cli(exe, &["migrate"]).await;
    assert!(ok && out.contains("written as text"), "{out}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_started_in_the_previous_form_carries_on_across_the_switch() {
    let mut app = TestApp::spawn().await;
    identities::set_state_form(&app.pool, StateForm::Jsonb).await.unwrap();
    let lead = app.create_lead(&[("LastName", "Switch"), ("Company", "Co"), ("Email", "switch@forms.example"), ("Title", "CTO")]).await;
    let p = app.create_prospect(&[("email", "switch@forms.example"), ("lastName", "Switch"), ("crmLeadFid", &lead)]).await;
    app.start_pipeline(1, 1);
    app.settle().await;
    assert_eq!(app.prospect(p).await["job_title"], "CTO");
    let forms = || async {
        sqlx::query_as::<_, (bool, bool)>("SELECT fields_text IS NOT NULL, fields <> '{}' FROM identities WHERE prospect_id = $1")
            .bind(p)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(forms().await, (false, true), "stored as the previous release reads it");
    app.update(&PROSPECT, &p.to_string(), &[("jobTitle", "CEO")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["title"], "CEO");

    // Switched while the tiers run: the next save of this identity writes text.
    identities::set_state_form(&app.pool, StateForm::Text).await.unwrap();
    app.update(&LEAD, &lead, &[("Title", "Chair"), ("City", "Nara")]).await;
    app.settle().await;
    let prospect = app.prospect(p).await;
    assert_eq!((prospect["job_title"].as_str(), prospect["city"].as_str()), (Some("Chair"), Some("Nara")));
    assert_eq!(forms().await, (true, false));
    // The state written before the switch still tells echoes from edits:
    // the applier's write to the prospect is not sent back to the lead.
    let stamp = app.show(&LEAD, &lead).await["modstamp"].clone();
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["modstamp"], stamp);
    app.update(&PROSPECT, &p.to_string(), &[("city", "Kobe")]).await;
    app.settle().await;
    assert_eq!(app.show(&LEAD, &lead).await["city"], "Kobe");
    assert!(app.sync_errors().await.is_empty());
    app.cleanup().await;
}
