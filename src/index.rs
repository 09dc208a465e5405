//! The message index (redb): per-mailbox lists of UIDs with sizes and dates.
//!
//! The index is a cache. The spool files are the truth, so index commits need not be durable
//! on their own: at start, and on `rebuild-index`, the index is reconciled with the spool.
//! A missing, corrupt or stale index is rebuilt, never fatal.
//!
//! After a failed write (a full disk) redb refuses every further call until the database is
//! opened again, so each call that fails reopens it once and retries; while it cannot be
//! opened, calls fail fast and the spool answers from its files (see `spool`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::mailbox::MailboxId;
use crate::message::{Flags, MessageMeta};

/// (mailbox id, uid) -> (size, received unix time, envelope length, flags, modseq)
const MESSAGES: TableDefinition<(&str, u32), Value> = TableDefinition::new("messages-v3");
/// The table of earlier versions (flags as one byte, no modseq), dropped at open.
const MESSAGES_V2: TableDefinition<(&str, u32), (u64, i64, u32, u8)> =
    TableDefinition::new("messages-v2");

type Value = (u64, i64, u32, u32, u64);

/// The stored value; a message without a modseq gets a fresh one.
fn value(m: &MessageMeta) -> Value {
    let modseq = match m.modseq {
        0 => crate::message::next_modseq(),
        n => n,
    };
    (m.size, m.received, m.envelope_len, m.flags.0, modseq)
}

/// What the spool files say of a message (everything but the modseq).
fn same_file(a: &Value, b: &Value) -> bool {
    (a.0, a.1, a.2, a.3) == (b.0, b.1, b.2, b.3)
}

fn meta(uid: u32, (size, received, envelope_len, flags, modseq): Value) -> MessageMeta {
    MessageMeta {
        uid,
        size,
        received,
        envelope_len,
        flags: Flags(flags),
        modseq,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the index {0} is in use by another journalgate process")]
    Locked(PathBuf),
    #[error("index error: {0}")]
    Db(Box<redb::Error>),
    #[error("the index is not open (it could not be reopened after an error)")]
    Closed,
}

fn db_err<E: Into<redb::Error>>(e: E) -> IndexError {
    IndexError::Db(Box::new(e.into()))
}

/// redb frees the pages of non-durable commits only at the next durable one, so one commit in
/// this interval is made durable; without it the file grew to 270 MB for 15,000 entries.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Page cache; the index is small and mostly read in mailbox-sized ranges.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// How often a closed index is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

pub struct Index {
    path: PathBuf,
    db: RwLock<Option<Database>>,
    last_durable: Mutex<Instant>,
    /// When the last reopen was tried.
    last_reopen: Mutex<Option<Instant>>,
    /// Incremented by every reopen: redb drops the commits that were not yet durable when
    /// it is reopened, so entries read before a reopen must be checked against the spool.
    generation: std::sync::atomic::AtomicU64,
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
        Ok(Index {
            path: path.to_owned(),
            db: RwLock::new(Some(Self::open_db(path)?)),
            last_durable: Mutex::new(Instant::now()),
            last_reopen: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn open_db(path: &Path) -> Result<Database, IndexError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => IndexError::Locked(path.to_owned()),
                other => db_err(other),
            })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(MESSAGES).map_err(db_err)?;
        txn.delete_table(MESSAGES_V2).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(db)
    }

    /// Runs `f` on the database; after an error, reopens it once and runs `f` again.
    fn with<T>(&self, f: impl Fn(&Database) -> Result<T, IndexError>) -> Result<T, IndexError> {
        let first = match self.db.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(db) => f(db),
            None => Err(IndexError::Closed),
        };
        let Err(error) = first else {
            return first;
        };
        if !self.reopen(&error) {
            return Err(error);
        }
        match self.db.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(db) => f(db),
            None => Err(error),
        }
    }

    /// Closes and opens the database again (at most once per [`REOPEN_EVERY`]); true when
    /// it is open afterwards.
    fn reopen(&self, error: &IndexError) -> bool {
        {
            let mut last = self.last_reopen.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must be gone before the file can be opened again; whatever it had
        // not made durable is gone with it.
        db.take();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match Self::open_db(&self.path) {
            Ok(new) => {
                tracing::info!(after = %error, "index reopened");
                *db = Some(new);
                true
            }
            Err(e) => {
                tracing::warn!(after = %error, error = %e, "index cannot be reopened yet");
                false
            }
        }
    }

    /// Changes whenever the index may have lost entries (a reopen).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
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
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
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
        })
    }

    /// Mailbox IDs present in the index.
    pub fn mailboxes(&self) -> Result<Vec<String>, IndexError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
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
        })
    }

    /// Replaces a mailbox's entries with `messages` (what the spool holds), keeping the
    /// modseq of entries that match. Returns (added, removed) counts.
    pub fn replace(
        &self,
        id: &str,
        messages: &[MessageMeta],
    ) -> Result<(usize, usize), IndexError> {
        let wanted: std::collections::HashMap<u32, Value> = messages
            .iter()
            .map(|m| {
                (
                    m.uid,
                    (m.size, m.received, m.envelope_len, m.flags.0, m.modseq),
                )
            })
            .collect();
        let counts = std::cell::Cell::new((0, 0));
        self.write(|table| {
            let (mut added, mut removed) = (0, 0);
            let mut existing = Vec::new();
            for item in table.range((id, 0)..=(id, u32::MAX)).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                existing.push((k.value().1, v.value()));
            }
            for (uid, v) in &existing {
                if !wanted.get(uid).is_some_and(|w| same_file(w, v)) {
                    table.remove((id, *uid)).map_err(db_err)?;
                    removed += 1;
                }
            }
            let have: std::collections::HashMap<u32, Value> = existing.into_iter().collect();
            for (uid, w) in &wanted {
                if !have.get(uid).is_some_and(|h| same_file(w, h)) {
                    let fresh = (w.0, w.1, w.2, w.3, crate::message::next_modseq());
                    table.insert((id, *uid), fresh).map_err(db_err)?;
                    added += 1;
                }
            }
            counts.set((added, removed));
            Ok(())
        })?;
        Ok(counts.get())
    }

    /// One message by UID.
    pub fn get(&self, id: &MailboxId, uid: u32) -> Result<Option<MessageMeta>, IndexError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(MESSAGES).map_err(db_err)?;
            let found = table.get((id.as_str(), uid)).map_err(db_err)?;
            Ok(found.map(|v| meta(uid, v.value())))
        })
    }

    pub fn message_count(&self) -> Result<u64, IndexError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(MESSAGES).map_err(db_err)?;
            table.len().map_err(db_err)
        })
    }

    /// Makes everything written so far durable (used at clean shutdown, so the next start
    /// has little to reconcile).
    pub fn flush(&self) -> Result<(), IndexError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }

    fn write(
        &self,
        f: impl Fn(&mut redb::Table<(&str, u32), Value>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.with(|db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            {
                let mut last = self.last_durable.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() < DURABLE_EVERY {
                    txn.set_durability(Durability::None);
                } else {
                    *last = Instant::now();
                }
            }
            {
                let mut table = txn.open_table(MESSAGES).map_err(db_err)?;
                f(&mut table)?;
            }
            txn.commit().map_err(db_err)
        })
    }
}
