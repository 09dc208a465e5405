//! SELECT and EXAMINE (RFC 3501 §6.3.1–2): the folder's flags, counts, `\Recent` claim and
//! numbers, with the CONDSTORE and QRESYNC parameters of RFC 7162 (HIGHESTMODSEQ, and on
//! QRESYNC the messages expunged and changed since the client's modseq).

use std::num::{NonZeroU32, NonZeroU64};

use imap_codec::imap_types::command::SelectParameter;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::SequenceSet;

use super::mailboxes::{numbers, resolve};
use super::session::Session;
use super::state::{flag_announcements, Conn, Phase, Selected};
use super::view::{Ranges, View};
use super::wire;
use crate::message::Flags;

/// What a QRESYNC parameter asks for.
struct Resync {
    uidvalidity: NonZeroU32,
    since: NonZeroU64,
    known: Option<SequenceSet>,
}

impl Session {
    /// SELECT and EXAMINE: the folder's numbers, then the selected state.
    pub(super) fn select(
        &mut self,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        parameters: &[SelectParameter],
        examine: bool,
    ) {
        if matches!(self.phase, Phase::Selected(..)) {
            // RFC 7162 §3.2.11: the old folder's updates end here.
            self.conn.line("* OK [CLOSED] Previous mailbox closed");
        }
        self.phase.deselect();
        let Phase::Authenticated(authed) =
            std::mem::replace(&mut self.phase, Phase::NotAuthenticated)
        else {
            unreachable!("SELECT is dispatched only when logged in")
        };
        let resync = match self.parameters(parameters) {
            Ok(r) => r,
            Err(text) => {
                self.conn.bad(tag, text);
                self.phase = Phase::Authenticated(authed);
                return;
            }
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
        let store = authed.account.store.clone();
        let read_only = examine || (folder.read_only && !folder.keeps_flags);
        store.opened(&folder);
        let highest = store.highest_modseq(&folder).unwrap_or(1).max(1);
        let mut view = View::new(folder, read_only, messages);
        view.keywords = store.keywords(&view.folder);
        view.condstore = self.conn.condstore;
        view.qresync = self.conn.qresync;
        let mut selected = Selected {
            view,
            dirty: false,
            contexts: Default::default(),
        };
        if let Some(newest) = selected.view.messages.last().map(|m| m.uid) {
            selected.claim_recent(&self.conn, &authed, newest);
        }
        announce(
            &mut self.conn,
            &selected.view,
            uidnext,
            uidvalidity,
            highest,
        );
        if let Some(r) = resync.filter(|r| r.uidvalidity.get() == uidvalidity) {
            resynchronise(&mut self.conn, &selected.view, &r, uidnext);
        }
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let verb = if examine { "EXAMINE" } else { "SELECT" };
        self.conn
            .tagged(tag, format!("OK [{mode}] {verb} completed"));
        self.phase = Phase::Selected(authed, Box::new(selected));
    }

    /// Reads the RFC 7162 parameters; CONDSTORE turns CONDSTORE on for the session.
    fn parameters(
        &mut self,
        parameters: &[SelectParameter],
    ) -> Result<Option<Resync>, &'static str> {
        let mut resync = None;
        for p in parameters {
            match p {
                SelectParameter::CondStore => self.conn.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.conn.qresync {
                        return Err("QRESYNC is not enabled");
                    }
                    resync = Some(Resync {
                        uidvalidity: *uid_validity,
                        since: *mod_sequence_value,
                        known: known_uids.clone(),
                    });
                }
            }
        }
        Ok(resync)
    }
}

/// The untagged responses of SELECT/EXAMINE.
fn announce(conn: &mut Conn, view: &View, uidnext: u32, uidvalidity: u32, highest: u64) {
    for line in flag_announcements(view) {
        conn.line(line);
    }
    conn.line(format!("* {} EXISTS", view.exists()));
    conn.line(format!("* {} RECENT", view.recent.len()));
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
    conn.line(format!("* OK [HIGHESTMODSEQ {highest}] Highest"));
}

/// QRESYNC: the known UIDs that are gone (this server keeps no expunge history, so every
/// known UID that is not here is reported, which RFC 7162 allows), then every message
/// changed since the client's modseq.
fn resynchronise(conn: &mut Conn, view: &View, resync: &Resync, uidnext: u32) {
    let last = uidnext.saturating_sub(1);
    let known = resync
        .known
        .as_ref()
        .map(|set| Ranges::new(set, last.max(1)));
    let present: std::collections::HashSet<u32> = view.messages.iter().map(|m| m.uid).collect();
    let gone = (1..=last)
        .filter(|uid| !present.contains(uid) && known.as_ref().is_none_or(|k| k.contains(*uid)));
    let gone = wire::number_set(gone);
    if !gone.is_empty() {
        conn.line(format!("* VANISHED (EARLIER) {gone}"));
    }
    for (i, m) in view.messages.iter().enumerate() {
        if m.modseq > resync.since.get() {
            conn.line(view.flag_update(i + 1, m, true));
        }
    }
}
