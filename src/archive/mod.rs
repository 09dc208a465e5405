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
//! The intake key is held by the server (`archive/intake.key`, mode 0600): the archive has to
//! be written without any user's password. Intake files live only until they are processed.

mod file;
mod fingerprint;
mod plan;
pub mod skeleton;
pub mod store;
pub mod users;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::ArchiveConfig;
use crate::crypto::{self, CryptoError, Identity};
use crate::fsutil;
use crate::spool::{Envelope, Intake, MessageMeta, Spool};
use file::{Delta, Pending, Source, COMMIT_EVERY};
use skeleton::Skeleton;
use store::{Batch, Entry, Store, StoreError};
use users::{UserRecord, Users};

/// Folder of messages no user was found for.
pub const UNKNOWN_FOLDER: &str = "unknown";
/// IMAP name of that folder (auditors only).
pub const UNKNOWN_NAME: &str = "Unknown Addresses";
/// How long a new item stays re-sealable for duplicate reports (bifurcated reports, an NDR'd
/// report sent again).
pub(crate) const DEDUPE_WINDOW: Duration = Duration::from_secs(48 * 3600);
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
    pub skipped_unknown: u64,
    pub reports_without_original: u64,
    pub unreadable_dropped: u64,
    pub journal_reports: u64,
    pub ndr_unwrapped: u64,
    pub plain_copies: u64,
    pub retention_removed: u64,
    pub users: std::collections::BTreeMap<String, UserCounts>,
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
    tmp_dir: PathBuf,
    intake_identity: Identity,
    /// Key of the duplicate hashes, so no Message-ID is stored in a guessable form.
    secret: Vec<u8>,
    spool: Arc<Spool>,
    /// The users, with the generation they were read at.
    user_cache: Mutex<Option<(String, Arc<Vec<UserRecord>>)>>,
    stop: AtomicBool,
}

impl Archive {
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
        let intake_identity = load_or_create_key(&dir.join("intake.key"))?;
        let secret = load_or_create_secret(&dir.join("dedupe.key"))?;
        let users = Users::new(spool.data_dir());
        users.clean_leftovers()?;
        let store = Store::open(&dir.join("archive.redb"))?;
        let archive = Arc::new(Archive {
            config: config.clone(),
            users,
            store,
            intake_dir,
            items_dir,
            recent_dir,
            tmp_dir,
            intake_identity,
            secret,
            spool,
            user_cache: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        archive.remove_orphans()?;
        Ok(archive)
    }

    /// Turns the intake on and starts the worker thread.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.spool.set_intake(Intake {
            dir: self.intake_dir.clone(),
            recipient: self.intake_identity.to_public(),
            notify: tx,
        });
        let me = self.clone();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || me.work(rx))?;
        Ok(())
    }

    /// Asks the worker to stop after the item in progress (unprocessed intake stays queued).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
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

    fn work(self: Arc<Self>, rx: mpsc::Receiver<()>) {
        lower_priority();
        let mut last_retention: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(Instant::now());
                if let Err(e) = self.apply_retention() {
                    tracing::error!(error = %e, "archive retention failed");
                }
                if let Err(e) = self.sweep_recent() {
                    tracing::error!(error = %e, "cannot clean the duplicate-merge copies");
                }
            }
            match self.pending_files() {
                Ok(files) => {
                    let mut pending = Pending::default();
                    for name in files {
                        if self.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        self.process_logged(&name, &mut pending);
                        if pending.intake.len() >= COMMIT_EVERY {
                            self.commit_logged(&mut pending);
                        }
                    }
                    self.commit_logged(&mut pending);
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list the archive intake"),
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while rx.try_recv().is_ok() {}
        }
    }

    /// Intake files, oldest first (names are the commit time in nanoseconds).
    fn pending_files(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<(i64, String)> = Vec::new();
        for entry in fs::read_dir(&self.intake_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(t) = intake_time(&name) {
                names.push((t, name));
            }
        }
        names.sort();
        Ok(names.into_iter().map(|(_, n)| n).collect())
    }

    fn process_logged(&self, name: &str, pending: &mut Pending) {
        let started = Instant::now();
        // A bug must not stop the worker: a file that makes it panic is set aside.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(name, pending)))
                .unwrap_or_else(|_| Err(ArchiveError::Damaged("archiving it panicked".into())));
        match result {
            Ok(()) => {
                tracing::debug!(
                    intake = name,
                    ms = started.elapsed().as_millis() as u64,
                    "archived"
                )
            }
            Err(e) => {
                // Left in place: retried at the next wake-up (a damaged file is set aside).
                tracing::error!(intake = name, error = %e, "archiving failed");
                if matches!(e, ArchiveError::Damaged(_) | ArchiveError::Crypto(_)) {
                    let path = self.intake_dir.join(name);
                    let _ = fs::rename(&path, self.intake_dir.join(format!("damaged-{name}")));
                }
            }
        }
    }

    /// Archives one intake file into `pending` (committed by [`Archive::commit`]).
    fn process(&self, name: &str, pending: &mut Pending) -> Result<(), ArchiveError> {
        let path = self.intake_dir.join(name);
        if self.store.is_done(name)? {
            return remove_if_present(&path);
        }
        let (envelope, envelope_len, skeleton) = self.read_intake(&path)?;
        let plan = self.plan(&envelope, &skeleton);
        if pending.next_item == 0 {
            pending.next_item = self.store.next_item()?;
        }
        let source = Source {
            archive: self,
            intake: &path,
            envelope_len,
            skeleton: Some(&skeleton),
        };
        let mut delta = Delta {
            next_item: pending.next_item,
            counters: plan.counters.clone(),
            ..Delta::default()
        };
        if let Err(e) = self.file_originals(&source, &envelope, plan, pending, &mut delta) {
            for id in delta.published {
                let _ = fs::remove_file(self.item_path(id));
            }
            return Err(e);
        }
        pending.merge(delta, name.to_owned(), path);
        Ok(())
    }

    fn commit_logged(&self, pending: &mut Pending) {
        if let Err(e) = self.commit(pending) {
            // Nothing is lost: the intake files stay and are archived again.
            tracing::error!(error = %e, "archive commit failed; will retry");
            for id in pending.items.keys() {
                if !pending.existing.contains(id) {
                    let _ = fs::remove_file(self.item_path(*id));
                }
            }
        }
        *pending = Pending::default();
    }

    /// Makes the pending work durable (item files, then one redb commit), tells IMAP
    /// sessions, and only then deletes the intake files.
    fn commit(&self, pending: &mut Pending) -> Result<(), ArchiveError> {
        if pending.intake.is_empty() {
            return Ok(());
        }
        if !pending.items.is_empty() {
            fsutil::sync_dir(&self.items_dir)?;
        }
        let batch = Batch {
            items: pending.items.drain().collect(),
            entries: std::mem::take(&mut pending.entries),
            dedupe: pending.dedupe.drain().collect(),
            counters: std::mem::take(&mut pending.counters),
            done: std::mem::take(&mut pending.done),
        };
        self.store.apply(batch)?;
        for folder in std::mem::take(&mut pending.changed) {
            self.spool.notify_change(change_key(&folder));
        }
        // A file that gave a new item is kept a while (sealed to the server key, as it was)
        // so duplicates can be merged; a lost rename only costs that.
        for (path, keep) in std::mem::take(&mut pending.intake) {
            let kept = keep
                && path
                    .file_name()
                    .is_some_and(|name| fs::rename(&path, self.recent_dir.join(name)).is_ok());
            if !kept {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// Decrypts an intake file once: its envelope and the message's skeleton.
    fn read_intake(&self, path: &Path) -> Result<(Envelope, u64, Skeleton), ArchiveError> {
        let mut reader = self.open_intake(path)?;
        let mut line = Vec::new();
        (&mut reader).take(1 << 20).read_until(b'\n', &mut line)?;
        let json = line
            .strip_prefix(b"JG1 ")
            .ok_or_else(|| ArchiveError::Damaged("no envelope line".into()))?;
        let envelope: Envelope = serde_json::from_slice(json)
            .map_err(|e| ArchiveError::Damaged(format!("envelope: {e}")))?;
        let skeleton = Skeleton::build(reader)?;
        Ok((envelope, line.len() as u64, skeleton))
    }

    fn open_intake(&self, path: &Path) -> Result<impl BufRead + use<>, ArchiveError> {
        let file = File::open(path)?;
        let reader = crypto::open(
            &self.intake_identity,
            BufReader::with_capacity(64 << 10, file),
        )?;
        Ok(BufReader::with_capacity(64 << 10, reader))
    }

    /// Item files with no record (a crash between writing and recording) are removed.
    fn remove_orphans(&self) -> Result<(), ArchiveError> {
        let known: BTreeSet<u64> = self.store.item_ids()?.into_iter().collect();
        let mut removed = 0;
        for entry in fs::read_dir(&self.items_dir)? {
            let path = entry?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".age"))
                .and_then(|n| n.parse::<u64>().ok());
            if id.is_none_or(|id| !known.contains(&id)) {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsutil::sync_dir(&self.items_dir)?;
            tracing::info!(files = removed, "removed unrecorded archive files");
        }
        let intake = self.intake_dir.clone();
        self.store.forget_done(|name| intake.join(name).exists())?;
        Ok(())
    }

    /// Removes items older than `retention_days` (0 keeps everything).
    pub fn apply_retention(&self) -> Result<u64, ArchiveError> {
        if self.config.retention_days == 0 {
            return Ok(0);
        }
        let cutoff =
            chrono::Utc::now().timestamp() - i64::from(self.config.retention_days) * 86_400;
        let mut old = Vec::new();
        for id in self.store.item_ids()? {
            if let Some(item) = self.store.item(id)? {
                if item.received < cutoff {
                    old.push(id);
                }
            }
        }
        if old.is_empty() {
            return Ok(0);
        }
        let changed = self.store.remove_items(&old)?;
        for id in &old {
            let _ = fs::remove_file(self.item_path(*id));
        }
        fsutil::sync_dir(&self.items_dir)?;
        self.store.apply(Batch {
            counters: vec![("retention_removed", old.len() as u64)],
            ..Batch::default()
        })?;
        for folder in changed {
            self.spool.notify_change(change_key(&folder));
        }
        tracing::info!(
            items = old.len(),
            days = self.config.retention_days,
            "archive retention removed old items"
        );
        Ok(old.len() as u64)
    }

    // ---- reading, for IMAP ----

    /// The folders a user may see.
    pub fn folders_for(&self, user: &UserRecord) -> Vec<FolderView> {
        let own = |prefix: &str, u: &UserRecord| {
            [
                FolderView {
                    name: format!("{prefix}INBOX"),
                    key: format!("{}/INBOX", u.id),
                    special_use: None,
                },
                FolderView {
                    name: format!("{prefix}Sent"),
                    key: format!("{}/Sent", u.id),
                    special_use: Some("\\Sent"),
                },
            ]
        };
        let mut out: Vec<FolderView> = own("", user).into_iter().collect();
        if user.auditor {
            for u in self.user_list().iter() {
                out.extend(
                    own(&format!("Users/{}/", u.login), u)
                        .into_iter()
                        .map(|mut f| {
                            f.special_use = None;
                            f
                        }),
                );
            }
            out.push(FolderView {
                name: UNKNOWN_NAME.to_owned(),
                key: UNKNOWN_FOLDER.to_owned(),
                special_use: None,
            });
        }
        out
    }

    /// The messages of a folder that the holder of `public_key` can read, as IMAP metadata
    /// (an auditor added later, or a user after a password reset, cannot open older items).
    pub fn list(&self, folder: &str, public_key: &str) -> Result<Vec<MessageMeta>, ArchiveError> {
        let readable = self.store.readable(public_key)?;
        Ok(self
            .store
            .entries(folder)?
            .into_iter()
            .filter(|e| readable.contains(&e.item))
            .map(|e: Entry| MessageMeta {
                uid: e.uid,
                size: e.size,
                received: e.received,
                envelope_len: 0,
                flags: crate::spool::Flags::default(),
            })
            .collect())
    }

    /// (UIDVALIDITY, UIDNEXT) of a folder.
    pub fn numbers(&self, folder: &str) -> Result<(u32, u32), ArchiveError> {
        Ok(self.store.folder(folder)?)
    }

    /// Opens an archived message for reading. Blocking.
    pub fn open_message(
        &self,
        folder: &str,
        uid: u32,
        identity: &Identity,
    ) -> Result<impl Read + Send + use<>, ArchiveError> {
        let entries = self.store.entries(folder)?;
        let entry = entries
            .iter()
            .find(|e| e.uid == uid)
            .ok_or(ArchiveError::NoSuchMessage)?;
        let file = File::open(self.item_path(entry.item)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ArchiveError::NoSuchMessage,
            _ => e.into(),
        })?;
        let reader = crypto::open(identity, BufReader::with_capacity(64 << 10, file))?;
        Ok(reader.take(entry.size))
    }

    /// Counters and per-user counts.
    pub fn stats(&self) -> Result<Stats, ArchiveError> {
        collect_stats(&self.store, &self.users, &self.intake_dir)
    }

    /// Verifies the archive without any user key: every recorded item has its file with a
    /// well-formed age header, and no intake file was set aside as damaged.
    pub fn check(&self) -> Result<Vec<String>, ArchiveError> {
        check_items(&self.store, &self.items_dir, &self.intake_dir)
    }

    /// [`Archive::check`] without a running server.
    pub fn check_offline(data_dir: &Path) -> Result<Vec<String>, ArchiveError> {
        let dir = data_dir.join("archive");
        if !dir.join("archive.redb").exists() {
            return Ok(Vec::new());
        }
        let store = Store::open(&dir.join("archive.redb"))?;
        check_items(&store, &dir.join("items"), &dir.join("intake"))
    }

    /// `archive stats` without a running server.
    pub fn stats_offline(data_dir: &Path) -> Result<Stats, ArchiveError> {
        let dir = data_dir.join("archive");
        let store = Store::open(&dir.join("archive.redb"))?;
        collect_stats(&store, &Users::new(data_dir), &dir.join("intake"))
    }
}

/// Counters, the intake backlog, and per-user folder sizes.
fn collect_stats(store: &Store, users: &Users, intake: &Path) -> Result<Stats, ArchiveError> {
    let counters: HashMap<String, u64> = store.counters()?.into_iter().collect();
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let pending = match fs::read_dir(intake) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| intake_time(&e.file_name().to_string_lossy()).is_some())
            .count() as u64,
        Err(_) => 0,
    };
    let mut stats = Stats {
        items: get("items"),
        pending,
        unknown: get("unknown"),
        duplicates_merged: get("duplicates_merged"),
        untrusted_reports: get("untrusted_reports"),
        skipped_unknown: get("skipped_unknown"),
        reports_without_original: get("reports_without_original"),
        unreadable_dropped: get("unreadable_dropped"),
        journal_reports: get("journal_reports"),
        ndr_unwrapped: get("ndr_unwrapped"),
        plain_copies: get("plain_copies"),
        retention_removed: get("retention_removed"),
        users: Default::default(),
    };
    for u in users.list()? {
        let count = |folder: &str| -> Result<u64, ArchiveError> {
            Ok(store.entries(&format!("{}/{folder}", u.id))?.len() as u64)
        };
        let counts = UserCounts {
            inbox: count("INBOX")?,
            sent: count("Sent")?,
        };
        stats.users.insert(u.login.clone(), counts);
    }
    Ok(stats)
}

fn check_items(store: &Store, items: &Path, intake: &Path) -> Result<Vec<String>, ArchiveError> {
    let mut problems = Vec::new();
    for id in store.item_ids()? {
        let path = items.join(format!("{id}.age"));
        let header = File::open(&path).map_err(CryptoError::from).and_then(|f| {
            let mut head = Vec::new();
            f.take(4096).read_to_end(&mut head)?;
            crypto::check_header(&head[..])
        });
        if let Err(e) = header {
            problems.push(format!("archive item {id}: {e}"));
        }
    }
    if let Ok(entries) = fs::read_dir(intake) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("damaged-") {
                problems.push(format!("archive intake file set aside as damaged: {name}"));
            }
        }
    }
    Ok(problems)
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

fn load_or_create_key(path: &Path) -> Result<Identity, ArchiveError> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<Identity>()
            .map_err(|e| ArchiveError::Damaged(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let identity = Identity::generate();
            let text = format!("{}\n", identity.to_string().expose_secret());
            fsutil::write_atomic(path, text.as_bytes(), 0o600)?;
            Ok(identity)
        }
        Err(e) => Err(e.into()),
    }
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
mod tests {
    use super::*;

    /// A spool and an archive in a fresh directory, the intake on (no worker thread: tests
    /// call [`archive_all`]), and a gateway mailbox to deliver to.
    fn setup(
        config: ArchiveConfig,
    ) -> (
        PathBuf,
        Arc<Spool>,
        Arc<Archive>,
        crate::mailbox::MailboxRecord,
    ) {
        let dir = std::env::temp_dir().join(format!("jg-archive-{}", crypto::random_hex128()));
        let spool = Spool::open(&dir).unwrap();
        let archive = Archive::open(&config, spool.clone()).unwrap();
        let (tx, _rx) = mpsc::channel();
        spool.set_intake(Intake {
            dir: archive.intake_dir.clone(),
            recipient: archive.intake_identity.to_public(),
            notify: tx,
        });
        let (mbx, _) = spool.mailboxes().create("m", "").unwrap();
        (dir, spool, archive, mbx)
    }

    /// Archives every intake file in one commit.
    fn archive_all(archive: &Archive) {
        let mut pending = Pending::default();
        for name in archive.pending_files().unwrap() {
            archive.process(&name, &mut pending).unwrap();
        }
        archive.commit(&mut pending).unwrap();
        assert!(archive.pending_files().unwrap().is_empty());
    }

    /// Delivers `raw` from 127.0.0.1 to `mbx`, arrived at `received`.
    async fn deliver(
        spool: &Arc<Spool>,
        mbx: &crate::mailbox::MailboxRecord,
        raw: &[u8],
        received: i64,
    ) {
        let target = crate::spool::Target {
            mailbox: mbx.id.clone(),
            recipient: crypto::parse_recipient(&mbx.public_key).unwrap(),
            envelope: Envelope {
                id: "t".into(),
                mail_from: String::new(),
                rcpt_to: vec![format!("{}@gw.test", mbx.id)],
                client: "127.0.0.1:1".into(),
                helo: "h".into(),
                tls: None,
                received,
            },
        };
        let mut d = spool.begin(vec![target], true);
        d.write(raw);
        d.commit().await.unwrap();
    }

    fn bifurcated(recipient: &str, hub: &str) -> Vec<u8> {
        let original = format!("Received: from {hub}\r\nX-MS-Exchange-Organization-Id: {hub}\r\nFrom: alice@x.example\r\nSubject: one message\r\nMessage-ID: <m1@x.example>\r\n\r\nbody\r\n");
        format!("X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSender: alice@x.example\r\nMessage-Id: <m1@x.example>\r\nRecipient: {recipient}\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--B--\r\n").into_bytes()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bifurcated_reports_are_stored_once_within_and_across_commits() {
        let (dir, spool, archive, mbx) = setup(ArchiveConfig {
            journal_sources: vec!["127.0.0.0/8".parse().unwrap()],
            ..ArchiveConfig::default()
        });
        let mut people = Vec::new();
        for name in ["bob", "carol", "dave"] {
            people.push(
                archive
                    .users()
                    .add(&format!("{name}@x.example"), &[], "", false)
                    .unwrap(),
            );
        }
        // bob and carol in one commit, dave in a later one; each copy passed different hubs.
        let now = chrono::Utc::now().timestamp();
        deliver(&spool, &mbx, &bifurcated("bob@x.example", "hub1"), now).await;
        deliver(&spool, &mbx, &bifurcated("carol@x.example", "hub2"), now).await;
        archive_all(&archive);
        deliver(&spool, &mbx, &bifurcated("dave@x.example", "hub3"), now).await;
        archive_all(&archive);
        let stats = archive.stats().unwrap();
        assert_eq!((stats.items, stats.duplicates_merged), (1, 2));
        assert_eq!(fs::read_dir(&archive.items_dir).unwrap().count(), 1);
        let mut seen = Vec::new();
        for ((user, password), name) in people.iter().zip(["bob", "carol", "dave"]) {
            let inbox = format!("{}/INBOX", user.id);
            let listed = archive.list(&inbox, &user.public_key).unwrap();
            assert_eq!(listed.len(), 1, "{name}");
            let identity = crypto::unwrap_identity(
                &archive.users().wrapped_identity(&user.id).unwrap(),
                password,
            )
            .unwrap();
            let mut raw = String::new();
            archive
                .open_message(&inbox, listed[0].uid, &identity)
                .unwrap()
                .read_to_string(&mut raw)
                .unwrap();
            seen.push(raw);
        }
        // Intake files are archived in order of arrival: the first copy is the one kept.
        assert!(seen[0].contains("hub1"), "{}", seen[0]);
        assert!(seen.iter().all(|r| *r == seen[0]));
        spool.shutdown();
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_copies_are_filed_and_retention_removes_old_ones() {
        let (dir, spool, archive, mbx) = setup(ArchiveConfig {
            retention_days: 1,
            envelope_headers: vec![crate::config::EnvelopeHeader {
                network: "127.0.0.0/8".parse().unwrap(),
                header: "X-Envelope-To".into(),
            }],
            ..ArchiveConfig::default()
        });
        let (bob, password) = archive
            .users()
            .add("bob@x.example", &[], "", false)
            .unwrap();
        let now = chrono::Utc::now().timestamp();
        for (received, subject) in [(now - 3 * 86_400, "old"), (now, "new")] {
            let raw =
                format!("X-Envelope-To: <BOB@x.example>\r\nSubject: {subject}\r\n\r\nbody\r\n");
            deliver(&spool, &mbx, raw.as_bytes(), received).await;
        }
        archive_all(&archive);
        let inbox = format!("{}/INBOX", bob.id);
        let listed = archive.list(&inbox, &bob.public_key).unwrap();
        assert_eq!(listed.len(), 2);
        let identity = crypto::unwrap_identity(
            &archive.users().wrapped_identity(&bob.id).unwrap(),
            &password,
        )
        .unwrap();
        let mut first = String::new();
        archive
            .open_message(&inbox, listed[0].uid, &identity)
            .unwrap()
            .read_to_string(&mut first)
            .unwrap();
        assert!(first.ends_with("Subject: old\r\n\r\nbody\r\n"), "{first}");
        assert_eq!(archive.apply_retention().unwrap(), 1);
        let left = archive.list(&inbox, &bob.public_key).unwrap();
        assert_eq!(
            left.iter().map(|m| m.uid).collect::<Vec<_>>(),
            vec![listed[1].uid]
        );
        assert_eq!(fs::read_dir(&archive.items_dir).unwrap().count(), 1);
        assert_eq!(archive.stats().unwrap().retention_removed, 1);
        spool.shutdown();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn intake_names() {
        assert_eq!(
            intake_time("1700000000.0123456789abcdef0123456789abcdef.age"),
            Some(1_700_000_000)
        );
        assert_eq!(
            intake_time("damaged-1.0123456789abcdef0123456789abcdef.age"),
            None
        );
        assert_eq!(intake_time("1.x.age"), None);
    }
}
