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
    if let Some(rewritten) = rewrite_list_extended(&bytes).or_else(|| rewrite_return(&bytes)) {
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
    let options: Vec<String> = inner[..end]
        .split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let known = ["MIN", "MAX", "ALL", "COUNT"];
    if options.iter().any(|o| !known.contains(&o.as_str())) {
        return None;
    }
    let rewritten = format!("{tag} {uid}{verb} {}", inner[end + 1..].trim_start());
    let (_, command) = CommandCodec::default()
        .decode_static(rewritten.as_bytes())
        .ok()?;
    Some((command, Extra::Return(options)))
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
        assert!(rewrite_return(b"a5 FETCH 1 FLAGS\r\n").is_none());
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
