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

use crate::admin;
use crate::config::{Config, TlsSource};
use crate::fsutil;
use crate::tls::{self, CertInfo, CertResolver, CertStatus, TlsError};

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

    /// One issuance, retried at once (with backoff) while failures are transient. Every
    /// failure is recorded as the last error right away.
    async fn issue_with_retries(&self) -> Result<Issued, AcmeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout(ISSUE_TIMEOUT, self.issue()).await {
                Ok(result) => result,
                Err(_) => Err(AcmeError::Timeout(ISSUE_TIMEOUT)),
            };
            let error = match result {
                Ok(issued) => return Ok(issued),
                Err(e) => e,
            };
            self.record_error(Some(&error));
            let retry = attempt < QUICK_ATTEMPTS;
            if error.is_account_missing() && retry {
                tracing::warn!("the CA does not know the stored ACME account; creating a new one");
                *self.account.lock().await = None;
                let _ = std::fs::remove_file(acme_dir(&self.config).join(ACCOUNT_FILE));
                continue;
            }
            if !(error.is_transient() && retry) {
                return Err(error);
            }
            let delay = Duration::from_secs(1 << (attempt - 1));
            tracing::warn!(attempt, error = %error, retry_in_secs = delay.as_secs(), "ACME attempt failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One issuance: the configured challenge method first, then the other one.
    async fn issue(&self) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        let domains = self.domains();
        let preferred = if self.config.acme.challenge == "tls-alpn-01" {
            Method::TlsAlpn01
        } else {
            Method::Http01
        };
        let mut failures = Vec::new();
        for method in [preferred, preferred.other()] {
            if method == Method::Http01 {
                if let Some(why) = &self.http_unavailable {
                    failures.push(format!("http-01: listener unavailable: {why}"));
                    continue;
                }
            }
            match self.order(&account, &domains, method).await {
                Ok(issued) => return Ok(issued),
                Err(e @ (AcmeError::Validation { .. } | AcmeError::ChallengeNotOffered { .. })) => {
                    tracing::warn!(%method, error = %e, "ACME challenge failed");
                    failures.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Err(AcmeError::NoMethod(failures.join("; ")))
    }

    /// Orders a certificate for `domains`, proving control with `method`.
    async fn order(
        &self,
        account: &Account,
        domains: &[String],
        method: Method,
    ) -> Result<Issued, AcmeError> {
        let identifiers: Vec<Identifier> =
            domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let current = self.resolver.current();
        let replaces = self.replaces(&current);
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(id) = replaces {
            new_order = new_order.replaces(id);
        }
        let mut order = retry_bad_nonce!(account.new_order(&new_order))?;
        tracing::info!(%method, names = ?domains, "ACME order placed");
        let mut provisioned = Provisioned {
            resolver: &self.resolver,
            tokens: &self.tokens,
            tokens_added: vec![],
            domains_added: vec![],
            ready: vec![],
            failure: None,
        };
        if let Err(e) = retry_bad_nonce!(provision(&mut order, method, &mut provisioned)) {
            return Err(provisioned.failure.take().unwrap_or(AcmeError::Acme(e)));
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        match retry_bad_nonce!(order.poll_ready(&policy)) {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                let detail = authorization_errors(&mut order)
                    .await
                    .unwrap_or_else(|| format!("order is {status:?}"));
                return Err(AcmeError::Validation { method, detail });
            }
            Err(e) => {
                let e = AcmeError::from(e);
                if e.is_transient() || e.is_rate_limited() {
                    return Err(e);
                }
                return Err(AcmeError::Validation {
                    method,
                    detail: e.to_string(),
                });
            }
        }
        drop(provisioned);
        finalize(&mut order, domains).await
    }

    /// With ARI, a renewal order names the certificate it replaces.
    fn replaces(&self, current: &CertifiedKey) -> Option<CertificateIdentifier<'static>> {
        let leaf = current.end_entity_cert().ok()?;
        let known = lock(&self.ari)
            .as_ref()
            .is_some_and(|(cert, _)| cert.as_ref() == leaf.as_ref());
        if !known {
            return None;
        }
        CertificateIdentifier::try_from(leaf)
            .ok()
            .map(CertificateIdentifier::into_owned)
    }

    /// The ACME account: cached, else the stored one, else a new one (stored 0600).
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let account = load_or_create_account(&self.config).await?;
        *cached = Some(account.clone());
        Ok(account)
    }

    fn install(&self, issued: Issued) -> Result<(), AcmeError> {
        let status = CertStatus::describe(TlsSource::Acme, &issued.key, None);
        self.resolver.set(issued.key);
        let saved = save_certificate(&self.config, &issued.pem);
        match &saved {
            Ok(()) => self.record_error(None),
            Err(e) => {
                tracing::error!(error = %e, "cannot store the new certificate; it is in use until restart");
                self.record_error(Some(e));
            }
        }
        tracing::info!(
            names = ?status.names,
            issuer = status.issuer,
            not_after = status.not_after,
            "new ACME certificate in use on every listener"
        );
        saved
    }

    /// Remembers the last error (None: success) for `cert status`, in memory and on disk.
    fn record_error(&self, error: Option<&AcmeError>) {
        let text = error.map(|e| e.to_string());
        self.resolver.set_last_error(text.clone());
        let path = acme_dir(&self.config).join(ERROR_FILE);
        let written = match text {
            Some(text) => fsutil::create_private_dir(&acme_dir(&self.config))
                .and_then(|()| fsutil::write_atomic(&path, text.as_bytes(), 0o600)),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot record the ACME status");
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
/// called again after an error: authorizations already set ready are skipped.
async fn provision(
    order: &mut Order,
    method: Method,
    provisioned: &mut Provisioned<'_>,
) -> Result<(), instant_acme::Error> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let domain = authz.identifier().to_string();
        if provisioned.ready.contains(&domain) {
            continue;
        }
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(provisioned.fail(AcmeError::Validation {
                    method,
                    detail: format!("authorization for {domain} is {status:?}"),
                }))
            }
        }
        let Some(mut challenge) = authz.challenge(method.challenge_type()) else {
            return Err(provisioned.fail(AcmeError::ChallengeNotOffered { method, domain }));
        };
        let key_authorization = challenge.key_authorization();
        match method {
            Method::Http01 => {
                provisioned.add_token(&challenge.token, key_authorization.as_str());
            }
            Method::TlsAlpn01 => {
                match challenge_certificate(&domain, key_authorization.digest().as_ref()) {
                    Ok(cert) => provisioned.add_alpn(&domain, cert),
                    Err(e) => return Err(provisioned.fail(e)),
                }
            }
        }
        challenge.set_ready().await?;
        provisioned.ready.push(domain);
    }
    Ok(())
}

/// The validation errors of an order's authorizations, for the log and `cert status`.
async fn authorization_errors(order: &mut Order) -> Option<String> {
    let mut errors = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let domain = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                let detail = problem.detail.as_deref().unwrap_or("no detail");
                errors.push(format!("{domain}: {detail}"));
            }
        }
    }
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// A certificate with its key, as issued.
struct Issued {
    /// Private key and chain, PEM, as stored.
    pem: String,
    key: CertifiedKey,
}

/// Makes a fresh key and CSR, finalizes the order and collects the chain.
async fn finalize(order: &mut Order, domains: &[String]) -> Result<Issued, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(domains.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    retry_bad_nonce!(order.finalize_csr(csr.der()))?;
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(60));
    let chain = retry_bad_nonce!(order.poll_certificate(&policy))?;
    let pem = format!("{}{}", key.serialize_pem(), chain);
    let path = PathBuf::from("(issued certificate)");
    let certified = tls::certified_key(pem.as_bytes(), pem.as_bytes(), &path, &path)
        .map_err(|e| AcmeError::Unusable(e.to_string()))?;
    Ok(Issued {
        pem,
        key: certified,
    })
}

/// The TLS-ALPN-01 certificate for `domain` (RFC 8737 §3): self-signed, the domain as its
/// only SAN, and the critical acmeIdentifier extension holding the key authorization digest.
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not CertifiedKey::from_der: its consistency check parses the certificate with webpki,
    // which rejects the (critical, unknown to it) acmeIdentifier extension.
    let signing_key = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// Challenge responses set up for one order; removed again when dropped.
struct Provisioned<'a> {
    resolver: &'a CertResolver,
    tokens: &'a Tokens,
    tokens_added: Vec<String>,
    domains_added: Vec<String>,
    /// Domains whose challenge the CA was told is ready.
    ready: Vec<String>,
    /// A failure that is not an ACME protocol error, kept for `order` to report.
    failure: Option<AcmeError>,
}

impl Provisioned<'_> {
    /// Keeps `error` and returns a placeholder for the `instant_acme::Error` channel.
    fn fail(&mut self, error: AcmeError) -> instant_acme::Error {
        self.failure = Some(error);
        instant_acme::Error::Str("challenge setup failed")
    }

    fn add_token(&mut self, token: &str, key_authorization: &str) {
        lock(self.tokens).insert(token.to_owned(), key_authorization.to_owned());
        self.tokens_added.push(token.to_owned());
    }

    fn add_alpn(&mut self, domain: &str, cert: CertifiedKey) {
        self.resolver.add_challenge(domain, cert);
        self.domains_added.push(domain.to_owned());
    }
}

impl Drop for Provisioned<'_> {
    fn drop(&mut self) {
        let mut tokens = lock(self.tokens);
        for token in &self.tokens_added {
            tokens.remove(token);
        }
        for domain in &self.domains_added {
            self.resolver.remove_challenge(domain);
        }
    }
}

// ------------------------------------------------------------------------- account

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn acme_dir(config: &Config) -> PathBuf {
    config.data_dir.join("acme")
}

async fn load_or_create_account(config: &Config) -> Result<Account, AcmeError> {
    let path = acme_dir(config).join(ACCOUNT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: StoredAccount =
                serde_json::from_slice(&bytes).map_err(AcmeError::Account)?;
            if stored.directory == config.acme.directory {
                return Ok(account_builder(config)?
                    .from_credentials(stored.credentials)
                    .await?);
            }
            tracing::info!("the ACME directory changed; creating a new account");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let contacts = contacts(&config.acme.contact);
    let contact_refs: Vec<&str> = contacts.iter().map(String::as_str).collect();
    let new_account = NewAccount {
        contact: &contact_refs,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = retry_bad_nonce!(account_builder(config)?.create(
        &new_account,
        config.acme.directory.clone(),
        None
    ))?;
    let stored = StoredAccount {
        directory: config.acme.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(AcmeError::Account)?;
    fsutil::create_private_dir(&acme_dir(config))?;
    fsutil::write_atomic(&path, &json, 0o600)?;
    tracing::info!(account = account.id(), "created an ACME account");
    Ok(account)
}

/// `acme.contact`: comma-separated; a bare address becomes `mailto:`.
fn contacts(contact: &str) -> Vec<String> {
    contact
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            if c.contains(':') {
                c.to_owned()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect()
}

/// An ACME client trusting the system roots plus `acme.ca_file`, with a connect timeout.
fn account_builder(config: &Config) -> Result<AccountBuilder, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let ca_file = &config.acme.ca_file;
    if !ca_file.is_empty() {
        let ca_error = |reason: String| AcmeError::CaFile {
            path: ca_file.clone(),
            reason,
        };
        let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(AcmeError::NoRoots);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(https);
    let client: Box<dyn HttpClient> = Box::new(client);
    Ok(Account::builder_with_http(client))
}

// ------------------------------------------------------------------------- storage

/// The stored ACME certificate, if it still covers the configured names and has not expired.
pub fn load_stored(config: &Config) -> Option<CertifiedKey> {
    let path = acme_dir(config).join(CERT_FILE);
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the stored ACME certificate");
            return None;
        }
    };
    let key = match tls::certified_key(&pem, &pem, &path, &path) {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the stored ACME certificate does not load");
            return None;
        }
    };
    let info = tls::cert_info(key.end_entity_cert().ok()?)?;
    let now = chrono::Utc::now().timestamp();
    if info.not_after <= now || !is_issued_for(&info, &domains(config)) {
        tracing::info!("the stored ACME certificate is expired or for other names; not using it");
        return None;
    }
    Some(key)
}

fn save_certificate(config: &Config, pem: &str) -> Result<(), AcmeError> {
    let dir = acme_dir(config);
    fsutil::create_private_dir(&dir)?;
    fsutil::write_atomic(&dir.join(CERT_FILE), pem.as_bytes(), 0o600)?;
    Ok(())
}

// ------------------------------------------------------------------------- HTTP-01

fn bind_http(addr: &str) -> Result<TcpListener, String> {
    if addr.trim().is_empty() {
        return Err("acme.http_listen is empty".into());
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("acme.http_listen {addr:?}: {e}"))?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{addr}: {e}"))?;
    TcpListener::from_std(listener).map_err(|e| format!("{addr}: {e}"))
}

async fn serve_http(listener: TcpListener, tokens: Tokens) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_TIMEOUT, answer_http(stream, &tokens)).await;
        });
    }
}

async fn answer_http(mut stream: TcpStream, tokens: &Tokens) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buf[..n]);
        if memchr::memmem::find(&head, b"\r\n\r\n").is_some()
            || memchr::memmem::find(&head, b"\n\n").is_some()
        {
            break true;
        }
        if head.len() > HTTP_MAX_HEAD {
            break false;
        }
    };
    let response = if complete {
        http_response(&head, |token| lock(tokens).get(token).cloned())
    } else {
        http_reply(400, "Bad Request", "bad request\n")
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The answer to one HTTP/1.x request head: the key authorization for a known challenge
/// token, 404 for anything else.
fn http_response(head: &[u8], lookup: impl Fn(&str) -> Option<String>) -> String {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return http_reply(400, "Bad Request", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return http_reply(400, "Bad Request", "bad request\n");
    }
    let token = target.strip_prefix("/.well-known/acme-challenge/");
    let valid_token = token.filter(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    match (method, valid_token.and_then(&lookup)) {
        ("GET", Some(key_authorization)) => http_reply(200, "OK", &key_authorization),
        _ => http_reply(404, "Not Found", "not found\n"),
    }
}

fn http_reply(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

// ------------------------------------------------------------------------- CLI

/// `journalgate cert status|renew [--json]`: through the running server's admin socket, or
/// directly when none runs. Exit code 1 when a renewal failed.
pub fn cli(config: &Config, renew: bool, json: bool) -> anyhow::Result<i32> {
    let request = if renew {
        admin::Request::CertRenew
    } else {
        admin::Request::CertStatus
    };
    let (status, error) = match admin::request(&config.data_dir, request)? {
        Some(response) => (response.cert, response.error),
        None => match offline(config, renew) {
            Ok(status) => (Some(serde_json::to_value(status)?), None),
            Err(e) if renew => (
                offline_status(config)
                    .ok()
                    .and_then(|s| serde_json::to_value(s).ok()),
                Some(e.to_string()),
            ),
            Err(e) => return Err(e.into()),
        },
    };
    let mut status = status.unwrap_or_else(|| serde_json::json!({}));
    if json {
        if let (Some(error), Some(object)) = (&error, status.as_object_mut()) {
            object.insert("renew_error".into(), error.clone().into());
        }
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print_status(&status);
        match (&error, renew) {
            (Some(error), _) => eprintln!("renewal failed: {error}"),
            (None, true) => println!("A new certificate is in use."),
            (None, false) => {}
        }
    }
    Ok(if error.is_some() { 1 } else { 0 })
}

fn print_status(status: &serde_json::Value) {
    let field = |k: &str| match &status[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".into(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        v => v.to_string(),
    };
    for (label, key) in [
        ("source", "source"),
        ("self-signed", "self_signed"),
        ("names", "names"),
        ("issuer", "issuer"),
        ("not after", "not_after"),
        ("days left", "days_left"),
        ("last error", "last_error"),
    ] {
        println!("{label:<12} {}", field(key));
    }
}

/// `journalgate cert status|renew` without a running server.
pub fn offline(config: &Config, renew: bool) -> Result<CertStatus, AcmeError> {
    if !renew {
        return offline_status(config);
    }
    if config.tls.source != TlsSource::Acme {
        return Err(AcmeError::NotAcme(tls::source_name(config.tls.source)));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(renew_offline(config))
}

fn offline_status(config: &Config) -> Result<CertStatus, AcmeError> {
    let self_signed = || {
        let dir = config.data_dir.join("tls");
        tls::from_pem_files(&dir.join("self-signed.crt"), &dir.join("self-signed.key"))
            .map_err(|e| AcmeError::NoCertificate(e.to_string()))
    };
    let key = match config.tls.source {
        TlsSource::Acme => match load_stored(config) {
            Some(key) => key,
            None => self_signed()?,
        },
        TlsSource::Files => tls::load_certificate(config)?,
        TlsSource::SelfSigned => self_signed()?,
    };
    let last_error = match config.tls.source {
        TlsSource::Acme => std::fs::read_to_string(acme_dir(config).join(ERROR_FILE)).ok(),
        _ => None,
    };
    Ok(CertStatus::describe(config.tls.source, &key, last_error))
}

/// Issues a certificate from the CLI: answers HTTP-01 itself and TLS-ALPN-01 on the
/// configured implicit-TLS addresses (those it can bind).
async fn renew_offline(config: &Config) -> Result<CertStatus, AcmeError> {
    let resolver = CertResolver::new(tls::load_certificate(config)?);
    let manager = Manager::new(config, resolver.clone()).ok_or(AcmeError::NotAcme("acme"))?;
    let acceptor = tls::Acceptor::new(resolver.clone());
    let mut alpn_tasks = Vec::new();
    let addrs = config
        .smtp
        .listen_tls
        .iter()
        .chain(&config.pop3.listen_tls)
        .chain(&config.imap.listen_tls);
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => alpn_tasks.push(tokio::spawn(answer_alpn(listener, acceptor.clone()))),
            Err(e) => tracing::debug!(%addr, error = %e, "cannot answer tls-alpn-01 here"),
        }
    }
    let result = manager.renew_now().await;
    for task in alpn_tasks {
        task.abort();
    }
    result
}

async fn answer_alpn(listener: TcpListener, acceptor: tls::Acceptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_TIMEOUT, acceptor.accept(stream)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_only_known_tokens() {
        let lookup = |t: &str| (t == "abc-_1").then(|| "abc-_1.thumb".to_string());
        let ok = http_response(
            b"GET /.well-known/acme-challenge/abc-_1 HTTP/1.1\r\nHost: x\r\n\r\n",
            lookup,
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nabc-_1.thumb"), "{ok}");
        for head in [
            &b"GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n"[..],
            b"GET /.well-known/acme-challenge/ HTTP/1.1\r\n\r\n",
            b"GET /.well-known/acme-challenge/../x HTTP/1.1\r\n\r\n",
            b"POST /.well-known/acme-challenge/abc-_1 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(http_response(head, lookup).starts_with("HTTP/1.1 404 "));
        }
        assert!(http_response(b"garbage\r\n\r\n", lookup).starts_with("HTTP/1.1 400 "));
        assert!(http_response(b"\xff\xfe\r\n\r\n", lookup).starts_with("HTTP/1.1 400 "));
    }

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

    #[test]
    fn contacts_get_mailto() {
        assert_eq!(
            contacts(" a@b.test, mailto:c@d.test ,"),
            vec!["mailto:a@b.test", "mailto:c@d.test"]
        );
    }

    #[test]
    fn challenge_certificate_has_the_name() {
        let key = challenge_certificate("gw.test", &[7u8; 32]).unwrap();
        let info = tls::cert_info(key.end_entity_cert().unwrap()).unwrap();
        assert_eq!(info.names, vec!["gw.test"]);
        let (_, cert) =
            x509_parser::parse_x509_certificate(key.end_entity_cert().unwrap()).unwrap();
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
    }
}
