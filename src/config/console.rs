//! `[console]` (the operator's HTTPS listener) and `[alerts]` (what is watched, and where
//! alerts go). See `docs/CONSOLE.md`.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Empty string disables the console.
    pub listen: String,
    /// Clients that may read `/metrics` without a token.
    pub scrape_networks: Vec<IpNet>,
    /// A session unused this long ends.
    pub session_idle_minutes: u64,
    /// Any session ends this long after its login.
    pub session_max_hours: u64,
    /// Larger request bodies are refused (413).
    pub max_body_bytes: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: "127.0.0.1:8450".into(),
            scrape_networks: vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            session_idle_minutes: 30,
            session_max_hours: 12,
            max_body_bytes: 1 << 20,
        }
    }
}

/// How the alert mail relay is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Tls,
    None,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub check_interval_secs: f64,
    /// A firing alert is sent again this often.
    pub resend_hours: f64,
    /// A mailbox that received nothing this long (0: off).
    pub silence_hours: f64,
    /// A mailbox holding mail not collected this long (0: off).
    pub uncollected_hours: f64,
    /// The certificate expires within this many days (0: off).
    pub cert_days: f64,
    /// Free disk below this (0: twice `[spool] min_free_bytes`).
    pub disk_free_bytes: u64,
    /// Intake files waiting to be archived (0: off).
    pub archive_backlog: u64,
    pub login_failures_per_hour: u64,
    pub tls_failures_per_hour: u64,
    pub webhook_url: String,
    pub email_to: Vec<String>,
    /// Default `journalgate@<hostname>`.
    pub email_from: String,
    /// `host:port` of the relay alerts are mailed through.
    pub smtp_relay: String,
    pub smtp_tls: SmtpTls,
    pub smtp_username: String,
    /// The relay password is read from this file, never from the configuration.
    pub smtp_password_file: Option<PathBuf>,
    /// An extra CA for the relay's certificate.
    pub smtp_ca_file: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            check_interval_secs: 60.0,
            resend_hours: 24.0,
            silence_hours: 24.0,
            uncollected_hours: 4.0,
            cert_days: 14.0,
            disk_free_bytes: 0,
            archive_backlog: 1000,
            login_failures_per_hour: 100,
            tls_failures_per_hour: 100,
            webhook_url: String::new(),
            email_to: vec![],
            email_from: String::new(),
            smtp_relay: String::new(),
            smtp_tls: SmtpTls::Starttls,
            smtp_username: String::new(),
            smtp_password_file: None,
            smtp_ca_file: None,
        }
    }
}
