//! One IMAP connection: the session state (not authenticated / authenticated / selected), the
//! read loop around imap-next, change notifications while IDLE, and the dispatcher that hands
//! each command to its handler in the command files beside this one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Tag;
use imap_next::server::{Event, Options, Server};
use imap_next::{Interrupt, Io, State as _};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use super::input;
use super::state::{Conn, Flow, Phase, FLUSH_AT};
use crate::context::State;
use crate::net::{self, Stream};

/// Before login a client gets this long per command.
const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_ERRORS: u32 = 30;

pub(super) struct Session {
    pub conn: Conn,
    pub phase: Phase,
    /// Tag of the AUTHENTICATE exchange under way.
    pub auth_tag: Option<Tag<'static>>,
    /// Tag of the IDLE under way.
    pub idling: Option<Tag<'static>>,
    /// imap-next outputs to drop (its greeting, statuses replaced by our own lines).
    pub suppress: usize,
    /// Last bytes of the previous read, for [`input::oversized_literal`].
    tail: Vec<u8>,
    /// Extension options of the command being run (see [`input::Extra`]).
    pub extra: input::Extra,
    /// Until a login succeeds the client must have logged in by then, however it trickles.
    login_deadline: tokio::time::Instant,
}

impl Session {
    pub fn new(peer: SocketAddr, state: Arc<State>) -> Session {
        let login_time = Duration::from_secs(state.config.imap.login_timeout_secs);
        Session {
            login_deadline: tokio::time::Instant::now() + login_time,
            conn: Conn::new(peer, state),
            phase: Phase::NotAuthenticated,
            auth_tag: None,
            idling: None,
            suppress: 0,
            tail: Vec::new(),
            extra: input::Extra::None,
        }
    }

    fn new_server(&self) -> Server {
        let mut options = Options::default();
        let max = self.conn.state.config.imap.max_command_size.max(1024);
        options.crlf_relaxed = true;
        options.max_literal_size = max;
        // `max` octets of command (literals included) plus the CRLF.
        options.max_command_size = max.saturating_add(2);
        let greeting =
            imap_codec::imap_types::response::Greeting::ok(None, "journalgate IMAP ready")
                .expect("valid greeting");
        Server::new(options, greeting)
    }

    pub async fn handle(&mut self, mut stream: Stream) -> std::io::Result<()> {
        self.conn.tls = stream.is_tls();
        let mut server = self.new_server();
        self.suppress = 1;
        let logged_in = self.phase.authed().is_some();
        let greeting = format!(
            "* {} [CAPABILITY {}] journalgate IMAP ready",
            if logged_in { "PREAUTH" } else { "OK" },
            self.conn.capabilities(logged_in)
        );
        self.conn.line(greeting);
        let mut buf = vec![0u8; 64 * 1024];
        let mut shutdown = self.conn.state.shutdown.clone();
        loop {
            if self.conn.errors >= MAX_ERRORS {
                self.conn.line("* BYE Too many errors");
                self.conn.flush(&mut stream).await?;
                return Ok(());
            }
            let flow = match server.next() {
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    if self.suppress > 0 {
                        self.suppress -= 1;
                    } else {
                        self.conn.bytes(&bytes);
                    }
                    Flow::Continue
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    self.conn.flush(&mut stream).await?;
                    let Some(n) = self
                        .wait_input(&mut stream, &mut buf, &mut shutdown)
                        .await?
                    else {
                        self.conn.flush(&mut stream).await?;
                        return Ok(());
                    };
                    let max = u64::from(self.conn.state.config.imap.max_command_size.max(1024));
                    if input::oversized_literal(&mut self.tail, &buf[..n], max) {
                        // A non-synchronising literal over the limit: the client is already
                        // sending it, so the only safe answer is to end the session (RFC 7888 §4).
                        self.conn
                            .line("* BYE [TOOBIG] Literal exceeds the maximum command size");
                        self.conn.flush(&mut stream).await?;
                        return Ok(());
                    }
                    server.enqueue_input(&buf[..n]);
                    Flow::Continue
                }
                Err(Interrupt::Error(e)) => match input::bad_input(&mut self.conn, e) {
                    Some((command, extra)) => {
                        self.extra = extra;
                        let flow = self.command(command, &mut stream).await?;
                        self.extra = input::Extra::None;
                        self.refresh_contexts(true).await;
                        flow
                    }
                    None => Flow::Continue,
                },
                Ok(Event::GreetingSent { .. }) | Ok(Event::ResponseSent { .. }) => Flow::Continue,
                Ok(Event::CommandReceived { command }) => {
                    if self.conn.state.trace.on("imap") {
                        use imap_codec::encode::Encoder;
                        let wire = imap_codec::CommandCodec::default().encode(&command).dump();
                        self.conn
                            .state
                            .trace
                            .line("imap", self.conn.peer, "C", &wire);
                    }
                    let flow = self.command(command, &mut stream).await?;
                    self.refresh_contexts(true).await;
                    flow
                }
                Ok(Event::CommandAuthenticateReceived {
                    command_authenticate: a,
                }) => {
                    let initial = a.initial_response.map(|s| s.declassify().to_vec());
                    self.authenticate_start(&mut server, a.tag, a.mechanism, initial)
                        .await;
                    Flow::Continue
                }
                Ok(Event::AuthenticateDataReceived { authenticate_data }) => {
                    let data = match authenticate_data {
                        AuthenticateData::Continue(s) => Some(s.declassify().to_vec()),
                        AuthenticateData::Cancel => None,
                    };
                    self.authenticate_finish(&mut server, data).await;
                    Flow::Continue
                }
                Ok(Event::IdleCommandReceived { tag }) => {
                    self.idle_start(&mut server, tag);
                    Flow::Continue
                }
                Ok(Event::IdleDoneReceived) => {
                    if let Some(tag) = self.idling.take() {
                        self.conn.tagged(&tag, "OK IDLE terminated");
                    }
                    Flow::Continue
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Logout => {
                    self.conn.flush(&mut stream).await?;
                    return Ok(());
                }
                Flow::StartTls => {
                    self.conn.flush(&mut stream).await?;
                    // Anything pipelined after STARTTLS is dropped with the old parser.
                    stream = stream
                        .upgrade(&self.conn.state.tls, net::TLS_HANDSHAKE_TIMEOUT)
                        .await?;
                    self.conn.tls = true;
                    server = self.new_server();
                    self.suppress = 1;
                }
            }
            if self.conn.buffered() >= FLUSH_AT {
                self.conn.flush(&mut stream).await?;
            }
        }
    }

    /// Reads client input; while IDLE, also sends folder updates as they happen.
    async fn wait_input(
        &mut self,
        stream: &mut Stream,
        buf: &mut [u8],
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Option<usize>> {
        let now = tokio::time::Instant::now();
        let (deadline, why) = match self.phase.authed() {
            Some(_) => {
                let idle = Duration::from_secs(self.conn.state.config.imap.idle_timeout_secs);
                (now + idle, "* BYE Autologout; idle for too long")
            }
            None if self.login_deadline < now + PRE_AUTH_TIMEOUT => {
                (self.login_deadline, "* BYE Autologout; no login in time")
            }
            None => (
                now + PRE_AUTH_TIMEOUT,
                "* BYE Autologout; idle for too long",
            ),
        };
        loop {
            if *shutdown.borrow() {
                self.conn.line("* BYE Server shutting down");
                return Ok(None);
            }
            let idling = self.idling.is_some();
            let (changes, selected_key) = match &mut self.phase {
                Phase::NotAuthenticated => (None, None),
                Phase::Authenticated(a) => (Some(&mut a.changes), None),
                Phase::Selected(a, s) => {
                    let key = a.account.store.change_key(&s.view.folder);
                    (Some(&mut a.changes), Some(key))
                }
            };
            tokio::select! {
                read = tokio::time::timeout_at(deadline, stream.read(buf)) => {
                    return match read {
                        Ok(Ok(0)) => Ok(None),
                        Ok(Ok(n)) => Ok(Some(n)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => {
                            self.conn.line(why);
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
                    let mine = match (&change, &selected_key) {
                        (Ok(key), Some(selected)) => key == selected,
                        (Err(broadcast::error::RecvError::Lagged(_)), Some(_)) => true,
                        _ => false,
                    };
                    if mine && !self.login_still_valid() {
                        self.conn.line("* BYE [UNAVAILABLE] The mailbox password was reset; log in again");
                        return Ok(None);
                    }
                    if let (true, Phase::Selected(authed, selected)) = (mine, &mut self.phase) {
                        selected.dirty = true;
                        if idling {
                            selected.sync(&mut self.conn, authed, true);
                            self.refresh_contexts(false).await;
                            self.conn.flush(stream).await?;
                        }
                    }
                }
            }
        }
    }

    /// CANCELUPDATE (RFC 5267 §4.3.5): ends the named updating searches.
    fn cancel_update(&mut self, tag: &Tag<'static>, tags: &[String]) {
        let Phase::Selected(_, selected) = &mut self.phase else {
            self.conn.bad(tag, "No mailbox selected");
            return;
        };
        match selected.contexts.cancel(tags) {
            true => self.conn.tagged(tag, "OK No further updates"),
            false => self
                .conn
                .tagged(tag, "NO Unknown tag: no updating search has it"),
        }
    }

    /// Brings the selected folder's updating searches up to date (RFC 5267); their
    /// responses go before the command's completion when `before_last` (else at the end).
    async fn refresh_contexts(&mut self, before_last: bool) {
        let Phase::Selected(authed, selected) = &mut self.phase else {
            return;
        };
        if !selected.contexts.pending() {
            return;
        }
        let at = match before_last {
            true => self.conn.last_line_start(),
            false => self.conn.buffered(),
        };
        let lines = super::context_updates::refresh(authed, selected).await;
        self.conn.insert_lines(at, &lines);
    }

    /// Marks the selected folder dirty for every change notification queued for it.
    fn drain_changes(&mut self) {
        let (authed, mut selected) = match &mut self.phase {
            Phase::NotAuthenticated => return,
            Phase::Authenticated(a) => (a, None),
            Phase::Selected(a, s) => (a, Some(s)),
        };
        let key = selected
            .as_ref()
            .map(|s| authed.account.store.change_key(&s.view.folder));
        loop {
            let dirty = match authed.changes.try_recv() {
                Ok(k) => Some(&k) == key.as_ref(),
                Err(broadcast::error::TryRecvError::Lagged(_)) => true,
                Err(_) => break,
            };
            if let (true, Some(s)) = (dirty, selected.as_mut()) {
                s.dirty = true;
            }
        }
    }

    /// False once the password was reset (or the login deleted) after this session logged
    /// in: the old key must not keep working.
    fn login_still_valid(&self) -> bool {
        self.phase
            .authed()
            .is_none_or(|a| a.account.store.still_valid())
    }

    pub async fn command(
        &mut self,
        command: Command<'static>,
        stream: &mut Stream,
    ) -> std::io::Result<Flow> {
        let tag = command.tag;
        let extra = std::mem::take(&mut self.extra);
        if !self.login_still_valid() {
            tracing::info!(client = %self.conn.peer, "imap session ended: password reset or login deleted");
            self.conn
                .line("* BYE [UNAVAILABLE] The mailbox password was reset; log in again");
            return Ok(Flow::Logout);
        }
        self.drain_changes();
        if let input::Extra::CancelUpdate(tags) = &extra {
            self.cancel_update(&tag, tags);
            return Ok(Flow::Continue);
        }
        let body = match self.any_state(&tag, command.body).await {
            Ok(flow) => return Ok(flow),
            Err(body) => body,
        };
        let body = match &mut self.phase {
            Phase::NotAuthenticated => {
                self.conn.bad(&tag, "Command not allowed before login");
                return Ok(Flow::Continue);
            }
            Phase::Authenticated(_) | Phase::Selected(..) => {
                match self.authenticated(&tag, body, &extra) {
                    Ok(()) => return Ok(Flow::Continue),
                    Err(body) => body,
                }
            }
        };
        let Phase::Selected(authed, selected) = &mut self.phase else {
            self.conn.bad(&tag, "No mailbox selected");
            return Ok(Flow::Continue);
        };
        let conn = &mut self.conn;
        // ENABLE may have turned these on since the folder was selected.
        selected.view.condstore |= conn.condstore;
        selected.view.qresync |= conn.qresync;
        match body {
            CommandBody::Check => {
                selected.dirty = true;
                selected.sync(conn, authed, true);
                conn.tagged(&tag, "OK CHECK completed");
            }
            CommandBody::Close => {
                super::update::close(conn, authed, selected).await;
                self.phase.deselect();
                self.conn.tagged(&tag, "OK CLOSE completed");
            }
            CommandBody::Unselect => {
                self.phase.deselect();
                self.conn.tagged(&tag, "OK UNSELECT completed");
            }
            CommandBody::Expunge => {
                super::update::expunge(conn, authed, selected, &tag, None).await
            }
            CommandBody::ExpungeUid { sequence_set } => {
                super::update::expunge(conn, authed, selected, &tag, Some(sequence_set)).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                let request = super::search::Request {
                    charset,
                    criteria,
                    uid,
                    returns: extra.returns(),
                };
                super::search::command(conn, authed, selected, &tag, request).await
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                use imap_codec::imap_types::command::FetchModifier;
                let items = super::render::item_names(macro_or_item_names, uid);
                let request = super::fetch::Request {
                    set: &sequence_set,
                    items: &items,
                    uid,
                    changed_since: modifiers.iter().find_map(|m| match m {
                        FetchModifier::ChangedSince(n) => Some(n.get()),
                        FetchModifier::Vanished => None,
                    }),
                    vanished: modifiers.contains(&FetchModifier::Vanished),
                };
                super::fetch::command(conn, authed, selected, &tag, request, stream).await?;
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let request = super::update::StoreRequest {
                    set: &sequence_set,
                    kind,
                    response,
                    flags: &flags,
                    uid,
                    modifiers: &modifiers,
                };
                super::update::store(conn, authed, selected, &tag, request).await;
            }
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => {
                let request = super::ordering::SortRequest {
                    criteria: sort_criteria.into_inner(),
                    charset,
                    search: search_criteria,
                    uid,
                    returns: extra.returns(),
                };
                super::ordering::sort(conn, authed, selected, &tag, request).await
            }
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => {
                let request = super::ordering::ThreadRequest {
                    algorithm,
                    charset,
                    search: search_criteria,
                    uid,
                };
                super::ordering::thread(conn, authed, selected, &tag, request).await
            }
            _ => conn.bad(&tag, "Command not supported"),
        }
        Ok(Flow::Continue)
    }

    /// Commands valid in every state. Returns the command back when it is not one of them.
    async fn any_state(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
    ) -> Result<Flow, CommandBody<'static>> {
        match body {
            CommandBody::Capability => {
                let caps = self.conn.capabilities(self.phase.authed().is_some());
                self.conn.line(format!("* CAPABILITY {caps}"));
                self.conn.tagged(tag, "OK CAPABILITY completed");
            }
            CommandBody::Noop => {
                if let Phase::Selected(authed, selected) = &mut self.phase {
                    selected.dirty = true;
                    selected.sync(&mut self.conn, authed, true);
                }
                self.conn.tagged(tag, "OK NOOP completed");
            }
            CommandBody::Logout => {
                self.conn.line("* BYE journalgate logging out");
                self.conn.tagged(tag, "OK LOGOUT completed");
                return Ok(Flow::Logout);
            }
            CommandBody::StartTLS if self.conn.tls => self.conn.bad(tag, "TLS is already active"),
            CommandBody::StartTLS => {
                self.conn.tagged(tag, "OK Begin TLS negotiation now");
                return Ok(Flow::StartTls);
            }
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login_command(tag, &user, &pass).await;
            }
            CommandBody::Authenticate { .. } => self.conn.bad(tag, "Unexpected AUTHENTICATE"),
            CommandBody::Id { .. } => {
                self.conn.line(format!(
                    "* ID (\"name\" \"journalgate\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                self.conn.tagged(tag, "OK ID completed");
            }
            other => return Err(other),
        }
        Ok(Flow::Continue)
    }
}
