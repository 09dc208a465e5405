//! Archive users: a login (the primary address), aliases, an optional auditor role, and an
//! X25519 key pair whose secret key only the user's password unwraps (like gateway mailboxes).
//!
//! Kept as files under `data_dir/archive/users/usr-<32 hex>/` so the CLI works with or without
//! a running server. Directory names are random IDs, never built from addresses.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError};
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("not a valid e-mail address: {0:?}")]
    BadAddress(String),
    #[error("the address {0} already belongs to user {1}")]
    Taken(String, String),
    #[error("no such user: {0}")]
    NotFound(String),
    #[error("user record {0} is damaged: {1}")]
    Damaged(String, String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What `user.json` holds. Nothing in it is secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// `usr-` + 32 hex digits; names the user's directory and archive folders.
    pub id: String,
    /// The primary address, lowercased; the IMAP login.
    pub login: String,
    pub aliases: Vec<String>,
    pub name: String,
    pub auditor: bool,
    pub created: String,
    /// age X25519 recipient archive copies are sealed to.
    pub public_key: String,
    /// Incremented by each password reset.
    pub key_generation: u32,
}

impl UserRecord {
    /// The login and every alias.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.login.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

const RECORD: &str = "user.json";
/// Rewritten by every change to the users, so a running server notices at once.
const GENERATION: &str = ".generation";
const IDENTITY: &str = "identity.age";

/// Normalises an address for matching and storage: trimmed, lowercased, validated. Addresses
/// also become IMAP folder names (`Users/<login>/INBOX`), so characters that are special
/// there are refused.
pub fn normalize_address(input: &str) -> Result<String, UserError> {
    let a = input.trim().to_lowercase();
    let bad = || UserError::BadAddress(input.to_owned());
    let (local, domain) = a.split_once('@').ok_or_else(bad)?;
    let forbidden =
        |c: char| c.is_whitespace() || c.is_control() || "/\\\"*%<>()[],;:@".contains(c);
    if local.is_empty()
        || domain.is_empty()
        || a.len() > 254
        || local.chars().any(forbidden)
        || domain.chars().any(forbidden)
        || !domain.contains('.') && domain != "localhost"
    {
        return Err(bad());
    }
    Ok(a)
}

/// The user registry under `data_dir/archive/users`.
#[derive(Debug, Clone)]
pub struct Users {
    root: PathBuf,
}

impl Users {
    pub fn new(data_dir: &Path) -> Users {
        Users {
            root: data_dir.join("archive").join("users"),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates a user; returns the record and the password (shown once, never stored).
    pub fn add(
        &self,
        login: &str,
        aliases: &[String],
        name: &str,
        auditor: bool,
    ) -> Result<(UserRecord, String), UserError> {
        let login = normalize_address(login)?;
        if !login.is_ascii() {
            // The login becomes an IMAP folder name (`Users/<login>/INBOX`); use an alias.
            return Err(UserError::BadAddress(login));
        }
        let mut all = vec![login.clone()];
        for a in aliases {
            let a = normalize_address(a)?;
            if !all.contains(&a) {
                all.push(a);
            }
        }
        for existing in self.list()? {
            if let Some(a) = all.iter().find(|a| existing.addresses().any(|e| e == *a)) {
                return Err(UserError::Taken(a.clone(), existing.login));
            }
        }
        let password = crypto::random_password();
        let keys = crypto::generate_keypair(&password)?;
        let record = UserRecord {
            id: format!("usr-{}", crypto::random_hex128()),
            login,
            aliases: all[1..].to_vec(),
            name: name.to_owned(),
            auditor,
            created: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            public_key: keys.public,
            key_generation: 1,
        };
        fsutil::create_private_dir(&self.root)?;
        let staging = self.root.join(format!(".new-{}", record.id));
        fsutil::create_private_dir(&staging)?;
        fsutil::write_atomic(&staging.join(IDENTITY), &keys.wrapped_secret, 0o600)?;
        write_record(&staging, &record)?;
        fs::rename(&staging, self.dir(&record.id))?;
        fsutil::sync_dir(&self.root)?;
        self.bump()?;
        Ok((record, password))
    }

    /// Tells a running server that the users, their keys or the recovery keys changed.
    pub fn touch(&self) -> Result<(), UserError> {
        fsutil::create_private_dir(&self.root)?;
        self.bump()
    }

    /// Marks the user list as changed.
    fn bump(&self) -> Result<(), UserError> {
        fsutil::write_atomic(
            &self.root.join(GENERATION),
            crypto::random_hex128().as_bytes(),
            0o600,
        )?;
        Ok(())
    }

    /// Changes whenever a user is added, deleted or given a new password: the marker file
    /// is replaced (a new inode) on every change, so one `stat` tells.
    pub fn generation(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(self.root.join(GENERATION)) {
            Ok(m) => format!("{}.{}.{}", m.ino(), m.mtime(), m.mtime_nsec()),
            Err(_) => String::new(),
        }
    }

    /// Every user, sorted by login. Leftovers of interrupted operations are ignored.
    pub fn list(&self) -> Result<Vec<UserRecord>, UserError> {
        let mut out = Vec::new();
        for name in fsutil::entry_names(&self.root)? {
            if valid_id(&name) {
                out.push(self.load(&name)?);
            }
        }
        out.sort_by(|a, b| a.login.cmp(&b.login));
        Ok(out)
    }

    fn load(&self, id: &str) -> Result<UserRecord, UserError> {
        let text = fs::read_to_string(self.dir(id).join(RECORD)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => UserError::NotFound(id.to_owned()),
            _ => UserError::Io(e),
        })?;
        let record: UserRecord = serde_json::from_str(&text)
            .map_err(|e| UserError::Damaged(id.to_owned(), e.to_string()))?;
        if record.id != id {
            return Err(UserError::Damaged(id.to_owned(), "id mismatch".into()));
        }
        Ok(record)
    }

    /// The user whose login (not alias) is `login`, or whose ID is `login`.
    pub fn find(&self, login: &str) -> Result<UserRecord, UserError> {
        let wanted = login.trim().to_lowercase();
        self.list()?
            .into_iter()
            .find(|u| u.login == wanted || u.id == wanted)
            .ok_or_else(|| UserError::NotFound(login.to_owned()))
    }

    pub fn delete(&self, login: &str) -> Result<UserRecord, UserError> {
        let record = self.find(login)?;
        let doomed = self.root.join(format!(".deleted-{}", record.id));
        fs::rename(self.dir(&record.id), &doomed)?;
        fsutil::sync_dir(&self.root)?;
        fs::remove_dir_all(&doomed)?;
        self.bump()?;
        Ok(record)
    }

    /// New password and key pair. Archive copies sealed to the old key stay unreadable for
    /// this user (auditors still read them); new copies use the new key.
    pub fn reset_password(&self, login: &str) -> Result<(UserRecord, String), UserError> {
        let mut record = self.find(login)?;
        let password = crypto::random_password();
        let keys = crypto::generate_keypair(&password)?;
        let dir = self.dir(&record.id);
        fsutil::write_atomic(
            &dir.join(format!("identity-{}.age", record.key_generation)),
            &fs::read(dir.join(IDENTITY))?,
            0o600,
        )?;
        fsutil::write_atomic(&dir.join(IDENTITY), &keys.wrapped_secret, 0o600)?;
        record.public_key = keys.public;
        record.key_generation += 1;
        write_record(&dir, &record)?;
        self.bump()?;
        Ok((record, password))
    }

    /// Gives `login` another address; refused when any user already has it.
    pub fn add_alias(&self, login: &str, alias: &str) -> Result<UserRecord, UserError> {
        let alias = normalize_address(alias)?;
        let mut record = self.find(login)?;
        if let Some(owner) = self
            .list()?
            .into_iter()
            .find(|u| u.addresses().any(|a| a == alias))
        {
            return Err(UserError::Taken(alias, owner.login));
        }
        record.aliases.push(alias);
        write_record(&self.dir(&record.id), &record)?;
        self.bump()?;
        Ok(record)
    }

    /// Sets a user's display name.
    pub fn set_name(&self, login: &str, name: &str) -> Result<UserRecord, UserError> {
        let mut record = self.find(login)?;
        record.name = name.to_owned();
        write_record(&self.dir(&record.id), &record)?;
        self.bump()?;
        Ok(record)
    }

    /// Makes a user's aliases exactly `aliases` (each checked like [`Users::add_alias`]).
    pub fn set_aliases(&self, login: &str, aliases: &[String]) -> Result<UserRecord, UserError> {
        let record = self.find(login)?;
        let wanted: Vec<String> = aliases
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| normalize_address(a))
            .collect::<Result<_, _>>()?;
        for old in record.aliases.iter().filter(|a| !wanted.contains(a)) {
            self.remove_alias(&record.login, old)?;
        }
        let mut current = self.find(&record.login)?;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|a| !current.aliases.contains(a))
            .collect();
        for new in missing {
            current = self.add_alias(&record.login, new)?;
        }
        Ok(current)
    }

    /// Takes an alias away from `login` (mail already filed stays in the user's folders).
    pub fn remove_alias(&self, login: &str, alias: &str) -> Result<UserRecord, UserError> {
        let alias = normalize_address(alias)?;
        let mut record = self.find(login)?;
        let before = record.aliases.len();
        record.aliases.retain(|a| *a != alias);
        if record.aliases.len() == before {
            return Err(UserError::NotFound(format!(
                "alias {alias} of {}",
                record.login
            )));
        }
        write_record(&self.dir(&record.id), &record)?;
        self.bump()?;
        Ok(record)
    }

    /// The user's secret key, sealed with the password.
    pub fn wrapped_identity(&self, id: &str) -> Result<Vec<u8>, UserError> {
        if !valid_id(id) {
            return Err(UserError::NotFound(id.to_owned()));
        }
        Ok(fs::read(self.dir(id).join(IDENTITY))?)
    }

    /// Removes leftovers of interrupted adds and deletes.
    pub fn clean_leftovers(&self) -> Result<(), UserError> {
        Ok(fsutil::remove_staging_leftovers(&self.root)?)
    }
}

fn valid_id(name: &str) -> bool {
    name.strip_prefix("usr-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn write_record(dir: &Path, record: &UserRecord) -> Result<(), UserError> {
    let json = serde_json::to_vec_pretty(record).expect("record serializes");
    fsutil::write_atomic(&dir.join(RECORD), &json, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_and_checked() {
        assert_eq!(
            normalize_address(" Bob@Contoso.Example ").unwrap(),
            "bob@contoso.example"
        );
        for bad in [
            "",
            "bob",
            "@x.example",
            "bob@",
            "a b@x.example",
            "a/b@x.example",
            "a@b",
            "a@x.example@y",
        ] {
            assert!(normalize_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifecycle_and_unique_addresses() {
        let dir = std::env::temp_dir().join(format!("jg-users-{}", crypto::random_hex128()));
        let users = Users::new(&dir);
        let (alice, pw) = users
            .add(
                "Alice@Contoso.example",
                &["a.smith@contoso.example".into()],
                "Alice",
                false,
            )
            .unwrap();
        assert_eq!(alice.login, "alice@contoso.example");
        assert!(matches!(
            users.add(
                "bob@contoso.example",
                &["A.Smith@contoso.example".into()],
                "",
                false
            ),
            Err(UserError::Taken(..))
        ));
        crypto::unwrap_identity(&users.wrapped_identity(&alice.id).unwrap(), &pw).unwrap();
        let (_, pw2) = users.reset_password("alice@contoso.example").unwrap();
        let wrapped = users.wrapped_identity(&alice.id).unwrap();
        assert!(crypto::unwrap_identity(&wrapped, &pw).is_err());
        crypto::unwrap_identity(&wrapped, &pw2).unwrap();
        users.add("bob@contoso.example", &[], "", false).unwrap();
        assert!(matches!(
            users.add_alias("bob@contoso.example", "A.Smith@Contoso.example"),
            Err(UserError::Taken(..))
        ));
        let bob = users
            .add_alias("bob@contoso.example", "robert@contoso.example")
            .unwrap();
        assert_eq!(bob.aliases, vec!["robert@contoso.example".to_owned()]);
        let bob = users
            .remove_alias("bob@contoso.example", "Robert@contoso.example")
            .unwrap();
        assert!(bob.aliases.is_empty());
        assert!(users
            .remove_alias("bob@contoso.example", "robert@contoso.example")
            .is_err());
        users.delete("bob@contoso.example").unwrap();
        users.delete("alice@contoso.example").unwrap();
        assert!(users.list().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
