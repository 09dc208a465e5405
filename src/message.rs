//! The message types every store and protocol shares: IMAP system flags, the metadata the
//! index and the spool file names record, and the SMTP envelope sealed with each message.

use serde::{Deserialize, Serialize};

/// IMAP system flags of a message, kept in its file name (maildir letters) so that they
/// survive an index rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

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

    /// Maildir letters, e.g. `FS`.
    pub fn letters(self) -> String {
        Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, c, _)| *c)
            .collect()
    }

    fn from_letters(s: &str) -> Option<Flags> {
        let mut flags = Flags(0);
        for c in s.chars() {
            let (f, _, _) = Self::TABLE.iter().find(|(_, l, _)| *l == c)?;
            flags = flags.with(*f);
        }
        (flags.letters() == s).then_some(flags)
    }

    /// IMAP flag names, e.g. `["\\Flagged", "\\Seen"]`.
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
        };
        assert_eq!(m.file_name(), "7.1700000000.20480.120.age");
        assert_eq!(MessageMeta::parse_file_name(&m.file_name()), Some(m));
        let f = MessageMeta {
            flags: Flags::SEEN.with(Flags::DELETED),
            ..m
        };
        assert_eq!(f.file_name(), "7.1700000000.20480.120.ST.age");
        assert_eq!(MessageMeta::parse_file_name(&f.file_name()), Some(f));
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
        ] {
            assert_eq!(MessageMeta::parse_file_name(bad), None, "{bad}");
        }
    }
}
