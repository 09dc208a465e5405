//! What SORT (RFC 5256 §3) and SORT=DISPLAY (RFC 5957) order messages by, and the
//! per-message fields that SORT and THREAD need, extracted once from a message header.
//!
//! Text compares with `i;ascii-casemap` (RFC 4790 §9.2), the default collation of RFC 5256:
//! ASCII letters fold to upper case, every other octet compares as it is. Base subjects are
//! stored in that canonical form (ASCII letters upper-cased, the rest untouched); address
//! keys are stored lower-cased and compared with [`casemap_cmp`], which folds them again.
//! Pure; never panics on any input.

use std::cmp::Ordering;
use std::panic::{catch_unwind, AssertUnwindSafe};

use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use mail_parser::{Addr, Address, MessageParser};

use crate::mime::{raw_field, raw_fields};

/// What SORT and THREAD need of one message (extracted from its header once).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SortFields {
    /// Date: header as UTC unix seconds; None if absent or unparsable.
    pub date: Option<i64>,
    /// RFC 5256 base subject, in canonical form (see [`base_subject`]).
    pub subject: String,
    /// Whether the subject marks a reply or forward (see [`subject_key`]); THREAD=REFERENCES
    /// step 5 needs it.
    pub reply: bool,
    /// First From address's mailbox (local part), lower-cased: the RFC 5256 FROM key.
    pub from: String,
    /// First To address's mailbox (local part), lower-cased.
    pub to: String,
    /// First Cc address's mailbox (local part), lower-cased.
    pub cc: String,
    /// RFC 5957 DISPLAYFROM: the first From's display name (RFC 2047-decoded) if non-empty,
    /// else its `local@domain`; lower-cased.
    pub display_from: String,
    /// RFC 5957 DISPLAYTO, as `display_from` for the first To address.
    pub display_to: String,
    /// Message-ID without `<>`, normalized as RFC 5256 REFERENCES wants.
    pub message_id: Option<String>,
    /// References' msg-ids in order, or else In-Reply-To's first msg-id.
    pub references: Vec<String>,
}

/// Extracts the sort and thread fields from a message header block.
pub fn extract(header: &[u8]) -> SortFields {
    let raw_subject = raw_field(header, "Subject")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let (subject, reply) = subject_key(&raw_subject);
    let mut fields = parsed_fields(header).unwrap_or_default();
    fields.subject = subject;
    fields.reply = reply;
    fields.message_id = message_id(header);
    fields.references = references(header);
    fields
}

/// Date and addresses, as mail-parser reads them (None if it cannot, or panics).
fn parsed_fields(header: &[u8]) -> Option<SortFields> {
    catch_unwind(AssertUnwindSafe(|| {
        let message = MessageParser::new().parse_headers(header)?;
        let from = first(message.from());
        let to = first(message.to());
        Some(SortFields {
            date: message
                .date()
                .filter(|d| d.is_valid())
                .map(|d| d.to_timestamp()),
            from: mailbox(from),
            to: mailbox(to),
            cc: mailbox(first(message.cc())),
            display_from: display(from),
            display_to: display(to),
            ..SortFields::default()
        })
    }))
    .ok()
    .flatten()
}

fn first<'a, 'x>(list: Option<&'a Address<'x>>) -> Option<&'a Addr<'x>> {
    list?.first()
}

/// The addr-mailbox (local part) of an address, lower-cased; a bare word without `@` (read
/// as a name or an address) is a mailbox without a domain, as ENVELOPE renders it.
fn mailbox(addr: Option<&Addr<'_>>) -> String {
    let Some(addr) = addr else {
        return String::new();
    };
    let local = match addr.address.as_deref() {
        Some(a) => a.rsplit_once('@').map_or(a, |(local, _)| local),
        None => addr
            .name
            .as_deref()
            .filter(|n| !n.contains(' '))
            .unwrap_or(""),
    };
    local.trim().to_lowercase()
}

/// RFC 5957 display form: the display name if non-empty, else the addr-spec; lower-cased.
fn display(addr: Option<&Addr<'_>>) -> String {
    let Some(addr) = addr else {
        return String::new();
    };
    let name = addr.name.as_deref().map(str::trim).unwrap_or("");
    let shown = if name.is_empty() {
        addr.address.as_deref().unwrap_or("").trim()
    } else {
        name
    };
    shown.to_lowercase()
}

/// The first msg-id of the Message-ID field; a bare `id@host` without brackets is accepted.
fn message_id(header: &[u8]) -> Option<String> {
    let value = raw_field(header, "Message-ID")?;
    if let Some(id) = msg_ids(&value).into_iter().next() {
        return Some(id);
    }
    let bare = String::from_utf8_lossy(value.trim_ascii());
    valid_id(&bare).then(|| bare.into_owned())
}

/// References' msg-ids (every References field, in order), else In-Reply-To's first.
fn references(header: &[u8]) -> Vec<String> {
    let refs: Vec<String> = raw_fields(header, "References")
        .iter()
        .flat_map(|v| msg_ids(v))
        .collect();
    if !refs.is_empty() {
        return refs;
    }
    raw_field(header, "In-Reply-To")
        .and_then(|v| msg_ids(&v).into_iter().next())
        .into_iter()
        .collect()
}

/// The valid msg-ids (`<left@right>`) of a header value, normalized (quotes and whitespace
/// removed, RFC 5256 §3). Comments and quoted strings outside brackets are skipped.
fn msg_ids(value: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        i = match b {
            b'(' => skip_comment(value, i),
            b'"' => skip_quoted(value, i),
            b'<' => {
                let (id, next) = bracketed(value, i);
                ids.extend(id);
                next
            }
            _ => i + 1,
        };
    }
    ids
}

/// The index after the (nested) comment starting at `start`.
fn skip_comment(value: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = value.get(i) {
        match b {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    value.len()
}

/// The index after the quoted string starting at `start`.
fn skip_quoted(value: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&b) = value.get(i) {
        match b {
            b'\\' => i += 1,
            b'"' => return i + 1,
            _ => {}
        }
        i += 1;
    }
    value.len()
}

/// The msg-id in the brackets opening at `start` (if valid), and where to go on.
fn bracketed(value: &[u8], start: usize) -> (Option<String>, usize) {
    let rest = value.get(start + 1..).unwrap_or_default();
    let Some(len) = rest.iter().position(|b| *b == b'>' || *b == b'<') else {
        return (None, value.len());
    };
    if rest.get(len) == Some(&b'<') {
        return (None, start + 1 + len);
    }
    let inner: Vec<u8> = rest
        .iter()
        .take(len)
        .copied()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'"')
        .collect();
    let id = String::from_utf8_lossy(&inner).into_owned();
    (valid_id(&id).then_some(id), start + len + 2)
}

/// `left@right`, both non-empty, without whitespace or brackets.
fn valid_id(id: &str) -> bool {
    let clean = !id.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
    clean
        && id
            .split_once('@')
            .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty())
}

/// RFC 5256 §2.1 base subject, in canonical form: ASCII letters upper-cased (the
/// `i;ascii-casemap` form), other characters as decoded. `"Re: [fwd: foo]"` → `"FOO"`.
pub fn base_subject(raw: &str) -> String {
    subject_key(raw).0
}

/// Whether the subject marks a reply or forward: extracting the base subject removed a
/// subj-refwd (`Re:`, `Fwd:`), a `(fwd)` trailer, or a `[fwd: ...]` wrapper (RFC 5256 §3).
pub fn is_reply(raw: &str) -> bool {
    subject_key(raw).1
}

/// Both [`base_subject`] and [`is_reply`] in one pass, following RFC 5256 §2.1 steps 1–6.
pub fn subject_key(raw: &str) -> (String, bool) {
    let mut text = collapse_spaces(&decode_words(raw));
    text.make_ascii_uppercase();
    let mut s = text.as_str();
    let mut reply = false;
    loop {
        s = strip_trailers(s, &mut reply);
        s = strip_leaders(s, &mut reply);
        match s.strip_prefix("[FWD:").and_then(|t| t.strip_suffix(']')) {
            Some(inner) => {
                s = inner;
                reply = true;
            }
            None => break,
        }
    }
    (s.to_string(), reply)
}

/// Step 1: RFC 2047 encoded words decoded to UTF-8 (by mail-parser; the text as it is if
/// it cannot).
fn decode_words(raw: &str) -> String {
    if !raw.contains("=?") {
        return raw.to_string();
    }
    let line = format!("Subject: {}\r\n\r\n", raw.replace(['\r', '\n'], " "));
    catch_unwind(AssertUnwindSafe(|| {
        MessageParser::new()
            .parse_headers(line.as_bytes())
            .and_then(|m| m.subject().map(str::to_string))
    }))
    .ok()
    .flatten()
    .unwrap_or_else(|| raw.to_string())
}

/// Step 1: tabs and line breaks become spaces, runs of spaces one space.
fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_space = false;
    for c in s.chars() {
        let space = matches!(c, ' ' | '\t' | '\r' | '\n');
        if !(space && after_space) {
            out.push(if space { ' ' } else { c });
        }
        after_space = space;
    }
    out
}

/// Step 2: trailing subj-trailers (`(fwd)` or a space), repeatedly.
fn strip_trailers<'s>(mut s: &'s str, reply: &mut bool) -> &'s str {
    loop {
        if let Some(t) = s.strip_suffix(' ') {
            s = t;
        } else if let Some(t) = s.strip_suffix("(FWD)") {
            s = t;
            *reply = true;
        } else {
            return s;
        }
    }
}

/// Steps 3–5: leading subj-leaders, and a leading subj-blob when text remains after it,
/// until neither matches.
fn strip_leaders<'s>(mut s: &'s str, reply: &mut bool) -> &'s str {
    loop {
        if let Some((len, refwd)) = leader_len(s.as_bytes()) {
            s = s.get(len..).unwrap_or("");
            *reply |= refwd;
            continue;
        }
        match blob_len(s.as_bytes()) {
            Some(len) if len < s.len() => s = s.get(len..).unwrap_or(""),
            _ => return s,
        }
    }
}

/// subj-leader = (*subj-blob subj-refwd) / WSP: its length, and whether it had a subj-refwd.
fn leader_len(s: &[u8]) -> Option<(usize, bool)> {
    if s.first() == Some(&b' ') {
        return Some((1, false));
    }
    let mut pos = 0;
    while let Some(len) = blob_len(s.get(pos..)?) {
        pos += len;
    }
    let refwd = refwd_len(s.get(pos..)?)?;
    Some((pos + refwd, true))
}

/// subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":" (upper-cased text).
fn refwd_len(s: &[u8]) -> Option<usize> {
    let mut pos = if s.starts_with(b"FWD") {
        3
    } else if s.starts_with(b"RE") || s.starts_with(b"FW") {
        2
    } else {
        return None;
    };
    pos += spaces(s.get(pos..)?);
    pos += blob_len(s.get(pos..)?).unwrap_or(0);
    (s.get(pos) == Some(&b':')).then_some(pos + 1)
}

/// subj-blob = "[" *BLOBCHAR "]" *WSP.
fn blob_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'[') {
        return None;
    }
    let body = s.get(1..)?;
    let close = body.iter().position(|b| matches!(b, b'[' | b']' | 0))?;
    if body.get(close) != Some(&b']') {
        return None;
    }
    let end = close + 2;
    Some(end + spaces(s.get(end..)?))
}

fn spaces(s: &[u8]) -> usize {
    s.iter().take_while(|b| **b == b' ').count()
}

/// `i;ascii-casemap` comparison (RFC 4790 §9.2): ASCII letters folded to upper case.
pub fn casemap_cmp(a: &str, b: &str) -> Ordering {
    let fold = |c: u8| c.to_ascii_uppercase();
    a.bytes().map(fold).cmp(b.bytes().map(fold))
}

/// One message for sorting.
#[derive(Debug, Clone, Copy)]
pub struct SortItem<'a> {
    pub seq: u32,
    pub uid: u32,
    /// INTERNALDATE as unix seconds.
    pub arrival: i64,
    /// RFC822.SIZE.
    pub size: u64,
    pub fields: &'a SortFields,
}

impl SortItem<'_> {
    /// RFC 5256 §2.2 sent date: the Date header, else INTERNALDATE.
    pub fn sent_date(&self) -> i64 {
        self.fields.date.unwrap_or(self.arrival)
    }
}

/// Returns the indexes of `items` in the order the criteria give (RFC 5256 §3): REVERSE
/// reverses its own key only; messages equal under every key keep sequence-number order.
pub fn sort(items: &[SortItem<'_>], criteria: &[SortCriterion]) -> Vec<usize> {
    let mut order: Vec<(usize, &SortItem<'_>)> = items.iter().enumerate().collect();
    order.sort_by(|(i, a), (j, b)| {
        criteria
            .iter()
            .map(|c| directed(compare(a, b, &c.key), c.reverse))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then(a.seq.cmp(&b.seq))
            .then(i.cmp(j))
    });
    order.into_iter().map(|(i, _)| i).collect()
}

fn directed(order: Ordering, reverse: bool) -> Ordering {
    if reverse {
        order.reverse()
    } else {
        order
    }
}

/// Compares two messages by one sort key.
fn compare(a: &SortItem<'_>, b: &SortItem<'_>, key: &SortKey) -> Ordering {
    let (x, y) = (a.fields, b.fields);
    match key {
        SortKey::Arrival => a.arrival.cmp(&b.arrival),
        SortKey::Date => a.sent_date().cmp(&b.sent_date()),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Subject => casemap_cmp(&x.subject, &y.subject),
        SortKey::From => casemap_cmp(&x.from, &y.from),
        SortKey::To => casemap_cmp(&x.to, &y.to),
        SortKey::Cc => casemap_cmp(&x.cc, &y.cc),
        SortKey::DisplayFrom => casemap_cmp(&x.display_from, &y.display_from),
        SortKey::DisplayTo => casemap_cmp(&x.display_to, &y.display_to),
    }
}

#[cfg(test)]
mod tests;
