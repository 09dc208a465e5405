//! Pack files: sealed items appended one after another to `archive/items/<n>.pack`, so that
//! filing an item creates no file (creating and syncing one file per item was most of the
//! archive's cost) and a million items are a few hundred files.
//!
//! Each item is a complete age file at a [`Location`] (pack, offset, length) kept in its
//! record. The worker appends to one open pack across many commits: each commit syncs the
//! pack's data once and records, in the same store transaction as the items, how far the
//! pack is committed. Bytes past that (a crash mid-commit) are cut off when the pack is
//! opened again; a pack file the store does not know is removed. A pack is closed at
//! [`PACK_LIMIT`] and a new one started. Items written before packs existed keep their own
//! `items/<id>.age` files (no location).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A pack takes no more items once it is this large.
pub const PACK_LIMIT: u64 = 64 << 20;

/// Where an item's sealed bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub pack: u64,
    pub offset: u64,
    pub len: u64,
}

/// The file of pack `id`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:012}.pack"))
}

/// The pack ID of a file name, if it is a pack's.
pub fn id_of(name: &str) -> Option<u64> {
    name.strip_suffix(".pack")?.parse().ok()
}

/// Reads the bytes at `location` (buffered).
pub fn open(dir: &Path, location: &Location) -> io::Result<io::Take<BufReader<File>>> {
    let mut file = File::open(path(dir, location.pack))?;
    file.seek(SeekFrom::Start(location.offset))?;
    Ok(BufReader::with_capacity(64 << 10, file).take(location.len))
}

/// The pack the worker appends to.
pub struct PackWriter {
    pub id: u64,
    file: File,
    /// Bytes written, committed or not.
    pub len: u64,
    /// Bytes the store knows to be there.
    pub committed: u64,
    /// Bytes made durable.
    synced: u64,
    /// The file was created since the last commit: its folder needs a sync.
    pub created: bool,
}

impl PackWriter {
    /// Starts a new, empty pack.
    pub fn create(dir: &Path, id: u64) -> io::Result<PackWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path(dir, id))?;
        Ok(PackWriter {
            id,
            file,
            len: 0,
            committed: 0,
            synced: 0,
            created: true,
        })
    }

    /// Opens an open pack after a restart, cutting off what was never committed.
    pub fn reopen(dir: &Path, id: u64, committed: u64) -> io::Result<PackWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path(dir, id))?;
        if file.metadata()?.len() != committed {
            file.set_len(committed)?;
            file.sync_data()?;
        }
        Ok(PackWriter {
            id,
            file,
            len: committed,
            committed,
            synced: committed,
            created: false,
        })
    }

    /// Whether the pack should be closed (after its next commit).
    pub fn full(&self) -> bool {
        self.len >= PACK_LIMIT
    }

    /// Appends what `fill` writes; returns where it went. On an error the pack is cut back.
    pub fn append<T, E: From<io::Error>>(
        &mut self,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<(T, Location), E> {
        let start = self.len;
        self.file.seek(SeekFrom::Start(start))?;
        let mut counted = Counted {
            inner: &mut self.file,
            n: 0,
        };
        match fill(&mut counted) {
            Ok(value) => {
                let n = counted.n;
                self.len = start + n;
                Ok((
                    value,
                    Location {
                        pack: self.id,
                        offset: start,
                        len: n,
                    },
                ))
            }
            Err(e) => {
                let _ = self.file.set_len(start);
                Err(e)
            }
        }
    }

    /// Makes everything appended durable (one `fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.synced < self.len {
            self.file.sync_data()?;
            self.synced = self.len;
        }
        Ok(())
    }

    /// The store recorded everything appended.
    pub fn committed(&mut self) {
        self.committed = self.len;
        self.created = false;
    }

    /// Cuts the pack back to `len` (never below what is committed).
    pub fn truncate(&mut self, len: u64) {
        let len = len.max(self.committed);
        if len < self.len && self.file.set_len(len).is_ok() {
            self.len = len;
            self.synced = self.synced.min(len);
        }
    }

    /// The commit failed: forget what was appended since the last one.
    pub fn roll_back(&mut self) {
        if self.file.set_len(self.committed).is_ok() {
            self.len = self.committed;
            self.synced = self.synced.min(self.committed);
        }
    }
}

struct Counted<'a> {
    inner: &'a mut File,
    n: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Removes pack files the store does not know (written by a commit that never finished).
pub fn remove_unknown(dir: &Path, known: &std::collections::BTreeSet<u64>) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if id_of(&name).is_some_and(|id| !known.contains(&id)) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_commit_roll_back_and_reopen_cut_the_tail() {
        let dir = std::env::temp_dir().join(format!("jg-pack-{}", crate::crypto::random_hex128()));
        fs::create_dir_all(&dir).unwrap();
        let mut pack = PackWriter::create(&dir, 7).unwrap();
        let (_, a) = pack.append(|w| w.write_all(b"first item")).unwrap();
        pack.sync().unwrap();
        pack.committed();
        let (_, b) = pack.append(|w| w.write_all(b"second")).unwrap();
        assert_eq!((a.offset, a.len, b.offset, b.len), (0, 10, 10, 6));
        let failed: Result<((), Location), io::Error> = pack.append(|w| {
            w.write_all(b"half")?;
            Err(io::Error::other("no space"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::metadata(path(&dir, 7)).unwrap().len(), 16);
        pack.roll_back();
        assert_eq!(pack.len, 10);
        pack.append(|w| w.write_all(b"never committed")).unwrap();
        drop(pack);
        let reopened = PackWriter::reopen(&dir, 7, 10).unwrap();
        assert_eq!(reopened.len, 10);
        let mut read = String::new();
        open(&dir, &a).unwrap().read_to_string(&mut read).unwrap();
        assert_eq!(read, "first item");
        File::create(dir.join("000000000009.pack")).unwrap();
        let known = [7].into_iter().collect();
        assert_eq!(remove_unknown(&dir, &known).unwrap(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
