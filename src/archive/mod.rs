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

pub mod skeleton;
pub mod store;
pub mod users;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{ArchiveConfig, UnknownAddresses};
use crate::crypto::{self, CryptoError, Identity, Recipient};
use crate::fsutil;
use crate::imap::mime;
use crate::journal::{self, Classification, Report};
use crate::spool::{Envelope, Intake, MessageMeta, Spool};
use skeleton::Skeleton;
use store::{Batch, Entry, Item, Store, StoreError};
use users::{UserRecord, Users};

/// Folder of messages no user was found for.
pub const UNKNOWN_FOLDER: &str = "unknown";
/// IMAP name of that folder (auditors only).
pub const UNKNOWN_NAME: &str = "Unknown Addresses";
/// How long a new item stays re-sealable for duplicate reports (bifurcated reports, an NDR'd
/// report sent again).
const DEDUPE_WINDOW: Duration = Duration::from_secs(48 * 3600);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Encoded originals (base64 message/rfc822 parts) up to this size are decoded.
const DECODE_MAX: u64 = 64 << 20;
/// A duplicate key is computed over the original's header up to this size.
const HASH_HEADER_MAX: usize = 1 << 20;

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

/// Intake files archived per durable commit (at most; fewer when the queue runs dry).
const COMMIT_EVERY: usize = 64;

/// What archiving one intake file adds.
#[derive(Default)]
struct Delta {
    next_item: u64,
    items: Vec<(u64, Item)>,
    entries: Vec<(String, u64, i64, u64)>,
    dedupe: Vec<(Vec<u8>, Vec<u64>)>,
    counters: Vec<(&'static str, u64)>,
    /// New item files already in `items/` (removed again if the file fails).
    published: Vec<u64>,
}

impl Delta {
    fn allocate(&mut self) -> u64 {
        self.next_item += 1;
        self.next_item - 1
    }
}

/// Archived intake files not yet committed: several share one durable commit. Lookups of
/// items and duplicate keys see this before the store.
#[derive(Default)]
struct Pending {
    next_item: u64,
    items: HashMap<u64, Item>,
    /// Items that were in the store before this commit (their files must not be removed).
    existing: BTreeSet<u64>,
    entries: Vec<(String, u64, i64, u64)>,
    /// Folders each item is newly filed in by this commit.
    folders: HashMap<u64, BTreeSet<String>>,
    dedupe: HashMap<Vec<u8>, Vec<u64>>,
    counters: Vec<(&'static str, u64)>,
    done: Vec<String>,
    intake: Vec<PathBuf>,
    changed: BTreeSet<String>,
}

impl Pending {
    fn merge(&mut self, delta: Delta, name: String, path: PathBuf) {
        let fresh: BTreeSet<u64> = delta.published.iter().copied().collect();
        for (id, item) in delta.items {
            if !fresh.contains(&id) && !self.items.contains_key(&id) {
                self.existing.insert(id);
            }
            self.items.insert(id, item);
        }
        for (folder, item, received, size) in delta.entries {
            self.folders.entry(item).or_default().insert(folder.clone());
            self.changed.insert(folder.clone());
            self.entries.push((folder, item, received, size));
        }
        self.dedupe.extend(delta.dedupe);
        self.counters.extend(delta.counters);
        self.next_item = self.next_item.max(delta.next_item);
        self.done.push(name);
        self.intake.push(path);
    }
}

/// Where an original will be filed.
struct Plan {
    /// Byte ranges (in the message) of the originals to store, preferred one first.
    originals: Vec<(Range<u64>, bool)>,
    message_id: Option<String>,
    folders: BTreeSet<String>,
    users: Vec<UserRecord>,
    unknown: bool,
    counters: Vec<(&'static str, u64)>,
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

    /// Intake files, oldest first (names start with the arrival time).
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
        match self.process(name, pending) {
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
            skeleton: &skeleton,
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
        for path in std::mem::take(&mut pending.intake) {
            remove_if_present(&path)?;
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

    /// Decides what to file where.
    fn plan(&self, envelope: &Envelope, skeleton: &Skeleton) -> Plan {
        let client = envelope
            .client
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| envelope.client.parse::<IpAddr>());
        let trusted = client
            .as_ref()
            .is_ok_and(|ip| self.config.journal_sources.iter().any(|n| n.contains(ip)));
        let mut counters = Vec::new();
        let classification = journal::classify(&skeleton.bytes);
        let report = match classification {
            Classification::Journal(r) | Classification::NdrJournal(r) if !trusted => {
                tracing::warn!(
                    client = %envelope.client, queue_id = %envelope.id,
                    stray_lines = r.stray_lines,
                    "journal report from a source not in archive.journal_sources: archived as a plain copy"
                );
                counters.push(("untrusted_reports", 1));
                None
            }
            Classification::Journal(r) => {
                counters.push(("journal_reports", 1));
                Some(r)
            }
            Classification::NdrJournal(r) => {
                counters.push(("journal_reports", 1));
                counters.push(("ndr_unwrapped", 1));
                Some(r)
            }
            Classification::Plain => None,
        };
        let users = self.user_list();
        let mut plan = match report {
            Some(report) => self.plan_report(&report, skeleton, &users, &mut counters),
            None => {
                counters.push(("plain_copies", 1));
                self.plan_plain(envelope, client.ok(), skeleton, &users)
            }
        };
        if plan.folders.is_empty() && !plan.originals.is_empty() {
            match self.config.unknown_addresses {
                UnknownAddresses::CatchAll => {
                    plan.unknown = true;
                    plan.folders.insert(UNKNOWN_FOLDER.to_owned());
                }
                UnknownAddresses::Skip => {
                    tracing::info!(queue_id = %envelope.id, "no archive user on the envelope: not archived (unknown_addresses = \"skip\")");
                    counters.push(("skipped_unknown", 1));
                    plan.originals.clear();
                }
            }
        }
        plan.counters = counters;
        plan
    }

    fn plan_report(
        &self,
        report: &Report,
        skeleton: &Skeleton,
        users: &[UserRecord],
        counters: &mut Vec<(&'static str, u64)>,
    ) -> Plan {
        let directory = Directory::new(users);
        let find = |a: &journal::Address| match a {
            journal::Address::Smtp(s) => directory.find(s),
            journal::Address::Unresolvable(_) => None,
        };
        let mut folders = BTreeSet::new();
        let mut involved: Vec<UserRecord> = Vec::new();
        let mut add = |user: &UserRecord, folder: &str| {
            folders.insert(format!("{}/{folder}", user.id));
            if !involved.iter().any(|u| u.id == user.id) {
                involved.push(user.clone());
            }
        };
        for a in report.sender.iter().chain(report.on_behalf_of.iter()) {
            if let Some(u) = find(a) {
                add(u, "Sent");
            }
        }
        for r in &report.recipients {
            for a in std::iter::once(&r.address).chain(r.forwarded.iter()) {
                if let Some(u) = find(a) {
                    add(u, "INBOX");
                }
            }
        }
        let mut originals: Vec<(Range<u64>, bool)> = report
            .originals
            .iter()
            .map(|o| {
                let base64 = o
                    .encoding
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case("base64"));
                (skeleton.range(&o.range), base64)
            })
            .collect();
        // The decrypted copy of a rights-protected message is preferred (listed first).
        if originals.len() > 1 {
            let protected = |i: usize| {
                let r = &report.originals[i].range;
                let head = &skeleton.bytes
                    [r.start..r.end.min(r.start + (256 << 10)).min(skeleton.bytes.len())];
                contains_ci(head, b"rpmsg")
            };
            if let Some(clear) = (0..originals.len()).find(|i| !protected(*i)) {
                let preferred = originals.remove(clear);
                originals.insert(0, preferred);
            }
        }
        let message_id = report.message_id.clone().or_else(|| {
            report.originals.first().and_then(|o| {
                let r = o.range.start..o.range.end.min(skeleton.bytes.len());
                header_message_id(&skeleton.bytes[r])
            })
        });
        let mut plan = Plan {
            originals,
            message_id,
            folders,
            users: involved,
            unknown: false,
            counters: Vec::new(),
        };
        if plan.originals.is_empty() {
            // Nothing to file for the users; the report itself goes to the catch-all.
            tracing::warn!("journal report without an attached original: filed as an incident");
            counters.push(("reports_without_original", 1));
            plan.originals = vec![(0..skeleton.total, false)];
            plan.folders.clear();
            plan.users.clear();
            plan.message_id = None;
        }
        plan
    }

    /// A plain copy: recipients from the SMTP envelope, plus the header configured for the
    /// client's network.
    fn plan_plain(
        &self,
        envelope: &Envelope,
        client: Option<IpAddr>,
        skeleton: &Skeleton,
        users: &[UserRecord],
    ) -> Plan {
        let mut addresses: Vec<String> = envelope.rcpt_to.clone();
        let header = &skeleton.bytes[..mime::header_end(&skeleton.bytes)];
        for rule in &self.config.envelope_headers {
            if client.is_some_and(|ip| rule.network.contains(&ip)) {
                for value in mime::raw_fields(header, &rule.header) {
                    let value = String::from_utf8_lossy(&value).into_owned();
                    addresses.extend(value.split([',', ' ', '\t']).map(|a| {
                        a.trim()
                            .trim_start_matches('<')
                            .trim_end_matches('>')
                            .to_owned()
                    }));
                }
            }
        }
        let directory = Directory::new(users);
        let mut folders = BTreeSet::new();
        let mut involved: Vec<UserRecord> = Vec::new();
        for a in addresses.iter().filter(|a| !a.is_empty()) {
            if let Some(u) = directory.find(a) {
                folders.insert(format!("{}/INBOX", u.id));
                if !involved.iter().any(|x| x.id == u.id) {
                    involved.push(u.clone());
                }
            }
        }
        Plan {
            originals: vec![(0..skeleton.total, false)],
            message_id: header_message_id(&skeleton.bytes),
            folders,
            users: involved,
            unknown: false,
            counters: Vec::new(),
        }
    }

    /// Writes the originals as sealed items and records in `delta` where they are filed.
    /// `pending` holds what earlier files of this commit did (not yet in the store).
    fn file_originals(
        &self,
        source: &Source<'_>,
        envelope: &Envelope,
        plan: Plan,
        pending: &Pending,
        delta: &mut Delta,
    ) -> Result<(), ArchiveError> {
        let Some((first, first_b64)) = plan.originals.first().cloned() else {
            return Ok(());
        };
        let users = self.user_list();
        let mut keys: Vec<String> = plan.users.iter().map(|u| u.public_key.clone()).collect();
        for auditor in users.iter().filter(|u| u.auditor) {
            if !keys.contains(&auditor.public_key) {
                keys.push(auditor.public_key.clone());
            }
        }
        if keys.is_empty() {
            tracing::warn!(queue_id = %envelope.id, "no user or auditor to seal the archive copy to: not archived");
            delta.counters.push(("unreadable_dropped", 1));
            return Ok(());
        }
        let written = self.write_item(source, first.clone(), first_b64, &keys)?;
        let dedupe = self.dedupe_key(plan.message_id.as_deref(), &written.normalized);
        let existing = match pending.dedupe.get(&dedupe) {
            Some(list) => list.clone(),
            None => self.store.duplicates(&dedupe)?,
        };
        let received = envelope.received;
        if existing.is_empty() {
            let id = delta.allocate();
            self.publish(&written.tmp, id, delta)?;
            self.keep_recent(source, first.clone(), first_b64, id);
            let mut item = Item {
                received,
                size: written.size,
                exact: hex::encode(&written.exact),
                dedupe: hex::encode(&dedupe),
                keys: keys.clone(),
                entries: Vec::new(),
                linked: Vec::new(),
            };
            // Further originals (the protected copy next to a decrypted one) are kept, linked.
            for (range, b64) in plan.originals.iter().skip(1).cloned() {
                let extra = self.write_item(source, range, b64, &keys)?;
                let extra_id = delta.allocate();
                self.publish(&extra.tmp, extra_id, delta)?;
                item.linked.push(extra_id);
                delta.items.push((
                    extra_id,
                    Item {
                        received,
                        size: extra.size,
                        exact: hex::encode(&extra.exact),
                        dedupe: String::new(),
                        keys: keys.clone(),
                        entries: Vec::new(),
                        linked: Vec::new(),
                    },
                ));
            }
            delta.items.push((id, item));
            for folder in &plan.folders {
                delta
                    .entries
                    .push((folder.clone(), id, received, written.size));
            }
            delta.dedupe.push((dedupe, vec![id]));
            delta.counters.push(("items", 1));
            if plan.unknown {
                delta.counters.push(("unknown", 1));
            }
            return Ok(());
        }
        // A duplicate: file it only in the folders that do not show it yet.
        delta.counters.push(("duplicates_merged", 1));
        let mut shown: BTreeSet<String> = BTreeSet::new();
        let mut records = Vec::new();
        for id in &existing {
            let item = match pending.items.get(id) {
                Some(item) => Some(item.clone()),
                None => self.store.item(*id)?,
            };
            if let Some(item) = item {
                shown.extend(item.entries.iter().map(|(f, _)| f.clone()));
                if let Some(new) = pending.folders.get(id) {
                    shown.extend(new.iter().cloned());
                }
                records.push((*id, item));
            }
        }
        let new_folders: Vec<String> = plan.folders.difference(&shown).cloned().collect();
        if new_folders.is_empty() {
            let _ = fs::remove_file(&written.tmp);
            return Ok(());
        }
        let exact = hex::encode(&written.exact);
        let union = |item: &Item| {
            let mut all = item.keys.clone();
            for k in &keys {
                if !all.contains(k) {
                    all.push(k.clone());
                }
            }
            all
        };
        // Within the window the first copy is re-sealed to everyone: stored once.
        if let Some((id, item)) = records.first() {
            let all = union(item);
            if self.reseal_from_recent(*id, &all)? {
                let _ = fs::remove_file(&written.tmp);
                let mut updated = item.clone();
                updated.keys = all;
                delta.items.push((*id, updated));
                for folder in new_folders {
                    delta.entries.push((folder, *id, received, item.size));
                }
                return Ok(());
            }
        }
        let (target, size) = match records.iter().find(|(_, item)| item.exact == exact) {
            Some((id, item)) => {
                // Same bytes: one file, now sealed to the new users as well.
                let _ = fs::remove_file(&written.tmp);
                let all = union(item);
                let resealed = self.write_item(source, first, first_b64, &all)?;
                fs::rename(&resealed.tmp, self.item_path(*id))?;
                let mut updated = item.clone();
                updated.keys = all;
                delta.items.push((*id, updated));
                (*id, item.size)
            }
            None => {
                let id = delta.allocate();
                self.publish(&written.tmp, id, delta)?;
                delta.items.push((
                    id,
                    Item {
                        received,
                        size: written.size,
                        exact,
                        dedupe: hex::encode(&dedupe),
                        keys,
                        entries: Vec::new(),
                        linked: Vec::new(),
                    },
                ));
                let mut list = existing.clone();
                list.push(id);
                delta.dedupe.push((dedupe, list));
                (id, written.size)
            }
        };
        for folder in new_folders {
            delta.entries.push((folder, target, received, size));
        }
        Ok(())
    }

    /// Moves a new item file into place (durable at the next commit's folder sync).
    fn publish(&self, tmp: &Path, id: u64, delta: &mut Delta) -> io::Result<()> {
        fs::rename(tmp, self.item_path(id))?;
        delta.published.push(id);
        Ok(())
    }

    fn item_path(&self, id: u64) -> PathBuf {
        self.items_dir.join(format!("{id}.age"))
    }

    /// Seals one original to `keys` in a durable temp file, hashing it on the way.
    fn write_item(
        &self,
        source: &Source<'_>,
        range: Range<u64>,
        base64: bool,
        keys: &[String],
    ) -> Result<Written, ArchiveError> {
        self.write_sealed(keys, true, |sink| source.copy_original(range, base64, sink))
    }

    /// Seals what `fill` writes to `keys` in a temp file (fdatasync'd when `durable`),
    /// hashing it on the way.
    fn write_sealed(
        &self,
        keys: &[String],
        durable: bool,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), ArchiveError>,
    ) -> Result<Written, ArchiveError> {
        let recipients: Vec<Recipient> = keys
            .iter()
            .map(|k| crypto::parse_recipient(k))
            .collect::<Result<_, _>>()?;
        let tmp = self
            .tmp_dir
            .join(format!("{}.tmp", crypto::random_hex128()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut sink = HashingWriter {
            inner: crypto::seal_to_all(&recipients, BufWriter::with_capacity(64 << 10, file))?,
            exact: Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length"),
            normalized: Normalizer::default(),
            size: 0,
        };
        let finished = fill(&mut sink).and_then(|()| {
            let buffered = sink.inner.finish()?;
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            if durable {
                file.sync_data()?;
            }
            Ok(())
        });
        if let Err(e) = finished {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Written {
            tmp,
            size: sink.size,
            exact: sink.exact.finalize().into_bytes().to_vec(),
            normalized: sink.normalized.finish(),
        })
    }

    /// Keeps a copy of a new item sealed to the server key for [`DEDUPE_WINDOW`], so that a
    /// later duplicate report can give its recipients this very item. Not fsync'd: losing
    /// it only means a later duplicate is stored as its own copy.
    fn keep_recent(&self, source: &Source<'_>, range: Range<u64>, base64: bool, id: u64) {
        let key = self.intake_identity.to_public().to_string();
        let result = self
            .write_sealed(std::slice::from_ref(&key), false, |sink| {
                source.copy_original(range, base64, sink)
            })
            .and_then(|w| Ok(fs::rename(&w.tmp, self.recent_path(id))?));
        if let Err(e) = result {
            tracing::warn!(item = id, error = %e, "could not keep the duplicate-merge copy");
        }
    }

    /// Re-seals item `id` from its recent copy to `keys`; false when there is no recent copy.
    fn reseal_from_recent(&self, id: u64, keys: &[String]) -> Result<bool, ArchiveError> {
        let file = match File::open(self.recent_path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let written = self.write_sealed(keys, true, |sink| {
            let mut reader = crypto::open(
                &self.intake_identity,
                BufReader::with_capacity(64 << 10, file),
            )?;
            io::copy(&mut reader, sink)?;
            Ok(())
        })?;
        fs::rename(&written.tmp, self.item_path(id))?;
        Ok(true)
    }

    fn recent_path(&self, id: u64) -> PathBuf {
        self.recent_dir.join(format!("{id}.age"))
    }

    /// Removes recent copies older than the window (and those of removed items).
    fn sweep_recent(&self) -> Result<(), ArchiveError> {
        let known: BTreeSet<u64> = self.store.item_ids()?.into_iter().collect();
        for entry in fs::read_dir(&self.recent_dir)? {
            let entry = entry?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".age"))
                .and_then(|n| n.parse::<u64>().ok());
            let old = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|age| age > DEDUPE_WINDOW);
            if old || id.is_none_or(|id| !known.contains(&id)) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Keyed hash of (Message-ID, content without volatile headers).
    fn dedupe_key(&self, message_id: Option<&str>, normalized: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"dedupe\0");
        mac.update(message_id.unwrap_or("").trim().as_bytes());
        mac.update(b"\0");
        mac.update(normalized);
        mac.finalize().into_bytes().to_vec()
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
        let mut stats = Stats::default();
        for (name, value) in self.store.counters()? {
            let slot = match name.as_str() {
                "items" => &mut stats.items,
                "unknown" => &mut stats.unknown,
                "duplicates_merged" => &mut stats.duplicates_merged,
                "untrusted_reports" => &mut stats.untrusted_reports,
                "skipped_unknown" => &mut stats.skipped_unknown,
                "reports_without_original" => &mut stats.reports_without_original,
                "unreadable_dropped" => &mut stats.unreadable_dropped,
                "journal_reports" => &mut stats.journal_reports,
                "ndr_unwrapped" => &mut stats.ndr_unwrapped,
                "plain_copies" => &mut stats.plain_copies,
                "retention_removed" => &mut stats.retention_removed,
                _ => continue,
            };
            *slot = value;
        }
        stats.pending = self.pending_files()?.len() as u64;
        for u in self.users.list()? {
            let counts = UserCounts {
                inbox: self.store.entries(&format!("{}/INBOX", u.id))?.len() as u64,
                sent: self.store.entries(&format!("{}/Sent", u.id))?.len() as u64,
            };
            stats.users.insert(u.login.clone(), counts);
        }
        Ok(stats)
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
        let users = Users::new(data_dir);
        let mut stats = Stats::default();
        let view = OfflineStats {
            store: &store,
            users: &users,
            intake: dir.join("intake"),
        };
        view.fill(&mut stats)?;
        Ok(stats)
    }
}

struct OfflineStats<'a> {
    store: &'a Store,
    users: &'a Users,
    intake: PathBuf,
}

impl OfflineStats<'_> {
    fn fill(&self, stats: &mut Stats) -> Result<(), ArchiveError> {
        let counters: HashMap<String, u64> = self.store.counters()?.into_iter().collect();
        let get = |k: &str| counters.get(k).copied().unwrap_or(0);
        stats.items = get("items");
        stats.unknown = get("unknown");
        stats.duplicates_merged = get("duplicates_merged");
        stats.untrusted_reports = get("untrusted_reports");
        stats.skipped_unknown = get("skipped_unknown");
        stats.reports_without_original = get("reports_without_original");
        stats.unreadable_dropped = get("unreadable_dropped");
        stats.journal_reports = get("journal_reports");
        stats.ndr_unwrapped = get("ndr_unwrapped");
        stats.plain_copies = get("plain_copies");
        stats.retention_removed = get("retention_removed");
        stats.pending = match fs::read_dir(&self.intake) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| intake_time(&e.file_name().to_string_lossy()).is_some())
                .count() as u64,
            Err(_) => 0,
        };
        for u in self.users.list()? {
            stats.users.insert(
                u.login.clone(),
                UserCounts {
                    inbox: self.store.entries(&format!("{}/INBOX", u.id))?.len() as u64,
                    sent: self.store.entries(&format!("{}/Sent", u.id))?.len() as u64,
                },
            );
        }
        Ok(())
    }
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

/// Where the bytes of an original come from: the skeleton when it is the whole message,
/// otherwise a second decrypting pass over the intake file.
struct Source<'a> {
    archive: &'a Archive,
    intake: &'a Path,
    envelope_len: u64,
    skeleton: &'a Skeleton,
}

impl Source<'_> {
    /// Copies an original, decoding a base64 `message/rfc822` part (up to [`DECODE_MAX`]).
    fn copy_original(
        &self,
        range: Range<u64>,
        base64: bool,
        out: &mut (impl Write + ?Sized),
    ) -> Result<(), ArchiveError> {
        if base64 && range.end - range.start <= DECODE_MAX {
            let mut encoded = Vec::new();
            self.copy(range.clone(), &mut encoded)?;
            encoded.retain(|b| !b.is_ascii_whitespace());
            use base64::Engine;
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&encoded) {
                out.write_all(&decoded)?;
                return Ok(());
            }
        }
        self.copy(range, out)
    }

    fn copy(&self, range: Range<u64>, out: &mut (impl Write + ?Sized)) -> Result<(), ArchiveError> {
        if self.skeleton.is_whole() {
            let r = range.start as usize..(range.end as usize).min(self.skeleton.bytes.len());
            out.write_all(&self.skeleton.bytes[r])?;
            return Ok(());
        }
        let mut reader = self.archive.open_intake(self.intake)?;
        io::copy(
            &mut (&mut reader).take(self.envelope_len + range.start),
            &mut io::sink(),
        )?;
        let n = io::copy(&mut reader.take(range.end - range.start), out)?;
        if n != range.end - range.start {
            return Err(ArchiveError::Damaged(
                "intake shorter than its skeleton".into(),
            ));
        }
        Ok(())
    }
}

struct Written {
    tmp: PathBuf,
    size: u64,
    exact: Vec<u8>,
    normalized: Vec<u8>,
}

struct HashingWriter<W: Write> {
    inner: W,
    exact: Hmac<Sha256>,
    normalized: Normalizer,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.exact.update(&buf[..n]);
        self.normalized.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a message without the header fields that differ between journal copies of one
/// message (`X-MS-Exchange-Organization-*`, `X-MS-Exchange-Forest-*`, `Received`), and
/// without line-ending differences in the header.
#[derive(Default)]
struct Normalizer {
    header: Vec<u8>,
    body: Option<Sha256>,
}

impl Normalizer {
    fn update(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.body {
            body.update(bytes);
            return;
        }
        self.header.extend_from_slice(bytes);
        let end = mime::header_end(&self.header);
        if end < self.header.len() || self.header.len() >= HASH_HEADER_MAX {
            let mut body = Sha256::new();
            body.update(filtered_header(&self.header[..end]));
            body.update(b"\0");
            body.update(&self.header[end..]);
            self.header = Vec::new();
            self.body = Some(body);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.body.is_none() {
            let mut body = Sha256::new();
            body.update(filtered_header(&self.header));
            self.body = Some(body);
        }
        self.body.expect("set").finalize().to_vec()
    }
}

fn filtered_header(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut skipping = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let name = line.split(|b| *b == b':').next().unwrap_or(b"");
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            skipping = name == "received"
                || name.starts_with("x-ms-exchange-organization-")
                || name.starts_with("x-ms-exchange-forest-");
        }
        if !skipping {
            let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            out.extend_from_slice(trimmed);
            out.push(b'\n');
        }
    }
    out
}

/// Address (login or alias, lowercase) to user.
struct Directory<'a>(HashMap<&'a str, &'a UserRecord>);

impl<'a> Directory<'a> {
    fn new(users: &'a [UserRecord]) -> Directory<'a> {
        Directory(
            users
                .iter()
                .flat_map(|u| u.addresses().map(move |a| (a, u)))
                .collect(),
        )
    }

    fn find(&self, address: &str) -> Option<&'a UserRecord> {
        self.0.get(address.trim().to_lowercase().as_str()).copied()
    }
}

fn header_message_id(message: &[u8]) -> Option<String> {
    let header = &message[..mime::header_end(message)];
    mime::raw_field(header, "Message-ID")
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn remove_if_present(path: &Path) -> Result<(), ArchiveError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Arrival time from an intake file name `<unix>.<hex>.age`.
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

    #[test]
    fn volatile_headers_do_not_change_the_duplicate_hash() {
        let hash = |m: &[u8]| {
            let mut n = Normalizer::default();
            for chunk in m.chunks(7) {
                n.update(chunk);
            }
            n.finish()
        };
        let a = hash(b"Received: from a\r\nX-MS-Exchange-Organization-Id: 1\r\n x\r\nSubject: s\r\n\r\nbody\r\n");
        let b = hash(b"Received: from b\r\n by c\r\nSubject: s\r\nX-MS-Exchange-Forest-Foo: 2\r\n\r\nbody\r\n");
        let c = hash(b"Subject: s\r\n\r\nother body\r\n");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_copies_are_filed_and_retention_removes_old_ones() {
        use crate::spool::Target;
        let dir = std::env::temp_dir().join(format!("jg-archive-{}", crypto::random_hex128()));
        let spool = Spool::open(&dir).unwrap();
        let config = ArchiveConfig {
            retention_days: 1,
            envelope_headers: vec![crate::config::EnvelopeHeader {
                network: "127.0.0.0/8".parse().unwrap(),
                header: "X-Envelope-To".into(),
            }],
            ..ArchiveConfig::default()
        };
        let archive = Archive::open(&config, spool.clone()).unwrap();
        let (bob, password) = archive
            .users()
            .add("bob@x.example", &[], "", false)
            .unwrap();
        let (tx, _rx) = mpsc::channel();
        spool.set_intake(Intake {
            dir: archive.intake_dir.clone(),
            recipient: archive.intake_identity.to_public(),
            notify: tx,
        });
        let (mbx, _) = spool.mailboxes().create("m", "").unwrap();
        let now = chrono::Utc::now().timestamp();
        for (received, subject) in [(now - 3 * 86_400, "old"), (now, "new")] {
            let target = Target {
                mailbox: mbx.id.clone(),
                recipient: crypto::parse_recipient(&mbx.public_key).unwrap(),
                envelope: Envelope {
                    id: subject.into(),
                    mail_from: String::new(),
                    rcpt_to: vec![format!("{}@gw.test", mbx.id)],
                    client: "127.0.0.1:1".into(),
                    helo: "h".into(),
                    tls: None,
                    received,
                },
            };
            let mut d = spool.begin(vec![target], true);
            d.write(
                format!("X-Envelope-To: <BOB@x.example>\r\nSubject: {subject}\r\n\r\nbody\r\n")
                    .as_bytes(),
            );
            d.commit().await.unwrap();
        }
        let mut pending = Pending::default();
        for name in archive.pending_files().unwrap() {
            archive.process(&name, &mut pending).unwrap();
        }
        archive.commit(&mut pending).unwrap();
        assert!(archive.pending_files().unwrap().is_empty());
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
