//! TLS for every listener: one rustls configuration whose certificate resolver can be swapped
//! at runtime (renewal without restart). Sources: a self-signed certificate made by rcgen and
//! kept in the data dir, or PEM files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, TlsSource};
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key found in {0}: {1}")]
    NoKey(PathBuf, String),
    #[error("unusable key or certificate: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the ACME certificate source is not available in this version")]
    AcmeUnsupported,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The certificate every listener presents; `set` swaps it for new handshakes.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Arc<CertResolver> {
        Arc::new(CertResolver {
            current: ArcSwap::from_pointee(key),
        })
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
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

/// Loads the certificate the configuration asks for.
pub fn load_certificate(config: &Config) -> Result<CertifiedKey, TlsError> {
    match config.tls.source {
        TlsSource::SelfSigned => self_signed(&config.data_dir.join("tls"), &config.hostname),
        TlsSource::Files => {
            let cert = config.tls.cert_file.as_deref().expect("validated");
            let key = config.tls.key_file.as_deref().expect("validated");
            from_pem_files(cert, key)
        }
        TlsSource::Acme => Err(TlsError::AcmeUnsupported),
    }
}

/// Loads a certificate chain and private key from PEM files.
pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    certified_key(&cert_pem, &key_pem, cert_path, key_path)
}

fn certified_key(
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
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
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
                seen = now;
                tracing::info!(cert = %cert.display(), "certificate files changed; new certificate in use");
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but do not load; keeping the current certificate")
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
