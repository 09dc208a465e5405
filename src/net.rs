//! Connection plumbing shared by the protocol servers: a stream that may be upgraded to TLS
//! (STARTTLS/STLS), listener loops with connection limits, and bounded line reading.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long a client gets to complete a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-process pipe, for tests and fuzzing; treated as a secure channel.
    Memory(tokio::io::DuplexStream),
}

impl Stream {
    /// The negotiated TLS version, e.g. `TLSv1_3`, or None for plaintext.
    pub fn tls_version(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Memory(_) => Some("memory".into()),
            Stream::Tls(tls) => tls
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}").replace('_', ".")),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_) | Stream::Memory(_))
    }

    /// Performs the server side of a TLS handshake on a plain stream.
    pub async fn upgrade(
        self,
        acceptor: &crate::tls::Acceptor,
        timeout: Duration,
    ) -> io::Result<Stream> {
        match self {
            Stream::Plain(tcp) => {
                let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                Ok(Stream::Tls(Box::new(tls)))
            }
            tls => Ok(tls),
        }
    }
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
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
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
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Result of reading one line with a length bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its line ending (CRLF or bare LF).
    Ok(Vec<u8>),
    /// The line is longer than the limit. What was read of it is discarded; the rest is still
    /// unread, so the caller can answer at once and then call [`skip_line`].
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads one line of at most `max` bytes; never buffers more than `max` + 2 bytes.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, found) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if line.len() + n > max + 2 {
            let room = max + 2 - line.len();
            reader.consume(room);
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        reader.consume(n);
        if found {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Line::Ok(line));
        }
    }
}

/// Discards input up to and including the next LF. Returns false at end of stream.
pub async fn skip_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
) -> io::Result<bool> {
    loop {
        let buf = tokio::time::timeout(timeout, reader.fill_buf())
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the client")
            })??;
        if buf.is_empty() {
            return Ok(false);
        }
        match memchr::memchr(b'\n', buf) {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// `read_line` with a timeout; a timeout is reported as an `io::ErrorKind::TimedOut` error.
pub async fn read_line_timeout<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    timeout: Duration,
) -> io::Result<Line> {
    tokio::time::timeout(timeout, read_line(reader, max))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the client"))?
}

/// Binds every address; fails with the address named.
pub async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BindError> {
    let mut out = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).await.map_err(|source| BindError {
            addr: *addr,
            source,
        })?;
        out.push(listener);
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// A buffered connection, as handed to protocol sessions.
pub type Conn = BufReader<Stream>;

/// Wraps a stream in a read buffer of 64 KiB.
pub fn buffered(stream: Stream) -> Conn {
    BufReader::with_capacity(64 * 1024, stream)
}

/// Shared connection limit of one protocol.
pub type Limit = Arc<tokio::sync::Semaphore>;

/// Connections per client address, capped (one per protocol, shared by its plain and TLS
/// listeners).
pub struct IpLimit {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection of an address; given back when dropped.
pub struct IpPermit {
    limit: Arc<IpLimit>,
    ip: std::net::IpAddr,
}

impl IpLimit {
    pub fn new(max: usize) -> Arc<IpLimit> {
        Arc::new(IpLimit {
            max,
            counts: Default::default(),
        })
    }

    /// A permit for one more connection from `ip`, or None when it has `max` already.
    pub fn try_take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpPermit> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpPermit {
            limit: self.clone(),
            ip,
        })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut counts = self.limit.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = [
            b"short\r\n".to_vec(),
            vec![b'x'; 5000],
            b"\r\nnext\n".to_vec(),
        ]
        .concat();
        let mut r = tokio::io::BufReader::with_capacity(64, &data[..]);
        assert_eq!(
            read_line(&mut r, 100).await.unwrap(),
            Line::Ok(b"short".to_vec())
        );
        assert_eq!(read_line(&mut r, 100).await.unwrap(), Line::TooLong);
        assert!(skip_line(&mut r, Duration::from_secs(1)).await.unwrap());
        assert_eq!(
            read_line(&mut r, 100).await.unwrap(),
            Line::Ok(b"next".to_vec())
        );
        assert_eq!(read_line(&mut r, 100).await.unwrap(), Line::Eof);
    }
}
