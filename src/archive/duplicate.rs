//! Duplicates: the same message reported again (bifurcated reports, one per recipient
//! group; a report sent again after an NDR) is stored once and shown in the new folders.
//!
//! The key is a keyed hash of the Message-ID and the content without volatile header
//! fields. Within the duplicate-merge window the first copy is sealed again, from the
//! intake file kept in `recent/`, to everyone who now reads it; after it, an identical copy
//! is still merged (sealed again from this report) and a copy that differs only in volatile
//! fields becomes a second item for the new readers.

use std::collections::BTreeSet;
use std::fs;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::chain::Op;
use super::file::{Delta, Filing, Pending};
use super::source::{Fingerprint, Source};
use super::store::Item;
use super::{Archive, ArchiveError};

impl Archive {
    /// Files a duplicate of `existing` items; returns the item it is shown as.
    pub(super) fn file_duplicate(
        &self,
        filing: Filing<'_>,
        existing: &[u64],
        pending: &Pending,
        delta: &mut Delta,
    ) -> Result<Option<u64>, ArchiveError> {
        delta.counters.push(("duplicates_merged", 1));
        let mut shown: BTreeSet<String> = BTreeSet::new();
        let mut records = Vec::new();
        for id in existing {
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
        let new_folders: Vec<String> = filing.folders.difference(&shown).cloned().collect();
        if new_folders.is_empty() {
            return Ok(records.first().map(|(id, _)| *id));
        }
        let received = filing.received;
        let union = |item: &Item| {
            let mut all = item.keys.clone();
            for k in filing.keys {
                if !all.contains(k) {
                    all.push(k.clone());
                }
            }
            all
        };
        // Within the window the first copy is sealed again to everyone: stored once.
        if let Some((id, item)) = records.first() {
            let all = union(item);
            if let Some(written) = self.reseal_from_recent(item, &all)? {
                self.publish(&written, *id, Op::Resealed, received, delta);
                let mut updated = item.clone();
                updated.keys = all;
                updated.location = Some(written.location);
                delta.items.push((*id, updated));
                for folder in new_folders {
                    delta.entries.push((folder, *id, received, item.size));
                }
                return Ok(Some(*id));
            }
        }
        let exact = hex::encode(&filing.fingerprint.exact);
        let (target, size) = match records.iter().find(|(_, item)| item.exact == exact) {
            Some((id, item)) => {
                // Same bytes: one item, now sealed to the new users as well.
                let all = union(item);
                let written =
                    self.write_item(filing.source, filing.range.clone(), filing.base64, &all)?;
                self.publish(&written, *id, Op::Resealed, received, delta);
                let mut updated = item.clone();
                updated.keys = all;
                updated.location = Some(written.location);
                delta.items.push((*id, updated));
                (*id, item.size)
            }
            None => {
                let written = self.write_item(
                    filing.source,
                    filing.range.clone(),
                    filing.base64,
                    filing.keys,
                )?;
                let id = delta.allocate();
                self.publish(&written, id, Op::Filed, received, delta);
                delta.items.push((
                    id,
                    Item {
                        received,
                        size: written.size,
                        exact,
                        dedupe: hex::encode(&filing.dedupe),
                        keys: filing.keys.to_vec(),
                        location: Some(written.location),
                        ..Item::default()
                    },
                ));
                let mut list = existing.to_vec();
                list.push(id);
                delta.dedupe.push((filing.dedupe, list));
                (id, written.size)
            }
        };
        for folder in new_folders {
            delta.entries.push((folder, target, received, size));
        }
        Ok(Some(target))
    }

    /// Seals `item` again to `keys` from the message it came from, while that is kept in
    /// `recent/`; none when it is not (any more).
    fn reseal_from_recent(
        &self,
        item: &Item,
        keys: &[String],
    ) -> Result<Option<super::source::Written>, ArchiveError> {
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
        // The same bytes, or it is not the same item: checked before anything is written.
        let mut check = super::source::FingerprintWriter::new(&self.secret);
        source.copy_original(origin.start..origin.end, origin.base64, &mut check)?;
        if hex::encode(check.finish().exact) != item.exact {
            return Ok(None);
        }
        let written = self.write_item(&source, origin.start..origin.end, origin.base64, keys)?;
        Ok(Some(written))
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
    pub(super) fn dedupe_key(&self, message_id: Option<&str>, normalized: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"dedupe\0");
        mac.update(message_id.unwrap_or("").trim().as_bytes());
        mac.update(b"\0");
        mac.update(normalized);
        mac.finalize().into_bytes().to_vec()
    }

    /// The fingerprint of an original, read once before anything is sealed.
    pub(super) fn fingerprint(
        &self,
        source: &Source<'_>,
        range: std::ops::Range<u64>,
        base64: bool,
    ) -> Result<Fingerprint, ArchiveError> {
        let mut sink = super::source::FingerprintWriter::new(&self.secret);
        source.copy_original(range, base64, &mut sink)?;
        Ok(sink.finish())
    }
}
