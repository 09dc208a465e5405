//! TLS for every listener: one rustls configuration whose certificate resolver can be swapped
//! at runtime (renewal without restart). Sources: a self-signed certificate made by rcgen and
//! kept in the data dir, PEM files, or ACME (see the `acme` module; until the first ACME certificate
//! arrives the self-signed one is served).
//!
//! TLS-ALPN-01 (RFC 8737) is answered here too: [`Acceptor`] reads the ClientHello first and, when
//! it offers only the `acme-tls/1` protocol, completes the handshake with a configuration that
//! negotiates `acme-tls/1` and presents the challenge certificate registered for the SNI name.
//! Every other client gets the normal configuration, which sets no ALPN protocols, so clients
//! offering ALPN (or none) are never refused.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::config::{Config, TlsSource};
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // Not a `source` field: the message already says it, and `{:#}` would repeat it.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key found in {0}: {1}")]
    NoKey(PathBuf, String),
    #[error("unusable key or certificate: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate every listener presents; `set` swaps it for new handshakes. Also holds the
/// TLS-ALPN-01 challenge certificates (by lower-case SNI name) and what `cert status` and a
/// future /metrics read: the current certificate's expiry and the last renewal error.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// notAfter of the current leaf certificate, seconds since the epoch (i64::MAX if unknown).
    not_after: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Arc<CertResolver> {
        let not_after = leaf_not_after(&key);
        Arc::new(CertResolver {
            current: ArcSwap::from_pointee(key),
            challenges: Mutex::new(HashMap::new()),
            not_after: AtomicI64::new(not_after),
            last_error: Mutex::new(None),
        })
    }

    pub fn set(&self, key: CertifiedKey) {
        self.not_after
            .store(leaf_not_after(&key), Ordering::Relaxed);
        self.current.store(Arc::new(key));
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Whole days until the current certificate expires (negative once expired): the expiry
    /// metric.
    pub fn days_left(&self) -> i64 {
        days_until(self.not_after.load(Ordering::Relaxed))
    }

    pub fn set_last_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Registers the TLS-ALPN-01 certificate for `domain` (served only to `acme-tls/1` hellos).
    pub fn add_challenge(&self, domain: &str, key: CertifiedKey) {
        lock(&self.challenges).insert(domain.to_ascii_lowercase(), Arc::new(key));
    }

    pub fn remove_challenge(&self, domain: &str) {
        lock(&self.challenges).remove(&domain.to_ascii_lowercase());
    }

    /// What `journalgate cert status` prints for the certificate in use.
    pub fn status(&self, source: TlsSource) -> CertStatus {
        CertStatus::describe(source, &self.current(), self.last_error())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// True when the ClientHello offers the TLS-ALPN-01 protocol.
fn wants_acme_challenge(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if wants_acme_challenge(&hello) {
            let name = hello.server_name()?.to_ascii_lowercase();
            return lock(&self.challenges).get(&name).cloned();
        }
        Some(self.current.load_full())
    }
}

/// Accepts TLS connections for every listener (implicit TLS and STARTTLS/STLS upgrades) and
/// routes TLS-ALPN-01 validation handshakes to the challenge configuration.
#[derive(Clone)]
pub struct Acceptor {
    normal: Arc<ServerConfig>,
    challenge: Arc<ServerConfig>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    pub fn new(resolver: Arc<CertResolver>) -> Acceptor {
        let normal = server_config(resolver.clone());
        let mut challenge = (*normal).clone();
        challenge.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Acceptor {
            normal,
            challenge: Arc::new(challenge),
        }
    }

    /// Performs the server side of a handshake. A TLS-ALPN-01 validation connection is
    /// completed (that is the validation) and then reported as an error, so that no protocol
    /// session runs on it.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        if !wants_acme_challenge(&start.client_hello()) {
            return start.into_stream(self.normal.clone()).await;
        }
        let mut stream = start.into_stream(self.challenge.clone()).await?;
        tracing::info!("answered an ACME tls-alpn-01 validation handshake");
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "ACME tls-alpn-01 validation connection",
        ))
    }
}

/// Builds the shared server configuration (TLS 1.2 and 1.3) around a resolver.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("TLS 1.2 and 1.3 are supported")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    Arc::new(config)
}

/// Loads the certificate the configuration asks for. For `source = "acme"` the caller hands
/// in the stored ACME certificate, if it is still usable.
pub fn load_certificate(
    config: &Config,
    stored_acme: Option<CertifiedKey>,
) -> Result<CertifiedKey, TlsError> {
    match config.tls.source {
        TlsSource::SelfSigned => self_signed(&config.data_dir.join("tls"), &config.hostname),
        TlsSource::Files => {
            let cert = config.tls.cert_file.as_deref().expect("validated");
            let key = config.tls.key_file.as_deref().expect("validated");
            from_pem_files(cert, key)
        }
        // The stored ACME certificate if it is still usable, else the self-signed one until
        // the first issuance (the listeners never wait for the CA).
        TlsSource::Acme => match stored_acme {
            Some(key) => Ok(key),
            None => self_signed(&config.data_dir.join("tls"), &config.hostname),
        },
    }
}

/// What `journalgate cert status` reports about the certificate in use.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    /// The configured source: self-signed, files or acme.
    pub source: &'static str,
    /// True while a self-signed certificate is served (for acme: before the first issuance).
    pub self_signed: bool,
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    pub last_error: Option<String>,
}

impl CertStatus {
    /// `not_after` as unix seconds (0 when unknown).
    pub fn not_after_unix(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.not_after)
            .map(|t| t.timestamp())
            .unwrap_or(0)
    }

    pub fn describe(source: TlsSource, key: &CertifiedKey, last_error: Option<String>) -> Self {
        let info = key
            .end_entity_cert()
            .ok()
            .and_then(|c| cert_info(c))
            .unwrap_or_default();
        CertStatus {
            source: source_name(source),
            self_signed: !info.subject.is_empty() && info.subject == info.issuer,
            names: info.names,
            subject: info.subject,
            issuer: info.issuer,
            not_before: rfc3339(info.not_before),
            not_after: rfc3339(info.not_after),
            days_left: days_until(info.not_after),
            last_error,
        }
    }
}

/// The configuration name of a certificate source.
pub fn source_name(source: TlsSource) -> &'static str {
    match source {
        TlsSource::SelfSigned => "self-signed",
        TlsSource::Files => "files",
        TlsSource::Acme => "acme",
    }
}

/// The parts of an X.509 certificate that renewal and status need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses a DER certificate; None if it is not one.
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => <[u8; 4]>::try_from(*ip)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*ip)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    Some(CertInfo {
        names,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn leaf_not_after(key: &CertifiedKey) -> i64 {
    key.end_entity_cert()
        .ok()
        .and_then(|c| cert_info(c))
        .map_or(0, |info| info.not_after)
}

/// Whole days from now until `unix_secs` (rounded down; negative in the past).
pub fn days_until(unix_secs: i64) -> i64 {
    unix_secs
        .saturating_sub(chrono::Utc::now().timestamp())
        .div_euclid(86_400)
}

fn rfc3339(unix_secs: i64) -> String {
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Loads a certificate chain and private key from PEM files.
pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    certified_key(&cert_pem, &key_pem, cert_path, key_path)
}

pub(crate) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(cert_path.to_owned()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::NoKey(key_path.to_owned(), e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(CertifiedKey::from_der(chain, key, &provider)?)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

/// The self-signed certificate for `hostname`, made once and reused from `dir`. A new one is
/// made when the host name changes.
pub fn self_signed(dir: &Path, hostname: &str) -> Result<CertifiedKey, TlsError> {
    let cert_path = dir.join("self-signed.crt");
    let key_path = dir.join("self-signed.key");
    let name_path = dir.join("self-signed.name");
    let same_name = std::fs::read_to_string(&name_path)
        .map(|n| n.trim() == hostname)
        .unwrap_or(false);
    if same_name && cert_path.exists() && key_path.exists() {
        return from_pem_files(&cert_path, &key_path);
    }
    fsutil::create_private_dir(dir)?;
    let mut names = vec![hostname.to_owned()];
    if hostname != "localhost" {
        names.push("localhost".to_owned());
    }
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let cert = params.self_signed(&key_pair)?;
    fsutil::write_atomic(&key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    fsutil::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    fsutil::write_atomic(&name_path, hostname.as_bytes(), 0o644)?;
    tracing::info!(hostname, path = %cert_path.display(), "generated a self-signed certificate");
    from_pem_files(&cert_path, &key_path)
}

/// For `source = "files"`: reloads the certificate when the files change (certbot renewals,
/// an operator's own CA), swapping it into every listener. Keeps the old one if the new
/// files do not load.
pub async fn watch_files(config: Config, resolver: Arc<CertResolver>, every: std::time::Duration) {
    let (Some(cert), Some(key)) = (config.tls.cert_file.clone(), config.tls.key_file.clone())
    else {
        return;
    };
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = (stamp(&cert), stamp(&key));
    loop {
        tokio::time::sleep(every).await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        match from_pem_files(&cert, &key) {
            Ok(new) => {
                resolver.set(new);
                resolver.set_last_error(None);
                seen = now;
                tracing::info!(cert = %cert.display(), "certificate files changed; new certificate in use");
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but do not load; keeping the current certificate");
                resolver.set_last_error(Some(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_reused() {
        let dir = std::env::temp_dir().join(format!("jg-tls-{}", crate::crypto::random_hex128()));
        let a = self_signed(&dir, "gw.test").unwrap();
        let b = self_signed(&dir, "gw.test").unwrap();
        assert_eq!(a.cert, b.cert);
        let c = self_signed(&dir, "other.test").unwrap();
        assert_ne!(a.cert, c.cert);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
