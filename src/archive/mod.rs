//! The archive: every accepted message is unpacked in the background and the original is
//! filed, sealed, for each archive user on its envelope; users and auditors read it over IMAP.
//!
//! Flow: SMTP leaves one extra copy of each message in `archive/intake/`, sealed to the
//! archive's server key and durable before the `250` (see [`crate::spool::Intake`]). A worker
//! thread takes intake files oldest first: classifies the message ([`crate::journal`]), trusts
//! journal semantics only from `journal_sources`, finds the users concerned, seals each
//! original to them and to every auditor (`archive/items/<n>.age`), records the folder entries
//! durably ([`store`]), and only then deletes the intake file. A crash at any point is
//! resumed: the intake file is still there, and an item already recorded is not filed twice.
//!
//! The intake key is held by the server, outside `data_dir` (see [`keys`]): the archive has
//! to be written without any user's password. Intake files live only until they are
//! processed; the copies kept for merging duplicates live `dedupe_hours` (default 48).

pub mod chain;
mod dberror;
mod duplicate;
pub mod envelope;
pub mod export;
pub mod export_check;
mod file;
mod fingerprint;
pub mod flags;
mod flagtables;
mod grant;
pub mod holds;
mod integrity;
mod itemset;
pub mod pack;
pub use grant::{GrantReport, GRANT_BATCH};
mod keys;
mod plan;
mod readable;
mod reader;
pub mod retention;
pub use reader::{Access, ArchiveStore};
pub mod recovery;
pub mod skeleton;
mod source;
mod stats;
mod storage;
pub mod store;
pub mod summary;
mod summarytables;
pub mod users;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::ArchiveConfig;
use crate::crypto::epoch::{Epoch, Keyring, SymmetricKey};
use crate::crypto::{self, CryptoError, Identity};
use crate::fsutil;
use crate::message::{Envelope, MessageMeta};
use crate::spool::{Intake, Spool};
use file::{Delta, Pending, COMMIT_EVERY};
use skeleton::Skeleton;
use source::Source;
use store::{Batch, Entry, Store, StoreError};
use users::{UserRecord, Users};

/// Folder of messages no user was found for.
pub const UNKNOWN_FOLDER: &str = "unknown";
/// An intake file the worker started this often without finishing is set aside.
const MAX_ATTEMPTS: u32 = 2;
/// While intake keeps arriving, a commit waits this long for more (see the worker).
const GATHER: Duration = Duration::from_millis(200);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Encoded originals (base64 message/rfc822 parts) up to this size are decoded.
pub(crate) const DECODE_MAX: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Users(#[from] users::UserError),
    #[error("damaged intake file: {0}")]
    Damaged(String),
    #[error(transparent)]
    Recovery(#[from] recovery::RecoveryError),
    #[error("no such message")]
    NoSuchMessage,
}

/// A folder as one IMAP user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderView {
    /// IMAP name: `INBOX`, `Sent`, `Users/<login>/INBOX`, `Unknown Addresses`.
    pub name: String,
    /// Store key: `<user id>/INBOX`, `<user id>/Sent`, `unknown`.
    pub key: String,
    pub special_use: Option<&'static str>,
}

/// `archive stats`.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub items: u64,
    pub pending: u64,
    pub unknown: u64,
    pub duplicates_merged: u64,
    pub untrusted_reports: u64,
    /// Reports from a trusted network set aside (see `plan::distrust`).
    pub quarantined_reports: u64,
    pub skipped_unknown: u64,
    pub reports_without_original: u64,
    pub unreadable_dropped: u64,
    pub journal_reports: u64,
    pub ndr_unwrapped: u64,
    pub plain_copies: u64,
    pub retention_removed: u64,
    pub users: std::collections::BTreeMap<String, UserCounts>,
    /// The current recovery key (public half); none means catch-all mail with no auditor
    /// is dropped and a password reset loses the user's history.
    pub recovery_key: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct UserCounts {
    pub inbox: u64,
    pub sent: u64,
}

pub struct Archive {
    config: ArchiveConfig,
    users: Users,
    store: Store,
    intake_dir: PathBuf,
    items_dir: PathBuf,
    /// Copies of recent items sealed to the server key, for merging duplicates.
    recent_dir: PathBuf,
    /// The server-held intake key: its X25519 form opened intake files of older versions,
    /// its symmetric form ([`SymmetricKey`]) seals and opens them now.
    intake_identity: Identity,
    intake_key: Arc<SymmetricKey>,
    /// The epoch new items are sealed in (see [`crate::crypto::epoch`]); replaced every
    /// `key_epoch_hours` and at each start, its secret never written anywhere.
    epoch: Mutex<Arc<Epoch>>,
    /// The worker's summary keysets in the current epoch.
    keysets: Mutex<summary::Keysets>,
    /// Signs the integrity chain's checkpoints (kept outside `data_dir`).
    signing_key: ed25519_dalek::SigningKey,
    /// Key of the duplicate hashes, so no Message-ID is stored in a guessable form.
    secret: Vec<u8>,
    spool: Arc<Spool>,
    /// The users, with the generation they were read at.
    user_cache: Mutex<Option<(String, Arc<Vec<UserRecord>>)>>,
    recovery: recovery::Recovery,
    holds: holds::Holds,
    /// The current recovery key's public half, with the user generation it was read at.
    recovery_cache: Mutex<Option<(String, Option<String>)>>,
    /// Held while the worker files a batch and while a grant re-wraps one, so that the two
    /// never rewrite the same item file at once.
    filing: Mutex<()>,
    stop: AtomicBool,
    /// Where retention runs are recorded (set by the server, or the CLI that opened it).
    auditor: std::sync::OnceLock<crate::audit::Auditor>,
    /// The pack new items are appended to (see [`pack`]); opened on the first write.
    pack: Mutex<Option<pack::PackWriter>>,
    /// `archive/in-progress`, open, with the (intake file, attempts) it last recorded.
    attempts: Mutex<Option<(File, (String, u32))>>,
}

impl Archive {
    /// Names the intake key without revealing it (SHA-256 of its public half): every node
    /// of a cluster must hold the same one.
    pub fn intake_fingerprint(&self) -> String {
        use sha2::Digest;
        let public = self.intake_identity.to_public().to_string();
        hex::encode(&sha2::Sha256::digest(public.as_bytes())[..16])
    }

    /// Opens the archive under `data_dir/archive` and connects it to the spool's intake.
    pub fn open(config: &ArchiveConfig, spool: Arc<Spool>) -> Result<Arc<Archive>, ArchiveError> {
        let dir = spool.data_dir().join("archive");
        let (intake_dir, items_dir, tmp_dir) =
            (dir.join("intake"), dir.join("items"), dir.join("tmp"));
        let recent_dir = dir.join("recent");
        for d in [&dir, &intake_dir, &items_dir, &recent_dir, &tmp_dir] {
            fsutil::create_private_dir(d)?;
        }
        for entry in fs::read_dir(&tmp_dir)? {
            fs::remove_file(entry?.path())?;
        }
        // Copies into the intake that a crash cut short (see `spool::commit`).
        for entry in fs::read_dir(&intake_dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".copy-") {
                fs::remove_file(entry.path())?;
            }
        }
        let key_path = keys::intake_key_path(config, spool.data_dir());
        let intake_identity = keys::load_intake_key(&key_path, &dir.join("intake.key"))?;
        let secret = load_or_create_secret(&dir.join("dedupe.key"))?;
        let signing_key = load_signing_key(config, spool.data_dir())?;
        let users = Users::new(spool.data_dir());
        let recovery = recovery::Recovery::new(spool.data_dir());
        let holds = holds::Holds::new(spool.data_dir());
        users.clean_leftovers()?;
        let store = Store::open(
            &dir.join("archive.redb"),
            config.cache_mb as usize * (1 << 20),
        )?;
        let archive = Arc::new(Archive {
            config: config.clone(),
            users,
            store,
            intake_dir,
            items_dir,
            recent_dir,
            intake_key: Arc::new(SymmetricKey::from_identity(&intake_identity, "intake")),
            intake_identity,
            epoch: Mutex::new(Arc::new(Epoch::new())),
            keysets: Mutex::new(summary::Keysets::default()),
            signing_key,
            secret,
            spool,
            user_cache: Mutex::new(None),
            recovery,
            holds,
            recovery_cache: Mutex::new(None),
            filing: Mutex::new(()),
            stop: AtomicBool::new(false),
            auditor: std::sync::OnceLock::new(),
            pack: Mutex::new(None),
            attempts: Mutex::new(None),
        });
        archive.remove_orphans()?;
        archive.chain_existing()?;
        Ok(archive)
    }

    /// Where the archive records what it does on its own (retention runs).
    pub fn set_auditor(&self, auditor: crate::audit::Auditor) {
        let _ = self.auditor.set(auditor);
    }

    /// Turns the intake on and starts the worker thread.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let archive = Arc::downgrade(self);
        self.spool.set_intake(Intake {
            dir: self.intake_dir.clone(),
            recipient: self.intake_key.clone(),
            notify: tx,
            wants_copy: Box::new(move || {
                archive
                    .upgrade()
                    .is_some_and(|a| !a.user_list().is_empty() || a.recovery_key().is_some())
            }),
        });
        let me = self.clone();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || me.work(rx))?;
        Ok(())
    }

    /// How long a new item's intake copy is kept for merging duplicate reports (bifurcated
    /// reports, an NDR'd report sent again); zero keeps none.
    pub(crate) fn dedupe_window(&self) -> Duration {
        Duration::from_secs(self.config.dedupe_hours.saturating_mul(3600))
    }

    /// Asks the worker to stop after the item in progress (unprocessed intake stays queued).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The current sealing epoch, replaced by a fresh one once it is `key_epoch_hours` old.
    pub(crate) fn current_epoch(&self) -> Arc<Epoch> {
        let mut epoch = self.epoch.lock().unwrap();
        let limit = Duration::from_secs_f64(self.config.key_epoch_hours.max(0.0) * 3600.0);
        if epoch.age() >= limit {
            *epoch = Arc::new(Epoch::new());
        }
        epoch.clone()
    }

    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The archive users, re-read whenever the CLI changed them.
    pub fn user_list(&self) -> Arc<Vec<UserRecord>> {
        let generation = self.users.generation();
        let mut cache = self.user_cache.lock().unwrap();
        if let Some((seen, list)) = cache.as_ref() {
            if *seen == generation {
                return list.clone();
            }
        }
        let list = Arc::new(self.users.list().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read archive users");
            Vec::new()
        }));
        *cache = Some((generation, list.clone()));
        list
    }

    /// The public half of the recovery key new items are also sealed to, if one exists
    /// (re-read whenever the CLI changed the users or the recovery keys).
    pub fn recovery_key(&self) -> Option<String> {
        let generation = self.users.generation();
        let mut cache = self.recovery_cache.lock().unwrap();
        if let Some((seen, key)) = cache.as_ref() {
            if *seen == generation {
                return key.clone();
            }
        }
        let key = match self.recovery.current() {
            Ok(key) => key.map(|k| k.public),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the archive's recovery keys");
                None
            }
        };
        *cache = Some((generation, key.clone()));
        key
    }

    pub fn recovery(&self) -> &recovery::Recovery {
        &self.recovery
    }

    pub fn holds(&self) -> &holds::Holds {
        &self.holds
    }

    /// What retention would remove now, and what holds keep.
    pub fn retention_plan(&self) -> Result<retention::RetentionPlan, ArchiveError> {
        Ok(retention::current(self, chrono::Utc::now().timestamp())?.0)
    }

    /// Removes the items the retention rules let go and no hold keeps (with their linked
    /// copies and journal envelopes); returns how many messages went (envelopes not counted).
    pub fn apply_retention(&self) -> Result<u64, ArchiveError> {
        if self.config.retention.is_empty() && self.config.retention_days == 0 {
            return Ok(0);
        }
        let _filing = self.filing.lock().unwrap_or_else(|e| e.into_inner());
        let (plan, items) = retention::current(self, chrono::Utc::now().timestamp())?;
        let old = plan.ids(&items);
        if old.is_empty() {
            return Ok(0);
        }
        let changed = self
            .store
            .remove_items(&old, chrono::Utc::now().timestamp())?;
        let mut packs = BTreeSet::new();
        for id in &old {
            match items.get(id).and_then(|i| i.location) {
                Some(location) => {
                    packs.insert(location.pack);
                }
                None => {
                    let _ = fs::remove_file(self.item_path(*id));
                }
            }
        }
        fsutil::sync_dir(&self.items_dir)?;
        self.compact(&packs)?;
        let envelopes: usize = old
            .iter()
            .filter(|id| items.get(id).is_some_and(|i| i.envelope_of.is_some()))
            .count();
        let messages = (old.len() - envelopes) as u64;
        self.store.apply(Batch {
            counters: vec![("retention_removed", messages)],
            ..Batch::default()
        })?;
        for folder in changed {
            self.spool.notify_change(change_key(&folder));
        }
        tracing::info!(
            items = messages,
            envelopes,
            held = plan.held.len(),
            "archive retention removed items"
        );
        if let Some(auditor) = self.auditor.get() {
            auditor.record(
                crate::audit::Event::new("archive.retention-removed", "server").detail(
                    serde_json::json!({"items": messages, "envelopes": envelopes,
                                       "held": plan.held.len()}),
                ),
            );
        }
        Ok(messages)
    }
}

/// The key that signs the archive chain's checkpoints and the audit log's head, created
/// when missing (the server).
pub fn load_signing_key(
    config: &ArchiveConfig,
    data_dir: &Path,
) -> Result<ed25519_dalek::SigningKey, ArchiveError> {
    keys::load_signing_key(&keys::signing_key_path(config, data_dir))
}

/// That key when it exists and this process may read it (the CLI never creates it).
pub fn read_signing_key(
    config: &ArchiveConfig,
    data_dir: &Path,
) -> Option<ed25519_dalek::SigningKey> {
    let path = keys::signing_key_path(config, data_dir);
    path.is_file()
        .then(|| keys::load_signing_key(&path).ok())
        .flatten()
}

/// The change-notification key of an archive folder.
pub fn change_key(folder: &str) -> String {
    format!("archive:{folder}")
}

/// Gives the worker thread a lower CPU priority (nice 10) than the protocol threads: under
/// load, SMTP answers first and the archive catches up afterwards.
fn lower_priority() {
    // SAFETY: setpriority on the calling thread (Linux: a thread ID is a process ID here);
    // no memory is shared with the call.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if result != 0 {
        tracing::debug!("could not lower the archive worker's priority");
    }
}

fn remove_if_present(path: &Path) -> Result<(), ArchiveError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Commit time (seconds) from an intake file name `<unix>.<9-digit ns><23 hex>.age`, or None
/// for anything else (e.g. `damaged-...`).
fn intake_time(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".age")?;
    let (time, rand) = stem.split_once('.')?;
    (rand.len() == 32 && rand.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| time.parse().ok())
        .flatten()
}

fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    match fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim())
            .map_err(|e| ArchiveError::Damaged(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = crypto::random_hex128() + &crypto::random_hex128();
            fsutil::write_atomic(path, format!("{secret}\n").as_bytes(), 0o600)?;
            Ok(hex::decode(secret).expect("hex"))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
