//! A gateway mailbox in the object store, shared by every node:
//!
//! - `mailboxes/<id>/msg/<stem>`: a delivered report, sealed. The `250` follows this one PUT,
//!   which the store acknowledges once a write quorum of replicas has it. It is never moved.
//! - `mailboxes/<id>/map/<first uid>`: UIDs. A reader that finds messages no map names takes
//!   the mailbox's `number` lock and writes one new map: `{"first": N, "stems": [...]}`, UIDs
//!   N, N+1, ... for those messages in arrival order, N above every UID of every earlier map.
//!   A map is written once (one PUT: numbering is all or nothing) and never changed, so nodes
//!   cache them; one whose messages are all gone is deleted, except the newest, which keeps
//!   UIDNEXT from going back. UIDs are never reused.
//! - `mailboxes/<id>/flags.json`: flags, keywords and modseqs, changed under the `flags` lock.
//!
//! `<stem>` is `<ms>-<node>-<random>-g<key generation>.<received>.<size>.<envelope length>`:
//! no address, subject or Message-ID. Messages sealed to an older key generation (before a
//! password reset) are not listed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::blobs::{BlobError, Blobs};
use super::claim::{Claim, ClaimError};
use crate::mailbox::MailboxId;
use crate::message::{FlagOp, Flags, MessageMeta, MAX_KEYWORDS};
use crate::store::FlagUpdate;

/// How long a reader waits for another node's numbering or flag change.
const LOCK_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Store(#[from] BlobError),
    #[error("the mailbox is locked by another node")]
    Busy,
    #[error("damaged flags document: {0}")]
    Damaged(String),
}

impl From<ClaimError> for InboxError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Busy => InboxError::Busy,
            ClaimError::Store(e) => InboxError::Store(e),
        }
    }
}

/// The flags document of a mailbox.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FlagDoc {
    /// Above the modseq of every message, and raised by each expunge.
    pub modseq: u64,
    pub keywords: Vec<String>,
    /// UID → (flag bits, modseq).
    pub flags: BTreeMap<u32, (u32, u64)>,
}

/// One numbered message: its metadata and object key.
#[derive(Debug, Clone)]
pub struct Numbered {
    pub meta: MessageMeta,
    pub key: String,
}

/// What a listing found.
pub struct Listing {
    pub messages: Vec<Numbered>,
    pub uid_next: u32,
    pub unnumbered: usize,
}

/// Maps already read, by object key (maps never change once written).
pub type MapCache = Mutex<HashMap<String, Arc<Vec<String>>>>;

#[derive(Debug, Serialize, Deserialize)]
struct UidMap {
    first: u32,
    stems: Vec<String>,
}

#[derive(Clone, Copy)]
pub struct Inbox<'a> {
    pub blobs: &'a Blobs,
    pub node: &'a str,
    pub id: &'a MailboxId,
    pub generation: u32,
    pub maps: &'a MapCache,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// One listing of a mailbox, its maps read.
struct Scan {
    /// Stem → object key, of every message object.
    messages: HashMap<String, String>,
    /// (first UID, map key, stems), by first UID.
    maps: Vec<(u32, String, Arc<Vec<String>>)>,
}

impl Scan {
    fn uid_next(&self) -> u32 {
        self.maps
            .iter()
            .map(|(first, _, stems)| first + stems.len() as u32)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    fn unnumbered(&self) -> Vec<String> {
        let named: HashSet<&String> = self.maps.iter().flat_map(|(_, _, s)| s.iter()).collect();
        let mut out: Vec<String> = self
            .messages
            .keys()
            .filter(|stem| !named.contains(stem))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

impl Inbox<'_> {
    fn prefix(&self) -> String {
        format!("mailboxes/{}", self.id)
    }

    /// Stores a sealed message durably (returns once the store acknowledged it).
    pub fn deliver(&self, sealed: &Path, meta: &MessageMeta) -> Result<(), InboxError> {
        let random = &crate::crypto::random_hex128()[..12];
        let stem = format!(
            "{:013}-{}-{random}-g{}.{}.{}.{}",
            now_ms(),
            self.node,
            self.generation,
            meta.received,
            meta.size,
            meta.envelope_len
        );
        let key = format!("{}/msg/{stem}", self.prefix());
        Ok(self.blobs.put_file(&key, sealed)?)
    }

    /// Numbers what arrived since the last listing, then lists the mailbox.
    pub fn list(&self) -> Result<Listing, InboxError> {
        let mut scan = self.scan()?;
        if !scan.unnumbered().is_empty() {
            let _lock = Claim::acquire(
                self.blobs,
                &format!("{}/lock/number", self.prefix()),
                self.node,
                LOCK_WAIT,
            )?;
            // Again under the lock: another node may have numbered them meanwhile.
            scan = self.scan()?;
            let fresh = scan.unnumbered();
            if !fresh.is_empty() {
                let first = scan.uid_next();
                let key = format!("{}/map/{first:010}", self.prefix());
                let map = UidMap {
                    first,
                    stems: fresh,
                };
                self.blobs
                    .put(&key, serde_json::to_vec(&map).expect("map serializes"))?;
                self.maps
                    .lock()
                    .unwrap()
                    .insert(key.clone(), Arc::new(map.stems.clone()));
                scan.maps.push((first, key, Arc::new(map.stems)));
            }
        }
        Ok(self.listing(&scan))
    }

    fn listing(&self, scan: &Scan) -> Listing {
        let generation = format!("-g{}.", self.generation);
        let mut messages = Vec::new();
        for (first, _, stems) in &scan.maps {
            for (i, stem) in stems.iter().enumerate() {
                let Some(key) = scan.messages.get(stem) else {
                    continue;
                };
                if !stem.contains(&generation) {
                    continue;
                }
                if let Some(meta) = parse_stem(first + i as u32, stem) {
                    messages.push(Numbered {
                        meta,
                        key: key.clone(),
                    });
                }
            }
        }
        messages.sort_by_key(|m| m.meta.uid);
        Listing {
            messages,
            uid_next: scan.uid_next(),
            unnumbered: scan.unnumbered().len(),
        }
    }

    /// One listing of the mailbox's objects, with its maps (from the cache, or read).
    fn scan(&self) -> Result<Scan, InboxError> {
        let prefix = self.prefix();
        let mut messages = HashMap::new();
        let mut map_keys = Vec::new();
        for object in self.blobs.list(&format!("{prefix}/"))? {
            let rest = &object.key[prefix.len()..];
            if let Some(stem) = rest.strip_prefix("/msg/") {
                messages.insert(stem.to_owned(), object.key.clone());
            } else if let Some(first) = rest.strip_prefix("/map/") {
                if let Ok(first) = first.parse::<u32>() {
                    map_keys.push((first, object.key.clone()));
                }
            }
        }
        map_keys.sort();
        let missing: Vec<String> = {
            let cache = self.maps.lock().unwrap();
            map_keys
                .iter()
                .filter(|(_, k)| !cache.contains_key(k))
                .map(|(_, k)| k.clone())
                .collect()
        };
        let read = self.blobs.get_many(&missing)?;
        let mut cache = self.maps.lock().unwrap();
        for (key, bytes) in missing.iter().zip(read) {
            let map: UidMap = serde_json::from_slice(&bytes)
                .map_err(|e| InboxError::Damaged(format!("{key}: {e}")))?;
            cache.insert(key.clone(), Arc::new(map.stems));
        }
        // Forget maps of this mailbox that are gone from the store.
        let live: HashSet<&String> = map_keys.iter().map(|(_, k)| k).collect();
        cache.retain(|k, _| !k.starts_with(&prefix) || live.contains(k));
        let maps = map_keys
            .into_iter()
            .map(|(first, key)| {
                let stems = cache.get(&key).cloned().unwrap_or_default();
                (first, key, stems)
            })
            .collect();
        Ok(Scan { messages, maps })
    }

    /// Deletes maps whose messages are all gone (never the newest: it holds UIDNEXT).
    fn drop_empty_maps(&self) -> Result<(), InboxError> {
        let scan = self.scan()?;
        let newest = scan.maps.iter().map(|(first, _, _)| *first).max();
        let empty: Vec<String> = scan
            .maps
            .iter()
            .filter(|(first, _, stems)| {
                Some(*first) != newest && stems.iter().all(|s| !scan.messages.contains_key(s))
            })
            .map(|(_, key, _)| key.clone())
            .collect();
        self.blobs.delete_many(&empty)?;
        Ok(())
    }

    pub fn flag_doc(&self) -> Result<FlagDoc, InboxError> {
        match self.blobs.get(&format!("{}/flags.json", self.prefix())) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| InboxError::Damaged(e.to_string()))
            }
            Err(BlobError::NotFound) => Ok(FlagDoc::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn save_flag_doc(&self, doc: &FlagDoc) -> Result<(), InboxError> {
        let bytes = serde_json::to_vec(doc).expect("flags serialize");
        Ok(self
            .blobs
            .put(&format!("{}/flags.json", self.prefix()), bytes)?)
    }

    /// Changes the flags document under the `flags` lock.
    fn edit<T>(&self, f: impl FnOnce(&mut FlagDoc) -> T) -> Result<T, InboxError> {
        let _lock = Claim::acquire(
            self.blobs,
            &format!("{}/lock/flags", self.prefix()),
            self.node,
            LOCK_WAIT,
        )?;
        let mut doc = self.flag_doc()?;
        let out = f(&mut doc);
        self.save_flag_doc(&doc)?;
        Ok(out)
    }

    pub fn set_flags(
        &self,
        present: &[MessageMeta],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, InboxError> {
        self.edit(|doc| {
            let mut result = FlagUpdate::default();
            for meta in present {
                let (bits, modseq) = doc.flags.get(&meta.uid).copied().unwrap_or((0, 1));
                if unchanged_since.is_some_and(|since| modseq > since) {
                    result.refused.push(meta.uid);
                    continue;
                }
                let flags = op.apply(Flags(bits));
                let mut now = MessageMeta {
                    flags: Flags(bits),
                    modseq,
                    ..*meta
                };
                if flags.0 != bits {
                    let modseq = crate::message::next_modseq().max(doc.modseq + 1);
                    doc.modseq = modseq;
                    doc.flags.insert(meta.uid, (flags.0, modseq));
                    now = MessageMeta {
                        flags,
                        modseq,
                        ..now
                    };
                }
                result.updated.push(now);
            }
            result
        })
    }

    pub fn define_keywords(&self, names: &[String]) -> Result<Option<Flags>, InboxError> {
        self.edit(|doc| {
            let mut flags = Flags::default();
            for name in names {
                let slot = match doc
                    .keywords
                    .iter()
                    .position(|k| k.eq_ignore_ascii_case(name))
                {
                    Some(slot) => slot,
                    None if doc.keywords.len() < MAX_KEYWORDS => {
                        doc.keywords.push(name.clone());
                        doc.keywords.len() - 1
                    }
                    None => return None,
                };
                flags = flags.with(Flags::keyword(slot));
            }
            Some(flags)
        })
    }

    /// Deletes messages; their flags go with them and the modseq rises.
    pub fn expunge(&self, doomed: &[Numbered]) -> Result<(), InboxError> {
        let keys: Vec<String> = doomed.iter().map(|m| m.key.clone()).collect();
        self.blobs.delete_many(&keys)?;
        self.edit(|doc| {
            for message in doomed {
                doc.flags.remove(&message.meta.uid);
            }
            doc.modseq = crate::message::next_modseq().max(doc.modseq + 1);
        })?;
        self.drop_empty_maps()
    }
}

/// The metadata in a stem: `<id>.<received>.<size>.<envelope length>`.
fn parse_stem(uid: u32, stem: &str) -> Option<MessageMeta> {
    let mut parts = stem.split('.');
    let _id = parts.next()?;
    let meta = MessageMeta {
        uid,
        received: parts.next()?.parse().ok()?,
        size: parts.next()?.parse().ok()?,
        envelope_len: parts.next()?.parse().ok()?,
        flags: Flags::default(),
        modseq: 1,
    };
    (uid > 0 && parts.next().is_none()).then_some(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_parse_and_carry_no_more_than_sizes() {
        let m = parse_stem(7, "0001700000000000-n1-abcdef012345-g1.1700000000.2048.120").unwrap();
        assert_eq!(
            (m.uid, m.received, m.size, m.envelope_len),
            (7, 1700000000, 2048, 120)
        );
        assert!(parse_stem(0, "x.1.2.3").is_none());
        assert!(parse_stem(7, "x.1.2").is_none());
    }

    fn deliver(inbox: &Inbox, file: &Path, n: usize) {
        let meta = MessageMeta {
            uid: 0,
            size: 6,
            received: 1,
            envelope_len: 0,
            flags: Flags::default(),
            modseq: 0,
        };
        for _ in 0..n {
            inbox.deliver(file, &meta).unwrap();
        }
    }

    fn uids(listing: &Listing) -> Vec<u32> {
        listing.messages.iter().map(|m| m.meta.uid).collect()
    }

    #[test]
    fn delivering_numbering_and_expunging_keep_uids_rising() {
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        let blobs = Blobs::new(store, Duration::from_secs(5)).unwrap();
        let id = MailboxId::parse(&format!("mbx-{}", crate::crypto::random_hex128())).unwrap();
        let (maps, other_maps) = (MapCache::default(), MapCache::default());
        let inbox = Inbox {
            blobs: &blobs,
            node: "n1",
            id: &id,
            generation: 1,
            maps: &maps,
        };
        // Another node: its own cache of maps.
        let other = Inbox {
            node: "n2",
            maps: &other_maps,
            ..inbox
        };
        let dir = tempfile_dir();
        let file = dir.join("m");
        std::fs::write(&file, b"sealed").unwrap();
        deliver(&inbox, &file, 3);
        let listed = inbox.list().unwrap();
        assert_eq!(uids(&listed), vec![1, 2, 3]);
        assert_eq!(
            uids(&other.list().unwrap()),
            vec![1, 2, 3],
            "the same UIDs everywhere"
        );
        other.expunge(&listed.messages[2..]).unwrap();
        deliver(&other, &file, 1);
        let listed = inbox.list().unwrap();
        assert_eq!(uids(&listed), vec![1, 2, 4], "UID 3 is never reused");
        assert_eq!(listed.uid_next, 5);
        // Expunging everything drops the older maps but keeps UIDNEXT.
        inbox.expunge(&listed.messages).unwrap();
        assert_eq!(
            blobs.list(&format!("mailboxes/{id}/map/")).unwrap().len(),
            1
        );
        deliver(&inbox, &file, 1);
        assert_eq!(uids(&other.list().unwrap()), vec![5]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("jg-inbox-{}", crate::crypto::random_hex128()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
