//! The field mapping and sync scope pages of a connection (issue 28), each
//! with its JSON twin: the mapping with the fields both systems list, a
//! behaviour change, an added or removed field, and the scope's rules —
//! each first previewed (what would be written, which pairs leave or enter
//! the scope) and then saved through the same audited functions as
//! `crmsync connection mapping` and `crmsync connection scope`.

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crmsync_domain::mapping::{EditError, FieldMapping, MappingEdit, MappingError, SyncBehaviour};
use crmsync_domain::merge::Side;
use crmsync_domain::scope::{Condition, Operator, ScopeError, SyncScope};
use crmsync_ops::mapping::{self, Listing, Preview};
use crmsync_ops::scope::{self, ScopePreview};
use crmsync_store::connections::{self, ConnectionError};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::pages::{answer, change_refused, refused, unavailable};
use crate::session::{Principal, wants_json};
use crate::view::{compact, csrf_field, page};

/// The status an error of a change answers with: the caller's to fix
/// (4xx), or a service that did not answer (503).
fn status_of(e: &anyhow::Error) -> StatusCode {
    let is = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(f);
    if is(&|c| matches!(c.downcast_ref::<ConnectionError>(), Some(ConnectionError::Unknown(_)))) {
        StatusCode::NOT_FOUND
    } else if is(&|c| c.is::<EditError>() || c.is::<MappingError>() || c.is::<ScopeError>()) {
        StatusCode::BAD_REQUEST
    } else if is(&|c| c.is::<sqlx::Error>() || c.is::<crmsync_connector::ConnectorError>()) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn is_json_body(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"))
}

// ---------------------------------------------------------------- mapping --

/// `GET /connections/{id}/mapping`: every mapped field, the fields each
/// system lists, and (for an admin) forms to change them.
pub async fn show(State(state): State<AppState>, who: Principal, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match mapping::list(&state.pool, &state.factory, &id).await {
        Ok(listing) => answer(
            &headers,
            StatusCode::OK,
            || json!({ "id": id, "mapping": listing }),
            || page(&format!("Field mapping: {id}"), Some(&who), mapping_body(&who, &id, &listing, None)),
        ),
        Err(e) if status_of(&e) == StatusCode::NOT_FOUND => refused(&headers, &who, StatusCode::NOT_FOUND, format!("{e:#}")),
        Err(e) => unavailable(&headers, Some(&who), &e),
    }
}

fn behaviour_inputs(f: Option<&FieldMapping>) -> Markup {
    let sync = f.map_or(SyncBehaviour::MostRecent, |f| f.sync);
    let source = f.and_then(|f| f.source);
    html! {
        select name="sync" aria-label="behaviour" {
            @for b in SyncBehaviour::ALL { option value=(b.as_str()) selected[b == sync] { (b.as_str()) } }
        }
        select name="source" aria-label="read_only source" {
            option value="" selected[source.is_none()] { "source: -" }
            option value="crm" selected[source == Some(Side::Crm)] { "from the CRM" }
            option value="ma" selected[source == Some(Side::Ma)] { "from the MA" }
        }
        label { input type="checkbox" name="blank_overwrites" value="yes" checked[f.is_some_and(|f| f.blank_overwrites)]; " blank overwrites" }
    }
}

fn mapping_body(who: &Principal, id: &str, listing: &Listing, preview: Option<(&Preview, &FormEdit)>) -> Markup {
    let csrf = who.csrf().filter(|_| who.user.role == crate::users::Role::Admin);
    let action = format!("/connections/{id}/mapping");
    let names = |l: &Result<Vec<crmsync_connector::FieldInfo>, String>| match l {
        Ok(f) => f.iter().map(|f| if f.custom { format!("{} (custom)", f.name) } else { f.name.clone() }).collect::<Vec<_>>().join(", "),
        Err(e) => format!("not listed: {e}"),
    };
    html! {
        p { a href=(format!("/connections/{id}")) { "Settings" } " · " a href=(format!("/connections/{id}/scope")) { "Sync scope" }
            " · " a href=(format!("/audit?connection={id}")) { "Changes to this connection" } }
        @if let Some((p, form)) = preview {
            h2 { "Preview: " (p.edit.action()) " " code { (p.edit.field()) } }
            p.notice { (p.linked) " linked pairs: " (p.ma_writes) " prospects and " (p.crm_writes) " CRM records would be written." }
            (sample(p))
            @if let Some(csrf) = csrf {
                form method="post" action=(action) {
                    (csrf_field(csrf))
                    (form.hidden())
                    input type="hidden" name="step" value="save";
                    button type="submit" { "Save, and re-sync these pairs through the batch lane" }
                }
            }
        }
        table {
            tr { th { "MA field" } th { "Lead field" } th { "Contact field" } th { "Behaviour" } th { "Blank overwrites" } @if csrf.is_some() { th { "Change" } } }
            @for f in listing.fields.iter() {
                tr {
                    td { code { (f.ma) } }
                    td { @if let Some(l) = &f.lead { code { (l) } } }
                    td { @if let Some(c) = &f.contact { code { (c) } } }
                    td { (f.sync.as_str()) @if f.sync == SyncBehaviour::ReadOnly { " (from the " (f.read_only_source().as_str().to_uppercase()) ")" } }
                    td { @if f.blank_overwrites { "yes" } @else { "no" } }
                    @if let Some(csrf) = csrf {
                        td {
                            form.inline method="post" action=(action) {
                                (csrf_field(csrf))
                                input type="hidden" name="edit" value="set";
                                input type="hidden" name="ma" value=(f.ma);
                                (behaviour_inputs(Some(f)))
                                button type="submit" name="step" value="preview" { "Preview" }
                            }
                            form.inline method="post" action=(action) {
                                (csrf_field(csrf))
                                input type="hidden" name="edit" value="remove";
                                input type="hidden" name="ma" value=(f.ma);
                                button type="submit" name="step" value="preview" { "Remove…" }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(csrf) = csrf {
            h2 { "Map another field" }
            form method="post" action=(action) {
                (csrf_field(csrf))
                input type="hidden" name="edit" value="add";
                input name="ma" placeholder="MA field" aria-label="MA field";
                input name="lead" placeholder="lead field" aria-label="lead field";
                input name="contact" placeholder="contact field" aria-label="contact field";
                (behaviour_inputs(None))
                button type="submit" name="step" value="preview" { "Preview" }
            }
        }
        h2 { "Fields the systems have" }
        p { "MA prospect: " span.help { (names(&listing.available.ma)) } }
        p { "CRM lead: " span.help { (names(&listing.available.lead)) } }
        p { "CRM contact: " span.help { (names(&listing.available.contact)) } }
    }
}

fn sample(p: &Preview) -> Markup {
    html! {
        @if !p.sample.is_empty() {
            table {
                tr { th { "Prospect" } th { "CRM record" } th { "MA writes" } th { "CRM writes" } }
                @for s in &p.sample {
                    tr {
                        td { (s.prospect_id) }
                        td { (s.crm_object) " " code { (s.crm_id) } }
                        td { @for w in &s.ma { div { code { (w.field) } ": " (compact(&w.from)) " → " (compact(&w.to)) } } }
                        td { @for w in &s.crm { div { code { (w.field) } ": " (compact(&w.from)) " → " (compact(&w.to)) } } }
                    }
                }
            }
        }
    }
}

/// A mapping change as the page's forms post it.
#[derive(Debug, Clone, Default, Deserialize)]
struct FormEdit {
    edit: String,
    ma: String,
    #[serde(default)]
    lead: Option<String>,
    #[serde(default)]
    contact: Option<String>,
    #[serde(default)]
    sync: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    blank_overwrites: Option<String>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    csrf: Option<String>,
}

fn some(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl FormEdit {
    fn to_edit(&self) -> Result<MappingEdit, String> {
        let sync = || -> Result<SyncBehaviour, String> {
            let s = some(&self.sync).ok_or("choose a behaviour")?;
            SyncBehaviour::parse(s).ok_or_else(|| format!("unknown behaviour {s:?}"))
        };
        let source = match some(&self.source) {
            None => None,
            Some("ma") => Some(Side::Ma),
            Some("crm") => Some(Side::Crm),
            Some(other) => return Err(format!("source is ma or crm, not {other:?}")),
        };
        let blank_overwrites = some(&self.blank_overwrites).is_some_and(|v| matches!(v, "yes" | "on" | "true" | "1"));
        let ma = self.ma.trim().to_owned();
        Ok(match self.edit.as_str() {
            "set" => MappingEdit::Set { ma, sync: sync()?, blank_overwrites, source },
            "add" => {
                let sync = sync()?;
                let mut f = FieldMapping::new(&ma, some(&self.lead), some(&self.contact), sync);
                f.blank_overwrites = blank_overwrites;
                f.source = if sync == SyncBehaviour::ReadOnly { Some(source.unwrap_or(Side::Crm)) } else { source };
                MappingEdit::Add(f)
            }
            "remove" => MappingEdit::Remove { ma },
            other => return Err(format!("unknown edit {other:?}: set, add or remove")),
        })
    }

    /// The form's values again, to carry from the preview to the save.
    fn hidden(&self) -> Markup {
        let fields = [
            ("edit", Some(self.edit.as_str())),
            ("ma", Some(self.ma.as_str())),
            ("lead", some(&self.lead)),
            ("contact", some(&self.contact)),
            ("sync", some(&self.sync)),
            ("source", some(&self.source)),
            ("blank_overwrites", some(&self.blank_overwrites)),
        ];
        html! { @for (name, value) in fields { @if let Some(v) = value { input type="hidden" name=(name) value=(v); } } }
    }
}

/// A mapping change as a script posts it (JSON): `{"change": <edit>,
/// "preview": true|false}`, the edit as `MappingEdit` serialises.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEdit {
    change: MappingEdit,
    #[serde(default)]
    preview: bool,
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /connections/{id}/mapping`: previews (`step=preview`, or
/// `"preview": true`) or saves one mapping change, as `crmsync connection
/// mapping <id> set|add|remove` does. Admins only; a session's request
/// needs its CSRF token.
pub async fn change(State(state): State<AppState>, who: Principal, Path(id): Path<String>, req: Request) -> Response {
    let headers = req.headers().clone();
    let (edit, form, preview_only, csrf) = if is_json_body(&headers) {
        match Json::<JsonEdit>::from_request(req, &state).await {
            Ok(Json(j)) => (Ok(j.change), FormEdit::default(), j.preview, j.csrf),
            Err(r) => return r.into_response(),
        }
    } else {
        match axum::Form::<FormEdit>::from_request(req, &state).await {
            Ok(axum::Form(f)) => (f.to_edit(), f.clone(), f.step.as_deref() != Some("save"), f.csrf.clone()),
            Err(r) => return r.into_response(),
        }
    };
    if let Some(refused) = change_refused(&who, csrf.as_deref(), &headers) {
        return refused;
    }
    let edit = match edit {
        Ok(e) => e,
        Err(msg) => return refused(&headers, &who, StatusCode::BAD_REQUEST, msg),
    };
    let result = if preview_only {
        mapping::preview(&state.pool, &state.factory, &id, &edit).await.map(|p| (p, None))
    } else {
        mapping::save(&state.config, &state.pool, &state.factory, &who.actor(), &id, &edit).await.map(|s| (s.preview, Some(s.resynced)))
    };
    let listing = mapping::list(&state.pool, &state.factory, &id).await;
    match (result, listing) {
        (Ok((preview, resynced)), Ok(listing)) => {
            if resynced.is_some() {
                tracing::info!(user = %who.user.name, connection = %id, field = %edit.field(), "console: mapping changed");
            }
            if wants_json(&headers) {
                return Json(json!({ "connection": id, "preview": preview, "saved": resynced.is_some(), "resynced": resynced }))
                    .into_response();
            }
            let body = match resynced {
                Some(n) => html! {
                    p.notice { (edit.action()) " " (edit.field()) " saved: " (preview.ma_writes) " prospects and " (preview.crm_writes)
                        " CRM records to write; " (n) " records sent to the batch lane." }
                    (mapping_body(&who, &id, &listing, None))
                },
                None => mapping_body(&who, &id, &listing, Some((&preview, &form))),
            };
            page(&format!("Field mapping: {id}"), Some(&who), body).into_response()
        }
        (Err(e), _) | (_, Err(e)) => {
            let code = status_of(&e);
            let error = format!("{e:#}");
            if wants_json(&headers) {
                return (code, Json(json!({ "error": error }))).into_response();
            }
            (
                code,
                page(
                    &format!("Field mapping: {id}"),
                    Some(&who),
                    html! { p.error { (error) } p { a href=(format!("/connections/{id}/mapping")) { "Back" } } },
                ),
            )
                .into_response()
        }
    }
}

// ------------------------------------------------------------------ scope --

/// `GET /connections/{id}/scope`: the rules deciding which CRM records
/// sync, and (for an admin) a form to change them.
pub async fn show_scope(State(state): State<AppState>, who: Principal, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match connections::load(&state.pool, &id).await {
        Ok(s) => answer(
            &headers,
            StatusCode::OK,
            || json!({ "id": id, "sync_scope": s.sync_scope }),
            || page(&format!("Sync scope: {id}"), Some(&who), scope_body(&who, &id, &s.sync_scope, None, None)),
        ),
        Err(e @ ConnectionError::Unknown(_)) => refused(&headers, &who, StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => unavailable(&headers, Some(&who), &e.into()),
    }
}

fn scope_body(who: &Principal, id: &str, current: &SyncScope, preview: Option<&ScopePreview>, rules_text: Option<&str>) -> Markup {
    let csrf = who.csrf().filter(|_| who.user.role == crate::users::Role::Admin);
    let action = format!("/connections/{id}/scope");
    let text =
        rules_text.map(str::to_owned).unwrap_or_else(|| current.conditions.iter().map(Condition::to_rule).collect::<Vec<_>>().join("\n"));
    html! {
        p { a href=(format!("/connections/{id}")) { "Settings" } " · " a href=(format!("/connections/{id}/mapping")) { "Field mapping" } }
        @if current.is_empty() { p { "No rules: every CRM lead and contact syncs." } }
        @else {
            p { "A CRM record syncs when every rule holds; one that leaves the scope sends its prospect to the MA recycle bin." }
            ul { @for c in &current.conditions { li { code { (c.describe()) } } } }
        }
        @if let Some(p) = preview {
            h2 { "Preview" }
            p.notice {
                "CRM records: " (p.records.in_scope) " in scope, " (p.records.out_of_scope) " out"
                @if p.records_capped { " (counted up to the limit)" } ". Synced pairs: " (p.pairs.in_scope) " in, " (p.pairs.out_of_scope)
                " out; " (p.leaving) " prospects would go to the recycle bin, " (p.entering) " would come back."
            }
            @if !p.sample_leaving.is_empty() {
                ul { @for (prospect, crm) in &p.sample_leaving { li { "prospect " (prospect) " / " code { (crm) } } } }
            }
            @if let Some(csrf) = csrf {
                form method="post" action=(action) {
                    (csrf_field(csrf))
                    input type="hidden" name="rules" value=(text);
                    input type="hidden" name="step" value="save";
                    button type="submit" { "Save this scope" }
                }
            }
        }
        @if let Some(csrf) = csrf {
            h2 { "Rules" }
            p.help {
                "One per line: " code { "[lead.|contact.]Field:operator[:value]" } ", operator one of "
                (Operator::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", "))
                "; " code { "in" } " takes values separated by commas. No line: every record syncs."
            }
            form method="post" action=(action) {
                (csrf_field(csrf))
                textarea name="rules" rows="5" cols="60" aria-label="rules" { (text) }
                button type="submit" name="step" value="preview" { "Preview" }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct FormScope {
    #[serde(default)]
    rules: String,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    csrf: Option<String>,
}

/// A scope as a script posts it: `{"sync_scope": [<condition>...],
/// "preview": true|false}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonScope {
    sync_scope: SyncScope,
    #[serde(default)]
    preview: bool,
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /connections/{id}/scope`: previews or saves the sync scope, as
/// `crmsync connection scope <id> set --rule ... [--preview]` does.
/// Admins only; a session's request needs its CSRF token.
pub async fn change_scope(State(state): State<AppState>, who: Principal, Path(id): Path<String>, req: Request) -> Response {
    let headers = req.headers().clone();
    let (scope, text, preview_only, csrf) = if is_json_body(&headers) {
        match Json::<JsonScope>::from_request(req, &state).await {
            Ok(Json(j)) => (Ok(j.sync_scope), None, j.preview, j.csrf),
            Err(r) => return r.into_response(),
        }
    } else {
        match axum::Form::<FormScope>::from_request(req, &state).await {
            Ok(axum::Form(f)) => {
                let parsed = f
                    .rules
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(Condition::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map(|conditions| SyncScope { conditions });
                (parsed, Some(f.rules.clone()), f.step.as_deref() != Some("save"), f.csrf)
            }
            Err(r) => return r.into_response(),
        }
    };
    if let Some(refused) = change_refused(&who, csrf.as_deref(), &headers) {
        return refused;
    }
    let scope = match scope {
        Ok(s) => s,
        Err(msg) => return refused(&headers, &who, StatusCode::BAD_REQUEST, msg),
    };
    let result = if preview_only {
        scope::preview(&state.pool, &state.factory, &id, &scope).await.map(|p| (p, None))
    } else {
        scope::save(&state.config, &state.pool, &state.factory, &who.actor(), &id, &scope).await.map(|s| (s.preview, Some(s.resynced)))
    };
    match result {
        Ok((preview, resynced)) => {
            if wants_json(&headers) {
                return Json(json!({ "connection": id, "preview": preview, "saved": resynced.is_some(), "resynced": resynced }))
                    .into_response();
            }
            let current = match connections::load(&state.pool, &id).await {
                Ok(s) => s.sync_scope,
                Err(e) => return unavailable(&headers, Some(&who), &e.into()),
            };
            let body = match resynced {
                Some(n) => html! {
                    p.notice { "Sync scope saved; " (preview.leaving) " prospects go to the recycle bin, " (preview.entering)
                        " come back; " (n) " records sent to the batch lane." }
                    (scope_body(&who, &id, &current, None, None))
                },
                None => scope_body(&who, &id, &current, Some(&preview), text.as_deref()),
            };
            page(&format!("Sync scope: {id}"), Some(&who), body).into_response()
        }
        Err(e) => {
            let code = status_of(&e);
            let error = format!("{e:#}");
            refused(&headers, &who, code, error)
        }
    }
}
