//! POP3 collection of gateway mailboxes (RFC 1939, 2449 CAPA, 2595 STLS, 5034 SASL PLAIN).
//!
//! Credentials are accepted only over TLS. The password unwraps the mailbox key for the
//! session; messages are decrypted as they are sent, never held whole in memory. DELE takes
//! effect at QUIT. One session per mailbox at a time.

pub mod command;
mod stuff;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::accounts::{self, Account};
use crate::auth::{self, AuthError};
use crate::context::{self, State};
use crate::mailbox::MailboxId;
use crate::message::MessageMeta;
use crate::net::{self, Line, Stream};
use crate::store::FolderInfo;
use command::{Command, ParseError};
use stuff::{DotStuffer, TopLimit};

const MAX_LINE: usize = 2048;
/// Messages up to this size are decrypted in one blocking call; larger ones are streamed.
const SMALL_MESSAGE: u64 = 256 * 1024;

/// A POP3 connection: buffered both ways. Replies are flushed when no pipelined command is
/// waiting, so a batch of RETRs goes out in few TLS records.
type Conn = BufReader<BufWriter<Stream>>;

fn buffered(stream: Stream) -> Conn {
    BufReader::with_capacity(64 * 1024, BufWriter::with_capacity(64 * 1024, stream))
}
const MAX_ERRORS: u32 = 20;

/// Accepts POP3 connections until shutdown; `implicit_tls` for port 995.
pub async fn run(listener: TcpListener, implicit_tls: bool, state: Arc<State>) {
    let how = context::Listener {
        protocol: if implicit_tls { "pop3s" } else { "pop3" },
        implicit_tls,
        limit: state.pop3_limit.clone(),
        per_ip: state.pop3_per_ip.clone(),
        busy: b"-ERR [SYS/TEMP] Too many connections\r\n",
    };
    context::accept_loop(listener, how, state, serve_connection).await
}

/// Runs one POP3 session on an accepted (and, for implicit TLS, handshaken) stream.
pub async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    state: Arc<State>,
) -> std::io::Result<()> {
    Session::new(peer, state).handle(stream).await
}

/// A session that starts in the TRANSACTION state for an already unwrapped mailbox key, for
/// tests and the fuzz target (no scrypt per run). Nothing happens if the mailbox is locked.
pub async fn serve_preauth(
    stream: Stream,
    peer: SocketAddr,
    state: Arc<State>,
    login: auth::Session,
) -> std::io::Result<()> {
    let mut session = Session::new(peer, state);
    if session.open_maildrop(login).is_err() {
        return Ok(());
    }
    session.handle(stream).await
}

/// The open maildrop of a logged-in session (RFC 1939 TRANSACTION state).
struct Maildrop {
    account: Account,
    folder: FolderInfo,
    uidvalidity: u32,
    _lock: LockGuard,
}

/// Removes the mailbox lock when the session ends, however it ends.
struct LockGuard {
    state: Arc<State>,
    id: MailboxId,
    /// In cluster mode, the lock between nodes too (released when dropped).
    _cluster: Option<crate::cluster::claim::Held>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.state.pop3_locks.lock().unwrap().remove(&self.id);
    }
}

struct Session {
    peer: SocketAddr,
    state: Arc<State>,
    login: Option<Maildrop>,
    login_deadline: Instant,
    user: Option<String>,
    messages: Vec<MessageMeta>,
    deleted: Vec<bool>,
    errors: u32,
}

enum Next {
    Continue,
    StartTls,
    Quit,
}

impl Session {
    fn new(peer: SocketAddr, state: Arc<State>) -> Session {
        let login_time = Duration::from_secs(state.config.pop3.login_timeout_secs);
        Session {
            login_deadline: Instant::now() + login_time,
            peer,
            state,
            login: None,
            user: None,
            messages: Vec::new(),
            deleted: Vec::new(),
            errors: 0,
        }
    }

    async fn handle(&mut self, stream: Stream) -> std::io::Result<()> {
        let mut conn = buffered(stream);
        send(&mut conn, "+OK journalgate POP3 ready\r\n").await?;
        while let Next::StartTls = self.command_loop(&mut conn).await? {
            conn.get_mut().flush().await?;
            let stream = conn.into_inner().into_inner();
            conn = buffered(
                stream
                    .upgrade(&self.state.tls, net::TLS_HANDSHAKE_TIMEOUT)
                    .await?,
            );
        }
        let _ = conn.get_mut().shutdown().await;
        Ok(())
    }

    async fn command_loop(&mut self, conn: &mut Conn) -> std::io::Result<Next> {
        let idle = Duration::from_secs(self.state.config.pop3.timeout_secs);
        let mut shutdown = self.state.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                self.say(conn, "-ERR [SYS/TEMP] Server shutting down\r\n")
                    .await?;
                return Ok(Next::Quit);
            }
            if conn.buffer().is_empty() {
                conn.get_mut().flush().await?;
            }
            // Until login, every line must come before the login deadline, however slowly
            // the client trickles bytes.
            let timeout = match self.login {
                Some(_) => idle,
                None => idle.min(
                    self.login_deadline
                        .saturating_duration_since(Instant::now()),
                ),
            };
            let line = tokio::select! {
                line = net::read_line_timeout(conn, MAX_LINE, timeout) => line,
                _ = shutdown.changed() => continue,
            };
            let line = match line {
                Ok(Line::Ok(l)) => {
                    self.state.trace.line("pop3", self.peer, "C", &l);
                    l
                }
                Ok(Line::Eof) => return Ok(Next::Quit),
                Ok(Line::TooLong) => {
                    self.error(conn, "-ERR Line too long").await?;
                    if self.errors >= MAX_ERRORS || !net::skip_line(conn, timeout).await? {
                        return Ok(Next::Quit);
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.say(conn, "-ERR Timeout, closing connection\r\n")
                        .await?;
                    return Ok(Next::Quit);
                }
                Err(e) => return Err(e),
            };
            let text = String::from_utf8_lossy(&line).into_owned();
            let next = match command::parse(&text) {
                Ok(cmd) => self.execute(conn, cmd).await?,
                Err(ParseError::Unknown) => {
                    self.error(conn, "-ERR Unknown command").await?;
                    Next::Continue
                }
                Err(ParseError::Syntax(why)) => {
                    self.error(conn, &format!("-ERR {why}")).await?;
                    Next::Continue
                }
            };
            match next {
                Next::Continue if self.errors >= MAX_ERRORS => {
                    self.say(conn, "-ERR Too many errors, closing connection\r\n")
                        .await?;
                    return Ok(Next::Quit);
                }
                Next::Continue => {}
                other => return Ok(other),
            }
        }
    }

    /// Sends reply lines (traced when the POP3 trace is on).
    async fn say(&self, conn: &mut Conn, text: &str) -> std::io::Result<()> {
        if self.state.trace.on("pop3") {
            for line in text.split_inclusive('\n') {
                self.state
                    .trace
                    .line("pop3", self.peer, "S", line.as_bytes());
            }
        }
        send(conn, text).await
    }

    async fn error(&mut self, conn: &mut Conn, text: &str) -> std::io::Result<()> {
        self.errors += 1;
        self.say(conn, &format!("{text}\r\n")).await
    }

    fn tls(&self, conn: &Conn) -> bool {
        conn.get_ref().get_ref().is_tls()
    }

    async fn execute(&mut self, conn: &mut Conn, cmd: Command) -> std::io::Result<Next> {
        let authed = self.login.is_some();
        match cmd {
            Command::Capa => {
                let mut caps = vec![
                    "CAPA",
                    "TOP",
                    "UIDL",
                    "RESP-CODES",
                    "AUTH-RESP-CODE",
                    "PIPELINING",
                ];
                if !authed {
                    if self.tls(conn) {
                        caps.extend(["USER", "SASL PLAIN"]);
                    } else {
                        caps.push("STLS");
                    }
                }
                caps.push("IMPLEMENTATION journalgate");
                let mut out = String::from("+OK Capability list follows\r\n");
                for c in caps {
                    out.push_str(c);
                    out.push_str("\r\n");
                }
                out.push_str(".\r\n");
                self.say(conn, &out).await?;
            }
            Command::Stls if authed || self.tls(conn) => {
                self.error(conn, "-ERR STLS not allowed now").await?;
            }
            Command::Stls => {
                self.say(conn, "+OK Begin TLS negotiation\r\n").await?;
                return Ok(Next::StartTls);
            }
            Command::User(_) | Command::Pass(_) | Command::Auth(_) if authed => {
                self.error(conn, "-ERR Already logged in").await?;
            }
            Command::User(_) | Command::Pass(_) | Command::Auth(_) if !self.tls(conn) => {
                self.error(
                    conn,
                    "-ERR [AUTH] Authentication requires TLS; use STLS first",
                )
                .await?;
            }
            Command::User(name) => {
                self.user = Some(name);
                self.say(conn, "+OK Send the password\r\n").await?;
            }
            Command::Pass(password) => match self.user.take() {
                Some(user) => self.login(conn, &user, &password).await?,
                None => self.error(conn, "-ERR USER first").await?,
            },
            Command::Auth(None) => self.say(conn, "+OK\r\nPLAIN\r\n.\r\n").await?,
            Command::Auth(Some((mech, initial))) => {
                if mech != "PLAIN" {
                    self.error(conn, "-ERR Unsupported mechanism").await?;
                    return Ok(Next::Continue);
                }
                let response = match initial {
                    Some(r) => r,
                    None => {
                        self.say(conn, "+ \r\n").await?;
                        conn.get_mut().flush().await?;
                        let timeout = self
                            .login_deadline
                            .saturating_duration_since(Instant::now());
                        match net::read_line_timeout(conn, MAX_LINE, timeout).await? {
                            Line::Ok(l) => {
                                self.state.trace.line("pop3", self.peer, "C", &l);
                                String::from_utf8_lossy(&l).into_owned()
                            }
                            Line::TooLong => {
                                net::skip_line(conn, timeout).await?;
                                String::new()
                            }
                            Line::Eof => return Ok(Next::Quit),
                        }
                    }
                };
                if response.trim() == "*" {
                    self.error(conn, "-ERR Authentication cancelled").await?;
                    return Ok(Next::Continue);
                }
                match command::decode_plain(&response) {
                    Some((user, password)) => self.login(conn, &user, &password).await?,
                    None => {
                        self.error(conn, "-ERR [AUTH] Invalid SASL PLAIN response")
                            .await?
                    }
                }
            }
            Command::Quit => {
                let reply = self.update().await;
                self.say(conn, &reply).await?;
                return Ok(Next::Quit);
            }
            _ if !authed => {
                self.error(conn, "-ERR Not logged in").await?;
            }
            Command::Stat => {
                let (n, size) = self.totals();
                self.say(conn, &format!("+OK {n} {size}\r\n")).await?;
            }
            Command::List(None) | Command::Uidl(None) => {
                let uidl = matches!(cmd, Command::Uidl(_));
                let (n, size) = self.totals();
                let mut out = if uidl {
                    String::from("+OK Unique IDs follow\r\n")
                } else {
                    format!("+OK {n} messages ({size} octets)\r\n")
                };
                for i in 0..self.messages.len() {
                    if !self.deleted[i] {
                        out.push_str(&format!("{} {}\r\n", i + 1, self.describe(i, uidl)));
                    }
                }
                out.push_str(".\r\n");
                self.say(conn, &out).await?;
            }
            Command::List(Some(n)) | Command::Uidl(Some(n)) => {
                let uidl = matches!(cmd, Command::Uidl(_));
                match self.index(n) {
                    Some(i) => {
                        self.say(conn, &format!("+OK {n} {}\r\n", self.describe(i, uidl)))
                            .await?
                    }
                    None => self.error(conn, "-ERR No such message").await?,
                }
            }
            Command::Retr(n) => match self.index(n) {
                Some(i) => {
                    self.send_message(conn, i, None).await?;
                    if let Some(login) = &self.login {
                        let (store, folder, uid) = (
                            login.account.store.clone(),
                            login.folder.clone(),
                            self.messages[i].uid,
                        );
                        store.fetched(&folder, &[uid]);
                    }
                }
                None => self.error(conn, "-ERR No such message").await?,
            },
            Command::Top(n, lines) => match self.index(n) {
                Some(i) => self.send_message(conn, i, Some(lines)).await?,
                None => self.error(conn, "-ERR No such message").await?,
            },
            Command::Dele(n) => match self.index(n) {
                Some(i) => {
                    self.deleted[i] = true;
                    self.say(conn, &format!("+OK Message {n} deleted\r\n"))
                        .await?;
                }
                None => self.error(conn, "-ERR No such message").await?,
            },
            Command::Rset => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let (n, size) = self.totals();
                self.say(conn, &format!("+OK {n} messages ({size} octets)\r\n"))
                    .await?;
            }
            Command::Noop => self.say(conn, "+OK\r\n").await?,
        }
        Ok(Next::Continue)
    }

    async fn login(&mut self, conn: &mut Conn, user: &str, password: &str) -> std::io::Result<()> {
        let domain = self.state.config.domain();
        let user_ok = match user.split_once('@') {
            Some((_, d)) => d.eq_ignore_ascii_case(&domain),
            None => true,
        };
        let result = if user_ok {
            self.state.auth.login(self.peer.ip(), user, password).await
        } else {
            self.state.auth.login(self.peer.ip(), "", password).await
        };
        let login = match result {
            Ok(l) => {
                self.state.telemetry.login(
                    "pop3",
                    true,
                    Some(l.record.id.as_str()),
                    self.peer.ip(),
                );
                l
            }
            Err(AuthError::Invalid) => {
                self.state
                    .telemetry
                    .login("pop3", false, None, self.peer.ip());
                tracing::info!(client = %self.peer, "pop3 login failed");
                return self
                    .error(conn, "-ERR [AUTH] Invalid mailbox ID or password")
                    .await;
            }
            Err(AuthError::Busy) => {
                tracing::info!(client = %self.peer, "pop3 login refused: too many logins in progress");
                return send(
                    conn,
                    "-ERR [SYS/TEMP] Too many logins in progress from your address; try again\r\n",
                )
                .await;
            }
            Err(AuthError::Temporary(e)) => {
                tracing::error!(client = %self.peer, error = %e, "pop3 login could not be checked");
                return send(
                    conn,
                    "-ERR [SYS/TEMP] Temporary failure, try again later\r\n",
                )
                .await;
            }
        };
        let reply = match self.open_maildrop(login) {
            Ok(text) | Err(text) => text,
        };
        self.say(conn, &reply).await
    }

    /// Takes the exclusive lock and lists the mailbox (the TRANSACTION state). Returns the
    /// reply line either way.
    fn open_maildrop(&mut self, login: auth::Session) -> Result<String, String> {
        let id = login.record.id.clone();
        let account = accounts::gateway(&self.state, login, "pop3", self.peer.ip());
        if !self.state.pop3_locks.lock().unwrap().insert(id.clone()) {
            tracing::info!(client = %self.peer, mailbox = %id, "pop3 login refused: mailbox in use");
            return Err("-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n".into());
        }
        let mut guard = LockGuard {
            state: self.state.clone(),
            id: id.clone(),
            _cluster: None,
        };
        let unavailable = "-ERR [SYS/TEMP] Cannot open the mailbox, try again later\r\n";
        if let Some(cluster) = &self.state.cluster {
            guard._cluster = Some(self.cluster_lock(cluster, &id).map_err(|e| match e {
                crate::cluster::ClaimError::Busy => {
                    tracing::info!(client = %self.peer, mailbox = %id, "pop3 login refused: mailbox in use on another node");
                    "-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n".to_owned()
                }
                crate::cluster::ClaimError::Store(e) => {
                    tracing::error!(mailbox = %id, error = %e, "cannot lock the mailbox in the cluster");
                    unavailable.to_owned()
                }
            })?);
        }
        let folder = account.store.folders().into_iter().next().ok_or_else(|| {
            tracing::error!(mailbox = %id, "the mailbox has no folder");
            unavailable.to_owned()
        })?;
        let opened = account
            .store
            .numbers(&folder)
            .and_then(|(uidvalidity, _)| Ok((uidvalidity, account.store.list(&folder)?)));
        let (uidvalidity, messages) = opened.map_err(|e| {
            tracing::error!(mailbox = %id, error = %e, "cannot list mailbox");
            unavailable.to_owned()
        })?;
        tracing::info!(client = %self.peer, mailbox = %id, messages = messages.len(), "pop3 login");
        self.deleted = vec![false; messages.len()];
        self.messages = messages;
        self.login = Some(Maildrop {
            account,
            folder,
            uidvalidity,
            _lock: guard,
        });
        let (n, size) = self.totals();
        Ok(format!(
            "+OK Mailbox open, {n} messages ({size} octets)\r\n"
        ))
    }

    /// The POP3 lock of a mailbox between the cluster's nodes (RFC 1939 exclusive access).
    fn cluster_lock(
        &self,
        cluster: &crate::cluster::Cluster,
        id: &MailboxId,
    ) -> Result<crate::cluster::claim::Held, crate::cluster::ClaimError> {
        let prefix = format!("mailboxes/{id}/lock/pop3");
        let claim = crate::cluster::Claim::acquire(
            &cluster.blobs,
            &prefix,
            &cluster.node,
            std::time::Duration::ZERO,
        )?;
        Ok(claim.keep())
    }

    fn totals(&self) -> (usize, u64) {
        self.messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| !**d)
            .fold((0, 0), |(n, s), (m, _)| (n + 1, s + m.size))
    }

    /// Index of message number `n` if it exists and is not deleted.
    fn index(&self, n: usize) -> Option<usize> {
        let i = n.checked_sub(1)?;
        (i < self.messages.len() && !self.deleted[i]).then_some(i)
    }

    fn describe(&self, i: usize, uidl: bool) -> String {
        let m = &self.messages[i];
        if uidl {
            let uidvalidity = self.login.as_ref().map(|l| l.uidvalidity).unwrap_or(0);
            format!("{uidvalidity}.{}", m.uid)
        } else {
            m.size.to_string()
        }
    }

    /// Streams a message (or its TOP part), decrypting on a blocking thread.
    async fn send_message(
        &mut self,
        conn: &mut Conn,
        i: usize,
        top: Option<usize>,
    ) -> std::io::Result<()> {
        let login = self.login.as_ref().expect("logged in");
        let meta = self.messages[i];
        let id = login.account.id.clone();
        let (store, folder) = (login.account.store.clone(), login.folder.clone());
        if meta.size <= SMALL_MESSAGE {
            let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                let mut reader = store.open(&folder, &meta).map_err(|e| e.to_string())?;
                let mut buf = Vec::with_capacity(meta.size as usize);
                reader.read_to_end(&mut buf).map_err(|e| e.to_string())?;
                if let Some(lines) = top {
                    let keep = TopLimit::new(lines).take(&buf);
                    buf.truncate(keep);
                }
                Ok(buf)
            })
            .await
            .map_err(std::io::Error::other)?;
            return match data {
                Ok(buf) => {
                    let mut out = Vec::with_capacity(buf.len() + buf.len() / 32 + 64);
                    out.extend_from_slice(format!("+OK {} octets\r\n", meta.size).as_bytes());
                    let mut stuffer = DotStuffer::default();
                    stuffer.feed(&buf, &mut out);
                    stuffer.finish(&mut out);
                    send_raw(conn, &out).await
                }
                Err(e) => {
                    tracing::error!(uid = meta.uid, error = %e, "cannot read message");
                    self.say(conn, "-ERR [SYS/TEMP] Message cannot be read\r\n")
                        .await
                }
            };
        }
        let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, String>>(4);
        tokio::task::spawn_blocking(move || {
            let mut reader = match store.open(&folder, &meta) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            };
            let mut limit = top.map(TopLimit::new);
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let keep = limit.as_mut().map(|l| l.take(&buf[..n])).unwrap_or(n);
                        buf.truncate(keep);
                        let done = limit.as_ref().is_some_and(|l| l.is_done());
                        if tx.blocking_send(Ok(buf)).is_err() || done {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::with_capacity(70 * 1024);
        let mut started = false;
        while let Some(chunk) = rx.recv().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(mailbox = %id, uid = meta.uid, error = %e, "cannot read message");
                    if started {
                        // Mid-transfer failure: the response cannot be repaired; drop the connection.
                        return Err(std::io::Error::other(e));
                    }
                    return self
                        .say(conn, "-ERR [SYS/TEMP] Message cannot be read\r\n")
                        .await;
                }
            };
            if !started {
                send_raw(conn, format!("+OK {} octets\r\n", meta.size).as_bytes()).await?;
                started = true;
            }
            out.clear();
            stuffer.feed(&chunk, &mut out);
            conn.get_mut().write_all(&out).await?;
        }
        if !started {
            send_raw(conn, format!("+OK {} octets\r\n", meta.size).as_bytes()).await?;
        }
        out.clear();
        stuffer.finish(&mut out);
        send_raw(conn, &out).await
    }

    /// The UPDATE state: removes the messages marked deleted.
    async fn update(&mut self) -> String {
        let Some(login) = self.login.as_ref() else {
            return "+OK Bye\r\n".into();
        };
        let uids: Vec<u32> = self
            .messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| **d)
            .map(|(m, _)| m.uid)
            .collect();
        if uids.is_empty() {
            return "+OK Bye\r\n".into();
        }
        let id = login.account.id.clone();
        let (store, folder) = (login.account.store.clone(), login.folder.clone());
        let count = uids.len();
        let result = tokio::task::spawn_blocking(move || store.expunge(&folder, &uids)).await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(client = %self.peer, mailbox = %id, deleted = count, "pop3 messages deleted");
                format!("+OK {count} messages deleted, bye\r\n")
            }
            Ok(Err(e)) => {
                tracing::error!(mailbox = %id, error = %e, "pop3 delete failed");
                "-ERR [SYS/TEMP] Some messages could not be deleted\r\n".into()
            }
            Err(e) => {
                tracing::error!(mailbox = %id, error = %e, "pop3 delete failed");
                "-ERR [SYS/TEMP] Some messages could not be deleted\r\n".into()
            }
        }
    }
}

async fn send(conn: &mut Conn, text: &str) -> std::io::Result<()> {
    send_raw(conn, text.as_bytes()).await
}

/// Queues bytes; they are flushed before the next read that would wait.
async fn send_raw(conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    conn.get_mut().write_all(bytes).await
}
