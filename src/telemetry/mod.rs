//! What the operator sees of the gateway at work: Prometheus [`metrics`] and the recent
//! [`activity`] (the event stream, the last report received and last collection per mailbox,
//! hourly counts for the dashboard's chart, rejects by reason, failure rates for alerts).
//!
//! The protocol sessions report through [`Telemetry`]; both halves are updated from one call,
//! so the counters, the dashboard and the alerts never disagree.

pub mod activity;
pub mod metrics;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub use activity::{Activity, Event};
pub use metrics::Metrics;

/// Recording for the whole process.
pub struct Telemetry {
    pub metrics: Metrics,
    pub activity: Activity,
}

impl Telemetry {
    /// Loads the activity kept under `data_dir` (a fresh one when there is none).
    pub fn open(data_dir: &Path) -> Telemetry {
        Telemetry {
            metrics: Metrics::new(),
            activity: Activity::open(data_dir),
        }
    }

    /// A message was stored for `mailbox` (durable, answered 250).
    pub fn accepted(&self, mailbox: &str, size: u64, client: IpAddr, commit: Duration) {
        self.metrics.accepted(mailbox, size, commit);
        self.activity.record(
            Event::new("accepted")
                .mailbox(mailbox)
                .protocol("smtp")
                .client(client)
                .detail(format!("{size} octets")),
        );
    }

    /// An SMTP reply refused something (its reason, from [`reject_reason`]).
    pub fn rejected(
        &self,
        reason: &'static str,
        mailbox: Option<&str>,
        client: IpAddr,
        reply: &str,
    ) {
        self.metrics.rejected(reason);
        let mut event = Event::new("rejected")
            .protocol("smtp")
            .client(client)
            .detail(format!("{reason}: {}", reply.trim_end()));
        if let Some(m) = mailbox {
            event = event.mailbox(m);
        }
        self.activity.record(event);
    }

    /// A login was tried; `who` is the mailbox ID (or archive user) when it succeeded.
    pub fn login(&self, protocol: &'static str, ok: bool, who: Option<&str>, client: IpAddr) {
        self.metrics.login(protocol, ok);
        let mut event = Event::new(if ok { "login" } else { "login_failed" })
            .protocol(protocol)
            .client(client);
        if let Some(w) = who {
            event = event.mailbox(w);
        }
        self.activity.record(event);
    }

    /// Messages of a gateway mailbox were downloaded (no event: see [`Telemetry::collection`]).
    pub fn collected(&self, mailbox: &str, protocol: &'static str, client: IpAddr, count: usize) {
        self.activity.collected(mailbox, protocol, client, count);
    }

    /// A session that downloaded messages ended: one event for all of them.
    pub fn collection(&self, mailbox: &str, protocol: &'static str, client: IpAddr, count: usize) {
        self.activity.record(
            Event::new("collected")
                .mailbox(mailbox)
                .protocol(protocol)
                .client(client)
                .detail(format!("{count} messages")),
        );
    }

    /// Messages of a gateway mailbox were deleted by its archiver.
    pub fn deleted(&self, mailbox: &str, protocol: &'static str, client: IpAddr, count: usize) {
        self.activity.record(
            Event::new("deleted")
                .mailbox(mailbox)
                .protocol(protocol)
                .client(client)
                .detail(format!("{count} messages")),
        );
    }

    /// A TLS handshake failed.
    pub fn tls_failure(&self, protocol: &'static str, client: IpAddr) {
        self.metrics.tls_failure(protocol);
        self.activity.tls_failure(client);
    }

    /// An administrator changed something (console, API).
    pub fn admin(&self, actor: &str, action: &str, target: &str) {
        self.activity.record(
            Event::new("admin")
                .mailbox(target)
                .detail(format!("{action} by {actor}")),
        );
    }

    /// A session of `protocol` is open while the guard lives.
    pub fn session(&self, protocol: &'static str) -> metrics::SessionGuard {
        self.metrics.session(protocol)
    }
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The reason an SMTP reply refuses something, for `journalgate_smtp_rejected_total{reason}`
/// and the dashboard; none for a positive reply.
pub fn reject_reason(reply: &str) -> Option<&'static str> {
    let code = reply.get(..3)?;
    if !code.starts_with(['4', '5']) {
        return None;
    }
    let enhanced = reply.get(4..9).unwrap_or("");
    Some(match (code, enhanced) {
        ("550", "5.1.1") => "unknown_mailbox",
        ("550", "5.7.1") => "relay_denied",
        ("450", "4.2.1") => "suspended",
        ("552", _) => "too_big",
        ("554", "5.7.1") => "network_denied",
        ("530", _) => "tls_required",
        ("452", "4.3.1") => "disk_low",
        ("452", "4.5.3") => "too_many_recipients",
        ("421", "4.3.2") => "busy",
        ("421", "4.4.2") | ("451", "4.4.2") => "timeout",
        ("421", "4.7.0") => "too_many_errors",
        ("451", _) => "temporary_failure",
        ("554", _) => "no_valid_recipients",
        ("500", _) | ("501", _) | ("502", _) | ("503", _) | ("504", _) => "protocol_error",
        _ => "other",
    })
}

#[cfg(test)]
mod tests {
    use super::reject_reason;

    #[test]
    fn replies_map_to_reasons() {
        assert_eq!(reject_reason("250 2.0.0 OK"), None);
        assert_eq!(
            reject_reason("550 5.1.1 No such mailbox"),
            Some("unknown_mailbox")
        );
        assert_eq!(
            reject_reason("450 4.2.1 Mailbox suspended"),
            Some("suspended")
        );
        assert_eq!(reject_reason("452 4.3.1 Insufficient"), Some("disk_low"));
        assert_eq!(reject_reason("503 5.5.1 Need MAIL"), Some("protocol_error"));
        assert_eq!(reject_reason("354 go ahead"), None);
        assert_eq!(reject_reason(""), None);
    }
}
