//! Reading a message body off the wire: DATA (dot-stuffed, ended by `<CRLF>.<CRLF>`), BDAT
//! chunks of a declared size (RFC 3030), and chunks that must be read and thrown away. One
//! buffered-read helper serves all three, with the session's timeout on every read.

use std::time::Duration;

use tokio::time::Instant;

use tokio::io::AsyncBufReadExt;

use super::data::DotDecoder;
use super::{Chunks, Session};
use crate::net::Conn;

/// How fast a body must come: every read within the session timeout, and on average
/// `min_rate` octets per second once the grace period is over, so a client that trickles one
/// byte every few seconds cannot hold a connection slot for hours.
struct Pace {
    start: Instant,
    timeout: Duration,
    grace: Duration,
    min_rate: u64,
}

impl Pace {
    fn new(session: &Session) -> Pace {
        let smtp = &session.state.config.smtp;
        Pace {
            start: Instant::now(),
            timeout: session.timeout(),
            grace: Duration::from_secs(smtp.data_grace_secs),
            min_rate: smtp.min_data_rate,
        }
    }

    /// When the next read must have returned, `received` octets in.
    fn deadline(&self, received: u64) -> Instant {
        let next_read = Instant::now() + self.timeout;
        if self.min_rate == 0 {
            return next_read;
        }
        let owed = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        next_read.min(self.start + self.grace + owed)
    }
}

/// The next buffered input (at least one byte), by `deadline`. A closed connection is
/// `UnexpectedEof`; the caller consumes what it used.
async fn fill<'c>(conn: &'c mut Conn, deadline: Instant, what: &str) -> std::io::Result<&'c [u8]> {
    let buf = tokio::time::timeout_at(deadline, conn.fill_buf())
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
        })??;
    if buf.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Reads exactly `size` octets, handing each piece to `sink` as it arrives.
async fn read_exact(
    conn: &mut Conn,
    mut size: u64,
    pace: Pace,
    mut sink: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut received = 0u64;
    while size > 0 {
        let buf = fill(conn, pace.deadline(received), "BDAT").await?;
        received += buf.len() as u64;
        let n = buf.len().min(usize::try_from(size).unwrap_or(usize::MAX));
        sink(&buf[..n]);
        conn.consume(n);
        size -= n as u64;
    }
    Ok(())
}

impl Session {
    /// A transfer that ended early: a client that vanished is logged; one too slow is told
    /// (a 4xx: the sender retries) before the connection closes. Returns the error back.
    async fn cut_off(&mut self, conn: &mut Conn, what: &str, e: std::io::Error) -> std::io::Error {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                tracing::info!(client = %self.peer, "client vanished during {what}; nothing stored");
            }
            std::io::ErrorKind::TimedOut => {
                tracing::info!(client = %self.peer, "{what} too slow; nothing stored");
                self.reply("451 4.4.2 Timeout: the message data arrived too slowly");
                let _ = self.flush(conn).await;
            }
            _ => {}
        }
        e
    }

    pub(super) async fn data(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        if self.tx.as_ref().is_some_and(|tx| tx.chunks.is_some()) {
            self.error("503 5.5.1 DATA not allowed after BDAT");
            return Ok(());
        }
        if let Some(reply) = self.ready_for_message() {
            if reply.starts_with('5') {
                self.error(reply);
            } else {
                self.reply(reply);
            }
            return Ok(());
        }
        let mut delivery = match self.begin_delivery() {
            Ok(d) => Some(d),
            Err(reply) => {
                self.reply(reply);
                return Ok(());
            }
        };
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
        self.flush(conn).await?;
        let max = self.state.config.smtp.max_message_size;
        let mut decoder = DotDecoder::default();
        let mut out = Vec::with_capacity(64 * 1024);
        let mut body_size: u64 = 0;
        let mut too_big = false;
        let pace = Pace::new(self);
        let mut received = 0u64;
        loop {
            let buf = match fill(conn, pace.deadline(received), "DATA").await {
                Ok(buf) => buf,
                Err(e) => return Err(self.cut_off(conn, "DATA", e).await),
            };
            received += buf.len() as u64;
            out.clear();
            let end = decoder.feed(buf, &mut out);
            let consumed = end.unwrap_or(buf.len());
            conn.consume(consumed);
            body_size += out.len() as u64;
            if !too_big && body_size > max {
                too_big = true;
                delivery = None;
            }
            if let Some(d) = delivery.as_mut() {
                d.write(&out);
            }
            if end.is_some() {
                break;
            }
        }
        if too_big {
            tracing::info!(client = %self.peer, size = body_size, "smtp message refused: too big");
            self.tx = None;
            self.error("552 5.3.4 Message size exceeds fixed maximum message size");
            return Ok(());
        }
        let delivery = delivery.expect("not too big");
        self.finish_message(delivery).await;
        Ok(())
    }

    pub(super) async fn bdat(
        &mut self,
        conn: &mut Conn,
        size: u64,
        last: bool,
    ) -> std::io::Result<()> {
        let refusal = match &self.tx {
            Some(tx) if tx.chunks.is_some() => None,
            _ => self.ready_for_message(),
        };
        if let Some(reply) = refusal {
            // The chunk must still be read and thrown away (RFC 3030 §2).
            self.discard(conn, size).await?;
            self.tx = None;
            if reply.starts_with('5') {
                self.error(reply);
            } else {
                self.reply(reply);
            }
            return Ok(());
        }
        if self.tx.as_ref().expect("tx").chunks.is_none() {
            let delivery = match self.begin_delivery() {
                Ok(d) => d,
                Err(reply) => {
                    self.discard(conn, size).await?;
                    self.tx = None;
                    self.reply(reply);
                    return Ok(());
                }
            };
            self.tx.as_mut().expect("tx").chunks = Some(Chunks {
                delivery: Some(delivery),
                received: 0,
                too_big: false,
            });
        }
        let max = self.state.config.smtp.max_message_size;
        let pace = Pace::new(self);
        let chunks = self
            .tx
            .as_mut()
            .expect("tx")
            .chunks
            .as_mut()
            .expect("chunks");
        let result = read_exact(conn, size, pace, |bytes| {
            chunks.received += bytes.len() as u64;
            if chunks.received > max {
                chunks.too_big = true;
                chunks.delivery = None;
            }
            if let Some(d) = chunks.delivery.as_mut() {
                d.write(bytes);
            }
        })
        .await;
        if let Err(e) = result {
            return Err(self.cut_off(conn, "BDAT", e).await);
        }
        if chunks.too_big {
            tracing::info!(client = %self.peer, "smtp message refused: too big");
            self.tx = None;
            self.error("552 5.3.4 Message size exceeds fixed maximum message size");
            return Ok(());
        }
        if !last {
            self.reply(format!("250 2.0.0 {size} octets received"));
            return Ok(());
        }
        let delivery = chunks.delivery.take().expect("not too big");
        self.finish_message(delivery).await;
        Ok(())
    }

    async fn discard(&mut self, conn: &mut Conn, size: u64) -> std::io::Result<()> {
        read_exact(conn, size, Pace::new(self), |_| {}).await
    }
}
