//! FETCH (RFC 3501 §6.4.5, RFC 3516 BINARY): turns the requested items into response chunks.
//!
//! Messages up to [`IN_MEMORY_MAX`] are decrypted into memory once per FETCH and every item is
//! cut from them. Larger messages are never held whole: only their header is read, and the
//! whole-message items (`BODY[]`, `RFC822`, `BODY[TEXT]`, partials) are streamed from the
//! sealed file as they are sent.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Part, Section,
};

use crate::message::MessageMeta;

use super::structure;
use super::wire::{internal_date, literal};
use crate::mime;

/// Messages up to this size are handled in memory.
pub const IN_MEMORY_MAX: u64 = 32 * 1024 * 1024;
/// Largest header read from a large message.
pub const MAX_HEADER: usize = 1024 * 1024;

/// One piece of a FETCH response.
pub enum Chunk {
    Bytes(Vec<u8>),
    /// `raw[range]` of the in-memory message (written from there, not copied).
    Slice(std::ops::Range<usize>),
    /// `len` octets of the message from `start`, streamed from the store.
    Stream {
        start: u64,
        len: u64,
    },
}

/// The message content available to the renderer.
pub struct Content {
    /// The whole message, or only its header for a large message.
    pub raw: Vec<u8>,
    pub whole: bool,
    pub size: u64,
    /// For a large message: the line count of its body, when it was counted.
    body_lines: Option<u64>,
    root: OnceLock<mime::Part>,
    /// The ENVELOPE, when a store's summary had it rendered.
    envelope: Option<Vec<u8>>,
    /// `raw` holds only the header fields of [`mime::SUMMARY_FIELDS`].
    pub fields_only: bool,
}

impl Content {
    pub fn whole(raw: Vec<u8>) -> Content {
        let size = raw.len() as u64;
        Content {
            raw,
            whole: true,
            size,
            body_lines: None,
            root: OnceLock::new(),
            envelope: None,
            fields_only: false,
        }
    }

    /// The summary of a message: its ENVELOPE and summary header fields only.
    pub fn fields(fields: crate::store::Fields, size: u64) -> Content {
        let mut c = Content::header_only(fields.header, size, None);
        c.envelope = Some(fields.envelope);
        c.fields_only = true;
        c
    }

    /// A large message of which only the header (the start of `raw`) is kept; `body_lines`
    /// is its body's line count when the caller counted it.
    pub fn header_only(mut raw: Vec<u8>, size: u64, body_lines: Option<u64>) -> Content {
        let end = mime::header_end(&raw);
        raw.truncate(end);
        Content {
            raw,
            whole: false,
            size,
            body_lines,
            root: OnceLock::new(),
            envelope: None,
            fields_only: false,
        }
    }

    fn header_len(&self) -> usize {
        mime::header_end(&self.raw)
    }

    fn root(&self) -> &mime::Part {
        self.root.get_or_init(|| {
            let mut root = mime::parse(&self.raw);
            if !self.whole {
                // Degrade: the body is not here, so it is one opaque part (rendered from the
                // sizes, never sliced).
                root.kind = mime::Kind::Single;
                root.body = root.header.end..root.header.end;
            }
            root
        })
    }

    /// BODY / BODYSTRUCTURE.
    fn structure(&self, extended: bool, out: &mut Vec<u8>) {
        if self.whole {
            structure::body_structure(&self.raw, self.root(), extended, out);
        } else {
            let octets = self.size.saturating_sub(self.raw.len() as u64);
            let lines = self.body_lines.unwrap_or(0);
            structure::opaque_structure(&self.raw, self.root(), octets, lines, extended, out);
        }
    }
}

/// Expands macros; UID FETCH always returns the UID.
pub fn item_names(
    names: MacroOrMessageDataItemNames<'static>,
    uid: bool,
) -> Vec<MessageDataItemName<'static>> {
    use MessageDataItemName as N;
    let mut items = match names {
        MacroOrMessageDataItemNames::Macro(m) => match m {
            Macro::Fast => vec![N::Flags, N::InternalDate, N::Rfc822Size],
            Macro::All => vec![N::Flags, N::InternalDate, N::Rfc822Size, N::Envelope],
            Macro::Full => vec![
                N::Flags,
                N::InternalDate,
                N::Rfc822Size,
                N::Envelope,
                N::Body,
            ],
            _ => vec![N::Flags, N::InternalDate, N::Rfc822Size],
        },
        MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
    };
    if uid && !items.contains(&N::Uid) {
        items.insert(0, N::Uid);
    }
    // An item asked for twice is answered once (RFC 3501 allows it; it also keeps one FETCH
    // of `BODY[] BODY[] ...` from rendering the message again and again).
    let mut unique: Vec<MessageDataItemName<'static>> = Vec::with_capacity(items.len());
    for item in items {
        if !unique.contains(&item) {
            unique.push(item);
        }
    }
    unique
}

/// True if any item needs BODY or BODYSTRUCTURE (for a large message, its line count).
pub fn needs_structure(items: &[MessageDataItemName<'_>]) -> bool {
    use MessageDataItemName as N;
    items
        .iter()
        .any(|i| matches!(i, N::Body | N::BodyStructure))
}

/// True if any item needs the message content.
pub fn needs_content(items: &[MessageDataItemName<'_>]) -> bool {
    use MessageDataItemName as N;
    items.iter().any(|i| {
        !matches!(
            i,
            N::Uid | N::Flags | N::InternalDate | N::Rfc822Size | N::ModSeq
        )
    })
}

/// True when the message header is all the items need (ENVELOPE, header sections of the
/// message itself, metadata).
pub fn header_suffices(items: &[MessageDataItemName<'_>]) -> bool {
    use imap_codec::imap_types::fetch::Section;
    use MessageDataItemName as N;
    items.iter().all(|i| match i {
        N::Uid | N::Flags | N::InternalDate | N::Rfc822Size | N::ModSeq => true,
        N::Envelope | N::Rfc822Header => true,
        N::BodyExt { section, .. } => matches!(
            section,
            Some(
                Section::Header(None)
                    | Section::HeaderFields(None, _)
                    | Section::HeaderFieldsNot(None, _)
            )
        ),
        _ => false,
    })
}

/// True when the ENVELOPE (and metadata) is all the items need: a store's summary fields
/// answer them.
pub fn fields_suffice(items: &[MessageDataItemName<'_>]) -> bool {
    use MessageDataItemName as N;
    items.iter().all(|i| {
        matches!(
            i,
            N::Uid | N::Flags | N::InternalDate | N::Rfc822Size | N::ModSeq | N::Envelope
        )
    })
}

/// True if any item sets \Seen (non-PEEK body fetches).
pub fn sets_seen(items: &[MessageDataItemName<'_>]) -> bool {
    use MessageDataItemName as N;
    items.iter().any(|i| match i {
        N::BodyExt { peek, .. } | N::Binary { peek, .. } => !peek,
        N::Rfc822 | N::Rfc822Text => true,
        _ => false,
    })
}

/// Whether the items return message body content (not only header fields or metadata): what
/// an archive's audit trail records as a fetched message.
pub fn returns_body(items: &[MessageDataItemName<'_>]) -> bool {
    use imap_codec::imap_types::fetch::Section;
    use MessageDataItemName as N;
    items.iter().any(|i| match i {
        N::BodyExt { section, .. } => !matches!(
            section,
            Some(
                Section::Header(_)
                    | Section::HeaderFields(..)
                    | Section::HeaderFieldsNot(..)
                    | Section::Mime(_)
            )
        ),
        N::Binary { .. } | N::Rfc822 | N::Rfc822Text => true,
        _ => false,
    })
}

/// Whether a FETCH changed the message's flags (it set `\Seen`), and whether the session
/// wants MODSEQ with such changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    No,
    Flags,
    WithModSeq,
}

/// True when a BINARY item asks for a part whose transfer encoding cannot be decoded
/// (RFC 3516 §4.2: the FETCH then fails with `[UNKNOWN-CTE]`).
pub fn unknown_cte(items: &[MessageDataItemName<'_>], c: &Content) -> bool {
    use MessageDataItemName as N;
    let known = ["7bit", "8bit", "binary", "base64", "quoted-printable"];
    items.iter().any(|item| {
        let path = match item {
            N::Binary { section, .. } | N::BinarySize { section } => section,
            _ => return false,
        };
        if path.is_empty() || !c.whole {
            return false;
        }
        let path: Vec<u32> = path.iter().map(|n| n.get()).collect();
        mime::resolve(c.root(), &path)
            .and_then(|p| p.info.encoding.as_deref())
            .is_some_and(|e| !known.iter().any(|k| e.trim().eq_ignore_ascii_case(k)))
    })
}

/// Renders `* seq FETCH (...)` for one message, item by item: the caller takes the chunks
/// after each item and writes them, so one response never holds more than one item.
pub struct Renderer {
    chunks: Vec<Chunk>,
    buf: Vec<u8>,
    first: bool,
}

impl Renderer {
    pub fn new(seq: u32) -> Renderer {
        Renderer {
            chunks: Vec::new(),
            buf: format!("* {seq} FETCH (").into_bytes(),
            first: true,
        }
    }

    /// Closes the response. `add_flags` appends FLAGS (the rendered list) when the FETCH
    /// set `\Seen`; `condstore` then also UID and MODSEQ (RFC 7162 §3.2.4).
    pub fn end(
        &mut self,
        meta: &MessageMeta,
        flags: &str,
        items: &[MessageDataItemName<'_>],
        changed: Changed,
    ) {
        use MessageDataItemName as N;
        if changed != Changed::No && !items.contains(&N::Flags) {
            self.sep();
            self.buf
                .extend_from_slice(format!("FLAGS {flags}").as_bytes());
        }
        if changed == Changed::WithModSeq {
            if !items.contains(&N::Uid) {
                self.buf
                    .extend_from_slice(format!(" UID {}", meta.uid).as_bytes());
            }
            if !items.contains(&N::ModSeq) {
                let modseq = meta.modseq.max(1);
                self.buf
                    .extend_from_slice(format!(" MODSEQ ({modseq})").as_bytes());
            }
        }
        self.buf.extend_from_slice(b")\r\n");
    }

    /// The chunks rendered so far.
    pub fn take(&mut self) -> Vec<Chunk> {
        if !self.buf.is_empty() {
            self.chunks
                .push(Chunk::Bytes(std::mem::take(&mut self.buf)));
        }
        std::mem::take(&mut self.chunks)
    }

    fn sep(&mut self) {
        if !self.first {
            self.buf.push(b' ');
        }
        self.first = false;
    }

    /// A literal of `raw[range]`, written from the message without a copy.
    fn slice(&mut self, range: std::ops::Range<usize>) {
        self.buf
            .extend_from_slice(format!("{{{}}}\r\n", range.len()).as_bytes());
        self.chunks
            .push(Chunk::Bytes(std::mem::take(&mut self.buf)));
        self.chunks.push(Chunk::Slice(range));
    }

    fn stream(&mut self, start: u64, len: u64) {
        self.buf
            .extend_from_slice(format!("{{{len}}}\r\n").as_bytes());
        self.chunks
            .push(Chunk::Bytes(std::mem::take(&mut self.buf)));
        self.chunks.push(Chunk::Stream { start, len });
    }

    /// Renders one item; `flags` is the message's FLAGS list as the session shows it.
    pub fn item(
        &mut self,
        meta: &MessageMeta,
        flags: &str,
        item: &MessageDataItemName<'_>,
        content: Option<&Content>,
    ) {
        use MessageDataItemName as N;
        self.sep();
        let label_and = |r: &mut Self, label: &str| r.buf.extend_from_slice(label.as_bytes());
        match item {
            N::Uid => label_and(self, &format!("UID {}", meta.uid)),
            N::Flags => label_and(self, &format!("FLAGS {flags}")),
            N::ModSeq => label_and(self, &format!("MODSEQ ({})", meta.modseq.max(1))),
            N::InternalDate => label_and(
                self,
                &format!("INTERNALDATE {}", internal_date(meta.received)),
            ),
            N::Rfc822Size => label_and(self, &format!("RFC822.SIZE {}", meta.size)),
            N::Envelope => {
                label_and(self, "ENVELOPE ");
                match content {
                    Some(Content {
                        envelope: Some(e), ..
                    }) => self.buf.extend_from_slice(e),
                    Some(c) => structure::envelope(&c.raw[..c.header_len()], &mut self.buf),
                    None => self.buf.extend_from_slice(b"NIL"),
                }
            }
            N::Body | N::BodyStructure => {
                let extended = matches!(item, N::BodyStructure);
                label_and(self, if extended { "BODYSTRUCTURE " } else { "BODY " });
                match content {
                    Some(c) => c.structure(extended, &mut self.buf),
                    None => self.buf.extend_from_slice(b"NIL"),
                }
            }
            N::Rfc822 => {
                label_and(self, "RFC822 ");
                self.section(content, None, None);
            }
            N::Rfc822Header => {
                label_and(self, "RFC822.HEADER ");
                self.section(content, Some(&Section::Header(None)), None);
            }
            N::Rfc822Text => {
                label_and(self, "RFC822.TEXT ");
                self.section(content, Some(&Section::Text(None)), None);
            }
            N::BodyExt {
                section, partial, ..
            } => {
                label_and(self, &format!("BODY[{}]", section_label(section.as_ref())));
                if let Some((origin, _)) = partial {
                    label_and(self, &format!("<{origin}>"));
                }
                self.buf.push(b' ');
                self.section(content, section.as_ref(), *partial);
            }
            N::Binary {
                section, partial, ..
            } => {
                label_and(self, &format!("BINARY[{}]", path_label(section)));
                if let Some((origin, _)) = partial {
                    label_and(self, &format!("<{origin}>"));
                }
                self.buf.push(b' ');
                self.binary(content, section, *partial, false);
            }
            N::BinarySize { section } => {
                label_and(self, &format!("BINARY.SIZE[{}] ", path_label(section)));
                self.binary(content, section, None, true);
            }
            #[allow(unreachable_patterns)]
            _ => label_and(self, "NIL"),
        }
    }

    /// Writes a body section (or NIL when it does not exist).
    fn section(
        &mut self,
        content: Option<&Content>,
        section: Option<&Section<'_>>,
        partial: Option<(u32, NonZeroU32)>,
    ) {
        let Some(c) = content else {
            self.buf.extend_from_slice(b"NIL");
            return;
        };
        // Whole-message and TEXT sections of a large message are streamed.
        if !c.whole {
            let range = match section {
                None => Some((0, c.size)),
                Some(Section::Text(None)) => Some((c.header_len() as u64, c.size)),
                _ => None,
            };
            if let Some((start, end)) = range {
                let (s, e) = window(start, end, partial);
                self.stream(s, e - s);
                return;
            }
        }
        match select(c, section) {
            Some(Cut::Range(r)) => {
                let (s, e) = window(r.start as u64, r.end as u64, partial);
                self.slice(s as usize..e as usize);
            }
            Some(Cut::Owned(bytes)) => {
                let (s, e) = window(0, bytes.len() as u64, partial);
                literal(&mut self.buf, &bytes[s as usize..e as usize]);
            }
            None => self.buf.extend_from_slice(b"NIL"),
        }
    }

    fn binary(
        &mut self,
        content: Option<&Content>,
        path: &[NonZeroU32],
        partial: Option<(u32, NonZeroU32)>,
        size_only: bool,
    ) {
        let Some(c) = content else {
            self.buf.extend_from_slice(b"NIL");
            return;
        };
        if path.is_empty() {
            // The whole message: nothing to decode.
            if size_only {
                self.buf.extend_from_slice(c.size.to_string().as_bytes());
            } else if !c.whole {
                let (s, e) = window(0, c.size, partial);
                self.stream(s, e - s);
            } else {
                let (s, e) = window(0, c.raw.len() as u64, partial);
                self.slice(s as usize..e as usize);
            }
            return;
        }
        let path: Vec<u32> = path.iter().map(|n| n.get()).collect();
        let decoded = if c.whole {
            mime::resolve(c.root(), &path)
                .map(|p| mime::decode_body(p.info.encoding.as_deref(), &c.raw[p.body.clone()]))
        } else {
            None
        };
        match (decoded, size_only) {
            (Some(d), true) => self.buf.extend_from_slice(d.len().to_string().as_bytes()),
            (Some(d), false) => {
                let (s, e) = window(0, d.len() as u64, partial);
                let bytes = &d[s as usize..e as usize];
                if bytes.contains(&0) {
                    self.buf
                        .extend_from_slice(format!("~{{{}}}\r\n", bytes.len()).as_bytes());
                    self.buf.extend_from_slice(bytes);
                } else {
                    literal(&mut self.buf, bytes);
                }
            }
            (None, _) => self.buf.extend_from_slice(b"NIL"),
        }
    }
}

/// The `<origin.count>` window of `start..end`.
fn window(start: u64, end: u64, partial: Option<(u32, NonZeroU32)>) -> (u64, u64) {
    match partial {
        None => (start, end),
        Some((origin, count)) => {
            let s = (start + u64::from(origin)).min(end);
            (s, (s + u64::from(count.get())).min(end))
        }
    }
}

/// A section's bytes: a range of the stored message, or bytes made from it.
enum Cut {
    Range(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

/// The bytes of a section of an in-memory (or header-only) message.
fn select(c: &Content, section: Option<&Section<'_>>) -> Option<Cut> {
    let raw = &c.raw;
    let root = c.root();
    let path = |p: &Part| p.0.as_ref().iter().map(|n| n.get()).collect::<Vec<u32>>();
    let message_of = |p: Option<&Part>| -> Option<&mime::Part> {
        match p {
            None => Some(root),
            Some(p) => mime::as_message(mime::resolve(root, &path(p))?, false),
        }
    };
    let in_range = |r: std::ops::Range<usize>| (r.end <= raw.len()).then_some(Cut::Range(r));
    match section {
        None => c.whole.then_some(Cut::Range(0..raw.len())),
        Some(Section::Part(p)) => {
            let part = mime::resolve(root, &path(p))?;
            c.whole.then(|| in_range(part.body.clone())).flatten()
        }
        Some(Section::Header(p)) => in_range(message_of(p.as_ref())?.header.clone()),
        Some(Section::Text(p)) => {
            let m = message_of(p.as_ref())?;
            c.whole.then(|| in_range(m.body.clone())).flatten()
        }
        Some(Section::Mime(p)) => in_range(mime::resolve(root, &path(p))?.header.clone()),
        Some(Section::HeaderFields(p, names)) | Some(Section::HeaderFieldsNot(p, names)) => {
            let header = raw.get(message_of(p.as_ref())?.header.clone())?;
            let keep = matches!(section, Some(Section::HeaderFields(..)));
            let names: Vec<Vec<u8>> = names
                .as_ref()
                .iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect();
            Some(Cut::Owned(filter_fields(header, &names, keep)))
        }
    }
}

/// The header fields whose names are (or, with `keep = false`, are not) in `names`, followed
/// by the blank line.
fn filter_fields(header: &[u8], names: &[Vec<u8>], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut current_keeps = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let trimmed = line.trim_ascii_end();
        if trimmed.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if current_keeps {
                out.extend_from_slice(line);
            }
            continue;
        }
        let name = line
            .split(|b| *b == b':')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .to_ascii_lowercase();
        current_keeps = names.contains(&name) == keep;
        if current_keeps {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn path_label(path: &[NonZeroU32]) -> String {
    path.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

fn section_label(section: Option<&Section<'_>>) -> String {
    let part = |p: &Option<Part>| match p {
        Some(p) => format!("{}.", path_label(p.0.as_ref())),
        None => String::new(),
    };
    let names =
        |n: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| {
            n.as_ref()
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(" ")
        };
    match section {
        None => String::new(),
        Some(Section::Part(p)) => path_label(p.0.as_ref()),
        Some(Section::Header(p)) => format!("{}HEADER", part(p)),
        Some(Section::Text(p)) => format!("{}TEXT", part(p)),
        Some(Section::Mime(p)) => format!("{}.MIME", path_label(p.0.as_ref())),
        Some(Section::HeaderFields(p, n)) => format!("{}HEADER.FIELDS ({})", part(p), names(n)),
        Some(Section::HeaderFieldsNot(p, n)) => {
            format!("{}HEADER.FIELDS.NOT ({})", part(p), names(n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_filter() {
        let h = b"From: a\r\nSubject: x\r\n y\r\nTo: b\r\n\r\n";
        assert_eq!(
            filter_fields(h, &[b"subject".to_vec()], true),
            b"Subject: x\r\n y\r\n\r\n"
        );
        assert_eq!(
            filter_fields(h, &[b"subject".to_vec()], false),
            b"From: a\r\nTo: b\r\n\r\n"
        );
    }

    #[test]
    fn partial_windows() {
        let nz = |n| NonZeroU32::new(n).unwrap();
        assert_eq!(window(0, 10, Some((2, nz(3)))), (2, 5));
        assert_eq!(window(0, 10, Some((20, nz(3)))), (10, 10));
        assert_eq!(window(4, 10, Some((2, nz(100)))), (6, 10));
    }
}
