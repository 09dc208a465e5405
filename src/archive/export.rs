//! eDiscovery export: the originals of a user, a hold or the whole archive, byte-identical,
//! with their journal envelopes, a manifest of SHA-256 sums and the integrity chain
//! segments and signed checkpoints that prove them, for a third party to check offline.
//!
//! The archive writes the export's *files* into an [`ExportSink`]: in-process into a zip
//! (offline CLI), or framed over the admin socket to the CLI, which writes the zip where the
//! operator asked (the server never writes outside its data directory). Layout:
//!
//! ```text
//! manifest.json             what is in it: items, SHA-256, salts, chain segments, checkpoints
//! items/<id>.eml            the originals (format eml), or
//! messages.mbox             the originals as mboxrd (format mbox; offsets in the manifest)
//! envelopes/<id>.json       each item's journal envelopes (sender, To/Cc/Bcc, expanded lists)
//! chain/<seq>.jsonl         chain links, exactly as hashed, up to the checkpoint at <seq>
//! README.txt                how to check it
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::chain::{Checkpoint, Link};
use super::envelope::JournalEnvelope;
use super::source::SALT_BYTES;
use super::store::Item;
use super::{Archive, ArchiveError};
use crate::crypto::epoch::Keyring;

/// Where an export's files go, one after the other.
pub trait ExportSink: Write {
    /// Starts the next file (the previous one is complete).
    fn start(&mut self, name: &str) -> io::Result<()>;
}

/// Which items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// A user's folders (login).
    User(String),
    /// What a legal hold covers (name).
    Hold(String),
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    Eml,
    Mbox,
}

/// What to export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportSpec {
    pub selection: Selection,
    /// First and last day (YYYY-MM-DD, UTC) of arrival, inclusive.
    pub from: Option<String>,
    pub to: Option<String>,
    pub format: MessageFormat,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// `journalgate-export/1`.
    pub format: String,
    pub created: String,
    pub spec: ExportSpec,
    pub items: Vec<ManifestItem>,
    pub segments: Vec<Segment>,
    /// The Ed25519 key (hex) the checkpoints must be signed with.
    pub signing_key: String,
    /// Items of the selection none of the given keys opens.
    pub unreadable: Vec<u64>,
}

/// One exported original.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestItem {
    pub item: u64,
    pub received: i64,
    pub size: u64,
    /// SHA-256 of the original (hex).
    pub sha256: String,
    /// `items/<id>.eml` (format eml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// (offset, length) of the quoted message in `messages.mbox` (format mbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbox: Option<(u64, u64)>,
    /// The folders it is filed in (`<login>/INBOX`, `Unknown`).
    pub folders: Vec<String>,
    /// `envelopes/<id>.json`, when the item has journal envelopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelopes: Option<String>,
    /// The salt of its chain commitment (hex); none for items archived before the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Its newest link on the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
}

/// Chain links `first..=checkpoint.seq` in `file`, and the checkpoint that signs the last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    pub file: String,
    pub first: u64,
    pub checkpoint: Checkpoint,
}

/// What an export did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ExportReport {
    pub items: u64,
    pub bytes: u64,
    pub envelopes: u64,
    pub unreadable: u64,
    pub links: u64,
}

const README: &str = "journalgate archive export\r\n\r\n\
manifest.json lists every exported original with its SHA-256, where it is in this file\r\n\
(items/<id>.eml, or an offset and length of mboxrd-quoted bytes in messages.mbox), its\r\n\
folders, its journal envelopes (envelopes/<id>.json: sender and every recipient, Bcc and\r\n\
expanded lists included) and its newest link on the archive's integrity chain.\r\n\r\n\
To check it: journalgate archive verify-export FILE.zip [--key HEX]. By hand: each link in\r\n\
chain/<seq>.jsonl is one line, hashed with SHA-256 exactly as written; each link's \"prev\"\r\n\
is the hash of the line before; the last line's hash is the \"head\" of the segment's\r\n\
checkpoint, which is signed (Ed25519, manifest signing_key) over the text\r\n\
\"journalgate archive checkpoint v1\\n<seq>\\n<head>\\n<time>\\n\". An item's link holds\r\n\
sealed.commitment = SHA-256(salt || original), with the salt from the manifest.\r\n";

impl Archive {
    /// Writes an export of `spec` into `sink`, opening items with `keyrings`.
    /// `progress(done, total)` follows the items.
    pub fn export(
        &self,
        spec: &ExportSpec,
        keyrings: &[Keyring],
        sink: &mut dyn ExportSink,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ExportReport, ArchiveError> {
        let items = self.select(spec)?;
        self.ensure_checkpoint(&items)?;
        let total = items.len() as u64;
        let mut report = ExportReport::default();
        let mut manifest_items = Vec::new();
        let mut unreadable = Vec::new();
        let mut mbox = (spec.format == MessageFormat::Mbox)
            .then(|| sink.start("messages.mbox").map(|()| 0u64))
            .transpose()?;
        for (n, (id, item)) in items.iter().enumerate() {
            progress(n as u64, total);
            let Some(keyring) = self.keyring_for(*id, keyrings) else {
                unreadable.push(*id);
                continue;
            };
            let entry = self.export_item(*id, item, keyring, sink, mbox.as_mut())?;
            report.items += 1;
            report.bytes += entry.size;
            manifest_items.push(entry);
        }
        progress(total, total);
        for entry in &mut manifest_items {
            let item = &items[&entry.item];
            if let Some(path) = self.export_envelopes(entry.item, item, keyrings, sink)? {
                report.envelopes += item.envelopes.len() as u64;
                entry.envelopes = Some(path);
            }
        }
        let segments = self.export_chain(&manifest_items, sink, &mut report)?;
        report.unreadable = unreadable.len() as u64;
        let manifest = Manifest {
            format: "journalgate-export/1".into(),
            created: chrono::Utc::now().to_rfc3339(),
            spec: spec.clone(),
            items: manifest_items,
            segments,
            signing_key: self.signing_public_key(),
            unreadable,
        };
        sink.start("manifest.json")?;
        serde_json::to_writer_pretty(&mut *sink, &manifest).map_err(io::Error::from)?;
        sink.start("README.txt")?;
        sink.write_all(README.as_bytes())?;
        sink.flush()?;
        Ok(report)
    }

    /// The selected originals (and their linked copies) in ID order.
    fn select(&self, spec: &ExportSpec) -> Result<BTreeMap<u64, Item>, ArchiveError> {
        let (from, to) = super::holds::day_range(spec.from.as_deref(), spec.to.as_deref())
            .map_err(|e| ArchiveError::Damaged(e.to_string()))?;
        let mut chosen = BTreeSet::new();
        match &spec.selection {
            Selection::All => {}
            Selection::User(login) => {
                let user = self.users.find(login)?;
                for key in [format!("{}/INBOX", user.id), format!("{}/Sent", user.id)] {
                    chosen.extend(self.store.entries(&key)?.into_iter().map(|e| e.item));
                }
            }
            Selection::Hold(name) => {
                let hold = self
                    .holds
                    .find(name)
                    .map_err(|e| ArchiveError::Damaged(e.to_string()))?;
                for (id, item) in self.store.items()? {
                    if item.envelope_of.is_none() && hold.covers(&item) {
                        chosen.insert(id);
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        for (id, item) in self.store.items()? {
            let wanted = item.envelope_of.is_none()
                && item.received >= from
                && item.received <= to
                && (spec.selection == Selection::All || chosen.contains(&id));
            if wanted {
                for linked in &item.linked {
                    if let Some(copy) = self.store.item(*linked)? {
                        out.insert(*linked, copy);
                    }
                }
                out.insert(id, item);
            }
        }
        Ok(out)
    }

    /// Signs a checkpoint when the newest link of a selected item is past the last one.
    fn ensure_checkpoint(&self, items: &BTreeMap<u64, Item>) -> Result<(), ArchiveError> {
        let mut newest = 0;
        for id in items.keys() {
            newest = newest.max(self.store.link_of(*id)?.unwrap_or(0));
        }
        let signed = self.store.checkpoints()?.last().map(|c| c.seq).unwrap_or(0);
        if newest > signed {
            self.checkpoint(true)?;
        }
        Ok(())
    }

    /// The first keyring that opens an item.
    fn keyring_for<'a>(&self, id: u64, keyrings: &'a [Keyring]) -> Option<&'a Keyring> {
        keyrings
            .iter()
            .find(|k| self.item_file_key(id, std::slice::from_ref(k)).is_ok())
    }

    /// Writes one original (and reads its salt) into the sink.
    fn export_item(
        &self,
        id: u64,
        item: &Item,
        keyring: &Keyring,
        sink: &mut dyn ExportSink,
        mbox: Option<&mut u64>,
    ) -> Result<ManifestItem, ArchiveError> {
        let link = self.store.link_of(id)?;
        let salted = match link {
            Some(seq) => self.store.links(seq, seq)?.first().and_then(|(_, bytes)| {
                serde_json::from_slice::<Link>(bytes)
                    .ok()
                    .and_then(|l| l.sealed)
                    .and_then(|s| s.commitment)
            }),
            None => None,
        };
        let mut reader = self.open_item(id, keyring)?;
        let mut hasher = Sha256::new();
        let (file, mbox_range) = match mbox {
            None => {
                let name = format!("items/{id}.eml");
                sink.start(&name)?;
                copy_hashing(&mut (&mut reader).take(item.size), sink, &mut hasher)?;
                (Some(name), None)
            }
            Some(offset) => {
                let from_line = format!(
                    "From MAILER-DAEMON {}\n",
                    chrono::DateTime::from_timestamp(item.received, 0)
                        .unwrap_or_default()
                        .format("%a %b %e %H:%M:%S %Y")
                );
                sink.write_all(from_line.as_bytes())?;
                let start = *offset + from_line.len() as u64;
                let mut quoted = Mboxrd::new(&mut *sink);
                copy_hashing(&mut (&mut reader).take(item.size), &mut quoted, &mut hasher)?;
                let length = quoted.finish()?;
                sink.write_all(b"\n")?;
                *offset = start + length + 1;
                (None, Some((start, length)))
            }
        };
        let salt = match salted {
            Some(_) => {
                let mut salt = [0u8; SALT_BYTES];
                reader.read_exact(&mut salt)?;
                Some(hex::encode(salt))
            }
            None => None,
        };
        Ok(ManifestItem {
            item: id,
            received: item.received,
            size: item.size,
            sha256: hex::encode(hasher.finalize()),
            file,
            mbox: mbox_range,
            folders: item
                .entries
                .iter()
                .map(|(f, _)| self.describe_folder(f))
                .collect(),
            envelopes: None,
            salt,
            link,
        })
    }

    /// `<login>/INBOX`, `<login>/Sent`, `Unknown` for a store folder key.
    fn describe_folder(&self, key: &str) -> String {
        if key == super::UNKNOWN_FOLDER {
            return "Unknown".into();
        }
        let users = self.user_list();
        match key.split_once('/') {
            Some((id, name)) => {
                let login = users.iter().find(|u| u.id == id).map(|u| u.login.as_str());
                format!("{}/{name}", login.unwrap_or(id))
            }
            None => key.to_owned(),
        }
    }

    /// Writes `envelopes/<id>.json` (a JSON array) when the keys open any of them.
    fn export_envelopes(
        &self,
        id: u64,
        item: &Item,
        keyrings: &[Keyring],
        sink: &mut dyn ExportSink,
    ) -> Result<Option<String>, ArchiveError> {
        let mut envelopes = Vec::new();
        for env in &item.envelopes {
            let Some(record) = self.store.item(*env)? else {
                continue;
            };
            let Some(keyring) = self.keyring_for(*env, keyrings) else {
                continue;
            };
            let mut bytes = Vec::new();
            self.open_item(*env, keyring)?
                .take(record.size)
                .read_to_end(&mut bytes)?;
            envelopes.extend(JournalEnvelope::parse(&bytes));
        }
        if envelopes.is_empty() {
            return Ok(None);
        }
        let name = format!("envelopes/{id}.json");
        sink.start(&name)?;
        serde_json::to_writer_pretty(&mut *sink, &envelopes).map_err(io::Error::from)?;
        Ok(Some(name))
    }

    /// Writes the chain segments that reach from each item's link to the checkpoint after
    /// it.
    fn export_chain(
        &self,
        items: &[ManifestItem],
        sink: &mut dyn ExportSink,
        report: &mut ExportReport,
    ) -> Result<Vec<Segment>, ArchiveError> {
        let checkpoints = self.store.checkpoints()?;
        // checkpoint seq -> first link needed before it.
        let mut wanted: BTreeMap<u64, (u64, Checkpoint)> = BTreeMap::new();
        for link in items.iter().filter_map(|i| i.link) {
            let Some(cp) = checkpoints.iter().find(|c| c.seq >= link) else {
                continue;
            };
            let first = wanted.get(&cp.seq).map_or(link, |(f, _)| (*f).min(link));
            wanted.insert(cp.seq, (first, cp.clone()));
        }
        let mut segments = Vec::new();
        for (seq, (first, checkpoint)) in wanted {
            let file = format!("chain/{seq}.jsonl");
            sink.start(&file)?;
            for (_, bytes) in self.store.links(first, seq)? {
                sink.write_all(&bytes)?;
                sink.write_all(b"\n")?;
                report.links += 1;
            }
            segments.push(Segment {
                file,
                first,
                checkpoint,
            });
        }
        Ok(segments)
    }
}

fn copy_hashing(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    hasher: &mut Sha256,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// mboxrd quoting: a line that starts with `>`s followed by `From ` gets one more `>`.
pub struct Mboxrd<W: Write> {
    inner: W,
    /// The start of the current line while it could still become a `From ` line.
    pending: Vec<u8>,
    at_line_start: bool,
    written: u64,
}

impl<W: Write> Mboxrd<W> {
    pub fn new(inner: W) -> Self {
        Mboxrd {
            inner,
            pending: Vec::new(),
            at_line_start: true,
            written: 0,
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes what is held back; returns the quoted length.
    pub fn finish(mut self) -> io::Result<u64> {
        let pending = std::mem::take(&mut self.pending);
        self.emit(&pending)?;
        Ok(self.written)
    }
}

impl<W: Write> Write for Mboxrd<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            if !self.at_line_start {
                // The rest of the line goes out as it is.
                match memchr::memchr(b'\n', &buf[i..]) {
                    Some(p) => {
                        self.emit(&buf[i..=i + p])?;
                        i += p + 1;
                        self.at_line_start = true;
                    }
                    None => {
                        self.emit(&buf[i..])?;
                        i = buf.len();
                    }
                }
                continue;
            }
            self.pending.push(buf[i]);
            i += 1;
            let quoted = self.pending.iter().take_while(|c| **c == b'>').count();
            let rest = &self.pending[quoted..];
            if rest.len() < 5 && b"From ".starts_with(rest) {
                continue; // still undecided
            }
            let pending = std::mem::take(&mut self.pending);
            if pending[quoted..].starts_with(b"From ") {
                self.emit(b">")?;
            }
            self.at_line_start = pending.last() == Some(&b'\n');
            self.emit(&pending)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Undoes [`Mboxrd`] quoting.
pub fn unquote_mboxrd(quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(quoted.len());
    for line in quoted.split_inclusive(|b| *b == b'\n') {
        let marks = line.iter().take_while(|c| **c == b'>').count();
        if marks > 0 && line[marks..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxrd_quotes_from_lines_and_unquotes_to_the_same_bytes() {
        let original =
            b"From: a\r\n\r\nFrom here\r\n>From there\r\nFro\r\nFrom\r\n>>From x\r\nend From ";
        for chunk in [1, 2, 3, 7, 100] {
            let mut out = Vec::new();
            let mut w = Mboxrd::new(&mut out);
            for piece in original.chunks(chunk) {
                w.write_all(piece).unwrap();
            }
            let n = w.finish().unwrap();
            assert_eq!(n as usize, out.len());
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(
                text.contains("\r\n>From here\r\n>>From there\r\n"),
                "{text}"
            );
            assert!(text.contains(">>>From x") && text.starts_with("From: a"));
            assert_eq!(unquote_mboxrd(&out), original.to_vec());
        }
    }
}
