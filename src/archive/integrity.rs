//! The integrity chain at work (see [`super::chain`] for the format): putting an older
//! archive's items on the chain once, signing checkpoints as it grows, and `archive verify`,
//! which checks the chain, the checkpoints and every item file against them.

use sha2::{Digest, Sha256};

use super::chain::{self, Change, Checkpoint, Op, Report, Sealed, Walker};
use super::store::Item;
use super::*;

/// Links between checkpoints at most, whatever the time.
const CHECKPOINT_EVERY_LINKS: u64 = 10_000;

impl Archive {
    /// Puts the items of an archive made before the chain existed on it, in ID order, with
    /// the hashes their files have now (no commitment: their originals carry no salt).
    pub(super) fn chain_existing(&self) -> Result<(), ArchiveError> {
        if self.store.chain_head()?.0 > 0 {
            return Ok(());
        }
        let items = self.store.items()?;
        if items.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::with_capacity(items.len());
        for (id, item) in &items {
            let Ok((sha256, size)) = self.item_digest(*id, Some(item)) else {
                continue;
            };
            changes.push(Change {
                op: Op::Filed,
                item: *id,
                sealed: Some(Sealed {
                    sha256,
                    size,
                    commitment: None,
                }),
                time: item.received,
            });
        }
        self.store.append_chain(&changes)?;
        tracing::info!(
            items = changes.len(),
            "archive items put on the integrity chain"
        );
        self.checkpoint(true)?;
        Ok(())
    }

    /// Signs a checkpoint at the chain's head when the chain grew since the last one and
    /// that one is `checkpoint_minutes` old (or far behind); `force` signs whenever the
    /// chain grew. Returns the newest checkpoint.
    pub fn checkpoint(&self, force: bool) -> Result<Option<Checkpoint>, ArchiveError> {
        let (seq, head) = self.store.chain_head()?;
        let last = self.store.checkpoints()?.pop();
        let now = chrono::Utc::now().timestamp();
        let due = match &last {
            _ if seq == 0 => false,
            None => true,
            Some(cp) if cp.seq >= seq => false,
            Some(cp) => {
                force
                    || seq - cp.seq >= CHECKPOINT_EVERY_LINKS
                    || (now - cp.time) as f64 >= self.config.checkpoint_minutes * 60.0
            }
        };
        if !due {
            return Ok(last);
        }
        let checkpoint = Checkpoint::sign(&self.signing_key, seq, &head, now);
        self.store.add_checkpoint(&checkpoint)?;
        // Logged so that copies of each checkpoint leave the machine (journald, syslog).
        tracing::info!(seq, head = %head, signature = %checkpoint.signature, "archive chain checkpoint");
        Ok(Some(checkpoint))
    }

    /// The public half of the checkpoint signing key (hex).
    pub fn signing_public_key(&self) -> String {
        hex::encode(self.signing_key.verifying_key().as_bytes())
    }

    /// Checks the chain's links and checkpoints and every item file against them.
    /// `progress(done, total)` follows the item files.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, ArchiveError> {
        let mut report = Report {
            signing_key: self.signing_public_key(),
            ..Report::default()
        };
        let mut walker = Walker::default();
        self.store
            .for_each_link(1, |seq, bytes| walker.step(seq, bytes, &mut report))?;
        let key = self.signing_public_key();
        chain::check_checkpoints(
            &self.store.checkpoints()?,
            &walker.heads,
            Some(&key),
            &mut report,
        );
        let total = walker.expected.len() as u64;
        for (n, (id, sealed)) in walker.expected.iter().enumerate() {
            if n % 256 == 0 {
                progress(n as u64, total);
            }
            report.items_checked += 1;
            let problem = |kind, detail| chain::Problem {
                item: Some(*id),
                seq: None,
                kind,
                detail,
            };
            match self.item_digest(*id, None) {
                Err(ArchiveError::NoSuchMessage) => report
                    .problems
                    .push(problem("missing", "the item's file or pack is gone".into())),
                Err(e) => report.problems.push(problem("missing", e.to_string())),
                Ok((sha256, size)) if sha256 != sealed.sha256 || size != sealed.size => {
                    report.problems.push(problem(
                        "altered",
                        "the item file is not the one on the chain (changed, or swapped with another)"
                            .into(),
                    ))
                }
                Ok(_) => {}
            }
        }
        progress(total, total);
        for id in self.store.item_ids()? {
            if !walker.expected.contains_key(&id) {
                report.problems.push(chain::Problem {
                    item: Some(id),
                    seq: None,
                    kind: "unchained",
                    detail: "an item record with no live link on the chain".into(),
                });
            }
        }
        let packs: std::collections::BTreeSet<u64> =
            self.store.packs()?.into_iter().map(|p| p.0).collect();
        for entry in fs::read_dir(&self.items_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if super::pack::id_of(&name).is_some_and(|p| packs.contains(&p)) {
                continue;
            }
            let id = name
                .strip_suffix(".age")
                .and_then(|n| n.parse::<u64>().ok());
            if id.is_none_or(|id| !walker.expected.contains_key(&id)) {
                report.problems.push(chain::Problem {
                    item: id,
                    seq: None,
                    kind: "unrecorded",
                    detail: format!("item file {name} is not on the chain"),
                });
            }
        }
        report.ok = report.problems.is_empty();
        Ok(report)
    }
}

impl Archive {
    /// SHA-256 (hex) and size of an item's sealed bytes; a pack cut short gives a size
    /// other than the recorded one, which `verify` reports.
    fn item_digest(&self, id: u64, item: Option<&Item>) -> Result<(String, u64), ArchiveError> {
        let mut reader = self.item_bytes(id, item)?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut reader, &mut hasher)?;
        Ok((hex::encode(hasher.finalize()), size))
    }
}
