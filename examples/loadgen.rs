//! Load client for the journalgate benchmarks (bench/run.sh, bench/imap.sh, bench/ingest.sh).
//!
//! ```text
//! loadgen smtp --addr 127.0.0.1:2525 --to ADDR --count N --size BYTES --concurrency C
//!              [--starttls] [--from ADDR] [--wait-maildir DIR]
//!              [--message-file PATH [--counter-start K]]
//! loadgen pop3 --addr 127.0.0.1:1995 --tls|--stls --user U --pass P [--batch 100] [--delete]
//! loadgen imap --addr 127.0.0.1:1993 --tls --user U --pass P [--batch 500] [--delete]
//! loadgen imap-select --addr 127.0.0.1:1993 --tls --user U --pass P [--repeat 5]
//! loadgen maildir --dir DIR --to ADDR --count N --size BYTES
//! ```
//!
//! Each run prints exactly one JSON line on stdout. MB = 10^6 bytes.
//!
//! SMTP: C connections; each sends EHLO (and STARTTLS when asked, accepting any
//! certificate), then MAIL/RCPT/DATA transactions on the same connection
//! (MAIL+RCPT+DATA pipelined when the server offers PIPELINING) until N messages
//! in total have been sent. Only a 250 reply to the end of DATA counts as a
//! success. Every message is a valid RFC 5322 message of exactly `--size` bytes,
//! CRLF lines of at most 78 octets, with a unique Message-ID.
//!
//! With `--message-file PATH` every message is instead the file's bytes (bare LF
//! turned into CRLF, dot-stuffed on the wire) with each literal `{n}` replaced by
//! the message's counter: `--counter-start` plus its global index 0..N-1, so a
//! template such as a journal report gets unique Message-IDs, and different runs
//! unique ones too when given different starts. `--size` is then ignored; MAIL
//! declares the largest message's SIZE and `bytes` counts the real octets.
//!
//! With `--wait-maildir DIR` the client then polls `DIR/new` + `DIR/cur` until
//! every accepted message has been delivered there and also reports the
//! delivered rate (time from the first connection to the last delivery).
//!
//! POP3: logs in (implicit TLS or STLS, USER/PASS), STAT, then pipelines
//! `RETR i` (and `DELE i` with `--delete`) in batches, parses the multi-line
//! answers with dot-unstuffing, and QUITs (the deletions are committed by the
//! server at QUIT, which is inside the measured time).
//!
//! IMAP (`imap`): the job of an archiving client. Logs in (implicit TLS, LOGIN
//! with quoted arguments), SELECT INBOX, UID SEARCH ALL, then for each batch of
//! `--batch` UIDs: `UID FETCH <set> (UID BODY.PEEK[])` (literals parsed by their
//! announced size; every message must contain a loadgen Message-ID), and with
//! `--delete` `UID STORE <set> +FLAGS.SILENT (\Deleted)` + `UID EXPUNGE <set>`
//! (both sent at once) for the UIDs whose body arrived; LOGOUT. Everything from
//! the TCP connect to the LOGOUT answer is inside the measured time.
//!
//! IMAP (`imap-select`): logs in once, then runs SELECT INBOX `--repeat` times
//! (UNSELECT, or CLOSE when the server lacks UNSELECT, in between) and reports
//! the first and the median of the later SELECT latencies and the EXISTS count.
//!
//! Maildir (`maildir`): writes N messages built exactly like the SMTP mode's
//! into `DIR/new` with unique Maildir names (no fsync), for filling a Dovecot
//! Maildir without a delivery agent.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "SMTP / POP3 / IMAP load client for bench/run.sh, bench/imap.sh and bench/ingest.sh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send N messages over C concurrent SMTP connections.
    Smtp(SmtpArgs),
    /// Download (and delete) every message of one POP3 mailbox.
    Pop3(Pop3Args),
    /// Archive (UID FETCH BODY.PEEK[], and delete) every message of one IMAP INBOX.
    Imap(ImapArgs),
    /// SELECT latency of one IMAP INBOX.
    ImapSelect(ImapSelectArgs),
    /// Write N generated messages into a Maildir's new/ folder.
    Maildir(MaildirArgs),
}

#[derive(Args, Clone)]
struct SmtpArgs {
    #[arg(long, default_value = "127.0.0.1:2525")]
    addr: String,
    /// Envelope and header recipient.
    #[arg(long)]
    to: String,
    /// Envelope and header sender.
    #[arg(long, default_value = "loadgen@bench.test")]
    from: String,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Size of each message in bytes (headers + body, before dot-stuffing).
    #[arg(long, default_value_t = 20_000)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Upgrade each connection with STARTTLS (any certificate accepted).
    #[arg(long)]
    starttls: bool,
    /// Speak LMTP (LHLO instead of EHLO) to an LMTP server on a TCP port.
    #[arg(long, conflicts_with = "starttls")]
    lmtp: bool,
    /// Name sent in EHLO.
    #[arg(long, default_value = "loadgen.bench.test")]
    helo: String,
    /// TLS server name (SNI) used for STARTTLS.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Timeout for each network read/write, seconds.
    #[arg(long, default_value_t = 120)]
    io_timeout: u64,
    /// Give up the whole run after this many seconds (unsent messages count as failures).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// After sending, wait until the accepted messages appear in this Maildir (new/ + cur/).
    #[arg(long)]
    wait_maildir: Option<std::path::PathBuf>,
    /// Send this file's bytes instead of a generated message, each `{n}` replaced by the
    /// message's counter (`--size` is ignored).
    #[arg(long)]
    message_file: Option<std::path::PathBuf>,
    /// The counter of the first message (`{n}` in `--message-file`).
    #[arg(long, default_value_t = 0, requires = "message_file")]
    counter_start: u64,
}

#[derive(Args, Clone)]
struct Pop3Args {
    #[arg(long, default_value = "127.0.0.1:1995")]
    addr: String,
    /// Implicit TLS (pop3s).
    #[arg(long, conflicts_with = "stls")]
    tls: bool,
    /// Plain connection upgraded with STLS.
    #[arg(long)]
    stls: bool,
    #[arg(long)]
    user: String,
    #[arg(long)]
    pass: String,
    /// Number of RETR (and DELE) commands pipelined per round trip.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// DELE every message (committed at QUIT).
    #[arg(long)]
    delete: bool,
    #[arg(long, default_value = "localhost")]
    sni: String,
    #[arg(long, default_value_t = 120)]
    io_timeout: u64,
}

#[derive(Args, Clone)]
struct ImapArgs {
    #[arg(long, default_value = "127.0.0.1:1993")]
    addr: String,
    /// Implicit TLS (imaps); without it the connection stays plain.
    #[arg(long)]
    tls: bool,
    #[arg(long)]
    user: String,
    #[arg(long)]
    pass: String,
    /// Number of UIDs per UID FETCH (and per UID STORE / UID EXPUNGE).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Flag each fetched batch \Deleted and UID EXPUNGE it.
    #[arg(long)]
    delete: bool,
    #[arg(long, default_value = "localhost")]
    sni: String,
    #[arg(long, default_value_t = 120)]
    io_timeout: u64,
}

#[derive(Args, Clone)]
struct ImapSelectArgs {
    #[arg(long, default_value = "127.0.0.1:1993")]
    addr: String,
    /// Implicit TLS (imaps); without it the connection stays plain.
    #[arg(long)]
    tls: bool,
    #[arg(long)]
    user: String,
    #[arg(long)]
    pass: String,
    /// Number of SELECTs (the first one is reported separately).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    #[arg(long, default_value = "localhost")]
    sni: String,
    #[arg(long, default_value_t = 600)]
    io_timeout: u64,
}

#[derive(Args, Clone)]
struct MaildirArgs {
    /// Maildir root; new/, cur/ and tmp/ are created when missing.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Header recipient.
    #[arg(long)]
    to: String,
    /// Header sender.
    #[arg(long, default_value = "loadgen@bench.test")]
    from: String,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Size of each message in bytes.
    #[arg(long, default_value_t = 20_000)]
    size: usize,
}

// ---------------------------------------------------------------- TLS

#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

// ---------------------------------------------------------------- connection

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream with its own read buffer, read line by line.
struct Conn {
    s: Option<Stream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    io_timeout: Duration,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Conn {
    async fn connect(addr: &str, io_timeout: Duration) -> io::Result<Conn> {
        let tcp = tokio::time::timeout(io_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| err("connect timeout"))??;
        tcp.set_nodelay(true)?;
        Ok(Conn {
            s: Some(Stream::Plain(tcp)),
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            io_timeout,
        })
    }

    async fn tls(&mut self, sni: &str) -> io::Result<()> {
        if self.start != self.end {
            return Err(err("unexpected data before TLS handshake"));
        }
        let tcp = match self.s.take() {
            Some(Stream::Plain(t)) => t,
            _ => return Err(err("already TLS")),
        };
        let name =
            ServerName::try_from(sni.to_string()).map_err(|e| err(format!("bad SNI: {e}")))?;
        let tls = tokio::time::timeout(self.io_timeout, tls_connector().connect(name, tcp))
            .await
            .map_err(|_| err("TLS handshake timeout"))??;
        self.s = Some(Stream::Tls(Box::new(tls)));
        Ok(())
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len();
                self.buf.resize(n * 2, 0);
            }
        }
        let s = self.s.as_mut().expect("stream");
        let n = tokio::time::timeout(self.io_timeout, s.read(&mut self.buf[self.end..]))
            .await
            .map_err(|_| err("read timeout"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Appends one line (including its LF) to `out`.
    async fn read_line(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&avail[..=i]);
                self.start += i + 1;
                return Ok(());
            }
            if out.len() + avail.len() > 64 * 1024 * 1024 {
                return Err(err("line too long"));
            }
            out.extend_from_slice(avail);
            self.start = self.end;
            self.fill().await?;
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let s = self.s.as_mut().expect("stream");
        tokio::time::timeout(self.io_timeout, async {
            s.write_all(data).await?;
            s.flush().await
        })
        .await
        .map_err(|_| err("write timeout"))?
    }

    async fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let s = self.s.as_mut().expect("stream");
        tokio::time::timeout(self.io_timeout, async {
            for p in parts {
                s.write_all(p).await?;
            }
            s.flush().await
        })
        .await
        .map_err(|_| err("write timeout"))?
    }

    /// Reads one (possibly multi-line) SMTP reply: (code, all lines).
    async fn smtp_reply(&mut self) -> io::Result<(u16, String)> {
        let mut text = String::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            self.read_line(&mut line).await?;
            let l = String::from_utf8_lossy(&line);
            let l = l.trim_end();
            if l.len() < 3 {
                return Err(err(format!("bad SMTP reply line {l:?}")));
            }
            let code: u16 = l[..3]
                .parse()
                .map_err(|_| err(format!("bad SMTP reply line {l:?}")))?;
            text.push_str(l);
            text.push('\n');
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text));
            }
        }
    }

    async fn pop3_status(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.read_line(&mut line).await?;
        let l = String::from_utf8_lossy(&line).trim_end().to_string();
        if l.starts_with("+OK") {
            Ok(l)
        } else {
            Err(err(format!("POP3 error: {l}")))
        }
    }
}

// ---------------------------------------------------------------- SMTP

struct Template {
    /// Header block up to and including the Message-ID digits placeholder position.
    head: Vec<u8>,
    idx_pos: usize,
    /// Body, ending with CRLF, followed by the ".\r\n" terminator.
    body: Vec<u8>,
}

const IDX_DIGITS: usize = 10;

fn build_template(from: &str, to: &str, size: usize) -> Template {
    let run: u64 = rand::random();
    let date = chrono::Utc::now().to_rfc2822();
    let mut head = format!(
        "From: Load Generator <{}>\r\nTo: <{}>\r\nSubject: loadgen benchmark message\r\nDate: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nMessage-ID: <lg-{:016x}-",
        from, to, date, run
    );
    let idx_pos = head.len();
    head.push_str(&"0".repeat(IDX_DIGITS));
    head.push_str("@loadgen.bench.test>\r\n\r\n");
    let head = head.into_bytes();

    // Body: pseudo-random printable text, lines of 76 chars + CRLF (78 octets).
    // The alphabet has no '.', so no line needs dot-stuffing.
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 +-/=";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ run;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ALPHA[(x % ALPHA.len() as u64) as usize]
    };
    let mut remaining = size.saturating_sub(head.len()).max(2);
    let mut body = Vec::with_capacity(remaining + 3);
    let mut line = |n: usize, body: &mut Vec<u8>| {
        for i in 0..n {
            let c = next();
            // no line starting with a space, no trailing space
            body.push(if c == b' ' && (i == 0 || i + 1 == n) {
                b'x'
            } else {
                c
            });
        }
        body.extend_from_slice(b"\r\n");
    };
    while remaining > 0 {
        if remaining >= 78 + 78 || remaining == 78 {
            line(76, &mut body);
            remaining -= 78;
        } else if remaining > 78 {
            // 79..=155 left: split into two lines so that both are >= 2 octets and <= 78
            let first = remaining / 2;
            line(first - 2, &mut body);
            remaining -= first;
        } else {
            line(remaining - 2, &mut body);
            remaining = 0;
        }
    }
    body.extend_from_slice(b".\r\n");
    Template {
        head,
        idx_pos,
        body,
    }
}

/// A message read from `--message-file`: CRLF lines, dot-stuffed, cut at every `{n}`.
struct FileTemplate {
    /// The text around the `{n}` placeholders; the last piece ends with ".\r\n".
    pieces: Vec<Vec<u8>>,
    /// Octets of one message without its placeholders (before dot-stuffing, no terminator).
    fixed_len: usize,
}

impl FileTemplate {
    fn load(path: &std::path::Path) -> io::Result<FileTemplate> {
        let raw = std::fs::read(path)?;
        if raw.is_empty() {
            return Err(err(format!("{}: empty message file", path.display())));
        }
        // CRLF line endings, ending with CRLF
        let mut msg = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
        for (i, &b) in raw.iter().enumerate() {
            if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                msg.push(b'\r');
            }
            msg.push(b);
        }
        if !msg.ends_with(b"\r\n") {
            msg.extend_from_slice(b"\r\n");
        }
        let holes = memchr::memmem::find_iter(&msg, b"{n}").count();
        let fixed_len = msg.len() - 3 * holes;
        // Dot-stuffing: `{n}` becomes digits, so it never starts a line with a dot.
        let mut stuffed = Vec::with_capacity(msg.len() + 64);
        for line in msg.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                stuffed.push(b'.');
            }
            stuffed.extend_from_slice(line);
        }
        let mut pieces: Vec<Vec<u8>> = Vec::with_capacity(holes + 1);
        let mut from = 0;
        for at in memchr::memmem::find_iter(&stuffed, b"{n}") {
            pieces.push(stuffed[from..at].to_vec());
            from = at + 3;
        }
        let mut last = stuffed[from..].to_vec();
        last.extend_from_slice(b".\r\n");
        pieces.push(last);
        Ok(FileTemplate { pieces, fixed_len })
    }

    /// Octets of message `n` (before dot-stuffing, without the terminator).
    fn len_of(&self, n: u64) -> usize {
        self.fixed_len + (self.pieces.len() - 1) * n.to_string().len()
    }

    /// Message `n` as sent after DATA (dot-stuffed, with the terminator) into `out`.
    fn render(&self, n: u64, out: &mut Vec<u8>) {
        let digits = n.to_string();
        out.clear();
        for (i, p) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(digits.as_bytes());
            }
            out.extend_from_slice(p);
        }
    }
}

#[derive(Default)]
struct SmtpStats {
    ok: AtomicUsize,
    bytes: AtomicU64,
    /// Unix time of the latest 250 after DATA, microseconds.
    last_ok_us: AtomicU64,
    errors: Mutex<Vec<String>>,
    latencies_us: Mutex<Vec<u64>>,
    reconnects: AtomicUsize,
}

impl SmtpStats {
    fn note_error(&self, e: String) {
        let mut v = self.errors.lock().unwrap();
        if v.len() < 10 {
            v.push(e);
        }
    }
}

async fn smtp_session(
    a: &SmtpArgs,
    t: &Template,
    file: Option<&FileTemplate>,
    next: &AtomicUsize,
    stats: &SmtpStats,
    lat: &mut Vec<u64>,
) -> io::Result<()> {
    let to = Duration::from_secs(a.io_timeout);
    let mut c = Conn::connect(&a.addr, to).await?;
    let (code, text) = c.smtp_reply().await?;
    if code != 220 {
        return Err(err(format!("greeting: {}", text.trim())));
    }
    let hello = if a.lmtp { "LHLO" } else { "EHLO" };
    let ehlo = format!("{hello} {}\r\n", a.helo);
    c.write_all(ehlo.as_bytes()).await?;
    let (mut code, mut text) = c.smtp_reply().await?;
    if code != 250 {
        return Err(err(format!("{hello}: {}", text.trim())));
    }
    if a.starttls {
        c.write_all(b"STARTTLS\r\n").await?;
        let (scode, stext) = c.smtp_reply().await?;
        if scode != 220 {
            return Err(err(format!("STARTTLS: {}", stext.trim())));
        }
        c.tls(&a.sni).await?;
        c.write_all(ehlo.as_bytes()).await?;
        (code, text) = c.smtp_reply().await?;
        if code != 250 {
            return Err(err(format!("EHLO after TLS: {}", text.trim())));
        }
    }
    let upper = text.to_ascii_uppercase();
    let pipelining = upper.contains("PIPELINING");
    let size_ext = upper.contains("250-SIZE") || upper.contains("250 SIZE");
    let size = match file {
        Some(f) => f.len_of(a.counter_start + a.count.saturating_sub(1) as u64),
        None => a.size,
    };
    let mail = if size_ext {
        format!("MAIL FROM:<{}> SIZE={}\r\n", a.from, size)
    } else {
        format!("MAIL FROM:<{}>\r\n", a.from)
    };
    let rcpt = format!("RCPT TO:<{}>\r\n", a.to);
    let mut head = t.head.clone();
    let mut filed = Vec::new();
    loop {
        let idx = next.fetch_add(1, Ordering::Relaxed);
        if idx >= a.count {
            break;
        }
        let msg_len = match file {
            Some(f) => {
                let n = a.counter_start + idx as u64;
                f.render(n, &mut filed);
                f.len_of(n)
            }
            None => {
                let digits = format!("{:0width$}", idx, width = IDX_DIGITS);
                head[t.idx_pos..t.idx_pos + IDX_DIGITS].copy_from_slice(digits.as_bytes());
                a.size
            }
        };
        let t0 = Instant::now();
        let (mc, rc, dc, dtext);
        if pipelining {
            let cmds = format!("{mail}{rcpt}DATA\r\n");
            c.write_all(cmds.as_bytes()).await?;
            mc = c.smtp_reply().await?;
            rc = c.smtp_reply().await?;
            let d = c.smtp_reply().await?;
            dc = d.0;
            dtext = d.1;
        } else {
            c.write_all(mail.as_bytes()).await?;
            mc = c.smtp_reply().await?;
            if mc.0 != 250 {
                stats.note_error(format!("MAIL: {}", mc.1.trim()));
                c.write_all(b"RSET\r\n").await?;
                c.smtp_reply().await?;
                continue;
            }
            c.write_all(rcpt.as_bytes()).await?;
            rc = c.smtp_reply().await?;
            if rc.0 / 100 != 2 {
                stats.note_error(format!("RCPT: {}", rc.1.trim()));
                c.write_all(b"RSET\r\n").await?;
                c.smtp_reply().await?;
                continue;
            }
            c.write_all(b"DATA\r\n").await?;
            let d = c.smtp_reply().await?;
            dc = d.0;
            dtext = d.1;
        }
        if dc != 354 {
            stats.note_error(format!(
                "MAIL {} / RCPT {} / DATA {}",
                mc.1.trim(),
                rc.1.trim(),
                dtext.trim()
            ));
            c.write_all(b"RSET\r\n").await?;
            c.smtp_reply().await?;
            continue;
        }
        if mc.0 != 250 || rc.0 / 100 != 2 {
            // DATA was accepted although MAIL or RCPT failed: end it empty.
            c.write_all(b".\r\n").await?;
            c.smtp_reply().await?;
            stats.note_error(format!("MAIL {} / RCPT {}", mc.1.trim(), rc.1.trim()));
            continue;
        }
        if file.is_some() {
            c.write_parts(&[&filed]).await?;
        } else {
            c.write_parts(&[&head, &t.body]).await?;
        }
        let (code, text) = c.smtp_reply().await?;
        if code == 250 {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(msg_len as u64, Ordering::Relaxed);
            stats.last_ok_us.fetch_max(unix_us(), Ordering::Relaxed);
            lat.push(t0.elapsed().as_micros() as u64);
        } else {
            stats.note_error(format!("end of DATA: {}", text.trim()));
        }
    }
    let _ = c.write_all(b"QUIT\r\n").await;
    let _ = c.smtp_reply().await;
    Ok(())
}

fn count_maildir(dir: &std::path::Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|d| {
            std::fs::read_dir(dir.join(d))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn run_smtp(a: SmtpArgs) -> i32 {
    let file = match a.message_file.as_deref().map(FileTemplate::load) {
        None => None,
        Some(Ok(f)) => Some(Arc::new(f)),
        Some(Err(e)) => {
            let out = json!({"mode": "smtp", "addr": a.addr, "count": a.count, "messages": 0,
                             "failures": a.count, "error": e.to_string()});
            println!("{out}");
            return 1;
        }
    };
    let t = Arc::new(build_template(&a.from, &a.to, a.size));
    let a = Arc::new(a);
    let next = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(SmtpStats::default());
    let baseline = a.wait_maildir.as_deref().map(count_maildir).unwrap_or(0);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.timeout);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (a, t, next, stats) = (a.clone(), t.clone(), next.clone(), stats.clone());
        let file = file.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures_in_a_row = 0;
            while next.load(Ordering::Relaxed) < a.count && Instant::now() < deadline {
                match smtp_session(&a, &t, file.as_deref(), &next, &stats, &mut lat).await {
                    Ok(()) => failures_in_a_row = 0,
                    Err(e) => {
                        stats.note_error(format!("session: {e}"));
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        failures_in_a_row += 1;
                        if failures_in_a_row >= 5 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            stats.latencies_us.lock().unwrap().extend(lat);
        }));
    }
    let all = futures_join(tasks);
    let timed_out = tokio::time::timeout_at(deadline.into(), all).await.is_err();
    let secs = start.elapsed().as_secs_f64();
    let ok = stats.ok.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    // with --message-file: the mean size of the accepted messages
    let size = match &file {
        Some(_) if ok > 0 => (bytes as f64 / ok as f64).round() as u64,
        Some(f) => f.len_of(a.counter_start) as u64,
        None => a.size as u64,
    };
    let last_ok_us = stats.last_ok_us.load(Ordering::Relaxed);
    let mut out = json!({
        "mode": "smtp",
        "addr": a.addr,
        "starttls": a.starttls,
        "lmtp": a.lmtp,
        "concurrency": a.concurrency,
        "size": size,
        "count": a.count,
        "messages": ok,
        "bytes": bytes,
        "seconds": r3(secs),
        "msgs_per_s": r3(ok as f64 / secs),
        "mb_per_s": r3(bytes as f64 / 1e6 / secs),
        "failures": a.count - ok,
        "timed_out": timed_out,
        "reconnects": stats.reconnects.load(Ordering::Relaxed),
        "latency_ms_p50": r3(pct(&lat, 0.50)),
        "latency_ms_p99": r3(pct(&lat, 0.99)),
        "latency_ms_max": r3(pct(&lat, 1.0)),
        "errors": *stats.errors.lock().unwrap(),
    });
    if let Some(path) = a.message_file.as_deref() {
        out["message_file"] = json!(path.display().to_string());
        out["counter_start"] = json!(a.counter_start);
    }
    if last_ok_us > 0 {
        // wall clock of the last 250 after DATA (e.g. for an archive's lag behind SMTP)
        out["last_250_unix"] = json!(r3(last_ok_us as f64 / 1e6));
    }
    if let Some(dir) = a.wait_maildir.as_deref() {
        // Delivered rate: from the start of sending until the last accepted
        // message is in the Maildir.
        let want = baseline + ok;
        let mut have = count_maildir(dir);
        let wait_deadline = Instant::now().max(deadline) + Duration::from_secs(60);
        while have < want && Instant::now() < wait_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            have = count_maildir(dir);
        }
        let dsecs = start.elapsed().as_secs_f64();
        let delivered = have.saturating_sub(baseline).min(ok);
        let dbytes = delivered as u64 * size;
        out["delivered"] = json!(delivered);
        out["delivered_seconds"] = json!(r3(dsecs));
        out["delivered_msgs_per_s"] = json!(r3(delivered as f64 / dsecs));
        out["delivered_mb_per_s"] = json!(r3(dbytes as f64 / 1e6 / dsecs));
        out["delivery_timed_out"] = json!(have < want);
    }
    println!("{out}");
    if ok == a.count {
        0
    } else {
        1
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

// ---------------------------------------------------------------- POP3

async fn run_pop3(a: Pop3Args) -> i32 {
    let start = Instant::now();
    match pop3(&a).await {
        Ok((n, bytes, verified)) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({
                    "mode": "pop3",
                    "addr": a.addr,
                    "tls": if a.tls { "implicit" } else if a.stls { "stls" } else { "none" },
                    "delete": a.delete,
                    "batch": a.batch,
                    "messages": n,
                    "bytes": bytes,
                    "verified": verified,
                    "seconds": r3(secs),
                    "msgs_per_s": r3(n as f64 / secs),
                    "mb_per_s": r3(bytes as f64 / 1e6 / secs),
                    "failures": 0,
                })
            );
            0
        }
        Err(e) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"mode": "pop3", "addr": a.addr, "messages": 0, "bytes": 0, "seconds": r3(secs),
                       "msgs_per_s": 0.0, "mb_per_s": 0.0, "failures": 1, "error": e.to_string()})
            );
            1
        }
    }
}

/// Returns (messages retrieved, octets retrieved after unstuffing, messages that
/// carried a loadgen Message-ID).
async fn pop3(a: &Pop3Args) -> io::Result<(usize, u64, usize)> {
    let mut c = Conn::connect(&a.addr, Duration::from_secs(a.io_timeout)).await?;
    if a.tls {
        c.tls(&a.sni).await?;
    }
    c.pop3_status().await?;
    if a.stls {
        c.write_all(b"STLS\r\n").await?;
        c.pop3_status().await?;
        c.tls(&a.sni).await?;
    }
    c.write_all(format!("USER {}\r\n", a.user).as_bytes())
        .await?;
    c.pop3_status().await?;
    c.write_all(format!("PASS {}\r\n", a.pass).as_bytes())
        .await?;
    c.pop3_status().await?;
    c.write_all(b"STAT\r\n").await?;
    let stat = c.pop3_status().await?;
    let n: usize = stat
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("bad STAT answer: {stat}")))?;
    let mut bytes = 0u64;
    let mut verified = 0usize;
    let mut line = Vec::with_capacity(1024);
    let mut msg_head = Vec::with_capacity(4096);
    let batch = a.batch.max(1);
    let mut i = 1;
    while i <= n {
        let end = (i + batch - 1).min(n);
        let mut cmds = String::new();
        for k in i..=end {
            cmds.push_str(&format!("RETR {k}\r\n"));
            if a.delete {
                cmds.push_str(&format!("DELE {k}\r\n"));
            }
        }
        c.write_all(cmds.as_bytes()).await?;
        for k in i..=end {
            let st = c
                .pop3_status()
                .await
                .map_err(|e| err(format!("RETR {k}: {e}")))?;
            let _ = st;
            msg_head.clear();
            loop {
                line.clear();
                c.read_line(&mut line).await?;
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                let data = if line.first() == Some(&b'.') {
                    &line[1..]
                } else {
                    &line[..]
                };
                bytes += data.len() as u64;
                if msg_head.len() < 4096 {
                    msg_head.extend_from_slice(data);
                }
            }
            const PAT: &[u8] = b"\nMessage-ID: <lg-";
            if msg_head
                .windows(PAT.len())
                .any(|w| w.eq_ignore_ascii_case(PAT))
            {
                verified += 1;
            }
            if a.delete {
                c.pop3_status()
                    .await
                    .map_err(|e| err(format!("DELE {k}: {e}")))?;
            }
        }
        i = end + 1;
    }
    c.write_all(b"QUIT\r\n").await?;
    c.pop3_status().await?;
    Ok((n, bytes, verified))
}

// ---------------------------------------------------------------- IMAP

/// The size of a literal announced at the end of a response line (`{N}` or
/// `{N+}` followed by CRLF), if any.
fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = &l[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One IMAP server response: `parts[i]` is the protocol text before literal
/// `lits[i]`; the last part is the rest of the response (ending with CRLF).
#[derive(Default)]
struct ImapResp {
    parts: Vec<Vec<u8>>,
    lits: Vec<Vec<u8>>,
}

impl ImapResp {
    fn first(&self) -> &[u8] {
        self.parts.first().map(|p| p.as_slice()).unwrap_or(b"")
    }
}

/// IMAP quoted string.
fn imap_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            q.push('\\');
        }
        q.push(ch);
    }
    q.push('"');
    q
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// The number after `word ` in `text` (e.g. `UID 17`), case-insensitive, at a
/// token boundary.
fn number_after(text: &[u8], word: &[u8]) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = find_ci(&text[from..], word) {
        let at = from + i;
        let before_ok = at == 0 || matches!(text[at - 1], b' ' | b'(');
        let rest = &text[at + word.len()..];
        if before_ok && rest.first() == Some(&b' ') {
            let digits: Vec<u8> = rest[1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            if !digits.is_empty() {
                return std::str::from_utf8(&digits).ok()?.parse().ok();
            }
        }
        from = at + word.len();
    }
    None
}

/// Compact IMAP sequence set for sorted UIDs: `1:500` or `3,5:9`.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if i == j {
            out.push_str(&uids[i].to_string());
        } else {
            out.push_str(&format!("{}:{}", uids[i], uids[j]));
        }
        i = j + 1;
    }
    out
}

struct Imap {
    c: Conn,
    next_tag: u32,
}

impl Imap {
    async fn connect(addr: &str, tls: bool, sni: &str, io_timeout: Duration) -> io::Result<Imap> {
        let mut c = Conn::connect(addr, io_timeout).await?;
        if tls {
            c.tls(sni).await?;
        }
        let mut im = Imap { c, next_tag: 1 };
        let mut g = ImapResp::default();
        im.read_resp(&mut g).await?;
        if !g.first().starts_with(b"* OK") {
            return Err(err(format!(
                "IMAP greeting: {}",
                String::from_utf8_lossy(g.first()).trim_end()
            )));
        }
        Ok(im)
    }

    /// Reads one complete response, literals included.
    async fn read_resp(&mut self, r: &mut ImapResp) -> io::Result<()> {
        r.parts.clear();
        r.lits.clear();
        loop {
            let mut line = Vec::new();
            self.c.read_line(&mut line).await?;
            let lit = literal_len(&line);
            r.parts.push(line);
            match lit {
                Some(n) => {
                    let mut data = Vec::with_capacity(n);
                    self.c.read_exact_into(n, &mut data).await?;
                    r.lits.push(data);
                }
                None => return Ok(()),
            }
        }
    }

    fn tag(&mut self) -> String {
        let t = format!("a{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    /// Reads responses until the tagged one for `tag`, handing every untagged
    /// response to `on_untagged`. Errors unless the tagged status is OK.
    async fn until_tagged(
        &mut self,
        tag: &str,
        what: &str,
        mut on_untagged: impl FnMut(&ImapResp),
    ) -> io::Result<String> {
        let mut r = ImapResp::default();
        let prefix = format!("{tag} ");
        loop {
            self.read_resp(&mut r).await?;
            if r.first().starts_with(prefix.as_bytes()) {
                let line = String::from_utf8_lossy(r.first()).trim_end().to_string();
                let status = &line[prefix.len()..];
                if status
                    .get(..2)
                    .is_some_and(|s| s.eq_ignore_ascii_case("OK"))
                {
                    return Ok(line);
                }
                return Err(err(format!("{what}: {line}")));
            }
            if r.first().starts_with(b"* BYE") && what != "LOGOUT" {
                return Err(err(format!(
                    "{what}: {}",
                    String::from_utf8_lossy(r.first()).trim_end()
                )));
            }
            on_untagged(&r);
        }
    }

    /// Sends one command and waits for its tagged OK.
    async fn simple(
        &mut self,
        cmd: &str,
        what: &str,
        on_untagged: impl FnMut(&ImapResp),
    ) -> io::Result<String> {
        let tag = self.tag();
        self.c
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await?;
        self.until_tagged(&tag, what, on_untagged).await
    }

    async fn login(&mut self, user: &str, pass: &str) -> io::Result<()> {
        let cmd = format!("LOGIN {} {}", imap_quote(user), imap_quote(pass));
        self.simple(&cmd, "LOGIN", |_| {}).await.map(|_| ())
    }

    /// SELECT INBOX; returns the EXISTS count.
    async fn select(&mut self) -> io::Result<u64> {
        let mut exists: Option<u64> = None;
        self.simple("SELECT INBOX", "SELECT", |r| {
            let t = r.first();
            if t.starts_with(b"* ") && find_ci(t, b" EXISTS").is_some() {
                exists = std::str::from_utf8(&t[2..])
                    .ok()
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse().ok());
            }
        })
        .await?;
        exists.ok_or_else(|| err("SELECT: no EXISTS"))
    }

    async fn logout(&mut self) -> io::Result<()> {
        self.simple("LOGOUT", "LOGOUT", |_| {}).await.map(|_| ())
    }
}

impl Conn {
    /// Appends exactly `n` bytes to `out`.
    async fn read_exact_into(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let take = left.min(self.end - self.start);
            out.extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            left -= take;
        }
        Ok(())
    }
}

/// Whether a fetched message carries a loadgen Message-ID in its header.
fn has_loadgen_id(msg: &[u8]) -> bool {
    let head_end = memchr::memmem::find(msg, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(msg, b"\n\n"))
        .unwrap_or(msg.len());
    find_ci(&msg[..head_end], b"Message-ID: <lg-").is_some()
}

#[derive(Default)]
struct ImapJob {
    exists: u64,
    uids: usize,
    messages: usize,
    bytes: u64,
    verified: usize,
    deleted: usize,
    login_ms: f64,
    select_ms: f64,
    search_ms: f64,
    fetch_s: f64,
    delete_s: f64,
}

async fn imap_job(a: &ImapArgs, job: &mut ImapJob) -> io::Result<()> {
    let t0 = Instant::now();
    let mut im = Imap::connect(&a.addr, a.tls, &a.sni, Duration::from_secs(a.io_timeout)).await?;
    im.login(&a.user, &a.pass).await?;
    job.login_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    job.exists = im.select().await?;
    job.select_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let mut uids: Vec<u32> = Vec::new();
    im.simple("UID SEARCH ALL", "UID SEARCH", |r| {
        let l = r.first();
        if l.len() >= 8 && l[..8].eq_ignore_ascii_case(b"* SEARCH") {
            uids.extend(
                String::from_utf8_lossy(&l[8..])
                    .split_whitespace()
                    .filter_map(|n| n.parse::<u32>().ok()),
            );
        }
    })
    .await?;
    uids.sort_unstable();
    uids.dedup();
    job.uids = uids.len();
    job.search_ms = t.elapsed().as_secs_f64() * 1e3;

    for chunk in uids.chunks(a.batch.max(1)) {
        let t = Instant::now();
        let set = uid_set(chunk);
        let mut got: Vec<u32> = Vec::with_capacity(chunk.len());
        let (mut n, mut bytes, mut verified) = (0usize, 0u64, 0usize);
        im.simple(
            &format!("UID FETCH {set} (UID BODY.PEEK[])"),
            "UID FETCH",
            |r| {
                if !r.first().starts_with(b"* ") || find_ci(r.first(), b" FETCH ").is_none() {
                    return;
                }
                // the literal announced right after "BODY[] "
                let Some(i) = r
                    .parts
                    .iter()
                    .take(r.lits.len())
                    .position(|p| find_ci(p, b"BODY[] {").is_some())
                else {
                    return;
                };
                let body = &r.lits[i];
                n += 1;
                bytes += body.len() as u64;
                if has_loadgen_id(body) {
                    verified += 1;
                    let uid = r
                        .parts
                        .iter()
                        .find_map(|p| number_after(p, b"UID"))
                        .and_then(|u| u32::try_from(u).ok());
                    if let Some(u) = uid {
                        got.push(u);
                    }
                }
            },
        )
        .await?;
        job.messages += n;
        job.bytes += bytes;
        job.verified += verified;
        job.fetch_s += t.elapsed().as_secs_f64();

        if a.delete && !got.is_empty() {
            let t = Instant::now();
            got.sort_unstable();
            got.dedup();
            let set = uid_set(&got);
            let (t1, t2) = (im.tag(), im.tag());
            let cmds = format!(
                "{t1} UID STORE {set} +FLAGS.SILENT (\\Deleted)\r\n{t2} UID EXPUNGE {set}\r\n"
            );
            im.c.write_all(cmds.as_bytes()).await?;
            // A server may run the pipelined UID EXPUNGE before it answers the
            // UID STORE (Dovecot does), so count `* n EXPUNGE` under both.
            let mut expunged = 0usize;
            let mut count = |r: &ImapResp| {
                if r.first().starts_with(b"* ") && find_ci(r.first(), b" EXPUNGE").is_some() {
                    expunged += 1;
                }
            };
            im.until_tagged(&t1, "UID STORE", &mut count).await?;
            im.until_tagged(&t2, "UID EXPUNGE", &mut count).await?;
            job.deleted += expunged;
            job.delete_s += t.elapsed().as_secs_f64();
        }
    }
    im.logout().await?;
    Ok(())
}

async fn run_imap(a: ImapArgs) -> i32 {
    let start = Instant::now();
    let mut job = ImapJob::default();
    let res = imap_job(&a, &mut job).await;
    let secs = start.elapsed().as_secs_f64();
    let expected = job.exists.max(job.uids as u64) as usize;
    let failures = match &res {
        Ok(()) => expected.saturating_sub(job.verified),
        Err(_) => expected.saturating_sub(job.verified).max(1),
    };
    let mut out = json!({
        "mode": "imap",
        "addr": a.addr,
        "tls": if a.tls { "implicit" } else { "none" },
        "delete": a.delete,
        "batch": a.batch,
        "exists": job.exists,
        "uids": job.uids,
        "messages": job.messages,
        "bytes": job.bytes,
        "verified": job.verified,
        "expunged": job.deleted,
        "seconds": r3(secs),
        "msgs_per_s": r3(job.messages as f64 / secs),
        "mb_per_s": r3(job.bytes as f64 / 1e6 / secs),
        "login_ms": r3(job.login_ms),
        "select_ms": r3(job.select_ms),
        "search_ms": r3(job.search_ms),
        "fetch_seconds": r3(job.fetch_s),
        "store_expunge_seconds": r3(job.delete_s),
        "failures": failures,
    });
    if let Err(e) = &res {
        out["error"] = json!(e.to_string());
    }
    println!("{out}");
    i32::from(failures > 0)
}

async fn imap_select_job(
    a: &ImapSelectArgs,
    lat: &mut Vec<f64>,
    exists: &mut Vec<u64>,
    login_ms: &mut f64,
) -> io::Result<&'static str> {
    let t0 = Instant::now();
    let mut im = Imap::connect(&a.addr, a.tls, &a.sni, Duration::from_secs(a.io_timeout)).await?;
    im.login(&a.user, &a.pass).await?;
    *login_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut caps = String::new();
    im.simple("CAPABILITY", "CAPABILITY", |r| {
        caps.push_str(&String::from_utf8_lossy(r.first()).to_ascii_uppercase());
    })
    .await?;
    let leave = if caps.split_whitespace().any(|c| c == "UNSELECT") {
        "UNSELECT"
    } else {
        "CLOSE"
    };
    for i in 0..a.repeat.max(1) {
        if i > 0 {
            im.simple(leave, leave, |_| {}).await?;
        }
        let t = Instant::now();
        let n = im.select().await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        exists.push(n);
    }
    im.logout().await?;
    Ok(leave)
}

async fn run_imap_select(a: ImapSelectArgs) -> i32 {
    let (mut lat, mut exists, mut login_ms) = (Vec::new(), Vec::new(), 0.0);
    let res = imap_select_job(&a, &mut lat, &mut exists, &mut login_ms).await;
    let first = lat.first().copied().unwrap_or(0.0);
    let mut later: Vec<f64> = lat.iter().skip(1).copied().collect();
    later.sort_by(f64::total_cmp);
    let median_later = if later.is_empty() {
        first
    } else {
        later[later.len() / 2]
    };
    let exists0 = exists.first().copied().unwrap_or(0);
    let mut all = lat.clone();
    all.sort_by(f64::total_cmp);
    let median_all = all.get(all.len() / 2).copied().unwrap_or(0.0);
    let mut out = json!({
        "mode": "imap-select",
        "addr": a.addr,
        "repeat": a.repeat,
        "exists": exists0,
        "exists_each": exists,
        "login_ms": r3(login_ms),
        "select_ms": lat.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
        "first_select_ms": r3(first),
        "median_select_ms": r3(median_later),
        "median_all_select_ms": r3(median_all),
        "failures": i32::from(res.is_err()),
    });
    match res {
        Ok(leave) => out["between"] = json!(leave),
        Err(e) => out["error"] = json!(e.to_string()),
    }
    println!("{out}");
    i32::from(out["failures"] != 0)
}

// ---------------------------------------------------------------- Maildir

fn write_maildir(a: &MaildirArgs) -> io::Result<u64> {
    let t = build_template(&a.from, &a.to, a.size);
    for d in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(a.dir.join(d))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let pid = std::process::id();
    let mut head = t.head.clone();
    // the template ends with the SMTP terminator ".\r\n"
    let body = &t.body[..t.body.len() - 3];
    let mut bytes = 0u64;
    let mut msg = Vec::with_capacity(head.len() + body.len());
    for idx in 0..a.count {
        let digits = format!("{:0width$}", idx, width = IDX_DIGITS);
        head[t.idx_pos..t.idx_pos + IDX_DIGITS].copy_from_slice(digits.as_bytes());
        msg.clear();
        msg.extend_from_slice(&head);
        msg.extend_from_slice(body);
        let name = format!("{now}.M{idx}P{pid}.loadgen,S={}", msg.len());
        std::fs::write(a.dir.join("new").join(name), &msg)?;
        bytes += msg.len() as u64;
    }
    Ok(bytes)
}

fn run_maildir(a: MaildirArgs) -> i32 {
    let start = Instant::now();
    let res = write_maildir(&a);
    let secs = start.elapsed().as_secs_f64();
    let mut out = json!({
        "mode": "maildir",
        "dir": a.dir.display().to_string(),
        "count": a.count,
        "size": a.size,
        "seconds": r3(secs),
    });
    match res {
        Ok(bytes) => {
            out["messages"] = json!(a.count);
            out["bytes"] = json!(bytes);
            out["failures"] = json!(0);
        }
        Err(e) => {
            out["messages"] = json!(0);
            out["failures"] = json!(a.count);
            out["error"] = json!(e.to_string());
        }
    }
    println!("{out}");
    i32::from(out["failures"] != 0)
}

// ---------------------------------------------------------------- main

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Smtp(a) => run_smtp(a).await,
            Cmd::Pop3(a) => run_pop3(a).await,
            Cmd::Imap(a) => run_imap(a).await,
            Cmd::ImapSelect(a) => run_imap_select(a).await,
            Cmd::Maildir(a) => run_maildir(a),
        }
    });
    std::process::exit(code);
}
