//! Who may use the console and the API: administrators (a name and an argon2id hash of a
//! random password, shown once) and API tokens (random, shown once, kept as SHA-256 — a
//! 192-bit random token needs no slow hash), both as small JSON files under
//! `data_dir/console/` that the CLI edits with or without a running server.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("a name is 1 to 64 letters, digits, '.', '_', '-' or '@': {0:?}")]
    BadName(String),
    #[error("{0} exists")]
    Exists(String),
    #[error("no such {0}")]
    NotFound(String),
    #[error("{0} is damaged: {1}")]
    Damaged(String, String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// An administrator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Admin {
    pub name: String,
    /// PHC string of the argon2id hash.
    pub hash: String,
    pub created: String,
}

/// An API token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    /// SHA-256 of the token (hex).
    pub sha256: String,
    pub read_only: bool,
    pub created: String,
    /// When it was last used (kept to the minute).
    #[serde(default)]
    pub last_used: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AdminFile {
    admins: Vec<Admin>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<Token>,
}

fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadName(name.to_owned()))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Hashes a password with argon2id (the crate's default parameters, ~20 ms, 19 MiB).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks a password against a PHC hash (false for a damaged hash). CPU-heavy: call it
/// from a blocking thread.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// SHA-256 (hex) of a token.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The console's accounts under `data_dir/console`.
#[derive(Debug, Clone)]
pub struct Accounts {
    dir: PathBuf,
}

impl Accounts {
    pub fn new(data_dir: &Path) -> Accounts {
        Accounts {
            dir: data_dir.join("console"),
        }
    }

    fn read<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> Result<T, AccountError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AccountError::Damaged(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Holds the accounts' lock (an exclusive `flock` on `console/.lock`) until dropped:
    /// every read-modify-write of a file takes it, so concurrent requests, and the CLI
    /// in another process, never lose each other's changes.
    fn lock(&self) -> Result<std::fs::File, AccountError> {
        fsutil::create_private_dir(&self.dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)?;
        Ok(file)
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), AccountError> {
        fsutil::create_private_dir(&self.dir)?;
        let json = serde_json::to_vec_pretty(value).expect("serializes");
        fsutil::write_atomic(&self.dir.join(name), &json, 0o600)?;
        Ok(())
    }

    pub fn admins(&self) -> Result<Vec<Admin>, AccountError> {
        Ok(self.read::<AdminFile>("admins.json")?.admins)
    }

    pub fn admin(&self, name: &str) -> Result<Option<Admin>, AccountError> {
        Ok(self.admins()?.into_iter().find(|a| a.name == name))
    }

    /// Adds an administrator; returns the password (shown once).
    pub fn add_admin(&self, name: &str) -> Result<String, AccountError> {
        let _lock = self.lock()?;
        check_name(name)?;
        let mut file = self.read::<AdminFile>("admins.json")?;
        if file.admins.iter().any(|a| a.name == name) {
            return Err(AccountError::Exists(format!("admin {name}")));
        }
        let password = crate::crypto::random_password();
        file.admins.push(Admin {
            name: name.to_owned(),
            hash: hash_password(&password),
            created: now(),
        });
        self.write("admins.json", &file)?;
        Ok(password)
    }

    /// A new password for an administrator; returns it.
    pub fn reset_admin(&self, name: &str) -> Result<String, AccountError> {
        let _lock = self.lock()?;
        let mut file = self.read::<AdminFile>("admins.json")?;
        let admin = file
            .admins
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| AccountError::NotFound(format!("admin {name}")))?;
        let password = crate::crypto::random_password();
        admin.hash = hash_password(&password);
        self.write("admins.json", &file)?;
        Ok(password)
    }

    pub fn delete_admin(&self, name: &str) -> Result<(), AccountError> {
        let _lock = self.lock()?;
        let mut file = self.read::<AdminFile>("admins.json")?;
        let before = file.admins.len();
        file.admins.retain(|a| a.name != name);
        if file.admins.len() == before {
            return Err(AccountError::NotFound(format!("admin {name}")));
        }
        self.write("admins.json", &file)
    }

    pub fn tokens(&self) -> Result<Vec<Token>, AccountError> {
        Ok(self.read::<TokenFile>("tokens.json")?.tokens)
    }

    /// Creates a token; returns it (shown once).
    pub fn create_token(&self, name: &str, read_only: bool) -> Result<String, AccountError> {
        let _lock = self.lock()?;
        check_name(name)?;
        let mut file = self.read::<TokenFile>("tokens.json")?;
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(AccountError::Exists(format!("token {name}")));
        }
        let mut raw = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = format!("jgt_{}", hex::encode(raw));
        file.tokens.push(Token {
            name: name.to_owned(),
            sha256: token_digest(&token),
            read_only,
            created: now(),
            last_used: None,
        });
        self.write("tokens.json", &file)?;
        Ok(token)
    }

    pub fn revoke_token(&self, name: &str) -> Result<(), AccountError> {
        let _lock = self.lock()?;
        let mut file = self.read::<TokenFile>("tokens.json")?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Err(AccountError::NotFound(format!("token {name}")));
        }
        self.write("tokens.json", &file)
    }

    /// Notes that a token was used now (written at most once a minute per token).
    pub fn mark_used(&self, name: &str) -> Result<(), AccountError> {
        let _lock = self.lock()?;
        let mut file = self.read::<TokenFile>("tokens.json")?;
        let now = chrono::Utc::now();
        let Some(token) = file.tokens.iter_mut().find(|t| t.name == name) else {
            return Ok(());
        };
        let recent = token
            .last_used
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() < 60);
        if recent {
            return Ok(());
        }
        token.last_used = Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        self.write("tokens.json", &file)
    }

    /// The token a bearer presents, if it is one of ours.
    pub fn find_token(&self, presented: &str) -> Result<Option<Token>, AccountError> {
        let digest = token_digest(presented.trim());
        Ok(self
            .tokens()?
            .into_iter()
            .find(|t| constant_time_eq(t.sha256.as_bytes(), digest.as_bytes())))
    }
}

/// Compares two byte strings without stopping at the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_changes_are_all_kept() {
        let dir = std::env::temp_dir().join(format!("jg-acc-{}", crate::crypto::random_hex128()));
        let accounts = Accounts::new(&dir);
        accounts.create_token("first", true).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let a = accounts.clone();
                std::thread::spawn(move || {
                    a.create_token(&format!("t{i}"), false).unwrap();
                    for _ in 0..5 {
                        a.mark_used("first").unwrap();
                        assert!(a.tokens().unwrap().iter().any(|t| t.name == "first"));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(accounts.tokens().unwrap().len(), 9);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn admins_and_tokens() {
        let dir = std::env::temp_dir().join(format!("jg-acc-{}", crate::crypto::random_hex128()));
        let accounts = Accounts::new(&dir);
        let pw = accounts.add_admin("ops").unwrap();
        assert!(matches!(
            accounts.add_admin("ops"),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            accounts.add_admin("a b"),
            Err(AccountError::BadName(_))
        ));
        let admin = accounts.admin("ops").unwrap().unwrap();
        assert!(admin.hash.starts_with("$argon2id$"));
        assert!(verify_password(&pw, &admin.hash));
        assert!(!verify_password("wrong", &admin.hash));
        let token = accounts.create_token("prom", true).unwrap();
        assert!(accounts.find_token(&token).unwrap().unwrap().read_only);
        assert!(accounts.find_token("jgt_nope").unwrap().is_none());
        let raw = std::fs::read_to_string(dir.join("console/tokens.json")).unwrap();
        assert!(!raw.contains(&token) && !raw.contains(&pw));
        accounts.revoke_token("prom").unwrap();
        assert!(accounts.find_token(&token).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
