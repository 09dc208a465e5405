//! Per-user flags in archive folders: each user's `\Seen`, `\Flagged`, `\Answered`,
//! `\Draft` and keywords on archived messages (never `\Deleted`: the archive expunges
//! nothing), with RFC 7162 modification sequences. Flags are metadata, not mail, and are
//! stored in the clear in the archive database; keyword names are per user.
//!
//! Modseqs: an entry gets one when it is filed (entries filed before modseqs existed count
//! as 1), a flag change gets a fresh one, and a removal (retention) raises the floor of
//! every folder's HIGHESTMODSEQ.

use redb::{ReadTransaction, ReadableTable};

use super::dberror::{err, StoreError};
use super::flagtables::{ENTRY_MODSEQ, MODSEQ_FLOOR, USER_FLAGS, USER_KEYWORDS};
use super::store::Store;
use crate::message::{FlagOp, Flags, MAX_KEYWORDS};

/// What a flag change did: (uid, flags, modseq) of each entry handled, and the UIDs refused.
pub type FlagChanges = (Vec<(u32, Flags, u64)>, Vec<u32>);

/// A user's flags on one entry: (uid, (flags, modseq of the user's last change)).
pub type UserFlag = (u32, (u32, u64));

/// The flags archive users may keep.
pub const KEEPABLE: Flags = Flags(!Flags::DELETED.0);

/// A user's view of a folder's flags and modseqs, sorted by UID (a folder of a million
/// entries is read as two range scans, without hashing).
#[derive(Default)]
pub struct FolderFlags {
    /// (uid, modseq at filing).
    pub filed: Vec<(u32, u64)>,
    pub user: Vec<UserFlag>,
    pub floor: u64,
}

impl FolderFlags {
    /// (flags, modseq) of one entry for this user.
    pub fn of(&self, uid: u32) -> (Flags, u64) {
        let filed = find(&self.filed, uid).copied().unwrap_or(1);
        combine(filed, find(&self.user, uid).copied())
    }

    /// Whether the folder has any record of `uid`.
    fn knows(&self, uid: u32) -> bool {
        find(&self.filed, uid).is_some() || find(&self.user, uid).is_some()
    }

    /// A reader of (flags, modseq) for UIDs asked in ascending order (linear, not a search
    /// per UID).
    pub fn walk(&self) -> impl FnMut(u32) -> (Flags, u64) + '_ {
        let (mut f, mut u) = (0, 0);
        move |uid| {
            while f < self.filed.len() && self.filed[f].0 < uid {
                f += 1;
            }
            while u < self.user.len() && self.user[u].0 < uid {
                u += 1;
            }
            let filed = self.filed.get(f).filter(|e| e.0 == uid).map(|e| e.1);
            let user = self.user.get(u).filter(|e| e.0 == uid).map(|e| e.1);
            combine(filed.unwrap_or(1), user)
        }
    }

    /// The folder's highest modseq as this user sees it.
    pub fn highest(&self) -> u64 {
        let filed = self.filed.iter().map(|e| e.1).max().unwrap_or(1);
        let changed = self.user.iter().map(|e| e.1 .1).max().unwrap_or(0);
        filed.max(changed).max(self.floor).max(1)
    }
}

fn find<T>(sorted: &[(u32, T)], uid: u32) -> Option<&T> {
    let i = sorted.binary_search_by_key(&uid, |e| e.0).ok()?;
    Some(&sorted[i].1)
}

fn combine(filed: u64, user: Option<(u32, u64)>) -> (Flags, u64) {
    match user {
        Some((flags, modseq)) => (Flags(flags), modseq.max(filed)),
        None => (Flags::default(), filed),
    }
}

impl Store {
    /// A user's flags and modseqs in one folder.
    pub fn folder_flags(&self, user: &str, folder: &str) -> Result<FolderFlags, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut out = FolderFlags::default();
        let filed = txn.open_table(ENTRY_MODSEQ).map_err(err)?;
        for row in filed.range((folder, 0)..=(folder, u32::MAX)).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.filed.push((k.value().1, v.value()));
        }
        out.user = user_flags(&txn, user, folder, None)?;
        out.floor = floor(&txn)?;
        Ok(out)
    }

    /// RFC 7162 HIGHESTMODSEQ of a folder for a user: filing modseqs grow with the UIDs,
    /// so the last entry's is the highest.
    pub fn highest_modseq(&self, user: &str, folder: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let filed = txn.open_table(ENTRY_MODSEQ).map_err(err)?;
        let mut range = filed.range((folder, 0)..=(folder, u32::MAX)).map_err(err)?;
        let last = match range.next_back() {
            Some(row) => vec![(0, row.map_err(err)?.1.value())],
            None => Vec::new(),
        };
        let flags = FolderFlags {
            filed: last,
            user: user_flags(&txn, user, folder, None)?,
            floor: floor(&txn)?,
        };
        Ok(flags.highest())
    }

    /// [`Store::folder_flags`] of some UIDs only (keyed lookups).
    fn some_flags(
        &self,
        user: &str,
        folder: &str,
        uids: &[u32],
    ) -> Result<FolderFlags, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut out = FolderFlags::default();
        let filed = txn.open_table(ENTRY_MODSEQ).map_err(err)?;
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        for uid in &uids {
            if let Some(v) = filed.get((folder, *uid)).map_err(err)? {
                out.filed.push((*uid, v.value()));
            }
        }
        out.user = user_flags(&txn, user, folder, Some(&uids))?;
        out.floor = floor(&txn)?;
        Ok(out)
    }

    /// Applies `op` to a user's flags of entries (`\Deleted` is never kept); entries changed
    /// after `unchanged_since` are refused. Returns (uid, flags, modseq) of each entry
    /// handled and the refused UIDs.
    pub fn set_user_flags(
        &self,
        user: &str,
        folder: &str,
        uids: &[u32],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagChanges, StoreError> {
        let current = self.some_flags(user, folder, uids)?;
        let txn = self.db.begin_write().map_err(err)?;
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        {
            let mut table = txn.open_table(USER_FLAGS).map_err(err)?;
            for uid in uids {
                if !current.knows(*uid) {
                    // Entries filed before modseqs were kept have no filing record.
                    if !self.entry_exists(folder, *uid)? {
                        continue;
                    }
                }
                let (flags, modseq) = current.of(*uid);
                if unchanged_since.is_some_and(|since| modseq > since) {
                    refused.push(*uid);
                    continue;
                }
                let new = Flags(op.apply(flags).0 & KEEPABLE.0);
                if new == flags {
                    done.push((*uid, flags, modseq));
                    continue;
                }
                let modseq = crate::message::next_modseq();
                table
                    .insert((user, folder, *uid), (new.0, modseq))
                    .map_err(err)?;
                done.push((*uid, new, modseq));
            }
        }
        txn.commit().map_err(err)?;
        Ok((done, refused))
    }

    fn entry_exists(&self, folder: &str, uid: u32) -> Result<bool, StoreError> {
        Ok(self.entry(folder, uid)?.is_some())
    }

    /// A user's keyword names by slot.
    pub fn user_keywords(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(USER_KEYWORDS).map_err(err)?;
        let names = table.get(user).map_err(err)?;
        Ok(names
            .map(|v| v.value().lines().map(str::to_owned).collect())
            .unwrap_or_default())
    }

    /// The flags of keyword names for a user, defining new ones; None when no slot is free.
    pub fn define_user_keywords(
        &self,
        user: &str,
        names: &[String],
    ) -> Result<Option<Flags>, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let flags = {
            let mut table = txn.open_table(USER_KEYWORDS).map_err(err)?;
            let mut known: Vec<String> = match table.get(user).map_err(err)? {
                Some(v) => v.value().lines().map(str::to_owned).collect(),
                None => Vec::new(),
            };
            let before = known.len();
            let mut flags = Flags::default();
            for name in names {
                let slot = match known.iter().position(|k| k.eq_ignore_ascii_case(name)) {
                    Some(slot) => slot,
                    None if known.len() < MAX_KEYWORDS => {
                        known.push(name.clone());
                        known.len() - 1
                    }
                    None => return Ok(None),
                };
                flags = flags.with(Flags::keyword(slot));
            }
            if known.len() > before {
                table.insert(user, known.join("\n").as_str()).map_err(err)?;
            }
            flags
        };
        txn.commit().map_err(err)?;
        Ok(Some(flags))
    }
}

/// A user's flags in a folder, of every entry or of the sorted `uids`.
fn user_flags(
    txn: &ReadTransaction,
    user: &str,
    folder: &str,
    uids: Option<&[u32]>,
) -> Result<Vec<UserFlag>, StoreError> {
    let table = txn.open_table(USER_FLAGS).map_err(err)?;
    let mut out = Vec::new();
    match uids {
        Some(uids) => {
            for uid in uids {
                if let Some(v) = table.get((user, folder, *uid)).map_err(err)? {
                    out.push((*uid, v.value()));
                }
            }
        }
        None => {
            let range = (user, folder, 0)..=(user, folder, u32::MAX);
            for row in table.range(range).map_err(err)? {
                let (k, v) = row.map_err(err)?;
                out.push((k.value().2, v.value()));
            }
        }
    }
    Ok(out)
}

fn floor(txn: &ReadTransaction) -> Result<u64, StoreError> {
    let floor = txn.open_table(MODSEQ_FLOOR).map_err(err)?;
    let found = floor.get("removed").map_err(err)?;
    Ok(found.map(|v| v.value()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_agrees_with_lookups() {
        let flags = FolderFlags {
            filed: vec![(1, 10), (2, 20), (5, 50)],
            user: vec![(2, (Flags::SEEN.0, 30)), (4, (Flags::FLAGGED.0, 40))],
            floor: 0,
        };
        let mut walk = flags.walk();
        for uid in 0..7 {
            assert_eq!(walk(uid), flags.of(uid), "uid {uid}");
        }
        assert_eq!(flags.of(2), (Flags::SEEN, 30));
        assert_eq!(flags.of(3), (Flags::default(), 1), "filed before modseqs");
        assert_eq!(flags.highest(), 50);
        assert!(flags.knows(4) && !flags.knows(3));
    }
}
