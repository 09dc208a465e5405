//! MIME structure of a stored message, pure and synchronous: parts as exact byte ranges of
//! the message (so IMAP `BODY[section]`, the journal parser and the archive skeleton all see
//! the same bytes), raw header-field lookup, and body decoding (base64, quoted-printable).
//! Used by `imap`, `journal` and `archive`; it knows nothing of any protocol.
//!
//! Part boundaries are found here; header *values* (content type, parameters) are parsed by
//! mail-parser behind `catch_unwind`. A message that cannot be parsed degrades to a single
//! text/plain part.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};

/// Deepest nesting of multiparts and encapsulated messages that is parsed.
const MAX_DEPTH: usize = 32;
/// Most parts per multipart that are parsed.
const MAX_PARTS: usize = 1000;
/// Most parts (entities at any depth) in one message: a multipart that would go past it is
/// kept as one opaque part, so a message of a million tiny parts costs what 10,000 cost.
pub const MAX_TOTAL_PARTS: usize = 10_000;

/// One MIME entity: its header and body as byte ranges of the whole message.
#[derive(Debug, Clone)]
pub struct Part {
    pub header: Range<usize>,
    pub body: Range<usize>,
    pub info: Info,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Single,
    Multipart(Vec<Part>),
    /// message/rfc822: the encapsulated message.
    Message(Box<Part>),
}

/// What the Content-* header fields say.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub ctype: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
    pub id: Option<String>,
    pub description: Option<String>,
    pub encoding: Option<String>,
    pub disposition: Option<(String, Vec<(String, String)>)>,
    pub language: Vec<String>,
    pub location: Option<String>,
    pub md5: Option<String>,
}

impl Info {
    fn default_for(digest: bool) -> Info {
        let (ctype, subtype) = if digest {
            ("message", "rfc822")
        } else {
            ("text", "plain")
        };
        Info {
            ctype: ctype.into(),
            subtype: subtype.into(),
            params: if digest {
                vec![]
            } else {
                vec![("charset".into(), "us-ascii".into())]
            },
            ..Info::default()
        }
    }

    fn is(&self, ctype: &str, subtype: &str) -> bool {
        self.ctype.eq_ignore_ascii_case(ctype) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the structure of a whole message.
pub fn parse(raw: &[u8]) -> Part {
    let mut budget = MAX_TOTAL_PARTS;
    parse_part(raw, 0..raw.len(), false, 0, &mut budget)
}

/// Parses one entity; `budget` is how many more parts this message may have.
fn parse_part(
    raw: &[u8],
    range: Range<usize>,
    digest: bool,
    depth: usize,
    budget: &mut usize,
) -> Part {
    *budget = budget.saturating_sub(1);
    let header_end = header_end(&raw[range.clone()]) + range.start;
    let header = range.start..header_end;
    let body = header_end..range.end;
    let info = header_info(&raw[header.clone()]).unwrap_or_else(|| Info::default_for(digest));
    let info = if info.ctype.is_empty() {
        Info::default_for(digest)
    } else {
        info
    };
    let kind = if depth >= MAX_DEPTH || *budget == 0 {
        Kind::Single
    } else if info.ctype.eq_ignore_ascii_case("multipart") {
        match info.param("boundary").map(str::to_owned) {
            Some(boundary) if !boundary.is_empty() => {
                let digest = info.subtype.eq_ignore_ascii_case("digest");
                let ranges = split_multipart(raw, body.clone(), boundary.as_bytes());
                if ranges.is_empty() || ranges.len() > *budget {
                    *budget = 0;
                    Kind::Single
                } else {
                    let children: Vec<Part> = ranges
                        .into_iter()
                        .map(|r| parse_part(raw, r, digest, depth + 1, budget))
                        .collect();
                    Kind::Multipart(children)
                }
            }
            _ => Kind::Single,
        }
    } else if (info.is("message", "rfc822") || info.is("message", "global"))
        && !info.encoding.as_deref().is_some_and(|e| {
            e.eq_ignore_ascii_case("base64") || e.eq_ignore_ascii_case("quoted-printable")
        })
    {
        Kind::Message(Box::new(parse_part(
            raw,
            body.clone(),
            false,
            depth + 1,
            budget,
        )))
    } else {
        Kind::Single
    };
    Part {
        header,
        body,
        info,
        kind,
    }
}

/// Offset just past the blank line that ends the header (or the end when there is none).
pub fn header_end(bytes: &[u8]) -> usize {
    if bytes.starts_with(b"\r\n") {
        return 2;
    }
    if bytes.starts_with(b"\n") {
        return 1;
    }
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\n', &bytes[i..]) {
        let next = i + off + 1;
        if bytes[next..].starts_with(b"\r\n") {
            return next + 2;
        }
        if bytes[next..].starts_with(b"\n") {
            return next + 1;
        }
        i = next;
    }
    bytes.len()
}

/// The byte ranges of the parts of a multipart body (RFC 2046 §5.1.1).
fn split_multipart(raw: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let bytes = &raw[body.clone()];
    // Positions of delimiter lines: (start of the line break before it, start of next line, is_close)
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos <= bytes.len() {
        let at_line_start = pos == 0 || bytes[pos - 1] == b'\n';
        if at_line_start && bytes[pos..].starts_with(&delimiter) {
            let after = pos + delimiter.len();
            let close = bytes[after..].starts_with(b"--");
            let next_line = match memchr::memchr(b'\n', &bytes[after..]) {
                Some(off) => after + off + 1,
                None => bytes.len(),
            };
            // The line break before the delimiter belongs to the delimiter.
            let mut before = pos;
            if before > 0 && bytes[before - 1] == b'\n' {
                before -= 1;
                if before > 0 && bytes[before - 1] == b'\r' {
                    before -= 1;
                }
            }
            lines.push((before, next_line, close));
            if close || lines.len() > MAX_PARTS {
                break;
            }
            pos = next_line;
            continue;
        }
        match memchr::memchr(b'\n', &bytes[pos..]) {
            Some(off) => pos += off + 1,
            None => break,
        }
    }
    let mut parts = Vec::new();
    for pair in lines.windows(2) {
        let (start, end) = (pair[0].1, pair[1].0.max(pair[0].1));
        parts.push(body.start + start..body.start + end);
    }
    // No close delimiter: the last part runs to the end.
    if let Some(&(_, next, false)) = lines.last() {
        if next < bytes.len() {
            parts.push(body.start + next..body.end);
        }
    }
    parts
}

/// Parses a header block with mail-parser; None if it cannot be parsed.
fn header_info(header: &[u8]) -> Option<Info> {
    catch_unwind(AssertUnwindSafe(|| {
        let message = MessageParser::new().parse_headers(header)?;
        let part = message.root_part();
        let mut info = Info::default();
        if let Some(ct) = part.content_type() {
            info.ctype = ct.ctype().to_ascii_lowercase();
            info.subtype = ct.subtype().unwrap_or("").to_ascii_lowercase();
            info.params = attributes(ct.attributes());
            if info.subtype.is_empty() {
                info.subtype = if info.ctype == "text" {
                    "plain".into()
                } else {
                    "octet-stream".into()
                };
            }
        }
        info.id = part.content_id().map(str::to_owned);
        info.description = part.content_description().map(str::to_owned);
        info.encoding = part.content_transfer_encoding().map(str::to_owned);
        info.disposition = part
            .content_disposition()
            .map(|d| (d.ctype().to_owned(), attributes(d.attributes())));
        info.language = match part.content_language() {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
            _ => vec![],
        };
        info.location = part.content_location().map(str::to_owned);
        info.md5 = message
            .header_raw("Content-MD5")
            .map(|s| s.trim().to_owned());
        Some(info)
    }))
    .ok()
    .flatten()
}

fn attributes(attrs: Option<&[mail_parser::Attribute<'_>]>) -> Vec<(String, String)> {
    attrs
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_string(), a.value.to_string()))
        .collect()
}

/// Resolves a part number path (`1.2.3`) to a part (RFC 3501 §6.4.5). The parts of a
/// message are the children of its multipart body, or else the message itself as part 1 (so
/// `BODY[1]` of a message/rfc822 message is the whole encapsulated message); the parts of a
/// message/rfc822 part are those of the message it encapsulates.
pub fn resolve<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    let Some((first, rest)) = path.split_first() else {
        return Some(root);
    };
    let mut node = match &root.kind {
        Kind::Multipart(children) => children.get((*first as usize).checked_sub(1)?)?,
        _ if *first == 1 => root,
        _ => return None,
    };
    for n in rest {
        let n = *n as usize;
        node = match &node.kind {
            Kind::Multipart(children) => children.get(n.checked_sub(1)?)?,
            Kind::Message(inner) => match &inner.kind {
                Kind::Multipart(children) => children.get(n.checked_sub(1)?)?,
                _ if n == 1 => inner,
                _ => return None,
            },
            Kind::Single if n == 1 => node,
            Kind::Single => return None,
        };
    }
    Some(node)
}

/// The encapsulated message of a message/rfc822 part (the part itself for the root).
pub fn as_message(part: &Part, is_root: bool) -> Option<&Part> {
    if is_root {
        return Some(part);
    }
    match &part.kind {
        Kind::Message(inner) => Some(inner),
        _ => None,
    }
}

/// The unfolded, trimmed raw value of the first header field `name` in a header block.
pub fn raw_field(header: &[u8], name: &str) -> Option<Vec<u8>> {
    raw_fields(header, name).into_iter().next()
}

/// The header fields ENVELOPE, SEARCH (FROM, TO, CC, BCC, SUBJECT, SENT*), SORT and THREAD
/// use: a summary keeps them apart from the rest of a long header.
pub const SUMMARY_FIELDS: [&str; 11] = [
    "Date",
    "Subject",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "In-Reply-To",
    "Message-ID",
    "References",
];

/// The header fields that SEARCH's header keys other than HEADER and the SENT dates read:
/// kept apart so that such a search opens only these.
pub const SEARCH_FIELDS: [&str; 5] = ["Subject", "From", "To", "Cc", "Bcc"];

/// Whether `name` is one of [`SUMMARY_FIELDS`].
pub fn is_summary_field(name: &[u8]) -> bool {
    SUMMARY_FIELDS
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
}

/// The [`SUMMARY_FIELDS`] lines of a header block, exactly as they are (continuation lines
/// included), in their order, and the blank line.
pub fn summary_header(header: &[u8]) -> Vec<u8> {
    header_lines(header, is_summary_field)
}

/// The [`SEARCH_FIELDS`] of a header block as SEARCH compares them: each value unfolded on
/// one line, and after a field's values, when they have encoded words or quoted pairs,
/// its decoded value ([`decoded_field`]) as one more line, so a search reads them with
/// [`field_lines`] and never parses.
pub fn search_header(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for name in SEARCH_FIELDS {
        let values = raw_fields(header, name);
        for v in &values {
            line(name, v);
        }
        if values.iter().any(|v| may_decode(v)) {
            if let Some(decoded) = decoded_field(header, name) {
                line(name, decoded.replace(['\r', '\n'], " ").as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a raw field value may read differently decoded (encoded words, quoted pairs,
/// folding).
pub fn may_decode(value: &[u8]) -> bool {
    memchr::memmem::find(value, b"=?").is_some() || value.iter().any(|b| matches!(b, b'\\' | b'\n'))
}

/// The decoded value of the first field `name` of a header block, as SEARCH compares it:
/// RFC 2047 words decoded, addresses as "display-name address".
pub fn decoded_field(header: &[u8], name: &str) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| {
        let message = MessageParser::new().parse_headers(header)?;
        Some(match message.header(name)? {
            HeaderValue::Text(t) => t.to_string(),
            HeaderValue::TextList(l) => l.join(" "),
            HeaderValue::Address(a) => a
                .iter()
                .map(|addr| {
                    format!(
                        "{} {}",
                        addr.name.as_deref().unwrap_or(""),
                        addr.address.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
    }))
    .ok()
    .flatten()
}

/// The values of the one-line fields `name` of a header block (trimmed, no allocation):
/// for [`search_header`]'s form.
pub fn field_lines<'a>(header: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|b| *b == b'\n').filter_map(move |line| {
        let colon = memchr::memchr(b':', line)?;
        let named = line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes());
        named.then(|| line[colon + 1..].trim_ascii())
    })
}

/// The lines of the fields whose name `keep` accepts, continuation lines included, in
/// their order, and the blank line.
fn header_lines(header: &[u8], keep_field: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !folded {
            keep = line
                .iter()
                .position(|b| *b == b':')
                .is_some_and(|colon| keep_field(line[..colon].trim_ascii()));
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The unfolded, trimmed raw values of every header field `name`, in order.
pub fn raw_fields(header: &[u8], name: &str) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    let mut lines = header.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                trim_cr(&mut value);
                value.extend_from_slice(next);
                lines.next();
            } else {
                break;
            }
        }
        trim_cr(&mut value);
        values.push(value.trim_ascii().to_vec());
    }
    values
}

fn trim_cr(v: &mut Vec<u8>) {
    if v.last() == Some(&b'\r') {
        v.pop();
    }
}

/// Decodes a body for BINARY (base64 and quoted-printable; others as they are).
pub fn decode_body(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        Some("base64") => {
            use base64::Engine;
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&clean)
                .or_else(|_| {
                    base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_ascii_end())
                })
                .unwrap_or_else(|_| body.to_vec())
        }
        Some("quoted-printable") => decode_qp(body),
        _ => body.to_vec(),
    }
}

/// Quoted-printable (RFC 2045 §6.7): whitespace at the end of a line is dropped (rule 3), a
/// `=` ending a line joins it to the next (rule 5), `=XX` is an octet; anything malformed is
/// kept as it is. Hard line breaks are kept as they are stored.
fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|b| *b == b'\n') {
        let (content, newline) = match line.strip_suffix(b"\r\n") {
            Some(c) => (c, &b"\r\n"[..]),
            None => match line.strip_suffix(b"\n") {
                Some(c) => (c, &b"\n"[..]),
                None => (line, &b""[..]),
            },
        };
        let content = trim_end_blanks(content);
        match content.strip_suffix(b"=") {
            Some(soft) => decode_qp_line(soft, &mut out),
            None => {
                decode_qp_line(content, &mut out);
                out.extend_from_slice(newline);
            }
        }
    }
    out
}

fn trim_end_blanks(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn decode_qp_line(line: &[u8], out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'=' && i + 2 < line.len() {
            if let (Some(h), Some(l)) = (hex(line[i + 1]), hex(line[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(line[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &[u8] = b"From: A <a@example.com>\r\nTo: b@example.com, \"C D\" <c@example.com>\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\nepilogue\r\n";

    #[test]
    fn summary_header_keeps_the_summary_fields_exactly() {
        let header = b"Received: from a\r\n by b\r\nSubject: one\r\n   \r\n two\r\nX-Other: x\r\nfrom: A <a@x>\r\nTo: b@x,\r\n\tc@x\r\n\r\n";
        assert_eq!(
            summary_header(header),
            b"Subject: one\r\n   \r\n two\r\nfrom: A <a@x>\r\nTo: b@x,\r\n\tc@x\r\n\r\n".to_vec()
        );
        let mut full = Vec::new();
        let mut mini = Vec::new();
        crate::imap::structure::envelope(header, &mut full);
        crate::imap::structure::envelope(&summary_header(header), &mut mini);
        assert_eq!(full, mini);
    }

    #[test]
    fn parts_are_exact_byte_ranges() {
        let root = parse(MULTI);
        let Kind::Multipart(children) = &root.kind else {
            panic!("not multipart")
        };
        assert_eq!(children.len(), 2);
        assert_eq!(&MULTI[children[0].body.clone()], b"hello");
        assert_eq!(
            &MULTI[children[1].body.clone()],
            b"Subject: inner\r\n\r\ninner body"
        );
        let p21 = resolve(&root, &[2, 1]).unwrap();
        assert_eq!(&MULTI[p21.body.clone()], b"inner body");
        let inner = as_message(resolve(&root, &[2]).unwrap(), false).unwrap();
        assert_eq!(&MULTI[inner.header.clone()], b"Subject: inner\r\n\r\n");
        assert!(resolve(&root, &[3]).is_none());
        assert!(resolve(&root, &[1, 1]).is_some());
    }

    #[test]
    fn part_one_of_an_encapsulating_message_is_the_whole_inner_message() {
        let raw: &[u8] = b"From: a@x\r\nContent-Type: message/rfc822\r\n\r\nFrom: b@x\r\nContent-Type: message/rfc822\r\n\r\nSubject: s\r\n\r\nHello\r\n";
        let root = parse(raw);
        let at = |path: &[u32]| &raw[resolve(&root, path).unwrap().body.clone()];
        assert_eq!(
            at(&[1]),
            b"From: b@x\r\nContent-Type: message/rfc822\r\n\r\nSubject: s\r\n\r\nHello\r\n"
        );
        assert_eq!(at(&[1, 1]), b"Subject: s\r\n\r\nHello\r\n");
        assert_eq!(at(&[1, 1, 1]), b"Hello\r\n");
        let inner = as_message(resolve(&root, &[1]).unwrap(), false).unwrap();
        assert_eq!(
            &raw[inner.header.clone()],
            b"From: b@x\r\nContent-Type: message/rfc822\r\n\r\n"
        );
        assert!(resolve(&root, &[2]).is_none());
    }

    #[test]
    fn parts_are_capped_per_message() {
        let mut msg = b"Content-Type: multipart/mixed; boundary=o\r\n\r\n".to_vec();
        for _ in 0..50 {
            msg.extend_from_slice(b"--o\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n");
            for _ in 0..900 {
                msg.extend_from_slice(b"--i\r\n\r\nx\r\n");
            }
            msg.extend_from_slice(b"--i--\r\n");
        }
        msg.extend_from_slice(b"--o--\r\n");
        fn count(p: &Part) -> usize {
            1 + match &p.kind {
                Kind::Multipart(c) => c.iter().map(count).sum(),
                Kind::Message(m) => count(m),
                Kind::Single => 0,
            }
        }
        let root = parse(&msg);
        let n = count(&root);
        assert!(n <= MAX_TOTAL_PARTS + 1, "{n} parts");
        assert!(n > 9_000, "parsing stops only at the cap: {n}");
    }

    #[test]
    fn qp_and_base64_decode() {
        assert_eq!(
            decode_body(Some("quoted-printable"), b"a=3Db=\r\nc"),
            b"a=bc"
        );
        assert_eq!(decode_body(Some("base64"), b"aGVs\r\nbG8="), b"hello");
        // RFC 2045 6.7: trailing blanks go, soft breaks join, =XX decodes, junk stays.
        assert_eq!(
            decode_body(
                Some("quoted-printable"),
                b"foo \t\r\nb=\t \r\nar=20\r\nx=ZZ=4\r\nend="
            ),
            b"foo\r\nbar \r\nx=ZZ=4\r\nend"
        );
    }
}
