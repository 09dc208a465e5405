//! The archive database's flag tables and the helpers that keep them in step inside the
//! archive store's filing and removal transactions. Reading and changing flags is the
//! `flags` module's side.

use redb::{TableDefinition, WriteTransaction};

use super::dberror::{err, StoreError};

/// (folder, uid) -> modseq at filing.
pub(super) const ENTRY_MODSEQ: TableDefinition<(&str, u32), u64> =
    TableDefinition::new("entry-modseq");
/// (user id, folder, uid) -> (flags, modseq of the last change).
pub(super) const USER_FLAGS: TableDefinition<(&str, &str, u32), (u32, u64)> =
    TableDefinition::new("user-flags");
/// user id -> keyword names by slot, one per line.
pub(super) const USER_KEYWORDS: TableDefinition<&str, &str> = TableDefinition::new("user-keywords");
/// "removed" -> modseq of the last removal.
pub(super) const MODSEQ_FLOOR: TableDefinition<&str, u64> = TableDefinition::new("modseq-floor");

/// Creates the tables (at open).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(ENTRY_MODSEQ).map_err(err)?;
    txn.open_table(USER_FLAGS).map_err(err)?;
    txn.open_table(USER_KEYWORDS).map_err(err)?;
    txn.open_table(MODSEQ_FLOOR).map_err(err)?;
    Ok(())
}

/// Records the filing modseq of new entries (inside the filing transaction).
pub(super) fn record_filed(
    txn: &WriteTransaction,
    placed: &[(String, u32)],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(ENTRY_MODSEQ).map_err(err)?;
    let modseq = crate::message::next_modseq();
    for (folder, uid) in placed {
        table.insert((folder.as_str(), *uid), modseq).map_err(err)?;
    }
    Ok(())
}

/// Forgets removed entries and raises the modseq floor (inside the removal transaction).
pub(super) fn record_removed(
    txn: &WriteTransaction,
    entries: &[(String, u32)],
) -> Result<(), StoreError> {
    let mut filed = txn.open_table(ENTRY_MODSEQ).map_err(err)?;
    for (folder, uid) in entries {
        filed.remove((folder.as_str(), *uid)).map_err(err)?;
    }
    let mut flags = txn.open_table(USER_FLAGS).map_err(err)?;
    let removed: std::collections::HashSet<(&str, u32)> =
        entries.iter().map(|(f, u)| (f.as_str(), *u)).collect();
    flags
        .retain(|(_, folder, uid), _| !removed.contains(&(folder, uid)))
        .map_err(err)?;
    let mut floor = txn.open_table(MODSEQ_FLOOR).map_err(err)?;
    floor
        .insert("removed", crate::message::next_modseq())
        .map_err(err)?;
    Ok(())
}
