//! The archive database's summary tables, kept in step inside the store's filing and
//! removal transactions. What they hold and how it is sealed is the `summary` module's side.

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::dberror::{err, StoreError};

/// keyset id -> the keyset's file key wrapped for each reader (age stanzas).
const KEYSETS: TableDefinition<u64, &[u8]> = TableDefinition::new("summary-keysets");
/// (keyset id, reader public key) -> (): the reader was given the keyset by a grant.
const KEYSET_GRANTS: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("summary-keyset-grants");
/// item -> (keyset id, sealed header).
const HEADERS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("summary-headers");
/// item -> (keyset id, sealed fields: ENVELOPE and the summary header fields).
const FIELDS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("summary-fields");
/// item -> (keyset id, sealed SEARCH header fields: `mime::SEARCH_FIELDS`).
const SEARCH: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("summary-search");
/// item -> (keyset id, sealed trigram filter of the word index: `textindex::Grams`).
const GRAMS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("summary-grams");
/// item -> (keyset id, sealed word index).
const WORDS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("summary-words");

/// One item's sealed summary, as filed.
#[derive(Debug, Clone)]
pub struct SealedSummary {
    pub keyset: u64,
    /// The keyset's wrapped file key (written with the first summary that uses it).
    pub stanzas: std::sync::Arc<[u8]>,
    pub header: Vec<u8>,
    pub fields: Vec<u8>,
    pub search: Vec<u8>,
    /// Absent for messages too large to index.
    pub words: Option<Vec<u8>>,
    /// The words' trigram filter (with `words`).
    pub grams: Option<Vec<u8>>,
}

/// Creates the tables (at open).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(KEYSETS).map_err(err)?;
    txn.open_table(KEYSET_GRANTS).map_err(err)?;
    txn.open_table(HEADERS).map_err(err)?;
    txn.open_table(FIELDS).map_err(err)?;
    txn.open_table(SEARCH).map_err(err)?;
    txn.open_table(WORDS).map_err(err)?;
    txn.open_table(GRAMS).map_err(err)?;
    Ok(())
}

/// Records the summaries of filed items (inside the filing transaction).
pub(super) fn record(
    txn: &WriteTransaction,
    summaries: &[(u64, SealedSummary)],
) -> Result<(), StoreError> {
    let mut keysets = txn.open_table(KEYSETS).map_err(err)?;
    let mut headers = txn.open_table(HEADERS).map_err(err)?;
    let mut fields = txn.open_table(FIELDS).map_err(err)?;
    let mut search = txn.open_table(SEARCH).map_err(err)?;
    let mut words = txn.open_table(WORDS).map_err(err)?;
    let mut grams = txn.open_table(GRAMS).map_err(err)?;
    let mut written = std::collections::HashSet::new();
    for (item, s) in summaries {
        if written.insert(s.keyset) {
            keysets.insert(s.keyset, &*s.stanzas).map_err(err)?;
        }
        headers
            .insert(*item, (s.keyset, s.header.as_slice()))
            .map_err(err)?;
        fields
            .insert(*item, (s.keyset, s.fields.as_slice()))
            .map_err(err)?;
        search
            .insert(*item, (s.keyset, s.search.as_slice()))
            .map_err(err)?;
        if let Some(w) = &s.words {
            words.insert(*item, (s.keyset, w.as_slice())).map_err(err)?;
        }
        if let Some(g) = &s.grams {
            grams.insert(*item, (s.keyset, g.as_slice())).map_err(err)?;
        }
    }
    Ok(())
}

/// Forgets the summaries of removed items (inside the removal transaction).
pub(super) fn forget(txn: &WriteTransaction, items: &[u64]) -> Result<(), StoreError> {
    let mut headers = txn.open_table(HEADERS).map_err(err)?;
    let mut fields = txn.open_table(FIELDS).map_err(err)?;
    let mut search = txn.open_table(SEARCH).map_err(err)?;
    let mut words = txn.open_table(WORDS).map_err(err)?;
    let mut grams = txn.open_table(GRAMS).map_err(err)?;
    for item in items {
        headers.remove(*item).map_err(err)?;
        fields.remove(*item).map_err(err)?;
        search.remove(*item).map_err(err)?;
        grams.remove(*item).map_err(err)?;
        words.remove(*item).map_err(err)?;
    }
    Ok(())
}

/// A sealed summary part as stored: (keyset id, bytes).
pub(super) type Sealed = (u64, Vec<u8>);

/// Which part of a summary to read.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Header,
    Fields,
    Search,
    Words,
    Grams,
}

/// The sealed `part` of each item's summary (keyset id, bytes), in the order asked.
pub(super) fn read(
    txn: &ReadTransaction,
    items: &[u64],
    part: Part,
) -> Result<Vec<Option<Sealed>>, StoreError> {
    let table = match part {
        Part::Header => txn.open_table(HEADERS),
        Part::Fields => txn.open_table(FIELDS),
        Part::Search => txn.open_table(SEARCH),
        Part::Words => txn.open_table(WORDS),
        Part::Grams => txn.open_table(GRAMS),
    }
    .map_err(err)?;
    items
        .iter()
        .map(|item| {
            Ok(table.get(*item).map_err(err)?.map(|v| {
                let (keyset, bytes) = v.value();
                (keyset, bytes.to_vec())
            }))
        })
        .collect()
}

/// The items summarised under each keyset.
pub(super) fn keyset_items(
    txn: &ReadTransaction,
) -> Result<std::collections::HashMap<u64, Vec<u64>>, StoreError> {
    let table = txn.open_table(HEADERS).map_err(err)?;
    let mut out: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    for row in table.iter().map_err(err)? {
        let (item, value) = row.map_err(err)?;
        out.entry(value.value().0).or_default().push(item.value());
    }
    Ok(out)
}

/// Whether `reader` was already given keyset `id` by a grant.
pub(super) fn keyset_granted(
    txn: &ReadTransaction,
    id: u64,
    reader: &str,
) -> Result<bool, StoreError> {
    let table = txn.open_table(KEYSET_GRANTS).map_err(err)?;
    Ok(table.get((id, reader)).map_err(err)?.is_some())
}

/// Gives `reader` keysets: (id, the keyset's stanzas with one more for the reader).
pub(super) fn grant_keysets(
    txn: &WriteTransaction,
    reader: &str,
    keysets: &[(u64, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(KEYSETS).map_err(err)?;
    let mut granted = txn.open_table(KEYSET_GRANTS).map_err(err)?;
    for (id, stanzas) in keysets {
        table.insert(*id, stanzas.as_slice()).map_err(err)?;
        granted.insert((*id, reader), ()).map_err(err)?;
    }
    Ok(())
}

/// A keyset's wrapped file key.
pub(super) fn keyset(txn: &ReadTransaction, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let table = txn.open_table(KEYSETS).map_err(err)?;
    Ok(table.get(id).map_err(err)?.map(|v| v.value().to_vec()))
}
