//! The JSON API under `/api/v1` (see `docs/CONSOLE.md`): mailboxes, archive users, the
//! certificate, status, events, alerts and the protocol trace. Every write is recorded in
//! the activity stream and the audit trail.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ops;
use super::web::{blocking, ApiError, App, Who};

type Res = Result<Response, ApiError>;

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

fn ok(value: impl serde::Serialize) -> Res {
    Ok(Json(value).into_response())
}

/// Records an administrative change (activity stream and audit trail).
pub fn record(app: &App, who: &Who, action: &str, target: &str) {
    app.state.telemetry.admin(&who.name(), action, target);
    app.state
        .audit
        .record(crate::audit::Event::new(&format!("console.{action}"), who.name()).target(target));
}

pub async fn status(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Res {
    app.api_caller(&method, &headers).await?;
    let state = app.state.clone();
    ok(blocking(move || ops::status(&state)).await?)
}

pub async fn mailboxes(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Res {
    app.api_caller(&method, &headers).await?;
    let state = app.state.clone();
    let list = blocking(move || ops::mailboxes(&state)).await?;
    ok(json!({ "mailboxes": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMailbox {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

pub async fn create_mailbox(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let new: NewMailbox = parse(&body)?;
    let state = app.state.clone();
    let (view, password) =
        blocking(move || ops::create_mailbox(&state, &new.name, &new.description)).await?;
    record(&app, &who, "mailbox.create", &view.id);
    let mut value = serde_json::to_value(view).expect("serializes");
    value["password"] = json!(password);
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

pub async fn mailbox(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Res {
    app.api_caller(&method, &headers).await?;
    let state = app.state.clone();
    ok(blocking(move || ops::mailbox(&state, &id)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxChange {
    name: Option<String>,
    description: Option<String>,
    status: Option<String>,
}

pub async fn update_mailbox(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let change: MailboxChange = parse(&body)?;
    let (state, target) = (app.state.clone(), id.clone());
    let view = blocking(move || {
        ops::update_mailbox(
            &state,
            &id,
            change.name.as_deref(),
            change.description.as_deref(),
            change.status.as_deref(),
        )
    })
    .await?;
    record(&app, &who, "mailbox.update", &target);
    ok(view)
}

pub async fn delete_mailbox(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let (state, target) = (app.state.clone(), id.clone());
    blocking(move || ops::delete_mailbox(&state, &id)).await?;
    record(&app, &who, "mailbox.delete", &target);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reset_mailbox(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let (state, target) = (app.state.clone(), id.clone());
    let password = blocking(move || ops::reset_mailbox(&state, &id)).await?;
    record(&app, &who, "mailbox.reset-password", &target);
    ok(json!({"id": target, "password": password}))
}

pub async fn users(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Res {
    app.api_caller(&method, &headers).await?;
    let state = app.state.clone();
    let list = blocking(move || ops::list_users(&state)).await?;
    ok(json!({ "users": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    auditor: bool,
}

pub async fn create_user(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let new: NewUser = parse(&body)?;
    let state = app.state.clone();
    let (view, password) = blocking(move || {
        ops::create_user(&state, &new.email, &new.aliases, &new.name, new.auditor)
    })
    .await?;
    record(&app, &who, "user.add", &view.login);
    let mut value = serde_json::to_value(view).expect("serializes");
    value["password"] = json!(password);
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

pub async fn user(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(login): Path<String>,
) -> Res {
    app.api_caller(&method, &headers).await?;
    let state = app.state.clone();
    ok(blocking(move || ops::user(&state, &login)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    aliases: Option<Vec<String>>,
    name: Option<String>,
}

pub async fn update_user(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(login): Path<String>,
    body: Bytes,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let change: UserChange = parse(&body)?;
    let (state, target) = (app.state.clone(), login.clone());
    let view = blocking(move || {
        ops::update_user(
            &state,
            &login,
            change.aliases.as_deref(),
            change.name.as_deref(),
        )
    })
    .await?;
    record(&app, &who, "user.update", &target);
    ok(view)
}

pub async fn delete_user(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(login): Path<String>,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let (state, target) = (app.state.clone(), login.clone());
    blocking(move || ops::delete_user(&state, &login)).await?;
    record(&app, &who, "user.delete", &target);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reset_user(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(login): Path<String>,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let (state, target) = (app.state.clone(), login.clone());
    let password = blocking(move || ops::reset_user(&state, &login)).await?;
    record(&app, &who, "user.reset-password", &target);
    ok(json!({"login": target, "password": password}))
}

pub async fn certificate(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Res {
    app.api_caller(&method, &headers).await?;
    ok(ops::certificate(&app.state))
}

pub async fn renew_certificate(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let status = super::cert::renew(&app.state).await?;
    record(&app, &who, "certificate.renew", "");
    ok(status)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    cert_pem: String,
    key_pem: String,
}

pub async fn upload_certificate(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let upload: Upload = parse(&body)?;
    let status = super::cert::upload(&app.state, upload.cert_pem, upload.key_pem).await?;
    record(&app, &who, "certificate.upload", "");
    ok(status)
}

#[derive(Deserialize)]
pub struct EventQuery {
    pub mailbox: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<usize>,
}

pub async fn events(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Res {
    app.api_caller(&method, &headers).await?;
    let events = app.state.telemetry.activity.events(
        q.mailbox.as_deref().filter(|s| !s.is_empty()),
        q.kind.as_deref().filter(|s| !s.is_empty()),
        q.limit.unwrap_or(100).min(10_000),
    );
    let events: Vec<Value> = events.iter().map(event_json).collect();
    ok(json!({ "events": events }))
}

/// An activity event with its time as RFC 3339.
pub fn event_json(e: &crate::telemetry::Event) -> Value {
    let mut value = serde_json::to_value(e).expect("serializes");
    value["time"] = json!(crate::telemetry::rfc3339(e.time));
    value
}

pub async fn alerts(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Res {
    app.api_caller(&method, &headers).await?;
    ok(json!({ "alerts": app.state.alerts.firing() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceChange {
    protocol: String,
    on: bool,
    minutes: Option<u64>,
}

pub async fn trace(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Res {
    let who = app.api_caller(&method, &headers).await?;
    let change: TraceChange = parse(&body)?;
    let until = app
        .state
        .trace
        .set(&change.protocol, change.on, change.minutes.unwrap_or(15))
        .map_err(ApiError::bad_request)?;
    record(
        &app,
        &who,
        if change.on { "trace.on" } else { "trace.off" },
        &change.protocol,
    );
    ok(json!({"protocol": change.protocol, "until": until.map(crate::telemetry::rfc3339)}))
}

/// Anything else under `/api`.
pub async fn not_found() -> Response {
    ApiError::not_found("API path").into_response()
}
