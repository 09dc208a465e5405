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

/// `(\Seen \Flagged)`
pub fn flag_list(flags: Flags) -> String {
    format!("({})", flags.names().collect::<Vec<_>>().join(" "))
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
            flag_list(Flags::SEEN.with(Flags::DELETED)),
            "(\\Seen \\Deleted)"
        );
    }
}
