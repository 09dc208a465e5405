//! A gateway mailbox in the cluster as a [`MailStore`], for POP3 and IMAP on any node: the
//! same single `INBOX` as the local spool's, read from the object store. Message bodies are
//! fetched per open (small ones into memory, large ones through an unlinked temp file, so
//! memory stays bounded).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{Cursor, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::inbox::{InboxError, Numbered};
use super::Cluster;
use crate::crypto::Identity;
use crate::mailbox::MailboxRecord;
use crate::message::{FlagOp, Flags, MessageMeta};
use crate::spool::{inbox_folder, key_is_current, Collection, Collector};
use crate::store::{ChangeKey, FlagUpdate, FolderInfo, MailStore, MessageReader, StoreError};

/// Messages up to this size are fetched into memory; larger ones through a temp file.
const IN_MEMORY: u64 = 1024 * 1024;
/// Reading a message also fetches the next ones (in UID order, small ones), in parallel,
/// up to this many bytes: a store answers each GET in tens of milliseconds, and an archiver
/// reads messages one after another.
const READ_AHEAD_BYTES: u64 = 8 * 1024 * 1024;
const READ_AHEAD_COUNT: usize = 32;

pub struct ClusterStore {
    cluster: Arc<Cluster>,
    record: MailboxRecord,
    identity: Identity,
    collection: Collection,
    /// Where large messages are fetched to (unlinked at once).
    tmp_dir: PathBuf,
    /// UID → (object, stored size), from the last listing, in UID order.
    keys: Mutex<BTreeMap<u32, (String, u64)>>,
    /// Messages fetched ahead (sealed bytes), taken by `open`.
    ahead: Mutex<HashMap<u32, bytes::Bytes>>,
}

impl From<InboxError> for StoreError {
    fn from(e: InboxError) -> Self {
        StoreError::unavailable(e)
    }
}

impl ClusterStore {
    pub fn new(
        cluster: Arc<Cluster>,
        record: MailboxRecord,
        identity: Identity,
        session: Collector,
        tmp_dir: PathBuf,
    ) -> ClusterStore {
        ClusterStore {
            cluster,
            collection: Collection::new(&record.id, session),
            record,
            identity,
            tmp_dir,
            keys: Mutex::default(),
            ahead: Mutex::default(),
        }
    }

    fn inbox(&self) -> super::Inbox<'_> {
        self.cluster
            .inbox(&self.record.id, self.record.key_generation)
    }

    /// The numbered messages with their flags, remembering where each one is.
    fn listing(&self) -> Result<(Vec<Numbered>, u32), StoreError> {
        let inbox = self.inbox();
        let listing = inbox.list()?;
        let doc = inbox.flag_doc()?;
        let mut keys = self.keys.lock().unwrap();
        keys.clear();
        let messages = listing
            .messages
            .into_iter()
            .map(|mut m| {
                if let Some(&(bits, modseq)) = doc.flags.get(&m.meta.uid) {
                    m.meta.flags = Flags(bits);
                    m.meta.modseq = modseq;
                }
                let stored = m.meta.size + u64::from(m.meta.envelope_len);
                keys.insert(m.meta.uid, (m.key.clone(), stored));
                m
            })
            .collect();
        Ok((messages, listing.uid_next))
    }

    /// A small message's sealed bytes: fetched ahead already, or fetched now together with
    /// the next small ones.
    fn small(&self, uid: u32, key: &str) -> Result<bytes::Bytes, StoreError> {
        if let Some(bytes) = self.ahead.lock().unwrap().remove(&uid) {
            return Ok(bytes);
        }
        let mut wanted = vec![(uid, key.to_owned())];
        {
            let keys = self.keys.lock().unwrap();
            let ahead = self.ahead.lock().unwrap();
            let mut budget = READ_AHEAD_BYTES;
            for (&next, (next_key, stored)) in keys.range(uid + 1..) {
                if wanted.len() > READ_AHEAD_COUNT || *stored > IN_MEMORY || *stored > budget {
                    break;
                }
                if !ahead.contains_key(&next) {
                    budget -= stored;
                    wanted.push((next, next_key.clone()));
                }
            }
        }
        let keys: Vec<String> = wanted.iter().map(|(_, k)| k.clone()).collect();
        let mut fetched = match self.cluster.blobs.get_many(&keys) {
            Ok(all) => all.into_iter(),
            // One of the others may be gone (expunged by another node): this one alone.
            Err(_) => return self.cluster.blobs.get(key).map_err(missing),
        };
        let first = fetched.next().ok_or(StoreError::NoSuchMessage)?;
        let mut ahead = self.ahead.lock().unwrap();
        for ((next, _), bytes) in wanted.into_iter().skip(1).zip(fetched) {
            ahead.insert(next, bytes);
        }
        Ok(first)
    }

    fn present(&self, uids: &[u32]) -> Result<Vec<Numbered>, StoreError> {
        let (messages, _) = self.listing()?;
        Ok(messages
            .into_iter()
            .filter(|m| uids.contains(&m.meta.uid))
            .collect())
    }
}

fn missing(e: super::BlobError) -> StoreError {
    match e {
        super::BlobError::NotFound => StoreError::NoSuchMessage,
        e => StoreError::unavailable(e),
    }
}

impl MailStore for ClusterStore {
    fn folders(&self) -> Vec<FolderInfo> {
        vec![inbox_folder(&self.record)]
    }

    fn list(&self, _folder: &FolderInfo) -> Result<Vec<MessageMeta>, StoreError> {
        Ok(self.listing()?.0.into_iter().map(|m| m.meta).collect())
    }

    fn numbers(&self, _folder: &FolderInfo) -> Result<(u32, u32), StoreError> {
        Ok((self.record.uidvalidity, self.listing()?.1))
    }

    fn open(&self, _folder: &FolderInfo, meta: &MessageMeta) -> Result<MessageReader, StoreError> {
        let key = self.keys.lock().unwrap().get(&meta.uid).cloned();
        let (key, _) = match key {
            Some(k) => k,
            None => {
                self.listing()?;
                let keys = self.keys.lock().unwrap();
                keys.get(&meta.uid)
                    .cloned()
                    .ok_or(StoreError::NoSuchMessage)?
            }
        };
        if meta.size + u64::from(meta.envelope_len) <= IN_MEMORY {
            let bytes = self.small(meta.uid, &key)?;
            let reader = crate::spool::unseal(&self.identity, Cursor::new(bytes), meta)?;
            return Ok(Box::new(reader));
        }
        let blobs = &self.cluster.blobs;
        let path = self
            .tmp_dir
            .join(format!("{}.fetch", crate::crypto::random_hex128()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(StoreError::unavailable)?;
        let _ = std::fs::remove_file(&path);
        let copy = file.try_clone().map_err(StoreError::unavailable)?;
        blobs.get_to(&key, copy).map_err(missing)?;
        file.rewind().map_err(StoreError::unavailable)?;
        let reader = crate::spool::unseal(&self.identity, file, meta)?;
        Ok(Box::new(reader))
    }

    fn set_flags(
        &self,
        _folder: &FolderInfo,
        uids: &[u32],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, StoreError> {
        let present: Vec<MessageMeta> = self.present(uids)?.into_iter().map(|m| m.meta).collect();
        let update = self.inbox().set_flags(&present, op, unchanged_since)?;
        self.cluster.changed(&self.record.id);
        Ok(update)
    }

    fn keywords(&self, _folder: &FolderInfo) -> Vec<String> {
        self.inbox()
            .flag_doc()
            .map(|d| d.keywords)
            .unwrap_or_else(|e| {
                tracing::warn!(mailbox = %self.record.id, error = %e, "cannot read the keywords");
                Vec::new()
            })
    }

    fn define_keywords(
        &self,
        _folder: &FolderInfo,
        names: &[String],
    ) -> Result<Option<Flags>, StoreError> {
        Ok(self.inbox().define_keywords(names)?)
    }

    fn highest_modseq(&self, _folder: &FolderInfo) -> Result<u64, StoreError> {
        let doc = self.inbox().flag_doc()?;
        Ok(doc.modseq.max(1))
    }

    fn expunge(&self, _folder: &FolderInfo, uids: &[u32]) -> Result<(), StoreError> {
        let doomed = self.present(uids)?;
        self.inbox().expunge(&doomed)?;
        let mut ahead = self.ahead.lock().unwrap();
        for m in &doomed {
            ahead.remove(&m.meta.uid);
        }
        drop(ahead);
        self.cluster.changed(&self.record.id);
        self.collection.deleted(doomed.len());
        Ok(())
    }

    fn fetched(&self, _folder: &FolderInfo, uids: &[u32]) {
        self.collection.fetched(uids.len());
    }

    fn watch(&self) -> broadcast::Receiver<ChangeKey> {
        self.cluster.subscribe()
    }

    fn change_key(&self, _folder: &FolderInfo) -> ChangeKey {
        self.record.id.to_string()
    }

    fn still_valid(&self) -> bool {
        key_is_current(&self.cluster.mailboxes, &self.record)
    }
}
