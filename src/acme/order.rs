//! One issuance: the order, its authorizations answered by HTTP-01 or TLS-ALPN-01, and the
//! finalized chain installed into the live resolver.

use super::*;

impl Manager {
    /// One issuance, retried at once (with backoff) while failures are transient. Every
    /// failure is recorded as the last error right away.
    pub(super) async fn issue_with_retries(&self) -> Result<Issued, AcmeError> {
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
    pub(super) async fn issue(&self) -> Result<Issued, AcmeError> {
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
    pub(super) async fn order(
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
    pub(super) fn replaces(
        &self,
        current: &CertifiedKey,
    ) -> Option<CertificateIdentifier<'static>> {
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
    pub(super) async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let account = load_or_create_account(&self.config).await?;
        *cached = Some(account.clone());
        Ok(account)
    }

    pub(super) fn install(&self, issued: Issued) -> Result<(), AcmeError> {
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
    pub(super) fn record_error(&self, error: Option<&AcmeError>) {
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

/// called again after an error: authorizations already set ready are skipped.
pub(super) async fn provision(
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
pub(super) async fn authorization_errors(order: &mut Order) -> Option<String> {
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
pub(super) struct Issued {
    /// Private key and chain, PEM, as stored.
    pem: String,
    key: CertifiedKey,
}

/// Makes a fresh key and CSR, finalizes the order and collects the chain.
pub(super) async fn finalize(order: &mut Order, domains: &[String]) -> Result<Issued, AcmeError> {
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
pub(super) fn challenge_certificate(
    domain: &str,
    digest: &[u8],
) -> Result<CertifiedKey, AcmeError> {
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
pub(super) struct Provisioned<'a> {
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
    pub(super) fn fail(&mut self, error: AcmeError) -> instant_acme::Error {
        self.failure = Some(error);
        instant_acme::Error::Str("challenge setup failed")
    }

    pub(super) fn add_token(&mut self, token: &str, key_authorization: &str) {
        lock(self.tokens).insert(token.to_owned(), key_authorization.to_owned());
        self.tokens_added.push(token.to_owned());
    }

    pub(super) fn add_alpn(&mut self, domain: &str, cert: CertifiedKey) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn challenge_certificate_has_the_name() {
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
