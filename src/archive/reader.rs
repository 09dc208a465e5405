//! Reading the archive: the folders a user may see, their entries, and message bytes; and
//! [`ArchiveStore`], an archive user's read-only [`MailStore`] for IMAP.

use tokio::sync::broadcast;

use super::*;

/// Folder keys of legal holds: `hold:<name>`.
const HOLD_PREFIX: &str = "hold:";
/// Folder key of the empty INBOX shown when received mail has another name.
const EMPTY_FOLDER: &str = "empty";
use crate::message::{FlagOp, Flags};
use crate::store::{
    ChangeKey, FlagUpdate, FolderInfo, MailStore, MessageReader, StoreError as MailStoreError,
};

impl Archive {
    /// The folders a user may see.
    pub fn folders_for(&self, user: &UserRecord) -> Vec<FolderView> {
        let (inbox, sent) = (&self.config.inbox_folder, &self.config.sent_folder);
        let own = |prefix: &str, u: &UserRecord| {
            [
                FolderView {
                    name: format!("{prefix}{inbox}"),
                    key: format!("{}/INBOX", u.id),
                    special_use: None,
                },
                FolderView {
                    name: format!("{prefix}{sent}"),
                    key: format!("{}/Sent", u.id),
                    special_use: Some("\\Sent"),
                },
            ]
        };
        let mut out: Vec<FolderView> = Vec::new();
        if !inbox.eq_ignore_ascii_case("INBOX") {
            // IMAP requires an INBOX; received mail is shown under the configured name.
            out.push(FolderView {
                name: "INBOX".to_owned(),
                key: EMPTY_FOLDER.to_owned(),
                special_use: None,
            });
        }
        out.extend(own("", user));
        if user.auditor {
            for u in self.user_list().iter() {
                out.extend(
                    own(&format!("Users/{}/", u.login), u)
                        .into_iter()
                        .map(|mut f| {
                            f.special_use = None;
                            f
                        }),
                );
            }
            out.push(FolderView {
                name: self.config.unknown_folder.clone(),
                key: UNKNOWN_FOLDER.to_owned(),
                special_use: None,
            });
            out.push(FolderView {
                name: self.config.envelopes_folder.clone(),
                key: super::envelope::ENVELOPES_FOLDER.to_owned(),
                special_use: None,
            });
            for hold in self.holds.list().unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the legal holds");
                Vec::new()
            }) {
                out.push(FolderView {
                    name: format!("Holds/{}", hold.name),
                    key: format!("{HOLD_PREFIX}{}", hold.name),
                    special_use: None,
                });
            }
        }
        out
    }

    /// The hold a `hold:<name>` folder key names.
    fn hold_of(&self, folder: &str) -> Result<Option<super::holds::Hold>, ArchiveError> {
        let Some(name) = folder.strip_prefix(HOLD_PREFIX) else {
            return Ok(None);
        };
        match self.holds.find(name) {
            Ok(hold) => Ok(Some(hold)),
            Err(super::holds::HoldError::NotFound(_)) => Err(ArchiveError::NoSuchMessage),
            Err(e) => Err(ArchiveError::Damaged(e.to_string())),
        }
    }

    /// A hold's folder: every item it covers, the item ID as UID.
    fn hold_entries(&self, hold: &super::holds::Hold) -> Result<Vec<Entry>, ArchiveError> {
        Ok(self
            .store
            .items()?
            .into_iter()
            .filter(|(id, item)| {
                item.envelope_of.is_none() && hold.covers(item) && u32::try_from(*id).is_ok()
            })
            .map(|(id, item)| Entry {
                uid: id as u32,
                item: id,
                received: item.received,
                size: item.size,
            })
            .collect())
    }

    fn folder_entries(&self, folder: &str) -> Result<Vec<Entry>, ArchiveError> {
        match self.hold_of(folder)? {
            Some(hold) => self.hold_entries(&hold),
            None => Ok(self.store.entries(folder)?),
        }
    }

    /// The messages of a folder that `user` can read, as IMAP metadata with the user's
    /// flags (an auditor added later, or a user after a password reset, cannot open older
    /// items).
    pub fn list(&self, folder: &str, user: &UserRecord) -> Result<Vec<MessageMeta>, ArchiveError> {
        Ok(self.listed(folder, user)?.0)
    }

    /// [`Archive::list`] with the item behind each message (same order).
    pub(super) fn listed(
        &self,
        folder: &str,
        user: &UserRecord,
    ) -> Result<(Vec<MessageMeta>, Vec<u64>), ArchiveError> {
        let readable = self.store.readable_cached(&user.public_key)?;
        let flags = self.store.folder_flags(&user.id, folder)?;
        let mut flags_of = flags.walk();
        let entries = self.folder_entries(folder)?;
        let mut metas = Vec::with_capacity(entries.len());
        let mut items = Vec::with_capacity(entries.len());
        for e in entries.into_iter().filter(|e| readable.contains(e.item)) {
            let (flags, modseq) = flags_of(e.uid);
            metas.push(MessageMeta {
                uid: e.uid,
                size: e.size,
                received: e.received,
                envelope_len: 0,
                flags,
                modseq,
            });
            items.push(e.item);
        }
        Ok((metas, items))
    }

    /// RFC 7162 HIGHESTMODSEQ of a folder as `user` sees it.
    pub fn highest_modseq(&self, folder: &str, user: &UserRecord) -> Result<u64, ArchiveError> {
        Ok(self.store.highest_modseq(&user.id, folder)?)
    }

    /// (UIDVALIDITY, UIDNEXT) of a folder.
    pub fn numbers(&self, folder: &str) -> Result<(u32, u32), ArchiveError> {
        if let Some(hold) = self.hold_of(folder)? {
            let next = self.store.next_item()?.min(u64::from(u32::MAX)) as u32;
            return Ok((hold.uidvalidity(), next.max(1)));
        }
        Ok(self.store.folder(folder)?)
    }

    /// The entry behind a UID of a folder: a keyed lookup (hold folders use the item ID).
    fn entry(&self, folder: &str, uid: u32) -> Result<Entry, ArchiveError> {
        if let Some(hold) = self.hold_of(folder)? {
            let item = self
                .store
                .item(u64::from(uid))?
                .filter(|item| item.envelope_of.is_none() && hold.covers(item))
                .ok_or(ArchiveError::NoSuchMessage)?;
            return Ok(Entry {
                uid,
                item: u64::from(uid),
                received: item.received,
                size: item.size,
            });
        }
        self.store
            .entry(folder, uid)?
            .ok_or(ArchiveError::NoSuchMessage)
    }

    /// The item behind a UID of a folder.
    pub(super) fn entry_item(&self, folder: &str, uid: u32) -> Result<u64, ArchiveError> {
        Ok(self.entry(folder, uid)?.item)
    }

    /// The items behind UIDs of a folder, by keyed lookups (`u64::MAX`, which has no
    /// summary, for a UID not in the folder); in a hold's folder the UID is the item.
    pub(super) fn items_of(&self, folder: &str, uids: &[u32]) -> Result<Vec<u64>, ArchiveError> {
        if self.hold_of(folder)?.is_some() {
            return Ok(uids.iter().map(|u| u64::from(*u)).collect());
        }
        Ok(self
            .store
            .items_for(folder, uids)?
            .into_iter()
            .map(|i| i.unwrap_or(u64::MAX))
            .collect())
    }

    /// Opens an archived message for reading. Blocking.
    pub fn open_message(
        &self,
        folder: &str,
        uid: u32,
        keyring: &Keyring,
    ) -> Result<impl Read + Send + use<>, ArchiveError> {
        let entry = self.entry(folder, uid)?;
        Ok(self.open_item(entry.item, keyring)?.take(entry.size))
    }

    /// Opens an item with a reader's keyring, through a grant's stanza when the item itself
    /// has none for it. Blocking.
    pub(crate) fn open_item(
        &self,
        item: u64,
        keyring: &Keyring,
    ) -> Result<impl Read + Send + use<>, ArchiveError> {
        let bytes = self.item_bytes(item, None)?;
        let identity = self.reader_of(item, keyring)?;
        Ok(crypto::open(&identity, bytes)?)
    }
}

impl Archive {
    /// The identity that opens `item` for the holder of `keyring`: its keyring, plus the
    /// stanza a grant gave it for that item.
    pub(super) fn reader_of<'a>(
        &self,
        item: u64,
        keyring: &'a Keyring,
    ) -> Result<WithGrant<'a>, ArchiveError> {
        let granted = self
            .store
            .granted(keyring.public(), item)?
            .and_then(|bytes| crypto::rewrap::parse_stanza(&bytes));
        Ok(WithGrant { keyring, granted })
    }
}

/// A reader's keyring plus the stanza a grant gave it for one item (kept in the store).
pub(super) struct WithGrant<'a> {
    keyring: &'a Keyring,
    granted: Option<age_core::format::Stanza>,
}

impl age::Identity for WithGrant<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &age_core::format::Stanza,
    ) -> Option<Result<age_core::format::FileKey, age::DecryptError>> {
        self.keyring.unwrap_stanza(stanza)
    }

    fn unwrap_stanzas(
        &self,
        stanzas: &[age_core::format::Stanza],
    ) -> Option<Result<age_core::format::FileKey, age::DecryptError>> {
        self.keyring
            .unwrap_stanzas(stanzas)
            .or_else(|| self.keyring.unwrap_stanzas(self.granted.as_slice()))
    }
}

/// An archive user's folders as a read-only [`MailStore`]: only items sealed to the user's
/// current key are listed, flags are not kept, nothing can be expunged.
pub struct ArchiveStore {
    archive: Arc<Archive>,
    user: UserRecord,
    keyring: Keyring,
    access: Access,
    summaries: super::summary::SummaryReader,
    /// The items behind the UIDs of the folder listed last (what IMAP has selected), so
    /// that FETCH and SEARCH map UIDs to items without a lookup each.
    listing: std::sync::Mutex<Listing>,
}

/// A folder's UIDs and the items behind them, ascending by UID.
#[derive(Default)]
struct Listing {
    folder: String,
    uids: Vec<u32>,
    items: Vec<u64>,
}

/// Where a session's folder openings and fetches are recorded, and from which client.
#[derive(Clone)]
pub struct Access {
    pub auditor: crate::audit::Auditor,
    pub client: std::net::IpAddr,
}

/// Items named per audit line of a FETCH.
const ITEMS_PER_EVENT: usize = 1000;

impl ArchiveStore {
    pub fn new(
        archive: Arc<Archive>,
        user: UserRecord,
        identity: Identity,
        access: Access,
    ) -> ArchiveStore {
        ArchiveStore {
            archive,
            user,
            keyring: Keyring::new(identity),
            access,
            summaries: Default::default(),
            listing: Default::default(),
        }
    }

    /// The items behind UIDs of a folder (`u64::MAX` for a UID not in it): from the
    /// listing when it is this folder's, else by keyed lookups.
    fn items_of(&self, folder: &FolderInfo, uids: &[u32]) -> Result<Vec<u64>, ArchiveError> {
        {
            let listing = self.listing.lock().unwrap_or_else(|p| p.into_inner());
            if listing.folder == folder.key {
                let found: Option<Vec<u64>> = uids
                    .iter()
                    .map(|uid| {
                        let i = listing.uids.binary_search(uid).ok()?;
                        Some(listing.items[i])
                    })
                    .collect();
                if let Some(items) = found {
                    return Ok(items);
                }
            }
        }
        self.archive.items_of(&folder.key, uids)
    }

    fn event(&self, action: &str) -> crate::audit::Event {
        crate::audit::Event::new(action, format!("imap:{}", self.user.login))
            .client(self.access.client)
    }
}

impl From<ArchiveError> for crate::store::StoreError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::NoSuchMessage => crate::store::StoreError::NoSuchMessage,
            e => crate::store::StoreError::unavailable(e),
        }
    }
}

impl MailStore for ArchiveStore {
    fn folders(&self) -> Vec<FolderInfo> {
        self.archive
            .folders_for(&self.user)
            .into_iter()
            .map(|f| FolderInfo {
                // Per-user flags need filed entries: not in holds or the empty INBOX.
                keeps_flags: !f.key.starts_with(HOLD_PREFIX) && f.key != EMPTY_FOLDER,
                name: f.name,
                key: f.key,
                special_use: f.special_use,
                read_only: true,
            })
            .collect()
    }

    fn list(&self, folder: &FolderInfo) -> Result<Vec<MessageMeta>, MailStoreError> {
        let (metas, items) = self.archive.listed(&folder.key, &self.user)?;
        *self.listing.lock().unwrap_or_else(|p| p.into_inner()) = Listing {
            folder: folder.key.clone(),
            uids: metas.iter().map(|m| m.uid).collect(),
            items,
        };
        Ok(metas)
    }

    fn numbers(&self, folder: &FolderInfo) -> Result<(u32, u32), MailStoreError> {
        Ok(self.archive.numbers(&folder.key)?)
    }

    fn open(
        &self,
        folder: &FolderInfo,
        meta: &MessageMeta,
    ) -> Result<MessageReader, MailStoreError> {
        let reader = self
            .archive
            .open_message(&folder.key, meta.uid, &self.keyring)?;
        Ok(Box::new(reader))
    }

    fn header(
        &self,
        folder: &FolderInfo,
        meta: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, MailStoreError> {
        Ok(self
            .archive
            .summary_header(&folder.key, meta.uid, &self.keyring, &self.summaries)?)
    }

    fn headers(
        &self,
        folder: &FolderInfo,
        metas: &[MessageMeta],
    ) -> Result<Vec<Option<Vec<u8>>>, MailStoreError> {
        let items = self.items_of(folder, &uids_of(metas))?;
        Ok(self
            .archive
            .summary_headers(&items, &self.keyring, &self.summaries)?)
    }

    fn fields(
        &self,
        folder: &FolderInfo,
        metas: &[MessageMeta],
    ) -> Result<Vec<Option<crate::store::Fields>>, MailStoreError> {
        let items = self.items_of(folder, &uids_of(metas))?;
        Ok(self
            .archive
            .summary_fields(&items, &self.keyring, &self.summaries)?)
    }

    fn search_fields(
        &self,
        folder: &FolderInfo,
        metas: &[MessageMeta],
    ) -> Result<Vec<Option<Vec<u8>>>, MailStoreError> {
        let items = self.items_of(folder, &uids_of(metas))?;
        Ok(self
            .archive
            .summary_search(&items, &self.keyring, &self.summaries)?)
    }

    fn text_verdicts(
        &self,
        folder: &FolderInfo,
        metas: &[MessageMeta],
        needle: &[u8],
        text: bool,
    ) -> Result<Option<Vec<crate::textindex::Verdict>>, MailStoreError> {
        let items = self.items_of(folder, &uids_of(metas))?;
        Ok(Some(self.archive.summary_verdicts(
            &items,
            needle,
            text,
            &self.keyring,
            &self.summaries,
        )?))
    }

    fn set_flags(
        &self,
        folder: &FolderInfo,
        uids: &[u32],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, MailStoreError> {
        let store = &self.archive.store;
        let (done, refused) = store
            .set_user_flags(&self.user.id, &folder.key, uids, op, unchanged_since)
            .map_err(ArchiveError::from)?;
        // The listing says which entries the user can read; one keyed lookup each.
        let items = self.items_of(folder, &done.iter().map(|d| d.0).collect::<Vec<_>>())?;
        let updated = done
            .into_iter()
            .zip(items)
            .filter(|(_, item)| *item != u64::MAX)
            .filter_map(|((uid, flags, modseq), _)| {
                let e = self.archive.entry(&folder.key, uid).ok()?;
                Some(MessageMeta {
                    uid,
                    size: e.size,
                    received: e.received,
                    envelope_len: 0,
                    flags,
                    modseq,
                })
            })
            .collect();
        self.archive.spool.notify_change(change_key(&folder.key));
        Ok(FlagUpdate { updated, refused })
    }

    fn keywords(&self, _folder: &FolderInfo) -> Vec<String> {
        self.archive
            .store
            .user_keywords(&self.user.id)
            .unwrap_or_default()
    }

    fn define_keywords(
        &self,
        _folder: &FolderInfo,
        names: &[String],
    ) -> Result<Option<Flags>, MailStoreError> {
        Ok(self
            .archive
            .store
            .define_user_keywords(&self.user.id, names)
            .map_err(ArchiveError::from)?)
    }

    fn highest_modseq(&self, folder: &FolderInfo) -> Result<u64, MailStoreError> {
        Ok(self.archive.highest_modseq(&folder.key, &self.user)?)
    }

    fn expunge(&self, _folder: &FolderInfo, _uids: &[u32]) -> Result<(), MailStoreError> {
        Err(MailStoreError::ReadOnly)
    }

    fn watch(&self) -> broadcast::Receiver<ChangeKey> {
        self.archive.spool.subscribe()
    }

    fn change_key(&self, folder: &FolderInfo) -> ChangeKey {
        change_key(&folder.key)
    }

    fn opened(&self, folder: &FolderInfo) {
        self.access
            .auditor
            .record(self.event("archive.select").target(&folder.name));
    }

    fn fetched(&self, folder: &FolderInfo, uids: &[u32]) {
        let items: Vec<u64> = match self.items_of(folder, uids) {
            Ok(items) => items.into_iter().filter(|i| *i != u64::MAX).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot name the fetched items in the audit trail");
                Vec::new()
            }
        };
        for chunk in items.chunks(ITEMS_PER_EVENT) {
            self.access.auditor.record(
                self.event("archive.fetch")
                    .target(&folder.name)
                    .detail(serde_json::json!({ "items": chunk })),
            );
        }
    }

    fn still_valid(&self) -> bool {
        self.archive
            .user_list()
            .iter()
            .any(|u| u.id == self.user.id && u.key_generation == self.user.key_generation)
    }
}

fn uids_of(metas: &[MessageMeta]) -> Vec<u32> {
    metas.iter().map(|m| m.uid).collect()
}
