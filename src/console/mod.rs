//! The operator's HTTPS listener (`[console] listen`, default `127.0.0.1:8450`): the web
//! console, the JSON API under `/api/v1`, `/healthz`, `/readyz` and `/metrics` (contract in
//! `docs/CONSOLE.md`).
//!
//! One port: a client that opens with a TLS handshake gets HTTPS with the shared live
//! certificate (ACME renewals reach it at once); a client that speaks plain HTTP is served
//! only from a loopback address, any other gets `400` and is closed. Every connection has a
//! header deadline and an absolute deadline; bodies over `max_body_bytes` get `413`.

pub mod accounts;
mod api;
mod cert;
mod chart;
mod health;
mod linger;
mod login;
pub mod openapi;
pub mod ops;
mod pages;
pub mod session;
mod views;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

pub use web::App;
use web::Conn;

use crate::context::State;

/// A request's headers must arrive within this.
const HEADER_DEADLINE: Duration = Duration::from_secs(30);
/// No connection lives longer than this.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(300);
/// A client must start talking within this.
const FIRST_BYTE_DEADLINE: Duration = Duration::from_secs(30);

impl App {
    pub fn new(state: Arc<State>) -> Arc<App> {
        let console = &state.config.console;
        Arc::new(App {
            accounts: accounts::Accounts::new(&state.config.data_dir),
            sessions: session::Sessions::new(
                Duration::from_secs(console.session_idle_minutes.max(1) * 60),
                Duration::from_secs(console.session_max_hours.max(1) * 3600),
            ),
            decoy: accounts::hash_password(&crate::crypto::random_password()),
            state,
        })
    }
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.state.config.console.max_body_bytes;
    let api = Router::new()
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/status", get(api::status))
        .route("/mailboxes", get(api::mailboxes).post(api::create_mailbox))
        .route(
            "/mailboxes/{id}",
            get(api::mailbox)
                .patch(api::update_mailbox)
                .delete(api::delete_mailbox),
        )
        .route("/mailboxes/{id}/reset-password", post(api::reset_mailbox))
        .route("/users", get(api::users).post(api::create_user))
        .route(
            "/users/{login}",
            get(api::user)
                .patch(api::update_user)
                .delete(api::delete_user),
        )
        .route("/users/{login}/reset-password", post(api::reset_user))
        .route(
            "/certificate",
            get(api::certificate).post(api::upload_certificate),
        )
        .route("/certificate/renew", post(api::renew_certificate))
        .route("/events", get(api::events))
        .route("/alerts", get(api::alerts))
        .route("/trace", post(api::trace))
        .fallback(api::not_found);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .nest("/api/v1", api)
        .route("/api", get(api::not_found))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/", get(pages::dashboard))
        .route(
            "/mailboxes",
            get(pages::mailboxes).post(pages::create_mailbox),
        )
        .route("/mailboxes/{id}", get(pages::mailbox))
        .route("/mailboxes/{id}/{action}", post(pages::mailbox_action))
        .route("/users", get(pages::users).post(pages::create_user))
        .route("/users/{login}", get(pages::user))
        .route("/users/{login}/{action}", post(pages::user_action))
        .route("/certificate", get(views::certificate))
        .route("/certificate/renew", post(views::renew))
        .route("/certificate/upload", post(views::upload))
        .route("/activity", get(views::activity))
        .route("/settings", get(views::settings))
        .route("/trace", post(views::trace))
        .route("/static/console.css", get(pages::stylesheet))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(harden))
        .with_state(app)
}

async fn harden(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response = web::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than [console] max_body_bytes",
        )
        .into_response();
    }
    web::harden(response.headers_mut());
    response
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return web::ApiError::not_found("API path").into_response();
    }
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Serves the console until shutdown.
pub async fn run(listener: TcpListener, state: Arc<State>) {
    let app = App::new(state.clone());
    let router = router(app);
    let tls = Arc::new(console_tls(&state));
    let mut shutdown = state.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (router, tls, state) = (router.clone(), tls.clone(), state.clone());
        tokio::spawn(async move {
            let _session = state.telemetry.session("console");
            let served = tokio::time::timeout(
                CONNECTION_DEADLINE,
                connection(tcp, peer, router, tls, state.clone()),
            )
            .await;
            if served.is_err() {
                tracing::debug!(client = %peer, "console connection closed at its deadline");
            }
        });
    }
}

/// The console's TLS: the shared live certificate, offering HTTP/2 and HTTP/1.1.
fn console_tls(state: &State) -> tokio_rustls::TlsAcceptor {
    let mut config = (*crate::tls::server_config(state.resolver.clone())).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Arc<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_DEADLINE, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == 0x16 {
        match tokio::time::timeout(crate::net::TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(stream)) => serve(stream, Conn { peer, tls: true }, router).await,
            _ => state.telemetry.tls_failure("console", peer.ip()),
        }
    } else if peer.ip().is_loopback() {
        serve(tcp, Conn { peer, tls: false }, router).await;
    } else {
        let mut tcp = tcp;
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 46\r\n\r\nThis port speaks HTTPS: use https:// instead.\n")
            .await;
        let _ = tcp.shutdown().await;
    }
}

async fn serve<S>(stream: S, conn: Conn, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(conn);
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .max_buf_size(64 << 10);
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(linger::Lingering::new(stream)), service)
        .await
    {
        tracing::debug!(client = %conn.peer, error = %e, "console connection ended");
    }
}
