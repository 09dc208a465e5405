//! Commands of the authenticated state (RFC 3501 §6.3): LIST/LSUB with `*`/`%` wildcards,
//! STATUS, SELECT/EXAMINE, SUBSCRIBE, ENABLE, NAMESPACE, and the refusals of everything that
//! would create folders or add messages (mail arrives by SMTP only).

use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::status::StatusDataItemName;

use super::session::Session;
use super::state::{Authed, Conn};
use super::wire;
use crate::message::{Flags, MessageMeta};
use crate::store::{FolderInfo, StoreError};

impl Session {
    /// Commands of the authenticated (and selected) state. Returns the command back when it
    /// is not one of them.
    pub(super) fn authenticated(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        extra: &super::input::Extra,
    ) -> Result<(), CommandBody<'static>> {
        let select = match &body {
            CommandBody::Select {
                mailbox,
                parameters,
            } => Some((mailbox.clone(), parameters.clone(), false)),
            CommandBody::Examine {
                mailbox,
                parameters,
            } => Some((mailbox.clone(), parameters.clone(), true)),
            _ => None,
        };
        if let Some((mailbox, parameters, examine)) = select {
            self.select(tag, &mailbox, &parameters, examine);
            return Ok(());
        }
        let conn = &mut self.conn;
        let Some(authed) = self.phase.authed() else {
            return Err(body);
        };
        match body {
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for c in capabilities.as_ref() {
                    let name = c.to_string().to_ascii_uppercase();
                    let newly = match name.as_str() {
                        "CONDSTORE" => !std::mem::replace(&mut conn.condstore, true),
                        "QRESYNC" => {
                            conn.condstore = true;
                            !std::mem::replace(&mut conn.qresync, true)
                        }
                        _ => false,
                    };
                    if newly {
                        enabled.push(name);
                    }
                }
                let sep = if enabled.is_empty() { "" } else { " " };
                conn.line(format!("* ENABLED{sep}{}", enabled.join(" ")));
                if let (false, super::state::Phase::Selected(_, s)) =
                    (enabled.is_empty(), &self.phase)
                {
                    // RFC 7162 §3.1: CONDSTORE enabled while a folder is selected.
                    let highest = authed.account.store.highest_modseq(&s.view.folder);
                    let highest = highest.unwrap_or(1).max(1);
                    conn.line(format!("* OK [HIGHESTMODSEQ {highest}] Highest"));
                }
                conn.tagged(tag, "OK ENABLE completed");
            }
            CommandBody::Namespace => {
                conn.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                conn.tagged(tag, "OK NAMESPACE completed");
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                let status = match extra {
                    super::input::Extra::ListStatus(items) => Some(status_items(items)),
                    _ => None,
                };
                let request = ListRequest {
                    verb: "LIST",
                    reference: &reference,
                    pattern: &mailbox_wildcard,
                    status,
                };
                list(conn, authed, tag, request)
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                let request = ListRequest {
                    verb: "LSUB",
                    reference: &reference,
                    pattern: &mailbox_wildcard,
                    status: None,
                };
                list(conn, authed, tag, request)
            }
            CommandBody::Subscribe { mailbox } | CommandBody::Unsubscribe { mailbox } => {
                match resolve(authed, &mailbox) {
                    Some(_) => conn.tagged(tag, "OK Done"),
                    None => conn.tagged(tag, "NO [NONEXISTENT] No such mailbox"),
                }
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => status(conn, authed, tag, &mailbox, &item_names),
            CommandBody::Create { .. }
            | CommandBody::Delete { .. }
            | CommandBody::Rename { .. } => {
                conn.tagged(
                    tag,
                    "NO [NOPERM] Folders are fixed: they cannot be created, deleted or renamed",
                );
            }
            CommandBody::Append { .. } => {
                conn.tagged(tag, "NO [NOPERM] Messages arrive by SMTP only")
            }
            CommandBody::Copy { .. } | CommandBody::Move { .. } => {
                conn.tagged(tag, "NO [NOPERM] Messages cannot be copied or moved here");
            }
            other => return Err(other),
        }
        Ok(())
    }
}

/// The folder an IMAP mailbox name designates, if this account may see it.
pub(super) fn resolve(authed: &Authed, mailbox: &Mailbox<'_>) -> Option<FolderInfo> {
    let name: String = match mailbox {
        Mailbox::Inbox => "INBOX".into(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    };
    authed.account.store.folder(&name)
}

/// The messages, UIDNEXT and UIDVALIDITY of a folder.
pub(super) fn numbers(
    authed: &Authed,
    folder: &FolderInfo,
) -> Result<(Vec<MessageMeta>, u32, u32), StoreError> {
    let store = &authed.account.store;
    let messages = store.list(folder)?;
    let (uidvalidity, uidnext) = store.numbers(folder)?;
    Ok((messages, uidnext, uidvalidity))
}

/// The IMAP form of a folder name: INBOX as an atom, everything else quoted.
pub(super) fn shown(name: &str) -> String {
    match name {
        "INBOX" => name.to_owned(),
        other => wire::quoted(other),
    }
}

fn status(
    conn: &mut Conn,
    authed: &Authed,
    tag: &Tag<'_>,
    mailbox: &Mailbox<'_>,
    items: &[StatusDataItemName],
) {
    let Some(folder) = resolve(authed, mailbox) else {
        conn.tagged(tag, "NO [NONEXISTENT] No such mailbox");
        return;
    };
    match status_line(conn, authed, &folder, items) {
        Ok(line) => {
            conn.line(line);
            conn.tagged(tag, "OK STATUS completed");
        }
        Err(e) => {
            tracing::error!(error = %e, "status failed");
            conn.tagged(tag, "NO [UNAVAILABLE] Cannot read the mailbox");
        }
    }
}

/// The `* STATUS name (...)` line of a folder.
fn status_line(
    conn: &Conn,
    authed: &Authed,
    folder: &FolderInfo,
    items: &[StatusDataItemName],
) -> Result<String, StoreError> {
    let (messages, uidnext, uidvalidity) = numbers(authed, folder)?;
    let count = |flag: Flags, set: bool| {
        messages
            .iter()
            .filter(|m| m.flags.contains(flag) == set)
            .count()
    };
    let mut parts = Vec::new();
    for item in items {
        match item {
            StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", messages.len())),
            StatusDataItemName::Recent => {
                let key = authed.account.store.change_key(folder);
                let mark = conn.state.recent.mark(&key);
                let recent = messages.iter().filter(|m| m.uid > mark).count();
                parts.push(format!("RECENT {recent}"));
            }
            StatusDataItemName::HighestModSeq => {
                let modseq = authed.account.store.highest_modseq(folder).unwrap_or(1);
                parts.push(format!("HIGHESTMODSEQ {}", modseq.max(1)));
            }
            StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {uidnext}")),
            StatusDataItemName::UidValidity => parts.push(format!("UIDVALIDITY {uidvalidity}")),
            StatusDataItemName::Unseen => {
                parts.push(format!("UNSEEN {}", count(Flags::SEEN, false)))
            }
            StatusDataItemName::Deleted => {
                parts.push(format!("DELETED {}", count(Flags::DELETED, true)))
            }
            _ => {}
        }
    }
    Ok(format!(
        "* STATUS {} ({})",
        shown(&folder.name),
        parts.join(" ")
    ))
}

/// LIST-STATUS item names (`MESSAGES UNSEEN ...`); unknown names are left out.
fn status_items(text: &str) -> Vec<StatusDataItemName> {
    text.split_ascii_whitespace()
        .filter_map(|w| match w.to_ascii_uppercase().as_str() {
            "MESSAGES" => Some(StatusDataItemName::Messages),
            "RECENT" => Some(StatusDataItemName::Recent),
            "UIDNEXT" => Some(StatusDataItemName::UidNext),
            "UIDVALIDITY" => Some(StatusDataItemName::UidValidity),
            "UNSEEN" => Some(StatusDataItemName::Unseen),
            "DELETED" => Some(StatusDataItemName::Deleted),
            "HIGHESTMODSEQ" => Some(StatusDataItemName::HighestModSeq),
            _ => None,
        })
        .collect()
}

/// What a LIST or LSUB asks for.
struct ListRequest<'a> {
    verb: &'a str,
    reference: &'a Mailbox<'a>,
    pattern: &'a ListMailbox<'a>,
    /// LIST-STATUS (RFC 5819): STATUS items to send after each selectable folder.
    status: Option<Vec<StatusDataItemName>>,
}

fn list(conn: &mut Conn, authed: &Authed, tag: &Tag<'_>, request: ListRequest<'_>) {
    let ListRequest {
        verb,
        reference,
        pattern,
        status,
    } = request;
    let pattern: Vec<u8> = match pattern {
        ListMailbox::Token(t) => t.as_ref().to_vec(),
        ListMailbox::String(s) => s.as_ref().to_vec(),
    };
    let reference: Vec<u8> = match reference {
        Mailbox::Inbox => b"INBOX".to_vec(),
        Mailbox::Other(o) => o.as_ref().to_vec(),
    };
    if pattern.is_empty() {
        conn.line(format!("* {verb} (\\Noselect) \"/\" \"\""));
    } else {
        let mut full = reference;
        full.extend_from_slice(&pattern);
        let Some(full) = compact_pattern(&full) else {
            conn.tagged(tag, format!("NO [LIMIT] {verb} pattern too long"));
            return;
        };
        let folders = authed.account.store.folders();
        for (name, attributes) in list_entries(&folders) {
            let matches = if name == "INBOX" {
                wildcard_match(&full.to_ascii_uppercase(), b"INBOX")
            } else {
                wildcard_match(&full, name.as_bytes())
            };
            if !matches {
                continue;
            }
            conn.line(format!("* {verb} ({attributes}) \"/\" {}", shown(&name)));
            let folder = folders.iter().find(|f| f.name == name);
            if let (Some(items), Some(folder)) = (&status, folder) {
                match status_line(conn, authed, folder, items) {
                    Ok(line) => conn.line(line),
                    Err(e) => tracing::warn!(error = %e, "list-status: cannot read a folder"),
                }
            }
        }
    }
    conn.tagged(tag, format!("OK {verb} completed"));
}

/// Every name LIST can show, with its attributes: the folders, and their parents
/// (`Users`, `Users/<address>`) as non-selectable.
fn list_entries(folders: &[FolderInfo]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for folder in folders {
        let name = &folder.name;
        let mut parent = String::new();
        for (i, part) in name.split('/').enumerate() {
            if i > 0 {
                parent.push('/');
            }
            parent.push_str(part);
            if parent.len() < name.len() && !out.iter().any(|(n, _)| *n == parent) {
                out.push((parent.clone(), "\\Noselect \\HasChildren".into()));
            }
        }
        let attributes = match folder.special_use {
            Some(s) => format!("\\HasNoChildren {s}"),
            None => "\\HasNoChildren".into(),
        };
        out.push((name.clone(), attributes));
    }
    out
}

/// Longest LIST pattern (reference + mailbox, after runs of wildcards are merged).
const MAX_PATTERN: usize = 255;

/// Merges runs of wildcards (`**` and `%*` match what `*` matches, `%%` what `%` matches),
/// so a pattern of thousands of stars costs what one star costs. None when the result is
/// longer than [`MAX_PATTERN`].
fn compact_pattern(pattern: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(pattern.len().min(MAX_PATTERN));
    for &c in pattern {
        match (out.last().copied(), c) {
            (Some(b'*'), b'*' | b'%') => {}
            (Some(b'%'), b'%') => {}
            (Some(b'%'), b'*') => *out.last_mut().expect("not empty") = b'*',
            _ => out.push(c),
        }
        if out.len() > MAX_PATTERN {
            return None;
        }
    }
    Some(out)
}

/// `*` matches anything, `%` anything but the hierarchy delimiter (RFC 3501 §6.3.8). Runs
/// the pattern as a set of positions over the name once: O(pattern × name), no backtracking.
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let wild = |c: u8| c == b'*' || c == b'%';
    // reach[i]: pattern[..i] matches the name read so far.
    let close = |reach: &mut [bool]| {
        for i in 0..pattern.len() {
            if reach[i] && wild(pattern[i]) {
                reach[i + 1] = true;
            }
        }
    };
    let mut reach = vec![false; pattern.len() + 1];
    reach[0] = true;
    close(&mut reach);
    let mut next = vec![false; pattern.len() + 1];
    for &c in name {
        next.iter_mut().for_each(|b| *b = false);
        for (i, &p) in pattern.iter().enumerate() {
            if !reach[i] {
                continue;
            }
            match p {
                b'*' => next[i] = true,
                b'%' => next[i] |= c != b'/',
                literal => next[i + 1] |= literal == c,
            }
        }
        close(&mut next);
        std::mem::swap(&mut reach, &mut next);
        if !reach.contains(&true) {
            return false;
        }
    }
    reach[pattern.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*", b"INBOX"));
        assert!(wildcard_match(b"%", b"INBOX"));
        assert!(wildcard_match(b"IN*", b"INBOX"));
        assert!(!wildcard_match(b"Trash", b"INBOX"));
        assert!(!wildcard_match(b"%/x", b"INBOX"));
        assert!(wildcard_match(b"Users/%/INBOX", b"Users/a@b.test/INBOX"));
        assert!(!wildcard_match(b"Users/%", b"Users/a@b.test/INBOX"));
        assert!(wildcard_match(b"Users/*", b"Users/a@b.test/INBOX"));
        assert!(wildcard_match(b"*X*", b"aXb"));
        assert!(!wildcard_match(b"a*b*c", b"aXbY"));
        assert!(wildcard_match(b"", b""));
        assert!(!wildcard_match(b"", b"x"));
    }

    #[test]
    fn wildcard_runs_are_merged_and_bounded() {
        let stars = [vec![b'*'; 65_000], b"Z".to_vec()].concat();
        assert_eq!(compact_pattern(&stars).unwrap(), b"*Z");
        assert_eq!(compact_pattern(b"%%a%*%b**").unwrap(), b"%a*b*");
        assert!(compact_pattern(&vec![b'a'; MAX_PATTERN + 1]).is_none());
        let alternating = b"a%".repeat(MAX_PATTERN / 2);
        assert!(compact_pattern(&alternating).is_some());
        assert!(!wildcard_match(&alternating, &b"a".repeat(100)));
        assert!(wildcard_match(&alternating, &b"a".repeat(300)));
    }
}
