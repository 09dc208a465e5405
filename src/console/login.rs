//! Logging in and out of the console. A login is checked under the same per-address
//! admission and doubling delay as POP3/IMAP logins; an unknown name costs what a wrong
//! password costs (a decoy argon2id hash is checked), and both get the same answer.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Extension, Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::accounts::verify_password;
use super::pages::{posted, render, Fields, PageInfo};
use super::session::{clear_cookie, cookie_value, set_cookie, COOKIE};
use super::web::{App, Conn};
use crate::auth::AuthError;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: PageInfo,
}

pub async fn form(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.session(&headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    render(
        StatusCode::OK,
        &LoginPage {
            page: PageInfo::new(&app, None),
        },
    )
}

pub async fn submit(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    Form(form): Form<Fields>,
) -> Response {
    let name = form.get("name").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let accounts = app.accounts.clone();
    let decoy = app.decoy.clone();
    let (who, ip) = (name.clone(), conn.peer.ip());
    let checked = app
        .state
        .auth
        .checked(ip, async move {
            let found = tokio::task::spawn_blocking(move || {
                let admin = accounts.admin(&who).ok().flatten();
                let hash = admin.as_ref().map(|a| a.hash.clone()).unwrap_or(decoy);
                (verify_password(&password, &hash) && admin.is_some()).then_some(admin)
            })
            .await
            .map_err(|e| AuthError::Temporary(e.to_string()))?;
            found.flatten().ok_or(AuthError::Invalid)
        })
        .await;
    match checked {
        Ok(admin) => {
            app.state
                .telemetry
                .login("console", true, Some(&admin.name), ip);
            app.state.audit.record(
                crate::audit::Event::new("console.login", format!("admin:{}", admin.name))
                    .client(ip),
            );
            let (cookie, _) = app.sessions.create(&admin.name, &admin.hash);
            let max =
                std::time::Duration::from_secs(app.state.config.console.session_max_hours * 3600);
            (
                [(header::SET_COOKIE, set_cookie(&cookie, conn.tls, max))],
                Redirect::to("/"),
            )
                .into_response()
        }
        Err(e) => {
            app.state.telemetry.login("console", false, None, ip);
            app.state.audit.record(
                crate::audit::Event::new("console.login", "console")
                    .client(ip)
                    .result("failed"),
            );
            let mut page = PageInfo::new(&app, None);
            page.error = match e {
                AuthError::Invalid => "Wrong administrator name or password.".into(),
                AuthError::Busy => {
                    "Too many logins in progress from your address; try again.".into()
                }
                AuthError::Temporary(_) => "The login could not be checked; try again.".into(),
            };
            render(StatusCode::UNAUTHORIZED, &LoginPage { page })
        }
    }
}

pub async fn logout(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    if let Err(r) = posted(&app, &headers, &form).await {
        return r;
    }
    if let Some(cookie) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie_value(h, COOKIE))
    {
        app.sessions.end(cookie);
    }
    (
        [(header::SET_COOKIE, clear_cookie(conn.tls))],
        Redirect::to("/login"),
    )
        .into_response()
}
