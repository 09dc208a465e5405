//! The archive's intake in cluster mode. Every node puts the archive's copy of each report in
//! the store (`archive/intake/<name>`, sealed to the archive's intake key) before its `250`,
//! like the gateway mailbox copy, so a node that dies strands nothing acknowledged for the
//! archive either. One node at a time, the holder of the `archive/lock/worker` claim, moves
//! those objects into its own archive intake folder (downloaded, fsync'd, renamed, the folder
//! fsync'd, and only then deleted from the store) and its archive worker files them: the
//! archive is complete on that node. When it dies, its claim expires and another node takes
//! over the pulling (the archive database itself is not in the store yet: docs/SCALING.md).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::blobs::BlobError;
use super::claim::{Claim, ClaimError, Held};
use super::Cluster;
use crate::spool::Intake;

const PREFIX: &str = "archive/intake";
const LOCK: &str = "archive/lock/worker";

/// Object names are the spool's intake names (`<unix>.<ns><random>.age`): nothing else.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 80
        && name.ends_with(".age")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
}

impl Cluster {
    /// Every node must seal archive copies to the same intake key (the node that files them
    /// opens them): the first node records the key's fingerprint in the store, and a node
    /// with another key is refused. An unreachable store is no reason not to start.
    pub fn check_intake_key(&self, fingerprint: &str) -> Result<(), String> {
        let key = "registry/archive-intake-key";
        match self.blobs.get(key) {
            Ok(known) if known.as_ref() == fingerprint.as_bytes() => Ok(()),
            Ok(_) => Err("this node's archive intake key is not the cluster's: give every node the same [archive] intake_key_file (copy it from a node that runs)".into()),
            Err(BlobError::NotFound) => self
                .blobs
                .put(key, fingerprint.as_bytes().to_vec())
                .or_else(|e| {
                    tracing::warn!(error = %e, "cannot record the archive intake key in the cluster yet");
                    Ok(())
                }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the archive intake key against the cluster's");
                Ok(())
            }
        }
    }

    /// Puts the archive's copy of a report in the store (durably, before the `250`).
    pub fn deliver_intake(&self, sealed: &Path, name: &str) -> Result<(), BlobError> {
        self.blobs.put_file(&format!("{PREFIX}/{name}"), sealed)
    }

    /// One round of pulling: takes (or keeps) the worker claim and moves what waits in the
    /// store into `intake`. Returns how many it moved (0 when another node holds the claim).
    pub fn pull_intake(
        &self,
        held: &mut Option<Held>,
        intake: &Intake,
        tmp_dir: &Path,
    ) -> Result<usize, BlobError> {
        if held.is_none() {
            match Claim::acquire(&self.blobs, LOCK, &self.node, Duration::ZERO) {
                Ok(claim) => {
                    tracing::info!(node = %self.node, "this node now files the cluster's archive intake");
                    *held = Some(claim.keep());
                }
                Err(ClaimError::Busy) => return Ok(0),
                Err(ClaimError::Store(e)) => return Err(e),
            }
        }
        let mut moved = 0;
        for object in self.blobs.list(&format!("{PREFIX}/"))? {
            let name = &object.key[PREFIX.len() + 1..];
            if !valid_name(name) {
                tracing::warn!(key = %object.key, "ignoring an unexpected object in the archive intake");
                continue;
            }
            let tmp = tmp_dir.join(format!("{}.pull", crate::crypto::random_hex128()));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let result = (|| {
                let copy = file.try_clone()?;
                self.blobs.get_to(&object.key, copy)?;
                let mut file = file;
                file.flush()?;
                file.sync_data()?;
                fs::rename(&tmp, intake.dir.join(name))?;
                crate::fsutil::sync_dir(&intake.dir)?;
                Ok::<(), BlobError>(())
            })();
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            self.blobs.delete(&object.key)?;
            moved += 1;
        }
        if moved > 0 {
            let _ = intake.notify.send(());
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn only_intake_names_are_taken() {
        assert!(valid_name("1765000000.123456789abcdef0123456789abcd.age"));
        assert!(!valid_name("../x.age"));
        assert!(!valid_name("a/b.age"));
        assert!(!valid_name("x.txt"));
    }
}
