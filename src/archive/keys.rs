//! The server-held intake key: where it lives and how it is created or moved there.
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

use super::ArchiveError;
use crate::config::ArchiveConfig;
use crate::crypto::Identity;
use crate::fsutil;

/// Where the intake key of the archive under `data_dir` lives.
pub(super) fn intake_key_path(config: &ArchiveConfig, data_dir: &Path) -> PathBuf {
    if let Some(path) = &config.intake_key_file {
        return path.clone();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = Path::new(&dir).join("intake.key");
        if credential.is_file() {
            return credential;
        }
    }
    beside(data_dir)
}

/// `<data_dir>.intake.key` in the data directory's parent.
fn beside(data_dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "journalgate".into());
    absolute.with_file_name(format!("{name}.intake.key"))
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
