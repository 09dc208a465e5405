//! RFC 5322 address lists as IMAP ENVELOPE wants them (RFC 3501 §7.4.2): each mailbox as
//! (name, source route, mailbox, host) from the raw header bytes, groups as a start marker
//! `(NIL NIL "group" NIL)` and an end marker `(NIL NIL NIL NIL)`, a trailing comment as the
//! name when there is no display name. Pure; never fails: what cannot be parsed is skipped.
//!
//! Hand-written because mail-parser folds groups and drops source routes, and ENVELOPE needs
//! both as they are written.

/// One element of an ENVELOPE address list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Mailbox {
        name: Option<Vec<u8>>,
        route: Option<Vec<u8>>,
        mailbox: Vec<u8>,
        host: Option<Vec<u8>>,
    },
    GroupStart(Vec<u8>),
    GroupEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An atom, a dot-atom or a quoted string (unquoted), and whether it was quoted.
    Word(Vec<u8>),
    Comment(Vec<u8>),
    Special(u8),
}

/// Parses an unfolded header value into ENVELOPE address items.
pub fn parse(value: &[u8]) -> Vec<Item> {
    let tokens = tokenize(value);
    let mut items = Vec::new();
    let mut in_group = false;
    let mut current: Vec<Token> = Vec::new();
    let mut angle = false;
    for token in tokens {
        match token {
            Token::Special(b'<') => {
                angle = true;
                current.push(token);
            }
            Token::Special(b'>') => {
                angle = false;
                current.push(token);
            }
            Token::Special(b',') if !angle => flush(&mut current, &mut items),
            Token::Special(b':') if !angle && !in_group && !has_special(&current, b'@') => {
                let name = phrase(&current);
                current.clear();
                items.push(Item::GroupStart(name));
                in_group = true;
            }
            Token::Special(b';') if !angle && in_group => {
                flush(&mut current, &mut items);
                items.push(Item::GroupEnd);
                in_group = false;
            }
            other => current.push(other),
        }
    }
    flush(&mut current, &mut items);
    if in_group {
        items.push(Item::GroupEnd);
    }
    items
}

fn has_special(tokens: &[Token], c: u8) -> bool {
    tokens.contains(&Token::Special(c))
}

/// Words joined by single spaces (a display name or group name).
fn phrase(tokens: &[Token]) -> Vec<u8> {
    let words: Vec<&[u8]> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.as_slice()),
            Token::Special(b'.') => Some(&b"."[..]),
            _ => None,
        })
        .collect();
    words.join(&b' ')
}

/// Turns the tokens of one mailbox into an item (nothing for an empty element).
fn flush(tokens: &mut Vec<Token>, items: &mut Vec<Item>) {
    let toks = std::mem::take(tokens);
    if toks.iter().all(|t| matches!(t, Token::Comment(_))) {
        return;
    }
    let comment = toks.iter().rev().find_map(|t| match t {
        Token::Comment(c) if !c.is_empty() => Some(c.clone()),
        _ => None,
    });
    let item = match toks.iter().position(|t| *t == Token::Special(b'<')) {
        Some(open) => {
            let close = toks[open..]
                .iter()
                .position(|t| *t == Token::Special(b'>'))
                .map(|p| open + p)
                .unwrap_or(toks.len());
            let name = Some(phrase(&toks[..open])).filter(|n| !n.is_empty());
            let (route, spec) = split_route(&toks[open + 1..close]);
            mailbox(name.or(comment), route, spec)
        }
        None => mailbox(comment, None, &toks),
    };
    items.extend(item);
}

/// `@a,@b:local@host` -> (Some("@a,@b"), tokens of `local@host`).
fn split_route(tokens: &[Token]) -> (Option<Vec<u8>>, &[Token]) {
    if tokens.first() != Some(&Token::Special(b'@')) {
        return (None, tokens);
    }
    let Some(colon) = tokens.iter().position(|t| *t == Token::Special(b':')) else {
        return (None, tokens);
    };
    let mut route = Vec::new();
    for t in &tokens[..colon] {
        match t {
            Token::Word(w) => route.extend_from_slice(w),
            Token::Special(c) => route.push(*c),
            Token::Comment(_) => {}
        }
    }
    (Some(route), &tokens[colon + 1..])
}

fn mailbox(name: Option<Vec<u8>>, route: Option<Vec<u8>>, spec: &[Token]) -> Option<Item> {
    let at = spec.iter().rposition(|t| *t == Token::Special(b'@'));
    let text = |ts: &[Token]| {
        let mut out = Vec::new();
        for t in ts {
            match t {
                Token::Word(w) => out.extend_from_slice(w),
                Token::Special(c) => out.push(*c),
                Token::Comment(_) => {}
            }
        }
        out
    };
    let (local, host) = match at {
        Some(at) => (text(&spec[..at]), Some(text(&spec[at + 1..]))),
        None => (text(spec), None),
    };
    if local.is_empty() && host.as_ref().is_none_or(|h| h.is_empty()) {
        return None;
    }
    Some(Item::Mailbox {
        name,
        route,
        mailbox: local,
        host: host.filter(|h| !h.is_empty()),
    })
}

fn tokenize(value: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                let (comment, next) = read_comment(value, i);
                tokens.push(Token::Comment(comment));
                i = next;
            }
            b'"' => {
                let (word, next) = read_quoted(value, i);
                tokens.push(Token::Word(word));
                i = next;
            }
            b'<' | b'>' | b'@' | b',' | b':' | b';' | b'.' | b'[' | b']' => {
                tokens.push(Token::Special(b));
                i += 1;
            }
            // A stray closing parenthesis (no comment open): dropped.
            b')' => i += 1,
            _ => {
                let start = i;
                while i < value.len() && !b" \t\r\n()\"<>@,:;.[]".contains(&value[i]) {
                    i += 1;
                }
                tokens.push(Token::Word(value[start..i].to_vec()));
            }
        }
    }
    merge_dots(tokens)
}

/// Joins `a . b` word sequences into one dot-atom word (`a.b`), as in local parts and
/// domains; a lone dot (obs-phrase) stays a special.
fn merge_dots(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut iter = tokens.into_iter().peekable();
    while let Some(t) = iter.next() {
        let joins = t == Token::Special(b'.')
            && matches!(out.last(), Some(Token::Word(_)))
            && matches!(iter.peek(), Some(Token::Word(_)));
        if joins {
            if let (Some(Token::Word(prev)), Some(Token::Word(next))) =
                (out.last_mut(), iter.next())
            {
                prev.push(b'.');
                prev.extend_from_slice(&next);
            }
            continue;
        }
        out.push(t);
    }
    out
}

/// A comment starting at `value[start] == '('`, nested comments included; its text and the
/// offset after it.
fn read_comment(value: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut depth = 0usize;
    let mut text = Vec::new();
    let mut i = start;
    while i < value.len() {
        let b = value[i];
        match b {
            b'\\' if i + 1 < value.len() => {
                text.push(value[i + 1]);
                i += 2;
                continue;
            }
            b'(' => {
                depth += 1;
                if depth > 1 {
                    text.push(b);
                }
            }
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return (text.trim_ascii().to_vec(), i + 1);
                }
                text.push(b);
            }
            _ => text.push(b),
        }
        i += 1;
    }
    (text.trim_ascii().to_vec(), value.len())
}

/// A quoted string starting at `value[start] == '"'`: its unescaped text and the offset after it.
fn read_quoted(value: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut text = Vec::new();
    let mut i = start + 1;
    while i < value.len() {
        match value[i] {
            b'\\' if i + 1 < value.len() => {
                text.push(value[i + 1]);
                i += 2;
            }
            b'"' => return (text, i + 1),
            b => {
                text.push(b);
                i += 1;
            }
        }
    }
    (text, value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbx(name: Option<&str>, route: Option<&str>, m: &str, h: Option<&str>) -> Item {
        Item::Mailbox {
            name: name.map(|s| s.as_bytes().to_vec()),
            route: route.map(|s| s.as_bytes().to_vec()),
            mailbox: m.as_bytes().to_vec(),
            host: h.map(|s| s.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_stray_closing_parenthesis_ends() {
        // Found by the message_structure fuzz target: this looped, allocating without end.
        let items = parse(b"\x08:C):\x0c\xda");
        assert!(items.len() <= 3, "{items:?}");
        assert_eq!(parse(b") a@b").len(), 1);
    }

    #[test]
    fn mailboxes_names_comments_and_routes() {
        assert_eq!(
            parse(b"From Real <fromuser@fromdomain.org>"),
            vec![mbx(
                Some("From Real"),
                None,
                "fromuser",
                Some("fromdomain.org")
            )]
        );
        assert_eq!(
            parse(b"user@domain (Real Name)"),
            vec![mbx(Some("Real Name"), None, "user", Some("domain"))]
        );
        assert_eq!(
            parse(b"<@route:user@domain>"),
            vec![mbx(None, Some("@route"), "user", Some("domain"))]
        );
        assert_eq!(
            parse(b"\"Doe, John\" <j.doe@ex.example>, bare"),
            vec![
                mbx(Some("Doe, John"), None, "j.doe", Some("ex.example")),
                mbx(None, None, "bare", None)
            ]
        );
        assert!(parse(b"").is_empty());
        assert!(parse(b" , ,").is_empty());
    }

    #[test]
    fn groups_have_start_and_end_markers() {
        let items = parse(b"group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;");
        assert_eq!(
            items,
            vec![
                Item::GroupStart(b"group".to_vec()),
                mbx(None, None, "g1", Some("d1.org")),
                mbx(None, None, "g2", Some("d2.org")),
                Item::GroupEnd,
                Item::GroupStart(b"group2".to_vec()),
                mbx(None, None, "g3", Some("d3.org")),
                Item::GroupEnd,
            ]
        );
        assert_eq!(
            parse(b"undisclosed-recipients:;"),
            vec![
                Item::GroupStart(b"undisclosed-recipients".to_vec()),
                Item::GroupEnd
            ]
        );
    }

    #[test]
    fn junk_never_panics() {
        for junk in [
            &b"<<<@@@:::;;;"[..],
            b"(((",
            b"\"",
            b"@",
            b"a@",
            b"<@a",
            b":;:;",
            b"\\",
        ] {
            let _ = parse(junk);
        }
    }
}
