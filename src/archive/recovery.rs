//! The archive's recovery key: an X25519 key pair whose secret half is handed to the operator
//! once (whole, or split M-of-N with Shamir's scheme) and never stored on the server.
//!
//! Once one exists every new archive item is also sealed to it, so nothing is dropped for
//! want of a reader and a grant ([`super::grant`]) can give any user back their history after
//! a password reset. `data_dir/archive/recovery.json` lists the public keys (newest last; new
//! items use the newest); nothing in it is secret.

use std::fs;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::Identity;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "a recovery key already exists (created {0}); use `archive recovery rotate` for a new one"
    )]
    Exists(String),
    #[error("no recovery key is configured: run `journalgate archive recovery init`")]
    NotConfigured,
    #[error("not a recovery key or share file: {0}")]
    BadFile(String),
    #[error("this key is not one of this archive's recovery keys")]
    Unknown,
    #[error("the shares belong to different recovery keys")]
    Mixed,
    #[error("{needed} shares are needed to rebuild the recovery key; {given} distinct given")]
    TooFewShares { needed: u8, given: usize },
    #[error("the shares do not rebuild the recovery key (damaged or from another split)")]
    BadShares,
    #[error("--shares N needs 2 <= threshold <= N <= 255")]
    BadSplit,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One recovery key as recorded on the server (public half only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryKey {
    /// age X25519 recipient (`age1...`).
    pub public: String,
    pub created: String,
    /// (shares, threshold) when the secret was split.
    pub split: Option<(u8, u8)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    keys: Vec<RecoveryKey>,
}

/// What `init`/`rotate` hand out: the secret whole, or the shares.
pub enum Secret {
    Whole(String),
    Shares(Vec<String>),
}

/// The recovery keys of the archive under `data_dir`.
#[derive(Debug, Clone)]
pub struct Recovery {
    path: PathBuf,
    users: super::users::Users,
}

impl Recovery {
    pub fn new(data_dir: &Path) -> Recovery {
        Recovery {
            path: data_dir.join("archive").join("recovery.json"),
            users: super::users::Users::new(data_dir),
        }
    }

    /// Every recovery key, oldest first.
    pub fn keys(&self) -> Result<Vec<RecoveryKey>, RecoveryError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<Registry>(&bytes)
                .map(|r| r.keys)
                .map_err(|e| RecoveryError::BadFile(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The key new items are sealed to.
    pub fn current(&self) -> Result<Option<RecoveryKey>, RecoveryError> {
        Ok(self.keys()?.pop())
    }

    /// Creates the first recovery key (`rotate` = false) or one more (`rotate` = true).
    /// `split` = (shares, threshold). The secret is returned, never stored.
    pub fn create(
        &self,
        rotate: bool,
        split: Option<(u8, u8)>,
    ) -> Result<(RecoveryKey, Secret), RecoveryError> {
        let mut keys = self.keys()?;
        if let (false, Some(existing)) = (rotate, keys.last()) {
            return Err(RecoveryError::Exists(existing.created.clone()));
        }
        if let Some((n, m)) = split {
            if m < 2 || m > n {
                return Err(RecoveryError::BadSplit);
            }
        }
        let identity = Identity::generate();
        let key = RecoveryKey {
            public: identity.to_public().to_string(),
            created: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            split,
        };
        let secret_text = identity.to_string().expose_secret().to_owned();
        let secret = match split {
            None => Secret::Whole(secret_text),
            Some((n, m)) => Secret::Shares(split_secret(&secret_text, &key.public, n, m)),
        };
        keys.push(key.clone());
        if let Some(dir) = self.path.parent() {
            fsutil::create_private_dir(dir)?;
        }
        let json = serde_json::to_vec_pretty(&Registry { keys }).expect("serializes");
        fsutil::write_atomic(&self.path, &json, 0o600)?;
        // A running server seals new items to the new key from now on.
        self.users
            .touch()
            .map_err(|e| RecoveryError::Io(std::io::Error::other(e.to_string())))?;
        Ok((key, secret))
    }

    /// Checks that `identity` is one of this archive's recovery keys.
    pub fn check(&self, identity: &Identity) -> Result<(), RecoveryError> {
        let public = identity.to_public().to_string();
        if self.keys()?.iter().any(|k| k.public == public) {
            Ok(())
        } else {
            Err(RecoveryError::Unknown)
        }
    }
}

const SHARE_TITLE: &str = "journalgate recovery key share";

/// Shamir M-of-N over the secret key's text; each share names the public key it rebuilds.
fn split_secret(secret: &str, public: &str, n: u8, m: u8) -> Vec<String> {
    let sharks = blahaj::Sharks(m);
    sharks
        .dealer(secret.as_bytes())
        .take(usize::from(n))
        .enumerate()
        .map(|(i, share)| {
            format!(
                "# {SHARE_TITLE} {} of {n}: any {m} rebuild the key. Keep it offline.\n\
                 public: {public}\nthreshold: {m}\nshare: {}\n",
                i + 1,
                hex::encode(Vec::from(&share))
            )
        })
        .collect()
}

/// Reads a whole recovery secret key file (`AGE-SECRET-KEY-1...`, `#` comments allowed).
pub fn read_secret(text: &str) -> Result<Identity, RecoveryError> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.parse::<Identity>().ok())
        .ok_or_else(|| RecoveryError::BadFile("no AGE-SECRET-KEY line".into()))
}

/// Rebuilds the recovery key from share files' texts.
pub fn combine(texts: &[String]) -> Result<Identity, RecoveryError> {
    let mut public: Option<String> = None;
    let mut threshold = 0u8;
    let mut shares = Vec::new();
    for text in texts {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let (Some(p), Some(t), Some(s)) = (field("public:"), field("threshold:"), field("share:"))
        else {
            return Err(RecoveryError::BadFile("not a share file".into()));
        };
        if public.as_ref().is_some_and(|known| *known != p) {
            return Err(RecoveryError::Mixed);
        }
        public = Some(p);
        threshold = t
            .parse()
            .map_err(|_| RecoveryError::BadFile("threshold".into()))?;
        let bytes = hex::decode(&s).map_err(|_| RecoveryError::BadFile("share".into()))?;
        let share = blahaj::Share::try_from(bytes.as_slice())
            .map_err(|_| RecoveryError::BadFile("share".into()))?;
        shares.push((bytes, share));
    }
    shares.sort_by(|a, b| a.0.cmp(&b.0));
    shares.dedup_by(|a, b| a.0 == b.0);
    if threshold < 2 || shares.len() < usize::from(threshold) {
        return Err(RecoveryError::TooFewShares {
            needed: threshold.max(2),
            given: shares.len(),
        });
    }
    let secret = blahaj::Sharks(threshold)
        .recover(shares.iter().map(|(_, s)| s))
        .map_err(|_| RecoveryError::BadShares)?;
    let identity = std::str::from_utf8(&secret)
        .ok()
        .and_then(|s| s.parse::<Identity>().ok())
        .ok_or(RecoveryError::BadShares)?;
    if Some(identity.to_public().to_string()) != public {
        return Err(RecoveryError::BadShares);
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (Recovery, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("jg-recovery-{}", crate::crypto::random_hex128()));
        (Recovery::new(&dir), dir)
    }

    #[test]
    fn whole_key_is_handed_out_once_and_never_stored() {
        let (recovery, dir) = registry();
        assert!(recovery.current().unwrap().is_none());
        let (key, secret) = recovery.create(false, None).unwrap();
        let Secret::Whole(text) = secret else {
            panic!("whole")
        };
        let identity = read_secret(&format!("# comment\n{text}\n")).unwrap();
        assert_eq!(identity.to_public().to_string(), key.public);
        recovery.check(&identity).unwrap();
        let stored = fs::read_to_string(dir.join("archive/recovery.json")).unwrap();
        assert!(
            !stored.contains("AGE-SECRET-KEY"),
            "no secret on the server"
        );
        assert!(matches!(
            recovery.create(false, None),
            Err(RecoveryError::Exists(_))
        ));
        let (newer, _) = recovery.create(true, None).unwrap();
        assert_eq!(recovery.current().unwrap().unwrap(), newer);
        assert_eq!(recovery.keys().unwrap().len(), 2);
        assert!(matches!(
            recovery.check(&Identity::generate()),
            Err(RecoveryError::Unknown)
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shares_rebuild_the_key_only_when_enough_and_matching() {
        let (recovery, dir) = registry();
        assert!(matches!(
            recovery.create(false, Some((3, 4))),
            Err(RecoveryError::BadSplit)
        ));
        let (key, secret) = recovery.create(false, Some((5, 3))).unwrap();
        let Secret::Shares(shares) = secret else {
            panic!("shares")
        };
        assert_eq!(shares.len(), 5);
        let rebuilt = combine(&[shares[4].clone(), shares[0].clone(), shares[2].clone()]).unwrap();
        assert_eq!(rebuilt.to_public().to_string(), key.public);
        assert!(matches!(
            combine(&shares[..2]),
            Err(RecoveryError::TooFewShares {
                needed: 3,
                given: 2
            })
        ));
        let same_twice = [shares[0].clone(), shares[0].clone(), shares[1].clone()];
        assert!(matches!(
            combine(&same_twice),
            Err(RecoveryError::TooFewShares { .. })
        ));
        let (_, other) = recovery.create(true, Some((3, 2))).unwrap();
        let Secret::Shares(other) = other else {
            panic!("shares")
        };
        assert!(matches!(
            combine(&[shares[0].clone(), other[1].clone()]),
            Err(RecoveryError::Mixed)
        ));
        let damaged = shares[1].replace("share: ", "share: 0f");
        assert!(combine(&[shares[0].clone(), damaged, shares[2].clone()]).is_err());
        assert!(matches!(
            combine(&["hello".into()]),
            Err(RecoveryError::BadFile(_))
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
