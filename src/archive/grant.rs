//! Grants: making every item a user is entitled to readable by that user's current key.
//!
//! An auditor is entitled to every item; a user to the items filed in their own folders (and
//! the copies linked to them). The file keys are unwrapped with what the operator brings
//! (the recovery key, or an auditor's unwrapped key) and wrapped again for the user: only
//! the item file's header changes ([`crate::crypto::rewrap`]), never the sealed body.
//!
//! Work goes in batches: the new files are written beside the items, flushed to disk
//! (`syncfs`), renamed over the old ones, the directory synced, and then the item records
//! gain the user's key in one commit. A grant killed at any point loses nothing (an item file
//! is replaced only by a durable copy that every old reader still opens) and is resumed by
//! running it again: items already readable are skipped. The worker does not file while a
//! batch is in flight (`Archive::filing`), so the two never rewrite one file at once.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;

use serde::Serialize;

use super::store::{Batch, Item};
use super::users::UserRecord;
use super::{Archive, ArchiveError};
use crate::crypto::{self, rewrap, Identity};
use crate::fsutil;

/// Items re-wrapped per durable commit.
const BATCH: usize = 256;

/// What a grant did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct GrantReport {
    /// Items the user is entitled to.
    pub entitled: u64,
    /// Items made readable now.
    pub granted: u64,
    /// Items the user could already read.
    pub already: u64,
    /// Items none of the given keys opens (sealed before a recovery key existed, and to no
    /// auditor whose key was given).
    pub unreachable: u64,
}

impl Archive {
    /// Makes every item `user` is entitled to readable by the user's current key, opening
    /// file keys with `unlock`. `progress(done, total)` is called after each batch.
    pub fn grant(
        &self,
        user: &UserRecord,
        unlock: &[Identity],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GrantReport, ArchiveError> {
        let entitled = self.entitled(user)?;
        let target = user.public_key.clone();
        let have = self.store.readable(&target)?;
        let mut openable = std::collections::HashSet::new();
        for identity in unlock {
            openable.extend(self.store.readable(&identity.to_public().to_string())?);
        }
        let mut report = GrantReport {
            entitled: entitled.len() as u64,
            ..GrantReport::default()
        };
        let mut todo = Vec::new();
        for id in entitled {
            if have.contains(&id) {
                report.already += 1;
            } else if openable.contains(&id) {
                todo.push(id);
            } else {
                report.unreachable += 1;
            }
        }
        let recipient = crypto::parse_recipient(&target)?;
        let total = todo.len() as u64;
        progress(0, total);
        for chunk in todo.chunks(BATCH) {
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            report.granted += self.grant_batch(chunk, unlock, &recipient, &target)?;
            progress(report.granted, total);
        }
        if report.granted > 0 {
            for folder in self.folders_for(user) {
                self.spool.notify_change(super::change_key(&folder.key));
            }
        }
        tracing::info!(user = %user.id, granted = report.granted, already = report.already,
            unreachable = report.unreachable, "archive grant");
        Ok(report)
    }

    /// Item IDs `user` is entitled to, ascending.
    fn entitled(&self, user: &UserRecord) -> Result<BTreeSet<u64>, ArchiveError> {
        if user.auditor {
            return Ok(self.store.item_ids()?.into_iter().collect());
        }
        let mut out = BTreeSet::new();
        for folder in self.folders_for(user) {
            for entry in self.store.entries(&folder.key)? {
                if out.insert(entry.item) {
                    if let Some(item) = self.store.item(entry.item)? {
                        out.extend(item.linked);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Re-wraps one batch durably; returns how many items were granted.
    fn grant_batch(
        &self,
        ids: &[u64],
        unlock: &[Identity],
        recipient: &crypto::Recipient,
        target: &str,
    ) -> Result<u64, ArchiveError> {
        let _filing = self.filing.lock().unwrap_or_else(|e| e.into_inner());
        let mut written: Vec<(u64, Item, std::path::PathBuf)> = Vec::new();
        let result = (|| {
            for &id in ids {
                // Re-read under the lock: retention or the worker may have changed it.
                let Some(mut item) = self.store.item(id)? else {
                    continue;
                };
                if item.keys.iter().any(|k| k == target) {
                    continue;
                }
                let tmp = self.tmp_dir.join(format!("grant-{id}.tmp"));
                match self.rewrap_item(id, &tmp, unlock, recipient) {
                    Ok(()) => {}
                    Err(ArchiveError::NoSuchMessage) => continue,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
                item.keys.push(target.to_owned());
                written.push((id, item, tmp));
            }
            if written.is_empty() {
                return Ok(0);
            }
            flush_to_disk(&self.tmp_dir, written.iter().map(|(_, _, p)| p.as_path()))?;
            for (id, _, tmp) in &written {
                fs::rename(tmp, self.item_path(*id))?;
            }
            fsutil::sync_dir(&self.items_dir)?;
            let count = written.len() as u64;
            self.store.apply(Batch {
                items: written.drain(..).map(|(id, item, _)| (id, item)).collect(),
                ..Batch::default()
            })?;
            Ok(count)
        })();
        for (_, _, tmp) in &written {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    /// Writes item `id` with a stanza for `recipient` added to `tmp` (not yet synced).
    fn rewrap_item(
        &self,
        id: u64,
        tmp: &std::path::Path,
        unlock: &[Identity],
        recipient: &crypto::Recipient,
    ) -> Result<(), ArchiveError> {
        let file = match File::open(self.item_path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArchiveError::NoSuchMessage)
            }
            Err(e) => return Err(e.into()),
        };
        let mut input = BufReader::with_capacity(64 << 10, file);
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        let mut out = BufWriter::with_capacity(64 << 10, out);
        rewrap::add_recipients(
            &mut input,
            unlock,
            std::slice::from_ref(recipient),
            &mut out,
        )?;
        out.flush()?;
        Ok(())
    }
}

/// Makes the files' data durable: one `syncfs` for the whole batch, or an fsync per file
/// where the file system refuses that.
fn flush_to_disk<'a>(
    dir: &std::path::Path,
    files: impl Iterator<Item = &'a std::path::Path>,
) -> io::Result<()> {
    let handle = File::open(dir)?;
    if rustix::fs::syncfs(&handle).is_ok() {
        return Ok(());
    }
    for path in files {
        File::open(path)?.sync_data()?;
    }
    Ok(())
}
