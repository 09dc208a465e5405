//! A gateway mailbox in the object store, shared by every node:
//!
//! - `mailboxes/<id>/new/<stem>`: delivered, not numbered yet. The `250` follows this one PUT,
//!   which the store acknowledges once a write quorum of replicas has it.
//! - `mailboxes/<id>/uid/<uid>.<stem>`: numbered (zero-padded UID, so listing order is UID
//!   order). A reader numbers new messages under the mailbox's `number` lock: it reserves the
//!   UIDs first (`uidnext/<n>`, never lowered), copies each `new/` object to its `uid/` name
//!   and deletes the `new/` one. A crash in between leaves a `new/` object whose stem is
//!   already numbered; the next pass only deletes it. UIDs are never reused.
//! - `mailboxes/<id>/flags.json`: flags, keywords and modseqs, changed under the `flags` lock.
//!
//! `<stem>` is `<ms>-<node>-<random>-g<key generation>.<received>.<size>.<envelope length>`:
//! no address, subject or Message-ID. Objects sealed to an older key generation (before a
//! password reset) are not listed.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
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

pub struct Inbox<'a> {
    pub blobs: &'a Blobs,
    pub node: &'a str,
    pub id: &'a MailboxId,
    pub generation: u32,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
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
        let key = format!("{}/new/{stem}", self.prefix());
        Ok(self.blobs.put_file(&key, sealed)?)
    }

    /// Numbers what arrived since the last listing, then lists the mailbox.
    pub fn list(&self) -> Result<Listing, InboxError> {
        let listing = self.scan()?;
        if listing.unnumbered == 0 {
            return Ok(listing);
        }
        let _lock = Claim::acquire(
            self.blobs,
            &format!("{}/lock/number", self.prefix()),
            self.node,
            LOCK_WAIT,
        )?;
        self.number()?;
        self.scan()
    }

    /// One listing of the mailbox's objects.
    fn scan(&self) -> Result<Listing, InboxError> {
        let prefix = self.prefix();
        let generation = format!("-g{}.", self.generation);
        let mut out = Listing {
            messages: Vec::new(),
            uid_next: 1,
            unnumbered: 0,
        };
        for object in self.blobs.list(&format!("{prefix}/"))? {
            let Some(rest) = object.key.strip_prefix(&prefix) else {
                continue;
            };
            if rest.starts_with("/new/") {
                out.unnumbered += 1;
            } else if let Some(n) = rest.strip_prefix("/uidnext/") {
                out.uid_next = out.uid_next.max(n.parse().unwrap_or(1));
            } else if let Some(name) = rest.strip_prefix("/uid/") {
                if !name.contains(&generation) {
                    continue;
                }
                if let Some(meta) = parse_numbered(name) {
                    out.uid_next = out.uid_next.max(meta.uid + 1);
                    out.messages.push(Numbered {
                        meta,
                        key: object.key.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Moves `new/` objects to `uid/` names (the caller holds the `number` lock).
    fn number(&self) -> Result<(), InboxError> {
        let prefix = self.prefix();
        let mut fresh = Vec::new();
        let mut numbered = HashSet::new();
        let mut next = 1u32;
        for object in self.blobs.list(&format!("{prefix}/"))? {
            let rest = &object.key[prefix.len()..];
            if let Some(stem) = rest.strip_prefix("/new/") {
                fresh.push(stem.to_owned());
            } else if let Some(n) = rest.strip_prefix("/uidnext/") {
                next = next.max(n.parse().unwrap_or(1));
            } else if let Some(name) = rest.strip_prefix("/uid/") {
                if let Some((uid, stem)) = name.split_once('.') {
                    next = next.max(uid.parse::<u32>().unwrap_or(0) + 1);
                    numbered.insert(stem.to_owned());
                }
            }
        }
        fresh.retain(|stem| {
            let done = numbered.contains(stem);
            if done {
                let _ = self.blobs.delete(&format!("{prefix}/new/{stem}"));
            }
            !done
        });
        if fresh.is_empty() {
            return Ok(());
        }
        let reserved = next + fresh.len() as u32;
        self.blobs
            .put(&format!("{prefix}/uidnext/{reserved:010}"), Vec::new())?;
        for (i, stem) in fresh.iter().enumerate() {
            let uid = next + i as u32;
            let from = format!("{prefix}/new/{stem}");
            self.blobs
                .copy(&from, &format!("{prefix}/uid/{uid:010}.{stem}"))?;
            self.blobs.delete(&from)?;
        }
        for old in self.blobs.list(&format!("{prefix}/uidnext/"))? {
            if !old.key.ends_with(&format!("{reserved:010}")) {
                let _ = self.blobs.delete(&old.key);
            }
        }
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
        for message in doomed {
            self.blobs.delete(&message.key)?;
        }
        self.edit(|doc| {
            for message in doomed {
                doc.flags.remove(&message.meta.uid);
            }
            doc.modseq = crate::message::next_modseq().max(doc.modseq + 1);
        })
    }
}

/// `<uid>.<stem>` with stem `<id>.<received>.<size>.<envelope length>`.
fn parse_numbered(name: &str) -> Option<MessageMeta> {
    let mut parts = name.split('.');
    let uid = parts.next()?.parse().ok().filter(|u| *u > 0)?;
    let _id = parts.next()?;
    let meta = MessageMeta {
        uid,
        received: parts.next()?.parse().ok()?,
        size: parts.next()?.parse().ok()?,
        envelope_len: parts.next()?.parse().ok()?,
        flags: Flags::default(),
        modseq: 1,
    };
    parts.next().is_none().then_some(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_parse_and_carry_no_more_than_sizes() {
        let m =
            parse_numbered("0000000007.0001700000000000-n1-abcdef012345-g1.1700000000.2048.120")
                .unwrap();
        assert_eq!(
            (m.uid, m.received, m.size, m.envelope_len),
            (7, 1700000000, 2048, 120)
        );
        assert!(parse_numbered("0000000000.x.1.2.3").is_none());
        assert!(parse_numbered("7.x.1.2").is_none());
    }

    #[test]
    fn delivering_numbering_and_expunging_keep_uids_rising() {
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        let blobs = Blobs::new(store, Duration::from_secs(5)).unwrap();
        let id = MailboxId::parse(&format!("mbx-{}", crate::crypto::random_hex128())).unwrap();
        let inbox = Inbox {
            blobs: &blobs,
            node: "n1",
            id: &id,
            generation: 1,
        };
        let dir = tempfile_dir();
        let file = dir.join("m");
        std::fs::write(&file, b"sealed").unwrap();
        let meta = MessageMeta {
            uid: 0,
            size: 6,
            received: 1,
            envelope_len: 0,
            flags: Flags::default(),
            modseq: 0,
        };
        for _ in 0..3 {
            inbox.deliver(&file, &meta).unwrap();
        }
        let listed = inbox.list().unwrap();
        let uids: Vec<u32> = listed.messages.iter().map(|m| m.meta.uid).collect();
        assert_eq!(uids, vec![1, 2, 3]);
        inbox.expunge(&listed.messages[2..]).unwrap();
        inbox.deliver(&file, &meta).unwrap();
        let listed = inbox.list().unwrap();
        let uids: Vec<u32> = listed.messages.iter().map(|m| m.meta.uid).collect();
        assert_eq!(uids, vec![1, 2, 4], "UID 3 is never reused");
        assert_eq!(listed.uid_next, 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("jg-inbox-{}", crate::crypto::random_hex128()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
