//! The message types every store and protocol shares: IMAP flags (system flags and keyword
//! slots), the metadata the index and the spool file names record, modification sequences,
//! and the SMTP envelope sealed with each message.

use serde::{Deserialize, Serialize};

/// IMAP flags of a message, kept in its file name (maildir letters: upper case for system
/// flags, `a`..`z` for keyword slots) so that they survive an index rebuild. Bits 0..5 are the
/// system flags, bit `KEYWORD_BIT + k` keyword slot `k` of the folder's keyword table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u32);

/// Keyword slots per folder (one maildir letter each).
pub const MAX_KEYWORDS: usize = 26;
const KEYWORD_BIT: u32 = 5;

/// A modification sequence (RFC 7162) from the process-wide clock: microseconds since the
/// epoch, strictly increasing within the process. A value made after a restart is above
/// every value made before it (the clock does not go back by the length of a restart), so
/// state rebuilt after a crash can take fresh values without confusing a client's cache.
pub fn next_modseq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// How a STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Replace(Flags),
    Add(Flags),
    Remove(Flags),
}

impl FlagOp {
    /// The flags after applying this change to `current`.
    pub fn apply(self, current: Flags) -> Flags {
        match self {
            FlagOp::Replace(f) => f,
            FlagOp::Add(f) => current.with(f),
            FlagOp::Remove(f) => current.without(f),
        }
    }
}

impl Flags {
    pub const ANSWERED: Flags = Flags(1);
    pub const DELETED: Flags = Flags(2);
    pub const DRAFT: Flags = Flags(4);
    pub const FLAGGED: Flags = Flags(8);
    pub const SEEN: Flags = Flags(16);
    /// (flag, maildir letter, IMAP name), in maildir letter order.
    const TABLE: [(Flags, char, &'static str); 5] = [
        (Flags::DRAFT, 'D', "\\Draft"),
        (Flags::FLAGGED, 'F', "\\Flagged"),
        (Flags::ANSWERED, 'R', "\\Answered"),
        (Flags::SEEN, 'S', "\\Seen"),
        (Flags::DELETED, 'T', "\\Deleted"),
    ];

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// The flag of keyword slot `k` (`k < MAX_KEYWORDS`).
    pub fn keyword(k: usize) -> Flags {
        debug_assert!(k < MAX_KEYWORDS);
        Flags(1 << (KEYWORD_BIT + k as u32))
    }

    /// Only the system flags.
    pub fn system(self) -> Flags {
        Flags(self.0 & ((1 << KEYWORD_BIT) - 1))
    }

    /// The keyword slots set, ascending.
    pub fn keywords(self) -> impl Iterator<Item = usize> {
        (0..MAX_KEYWORDS).filter(move |k| self.contains(Flags::keyword(*k)))
    }

    /// Maildir letters, e.g. `FSab`.
    pub fn letters(self) -> String {
        let system = Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, c, _)| *c);
        let keywords = self.keywords().map(|k| (b'a' + k as u8) as char);
        system.chain(keywords).collect()
    }

    fn from_letters(s: &str) -> Option<Flags> {
        let mut flags = Flags(0);
        for c in s.chars() {
            let f = match c {
                'a'..='z' => Flags::keyword((c as u8 - b'a') as usize),
                _ => Self::TABLE.iter().find(|(_, l, _)| *l == c)?.0,
            };
            flags = flags.with(f);
        }
        (flags.letters() == s).then_some(flags)
    }

    /// IMAP names of the system flags, e.g. `["\\Flagged", "\\Seen"]`.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::TABLE
            .into_iter()
            .filter(move |(f, _, _)| self.contains(*f))
            .map(|(_, _, n)| n)
    }
}

/// What the index and the file name record of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    /// Size in octets of the message as stored (what POP3 LIST reports).
    pub size: u64,
    /// Arrival time, unix seconds.
    pub received: i64,
    /// Length of the envelope line that precedes the message inside the sealed file.
    pub envelope_len: u32,
    pub flags: Flags,
    /// RFC 7162 modification sequence: when the message or its flags last changed (0 when
    /// not known, as for metadata read from a file name).
    pub modseq: u64,
}

impl MessageMeta {
    /// `<uid>.<received>.<size>.<envelope length>[.<flag letters>].age`
    pub fn file_name(&self) -> String {
        let flags = match self.flags.letters() {
            l if l.is_empty() => String::new(),
            l => format!(".{l}"),
        };
        format!(
            "{}.{}.{}.{}{flags}.age",
            self.uid, self.received, self.size, self.envelope_len
        )
    }

    pub fn parse_file_name(name: &str) -> Option<MessageMeta> {
        let stem = name.strip_suffix(".age")?;
        let mut parts = stem.split('.');
        let meta = MessageMeta {
            uid: parts.next()?.parse().ok().filter(|u| *u > 0)?,
            received: parts.next()?.parse().ok()?,
            size: parts.next()?.parse().ok()?,
            envelope_len: parts.next()?.parse().ok()?,
            flags: match parts.next() {
                Some(letters) => Flags::from_letters(letters).filter(|f| f.0 != 0)?,
                None => Flags::default(),
            },
            modseq: 0,
        };
        (parts.next().is_none() && meta.file_name() == name).then_some(meta)
    }
}

/// The SMTP envelope, sealed together with the message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub client: String,
    pub helo: String,
    pub tls: Option<String>,
    pub received: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip_and_reject_junk() {
        let m = MessageMeta {
            uid: 7,
            size: 20480,
            received: 1_700_000_000,
            envelope_len: 120,
            flags: Flags::default(),
            modseq: 0,
        };
        assert_eq!(m.file_name(), "7.1700000000.20480.120.age");
        assert_eq!(MessageMeta::parse_file_name(&m.file_name()), Some(m));
        let f = MessageMeta {
            flags: Flags::SEEN.with(Flags::DELETED),
            ..m
        };
        assert_eq!(f.file_name(), "7.1700000000.20480.120.ST.age");
        assert_eq!(MessageMeta::parse_file_name(&f.file_name()), Some(f));
        let k = MessageMeta {
            flags: Flags::SEEN.with(Flags::keyword(0)).with(Flags::keyword(25)),
            ..m
        };
        assert_eq!(k.file_name(), "7.1700000000.20480.120.Saz.age");
        assert_eq!(MessageMeta::parse_file_name(&k.file_name()), Some(k));
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3.za.age"), None);
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3.TS.age"), None);
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3.X.age"), None);
        assert_eq!(MessageMeta::parse_file_name("7.1.2.3..age"), None);
        for bad in [
            "7.1.2.age",
            "0.1.2.3.age",
            "07.1.2.3.age",
            "7.1.2.3.4.age",
            "x.1.2.3.age",
            "7.1.2.3.tmp",
            "7.1.2.3.aS.age",
        ] {
            assert_eq!(MessageMeta::parse_file_name(bad), None, "{bad}");
        }
    }
}
