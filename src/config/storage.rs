//! `[storage]`: where gateway mailboxes and the mailbox registry live. `local` (the default)
//! keeps everything under `data_dir`; `s3` puts them in an S3-compatible object store
//! (Garage, AWS S3, Ceph RGW, MinIO) so several gateway nodes share them (see
//! `docs/SCALING.md`).

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// The S3 endpoint URL (`http://127.0.0.1:3900`); empty means AWS S3 for `region`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    /// A file holding the secret access key (read at start; never logged). Empty: the
    /// `AWS_SECRET_ACCESS_KEY` environment variable.
    pub secret_access_key_file: Option<PathBuf>,
    /// Unique per gateway node in a cluster (letters, digits, `-`; at most 32).
    pub node_id: String,
    /// Give up on one store request after this long (the SMTP client then gets a 451).
    pub request_timeout_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Local,
            endpoint: String::new(),
            region: "garage".into(),
            bucket: String::new(),
            access_key_id: String::new(),
            secret_access_key_file: None,
            node_id: String::new(),
            request_timeout_secs: 20,
        }
    }
}

impl StorageConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == Backend::Local {
            return Ok(());
        }
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("[storage] {m}")));
        if self.bucket.is_empty() {
            return invalid("backend = \"s3\" needs bucket");
        }
        if self.access_key_id.is_empty() {
            return invalid("backend = \"s3\" needs access_key_id");
        }
        let node_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 32
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !node_ok {
            return invalid("node_id must be 1-32 of a-z, 0-9 and '-', unique per node");
        }
        if self.request_timeout_secs == 0 {
            return invalid("request_timeout_secs must be at least 1");
        }
        Ok(())
    }
}
