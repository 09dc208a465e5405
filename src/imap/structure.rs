//! IMAP renderings of a message's structure (RFC 3501 §7.4.2): BODY / BODYSTRUCTURE from the
//! parts found by [`crate::mime`], and ENVELOPE from the header.

use std::ops::Range;

use super::address;
use super::wire::{nstring, string};
use crate::mime::{raw_field, Info, Kind, Part};

/// Number of lines (LF) in a byte range (0 for bytes not in `raw`).
fn lines(raw: &[u8], range: &Range<usize>) -> u64 {
    raw.get(range.clone())
        .map(|bytes| memchr::memchr_iter(b'\n', bytes).count() as u64)
        .unwrap_or(0)
}

/// Size and line count of a part's body.
#[derive(Clone, Copy)]
struct Sizes {
    octets: u64,
    lines: u64,
}

/// BODY / BODYSTRUCTURE of a message too large to hold, of which only the header is in
/// `header`: one part of `octets` octets and `lines` lines (counted while streaming it).
pub fn opaque_structure(
    header: &[u8],
    root: &Part,
    octets: u64,
    lines: u64,
    extended: bool,
    out: &mut Vec<u8>,
) {
    let single = Part {
        kind: Kind::Single,
        ..root.clone()
    };
    single_structure(header, &single, Sizes { octets, lines }, extended, out);
}

/// Renders BODY (`extended = false`) or BODYSTRUCTURE.
pub fn body_structure(raw: &[u8], part: &Part, extended: bool, out: &mut Vec<u8>) {
    match &part.kind {
        Kind::Multipart(children) => {
            out.push(b'(');
            for child in children {
                body_structure(raw, child, extended, out);
            }
            out.push(b' ');
            string(out, part.info.subtype.to_ascii_uppercase().as_bytes());
            if extended {
                out.push(b' ');
                params(out, &part.info.params);
                extension_tail(out, &part.info);
            }
            out.push(b')');
        }
        _ => {
            let sizes = Sizes {
                octets: part.body.len() as u64,
                lines: lines(raw, &part.body),
            };
            single_structure(raw, part, sizes, extended, out)
        }
    }
}

fn single_structure(raw: &[u8], part: &Part, sizes: Sizes, extended: bool, out: &mut Vec<u8>) {
    let info = &part.info;
    out.push(b'(');
    string(out, info.ctype.to_ascii_uppercase().as_bytes());
    out.push(b' ');
    string(out, info.subtype.to_ascii_uppercase().as_bytes());
    out.push(b' ');
    params(out, &info.params);
    out.push(b' ');
    nstring(out, info.id.as_deref().map(str::as_bytes));
    out.push(b' ');
    nstring(out, info.description.as_deref().map(str::as_bytes));
    out.push(b' ');
    let encoding = info
        .encoding
        .as_deref()
        .unwrap_or("7bit")
        .to_ascii_uppercase();
    string(out, encoding.as_bytes());
    out.extend_from_slice(format!(" {}", sizes.octets).as_bytes());
    match &part.kind {
        Kind::Message(inner) => {
            out.push(b' ');
            envelope(raw.get(inner.header.clone()).unwrap_or_default(), out);
            out.push(b' ');
            body_structure(raw, inner, extended, out);
            out.extend_from_slice(format!(" {}", sizes.lines).as_bytes());
        }
        _ if info.ctype.eq_ignore_ascii_case("text") => {
            out.extend_from_slice(format!(" {}", sizes.lines).as_bytes());
        }
        _ => {}
    }
    if extended {
        out.push(b' ');
        nstring(out, info.md5.as_deref().map(str::as_bytes));
        extension_tail(out, info);
    }
    out.push(b')');
}

/// body-fld-dsp body-fld-lang body-fld-loc
fn extension_tail(out: &mut Vec<u8>, info: &Info) {
    out.push(b' ');
    match &info.disposition {
        Some((kind, attrs)) => {
            out.push(b'(');
            string(out, kind.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            params(out, attrs);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match info.language.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => string(out, one.as_bytes()),
        many => {
            out.push(b'(');
            for (i, l) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l.as_bytes());
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    nstring(out, info.location.as_deref().map(str::as_bytes));
}

fn params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, name.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        string(out, encode_word(value).as_bytes());
    }
    out.push(b')');
}

/// Renders the ENVELOPE of a message header block (RFC 3501 §7.4.2): raw field values, no
/// decoding; an absent or empty Sender or Reply-To is the From list.
pub fn envelope(header: &[u8], out: &mut Vec<u8>) {
    let raw = |name: &str| raw_field(header, name);
    out.push(b'(');
    nstring(out, raw("Date").as_deref());
    out.push(b' ');
    nstring(out, raw("Subject").as_deref());
    let list = |name: &str| raw(name).map(|v| address::parse(&v)).unwrap_or_default();
    let from = list("From");
    let or_from = |l: Vec<address::Item>| if l.is_empty() { from.clone() } else { l };
    for items in [
        from.clone(),
        or_from(list("Sender")),
        or_from(list("Reply-To")),
        list("To"),
        list("Cc"),
        list("Bcc"),
    ] {
        out.push(b' ');
        addresses(out, &items);
    }
    out.push(b' ');
    nstring(out, raw("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw("Message-ID").as_deref());
    out.push(b')');
}

fn addresses(out: &mut Vec<u8>, items: &[address::Item]) {
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for item in items {
        match item {
            address::Item::Mailbox {
                name,
                route,
                mailbox,
                host,
            } => {
                out.push(b'(');
                nstring(out, name.as_deref());
                out.push(b' ');
                nstring(out, route.as_deref());
                out.push(b' ');
                string(out, mailbox);
                out.push(b' ');
                // No domain: a placeholder, since NIL here would mark a group.
                string(out, host.as_deref().unwrap_or(b"MISSING_DOMAIN"));
                out.push(b')');
            }
            address::Item::GroupStart(name) => {
                out.extend_from_slice(b"(NIL NIL ");
                string(out, name);
                out.extend_from_slice(b" NIL)");
            }
            address::Item::GroupEnd => out.extend_from_slice(b"(NIL NIL NIL NIL)"),
        }
    }
    out.push(b')');
}

/// ASCII text as is; anything else as an RFC 2047 encoded word, as IMAP4rev1 clients expect.
fn encode_word(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    use base64::Engine;
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::parse;

    const MULTI: &[u8] = b"From: A <a@example.com>\r\nTo: b@example.com, \"C D\" <c@example.com>\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\nepilogue\r\n";

    #[test]
    fn renders_structure_and_envelope() {
        let root = parse(MULTI);
        let mut out = Vec::new();
        body_structure(MULTI, &root, false, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0)"),
            "{s}"
        );
        assert!(s.contains("\"MESSAGE\" \"RFC822\""), "{s}");
        assert!(s.ends_with(" \"MIXED\")"), "{s}");
        let mut env = Vec::new();
        envelope(&MULTI[root.header.clone()], &mut env);
        let e = String::from_utf8(env).unwrap();
        assert!(
            e.starts_with("(NIL \"hi\" ((\"A\" NIL \"a\" \"example.com\"))"),
            "{e}"
        );
        assert!(
            e.contains("((NIL NIL \"b\" \"example.com\")(\"C D\" NIL \"c\" \"example.com\"))"),
            "{e}"
        );
    }

    #[test]
    fn garbage_degrades_to_single_part() {
        for raw in [
            &b""[..],
            b"no header at all",
            b"\r\n\r\n",
            b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
        ] {
            let root = parse(raw);
            let mut out = Vec::new();
            body_structure(raw, &root, true, &mut out);
            assert!(
                out.starts_with(b"(\"TEXT\" \"PLAIN\"") || out.starts_with(b"(\"MULTIPART"),
                "{out:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut msg = Vec::new();
        for _ in 0..200 {
            msg.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        msg.extend_from_slice(b"Subject: bottom\r\n\r\nx");
        let root = parse(&msg);
        let mut out = Vec::new();
        body_structure(&msg, &root, true, &mut out);
        assert!(!out.is_empty());
    }
}
