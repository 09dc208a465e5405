//! The mail-store seam: what the IMAP (and POP3) sessions ask of wherever a login's messages
//! live. A gateway mailbox (`spool`) and an archive user's read-only folders (`archive`)
//! implement [`MailStore`]; the protocol code holds an `Arc<dyn MailStore>` and never asks
//! which one it is. The trait speaks of folders, UIDs, flags and byte streams only — no
//! paths, files or keys — so an object-store back-end can implement it too.
//!
//! Every method may block (disk, decryption): call the heavy ones (`open`, `set_flags`,
//! `expunge`) from a blocking task.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::message::{FlagOp, Flags, MessageMeta};
use crate::textindex::Verdict;

/// Names a folder that changed in a change notification.
pub type ChangeKey = String;

/// A reader of one message's bytes, exactly as stored.
pub type MessageReader = Box<dyn Read + Send>;

/// A folder a login may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// The IMAP name (`INBOX`, `Sent`, `Users/a@b.example/INBOX`, ...), `/`-separated.
    pub name: String,
    /// Names the folder inside its store; opaque to the protocols.
    pub key: String,
    /// RFC 6154 special use (`\Sent`), if any.
    pub special_use: Option<&'static str>,
    /// No expunge and no `\Deleted`, for anyone.
    pub read_only: bool,
    /// Flags (and keywords) may be stored: per message, or per user in the archive.
    pub keeps_flags: bool,
}

/// `\Recent` (RFC 3501 §2.3.2): per folder (by change key), the highest UID some session has
/// already been told is recent. Kept in memory: after a restart, messages are recent once
/// more for the first session that selects their folder.
#[derive(Default)]
pub struct RecentMarks(Mutex<HashMap<ChangeKey, u32>>);

impl RecentMarks {
    /// Claims the UIDs up to `up_to` for the caller; returns the mark before, so that the
    /// caller's recent messages are those above it.
    pub fn claim(&self, key: &ChangeKey, up_to: u32) -> u32 {
        let mut marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mark = marks.entry(key.clone()).or_insert(0);
        let before = *mark;
        *mark = before.max(up_to);
        before
    }

    /// The mark now (messages above it are recent for the next session that looks).
    pub fn mark(&self, key: &ChangeKey) -> u32 {
        let marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(key).copied().unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such message")]
    NoSuchMessage,
    #[error("no such folder")]
    NoSuchFolder,
    #[error("the folder is read-only")]
    ReadOnly,
    #[error("{0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Unavailable(Box::new(e))
    }
}

/// What a flag change did.
#[derive(Debug, Default)]
pub struct FlagUpdate {
    /// The messages changed (or already as asked), as they are now.
    pub updated: Vec<MessageMeta>,
    /// UIDs left alone because they changed after the caller's UNCHANGEDSINCE.
    pub refused: Vec<u32>,
}

/// A message's precomputed ENVELOPE and the header fields of
/// [`crate::mime::SUMMARY_FIELDS`], from a store's summary.
#[derive(Debug, Clone)]
pub struct Fields {
    pub envelope: Vec<u8>,
    pub header: Vec<u8>,
}

/// One login's view of its messages.
pub trait MailStore: Send + Sync {
    /// The folders this login may see, in the order LIST shows them.
    fn folders(&self) -> Vec<FolderInfo>;

    /// The messages of a folder now, in ascending UID order.
    fn list(&self, folder: &FolderInfo) -> Result<Vec<MessageMeta>, StoreError>;

    /// `(UIDVALIDITY, UIDNEXT)` of a folder.
    fn numbers(&self, folder: &FolderInfo) -> Result<(u32, u32), StoreError>;

    /// The bytes of one message, decrypted.
    fn open(&self, folder: &FolderInfo, meta: &MessageMeta) -> Result<MessageReader, StoreError>;

    /// Applies `op` to the flags of messages by UID, as they are now (another session's
    /// change is never overwritten); with `unchanged_since` (RFC 7162) a message modified
    /// after it is refused. Vanished messages are left out.
    fn set_flags(
        &self,
        folder: &FolderInfo,
        uids: &[u32],
        op: FlagOp,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, StoreError>;

    /// The folder's keyword names: slot `k` is [`Flags::keyword`]`(k)`.
    fn keywords(&self, folder: &FolderInfo) -> Vec<String>;

    /// The flags of these keywords, defining new ones; `None` when the folder has no room
    /// for another keyword.
    fn define_keywords(
        &self,
        folder: &FolderInfo,
        names: &[String],
    ) -> Result<Option<Flags>, StoreError>;

    /// RFC 7162 HIGHESTMODSEQ: at least the modseq of every message, and above it after
    /// an expunge.
    fn highest_modseq(&self, folder: &FolderInfo) -> Result<u64, StoreError>;

    /// Removes messages by UID, durably.
    fn expunge(&self, folder: &FolderInfo, uids: &[u32]) -> Result<(), StoreError>;

    /// Change notifications ("folder K changed": new mail, flags, expunge).
    fn watch(&self) -> broadcast::Receiver<ChangeKey>;

    /// The key that change notifications carry for `folder`.
    fn change_key(&self, folder: &FolderInfo) -> ChangeKey;

    /// The login opened a folder (SELECT, EXAMINE): a store that keeps an audit trail
    /// records it.
    fn opened(&self, _folder: &FolderInfo) {}

    /// Message bodies (or body parts) of these UIDs were sent to the client.
    fn fetched(&self, _folder: &FolderInfo, _uids: &[u32]) {}

    /// The header of a message (through its blank line) when the store keeps it apart from
    /// the message (a summary), so that ENVELOPE, header fetches, header SEARCH and SORT
    /// need not read the message; `None`: read the message. Blocking.
    fn header(
        &self,
        _folder: &FolderInfo,
        _meta: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    /// The summary fields of several messages (`None`: none kept; read the header). Blocking.
    fn fields(
        &self,
        _folder: &FolderInfo,
        metas: &[MessageMeta],
    ) -> Result<Vec<Option<Fields>>, StoreError> {
        Ok(vec![None; metas.len()])
    }

    /// The header lines of [`crate::mime::SEARCH_FIELDS`] of several messages (`None`: not
    /// kept apart; read the summary fields). Blocking.
    fn search_fields(
        &self,
        _folder: &FolderInfo,
        metas: &[MessageMeta],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(vec![None; metas.len()])
    }

    /// [`MailStore::header`] of several messages at once (one lookup of the folder).
    fn headers(
        &self,
        folder: &FolderInfo,
        metas: &[MessageMeta],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        metas.iter().map(|m| self.header(folder, m)).collect()
    }

    /// What the store's text index says about `needle` (TEXT when `text`, else BODY) for
    /// each of `metas`; `None` when the store has no index. Blocking.
    fn text_verdicts(
        &self,
        _folder: &FolderInfo,
        _metas: &[MessageMeta],
        _needle: &[u8],
        _text: bool,
    ) -> Result<Option<Vec<Verdict>>, StoreError> {
        Ok(None)
    }

    /// False once the login's key is no longer current (password reset, login deleted):
    /// an open session must end then.
    fn still_valid(&self) -> bool;

    /// Finds a folder by its IMAP name (`INBOX` case-insensitively).
    fn folder(&self, name: &str) -> Option<FolderInfo> {
        self.folders()
            .into_iter()
            .find(|f| f.name == name || (f.name == "INBOX" && name.eq_ignore_ascii_case("INBOX")))
    }
}
