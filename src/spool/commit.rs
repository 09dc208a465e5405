//! The committer thread (group commit): assigns UIDs in visibility order, renames sealed
//! temp files into their folders, fsyncs each folder once per batch, updates the index and
//! answers the waiting deliveries.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::broadcast;

use super::{scan_dir, ChangeKey, CommitJob, Dest, Intake, SpoolError, UID_BLOCK};
use crate::crypto;
use crate::fsutil;
use crate::index::Index;
use crate::mailbox::{MailboxError, MailboxId, Mailboxes};
use crate::message::MessageMeta;

/// each folder once per batch, updates the index, and reports back.
pub(super) struct Committer {
    pub(super) mailboxes: Mailboxes,
    pub(super) index: Arc<Index>,
    pub(super) changes: broadcast::Sender<ChangeKey>,
    pub(super) uids: Arc<Mutex<HashMap<MailboxId, UidState>>>,
    pub(super) intake: Arc<Mutex<Option<Arc<Intake>>>>,
    pub(super) fresh: super::Fresh,
}

pub(super) struct UidState {
    pub(super) next: u32,
    pub(super) reserved: u32,
}

impl Committer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<CommitJob>) {
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
                    // The messages are durable and will be answered 250: readers must see
                    // them, so the mailbox is read from its folder until the index is repaired.
                    tracing::warn!(mailbox = %mailbox, error = %e, "index update failed; reading the mailbox from its folder");
                    self.fresh.lock().unwrap().remove(&mailbox);
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
pub(super) fn commit_intake(intake: &Mutex<Option<Arc<Intake>>>, jobs: Vec<CommitJob>) {
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
pub(super) fn load_uid_state(
    mailboxes: &Mailboxes,
    id: &MailboxId,
) -> Result<UidState, SpoolError> {
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
pub(super) fn reserved_uidnext(mailboxes: &Mailboxes, id: &MailboxId) -> Result<u32, SpoolError> {
    Ok(load_uid_state(mailboxes, id)?.next)
}
