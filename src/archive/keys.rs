//! The server-held keys: the intake key and the chain's signing key; where they live and how
//! they are created (or, for an old intake key, moved there).
//!
//! Intake copies (and the duplicate-merge copies kept `dedupe_hours`) are sealed to this key
//! so the archive can be filed without any user's password. It is kept **outside
//! `data_dir`**, so that read access to the data directory (a backup, a copied volume) does
//! not open them: `[archive] intake_key_file`, else `$CREDENTIALS_DIRECTORY/intake.key`
//! (systemd `LoadCredential=`), else `<data_dir>.intake.key` beside the data directory. A
//! key left in `data_dir/archive/intake.key` by an older version is moved there at start.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use ed25519_dalek::SigningKey;

use super::ArchiveError;
use crate::config::ArchiveConfig;
use crate::crypto::Identity;
use crate::fsutil;

/// Where the intake key of the archive under `data_dir` lives.
pub(super) fn intake_key_path(config: &ArchiveConfig, data_dir: &Path) -> PathBuf {
    key_path(config.intake_key_file.as_deref(), data_dir, "intake.key")
}

/// Where the chain's signing key lives.
pub(super) fn signing_key_path(config: &ArchiveConfig, data_dir: &Path) -> PathBuf {
    key_path(config.signing_key_file.as_deref(), data_dir, "chain.key")
}

/// The configured path, else `$CREDENTIALS_DIRECTORY/<name>` when systemd provides it, else
/// `<data_dir>.<name>` beside the data directory.
fn key_path(configured: Option<&Path>, data_dir: &Path, name: &str) -> PathBuf {
    if let Some(path) = configured {
        return path.to_owned();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = Path::new(&dir).join(name);
        if credential.is_file() {
            return credential;
        }
    }
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let dir_name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "journalgate".into());
    absolute.with_file_name(format!("{dir_name}.{name}"))
}

/// Loads the Ed25519 key that signs chain checkpoints (hex), creating it when missing.
pub(super) fn load_signing_key(path: &Path) -> Result<SigningKey, ArchiveError> {
    match fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(|b| SigningKey::from_bytes(&b))
            .ok_or_else(|| ArchiveError::Damaged(format!("{}: not a signing key", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(key.to_bytes())));
            write_key(path, text.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads the intake key from `path`, creating it (0600) when missing; a key still at `legacy`
/// (inside `data_dir`) is moved to `path` first, so intake files sealed to it stay readable.
pub(super) fn load_intake_key(path: &Path, legacy: &Path) -> Result<Identity, ArchiveError> {
    if legacy.is_file() {
        if path.exists() {
            tracing::warn!(key = %path.display(), old = %legacy.display(),
                "an intake key exists at both places; using the configured one");
        } else {
            let text = fs::read(legacy)?;
            write_key(path, &text)?;
            tracing::info!(from = %legacy.display(), to = %path.display(), "intake key moved out of data_dir");
        }
        if fs::read(legacy)? == fs::read(path)? {
            fs::remove_file(legacy)?;
            if let Some(dir) = legacy.parent() {
                fsutil::sync_dir(dir)?;
            }
        }
    }
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<Identity>()
            .map_err(|e| ArchiveError::Damaged(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let identity = Identity::generate();
            let text = format!("{}\n", identity.to_string().expose_secret());
            write_key(path, text.as_bytes())?;
            Ok(identity)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_key(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fsutil::create_private_dir(dir)?;
        }
    }
    fsutil::write_atomic(path, bytes, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lives_beside_the_data_dir_and_old_keys_move_there() {
        let root = std::env::temp_dir().join(format!("jg-keys-{}", crate::crypto::random_hex128()));
        let data = root.join("data");
        fs::create_dir_all(data.join("archive")).unwrap();
        let config = ArchiveConfig::default();
        let path = intake_key_path(&config, &data);
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            assert_eq!(
                path,
                std::path::absolute(root.join("data.intake.key")).unwrap()
            );
        }
        assert!(!path.starts_with(&data));
        let legacy = data.join("archive").join("intake.key");
        let old = Identity::generate();
        fs::write(&legacy, format!("{}\n", old.to_string().expose_secret())).unwrap();
        let loaded = load_intake_key(&path, &legacy).unwrap();
        assert_eq!(loaded.to_public().to_string(), old.to_public().to_string());
        assert!(!legacy.exists(), "the key is gone from data_dir");
        let again = load_intake_key(&path, &legacy).unwrap();
        assert_eq!(again.to_public().to_string(), old.to_public().to_string());
        fs::remove_dir_all(root).unwrap();
    }
}
