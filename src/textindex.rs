//! What IMAP `SEARCH TEXT` and `SEARCH BODY` look at, and a word index that answers them
//! without the message.
//!
//! The searchable text of a message is its raw header (TEXT only) and its body *segments*:
//! the raw body with every base64 or quoted-printable leaf part replaced by its decoded
//! content when it is text (`text/*`), and left out when it is not (decoded images and
//! archives are not text). Matching is a case-insensitive (ASCII) substring test inside one
//! segment. [`segments`] is used both by the live search and, through [`Tokens`], by the
//! index, so the two always agree.
//!
//! The index of a message is the sorted set of its *words*, maximal runs of ASCII letters
//! and digits and of bytes ≥ 0x80 (UTF-8), lower-cased, joined by `\n`. A needle that is
//! one word occurs in the text exactly when it occurs inside one of its words, so the index
//! answers it alone ([`Verdict::Yes`] or [`Verdict::No`]); a needle with separators (a
//! phrase, an address) is ruled out when one of its words is missing and otherwise has to
//! be checked against the message ([`Verdict::Maybe`]).

use std::borrow::Cow;

use crate::mime::{self, Kind, Part};

/// What the index says about one message and one needle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No,
    /// The message must be read to know.
    Maybe,
}

/// The body segments of a message (see the module doc).
pub fn segments(raw: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let root = mime::parse(raw);
    let mut encoded: Vec<(std::ops::Range<usize>, Option<Vec<u8>>)> = Vec::new();
    collect_encoded(raw, &root, &mut encoded);
    encoded.sort_by_key(|(range, _)| range.start);
    let body = root.header.end.min(raw.len())..raw.len();
    let mut out = Vec::new();
    let mut at = body.start;
    for (range, decoded) in encoded {
        if range.start < at || range.end > body.end {
            continue;
        }
        out.push(Cow::Borrowed(&raw[at..range.start]));
        if let Some(text) = decoded {
            out.push(Cow::Owned(text));
        }
        at = range.end;
    }
    out.push(Cow::Borrowed(&raw[at..body.end]));
    out.retain(|s| !s.is_empty());
    out
}

/// Encoded leaf bodies: (range, decoded text when the part is text).
fn collect_encoded(
    raw: &[u8],
    part: &Part,
    out: &mut Vec<(std::ops::Range<usize>, Option<Vec<u8>>)>,
) {
    match &part.kind {
        Kind::Multipart(children) => children.iter().for_each(|p| collect_encoded(raw, p, out)),
        Kind::Message(inner) => collect_encoded(raw, inner, out),
        Kind::Single => {
            let encoding = part.info.encoding.as_deref();
            let encoded = encoding.is_some_and(|e| {
                e.eq_ignore_ascii_case("base64") || e.eq_ignore_ascii_case("quoted-printable")
            });
            if !encoded || part.body.end > raw.len() || part.body.is_empty() {
                return;
            }
            let text = part.info.ctype.eq_ignore_ascii_case("text");
            let decoded = text.then(|| mime::decode_body(encoding, &raw[part.body.clone()]));
            out.push((part.body.clone(), decoded));
        }
    }
}

/// The header of a message (the TEXT-only segment).
pub fn header(raw: &[u8]) -> &[u8] {
    &raw[..mime::header_end(raw)]
}

/// Case-insensitive (ASCII) substring test.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > haystack.len() {
        return false;
    }
    if haystack.len().saturating_mul(needle.len()) <= SMALL_SEARCH {
        // A header value: compare in place at each place the first byte occurs (in
        // either case), without lower-cased copies. Bounded: haystack × needle is small.
        let (lower, upper) = (
            needle[0].to_ascii_lowercase(),
            needle[0].to_ascii_uppercase(),
        );
        let starts = &haystack[..=haystack.len() - needle.len()];
        return memchr::memchr2_iter(lower, upper, starts)
            .any(|i| haystack[i..i + needle.len()].eq_ignore_ascii_case(needle));
    }
    let needle = needle.to_ascii_lowercase();
    let hay = haystack.to_ascii_lowercase();
    memchr::memmem::find(&hay, &needle).is_some()
}

/// Above this haystack × needle length, [`contains`] uses a linear-time search on
/// lower-cased copies instead of comparing at each candidate place.
const SMALL_SEARCH: usize = 1 << 16;

/// Live matching of `SEARCH BODY` (`text` false) or `SEARCH TEXT` (`text` true).
pub fn matches(raw: &[u8], needle: &[u8], text: bool) -> bool {
    if needle.is_empty() {
        return true;
    }
    if text && contains(header(raw), needle) {
        return true;
    }
    segments(raw).iter().any(|s| contains(s, needle))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// The word sets of a message's header and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

impl Tokens {
    /// Indexes a whole message. CPU work: call it off the async threads.
    pub fn of(raw: &[u8]) -> Tokens {
        let segments = segments(raw);
        Tokens {
            header: words(std::iter::once(header(raw))),
            body: words(segments.iter().map(|s| s.as_ref())),
        }
    }

    /// `[u32 LE header length][header words][body words]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.header.len() + self.body.len());
        out.extend_from_slice(&(self.header.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Tokens> {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let rest = &bytes[4..];
        Some(Tokens {
            header: rest.get(..len)?.to_vec(),
            body: rest.get(len..)?.to_vec(),
        })
    }

    /// What the words say about `needle` (`text`: TEXT, else BODY).
    pub fn verdict(&self, needle: &[u8], text: bool) -> Verdict {
        let needle = needle.to_ascii_lowercase();
        let pieces = pieces(&needle);
        if pieces.is_empty() {
            // Only separators: the words cannot say.
            return if needle.is_empty() {
                Verdict::Yes
            } else {
                Verdict::Maybe
            };
        }
        let present = |p: &[u8]| {
            let find = |list: &[u8]| memchr::memmem::find(list, p).is_some();
            find(&self.body) || (text && find(&self.header))
        };
        if !pieces.iter().all(|p| present(p)) {
            return Verdict::No;
        }
        let one_word = pieces.len() == 1 && pieces[0].len() == needle.len();
        if one_word {
            Verdict::Yes
        } else {
            Verdict::Maybe
        }
    }
}

/// The words of a lower-cased needle (what the index looks for).
fn pieces(needle: &[u8]) -> Vec<&[u8]> {
    needle
        .split(|b| !is_word_byte(*b))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Smallest and largest [`Grams`] filter, in bytes.
const GRAMS_MIN: usize = 512;
const GRAMS_MAX: usize = 8192;

/// A filter of the byte trigrams inside a message's words, header and body apart (one bit
/// per trigram; a power of two of bits, about four per distinct trigram, 512 bytes to
/// 8 KB): when
/// a needle word has a trigram the filter lacks, no word of the message contains it, so a
/// search rules the message out from these few hundred bytes without its word lists.
/// Never a false "absent". A 20 KB message has ~1,000 distinct trigrams: a 512-byte
/// filter, ~22 % of its bits set, so an absent 4-letter word passes it one time in 20 and
/// a 9-letter one one time in 40,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grams(Vec<u8>);

/// Seeds that keep header and body trigrams apart in one filter.
const BODY_SEED: u32 = 0;
const HEADER_SEED: u32 = 0x5bd1_e995;

impl Grams {
    pub fn of(tokens: &Tokens) -> Grams {
        let lists = [(&tokens.body, BODY_SEED), (&tokens.header, HEADER_SEED)];
        let grams: usize = (lists.iter())
            .flat_map(|(list, _)| list.split(|b| *b == b'\n'))
            .map(|w| w.len().saturating_sub(2))
            .sum();
        // About two bits per trigram window (words share trigrams: ~4 per distinct one).
        let bytes = (grams / 4).next_power_of_two().clamp(GRAMS_MIN, GRAMS_MAX);
        let mut bits = vec![0u8; bytes];
        for (list, seed) in lists {
            for word in list.split(|b| *b == b'\n') {
                for gram in word.windows(3) {
                    let bit = gram_bit(gram, seed, bytes);
                    bits[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        Grams(bits)
    }

    pub fn encode(&self) -> &[u8] {
        &self.0
    }

    pub fn decode(bytes: &[u8]) -> Option<Grams> {
        let n = bytes.len();
        let ok = n.is_power_of_two() && (GRAMS_MIN..=GRAMS_MAX).contains(&n);
        ok.then(|| Grams(bytes.to_vec()))
    }

    /// False when the filter proves that no word holds a word of `needle` (TEXT: in the
    /// header or the body; BODY: in the body), so [`Tokens::verdict`] would say No.
    pub fn may_contain(&self, needle: &[u8], text: bool) -> bool {
        let needle = needle.to_ascii_lowercase();
        let has = |piece: &[u8], seed: u32| {
            piece.windows(3).all(|gram| {
                let bit = gram_bit(gram, seed, self.0.len());
                self.0[bit / 8] & (1 << (bit % 8)) != 0
            })
        };
        pieces(&needle)
            .iter()
            .all(|p| has(p, BODY_SEED) || (text && has(p, HEADER_SEED)))
    }
}

/// The bit of a trigram in a filter of `bytes` (a power of two): the top bits of a
/// multiplicative hash.
fn gram_bit(gram: &[u8], seed: u32, bytes: usize) -> usize {
    let v = u32::from(gram[0]) | u32::from(gram[1]) << 8 | u32::from(gram[2]) << 16;
    let bits = (bytes * 8).trailing_zeros();
    ((v ^ seed).wrapping_mul(0x9e37_79b1) >> (32 - bits)) as usize
}

/// Sorted unique lower-cased words of `texts`, joined by `\n`.
fn words<'a>(texts: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut set = std::collections::BTreeSet::new();
    for text in texts {
        for word in text.split(|b| !is_word_byte(*b)).filter(|w| !w.is_empty()) {
            if !set.contains(word) {
                set.insert(word.to_vec());
            }
        }
    }
    let mut lower: Vec<Vec<u8>> = set.into_iter().map(|w| w.to_ascii_lowercase()).collect();
    lower.sort_unstable();
    lower.dedup();
    lower.join(&b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grams_never_rule_out_what_the_words_find() {
        let tokens = Tokens::of(MSG);
        let grams = Grams::of(&tokens);
        let grams = Grams::decode(grams.encode()).unwrap();
        for needle in [
            &b"quarterly"[..],
            b"QUART",
            b"figures",
            b"alice",
            b"example.com",
            b"xx",
            b"a",
            b"supercalifragilistic",
            b"zxszhnwwgc",
            b"revenue grew",
            b"",
        ] {
            for text in [false, true] {
                if tokens.verdict(needle, text) != Verdict::No {
                    assert!(grams.may_contain(needle, text), "{needle:?} text={text}");
                }
            }
        }
        assert!(
            !grams.may_contain(b"zxszhnwwgc", true),
            "an absent word is ruled out"
        );
        assert!(
            !grams.may_contain(b"quarterly", false),
            "a header word is not in BODY"
        );
        assert!(grams.may_contain(b"quarterly", true));
        assert!(Grams::decode(&[0; 10]).is_none());
        assert_eq!(
            grams.encode().len(),
            512,
            "a small message: the smallest filter"
        );
        let many: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("w{i:05} ").into_bytes())
            .collect();
        let big = Tokens::of(&[b"Subject: x\r\n\r\n".as_slice(), &many].concat());
        let big_grams = Grams::of(&big);
        assert_eq!(
            big_grams.encode().len(),
            8192,
            "many words: the largest filter"
        );
        assert!(big_grams.may_contain(b"w12345", false) && big_grams.may_contain(b"W0", false));
    }

    #[test]
    fn contains_ignores_ascii_case_small_and_large() {
        for hay in [b"Quarterly Figures".to_vec(), b"x".repeat(70_000)] {
            let mut hay = hay;
            hay.extend_from_slice(b" End of QUARTER");
            assert!(contains(&hay, b"quarter"));
            assert!(contains(&hay, b"END OF"));
            assert!(contains(&hay, b""));
            assert!(!contains(&hay, b"quarters"));
            assert!(!contains(b"ab", b"abc"));
        }
        assert!(
            contains(b"Gr\xc3\xbc\xc3\x9fe", b"\xc3\xbc"),
            "bytes above ASCII as they are"
        );
    }

    const MSG: &[u8] = b"From: Alice <alice@example.com>\r\nSubject: Quarterly figures\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Caf=C3=A9 revenue is up=\r\n ten percent\r\n--b\r\nContent-Type: application/pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQ=\r\n--b--\r\n";

    #[test]
    fn index_and_live_search_agree() {
        let tokens = Tokens::of(MSG);
        let cases: &[(&[u8], bool)] = &[
            (b"quarterly", true),
            (b"QUARTER", true),
            (b"revenue", false),
            (b"up ten", false),
            (b"Caf\xc3\xa9", false),
            (b"SGVsbG8", false),
            (b"Hello", false),
            (b"alice@example", true),
            (b"absentword", true),
            (b"application/pdf", false),
            (b"", true),
        ];
        for (needle, text) in cases {
            let live = matches(MSG, needle, *text);
            let v = tokens.verdict(needle, *text);
            assert!(
                v == Verdict::Maybe || (v == Verdict::Yes) == live,
                "{:?} text={text}: index {v:?}, live {live}",
                String::from_utf8_lossy(needle)
            );
        }
        // one word: the index alone answers
        assert_eq!(tokens.verdict(b"revenue", false), Verdict::Yes);
        assert_eq!(tokens.verdict(b"absentword", true), Verdict::No);
        assert_eq!(tokens.verdict(b"quarterly", false), Verdict::No);
        // the base64 of a non-text part is neither searched raw nor decoded
        assert!(!matches(MSG, b"SGVsbG8", true));
        assert!(matches(MSG, b"up ten", false));
        assert_eq!(Tokens::decode(&tokens.encode()), Some(tokens));
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// `JG_GRAMS_DIR=dir cargo test --release --lib grams_of_files -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn grams_of_files() {
        let dir = std::env::var("JG_GRAMS_DIR").expect("JG_GRAMS_DIR");
        for entry in std::fs::read_dir(dir).unwrap().take(12) {
            let raw = std::fs::read(entry.unwrap().path()).unwrap();
            let t = Tokens::of(&raw);
            let g = Grams::of(&t);
            let set: usize = g.0.iter().map(|b| b.count_ones() as usize).sum();
            println!(
                "words {} B, filter {} B, {:.0} % set, absent ruled out: {}",
                t.header.len() + t.body.len(),
                g.0.len(),
                100.0 * set as f64 / (g.0.len() * 8) as f64,
                !g.may_contain(b"zxszhnwwgc", true)
            );
        }
    }
}
