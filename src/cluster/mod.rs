//! Cluster mode (`[storage] backend = "s3"`): gateway mailboxes and the mailbox registry in
//! an S3-compatible object store (Garage in the tests), so that several gateway nodes accept
//! mail for, and serve collection of, the same mailboxes, and a `250` means "in the store's
//! replicated write quorum", not "on one node's disk". Everything written there is sealed
//! already (age), and object keys carry no address, subject or Message-ID.
//!
//! `blobs` talks to the store; `claim` is the lock between nodes (the store has no
//! compare-and-swap); `inbox` lays a mailbox out in objects; `registry` shares mailbox
//! records; `store` serves a mailbox to POP3 and IMAP. See `docs/SCALING.md`.

pub mod blobs;
pub mod claim;
pub mod inbox;
mod intake;
pub mod registry;
pub mod status;
mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, RetryConfig};
use tokio::sync::broadcast;

use crate::config::StorageConfig;
use crate::mailbox::{MailboxId, Mailboxes};
use crate::message::MessageMeta;
use crate::spool::{Remote, SpoolError};
use crate::store::ChangeKey;
pub use blobs::{BlobError, Blobs};
pub use claim::{Claim, ClaimError};
pub use inbox::{Inbox, InboxError};
pub use registry::Registry;
pub use store::ClusterStore;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the secret access key file: {0}")]
    Secret(std::io::Error),
    #[error("no secret access key: set [storage] secret_access_key_file or AWS_SECRET_ACCESS_KEY")]
    NoSecret,
    #[error("object store: {0}")]
    Store(String),
}

/// This node's handle on the cluster.
pub struct Cluster {
    pub blobs: Blobs,
    pub node: String,
    pub registry: Arc<Registry>,
    mailboxes: Mailboxes,
    /// "Mailbox X changed" for this node's IMAP sessions.
    changes: broadcast::Sender<ChangeKey>,
    pub status: status::Status,
    /// UID maps read so far (they never change).
    maps: inbox::MapCache,
}

fn secret(config: &StorageConfig) -> Result<String, ClusterError> {
    match &config.secret_access_key_file {
        Some(path) => Ok(std::fs::read_to_string(path)
            .map_err(ClusterError::Secret)?
            .trim()
            .to_owned()),
        None => std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| ClusterError::NoSecret),
    }
}

impl Cluster {
    /// Connects to the store of `[storage]` (requests are made lazily: an unreachable store
    /// shows as 451s and in the console, not as a failed start).
    pub fn open(config: &StorageConfig, mailboxes: Mailboxes) -> Result<Cluster, ClusterError> {
        let timeout = Duration::from_secs(config.request_timeout_secs);
        let mut builder = AmazonS3Builder::new()
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(secret(config)?)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_secs(5)),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: timeout,
                ..RetryConfig::default()
            });
        if !config.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&config.endpoint)
                .with_allow_http(config.endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder
            .build()
            .map_err(|e| ClusterError::Store(e.to_string()))?;
        let blobs = Blobs::new(Arc::new(store), timeout + Duration::from_secs(5))
            .map_err(|e| ClusterError::Store(e.to_string()))?;
        Ok(Cluster::with_blobs(blobs, &config.node_id, mailboxes))
    }

    pub fn with_blobs(blobs: Blobs, node: &str, mailboxes: Mailboxes) -> Cluster {
        let registry = Arc::new(Registry::new(blobs.clone(), mailboxes.clone()));
        Cluster {
            blobs,
            node: node.to_owned(),
            registry,
            mailboxes,
            changes: broadcast::channel(256).0,
            status: status::Status::default(),
            maps: inbox::MapCache::default(),
        }
    }

    pub fn inbox<'a>(&'a self, id: &'a MailboxId, generation: u32) -> Inbox<'a> {
        Inbox {
            blobs: &self.blobs,
            node: &self.node,
            id,
            generation,
            maps: &self.maps,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ChangeKey> {
        self.changes.subscribe()
    }

    pub fn changed(&self, id: &MailboxId) {
        let _ = self.changes.send(id.to_string());
    }

    /// One round of upkeep (every two seconds): the registry sync, this node's heartbeat,
    /// and the per-mailbox totals; a mailbox whose totals moved is announced to this node's
    /// IMAP sessions (mail delivered or deleted through another node). The outcome is kept
    /// for the console.
    pub fn upkeep(&self) -> Result<registry::SyncReport, BlobError> {
        let result = (|| {
            let report = self.registry.sync()?;
            self.status.heartbeat(&self.blobs, &self.node)?;
            for id in self.status.count(&self.blobs)? {
                self.changed(&id);
            }
            Ok(report)
        })();
        if let Err(e) = &result {
            self.status.failed(&self.node, e);
        }
        result
    }

    /// Messages and bytes waiting in a gateway mailbox (as of the last count).
    pub fn totals(&self, id: &MailboxId) -> (u64, u64) {
        self.status.totals(id)
    }
}

impl Remote for Cluster {
    fn deliver(
        &self,
        mailbox: &MailboxId,
        sealed: &Path,
        meta: &MessageMeta,
    ) -> Result<(), SpoolError> {
        let generation = self
            .mailboxes
            .load(mailbox)
            .map(|r| r.key_generation)
            .map_err(SpoolError::from)?;
        self.inbox(mailbox, generation)
            .deliver(sealed, meta)
            .map_err(|e| SpoolError::Io(std::io::Error::other(e)))?;
        self.changed(mailbox);
        Ok(())
    }

    fn deliver_intake(&self, sealed: &Path, name: &str) -> Result<(), SpoolError> {
        Cluster::deliver_intake(self, sealed, name)
            .map_err(|e| SpoolError::Io(std::io::Error::other(e)))
    }
}
