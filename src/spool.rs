//! The spool: one sealed file per message, the source of truth.
//!
//! Durability contract: a message is written to `tmp/`, sealed to the mailbox key, fdatasync'd,
//! renamed into `mailboxes/<id>/msg/<uid>.<received>.<size>.<envlen>.age`, and the folder is
//! fsync'd; only then is delivery reported. Renames and folder fsyncs of concurrent deliveries
//! are done by one committer thread in batches (group commit), which also assigns UIDs so they
//! increase in the order messages become visible. UIDs are reserved in blocks in the fsync'd
//! `uidstate` file, so they are never reused, even after a crash or a lost index.
//!
//! The plaintext inside each sealed file is one envelope line (`JG1 <json>\n`) followed by the
//! message bytes exactly as received.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use crate::crypto::{self, CryptoError, Identity, Recipient};
use crate::fsutil;
use crate::index::{Index, IndexError};
use crate::mailbox::{MailboxError, MailboxId, Mailboxes};

/// Messages up to this size are sealed in one go after the last byte arrives; larger ones
/// are streamed to disk as they arrive, so memory stays bounded.
const SPILL_THRESHOLD: usize = 128 * 1024;
/// UIDs are reserved in blocks of this size in `uidstate`.
const UID_BLOCK: u32 = 256;
const ENVELOPE_MAGIC: &[u8] = b"JG1 ";
/// Longest envelope line accepted when reading.
const MAX_ENVELOPE_LEN: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("disk full")]
    DiskFull,
    #[error("i/o error: {0}")]
    Io(io::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    #[error("no such message")]
    NoSuchMessage,
    #[error("the spool is shutting down")]
    ShuttingDown,
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || e.kind() == io::ErrorKind::StorageFull
        {
            SpoolError::DiskFull
        } else {
            SpoolError::Io(e)
        }
    }
}

/// IMAP system flags of a message, kept in its file name (maildir letters) so that they
/// survive an index rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    pub const ANSWERED: Flags = Flags(1);
    pub const DELETED: Flags = Flags(2);
    pub const DRAFT: Flags = Flags(4);
    pub const FLAGGED: Flags = Flags(8);
    pub const SEEN: Flags = Flags(16);
    /// (flag, maildir letter, IMAP name), in maildir letter order.
    const TABLE: [(Flags, char, &'static str); 5] = [
        (Flags::DRAFT, 'D', "\\Draft"),
        (Flags::FLAGGED, 'F', "\\Flagged"),
        (Flags::ANSWERED, 'R', "\\Answered"),
        (Flags::SEEN, 'S', "\\Seen"),
        (Flags::DELETED, 'T', "\\Deleted"),
    ];

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Maildir letters, e.g. `FS`.
    pub fn letters(self) -> String {
        Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, c, _)| *c)
            .collect()
    }

    fn from_letters(s: &str) -> Option<Flags> {
        let mut flags = Flags(0);
        for c in s.chars() {
            let (f, _, _) = Self::TABLE.iter().find(|(_, l, _)| *l == c)?;
            flags = flags.with(*f);
        }
        (flags.letters() == s).then_some(flags)
    }

    /// IMAP flag names, e.g. `["\\Flagged", "\\Seen"]`.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::TABLE
            .into_iter()
            .filter(move |(f, _, _)| self.contains(*f))
            .map(|(_, _, n)| n)
    }
}

/// What the index and the file name record of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    /// Size in octets of the message as stored (what POP3 LIST reports).
    pub size: u64,
    /// Arrival time, unix seconds.
    pub received: i64,
    /// Length of the envelope line that precedes the message inside the sealed file.
    pub envelope_len: u32,
    pub flags: Flags,
}

impl MessageMeta {
    /// `<uid>.<received>.<size>.<envelope length>[.<flag letters>].age`
    pub fn file_name(&self) -> String {
        let flags = match self.flags.letters() {
            l if l.is_empty() => String::new(),
            l => format!(".{l}"),
        };
        format!(
            "{}.{}.{}.{}{flags}.age",
            self.uid, self.received, self.size, self.envelope_len
        )
    }

    pub fn parse_file_name(name: &str) -> Option<MessageMeta> {
        let stem = name.strip_suffix(".age")?;
        let mut parts = stem.split('.');
        let meta = MessageMeta {
            uid: parts.next()?.parse().ok().filter(|u| *u > 0)?,
            received: parts.next()?.parse().ok()?,
            size: parts.next()?.parse().ok()?,
            envelope_len: parts.next()?.parse().ok()?,
            flags: match parts.next() {
                Some(letters) => Flags::from_letters(letters).filter(|f| f.0 != 0)?,
                None => Flags::default(),
            },
        };
        (parts.next().is_none() && meta.file_name() == name).then_some(meta)
    }
}

/// The SMTP envelope, sealed together with the message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub client: String,
    pub helo: String,
    pub tls: Option<String>,
    pub received: i64,
}

/// A mailbox a message is delivered to.
pub struct Target {
    pub mailbox: MailboxId,
    pub recipient: Recipient,
    pub envelope: Envelope,
}

/// Where a sealed copy goes: a gateway mailbox, or the archive's intake queue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    Mailbox(MailboxId),
    Intake,
}

/// The archive's intake queue: a copy of every accepted message, sealed to the archive's
/// server key, durable before the 250 like the mailbox copies (see `archive`).
pub struct Intake {
    pub dir: PathBuf,
    pub recipient: Recipient,
    /// Told after each batch of new intake files is durable.
    pub notify: mpsc::Sender<()>,
}

/// Names a folder that changed: a mailbox ID, or an archive folder key.
pub type ChangeKey = String;

/// A message of one mailbox, as seen by a reader.
pub type Listing = Vec<MessageMeta>;

pub struct Spool {
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    mailboxes: Mailboxes,
    index: Arc<Index>,
    commits: Mutex<Option<mpsc::Sender<CommitJob>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// "Mailbox X changed" (new mail, expunge, flags), for IDLE and NOOP.
    changes: broadcast::Sender<ChangeKey>,
    /// Serialises flag renames and expunges, which both rename/unlink by current name.
    edits: Mutex<()>,
    /// UID allocation state, shared with the committer.
    uids: Arc<Mutex<HashMap<MailboxId, UidState>>>,
    /// The archive intake, when the archive is on.
    intake: Arc<Mutex<Option<Arc<Intake>>>>,
}

struct CommitJob {
    dest: Dest,
    tmp: PathBuf,
    meta: MessageMeta,
    reply: oneshot::Sender<Result<u32, SpoolError>>,
}

impl Spool {
    /// Opens the spool: cleans temp files, opens (or rebuilds) the index, reconciles it with
    /// the files, and starts the committer thread.
    pub fn open(data_dir: &Path) -> Result<Arc<Spool>, SpoolError> {
        let tmp_dir = data_dir.join("tmp");
        fsutil::create_private_dir(data_dir)?;
        fsutil::create_private_dir(&tmp_dir)?;
        let removed = clean_dir(&tmp_dir)?;
        if removed > 0 {
            tracing::info!(files = removed, "removed unfinished temp files");
        }
        let mailboxes = Mailboxes::new(data_dir);
        mailboxes.clean_leftovers()?;
        let index = Arc::new(Index::open(&data_dir.join("index.redb"))?);
        let (tx, rx) = mpsc::channel();
        let (changes, _) = broadcast::channel(1024);
        let spool = Arc::new(Spool {
            data_dir: data_dir.to_owned(),
            tmp_dir,
            mailboxes: mailboxes.clone(),
            index: index.clone(),
            commits: Mutex::new(Some(tx)),
            committer: Mutex::new(None),
            changes: changes.clone(),
            edits: Mutex::new(()),
            uids: Arc::new(Mutex::new(HashMap::new())),
            intake: Arc::new(Mutex::new(None)),
        });
        let report = spool.reconcile()?;
        if report.added + report.removed > 0 {
            tracing::info!(
                added = report.added,
                removed = report.removed,
                "index reconciled with spool"
            );
        }
        let committer = Committer {
            mailboxes,
            index,
            changes,
            uids: spool.uids.clone(),
            intake: spool.intake.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer.run(rx))?;
        *spool.committer.lock().unwrap() = Some(handle);
        Ok(spool)
    }

    /// Turns the archive intake on: from now on every delivery also leaves a sealed copy in
    /// `intake.dir`.
    pub fn set_intake(&self, intake: Intake) {
        *self.intake.lock().unwrap() = Some(Arc::new(intake));
    }

    /// Sends "this folder changed" to IMAP sessions (the archive uses it for its folders).
    pub fn notify_change(&self, key: ChangeKey) {
        let _ = self.changes.send(key);
    }

    pub fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The UID the next message delivered to this mailbox will get (IMAP UIDNEXT).
    pub fn uid_next(&self, id: &MailboxId) -> Result<u32, SpoolError> {
        let mut uids = self.uids.lock().unwrap();
        if !uids.contains_key(id) {
            let state = load_uid_state(&self.mailboxes, id)?;
            uids.insert(id.clone(), state);
        }
        Ok(uids[id].next)
    }

    /// Subscribes to "mailbox X changed" notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeKey> {
        self.changes.subscribe()
    }

    /// Sets the flags of messages (by UID); returns the messages as they are now. Messages
    /// that no longer exist are skipped. The rename is not fsync'd: a flag change lost in a
    /// crash is harmless, and the next change of the folder makes it durable.
    pub fn set_flags(
        &self,
        id: &MailboxId,
        changes: &[(u32, Flags)],
    ) -> Result<Vec<MessageMeta>, SpoolError> {
        let _guard = self.edits.lock().unwrap();
        let dir = self.mailboxes.msg_dir(id);
        let mut updated = Vec::new();
        for (uid, flags) in changes {
            let Some(meta) = self.index.get(id, *uid)? else {
                continue;
            };
            if meta.flags == *flags {
                updated.push(meta);
                continue;
            }
            let new = MessageMeta {
                flags: *flags,
                ..meta
            };
            match fs::rename(dir.join(meta.file_name()), dir.join(new.file_name())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            updated.push(new);
        }
        self.index
            .insert(&updated.iter().map(|m| (id.clone(), *m)).collect::<Vec<_>>())?;
        let _ = self.changes.send(id.to_string());
        Ok(updated)
    }

    /// Brings the index in line with the files of every mailbox.
    pub fn reconcile(&self) -> Result<ReconcileReport, SpoolError> {
        let mut report = ReconcileReport::default();
        let mut present = HashSet::new();
        for record in self.mailboxes.list()? {
            let files = scan_dir(&self.mailboxes.msg_dir(&record.id))?;
            let (a, r) = self.index.replace(record.id.as_str(), &files.messages)?;
            report.added += a;
            report.removed += r;
            report.messages += files.messages.len();
            present.insert(record.id.as_str().to_owned());
        }
        for id in self.index.mailboxes()? {
            if !present.contains(&id) {
                let (_, r) = self.index.replace(&id, &[])?;
                report.removed += r;
            }
        }
        Ok(report)
    }

    /// Starts a delivery to `targets`. Write the message with [`Delivery::write`], then
    /// [`Delivery::commit`].
    /// With `archive`, a copy also goes to the archive intake (when the archive is on).
    pub fn begin(self: &Arc<Self>, targets: Vec<Target>, archive: bool) -> Delivery {
        let intake = archive
            .then(|| self.intake.lock().unwrap().clone())
            .flatten();
        let mut sinks: Vec<Sink> = Vec::new();
        if let (Some(intake), Some(first)) = (intake, targets.first()) {
            let mut envelope = first.envelope.clone();
            envelope.rcpt_to = targets
                .iter()
                .flat_map(|t| t.envelope.rcpt_to.iter().cloned())
                .collect();
            sinks.push(Sink {
                dest: Dest::Intake,
                recipient: intake.recipient.clone(),
                received: envelope.received,
                envelope_line: envelope_line(&envelope),
                file: None,
            });
        }
        for t in targets {
            sinks.push(Sink {
                dest: Dest::Mailbox(t.mailbox),
                recipient: t.recipient,
                received: t.envelope.received,
                envelope_line: envelope_line(&t.envelope),
                file: None,
            });
        }
        Delivery {
            spool: self.clone(),
            sinks,
            buffer: Vec::new(),
            size: 0,
            failed: None,
        }
    }

    /// The messages of a mailbox, in UID order.
    pub fn list(&self, id: &MailboxId) -> Result<Listing, SpoolError> {
        Ok(self.index.list(id)?)
    }

    /// Opens a message for reading: returns a reader of the message bytes (envelope skipped).
    /// Blocking; call from a blocking context.
    pub fn open_message(
        &self,
        id: &MailboxId,
        meta: &MessageMeta,
        identity: &Identity,
    ) -> Result<impl Read + Send + use<>, SpoolError> {
        // Flags may have been renamed since the caller listed the message.
        let meta = self
            .index
            .get(id, meta.uid)?
            .ok_or(SpoolError::NoSuchMessage)?;
        let path = self.mailboxes.msg_dir(id).join(meta.file_name());
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NoSuchMessage,
            _ => SpoolError::from(e),
        })?;
        let mut reader = crypto::open(identity, BufReader::with_capacity(64 * 1024, file))?;
        if meta.envelope_len > MAX_ENVELOPE_LEN {
            return Err(CryptoError::Damaged("envelope too long".into()).into());
        }
        let mut envelope = vec![0u8; meta.envelope_len as usize];
        reader.read_exact(&mut envelope)?;
        if !envelope.starts_with(ENVELOPE_MAGIC) {
            return Err(CryptoError::Damaged("missing envelope".into()).into());
        }
        Ok(reader.take(meta.size))
    }

    /// Removes messages: unlink, fsync the folder, then update the index.
    pub fn expunge(&self, id: &MailboxId, uids: &[u32]) -> Result<(), SpoolError> {
        if uids.is_empty() {
            return Ok(());
        }
        let _guard = self.edits.lock().unwrap();
        let dir = self.mailboxes.msg_dir(id);
        for uid in uids {
            let Some(meta) = self.index.get(id, *uid)? else {
                continue;
            };
            match fs::remove_file(dir.join(meta.file_name())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        fsutil::sync_dir(&dir)?;
        self.index.remove(id, uids)?;
        let _ = self.changes.send(id.to_string());
        Ok(())
    }

    /// Number of messages in the index.
    pub fn indexed_messages(&self) -> Result<u64, SpoolError> {
        Ok(self.index.message_count()?)
    }

    /// Verifies every mailbox and message file without any key: names, age headers, lengths,
    /// and that the index matches. Returns the problems found.
    pub fn check(&self) -> Result<Vec<String>, SpoolError> {
        let mut problems = check_files(&self.data_dir)?;
        for record in self.mailboxes.list()? {
            let files = scan_dir(&self.mailboxes.msg_dir(&record.id))?;
            let indexed = self.index.list(&record.id)?;
            if indexed != files.messages {
                problems.push(format!(
                    "{}: index lists {} messages, spool holds {}",
                    record.id,
                    indexed.len(),
                    files.messages.len()
                ));
            }
        }
        Ok(problems)
    }

    /// Stops the committer after the deliveries already queued are committed.
    pub fn shutdown(&self) {
        self.commits.lock().unwrap().take();
        if let Some(handle) = self.committer.lock().unwrap().take() {
            let _ = handle.join();
        }
        if let Err(e) = self.index.flush() {
            tracing::warn!(error = %e, "could not flush the index");
        }
    }

    fn submit(&self, job: CommitJob) -> Result<(), SpoolError> {
        let guard = self.commits.lock().unwrap();
        let tx = guard.as_ref().ok_or(SpoolError::ShuttingDown)?;
        tx.send(job).map_err(|_| SpoolError::ShuttingDown)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub messages: usize,
    pub added: usize,
    pub removed: usize,
}

/// Checks the spool files alone (usable without opening the index).
pub fn check_files(data_dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mailboxes = Mailboxes::new(data_dir);
    let mut problems = Vec::new();
    let records = match mailboxes.list() {
        Ok(r) => r,
        Err(e) => return Ok(vec![format!("mailbox registry: {e}")]),
    };
    for record in records {
        if let Err(e) = mailboxes.wrapped_identity(&record.id) {
            problems.push(format!("{}: key file: {e}", record.id));
        }
        let dir = mailboxes.msg_dir(&record.id);
        let files = scan_dir(&dir)?;
        for name in files.unknown {
            problems.push(format!("{}: unexpected file {name:?}", record.id));
        }
        for meta in &files.messages {
            if let Err(e) = check_message_file(&dir.join(meta.file_name()), meta) {
                problems.push(format!("{}: message {}: {e}", record.id, meta.uid));
            }
        }
    }
    Ok(problems)
}

/// Checks one sealed file: a well-formed age header and exactly the length the plaintext
/// size implies (catches truncation and appended garbage without the key).
fn check_message_file(path: &Path, meta: &MessageMeta) -> Result<(), String> {
    let bytes_len = fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; 4096.min(bytes_len as usize)];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| e.to_string())?;
    crypto::check_header(&head[..]).map_err(|e| e.to_string())?;
    let header_len = age_header_len(&head).ok_or("age header too long")?;
    let plain = meta.size + u64::from(meta.envelope_len);
    let chunks = plain.div_ceil(64 * 1024).max(1);
    let expected = header_len as u64 + 16 + plain + 16 * chunks;
    if bytes_len != expected {
        return Err(format!(
            "file is {bytes_len} bytes, expected {expected} (truncated or damaged)"
        ));
    }
    Ok(())
}

/// Length of an age header: up to and including the line that starts with `--- `.
fn age_header_len(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < bytes.len() {
        let end = start + bytes[start..].iter().position(|b| *b == b'\n')?;
        if bytes[start..end].starts_with(b"--- ") {
            return Some(end + 1);
        }
        start = end + 1;
    }
    None
}

/// What a message folder holds.
pub struct DirScan {
    pub messages: Vec<MessageMeta>,
    pub unknown: Vec<String>,
}

/// Lists a message folder (no index needed), sorted by UID.
pub fn scan_dir(dir: &Path) -> Result<DirScan, SpoolError> {
    let mut scan = DirScan {
        messages: Vec::new(),
        unknown: Vec::new(),
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        match MessageMeta::parse_file_name(&name) {
            Some(meta) => scan.messages.push(meta),
            None => scan.unknown.push(name),
        }
    }
    scan.messages.sort_by_key(|m| m.uid);
    Ok(scan)
}

fn clean_dir(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    if n > 0 {
        fsutil::sync_dir(dir)?;
    }
    Ok(n)
}

fn envelope_line(envelope: &Envelope) -> Vec<u8> {
    let mut line = ENVELOPE_MAGIC.to_vec();
    serde_json::to_writer(&mut line, envelope).expect("envelope serializes");
    line.push(b'\n');
    line
}

/// A message being received for one or more mailboxes. Dropping it without
/// [`Delivery::commit`] removes its temp files.
pub struct Delivery {
    spool: Arc<Spool>,
    sinks: Vec<Sink>,
    buffer: Vec<u8>,
    size: u64,
    failed: Option<SpoolError>,
}

struct Sink {
    dest: Dest,
    recipient: Recipient,
    received: i64,
    envelope_line: Vec<u8>,
    file: Option<(PathBuf, age::stream::StreamWriter<BufWriter<File>>)>,
}

impl Sink {
    fn open(&mut self, tmp_dir: &Path) -> Result<(), SpoolError> {
        let path = tmp_dir.join(format!("{}.tmp", crypto::random_hex128()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut writer = crypto::seal(&self.recipient, BufWriter::with_capacity(64 * 1024, file))?;
        let result = writer.write_all(&self.envelope_line);
        self.file = Some((path, writer));
        result.map_err(SpoolError::from)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let (_, writer) = self.file.as_mut().expect("sink opened");
        writer.write_all(bytes).map_err(SpoolError::from)
    }

    /// Finishes the age stream and makes the temp file durable.
    fn finish(&mut self) -> Result<PathBuf, SpoolError> {
        let (path, writer) = self.file.take().expect("sink opened");
        let result = (|| {
            let buffered = writer.finish()?;
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            Ok(())
        })();
        match result {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Delivery {
    /// Appends message bytes. Small messages are kept in memory; past a threshold the
    /// message is streamed to sealed temp files. After a failure, further writes are ignored
    /// and [`Delivery::commit`] reports the failure.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.size += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= SPILL_THRESHOLD {
            let result = tokio::task::block_in_place(|| self.spill());
            if let Err(e) = result {
                self.failed = Some(e);
                self.discard_files();
            }
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn spill(&mut self) -> Result<(), SpoolError> {
        let tmp_dir = self.spool.tmp_dir.clone();
        for sink in &mut self.sinks {
            if sink.file.is_none() {
                sink.open(&tmp_dir)?;
            }
            sink.write(&self.buffer)?;
        }
        self.buffer.clear();
        Ok(())
    }

    fn discard_files(&mut self) {
        for sink in &mut self.sinks {
            if let Some((path, _)) = sink.file.take() {
                let _ = fs::remove_file(path);
            }
        }
        self.buffer = Vec::new();
    }

    /// Makes the message durable in every target mailbox and returns the UIDs assigned.
    pub async fn commit(mut self) -> Result<Vec<(MailboxId, u32)>, SpoolError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let received = self.sinks.first().map(|s| s.received).unwrap_or_default();
        let size = self.size;
        let mut sinks = std::mem::take(&mut self.sinks);
        let buffer = std::mem::take(&mut self.buffer);
        let spool = self.spool.clone();
        let tmp_dir = spool.tmp_dir.clone();
        // Seal, write and fdatasync every copy off the async threads.
        // Seal, write and fdatasync every copy off the async threads; several copies (a
        // mailbox and the archive intake) are synced in parallel, so they cost one wait.
        let finished = tokio::task::spawn_blocking(move || {
            let finish = |sink: &mut Sink| -> Result<PathBuf, SpoolError> {
                if sink.file.is_none() {
                    sink.open(&tmp_dir)?;
                }
                sink.write(&buffer)?;
                sink.finish()
            };
            let results: Vec<Result<PathBuf, SpoolError>> = if sinks.len() == 1 {
                vec![finish(&mut sinks[0])]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = sinks
                        .iter_mut()
                        .map(|sink| scope.spawn(|| finish(sink)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(SpoolError::Io(io::Error::other("sealing thread panicked")))
                            })
                        })
                        .collect()
                })
            };
            let mut done = Vec::new();
            let mut failure = None;
            for (sink, result) in sinks.iter_mut().zip(results) {
                match result {
                    Ok(path) => done.push((sink.dest.clone(), path, sink.envelope_line.len())),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                for (_, path, _) in &done {
                    let _ = fs::remove_file(path);
                }
                for sink in &mut sinks {
                    if let Some((path, _)) = sink.file.take() {
                        let _ = fs::remove_file(path);
                    }
                }
                return Err(e);
            }
            Ok(done)
        })
        .await
        .map_err(|e| SpoolError::Io(io::Error::other(e)))??;

        let mut waits = Vec::new();
        for (dest, tmp, envelope_len) in finished {
            let (reply, wait) = oneshot::channel();
            let job = CommitJob {
                dest: dest.clone(),
                tmp: tmp.clone(),
                meta: MessageMeta {
                    uid: 0,
                    size,
                    received,
                    envelope_len: envelope_len as u32,
                    flags: Flags::default(),
                },
                reply,
            };
            if let Err(e) = spool.submit(job) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            waits.push((dest, wait));
        }
        let mut uids = Vec::new();
        for (dest, wait) in waits {
            let uid = wait.await.map_err(|_| SpoolError::ShuttingDown)??;
            if let Dest::Mailbox(mailbox) = dest {
                uids.push((mailbox, uid));
            }
        }
        Ok(uids)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.discard_files();
    }
}

/// The committer thread: assigns UIDs, renames sealed temp files into their folders, fsyncs
/// each folder once per batch, updates the index, and reports back.
struct Committer {
    mailboxes: Mailboxes,
    index: Arc<Index>,
    changes: broadcast::Sender<ChangeKey>,
    uids: Arc<Mutex<HashMap<MailboxId, UidState>>>,
    intake: Arc<Mutex<Option<Arc<Intake>>>>,
}

struct UidState {
    next: u32,
    reserved: u32,
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<CommitJob>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(4096));
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<CommitJob>) {
        let mut placed: BTreeMap<MailboxId, Vec<(CommitJob, MessageMeta)>> = BTreeMap::new();
        let mut intake_jobs = Vec::new();
        for job in batch {
            let mailbox = match &job.dest {
                Dest::Mailbox(m) => m.clone(),
                Dest::Intake => {
                    intake_jobs.push(job);
                    continue;
                }
            };
            match self.place(&mailbox, &job) {
                Ok(meta) => placed.entry(mailbox).or_default().push((job, meta)),
                Err(e) => {
                    let _ = fs::remove_file(&job.tmp);
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        // The intake folder is synced while the mailbox folders are.
        let intake = self.intake.clone();
        std::thread::scope(|scope| {
            if !intake_jobs.is_empty() {
                scope.spawn(move || commit_intake(&intake, intake_jobs));
            }
            self.commit_placed(placed);
        });
    }

    fn commit_placed(&mut self, placed: BTreeMap<MailboxId, Vec<(CommitJob, MessageMeta)>>) {
        for (mailbox, jobs) in placed {
            let synced = fsutil::sync_dir(&self.mailboxes.msg_dir(&mailbox));
            let entries: Vec<(MailboxId, MessageMeta)> =
                jobs.iter().map(|(_, m)| (mailbox.clone(), *m)).collect();
            if synced.is_ok() {
                if let Err(e) = self.index.insert(&entries) {
                    tracing::warn!(error = %e, "index update failed; it is rebuilt at next start");
                }
                let _ = self.changes.send(mailbox.to_string());
            }
            for (job, meta) in jobs {
                let result = match &synced {
                    Ok(()) => Ok(meta.uid),
                    Err(e) => Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))),
                };
                let _ = job.reply.send(result);
            }
        }
    }

    /// Assigns a UID and renames the temp file into the mailbox folder.
    fn place(&mut self, mailbox: &MailboxId, job: &CommitJob) -> Result<MessageMeta, SpoolError> {
        let uid = self.allocate_uid(mailbox)?;
        let meta = MessageMeta { uid, ..job.meta };
        let dir = self.mailboxes.msg_dir(mailbox);
        fs::rename(&job.tmp, dir.join(meta.file_name()))?;
        Ok(meta)
    }

    fn allocate_uid(&mut self, id: &MailboxId) -> Result<u32, SpoolError> {
        let mut uids = self.uids.lock().unwrap();
        if !uids.contains_key(id) {
            let state = load_uid_state(&self.mailboxes, id)?;
            uids.insert(id.clone(), state);
        }
        let state = uids.get_mut(id).expect("just inserted");
        if state.next >= state.reserved {
            let reserved = state.next.checked_add(UID_BLOCK).ok_or_else(|| {
                SpoolError::Io(io::Error::other("UID space of this mailbox is exhausted"))
            })?;
            let path = self.mailboxes.dir(id).join("uidstate");
            fsutil::write_atomic(&path, format!("{reserved}\n").as_bytes(), 0o600)?;
            state.reserved = reserved;
        }
        let uid = state.next;
        state.next += 1;
        Ok(uid)
    }
}

/// Moves sealed intake copies into the intake folder, fsyncs it once, wakes the archive.
fn commit_intake(intake: &Mutex<Option<Arc<Intake>>>, jobs: Vec<CommitJob>) {
    let Some(intake) = intake.lock().unwrap().clone() else {
        for job in jobs {
            let _ = fs::remove_file(&job.tmp);
            let _ = job.reply.send(Err(SpoolError::ShuttingDown));
        }
        return;
    };
    let mut moved = Vec::new();
    for job in jobs {
        // `<unix>.<nanoseconds><random>`: sorting by name is the order of arrival.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let random = crypto::random_hex128();
        let name = format!(
            "{}.{:09}{}.age",
            now.as_secs(),
            now.subsec_nanos(),
            &random[..23]
        );
        match fs::rename(&job.tmp, intake.dir.join(name)) {
            Ok(()) => moved.push(job),
            Err(e) => {
                let _ = fs::remove_file(&job.tmp);
                let _ = job.reply.send(Err(e.into()));
            }
        }
    }
    let synced = fsutil::sync_dir(&intake.dir);
    for job in moved {
        let result = match &synced {
            Ok(()) => Ok(0),
            Err(e) => Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))),
        };
        let _ = job.reply.send(result);
    }
    let _ = intake.notify.send(());
}

/// Next UID: past both the reserved block of the last run and every UID on disk.
fn load_uid_state(mailboxes: &Mailboxes, id: &MailboxId) -> Result<UidState, SpoolError> {
    let dir = mailboxes.dir(id);
    if !dir.is_dir() {
        return Err(MailboxError::NotFound(id.clone()).into());
    }
    let reserved = match fs::read_to_string(dir.join("uidstate")) {
        Ok(text) => text.trim().parse::<u32>().unwrap_or(1),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
        Err(e) => return Err(e.into()),
    };
    let max_on_disk = scan_dir(&mailboxes.msg_dir(id))?
        .messages
        .last()
        .map(|m| m.uid + 1)
        .unwrap_or(1);
    let next = reserved.max(max_on_disk).max(1);
    Ok(UidState {
        next,
        reserved: next,
    })
}

/// UID bookkeeping for readers: the UID the next message will get is at least this.
#[cfg(test)]
pub fn reserved_uidnext(mailboxes: &Mailboxes, id: &MailboxId) -> Result<u32, SpoolError> {
    Ok(load_uid_state(mailboxes, id)?.next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip_and_reject_junk() {
        let m = MessageMeta {
            uid: 7,
            size: 20480,
            received: 1_700_000_000,
            envelope_len: 120,
            flags: Flags::default(),
        };
        assert_eq!(m.file_name(), "7.1700000000.20480.120.age");
        assert_eq!(MessageMeta::parse_file_name(&m.file_name()), Some(m));
        let f = MessageMeta {
            flags: Flags::SEEN.with(Flags::DELETED),
            ..m
        };
        assert_eq!(f.file_name(), "7.1700000000.20480.120.ST.age");
        assert_eq!(MessageMeta::parse_file_name(&f.file_name()), Some(f));
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3.TS.age"), None);
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3.X.age"), None);
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3..age"), None);
        for bad in [
            "7.1.2.age",
            "0.1.2.3.age",
            "07.1.2.3.age",
            "7.1.2.3.4.age",
            "x.1.2.3.age",
            "7.1.2.3.tmp",
        ] {
            assert_eq!(MessageMeta::parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_length_is_found() {
        let h = b"age-encryption.org/v1\n-> X25519 abc\ndef\n--- mac\nPAYLOAD";
        assert_eq!(age_header_len(h), Some(h.len() - 7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliver_read_expunge_and_recover() {
        let dir = std::env::temp_dir().join(format!("jg-spool-{}", crypto::random_hex128()));
        let spool = Spool::open(&dir).unwrap();
        let (rec, pw) = spool.mailboxes().create("t", "").unwrap();
        let identity =
            crypto::unwrap_identity(&spool.mailboxes().wrapped_identity(&rec.id).unwrap(), &pw)
                .unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for body in [b"small message\r\n".to_vec(), big.clone()] {
            let mut d = spool.begin(
                vec![Target {
                    mailbox: rec.id.clone(),
                    recipient: crypto::parse_recipient(&rec.public_key).unwrap(),
                    envelope: Envelope {
                        id: "q".into(),
                        mail_from: String::new(),
                        rcpt_to: vec![],
                        client: "127.0.0.1".into(),
                        helo: "h".into(),
                        tls: None,
                        received: 1,
                    },
                }],
                false,
            );
            for chunk in body.chunks(10_000) {
                d.write(chunk);
            }
            d.commit().await.unwrap();
        }
        let list = spool.list(&rec.id).unwrap();
        assert_eq!(list.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
        let mut out = Vec::new();
        spool
            .open_message(&rec.id, &list[1], &identity)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, big);
        assert!(spool.check().unwrap().is_empty());
        spool.expunge(&rec.id, &[1]).unwrap();
        spool.shutdown();
        drop(spool);
        // Reopen: UIDs continue past everything used before; index matches files.
        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.list(&rec.id).unwrap().len(), 1);
        assert!(reserved_uidnext(spool.mailboxes(), &rec.id).unwrap() > 2);
        spool.shutdown();
        fs::remove_dir_all(dir).unwrap();
    }
}
