//! `journalgate cert status|renew` without a running server: status from the stored files,
//! and an issuance that answers the challenges itself.

use super::*;

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

pub fn offline_status(config: &Config) -> Result<CertStatus, AcmeError> {
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
        TlsSource::Files => tls::load_certificate(config, load_stored(config))?,
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
pub(super) async fn renew_offline(config: &Config) -> Result<CertStatus, AcmeError> {
    let resolver = CertResolver::new(tls::load_certificate(config, load_stored(config))?);
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

pub(super) async fn answer_alpn(listener: TcpListener, acceptor: tls::Acceptor) {
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
