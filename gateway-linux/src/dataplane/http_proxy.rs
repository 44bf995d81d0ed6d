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

use core::net::SocketAddr;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshgate_core::mtls::{MeshIdentity, Presented, Rejection, TlsVersion, admit};
use meshgate_core::spiffe::Principal;
use tokio::io::{AsyncRead, AsyncWrite};

use super::access_log::{AccessEntry, now_rfc3339};
use super::identity::Protocol;
use super::metrics::DecisionLabels;
use super::outbound;
use super::peer::PeerIdentity;
use super::snapshot::{AuthzRequest, ModeDecision, Route, Snapshot, split_host_port};
use super::{ListenerSpec, Shared, request_path, xfcc};

/// Most header fields in one HTTP/1 request head.
const MAX_HEADERS: usize = 256;
/// The body of an authorization denial, exactly as Envoy's RBAC filter.
pub(crate) const RBAC_DENIED_BODY: &str = "RBAC: access denied";

/// Boxed error of proxied bodies.
pub(crate) type BoxError = Box<dyn core::error::Error + Send + Sync>;
/// The body type of every response the proxy produces.
type ProxyBody = BoxBody<Bytes, BoxError>;

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
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(svc_ctx.clone(), req));
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

/// The request's authority: `:authority` for HTTP/2 (and absolute-form
/// HTTP/1 targets), else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
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
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Refused> {
    let snapshot = ctx.shared.snapshot.load_full();
    let mut rec = Record::new(&ctx, &snapshot, &req);
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
            Some(format!("{service}:{}", ctx.listener.port))
        }
        _ => request_host(&req),
    };
    // Routing and authorization use the name part of the Host; the
    // upstream gets the raw value. A port that is not a number would make
    // them disagree (`a.b: x` was routed to `a.b`), so it is refused.
    if host.as_deref().is_some_and(|h| !has_valid_port(h)) {
        rec.decision("deny", "invalid_host", None);
        return Ok(rec.local(
            StatusCode::BAD_REQUEST,
            "meshgate: invalid port in Host\n".to_owned(),
        ));
    }
    let Some(route) = host
        .as_deref()
        .and_then(|h| snapshot.route(h, ctx.listener.port))
    else {
        rec.decision("deny", "no_route", None);
        let body = format!(
            "meshgate: no service for host {}\n",
            host.as_deref().unwrap_or("(none)")
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
    let host_name = host.as_deref().map(|h| {
        let name = split_host_port(h).0;
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
    let peer = admitted.principal.and(ctx.security.peer());
    let upstream_req = prepare_upstream_request(
        req,
        target,
        host.as_deref().unwrap_or_default(),
        identity.spiffe_id().borrow().as_str(),
        peer,
        ctx.source,
        rec.received.clone(),
    );
    let (io, endpoint) = match outbound::connect(
        &route,
        &identity,
        Protocol::Http,
        ctx.shared.options.upstream_connect_timeout,
        false,
        ctx.shared.edge.get().map(|c| &**c),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(destination = %route.destination(), error = %e, "upstream unavailable");
            rec.reason(e.reason());
            return Ok(rec.local(StatusCode::SERVICE_UNAVAILABLE, format!("meshgate: {e}\n")));
        }
    };
    match forward(io, upstream_req).await {
        Ok(resp) => Ok(rec.respond(resp)),
        Err(e) => {
            tracing::warn!(destination = %route.destination(), %endpoint, error = %e, "upstream request failed");
            rec.reason("upstream_request_failed");
            Ok(rec.local(
                StatusCode::BAD_GATEWAY,
                format!("meshgate: upstream {endpoint} request failed: {e}\n"),
            ))
        }
    }
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

/// Sends one request over a fresh HTTP/1.1 connection to the upstream.
async fn forward(
    io: Box<dyn outbound::UpstreamIo>,
    req: Request<CountingBody<Incoming>>,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    sender.send_request(req).await
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

fn prepare_upstream_request(
    req: Request<Incoming>,
    target: Uri,
    host: &str,
    gateway_id: &str,
    peer: Option<&PeerIdentity>,
    source: SocketAddr,
    received: Arc<AtomicU64>,
) -> Request<CountingBody<Incoming>> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    xfcc::apply(&mut parts.headers, gateway_id, peer);
    // Upstreams speak HTTP/1.1: origin-form target plus Host, whatever
    // version the client used.
    parts.uri = target;
    parts.version = Version::HTTP_11;
    if let Ok(h) = HeaderValue::from_str(host) {
        parts.headers.insert(header::HOST, h);
    }
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", source.ip()),
        None => source.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert("x-forwarded-for", v);
    }
    Request::from_parts(
        parts,
        CountingBody {
            inner: body,
            count: received,
        },
    )
}

/// A request body that counts the bytes it yields.
#[derive(Debug)]
pub(crate) struct CountingBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// The access-log entry and metric labels of one request, completed when
/// the response body has been sent (or dropped).
struct Record {
    shared: Arc<Shared>,
    entry: AccessEntry,
    started: Instant,
    received: Arc<AtomicU64>,
    done: bool,
}

impl Record {
    fn new<B>(ctx: &ConnContext, snapshot: &Snapshot, req: &Request<B>) -> Self {
        Record {
            shared: ctx.shared.clone(),
            entry: AccessEntry {
                time: String::new(),
                kind: "http",
                source: ctx.source.to_string(),
                principal: "-".to_owned(),
                security: "none",
                transport: ctx.security.transport(),
                destination: "-".to_owned(),
                mode: "-",
                decision: "deny",
                reason: String::new(),
                policy: "-".to_owned(),
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
        self.entry.policy = policy.unwrap_or_else(|| "-".to_owned());
    }

    fn reason(&mut self, reason: &str) {
        reason.clone_into(&mut self.entry.reason);
    }

    /// A response generated by the gateway itself.
    fn local(self, status: StatusCode, body: String) -> Response<ProxyBody> {
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.respond_boxed(resp)
    }

    /// A response from the upstream.
    fn respond(self, resp: Response<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        self.respond_boxed(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed(),
        ))
    }

    fn respond_boxed(mut self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.entry.status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            LoggedBody {
                inner: body,
                sent: 0,
                record: Some(self),
            }
            .boxed(),
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
        self.entry.time = now_rfc3339();
        self.entry.bytes_sent = sent;
        self.entry.bytes_received = self.received.load(Ordering::Relaxed);
        self.entry.duration_ms = duration_ms(elapsed);
        self.shared.metrics.request(
            DecisionLabels {
                destination: self.entry.destination.clone(),
                security: self.entry.security,
                decision: self.entry.decision,
                reason: self.entry.reason.clone(),
            },
            self.entry.status,
            elapsed,
        );
        self.shared.access_log.record(self.entry.clone());
    }
}

pub(crate) fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// A response body that completes the request's [`Record`] when it ends or
/// is dropped (client went away), with the bytes actually sent.
struct LoggedBody {
    inner: ProxyBody,
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
    use super::has_valid_port;

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
