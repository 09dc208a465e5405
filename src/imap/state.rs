//! The state every IMAP command handler works on: the connection's output and error count
//! ([`Conn`]), the RFC 3501 session states ([`Phase`]) with the logged-in account and the
//! selected folder, and the per-login session count.

use std::net::SocketAddr;
use std::sync::Arc;

use imap_codec::imap_types::core::Tag;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use super::view::View;
use crate::accounts::Account;
use crate::context::State;
use crate::message::MessageMeta;
use crate::net::Stream;
use crate::store::ChangeKey;

pub(super) const CAPS_COMMON: &str = "LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT \
     CHILDREN SPECIAL-USE BINARY CONDSTORE QRESYNC ESEARCH SORT SORT=DISPLAY ESORT \
     THREAD=REFERENCES THREAD=ORDEREDSUBJECT LIST-EXTENDED LIST-STATUS CONTEXT=SEARCH \
     CONTEXT=SORT";
/// Output is sent once this much is buffered.
pub(super) const FLUSH_AT: usize = 256 * 1024;

/// The connection side every handler writes to.
pub(super) struct Conn {
    pub peer: SocketAddr,
    pub state: Arc<State>,
    pub tls: bool,
    out: Vec<u8>,
    pub errors: u32,
    /// RFC 7162: CONDSTORE was enabled (ENABLE, or a command that uses it).
    pub condstore: bool,
    /// RFC 7162: QRESYNC was enabled (implies CONDSTORE).
    pub qresync: bool,
}

impl Conn {
    pub fn new(peer: SocketAddr, state: Arc<State>) -> Conn {
        Conn {
            peer,
            state,
            tls: false,
            out: Vec::new(),
            errors: 0,
            condstore: false,
            qresync: false,
        }
    }

    pub fn capabilities(&self, logged_in: bool) -> String {
        match (self.tls, logged_in) {
            (false, false) => format!("IMAP4rev1 STARTTLS LOGINDISABLED {CAPS_COMMON}"),
            (true, false) => format!("IMAP4rev1 AUTH=PLAIN SASL-IR {CAPS_COMMON}"),
            (_, true) => format!("IMAP4rev1 {CAPS_COMMON}"),
        }
    }

    pub fn line(&mut self, text: impl AsRef<str>) {
        self.state
            .trace
            .line("imap", self.peer, "S", text.as_ref().as_bytes());
        self.out.extend_from_slice(text.as_ref().as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Where the last complete line of the pending output starts (the end when none is
    /// pending): untagged responses that must precede a command's completion go there.
    pub fn last_line_start(&self) -> usize {
        let Some(body) = self.out.strip_suffix(b"\r\n") else {
            return self.out.len();
        };
        memchr::memmem::rfind(body, b"\r\n").map_or(0, |at| at + 2)
    }

    /// Writes lines into the pending output at `at` (from [`Conn::last_line_start`]).
    pub fn insert_lines(&mut self, at: usize, lines: &[String]) {
        let mut bytes = Vec::new();
        for line in lines {
            self.state
                .trace
                .line("imap", self.peer, "S", line.as_bytes());
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        let at = at.min(self.out.len());
        self.out.splice(at..at, bytes);
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    pub fn tagged(&mut self, tag: &Tag<'_>, text: impl AsRef<str>) {
        let line = format!("{} {}", tag.as_ref(), text.as_ref());
        self.line(line);
    }

    pub fn bad(&mut self, tag: &Tag<'_>, text: &str) {
        self.errors += 1;
        self.tagged(tag, format!("BAD {text}"));
    }

    pub async fn flush(&mut self, stream: &mut Stream) -> std::io::Result<()> {
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
        }
        stream.flush().await
    }
}

/// A logged-in account and what the session holds for it.
pub(super) struct Authed {
    pub account: Account,
    pub changes: broadcast::Receiver<ChangeKey>,
    _guard: CountGuard,
}

impl Authed {
    pub fn new(account: Account, guard: CountGuard) -> Authed {
        Authed {
            changes: account.store.watch(),
            account,
            _guard: guard,
        }
    }
}

/// The selected folder.
pub(super) struct Selected {
    pub view: View,
    /// A change notification for this folder arrived since the last sync.
    pub dirty: bool,
    /// Updating SEARCH and SORT results (RFC 5267).
    pub contexts: super::contexts::Contexts,
}

impl Selected {
    /// Brings the view up to date and queues the untagged responses (expunges only when
    /// `allow_expunge`; otherwise they stay owed and the view stays dirty).
    pub fn sync(&mut self, conn: &mut Conn, authed: &Authed, allow_expunge: bool) {
        if !self.dirty {
            return;
        }
        let store = &authed.account.store;
        let current = match store.list(&self.view.folder) {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list mailbox");
                return;
            }
        };
        self.refresh_keywords(conn, authed, &current);
        self.view.condstore |= conn.condstore;
        self.view.qresync |= conn.qresync;
        if allow_expunge && !self.contexts.is_empty() {
            let gone = self.view.gone(&current);
            if !gone.is_empty() {
                self.contexts.expunging(&self.view, &gone, &mut conn.out);
            }
        }
        let synced = self.view.sync(&current, allow_expunge, &mut conn.out);
        let touched = synced.new.iter().chain(&synced.changed).copied();
        self.contexts.touch(touched);
        self.dirty = !allow_expunge;
        if let Some(&newest) = synced.new.last() {
            self.claim_recent(conn, authed, newest);
            conn.line(format!("* {} RECENT", self.view.recent.len()));
        }
    }

    /// Turns CONDSTORE on for a command that uses it; the first time while a folder is
    /// selected, tells the folder's HIGHESTMODSEQ (RFC 7162 §3.1).
    pub fn enable_condstore(&mut self, conn: &mut Conn, authed: &Authed) {
        self.view.condstore = true;
        if std::mem::replace(&mut conn.condstore, true) {
            return;
        }
        let highest = authed
            .account
            .store
            .highest_modseq(&self.view.folder)
            .unwrap_or(1);
        conn.line(format!("* OK [HIGHESTMODSEQ {}] Highest", highest.max(1)));
    }

    /// Takes the `\Recent` messages up to `newest` that no other session has taken yet.
    /// A read-only view (EXAMINE) sees the unclaimed ones without taking them (RFC 3501
    /// §6.3.2).
    pub fn claim_recent(&mut self, conn: &Conn, authed: &Authed, newest: u32) {
        let key = authed.account.store.change_key(&self.view.folder);
        let mark = if self.view.read_only {
            conn.state.recent.mark(&key)
        } else {
            conn.state.recent.claim(&key, newest)
        };
        self.view.recent.extend(
            self.view
                .messages
                .iter()
                .map(|m| m.uid)
                .filter(|uid| *uid > mark && *uid <= newest),
        );
    }

    /// Re-reads the keyword table when a message carries a keyword the view does not know,
    /// and announces the new FLAGS and PERMANENTFLAGS.
    fn refresh_keywords(&mut self, conn: &mut Conn, authed: &Authed, current: &[MessageMeta]) {
        let known = self.view.keywords.len();
        if !current
            .iter()
            .any(|m| m.flags.keywords().any(|k| k >= known))
        {
            return;
        }
        self.view.keywords = authed.account.store.keywords(&self.view.folder);
        for line in flag_announcements(&self.view) {
            conn.line(line);
        }
    }
}

/// The untagged FLAGS and PERMANENTFLAGS lines of a view.
pub(super) fn flag_announcements(view: &View) -> [String; 2] {
    let keywords = view.keywords.join(" ");
    let sep = if keywords.is_empty() { "" } else { " " };
    let system = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
    let flags = format!("* FLAGS ({system}{sep}{keywords})");
    let permanent = if !view.flags_writable() {
        "* OK [PERMANENTFLAGS ()] Read-only mailbox".to_owned()
    } else {
        let system = match view.folder.read_only {
            true => "\\Answered \\Flagged \\Seen \\Draft",
            false => system,
        };
        let more = match view.keywords.len() < crate::message::MAX_KEYWORDS {
            true => " \\*",
            false => "",
        };
        format!("* OK [PERMANENTFLAGS ({system}{sep}{keywords}{more})] Flags permitted")
    };
    [flags, permanent]
}

/// RFC 3501 §3: the session states.
pub(super) enum Phase {
    NotAuthenticated,
    Authenticated(Authed),
    Selected(Authed, Box<Selected>),
}

impl Phase {
    pub fn authed(&self) -> Option<&Authed> {
        match self {
            Phase::NotAuthenticated => None,
            Phase::Authenticated(a) | Phase::Selected(a, _) => Some(a),
        }
    }

    /// Leaves the selected state (CLOSE, UNSELECT, a failed SELECT).
    pub fn deselect(&mut self) {
        if let Phase::Selected(..) = self {
            let Phase::Selected(authed, _) = std::mem::replace(self, Phase::NotAuthenticated)
            else {
                unreachable!()
            };
            *self = Phase::Authenticated(authed);
        }
    }
}

/// What the command loop does next.
pub(super) enum Flow {
    Continue,
    StartTls,
    Logout,
}

/// One open session of a login, counted against `max_sessions_per_mailbox`.
pub(super) struct CountGuard {
    state: Arc<State>,
    id: String,
}

impl CountGuard {
    /// Takes one session of `id`, or None when it has `max_sessions_per_mailbox` already
    /// (`force` ignores the limit, for PREAUTH).
    pub(super) fn take(state: &Arc<State>, id: &str, force: bool) -> Option<CountGuard> {
        let mut counts = state.imap_sessions.lock().unwrap();
        let n = counts.entry(id.to_owned()).or_insert(0);
        if *n >= state.config.imap.max_sessions_per_mailbox && !force {
            return None;
        }
        *n += 1;
        Some(CountGuard {
            state: state.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        let mut counts = self.state.imap_sessions.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.id);
            }
        }
    }
}
