//! Grants: making every item a user is entitled to readable by that user's current key.
//!
//! An auditor is entitled to every item; a user to the items filed in their own folders (and
//! the copies linked to them). The file keys are unwrapped with what the operator brings
//! (the recovery key, or an auditor's unwrapped key) and wrapped again for the user, through
//! one fresh epoch per grant ([`crate::crypto::epoch`]): a grant costs one key agreement for
//! the user, one per epoch for the unlocking key, and a small stanza per item, kept in the
//! store beside the item. Item files are never rewritten, so their hashes on the integrity
//! chain stay valid.
//!
//! Work goes in batches of one durable store commit each. A grant killed at any point loses
//! nothing (an item gains its stanza and the user's key in the same commit) and is resumed
//! by running it again: items already readable are skipped. The worker does not file while a
//! batch is in flight (`Archive::filing`), so a duplicate is never re-sealed under a grant.

use std::collections::BTreeSet;

use age_core::format::FileKey;
use serde::Serialize;

use super::users::UserRecord;
use super::{Archive, ArchiveError};
use crate::crypto::epoch::{Epoch, Keyring};
use crate::crypto::{rewrap, Identity};

/// Items granted per durable commit, unless told otherwise.
pub const GRANT_BATCH: usize = 1024;

/// What a grant did. The counts are of archived messages; the journal envelopes an auditor
/// is also given are counted apart.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct GrantReport {
    /// Items the user is entitled to.
    pub entitled: u64,
    /// Items made readable now.
    pub granted: u64,
    /// Items the user could already read.
    pub already: u64,
    /// Items none of the given keys opens (sealed before a recovery key existed, and to no
    /// auditor whose key was given).
    pub unreachable: u64,
    /// Journal envelopes made readable now (auditors only).
    pub envelopes: u64,
}

impl Archive {
    /// Makes every item `user` is entitled to readable by the user's current key, opening
    /// file keys with `unlock`. `progress(done, total)` is called after each batch.
    pub fn grant(
        &self,
        user: &UserRecord,
        unlock: &[Identity],
        batch: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GrantReport, ArchiveError> {
        let (entitled, envelopes) = self.entitled(user)?;
        let target = user.public_key.clone();
        let have = self.store.readable(&target)?;
        let keyrings: Vec<Keyring> = unlock.iter().cloned().map(Keyring::new).collect();
        let mut openable = super::itemset::ItemSet::new();
        for keyring in &keyrings {
            openable.union(&self.store.readable(keyring.public())?);
        }
        let mut report = GrantReport {
            entitled: entitled.len() as u64,
            ..GrantReport::default()
        };
        let all: std::collections::HashSet<u64> =
            entitled.iter().chain(&envelopes).copied().collect();
        let mut todo = Vec::new();
        for id in entitled {
            if have.contains(id) {
                report.already += 1;
            } else if openable.contains(id) {
                todo.push(id);
            } else {
                report.unreachable += 1;
            }
        }
        let messages = todo.len();
        todo.extend(
            envelopes
                .into_iter()
                .filter(|id| !have.contains(*id) && openable.contains(*id)),
        );
        let epoch = Epoch::new();
        let total = todo.len() as u64;
        progress(0, total);
        let mut done = 0;
        for chunk in todo.chunks(batch.max(1)) {
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let granted = self.grant_batch(chunk, &keyrings, &epoch, &target)?;
            // Messages come first in `todo`, then the envelopes.
            let messages_here = messages.saturating_sub(done as usize).min(chunk.len()) as u64;
            report.granted += granted.min(messages_here);
            report.envelopes += granted.saturating_sub(messages_here);
            done += chunk.len() as u64;
            progress(done, total);
        }
        let keysets = self.grant_keysets(&target, &all, &keyrings, &epoch)?;
        if report.granted > 0 || keysets > 0 {
            for folder in self.folders_for(user) {
                self.spool.notify_change(super::change_key(&folder.key));
            }
        }
        tracing::info!(user = %user.id, granted = report.granted, already = report.already,
            unreachable = report.unreachable, summary_keysets = keysets, "archive grant");
        Ok(report)
    }

    /// Item IDs `user` is entitled to, ascending: (messages, journal envelopes).
    fn entitled(&self, user: &UserRecord) -> Result<(BTreeSet<u64>, BTreeSet<u64>), ArchiveError> {
        if user.auditor {
            let (mut messages, mut envelopes) = (BTreeSet::new(), BTreeSet::new());
            for (id, item) in self.store.items()? {
                match item.envelope_of {
                    Some(_) => envelopes.insert(id),
                    None => messages.insert(id),
                };
            }
            return Ok((messages, envelopes));
        }
        let mut out = BTreeSet::new();
        for folder in self.folders_for(user) {
            for entry in self.store.entries(&folder.key)? {
                if out.insert(entry.item) {
                    if let Some(item) = self.store.item(entry.item)? {
                        out.extend(item.linked);
                    }
                }
            }
        }
        Ok((out, BTreeSet::new()))
    }

    /// Grants one batch in one durable commit; returns how many items were granted.
    fn grant_batch(
        &self,
        ids: &[u64],
        keyrings: &[Keyring],
        epoch: &Epoch,
        target: &str,
    ) -> Result<u64, ArchiveError> {
        let recipient = epoch.recipient(target)?;
        let _filing = self.filing.lock().unwrap_or_else(|e| e.into_inner());
        let mut stanzas = Vec::with_capacity(ids.len());
        for &id in ids {
            match self.item_file_key(id, keyrings) {
                Ok(key) => stanzas.push((id, rewrap::stanza_bytes(&recipient.stanza(&key)))),
                Err(ArchiveError::NoSuchMessage) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(self.store.grant(target, &stanzas)?)
    }

    /// The file key of an item, unwrapped with the first keyring that opens it (directly or
    /// through an earlier grant) and checked against the file's header MAC.
    pub(super) fn item_file_key(
        &self,
        id: u64,
        keyrings: &[Keyring],
    ) -> Result<FileKey, ArchiveError> {
        let header = rewrap::Header::read(&mut self.item_bytes(id, None)?)?;
        let mut last = None;
        for keyring in keyrings {
            let identity = self.reader_of(id, keyring)?;
            match header.checked_file_key(&identity) {
                Ok(key) => return Ok(key),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or(crate::crypto::CryptoError::WrongPassword)
            .into())
    }
}
