//! The ACME account (created once, kept 0600 with its directory URL) and the stored
//! certificate file.

use super::*;

#[derive(Serialize, Deserialize)]
pub(super) struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

pub(super) fn acme_dir(config: &Config) -> PathBuf {
    config.data_dir.join("acme")
}

pub(super) async fn load_or_create_account(config: &Config) -> Result<Account, AcmeError> {
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
pub(super) fn contacts(contact: &str) -> Vec<String> {
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
pub(super) fn account_builder(config: &Config) -> Result<AccountBuilder, AcmeError> {
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

pub(super) fn save_certificate(config: &Config, pem: &str) -> Result<(), AcmeError> {
    let dir = acme_dir(config);
    fsutil::create_private_dir(&dir)?;
    fsutil::write_atomic(&dir.join(CERT_FILE), pem.as_bytes(), 0o600)?;
    Ok(())
}

// ------------------------------------------------------------------------- HTTP-01
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_get_mailto() {
        assert_eq!(
            contacts(" a@b.test, mailto:c@d.test ,"),
            vec!["mailto:a@b.test", "mailto:c@d.test"]
        );
    }
}
