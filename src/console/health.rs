//! `/healthz` (the process serves), `/readyz` (listeners bound, disk above the reserve,
//! certificate valid) and `/metrics` (Prometheus text; a token or a scrape network).

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::web::{ApiError, App, Conn};
use crate::telemetry::metrics::{MailboxGauges, Snapshot};

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let state = app.state.clone();
    let checks = tokio::task::spawn_blocking(move || {
        let config = &state.config;
        let wanted = [
            &config.smtp.listen,
            &config.smtp.listen_tls,
            &config.pop3.listen,
            &config.pop3.listen_tls,
            &config.imap.listen,
            &config.imap.listen_tls,
        ]
        .iter()
        .map(|l| l.len())
        .sum::<usize>();
        let bound = state.listeners().len();
        let free = super::ops::disk_free(&state);
        let reserve = config.spool.min_free_bytes;
        let days = state.resolver.days_left();
        json!({
            "listeners": {"ok": bound >= wanted, "bound": bound, "configured": wanted},
            "disk": {"ok": free > reserve, "free_bytes": free, "reserve_bytes": reserve},
            "certificate": {"ok": days >= 0, "days_left": days},
        })
    })
    .await
    .unwrap_or_else(|e| json!({"internal": {"ok": false, "error": e.to_string()}}));
    let ready = checks
        .as_object()
        .is_some_and(|c| c.values().all(|v| v["ok"] == true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

pub async fn metrics(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<Conn>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let scrape_network = app
        .state
        .config
        .console
        .scrape_networks
        .iter()
        .any(|n| n.contains(&conn.peer.ip()));
    if !scrape_network {
        if let Err(e) = app.api_caller(&method, &headers).await {
            return e.into_response();
        }
    }
    let state = app.state.clone();
    let text = tokio::task::spawn_blocking(move || {
        let snapshot = snapshot(&state);
        state.telemetry.metrics.render(&snapshot)
    })
    .await;
    match text {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

/// The state the gauges show (lists every mailbox: blocking).
fn snapshot(state: &crate::context::State) -> Snapshot {
    let mailboxes = state
        .spool
        .mailboxes()
        .list()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let (messages, bytes) = state
                .mailbox_totals(&r.id)
                .map(|(m, b)| (m as i64, b as i64))
                .unwrap_or((0, 0));
            let activity = state.telemetry.activity.mailbox(r.id.as_str());
            MailboxGauges {
                id: r.id.to_string(),
                messages,
                bytes,
                last_received: activity.last_received,
                last_collected: activity.last_collected.map(|c| c.time),
            }
        })
        .collect();
    let archive = state.archive.as_ref().and_then(|a| {
        let stats = a.stats().ok()?;
        Some((
            stats.items as i64,
            stats.pending as i64,
            stats.untrusted_reports as i64,
            stats.recovery_key.is_some(),
        ))
    });
    let expiry = state
        .resolver
        .status(state.config.tls.source)
        .not_after_unix();
    Snapshot {
        mailboxes,
        archive,
        certificate_expiry: expiry,
        disk_free: super::ops::disk_free(state) as i64,
        alerts: state.alerts.counts(),
        cluster: state.cluster.as_ref().map(|c| c.status.get()),
    }
}
