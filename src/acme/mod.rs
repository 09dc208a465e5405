//! Certificates from an ACME CA (RFC 8555) with live renewal, for `[tls] source = "acme"`.
//!
//! * The account key is created once and kept (0600) in `data_dir/acme/account.json`, together
//!   with the directory URL it belongs to (a new directory gets a new account).
//! * The issued chain and its private key are kept in one file, `data_dir/acme/certificate.pem`
//!   (0600, replaced atomically, so key and chain always match), and loaded at start while they
//!   still cover the configured names and have not expired. Until the first certificate arrives,
//!   the listeners serve the self-signed one; they never wait for the CA.
//! * Challenges: HTTP-01 is answered by a small HTTP/1.1 listener on `acme.http_listen` that only
//!   knows `GET /.well-known/acme-challenge/<token>` (everything else is a 404); TLS-ALPN-01
//!   (RFC 8737) is answered by the normal TLS listeners through [`crate::tls::Acceptor`].
//!   `acme.challenge` picks the method tried first; when its validation fails the other is tried.
//! * Retries: a failed issuance with a transient cause (badNonce after instant-acme's own three
//!   tries, network errors, timeouts, server errors) is retried at once with exponential backoff
//!   (1, 2, 4, 8 s); after that the renewal task backs off from a minute up to six hours (at least
//!   an hour after `rateLimited`). The certificate in use is kept until a new one is issued.
//! * Renewal: `acme.renew_before_days` before expiry (but never in the first half of the
//!   certificate's lifetime), or at a random time in the CA's ARI window (RFC 9773,
//!   `renewalInfo`) when the CA offers one and that is earlier; the new order then names the
//!   certificate it replaces. A warning is logged while fewer than 14 days are left.
//! * `journalgate cert renew` forces an issuance: through the admin socket while `serve` runs,
//!   or directly (binding the HTTP-01 and implicit-TLS listeners itself) when it does not. The
//!   last error is kept in `data_dir/acme/last-error` for `cert status` without a server.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, BodyWrapper,
    CertificateIdentifier, ChallengeType, HttpClient, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use rand::Rng;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, TlsSource};
use crate::fsutil;
use crate::tls::{self, CertInfo, CertResolver, CertStatus, TlsError};
pub use account::load_stored;
use account::{acme_dir, load_or_create_account, save_certificate};
use http01::{bind_http, serve_http};
pub use offline::{offline, offline_status};

const ACCOUNT_FILE: &str = "account.json";
const CERT_FILE: &str = "certificate.pem";
const ERROR_FILE: &str = "last-error";
/// A warning is logged while fewer days than this are left.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// Attempts of one issuance when the failures are transient.
const QUICK_ATTEMPTS: u32 = 4;
/// Repeats of one ACME request answered with badNonce, on top of instant-acme's three tries.
const NONCE_RETRIES: u32 = 5;
/// Upper bound for one whole issuance (account, order, validation, finalization).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The renewal task looks at the certificate at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(12 * 3600);
/// HTTP-01 requests: header size limit and time limit per connection.
const HTTP_MAX_HEAD: usize = 8 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const ACME_ERROR_PREFIX: &str = "urn:ietf:params:acme:error:";

/// Re-runs an ACME request while the CA answers badNonce: such a request was not processed,
/// so repeating it is safe. (instant-acme already tries three nonces per request.)
macro_rules! retry_bad_nonce {
    ($call:expr) => {{
        let mut tries = 0u32;
        loop {
            match $call.await {
                Err(e) if is_bad_nonce(&e) && tries < NONCE_RETRIES => {
                    tries += 1;
                    tracing::debug!(tries, "badNonce; repeating the ACME request");
                }
                result => break result,
            }
        }
    }};
}

mod account;
mod http01;
mod offline;
mod order;

fn is_bad_nonce(error: &instant_acme::Error) -> bool {
    matches!(error, instant_acme::Error::Api(p)
        if p.r#type.as_deref().and_then(|t| t.strip_prefix(ACME_ERROR_PREFIX)) == Some("badNonce"))
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {}", error_chain(.0))]
    Acme(#[from] instant_acme::Error),
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("no trusted root certificates for the ACME directory connection")]
    NoRoots,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the stored ACME account is unreadable: {0}")]
    Account(serde_json::Error),
    #[error("the CA offers no {method} challenge for {domain}")]
    ChallengeNotOffered { method: Method, domain: String },
    #[error("{method} validation failed: {detail}")]
    Validation { method: Method, detail: String },
    #[error("no challenge method succeeded: {0}")]
    NoMethod(String),
    #[error("the issued certificate is unusable: {0}")]
    Unusable(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("no certificate yet ({0}); `journalgate serve` makes one at its first start")]
    NoCertificate(String),
    #[error("cannot make a key or certificate request: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("the ACME issuance did not finish within {0:?}")]
    Timeout(Duration),
    #[error("[tls] source is {0:?}, not \"acme\"")]
    NotAcme(&'static str),
}

/// An error with its sources ("client error (Connect): tcp connect error: ...").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = e.source();
    }
    text
}

impl AcmeError {
    /// The ACME problem type without its URN prefix (`badNonce`, `rateLimited`, ...).
    fn problem_type(&self) -> Option<&str> {
        match self {
            AcmeError::Acme(instant_acme::Error::Api(problem)) => problem
                .r#type
                .as_deref()
                .map(|t| t.strip_prefix(ACME_ERROR_PREFIX).unwrap_or(t)),
            _ => None,
        }
    }

    /// Worth retrying at once: the next attempt may well succeed.
    fn is_transient(&self) -> bool {
        use instant_acme::Error as E;
        match self {
            AcmeError::Acme(E::Api(_)) => matches!(
                self.problem_type(),
                Some("badNonce" | "serverInternal" | "connection" | "dns")
            ),
            AcmeError::Acme(E::Hyper(_) | E::Http(_) | E::Other(_) | E::Timeout(_)) => true,
            AcmeError::Timeout(_) | AcmeError::Io(_) => true,
            _ => false,
        }
    }

    fn is_rate_limited(&self) -> bool {
        self.problem_type() == Some("rateLimited")
    }

    /// The CA no longer knows the stored account (e.g. a test CA that was restarted).
    fn is_account_missing(&self) -> bool {
        self.problem_type() == Some("accountDoesNotExist")
    }
}

/// A challenge method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Http01,
    TlsAlpn01,
}

impl Method {
    fn challenge_type(self) -> ChallengeType {
        match self {
            Method::Http01 => ChallengeType::Http01,
            Method::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn other(self) -> Method {
        match self {
            Method::Http01 => Method::TlsAlpn01,
            Method::TlsAlpn01 => Method::Http01,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Http01 => "http-01",
            Method::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// HTTP-01 responses being served: token → key authorization.
type Tokens = Arc<Mutex<HashMap<String, String>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The ACME client of one gateway: issues, renews and swaps certificates into the resolver.
pub struct Manager {
    config: Config,
    resolver: Arc<CertResolver>,
    tokens: Tokens,
    /// Why HTTP-01 cannot be answered (listener not bound), if so.
    http_unavailable: Option<String>,
    http_task: Option<JoinHandle<()>>,
    /// One issuance at a time (renewal task and `cert renew`).
    issuing: tokio::sync::Mutex<()>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// ARI renewal time chosen for a certificate (its DER), so it is picked once.
    ari: Mutex<Option<(CertificateDer<'static>, i64)>>,
    wake: Notify,
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(task) = &self.http_task {
            task.abort();
        }
    }
}

impl Manager {
    /// For `source = "acme"`: binds the HTTP-01 listener (a failure only disables HTTP-01) and
    /// returns the manager; start renewals with [`Manager::run`] once the TLS listeners are up.
    /// Must be called inside the tokio runtime.
    pub fn new(config: &Config, resolver: Arc<CertResolver>) -> Option<Arc<Manager>> {
        if config.tls.source != TlsSource::Acme {
            return None;
        }
        let tokens: Tokens = Arc::default();
        let (http_task, http_unavailable) = match bind_http(&config.acme.http_listen) {
            Ok(listener) => {
                let addr = listener.local_addr().map(|a| a.to_string());
                tracing::info!(
                    addr = addr.unwrap_or_default(),
                    "ACME http-01 listener ready"
                );
                (
                    Some(tokio::spawn(serve_http(listener, tokens.clone()))),
                    None,
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "ACME http-01 listener unavailable; only tls-alpn-01 can be used");
                (None, Some(e))
            }
        };
        Some(Arc::new(Manager {
            config: config.clone(),
            resolver,
            tokens,
            http_unavailable,
            http_task,
            issuing: tokio::sync::Mutex::new(()),
            account: tokio::sync::Mutex::new(None),
            ari: Mutex::new(None),
            wake: Notify::new(),
        }))
    }

    /// The renewal task: issues the first certificate at once, then renews before expiry,
    /// backing off after failures. Runs until the process stops.
    pub async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        loop {
            let due_in = match retry_at {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => self.time_until_due().await,
            };
            if !due_in.is_zero() {
                self.warn_if_expiring();
                tokio::select! {
                    _ = tokio::time::sleep(due_in.min(MAX_SLEEP)) => {}
                    _ = self.wake.notified() => {
                        failures = 0;
                        retry_at = None;
                    }
                }
                continue;
            }
            retry_at = None;
            match self.renew(false).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let delay = backoff(failures, &e);
                    tracing::warn!(error = %e, retry_in_secs = delay.as_secs(), "ACME certificate not obtained; keeping the current certificate");
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// `journalgate cert renew`: issues a new certificate now and swaps it in. On success the
    /// renewal task reschedules for the new certificate; on failure it keeps its own backoff.
    pub async fn renew_now(&self) -> Result<CertStatus, AcmeError> {
        self.renew(true).await?;
        self.wake.notify_one();
        Ok(self.resolver.status(TlsSource::Acme))
    }

    /// Issues (with quick retries) and installs a certificate; `force` renews even if the
    /// current one is not due (the renewal task re-checks under the lock).
    async fn renew(&self, force: bool) -> Result<(), AcmeError> {
        let _one = self.issuing.lock().await;
        if !force && !self.time_until_due().await.is_zero() {
            return Ok(());
        }
        let issued = self.issue_with_retries().await?;
        self.install(issued)
    }

    fn domains(&self) -> Vec<String> {
        domains(&self.config)
    }

    /// How long until the certificate in use should be replaced (zero: now).
    async fn time_until_due(&self) -> Duration {
        let current = self.resolver.current();
        let Some(leaf) = current.end_entity_cert().ok() else {
            return Duration::ZERO;
        };
        let Some(info) = tls::cert_info(leaf) else {
            return Duration::ZERO;
        };
        if !is_issued_for(&info, &self.domains()) {
            return Duration::ZERO;
        }
        let mut due = renewal_time(&info, self.config.acme.renew_before_days);
        if let Some(ari) = self.ari_time(leaf).await {
            due = due.min(ari);
        }
        let now = chrono::Utc::now().timestamp();
        Duration::from_secs(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
    }

    /// The renewal time suggested by the CA's ARI window, chosen once per certificate.
    async fn ari_time(&self, leaf: &CertificateDer<'_>) -> Option<i64> {
        if let Some((cert, at)) = lock(&self.ari).as_ref() {
            if cert.as_ref() == leaf.as_ref() {
                return Some(*at);
            }
        }
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        let fetch = async {
            let account = self.account().await.ok()?;
            account.renewal_info(&id).await.ok()
        };
        // None also when the CA has no renewalInfo (Pebble 2.4 in Debian has none).
        let (info, _) = tokio::time::timeout(CONNECT_TIMEOUT * 2, fetch)
            .await
            .ok()??;
        let start = info.suggested_window.start.unix_timestamp();
        let end = info.suggested_window.end.unix_timestamp();
        let at = if end > start {
            rand::thread_rng().gen_range(start..=end)
        } else {
            start
        };
        tracing::info!(
            window_start = start,
            window_end = end,
            "the CA suggests a renewal window (ARI)"
        );
        *lock(&self.ari) = Some((leaf.clone().into_owned(), at));
        Some(at)
    }

    fn warn_if_expiring(&self) {
        let days = self.resolver.days_left();
        let status = self.resolver.status(TlsSource::Acme);
        if days < EXPIRY_WARNING_DAYS && !status.self_signed {
            tracing::warn!(
                days_left = days,
                not_after = status.not_after,
                "the TLS certificate expires soon"
            );
        }
    }
}

/// Delay before the renewal task tries again after `failures` failed issuances.
fn backoff(failures: u32, error: &AcmeError) -> Duration {
    let doubling = 1u32 << failures.clamp(1, 10).saturating_sub(1);
    let delay = (Duration::from_secs(60) * doubling).min(Duration::from_secs(6 * 3600));
    if error.is_rate_limited() {
        delay.max(Duration::from_secs(3600))
    } else {
        delay
    }
}

/// The names to certify: `acme.domains`, or the host name.
fn domains(config: &Config) -> Vec<String> {
    let names: Vec<String> = config
        .acme
        .domains
        .iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    if names.is_empty() {
        vec![config.hostname.to_ascii_lowercase()]
    } else {
        names
    }
}

/// True for a CA-issued (not self-signed) certificate that covers every name.
fn is_issued_for(info: &CertInfo, domains: &[String]) -> bool {
    info.subject != info.issuer && domains.iter().all(|d| info.names.contains(d))
}

/// When to renew without ARI: `renew_before_days` before expiry, but not in the first half of
/// the lifetime (short-lived certificates would otherwise be renewed in a loop).
fn renewal_time(info: &CertInfo, renew_before_days: u32) -> i64 {
    let before = info
        .not_after
        .saturating_sub(i64::from(renew_before_days) * 86_400);
    let half = info.not_before + (info.not_after - info.not_before) / 2;
    before.max(half)
}

/// Sets up the challenge response of every pending authorization and tells the CA. Can be
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time_respects_lifetime() {
        let day = 86_400;
        let info = |lifetime_days: i64| CertInfo {
            not_before: 0,
            not_after: lifetime_days * day,
            ..CertInfo::default()
        };
        assert_eq!(renewal_time(&info(90), 30), 60 * day);
        assert_eq!(renewal_time(&info(6), 30), 3 * day);
    }

    #[test]
    fn transient_errors_are_classified() {
        let problem = |t: &str| {
            AcmeError::Acme(instant_acme::Error::Api(
                serde_json::from_str(&format!(r#"{{"type":"{ACME_ERROR_PREFIX}{t}"}}"#)).unwrap(),
            ))
        };
        assert!(problem("badNonce").is_transient());
        assert!(!problem("unauthorized").is_transient());
        assert!(problem("rateLimited").is_rate_limited());
        assert!(problem("accountDoesNotExist").is_account_missing());
        assert!(backoff(1, &problem("rateLimited")) >= Duration::from_secs(3600));
        assert_eq!(backoff(2, &problem("badNonce")), Duration::from_secs(120));
        assert!(backoff(40, &problem("badNonce")) <= Duration::from_secs(6 * 3600));
    }
}
