//! What every handler needs: the application state, the connection it came on, who is
//! asking (a session cookie or a bearer token), JSON errors with stable codes, and running
//! file work off the async threads.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::accounts::{self, Accounts};
use super::ops::OpError;
use super::session::{self, Session, Sessions};
use crate::context::State;

/// Shared by every request.
pub struct App {
    pub state: Arc<State>,
    pub accounts: Accounts,
    pub sessions: Sessions,
    /// Checked against for unknown administrator names, so they cost what a wrong
    /// password costs.
    pub decoy: String,
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// A JSON error: `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in, or send Authorization: Bearer <token>",
        )
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let (status, code) = match &e {
            OpError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            OpError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            OpError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            OpError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            OpError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Who {
    Admin { name: String, csrf: String },
    Token { name: String, read_only: bool },
}

impl Who {
    pub fn name(&self) -> String {
        match self {
            Who::Admin { name, .. } => format!("admin:{name}"),
            Who::Token { name, .. } => format!("token:{name}"),
        }
    }
}

/// Runs file work on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

impl App {
    /// The live session a request's cookie names, if any (it ends when its administrator
    /// was deleted or got a new password).
    pub async fn session(self: &Arc<Self>, headers: &HeaderMap) -> Option<Session> {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::cookie_value(h, session::COOKIE))?
            .to_owned();
        let session = self.sessions.get(&cookie)?;
        let accounts = self.accounts.clone();
        let name = session.admin.clone();
        let current = tokio::task::spawn_blocking(move || accounts.admin(&name))
            .await
            .ok()?
            .ok()??;
        if current.hash != session.hash {
            self.sessions.end(&cookie);
            return None;
        }
        Some(session)
    }

    /// Who an API request comes from; writes need a write token, or a session with its
    /// CSRF token in `X-CSRF-Token`.
    pub async fn api_caller(
        self: &Arc<Self>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Who, ApiError> {
        let writes = !matches!(*method, Method::GET | Method::HEAD);
        if let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            let accounts = self.accounts.clone();
            let presented = bearer.to_owned();
            let token = tokio::task::spawn_blocking(move || {
                let token = accounts.find_token(&presented).ok().flatten()?;
                if let Err(e) = accounts.mark_used(&token.name) {
                    tracing::warn!(error = %e, "cannot note a token's use");
                }
                Some(token)
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(ApiError::unauthorized)?;
            if writes && token.read_only {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "read_only",
                    "this token may only read",
                ));
            }
            return Ok(Who::Token {
                name: token.name,
                read_only: token.read_only,
            });
        }
        let session = self
            .session(headers)
            .await
            .ok_or_else(ApiError::unauthorized)?;
        if writes {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !accounts::constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a session's write needs its X-CSRF-Token",
                ));
            }
        }
        Ok(Who::Admin {
            name: session.admin,
            csrf: session.csrf,
        })
    }
}

/// Headers every answer carries: no caching of pages, no framing, a strict content policy.
pub fn harden(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::CACHE_CONTROL, "no-store");
}
