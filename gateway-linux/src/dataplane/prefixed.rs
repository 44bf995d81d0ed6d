//! A stream that replays bytes already read from it.
//!
//! The inbound path has to read the first bytes of a connection to tell TLS
//! from plaintext (and, for TLS, to read the ClientHello before it can pick a
//! configuration). When the connection then goes to a component that expects
//! the whole byte stream (hyper for plaintext HTTP, a raw copy for TCP or a
//! DISABLE passthrough), [`Prefixed`] hands those bytes out again first.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::io;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io` with `prefix` logically prepended to what it yields.
#[derive(Debug)]
pub(crate) struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(prefix: Bytes, io: IO) -> Self {
        Self { prefix, io }
    }

    /// The bytes not replayed yet.
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The stream.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The bytes not replayed yet and the stream.
    pub(crate) fn into_parts(self) -> (Bytes, IO) {
        (self.prefix, self.io)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_prefix_then_stream() {
        let inner: &[u8] = b" world";
        let mut s = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }
}
