//! The inactivity timeout of client connections (`limits.idleTimeout` for
//! HTTP, `limits.tcpIdleTimeout` for TCP listeners).
//!
//! [`Tracked`] wraps a client socket and notes when bytes last moved in
//! either direction; [`expired`] resolves once none have for the timeout,
//! and the connection is then dropped. Counting bytes rather than requests
//! makes one bound cover every way a peer can hold a connection without
//! using it: an HTTP/1 keep-alive connection between requests, an HTTP/2
//! connection with no stream (which hyper's header timeout never covers),
//! a client that stops reading a response (the gateway's writes stall),
//! and a request whose upstream stops answering.
//!
//! TCP-proxied connections get a much longer timeout of their own: idle
//! database connections in a client's pool are legitimate.

use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved on a connection: milliseconds since `base`.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Resolves once no byte has moved for `timeout`.
pub(crate) async fn expired(activity: &Activity, timeout: Duration) {
    loop {
        let deadline = activity.last() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An I/O object that records its activity.
#[derive(Debug)]
pub(crate) struct Tracked<IO> {
    io: IO,
    activity: Activity,
}

impl<IO> Tracked<IO> {
    pub(crate) fn new(io: IO, activity: Activity) -> Self {
        Self { io, activity }
    }

    /// The wrapped I/O object (e.g. to wait for readability).
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn expires_only_after_a_quiet_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut t = Tracked::new(a, activity.clone());
        let timeout = Duration::from_millis(400);
        // Traffic every 200 ms keeps it alive well past the timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.write_all(b"x").await.expect("write");
            let mut one = [0u8; 1];
            t.read_exact(&mut one).await.expect("read");
            assert!(
                tokio::time::timeout(Duration::ZERO, expired(&activity, timeout))
                    .await
                    .is_err(),
                "expired while active"
            );
        }
        // Writes count too.
        tokio::time::sleep(Duration::from_millis(200)).await;
        t.write_all(b"y").await.expect("write");
        let started = Instant::now();
        expired(&activity, timeout).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
            "expired {waited:?} after the last byte"
        );
    }
}
