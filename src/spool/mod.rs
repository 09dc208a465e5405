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

mod check;
mod commit;
mod delivery;
mod flags;
mod mailstore;
pub mod totals;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::{broadcast, oneshot};

use crate::crypto::{self, CryptoError, Identity, Recipient};
use crate::fsutil;
use crate::index::{Index, IndexError};
use crate::mailbox::{MailboxError, MailboxId, Mailboxes};
use crate::message::{Envelope, MessageMeta};
use check::clean_dir;
pub use check::{check_files, scan_dir, DirScan, ReconcileReport};
pub(crate) use commit::intake_name;
#[cfg(test)]
use commit::reserved_uidnext;
use commit::{load_uid_state, Committer, UidState};
pub use delivery::Delivery;
use delivery::{envelope_line, Sink};
pub use mailstore::{inbox_folder, key_is_current, Collection, Collector, GatewayStore};

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

/// A store that takes gateway-mailbox copies instead of the local folders (the cluster's
/// object store). `deliver` returns once the sealed file is durable there.
pub trait Remote: Send + Sync {
    fn deliver(
        &self,
        mailbox: &MailboxId,
        sealed: &Path,
        meta: &MessageMeta,
    ) -> Result<(), SpoolError>;
    /// The archive intake's copy, under its intake name.
    fn deliver_intake(&self, sealed: &Path, name: &str) -> Result<(), SpoolError>;
}

/// The message inside a sealed spool file (or object): opened with the mailbox key, its
/// envelope line checked and skipped.
pub fn unseal<R: Read + Send + 'static>(
    identity: &Identity,
    sealed: R,
    meta: &MessageMeta,
) -> Result<impl Read + Send + use<R>, SpoolError> {
    let mut reader = crypto::open(identity, BufReader::with_capacity(64 * 1024, sealed))?;
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

/// What a copy is sealed to: a mailbox's X25519 key, or the archive's server-held key.
pub type SealTo = Arc<dyn age::Recipient + Send + Sync>;

/// The archive's intake queue: a copy of every accepted message, sealed to the archive's
/// server key, durable before the 250 like the mailbox copies (see `archive`).
pub struct Intake {
    pub dir: PathBuf,
    pub recipient: SealTo,
    /// Told after each batch of new intake files is durable.
    pub notify: mpsc::Sender<()>,
    /// Whether a delivery starting now needs a copy (the archive decides: it wants one once
    /// it has someone to file mail for).
    pub wants_copy: Box<dyn Fn() -> bool + Send + Sync>,
}

pub use crate::store::ChangeKey;

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
    /// Where gateway-mailbox copies go instead of the local folders (`[storage] backend =
    /// "s3"`): set once at start.
    remote: std::sync::OnceLock<Arc<dyn Remote>>,
    /// The modseq of each mailbox's last expunge (see `flags`), and of this start.
    expunged: Mutex<HashMap<MailboxId, u64>>,
    started: u64,
    /// Mailboxes whose index entries are known to match their folder, with the index
    /// generation they were checked at. Any other mailbox (an index write failed, e.g. on a
    /// full disk, or the index was reopened since) is read from its folder, and the index
    /// repaired from it, until that succeeds.
    fresh: Fresh,
    /// Messages and bytes per mailbox, for the console and metrics.
    totals: Arc<totals::Totals>,
}

/// See [`Spool::fresh`]; shared with the committer.
pub(super) type Fresh = Arc<Mutex<HashMap<MailboxId, u64>>>;

struct CommitJob {
    dest: Dest,
    tmp: PathBuf,
    meta: MessageMeta,
    /// The mailbox copy is also sealed to the intake key: once placed, it is linked into
    /// the archive intake (no second copy, no second fsync of data).
    also_intake: bool,
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
            remote: std::sync::OnceLock::new(),
            fresh: Fresh::default(),
            totals: Arc::new(totals::Totals::default()),
            expunged: Mutex::new(HashMap::new()),
            started: crate::message::next_modseq(),
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
            fresh: spool.fresh.clone(),
            totals: spool.totals.clone(),
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

    /// Sends gateway-mailbox copies to `remote` from now on (cluster mode).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// The archive intake, when the archive is on.
    pub fn intake(&self) -> Option<Arc<Intake>> {
        self.intake.lock().unwrap().clone()
    }

    /// The remote store of gateway mailboxes, in cluster mode.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }

    /// Sends "this folder changed" to IMAP sessions (the archive uses it for its folders).
    pub fn notify_change(&self, key: ChangeKey) {
        let _ = self.changes.send(key);
    }

    /// (messages, bytes) waiting in a mailbox; kept until it changes (see `totals`).
    pub fn totals(&self, id: &MailboxId) -> Result<(u64, u64), SpoolError> {
        self.totals.get_or(id.as_str(), || {
            let list = self.list(id)?;
            Ok((list.len() as u64, list.iter().map(|m| m.size).sum()))
        })
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

    /// Brings the index in line with the files of every mailbox.
    pub fn reconcile(&self) -> Result<ReconcileReport, SpoolError> {
        // Before and after: a total computed meanwhile is not kept.
        self.totals.changed_all();
        let report = self.reconcile_index();
        self.totals.changed_all();
        report
    }

    fn reconcile_index(&self) -> Result<ReconcileReport, SpoolError> {
        let mut report = ReconcileReport::default();
        let mut present = HashSet::new();
        for record in self.mailboxes.list()? {
            let files = scan_dir(&self.mailboxes.msg_dir(&record.id))?;
            let (a, r) = self.repair(&record.id, &files.messages)?;
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
    /// A copy also goes to the archive intake when the archive is on and wants one.
    pub fn begin(self: &Arc<Self>, targets: Vec<Target>) -> Delivery {
        let intake = self
            .intake
            .lock()
            .unwrap()
            .clone()
            // In cluster mode the node that files the archive decides (its users are its own).
            .filter(|intake| self.remote.get().is_some() || (intake.wants_copy)());
        let mut sinks: Vec<Sink> = Vec::new();
        // One target (the usual journal rule): its copy also opens with the intake key and
        // is linked into the intake. Several: the intake gets its own copy, whose envelope
        // names every recipient.
        // In cluster mode the mailbox copy leaves this node, so the intake keeps its own.
        let linked = intake.is_some() && targets.len() == 1 && self.remote.get().is_none();
        if let (Some(intake), Some(first), false) = (&intake, targets.first(), linked) {
            let mut envelope = first.envelope.clone();
            envelope.rcpt_to = targets
                .iter()
                .flat_map(|t| t.envelope.rcpt_to.iter().cloned())
                .collect();
            sinks.push(Sink {
                dest: Dest::Intake,
                recipient: intake.recipient.clone(),
                also: None,
                received: envelope.received,
                envelope_line: envelope_line(&envelope),
                file: None,
            });
        }
        for t in targets {
            sinks.push(Sink {
                dest: Dest::Mailbox(t.mailbox),
                recipient: Arc::new(t.recipient),
                also: intake
                    .as_ref()
                    .filter(|_| linked)
                    .map(|i| i.recipient.clone()),
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

    /// The messages of a mailbox, in UID order: from the index, or from the folder itself
    /// when the index is stale or failing (then the index is repaired from it, if it can be).
    pub fn list(&self, id: &MailboxId) -> Result<Listing, SpoolError> {
        if self.is_fresh(id) {
            match self.index.list(id) {
                Ok(list) => return Ok(list),
                Err(e) => self.mark_stale(id, &e),
            }
        }
        let files = scan_dir(&self.mailboxes.msg_dir(id))?;
        // Once repaired, the index has what the files cannot say (modseqs).
        if self.repair(id, &files.messages).is_ok() && self.is_fresh(id) {
            if let Ok(list) = self.index.list(id) {
                if list.len() == files.messages.len() {
                    return Ok(list);
                }
            }
        }
        Ok(files.messages)
    }

    /// Makes the index entries of a mailbox what its folder holds (`messages`, just scanned)
    /// and, when the folder did not change meanwhile, marks the mailbox fresh. No lock is
    /// needed: a delivery, flag change or expunge renames its file before it writes the index,
    /// so one that races with the repair either shows in the second scan (the mailbox stays
    /// unfresh and is repaired again next time) or writes the index after the repair.
    fn repair(
        &self,
        id: &MailboxId,
        messages: &[MessageMeta],
    ) -> Result<(usize, usize), SpoolError> {
        let generation = self.index.generation();
        let counts = self.index.replace(id.as_str(), messages)?;
        if scan_dir(&self.mailboxes.msg_dir(id))?.messages == messages {
            self.fresh.lock().unwrap().insert(id.clone(), generation);
        }
        Ok(counts)
    }

    fn is_fresh(&self, id: &MailboxId) -> bool {
        self.fresh.lock().unwrap().get(id) == Some(&self.index.generation())
    }

    /// One message as it is now (its flags may have changed since it was listed).
    fn current(&self, id: &MailboxId, uid: u32) -> Result<Option<MessageMeta>, SpoolError> {
        if self.is_fresh(id) {
            match self.index.get(id, uid) {
                Ok(found) => return Ok(found),
                Err(e) => self.mark_stale(id, &e),
            }
        }
        let list = self.list(id)?;
        Ok(list
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| list[i]))
    }

    /// The messages of `uids` that exist, as they are now (one folder scan when stale).
    fn find(&self, id: &MailboxId, uids: &[u32]) -> Result<Vec<MessageMeta>, SpoolError> {
        if uids.len() > 1 && !self.is_fresh(id) {
            let wanted: HashSet<u32> = uids.iter().copied().collect();
            return Ok(self
                .list(id)?
                .into_iter()
                .filter(|m| wanted.contains(&m.uid))
                .collect());
        }
        let mut found = Vec::with_capacity(uids.len());
        for uid in uids {
            found.extend(self.current(id, *uid)?);
        }
        Ok(found)
    }

    fn mark_stale(&self, id: &MailboxId, error: &IndexError) {
        if self.fresh.lock().unwrap().remove(id).is_some() {
            tracing::warn!(mailbox = %id, error = %error, "index failed; reading the mailbox from its folder");
        }
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
            .current(id, meta.uid)?
            .ok_or(SpoolError::NoSuchMessage)?;
        let path = self.mailboxes.msg_dir(id).join(meta.file_name());
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NoSuchMessage,
            _ => SpoolError::from(e),
        })?;
        unseal(identity, file, &meta)
    }

    /// Removes messages: unlink, fsync the folder, then update the index.
    pub fn expunge(&self, id: &MailboxId, uids: &[u32]) -> Result<(), SpoolError> {
        if uids.is_empty() {
            return Ok(());
        }
        let _guard = self.edits.lock().unwrap();
        let dir = self.mailboxes.msg_dir(id);
        // Deleting frees space, so it must work on a full disk: it needs no index write to
        // succeed (a failed one leaves the mailbox read from its folder).
        for meta in self.find(id, uids)? {
            match fs::remove_file(dir.join(meta.file_name())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        fsutil::sync_dir(&dir)?;
        self.note_expunge(id);
        if let Err(e) = self.index.remove(id, uids) {
            self.mark_stale(id, &e);
        }
        self.totals.changed(id.as_str());
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
            let indexed: Vec<MessageMeta> = self
                .index
                .list(&record.id)?
                .into_iter()
                .map(|m| MessageMeta { modseq: 0, ..m })
                .collect();
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
#[cfg(test)]
mod tests {
    use super::*;

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
            let mut d = spool.begin(vec![Target {
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
            }]);
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
