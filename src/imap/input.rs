//! Input the command parser could not take: oversized non-synchronising literals seen in the
//! raw byte stream, unparsable lines answered with a tagged BAD, and the extension forms
//! imap-codec does not parse, rewritten into the command it does parse plus the extension's
//! options: LIST-EXTENDED / LIST-STATUS (RFC 5258, 5819) and the RETURN options of
//! ESEARCH / ESORT (RFC 4731, 5267). Pure functions, no I/O.

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::Command;
use imap_codec::CommandCodec;
use imap_next::server::Error as ServerError;

use super::state::Conn;

/// Looks for a `{N+}` literal announcement larger than `max` in new input (with the tail of
/// the previous read, so an announcement split across reads is seen too).
pub(super) fn oversized_literal(tail: &mut Vec<u8>, input: &[u8], max: u64) -> bool {
    let mut window = std::mem::take(tail);
    window.extend_from_slice(input);
    let found = find_literal_plus(&window).any(|n| n > max);
    let keep = window.len().saturating_sub(24);
    *tail = window.split_off(keep);
    found
}

/// Extension options carried beside a rewritten command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Extra {
    #[default]
    None,
    /// ESEARCH / ESORT: the RETURN options (upper case; empty means ALL).
    Return(Vec<String>),
    /// LIST-STATUS: the STATUS items to send after each listed mailbox.
    ListStatus(String),
    /// CANCELUPDATE (RFC 5267 §4.3.5), carried by a NOOP: the tags of the contexts to end.
    CancelUpdate(Vec<String>),
}

impl Extra {
    /// The RETURN options, when there are any.
    pub fn returns(&self) -> Option<Vec<String>> {
        match self {
            Extra::Return(r) => Some(r.clone()),
            _ => None,
        }
    }
}

/// Answers input imap-codec could not parse. Returns a command (and its extension options)
/// when the input was an extension form this server rewrites.
pub(super) fn bad_input(conn: &mut Conn, error: ServerError) -> Option<(Command<'static>, Extra)> {
    let (bytes, what) = match &error {
        ServerError::MalformedMessage { discarded_bytes } => {
            (discarded_bytes.declassify().to_vec(), "Invalid command")
        }
        ServerError::ExpectedCrlfGotLf { discarded_bytes } => (
            discarded_bytes.declassify().to_vec(),
            "Line must end with CRLF",
        ),
        ServerError::CommandTooLong { discarded_bytes } => {
            (discarded_bytes.declassify().to_vec(), "Command too long")
        }
        ServerError::LiteralTooLong { .. } => {
            // imap-next already answered with a tagged BAD.
            conn.errors += 1;
            return None;
        }
    };
    if let Some(rewritten) = rewrite_list_extended(&bytes)
        .or_else(|| rewrite_return(&bytes))
        .or_else(|| rewrite_cancel_update(&bytes))
    {
        return Some(rewritten);
    }
    conn.errors += 1;
    match tag_of(&bytes) {
        Some(tag) => conn.line(format!("{tag} BAD {what}")),
        None => conn.line(format!("* BAD {what}")),
    }
    None
}

/// Sizes announced by `{N+}` CRLF non-synchronising literals in `bytes`.
fn find_literal_plus(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    memchr::memchr_iter(b'{', bytes).filter_map(move |start| {
        let rest = &bytes[start + 1..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let after = &rest[digits..];
        let ok = digits > 0 && (after.starts_with(b"+}\r\n") || after.starts_with(b"+}\n"));
        ok.then(|| {
            std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        })
    })
}

/// The tag at the start of an unparsable line, if it looks like one.
fn tag_of(bytes: &[u8]) -> Option<String> {
    let first = bytes.split(|b| *b == b' ').next()?;
    let ok = !first.is_empty()
        && first.len() <= 64
        && first
            .iter()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(b));
    ok.then(|| String::from_utf8_lossy(first).into_owned())
}

/// `LIST (SPECIAL-USE) "" "*"` and `LIST "" "*" RETURN (...)` (RFC 5258/6154, which
/// imap-codec does not parse yet) become a plain LIST; a `STATUS (...)` return option
/// (LIST-STATUS, RFC 5819) is kept as [`Extra::ListStatus`]. The other selection and return
/// options change nothing here: every folder is subscribed, and special-use attributes are
/// always shown.
fn rewrite_list_extended(raw: &[u8]) -> Option<(Command<'static>, Extra)> {
    let line = std::str::from_utf8(raw).ok()?.trim_end();
    let (tag, rest) = line.split_once(' ')?;
    let (verb, args) = rest.split_once(' ')?;
    if !verb.eq_ignore_ascii_case("LIST") {
        return None;
    }
    let mut args = args.trim();
    if let Some(inner) = args.strip_prefix('(') {
        let end = inner.find(')')?;
        args = inner[end + 1..].trim_start();
    }
    let mut extra = Extra::None;
    if let Some(pos) = args.to_ascii_uppercase().rfind(" RETURN (") {
        let options = &args[pos + " RETURN ".len()..];
        if let Some(items) = status_items(options) {
            extra = Extra::ListStatus(items);
        }
        args = args[..pos].trim_end();
    }
    let rewritten = format!("{tag} LIST {args}\r\n");
    let (_, command) = CommandCodec::default()
        .decode_static(rewritten.as_bytes())
        .ok()?;
    Some((command, extra))
}

/// The item list of `STATUS (...)` inside LIST return options, e.g. `MESSAGES UNSEEN`.
fn status_items(options: &str) -> Option<String> {
    let upper = options.to_ascii_uppercase();
    let at = upper.find("STATUS (")?;
    let inner = &options[at + "STATUS (".len()..];
    let end = inner.find(')')?;
    Some(inner[..end].trim().to_owned())
}

/// `[UID] SEARCH RETURN (...) ...` and `[UID] SORT RETURN (...) ...` (ESEARCH, ESORT)
/// become the plain command and [`Extra::Return`] with the options.
fn rewrite_return(raw: &[u8]) -> Option<(Command<'static>, Extra)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (tag, rest) = text.split_once(' ')?;
    let (uid, rest) = match rest.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("UID ") => ("UID ", &rest[4..]),
        _ => ("", rest),
    };
    let (verb, rest) = rest.split_once(' ')?;
    if !verb.eq_ignore_ascii_case("SEARCH") && !verb.eq_ignore_ascii_case("SORT") {
        return None;
    }
    let after = match rest.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("RETURN ") => &rest[7..],
        _ => return None,
    };
    let inner = after.strip_prefix('(')?;
    let end = inner.find(')')?;
    let options = return_options(&inner[..end])?;
    let rewritten = format!("{tag} {uid}{verb} {}", inner[end + 1..].trim_start());
    let (_, command) = CommandCodec::default()
        .decode_static(rewritten.as_bytes())
        .ok()?;
    Some((command, Extra::Return(options)))
}

/// The RETURN options of ESEARCH / ESORT (RFC 4731) and CONTEXT (RFC 5267), upper case,
/// `PARTIAL` joined with its range (`PARTIAL 1:100`; RFC 9394's `-1:-100` too); `None`
/// when one is unknown or malformed, or when more than one PARTIAL or ALL is given.
fn return_options(text: &str) -> Option<Vec<String>> {
    let mut words = text.split_ascii_whitespace();
    let mut options = Vec::new();
    while let Some(word) = words.next() {
        let word = word.to_ascii_uppercase();
        match word.as_str() {
            "MIN" | "MAX" | "ALL" | "COUNT" | "UPDATE" | "CONTEXT" => options.push(word),
            "PARTIAL" => {
                let range = words.next()?;
                partial_range(range)?;
                options.push(format!("PARTIAL {range}"));
            }
            _ => return None,
        }
    }
    let whole = options
        .iter()
        .filter(|o| *o == "ALL" || o.starts_with("PARTIAL"))
        .count();
    (whole <= 1).then_some(options)
}

/// A PARTIAL range as 1-based positions from the first result (`from` ≤ `to`), or, for a
/// negative range, from the last (`-1` is the last result); `None` when malformed.
pub(super) fn partial_range(text: &str) -> Option<(bool, u32, u32)> {
    let (a, b) = text.split_once(':')?;
    let negative = a.starts_with('-');
    if negative != b.starts_with('-') {
        return None;
    }
    let number = |t: &str| {
        let digits = t.strip_prefix('-').unwrap_or(t);
        let ok = !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit());
        ok.then(|| digits.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n > 0)
    };
    let (a, b) = (number(a)?, number(b)?);
    Some((negative, a.min(b), a.max(b)))
}

/// `tag CANCELUPDATE "t1" "t2" ...` (RFC 5267 §4.3.5) becomes `tag NOOP` and
/// [`Extra::CancelUpdate`] with the tags.
fn rewrite_cancel_update(raw: &[u8]) -> Option<(Command<'static>, Extra)> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.trim_end_matches(['\r', '\n']);
    let (tag, rest) = text.split_once(' ')?;
    let (verb, mut rest) = rest.split_once(' ')?;
    if !verb.eq_ignore_ascii_case("CANCELUPDATE") {
        return None;
    }
    let mut tags = Vec::new();
    loop {
        let (quoted, after) = quoted_string(rest)?;
        tags.push(quoted);
        match after.strip_prefix(' ') {
            Some(more) => rest = more,
            None if after.is_empty() => break,
            None => return None,
        }
    }
    let (_, command) = CommandCodec::default()
        .decode_static(format!("{tag} NOOP\r\n").as_bytes())
        .ok()?;
    Some((command, Extra::CancelUpdate(tags)))
}

/// A quoted string at the start of `text` (RFC 3501 `quoted`) and what follows it.
fn quoted_string(text: &str) -> Option<(String, &str)> {
    let mut chars = text.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 2..])),
            '\\' => out.push(chars.next()?.1),
            '\r' | '\n' => return None,
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::command::CommandBody;

    #[test]
    fn list_extended_is_rewritten() {
        let (c, _) = rewrite_list_extended(b"a1 LIST (SPECIAL-USE) \"\" \"*\"\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::List { .. }));
        let (c, extra) =
            rewrite_list_extended(b"a2 LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::List { .. }));
        assert_eq!(extra, Extra::None);
        let (_, extra) = rewrite_list_extended(
            b"a4 LIST \"\" \"%\" RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n",
        )
        .unwrap();
        assert_eq!(extra, Extra::ListStatus("MESSAGES UNSEEN".into()));
        assert!(rewrite_list_extended(b"a3 FETCH 1 x\r\n").is_none());
    }

    #[test]
    fn return_options_are_split_off() {
        let (c, extra) = rewrite_return(b"a1 UID SEARCH RETURN (MIN count) UNSEEN\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::Search { uid: true, .. }));
        assert_eq!(extra, Extra::Return(vec!["MIN".into(), "COUNT".into()]));
        let (c, extra) = rewrite_return(b"a2 SEARCH RETURN () ALL\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::Search { uid: false, .. }));
        assert_eq!(extra, Extra::Return(vec![]));
        let (c, _) = rewrite_return(b"a3 SORT RETURN (ALL) (SUBJECT) UTF-8 ALL\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::Sort { .. }));
        assert!(rewrite_return(b"a4 SEARCH RETURN (SAVE) ALL\r\n").is_none());
        let (_, extra) =
            rewrite_return(b"a6 UID SEARCH RETURN (update Partial 10:1 COUNT) ALL\r\n").unwrap();
        let want = ["UPDATE", "PARTIAL 10:1", "COUNT"]
            .map(String::from)
            .to_vec();
        assert_eq!(extra, Extra::Return(want));
        for bad in [
            &b"a7 SEARCH RETURN (PARTIAL 1:10 ALL) ALL\r\n"[..],
            b"a8 SEARCH RETURN (PARTIAL 0:10) ALL\r\n",
            b"a9 SEARCH RETURN (PARTIAL 1:*) ALL\r\n",
            b"b1 SEARCH RETURN (PARTIAL -1:10) ALL\r\n",
            b"b2 SEARCH RETURN (PARTIAL) ALL\r\n",
            b"b3 SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL\r\n",
        ] {
            assert!(
                rewrite_return(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(partial_range("-1:-100"), Some((true, 1, 100)));
        assert_eq!(partial_range("500:400"), Some((false, 400, 500)));
        assert!(rewrite_return(b"a5 FETCH 1 FLAGS\r\n").is_none());
    }

    #[test]
    fn cancel_update_is_rewritten() {
        let (c, extra) = rewrite_cancel_update(b"b4 CANCELUPDATE \"B01\" \"x\\\"y\"\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::Noop));
        assert_eq!(
            extra,
            Extra::CancelUpdate(vec!["B01".into(), "x\"y".into()])
        );
        assert!(rewrite_cancel_update(b"b5 CANCELUPDATE\r\n").is_none());
        assert!(rewrite_cancel_update(b"b6 CANCELUPDATE B01\r\n").is_none());
        assert!(rewrite_cancel_update(b"b7 CANCELUPDATE \"B01\"x\r\n").is_none());
    }

    #[test]
    fn oversized_literals_are_seen() {
        let sizes: Vec<u64> =
            find_literal_plus(b"a SEARCH TEXT {4294967295+}\r\nx {12}\r\n {7+}\n").collect();
        assert_eq!(sizes, vec![4294967295, 7]);
        let huge: Vec<u64> = find_literal_plus(b"{99999999999999999999999+}\r\n").collect();
        assert_eq!(huge, vec![u64::MAX]);
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of(b"a001 GARBAGE"), Some("a001".into()));
        assert_eq!(tag_of(b"{5}"), None);
    }
}
