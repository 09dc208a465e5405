//! Flags of gateway-mailbox messages: STORE changes applied to the flags as they are on disk
//! (so two sessions never overwrite each other's changes), RFC 7162 UNCHANGEDSINCE, the
//! folder's keyword table (slot `k` is file-name letter `a + k`; names in
//! `<mailbox>/keywords`, one per line, replaced atomically) and the highest modseq.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use super::{Spool, SpoolError};
use crate::fsutil;
use crate::mailbox::MailboxId;
use crate::message::{FlagOp, Flags, MessageMeta, MAX_KEYWORDS};
use crate::store::FlagUpdate;

const KEYWORDS_FILE: &str = "keywords";

impl Spool {
    /// Applies `op` to the flags of messages (by UID) as they are now; messages whose
    /// modseq is above `unchanged_since` are left alone and listed as refused. Messages that
    /// no longer exist are skipped. The rename is not fsync'd: a flag change lost in a crash
    /// is harmless, and the next change of the folder makes it durable.
    pub fn set_flags(
        &self,
        id: &MailboxId,
        uids: &[u32],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, SpoolError> {
        let _guard = self.edits.lock().unwrap();
        let dir = self.mailboxes.msg_dir(id);
        let mut result = FlagUpdate::default();
        let found: HashMap<u32, MessageMeta> = self
            .find(id, uids)?
            .into_iter()
            .map(|m| (m.uid, m))
            .collect();
        let mut changed = Vec::new();
        for uid in uids {
            let Some(&meta) = found.get(uid) else {
                continue;
            };
            if unchanged_since.is_some_and(|since| meta.modseq > since) {
                result.refused.push(meta.uid);
                continue;
            }
            let flags = op.apply(meta.flags);
            if flags == meta.flags {
                result.updated.push(meta);
                continue;
            }
            let new = MessageMeta {
                flags,
                modseq: crate::message::next_modseq(),
                ..meta
            };
            match fs::rename(dir.join(meta.file_name()), dir.join(new.file_name())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            result.updated.push(new);
            changed.push((id.clone(), new));
        }
        if let Err(e) = self.index.insert(&changed) {
            self.mark_stale(id, &e);
        }
        if !changed.is_empty() {
            let _ = self.changes.send(id.to_string());
        }
        Ok(result)
    }

    /// The keyword names of a mailbox, by slot.
    pub fn keywords(&self, id: &MailboxId) -> Result<Vec<String>, SpoolError> {
        Ok(load(&self.mailboxes.dir(id))?)
    }

    /// The flags of these keyword names, giving new names a free slot (durably, before any
    /// file carries its letter). Names compare case-insensitively. `Ok(None)` when the table
    /// has no room left for a new name.
    pub fn define_keywords(
        &self,
        id: &MailboxId,
        names: &[String],
    ) -> Result<Option<Flags>, SpoolError> {
        let _guard = self.edits.lock().unwrap();
        let dir = self.mailboxes.dir(id);
        let mut table = load(&dir)?;
        let before = table.len();
        let mut flags = Flags::default();
        for name in names {
            let slot = match table.iter().position(|k| k.eq_ignore_ascii_case(name)) {
                Some(slot) => slot,
                None if table.len() < MAX_KEYWORDS => {
                    table.push(name.clone());
                    table.len() - 1
                }
                None => return Ok(None),
            };
            flags = flags.with(Flags::keyword(slot));
        }
        if table.len() > before {
            let mut text = table.join("\n");
            text.push('\n');
            fsutil::write_atomic(&dir.join(KEYWORDS_FILE), text.as_bytes(), 0o600)?;
        }
        Ok(Some(flags))
    }

    /// RFC 7162 HIGHESTMODSEQ of a mailbox: its newest change, an expunge included.
    pub fn highest_modseq(&self, id: &MailboxId) -> Result<u64, SpoolError> {
        let newest = self.list(id)?.iter().map(|m| m.modseq).max().unwrap_or(0);
        let expunged = self
            .expunged
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(self.started);
        Ok(newest.max(expunged))
    }

    /// Notes an expunge for [`Spool::highest_modseq`].
    pub(super) fn note_expunge(&self, id: &MailboxId) {
        let modseq = crate::message::next_modseq();
        self.expunged.lock().unwrap().insert(id.clone(), modseq);
    }
}

/// The keyword table in `dir` (empty when there is none yet).
fn load(dir: &Path) -> io::Result<Vec<String>> {
    match fs::read_to_string(dir.join(KEYWORDS_FILE)) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(MAX_KEYWORDS)
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_table_roundtrip() {
        let dir = std::env::temp_dir().join(format!("jg-kw-{}", crate::crypto::random_hex128()));
        fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_empty());
        fs::write(dir.join(KEYWORDS_FILE), "$Hello\n\n$World\n").unwrap();
        assert_eq!(load(&dir).unwrap(), vec!["$Hello", "$World"]);
        fs::remove_dir_all(dir).unwrap();
    }
}
