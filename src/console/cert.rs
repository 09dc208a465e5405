//! The certificate from the console: renew now (ACME), or upload a new PEM pair (for
//! `source = "files"`: checked, written over the configured files, and swapped in at once).

use axum::http::StatusCode;
use serde_json::Value;

use super::web::ApiError;
use crate::config::TlsSource;
use crate::context::State;
use crate::tls;

/// Orders a new ACME certificate now.
pub async fn renew(state: &State) -> Result<Value, ApiError> {
    let Some(acme) = &state.acme else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the certificate is not from ACME ([tls] source = \"acme\")",
        ));
    };
    let status = acme.renew_now().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    Ok(serde_json::to_value(status).unwrap_or_default())
}

/// Installs a PEM certificate chain and key in place of the configured files.
pub async fn upload(state: &State, cert_pem: String, key_pem: String) -> Result<Value, ApiError> {
    let (Some(cert_file), Some(key_file), TlsSource::Files) = (
        state.config.tls.cert_file.clone(),
        state.config.tls.key_file.clone(),
        state.config.tls.source,
    ) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "uploads are for [tls] source = \"files\"",
        ));
    };
    let key = tls::certified_key(
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
        &cert_file,
        &key_file,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        crate::fsutil::write_atomic(&key_file, key_pem.as_bytes(), 0o600)?;
        crate::fsutil::write_atomic(&cert_file, cert_pem.as_bytes(), 0o644)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    state.resolver.set(key);
    Ok(serde_json::to_value(state.resolver.status(TlsSource::Files)).unwrap_or_default())
}
