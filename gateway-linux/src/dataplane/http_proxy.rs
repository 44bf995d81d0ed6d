//! The HTTP/1.1 and HTTP/2 reverse proxy (hyper).
//!
//! Each request is decided on its own, against the snapshot current when the
//! request started: route by `Host`/`:authority` → service and port →
//! effective mode → core admission of what the *connection* presented (so a
//! TLS connection made with one SNI cannot reach a STRICT service through
//! another `Host`, and a keep-alive connection opened under PERMISSIVE stops
//! working for plaintext once the namespace is STRICT) → AuthorizationPolicy
//! → forward. A refused admission closes the connection without a response
//! (STRICT + plaintext gives the client an empty reply, as Istio does);
//! a denied authorization answers `403 RBAC: access denied`.
//!
//! Client-supplied `x-forwarded-client-cert` headers are always removed; the
//! gateway adds its own for verified mTLS peers (see `xfcc`). Malformed
//! requests get hyper's `400` and a close; a request head over
//! `limits.maxRequestHeadBytes` (or with too many header fields) gets `431`.

use core::future::{Future, poll_fn};
use core::net::SocketAddr;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshgate_core::mtls::{MeshIdentity, Presented, Rejection, TlsVersion, admit};
use meshgate_core::spiffe::Principal;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::access_log::{AccessEntry, now_rfc3339};
use super::identity::{Identity, Protocol};
use super::idle::Tracked;
use super::metrics::RequestLabels;
use super::outbound::{self, DialError};
use super::peer::PeerIdentity;
use super::pool::Lease;
use super::prefixed::Prefixed;
use super::snapshot::{
    AuthzRequest, EndpointAddress, ModeDecision, Route, Snapshot, split_host_port,
};
use super::{ListenerSpec, Shared, request_path, xfcc};

/// Most header fields in one HTTP/1 request head.
const MAX_HEADERS: usize = 256;
/// The body of an authorization denial, exactly as Envoy's RBAC filter.
pub(crate) const RBAC_DENIED_BODY: &str = "RBAC: access denied";

/// Boxed error of proxied bodies.
pub(crate) type BoxError = Box<dyn core::error::Error + Send + Sync>;

/// What a connection presented, fixed when it was accepted.
#[derive(Debug, Clone)]
pub(crate) enum ConnSecurity {
    /// No TLS.
    Plaintext,
    /// TLS terminated by the gateway; `peer` is the verified client
    /// certificate, if one was sent.
    Tls { peer: Option<PeerIdentity> },
}

impl ConnSecurity {
    /// The core admission input.
    pub(crate) fn presented(&self) -> Presented<'_> {
        match self {
            ConnSecurity::Plaintext => Presented::Plaintext,
            ConnSecurity::Tls { peer: None } => Presented::TlsWithoutCertificate {
                version: TlsVersion::Tls13,
            },
            ConnSecurity::Tls { peer: Some(p) } => Presented::VerifiedPeer {
                id: p.spiffe_id.borrow(),
            },
        }
    }

    /// The access-log transport label.
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            ConnSecurity::Plaintext => "plaintext",
            ConnSecurity::Tls { peer: None } => "tls",
            ConnSecurity::Tls { peer: Some(_) } => "mtls",
        }
    }

    pub(crate) fn peer(&self) -> Option<&PeerIdentity> {
        match self {
            ConnSecurity::Tls { peer } => peer.as_ref(),
            ConnSecurity::Plaintext => None,
        }
    }
}

/// Everything a request needs to know about its connection.
#[derive(Debug)]
pub(crate) struct ConnContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) listener: Arc<ListenerSpec>,
    pub(crate) source: SocketAddr,
    pub(crate) security: ConnSecurity,
    /// TLS SNI, if any.
    pub(crate) sni: Option<String>,
}

/// A connection's context with the header values its requests compute
/// once for the whole connection instead of per request.
#[derive(Debug)]
struct PerConn {
    ctx: Arc<ConnContext>,
    /// `x-forwarded-for` for a request that brought none: the source IP,
    /// fixed for the connection.
    xff: OnceLock<HeaderValue>,
    /// `x-forwarded-client-cert` and the gateway SPIFFE ID it was built
    /// with (the peer is fixed for the connection; the gateway identity
    /// may rotate, and a value built under another ID is rebuilt).
    xfcc: Mutex<Option<(Box<str>, HeaderValue)>>,
}

impl PerConn {
    fn new(ctx: Arc<ConnContext>) -> Self {
        Self {
            ctx,
            xff: OnceLock::new(),
            xfcc: Mutex::new(None),
        }
    }

    /// The `x-forwarded-for` value for a request that brought none.
    fn xff(&self) -> Option<HeaderValue> {
        if let Some(v) = self.xff.get() {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(&self.ctx.source.ip().to_string()).ok()?;
        Some(self.xff.get_or_init(|| v).clone())
    }

    /// The `x-forwarded-client-cert` value for `peer`, the verified
    /// client certificate of this connection, with `gateway_id` as `By`.
    fn xfcc(&self, gateway_id: &str, peer: &PeerIdentity) -> Option<HeaderValue> {
        // The value only holds verified data, so a poisoned lock (a panic
        // elsewhere while it was held) still guards a correct value.
        let mut cached = self.xfcc.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, v)) = cached.as_ref()
            && **id == *gateway_id
        {
            return Some(v.clone());
        }
        let v = xfcc::value(gateway_id, peer)?;
        *cached = Some((gateway_id.into(), v.clone()));
        Some(v)
    }
}

/// A request refused at admission: hyper closes the connection (HTTP/1)
/// or resets the stream (HTTP/2) without a response.
#[derive(Debug, thiserror::Error)]
#[error("connection refused by peer authentication: {0}")]
pub(crate) struct Refused(Rejection);

/// Serves HTTP on an accepted (and, for TLS, handshaken) connection.
/// `h2` is the ALPN result: `Some(true)` for h2, `Some(false)` for
/// http/1.1 or no ALPN over TLS, `None` for plaintext (prior-knowledge h2
/// or HTTP/1.1, detected by hyper).
pub(crate) async fn serve<IO>(io: IO, h2: Option<bool>, ctx: Arc<ConnContext>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_http(io, h2, ctx, false).await;
}

/// [`serve`] for an edge node's stream: a legacy client may shut down its
/// sending side right after its request (`nc -N` does) and the node passes
/// that on, so an HTTP/1 end of input must not drop the pending response.
pub(crate) async fn serve_half_closable<IO>(io: IO, ctx: Arc<ConnContext>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_http(io, Some(false), ctx, true).await;
}

async fn serve_http<IO>(io: IO, h2: Option<bool>, ctx: Arc<ConnContext>, half_close: bool)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match h2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .half_close(half_close)
        .header_read_timeout(ctx.shared.options.head_timeout)
        .max_buf_size(ctx.shared.options.max_request_head_bytes)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(ctx.shared.options.max_request_head_bytes).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(256);
    let mut shutdown = ctx.shared.shutdown.subscribe();
    let conn_state = Arc::new(PerConn::new(ctx.clone()));
    let svc = service_fn(move |req| handle(conn_state.clone(), req, None));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(source = %ctx.source, error = %e, "HTTP connection ended with an error");
            }
        }
        () = super::stop_requested(&mut shutdown) => {
            // Drain: finish in-flight requests, accept no new ones.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(source = %ctx.source, error = %e, "HTTP connection ended during drain");
            }
        }
    }
}

/// A client transport that can report readability without reading, so an
/// idle HTTP/1 connection can wait for its next request without a parser
/// (and its buffers) attached.
pub(crate) trait Parkable: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Ready once bytes (or EOF, or an error) can be read.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether the transport keeps its empty buffers (set while a parser
    /// is attached) or frees them (cleared when the connection parks).
    fn hold_buffers(&mut self, _hold: bool) {}
}

impl Parkable for Box<super::inbound::tls::TlsStream<Tracked<TcpStream>>> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // After a read returned Pending the stream holds no decrypted bytes
        // and at most a partial record, so new socket bytes are all that
        // can wake it; the check covers a caller that did not read first.
        if self.read_would_not_block() {
            return Poll::Ready(Ok(()));
        }
        self.get_ref().get_ref().poll_read_ready(cx)
    }

    fn hold_buffers(&mut self, hold: bool) {
        super::inbound::tls::TlsStream::hold_buffers(self, hold);
    }
}

impl Parkable for Prefixed<Tracked<TcpStream>> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix().is_empty() {
            self.get_ref().get_ref().poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// Whether plaintext starting with `first` may be an HTTP/2 prior-knowledge
/// connection (a prefix of the client preface, or the whole preface).
pub(crate) fn may_be_h2_preface(first: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = first.len().min(PREFACE.len());
    first[..n] == PREFACE[..n]
}

/// Serves HTTP/1.1 on `io`, detaching the parser between requests.
///
/// hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for as long
/// as a connection lives, which dominated the memory of idle keep-alive
/// connections. Here a hyper connection serves requests only while the
/// client keeps sending them back to back; once a response has been flushed
/// and no further bytes are waiting, [`ParkingIo`] reports a clean end of
/// input, hyper finishes without shutting the transport down and hands it
/// back with any bytes it read ahead, and the connection waits for
/// readability with nothing but the transport (the "parked" state) before a
/// new hyper connection picks it up. The idle wait is bounded by the
/// connection's idle timeout (`inbound`); the head timeout applies from a
/// request's first byte. The client sees one ordinary keep-alive
/// connection.
pub(crate) async fn serve_http1<IO: Parkable>(io: IO, ctx: Arc<ConnContext>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.shared.options.head_timeout)
        .max_buf_size(ctx.shared.options.max_request_head_bytes)
        .max_headers(MAX_HEADERS);
    let park = Arc::new(ParkState::new());
    let max_grace = max_park_grace(ctx.shared.options.head_timeout);
    let mut shutdown = ctx.shared.shutdown.subscribe();
    // Outlives the parser attachments: what requests compute once per
    // connection is kept across them.
    let conn_state = Arc::new(PerConn::new(ctx.clone()));
    let mut io = io;
    let mut pending = Bytes::new();
    // The first request may already sit decrypted in rustls (TLS 1.3
    // clients send it right behind their Finished), so the first parser
    // attaches without waiting; later waits follow a read that found
    // nothing, so socket readability is the only way new bytes appear.
    let mut attached_before = false;
    loop {
        if attached_before && pending.is_empty() {
            tokio::select! {
                r = poll_fn(|cx| io.poll_readable(cx)) => if let Err(e) = r {
                    tracing::debug!(source = %ctx.source, error = %e, "idle connection failed");
                    return;
                },
                () = super::stop_requested(&mut shutdown) => {
                    let _ = io.shutdown().await;
                    return;
                }
            }
        }
        attached_before = true;
        park.start_connection();
        io.hold_buffers(true);
        let transport = ParkingIo {
            inner: Prefixed::new(pending, io),
            park: park.clone(),
            max_grace,
            grace: None,
        };
        let svc_conn = conn_state.clone();
        let svc_park = park.clone();
        let svc = service_fn(move |req| {
            let in_flight = InFlight::start(&svc_park);
            Box::pin(handle(svc_conn.clone(), req, Some(in_flight)))
        });
        // Boxed: the parser's state is allocated only while it is
        // attached, and the connection's task stays small while parked.
        let mut conn = Box::pin(builder.serve_connection(TokioIo::new(transport), svc));
        let mut draining = false;
        let done = {
            let stop = super::stop_requested(&mut shutdown);
            tokio::pin!(stop);
            poll_fn(|cx| {
                if !draining && stop.as_mut().poll(cx).is_ready() {
                    // Drain: finish the request in flight, then close.
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                conn.poll_without_shutdown(cx)
            })
            .await
        };
        match done {
            Ok(()) => {}
            // The end of input was the parking one, reported while hyper
            // still held the start of a pipelined head that came in the
            // same read as the request before it (`head_pending` was
            // cleared when that request started). Those bytes are kept
            // below and the next parser waits for the rest; reading them
            // again marks the head pending, so this happens at most once
            // per head (whose head timeout then starts again: such a head
            // may take up to twice `limits.headTimeout`).
            Err(e) if park.parked() && e.is_incomplete_message() && !draining => {}
            Err(e) => {
                tracing::debug!(source = %ctx.source, error = %e, "HTTP connection ended with an error");
                return;
            }
        }
        let parts = Pin::into_inner(conn).into_parts();
        let (rest, inner) = parts.io.into_inner().inner.into_parts();
        io = inner;
        io.hold_buffers(false);
        if !park.parked() || draining {
            // The client closed (or asked to close) or the gateway is
            // draining: hyper has written its last response.
            let _ = io.shutdown().await;
            return;
        }
        // Bytes hyper read ahead come before those it never replayed. They
        // are copied out: even an empty `Bytes` from hyper keeps its whole
        // read buffer allocated, which parking is meant to release.
        pending = if parts.read_buf.is_empty() && rest.is_empty() {
            Bytes::new()
        } else {
            let mut b = bytes::BytesMut::with_capacity(parts.read_buf.len() + rest.len());
            b.extend_from_slice(&parts.read_buf);
            b.extend_from_slice(&rest);
            b.freeze()
        };
        drop(parts.read_buf);
        drop(rest);
    }
}

/// What [`ParkingIo`] knows about the HTTP exchange on top of it.
#[derive(Debug)]
struct ParkState {
    /// Times below are microseconds since this instant.
    epoch: tokio::time::Instant,
    /// When the connection last became clean ([`NEVER`] while a request
    /// is on the way); kept across parser attachments.
    idle_since_us: AtomicU64,
    /// How long the client paused before its latest request ([`NEVER`]
    /// until it has sent a second one); kept across parser attachments.
    last_pause_us: AtomicU64,
    /// Requests whose response has not been completely produced.
    in_flight: AtomicUsize,
    /// A flush completed with no request in flight and nothing written
    /// since: every response byte has left the process.
    clean: AtomicBool,
    /// Bytes arrived while no request was in flight and no request has
    /// started since: hyper holds the beginning of a head and waits for
    /// the rest. hyper flushes between reads even with nothing to write,
    /// so `clean` alone would come back while a head is half received.
    head_pending: AtomicBool,
    /// A clean end of input was reported to hyper to detach it.
    parked: AtomicBool,
}

/// No time recorded, in [`ParkState`]'s microsecond fields.
const NEVER: u64 = u64::MAX;

impl ParkState {
    fn new() -> Self {
        ParkState {
            epoch: tokio::time::Instant::now(),
            idle_since_us: AtomicU64::new(NEVER),
            last_pause_us: AtomicU64::new(NEVER),
            in_flight: AtomicUsize::new(0),
            clean: AtomicBool::new(false),
            head_pending: AtomicBool::new(false),
            parked: AtomicBool::new(false),
        }
    }

    fn us_at(&self, t: tokio::time::Instant) -> u64 {
        u64::try_from(t.duration_since(self.epoch).as_micros()).unwrap_or(NEVER - 1)
    }

    /// The connection became clean at `now`: its client's pause starts.
    fn idle_from(&self, now: tokio::time::Instant) {
        self.idle_since_us.store(self.us_at(now), Ordering::Relaxed);
    }

    /// The first bytes of a new request arrived: the pause is over.
    fn pause_ended(&self) {
        let since = self.idle_since_us.swap(NEVER, Ordering::Relaxed);
        if since != NEVER {
            let pause = self
                .us_at(tokio::time::Instant::now())
                .saturating_sub(since);
            self.last_pause_us.store(pause, Ordering::Relaxed);
        }
    }

    /// The client's latest pause between requests, if it made one.
    fn last_pause(&self) -> Option<Duration> {
        match self.last_pause_us.load(Ordering::Relaxed) {
            NEVER => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Resets what one parser attachment tracks (the pause history stays).
    fn start_connection(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
        self.clean.store(false, Ordering::Relaxed);
        self.head_pending.store(false, Ordering::Relaxed);
        self.parked.store(false, Ordering::Relaxed);
    }

    fn parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight until its response is complete (the
/// access-log record finishes when the response body ends or is dropped).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ParkState>);

impl InFlight {
    fn start(park: &Arc<ParkState>) -> Self {
        park.in_flight.fetch_add(1, Ordering::Relaxed);
        park.clean.store(false, Ordering::Relaxed);
        // hyper calls the service once a head is complete.
        park.head_pending.store(false, Ordering::Relaxed);
        Self(park.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The transport under a hyper HTTP/1 connection: passes everything
/// through, except that once the connection is clean (see [`ParkState`])
/// a read that would block reports end of input instead, which hyper
/// treats as the client closing an idle keep-alive connection. A read that
/// finds bytes passes them on, so pipelined requests are served as usual.
///
/// The end of input is reported only a grace period ([`park_grace`])
/// after the connection became clean, so a client sending its requests
/// back to back or at a steady pace keeps its parser.
struct ParkingIo<IO> {
    inner: Prefixed<IO>,
    park: Arc<ParkState>,
    /// See [`max_park_grace`].
    max_grace: Duration,
    /// Ends the grace period of the current clean spell; made on first
    /// use and re-armed (not re-allocated) for every later one.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The shortest time a connection whose responses have all been flushed
/// keeps its parser before it parks: what a client that has sent only one
/// request gets, and one that sends back to back.
const MIN_PARK_GRACE: Duration = Duration::from_millis(20);

/// The longest such time (before the head-timeout cap of
/// [`max_park_grace`]).
///
/// Detaching and re-attaching hyper (a new parser with fresh buffers, a
/// new head timer, the wake-up that parks) costs more CPU than the
/// gateway's own routing and policy work: with a fixed 20 ms grace, a
/// client sending a request every 32 ms (1,000 req/s over 32 connections)
/// cost about a quarter more CPU per request than with the parser kept.
/// A fixed long grace, though, keeps every new connection's parser and
/// TLS buffers that long, and a burst of one-request connections then
/// raised the gateway's resident memory for good (1,000 connections
/// opened at once: 22.8 instead of 6.7 KiB each). So the grace follows
/// the client: twice its latest pause between requests, between
/// [`MIN_PARK_GRACE`] and this.
const MAX_PARK_GRACE: Duration = Duration::from_millis(250);

/// The longest grace under a head timeout of `head_timeout`: hyper's head
/// timer runs while an idle connection keeps its parser, so the connection
/// must park well before it fires (the timeout is for a head that has
/// started, not for a keep-alive client's pause; `limits.headTimeout` may
/// be as short as 100 ms).
fn max_park_grace(head_timeout: Duration) -> Duration {
    MAX_PARK_GRACE.min(head_timeout / 2)
}

/// The grace for a client whose latest pause between requests was
/// `last_pause` (`None`: it has sent one request so far).
fn park_grace(last_pause: Option<Duration>, max: Duration) -> Duration {
    last_pause
        .map_or(MIN_PARK_GRACE, |p| p.saturating_mul(2))
        .min(max)
        .max(MIN_PARK_GRACE.min(max))
}

impl<IO> ParkingIo<IO> {
    /// Starts the grace period and registers the task to be woken at its
    /// end, when hyper's next read parks the connection.
    fn start_grace(&mut self, cx: &mut Context<'_>) {
        let now = tokio::time::Instant::now();
        self.park.idle_from(now);
        let deadline = now + park_grace(self.park.last_pause(), self.max_grace);
        let grace = match self.grace.as_mut() {
            Some(g) => {
                g.as_mut().reset(deadline);
                g
            }
            None => self
                .grace
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if grace.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Whether the grace period is over (registering the task otherwise).
    fn grace_over(&mut self, cx: &mut Context<'_>) -> bool {
        self.grace
            .as_mut()
            .is_none_or(|g| g.as_mut().poll(cx).is_ready())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ParkingIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Bytes of a request arrived: the connection is no longer idle
            // until that request is answered, even while the rest of its
            // head is still on the way (a head split across segments must
            // not be cut as a clean end of input).
            self.park.clean.store(false, Ordering::Relaxed);
            if self.park.in_flight.load(Ordering::Relaxed) == 0
                && !self.park.head_pending.swap(true, Ordering::Relaxed)
            {
                self.park.pause_ended();
            }
        }
        if polled.is_pending()
            && self.park.in_flight.load(Ordering::Relaxed) == 0
            && self.park.clean.load(Ordering::Relaxed)
            && !self.park.head_pending.load(Ordering::Relaxed)
            && self.grace_over(cx)
        {
            self.park.parked.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ParkingIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.park.clean.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.park.clean.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(())))
            && self.park.in_flight.load(Ordering::Relaxed) == 0
            && !self.park.clean.swap(true, Ordering::Relaxed)
        {
            // hyper polled its read side before this flush and will not
            // poll it again until the socket wakes the task; the end of
            // the grace period wakes it, and that read parks an idle
            // connection.
            self.start_grace(cx);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The authority a request is routed by, shared with the request rather
/// than copied out of it.
#[derive(Debug)]
enum HostOf {
    /// The request's only `Host` header (checked to be a string).
    Header(HeaderValue),
    /// `:authority` of HTTP/2 or of an absolute-form HTTP/1 target.
    Uri(http::uri::Authority),
    /// The service of a listener bound to one service.
    Bound(String),
}

impl HostOf {
    fn as_str(&self) -> &str {
        match self {
            // `request_host` only keeps values `to_str` accepts.
            HostOf::Header(h) => h.to_str().unwrap_or_default(),
            HostOf::Uri(a) => a.as_str(),
            HostOf::Bound(s) => s,
        }
    }
}

/// The request's authority: `:authority` for HTTP/2 (and absolute-form
/// HTTP/1 targets), else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<HostOf> {
    if let Some(a) = req.uri().authority() {
        return Some(HostOf::Uri(a.clone()));
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .map(|h| HostOf::Header(h.clone()))
}

/// Whether the port of a Host / `:authority` value, if it has one, is
/// empty or a decimal number that fits in 16 bits (RFC 3986 `port`).
fn has_valid_port(host: &str) -> bool {
    let port = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .and_then(|(_, tail)| tail.strip_prefix(':')),
        None => host
            .rsplit_once(':')
            .filter(|(name, _)| !name.contains(':'))
            .map(|(_, p)| p),
    };
    port.is_none_or(|p| {
        p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
    })
}

async fn handle(
    conn: Arc<PerConn>,
    req: Request<Incoming>,
    in_flight: Option<InFlight>,
) -> Result<Response<LoggedBody>, Refused> {
    let ctx = &*conn.ctx;
    let snapshot = ctx.shared.snapshot.load_full();
    let mut rec = Record::new(ctx, &snapshot, &req);
    rec.in_flight = in_flight;
    // RFC 9112 §3.2: a request with more than one Host field is invalid and
    // must get 400. Which of them counts differs between implementations,
    // so accepting one would let a client be routed and authorized as one
    // service while a later hop sees another.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        rec.decision("deny", "duplicate_host", None);
        return Ok(rec.local(
            StatusCode::BAD_REQUEST,
            "meshgate: more than one Host header\n".to_owned(),
        ));
    }
    // A listener bound to one service (an edge node's forwarding rule)
    // sends every request there, whatever `Host` says: the legacy client
    // addressed the node, not the service.
    let host = match ctx.listener.service.as_deref() {
        Some(service) if ctx.listener.protocol == Protocol::Http => {
            Some(HostOf::Bound(format!("{service}:{}", ctx.listener.port)))
        }
        _ => request_host(&req),
    };
    // Routing and authorization use the name part of the Host; the
    // upstream gets the raw value. A port that is not a number would make
    // them disagree (`a.b: x` was routed to `a.b`), so it is refused.
    if host.as_ref().is_some_and(|h| !has_valid_port(h.as_str())) {
        rec.decision("deny", "invalid_host", None);
        return Ok(rec.local(
            StatusCode::BAD_REQUEST,
            "meshgate: invalid port in Host\n".to_owned(),
        ));
    }
    let Some(route) = host
        .as_ref()
        .and_then(|h| snapshot.route(h.as_str(), ctx.listener.port))
    else {
        rec.decision("deny", "no_route", None);
        let body = format!(
            "meshgate: no service for host {}\n",
            host.as_ref().map_or("(none)", HostOf::as_str)
        );
        return Ok(rec.local(StatusCode::NOT_FOUND, body));
    };
    let mode = snapshot.mode(&route);
    rec.route(&route, &mode);
    if matches!(ctx.security, ConnSecurity::Plaintext) {
        ctx.shared.metrics.plaintext_client(
            &route.service.spec.namespace,
            ctx.source.ip(),
            SystemTime::now(),
        );
    }
    let mesh = MeshIdentity::new(snapshot.trust_domain().borrow());
    let admitted = match admit(mode.mode, ctx.security.presented(), &mesh) {
        Ok(a) => a,
        Err(rejection) => {
            rec.decision("deny", reason_of_rejection(&rejection), mode.policy.clone());
            rec.finish(0, 0);
            return Err(Refused(rejection));
        }
    };
    rec.principal(admitted.principal);
    // The name as routing saw it (`Snapshot::route` ignores one trailing
    // dot), so that `details.` cannot slip past a `hosts` rule written for
    // `details`; case is already ignored by the evaluator.
    let host_name = host.as_ref().map(|h| {
        let name = split_host_port(h.as_str()).0;
        name.strip_suffix('.').unwrap_or(name)
    });
    // Authorize, and forward, the normalized path (see `request_path`).
    let (path, target) = match request_path::origin_form(req.uri()) {
        Ok(t) => t,
        Err(e) => {
            rec.decision("deny", "bad_path", None);
            return Ok(rec.local(StatusCode::BAD_REQUEST, format!("meshgate: {e}\n")));
        }
    };
    let authz = snapshot.authorize(
        &route,
        &AuthzRequest {
            source_ip: ctx.source.ip(),
            principal: admitted.principal,
            sni: ctx.sni.as_deref(),
            host: host_name,
            method: Some(req.method().as_str()),
            path: Some(&path),
            headers: Some(req.headers()),
        },
    );
    if !authz.allowed {
        rec.decision("deny", authz.reason, authz.policy);
        return Ok(rec.local(StatusCode::FORBIDDEN, RBAC_DENIED_BODY.to_owned()));
    }
    rec.decision("allow", authz.reason, authz.policy);

    let identity = ctx.shared.identity.load_full();
    let xfcc = admitted
        .principal
        .and(ctx.security.peer())
        .and_then(|peer| conn.xfcc(identity.spiffe_id().borrow().as_str(), peer));
    let upstream_req =
        prepare_upstream_request(&conn, req, target, host, xfcc, rec.received.clone());
    let sent = forward(ctx, &route, &identity, upstream_req).await;
    match sent {
        Ok((resp, lease)) => Ok(rec.respond(resp, lease)),
        Err(ForwardError::Connect(e)) => {
            tracing::warn!(destination = %route.destination(), error = %e, "upstream unavailable");
            rec.reason(e.reason());
            Ok(rec.local(StatusCode::SERVICE_UNAVAILABLE, format!("meshgate: {e}\n")))
        }
        Err(ForwardError::Request { endpoint, error }) => {
            tracing::warn!(destination = %route.destination(), %endpoint, %error, "upstream request failed");
            rec.reason("upstream_request_failed");
            Ok(rec.local(
                StatusCode::BAD_GATEWAY,
                format!("meshgate: upstream {endpoint} request failed: {error}\n"),
            ))
        }
    }
}

/// Why a request got no upstream response.
enum ForwardError {
    /// No upstream connection could be had.
    Connect(outbound::UpstreamError),
    /// The connection failed while the request was (maybe) sent.
    Request {
        endpoint: EndpointAddress,
        error: hyper::Error,
    },
}

/// An upstream HTTP/1.1 connection for `route`: the endpoint in turn, over
/// a pooled connection if one is idle for it (and `pooled`), else a fresh
/// one. Endpoints that do not accept the TCP connection are skipped.
async fn upstream_lease(
    ctx: &ConnContext,
    route: &Route,
    identity: &Arc<Identity>,
    pooled: bool,
) -> Result<(Lease<UpstreamBody>, EndpointAddress), outbound::UpstreamError> {
    let shared = &ctx.shared;
    let timeout = shared.options.upstream_connect_timeout;
    let mut tried = 0;
    let mut last = None;
    for endpoint in route.endpoints_in_turn() {
        tried += 1;
        let key = outbound::pool_key(&endpoint, route, identity);
        if pooled && let Some(key) = &key {
            while let Some(mut lease) = shared.pool.checkout(key, |p| shared.is_revoked(p)) {
                // The usual case, without arming a timeout.
                if lease.sender.is_ready() {
                    return Ok((lease, endpoint.address));
                }
                // Ready fails if the upstream closed the connection since.
                if let Ok(Ok(())) = tokio::time::timeout(timeout, lease.sender.ready()).await {
                    return Ok((lease, endpoint.address));
                }
            }
        }
        let dialed = match outbound::dial(
            &endpoint,
            route,
            identity,
            Protocol::Http,
            timeout,
            false,
            shared.edge.get().map(|c| &**c),
        )
        .await
        {
            Ok(d) => d,
            Err(DialError::Next(e)) => {
                last = Some(e);
                continue;
            }
            Err(DialError::Fatal(e)) => return Err(e),
        };
        let handshake = hyper::client::conn::http1::Builder::new()
            .handshake::<_, UpstreamBody>(TokioIo::new(dialed.io))
            .await;
        let (sender, conn) = match handshake {
            Ok(h) => h,
            Err(e) => {
                last = Some(std::io::Error::other(e));
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        let lease = Lease::fresh(
            sender,
            key,
            dialed.upstream.is_some().then(|| identity.clone()),
            dialed.upstream,
        );
        return Ok((lease, endpoint.address));
    }
    Err(outbound::exhausted(route, tried, last))
}

/// Sends `req` upstream. A request that a reused connection could not
/// start sending (the upstream closed it while idle) is retried once on a
/// fresh connection. So is a request the upstream dropped unanswered on a
/// reused connection (it closed the idle connection just as the request
/// went out, RFC 9112 §9.3.1) if it is idempotent and bodiless, so that
/// replaying it is harmless; any other request that may have reached the
/// upstream is never replayed.
async fn forward(
    ctx: &ConnContext,
    route: &Route,
    identity: &Arc<Identity>,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease<UpstreamBody>), ForwardError> {
    let (mut up, endpoint) = upstream_lease(ctx, route, identity, true)
        .await
        .map_err(ForwardError::Connect)?;
    let replayable = up.reused && req.method().is_idempotent() && req.body().is_end_stream();
    let replay = replayable.then(|| {
        let mut copy = Request::new(CountingBody {
            inner: None,
            count: req.body().count.clone(),
        });
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let mut err = match up.sender.try_send_request(req).await {
        Ok(resp) => return Ok((resp, up)),
        Err(e) => e,
    };
    let unsent = err.take_message().filter(|_| up.reused);
    let dropped = || upstream_dropped(err.error());
    let req = match (unsent, replay) {
        (Some(req), _) => req,
        (None, Some(copy)) if dropped() => copy,
        _ => {
            return Err(ForwardError::Request {
                endpoint,
                error: err.into_error(),
            });
        }
    };
    tracing::debug!(%endpoint, error = %err.error(), "pooled upstream connection unusable; retrying on a fresh one");
    let (mut up, endpoint) = upstream_lease(ctx, route, identity, false)
        .await
        .map_err(ForwardError::Connect)?;
    match up.sender.send_request(req).await {
        Ok(resp) => Ok((resp, up)),
        Err(error) => Err(ForwardError::Request { endpoint, error }),
    }
}

/// Whether the upstream closed or reset the connection without answering.
fn upstream_dropped(e: &hyper::Error) -> bool {
    use core::error::Error as _;
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

pub(crate) fn reason_of_rejection(r: &Rejection) -> &'static str {
    use meshgate_core::mtls::RejectReason as R;
    match r.reason {
        R::PlaintextUnderStrict => "plaintext_under_strict",
        R::MissingClientCertificate => "certificate_required",
        R::UntrustedCertificate => "untrusted_certificate",
        R::NoSpiffeId => "no_spiffe_id",
        R::ForeignTrustDomain => "foreign_trust_domain",
        R::NotAWorkloadIdentity(_) => "not_a_workload_identity",
        _ => "rejected",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// `x-forwarded-for`.
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request as sent upstream: hop-by-hop headers removed, the gateway's
/// own `x-forwarded-client-cert` (`xfcc`, for a verified mTLS peer) in place
/// of any the client sent, origin-form target, `Host` and
/// `x-forwarded-for` set.
fn prepare_upstream_request(
    conn: &PerConn,
    req: Request<Incoming>,
    target: Uri,
    host: Option<HostOf>,
    xfcc: Option<HeaderValue>,
    received: Arc<AtomicU64>,
) -> Request<UpstreamBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    xfcc::apply(&mut parts.headers, xfcc);
    // Upstreams speak HTTP/1.1: origin-form target plus Host, whatever
    // version the client used.
    parts.uri = target;
    parts.version = Version::HTTP_11;
    match host {
        // Already the request's one Host header.
        Some(HostOf::Header(_)) => {}
        Some(h) => {
            if let Ok(h) = HeaderValue::from_str(h.as_str()) {
                parts.headers.insert(header::HOST, h);
            }
        }
        None => {
            parts
                .headers
                .insert(header::HOST, HeaderValue::from_static(""));
        }
    }
    let xff = match parts.headers.get(&XFF).map(HeaderValue::to_str) {
        Some(Ok(prev)) => HeaderValue::from_str(&format!("{prev}, {}", conn.ctx.source.ip())).ok(),
        // A value that is not a string was replaced, as before.
        Some(Err(_)) | None => conn.xff(),
    };
    if let Some(v) = xff {
        parts.headers.insert(XFF, v);
    }
    Request::from_parts(
        parts,
        CountingBody {
            inner: Some(body),
            count: received,
        },
    )
}

/// The request body sent upstream.
pub(crate) type UpstreamBody = CountingBody<Incoming>;

/// An upstream response body that returns its connection to the pool when
/// it has been read to the end (a body dropped earlier leaves the
/// connection mid-response, so it is closed instead).
struct PooledBody {
    inner: Incoming,
    ended: bool,
    lease: Option<Lease<UpstreamBody>>,
    shared: Arc<Shared>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take()
            && (self.ended || self.inner.is_end_stream())
        {
            self.shared.pool.put(lease);
        }
    }
}

/// A request body that counts the bytes it yields; `None` is an empty
/// body (a replayed bodiless request).
#[derive(Debug)]
pub(crate) struct CountingBody<B> {
    inner: Option<B>,
    count: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The access-log entry and metric labels of one request, completed when
/// the response body has been sent (or dropped).
struct Record {
    shared: Arc<Shared>,
    entry: AccessEntry,
    started: Instant,
    received: Arc<AtomicU64>,
    done: bool,
    /// Released when the record is (the response is complete).
    in_flight: Option<InFlight>,
}

impl Record {
    fn new<B>(ctx: &ConnContext, snapshot: &Snapshot, req: &Request<B>) -> Self {
        Record {
            shared: ctx.shared.clone(),
            entry: AccessEntry {
                time: String::new(),
                kind: "http",
                source: ctx.source.to_string(),
                // Empty until known; `finish` writes `-` for what never
                // became known.
                principal: String::new(),
                security: "none",
                transport: ctx.security.transport(),
                destination: String::new(),
                mode: "-",
                decision: "deny",
                reason: String::new(),
                policy: String::new(),
                method: Some(req.method().as_str().to_owned()),
                path: Some(req.uri().path().to_owned()),
                status: 0,
                bytes_received: 0,
                bytes_sent: 0,
                duration_ms: 0.0,
                generation: snapshot.generation(),
            },
            started: Instant::now(),
            received: Arc::new(AtomicU64::new(0)),
            done: false,
            in_flight: None,
        }
    }

    fn route(&mut self, route: &Route, mode: &ModeDecision) {
        self.entry.destination = route.destination();
        self.entry.mode = mode.mode.as_str();
    }

    fn principal(&mut self, p: Option<Principal<'_>>) {
        if let Some(p) = p {
            self.entry.principal = p.as_str().to_owned();
            self.entry.security = "mutual_tls";
        }
    }

    fn decision(&mut self, decision: &'static str, reason: &str, policy: Option<String>) {
        self.entry.decision = decision;
        reason.clone_into(&mut self.entry.reason);
        self.entry.policy = policy.unwrap_or_default();
    }

    fn reason(&mut self, reason: &str) {
        reason.clone_into(&mut self.entry.reason);
    }

    /// A response generated by the gateway itself.
    fn local(self, status: StatusCode, body: String) -> Response<LoggedBody> {
        let mut resp = Response::new(ResponseBody::Local(Full::new(Bytes::from(body))));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.logged(resp)
    }

    /// A response from the upstream; `lease` goes back to the pool once
    /// the body has been read to its end.
    fn respond(self, resp: Response<Incoming>, lease: Lease<UpstreamBody>) -> Response<LoggedBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = PooledBody {
            inner: body,
            ended: false,
            lease: Some(lease),
            shared: self.shared.clone(),
        };
        self.logged(Response::from_parts(parts, ResponseBody::Upstream(body)))
    }

    fn logged(mut self, resp: Response<ResponseBody>) -> Response<LoggedBody> {
        self.entry.status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            LoggedBody {
                inner: body,
                sent: 0,
                record: Some(self),
            },
        )
    }

    fn finish(&mut self, sent: u64, status: u16) {
        if self.done {
            return;
        }
        self.done = true;
        if status != 0 {
            self.entry.status = status;
        }
        let elapsed = self.started.elapsed();
        // Taken, not copied: the record is done with it.
        let mut entry = core::mem::replace(&mut self.entry, AccessEntry::empty("http"));
        entry.time = now_rfc3339();
        entry.bytes_sent = sent;
        entry.bytes_received = self.received.load(Ordering::Relaxed);
        entry.duration_ms = duration_ms(elapsed);
        for unknown in [
            &mut entry.principal,
            &mut entry.destination,
            &mut entry.policy,
        ] {
            if unknown.is_empty() {
                "-".clone_into(unknown);
            }
        }
        self.shared.metrics.request(
            RequestLabels {
                destination: &entry.destination,
                security: entry.security,
                decision: entry.decision,
                reason: &entry.reason,
            },
            entry.status,
            elapsed,
        );
        self.shared.access_log.record(entry);
    }
}

pub(crate) fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// Where a response body comes from.
// Proxied responses are the common case: boxing the large variant would
// cost an allocation per request to save stack space on error responses.
#[expect(clippy::large_enum_variant)]
enum ResponseBody {
    /// Generated by the gateway.
    Local(Full<Bytes>),
    /// The upstream's.
    Upstream(PooledBody),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(b) => b.is_end_stream(),
            ResponseBody::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(b) => b.size_hint(),
            ResponseBody::Upstream(b) => b.size_hint(),
        }
    }
}

/// A response body that completes the request's [`Record`] when it ends or
/// is dropped (client went away), with the bytes actually sent.
struct LoggedBody {
    inner: ResponseBody,
    sent: u64,
    record: Option<Record>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                let sent = self.sent;
                if let Some(mut r) = self.record.take() {
                    r.finish(sent, 0);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.finish(self.sent, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_grace_follows_the_clients_pauses() {
        let ms = Duration::from_millis;
        let max = MAX_PARK_GRACE;
        assert_eq!(park_grace(None, max), MIN_PARK_GRACE, "one request so far");
        assert_eq!(park_grace(Some(ms(0)), max), MIN_PARK_GRACE, "back to back");
        assert_eq!(park_grace(Some(ms(32)), max), ms(64));
        assert_eq!(park_grace(Some(ms(5_000)), max), max);
        // Well before a short head timeout fires.
        let short = max_park_grace(ms(100));
        assert_eq!(short, ms(50));
        assert_eq!(park_grace(Some(ms(5_000)), short), short);
    }

    /// The pause runs from the clean flush to the first bytes of the next
    /// request and survives the parser's re-attachment in between.
    #[tokio::test]
    async fn pauses_are_measured_across_attachments() {
        let park = ParkState::new();
        park.idle_from(tokio::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(30)).await;
        park.start_connection();
        park.pause_ended();
        let pause = park.last_pause().expect("pause");
        assert!(
            pause >= Duration::from_millis(30) && pause < Duration::from_secs(10),
            "{pause:?}"
        );
        // More bytes of the same head end no second pause.
        park.pause_ended();
        assert_eq!(park.last_pause(), Some(pause));
    }

    #[tokio::test]
    async fn parking_io_reports_end_of_input_only_when_clean_and_idle() {
        let (near, mut far) = tokio::io::duplex(256);
        let park = Arc::new(ParkState::new());
        park.start_connection();
        let mut io = ParkingIo {
            inner: Prefixed::new(Bytes::from_static(b"GET"), near),
            park: park.clone(),
            max_grace: MAX_PARK_GRACE,
            grace: None,
        };
        let mut buf = [0u8; 16];
        // Replayed bytes first.
        assert_eq!(io.read(&mut buf).await.expect("read"), 3);

        // A request in flight: a read that would block stays pending.
        let in_flight = InFlight::start(&park);
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.expect("write");
        io.flush().await.expect("flush");
        let pending = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(pending.is_err(), "busy connection must not report EOF");
        assert!(!park.parked());

        // Response complete but not flushed since: still no EOF.
        drop(in_flight);
        io.write_all(b"body").await.expect("write");
        let pending = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(pending.is_err(), "unflushed response must not report EOF");

        // Flushed and idle: bytes waiting are passed on, ...
        io.flush().await.expect("flush");
        assert_eq!(park.last_pause(), None, "one request so far");
        far.write_all(b"next").await.expect("client write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 4);
        assert!(!park.parked());
        assert!(
            park.last_pause().is_some(),
            "the pause before it is measured"
        );
        // ... and they start a request: while the rest of its head is on
        // the way, a read that would block waits for it (no end of input
        // in the middle of a head split across segments), even after the
        // flush hyper does between two reads with nothing to write
        // (sslyze's one-byte probe was cut exactly there).
        let pending = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(
            pending.is_err(),
            "a partly received head must not report EOF"
        );
        io.flush().await.expect("flush");
        let pending = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(
            pending.is_err(),
            "a partly received head must not report EOF after an empty flush"
        );
        assert!(!park.parked());
        // Once the head is complete (hyper starts the request), answered
        // and flushed, a read that would block reports a clean end of
        // input — after the grace period, not before.
        drop(InFlight::start(&park));
        io.flush().await.expect("flush");
        let flushed = tokio::time::Instant::now();
        assert_eq!(io.read(&mut buf).await.expect("read"), 0);
        assert!(park.parked());
        assert!(
            flushed.elapsed() >= MIN_PARK_GRACE,
            "parked after {:?}, before the grace period ended",
            flushed.elapsed()
        );
        let mut seen = vec![0u8; 64];
        let n = far.read(&mut seen).await.expect("client read");
        assert_eq!(&seen[..n], b"HTTP/1.1 200 OK\r\nbody");
    }

    #[test]
    fn h2_preface_detection() {
        assert!(may_be_h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(may_be_h2_preface(b"PRI *"));
        assert!(may_be_h2_preface(b""));
        assert!(!may_be_h2_preface(b"POST / HTTP/1.1\r\n"));
        assert!(!may_be_h2_preface(b"GET / HTTP/1.1\r\n"));
    }

    /// Regression for fuzz/http_head: `Host: a.b: fuzz` was routed to
    /// `a.b` while the upstream received the raw value.
    #[test]
    fn host_port_must_be_a_number() {
        for ok in ["a.b", "a.b:9080", "a.b:", "[::1]:80", "[::1]", "a.b:65535"] {
            assert!(has_valid_port(ok), "{ok}");
        }
        for bad in [
            "a.b: fuzz",
            "a.b:xx",
            "a.b:+80",
            "a.b:65536",
            "a.b:80 ",
            "[::1]:x",
        ] {
            assert!(!has_valid_port(bad), "{bad}");
        }
    }
}
