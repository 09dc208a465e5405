//! Where items' sealed bytes live, for the rest of the archive: the open pack the worker
//! appends to (opened, or started, on the first write), what a commit records about it,
//! reading an item wherever it is (a pack, or its own file from before packs), and
//! compacting packs after retention so removed items really leave the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader};

use super::pack::{self, Location, PackWriter};
use super::store::{Batch, Item};
use super::*;

impl Archive {
    /// Runs `f` on the open pack, opening the last unclosed one or starting a new one.
    pub(super) fn with_pack<T>(
        &self,
        f: impl FnOnce(&mut PackWriter) -> Result<T, ArchiveError>,
    ) -> Result<T, ArchiveError> {
        let mut guard = self.pack.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(self.open_pack()?);
        }
        f(guard.as_mut().expect("just opened"))
    }

    fn open_pack(&self) -> Result<PackWriter, ArchiveError> {
        let packs = self.store.packs()?;
        if let Some((id, committed, _)) = packs.iter().rev().find(|(_, _, closed)| !closed) {
            if pack::path(&self.items_dir, *id).is_file() {
                return Ok(PackWriter::reopen(&self.items_dir, *id, *committed)?);
            }
        }
        let next = packs.last().map(|(id, _, _)| id + 1).unwrap_or(1);
        Ok(PackWriter::create(&self.items_dir, next)?)
    }

    /// Where the open pack ends now (to cut back to when an intake file fails).
    pub(super) fn pack_mark(&self) -> Option<(u64, u64)> {
        let guard = self.pack.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|p| (p.id, p.len))
    }

    /// Forgets what was appended after `mark` (nothing refers to it).
    pub(super) fn pack_cut(&self, mark: Option<(u64, u64)>) {
        let mut guard = self.pack.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pack) = guard.as_mut() {
            let to = match mark {
                Some((id, len)) if id == pack.id => len,
                _ => pack.committed,
            };
            pack.truncate(to);
        }
    }

    /// Makes the open pack durable (its data, and its name when new); returns the row the
    /// commit records: (pack, bytes committed, closed).
    pub(super) fn prepare_pack(&self) -> Result<Option<(u64, u64, bool)>, ArchiveError> {
        let mut guard = self.pack.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pack) = guard.as_mut() else {
            return Ok(None);
        };
        if pack.len == pack.committed && !pack.created {
            return Ok(None);
        }
        pack.sync()?;
        if pack.created {
            fsutil::sync_dir(&self.items_dir)?;
        }
        Ok(Some((pack.id, pack.len, pack.full())))
    }

    /// After a commit: what it recorded is committed (a full pack is closed), or, when it
    /// failed, what it would have recorded is cut off.
    pub(super) fn finish_pack(&self, committed: bool) {
        let mut guard = self.pack.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pack) = guard.as_mut() else { return };
        if !committed {
            pack.roll_back();
            return;
        }
        pack.committed();
        if pack.full() {
            *guard = None;
        }
    }

    /// What the archive knows of an item (nothing secret): for `archive item`.
    pub fn describe_item(&self, id: u64) -> Result<serde_json::Value, ArchiveError> {
        let item = self.store.item(id)?.ok_or(ArchiveError::NoSuchMessage)?;
        let file = match &item.location {
            Some(l) => pack::path(&self.items_dir, l.pack),
            None => self.item_path(id),
        };
        Ok(serde_json::json!({
            "item": id,
            "received": item.received,
            "size": item.size,
            "folders": item.entries,
            "readers": item.keys.len(),
            "linked": item.linked,
            "envelope_of": item.envelope_of,
            "envelopes": item.envelopes,
            "file": file,
            "offset": item.location.map(|l| l.offset).unwrap_or(0),
            "length": match item.location {
                Some(l) => l.len,
                None => fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
            },
            "link": self.store.link_of(id)?,
        }))
    }

    /// Closes the open pack (everything in it is committed: the caller holds `filing`), so
    /// that it can be compacted; the next write starts a new one.
    fn close_pack(&self) -> Result<(), ArchiveError> {
        let mut guard = self.pack.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pack) = guard.take() {
            self.store.apply(Batch {
                packs: vec![(pack.id, pack.committed, true)],
                ..Batch::default()
            })?;
        }
        Ok(())
    }

    /// The sealed bytes of an item, wherever they are.
    pub(super) fn item_bytes(
        &self,
        id: u64,
        item: Option<&Item>,
    ) -> Result<Box<dyn BufRead + Send>, ArchiveError> {
        let location = match item {
            Some(item) => item.location,
            None => self.store.item(id)?.and_then(|i| i.location),
        };
        let not_found = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => ArchiveError::NoSuchMessage,
            _ => e.into(),
        };
        Ok(match location {
            Some(location) => Box::new(pack::open(&self.items_dir, &location).map_err(not_found)?),
            None => Box::new(BufReader::with_capacity(
                64 << 10,
                File::open(self.item_path(id)).map_err(not_found)?,
            )),
        })
    }

    /// Removes the packs that hold no live item and compacts the others that lost some:
    /// their live items are copied into the open pack, the records moved in one commit,
    /// and the old pack removed. Call with `filing` held.
    pub(super) fn compact(&self, touched: &BTreeSet<u64>) -> Result<(), ArchiveError> {
        if self
            .pack_mark()
            .is_some_and(|(id, _)| touched.contains(&id))
        {
            self.close_pack()?;
        }
        let open = self.pack_mark().map(|(id, _)| id);
        let mut live: BTreeMap<u64, Vec<(u64, Item)>> = BTreeMap::new();
        for (id, item) in self.store.items()? {
            if let Some(loc) = item.location.filter(|l| touched.contains(&l.pack)) {
                live.entry(loc.pack).or_default().push((id, item));
            }
        }
        for pack_id in touched.iter().filter(|p| Some(**p) != open) {
            let items = live.remove(pack_id).unwrap_or_default();
            if !items.is_empty() {
                self.move_items(items)?;
            }
            self.store.drop_packs(&[*pack_id])?;
            let _ = fs::remove_file(pack::path(&self.items_dir, *pack_id));
            tracing::info!(pack = pack_id, "archive pack compacted");
        }
        Ok(())
    }

    /// Copies items' sealed bytes (unchanged: their chain hashes hold) into the open pack
    /// and records their new locations durably.
    fn move_items(&self, items: Vec<(u64, Item)>) -> Result<(), ArchiveError> {
        let mut moved = Vec::with_capacity(items.len());
        for (id, mut item) in items {
            let mut bytes = self.item_bytes(id, Some(&item))?;
            let (_, location): ((), Location) = self.with_pack(|pack| {
                pack.append(|out| {
                    io::copy(&mut bytes, out)?;
                    Ok::<_, ArchiveError>(())
                })
            })?;
            item.location = Some(location);
            moved.push((id, item));
        }
        let row = self.prepare_pack()?;
        let result = self.store.apply(Batch {
            items: moved,
            packs: row.into_iter().collect(),
            ..Batch::default()
        });
        self.finish_pack(result.is_ok());
        result?;
        Ok(())
    }
}
