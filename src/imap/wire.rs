//! IMAP response syntax: strings, literals, flag lists and dates (RFC 3501 §4, §9).
//! Responses are written by hand so that large literals can be streamed.

use chrono::{DateTime, Utc};

use crate::message::Flags;

/// A quoted string when that is safe, else a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1024 && s.iter().all(|b| (0x20..0x7f).contains(b));
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// A mailbox name as a quoted string (names here are ASCII: see `archive::users`).
pub fn quoted(name: &str) -> String {
    let mut out = Vec::new();
    string(&mut out, name.as_bytes());
    String::from_utf8_lossy(&out).into_owned()
}

/// NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A synchronising literal `{n}\r\n` followed by the bytes.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// `(\Seen \Flagged $Label1 \Recent)`: system flags, the keywords of the folder's slots
/// (`keywords[k]`), and `\Recent` when it is.
pub fn flag_list(flags: Flags, keywords: &[String], recent: bool) -> String {
    let mut names: Vec<&str> = flags.names().collect();
    names.extend(
        flags
            .keywords()
            .filter_map(|k| keywords.get(k).map(String::as_str)),
    );
    if recent {
        names.push("\\Recent");
    }
    format!("({})", names.join(" "))
}

/// `1:3,5,7:9` for a set of numbers (any order, duplicates allowed); empty for none.
pub fn number_set(numbers: impl IntoIterator<Item = u32>) -> String {
    let mut all: Vec<u32> = numbers.into_iter().collect();
    all.sort_unstable();
    all.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let start = all[i];
        while i + 1 < all.len() && all[i + 1] == all[i] + 1 {
            i += 1;
        }
        parts.push(match all[i] {
            end if end == start => start.to_string(),
            end => format!("{start}:{end}"),
        });
        i += 1;
    }
    parts.join(",")
}

/// A sequence in the given order (ESORT): ascending runs become `a:b`, the order is kept.
pub fn ordered_set(numbers: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        while i + 1 < numbers.len() && numbers[i + 1] == numbers[i] + 1 {
            i += 1;
        }
        parts.push(match numbers[i] {
            end if end == start => start.to_string(),
            end => format!("{start}:{end}"),
        });
        i += 1;
    }
    parts.join(",")
}

/// INTERNALDATE form: `"22-Nov-2026 01:38:17 +0000"`.
pub fn internal_date(unix: i64) -> String {
    let dt: DateTime<Utc> = DateTime::from_timestamp(unix, 0).unwrap_or_default();
    format!("\"{}\"", dt.format("%d-%b-%Y %H:%M:%S +0000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\" \\c");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\c\"");
        out.clear();
        string(&mut out, "é\r\n".as_bytes());
        assert_eq!(out, b"{4}\r\n\xc3\xa9\r\n");
        assert_eq!(internal_date(0), "\"01-Jan-1970 00:00:00 +0000\"");
        assert_eq!(
            flag_list(Flags::SEEN.with(Flags::DELETED), &[], false),
            "(\\Seen \\Deleted)"
        );
        let kw = vec!["$a".to_owned(), "$b".to_owned()];
        assert_eq!(
            flag_list(Flags::keyword(1).with(Flags::SEEN), &kw, true),
            "(\\Seen $b \\Recent)"
        );
        assert_eq!(number_set([9, 1, 2, 3, 5, 8, 2]), "1:3,5,8:9");
        assert_eq!(number_set([]), "");
        assert_eq!(ordered_set(&[5, 6, 7, 1, 3, 4]), "5:7,1,3:4");
    }
}
