//! SMTP journal receiver (RFC 5321, 3207 STARTTLS, 3030 CHUNKING, 1870 SIZE, 6531 SMTPUTF8).
//!
//! Receive only: recipients must be gateway mailboxes of this host; nothing is relayed. A
//! message is acknowledged with 250 only after every copy is durable in the spool. Transient
//! problems (disk, shutdown, load) get 4xx, never 5xx: Exchange turns a 5xx into an NDR.

pub mod command;
pub mod data;
mod deliver;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::context::{self, State};
use crate::fsutil;
use crate::mailbox::{MailboxError, MailboxId, Status};
use crate::net::{self, Conn, Line, Stream};
use crate::spool::Delivery;
use command::{Command, Param, ParseError};

/// Longest command line accepted (RFC 5321 asks for at least 512).
const MAX_LINE: usize = 4096;
/// Errors tolerated in one session before it is closed.
const MAX_ERRORS: u32 = 20;
/// Commands tolerated in one session.
const MAX_COMMANDS: u32 = 100_000;

/// Accepts SMTP connections on `listener` until shutdown. `implicit_tls` listeners (465)
/// handshake before the greeting.
pub async fn run(listener: TcpListener, implicit_tls: bool, state: Arc<State>) {
    let how = context::Listener {
        protocol: if implicit_tls { "smtps" } else { "smtp" },
        implicit_tls,
        limit: state.smtp_limit.clone(),
        per_ip: state.smtp_per_ip.clone(),
        busy: b"421 4.3.2 Too many connections, try again later\r\n",
    };
    context::accept_loop(listener, how, state, serve_connection).await
}

/// How a session's command loop ended.
enum Outcome {
    StartTls,
    Close,
}

pub async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    state: Arc<State>,
) -> std::io::Result<()> {
    let mut conn = net::buffered(stream);
    let allowed = state.config.smtp.allowed_networks.is_empty()
        || state
            .config
            .smtp
            .allowed_networks
            .iter()
            .any(|n| n.contains(&peer.ip()));
    if !allowed {
        tracing::info!(client = %peer, "smtp connection refused: network not allowed");
        let reply = format!(
            "554 5.7.1 {} access denied for {}\r\n",
            state.config.hostname,
            peer.ip()
        );
        conn.get_mut().write_all(reply.as_bytes()).await?;
        return Ok(());
    }
    let greeting = format!("220 {} ESMTP journalgate\r\n", state.config.hostname);
    conn.get_mut().write_all(greeting.as_bytes()).await?;
    let mut session = Session::new(peer, state, conn.get_ref().tls_version());
    loop {
        match session.serve(&mut conn).await? {
            Outcome::Close => break,
            Outcome::StartTls => {
                // Anything the client pipelined after STARTTLS is discarded (RFC 3207 §6).
                let stream = conn.into_inner();
                let stream = stream
                    .upgrade(&session.state.tls, net::TLS_HANDSHAKE_TIMEOUT)
                    .await?;
                session.tls = stream.tls_version();
                conn = net::buffered(stream);
                session.helo = None;
                session.tx = None;
            }
        }
    }
    let _ = conn.get_mut().shutdown().await;
    Ok(())
}

/// The mail transaction under way.
struct Transaction {
    mail_from: String,
    smtputf8: bool,
    declared_size: u64,
    /// (address as given, mailbox)
    rcpts: Vec<(String, MailboxId)>,
    /// Set once BDAT chunks are being received.
    chunks: Option<Chunks>,
}

struct Chunks {
    delivery: Option<Delivery>,
    /// Message octets received so far (the trace header is not counted).
    received: u64,
    too_big: bool,
}

struct Session {
    peer: SocketAddr,
    state: Arc<State>,
    tls: Option<String>,
    helo: Option<(String, bool)>,
    tx: Option<Transaction>,
    errors: u32,
    commands: u32,
    pending: Vec<u8>,
}

/// A reply line to send.
type Reply = String;

impl Session {
    fn new(peer: SocketAddr, state: Arc<State>, tls: Option<String>) -> Session {
        Session {
            peer,
            state,
            tls,
            helo: None,
            tx: None,
            errors: 0,
            commands: 0,
            pending: Vec::new(),
        }
    }

    fn reply(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        self.state
            .trace
            .line("smtp", self.peer, "S", text.as_bytes());
        if let Some(reason) = crate::telemetry::reject_reason(text) {
            self.state
                .telemetry
                .rejected(reason, None, self.peer.ip(), text);
        }
        self.pending.extend_from_slice(text.as_bytes());
        self.pending.extend_from_slice(b"\r\n");
    }

    /// Sends queued replies unless more pipelined commands are already buffered.
    async fn flush_if_idle(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        if conn.buffer().is_empty() {
            self.flush(conn).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            conn.get_mut().write_all(&self.pending).await?;
            conn.get_mut().flush().await?;
            self.pending.clear();
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.state.config.smtp.timeout_secs)
    }

    async fn serve(&mut self, conn: &mut Conn) -> std::io::Result<Outcome> {
        let mut shutdown = self.state.shutdown.clone();
        loop {
            self.flush_if_idle(conn).await?;
            if *shutdown.borrow() {
                self.reply("421 4.3.2 Service shutting down, try again later");
                self.flush(conn).await?;
                return Ok(Outcome::Close);
            }
            let line = tokio::select! {
                line = net::read_line_timeout(conn, MAX_LINE, self.timeout()) => line,
                _ = shutdown.changed() => continue,
            };
            let line = match line {
                Ok(Line::Ok(line)) => {
                    self.state.trace.line("smtp", self.peer, "C", &line);
                    line
                }
                Ok(Line::Eof) => return Ok(Outcome::Close),
                Ok(Line::TooLong) => {
                    // Answer now (the client may wait for it), then drop the rest of the line.
                    self.error("500 5.5.2 Line too long");
                    self.flush(conn).await?;
                    if self.errors >= MAX_ERRORS {
                        return self.too_many_errors(conn).await;
                    }
                    if !net::skip_line(conn, self.timeout()).await? {
                        return Ok(Outcome::Close);
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.reply("421 4.4.2 Timeout, closing connection");
                    self.flush(conn).await?;
                    return Ok(Outcome::Close);
                }
                Err(e) => return Err(e),
            };
            self.commands += 1;
            if self.commands > MAX_COMMANDS {
                self.reply("421 4.7.0 Too many commands, closing connection");
                self.flush(conn).await?;
                return Ok(Outcome::Close);
            }
            let Ok(text) = String::from_utf8(line) else {
                self.error("500 5.5.2 Command is not valid UTF-8");
                continue;
            };
            let command = match command::parse(&text) {
                Ok(c) => c,
                Err(ParseError::Unknown) => {
                    self.error("500 5.5.1 Command not recognized");
                    if self.errors >= MAX_ERRORS {
                        return self.too_many_errors(conn).await;
                    }
                    continue;
                }
                Err(ParseError::Syntax(why)) => {
                    self.error(format!("501 5.5.4 Syntax error: {why}"));
                    if self.errors >= MAX_ERRORS {
                        return self.too_many_errors(conn).await;
                    }
                    continue;
                }
            };
            match command {
                Command::Helo(domain) => self.helo(domain, false),
                Command::Ehlo(domain) => self.helo(domain, true),
                Command::StartTls => {
                    if self.tls.is_some() {
                        self.error("503 5.5.1 TLS already active");
                    } else {
                        self.reply("220 2.0.0 Ready to start TLS");
                        self.flush(conn).await?;
                        return Ok(Outcome::StartTls);
                    }
                }
                Command::Mail { from, params } => self.mail(from, params),
                Command::Rcpt { to, params } => self.rcpt(to, params),
                Command::Data => self.data(conn).await?,
                Command::Bdat { size, last } => self.bdat(conn, size, last).await?,
                Command::Rset => {
                    self.tx = None;
                    self.reply("250 2.0.0 Reset");
                }
                Command::Noop => self.reply("250 2.0.0 OK"),
                Command::Quit => {
                    self.reply(format!(
                        "221 2.0.0 {} closing connection",
                        self.state.config.hostname
                    ));
                    self.flush(conn).await?;
                    return Ok(Outcome::Close);
                }
                Command::Vrfy => self.reply("252 2.1.5 Cannot VRFY user, but will accept message"),
                Command::Expn => self.error("502 5.5.1 EXPN not supported"),
                Command::Help => {
                    self.reply("214 2.0.0 journalgate receives journal reports; see RFC 5321")
                }
                Command::Auth => self.error("502 5.5.1 AUTH not supported"),
            }
            if self.errors >= MAX_ERRORS {
                return self.too_many_errors(conn).await;
            }
        }
    }

    fn error(&mut self, reply: impl AsRef<str>) {
        self.errors += 1;
        self.reply(reply);
    }

    async fn too_many_errors(&mut self, conn: &mut Conn) -> std::io::Result<Outcome> {
        tracing::info!(client = %self.peer, "smtp session closed after too many errors");
        self.reply("421 4.7.0 Too many errors, closing connection");
        self.flush(conn).await?;
        Ok(Outcome::Close)
    }

    fn helo(&mut self, domain: String, extended: bool) {
        self.tx = None;
        let host = &self.state.config.hostname;
        if !extended {
            self.reply(format!("250 {host}"));
        } else {
            let max = self.state.config.smtp.max_message_size;
            let mut lines = vec![
                format!("{host} greets {domain}"),
                "PIPELINING".to_owned(),
                format!("SIZE {max}"),
                "8BITMIME".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
            ];
            if self.tls.is_none() {
                lines.push("STARTTLS".to_owned());
            }
            lines.push("SMTPUTF8".to_owned());
            lines.push("CHUNKING".to_owned());
            let last = lines.len() - 1;
            for (i, line) in lines.into_iter().enumerate() {
                let sep = if i == last { ' ' } else { '-' };
                self.reply(format!("250{sep}{line}"));
            }
        }
        self.helo = Some((domain, extended));
    }

    fn mail(&mut self, from: String, params: Vec<Param>) {
        if self.helo.is_none() {
            return self.error("503 5.5.1 Send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return self.error("503 5.5.1 Sender already specified");
        }
        if self.state.config.smtp.require_tls && self.tls.is_none() {
            tracing::info!(client = %self.peer, "smtp mail refused: TLS required");
            return self.error("530 5.7.0 Must issue a STARTTLS command first");
        }
        let mut declared_size = 0;
        let mut smtputf8 = false;
        for p in &params {
            match (p.key.as_str(), p.value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) => declared_size = n,
                    Err(_) => return self.error("501 5.5.4 Invalid SIZE value"),
                },
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                ("SMTPUTF8", None) => smtputf8 = true,
                _ => return self.error(format!("555 5.5.4 Unsupported parameter {}", p.key)),
            }
        }
        if declared_size > self.state.config.smtp.max_message_size {
            tracing::info!(client = %self.peer, size = declared_size, "smtp mail refused: declared size too big");
            return self.error("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        if let Some(reply) = self.low_disk(declared_size) {
            return self.reply(reply);
        }
        if !smtputf8 && !from.is_ascii() {
            return self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        self.tx = Some(Transaction {
            mail_from: from,
            smtputf8,
            declared_size,
            rcpts: Vec::new(),
            chunks: None,
        });
        self.reply("250 2.1.0 Sender OK");
    }

    fn rcpt(&mut self, to: String, params: Vec<Param>) {
        let Some(tx) = self.tx.as_ref() else {
            return self.error("503 5.5.1 Need MAIL before RCPT");
        };
        if tx.chunks.is_some() {
            return self.error("503 5.5.1 RCPT not allowed during BDAT");
        }
        if let Some(p) = params.first() {
            return self.error(format!("555 5.5.4 Unsupported parameter {}", p.key));
        }
        if !tx.smtputf8 && !to.is_ascii() {
            return self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        if tx.rcpts.len() >= self.state.config.smtp.max_recipients {
            return self.reply("452 4.5.3 Too many recipients");
        }
        let reply = match self.resolve(&to) {
            Ok(id) => {
                if let Some(reply) = self.low_disk(tx.declared_size) {
                    return self.reply(reply);
                }
                self.tx.as_mut().expect("checked").rcpts.push((to, id));
                self.reply("250 2.1.5 Recipient OK");
                return;
            }
            Err(reply) => reply,
        };
        tracing::info!(client = %self.peer, reason = %reply, "smtp recipient refused");
        if reply.starts_with('5') {
            self.error(reply);
        } else {
            self.reply(reply);
        }
    }

    /// Maps a recipient address to an active gateway mailbox, or the reply refusing it.
    fn resolve(&self, address: &str) -> Result<MailboxId, Reply> {
        let (local, domain) = address
            .rsplit_once('@')
            .ok_or_else(|| "550 5.1.1 No such mailbox".to_owned())?;
        if !domain.eq_ignore_ascii_case(&self.state.config.hostname) {
            return Err(
                "550 5.7.1 Relaying denied: this host only receives for its own mailboxes".into(),
            );
        }
        let id = MailboxId::parse(local).map_err(|_| "550 5.1.1 No such mailbox".to_owned())?;
        if !id.as_str().eq_ignore_ascii_case(local) {
            return Err("550 5.1.1 No such mailbox".into());
        }
        match self.state.spool.mailboxes().load(&id) {
            Ok(record) if record.status == Status::Active => Ok(id),
            // Temporary, as MailStore Gateway answers: a 5xx would make Exchange give the
            // report up (to its NDR mailbox) instead of retrying once the mailbox is resumed.
            Ok(_) => Err("450 4.2.1 Mailbox suspended, try again later".into()),
            Err(MailboxError::NotFound(_)) => Err("550 5.1.1 No such mailbox".into()),
            Err(e) => {
                tracing::error!(mailbox = %id, error = %e, "cannot load mailbox");
                Err("451 4.3.0 Temporary failure looking up the mailbox".into())
            }
        }
    }

    /// A 452 reply when free disk space is below the reserve (plus the declared size).
    fn low_disk(&self, declared: u64) -> Option<Reply> {
        let reserve = self.state.config.spool.min_free_bytes;
        match fsutil::free_bytes(self.state.spool.data_dir()) {
            Ok(free) if free >= reserve.saturating_add(declared) => None,
            Ok(free) => {
                tracing::warn!(free, reserve, "refusing mail: low disk space");
                Some("452 4.3.1 Insufficient system storage".into())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot query free disk space");
                Some("452 4.3.1 Insufficient system storage".into())
            }
        }
    }

    /// Checks that a message may start (DATA or first BDAT); returns the refusal otherwise.
    fn ready_for_message(&self) -> Option<Reply> {
        match &self.tx {
            None => Some("503 5.5.1 Need MAIL and RCPT first".into()),
            Some(tx) if tx.rcpts.is_empty() => Some("554 5.5.1 No valid recipients".into()),
            Some(tx) => self.low_disk(tx.declared_size),
        }
    }
}
