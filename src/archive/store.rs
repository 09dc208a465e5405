//! The archive's metadata (redb, `data_dir/archive/archive.redb`): folders and their UIDs,
//! item records, the duplicate map, counters. It is the source of truth for the folders and
//! is committed durably; item contents are the sealed files in `archive/items/`.
//!
//! No subject or address is stored here: item records name users by ID, and the duplicate
//! key is a keyed hash.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::chain::{self, Change, Checkpoint, Link};
use super::pack::Location;
use super::summarytables::SealedSummary;

/// (folder, uid) -> (item, received, size)
const ENTRIES: TableDefinition<(&str, u32), (u64, i64, u64)> = TableDefinition::new("entries");
/// folder -> (uidvalidity, uidnext)
const FOLDERS: TableDefinition<&str, (u32, u32)> = TableDefinition::new("folders");
/// item -> JSON [`Item`]
const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("items");
/// keyed hash of (Message-ID, content) -> JSON list of items
const DEDUPE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedupe");
/// counter name -> value
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// intake file names already archived (their file may still exist after a crash)
const DONE: TableDefinition<&str, ()> = TableDefinition::new("done");
/// (public key, item): the item is sealed to that key, so its owner can read it
const SEALED_TO: TableDefinition<(&str, u64), ()> = TableDefinition::new("sealed-to");
/// (public key, item) -> an age stanza wrapping the item's file key for that key, given by a
/// grant (the item file itself is never rewritten for one)
const GRANTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("grants");
/// seq -> one link of the integrity chain, as the exact bytes it is hashed over
const CHAIN: TableDefinition<u64, &[u8]> = TableDefinition::new("chain");
/// item -> the sequence number of its newest link (filed or re-sealed)
const CHAIN_OF: TableDefinition<u64, u64> = TableDefinition::new("chain-of");
/// pack -> (bytes committed, closed): the pack files items are appended to
const PACKS: TableDefinition<u64, (u64, bool)> = TableDefinition::new("packs");
/// seq -> JSON [`Checkpoint`] signed at that link
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");

use super::dberror::err;
pub use super::dberror::StoreError;

/// redb's page cache for the archive database when the caller names none (the CLI's
/// short runs). The server's is `[archive] cache_mb`: summaries and word indexes make the
/// database large; reads beyond the cache come from the kernel's page cache, so the
/// server's memory stays bounded whatever the archive's size.
pub const CACHE_BYTES: usize = 64 << 20;

/// One stored file: an archived original (or a second copy linked to one, or the journal
/// envelope of one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Item {
    pub received: i64,
    pub size: u64,
    /// Keyed hash of the exact bytes (hex), to know when a duplicate can share the file.
    pub exact: String,
    /// Keyed duplicate key (hex).
    pub dedupe: String,
    /// Public keys the file is sealed to.
    pub keys: Vec<String>,
    /// Folder entries that show this item.
    pub entries: Vec<(String, u32)>,
    /// Further copies of the same message (the encrypted original next to a decrypted one).
    #[serde(default)]
    pub linked: Vec<u64>,
    /// Where the original sits in the message it came from, which is kept in
    /// `archive/recent/` (sealed to the server key) for a while to merge duplicates.
    #[serde(default)]
    pub origin: Option<Origin>,
    /// This item is the journal envelope of that original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_of: Option<u64>,
    /// The envelope items of this original (one per report filed for it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envelopes: Vec<u64>,
    /// Where its sealed bytes are; none for an item of its own file (`items/<id>.age`,
    /// written before packs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

#[cfg(test)]
impl Item {
    /// A record with only what holds and retention look at: the arrival time and folders.
    pub fn filed_in(received: i64, folders: &[&str]) -> Item {
        Item {
            received,
            size: 1,
            exact: String::new(),
            dedupe: String::new(),
            keys: vec![],
            entries: folders.iter().map(|f| (f.to_string(), 1)).collect(),
            ..Item::default()
        }
    }
}

/// An original's place in a kept intake file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Origin {
    /// The intake file name (`<unix>.<hex>.age`), now in `archive/recent/`.
    pub file: String,
    /// Length of the envelope line before the message.
    pub envelope_len: u64,
    pub start: u64,
    pub end: u64,
    /// The part is base64 encoded and was decoded.
    pub base64: bool,
}

/// A folder entry as IMAP needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    pub item: u64,
    pub received: i64,
    pub size: u64,
}

pub struct Store {
    pub(super) db: Database,
    /// What each recently listed key can read.
    readable: super::readable::ReadableCache,
}

/// The changes of archiving one intake file, committed at once.
#[derive(Default)]
pub struct Batch {
    pub items: Vec<(u64, Item)>,
    /// (folder, item, received, size): get the next UID of the folder.
    pub entries: Vec<(String, u64, i64, u64)>,
    pub dedupe: Vec<(Vec<u8>, Vec<u64>)>,
    pub counters: Vec<(&'static str, u64)>,
    /// Intake files archived by this batch.
    pub done: Vec<String>,
    /// Item files written or replaced by this batch, for the integrity chain.
    pub chain: Vec<Change>,
    /// (original, envelope item): the envelope is added to the original's record.
    pub envelopes: Vec<(u64, u64)>,
    /// (pack, bytes committed, closed): how far the packs written to are committed.
    pub packs: Vec<(u64, u64, bool)>,
    /// Sealed summaries of the items written.
    pub summaries: Vec<(u64, SealedSummary)>,
}

impl Store {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(ENTRIES).map_err(err)?;
        txn.open_table(FOLDERS).map_err(err)?;
        txn.open_table(ITEMS).map_err(err)?;
        txn.open_table(DEDUPE).map_err(err)?;
        txn.open_table(COUNTERS).map_err(err)?;
        txn.open_table(DONE).map_err(err)?;
        txn.open_table(SEALED_TO).map_err(err)?;
        txn.open_table(GRANTS).map_err(err)?;
        txn.open_table(CHAIN).map_err(err)?;
        txn.open_table(CHECKPOINTS).map_err(err)?;
        txn.open_table(CHAIN_OF).map_err(err)?;
        txn.open_table(PACKS).map_err(err)?;
        super::flagtables::create_tables(&txn)?;
        super::summarytables::create_tables(&txn)?;
        txn.commit().map_err(err)?;
        Ok(Store {
            db,
            readable: Default::default(),
        })
    }

    /// Applies a batch durably; returns the (folder, uid) of each new entry, in order.
    pub fn apply(&self, batch: Batch) -> Result<Vec<(String, u32)>, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut placed = Vec::new();
        {
            let mut folders = txn.open_table(FOLDERS).map_err(err)?;
            let mut entries = txn.open_table(ENTRIES).map_err(err)?;
            let mut items = txn.open_table(ITEMS).map_err(err)?;
            let mut records: Vec<(u64, Item)> = batch.items;
            for (folder, item, received, size) in batch.entries {
                let (validity, next) = match folders.get(folder.as_str()).map_err(err)? {
                    Some(v) => v.value(),
                    None => (uidvalidity_now(), 1),
                };
                folders
                    .insert(folder.as_str(), (validity, next + 1))
                    .map_err(err)?;
                entries
                    .insert((folder.as_str(), next), (item, received, size))
                    .map_err(err)?;
                // The item record lists its entries (for retention).
                match records.iter_mut().find(|(id, _)| *id == item) {
                    Some((_, rec)) => rec.entries.push((folder.clone(), next)),
                    None => {
                        if let Some(raw) = items.get(item).map_err(err)? {
                            if let Ok(mut rec) = serde_json::from_slice::<Item>(raw.value()) {
                                rec.entries.push((folder.clone(), next));
                                records.push((item, rec));
                            }
                        }
                    }
                }
                placed.push((folder, next));
            }
            for (original, envelope) in batch.envelopes {
                match records.iter_mut().find(|(id, _)| *id == original) {
                    Some((_, rec)) => rec.envelopes.push(envelope),
                    None => {
                        if let Some(raw) = items.get(original).map_err(err)? {
                            if let Ok(mut rec) = serde_json::from_slice::<Item>(raw.value()) {
                                rec.envelopes.push(envelope);
                                records.push((original, rec));
                            }
                        }
                    }
                }
            }
            let mut sealed = txn.open_table(SEALED_TO).map_err(err)?;
            for (id, rec) in &records {
                let json = serde_json::to_vec(rec).expect("serializes");
                items.insert(*id, json.as_slice()).map_err(err)?;
                for key in &rec.keys {
                    sealed.insert((key.as_str(), *id), ()).map_err(err)?;
                }
            }
            let mut dedupe = txn.open_table(DEDUPE).map_err(err)?;
            for (key, list) in batch.dedupe {
                let json = serde_json::to_vec(&list).expect("serializes");
                dedupe
                    .insert(key.as_slice(), json.as_slice())
                    .map_err(err)?;
            }
            let mut counters = txn.open_table(COUNTERS).map_err(err)?;
            for (name, add) in batch.counters {
                let now = counters
                    .get(name)
                    .map_err(err)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                counters.insert(name, now + add).map_err(err)?;
            }
            let mut done = txn.open_table(DONE).map_err(err)?;
            for name in &batch.done {
                done.insert(name.as_str(), ()).map_err(err)?;
            }
        }
        append_links(&txn, &batch.chain)?;
        super::flagtables::record_filed(&txn, &placed)?;
        super::summarytables::record(&txn, &batch.summaries)?;
        {
            let mut packs = txn.open_table(PACKS).map_err(err)?;
            for (id, committed, closed) in batch.packs {
                packs.insert(id, (committed, closed)).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(placed)
    }

    /// Every pack: (id, bytes committed, closed), in ID order.
    pub fn packs(&self) -> Result<Vec<(u64, u64, bool)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(PACKS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let (committed, closed) = v.value();
            out.push((k.value(), committed, closed));
        }
        Ok(out)
    }

    /// Forgets packs (their files are gone).
    pub fn drop_packs(&self, ids: &[u64]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(PACKS).map_err(err)?;
            for id in ids {
                table.remove(*id).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// The newest link: (sequence number, hash); `(0, GENESIS)` for an empty chain.
    pub fn chain_head(&self) -> Result<(u64, String), StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CHAIN).map_err(err)?;
        let last = table.last().map_err(err)?;
        Ok(match last {
            Some((k, v)) => (k.value(), chain::hash(v.value())),
            None => (0, chain::GENESIS.to_owned()),
        })
    }

    /// Calls `f` with each link from `from` on, in order.
    pub fn for_each_link(
        &self,
        from: u64,
        mut f: impl FnMut(u64, &[u8]),
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CHAIN).map_err(err)?;
        for row in table.range(from..).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    /// Adds links for changes made outside a batch (e.g. the first chain of an older archive).
    pub fn append_chain(&self, changes: &[Change]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        append_links(&txn, changes)?;
        txn.commit().map_err(err)
    }

    /// The sequence number of an item's newest link.
    pub fn link_of(&self, item: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CHAIN_OF).map_err(err)?;
        Ok(table.get(item).map_err(err)?.map(|v| v.value()))
    }

    /// The links `from..=to`, as stored.
    pub fn links(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CHAIN).map_err(err)?;
        let mut out = Vec::new();
        for row in table.range(from..=to).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(CHECKPOINTS).map_err(err)?;
            let json = serde_json::to_vec(checkpoint).expect("serializes");
            table.insert(checkpoint.seq, json.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Every checkpoint, oldest first (unreadable ones are left out).
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CHECKPOINTS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            if let Ok(cp) = serde_json::from_slice(v.value()) {
                out.push(cp);
            }
        }
        Ok(out)
    }

    /// The next free item number.
    pub fn next_item(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let items = txn.open_table(ITEMS).map_err(err)?;
        let last = items.last().map_err(err)?.map(|(k, _)| k.value());
        Ok(last.map(|l| l + 1).unwrap_or(1))
    }

    pub fn item(&self, id: u64) -> Result<Option<Item>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let items = txn.open_table(ITEMS).map_err(err)?;
        let found = items.get(id).map_err(err)?;
        Ok(found.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Every item record, in ID order.
    pub fn items(&self) -> Result<Vec<(u64, Item)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let items = txn.open_table(ITEMS).map_err(err)?;
        let mut out = Vec::new();
        for row in items.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let Ok(item) = serde_json::from_slice(v.value()) {
                out.push((k.value(), item));
            }
        }
        Ok(out)
    }

    pub fn item_ids(&self) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let items = txn.open_table(ITEMS).map_err(err)?;
        let mut out = Vec::new();
        for row in items.iter().map_err(err)? {
            out.push(row.map_err(err)?.0.value());
        }
        Ok(out)
    }

    pub fn duplicates(&self, key: &[u8]) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DEDUPE).map_err(err)?;
        let found = table.get(key).map_err(err)?;
        Ok(found
            .and_then(|v| serde_json::from_slice(v.value()).ok())
            .unwrap_or_default())
    }

    pub fn is_done(&self, intake_name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DONE).map_err(err)?;
        Ok(table.get(intake_name).map_err(err)?.is_some())
    }

    /// Forgets "done" marks whose intake files are gone.
    pub fn forget_done(&self, keep: impl Fn(&str) -> bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(DONE).map_err(err)?;
            table.retain(|name, _| keep(name)).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// The entries of a folder in UID order.
    pub fn entries(&self, folder: &str) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ENTRIES).map_err(err)?;
        let mut out = Vec::new();
        for row in table.range((folder, 0)..=(folder, u32::MAX)).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let (item, received, size) = v.value();
            out.push(Entry {
                uid: k.value().1,
                item,
                received,
                size,
            });
        }
        Ok(out)
    }

    /// One entry of a folder.
    /// The items behind UIDs of a folder, in one read.
    pub fn items_for(&self, folder: &str, uids: &[u32]) -> Result<Vec<Option<u64>>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ENTRIES).map_err(err)?;
        uids.iter()
            .map(|uid| Ok(table.get((folder, *uid)).map_err(err)?.map(|v| v.value().0)))
            .collect()
    }

    pub fn entry(&self, folder: &str, uid: u32) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ENTRIES).map_err(err)?;
        let found = table.get((folder, uid)).map_err(err)?;
        Ok(found.map(|v| {
            let (item, received, size) = v.value();
            Entry {
                uid,
                item,
                received,
                size,
            }
        }))
    }

    /// Records grants durably: each item becomes readable by `key` through its stanza.
    /// Items gone meanwhile, or already readable by `key`, are skipped; returns how many
    /// were granted.
    pub fn grant(&self, key: &str, stanzas: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut count = 0;
        {
            let mut items = txn.open_table(ITEMS).map_err(err)?;
            let mut sealed = txn.open_table(SEALED_TO).map_err(err)?;
            let mut grants = txn.open_table(GRANTS).map_err(err)?;
            for (id, stanza) in stanzas {
                let record = items.get(*id).map_err(err)?;
                let Some(mut item) =
                    record.and_then(|v| serde_json::from_slice::<Item>(v.value()).ok())
                else {
                    continue;
                };
                if item.keys.iter().any(|k| k == key) {
                    continue;
                }
                item.keys.push(key.to_owned());
                let json = serde_json::to_vec(&item).expect("serializes");
                items.insert(*id, json.as_slice()).map_err(err)?;
                sealed.insert((key, *id), ()).map_err(err)?;
                grants.insert((key, *id), stanza.as_slice()).map_err(err)?;
                count += 1;
            }
        }
        txn.commit().map_err(err)?;
        self.readable.invalidate();
        Ok(count)
    }

    /// The stanza a grant gave `key` for an item, if any.
    pub fn granted(&self, key: &str, item: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(GRANTS).map_err(err)?;
        let found = table.get((key, item)).map_err(err)?;
        Ok(found.map(|v| v.value().to_vec()))
    }

    /// The items sealed to a public key (what its owner can read).
    pub fn readable(&self, key: &str) -> Result<super::itemset::ItemSet, StoreError> {
        Ok(self.sealed_to(key, 0)?.into_iter().collect())
    }

    /// [`Store::readable`], from what earlier calls found plus the items filed since.
    pub fn readable_cached(&self, key: &str) -> Result<super::itemset::ItemSet, StoreError> {
        self.readable.get(key, |after| self.sealed_to(key, after))
    }

    /// The items past `after` sealed to a public key.
    fn sealed_to(&self, key: &str, after: u64) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SEALED_TO).map_err(err)?;
        let mut out = Vec::new();
        let Some(from) = after.checked_add(1) else {
            return Ok(out);
        };
        for row in table.range((key, from)..=(key, u64::MAX)).map_err(err)? {
            out.push(row.map_err(err)?.0.value().1);
        }
        Ok(out)
    }

    /// (uidvalidity, uidnext) of a folder; a folder never written to gets fixed numbers.
    pub fn folder(&self, folder: &str) -> Result<(u32, u32), StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(FOLDERS).map_err(err)?;
        let found = table.get(folder).map_err(err)?;
        Ok(found.map(|v| v.value()).unwrap_or((1, 1)))
    }

    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(COUNTERS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// Removes items (and their entries and duplicate keys) durably, each with a removal
    /// link on the chain at `time`.
    pub fn remove_items(&self, ids: &[u64], time: i64) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut removed = Vec::new();
        let mut folders_changed = Vec::new();
        let mut gone_entries = Vec::new();
        {
            let mut items = txn.open_table(ITEMS).map_err(err)?;
            let mut entries = txn.open_table(ENTRIES).map_err(err)?;
            let mut dedupe = txn.open_table(DEDUPE).map_err(err)?;
            let mut sealed = txn.open_table(SEALED_TO).map_err(err)?;
            let mut grants = txn.open_table(GRANTS).map_err(err)?;
            for id in ids {
                let Some(raw) = items.remove(*id).map_err(err)? else {
                    continue;
                };
                let Ok(rec) = serde_json::from_slice::<Item>(raw.value()) else {
                    continue;
                };
                drop(raw);
                removed.push(Change {
                    op: chain::Op::Removed,
                    item: *id,
                    sealed: None,
                    time,
                });
                for key in &rec.keys {
                    sealed.remove((key.as_str(), *id)).map_err(err)?;
                    grants.remove((key.as_str(), *id)).map_err(err)?;
                }
                gone_entries.extend(rec.entries.iter().cloned());
                for (folder, uid) in &rec.entries {
                    entries.remove((folder.as_str(), *uid)).map_err(err)?;
                    if !folders_changed.contains(folder) {
                        folders_changed.push(folder.clone());
                    }
                }
                if let Ok(key) = hex::decode(&rec.dedupe) {
                    let list: Vec<u64> = dedupe
                        .get(key.as_slice())
                        .map_err(err)?
                        .and_then(|v| serde_json::from_slice(v.value()).ok())
                        .unwrap_or_default();
                    let rest: Vec<u64> = list.into_iter().filter(|i| i != id).collect();
                    if rest.is_empty() {
                        dedupe.remove(key.as_slice()).map_err(err)?;
                    } else {
                        let json = serde_json::to_vec(&rest).expect("serializes");
                        dedupe
                            .insert(key.as_slice(), json.as_slice())
                            .map_err(err)?;
                    }
                }
            }
        }
        append_links(&txn, &removed)?;
        super::flagtables::record_removed(&txn, &gone_entries)?;
        super::summarytables::forget(&txn, ids)?;
        txn.commit().map_err(err)?;
        self.readable.invalidate();
        Ok(folders_changed)
    }
}

#[cfg(test)]
impl Store {
    /// Cuts the chain after link `keep` (what an attacker hiding removals would do).
    pub fn truncate_chain_for_test(&self, keep: u64) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(CHAIN).unwrap();
            table.retain(|seq, _| seq <= keep).unwrap();
        }
        txn.commit().unwrap();
    }
}

/// Appends links for `changes` after the chain's head, in the same transaction.
fn append_links(txn: &WriteTransaction, changes: &[Change]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(CHAIN).map_err(err)?;
    let mut newest = txn.open_table(CHAIN_OF).map_err(err)?;
    let (mut seq, mut head) = match table.last().map_err(err)? {
        Some((k, v)) => (k.value(), chain::hash(v.value())),
        None => (0, chain::GENESIS.to_owned()),
    };
    for change in changes {
        let bytes = Link::encode(change, seq, &head);
        seq += 1;
        head = chain::hash(&bytes);
        table.insert(seq, bytes.as_slice()).map_err(err)?;
        match change.op {
            chain::Op::Removed => newest.remove(change.item).map_err(err)?,
            _ => newest.insert(change.item, seq).map_err(err)?,
        };
    }
    Ok(())
}

fn uidvalidity_now() -> u32 {
    u32::try_from(chrono::Utc::now().timestamp())
        .unwrap_or(1)
        .max(1)
}
