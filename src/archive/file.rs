//! Filing: sealing originals (and their journal envelopes) into the open pack, and
//! collecting the changes of several intake files into one durable commit. Duplicates are
//! merged by the `duplicate` module.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::crypto::{self, epoch::EpochRecipient};
use crate::message::Envelope;

use super::chain::{Change, Op, Sealed};
use super::envelope::{self, JournalEnvelope};
use super::plan::Plan;
use super::source::{DigestWriter, Fingerprint, HashingWriter, Source, Written, SALT_BYTES};
use super::store::Item;
use super::summary::{Capture, Plain};
use super::summarytables::SealedSummary;
use super::{Archive, ArchiveError};

/// Intake files archived per durable commit (at most; fewer when the queue runs dry).
pub(super) const COMMIT_EVERY: usize = 64;

/// What archiving one intake file adds.
#[derive(Default)]
pub(super) struct Delta {
    pub(super) next_item: u64,
    pub(super) items: Vec<(u64, Item)>,
    pub(super) entries: Vec<(String, u64, i64, u64)>,
    /// (original, envelope item) pairs filed.
    pub(super) envelopes: Vec<(u64, u64)>,
    pub(super) dedupe: Vec<(Vec<u8>, Vec<u64>)>,
    pub(super) counters: Vec<(&'static str, u64)>,
    /// New items written (they were not in the store before).
    pub(super) published: Vec<u64>,
    /// The intake file is the duplicate-merge copy of a new item: keep it for a while.
    pub(super) keep_intake: bool,
    /// Item files written, for the integrity chain.
    pub(super) chain: Vec<Change>,
    /// Sealed summaries of the items written.
    pub(super) summaries: Vec<(u64, SealedSummary)>,
}

impl Delta {
    pub(super) fn allocate(&mut self) -> u64 {
        self.next_item += 1;
        self.next_item - 1
    }
}

/// Archived intake files not yet committed: several share one durable commit. Lookups of
/// items and duplicate keys see this before the store.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) next_item: u64,
    pub(super) items: HashMap<u64, Item>,
    /// Items that were in the store before this commit (their files must not be removed).
    pub(super) existing: BTreeSet<u64>,
    pub(super) entries: Vec<(String, u64, i64, u64)>,
    /// Folders each item is newly filed in by this commit.
    pub(super) folders: HashMap<u64, BTreeSet<String>>,
    pub(super) dedupe: HashMap<Vec<u8>, Vec<u64>>,
    pub(super) counters: Vec<(&'static str, u64)>,
    pub(super) done: Vec<String>,
    /// Intake files of this commit, and whether each is kept in `recent/`.
    pub(super) intake: Vec<(PathBuf, bool)>,
    pub(super) changed: BTreeSet<String>,
    pub(super) chain: Vec<Change>,
    pub(super) envelopes: Vec<(u64, u64)>,
    pub(super) summaries: Vec<(u64, SealedSummary)>,
}

impl Pending {
    pub(super) fn merge(&mut self, delta: Delta, name: String, path: PathBuf) {
        let fresh: BTreeSet<u64> = delta.published.iter().copied().collect();
        for (id, item) in delta.items {
            if !fresh.contains(&id) && !self.items.contains_key(&id) {
                self.existing.insert(id);
            }
            self.items.insert(id, item);
        }
        for (folder, item, received, size) in delta.entries {
            self.folders.entry(item).or_default().insert(folder.clone());
            self.changed.insert(folder.clone());
            self.entries.push((folder, item, received, size));
        }
        self.dedupe.extend(delta.dedupe);
        self.counters.extend(delta.counters);
        self.chain.extend(delta.chain);
        self.envelopes.extend(delta.envelopes);
        self.summaries.extend(delta.summaries);
        self.next_item = self.next_item.max(delta.next_item);
        self.done.push(name);
        self.intake.push((path, delta.keep_intake));
    }
}

/// What is being filed: the original, who reads it, where it goes.
pub(super) struct Filing<'a> {
    pub(super) source: &'a Source<'a>,
    pub(super) range: std::ops::Range<u64>,
    pub(super) base64: bool,
    pub(super) keys: &'a [String],
    pub(super) folders: &'a BTreeSet<String>,
    pub(super) received: i64,
    pub(super) dedupe: Vec<u8>,
    pub(super) fingerprint: Fingerprint,
}

impl Archive {
    /// Writes the originals as sealed items, and the report's journal envelope beside them,
    /// and records in `delta` where they are filed. `pending` holds what earlier files of
    /// this commit did (not yet in the store).
    pub(super) fn file_originals(
        &self,
        source: &Source<'_>,
        envelope: &Envelope,
        mut plan: Plan,
        pending: &Pending,
        delta: &mut Delta,
    ) -> Result<(), ArchiveError> {
        let journal = std::mem::take(&mut plan.envelope);
        if let Some(target) = self.file_item(source, envelope, plan, pending, delta)? {
            self.file_envelope(&journal, target, envelope.received, delta)?;
        }
        Ok(())
    }

    /// Files the originals; returns the item they are now shown as, if any.
    fn file_item(
        &self,
        source: &Source<'_>,
        envelope: &Envelope,
        plan: Plan,
        pending: &Pending,
        delta: &mut Delta,
    ) -> Result<Option<u64>, ArchiveError> {
        let Some((first, first_b64)) = plan.originals.first().cloned() else {
            return Ok(None);
        };
        let keys = self.readers_of(&plan);
        if keys.is_empty() {
            tracing::warn!(queue_id = %envelope.id, "no user, auditor or recovery key to seal the archive copy to: not archived");
            delta.counters.push(("unreadable_dropped", 1));
            return Ok(None);
        }
        let fingerprint = self.fingerprint(source, first.clone(), first_b64)?;
        let dedupe = self.dedupe_key(plan.message_id.as_deref(), &fingerprint.normalized);
        let existing = match pending.dedupe.get(&dedupe) {
            Some(list) => list.clone(),
            None => self.store.duplicates(&dedupe)?,
        };
        let received = envelope.received;
        if !existing.is_empty() {
            let filing = Filing {
                source,
                range: first,
                base64: first_b64,
                keys: &keys,
                folders: &plan.folders,
                received,
                dedupe,
                fingerprint,
            };
            return self.file_duplicate(filing, &existing, pending, delta);
        }
        let written = self.write_item(source, first.clone(), first_b64, &keys)?;
        let id = delta.allocate();
        self.publish(&written, id, Op::Filed, received, delta);
        delta.keep_intake = true;
        let mut item = Item {
            received,
            size: written.size,
            exact: hex::encode(&fingerprint.exact),
            dedupe: hex::encode(&dedupe),
            keys: keys.clone(),
            origin: Some(source.origin(&first, first_b64)),
            location: Some(written.location),
            ..Item::default()
        };
        // Further originals (the protected copy next to a decrypted one) are kept, linked.
        for (range, b64) in plan.originals.iter().skip(1).cloned() {
            let extra = self.write_item(source, range, b64, &keys)?;
            let extra_id = delta.allocate();
            self.publish(&extra, extra_id, Op::Filed, received, delta);
            item.linked.push(extra_id);
            delta.items.push((
                extra_id,
                Item {
                    received,
                    size: extra.size,
                    keys: keys.clone(),
                    location: Some(extra.location),
                    ..Item::default()
                },
            ));
        }
        delta.items.push((id, item));
        for folder in &plan.folders {
            delta
                .entries
                .push((folder.clone(), id, received, written.size));
        }
        delta.dedupe.push((dedupe, vec![id]));
        delta.counters.push(("items", 1));
        if plan.unknown {
            delta.counters.push(("unknown", 1));
        }
        Ok(Some(id))
    }

    /// The keys an original is sealed to: its users, every auditor, the recovery key.
    fn readers_of(&self, plan: &Plan) -> Vec<String> {
        let mut keys: Vec<String> = plan.users.iter().map(|u| u.public_key.clone()).collect();
        for auditor in self.user_list().iter().filter(|u| u.auditor) {
            if !keys.contains(&auditor.public_key) {
                keys.push(auditor.public_key.clone());
            }
        }
        if let Some(recovery) = self.recovery_key() {
            if !keys.contains(&recovery) {
                keys.push(recovery);
            }
        }
        keys
    }

    /// Seals the envelope of one report to the auditors and the recovery key, files it in
    /// `Journal Envelopes` and links it to `original` (nothing when nobody could read it).
    pub(super) fn file_envelope(
        &self,
        journal: &JournalEnvelope,
        original: u64,
        received: i64,
        delta: &mut Delta,
    ) -> Result<(), ArchiveError> {
        let mut keys: Vec<String> = self
            .user_list()
            .iter()
            .filter(|u| u.auditor)
            .map(|u| u.public_key.clone())
            .collect();
        keys.extend(self.recovery_key());
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        let bytes = journal.render(original, envelope::FROM_DOMAIN);
        let written = self.write_sealed(&keys, |sink| Ok(sink.write_all(&bytes)?))?;
        let id = delta.allocate();
        self.publish(&written, id, Op::Filed, received, delta);
        delta.items.push((
            id,
            Item {
                received,
                size: written.size,
                keys,
                envelope_of: Some(original),
                location: Some(written.location),
                ..Item::default()
            },
        ));
        delta.entries.push((
            envelope::ENVELOPES_FOLDER.to_owned(),
            id,
            received,
            written.size,
        ));
        delta.envelopes.push((original, id));
        Ok(())
    }

    /// Notes an item written into the pack for the chain (and, when new, as this file's).
    pub(super) fn publish(&self, written: &Written, id: u64, op: Op, time: i64, delta: &mut Delta) {
        if op == Op::Filed {
            delta.published.push(id);
        }
        if let Some(summary) = written.summary.as_ref() {
            if let Some(sealed) = self.seal_summary(id, summary) {
                delta.summaries.push((id, sealed));
            }
        }
        delta.chain.push(Change {
            op,
            item: id,
            sealed: Some(written.sealed.clone()),
            time,
        });
    }

    /// The file of an item written before packs.
    pub(super) fn item_path(&self, id: u64) -> PathBuf {
        self.items_dir.join(format!("{id}.age"))
    }

    /// Seals one original to `keys` into the pack, hashing it on the way.
    pub(super) fn write_item(
        &self,
        source: &Source<'_>,
        range: Range<u64>,
        base64: bool,
        keys: &[String],
    ) -> Result<Written, ArchiveError> {
        let mut plain = None;
        let mut written = self.write_sealed(keys, |sink| {
            let mut capture = Capture::new(sink);
            source.copy_original(range, base64, &mut capture)?;
            plain = Plain::of(capture, keys);
            Ok(())
        })?;
        written.summary = plain;
        Ok(written)
    }

    /// Seals what `fill` writes to `keys` into the open pack (made durable by the next
    /// commit), with the commitment's salt after it, hashing it on the way.
    pub(super) fn write_sealed(
        &self,
        keys: &[String],
        fill: impl FnOnce(&mut dyn Write) -> Result<(), ArchiveError>,
    ) -> Result<Written, ArchiveError> {
        let epoch = self.current_epoch();
        let recipients: Vec<EpochRecipient> = keys
            .iter()
            .map(|k| epoch.recipient(k))
            .collect::<Result<_, _>>()?;
        let recipients: Vec<&dyn age::Recipient> = recipients.iter().map(|r| r as _).collect();
        let mut salt = [0u8; SALT_BYTES];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
        let ((size, commitment, digest, sealed_size), location) = self.with_pack(|pack| {
            pack.append(|out| {
                let out = DigestWriter::new(BufWriter::with_capacity(64 << 10, out));
                let mut sink = HashingWriter {
                    inner: crypto::seal_to_all(&recipients, out)?,
                    commitment: Sha256::new_with_prefix(salt),
                    size: 0,
                };
                fill(&mut sink)?;
                // The salt of the commitment follows the original, inside the sealed stream.
                sink.inner.write_all(&salt)?;
                let (digest, sealed_size, buffered) = sink.inner.finish()?.finish();
                buffered.into_inner().map_err(|e| e.into_error())?;
                Ok::<_, ArchiveError>((sink.size, sink.commitment, digest, sealed_size))
            })
        })?;
        Ok(Written {
            summary: None,
            location,
            size,
            sealed: Sealed {
                sha256: hex::encode(digest),
                size: sealed_size,
                commitment: Some(hex::encode(commitment.finalize())),
            },
        })
    }
}
