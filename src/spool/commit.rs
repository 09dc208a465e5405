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
    pub(super) totals: Arc<super::totals::Totals>,
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
        let intake = self.intake.lock().unwrap().clone();
        let mut placed: BTreeMap<MailboxId, Vec<(CommitJob, MessageMeta)>> = BTreeMap::new();
        let (mut intake_jobs, mut linked) = (Vec::new(), false);
        for job in batch {
            let mailbox = match &job.dest {
                Dest::Mailbox(m) => m.clone(),
                Dest::Intake => {
                    intake_jobs.push(job);
                    continue;
                }
            };
            let placed_here = self.place(&mailbox, &job).and_then(|meta| {
                if job.also_intake {
                    let path = self.mailboxes.msg_dir(&mailbox).join(meta.file_name());
                    if let Err(e) = link_into_intake(intake.as_deref(), &path) {
                        let _ = fs::remove_file(&path);
                        return Err(e);
                    }
                    linked = true;
                }
                Ok(meta)
            });
            match placed_here {
                Ok(meta) => placed.entry(mailbox).or_default().push((job, meta)),
                Err(e) => {
                    let _ = fs::remove_file(&job.tmp);
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        // The intake folder is synced while the mailbox folders are; a copy linked into it
        // is answered once both are durable.
        let synced = std::thread::scope(|scope| {
            let intake_sync = (linked || !intake_jobs.is_empty())
                .then(|| scope.spawn(|| commit_intake(intake.as_deref(), intake_jobs)));
            let synced = self.commit_placed(placed);
            let intake_ok = intake_sync.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("intake sync panicked")))
            });
            (synced, intake_ok)
        });
        let (synced, intake_ok) = synced;
        for (job, result) in synced {
            let result = match (&intake_ok, job.also_intake) {
                (Some(Err(e)), true) => {
                    Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string())))
                }
                _ => result,
            };
            let _ = job.reply.send(result);
        }
        if let (Some(Ok(())), Some(intake)) = (&intake_ok, &intake) {
            let _ = intake.notify.send(());
        }
    }

    /// Makes the placed messages durable (one folder sync per mailbox) and indexes them;
    /// returns each job with its answer.
    fn commit_placed(
        &mut self,
        placed: BTreeMap<MailboxId, Vec<(CommitJob, MessageMeta)>>,
    ) -> Vec<(CommitJob, Result<u32, SpoolError>)> {
        let mut out = Vec::new();
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
                self.totals.changed(mailbox.as_str());
                let _ = self.changes.send(mailbox.to_string());
            }
            for (job, meta) in jobs {
                let result = match &synced {
                    Ok(()) => Ok(meta.uid),
                    Err(e) => Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))),
                };
                out.push((job, result));
            }
        }
        out
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

/// `<unix>.<nanoseconds><random>.age`: sorting intake names is the order of arrival.
pub(crate) fn intake_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let random = crypto::random_hex128();
    format!(
        "{}.{:09}{}.age",
        now.as_secs(),
        now.subsec_nanos(),
        &random[..23]
    )
}

/// Links a placed mailbox file (sealed to the intake key too) into the intake folder; where
/// a link cannot be made, copies it there.
fn link_into_intake(intake: Option<&Intake>, path: &std::path::Path) -> Result<(), SpoolError> {
    let intake = intake.ok_or(SpoolError::ShuttingDown)?;
    let target = intake.dir.join(intake_name());
    if fs::hard_link(path, &target).is_ok() {
        return Ok(());
    }
    let tmp = intake
        .dir
        .join(format!(".copy-{}", crypto::random_hex128()));
    let copied = fs::copy(path, &tmp)
        .and_then(|_| fs::File::open(&tmp)?.sync_data())
        .and_then(|()| fs::rename(&tmp, &target));
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Moves separate intake copies into the intake folder and fsyncs it once (also for the
/// links made into it); answers the copies' deliveries and returns how the sync went.
pub(super) fn commit_intake(intake: Option<&Intake>, jobs: Vec<CommitJob>) -> io::Result<()> {
    let Some(intake) = intake else {
        for job in jobs {
            let _ = fs::remove_file(&job.tmp);
            let _ = job.reply.send(Err(SpoolError::ShuttingDown));
        }
        return Err(io::Error::other("the archive intake is off"));
    };
    let mut moved = Vec::new();
    for job in jobs {
        match fs::rename(&job.tmp, intake.dir.join(intake_name())) {
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
    synced
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
