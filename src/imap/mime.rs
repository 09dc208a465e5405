//! Message structure for IMAP: MIME parts as byte ranges of the stored message (so
//! `BODY[section]` returns exact bytes), ENVELOPE and BODYSTRUCTURE rendering.
//!
//! Part boundaries are found here; header *values* (content type, parameters, addresses) are
//! parsed by mail-parser behind `catch_unwind`. A message that cannot be parsed still fetches:
//! it degrades to a single text/plain part.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};

use super::wire::{nstring, string};

/// Deepest nesting of multiparts and encapsulated messages that is parsed.
const MAX_DEPTH: usize = 32;
/// Most parts per multipart that are parsed.
const MAX_PARTS: usize = 1000;

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
    parse_part(raw, 0..raw.len(), false, 0)
}

fn parse_part(raw: &[u8], range: Range<usize>, digest: bool, depth: usize) -> Part {
    let header_end = header_end(&raw[range.clone()]) + range.start;
    let header = range.start..header_end;
    let body = header_end..range.end;
    let info = header_info(&raw[header.clone()]).unwrap_or_else(|| Info::default_for(digest));
    let info = if info.ctype.is_empty() {
        Info::default_for(digest)
    } else {
        info
    };
    let kind = if depth >= MAX_DEPTH {
        Kind::Single
    } else if info.ctype.eq_ignore_ascii_case("multipart") {
        match info.param("boundary").map(str::to_owned) {
            Some(boundary) if !boundary.is_empty() => {
                let digest = info.subtype.eq_ignore_ascii_case("digest");
                let children: Vec<Part> = split_multipart(raw, body.clone(), boundary.as_bytes())
                    .into_iter()
                    .map(|r| parse_part(raw, r, digest, depth + 1))
                    .collect();
                if children.is_empty() {
                    Kind::Single
                } else {
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
        Kind::Message(Box::new(parse_part(raw, body.clone(), false, depth + 1)))
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

/// Resolves a part number path (`1.2.3`) to a part.
pub fn resolve<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    let mut node = root;
    for n in path {
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

/// Number of lines (LF) in a byte range.
fn lines(raw: &[u8], range: &Range<usize>) -> usize {
    memchr::memchr_iter(b'\n', &raw[range.clone()]).count()
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
        _ => single_structure(raw, part, extended, out),
    }
}

fn single_structure(raw: &[u8], part: &Part, extended: bool, out: &mut Vec<u8>) {
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
    out.extend_from_slice(format!(" {}", part.body.len()).as_bytes());
    match &part.kind {
        Kind::Message(inner) => {
            out.push(b' ');
            envelope(&raw[inner.header.clone()], out);
            out.push(b' ');
            body_structure(raw, inner, extended, out);
            out.extend_from_slice(format!(" {}", lines(raw, &part.body)).as_bytes());
        }
        _ if info.ctype.eq_ignore_ascii_case("text") => {
            out.extend_from_slice(format!(" {}", lines(raw, &part.body)).as_bytes());
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

/// Renders the ENVELOPE of a message header block.
pub fn envelope(header: &[u8], out: &mut Vec<u8>) {
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        MessageParser::new().parse_headers(header)
    }))
    .ok()
    .flatten();
    let Some(message) = parsed else {
        out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
        return;
    };
    let raw = |name: &str| raw_field(header, name);
    out.push(b'(');
    nstring(out, raw("Date").as_deref());
    out.push(b' ');
    nstring(out, raw("Subject").as_deref());
    let from = message.from();
    for list in [
        from,
        message.sender().or(from),
        message.reply_to().or(from),
        message.to(),
        message.cc(),
        message.bcc(),
    ] {
        out.push(b' ');
        addresses(out, list);
    }
    out.push(b' ');
    nstring(out, raw("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw("Message-ID").as_deref());
    out.push(b')');
}

/// The unfolded, trimmed raw value of the first header field `name` in a header block.
pub fn raw_field(header: &[u8], name: &str) -> Option<Vec<u8>> {
    raw_fields(header, name).into_iter().next()
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

fn addresses(out: &mut Vec<u8>, list: Option<&Address<'_>>) {
    let Some(list) = list else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let mut body = Vec::new();
    match list {
        Address::List(addrs) => {
            for a in addrs {
                address(&mut body, a.name.as_deref(), a.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for g in groups {
                match &g.name {
                    Some(name) => {
                        body.extend_from_slice(b"(NIL NIL ");
                        string(&mut body, encode_word(name).as_bytes());
                        body.extend_from_slice(b" NIL)");
                        for a in &g.addresses {
                            address(&mut body, a.name.as_deref(), a.address.as_deref());
                        }
                        body.extend_from_slice(b"(NIL NIL NIL NIL)");
                    }
                    None => {
                        for a in &g.addresses {
                            address(&mut body, a.name.as_deref(), a.address.as_deref());
                        }
                    }
                }
            }
        }
    }
    if body.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&body);
        out.push(b')');
    }
}

fn address(out: &mut Vec<u8>, name: Option<&str>, addr: Option<&str>) {
    // A bare word such as `postmaster` (no @) is a mailbox without a domain, not a group
    // marker, which `(NIL NIL "x" NIL)` or `("x" NIL NIL NIL)` would mean.
    if addr.is_none_or(|a| !a.contains('@')) {
        if let Some(local) = addr.or(name).filter(|s| !s.contains(' ')) {
            out.extend_from_slice(b"(NIL NIL ");
            string(out, local.as_bytes());
            out.extend_from_slice(b" \"MISSING_DOMAIN\")");
            return;
        }
    }
    let (mailbox, host) = match addr {
        Some(a) => match a.rsplit_once('@') {
            Some((m, h)) => (Some(m), Some(h)),
            None => (Some(a), None),
        },
        None => (None, None),
    };
    out.push(b'(');
    nstring(out, name.map(encode_word).as_deref().map(str::as_bytes));
    out.extend_from_slice(b" NIL ");
    nstring(out, mailbox.map(str::as_bytes));
    out.push(b' ');
    nstring(out, host.map(str::as_bytes));
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

fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'=' {
            let rest = &body[i + 1..];
            if rest.starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if rest.starts_with(b"\n") {
                i += 2;
                continue;
            }
            if rest.len() >= 2 {
                if let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&rest[..2]).unwrap_or("zz"), 16)
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &[u8] = b"From: A <a@example.com>\r\nTo: b@example.com, \"C D\" <c@example.com>\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\nepilogue\r\n";

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

    #[test]
    fn qp_and_base64_decode() {
        assert_eq!(
            decode_body(Some("quoted-printable"), b"a=3Db=\r\nc"),
            b"a=bc"
        );
        assert_eq!(decode_body(Some("base64"), b"aGVs\r\nbG8="), b"hello");
    }
}
