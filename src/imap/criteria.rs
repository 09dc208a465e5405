//! SEARCH evaluation (RFC 3501 §6.4.4): every search key, over flags, sizes, dates, headers
//! and text. Text matching is case-insensitive; header keys also match decoded values
//! (RFC 2047 words), so a search for a non-ASCII subject finds it. TEXT and BODY look at
//! what [`crate::textindex`] defines, and take a store's index answers when it has them.
//!
//! Evaluation is three-valued: with only the metadata, or only the header, a key that needs
//! more is unknown, and the search loads more only when the answer depends on it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use chrono::{DateTime, NaiveDate, Utc};
use imap_codec::imap_types::search::SearchKey;
use mail_parser::MessageParser;

use crate::message::{Flags, MessageMeta};

use super::view::Ranges;
use crate::mime;
use crate::textindex::{self, Verdict};

/// One message under test.
pub struct Candidate<'a> {
    pub seq: u32,
    pub meta: &'a MessageMeta,
    /// The message bytes (or only its header, see `whole`), when loaded.
    pub raw: Option<&'a [u8]>,
    /// `raw` is the whole message, not only its header.
    pub whole: bool,
    /// `raw` holds only these header fields (for example [`mime::SUMMARY_FIELDS`]).
    pub only: Option<&'static [&'static str]>,
    /// `raw` is in [`mime::search_header`]'s form (decoded values beside the raw ones).
    pub decoded: bool,
    /// The store index's answers to TEXT/BODY keys, and this message's place in them.
    pub answers: Option<(&'a TextAnswers, usize)>,
}

/// What a store's text index said about the TEXT/BODY keys of a search.
#[derive(Debug, Default)]
pub struct TextAnswers {
    /// (needle, is TEXT).
    pub keys: Vec<(Vec<u8>, bool)>,
    /// Per key, per message of the view (empty: the store has no index for that key).
    pub verdicts: Vec<Vec<Verdict>>,
}

/// The TEXT and BODY keys of the criteria: (needle, is TEXT).
pub fn text_keys(key: &SearchKey<'_>, out: &mut Vec<(Vec<u8>, bool)>) {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().for_each(|k| text_keys(k, out)),
        Not(k) => text_keys(k, out),
        Or(a, b) => {
            text_keys(a, out);
            text_keys(b, out);
        }
        Body(s) | Text(s) => {
            let entry = (s.as_ref().to_vec(), matches!(key, Text(_)));
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        _ => {}
    }
}

/// What the search knows of the folder: sizes to resolve `*`, keyword names by slot, and
/// the session's `\Recent` messages.
pub struct Bounds<'a> {
    pub exists: u32,
    pub largest_uid: u32,
    pub keywords: &'a [String],
    pub recent: &'a std::collections::HashSet<u32>,
}

impl Bounds<'_> {
    fn has_keyword(&self, flags: Flags, name: &[u8]) -> bool {
        self.keywords
            .iter()
            .position(|k| k.as_bytes().eq_ignore_ascii_case(name))
            .is_some_and(|slot| flags.contains(Flags::keyword(slot)))
    }
}

/// True when the criteria use MODSEQ (RFC 7162: the answer then carries the highest one).
pub fn uses_modseq(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(uses_modseq),
        Not(k) => uses_modseq(k),
        Or(a, b) => uses_modseq(a) || uses_modseq(b),
        ModSequence { .. } => true,
        _ => false,
    }
}

/// True when every string argument is valid UTF-8 (the charsets accepted are UTF-8 and
/// its subset US-ASCII).
pub fn strings_are_utf8(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    let ok = |s: &[u8]| std::str::from_utf8(s).is_ok();
    match key {
        And(keys) => keys.as_ref().iter().all(strings_are_utf8),
        Not(k) => strings_are_utf8(k),
        Or(a, b) => strings_are_utf8(a) && strings_are_utf8(b),
        Bcc(s) | Body(s) | Cc(s) | From(s) | Subject(s) | Text(s) | To(s) => ok(s.as_ref()),
        Header(n, v) => ok(n.as_ref()) && ok(v.as_ref()),
        _ => true,
    }
}

/// Whether the candidate matches; an unknown (content not loaded) counts as no.
pub fn matches(key: &SearchKey<'_>, c: &Candidate<'_>, bounds: &Bounds) -> bool {
    eval(key, c, bounds).unwrap_or(false)
}

/// Three-valued evaluation: `None` when the answer needs content the candidate lacks.
pub fn eval(key: &SearchKey<'_>, c: &Candidate<'_>, bounds: &Bounds) -> Option<bool> {
    use SearchKey::*;
    let flags = c.meta.flags;
    let has = |name: &[u8]| match c.only {
        None => true,
        Some(kept) => kept.iter().any(|f| f.as_bytes().eq_ignore_ascii_case(name)),
    };
    // A header key: unknown without the header or without the field.
    let header = |name: &[u8], f: &dyn Fn() -> bool| c.raw.filter(|_| has(name)).map(|_| f());
    Some(match key {
        And(keys) => {
            let mut unknown = false;
            for k in keys.as_ref() {
                match eval(k, c, bounds) {
                    Some(false) => return Some(false),
                    None => unknown = true,
                    Some(true) => {}
                }
            }
            return (!unknown).then_some(true);
        }
        Not(k) => return eval(k, c, bounds).map(|v| !v),
        Or(a, b) => {
            return match (eval(a, c, bounds), eval(b, c, bounds)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
        SequenceSet(set) => Ranges::new(set, bounds.exists).contains(c.seq),
        Uid(set) => Ranges::new(set, bounds.largest_uid).contains(c.meta.uid),
        All => true,
        Answered => flags.contains(Flags::ANSWERED),
        Deleted => flags.contains(Flags::DELETED),
        Draft => flags.contains(Flags::DRAFT),
        Flagged => flags.contains(Flags::FLAGGED),
        Seen => flags.contains(Flags::SEEN),
        Unanswered => !flags.contains(Flags::ANSWERED),
        Undeleted => !flags.contains(Flags::DELETED),
        Undraft => !flags.contains(Flags::DRAFT),
        Unflagged => !flags.contains(Flags::FLAGGED),
        Unseen => !flags.contains(Flags::SEEN),
        Recent => bounds.recent.contains(&c.meta.uid),
        New => bounds.recent.contains(&c.meta.uid) && !flags.contains(Flags::SEEN),
        Old => !bounds.recent.contains(&c.meta.uid),
        Keyword(k) => bounds.has_keyword(flags, k.as_ref().as_bytes()),
        Unkeyword(k) => !bounds.has_keyword(flags, k.as_ref().as_bytes()),
        ModSequence { modseq, .. } => c.meta.modseq.max(1) >= *modseq,
        Larger(n) => c.meta.size > u64::from(*n),
        Smaller(n) => c.meta.size < u64::from(*n),
        Before(d) => internal_date(c.meta) < *d.as_ref(),
        On(d) => internal_date(c.meta) == *d.as_ref(),
        Since(d) => internal_date(c.meta) >= *d.as_ref(),
        SentBefore(d) => header(b"Date", &|| sent_date(c).is_some_and(|s| s < *d.as_ref()))?,
        SentOn(d) => header(b"Date", &|| sent_date(c).is_some_and(|s| s == *d.as_ref()))?,
        SentSince(d) => header(b"Date", &|| sent_date(c).is_some_and(|s| s >= *d.as_ref()))?,
        From(s) => header(b"From", &|| header_contains(c, "From", s.as_ref()))?,
        To(s) => header(b"To", &|| header_contains(c, "To", s.as_ref()))?,
        Cc(s) => header(b"Cc", &|| header_contains(c, "Cc", s.as_ref()))?,
        Bcc(s) => header(b"Bcc", &|| header_contains(c, "Bcc", s.as_ref()))?,
        Subject(s) => header(b"Subject", &|| header_contains(c, "Subject", s.as_ref()))?,
        Header(name, value) => header(name.as_ref(), &|| {
            header_contains(c, &String::from_utf8_lossy(name.as_ref()), value.as_ref())
        })?,
        Body(s) => text_match(c, s.as_ref(), false)?,
        Text(s) => text_match(c, s.as_ref(), true)?,
        #[allow(unreachable_patterns)]
        _ => false,
    })
}

/// TEXT/BODY: the index's answer when it has a definite one, else the whole message.
fn text_match(c: &Candidate<'_>, needle: &[u8], text: bool) -> Option<bool> {
    let answer = c.answers.and_then(|(answers, i)| {
        let k = answers
            .keys
            .iter()
            .position(|(n, t)| *t == text && n == needle)?;
        answers.verdicts.get(k)?.get(i).copied()
    });
    match answer {
        Some(Verdict::Yes) => Some(true),
        Some(Verdict::No) => Some(false),
        _ => match (c.raw, c.whole) {
            (Some(raw), true) => Some(textindex::matches(raw, needle, text)),
            _ => None,
        },
    }
}

fn internal_date(meta: &MessageMeta) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(meta.received, 0)
        .unwrap_or_default()
        .date_naive()
}

fn header_of<'a>(c: &Candidate<'a>) -> &'a [u8] {
    let raw = c.raw.unwrap_or_default();
    &raw[..mime::header_end(raw)]
}

fn sent_date(c: &Candidate<'_>) -> Option<NaiveDate> {
    let header = header_of(c);
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        MessageParser::new()
            .parse_headers(header)
            .and_then(|m| m.date().map(|d| (d.year, d.month, d.day)))
    }))
    .ok()
    .flatten()?;
    NaiveDate::from_ymd_opt(
        i32::from(parsed.0),
        u32::from(parsed.1),
        u32::from(parsed.2),
    )
}

/// Every value of header fields named `name` contains `needle` (raw or RFC 2047-decoded).
fn header_contains(c: &Candidate<'_>, name: &str, needle: &[u8]) -> bool {
    let header = header_of(c);
    let matches = |v: &[u8]| needle.is_empty() || textindex::contains(v, needle);
    if c.decoded {
        // `mime::search_header`'s form: the decoded values are there already.
        return mime::field_lines(header, name).any(matches);
    }
    let values = mime::raw_fields(header, name);
    if values.iter().any(|v| matches(v)) {
        return true;
    }
    // The decoded form differs from the raw one only with encoded words, folding or
    // quoted pairs: parse only then.
    if !values.iter().any(|v| mime::may_decode(v)) {
        return false;
    }
    mime::decoded_field(header, name).is_some_and(|d| textindex::contains(d.as_bytes(), needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::core::AString;

    const MSG: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nTo: carol@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= report\r\nDate: Tue, 3 Mar 2026 10:00:00 +0100\r\n\r\nThe Body text\r\n";

    fn cand(meta: &MessageMeta) -> Candidate<'_> {
        Candidate {
            seq: 1,
            meta,
            raw: Some(MSG),
            whole: true,
            only: None,
            decoded: false,
            answers: None,
        }
    }

    fn astr(s: &str) -> AString<'static> {
        AString::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn keys() {
        let meta = MessageMeta {
            uid: 7,
            size: 100,
            received: 1_772_000_000,
            envelope_len: 1,
            flags: Flags::SEEN.with(Flags::keyword(1)),
            modseq: 5,
        };
        let keywords = vec!["$a".to_owned(), "$Hello".to_owned()];
        let recent = std::collections::HashSet::from([7]);
        let b = Bounds {
            exists: 1,
            largest_uid: 7,
            keywords: &keywords,
            recent: &recent,
        };
        let c = cand(&meta);
        assert!(matches(&SearchKey::From(astr("ALICE")), &c, &b));
        assert!(matches(&SearchKey::To(astr("carol")), &c, &b));
        assert!(matches(&SearchKey::Subject(astr("grüße")), &c, &b));
        assert!(matches(&SearchKey::Body(astr("body TEXT")), &c, &b));
        assert!(!matches(&SearchKey::Body(astr("alice")), &c, &b));
        assert!(matches(&SearchKey::Text(astr("alice")), &c, &b));
        assert!(matches(&SearchKey::Seen, &c, &b));
        let atom = |s: &str| imap_codec::imap_types::core::Atom::try_from(s.to_owned()).unwrap();
        assert!(matches(&SearchKey::Keyword(atom("$HELLO")), &c, &b));
        assert!(!matches(&SearchKey::Keyword(atom("$a")), &c, &b));
        assert!(matches(&SearchKey::Unkeyword(atom("$nope")), &c, &b));
        assert!(matches(&SearchKey::Recent, &c, &b));
        assert!(!matches(&SearchKey::New, &c, &b));
        assert!(!matches(&SearchKey::Old, &c, &b));
        assert!(!matches(&SearchKey::Unseen, &c, &b));
        assert!(matches(&SearchKey::Larger(99), &c, &b));
        assert!(matches(
            &SearchKey::Header(astr("subject"), astr("")),
            &c,
            &b
        ));
        assert!(!matches(
            &SearchKey::Header(astr("x-none"), astr("")),
            &c,
            &b
        ));
        let d = |s| {
            imap_codec::imap_types::datetime::NaiveDate::try_from(
                NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap(),
            )
            .unwrap()
        };
        assert!(matches(&SearchKey::SentOn(d("2026-03-03")), &c, &b));
        assert!(matches(&SearchKey::SentBefore(d("2026-03-04")), &c, &b));
        assert!(!matches(&SearchKey::SentSince(d("2026-03-04")), &c, &b));
    }

    #[test]
    fn a_header_part_answers_only_for_its_fields() {
        let meta = MessageMeta {
            uid: 1,
            size: 100,
            received: 0,
            envelope_len: 0,
            flags: Flags::default(),
            modseq: 1,
        };
        let (keywords, recent) = (Vec::new(), std::collections::HashSet::new());
        let b = Bounds {
            exists: 1,
            largest_uid: 1,
            keywords: &keywords,
            recent: &recent,
        };
        let header = mime::search_header(&MSG[..mime::header_end(MSG)]);
        assert!(
            !header.windows(5).any(|w| w == b"Date:"),
            "only the SEARCH fields"
        );
        let c = Candidate {
            seq: 1,
            meta: &meta,
            raw: Some(&header),
            whole: false,
            only: Some(&mime::SEARCH_FIELDS[..]),
            decoded: true,
            answers: None,
        };
        assert_eq!(eval(&SearchKey::Subject(astr("grüße")), &c, &b), Some(true));
        assert_eq!(eval(&SearchKey::To(astr("carol")), &c, &b), Some(true));
        assert_eq!(eval(&SearchKey::Cc(astr("x")), &c, &b), Some(false));
        let header_key = |name: &str| SearchKey::Header(astr(name), astr(""));
        assert_eq!(eval(&header_key("from"), &c, &b), Some(true));
        assert_eq!(eval(&header_key("date"), &c, &b), None, "not kept: unknown");
        assert_eq!(eval(&header_key("x-none"), &c, &b), None);
        let date = imap_codec::imap_types::datetime::NaiveDate::try_from(
            NaiveDate::parse_from_str("2026-03-03", "%Y-%m-%d").unwrap(),
        )
        .unwrap();
        assert_eq!(eval(&SearchKey::SentOn(date), &c, &b), None);
        assert_eq!(eval(&SearchKey::Text(astr("body")), &c, &b), None);
    }
}
