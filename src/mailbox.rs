//! Gateway mailboxes: identity, status and keys, kept as files under `data_dir/mailboxes/<id>/`.
//!
//! The directory is the registry, so the CLI can manage mailboxes whether or not `serve` runs.
//! A mailbox ID is only ever turned into a path after [`MailboxId::parse`] has validated it.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError};
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("not a mailbox ID: expected mbx- followed by 32 lowercase hex digits")]
    BadId,
    #[error("no such mailbox: {0}")]
    NotFound(MailboxId),
    #[error("mailbox {0} is active; suspend it before deleting it")]
    NotSuspended(MailboxId),
    #[error("mailbox record {0} is damaged: {1}")]
    Damaged(MailboxId, String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A validated mailbox ID: `mbx-` followed by 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailboxId(String);

impl MailboxId {
    /// Accepts `mbx-<hex>` or `mbx-<hex>@domain`, any case; the domain is not checked here.
    pub fn parse(input: &str) -> Result<MailboxId, MailboxError> {
        let local = input.split('@').next().unwrap_or("").to_ascii_lowercase();
        let hex = local.strip_prefix("mbx-").ok_or(MailboxError::BadId)?;
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(MailboxId(local))
        } else {
            Err(MailboxError::BadId)
        }
    }

    fn generate() -> MailboxId {
        MailboxId(format!("mbx-{}", crypto::random_hex128()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MailboxId {
    type Error = MailboxError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MailboxId::parse(&s)
    }
}

impl From<MailboxId> for String {
    fn from(id: MailboxId) -> String {
        id.0
    }
}

impl fmt::Display for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
}

/// What `mailbox.json` holds. Nothing in it is secret or message content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub id: MailboxId,
    pub name: String,
    pub description: String,
    pub status: Status,
    pub created: String,
    pub uidvalidity: u32,
    /// age X25519 recipient (`age1...`) that new mail is sealed to.
    pub public_key: String,
    /// Incremented by each password reset; mail sealed to older keys is moved aside.
    pub key_generation: u32,
    /// The Microsoft 365 tenant this mailbox journals for (a tenant ID or the
    /// `X-OriginatorOrg` domain, lowercase). When set, a journal report that does not name it
    /// is not trusted, and only a report that does is unwrapped from an NDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

const RECORD: &str = "mailbox.json";
const IDENTITY: &str = "identity.age";
pub const MESSAGES: &str = "msg";

/// The mailbox registry under `data_dir/mailboxes`.
#[derive(Debug, Clone)]
pub struct Mailboxes {
    root: PathBuf,
    /// Records read by [`Mailboxes::list`], with the (inode, mtime, length) of their file:
    /// a record rewritten (always a new file) is read again.
    listed: Arc<Mutex<HashMap<MailboxId, (RecordStamp, MailboxRecord)>>>,
    /// Asked for a mailbox this node does not have (cluster mode: the shared registry).
    remote: Arc<std::sync::OnceLock<Arc<dyn Fetch>>>,
}

/// Fetches a mailbox this node does not know from elsewhere (the cluster's registry) and
/// installs it with [`Mailboxes::install`]; `Ok(false)`: no such mailbox there either.
pub trait Fetch: Send + Sync + std::fmt::Debug {
    fn fetch(&self, id: &MailboxId) -> Result<bool, String>;
    /// Shares this node's change of a mailbox at once (else the next sync does).
    fn publish(&self, id: &MailboxId) -> Result<(), String>;
    /// Deletes a mailbox everywhere (before this node deletes its copy).
    fn withdraw(&self, id: &MailboxId) -> Result<(), String>;
}

type RecordStamp = (u64, Option<std::time::SystemTime>, u64);

impl Mailboxes {
    pub fn new(data_dir: &Path) -> Mailboxes {
        Mailboxes {
            root: data_dir.join("mailboxes"),
            listed: Arc::default(),
            remote: Arc::default(),
        }
    }

    /// Asks `remote` for mailboxes not found here, from now on (for every clone).
    pub fn set_remote(&self, remote: Arc<dyn Fetch>) {
        let _ = self.remote.set(remote);
    }

    /// Tells the cluster (if any) that a mailbox changed here.
    fn published(&self, id: &MailboxId) {
        if let Some(remote) = self.remote.get() {
            if let Err(e) = remote.publish(id) {
                tracing::warn!(mailbox = %id, error = %e, "cannot share the mailbox change with the cluster yet; the registry sync retries");
            }
        }
    }

    /// Installs (or replaces) a mailbox's record and wrapped key as another node made them.
    pub fn install(&self, record: &MailboxRecord, identity: &[u8]) -> Result<(), MailboxError> {
        fsutil::create_private_dir(&self.root)?;
        let dir = self.dir(&record.id);
        if dir.exists() {
            fsutil::write_atomic(&dir.join(IDENTITY), identity, 0o600)?;
            return write_record(&dir, record);
        }
        let staging = self.root.join(format!(".new-{}", record.id));
        fsutil::create_private_dir(&staging.join(MESSAGES))?;
        fsutil::write_atomic(&staging.join(IDENTITY), identity, 0o600)?;
        write_record(&staging, record)?;
        fs::rename(&staging, &dir)?;
        fsutil::sync_dir(&self.root)?;
        Ok(())
    }

    /// Removes this node's copy of a mailbox another node deleted.
    pub fn uninstall(&self, id: &MailboxId) -> Result<(), MailboxError> {
        let doomed = self.root.join(format!(".deleted-{id}"));
        match fs::rename(self.dir(id), &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        fsutil::sync_dir(&self.root)?;
        fs::remove_dir_all(&doomed)?;
        Ok(())
    }

    /// A record for [`Mailboxes::list`]: the one read before while its file is the same.
    fn load_listed(&self, id: &MailboxId) -> Result<MailboxRecord, MailboxError> {
        use std::os::unix::fs::MetadataExt;
        let stamp = match fs::metadata(self.dir(id).join(RECORD)) {
            Ok(m) => (m.ino(), m.modified().ok(), m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MailboxError::NotFound(id.clone()))
            }
            Err(e) => return Err(MailboxError::Io(e)),
        };
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, record)) = listed.get(id) {
            if *seen == stamp {
                return Ok(record.clone());
            }
        }
        let record = self.load(id)?;
        listed.insert(id.clone(), (stamp, record.clone()));
        Ok(record)
    }

    pub fn dir(&self, id: &MailboxId) -> PathBuf {
        self.root.join(id.as_str())
    }

    pub fn msg_dir(&self, id: &MailboxId) -> PathBuf {
        self.dir(id).join(MESSAGES)
    }

    /// Creates a mailbox and returns it with its password (shown once, never stored).
    pub fn create(
        &self,
        name: &str,
        description: &str,
    ) -> Result<(MailboxRecord, String), MailboxError> {
        fsutil::create_private_dir(&self.root)?;
        let id = MailboxId::generate();
        let password = crypto::random_password();
        let keys = crypto::generate_keypair(&password)?;
        let record = MailboxRecord {
            id: id.clone(),
            name: name.to_owned(),
            description: description.to_owned(),
            status: Status::Active,
            created: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            uidvalidity: uidvalidity_now(),
            public_key: keys.public,
            key_generation: 1,
            tenant: None,
        };
        // Build the mailbox in a hidden directory, then publish it with one rename.
        let staging = self.root.join(format!(".new-{id}"));
        fsutil::create_private_dir(&staging.join(MESSAGES))?;
        fsutil::write_atomic(&staging.join(IDENTITY), &keys.wrapped_secret, 0o600)?;
        write_record(&staging, &record)?;
        fs::rename(&staging, self.dir(&id))?;
        fsutil::sync_dir(&self.root)?;
        self.published(&id);
        Ok((record, password))
    }

    pub fn load(&self, id: &MailboxId) -> Result<MailboxRecord, MailboxError> {
        match self.load_local(id) {
            Err(MailboxError::NotFound(_)) if self.remote.get().is_some() => {
                let remote = self.remote.get().expect("checked");
                match remote.fetch(id) {
                    Ok(true) => self.load_local(id),
                    Ok(false) => Err(MailboxError::NotFound(id.clone())),
                    Err(e) => Err(MailboxError::Io(std::io::Error::other(e))),
                }
            }
            other => other,
        }
    }

    /// This node's copy only (never asks the cluster).
    pub fn load_local(&self, id: &MailboxId) -> Result<MailboxRecord, MailboxError> {
        let path = self.dir(id).join(RECORD);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => MailboxError::NotFound(id.clone()),
            _ => MailboxError::Io(e),
        })?;
        let record: MailboxRecord = serde_json::from_str(&text)
            .map_err(|e| MailboxError::Damaged(id.clone(), e.to_string()))?;
        if &record.id != id {
            return Err(MailboxError::Damaged(id.clone(), "id mismatch".into()));
        }
        Ok(record)
    }

    /// Every mailbox, sorted by ID. Entries that are not mailbox directories are ignored.
    pub fn list(&self) -> Result<Vec<MailboxRecord>, MailboxError> {
        let mut out = Vec::new();
        for name in fsutil::entry_names(&self.root)? {
            if let Ok(id) = MailboxId::parse(&name) {
                if id.as_str() == name {
                    out.push(self.load_listed(&id)?);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn set_status(
        &self,
        id: &MailboxId,
        status: Status,
    ) -> Result<MailboxRecord, MailboxError> {
        let mut record = self.load(id)?;
        record.status = status;
        write_record(&self.dir(id), &record)?;
        self.published(id);
        Ok(record)
    }

    /// Renames or redescribes a mailbox (None leaves a field as it is).
    pub fn set_details(
        &self,
        id: &MailboxId,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<MailboxRecord, MailboxError> {
        let mut record = self.load(id)?;
        if let Some(name) = name {
            record.name = name.to_owned();
        }
        if let Some(description) = description {
            record.description = description.to_owned();
        }
        write_record(&self.dir(id), &record)?;
        self.published(id);
        Ok(record)
    }

    /// Pins the mailbox to a tenant (None removes the pin).
    pub fn set_tenant(
        &self,
        id: &MailboxId,
        tenant: Option<&str>,
    ) -> Result<MailboxRecord, MailboxError> {
        let mut record = self.load(id)?;
        record.tenant = tenant
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty());
        write_record(&self.dir(id), &record)?;
        self.published(id);
        Ok(record)
    }

    /// Deletes a suspended mailbox and all its mail.
    pub fn delete(&self, id: &MailboxId) -> Result<(), MailboxError> {
        let record = self.load(id)?;
        if record.status != Status::Suspended {
            return Err(MailboxError::NotSuspended(id.clone()));
        }
        // In a cluster, gone from every node first: a failure leaves it whole everywhere.
        if let Some(remote) = self.remote.get() {
            remote
                .withdraw(id)
                .map_err(|e| MailboxError::Io(std::io::Error::other(e)))?;
        }
        // Unpublish with one rename first, so a crash never leaves a half-deleted mailbox.
        let doomed = self.root.join(format!(".deleted-{id}"));
        fs::rename(self.dir(id), &doomed)?;
        fsutil::sync_dir(&self.root)?;
        fs::remove_dir_all(&doomed)?;
        Ok(())
    }

    /// Gives the mailbox a new key pair and password. Mail sealed to the old key cannot be
    /// read with the new password; it is moved to `locked-<generation>/`, out of service.
    pub fn reset_password(&self, id: &MailboxId) -> Result<(MailboxRecord, String), MailboxError> {
        let mut record = self.load(id)?;
        let password = crypto::random_password();
        let keys = crypto::generate_keypair(&password)?;
        let dir = self.dir(id);
        let locked = dir.join(format!("locked-{}", record.key_generation));
        fs::rename(dir.join(MESSAGES), &locked)?;
        fsutil::create_private_dir(&dir.join(MESSAGES))?;
        fsutil::write_atomic(
            &locked.join(IDENTITY),
            &fs::read(dir.join(IDENTITY))?,
            0o600,
        )?;
        fsutil::write_atomic(&dir.join(IDENTITY), &keys.wrapped_secret, 0o600)?;
        record.public_key = keys.public;
        record.key_generation += 1;
        write_record(&dir, &record)?;
        self.published(id);
        Ok((record, password))
    }

    /// The secret key of the mailbox, sealed with its password.
    pub fn wrapped_identity(&self, id: &MailboxId) -> Result<Vec<u8>, MailboxError> {
        fs::read(self.dir(id).join(IDENTITY)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => MailboxError::NotFound(id.clone()),
            _ => MailboxError::Io(e),
        })
    }

    /// Removes staging and deletion leftovers of an interrupted create or delete.
    pub fn clean_leftovers(&self) -> Result<(), MailboxError> {
        Ok(fsutil::remove_staging_leftovers(&self.root)?)
    }
}

fn write_record(dir: &Path, record: &MailboxRecord) -> Result<(), MailboxError> {
    let json = serde_json::to_vec_pretty(record).expect("record serializes");
    fsutil::write_atomic(&dir.join(RECORD), &json, 0o600)?;
    Ok(())
}

fn uidvalidity_now() -> u32 {
    u32::try_from(Utc::now().timestamp()).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_parsing_is_strict() {
        let id = MailboxId::parse("MBX-0123456789ABCDEF0123456789abcdef@Gw.Test").unwrap();
        assert_eq!(id.as_str(), "mbx-0123456789abcdef0123456789abcdef");
        for bad in [
            "",
            "mbx-",
            "mbx-../../etc/passwd",
            "mbx-0123456789abcdef0123456789abcde",
            "mbx-0123456789abcdef0123456789abcdeg",
            "box-0123456789abcdef0123456789abcdef",
        ] {
            assert!(MailboxId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifecycle() {
        let dir = tempdir();
        let boxes = Mailboxes::new(&dir);
        let (rec, pw) = boxes.create("journal", "tenant A").unwrap();
        assert_eq!(boxes.list().unwrap().len(), 1);
        let wrapped = boxes.wrapped_identity(&rec.id).unwrap();
        crypto::unwrap_identity(&wrapped, &pw).unwrap();
        assert!(matches!(
            boxes.delete(&rec.id),
            Err(MailboxError::NotSuspended(_))
        ));
        let (_, pw2) = boxes.reset_password(&rec.id).unwrap();
        let wrapped = boxes.wrapped_identity(&rec.id).unwrap();
        assert!(crypto::unwrap_identity(&wrapped, &pw).is_err());
        crypto::unwrap_identity(&wrapped, &pw2).unwrap();
        boxes.set_status(&rec.id, Status::Suspended).unwrap();
        boxes.delete(&rec.id).unwrap();
        assert!(boxes.list().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("jg-test-{}", crypto::random_hex128()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
