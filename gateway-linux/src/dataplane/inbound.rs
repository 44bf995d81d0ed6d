//! One inbound connection, from accept to the proxy that serves it.
//!
//! 1. Read the first bytes (bounded by the head timeout) and sniff them:
//!    `0x16 0x03` is a TLS record, anything else plaintext (core `sniff`).
//! 2. TLS: read the whole ClientHello into rustls' [`Acceptor`] while
//!    keeping the raw bytes, route by SNI, resolve the effective mode. For
//!    DISABLE the raw bytes go to the upstream untouched; otherwise the
//!    same bytes start a handshake on rustls' unbuffered connection
//!    ([`tls`], whose buffers an idle connection does not keep) with the
//!    configuration for the mode (client certificate required for STRICT,
//!    so rustls itself sends TLS 1.3 alert 116 `certificate_required`;
//!    optional for PERMISSIVE). A handshake failure is counted and logged
//!    with its reason.
//! 3. Hand the connection to the HTTP proxy (per-request decisions) or the
//!    TCP proxy (one decision for the connection).
//!
//! Nothing here trusts the peer: every read is bounded in size and time,
//! and every error ends only this connection.

use core::future::Future;
use core::net::SocketAddr;
use core::pin::Pin;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use meshgate_core::mtls::{EffectiveMode, Sniffed, sniff};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::access_log::{AccessEntry, now_rfc3339};
use super::http_proxy::{self, ConnContext, ConnSecurity, duration_ms};
use super::identity::Protocol;
use super::idle;
use super::metrics::DecisionLabels;
use super::prefixed::Prefixed;
use super::snapshot::{ModeDecision, Route, Snapshot};
use super::tcp_proxy::{self, TcpKind};
use super::{ListenerSpec, Shared};

pub(crate) mod tls;

/// The most bytes read while looking for a complete ClientHello. rustls
/// limits a handshake message to 64 KiB; a legitimate ClientHello is far
/// smaller.
const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024 + 5;

/// Serves one accepted connection to completion. A connection on which no
/// byte moves for the idle timeout of its listener's protocol is closed
/// (see [`idle`]).
///
/// The proxies' futures are boxed where they are awaited: a task's
/// allocation is as large as the largest state of its future, and without
/// the boxes every connection, parked HTTP/1 ones included, would pay for
/// the largest of them (hyper's HTTP/2 server, the TCP relay) for its
/// whole life.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerSpec>,
    stream: TcpStream,
    source: SocketAddr,
) {
    // TCP_NODELAY comes from the listening socket (see `listen`).
    let activity = idle::Activity::new();
    let stream = idle::Tracked::new(stream, activity.clone());
    let timeout = match listener.protocol {
        Protocol::Http => shared.options.idle_timeout,
        Protocol::Tcp => shared.options.tcp_idle_timeout,
    };
    tokio::select! {
        () = serve(shared.clone(), listener, stream, source) => {}
        () = idle::expired(&activity, timeout) => {
            // Dropping `serve` closes the socket (and any upstream
            // connection of a request in flight).
            tracing::debug!(%source, "closing a connection idle for {timeout:?}");
            shared.metrics.connection(DecisionLabels {
                destination: "-".to_owned(),
                security: "none",
                decision: "close",
                reason: "idle_timeout".to_owned(),
            });
        }
    }
}

/// Serves a connection in two phases. Establishing it (sniffing, the
/// ClientHello, the handshake, and all of a plaintext or passthrough
/// connection) runs in a box of its own that is freed when the handshake
/// ends, so a terminated TLS connection's task keeps only what
/// [`serve_tls`] holds for the rest of its life.
async fn serve(
    shared: Arc<Shared>,
    listener: Arc<ListenerSpec>,
    stream: idle::Tracked<TcpStream>,
    source: SocketAddr,
) {
    let established = Box::pin(establish(shared.clone(), listener.clone(), stream, source)).await;
    if let Some(established) = established {
        serve_tls(shared, listener, source, established).await;
    }
}

/// A terminated TLS connection, verified and registered, ready for its
/// proxy.
struct Established {
    tls: Box<tls::TlsStream<idle::Tracked<TcpStream>>>,
    snapshot: Arc<Snapshot>,
    route: Option<Route>,
    mode: Option<ModeDecision>,
    sni: Option<String>,
    peer: Option<super::peer::PeerIdentity>,
    h2: bool,
    /// The revocation registration of an mTLS peer.
    registration: Option<super::revocation::Registration>,
    started: Instant,
}

/// Sniffs, routes and handshakes; serves plaintext and passthrough
/// connections itself. Returns the terminated TLS connections still to be
/// served.
async fn establish(
    shared: Arc<Shared>,
    listener: Arc<ListenerSpec>,
    mut stream: idle::Tracked<TcpStream>,
    source: SocketAddr,
) -> Option<Established> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + shared.options.head_timeout;
    let snapshot = shared.snapshot.load_full();

    let mut buf = BytesMut::with_capacity(2048);
    let kind = loop {
        match sniff(&buf) {
            Sniffed::NeedMore => {}
            other => break other,
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return None, // closed before sending anything
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%source, error = %e, "read failed before first bytes");
                return None;
            }
            Err(_) => {
                refused(
                    &shared,
                    &snapshot,
                    source,
                    None,
                    "unknown",
                    "head_timeout",
                    started,
                );
                return None;
            }
        }
    };

    let ctx = |security, sni: Option<&str>| {
        Arc::new(ConnContext {
            shared: shared.clone(),
            listener: listener.clone(),
            source,
            security,
            sni: sni.map(str::to_owned),
        })
    };
    if kind == Sniffed::Plaintext {
        let io = Prefixed::new(buf.freeze(), stream);
        match listener.protocol {
            Protocol::Http => {
                let c = ctx(ConnSecurity::Plaintext, None);
                if http_proxy::may_be_h2_preface(io.prefix()) {
                    Box::pin(http_proxy::serve(io, None, c)).await;
                } else {
                    Box::pin(http_proxy::serve_http1(io, c)).await;
                }
            }
            Protocol::Tcp => {
                let Some(route) = tcp_route(&snapshot, &listener, None) else {
                    refused(
                        &shared,
                        &snapshot,
                        source,
                        None,
                        "plaintext",
                        "no_route",
                        started,
                    );
                    return None;
                };
                let mode = snapshot.mode(&route);
                let kind = if mode.mode == EffectiveMode::Disable {
                    TcpKind::Passthrough
                } else {
                    TcpKind::Terminated
                };
                let c = ctx(ConnSecurity::Plaintext, None);
                Box::pin(tcp_proxy::serve(
                    io, c, snapshot, route, mode, kind, started,
                ))
                .await;
            }
        }
        return None;
    }

    // TLS: collect the ClientHello, keeping the raw bytes for passthrough.
    // rustls' connection state is large; held inline it would size the
    // whole task (see `handle`), so it lives in boxes from here on.
    let mut acceptor = Box::new(Acceptor::default());
    let mut fed = 0;
    let accepted = loop {
        if let Err(e) = feed(&mut acceptor, &buf[fed..]) {
            tracing::debug!(%source, error = %e, "unreadable TLS records");
            handshake_failed(
                &shared,
                &snapshot,
                source,
                None,
                "bad_client_hello",
                started,
            );
            return None;
        }
        fed = buf.len();
        match acceptor.accept() {
            Ok(Some(accepted)) => break Box::new(accepted),
            Ok(None) => {}
            Err((e, mut alert)) => {
                tracing::debug!(%source, error = %e, "invalid ClientHello");
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = stream.write_all(&out).await;
                handshake_failed(
                    &shared,
                    &snapshot,
                    source,
                    None,
                    "bad_client_hello",
                    started,
                );
                return None;
            }
        }
        if buf.len() >= MAX_CLIENT_HELLO_BYTES {
            handshake_failed(
                &shared,
                &snapshot,
                source,
                None,
                "client_hello_too_large",
                started,
            );
            return None;
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                handshake_failed(&shared, &snapshot, source, None, "client_closed", started);
                return None;
            }
            Ok(Ok(_)) => {}
            Err(_) => {
                handshake_failed(
                    &shared,
                    &snapshot,
                    source,
                    None,
                    "handshake_timeout",
                    started,
                );
                return None;
            }
        }
    };

    let sni = accepted.client_hello().server_name().map(str::to_owned);
    let route = match listener.protocol {
        Protocol::Http => sni
            .as_deref()
            .and_then(|s| snapshot.route(s, listener.port)),
        Protocol::Tcp => tcp_route(&snapshot, &listener, sni.as_deref()),
    };
    let mode: Option<ModeDecision> = route.as_ref().map(|r| snapshot.mode(r));
    let effective = match (&mode, listener.protocol) {
        (Some(m), _) => m.mode,
        // Without a known SNI the destination is decided per request by
        // Host; require a certificate if any reachable port is STRICT, so
        // a missing SNI cannot be used to dodge STRICT.
        (None, Protocol::Http) => snapshot.strictest_mode(listener.port),
        (None, Protocol::Tcp) => {
            refused(&shared, &snapshot, source, None, "tls", "no_route", started);
            return None;
        }
    };
    if let (Some(route), Some(mode), EffectiveMode::Disable) = (&route, &mode, effective) {
        // DISABLE: do not terminate; the client's TLS goes to the upstream.
        let io = Prefixed::new(buf.freeze(), stream);
        let c = ctx(ConnSecurity::Plaintext, sni.as_deref());
        Box::pin(tcp_proxy::serve(
            io,
            c,
            snapshot.clone(),
            route.clone(),
            mode.clone(),
            TcpKind::Passthrough,
            started,
        ))
        .await;
        return None;
    }
    // rustls' unbuffered connection takes the ClientHello again from the
    // raw bytes (the acceptor only served to read SNI): its buffers are
    // ours, and are released while the connection is idle (see `tls`).
    drop(accepted);
    drop(acceptor);
    let identity = shared.identity.load_full();
    let config = identity.server_config(effective == EffectiveMode::Strict, listener.protocol);
    drop(identity);
    let hs_started = Instant::now();
    let handshake = Box::pin(tls::TlsStream::accept(stream, config, &buf));
    let tls = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err((e, io))) => {
            let reason = classify_handshake_error(&e);
            tracing::debug!(%source, sni = ?sni, error = %e, reason, "TLS handshake failed");
            handshake_failed(&shared, &snapshot, source, route.as_ref(), reason, started);
            linger_close(io).await;
            return None;
        }
        Err(_) => {
            handshake_failed(
                &shared,
                &snapshot,
                source,
                route.as_ref(),
                "handshake_timeout",
                started,
            );
            return None;
        }
    };
    drop(buf);
    shared.metrics.handshake_done(hs_started.elapsed());
    let conn = tls.common_state();
    let peer = match conn.peer_certificates().and_then(|c| c.first()) {
        None => None,
        // The client verifier of the identity that ran the handshake
        // remembers this leaf's identity (after a rotation: parsed).
        Some(leaf) => match shared.identity.load().peer_of(leaf) {
            Ok(p) => Some(p),
            Err(e) => {
                // The verifier already requires a SPIFFE ID; reaching this
                // means the certificate changed meaning between the two
                // parses, so refuse rather than guess.
                tracing::warn!(%source, error = %e, "verified client certificate without SPIFFE ID");
                handshake_failed(
                    &shared,
                    &snapshot,
                    source,
                    route.as_ref(),
                    "no_spiffe_id",
                    started,
                );
                return None;
            }
        },
    };
    let h2 = conn.alpn_protocol() == Some(b"h2".as_slice());
    // Registered before the last revocation check, so a revocation recorded
    // after the verifier ran is either seen here or finds this connection
    // in the registry.
    let registration = peer.as_ref().map(|p| shared.live.register(p));
    if peer.as_ref().is_some_and(|p| shared.is_revoked(p)) {
        refused(
            &shared,
            &snapshot,
            source,
            route.as_ref(),
            "mtls",
            "certificate_revoked",
            started,
        );
        return None;
    }
    Some(Established {
        tls,
        snapshot,
        route,
        mode,
        sni,
        peer,
        h2,
        registration,
        started,
    })
}

/// Serves an established TLS connection with its proxy until it ends, or
/// until its peer's certificate is revoked.
async fn serve_tls(
    shared: Arc<Shared>,
    listener: Arc<ListenerSpec>,
    source: SocketAddr,
    established: Established,
) {
    // This future lives as long as the connection, so it keeps as little
    // as possible across its await: `established` stays where it is (an
    // argument), what the proxy needs moves into the proxy's boxed future
    // and the connection context's `Arc` without copies held here.
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        listener: listener.clone(),
        source,
        security: ConnSecurity::Tls {
            peer: established.peer,
        },
        sni: established.sni,
    });
    let proxy: Pin<Box<dyn Future<Output = ()> + Send>> =
        match (listener.protocol, established.route, established.mode) {
            (Protocol::Tcp, Some(route), Some(mode)) => Box::pin(tcp_proxy::serve(
                established.tls,
                ctx,
                established.snapshot.clone(),
                route,
                mode,
                TcpKind::Terminated,
                established.started,
            )),
            (Protocol::Tcp, _, _) => {
                refused(
                    &shared,
                    &established.snapshot,
                    source,
                    None,
                    "tls",
                    "no_route",
                    established.started,
                );
                return;
            }
            (Protocol::Http, _, _) => {
                shared.metrics.connection(DecisionLabels {
                    destination: "-".to_owned(),
                    security: if ctx.security.peer().is_some() {
                        "mutual_tls"
                    } else {
                        "none"
                    },
                    decision: "allow",
                    reason: "tls_established".to_owned(),
                });
                if established.h2 {
                    Box::pin(http_proxy::serve(established.tls, Some(true), ctx))
                } else {
                    Box::pin(http_proxy::serve_http1(established.tls, ctx))
                }
            }
        };
    match &established.registration {
        None => proxy.await,
        Some(registration) => {
            tokio::select! {
                () = proxy => {}
                () = registration.close.notified() => {
                    // Dropping `proxy` drops the TLS stream: the socket is
                    // closed and any request on it ends.
                    tracing::info!(%source, "closing a connection: the peer's certificate was revoked");
                    refused(
                        &shared,
                        &established.snapshot,
                        source,
                        None,
                        "mtls",
                        "certificate_revoked",
                        established.started,
                    );
                }
            }
        }
    }
}

/// How long a refused TLS client may keep sending before the socket is
/// closed.
const LINGER: core::time::Duration = core::time::Duration::from_secs(1);

/// Closes a connection after a handshake failure without resetting it.
/// rustls has already written the alert. In TLS 1.3 the client considers
/// the handshake done and may already have sent its request; closing with
/// that data unread would make the kernel send a RST, and the client would
/// report "connection reset" instead of the alert (e.g. curl would never
/// print "certificate required"). So: half-close, then discard what the
/// client still sends for a short, bounded time.
///
/// The sink is on the heap: an array here would be part of every
/// connection task's state (see [`handle`]), idle or not.
async fn linger_close<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    let _ = io.shutdown().await;
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The route of a TCP listener: its configured service, else SNI.
fn tcp_route(snapshot: &Snapshot, listener: &ListenerSpec, sni: Option<&str>) -> Option<Route> {
    listener
        .service
        .as_deref()
        .or(sni)
        .and_then(|h| snapshot.route(h, listener.port))
}

/// Feeds newly read bytes to the ClientHello acceptor.
fn feed(acceptor: &mut Acceptor, mut new: &[u8]) -> io::Result<()> {
    while !new.is_empty() {
        if acceptor.read_tls(&mut new)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS buffer full before ClientHello completed",
            ));
        }
    }
    Ok(())
}

/// A short, fixed-vocabulary reason for a failed handshake.
fn classify_handshake_error(e: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => "client_closed",
            _ => "io_error",
        };
    };
    match err {
        Error::NoCertificatesPresented => "certificate_required",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(CertificateError::Revoked) => "certificate_revoked",
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => super::identity::spiffe_rejection_reason(expected, presented),
        Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure | CertificateError::NotValidForName,
        ) => "bad_spiffe_id",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate_expired",
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "certificate_not_yet_valid",
        Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "not_a_client_certificate",
        // A chain whose issuer name matches the trust bundle but whose
        // signature does not verify: a forged or impostor CA.
        Error::InvalidCertificate(CertificateError::BadSignature) => "bad_signature",
        // webpki's path-building errors without a rustls variant of their
        // own arrive wrapped; the two role confusions get their own names.
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::CaUsedAsEndEntity) => "ca_used_as_leaf",
                Some(webpki::Error::EndEntityUsedAsCa) => "leaf_used_as_ca",
                _ => "bad_certificate",
            }
        }
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::PeerIncompatible(_) => "incompatible_client",
        Error::AlertReceived(_) => "client_alert",
        _ => "handshake_error",
    }
}

fn handshake_failed(
    shared: &Shared,
    snapshot: &Snapshot,
    source: SocketAddr,
    route: Option<&Route>,
    reason: &'static str,
    started: Instant,
) {
    shared.metrics.handshake_failure(reason);
    refused(shared, snapshot, source, route, "tls", reason, started);
}

/// Logs and counts a connection refused before any request.
fn refused(
    shared: &Shared,
    snapshot: &Snapshot,
    source: SocketAddr,
    route: Option<&Route>,
    transport: &'static str,
    reason: &'static str,
    started: Instant,
) {
    let destination = route.map_or_else(|| "-".to_owned(), Route::destination);
    let mode = route.map_or("-", |r| snapshot.mode(r).mode.as_str());
    shared.metrics.connection(DecisionLabels {
        destination: destination.clone(),
        security: "none",
        decision: "deny",
        reason: reason.to_owned(),
    });
    shared.access_log.record(AccessEntry {
        time: now_rfc3339(),
        kind: "connection",
        source: source.to_string(),
        principal: "-".to_owned(),
        security: "none",
        transport,
        destination,
        mode,
        decision: "deny",
        reason: reason.to_owned(),
        policy: "-".to_owned(),
        method: None,
        path: None,
        status: 0,
        bytes_received: 0,
        bytes_sent: 0,
        duration_ms: duration_ms(started.elapsed()),
        generation: snapshot.generation(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tests::{Gateway, Pki};

    /// Every connection's task is allocated at its largest state's size for
    /// its whole life, idle keep-alive connections included: the handshake
    /// phase, the proxies and the closing linger must not inflate it.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let gw = Gateway::start(Pki::new("task size CA"), Vec::new(), "").await;
        let local = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(local.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, source) = local.accept().await.expect("accept");
        let listener = Arc::new(ListenerSpec {
            name: "size".to_owned(),
            port: 9080,
            protocol: Protocol::Http,
            service: None,
        });
        let task = handle(gw.dp.shared.clone(), listener, stream, source);
        let size = core::mem::size_of_val(&task);
        // About 1.4 KiB in a debug build. A 4 KiB array or an unboxed
        // handshake phase (both were there before: 5.8 KiB in a release
        // build) would break this.
        assert!(size <= 2048, "connection task future is {size} bytes");
        drop(task);
        drop(client);
    }
}
