//! A gateway mailbox as a [`MailStore`]: one folder, `INBOX`, that the archiver reads, flags
//! and expunges; opened with the mailbox key unwrapped at login. Also what every gateway
//! mailbox store shares (the cluster's `ClusterStore` too): the folder, the key check and the
//! collection bookkeeping ([`Collection`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Spool, SpoolError};
use crate::crypto::Identity;
use crate::mailbox::MailboxRecord;
use crate::message::{FlagOp, Flags, MessageMeta};
use crate::store::{ChangeKey, FlagUpdate, FolderInfo, MailStore, MessageReader, StoreError};
use crate::telemetry::Telemetry;

pub struct GatewayStore {
    spool: Arc<Spool>,
    record: MailboxRecord,
    identity: Identity,
    collection: Collection,
}

/// Who collects: recorded as the mailbox's last collection, and in the activity stream.
pub struct Collector {
    pub protocol: &'static str,
    pub client: IpAddr,
    pub telemetry: Arc<Telemetry>,
}

/// A collecting session's bookkeeping, for every gateway-mailbox store (local or cluster):
/// each download and deletion goes to the activity stream, and one "collection" event for
/// everything downloaded when the session ends.
pub struct Collection {
    mailbox: String,
    session: Collector,
    /// Messages downloaded in this session.
    collected: AtomicUsize,
}

impl Collection {
    pub fn new(mailbox: &crate::mailbox::MailboxId, session: Collector) -> Collection {
        Collection {
            mailbox: mailbox.to_string(),
            session,
            collected: AtomicUsize::new(0),
        }
    }

    pub fn fetched(&self, n: usize) {
        self.collected.fetch_add(n, Ordering::Relaxed);
        let s = &self.session;
        s.telemetry
            .collected(&self.mailbox, s.protocol, s.client, n);
    }

    pub fn deleted(&self, n: usize) {
        let s = &self.session;
        s.telemetry.deleted(&self.mailbox, s.protocol, s.client, n);
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        let n = self.collected.load(Ordering::Relaxed);
        if n > 0 {
            let s = &self.session;
            s.telemetry
                .collection(&self.mailbox, s.protocol, s.client, n);
        }
    }
}

/// The one folder of a gateway mailbox.
pub fn inbox_folder(record: &MailboxRecord) -> FolderInfo {
    FolderInfo {
        name: "INBOX".into(),
        key: record.id.to_string(),
        special_use: None,
        read_only: false,
        keeps_flags: true,
    }
}

/// Whether the key a session opened `record` with is still the mailbox's (no password reset
/// or deletion since).
pub fn key_is_current(mailboxes: &crate::mailbox::Mailboxes, record: &MailboxRecord) -> bool {
    mailboxes
        .load(&record.id)
        .is_ok_and(|current| current.key_generation == record.key_generation)
}

impl GatewayStore {
    pub fn new(
        spool: Arc<Spool>,
        record: MailboxRecord,
        identity: Identity,
        session: Collector,
    ) -> GatewayStore {
        GatewayStore {
            spool,
            collection: Collection::new(&record.id, session),
            record,
            identity,
        }
    }

    pub fn record(&self) -> &MailboxRecord {
        &self.record
    }
}

impl From<SpoolError> for StoreError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::NoSuchMessage => StoreError::NoSuchMessage,
            e => StoreError::unavailable(e),
        }
    }
}

impl MailStore for GatewayStore {
    fn folders(&self) -> Vec<FolderInfo> {
        vec![inbox_folder(&self.record)]
    }

    fn list(&self, _folder: &FolderInfo) -> Result<Vec<MessageMeta>, StoreError> {
        Ok(self.spool.list(&self.record.id)?)
    }

    fn numbers(&self, _folder: &FolderInfo) -> Result<(u32, u32), StoreError> {
        let next = self.spool.uid_next(&self.record.id)?;
        Ok((self.record.uidvalidity, next))
    }

    fn open(&self, _folder: &FolderInfo, meta: &MessageMeta) -> Result<MessageReader, StoreError> {
        let reader = self
            .spool
            .open_message(&self.record.id, meta, &self.identity)?;
        Ok(Box::new(reader))
    }

    fn set_flags(
        &self,
        _folder: &FolderInfo,
        uids: &[u32],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, StoreError> {
        Ok(self
            .spool
            .set_flags(&self.record.id, uids, op, unchanged_since)?)
    }

    fn keywords(&self, _folder: &FolderInfo) -> Vec<String> {
        self.spool.keywords(&self.record.id).unwrap_or_else(|e| {
            tracing::warn!(mailbox = %self.record.id, error = %e, "cannot read the keyword table");
            Vec::new()
        })
    }

    fn define_keywords(
        &self,
        _folder: &FolderInfo,
        names: &[String],
    ) -> Result<Option<Flags>, StoreError> {
        Ok(self.spool.define_keywords(&self.record.id, names)?)
    }

    fn highest_modseq(&self, _folder: &FolderInfo) -> Result<u64, StoreError> {
        Ok(self.spool.highest_modseq(&self.record.id)?)
    }

    fn expunge(&self, _folder: &FolderInfo, uids: &[u32]) -> Result<(), StoreError> {
        self.spool.expunge(&self.record.id, uids)?;
        self.collection.deleted(uids.len());
        Ok(())
    }

    fn fetched(&self, _folder: &FolderInfo, uids: &[u32]) {
        self.collection.fetched(uids.len());
    }

    fn watch(&self) -> broadcast::Receiver<ChangeKey> {
        self.spool.subscribe()
    }

    fn change_key(&self, _folder: &FolderInfo) -> ChangeKey {
        self.record.id.to_string()
    }

    fn still_valid(&self) -> bool {
        key_is_current(self.spool.mailboxes(), &self.record)
    }
}
