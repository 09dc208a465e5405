//! The console's pages: server-rendered (askama, escaped by default), usable without
//! JavaScript. Every form carries the session's CSRF token; every action runs the same
//! operation as its API call ([`super::ops`]) and is recorded like it.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::chart;
use super::ops::{self, MailboxView, UserView};
use super::session::Session;
use super::web::{App, Who};

/// What every page shows around its content.
pub struct PageInfo {
    pub host: String,
    pub logged_in: bool,
    pub admin: String,
    pub csrf: String,
    pub notice: String,
    pub error: String,
}

impl PageInfo {
    pub fn new(app: &App, session: Option<&Session>) -> PageInfo {
        PageInfo {
            host: app.state.config.hostname.clone(),
            logged_in: session.is_some(),
            admin: session.map(|s| s.admin.clone()).unwrap_or_default(),
            csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
            notice: String::new(),
            error: String::new(),
        }
    }
}

pub type Fields = HashMap<String, String>;

/// Renders a template as an answer with `status`.
pub fn render(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("template: {e}")).into_response(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    page: PageInfo,
    status: String,
    message: String,
}

/// An error page.
pub fn error_page(
    app: &App,
    session: Option<&Session>,
    status: StatusCode,
    message: &str,
) -> Response {
    let page = ErrorPage {
        page: PageInfo::new(app, session),
        status: status.to_string(),
        message: message.to_owned(),
    };
    render(status, &page)
}

/// The session of a page request, or the answer that sends the browser to log in.
pub async fn logged_in(app: &Arc<App>, headers: &HeaderMap) -> Result<Session, Response> {
    app.session(headers)
        .await
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// The session of a form post whose CSRF token matches, or the answer to give.
pub async fn posted(
    app: &Arc<App>,
    headers: &HeaderMap,
    form: &Fields,
) -> Result<Session, Response> {
    let session = logged_in(app, headers).await?;
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    if !super::accounts::constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()) {
        return Err(error_page(
            app,
            Some(&session),
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong; reload the page.",
        ));
    }
    Ok(session)
}

fn who(session: &Session) -> Who {
    Who::Admin {
        name: session.admin.clone(),
        csrf: session.csrf.clone(),
    }
}

/// What `?done=` says after a redirect (a fixed set: nothing from the URL is echoed).
fn done_notice(query: &HashMap<String, String>) -> String {
    match query.get("done").map(String::as_str) {
        Some("saved") => "Saved.",
        Some("suspended") => "Suspended: new mail is refused with 450 (Exchange retries).",
        Some("resumed") => "Resumed: mail is accepted again.",
        Some("deleted") => "Deleted.",
        Some("trace") => "Protocol trace changed.",
        _ => "",
    }
    .to_owned()
}

fn last_collected(m: &MailboxView) -> String {
    m.last_collected
        .as_ref()
        .map(|c| format!("{} over {} from {}", c.time, c.protocol, c.client))
        .unwrap_or_else(|| "never".into())
}

/// A mailbox as the templates show it (times as text, "never" when none).
pub struct MailboxRow {
    pub id: String,
    pub address: String,
    pub name: String,
    pub description: String,
    pub status: String,
    pub messages: u64,
    pub bytes: u64,
    pub last_received: String,
    pub last_collected: String,
}

impl From<MailboxView> for MailboxRow {
    fn from(m: MailboxView) -> Self {
        MailboxRow {
            last_collected: last_collected(&m),
            last_received: m.last_received.clone().unwrap_or_else(|| "never".into()),
            id: m.id,
            address: m.address,
            name: if m.name.is_empty() {
                "(no name)".into()
            } else {
                m.name
            },
            description: m.description,
            status: m.status,
            messages: m.messages,
            bytes: m.bytes,
        }
    }
}

pub struct ArchiveBox {
    pub items: u64,
    pub pending: u64,
    pub untrusted: u64,
    pub recovery: bool,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    page: PageInfo,
    alerts: Vec<crate::alerts::AlertView>,
    mailboxes: Vec<MailboxRow>,
    chart: String,
    received: u64,
    collected: u64,
    rejects: Vec<(String, u64)>,
    archive: Option<ArchiveBox>,
    cert_source: String,
    cert_names: String,
    cert_days: i64,
    disk_free: u64,
    disk_reserve: u64,
    listeners: Vec<(String, String)>,
    cluster: Option<ClusterBox>,
}

/// The dashboard's cluster card: this node, the store, the nodes seen (seconds ago).
pub struct ClusterBox {
    pub node: String,
    pub store_up: bool,
    pub last_error: String,
    pub nodes: Vec<(String, i64)>,
}

pub async fn dashboard(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let session = match logged_in(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let state = app.state.clone();
    let overview = match tokio::task::spawn_blocking(move || ops::status(&state)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return error_page(
                &app,
                Some(&session),
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            )
        }
        Err(e) => {
            return error_page(
                &app,
                Some(&session),
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            )
        }
    };
    let activity = &app.state.telemetry.activity;
    let hours = activity.hours(24 * 7);
    let (svg, received, collected) = chart::hourly(&hours);
    let archive = app.state.archive.as_ref().and_then(|a| {
        let stats = a.stats().ok()?;
        Some(ArchiveBox {
            items: stats.items,
            pending: stats.pending,
            untrusted: stats.untrusted_reports,
            recovery: stats.recovery_key.is_some(),
        })
    });
    let cert = &overview.certificate;
    let page = Dashboard {
        page: PageInfo::new(&app, Some(&session)),
        alerts: overview.alerts,
        mailboxes: overview
            .mailboxes
            .into_iter()
            .map(MailboxRow::from)
            .collect(),
        chart: svg,
        received,
        collected,
        rejects: activity.rejects(24).into_iter().collect(),
        archive,
        cert_source: cert["source"].as_str().unwrap_or("").to_owned(),
        cert_names: cert["names"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        cert_days: cert["days_left"].as_i64().unwrap_or(0),
        disk_free: overview.disk["free_bytes"].as_u64().unwrap_or(0),
        disk_reserve: overview.disk["reserve_bytes"].as_u64().unwrap_or(0),
        listeners: overview
            .listeners
            .iter()
            .map(|l| {
                (
                    l["protocol"].as_str().unwrap_or("").to_owned(),
                    l["addr"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        cluster: overview.cluster.map(|c| {
            let now = crate::cluster::status::unix_now();
            ClusterBox {
                node: c.node,
                store_up: c.store_up,
                last_error: c.last_error.unwrap_or_default(),
                nodes: c
                    .nodes
                    .into_iter()
                    .map(|n| (n.node, (now - n.last_seen).max(0)))
                    .collect(),
            }
        }),
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "mailboxes.html")]
struct MailboxList {
    page: PageInfo,
    mailboxes: Vec<MailboxRow>,
    created: Option<(String, String)>,
}

async fn mailbox_list(
    app: &Arc<App>,
    session: &Session,
    notice: String,
    created: Option<(String, String)>,
) -> Response {
    let state = app.state.clone();
    let list = tokio::task::spawn_blocking(move || ops::mailboxes(&state)).await;
    let mailboxes = match list {
        Ok(Ok(l)) => l,
        _ => Vec::new(),
    };
    let mut page = PageInfo::new(app, Some(session));
    page.notice = notice;
    render(
        StatusCode::OK,
        &MailboxList {
            page,
            mailboxes: mailboxes.into_iter().map(MailboxRow::from).collect(),
            created,
        },
    )
}

pub async fn mailboxes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match logged_in(&app, &headers).await {
        Ok(session) => mailbox_list(&app, &session, done_notice(&query), None).await,
        Err(r) => r,
    }
}

pub async fn create_mailbox(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (name, description) = (field(&form, "name"), field(&form, "description"));
    let state = app.state.clone();
    match tokio::task::spawn_blocking(move || ops::create_mailbox(&state, &name, &description))
        .await
    {
        Ok(Ok((view, password))) => {
            super::api::record(&app, &who(&session), "mailbox.create", &view.id);
            mailbox_list(
                &app,
                &session,
                String::new(),
                Some((view.address, password)),
            )
            .await
        }
        Ok(Err(e)) => error_page(
            &app,
            Some(&session),
            StatusCode::BAD_REQUEST,
            &e.to_string(),
        ),
        Err(e) => error_page(
            &app,
            Some(&session),
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ),
    }
}

fn field(form: &Fields, name: &str) -> String {
    form.get(name)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "mailbox.html")]
struct MailboxPage {
    page: PageInfo,
    m: MailboxRow,
    password: String,
}

async fn mailbox_page(
    app: &Arc<App>,
    session: &Session,
    id: String,
    notice: String,
    password: String,
) -> Response {
    let state = app.state.clone();
    match tokio::task::spawn_blocking(move || ops::mailbox(&state, &id)).await {
        Ok(Ok(view)) => {
            let mut page = PageInfo::new(app, Some(session));
            page.notice = notice;
            render(
                StatusCode::OK,
                &MailboxPage {
                    page,
                    m: view.into(),
                    password,
                },
            )
        }
        Ok(Err(e)) => error_page(app, Some(session), StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => error_page(
            app,
            Some(session),
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ),
    }
}

pub async fn mailbox(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match logged_in(&app, &headers).await {
        Ok(session) => mailbox_page(&app, &session, id, done_notice(&query), String::new()).await,
        Err(r) => r,
    }
}

pub async fn mailbox_action(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let state = app.state.clone();
    let (name, description) = (field(&form, "name"), field(&form, "description"));
    let target = id.clone();
    let confirmed = form.get("confirm").is_some_and(|v| v == "yes");
    let act = action.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Option<String>, ops::OpError> {
        match act.as_str() {
            "edit" => ops::update_mailbox(&state, &id, Some(&name), Some(&description), None)
                .map(|_| None),
            "suspend" => {
                ops::update_mailbox(&state, &id, None, None, Some("suspended")).map(|_| None)
            }
            "resume" => ops::update_mailbox(&state, &id, None, None, Some("active")).map(|_| None),
            "reset-password" => ops::reset_mailbox(&state, &id).map(Some),
            "delete" if confirmed => ops::delete_mailbox(&state, &id).map(|_| None),
            "delete" => Err(ops::OpError::BadRequest(
                "tick the box to confirm the deletion".into(),
            )),
            _ => Err(ops::OpError::NotFound("no such action".into())),
        }
    })
    .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            return error_page(
                &app,
                Some(&session),
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            )
        }
    };
    match result {
        Ok(password) => {
            super::api::record(&app, &who(&session), &format!("mailbox.{action}"), &target);
            match (action.as_str(), password) {
                (_, Some(password)) => {
                    mailbox_page(&app, &session, target, String::new(), password).await
                }
                ("delete", None) => Redirect::to("/mailboxes?done=deleted").into_response(),
                ("suspend", None) => {
                    Redirect::to(&format!("/mailboxes/{target}?done=suspended")).into_response()
                }
                ("resume", None) => {
                    Redirect::to(&format!("/mailboxes/{target}?done=resumed")).into_response()
                }
                _ => Redirect::to(&format!("/mailboxes/{target}?done=saved")).into_response(),
            }
        }
        Err(e) => {
            let status = super::web::ApiError::from(e).status;
            let message = format!("Could not {action} the mailbox.");
            error_page(&app, Some(&session), status, &message)
        }
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UserList {
    page: PageInfo,
    users: Vec<UserView>,
    created: Option<(String, String)>,
}

async fn user_list(
    app: &Arc<App>,
    session: &Session,
    notice: String,
    error: String,
    created: Option<(String, String)>,
) -> Response {
    let state = app.state.clone();
    let users = match tokio::task::spawn_blocking(move || ops::list_users(&state)).await {
        Ok(Ok(u)) => u,
        _ => Vec::new(),
    };
    let mut page = PageInfo::new(app, Some(session));
    page.notice = notice;
    page.error = error;
    render(
        StatusCode::OK,
        &UserList {
            page,
            users,
            created,
        },
    )
}

pub async fn users(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match logged_in(&app, &headers).await {
        Ok(session) => user_list(&app, &session, done_notice(&query), String::new(), None).await,
        Err(r) => r,
    }
}

fn aliases(text: &str) -> Vec<String> {
    text.split([',', ' ', ';'])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn create_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (email, name) = (field(&form, "email"), field(&form, "name"));
    let list = aliases(&field(&form, "aliases"));
    let auditor = form.get("auditor").is_some_and(|v| !v.is_empty());
    let state = app.state.clone();
    match tokio::task::spawn_blocking(move || {
        ops::create_user(&state, &email, &list, &name, auditor)
    })
    .await
    {
        Ok(Ok((view, password))) => {
            super::api::record(&app, &who(&session), "user.add", &view.login);
            user_list(
                &app,
                &session,
                String::new(),
                String::new(),
                Some((view.login, password)),
            )
            .await
        }
        Ok(Err(e)) => user_list(&app, &session, String::new(), e.to_string(), None).await,
        Err(e) => error_page(
            &app,
            Some(&session),
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ),
    }
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    page: PageInfo,
    u: UserView,
    password: String,
}

async fn user_page(
    app: &Arc<App>,
    session: &Session,
    login: String,
    notice: String,
    password: String,
) -> Response {
    let state = app.state.clone();
    match tokio::task::spawn_blocking(move || ops::user(&state, &login)).await {
        Ok(Ok(u)) => {
            let mut page = PageInfo::new(app, Some(session));
            page.notice = notice;
            render(StatusCode::OK, &UserPage { page, u, password })
        }
        Ok(Err(e)) => error_page(app, Some(session), StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => error_page(
            app,
            Some(session),
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ),
    }
}

pub async fn user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(login): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match logged_in(&app, &headers).await {
        Ok(session) => user_page(&app, &session, login, done_notice(&query), String::new()).await,
        Err(r) => r,
    }
}

pub async fn user_action(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((login, action)): Path<(String, String)>,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let state = app.state.clone();
    let (name, list) = (field(&form, "name"), aliases(&field(&form, "aliases")));
    let confirmed = form.get("confirm").is_some_and(|v| v == "yes");
    let (target, act) = (login.clone(), action.clone());
    let result = tokio::task::spawn_blocking(move || -> Result<Option<String>, ops::OpError> {
        match act.as_str() {
            "edit" => ops::update_user(&state, &login, Some(&list), Some(&name)).map(|_| None),
            "reset-password" => ops::reset_user(&state, &login).map(Some),
            "delete" if confirmed => ops::delete_user(&state, &login).map(|_| None),
            "delete" => Err(ops::OpError::BadRequest(
                "tick the box to confirm the deletion".into(),
            )),
            _ => Err(ops::OpError::NotFound("no such action".into())),
        }
    })
    .await;
    match result {
        Ok(Ok(password)) => {
            super::api::record(&app, &who(&session), &format!("user.{action}"), &target);
            match (action.as_str(), password) {
                (_, Some(password)) => {
                    user_page(&app, &session, target, String::new(), password).await
                }
                ("delete", None) => Redirect::to("/users?done=deleted").into_response(),
                _ => Redirect::to(&format!("/users/{target}?done=saved")).into_response(),
            }
        }
        Ok(Err(e)) => {
            let status = super::web::ApiError::from(e).status;
            error_page(
                &app,
                Some(&session),
                status,
                &format!("Could not {action} the user."),
            )
        }
        Err(e) => error_page(
            &app,
            Some(&session),
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ),
    }
}

/// The stylesheet (the only static file).
pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("templates/console.css"),
    )
        .into_response()
}
