//! Configuration: one TOML file, every key optional, unknown keys rejected by name.
//!
//! The built-in defaults are what a newcomer expects from `journalgate serve` with no file at all:
//! data in `./data`, a self-signed certificate, unprivileged loopback ports.

mod console;
pub use console::{AlertsConfig, ConsoleConfig, SmtpTls};
mod storage;
pub use storage::{Backend, StorageConfig};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Mailbox domain and certificate name.
    pub hostname: String,
    pub data_dir: PathBuf,
    pub smtp: SmtpConfig,
    pub pop3: Pop3Config,
    pub imap: ImapConfig,
    pub tls: TlsConfig,
    pub acme: AcmeConfig,
    pub console: ConsoleConfig,
    pub alerts: AlertsConfig,
    pub archive: ArchiveConfig,
    pub spool: SpoolConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            smtp: SmtpConfig::default(),
            pop3: Pop3Config::default(),
            imap: ImapConfig::default(),
            tls: TlsConfig::default(),
            acme: AcmeConfig::default(),
            console: ConsoleConfig::default(),
            alerts: AlertsConfig::default(),
            archive: ArchiveConfig::default(),
            spool: SpoolConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub max_message_size: u64,
    pub require_tls: bool,
    pub allowed_networks: Vec<IpNet>,
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_ip: usize,
    pub max_recipients: usize,
    pub timeout_secs: u64,
    /// A message body must arrive at this many octets per second on average once
    /// `data_grace_secs` have passed, or the transfer is cut off with a 451.
    pub min_data_rate: u64,
    pub data_grace_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![loopback(2525)],
            listen_tls: vec![],
            max_message_size: 160_000_000,
            require_tls: false,
            allowed_networks: vec![],
            max_connections: 500,
            max_connections_per_ip: 50,
            max_recipients: 100,
            timeout_secs: 300,
            min_data_rate: 1024,
            data_grace_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_ip: usize,
    pub timeout_secs: u64,
    /// A client must have logged in this long after connecting.
    pub login_timeout_secs: u64,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            listen: vec![loopback(1110)],
            listen_tls: vec![loopback(1995)],
            max_connections: 200,
            max_connections_per_ip: 50,
            timeout_secs: 600,
            login_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_ip: usize,
    pub max_sessions_per_mailbox: usize,
    /// A client must have logged in this long after connecting.
    pub login_timeout_secs: u64,
    /// Autologout after this long without a command (RFC 3501 asks for at least 30 min).
    pub idle_timeout_secs: u64,
    /// Longest command (and literal) accepted, in octets.
    pub max_command_size: u32,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            listen: vec![loopback(1143)],
            listen_tls: vec![loopback(1993)],
            max_connections: 200,
            max_connections_per_ip: 50,
            max_sessions_per_mailbox: 20,
            login_timeout_secs: 60,
            idle_timeout_secs: 1800,
            max_command_size: 65536,
        }
    }
}

/// Where the certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsSource {
    SelfSigned,
    Files,
    Acme,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub source: TlsSource,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            source: TlsSource::SelfSigned,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: String,
    pub domains: Vec<String>,
    pub challenge: String,
    pub http_listen: String,
    pub ca_file: String,
    pub renew_before_days: u32,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: String::new(),
            domains: vec![],
            challenge: "http-01".into(),
            http_listen: "0.0.0.0:80".into(),
            ca_file: String::new(),
            renew_before_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    pub enabled: bool,
    /// What happens to a message no archive user is found for.
    pub unknown_addresses: UnknownAddresses,
    /// Only reports from these networks are read as journal reports; from anywhere else a
    /// report is archived as a plain copy of what its SMTP envelope says.
    pub journal_sources: Vec<IpNet>,
    /// Archived items older than this are removed (0 keeps them forever); a rule of least
    /// weight beside `retention`.
    pub retention_days: u32,
    /// Retention rules (`[[archive.retention]]`): the most specific matching rule wins.
    pub retention: Vec<RetentionRule>,
    /// Headers that name the envelope recipients of plain copies (`X-Envelope-To`), trusted
    /// only from the given network.
    pub envelope_headers: Vec<EnvelopeHeader>,
    /// Where the server-held intake key lives (it must not be in `data_dir`). Default:
    /// `$CREDENTIALS_DIRECTORY/intake.key` when systemd provides it, else `<data_dir>.intake.key`
    /// beside the data directory.
    pub intake_key_file: Option<PathBuf>,
    /// Hours a new item's intake copy is kept for merging duplicate reports (0: none kept;
    /// duplicates are then stored twice).
    pub dedupe_hours: u64,
    /// Hours one sealing epoch lasts: new items are sealed to their readers through keys
    /// derived once per epoch (see `crypto::epoch`); its secret lives only in memory.
    pub key_epoch_hours: f64,
    /// The Ed25519 key that signs the integrity chain's checkpoints (like the intake key,
    /// outside `data_dir`). Default: `$CREDENTIALS_DIRECTORY/chain.key`, else
    /// `<data_dir>.chain.key`.
    pub signing_key_file: Option<PathBuf>,
    /// Minutes between signed checkpoints of the integrity chain (while it grows).
    pub checkpoint_minutes: f64,
    /// IMAP name of the folder of received mail (MailStore: "Journal Incoming"). When it is
    /// not `INBOX`, an empty `INBOX` is shown too, as IMAP requires one.
    pub inbox_folder: String,
    /// IMAP name of the folder of sent mail (MailStore: "Journal Outgoing").
    pub sent_folder: String,
    /// IMAP name of the auditors' folder of journal envelopes.
    pub envelopes_folder: String,
    /// IMAP name of the auditors' catch-all folder.
    pub unknown_folder: String,
    /// Domains whose addresses are the organisation's own: a plain copy (BCC/multidrop
    /// journaling, e.g. Google Workspace) whose sender is such an address is also filed in
    /// that user's Sent folder.
    pub internal_domains: Vec<String>,
    /// The archive database's page cache in MB (bounded: beyond it, reads come from the
    /// kernel's page cache). A header SEARCH of a million items wants ~256.
    pub cache_mb: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            unknown_addresses: UnknownAddresses::CatchAll,
            journal_sources: vec![],
            retention_days: 0,
            retention: vec![],
            envelope_headers: vec![],
            intake_key_file: None,
            dedupe_hours: 48,
            key_epoch_hours: 24.0,
            signing_key_file: None,
            checkpoint_minutes: 10.0,
            inbox_folder: "INBOX".into(),
            sent_folder: "Sent".into(),
            envelopes_folder: "Journal Envelopes".into(),
            unknown_folder: "Unknown Addresses".into(),
            internal_domains: vec![],
            cache_mb: 256,
        }
    }
}

impl ArchiveConfig {
    /// A folder name that IMAP cannot show as meant, or two folders with one name.
    pub fn folder_problem(&self) -> Option<String> {
        let names = [
            ("inbox_folder", &self.inbox_folder),
            ("sent_folder", &self.sent_folder),
            ("envelopes_folder", &self.envelopes_folder),
            ("unknown_folder", &self.unknown_folder),
        ];
        for (key, name) in names {
            let bad = name.trim() != name
                || name.is_empty()
                || name.len() > 100
                || name
                    .chars()
                    .any(|c| c.is_control() || "/\\\"*%".contains(c))
                || ["users", "holds"].contains(&name.to_ascii_lowercase().as_str());
            if bad {
                return Some(format!(
                    "{key} = {name:?}: a folder name must be 1-100 characters without / \\ \" * % or control characters, and not Users or Holds"
                ));
            }
        }
        for (i, (a, x)) in names.iter().enumerate() {
            for (b, y) in &names[i + 1..] {
                if x.eq_ignore_ascii_case(y) {
                    return Some(format!("{a} and {b} name the same folder {x:?}"));
                }
            }
        }
        None
    }
}

/// One `[[archive.retention]]` rule: which entries it matches (by user login and folder:
/// `INBOX`, `Sent`, `Unknown`), the minimum they are kept, and when they may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionRule {
    pub user: Option<String>,
    pub folder: Option<String>,
    /// Never deleted before this many days (added to `keep_years`).
    pub keep_days: u32,
    pub keep_years: u32,
    /// Deleted once this old (and past the minimum); none: kept.
    pub delete_after_days: Option<u32>,
}

impl RetentionRule {
    /// The minimum in days.
    pub fn minimum_days(&self) -> i64 {
        i64::from(self.keep_days) + 365 * i64::from(self.keep_years)
    }

    /// A rule that cannot be what the operator meant.
    pub fn problem(&self) -> Option<String> {
        if let Some(f) = &self.folder {
            if !["inbox", "sent", "unknown"].contains(&f.to_lowercase().as_str()) {
                return Some(format!("folder {f:?} is not INBOX, Sent or Unknown"));
            }
        }
        match self.delete_after_days {
            Some(after) if i64::from(after) < self.minimum_days() => Some(format!(
                "delete_after_days = {after} is shorter than the minimum of {} days",
                self.minimum_days()
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownAddresses {
    /// Filed in `Unknown Addresses`, which auditors see.
    CatchAll,
    /// Not archived (logged and counted).
    Skip,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHeader {
    pub network: IpNet,
    pub header: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// SMTP refuses new mail (452 4.3.1) when less than this is free on the data disk.
    pub min_free_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Delay after the first failed login from a client address; doubles per further failure.
    pub failure_delay_ms: u64,
    pub max_failure_delay_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            failure_delay_ms: 1000,
            max_failure_delay_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Config {
    /// Loads `path`, or `./journalgate.toml` when present, or the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new("journalgate.toml");
        let path = match path {
            Some(p) => p,
            None if default_path.exists() => default_path,
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; the error names the offending key.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.storage.validate()?;
        let host = &self.hostname;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !host_ok {
            return Err(ConfigError::Invalid(format!(
                "hostname {host:?} is not a valid host name"
            )));
        }
        if self.tls.source == TlsSource::Files
            && (self.tls.cert_file.is_none() || self.tls.key_file.is_none())
        {
            return Err(ConfigError::Invalid(
                "[tls] source = \"files\" needs cert_file and key_file".into(),
            ));
        }
        if !matches!(self.acme.challenge.as_str(), "http-01" | "tls-alpn-01") {
            return Err(ConfigError::Invalid(format!(
                "[acme] challenge {:?} must be \"http-01\" or \"tls-alpn-01\"",
                self.acme.challenge
            )));
        }
        if self.smtp.max_connections == 0
            || self.pop3.max_connections == 0
            || self.imap.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        if !(8..=65_536).contains(&self.archive.cache_mb) {
            return Err(ConfigError::Invalid(
                "[archive] cache_mb must be 8 to 65536".into(),
            ));
        }
        if let Some(problem) = self.archive.folder_problem() {
            return Err(ConfigError::Invalid(format!("[archive] {problem}")));
        }
        for (i, rule) in self.archive.retention.iter().enumerate() {
            if let Some(problem) = rule.problem() {
                return Err(ConfigError::Invalid(format!(
                    "[[archive.retention]] rule {}: {problem}",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// Lower-cased mailbox domain.
    pub fn domain(&self) -> String {
        self.hostname.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_example_parses() {
        let c = Config::parse(include_str!("../../systemd/journalgate.toml.example")).unwrap();
        assert_eq!(c.imap.listen, vec!["0.0.0.0:143".parse().unwrap()]);
        assert_eq!(c.imap.listen_tls, vec!["0.0.0.0:993".parse().unwrap()]);
        assert_eq!(c.smtp.listen, vec!["0.0.0.0:25".parse().unwrap()]);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.hostname, "localhost");
        assert_eq!(c.smtp.listen, vec![loopback(2525)]);
        assert_eq!(c.pop3.listen_tls, vec![loopback(1995)]);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[smtp]\nlisten_port = 25\n").unwrap_err();
        assert!(err.contains("listen_port"), "{err}");
        let err = Config::parse("bogus = 1\n").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn networks_and_sources_parse() {
        let c = Config::parse(
            "[smtp]\nallowed_networks = [\"10.0.0.0/8\", \"::1/128\"]\n[tls]\nsource = \"files\"\ncert_file = \"a\"\nkey_file = \"b\"\n",
        )
        .unwrap();
        assert_eq!(c.smtp.allowed_networks.len(), 2);
        assert_eq!(c.tls.source, TlsSource::Files);
    }
}
