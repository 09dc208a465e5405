//! One message being received: kept in memory while small, streamed to sealed temp files
//! (one per target mailbox, plus the archive intake copy) once large; `commit` fdatasyncs every
//! copy in parallel and hands them to the committer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{CommitJob, Dest, SealTo, Spool, SpoolError, ENVELOPE_MAGIC, SPILL_THRESHOLD};
use crate::crypto;
use crate::mailbox::MailboxId;
use crate::message::{Envelope, Flags, MessageMeta};

pub(super) fn envelope_line(envelope: &Envelope) -> Vec<u8> {
    let mut line = ENVELOPE_MAGIC.to_vec();
    serde_json::to_writer(&mut line, envelope).expect("envelope serializes");
    line.push(b'\n');
    line
}

/// A message being received for one or more mailboxes. Dropping it without
/// [`Delivery::commit`] removes its temp files.
pub struct Delivery {
    pub(super) spool: Arc<Spool>,
    pub(super) sinks: Vec<Sink>,
    pub(super) buffer: Vec<u8>,
    pub(super) size: u64,
    pub(super) failed: Option<SpoolError>,
}

pub(super) struct Sink {
    pub(super) dest: Dest,
    pub(super) recipient: SealTo,
    /// Also sealed to this (the intake key, when the copy is linked into the intake).
    pub(super) also: Option<SealTo>,
    pub(super) received: i64,
    pub(super) envelope_line: Vec<u8>,
    pub(super) file: Option<(PathBuf, age::stream::StreamWriter<BufWriter<File>>)>,
}

impl Sink {
    fn open(&mut self, tmp_dir: &Path) -> Result<(), SpoolError> {
        let path = tmp_dir.join(format!("{}.tmp", crypto::random_hex128()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut recipients: Vec<&dyn age::Recipient> = vec![&*self.recipient];
        recipients.extend(self.also.as_deref().map(|r| r as &dyn age::Recipient));
        let mut writer =
            crypto::seal_to_all(&recipients, BufWriter::with_capacity(64 * 1024, file))?;
        let result = writer.write_all(&self.envelope_line);
        self.file = Some((path, writer));
        result.map_err(SpoolError::from)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let (_, writer) = self.file.as_mut().expect("sink opened");
        writer.write_all(bytes).map_err(SpoolError::from)
    }

    /// Finishes the age stream and, when `sync`, makes the temp file durable (a copy that
    /// goes to the cluster's object store is made durable there instead).
    fn finish(&mut self, sync: bool) -> Result<PathBuf, SpoolError> {
        let (path, writer) = self.file.take().expect("sink opened");
        let result = (|| {
            let buffered = writer.finish()?;
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            if sync {
                file.sync_data()?;
            }
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
        let remote = spool.remote().is_some();
        // Seal, write and fdatasync every copy off the async threads; several copies (a
        // mailbox and the archive intake) are synced in parallel, so they cost one wait.
        let finished = tokio::task::spawn_blocking(move || {
            let finish = |sink: &mut Sink| -> Result<PathBuf, SpoolError> {
                if sink.file.is_none() {
                    sink.open(&tmp_dir)?;
                }
                sink.write(&buffer)?;
                sink.finish(!remote)
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
                    Ok(path) => done.push((
                        sink.dest.clone(),
                        path,
                        sink.envelope_line.len(),
                        sink.also.is_some(),
                    )),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                for (_, path, _, _) in &done {
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
        let mut uids = Vec::new();
        let mut finished = finished.into_iter();
        while let Some((dest, tmp, envelope_len, also_intake)) = finished.next() {
            let meta = MessageMeta {
                uid: 0,
                size,
                received,
                envelope_len: envelope_len as u32,
                flags: Flags::default(),
                modseq: 0,
            };
            if let Some(remote) = spool.remote().cloned() {
                if let Dest::Mailbox(mailbox) = &dest {
                    uids.push((mailbox.clone(), 0));
                }
                let done = tokio::task::spawn_blocking(move || {
                    let result = match &dest {
                        Dest::Mailbox(mailbox) => remote.deliver(mailbox, &tmp, &meta),
                        Dest::Intake => remote.deliver_intake(&tmp, &super::intake_name()),
                    };
                    let _ = fs::remove_file(&tmp);
                    result
                })
                .await;
                if let Err(e) = done.map_err(|e| SpoolError::Io(io::Error::other(e)))? {
                    for (_, tmp, _, _) in finished {
                        let _ = fs::remove_file(tmp);
                    }
                    return Err(e);
                }
                continue;
            }
            let (reply, wait) = oneshot::channel();
            let job = CommitJob {
                dest: dest.clone(),
                tmp: tmp.clone(),
                meta,
                also_intake,
                reply,
            };
            if let Err(e) = spool.submit(job) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            waits.push((dest, wait));
        }
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
