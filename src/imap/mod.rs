//! IMAP access to gateway mailboxes (RFC 3501; IDLE 2177, UIDPLUS 4315, LITERAL+ 7888,
//! ID 2971, ENABLE 5161, NAMESPACE 2342, UNSELECT 3691, SASL-IR 4959, BINARY 3516).
//!
//! Commands are framed and parsed by imap-next / imap-codec (literals, AUTHENTICATE, IDLE);
//! responses are written here so that large message literals stream from the spool.
//!
//! Two kinds of login: a gateway mailbox (`mbx-...`) has one folder, `INBOX`, read and
//! delete; an archive user (their address) sees their read-only archive folders (`INBOX`,
//! `Sent`; auditors also `Users/<address>/...` and `Unknown Addresses`). Logins are refused
//! before TLS.

mod fetch;
pub mod mime;
mod search;
mod view;
mod wire;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{CommandContinuationRequest, Status};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::CommandCodec;
use imap_next::server::{Error as ServerError, Event, Options, Server};
use imap_next::{Interrupt, Io, State as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use crate::auth::{AuthError, Session as Login, UserSession};
use crate::mailbox::MailboxId;
use crate::net::{self, Stream};
use crate::server::{self, State};
use crate::spool::{Flags, MessageMeta, SpoolError};
use fetch::{Chunk, Content};
use view::{Folder, View};

/// Before login a client gets this long per command.
const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_ERRORS: u32 = 30;
/// Output is sent once this much is buffered.
const FLUSH_AT: usize = 256 * 1024;
/// FETCH decrypts following messages ahead while this much is not yet sent.
const PREFETCH_BYTES: u64 = 4 * 1024 * 1024;

const CAPS_COMMON: &str =
    "LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT CHILDREN SPECIAL-USE BINARY";

/// Accepts IMAP connections until shutdown; `implicit_tls` for port 993.
pub async fn run(listener: TcpListener, implicit_tls: bool, state: Arc<State>) {
    let how = server::Listener {
        protocol: if implicit_tls { "imaps" } else { "imap" },
        implicit_tls,
        limit: state.imap_limit.clone(),
        busy: b"* BYE [UNAVAILABLE] Too many connections\r\n",
    };
    server::accept_loop(listener, how, state, |stream, peer, state| {
        serve_connection(stream, peer, state, None)
    })
    .await
}

/// Runs one IMAP session on an accepted (and, for implicit TLS, handshaken) stream.
/// With `preauth`, the session starts logged in (RFC 3501 `PREAUTH` greeting); tests and
/// the fuzz target use that to reach the selected state without a password hash per run.
pub async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    state: Arc<State>,
    preauth: Option<Login>,
) -> std::io::Result<()> {
    let mut session = Session::new(peer, state);
    if let Some(login) = preauth {
        session.open_login(login);
    }
    session.handle(stream).await
}

/// Session counts per mailbox (or archive user), for `max_sessions_per_mailbox`.
pub type SessionCounts = Mutex<HashMap<String, usize>>;

struct CountGuard {
    state: Arc<State>,
    id: String,
}

impl CountGuard {
    /// Takes one session of `id`, or None when it has `max_sessions_per_mailbox` already.
    fn take(state: &Arc<State>, id: &str) -> Option<CountGuard> {
        let mut counts = state.imap_sessions.lock().unwrap();
        let n = counts.entry(id.to_owned()).or_insert(0);
        if *n >= state.config.imap.max_sessions_per_mailbox {
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

/// Who is logged in.
enum Account {
    Gateway(Login),
    Archive(UserSession),
}

/// Opens messages of the selected folder (cloned into blocking tasks).
#[derive(Clone)]
enum Opener {
    Gateway {
        spool: Arc<crate::spool::Spool>,
        id: MailboxId,
        identity: crate::crypto::Identity,
    },
    Archive {
        archive: Arc<crate::archive::Archive>,
        key: String,
        identity: crate::crypto::Identity,
    },
}

impl Opener {
    /// A reader of the message bytes. Blocking.
    fn open(&self, meta: &MessageMeta) -> Result<Box<dyn Read + Send>, SpoolError> {
        match self {
            Opener::Gateway {
                spool,
                id,
                identity,
            } => Ok(Box::new(spool.open_message(id, meta, identity)?)),
            Opener::Archive {
                archive,
                key,
                identity,
            } => match archive.open_message(key, meta.uid, identity) {
                Ok(r) => Ok(Box::new(r)),
                Err(crate::archive::ArchiveError::NoSuchMessage) => Err(SpoolError::NoSuchMessage),
                Err(e) => Err(SpoolError::Io(std::io::Error::other(e.to_string()))),
            },
        }
    }
}

/// What the command loop does next.
enum Flow {
    Continue,
    StartTls,
    Logout,
}

struct Session {
    peer: SocketAddr,
    state: Arc<State>,
    tls: bool,
    login: Option<(Account, Option<CountGuard>)>,
    view: Option<View>,
    changes: Option<broadcast::Receiver<String>>,
    /// A change notification for the selected mailbox arrived since the last sync.
    dirty: bool,
    out: Vec<u8>,
    errors: u32,
    /// Tag of the AUTHENTICATE exchange under way.
    auth_tag: Option<Tag<'static>>,
    /// Tag of the IDLE under way.
    idling: Option<Tag<'static>>,
    /// imap-next outputs to drop (its greeting, statuses replaced by our own lines).
    suppress: usize,
    /// Last bytes of the previous read, for [`Session::oversized_literal`].
    tail: Vec<u8>,
}

impl Session {
    fn new(peer: SocketAddr, state: Arc<State>) -> Session {
        Session {
            peer,
            state,
            tls: false,
            login: None,
            view: None,
            changes: None,
            dirty: false,
            out: Vec::new(),
            errors: 0,
            auth_tag: None,
            idling: None,
            suppress: 0,
            tail: Vec::new(),
        }
    }

    fn new_server(&self) -> Server {
        let mut options = Options::default();
        let max = self.state.config.imap.max_command_size.max(1024);
        options.crlf_relaxed = true;
        options.max_literal_size = max;
        // `max` octets of command (literals included) plus the CRLF.
        options.max_command_size = max.saturating_add(2);
        let greeting =
            imap_codec::imap_types::response::Greeting::ok(None, "journalgate IMAP ready")
                .expect("valid greeting");
        Server::new(options, greeting)
    }

    fn capabilities(&self) -> String {
        match (self.tls, self.login.is_some()) {
            (false, false) => format!("IMAP4rev1 STARTTLS LOGINDISABLED {CAPS_COMMON}"),
            (true, false) => format!("IMAP4rev1 AUTH=PLAIN SASL-IR {CAPS_COMMON}"),
            (_, true) => format!("IMAP4rev1 {CAPS_COMMON}"),
        }
    }

    fn line(&mut self, text: impl AsRef<str>) {
        self.out.extend_from_slice(text.as_ref().as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn tagged(&mut self, tag: &Tag<'_>, text: impl AsRef<str>) {
        let line = format!("{} {}", tag.as_ref(), text.as_ref());
        self.line(line);
    }

    fn bad(&mut self, tag: &Tag<'_>, text: &str) {
        self.errors += 1;
        self.tagged(tag, format!("BAD {text}"));
    }

    async fn flush(&mut self, stream: &mut Stream) -> std::io::Result<()> {
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
        }
        stream.flush().await
    }

    async fn handle(&mut self, mut stream: Stream) -> std::io::Result<()> {
        self.tls = stream.is_tls();
        let mut server = self.new_server();
        self.suppress = 1;
        let greeting = format!(
            "* {} [CAPABILITY {}] journalgate IMAP ready",
            if self.login.is_some() {
                "PREAUTH"
            } else {
                "OK"
            },
            self.capabilities()
        );
        self.line(greeting);
        let mut buf = vec![0u8; 64 * 1024];
        let mut shutdown = self.state.shutdown.clone();
        loop {
            if self.errors >= MAX_ERRORS {
                self.line("* BYE Too many errors");
                self.flush(&mut stream).await?;
                return Ok(());
            }
            match server.next() {
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    if self.suppress > 0 {
                        self.suppress -= 1;
                    } else {
                        self.out.extend_from_slice(&bytes);
                    }
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    self.flush(&mut stream).await?;
                    let n = match self
                        .wait_input(&mut stream, &mut buf, &mut shutdown)
                        .await?
                    {
                        Some(n) => n,
                        None => {
                            self.flush(&mut stream).await?;
                            return Ok(());
                        }
                    };
                    if self.oversized_literal(&buf[..n]) {
                        // A non-synchronising literal over the limit: the client is already
                        // sending it, so the only safe answer is to end the session (RFC 7888 §4).
                        self.line("* BYE [TOOBIG] Literal exceeds the maximum command size");
                        self.flush(&mut stream).await?;
                        return Ok(());
                    }
                    server.enqueue_input(&buf[..n]);
                }
                Err(Interrupt::Error(e)) => {
                    if let Some(command) = self.bad_input(e) {
                        if let Flow::Logout = self.command(command, &mut stream).await? {
                            self.flush(&mut stream).await?;
                            return Ok(());
                        }
                    }
                }
                Ok(Event::GreetingSent { .. }) | Ok(Event::ResponseSent { .. }) => {}
                Ok(Event::CommandReceived { command }) => {
                    match self.command(command, &mut stream).await? {
                        Flow::Continue => {}
                        Flow::Logout => {
                            self.flush(&mut stream).await?;
                            return Ok(());
                        }
                        Flow::StartTls => {
                            self.flush(&mut stream).await?;
                            // Anything pipelined after STARTTLS is dropped with the old parser.
                            stream = stream
                                .upgrade(&self.state.tls, net::TLS_HANDSHAKE_TIMEOUT)
                                .await?;
                            self.tls = true;
                            server = self.new_server();
                            self.suppress = 1;
                        }
                    }
                }
                Ok(Event::CommandAuthenticateReceived {
                    command_authenticate,
                }) => {
                    let a = command_authenticate;
                    self.authenticate_start(
                        &mut server,
                        a.tag,
                        a.mechanism,
                        a.initial_response.map(|s| s.declassify().to_vec()),
                    )
                    .await;
                }
                Ok(Event::AuthenticateDataReceived { authenticate_data }) => {
                    let data = match authenticate_data {
                        AuthenticateData::Continue(s) => Some(s.declassify().to_vec()),
                        AuthenticateData::Cancel => None,
                    };
                    self.authenticate_finish(&mut server, data).await;
                }
                Ok(Event::IdleCommandReceived { tag }) => self.idle_start(&mut server, tag).await,
                Ok(Event::IdleDoneReceived) => {
                    if let Some(tag) = self.idling.take() {
                        self.tagged(&tag, "OK IDLE terminated");
                    }
                }
            }
            if self.out.len() >= FLUSH_AT {
                self.flush(&mut stream).await?;
            }
        }
    }

    /// Reads client input; while IDLE, also sends mailbox updates as they happen.
    async fn wait_input(
        &mut self,
        stream: &mut Stream,
        buf: &mut [u8],
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Option<usize>> {
        let timeout = if self.login.is_some() {
            Duration::from_secs(self.state.config.imap.idle_timeout_secs)
        } else {
            PRE_AUTH_TIMEOUT
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *shutdown.borrow() {
                self.line("* BYE Server shutting down");
                return Ok(None);
            }
            let idling = self.idling.is_some();
            let changes = self.changes.as_mut();
            tokio::select! {
                read = tokio::time::timeout_at(deadline, stream.read(buf)) => {
                    return match read {
                        Ok(Ok(0)) => Ok(None),
                        Ok(Ok(n)) => Ok(Some(n)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => {
                            self.line("* BYE Autologout; idle for too long");
                            Ok(None)
                        }
                    };
                }
                _ = shutdown.changed() => continue,
                change = async {
                    match changes {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mine = match (&change, &self.view) {
                        (Ok(key), Some(v)) => *key == v.mailbox.change_key(),
                        (Err(broadcast::error::RecvError::Lagged(_)), Some(_)) => true,
                        _ => false,
                    };
                    if mine && !self.login_still_valid() {
                        self.line("* BYE [UNAVAILABLE] The mailbox password was reset; log in again");
                        return Ok(None);
                    }
                    if mine {
                        self.dirty = true;
                        if idling {
                            self.sync(true);
                            self.flush(stream).await?;
                        }
                    }
                }
            }
        }
    }

    /// Looks for a `{N+}` literal announcement larger than the limit in new input (with the
    /// tail of the previous read, so an announcement split across reads is seen too).
    fn oversized_literal(&mut self, input: &[u8]) -> bool {
        let max = u64::from(self.state.config.imap.max_command_size.max(1024));
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(input);
        let found = find_literal_plus(&window).any(|n| n > max);
        let keep = window.len().saturating_sub(24);
        self.tail = window.split_off(keep);
        found
    }

    /// Answers input imap-codec could not parse. Returns a command when the input was a
    /// LIST-EXTENDED form this server rewrites into a plain LIST.
    fn bad_input(&mut self, error: ServerError) -> Option<Command<'static>> {
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
                self.errors += 1;
                return None;
            }
        };
        if let Some(command) = rewrite_list_extended(&bytes) {
            return Some(command);
        }
        self.errors += 1;
        match tag_of(&bytes) {
            Some(tag) => self.line(format!("{tag} BAD {what}")),
            None => self.line(format!("* BAD {what}")),
        }
        None
    }

    async fn authenticate_start(
        &mut self,
        server: &mut Server,
        tag: Tag<'static>,
        mechanism: AuthMechanism<'static>,
        initial: Option<Vec<u8>>,
    ) {
        let refusal = if !self.tls {
            Some("NO [PRIVACYREQUIRED] Authentication requires TLS; use STARTTLS first")
        } else if self.login.is_some() {
            Some("BAD Already authenticated")
        } else if mechanism != AuthMechanism::Plain {
            Some("NO [CANNOT] Only AUTHENTICATE PLAIN is supported")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.finish_with(server, &tag, text);
            return;
        }
        self.auth_tag = Some(tag);
        match initial {
            Some(data) => self.authenticate_finish(server, Some(data)).await,
            None => {
                let _ =
                    server.authenticate_continue(CommandContinuationRequest::base64(Vec::new()));
            }
        }
    }

    async fn authenticate_finish(&mut self, server: &mut Server, data: Option<Vec<u8>>) {
        let Some(tag) = self.auth_tag.take() else {
            return;
        };
        let Some(data) = data else {
            self.finish_with(server, &tag, "BAD Authentication cancelled");
            return;
        };
        let reply = match crate::auth::parse_sasl_plain(&data) {
            Some((user, password)) => self.login(&user, &password).await,
            None => "NO [AUTHENTICATIONFAILED] Invalid SASL PLAIN response".to_owned(),
        };
        self.finish_with(server, &tag, &reply);
    }

    /// Ends an AUTHENTICATE exchange in imap-next and writes our own tagged line instead.
    fn finish_with(&mut self, server: &mut Server, tag: &Tag<'static>, text: &str) {
        let dummy = Status::no(Some(tag.clone()), None, "x").expect("valid status");
        if server.authenticate_finish(dummy).is_ok() {
            self.suppress += 1;
        }
        if text.starts_with("BAD") || text.starts_with("NO") {
            self.errors += 1;
        }
        self.tagged(tag, text);
    }

    async fn idle_start(&mut self, server: &mut Server, tag: Tag<'static>) {
        if self.login.is_none() {
            let dummy = Status::bad(Some(tag.clone()), None, "x").expect("valid status");
            if server.idle_reject(dummy).is_ok() {
                self.suppress += 1;
            }
            self.bad(&tag, "Not logged in");
            return;
        }
        let cont = CommandContinuationRequest::basic(None, "idling").expect("valid text");
        let _ = server.idle_accept(cont);
        self.idling = Some(tag);
        self.dirty = true;
        self.sync(true);
    }

    /// Checks a login and opens the session. Returns the tagged reply text.
    async fn login(&mut self, user: &str, password: &str) -> String {
        let domain = self.state.config.domain();
        let gateway = match user.split_once('@') {
            Some((local, d))
                if d.eq_ignore_ascii_case(&domain) && MailboxId::parse(local).is_ok() =>
            {
                Some(local.to_owned())
            }
            Some(_) if self.state.archive.is_some() => None,
            Some(_) => Some(String::new()),
            None => Some(user.to_owned()),
        };
        let Some(user_id) = gateway else {
            return self.login_archive(user, password).await;
        };
        let login = match self
            .state
            .auth
            .login(self.peer.ip(), &user_id, password)
            .await
        {
            Ok(l) => l,
            Err(AuthError::Invalid) => {
                tracing::info!(client = %self.peer, "imap login failed");
                return "NO [AUTHENTICATIONFAILED] Invalid mailbox ID or password".into();
            }
            Err(AuthError::Temporary(e)) => {
                tracing::error!(client = %self.peer, error = %e, "imap login could not be checked");
                return "NO [UNAVAILABLE] Temporary failure, try again later".into();
            }
        };
        let id = login.record.id.clone();
        let Some(guard) = CountGuard::take(&self.state, id.as_str()) else {
            tracing::info!(client = %self.peer, mailbox = %id, "imap login refused: too many sessions");
            return "NO [LIMIT] Too many sessions for this mailbox".into();
        };
        tracing::info!(client = %self.peer, mailbox = %id, "imap login");
        self.changes = Some(self.state.spool.subscribe());
        self.login = Some((Account::Gateway(login), Some(guard)));
        format!("OK [CAPABILITY {}] Logged in", self.capabilities())
    }

    /// An archive user's login (their address and password).
    async fn login_archive(&mut self, user: &str, password: &str) -> String {
        match self
            .state
            .auth
            .login_user(self.peer.ip(), user, password)
            .await
        {
            Ok(session) => {
                let Some(guard) = CountGuard::take(&self.state, &session.user.id) else {
                    tracing::info!(client = %self.peer, user = %session.user.id, "imap login refused: too many sessions");
                    return "NO [LIMIT] Too many sessions for this user".into();
                };
                tracing::info!(client = %self.peer, user = %session.user.id, auditor = session.user.auditor, "imap archive login");
                self.changes = Some(self.state.spool.subscribe());
                self.login = Some((Account::Archive(session), Some(guard)));
                format!("OK [CAPABILITY {}] Logged in", self.capabilities())
            }
            Err(AuthError::Invalid) => {
                tracing::info!(client = %self.peer, "imap login failed");
                "NO [AUTHENTICATIONFAILED] Invalid login or password".into()
            }
            Err(AuthError::Temporary(e)) => {
                tracing::error!(client = %self.peer, error = %e, "imap login could not be checked");
                "NO [UNAVAILABLE] Temporary failure, try again later".into()
            }
        }
    }

    /// Enters the authenticated state without a password (PREAUTH; not counted).
    fn open_login(&mut self, login: Login) {
        let guard = CountGuard {
            state: self.state.clone(),
            id: login.record.id.to_string(),
        };
        *self
            .state
            .imap_sessions
            .lock()
            .unwrap()
            .entry(guard.id.clone())
            .or_insert(0) += 1;
        self.changes = Some(self.state.spool.subscribe());
        self.login = Some((Account::Gateway(login), Some(guard)));
    }

    /// The folders the logged-in account may see: (IMAP name, folder, special use).
    fn folders(&self) -> Vec<(String, Folder, Option<&'static str>)> {
        match self.login.as_ref().map(|(a, _)| a) {
            Some(Account::Gateway(l)) => {
                vec![("INBOX".into(), Folder::Gateway(l.record.id.clone()), None)]
            }
            Some(Account::Archive(u)) => match &self.state.archive {
                Some(archive) => archive
                    .folders_for(&u.user)
                    .into_iter()
                    .map(|f| {
                        let folder = Folder::Archive {
                            key: f.key,
                            name: f.name.clone(),
                        };
                        (f.name, folder, f.special_use)
                    })
                    .collect(),
                None => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// The folder an IMAP mailbox name designates, if this account may see it.
    fn resolve(&self, mailbox: &Mailbox<'_>) -> Option<Folder> {
        let name: String = match mailbox {
            Mailbox::Inbox => "INBOX".into(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        self.folders()
            .into_iter()
            .find(|(n, _, _)| *n == name || (n == "INBOX" && name.eq_ignore_ascii_case("INBOX")))
            .map(|(_, f, _)| f)
    }

    /// The current messages of a folder.
    fn list_folder(&self, folder: &Folder) -> Result<Vec<MessageMeta>, SpoolError> {
        match folder {
            Folder::Gateway(id) => self.state.spool.list(id),
            Folder::Archive { key, .. } => match (&self.state.archive, self.login.as_ref()) {
                (Some(a), Some((Account::Archive(u), _))) => a
                    .list(key, &u.user.public_key)
                    .map_err(|e| SpoolError::Io(std::io::Error::other(e.to_string()))),
                _ => Ok(Vec::new()),
            },
        }
    }

    /// Opens messages of the selected folder.
    fn opener(&self) -> Opener {
        let (account, _) = self.login.as_ref().expect("logged in");
        let folder = &self.view.as_ref().expect("selected").mailbox;
        match (account, folder) {
            (Account::Archive(u), Folder::Archive { key, .. }) => Opener::Archive {
                archive: self.state.archive.clone().expect("archive on"),
                key: key.clone(),
                identity: u.identity.clone(),
            },
            (Account::Gateway(l), _) => Opener::Gateway {
                spool: self.state.spool.clone(),
                id: l.record.id.clone(),
                identity: l.identity.clone(),
            },
            (Account::Archive(_), Folder::Gateway(_)) => {
                unreachable!("archive users see no gateway mailbox")
            }
        }
    }

    /// Brings the selected view up to date and queues the untagged responses.
    fn sync(&mut self, allow_expunge: bool) {
        if !self.dirty {
            return;
        }
        let Some(view) = self.view.as_mut() else {
            self.dirty = false;
            return;
        };
        let folder = view.mailbox.clone();
        match self.list_folder(&folder) {
            Ok(current) => {
                let view = self.view.as_mut().expect("selected");
                let mut out = Vec::new();
                view.sync(&current, allow_expunge, &mut out);
                self.out.extend_from_slice(&out);
                // Expunges still owed keep the view dirty.
                self.dirty = !allow_expunge;
            }
            Err(e) => tracing::warn!(error = %e, "cannot list mailbox"),
        }
    }

    fn drain_changes(&mut self) {
        let Some(rx) = self.changes.as_mut() else {
            return;
        };
        let selected = self.view.as_ref().map(|v| v.mailbox.change_key());
        loop {
            match rx.try_recv() {
                Ok(key) if Some(&key) == selected.as_ref() => self.dirty = true,
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.dirty = true,
                Err(_) => break,
            }
        }
    }

    /// False once the mailbox password was reset (or the mailbox deleted) after this session
    /// logged in: the old key must not keep working.
    fn login_still_valid(&self) -> bool {
        match self.login.as_ref().map(|(a, _)| a) {
            None => true,
            Some(Account::Gateway(login)) => {
                match self.state.spool.mailboxes().load(&login.record.id) {
                    Ok(current) => current.key_generation == login.record.key_generation,
                    Err(_) => false,
                }
            }
            Some(Account::Archive(session)) => match &self.state.archive {
                Some(archive) => archive.user_list().iter().any(|u| {
                    u.id == session.user.id && u.key_generation == session.user.key_generation
                }),
                None => false,
            },
        }
    }

    async fn command(
        &mut self,
        command: Command<'static>,
        stream: &mut Stream,
    ) -> std::io::Result<Flow> {
        let tag = command.tag;
        if !self.login_still_valid() {
            tracing::info!(client = %self.peer, "imap session ended: mailbox password reset or mailbox deleted");
            self.line("* BYE [UNAVAILABLE] The mailbox password was reset; log in again");
            return Ok(Flow::Logout);
        }
        self.drain_changes();
        let authed = self.login.is_some();
        let selected = self.view.is_some();
        match command.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.line(format!("* CAPABILITY {caps}"));
                self.tagged(&tag, "OK CAPABILITY completed");
            }
            CommandBody::Noop => {
                self.dirty |= selected;
                self.sync(true);
                self.tagged(&tag, "OK NOOP completed");
            }
            CommandBody::Logout => {
                self.line("* BYE journalgate logging out");
                self.tagged(&tag, "OK LOGOUT completed");
                return Ok(Flow::Logout);
            }
            CommandBody::StartTLS => {
                if self.tls {
                    self.bad(&tag, "TLS is already active");
                } else {
                    self.tagged(&tag, "OK Begin TLS negotiation now");
                    return Ok(Flow::StartTls);
                }
            }
            CommandBody::Login { username, password } => {
                if !self.tls {
                    self.errors += 1;
                    self.tagged(
                        &tag,
                        "NO [PRIVACYREQUIRED] LOGIN requires TLS; use STARTTLS first",
                    );
                } else if authed {
                    self.bad(&tag, "Already authenticated");
                } else {
                    let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    let reply = self.login(&user, &pass).await;
                    if reply.starts_with("NO") {
                        self.errors += 1;
                    }
                    self.tagged(&tag, reply);
                }
            }
            CommandBody::Authenticate { .. } => self.bad(&tag, "Unexpected AUTHENTICATE"),
            CommandBody::Id { .. } => {
                self.line(format!(
                    "* ID (\"name\" \"journalgate\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                self.tagged(&tag, "OK ID completed");
            }
            _ if !authed => self.bad(&tag, "Command not allowed before login"),
            CommandBody::Enable { .. } => {
                self.line("* ENABLED");
                self.tagged(&tag, "OK ENABLE completed");
            }
            CommandBody::Namespace => {
                self.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                self.tagged(&tag, "OK NAMESPACE completed");
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&tag, "LIST", &reference, &mailbox_wildcard),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&tag, "LSUB", &reference, &mailbox_wildcard),
            CommandBody::Subscribe { mailbox } | CommandBody::Unsubscribe { mailbox } => {
                if self.resolve(&mailbox).is_some() {
                    self.tagged(&tag, "OK Done");
                } else {
                    self.tagged(&tag, "NO [NONEXISTENT] No such mailbox");
                }
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&tag, &mailbox, &item_names),
            CommandBody::Select { mailbox, .. } => self.select(&tag, &mailbox, false),
            CommandBody::Examine { mailbox, .. } => self.select(&tag, &mailbox, true),
            CommandBody::Create { .. }
            | CommandBody::Delete { .. }
            | CommandBody::Rename { .. } => {
                self.tagged(
                    &tag,
                    "NO [NOPERM] Folders are fixed: they cannot be created, deleted or renamed",
                );
            }
            CommandBody::Append { .. } => {
                self.tagged(&tag, "NO [NOPERM] Messages arrive by SMTP only")
            }
            CommandBody::Copy { .. } | CommandBody::Move { .. } => {
                self.tagged(&tag, "NO [NOPERM] Messages cannot be copied or moved here");
            }
            _ if !selected => self.bad(&tag, "No mailbox selected"),
            CommandBody::Check => {
                self.dirty = true;
                self.sync(true);
                self.tagged(&tag, "OK CHECK completed");
            }
            CommandBody::Close => {
                if !self.view.as_ref().expect("selected").read_only {
                    let deleted = self.deleted_uids(None);
                    if let Err(e) = self.expunge_uids(&deleted).await {
                        tracing::error!(error = %e, "close: expunge failed");
                    }
                }
                self.view = None;
                self.tagged(&tag, "OK CLOSE completed");
            }
            CommandBody::Unselect => {
                self.view = None;
                self.tagged(&tag, "OK UNSELECT completed");
            }
            CommandBody::Expunge => self.expunge(&tag, None).await,
            CommandBody::ExpungeUid { sequence_set } => {
                self.expunge(&tag, Some(sequence_set)).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                let charset_ok = charset.as_ref().is_none_or(|c| {
                    let c: &str = c.as_ref();
                    c.eq_ignore_ascii_case("UTF-8") || c.eq_ignore_ascii_case("US-ASCII")
                });
                let key = SearchKey::And(criteria);
                if !charset_ok {
                    self.tagged(&tag, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                } else if !search::strings_are_utf8(&key) {
                    self.bad(&tag, "Search string is not valid UTF-8");
                } else {
                    self.search(&tag, key, uid).await;
                }
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => {
                let items = fetch::item_names(macro_or_item_names, uid);
                self.fetch(&tag, &sequence_set, &items, uid, stream).await?;
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => {
                self.store(&tag, &sequence_set, kind, response, &flags, uid)
                    .await;
            }
            _ => self.bad(&tag, "Command not supported"),
        }
        Ok(Flow::Continue)
    }

    fn list(
        &mut self,
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
            self.line(format!("* {verb} (\\Noselect) \"/\" \"\""));
        } else {
            let mut full = reference;
            full.extend_from_slice(&pattern);
            for (name, attributes) in self.list_entries() {
                let matches = if name == "INBOX" {
                    wildcard_match(&full.to_ascii_uppercase(), b"INBOX")
                } else {
                    wildcard_match(&full, name.as_bytes())
                };
                if matches {
                    let shown = match name.as_str() {
                        "INBOX" => name.clone(),
                        other => wire::quoted(other),
                    };
                    self.line(format!("* {verb} ({attributes}) \"/\" {shown}"));
                }
            }
        }
        self.tagged(tag, format!("OK {verb} completed"));
    }

    /// Every name LIST can show, with its attributes: the folders, and their parents
    /// (`Users`, `Users/<address>`) as non-selectable.
    fn list_entries(&self) -> Vec<(String, String)> {
        let folders = self.folders();
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, _, special) in &folders {
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
            let attributes = match special {
                Some(s) => format!("\\HasNoChildren {s}"),
                None => "\\HasNoChildren".into(),
            };
            out.push((name.clone(), attributes));
        }
        out
    }

    fn status(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, items: &[StatusDataItemName]) {
        let Some(folder) = self.resolve(mailbox) else {
            self.tagged(tag, "NO [NONEXISTENT] No such mailbox");
            return;
        };
        let (messages, uidnext, uidvalidity) = match self.mailbox_numbers(&folder) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "status failed");
                self.tagged(tag, "NO [UNAVAILABLE] Cannot read the mailbox");
                return;
            }
        };
        let mut parts = Vec::new();
        for item in items {
            match item {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", messages.len())),
                StatusDataItemName::Recent => parts.push("RECENT 0".into()),
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {uidnext}")),
                StatusDataItemName::UidValidity => parts.push(format!("UIDVALIDITY {uidvalidity}")),
                StatusDataItemName::Unseen => parts.push(format!(
                    "UNSEEN {}",
                    messages
                        .iter()
                        .filter(|m| !m.flags.contains(Flags::SEEN))
                        .count()
                )),
                StatusDataItemName::Deleted => parts.push(format!(
                    "DELETED {}",
                    messages
                        .iter()
                        .filter(|m| m.flags.contains(Flags::DELETED))
                        .count()
                )),
                _ => {}
            }
        }
        let name = match &folder {
            Folder::Gateway(_) => "INBOX".to_owned(),
            Folder::Archive { name, .. } => wire::quoted(name),
        };
        self.line(format!("* STATUS {name} ({})", parts.join(" ")));
        self.tagged(tag, "OK STATUS completed");
    }

    fn mailbox_numbers(&self, folder: &Folder) -> Result<(Vec<MessageMeta>, u32, u32), SpoolError> {
        let messages = self.list_folder(folder)?;
        match folder {
            Folder::Gateway(id) => {
                let uidnext = self.state.spool.uid_next(id)?;
                let uidvalidity = match self.login.as_ref().map(|(a, _)| a) {
                    Some(Account::Gateway(l)) => l.record.uidvalidity,
                    _ => 1,
                };
                Ok((messages, uidnext, uidvalidity))
            }
            Folder::Archive { key, .. } => {
                let archive = self.state.archive.as_ref().expect("archive on");
                let (validity, next) = archive
                    .numbers(key)
                    .map_err(|e| SpoolError::Io(std::io::Error::other(e.to_string())))?;
                Ok((messages, next, validity))
            }
        }
    }

    fn select(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, read_only: bool) {
        self.view = None;
        let Some(folder) = self.resolve(mailbox) else {
            self.tagged(tag, "NO [NONEXISTENT] No such mailbox");
            return;
        };
        // The archive is read-only for everyone.
        let read_only = read_only || matches!(folder, Folder::Archive { .. });
        let (messages, uidnext, uidvalidity) = match self.mailbox_numbers(&folder) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "select failed");
                self.tagged(tag, "NO [UNAVAILABLE] Cannot open the mailbox");
                return;
            }
        };
        let view = View {
            mailbox: folder,
            read_only,
            messages,
        };
        let all = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
        self.line(format!("* FLAGS ({all})"));
        if read_only {
            self.line("* OK [PERMANENTFLAGS ()] Read-only mailbox");
        } else {
            self.line(format!("* OK [PERMANENTFLAGS ({all})] Flags permitted"));
        }
        self.line(format!("* {} EXISTS", view.exists()));
        self.line("* 0 RECENT");
        if let Some(i) = view
            .messages
            .iter()
            .position(|m| !m.flags.contains(Flags::SEEN))
        {
            self.line(format!("* OK [UNSEEN {}] First unseen", i + 1));
        }
        self.line(format!("* OK [UIDVALIDITY {uidvalidity}] UIDs valid"));
        self.line(format!(
            "* OK [UIDNEXT {}] Predicted next UID",
            uidnext.max(view.uidnext_at_least())
        ));
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        self.tagged(tag, format!("OK [{mode}] {verb} completed"));
        self.view = Some(view);
        self.dirty = false;
    }

    fn deleted_uids(&self, within: Option<&SequenceSet>) -> Vec<u32> {
        let view = self.view.as_ref().expect("selected");
        let chosen: Vec<usize> = match within {
            Some(set) => view.select(set, true),
            None => (0..view.messages.len()).collect(),
        };
        chosen
            .into_iter()
            .map(|i| view.messages[i])
            .filter(|m| m.flags.contains(Flags::DELETED))
            .map(|m| m.uid)
            .collect()
    }

    async fn expunge_uids(&mut self, uids: &[u32]) -> Result<(), SpoolError> {
        if uids.is_empty() {
            return Ok(());
        }
        let Folder::Gateway(id) = self.view.as_ref().expect("selected").mailbox.clone() else {
            return Ok(());
        };
        let spool = self.state.spool.clone();
        let uids = uids.to_vec();
        let count = uids.len();
        tokio::task::spawn_blocking(move || spool.expunge(&id, &uids))
            .await
            .map_err(|e| SpoolError::Io(std::io::Error::other(e)))??;
        tracing::info!(client = %self.peer, deleted = count, "imap messages expunged");
        Ok(())
    }

    async fn expunge(&mut self, tag: &Tag<'_>, within: Option<SequenceSet>) {
        let view = self.view.as_ref().expect("selected");
        if let Folder::Archive { .. } = view.mailbox {
            self.tagged(tag, "NO [NOPERM] The archive is read-only");
            return;
        }
        if view.read_only {
            self.tagged(tag, "NO [READ-ONLY] Mailbox is read-only");
            return;
        }
        // Flags set by other sessions count too.
        self.dirty = true;
        self.sync(true);
        let uids = self.deleted_uids(within.as_ref());
        if let Err(e) = self.expunge_uids(&uids).await {
            tracing::error!(error = %e, "expunge failed");
            self.tagged(tag, "NO [UNAVAILABLE] Expunge failed");
            return;
        }
        self.dirty = true;
        self.sync(true);
        self.tagged(tag, "OK EXPUNGE completed");
    }

    async fn search(&mut self, tag: &Tag<'_>, key: SearchKey<'static>, uid: bool) {
        let view = self.view.as_ref().expect("selected");
        let bounds = search::Bounds {
            exists: view.exists(),
            largest_uid: view.messages.last().map(|m| m.uid).unwrap_or(0),
        };
        let needs = search::needs_content(&key);
        let mut found = Vec::new();
        for (i, meta) in view.messages.clone().iter().enumerate() {
            let content = if needs {
                match self.load(meta).await {
                    Ok(c) => Some(c),
                    Err(_) => continue,
                }
            } else {
                None
            };
            let candidate = search::Candidate {
                seq: i as u32 + 1,
                meta,
                raw: content.as_ref().map(|c| c.raw.as_slice()),
            };
            if search::matches(&key, &candidate, &bounds) {
                found.push(if uid { meta.uid } else { i as u32 + 1 });
            }
        }
        let list: Vec<String> = found.iter().map(u32::to_string).collect();
        if list.is_empty() {
            self.line("* SEARCH");
        } else {
            self.line(format!("* SEARCH {}", list.join(" ")));
        }
        self.sync(uid);
        self.tagged(tag, "OK SEARCH completed");
    }

    /// Decrypts a message: whole when small, only its header when large.
    async fn load(&self, meta: &MessageMeta) -> Result<Content, SpoolError> {
        self.start_load(meta)
            .await
            .map_err(|e| SpoolError::Io(std::io::Error::other(e)))?
    }

    /// Starts decrypting a message on a blocking thread (FETCH reads ahead with this).
    fn start_load(
        &self,
        meta: &MessageMeta,
    ) -> tokio::task::JoinHandle<Result<Content, SpoolError>> {
        let opener = self.opener();
        let meta = *meta;
        tokio::task::spawn_blocking(move || {
            let reader = opener.open(&meta)?;
            if meta.size <= fetch::IN_MEMORY_MAX {
                let mut raw = Vec::with_capacity(meta.size as usize);
                reader.take(fetch::IN_MEMORY_MAX).read_to_end(&mut raw)?;
                Ok(Content::whole(raw))
            } else {
                let mut head = Vec::new();
                reader
                    .take(fetch::MAX_HEADER as u64)
                    .read_to_end(&mut head)?;
                Ok(Content::header_only(head, meta.size))
            }
        })
    }

    async fn fetch(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        items: &[MessageDataItemName<'static>],
        uid: bool,
        stream: &mut Stream,
    ) -> std::io::Result<()> {
        let view = self.view.as_ref().expect("selected");
        if !uid && view.out_of_range(set) {
            self.bad(tag, "Invalid message sequence number");
            return Ok(());
        }
        let chosen = view.select(set, uid);
        let read_only = view.read_only;
        let id = match &view.mailbox {
            Folder::Gateway(id) => Some(id.clone()),
            Folder::Archive { .. } => None,
        };
        let needs = fetch::needs_content(items);
        let sets_seen = fetch::sets_seen(items) && !read_only;
        let mut vanished = false;
        // Decrypt ahead (up to PREFETCH_BYTES) so decryption overlaps sending.
        let mut ahead: std::collections::VecDeque<_> = std::collections::VecDeque::new();
        let (mut next, mut ahead_bytes) = (0usize, 0u64);
        for (k, &i) in chosen.iter().enumerate() {
            if needs {
                while next < chosen.len() && (next == k || ahead_bytes < PREFETCH_BYTES) {
                    let m = self.view.as_ref().expect("selected").messages[chosen[next]];
                    let size = m.size.min(fetch::IN_MEMORY_MAX);
                    ahead.push_back((self.start_load(&m), size));
                    ahead_bytes += size;
                    next += 1;
                }
            }
            let mut meta = self.view.as_ref().expect("selected").messages[i];
            let content = if needs {
                let (handle, size) = ahead.pop_front().expect("loaded ahead");
                ahead_bytes -= size;
                let loaded = handle
                    .await
                    .map_err(|e| SpoolError::Io(std::io::Error::other(e)))
                    .and_then(|r| r);
                match loaded {
                    Ok(c) => Some(c),
                    Err(SpoolError::NoSuchMessage) => {
                        vanished = true;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(uid = meta.uid, error = %e, "cannot read message");
                        vanished = true;
                        continue;
                    }
                }
            } else {
                None
            };
            let mut add_flags = false;
            if let (true, false, Some(id)) = (sets_seen, meta.flags.contains(Flags::SEEN), &id) {
                let spool = self.state.spool.clone();
                let (mid, change) = (id.clone(), vec![(meta.uid, meta.flags.with(Flags::SEEN))]);
                if let Ok(Ok(updated)) =
                    tokio::task::spawn_blocking(move || spool.set_flags(&mid, &change)).await
                {
                    if let Some(u) = updated.first() {
                        meta.flags = u.flags;
                        self.view.as_mut().expect("selected").messages[i].flags = u.flags;
                        add_flags = true;
                    }
                }
            }
            let chunks = fetch::render(
                i as u32 + 1,
                &meta,
                meta.flags,
                items,
                content.as_ref(),
                add_flags,
            );
            drop(content);
            for chunk in chunks {
                match chunk {
                    Chunk::Bytes(b) => {
                        self.out.extend_from_slice(&b);
                        if self.out.len() >= FLUSH_AT {
                            self.flush(stream).await?;
                        }
                    }
                    Chunk::Stream { start, len } => {
                        self.flush(stream).await?;
                        self.stream_body(stream, &meta, start, len).await?;
                    }
                }
            }
        }
        self.sync(uid);
        if vanished {
            self.tagged(
                tag,
                "NO [EXPUNGEISSUED] Some messages were expunged meanwhile",
            );
        } else {
            self.tagged(tag, "OK FETCH completed");
        }
        Ok(())
    }

    /// Streams `len` octets of a message from `start`, decrypting on a blocking thread.
    async fn stream_body(
        &mut self,
        stream: &mut Stream,
        meta: &MessageMeta,
        start: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let (opener, meta) = (self.opener(), *meta);
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        tokio::task::spawn_blocking(move || {
            let result = (|| -> std::io::Result<()> {
                let mut reader = opener
                    .open(&meta)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())?;
                let mut reader = reader.take(len);
                loop {
                    let mut buf = vec![0u8; 64 * 1024];
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return Ok(());
                    }
                }
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            sent += chunk.len() as u64;
            stream.write_all(&chunk).await?;
        }
        if sent != len {
            // The literal length is already on the wire: the response cannot be repaired.
            return Err(std::io::Error::other("message shorter than announced"));
        }
        Ok(())
    }

    async fn store(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) {
        let view = self.view.as_ref().expect("selected");
        if let Folder::Archive { .. } = view.mailbox {
            self.tagged(tag, "NO [NOPERM] The archive is read-only");
            return;
        }
        if view.read_only {
            self.tagged(tag, "NO [READ-ONLY] Mailbox is read-only (EXAMINE)");
            return;
        }
        if !uid && view.out_of_range(set) {
            self.bad(tag, "Invalid message sequence number");
            return;
        }
        // Keywords are not kept (PERMANENTFLAGS has no \*): they are ignored.
        let given = flags.iter().fold(Flags::default(), |acc, f| match f {
            Flag::Answered => acc.with(Flags::ANSWERED),
            Flag::Deleted => acc.with(Flags::DELETED),
            Flag::Draft => acc.with(Flags::DRAFT),
            Flag::Flagged => acc.with(Flags::FLAGGED),
            Flag::Seen => acc.with(Flags::SEEN),
            _ => acc,
        });
        let chosen = view.select(set, uid);
        let changes: Vec<(u32, Flags)> = chosen
            .iter()
            .map(|i| {
                let m = view.messages[*i];
                let new = match kind {
                    StoreType::Replace => given,
                    StoreType::Add => m.flags.with(given),
                    StoreType::Remove => m.flags.without(given),
                };
                (m.uid, new)
            })
            .collect();
        let Folder::Gateway(id) = view.mailbox.clone() else {
            self.tagged(tag, "NO [READ-ONLY] Mailbox is read-only");
            return;
        };
        let spool = self.state.spool.clone();
        let updated =
            match tokio::task::spawn_blocking(move || spool.set_flags(&id, &changes)).await {
                Ok(Ok(u)) => u,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "store failed");
                    self.tagged(tag, "NO [UNAVAILABLE] Cannot store flags");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store failed");
                    self.tagged(tag, "NO [UNAVAILABLE] Cannot store flags");
                    return;
                }
            };
        let view = self.view.as_mut().expect("selected");
        let mut lines = Vec::new();
        for u in &updated {
            if let Ok(i) = view.messages.binary_search_by_key(&u.uid, |m| m.uid) {
                view.messages[i].flags = u.flags;
                if response == StoreResponse::Answer {
                    let uid_part = if uid {
                        format!("UID {} ", u.uid)
                    } else {
                        String::new()
                    };
                    lines.push(format!(
                        "* {} FETCH ({uid_part}FLAGS {})",
                        i + 1,
                        wire::flag_list(u.flags)
                    ));
                }
            }
        }
        for l in lines {
            self.line(l);
        }
        self.sync(uid);
        self.tagged(tag, "OK STORE completed");
    }
}

/// `*` matches anything, `%` anything but the hierarchy delimiter (RFC 3501 §6.3.8).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard_match(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|i| *i == 0 || name[i - 1] != b'/')
            .any(|i| wildcard_match(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && wildcard_match(rest, &name[1..]),
    }
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
/// imap-codec does not parse yet) become a plain LIST. This gateway has no special-use
/// mailboxes, so the options change nothing in the answer.
fn rewrite_list_extended(raw: &[u8]) -> Option<Command<'static>> {
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
    if let Some(pos) = args.to_ascii_uppercase().rfind(" RETURN (") {
        args = args[..pos].trim_end();
    }
    let rewritten = format!("{tag} LIST {args}\r\n");
    let (_, command) = CommandCodec::default()
        .decode_static(rewritten.as_bytes())
        .ok()?;
    Some(command)
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
    }

    #[test]
    fn list_extended_is_rewritten() {
        let c = rewrite_list_extended(b"a1 LIST (SPECIAL-USE) \"\" \"*\"\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::List { .. }));
        let c = rewrite_list_extended(b"a2 LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n").unwrap();
        assert!(matches!(c.body, CommandBody::List { .. }));
        assert!(rewrite_list_extended(b"a3 FETCH 1 x\r\n").is_none());
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
