//! Which items a public key can read, kept per key between SELECTs: the first listing
//! scans the key's `sealed-to` rows, later ones only the rows of items filed since (item
//! IDs only grow), so opening a folder of a million items does not rescan a million rows.
//! A grant or a removal (rows added under or taken from the scanned range) starts the
//! keys over. Sound because one process holds the archive database (redb's file lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::itemset::ItemSet;

/// Keys remembered at once (a bitmap of 128 KB per million items each).
const KEYS: usize = 64;

/// The readable items of recently listed keys.
#[derive(Default)]
pub struct ReadableCache {
    /// Bumped by every change that is not the filing of new items.
    generation: AtomicU64,
    keys: Mutex<HashMap<String, Known>>,
}

/// What a key was found to read, and up to where.
struct Known {
    generation: u64,
    items: ItemSet,
    /// The highest item scanned (the next scan starts after it).
    scanned: u64,
}

impl ReadableCache {
    /// Forgets every key (a grant or a removal changed rows below the scanned ranges).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The items `key` can read: those known, plus the rows `scan(after)` finds past the
    /// last scan (`scan(0)`: all of them).
    pub fn get<E>(
        &self,
        key: &str,
        scan: impl FnOnce(u64) -> Result<Vec<u64>, E>,
    ) -> Result<ItemSet, E> {
        let generation = self.generation.load(Ordering::SeqCst);
        let known = self
            .lock()
            .remove(key)
            .filter(|k| k.generation == generation);
        let (mut items, after) = match known {
            Some(k) => (k.items, k.scanned),
            None => (ItemSet::new(), 0),
        };
        let found = scan(after)?;
        let scanned = found.iter().copied().max().unwrap_or(after).max(after);
        items.extend(found);
        let mut keys = self.lock();
        if keys.len() >= KEYS {
            keys.clear();
        }
        let out = items.clone();
        keys.insert(
            key.to_owned(),
            Known {
                generation,
                items,
                scanned,
            },
        );
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_only_past_the_last_and_starts_over_when_invalidated() {
        let cache = ReadableCache::default();
        let mut asked = Vec::new();
        let mut get = |rows: Vec<u64>| {
            cache
                .get::<()>("k", |after| {
                    asked.push(after);
                    Ok(rows.into_iter().filter(|r| *r > after).collect())
                })
                .unwrap()
        };
        assert_eq!(get(vec![1, 2, 5]).len(), 3);
        let set = get(vec![1, 2, 5, 9]);
        assert!(set.contains(9) && set.contains(1) && set.len() == 4);
        cache.invalidate();
        assert_eq!(get(vec![2, 9]).len(), 2, "a removal: scanned again");
        assert_eq!(asked, vec![0, 5, 0]);
    }
}
