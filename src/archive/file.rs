//! Filing: sealing originals into item files, merging duplicates, and collecting the
//! changes of several intake files into one durable commit.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::crypto::{self, epoch::EpochRecipient};
use crate::message::Envelope;

use super::chain::{Change, Op, Sealed};
use super::envelope::{self, JournalEnvelope};
use super::fingerprint::Normalizer;
use super::plan::Plan;
use super::skeleton::Skeleton;
use super::store::{Item, Origin};
use super::{Archive, ArchiveError, DECODE_MAX};

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
    /// New item files already in `items/` (removed again if the file fails).
    pub(super) published: Vec<u64>,
    /// The intake file is the duplicate-merge copy of a new item: keep it for a while.
    pub(super) keep_intake: bool,
    /// Item files written, for the integrity chain.
    pub(super) chain: Vec<Change>,
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
        self.next_item = self.next_item.max(delta.next_item);
        self.done.push(name);
        self.intake.push((path, delta.keep_intake));
    }
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
        let users = self.user_list();
        let mut keys: Vec<String> = plan.users.iter().map(|u| u.public_key.clone()).collect();
        for auditor in users.iter().filter(|u| u.auditor) {
            if !keys.contains(&auditor.public_key) {
                keys.push(auditor.public_key.clone());
            }
        }
        if let Some(recovery) = self.recovery_key() {
            if !keys.contains(&recovery) {
                keys.push(recovery);
            }
        }
        if keys.is_empty() {
            tracing::warn!(queue_id = %envelope.id, "no user, auditor or recovery key to seal the archive copy to: not archived");
            delta.counters.push(("unreadable_dropped", 1));
            return Ok(None);
        }
        let written = self.write_item(source, first.clone(), first_b64, &keys)?;
        let dedupe = self.dedupe_key(plan.message_id.as_deref(), &written.normalized);
        let existing = match pending.dedupe.get(&dedupe) {
            Some(list) => list.clone(),
            None => self.store.duplicates(&dedupe)?,
        };
        let received = envelope.received;
        if existing.is_empty() {
            let id = delta.allocate();
            self.publish(&written, id, Op::Filed, received, delta)?;
            delta.keep_intake = true;
            let mut item = Item {
                received,
                size: written.size,
                exact: hex::encode(&written.exact),
                dedupe: hex::encode(&dedupe),
                keys: keys.clone(),
                entries: Vec::new(),
                linked: Vec::new(),
                origin: Some(source.origin(&first, first_b64)),
                ..Item::default()
            };
            // Further originals (the protected copy next to a decrypted one) are kept, linked.
            for (range, b64) in plan.originals.iter().skip(1).cloned() {
                let extra = self.write_item(source, range, b64, &keys)?;
                let extra_id = delta.allocate();
                self.publish(&extra, extra_id, Op::Filed, received, delta)?;
                item.linked.push(extra_id);
                delta.items.push((
                    extra_id,
                    Item {
                        received,
                        size: extra.size,
                        exact: hex::encode(&extra.exact),
                        dedupe: String::new(),
                        keys: keys.clone(),
                        entries: Vec::new(),
                        linked: Vec::new(),
                        origin: None,
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
            return Ok(Some(id));
        }
        // A duplicate: file it only in the folders that do not show it yet.
        delta.counters.push(("duplicates_merged", 1));
        let mut shown: BTreeSet<String> = BTreeSet::new();
        let mut records = Vec::new();
        for id in &existing {
            let item = match pending.items.get(id) {
                Some(item) => Some(item.clone()),
                None => self.store.item(*id)?,
            };
            if let Some(item) = item {
                shown.extend(item.entries.iter().map(|(f, _)| f.clone()));
                if let Some(new) = pending.folders.get(id) {
                    shown.extend(new.iter().cloned());
                }
                records.push((*id, item));
            }
        }
        let new_folders: Vec<String> = plan.folders.difference(&shown).cloned().collect();
        if new_folders.is_empty() {
            let _ = fs::remove_file(&written.tmp);
            return Ok(records.first().map(|(id, _)| *id));
        }
        let exact = hex::encode(&written.exact);
        let union = |item: &Item| {
            let mut all = item.keys.clone();
            for k in &keys {
                if !all.contains(k) {
                    all.push(k.clone());
                }
            }
            all
        };
        // Within the window the first copy is re-sealed to everyone: stored once.
        if let Some((id, item)) = records.first() {
            let all = union(item);
            if let Some(sealed) = self.reseal_from_recent(*id, item, &all)? {
                let _ = fs::remove_file(&written.tmp);
                delta.chain.push(Change {
                    op: Op::Resealed,
                    item: *id,
                    sealed: Some(sealed),
                    time: received,
                });
                let mut updated = item.clone();
                updated.keys = all;
                delta.items.push((*id, updated));
                for folder in new_folders {
                    delta.entries.push((folder, *id, received, item.size));
                }
                return Ok(Some(*id));
            }
        }
        let (target, size) = match records.iter().find(|(_, item)| item.exact == exact) {
            Some((id, item)) => {
                // Same bytes: one file, now sealed to the new users as well.
                let _ = fs::remove_file(&written.tmp);
                let all = union(item);
                let resealed = self.write_item(source, first, first_b64, &all)?;
                self.publish(&resealed, *id, Op::Resealed, received, delta)?;
                let mut updated = item.clone();
                updated.keys = all;
                delta.items.push((*id, updated));
                (*id, item.size)
            }
            None => {
                let id = delta.allocate();
                self.publish(&written, id, Op::Filed, received, delta)?;
                delta.items.push((
                    id,
                    Item {
                        received,
                        size: written.size,
                        exact,
                        dedupe: hex::encode(&dedupe),
                        keys,
                        entries: Vec::new(),
                        linked: Vec::new(),
                        origin: None,
                        ..Item::default()
                    },
                ));
                let mut list = existing.clone();
                list.push(id);
                delta.dedupe.push((dedupe, list));
                (id, written.size)
            }
        };
        for folder in new_folders {
            delta.entries.push((folder, target, received, size));
        }
        Ok(Some(target))
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
        let written = self.write_sealed(&keys, false, |sink| Ok(sink.write_all(&bytes)?))?;
        let id = delta.allocate();
        self.publish(&written, id, Op::Filed, received, delta)?;
        delta.items.push((
            id,
            Item {
                received,
                size: written.size,
                keys,
                envelope_of: Some(original),
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

    /// Moves an item file into place (durable at the next commit's folder sync) and notes
    /// it for the chain. A new item's file is removed again if its intake file fails.
    pub(super) fn publish(
        &self,
        written: &Written,
        id: u64,
        op: Op,
        time: i64,
        delta: &mut Delta,
    ) -> io::Result<()> {
        fs::rename(&written.tmp, self.item_path(id))?;
        if op == Op::Filed {
            delta.published.push(id);
        }
        delta.chain.push(Change {
            op,
            item: id,
            sealed: Some(written.sealed.clone()),
            time,
        });
        Ok(())
    }

    pub(super) fn item_path(&self, id: u64) -> PathBuf {
        self.items_dir.join(format!("{id}.age"))
    }

    /// Seals one original to `keys` in a durable temp file, hashing it on the way.
    fn write_item(
        &self,
        source: &Source<'_>,
        range: Range<u64>,
        base64: bool,
        keys: &[String],
    ) -> Result<Written, ArchiveError> {
        self.write_sealed(keys, true, |sink| source.copy_original(range, base64, sink))
    }

    /// Seals what `fill` writes to `keys` in a temp file (fdatasync'd when `durable`),
    /// hashing it on the way.
    pub(super) fn write_sealed(
        &self,
        keys: &[String],
        durable: bool,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), ArchiveError>,
    ) -> Result<Written, ArchiveError> {
        let epoch = self.current_epoch();
        let recipients: Vec<EpochRecipient> = keys
            .iter()
            .map(|k| epoch.recipient(k))
            .collect::<Result<_, _>>()?;
        let recipients: Vec<&dyn age::Recipient> = recipients.iter().map(|r| r as _).collect();
        let tmp = self
            .tmp_dir
            .join(format!("{}.tmp", crypto::random_hex128()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let out = DigestWriter::new(BufWriter::with_capacity(64 << 10, file));
        let mut salt = [0u8; SALT_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        let mut sink = HashingWriter {
            inner: crypto::seal_to_all(&recipients, out)?,
            exact: Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length"),
            normalized: Normalizer::default(),
            commitment: Sha256::new_with_prefix(salt),
            size: 0,
        };
        let finished = fill(&mut sink).and_then(|()| {
            // The salt of the commitment follows the original, inside the sealed stream.
            sink.inner.write_all(&salt)?;
            let out = sink.inner.finish()?;
            let (digest, size, buffered) = out.finish();
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            if durable {
                file.sync_data()?;
            }
            Ok((digest, size))
        });
        let (digest, sealed_size) = match finished {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        Ok(Written {
            tmp,
            size: sink.size,
            exact: sink.exact.finalize().into_bytes().to_vec(),
            normalized: sink.normalized.finish(),
            sealed: Sealed {
                sha256: hex::encode(digest),
                size: sealed_size,
                commitment: Some(hex::encode(sink.commitment.finalize())),
            },
        })
    }

    /// Re-seals item `id` to `keys` from the message it came from, while that is kept in
    /// `recent/`; none when it is not (any more).
    fn reseal_from_recent(
        &self,
        id: u64,
        item: &Item,
        keys: &[String],
    ) -> Result<Option<Sealed>, ArchiveError> {
        let Some(origin) = &item.origin else {
            return Ok(None);
        };
        // Still in the intake when the item was filed by this same commit.
        let Some(path) = [&self.recent_dir, &self.intake_dir]
            .iter()
            .map(|dir| dir.join(&origin.file))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let source = Source {
            archive: self,
            intake: &path,
            envelope_len: origin.envelope_len,
            skeleton: None,
        };
        let written = self.write_sealed(keys, true, |sink| {
            source.copy_original(origin.start..origin.end, origin.base64, sink)
        })?;
        if written.size != item.size {
            let _ = fs::remove_file(&written.tmp);
            return Ok(None);
        }
        fs::rename(&written.tmp, self.item_path(id))?;
        Ok(Some(written.sealed))
    }

    /// Removes kept intake files older than the duplicate-merge window.
    pub(super) fn sweep_recent(&self) -> Result<(), ArchiveError> {
        for entry in fs::read_dir(&self.recent_dir)? {
            let entry = entry?;
            let old = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|age| age > self.dedupe_window());
            if old {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Keyed hash of (Message-ID, content without volatile headers).
    fn dedupe_key(&self, message_id: Option<&str>, normalized: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"dedupe\0");
        mac.update(message_id.unwrap_or("").trim().as_bytes());
        mac.update(b"\0");
        mac.update(normalized);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Where the bytes of an original come from: the skeleton when it is the whole message,
/// otherwise a decrypting pass over the intake file (or over a kept one).
pub(super) struct Source<'a> {
    pub(super) archive: &'a Archive,
    pub(super) intake: &'a Path,
    pub(super) envelope_len: u64,
    pub(super) skeleton: Option<&'a Skeleton>,
}

impl Source<'_> {
    /// Where an original of this intake file is, for re-sealing it later.
    fn origin(&self, range: &Range<u64>, base64: bool) -> Origin {
        Origin {
            file: self
                .intake
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            envelope_len: self.envelope_len,
            start: range.start,
            end: range.end,
            base64,
        }
    }

    /// Copies an original, decoding a base64 `message/rfc822` part (up to [`DECODE_MAX`]).
    fn copy_original(
        &self,
        range: Range<u64>,
        base64: bool,
        out: &mut (impl Write + ?Sized),
    ) -> Result<(), ArchiveError> {
        if base64 && range.end - range.start <= DECODE_MAX {
            let mut encoded = Vec::new();
            self.copy(range.clone(), &mut encoded)?;
            encoded.retain(|b| !b.is_ascii_whitespace());
            use base64::Engine;
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&encoded) {
                out.write_all(&decoded)?;
                return Ok(());
            }
        }
        self.copy(range, out)
    }

    fn copy(&self, range: Range<u64>, out: &mut (impl Write + ?Sized)) -> Result<(), ArchiveError> {
        if let Some(skeleton) = self.skeleton.filter(|s| s.is_whole()) {
            let r = range.start as usize..(range.end as usize).min(skeleton.bytes.len());
            out.write_all(&skeleton.bytes[r])?;
            return Ok(());
        }
        let mut reader = self.archive.open_intake(self.intake)?;
        io::copy(
            &mut (&mut reader).take(self.envelope_len + range.start),
            &mut io::sink(),
        )?;
        let n = io::copy(&mut reader.take(range.end - range.start), out)?;
        if n != range.end - range.start {
            return Err(ArchiveError::Damaged(
                "intake shorter than its skeleton".into(),
            ));
        }
        Ok(())
    }
}

/// Bytes of random salt sealed after an item's original (see [`super::chain`]).
pub(super) const SALT_BYTES: usize = 16;

pub(super) struct Written {
    tmp: PathBuf,
    pub(super) size: u64,
    exact: Vec<u8>,
    normalized: Vec<u8>,
    sealed: Sealed,
}

/// Hashes the plaintext on its way into the sealing stream.
struct HashingWriter<W: Write> {
    inner: W,
    exact: Hmac<Sha256>,
    normalized: Normalizer,
    commitment: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.exact.update(&buf[..n]);
        self.normalized.update(&buf[..n]);
        self.commitment.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes the sealed bytes on their way to the file.
pub(super) struct DigestWriter<W: Write> {
    inner: W,
    digest: Sha256,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    pub(super) fn new(inner: W) -> DigestWriter<W> {
        DigestWriter {
            inner,
            digest: Sha256::new(),
            size: 0,
        }
    }

    /// (SHA-256, bytes written, the writer).
    pub(super) fn finish(self) -> ([u8; 32], u64, W) {
        (self.digest.finalize().into(), self.size, self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
