//! The certificate, activity and settings pages, and the trace switch.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{error_page, logged_in, posted, render, Fields, PageInfo};
use super::web::{App, Who};

#[derive(Template)]
#[template(path = "certificate.html")]
struct CertificatePage {
    page: PageInfo,
    source: String,
    names: String,
    issuer: String,
    not_after: String,
    days_left: i64,
    last_error: String,
}

fn certificate_page(
    app: &App,
    session: &super::session::Session,
    notice: String,
    error: String,
) -> Response {
    let status = super::ops::certificate(&app.state);
    let text = |k: &str| status[k].as_str().unwrap_or("").to_owned();
    let mut page = PageInfo::new(app, Some(session));
    page.notice = notice;
    page.error = error;
    render(
        StatusCode::OK,
        &CertificatePage {
            page,
            source: text("source"),
            names: status["names"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            issuer: text("issuer"),
            not_after: text("not_after"),
            days_left: status["days_left"].as_i64().unwrap_or(0),
            last_error: status["last_error"].as_str().unwrap_or("none").to_owned(),
        },
    )
}

pub async fn certificate(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match logged_in(&app, &headers).await {
        Ok(session) => certificate_page(&app, &session, String::new(), String::new()),
        Err(r) => r,
    }
}

fn who(session: &super::session::Session) -> Who {
    Who::Admin {
        name: session.admin.clone(),
        csrf: session.csrf.clone(),
    }
}

pub async fn renew(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match super::cert::renew(&app.state).await {
        Ok(_) => {
            super::api::record(&app, &who(&session), "certificate.renew", "");
            certificate_page(
                &app,
                &session,
                "A new certificate is installed.".into(),
                String::new(),
            )
        }
        Err(e) => certificate_page(&app, &session, String::new(), e.message),
    }
}

pub async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    match super::cert::upload(&app.state, get("cert_pem"), get("key_pem")).await {
        Ok(_) => {
            super::api::record(&app, &who(&session), "certificate.upload", "");
            certificate_page(
                &app,
                &session,
                "The certificate is installed.".into(),
                String::new(),
            )
        }
        Err(e) => certificate_page(&app, &session, String::new(), e.message),
    }
}

/// An event as the activity table shows it.
struct EventRow {
    time: String,
    kind: String,
    mailbox: String,
    protocol: String,
    client: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    page: PageInfo,
    events: Vec<EventRow>,
    mailbox: String,
    /// (kind, chosen now).
    kinds: Vec<(&'static str, bool)>,
}

pub async fn activity(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match logged_in(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mailbox = query.get("mailbox").cloned().unwrap_or_default();
    let kind = query.get("kind").cloned().unwrap_or_default();
    let events = app
        .state
        .telemetry
        .activity
        .events(
            Some(mailbox.as_str()).filter(|m| !m.is_empty()),
            Some(kind.as_str()).filter(|k| !k.is_empty()),
            500,
        )
        .into_iter()
        .map(|e| EventRow {
            time: crate::telemetry::rfc3339(e.time),
            kind: e.kind,
            mailbox: e.mailbox.unwrap_or_default(),
            protocol: e.protocol.unwrap_or_default(),
            client: e.client.unwrap_or_default(),
            detail: e.detail,
        })
        .collect();
    let kinds = [
        "accepted",
        "rejected",
        "login",
        "login_failed",
        "collected",
        "deleted",
        "admin",
    ]
    .into_iter()
    .map(|k| (k, k == kind))
    .collect();
    let page = ActivityPage {
        page: PageInfo::new(&app, Some(&session)),
        events,
        mailbox,
        kinds,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    page: PageInfo,
    settings: String,
    traces: Vec<(&'static str, bool)>,
}

/// The configuration as TOML, with anything that looks secret masked.
pub fn masked_settings(config: &crate::config::Config) -> String {
    let mut value = toml::Value::try_from(config).unwrap_or(toml::Value::String(String::new()));
    mask(&mut value, "");
    toml::to_string_pretty(&value).unwrap_or_default()
}

fn mask(value: &mut toml::Value, key: &str) {
    let secret = ["password", "secret", "token"]
        .iter()
        .any(|w| key.contains(w));
    match value {
        toml::Value::Table(t) => t.iter_mut().for_each(|(k, v)| mask(v, k)),
        toml::Value::Array(a) => a.iter_mut().for_each(|v| mask(v, key)),
        toml::Value::String(s) if secret && !s.is_empty() => *s = "***".into(),
        _ => {}
    }
}

pub async fn settings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match logged_in(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut page = PageInfo::new(&app, Some(&session));
    if query.get("done").is_some_and(|d| d == "trace") {
        page.notice = "Protocol trace changed.".into();
    }
    let trace = &app.state.trace;
    let page = SettingsPage {
        page,
        settings: masked_settings(&app.state.config),
        traces: ["smtp", "pop3", "imap"]
            .into_iter()
            .map(|p| (p, trace.on(p)))
            .collect(),
    };
    render(StatusCode::OK, &page)
}

pub async fn trace(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let session = match posted(&app, &headers, &form).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let protocol = form.get("protocol").cloned().unwrap_or_default();
    let on = form.get("action").is_some_and(|a| a == "on");
    let minutes = form
        .get("minutes")
        .and_then(|m| m.parse().ok())
        .unwrap_or(15);
    match app.state.trace.set(&protocol, on, minutes) {
        Ok(_) => {
            super::api::record(
                &app,
                &who(&session),
                if on { "trace.on" } else { "trace.off" },
                &protocol,
            );
            Redirect::to("/settings?done=trace").into_response()
        }
        Err(e) => error_page(&app, Some(&session), StatusCode::BAD_REQUEST, &e),
    }
}
