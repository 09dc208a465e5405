//! Recent activity: the event stream of the console (the last [`KEEP_EVENTS`]), when each
//! gateway mailbox last received a report and was last collected (by which protocol, from
//! which address), messages received and collected per hour for the last week, rejects by
//! reason and login/TLS failures per hour (for the dashboard and the alerts).
//!
//! Kept in memory and written to `data_dir/console/activity.json` every [`SAVE_EVERY`] and at
//! shutdown, so the dashboard and the "not collected for N hours" alert survive a restart.
//! Nothing in it is message content: mailbox IDs, client addresses, sizes, reasons.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Events kept for the activity page.
pub const KEEP_EVENTS: usize = 10_000;
/// Events written to disk (the newest).
const SAVE_EVENTS: usize = 2_000;
/// How often the activity is written out.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);
/// Hours of hourly counts kept (the chart shows a week).
const KEEP_HOURS: i64 = 24 * 8;

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Unix seconds.
    pub time: i64,
    /// `accepted`, `rejected`, `login`, `login_failed`, `collected`, `deleted`, `admin`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default)]
    pub detail: String,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        Event {
            time: chrono::Utc::now().timestamp(),
            kind: kind.to_owned(),
            mailbox: None,
            protocol: None,
            client: None,
            detail: String::new(),
        }
    }

    pub fn mailbox(mut self, mailbox: &str) -> Event {
        self.mailbox = Some(mailbox.to_owned());
        self
    }

    pub fn protocol(mut self, protocol: &str) -> Event {
        self.protocol = Some(protocol.to_owned());
        self
    }

    pub fn client(mut self, client: IpAddr) -> Event {
        self.client = Some(client.to_string());
        self
    }

    pub fn detail(mut self, detail: String) -> Event {
        self.detail = detail;
        self
    }
}

/// The last collection of a mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Collection {
    pub time: i64,
    pub protocol: String,
    pub client: String,
}

/// What is known of one mailbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MailboxActivity {
    pub last_received: Option<i64>,
    pub last_collected: Option<Collection>,
}

/// Counts of one hour.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hour {
    pub received: u64,
    pub collected: u64,
    pub login_failures: u64,
    pub tls_failures: u64,
    #[serde(default)]
    pub rejects: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    events: VecDeque<Event>,
    mailboxes: HashMap<String, MailboxActivity>,
    /// Unix hour (seconds / 3600) -> counts.
    hours: BTreeMap<i64, Hour>,
}

pub struct Activity {
    path: Option<PathBuf>,
    inner: Mutex<Saved>,
}

fn hour_of(time: i64) -> i64 {
    time.div_euclid(3600)
}

impl Activity {
    /// The activity saved under `data_dir` (empty when there is none or it is unreadable).
    pub fn open(data_dir: &Path) -> Activity {
        let path = data_dir.join("console").join("activity.json");
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Activity {
            path: Some(path),
            inner: Mutex::new(saved),
        }
    }

    /// An activity that is never saved (tests, fuzzing).
    pub fn in_memory() -> Activity {
        Activity {
            path: None,
            inner: Mutex::new(Saved::default()),
        }
    }

    pub fn record(&self, event: Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let hour = inner.hours.entry(hour_of(event.time)).or_default();
        match event.kind.as_str() {
            "accepted" => hour.received += 1,
            "login_failed" => hour.login_failures += 1,
            "rejected" => {
                let reason = event.detail.split(':').next().unwrap_or("other").to_owned();
                *hour.rejects.entry(reason).or_default() += 1;
            }
            _ => {}
        }
        if event.kind == "accepted" {
            if let Some(m) = &event.mailbox {
                inner.mailboxes.entry(m.clone()).or_default().last_received = Some(event.time);
            }
        }
        inner.events.push_back(event);
        while inner.events.len() > KEEP_EVENTS {
            inner.events.pop_front();
        }
    }

    /// Messages of a mailbox were downloaded: the hour's count and the mailbox's last
    /// collection (the event comes once per session).
    pub fn collected(&self, mailbox: &str, protocol: &str, client: IpAddr, count: usize) {
        let now = chrono::Utc::now().timestamp();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.hours.entry(hour_of(now)).or_default().collected += count as u64;
        inner
            .mailboxes
            .entry(mailbox.to_owned())
            .or_default()
            .last_collected = Some(Collection {
            time: now,
            protocol: protocol.to_owned(),
            client: client.to_string(),
        });
    }

    pub fn tls_failure(&self, _client: IpAddr) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = chrono::Utc::now().timestamp();
        inner.hours.entry(hour_of(now)).or_default().tls_failures += 1;
    }

    /// The newest events first, filtered by mailbox and kind.
    pub fn events(&self, mailbox: Option<&str>, kind: Option<&str>, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .events
            .iter()
            .rev()
            .filter(|e| mailbox.is_none_or(|m| e.mailbox.as_deref() == Some(m)))
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn mailbox(&self, id: &str) -> MailboxActivity {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.mailboxes.get(id).cloned().unwrap_or_default()
    }

    /// Hourly counts from `hours` hours ago to now, oldest first (missing hours are zero).
    pub fn hours(&self, hours: i64) -> Vec<(i64, Hour)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = hour_of(chrono::Utc::now().timestamp());
        (now - hours + 1..=now)
            .map(|h| (h * 3600, inner.hours.get(&h).cloned().unwrap_or_default()))
            .collect()
    }

    /// Rejects by reason over the last `hours` hours.
    pub fn rejects(&self, hours: i64) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (_, hour) in self.hours(hours) {
            for (reason, n) in hour.rejects {
                *out.entry(reason).or_default() += n;
            }
        }
        out
    }

    /// Login and TLS failures over the last hour and the one before (a sliding hour).
    pub fn failures_last_hour(&self) -> (u64, u64) {
        let now = chrono::Utc::now().timestamp();
        let into = (now.rem_euclid(3600)) as f64 / 3600.0;
        let hours = self.hours(2);
        let (prev, cur) = (&hours[0].1, &hours[1].1);
        let weigh = |p: u64, c: u64| c + ((p as f64) * (1.0 - into)).round() as u64;
        (
            weigh(prev.login_failures, cur.login_failures),
            weigh(prev.tls_failures, cur.tls_failures),
        )
    }

    /// Writes the activity out (atomically); drops hours older than a week first.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let json = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let oldest = hour_of(chrono::Utc::now().timestamp()) - KEEP_HOURS;
            inner.hours.retain(|h, _| *h >= oldest);
            let skip = inner.events.len().saturating_sub(SAVE_EVENTS);
            let saved = Saved {
                events: inner.events.iter().skip(skip).cloned().collect(),
                mailboxes: inner.mailboxes.clone(),
                hours: inner.hours.clone(),
            };
            serde_json::to_vec(&saved).expect("serializes")
        };
        if let Some(dir) = path.parent() {
            fsutil::create_private_dir(dir)?;
        }
        fsutil::write_atomic(path, &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_counts_and_saving() {
        let dir = std::env::temp_dir().join(format!("jg-act-{}", crate::crypto::random_hex128()));
        let activity = Activity::open(&dir);
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        activity.record(Event::new("accepted").mailbox("mbx-a").client(ip));
        activity.record(Event::new("rejected").detail("unknown_mailbox: 550".into()));
        activity.collected("mbx-a", "pop3", ip, 3);
        activity.record(Event::new("collected").mailbox("mbx-a"));
        let hours = activity.hours(168);
        assert_eq!(hours.len(), 168);
        let last = &hours[167].1;
        assert_eq!((last.received, last.collected), (1, 3));
        assert_eq!(activity.rejects(24)["unknown_mailbox"], 1);
        assert_eq!(activity.events(Some("mbx-a"), None, 10).len(), 2);
        assert_eq!(activity.events(None, Some("rejected"), 10).len(), 1);
        activity.save().unwrap();
        let again = Activity::open(&dir);
        let m = again.mailbox("mbx-a");
        assert!(m.last_received.is_some());
        assert_eq!(m.last_collected.unwrap().protocol, "pop3");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
