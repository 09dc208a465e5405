//! The selected mailbox as one session sees it: message sequence numbers, UIDs, flags,
//! keyword names, which messages are `\Recent` for this session, and the updates (EXISTS,
//! EXPUNGE, FETCH FLAGS, FLAGS) it owes the client when the mailbox changes.

use std::collections::HashSet;

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::message::MessageMeta;
use crate::store::FolderInfo;

use super::wire::flag_list;

pub struct View {
    pub folder: FolderInfo,
    pub read_only: bool,
    /// Messages in sequence order (ascending UID).
    pub messages: Vec<MessageMeta>,
    /// The folder's keyword names by slot, as last announced in FLAGS.
    pub keywords: Vec<String>,
    /// UIDs that are `\Recent` in this session.
    pub recent: HashSet<u32>,
    /// Untagged FETCH responses carry MODSEQ (CONDSTORE is enabled).
    pub condstore: bool,
    /// Expunges are announced as `* VANISHED` (QRESYNC is enabled, RFC 7162 §3.2.10).
    pub qresync: bool,
}

/// What a sync learns besides the untagged responses it writes.
#[derive(Default)]
pub struct Synced {
    /// UIDs of messages new to the view.
    pub new: Vec<u32>,
    /// UIDs of messages whose flags changed.
    pub changed: Vec<u32>,
}

/// A sequence set resolved to sorted, merged inclusive ranges.
pub struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    /// Resolves `*` to `largest` (RFC 3501 §6.4.8: `n:*` includes the largest even if n is larger).
    pub fn new(set: &SequenceSet, largest: u32) -> Ranges {
        let value = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => largest,
        };
        let mut ranges: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|seq| match seq {
                Sequence::Single(s) => (value(s), value(s)),
                Sequence::Range(a, b) => {
                    let (a, b) = (value(a), value(b));
                    (a.min(b), a.max(b))
                }
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Ranges(merged)
    }

    pub fn contains(&self, n: u32) -> bool {
        let i = self.0.partition_point(|(_, b)| *b < n);
        self.0.get(i).is_some_and(|(a, _)| *a <= n)
    }
}

impl View {
    pub fn new(folder: FolderInfo, read_only: bool, messages: Vec<MessageMeta>) -> View {
        View {
            folder,
            read_only,
            messages,
            keywords: Vec::new(),
            recent: HashSet::new(),
            condstore: false,
            qresync: false,
        }
    }

    /// The FLAGS list of a message as this session shows it.
    pub fn flag_list(&self, m: &MessageMeta) -> String {
        flag_list(m.flags, &self.keywords, self.recent.contains(&m.uid))
    }

    /// Flags may be stored in this view (not EXAMINE, and the folder keeps them).
    pub fn flags_writable(&self) -> bool {
        !self.read_only && self.folder.keeps_flags
    }

    /// The untagged FETCH of a flag change.
    pub fn flag_update(&self, seq: usize, m: &MessageMeta, with_uid: bool) -> String {
        let uid = if with_uid || self.condstore {
            format!("UID {} ", m.uid)
        } else {
            String::new()
        };
        let modseq = match self.condstore {
            true => format!(" MODSEQ ({})", m.modseq.max(1)),
            false => String::new(),
        };
        format!("* {seq} FETCH ({uid}FLAGS {}{modseq})", self.flag_list(m))
    }

    pub fn exists(&self) -> u32 {
        self.messages.len() as u32
    }

    pub fn uidnext_at_least(&self) -> u32 {
        self.messages.last().map(|m| m.uid + 1).unwrap_or(1)
    }

    /// Indexes (0-based) of the messages a sequence set selects, ascending.
    pub fn select(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        if uid {
            let largest = self.messages.last().map(|m| m.uid).unwrap_or(0);
            let ranges = Ranges::new(set, largest);
            (0..self.messages.len())
                .filter(|i| ranges.contains(self.messages[*i].uid))
                .collect()
        } else {
            let ranges = Ranges::new(set, self.exists());
            (0..self.messages.len())
                .filter(|i| ranges.contains(*i as u32 + 1))
                .collect()
        }
    }

    /// True when a message sequence set names a message that does not exist (a BAD in RFC 3501).
    pub fn out_of_range(&self, set: &SequenceSet) -> bool {
        set.0.as_ref().iter().any(|seq| {
            let check = |s: &SeqOrUid| match s {
                SeqOrUid::Value(v) => v.get() > self.exists(),
                SeqOrUid::Asterisk => self.exists() == 0,
            };
            match seq {
                Sequence::Single(s) => check(s),
                Sequence::Range(a, b) => check(a) && check(b),
            }
        })
    }

    /// Brings the view up to date with `current` (the mailbox now) and writes the untagged
    /// responses. Expunges are applied only when `allow_expunge` (not during FETCH, STORE,
    /// SEARCH); new messages are always announced, never with `* 0 EXISTS`.
    pub fn sync(
        &mut self,
        current: &[MessageMeta],
        allow_expunge: bool,
        out: &mut Vec<u8>,
    ) -> Synced {
        if allow_expunge {
            let gone = self.gone(current);
            let mut vanished = Vec::new();
            for i in (0..self.messages.len()).rev() {
                let uid = self.messages[i].uid;
                if gone.contains(&uid) {
                    if self.qresync {
                        vanished.push(uid);
                    } else {
                        out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                    }
                    self.messages.remove(i);
                    self.recent.remove(&uid);
                }
            }
            if !vanished.is_empty() {
                let set = super::wire::number_set(vanished);
                out.extend_from_slice(format!("* VANISHED {set}\r\n").as_bytes());
            }
        }
        // Flag changes of messages we still show.
        let mut changed = Vec::new();
        for i in 0..self.messages.len() {
            let m = self.messages[i];
            if let Ok(k) = current.binary_search_by_key(&m.uid, |c| c.uid) {
                let now = current[k];
                if now.flags != m.flags || now.modseq != m.modseq {
                    self.messages[i] = now;
                }
                if now.flags != m.flags {
                    changed.push(m.uid);
                    let line = self.flag_update(i + 1, &now, true);
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        // New messages (UIDs above the highest we show).
        let highest = self.messages.last().map(|m| m.uid).unwrap_or(0);
        let before = self.messages.len();
        self.messages
            .extend(current.iter().filter(|m| m.uid > highest).copied());
        let new: Vec<u32> = self.messages[before..].iter().map(|m| m.uid).collect();
        if !new.is_empty() {
            out.extend_from_slice(format!("* {} EXISTS\r\n", self.messages.len()).as_bytes());
        }
        Synced { new, changed }
    }

    /// UIDs of the messages shown that are not in `current` (the mailbox now).
    pub fn gone(&self, current: &[MessageMeta]) -> std::collections::HashSet<u32> {
        (self.messages.iter())
            .map(|m| m.uid)
            .filter(|uid| current.binary_search_by_key(uid, |c| c.uid).is_err())
            .collect()
    }
}

/// Parses `1:3,5` style sets for tests.
#[cfg(test)]
fn set(s: &str) -> SequenceSet {
    SequenceSet::try_from(s).unwrap()
}

/// A read-write INBOX view of messages with these UIDs, no flags (for tests).
#[cfg(test)]
pub(super) fn test_view(uids: &[u32]) -> View {
    let folder = FolderInfo {
        name: "INBOX".into(),
        key: "k".into(),
        special_use: None,
        read_only: false,
        keeps_flags: true,
    };
    let meta = |uid| MessageMeta {
        uid,
        size: 1,
        received: 0,
        envelope_len: 1,
        flags: crate::message::Flags::default(),
        modseq: 1,
    };
    View::new(folder, false, uids.iter().map(|u| meta(*u)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Flags;

    use super::test_view as view;

    fn meta(uid: u32) -> MessageMeta {
        view(&[uid]).messages[0]
    }

    #[test]
    fn sequence_sets() {
        let v = view(&[3, 5, 9, 10]);
        assert_eq!(v.select(&set("2:*"), false), vec![1, 2, 3]);
        assert_eq!(v.select(&set("*"), false), vec![3]);
        assert_eq!(v.select(&set("4:6"), true), vec![1]);
        assert_eq!(v.select(&set("100:*"), true), vec![3]);
        assert_eq!(v.select(&set("1:4294967295"), false), vec![0, 1, 2, 3]);
        assert!(v.out_of_range(&set("5")));
        assert!(!v.out_of_range(&set("4:7")));
    }

    #[test]
    fn sync_reports_expunge_flags_and_exists() {
        let mut v = view(&[1, 2, 3]);
        let mut current = vec![meta(1), meta(3), meta(4)];
        current[1].flags = Flags::SEEN;
        let mut out = Vec::new();
        v.sync(&current, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 2 EXPUNGE\r\n* 2 FETCH (UID 3 FLAGS (\\Seen))\r\n* 3 EXISTS\r\n"
        );
        let mut out = Vec::new();
        v.sync(&[], true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n"
        );
    }
}
