//! The message index (redb): per-mailbox lists of UIDs with sizes and dates.
//!
//! The index is a cache. The spool files are the truth, so index commits need not be durable
//! on their own: at start, and on `rebuild-index`, the index is reconciled with the spool.
//! A missing, corrupt or stale index is rebuilt, never fatal.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::mailbox::MailboxId;
use crate::message::{Flags, MessageMeta};

/// (mailbox id, uid) -> (size, received unix time, envelope length, flags)
const MESSAGES: TableDefinition<(&str, u32), Value> = TableDefinition::new("messages-v2");

type Value = (u64, i64, u32, u8);

fn value(m: &MessageMeta) -> Value {
    (m.size, m.received, m.envelope_len, m.flags.0)
}

fn meta(uid: u32, (size, received, envelope_len, flags): Value) -> MessageMeta {
    MessageMeta {
        uid,
        size,
        received,
        envelope_len,
        flags: Flags(flags),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the index {0} is in use by another journalgate process")]
    Locked(PathBuf),
    #[error("index error: {0}")]
    Db(Box<redb::Error>),
}

fn db_err<E: Into<redb::Error>>(e: E) -> IndexError {
    IndexError::Db(Box::new(e.into()))
}

/// redb frees the pages of non-durable commits only at the next durable one, so one commit in
/// this interval is made durable; without it the file grew to 270 MB for 15,000 entries.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Page cache; the index is small and mostly read in mailbox-sized ranges.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

pub struct Index {
    db: Database,
    last_durable: Mutex<Instant>,
}

impl Index {
    /// Opens the index, recreating it when it is damaged. Fails only when another process has it.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        match Self::try_open(path) {
            Ok(index) => Ok(index),
            Err(IndexError::Locked(p)) => Err(IndexError::Locked(p)),
            Err(e) => {
                tracing::warn!(error = %e, "index unreadable; recreating it from the spool");
                let _ = std::fs::remove_file(path);
                Self::try_open(path)
            }
        }
    }

    fn try_open(path: &Path) -> Result<Index, IndexError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => IndexError::Locked(path.to_owned()),
                other => db_err(other),
            })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(MESSAGES).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Index {
            db,
            last_durable: Mutex::new(Instant::now()),
        })
    }

    /// Records new messages (not durable by itself; the spool is).
    pub fn insert(&self, entries: &[(MailboxId, MessageMeta)]) -> Result<(), IndexError> {
        self.write(|table| {
            for (id, m) in entries {
                table
                    .insert((id.as_str(), m.uid), value(m))
                    .map_err(db_err)?;
            }
            Ok(())
        })
    }

    pub fn remove(&self, id: &MailboxId, uids: &[u32]) -> Result<(), IndexError> {
        self.write(|table| {
            for uid in uids {
                table.remove((id.as_str(), *uid)).map_err(db_err)?;
            }
            Ok(())
        })
    }

    /// The messages of one mailbox in UID order.
    pub fn list(&self, id: &MailboxId) -> Result<Vec<MessageMeta>, IndexError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MESSAGES).map_err(db_err)?;
        let range = table
            .range((id.as_str(), 0)..=(id.as_str(), u32::MAX))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(db_err)?;
            out.push(meta(k.value().1, v.value()));
        }
        Ok(out)
    }

    /// Mailbox IDs present in the index.
    pub fn mailboxes(&self) -> Result<Vec<String>, IndexError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MESSAGES).map_err(db_err)?;
        let mut out: Vec<String> = Vec::new();
        for item in table.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let id = k.value().0;
            if out.last().map(String::as_str) != Some(id) {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// Replaces a mailbox's entries with `messages` (what the spool holds). Returns
    /// (added, removed) counts.
    pub fn replace(
        &self,
        id: &str,
        messages: &[MessageMeta],
    ) -> Result<(usize, usize), IndexError> {
        let mut added = 0;
        let mut removed = 0;
        self.write(|table| {
            let mut existing = Vec::new();
            for item in table.range((id, 0)..=(id, u32::MAX)).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                existing.push((k.value().1, v.value()));
            }
            let wanted: std::collections::HashMap<u32, Value> =
                messages.iter().map(|m| (m.uid, value(m))).collect();
            for (uid, v) in &existing {
                if wanted.get(uid) != Some(v) {
                    table.remove((id, *uid)).map_err(db_err)?;
                    removed += 1;
                }
            }
            let have: std::collections::HashMap<u32, Value> = existing.into_iter().collect();
            for (uid, v) in &wanted {
                if have.get(uid) != Some(v) {
                    table.insert((id, *uid), *v).map_err(db_err)?;
                    added += 1;
                }
            }
            Ok(())
        })?;
        Ok((added, removed))
    }

    /// One message by UID.
    pub fn get(&self, id: &MailboxId, uid: u32) -> Result<Option<MessageMeta>, IndexError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MESSAGES).map_err(db_err)?;
        let found = table.get((id.as_str(), uid)).map_err(db_err)?;
        Ok(found.map(|v| meta(uid, v.value())))
    }

    pub fn message_count(&self) -> Result<u64, IndexError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MESSAGES).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    /// Makes everything written so far durable (used at clean shutdown, so the next start
    /// has little to reconcile).
    pub fn flush(&self) -> Result<(), IndexError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<(&str, u32), Value>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        let mut last = self.last_durable.lock().unwrap();
        if last.elapsed() < DURABLE_EVERY {
            txn.set_durability(Durability::None);
        } else {
            *last = Instant::now();
        }
        {
            let mut table = txn.open_table(MESSAGES).map_err(db_err)?;
            f(&mut table)?;
        }
        txn.commit().map_err(db_err)
    }
}
