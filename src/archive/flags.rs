//! Per-user flags in archive folders: each user's `\Seen`, `\Flagged`, `\Answered`,
//! `\Draft` and keywords on archived messages (never `\Deleted`: the archive expunges
//! nothing), with RFC 7162 modification sequences. Flags are metadata, not mail, and are
//! stored in the clear in the archive database; keyword names are per user.
//!
//! Modseqs: an entry gets one when it is filed (entries filed before modseqs existed count
//! as 1), a flag change gets a fresh one, and a removal (retention) raises the floor of
//! every folder's HIGHESTMODSEQ.

use std::collections::HashMap;

use redb::ReadableTable;

use super::dberror::{err, StoreError};
use super::flagtables::{ENTRY_MODSEQ, MODSEQ_FLOOR, USER_FLAGS, USER_KEYWORDS};
use super::store::Store;
use crate::message::{FlagOp, Flags, MAX_KEYWORDS};

/// What a flag change did: (uid, flags, modseq) of each entry handled, and the UIDs refused.
pub type FlagChanges = (Vec<(u32, Flags, u64)>, Vec<u32>);

/// The flags archive users may keep.
pub const KEEPABLE: Flags = Flags(!Flags::DELETED.0);

/// A user's view of a folder's flags and modseqs.
#[derive(Default)]
pub struct FolderFlags {
    pub filed: HashMap<u32, u64>,
    pub user: HashMap<u32, (u32, u64)>,
    pub floor: u64,
}

impl FolderFlags {
    /// (flags, modseq) of one entry for this user.
    pub fn of(&self, uid: u32) -> (Flags, u64) {
        let filed = self.filed.get(&uid).copied().unwrap_or(1);
        match self.user.get(&uid) {
            Some((flags, modseq)) => (Flags(*flags), (*modseq).max(filed)),
            None => (Flags::default(), filed),
        }
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
            out.filed.insert(k.value().1, v.value());
        }
        let flags = txn.open_table(USER_FLAGS).map_err(err)?;
        let range = (user, folder, 0)..=(user, folder, u32::MAX);
        for row in flags.range(range).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.user.insert(k.value().2, v.value());
        }
        let floor = txn.open_table(MODSEQ_FLOOR).map_err(err)?;
        out.floor = floor
            .get("removed")
            .map_err(err)?
            .map(|v| v.value())
            .unwrap_or(0);
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
        let current = self.folder_flags(user, folder)?;
        let txn = self.db.begin_write().map_err(err)?;
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        {
            let mut table = txn.open_table(USER_FLAGS).map_err(err)?;
            for uid in uids {
                if !current.filed.contains_key(uid) && !current.user.contains_key(uid) {
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
