//! The mailbox registry shared by the nodes: each mailbox's record and password-wrapped key
//! under `registry/mailboxes/<id>/`. A node's `data_dir/mailboxes` is a copy, kept in step
//! by [`Registry::sync`] (every few seconds: what changed here goes up, what changed there
//! comes down); a deletion leaves a tombstone (`registry/deleted/<id>`), so a node that was
//! down when it happened removes its copy instead of bringing it back; a mailbox asked for before the
//! next sync is fetched on the spot ([`Fetch`]), so a mailbox created on one node receives
//! mail on every node at once.

use std::collections::HashMap;
use std::sync::Mutex;

use super::blobs::{BlobError, Blobs};
use crate::mailbox::{Fetch, MailboxId, MailboxRecord, Mailboxes};

const PREFIX: &str = "registry/mailboxes";
/// `registry/deleted/<id>`: a mailbox deleted for good (no node may bring it back).
const DELETED: &str = "registry/deleted";

#[derive(Debug)]
pub struct Registry {
    blobs: Blobs,
    mailboxes: Mailboxes,
    /// Per mailbox, the record and key last agreed with the store.
    synced: Mutex<HashMap<MailboxId, Vec<u8>>>,
    /// Per mailbox, the tag of its record object when last pulled or pushed.
    tags: Mutex<HashMap<MailboxId, String>>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blobs")
    }
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub pushed: usize,
    pub pulled: usize,
    pub removed: usize,
}

impl Registry {
    pub fn new(blobs: Blobs, mailboxes: Mailboxes) -> Registry {
        Registry {
            blobs,
            mailboxes,
            synced: Mutex::default(),
            tags: Mutex::default(),
        }
    }

    /// This node's copy of a mailbox: record and wrapped key, as one comparable value.
    fn local(&self, id: &MailboxId) -> Option<(MailboxRecord, Vec<u8>, Vec<u8>)> {
        let record = self.mailboxes.load_local(id).ok()?;
        let identity = self.mailboxes.wrapped_identity(id).ok()?;
        let mut both = serde_json::to_vec(&record).ok()?;
        both.extend_from_slice(&identity);
        Some((record, identity, both))
    }

    fn remote(&self, id: &MailboxId) -> Result<Option<(MailboxRecord, Vec<u8>)>, BlobError> {
        let record = match self.blobs.get(&format!("{PREFIX}/{id}/mailbox.json")) {
            Ok(bytes) => bytes,
            Err(BlobError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let identity = match self.blobs.get(&format!("{PREFIX}/{id}/identity.age")) {
            Ok(bytes) => bytes.to_vec(),
            Err(BlobError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let record: MailboxRecord = serde_json::from_slice(&record)
            .map_err(|e| BlobError::Store(format!("damaged registry record {id}: {e}")))?;
        Ok((&record.id == id).then_some((record, identity)))
    }

    fn push(&self, record: &MailboxRecord, identity: &[u8]) -> Result<(), BlobError> {
        let id = &record.id;
        // The key first: a record seen without its key would be a mailbox nobody can open.
        self.blobs
            .put(&format!("{PREFIX}/{id}/identity.age"), identity.to_vec())?;
        let record = serde_json::to_vec_pretty(record).expect("record serializes");
        self.blobs
            .put(&format!("{PREFIX}/{id}/mailbox.json"), record)
    }

    fn pull(&self, id: &MailboxId) -> Result<bool, BlobError> {
        let Some((record, identity)) = self.remote(id)? else {
            return Ok(false);
        };
        self.mailboxes
            .install(&record, &identity)
            .map_err(|e| BlobError::Store(format!("cannot install mailbox {id}: {e}")))?;
        if let Some((_, _, both)) = self.local(id) {
            self.synced.lock().unwrap().insert(id.clone(), both);
        }
        Ok(true)
    }

    /// Deletes every object of a mailbox (its registry entry and its mail).
    fn purge(&self, id: &MailboxId) -> Result<(), BlobError> {
        for prefix in [format!("{PREFIX}/{id}/"), format!("mailboxes/{id}/")] {
            for object in self.blobs.list(&prefix)? {
                self.blobs.delete(&object.key)?;
            }
        }
        Ok(())
    }

    /// Mailboxes deleted for good.
    fn tombstones(&self) -> Result<std::collections::HashSet<MailboxId>, BlobError> {
        Ok(self
            .blobs
            .list(&format!("{DELETED}/"))?
            .iter()
            .filter_map(|o| {
                MailboxId::parse(o.key.strip_prefix(DELETED)?.trim_start_matches('/')).ok()
            })
            .collect())
    }

    /// Brings this node's copy and the store into step.
    pub fn sync(&self) -> Result<SyncReport, BlobError> {
        let mut report = SyncReport::default();
        let deleted = self.tombstones()?;
        let mut remote_ids: HashMap<MailboxId, String> = HashMap::new();
        for object in self.blobs.list(&format!("{PREFIX}/"))? {
            let rest = &object.key[PREFIX.len() + 1..];
            if let Some((id, "mailbox.json")) = rest.split_once('/') {
                if let Ok(id) = MailboxId::parse(id) {
                    remote_ids.insert(id, object.tag.clone());
                }
            }
        }
        let local_ids: Vec<MailboxId> = self
            .mailboxes
            .list()
            .map_err(|e| BlobError::Store(e.to_string()))?
            .into_iter()
            .map(|r| r.id)
            .collect();
        for id in &local_ids {
            if deleted.contains(id) {
                // Deleted on another node (perhaps while this one was down).
                self.mailboxes
                    .uninstall(id)
                    .map_err(|e| BlobError::Store(e.to_string()))?;
                self.forget(id);
                report.removed += 1;
                continue;
            }
            let Some((record, identity, both)) = self.local(id) else {
                continue;
            };
            let agreed = self.synced.lock().unwrap().get(id).cloned();
            match (remote_ids.contains_key(id), agreed) {
                // Made here, or missing from the store without a tombstone (never deleted:
                // a deletion always leaves one): up it goes.
                (false, _) => {
                    self.push(&record, &identity)?;
                    report.pushed += 1;
                }
                (true, Some(agreed)) if agreed != both => {
                    self.push(&record, &identity)?;
                    report.pushed += 1;
                    // The next listing shows our own write under a new tag: not a change.
                    self.tags.lock().unwrap().remove(id);
                }
                // Changed elsewhere (its tag moved): take the store's copy.
                (true, _) => {
                    let tag = &remote_ids[id];
                    let seen = self.tags.lock().unwrap().get(id).cloned();
                    match seen {
                        Some(seen) if &seen == tag => {}
                        Some(_) => {
                            self.pull(id)?;
                            report.pulled += 1;
                        }
                        // First sight since start, or our own push: agreed as it is.
                        None if agreed_is(&self.synced, id, &both) => {}
                        None => {
                            self.pull(id)?;
                            report.pulled += 1;
                        }
                    }
                    self.tags.lock().unwrap().insert(id.clone(), tag.clone());
                    continue;
                }
            }
            self.synced.lock().unwrap().insert(id.clone(), both);
        }
        for id in remote_ids.keys() {
            if deleted.contains(id) {
                // Pushed again by a node that had not seen the deletion yet.
                self.purge(id)?;
                continue;
            }
            if local_ids.contains(id) {
                continue;
            }
            let known = self.synced.lock().unwrap().remove(id).is_some();
            if known {
                // Deleted here behind the cluster's back: delete it everywhere.
                Fetch::withdraw(self, id).map_err(BlobError::Store)?;
                report.removed += 1;
            } else if self.pull(id)? {
                report.pulled += 1;
            }
        }
        Ok(report)
    }
}

impl Registry {
    fn forget(&self, id: &MailboxId) {
        self.synced.lock().unwrap().remove(id);
        self.tags.lock().unwrap().remove(id);
    }
}

fn agreed_is(synced: &Mutex<HashMap<MailboxId, Vec<u8>>>, id: &MailboxId, both: &[u8]) -> bool {
    synced.lock().unwrap().get(id).is_some_and(|a| a == both)
}

impl Fetch for Registry {
    fn fetch(&self, id: &MailboxId) -> Result<bool, String> {
        match self.blobs.get(&format!("{DELETED}/{id}")) {
            Ok(_) => return Ok(false),
            Err(BlobError::NotFound) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.pull(id).map_err(|e| e.to_string())
    }

    fn withdraw(&self, id: &MailboxId) -> Result<(), String> {
        self.blobs
            .put(&format!("{DELETED}/{id}"), Vec::new())
            .map_err(|e| e.to_string())?;
        self.purge(id).map_err(|e| e.to_string())?;
        self.forget(id);
        Ok(())
    }

    fn publish(&self, id: &MailboxId) -> Result<(), String> {
        let Some((record, identity, both)) = self.local(id) else {
            return Ok(());
        };
        self.push(&record, &identity).map_err(|e| e.to_string())?;
        self.synced.lock().unwrap().insert(id.clone(), both);
        self.tags.lock().unwrap().remove(id);
        Ok(())
    }
}
