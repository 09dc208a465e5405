//! Commands of the authenticated state (RFC 3501 §6.3): LIST/LSUB with `*`/`%` wildcards,
//! STATUS, SELECT/EXAMINE, SUBSCRIBE, ENABLE, NAMESPACE, and the refusals of everything that
//! would create folders or add messages (mail arrives by SMTP only).

use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::status::StatusDataItemName;

use super::session::Session;
use super::state::{Authed, Conn, Phase, Selected};
use super::view::View;
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
    ) -> Result<(), CommandBody<'static>> {
        let select = match &body {
            CommandBody::Select { mailbox, .. } => Some((mailbox.clone(), false)),
            CommandBody::Examine { mailbox, .. } => Some((mailbox.clone(), true)),
            _ => None,
        };
        if let Some((mailbox, examine)) = select {
            self.select(tag, &mailbox, examine);
            return Ok(());
        }
        let conn = &mut self.conn;
        let Some(authed) = self.phase.authed() else {
            return Err(body);
        };
        match body {
            CommandBody::Enable { .. } => {
                conn.line("* ENABLED");
                conn.tagged(tag, "OK ENABLE completed");
            }
            CommandBody::Namespace => {
                conn.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                conn.tagged(tag, "OK NAMESPACE completed");
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => list(conn, authed, tag, "LIST", &reference, &mailbox_wildcard),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => list(conn, authed, tag, "LSUB", &reference, &mailbox_wildcard),
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

    /// SELECT and EXAMINE: the folder's numbers, then the selected state.
    fn select(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, examine: bool) {
        self.phase.deselect();
        let Phase::Authenticated(authed) =
            std::mem::replace(&mut self.phase, Phase::NotAuthenticated)
        else {
            unreachable!("SELECT is dispatched only when logged in")
        };
        let opened = match resolve(&authed, mailbox) {
            Some(folder) => match numbers(&authed, &folder) {
                Ok(n) => Ok((folder, n)),
                Err(e) => {
                    tracing::error!(error = %e, "select failed");
                    Err("NO [UNAVAILABLE] Cannot open the mailbox")
                }
            },
            None => Err("NO [NONEXISTENT] No such mailbox"),
        };
        let (folder, (messages, uidnext, uidvalidity)) = match opened {
            Ok(o) => o,
            Err(text) => {
                self.conn.tagged(tag, text);
                self.phase = Phase::Authenticated(authed);
                return;
            }
        };
        let read_only = examine || folder.read_only;
        authed.account.store.opened(&folder);
        let view = View {
            folder,
            read_only,
            messages,
        };
        announce(&mut self.conn, &view, uidnext, uidvalidity);
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        self.conn
            .tagged(tag, format!("OK [{mode}] {verb} completed"));
        let selected = Selected { view, dirty: false };
        self.phase = Phase::Selected(authed, selected);
    }
}

/// The untagged responses of SELECT/EXAMINE.
fn announce(conn: &mut Conn, view: &View, uidnext: u32, uidvalidity: u32) {
    let all = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
    conn.line(format!("* FLAGS ({all})"));
    if view.read_only {
        conn.line("* OK [PERMANENTFLAGS ()] Read-only mailbox");
    } else {
        conn.line(format!("* OK [PERMANENTFLAGS ({all})] Flags permitted"));
    }
    conn.line(format!("* {} EXISTS", view.exists()));
    conn.line("* 0 RECENT");
    if let Some(i) = view
        .messages
        .iter()
        .position(|m| !m.flags.contains(Flags::SEEN))
    {
        conn.line(format!("* OK [UNSEEN {}] First unseen", i + 1));
    }
    conn.line(format!("* OK [UIDVALIDITY {uidvalidity}] UIDs valid"));
    conn.line(format!(
        "* OK [UIDNEXT {}] Predicted next UID",
        uidnext.max(view.uidnext_at_least())
    ));
}

/// The folder an IMAP mailbox name designates, if this account may see it.
fn resolve(authed: &Authed, mailbox: &Mailbox<'_>) -> Option<FolderInfo> {
    let name: String = match mailbox {
        Mailbox::Inbox => "INBOX".into(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    };
    authed.account.store.folder(&name)
}

/// The messages, UIDNEXT and UIDVALIDITY of a folder.
fn numbers(
    authed: &Authed,
    folder: &FolderInfo,
) -> Result<(Vec<MessageMeta>, u32, u32), StoreError> {
    let store = &authed.account.store;
    let messages = store.list(folder)?;
    let (uidvalidity, uidnext) = store.numbers(folder)?;
    Ok((messages, uidnext, uidvalidity))
}

/// The IMAP form of a folder name: INBOX as an atom, everything else quoted.
fn shown(name: &str) -> String {
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
    let (messages, uidnext, uidvalidity) = match numbers(authed, &folder) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "status failed");
            conn.tagged(tag, "NO [UNAVAILABLE] Cannot read the mailbox");
            return;
        }
    };
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
            StatusDataItemName::Recent => parts.push("RECENT 0".into()),
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
    conn.line(format!(
        "* STATUS {} ({})",
        shown(&folder.name),
        parts.join(" ")
    ));
    conn.tagged(tag, "OK STATUS completed");
}

fn list(
    conn: &mut Conn,
    authed: &Authed,
    tag: &Tag<'_>,
    verb: &str,
    reference: &Mailbox<'_>,
    pattern: &ListMailbox<'_>,
) {
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
        for (name, attributes) in list_entries(&authed.account.store.folders()) {
            let matches = if name == "INBOX" {
                wildcard_match(&full.to_ascii_uppercase(), b"INBOX")
            } else {
                wildcard_match(&full, name.as_bytes())
            };
            if matches {
                conn.line(format!("* {verb} ({attributes}) \"/\" {}", shown(&name)));
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
