//! A gateway mailbox as a [`MailStore`]: one folder, `INBOX`, that the archiver reads, flags
//! and expunges; opened with the mailbox key unwrapped at login.

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
    session: Collector,
    /// Messages downloaded in this session.
    collected: AtomicUsize,
}

/// Who collects: recorded as the mailbox's last collection, and in the activity stream.
pub struct Collector {
    pub protocol: &'static str,
    pub client: IpAddr,
    pub telemetry: Arc<Telemetry>,
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
            record,
            identity,
            session,
            collected: AtomicUsize::new(0),
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
        vec![FolderInfo {
            name: "INBOX".into(),
            key: self.record.id.to_string(),
            special_use: None,
            read_only: false,
            keeps_flags: true,
        }]
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
        let s = &self.session;
        s.telemetry
            .deleted(self.record.id.as_str(), s.protocol, s.client, uids.len());
        Ok(())
    }

    fn fetched(&self, _folder: &FolderInfo, uids: &[u32]) {
        self.collected.fetch_add(uids.len(), Ordering::Relaxed);
        let s = &self.session;
        s.telemetry
            .collected(self.record.id.as_str(), s.protocol, s.client, uids.len());
    }

    fn watch(&self) -> broadcast::Receiver<ChangeKey> {
        self.spool.subscribe()
    }

    fn change_key(&self, _folder: &FolderInfo) -> ChangeKey {
        self.record.id.to_string()
    }

    fn still_valid(&self) -> bool {
        match self.spool.mailboxes().load(&self.record.id) {
            Ok(current) => current.key_generation == self.record.key_generation,
            Err(_) => false,
        }
    }
}

impl Drop for GatewayStore {
    /// One activity event for everything the session downloaded.
    fn drop(&mut self) {
        let n = self.collected.load(Ordering::Relaxed);
        if n > 0 {
            let s = &self.session;
            s.telemetry
                .collection(self.record.id.as_str(), s.protocol, s.client, n);
        }
    }
}
