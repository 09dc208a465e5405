//! What the console and `/metrics` of each node show about the cluster: whether the store
//! answers, when the registry last synced, which gateway nodes are alive (each writes a
//! heartbeat object `registry/nodes/<node>` on every sync; its modification time is when it
//! was last seen), and the messages and bytes waiting in each gateway mailbox (from one
//! listing of `mailboxes/`, refreshed every few syncs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::blobs::{BlobError, Blobs};
use crate::mailbox::MailboxId;

/// A node seen in the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSeen {
    pub node: String,
    /// Unix seconds of its last heartbeat.
    pub last_seen: i64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub store_up: bool,
    /// Unix seconds of the last successful registry sync.
    pub last_sync: Option<i64>,
    pub last_error: Option<String>,
    pub nodes: Vec<NodeSeen>,
}

#[derive(Debug, Default)]
pub struct Status {
    now: Mutex<ClusterStatus>,
    /// Per mailbox, (messages, bytes) waiting in the store.
    totals: Mutex<HashMap<MailboxId, (u64, u64)>>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Status {
    pub fn get(&self) -> ClusterStatus {
        self.now.lock().unwrap().clone()
    }

    pub fn totals(&self, id: &MailboxId) -> (u64, u64) {
        self.totals
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or((0, 0))
    }

    pub fn failed(&self, node: &str, e: &BlobError) {
        let mut now = self.now.lock().unwrap();
        now.node = node.to_owned();
        now.store_up = false;
        now.last_error = Some(e.to_string());
    }

    /// Writes this node's heartbeat and reads everyone's.
    pub fn heartbeat(&self, blobs: &Blobs, node: &str) -> Result<(), BlobError> {
        blobs.put(&format!("registry/nodes/{node}"), node.as_bytes().to_vec())?;
        let nodes = blobs
            .list("registry/nodes/")?
            .into_iter()
            .filter_map(|o| {
                Some(NodeSeen {
                    node: o.key.strip_prefix("registry/nodes/")?.to_owned(),
                    last_seen: o.modified,
                })
            })
            .collect();
        let mut now = self.now.lock().unwrap();
        now.node = node.to_owned();
        now.store_up = true;
        now.last_sync = Some(unix_now());
        now.last_error = None;
        now.nodes = nodes;
        Ok(())
    }

    /// Counts what waits in every gateway mailbox; returns the mailboxes whose count or
    /// size changed since the last count (mail that came in, or went, through any node).
    pub fn count(&self, blobs: &Blobs) -> Result<Vec<MailboxId>, BlobError> {
        let mut totals: HashMap<MailboxId, (u64, u64)> = HashMap::new();
        for object in blobs.list("mailboxes/")? {
            let mut parts = object.key.split('/').skip(1);
            let (Some(id), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(id) = MailboxId::parse(id) else {
                continue;
            };
            if kind == "msg" {
                let size = message_size(name).unwrap_or(object.size);
                let entry = totals.entry(id).or_default();
                entry.0 += 1;
                entry.1 += size;
            }
        }
        let mut kept = self.totals.lock().unwrap();
        let mut changed: Vec<MailboxId> = totals
            .iter()
            .filter(|(id, t)| kept.get(*id) != Some(*t))
            .map(|(id, _)| id.clone())
            .collect();
        changed.extend(kept.keys().filter(|id| !totals.contains_key(*id)).cloned());
        *kept = totals;
        Ok(changed)
    }
}

/// The message size recorded in an object name (`...<received>.<size>.<envelope length>`).
fn message_size(name: &str) -> Option<u64> {
    let mut parts = name.rsplit('.');
    let _envelope = parts.next()?;
    parts.next()?.parse().ok()
}
