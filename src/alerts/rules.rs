//! The conditions alerts watch, evaluated against the running gateway (blocking: it lists
//! mailboxes), and the server's task that checks them and sends what is due.

use std::sync::Arc;
use std::time::Duration;

use super::{deliver, Alerts, Condition};
use crate::context::State;
use crate::mailbox::Status;

impl Alerts {
    /// Checks the conditions every `check_interval_secs` and sends what is due, until the
    /// server stops.
    pub async fn run(self: Arc<Self>, state: Arc<State>) {
        let every = Duration::from_secs_f64(self.config.check_interval_secs.max(0.2));
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let checked = state.clone();
            let conditions = tokio::task::spawn_blocking(move || evaluate(&checked)).await;
            let Ok(conditions) = conditions else { continue };
            let now = chrono::Utc::now().timestamp();
            let notices = self.update(now, conditions, &state.config.hostname);
            for notice in notices {
                tracing::warn!(alert = %notice.alert, state = %notice.state,
                    mailbox = notice.mailbox.as_deref().unwrap_or(""), message = %notice.message, "alert");
                for (channel, result) in
                    deliver::send(&self.config, &state.config.hostname, &notice).await
                {
                    if let Err(e) = result {
                        tracing::error!(channel, error = %e, alert = %notice.alert, "alert not delivered");
                    }
                }
            }
        }
    }
}

/// Every condition that holds now.
pub fn evaluate(state: &State) -> Vec<Condition> {
    let config = &state.config.alerts;
    let now = chrono::Utc::now().timestamp();
    let mut out = Vec::new();
    let hours = |h: f64| (h * 3600.0) as i64;
    match state.spool.mailboxes().list() {
        Ok(mailboxes) => {
            for record in mailboxes.iter().filter(|r| r.status == Status::Active) {
                let id = record.id.as_str();
                let activity = state.telemetry.activity.mailbox(id);
                let created = chrono::DateTime::parse_from_rfc3339(&record.created)
                    .map(|t| t.timestamp())
                    .unwrap_or(now);
                if config.silence_hours > 0.0 {
                    let since = activity.last_received.unwrap_or(created);
                    if now - since >= hours(config.silence_hours) {
                        out.push(Condition {
                            alert: "mailbox_silent",
                            mailbox: Some(id.to_owned()),
                            message: format!(
                                "mailbox {id} ({}) has received nothing since {}: is the journal rule still sending to it?",
                                record.name,
                                crate::telemetry::rfc3339(since)
                            ),
                        });
                    }
                }
                if config.uncollected_hours > 0.0 {
                    if let Some(c) = uncollected(
                        state,
                        record,
                        &activity,
                        now,
                        hours(config.uncollected_hours),
                    ) {
                        out.push(c);
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "alerts: cannot list mailboxes"),
    }
    certificate(state, &mut out);
    disk(state, &mut out);
    if let (Some(archive), n) = (&state.archive, config.archive_backlog) {
        if n > 0 {
            let pending = archive.stats().map(|s| s.pending).unwrap_or(0);
            if pending >= n {
                out.push(Condition {
                    alert: "archive_backlog",
                    mailbox: None,
                    message: format!("{pending} messages are waiting to be archived"),
                });
            }
        }
    }
    let (logins, tls) = state.telemetry.activity.failures_last_hour();
    for (alert, count, limit, what) in [
        (
            "login_failures",
            logins,
            config.login_failures_per_hour,
            "failed logins",
        ),
        (
            "tls_failures",
            tls,
            config.tls_failures_per_hour,
            "failed TLS handshakes",
        ),
    ] {
        if limit > 0 && count >= limit {
            out.push(Condition {
                alert,
                mailbox: None,
                message: format!("{count} {what} in the last hour"),
            });
        }
    }
    out
}

/// A mailbox whose oldest waiting message, and last collection, are older than `limit`.
fn uncollected(
    state: &State,
    record: &crate::mailbox::MailboxRecord,
    activity: &crate::telemetry::activity::MailboxActivity,
    now: i64,
    limit: i64,
) -> Option<Condition> {
    let waiting = state.spool.list(&record.id).ok()?;
    let oldest = waiting.iter().map(|m| m.received).min()?;
    let collected = activity
        .last_collected
        .as_ref()
        .map(|c| c.time)
        .unwrap_or(0);
    if now - oldest < limit || now - collected < limit {
        return None;
    }
    let id = record.id.as_str();
    Some(Condition {
        alert: "mailbox_uncollected",
        mailbox: Some(id.to_owned()),
        message: format!(
            "mailbox {id} ({}) holds {} messages, the oldest since {}, and was not collected since {}: is the archiver still collecting?",
            record.name,
            waiting.len(),
            crate::telemetry::rfc3339(oldest),
            if collected == 0 { "it was created".into() } else { crate::telemetry::rfc3339(collected) }
        ),
    })
}

fn certificate(state: &State, out: &mut Vec<Condition>) {
    let days = state.config.alerts.cert_days;
    let left = state.resolver.days_left();
    if days > 0.0 && (left as f64) < days {
        out.push(Condition {
            alert: "certificate_expiring",
            mailbox: None,
            message: format!("the certificate expires in {left} days"),
        });
    }
}

fn disk(state: &State, out: &mut Vec<Condition>) {
    let limit = match state.config.alerts.disk_free_bytes {
        0 => state.config.spool.min_free_bytes.saturating_mul(2),
        n => n,
    };
    if let Ok(free) = crate::fsutil::free_bytes(&state.config.data_dir) {
        if free < limit {
            out.push(Condition {
                alert: "disk_low",
                mailbox: None,
                message: format!(
                    "{free} bytes free on the data directory's disk (alert below {limit}; mail is refused below {})",
                    state.config.spool.min_free_bytes
                ),
            });
        }
    }
}
