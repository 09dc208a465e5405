//! Sealed summaries of archived items: the header (for ENVELOPE, header fetches, header
//! SEARCH, SORT and THREAD) and the word index of `crate::textindex` (for SEARCH TEXT and
//! BODY), written by the worker as it files each item, so that reading a folder never
//! decrypts message bodies.
//!
//! Sealing: per epoch and reader set the worker makes a *keyset*, a random age file key
//! wrapped for each reader exactly like an item's (epoch stanzas, see `crypto::epoch`);
//! each summary is `nonce ‖ AES-256-GCM(SHA-256(label ‖ file key), summary)` (aws-lc-rs
//! with hardware AES: a search opens thousands of them; random 96-bit nonces), the item ID
//! as associated data. A reader unwraps a keyset once (no key agreement: its
//! keyring caches the epoch key) and then opens thousands of summaries with symmetric
//! crypto only. The server holds a keyset's key only as long as it holds the epoch's secret,
//! which opens the items of that epoch anyway; after the epoch nothing on the server can.
//! Readers without a stanza in the keyset (an item opened through a grant) read the item.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use age_core::format::FileKey;
use age_core::secrecy::ExposeSecret;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::store::Store;
use super::summarytables::{self, Part, SealedSummary};
use super::{Archive, ArchiveError};
use crate::crypto::epoch::Keyring;
use crate::crypto::rewrap;
use crate::store::Fields;
use crate::textindex::{Grams, Tokens, Verdict};

/// Messages up to this size get a word index (the worker holds one in memory).
pub const INDEX_MAX: usize = 4 << 20;
/// A header longer than this is not summarised (the item is read instead).
const HEADER_MAX: usize = 256 << 10;
const LABEL: &[u8] = b"journalgate.org/v1/summary";
const NONCE_BYTES: usize = NONCE_LEN;
/// Word lists read and opened at once by a text search.
const WORDS_AT_ONCE: usize = 256;

type Key = Zeroizing<[u8; 32]>;

fn derive(file_key: &FileKey) -> Key {
    let digest = Sha256::new()
        .chain_update(LABEL)
        .chain_update(file_key.expose_secret())
        .finalize();
    Zeroizing::new(digest.into())
}

/// The start of an original, kept while it is sealed: the whole of it up to
/// [`INDEX_MAX`], else its first [`HEADER_MAX`] bytes.
pub(super) struct Capture<'a> {
    inner: &'a mut dyn Write,
    pub(super) bytes: Vec<u8>,
    pub(super) complete: bool,
}

impl<'a> Capture<'a> {
    pub(super) fn new(inner: &'a mut dyn Write) -> Self {
        Capture {
            inner,
            bytes: Vec::new(),
            complete: true,
        }
    }
}

impl Write for Capture<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.complete && self.bytes.len() + n > INDEX_MAX {
            self.complete = false;
            self.bytes.truncate(HEADER_MAX);
        }
        let room = match self.complete {
            true => n,
            false => n.min(HEADER_MAX.saturating_sub(self.bytes.len())),
        };
        self.bytes.extend_from_slice(&buf[..room]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A summary before sealing: what the worker extracted from an original, and its readers.
pub(super) struct Plain {
    pub(super) header: Vec<u8>,
    /// `[u32 LE envelope length][ENVELOPE][summary header fields]`.
    pub(super) fields: Vec<u8>,
    /// The [`crate::mime::SEARCH_FIELDS`] lines.
    pub(super) search: Vec<u8>,
    pub(super) words: Option<Vec<u8>>,
    pub(super) grams: Option<Vec<u8>>,
    pub(super) keys: Vec<String>,
}

impl Plain {
    /// The summary of a captured original (`None` when its header is not all there). CPU
    /// work: the worker's thread.
    pub(super) fn of(capture: Capture<'_>, keys: &[String]) -> Option<Plain> {
        let end = crate::mime::header_end(&capture.bytes);
        let whole_header = capture.complete || end < capture.bytes.len();
        if !whole_header || end > HEADER_MAX {
            return None;
        }
        let tokens = capture.complete.then(|| Tokens::of(&capture.bytes));
        let grams = tokens.as_ref().map(|t| Grams::of(t).encode().to_vec());
        let words = tokens.map(|t| t.encode());
        let header = &capture.bytes[..end];
        let mut envelope = Vec::new();
        crate::imap::structure::envelope(header, &mut envelope);
        let mut fields = (envelope.len() as u32).to_le_bytes().to_vec();
        fields.extend_from_slice(&envelope);
        fields.extend_from_slice(&crate::mime::summary_header(header));
        Some(Plain {
            header: header.to_vec(),
            fields,
            search: crate::mime::search_header(header),
            words,
            grams,
            keys: keys.to_vec(),
        })
    }
}

/// One reader set's keyset in the current epoch (the worker's side).
struct Keyset {
    id: u64,
    key: LessSafeKey,
    stanzas: Arc<[u8]>,
}

/// The worker's keysets, for the epoch they were made in.
#[derive(Default)]
pub(super) struct Keysets {
    epoch: String,
    sets: HashMap<Vec<String>, Arc<Keyset>>,
}

impl Archive {
    /// Seals a summary for item `id`; `None` (logged) if it cannot be: the item is then
    /// read instead.
    pub(super) fn seal_summary(&self, id: u64, plain: &Plain) -> Option<SealedSummary> {
        let keyset = match self.keyset_for(&plain.keys) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot seal an archive summary");
                return None;
            }
        };
        let seal = |bytes: &[u8]| seal(&keyset.key, id, bytes);
        Some(SealedSummary {
            keyset: keyset.id,
            stanzas: keyset.stanzas.clone(),
            header: seal(&plain.header),
            fields: seal(&plain.fields),
            search: seal(&plain.search),
            words: plain.words.as_deref().map(seal),
            grams: plain.grams.as_deref().map(seal),
        })
    }

    fn keyset_for(&self, keys: &[String]) -> Result<Arc<Keyset>, ArchiveError> {
        let epoch = self.current_epoch();
        let mut sorted = keys.to_vec();
        sorted.sort();
        let mut keysets = self.keysets.lock().unwrap_or_else(|p| p.into_inner());
        if keysets.epoch != epoch.public() {
            *keysets = Keysets {
                epoch: epoch.public(),
                sets: HashMap::new(),
            };
        }
        if let Some(k) = keysets.sets.get(&sorted) {
            return Ok(k.clone());
        }
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let file_key = FileKey::new(Box::new(raw));
        let mut stanzas = Vec::new();
        for k in &sorted {
            stanzas.extend(rewrap::stanza_bytes(&epoch.recipient(k)?.stanza(&file_key)));
        }
        let keyset = Arc::new(Keyset {
            id: rand::rngs::OsRng.next_u64(),
            key: cipher(&derive(&file_key)),
            stanzas: stanzas.into(),
        });
        keysets.sets.insert(sorted, keyset.clone());
        Ok(keyset)
    }
}

fn cipher(key: &Key) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("a 256-bit key"))
}

fn seal(key: &LessSafeKey, item: u64, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(item.to_le_bytes()),
        &mut body,
    )
    .expect("AES-256-GCM seals any length");
    [&nonce[..], &body].concat()
}

/// Opens a sealed summary part in place (the nonce and tag are cut off).
fn open(key: &LessSafeKey, item: u64, mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    let nonce: [u8; NONCE_BYTES] = sealed.get(..NONCE_BYTES)?.try_into().ok()?;
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(item.to_le_bytes()),
            &mut sealed[NONCE_BYTES..],
        )
        .ok()?
        .len();
    sealed.copy_within(NONCE_BYTES..NONCE_BYTES + len, 0);
    sealed.truncate(len);
    Some(sealed)
}

impl Archive {
    /// Gives `target` (a grant's user) the summary keysets whose items it is all entitled
    /// to and that `keyrings` open, so that its summaries serve the user again after a
    /// password reset or to a later auditor. Returns how many keysets it was given.
    pub(super) fn grant_keysets(
        &self,
        target: &str,
        entitled: &std::collections::HashSet<u64>,
        keyrings: &[Keyring],
        epoch: &crate::crypto::epoch::Epoch,
    ) -> Result<usize, ArchiveError> {
        let recipient = epoch.recipient(target)?;
        let txn = self.store.db.begin_read().map_err(super::dberror::err)?;
        let mut grants = Vec::new();
        for (id, items) in summarytables::keyset_items(&txn)? {
            if !items.iter().all(|i| entitled.contains(i))
                || summarytables::keyset_granted(&txn, id, target)?
            {
                continue;
            }
            let Some(bytes) = summarytables::keyset(&txn, id)? else {
                continue;
            };
            let Some(stanzas) = rewrap::parse_stanzas(&bytes) else {
                continue;
            };
            let file_key = keyrings
                .iter()
                .find_map(|k| age::Identity::unwrap_stanzas(k, &stanzas).and_then(Result::ok));
            if let Some(file_key) = file_key {
                let mut more = bytes.clone();
                more.extend(rewrap::stanza_bytes(&recipient.stanza(&file_key)));
                grants.push((id, more));
            }
        }
        drop(txn);
        let txn = self.store.db.begin_write().map_err(super::dberror::err)?;
        summarytables::grant_keysets(&txn, target, &grants)?;
        txn.commit().map_err(super::dberror::err)?;
        Ok(grants.len())
    }
}

/// A reader's side: the keysets it has unwrapped (or failed to), for one session.
#[derive(Default)]
pub struct SummaryReader {
    keys: Mutex<HashMap<u64, Option<Arc<LessSafeKey>>>>,
}

impl SummaryReader {
    fn key(&self, store: &Store, keyring: &Keyring, id: u64) -> Option<Arc<LessSafeKey>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(&id) {
            return k.clone();
        }
        let unwrapped = (|| {
            let txn = store.db.begin_read().ok()?;
            let bytes = summarytables::keyset(&txn, id).ok()??;
            let stanzas = rewrap::parse_stanzas(&bytes)?;
            let file_key = age::Identity::unwrap_stanzas(keyring, &stanzas)?.ok()?;
            Some(Arc::new(cipher(&derive(&file_key))))
        })();
        keys.insert(id, unwrapped.clone());
        unwrapped
    }

    /// The opened `part` of each item's summary (`None`: none, or not for this reader).
    fn open_all(
        &self,
        store: &Store,
        keyring: &Keyring,
        items: &[u64],
        part: Part,
    ) -> Result<Vec<Option<Vec<u8>>>, ArchiveError> {
        let txn = store.db.begin_read().map_err(super::dberror::err)?;
        let sealed = summarytables::read(&txn, items, part)?;
        // The keysets of this call, so the shared map is locked once per keyset.
        let mut keys: Vec<(u64, Option<Arc<LessSafeKey>>)> = Vec::new();
        Ok(sealed
            .into_iter()
            .zip(items)
            .map(|(s, item)| {
                let (keyset, bytes) = s?;
                let key = match keys.iter().find(|(id, _)| *id == keyset) {
                    Some((_, key)) => key.clone(),
                    None => {
                        let key = self.key(store, keyring, keyset);
                        keys.push((keyset, key.clone()));
                        key
                    }
                };
                open(&*key?, *item, bytes)
            })
            .collect())
    }
}

impl Archive {
    /// The header of the message behind a folder's UID, from its summary.
    pub fn summary_header(
        &self,
        folder: &str,
        uid: u32,
        keyring: &Keyring,
        reader: &SummaryReader,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        let item = self.entry_item(folder, uid)?;
        Ok(reader
            .open_all(&self.store, keyring, &[item], Part::Header)?
            .pop()
            .flatten())
    }

    /// The headers of items, from their summaries.
    pub fn summary_headers(
        &self,
        items: &[u64],
        keyring: &Keyring,
        reader: &SummaryReader,
    ) -> Result<Vec<Option<Vec<u8>>>, ArchiveError> {
        reader.open_all(&self.store, keyring, items, Part::Header)
    }

    /// The [`crate::mime::SEARCH_FIELDS`] lines of items' headers, from their summaries
    /// (`None` also for items filed before these were kept).
    pub fn summary_search(
        &self,
        items: &[u64],
        keyring: &Keyring,
        reader: &SummaryReader,
    ) -> Result<Vec<Option<Vec<u8>>>, ArchiveError> {
        reader.open_all(&self.store, keyring, items, Part::Search)
    }

    /// The ENVELOPE and summary header fields of items.
    pub fn summary_fields(
        &self,
        items: &[u64],
        keyring: &Keyring,
        reader: &SummaryReader,
    ) -> Result<Vec<Option<Fields>>, ArchiveError> {
        let opened = reader.open_all(&self.store, keyring, items, Part::Fields)?;
        Ok(opened
            .into_iter()
            .map(|f| {
                let f = f?;
                let len = u32::from_le_bytes(f.get(..4)?.try_into().ok()?) as usize;
                Some(Fields {
                    envelope: f.get(4..4 + len)?.to_vec(),
                    header: f.get(4 + len..)?.to_vec(),
                })
            })
            .collect())
    }

    /// The word index's verdicts on `needle` for items.
    pub fn summary_verdicts(
        &self,
        wanted: &[u64],
        needle: &[u8],
        text: bool,
        keyring: &Keyring,
        reader: &SummaryReader,
    ) -> Result<Vec<Verdict>, ArchiveError> {
        let mut out = Vec::with_capacity(wanted.len());
        // A few hundred items at a time: their trigram filters, then the word lists of
        // those the filters do not rule out.
        for items in wanted.chunks(WORDS_AT_ONCE) {
            let grams = reader.open_all(&self.store, keyring, items, Part::Grams)?;
            let mut verdicts: Vec<Option<Verdict>> = grams
                .iter()
                .map(|g| match g.as_deref().and_then(Grams::decode) {
                    Some(g) if !g.may_contain(needle, text) => Some(Verdict::No),
                    _ => None,
                })
                .collect();
            let open: Vec<u64> = (items.iter().zip(&verdicts))
                .filter(|(_, v)| v.is_none())
                .map(|(item, _)| *item)
                .collect();
            let words = reader.open_all(&self.store, keyring, &open, Part::Words)?;
            let mut words = words.into_iter();
            for v in verdicts.iter_mut().filter(|v| v.is_none()) {
                *v = Some(
                    match words.next().flatten().as_deref().and_then(Tokens::decode) {
                        Some(tokens) => tokens.verdict(needle, text),
                        None => Verdict::Maybe,
                    },
                );
            }
            out.extend(verdicts.into_iter().map(|v| v.unwrap_or(Verdict::Maybe)));
        }
        Ok(out)
    }
}
