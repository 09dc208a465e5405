//! A lingering close: when the HTTP layer closes a connection whose request body it did
//! not read (a `413`, an early error), the write side is shut down first and what the client
//! is still sending is read and dropped for a moment, so the client's kernel does not get a
//! reset that would destroy the answer before the client has read it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

/// Reading stops after this long or this many bytes.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 32 << 20;

pub struct Lingering<S> {
    inner: S,
    /// Set once the write side is shut down: the drain's deadline and what it read.
    draining: Option<(Pin<Box<Sleep>>, usize)>,
}

impl<S> Lingering<S> {
    pub fn new(inner: S) -> Lingering<S> {
        Lingering {
            inner,
            draining: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.draining.is_none() {
            match Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => self.draining = Some((Box::pin(sleep(LINGER)), 0)),
                other => return other,
            }
        }
        let mut scratch = [0u8; 16 << 10];
        loop {
            let this = &mut *self;
            let (deadline, read) = this.draining.as_mut().expect("set above");
            if deadline.as_mut().poll(cx).is_ready() || *read >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *read += buf.filled().len(),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
