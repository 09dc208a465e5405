//! Alerts before reports are lost: a mailbox that stopped receiving (a broken journal rule),
//! a mailbox whose archiver stopped collecting, a certificate about to lapse, a disk filling
//! up, an archive falling behind, and floods of failed logins or TLS handshakes.
//!
//! Every `check_interval_secs` the server [`evaluate`]s the conditions; an alert that starts
//! is sent (webhook and/or e-mail, see [`deliver`]), sent again every `resend_hours` while it
//! lasts, and followed by a `resolved` notice when it ends. Firing alerts are shown on the
//! dashboard, in `/api/v1/alerts` and in `journalgate_alerts_firing`.

pub mod deliver;
mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use rules::evaluate;

use crate::config::AlertsConfig;

/// One alert and what it is about (a mailbox, or nothing).
pub type Key = (&'static str, Option<String>);

/// A condition found true now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub alert: &'static str,
    pub mailbox: Option<String>,
    pub message: String,
}

/// What is sent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Notice {
    pub alert: String,
    /// `firing` or `resolved`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    pub message: String,
    /// RFC 3339.
    pub since: String,
    pub host: String,
}

/// A firing alert as shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AlertView {
    pub alert: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    pub message: String,
    pub since: String,
}

struct Firing {
    message: String,
    since: i64,
    last_sent: Option<i64>,
}

/// The alerts' state: what fires, since when, when it was last sent.
pub struct Alerts {
    config: AlertsConfig,
    firing: Mutex<HashMap<Key, Firing>>,
}

impl Alerts {
    pub fn new(config: &AlertsConfig) -> Arc<Alerts> {
        Arc::new(Alerts {
            config: config.clone(),
            firing: Mutex::new(HashMap::new()),
        })
    }

    /// Firing alerts, oldest first.
    pub fn firing(&self) -> Vec<AlertView> {
        let firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<AlertView> = firing
            .iter()
            .map(|((alert, mailbox), f)| AlertView {
                alert: (*alert).to_owned(),
                state: "firing",
                mailbox: mailbox.clone(),
                message: f.message.clone(),
                since: crate::telemetry::rfc3339(f.since),
            })
            .collect();
        out.sort_by(|a, b| (&a.since, &a.alert).cmp(&(&b.since, &b.alert)));
        out
    }

    /// How many of each alert fire (for the metrics).
    pub fn counts(&self) -> Vec<(String, i64)> {
        let firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for (alert, _) in firing.keys() {
            *counts.entry(alert).or_default() += 1;
        }
        counts.into_iter().map(|(a, n)| (a.to_owned(), n)).collect()
    }

    /// Takes the conditions true now; returns the notices to send (starts, reminders,
    /// resolutions).
    pub fn update(&self, now: i64, conditions: Vec<Condition>, host: &str) -> Vec<Notice> {
        let resend = (self.config.resend_hours * 3600.0) as i64;
        let mut firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        let mut notices = Vec::new();
        let mut seen = Vec::new();
        for c in conditions {
            let key: Key = (c.alert, c.mailbox.clone());
            seen.push(key.clone());
            let entry = firing.entry(key).or_insert(Firing {
                message: c.message.clone(),
                since: now,
                last_sent: None,
            });
            entry.message = c.message;
            let due = match entry.last_sent {
                None => true,
                Some(t) => resend > 0 && now - t >= resend,
            };
            if due {
                entry.last_sent = Some(now);
                notices.push(notice(c.alert, &c.mailbox, entry, "firing", host));
            }
        }
        let ended: Vec<Key> = firing
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in ended {
            if let Some(f) = firing.remove(&key) {
                notices.push(notice(key.0, &key.1, &f, "resolved", host));
            }
        }
        notices
    }
}

fn notice(alert: &str, mailbox: &Option<String>, f: &Firing, state: &str, host: &str) -> Notice {
    Notice {
        alert: alert.to_owned(),
        state: state.to_owned(),
        mailbox: mailbox.clone(),
        message: f.message.clone(),
        since: crate::telemetry::rfc3339(f.since),
        host: host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silent(mailbox: &str) -> Condition {
        Condition {
            alert: "mailbox_silent",
            mailbox: Some(mailbox.into()),
            message: "nothing received".into(),
        }
    }

    #[test]
    fn start_remind_and_resolve() {
        let alerts = Alerts::new(&AlertsConfig {
            resend_hours: 1.0,
            ..AlertsConfig::default()
        });
        let sent = alerts.update(0, vec![silent("a")], "gw");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].state, "firing");
        assert!(alerts.update(60, vec![silent("a")], "gw").is_empty());
        let again = alerts.update(3600, vec![silent("a"), silent("b")], "gw");
        assert_eq!(again.len(), 2, "a reminded, b started");
        assert_eq!(alerts.firing().len(), 2);
        let resolved = alerts.update(3700, vec![silent("b")], "gw");
        assert_eq!(resolved.len(), 1);
        assert_eq!(
            (resolved[0].state.as_str(), resolved[0].mailbox.as_deref()),
            ("resolved", Some("a"))
        );
        assert_eq!(alerts.counts(), vec![("mailbox_silent".to_owned(), 1)]);
    }
}
