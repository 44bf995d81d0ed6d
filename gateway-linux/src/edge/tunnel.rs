//! The tunnel server: one TLS listener for enrollment and operation.
//!
//! # TLS
//! TLS 1.3 only, the gateway's own certificate (empty subject, one SPIFFE
//! URI SAN, from the data plane's current identity, so rotation applies to
//! new tunnels), no session tickets, and records capped at
//! [`TLS_MAX_PLAINTEXT`] bytes of plaintext so the node's embedded-tls
//! needs ~4.5 KiB receive buffers instead of 16 KiB. A client certificate
//! is requested but optional at the TLS layer; when present it must chain
//! to the trust bundle, the CA's intermediates supplied by the gateway
//! (a node sends only its leaf: see `NodeClientVerifier`), and the
//! connection's purpose is decided by whether one was sent:
//!
//! # Enrollment (no client certificate)
//! Both sides send `Hello`; the node sends one `EnrollRequest{token, csr}`;
//! the gateway answers `Certificate{chain, roots, not_before, not_after}`
//! for the identity the token's record fixes, or `Error{InvalidToken |
//! BadCsr | Internal}`; the node then says `Goodbye(Restart)` and
//! reconnects with its certificate. Nothing else is accepted: no streams
//! (the gateway announces `max_streams: 0`), no renewal, no configuration.
//!
//! # Operation (client certificate)
//! The certificate's SPIFFE ID must be an enrolled, non-revoked node and
//! the certificate itself not revoked at the CA; a revoked node gets
//! `Revoked` (so it stops reconnecting), anything else an `Error` and the
//! connection closes. Then: hellos, `ConfigPush` (the node's forwarding
//! rules and the legacy endpoints it exposes; acked with `ConfigAck`),
//! heartbeats and idle timeout (the session's), `RenewRequest` answered
//! with a `Certificate` for the record's identity, streams both ways, and
//! `Revoked` + close within [`RECHECK_INTERVAL`] of a revocation. A second
//! tunnel from the same node supersedes the first.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use meshgate_ca::IssuedCertificate;
use meshgate_core::wire::{
    self, BoundedList, CloseReason, ConfigPush, DeviceAddr, ErrorCode, ErrorMsg, Event, Exposed,
    GoodbyeReason, Instant, MAX_FRAME_LEN, MeshTarget, Message, RevocationReason, Revoked, Role,
    Session, SessionConfig, StreamTarget, encode_frame, parse_frame,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::bridge::{self, Inbound};
use super::registry::{EnrollError, ForwardRule, NodeState};
use super::{EdgeServer, ExposedRule, LiveStatus, LiveTunnel, device_ip, lock};
use crate::dataplane::Identity;
use crate::dataplane::authenticated::{self, PeerIdentity};

/// Largest TLS record plaintext the gateway sends (the node's buffers are
/// sized for it).
pub(crate) const TLS_MAX_PLAINTEXT: usize = 4096;
/// rustls counts the 5-byte record header in `max_fragment_size`.
const TLS_RECORD_HEADER: usize = 5;
/// Time allowed for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may leave the gateway's bytes unread (no progress on a
/// write) before its tunnel is dropped. The tunnel's loop waits on its
/// writes, so without this bound a node that stops reading would freeze
/// its tunnel for good: no revocation, no timeouts, mesh clients of its
/// devices waiting. A node on a slow link still moves a 16 KiB batch in
/// far less.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the TLS close_notify when closing.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for a whole enrollment connection.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a tunnel re-checks that its node is still enrolled and its
/// certificate not revoked (revocation through any path closes the tunnel
/// within this interval).
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Session slots: up to 4 node-opened and 4 gateway-opened streams (the
/// node itself accepts 2 gateway streams at a time).
const SESSION_SLOTS: usize = 8;
/// Node-opened streams accepted at once.
const MAX_NODE_STREAMS: u16 = 4;
/// Bytes of frames collected before they are written out.
const BATCH_BYTES: usize = 16 * 1024;
/// Most tunnel connections (enrolling or operating) at once.
const MAX_CONNECTIONS: usize = 4096;
/// Commands queued per tunnel.
const CMD_QUEUE: usize = 256;

/// What other tasks ask a tunnel to do.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Open a stream to an exposed device (mesh → device).
    Open {
        host: String,
        port: u16,
        reply: oneshot::Sender<io::Result<DuplexStream>>,
    },
    /// Send data on a stream (credit already taken by the bridge).
    Data { id: u32, data: Bytes },
    /// The bridge delivered `n` bytes from the node.
    Consumed { id: u32, n: u32 },
    /// No more data from our side of a stream.
    Finish { id: u32 },
    /// Abort a stream.
    Reset { id: u32 },
    /// Push the (possibly changed) configuration.
    PushConfig,
    /// The node was revoked: tell it and close.
    Revoke,
    /// A newer tunnel from the same node replaced this one.
    Supersede,
}

/// The CA material a tunnel configuration is built from: the trust bundle
/// and the intermediates node certificates may chain through.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CaView {
    roots: Vec<CertificateDer<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
}

/// Intermediates remembered across signing switches (a node reconnecting
/// with a certificate from the previous intermediate must still chain).
const MAX_REMEMBERED_INTERMEDIATES: usize = 8;

/// The tunnel's TLS configuration, rebuilt when the identity rotates or
/// the CA's trust bundle or signing chain changes.
#[derive(Default)]
pub(crate) struct TlsConfigCache {
    slot: Mutex<Option<CachedConfig>>,
}

/// A built configuration and what it was built from.
struct CachedConfig {
    identity: Arc<Identity>,
    ca: CaView,
    config: Arc<ServerConfig>,
}

impl TlsConfigCache {
    fn get(
        &self,
        identity: Arc<Identity>,
        ca: &meshgate_ca::CertificateAuthority,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut slot = lock(&self.slot);
        let mut view = CaView {
            roots: ca.trust_bundle(),
            intermediates: ca.signing_chain(),
        };
        if let Some(cached) = &*slot {
            for old in &cached.ca.intermediates {
                if view.intermediates.len() >= MAX_REMEMBERED_INTERMEDIATES {
                    break;
                }
                if !view.intermediates.contains(old) {
                    view.intermediates.push(old.clone());
                }
            }
            if Arc::ptr_eq(&cached.identity, &identity) && cached.ca == view {
                return Ok(cached.config.clone());
            }
        }
        // The gateway certificate of the data plane's configuration (so
        // rotation applies to new tunnels), TLS 1.3 only, and a client
        // certificate requested but optional (enrollment has none).
        let base = identity.server_config(false, crate::dataplane::Protocol::Tcp);
        let provider = base.crypto_provider().clone();
        let mut roots = RootCertStore::empty();
        for r in &view.roots {
            roots.add(r.clone())?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = Arc::new(NodeClientVerifier {
            inner,
            intermediates: view.intermediates.clone(),
        });
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(base.cert_resolver.clone());
        cfg.max_fragment_size = Some(TLS_MAX_PLAINTEXT + TLS_RECORD_HEADER);
        // No resumption: a node reconnects rarely, and tickets cost it
        // bytes and code for nothing.
        cfg.send_tls13_tickets = 0;
        let cfg = Arc::new(cfg);
        *slot = Some(CachedConfig {
            identity,
            ca: view,
            config: cfg.clone(),
        });
        Ok(cfg)
    }
}

/// Verifies a node's client certificate: it must chain to the trust bundle
/// (rustls' WebPKI verifier: signatures, validity, clientAuth usage).
///
/// A node's TLS stack (embedded-tls) sends exactly one certificate, its
/// leaf, never the intermediates the CA signs through; so the verifier
/// offers the CA's own intermediates as chain candidates. That widens
/// nothing: they are the CA's public certificates, and the chain must
/// still end at a root of the bundle. Who the certificate names is checked
/// after the handshake (an enrolled, unrevoked node record), where a
/// refusal can tell the node why.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    intermediates: Vec<CertificateDer<'static>>,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut candidates: Vec<CertificateDer<'_>> = intermediates.to_vec();
        for c in &self.intermediates {
            if !candidates.contains(c) {
                candidates.push(c.clone());
            }
        }
        self.inner.verify_client_cert(end_entity, &candidates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts tunnel connections until `stop`.
pub(crate) async fn accept_loop(
    server: Arc<EdgeServer>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A permit before accepting: at the limit, new nodes wait in the
        // kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            () = crate::dataplane::stop_requested(&mut stop) => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, remote) = tokio::select! {
            () = crate::dataplane::stop_requested(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "edge tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(server, tcp, remote, stop).await {
                tracing::info!(%remote, error = %e, "edge tunnel ended");
            }
        });
    }
    tracing::info!("edge tunnel listener stopped");
}

/// Why a tunnel connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("TLS configuration: {0}")]
    TlsConfig(rustls::Error),
    #[error("the node stopped reading: nothing written for {WRITE_STALL_TIMEOUT:?}")]
    WriteStalled,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame: {0}")]
    Decode(wire::DecodeError),
    #[error("encoding: {0}")]
    Encode(wire::EncodeError),
    #[error("the node broke the protocol: {0}")]
    Session(wire::SessionError),
    #[error("enrollment timed out")]
    EnrollTimeout,
    #[error("refused: {0}")]
    Refused(String),
}

impl From<wire::EncodeError> for ConnError {
    fn from(e: wire::EncodeError) -> Self {
        ConnError::Encode(e)
    }
}

async fn serve_conn(
    server: Arc<EdgeServer>,
    tcp: TcpStream,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let identity = authenticated::current_identity(&server.dp);
    let config = server
        .tls
        .get(identity, &server.ca)
        .map_err(ConnError::TlsConfig)?;
    let acceptor = TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(ConnError::Handshake(e)),
        Err(_) => return Err(ConnError::HandshakeTimeout),
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let mut io = FrameIo::new(tls);
    match leaf {
        None => match tokio::time::timeout(ENROLL_TIMEOUT, enroll(&server, &mut io)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::EnrollTimeout),
        },
        Some(leaf) => operate(server, io, leaf, remote, stop).await,
    }
}

/// Framed I/O over the TLS stream.
struct FrameIo {
    rd: ReadHalf<TlsStream<TcpStream>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    /// Received bytes not yet decoded.
    rx: Vec<u8>,
    /// Encoded frames not yet written.
    out: Vec<u8>,
    scratch: Box<[u8]>,
}

impl FrameIo {
    fn new(tls: TlsStream<TcpStream>) -> Self {
        let (rd, wr) = tokio::io::split(tls);
        FrameIo {
            rd,
            wr,
            rx: Vec::with_capacity(2 * MAX_FRAME_LEN),
            out: Vec::with_capacity(2 * MAX_FRAME_LEN),
            // `send_data` may write a window update and a data frame.
            scratch: vec![0u8; 2 * MAX_FRAME_LEN].into_boxed_slice(),
        }
    }

    /// Appends one frame to the output.
    fn push(&mut self, msg: &Message<'_>) -> Result<(), ConnError> {
        let n = encode_frame(msg, &mut self.scratch)?;
        self.out.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// Moves everything the session wants to send into the output.
    fn drain<const N: usize>(&mut self, s: &mut Session<N>, now: Instant) -> Result<(), ConnError> {
        while let Some(n) = s.poll_transmit(now, &mut self.scratch)? {
            self.out.extend_from_slice(&self.scratch[..n]);
        }
        Ok(())
    }

    /// Writes everything queued; fails with [`ConnError::WriteStalled`]
    /// when the node takes none of it for [`WRITE_STALL_TIMEOUT`].
    async fn flush(&mut self) -> Result<(), ConnError> {
        let write = async {
            let mut done = 0;
            while done < self.out.len() {
                // Each write that makes progress restarts the clock.
                match tokio::time::timeout(WRITE_STALL_TIMEOUT, self.wr.write(&self.out[done..]))
                    .await
                {
                    Ok(Ok(0)) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
                    Ok(Ok(n)) => done += n,
                    Ok(Err(e)) => return Err(ConnError::Io(e)),
                    Err(_) => return Err(ConnError::WriteStalled),
                }
            }
            match tokio::time::timeout(WRITE_STALL_TIMEOUT, self.wr.flush()).await {
                Ok(r) => r.map_err(ConnError::Io),
                Err(_) => Err(ConnError::WriteStalled),
            }
        };
        let result = write.await;
        self.out.clear();
        result
    }

    /// Reads more bytes; `false` at end of stream.
    async fn read_more(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let n = self.rd.read(&mut buf).await?;
        self.rx.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }

    /// Sends what is queued and closes the TLS connection (close_notify).
    async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.wr.shutdown()).await;
        }
    }
}

/// Monotonic milliseconds for the session (wall-clock steps must not fire
/// or suppress its timeouts).
fn mono(origin: tokio::time::Instant) -> Instant {
    Instant::from_millis(u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX))
}

fn gateway_session<const N: usize>(max_incoming: u16, now: Instant) -> Session<N> {
    let mut cfg = SessionConfig::new(Role::Gateway);
    cfg.max_incoming_streams = max_incoming;
    // The node learns the wall-clock time from our hello.
    Session::new(cfg, now, Some(crate::identity::now()))
}

/// Truncates to the wire's detail limit on a character boundary.
fn detail(s: &str) -> &str {
    let mut end = s.len().min(wire::MAX_DETAIL_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `Certificate` message for an issued certificate.
fn push_certificate(io: &mut FrameIo, issued: &IssuedCertificate) -> Result<(), ConnError> {
    let chain: Vec<&[u8]> = core::iter::once(issued.cert.as_ref())
        .chain(issued.chain.iter().map(|c| c.as_ref()))
        .collect();
    let roots: Vec<&[u8]> = issued.trust_bundle.iter().map(|c| c.as_ref()).collect();
    let too_many = |what: &str| ConnError::Refused(format!("{what} does not fit one message"));
    let msg = Message::Certificate(wire::Certificate {
        chain: BoundedList::from_slice(&chain).map_err(|_| too_many("certificate chain"))?,
        roots: BoundedList::from_slice(&roots).map_err(|_| too_many("trust bundle"))?,
        not_before: issued.not_before,
        not_after: issued.not_after,
    });
    io.push(&msg)
}

/// The enrollment connection (see the module docs).
async fn enroll(server: &Arc<EdgeServer>, io: &mut FrameIo) -> Result<(), ConnError> {
    let origin = tokio::time::Instant::now();
    let mut session: Session<1> = gateway_session(0, mono(origin));
    let mut answered = false;
    loop {
        io.drain(&mut session, mono(origin))?;
        io.flush().await?;
        if session.is_closed() {
            break;
        }
        if !io.read_more().await? {
            break;
        }
        let mut off = 0;
        let mut request: Option<(String, Vec<u8>)> = None;
        while let Some((msg, used)) = parse_frame(&io.rx[off..]).map_err(ConnError::Decode)? {
            off += used;
            match session.handle_message(mono(origin), msg) {
                Ok(Some(Event::Control(Message::EnrollRequest(r))))
                    if !answered && request.is_none() =>
                {
                    request = Some((r.token.to_owned(), r.csr_der.to_vec()));
                }
                Ok(Some(Event::Control(other))) => {
                    let d = format!(
                        "{} is not allowed on an enrollment connection",
                        other.name()
                    );
                    io.push(&Message::Error(ErrorMsg {
                        code: ErrorCode::Protocol,
                        detail: detail(&d),
                    }))?;
                    io.close().await;
                    return Err(ConnError::Refused(d));
                }
                Ok(Some(Event::PeerGoodbye(_) | Event::PeerError(_))) => {
                    io.close().await;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    io.drain(&mut session, mono(origin))?;
                    io.close().await;
                    return Err(ConnError::Session(e));
                }
            }
        }
        io.rx.drain(..off);
        if let Some((token, csr)) = request {
            answered = true;
            let srv = server.clone();
            let result = tokio::task::spawn_blocking(move || {
                srv.registry
                    .enroll(&token, &csr, &srv.ca, srv.cert_ttl, crate::identity::now())
            })
            .await
            .unwrap_or_else(|e| Err(EnrollError::Internal(e.to_string())));
            match result {
                Ok((rec, issued)) => {
                    tracing::info!(node = %rec.name, id = %rec.spiffe_id, serial = %issued.serial, "edge node enrolled");
                    push_certificate(io, &issued)?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "edge enrollment refused");
                    let code = match &e {
                        EnrollError::InvalidToken => ErrorCode::InvalidToken,
                        EnrollError::BadCsr(_) => ErrorCode::BadCsr,
                        EnrollError::Internal(_) => ErrorCode::Internal,
                    };
                    io.push(&Message::Error(ErrorMsg {
                        code,
                        detail: detail(&e.to_string()),
                    }))?;
                    io.close().await;
                    return Err(ConnError::Refused(e.to_string()));
                }
            }
        }
    }
    io.close().await;
    Ok(())
}

/// The serial number bytes of a certificate.
fn serial_of(leaf: &CertificateDer<'_>) -> Vec<u8> {
    X509Certificate::from_der(leaf.as_ref())
        .map(|(_, c)| c.raw_serial().to_vec())
        .unwrap_or_default()
}

/// Refuses an operating connection: our hello, then `Revoked` for a
/// revoked node (so it stops reconnecting) or an `Error`.
async fn refuse(mut io: FrameIo, revoked: bool, why: &str) -> Result<(), ConnError> {
    let origin = tokio::time::Instant::now();
    let mut session: Session<1> = gateway_session(0, mono(origin));
    io.drain(&mut session, mono(origin))?;
    if revoked {
        io.push(&Message::Revoked(Revoked {
            reason: RevocationReason::CessationOfOperation,
            detail: detail(why),
        }))?;
    } else {
        io.push(&Message::Error(ErrorMsg {
            code: ErrorCode::Protocol,
            detail: detail(why),
        }))?;
    }
    io.close().await;
    Err(ConnError::Refused(why.to_owned()))
}

/// A stream of this tunnel.
struct StreamEntry {
    tx: mpsc::UnboundedSender<Inbound>,
    credit: Arc<Semaphore>,
    local_fin: bool,
    peer_fin: bool,
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        // Wakes a bridge waiting for credit that will never come.
        self.credit.close();
    }
}

/// The operating tunnel of one node.
struct Tunnel {
    server: Arc<EdgeServer>,
    node: String,
    peer: PeerIdentity,
    serial: Vec<u8>,
    remote: SocketAddr,
    origin: tokio::time::Instant,
    session: Session<SESSION_SLOTS>,
    streams: HashMap<u32, StreamEntry>,
    opening: HashMap<u32, oneshot::Sender<io::Result<DuplexStream>>>,
    /// The rules of the last configuration pushed (node → mesh targets
    /// are checked against them).
    pushed: Vec<ForwardRule>,
    pushed_version: u64,
    cmd_tx: mpsc::Sender<Cmd>,
    status: Arc<Mutex<LiveStatus>>,
    /// Set when the tunnel must end after flushing (revoked, superseded).
    ending: bool,
}

async fn operate(
    server: Arc<EdgeServer>,
    io: FrameIo,
    leaf: CertificateDer<'static>,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let peer = match authenticated::peer_identity(&leaf) {
        Ok(p) => p,
        Err(e) => return refuse(io, false, &format!("certificate: {e}")).await,
    };
    let id = peer.spiffe_id.to_string();
    let serial = serial_of(&leaf);
    let now = crate::identity::now();
    let Some(rec) = server.registry.by_spiffe_id(&id) else {
        tracing::warn!(%remote, %id, "tunnel refused: not an edge node");
        return refuse(io, false, "certificate is not an enrolled edge node").await;
    };
    if rec.state == NodeState::Revoked || server.ca.is_revoked(&id, &serial, now) {
        tracing::warn!(%remote, node = %rec.name, "tunnel refused: node revoked");
        return refuse(io, true, "this edge node is revoked").await;
    }
    if rec.state != NodeState::Enrolled {
        return refuse(io, false, "edge node is not enrolled").await;
    }
    // The SPIFFE ID alone does not make a node: the certificate must be
    // one the gateway issued to this node (enrollment or renewal), not
    // another mesh certificate that happens to carry its identity.
    if !rec.holds_serial(&hex::encode(&serial)) {
        tracing::warn!(%remote, node = %rec.name, serial = %hex::encode(&serial), "tunnel refused: certificate not issued to this node");
        return refuse(io, false, "certificate was not issued to this edge node").await;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
    let conn_id = server
        .next_conn
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let stamp = crate::state::rfc3339(now);
    let status = Arc::new(Mutex::new(LiveStatus {
        remote: remote.to_string(),
        connected_since: stamp.clone(),
        last_seen: stamp,
        acked_config_version: None,
        streams: 0,
    }));
    let previous = lock(&server.tunnels).insert(
        rec.name.clone(),
        LiveTunnel {
            conn_id,
            tx: cmd_tx.clone(),
            status: status.clone(),
        },
    );
    if let Some(old) = previous {
        let _ = old.tx.try_send(Cmd::Supersede);
    }
    tracing::info!(node = %rec.name, %remote, "edge tunnel up");
    let origin = tokio::time::Instant::now();
    let mut tunnel = Tunnel {
        server: server.clone(),
        node: rec.name.clone(),
        peer,
        serial,
        remote,
        origin,
        session: gateway_session(MAX_NODE_STREAMS, mono(origin)),
        streams: HashMap::new(),
        opening: HashMap::new(),
        pushed: Vec::new(),
        pushed_version: 0,
        cmd_tx,
        status,
        ending: false,
    };
    let result = tunnel.run(io, cmd_rx, stop).await;
    {
        let mut tunnels = lock(&server.tunnels);
        if tunnels.get(&rec.name).is_some_and(|t| t.conn_id == conn_id) {
            tunnels.remove(&rec.name);
        }
    }
    for (_, reply) in tunnel.opening.drain() {
        let _ = reply.send(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "edge tunnel closed",
        )));
    }
    tunnel.streams.clear();
    tracing::info!(node = %rec.name, %remote, "edge tunnel down");
    result
}

/// Work the frame handler leaves for the async loop.
enum Deferred {
    Renew(Vec<u8>),
}

impl Tunnel {
    fn now(&self) -> Instant {
        mono(self.origin)
    }

    async fn run(
        &mut self,
        mut io: FrameIo,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ConnError> {
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            {
                let now = self.now();
                io.drain(&mut self.session, now)
            }?;
            io.flush().await?;
            if self.session.is_closed() || self.ending {
                io.close().await;
                return Ok(());
            }
            let deadline = self
                .session
                .poll_timeout()
                .map(|t| self.origin + Duration::from_millis(t.as_millis()));
            tokio::select! {
                more = io.read_more() => {
                    if !more? {
                        return Ok(());
                    }
                    let deferred = match self.handle_input(&mut io) {
                        Ok(d) => d,
                        Err(e) => {
                            // The Error frame explaining why goes out first.
                            io.close().await;
                            return Err(e);
                        }
                    };
                    for d in deferred {
                        match d {
                            Deferred::Renew(csr) => self.renew(&mut io, csr).await?,
                        }
                    }
                }
                cmd = cmd_rx.recv() => {
                    // `cmd_tx` lives in `self`, so the channel never closes.
                    if let Some(cmd) = cmd {
                        self.handle_cmd(&mut io, cmd)?;
                    }
                    // Batch what is already queued into one write, so bulk
                    // data leaves in full (capped) records rather than one
                    // small record per chunk.
                    while io.out.len() < BATCH_BYTES {
                        let Ok(cmd) = cmd_rx.try_recv() else { break };
                        self.handle_cmd(&mut io, cmd)?;
                    }
                }
                () = sleep_until(deadline) => {
                    let now = self.now();
                    if self.session.handle_timeout(now).is_some() {
                        tracing::info!(node = %self.node, "edge tunnel idle timeout");
                    }
                }
                _ = recheck.tick() => self.recheck(&mut io)?,
                () = crate::dataplane::stop_requested(&mut stop) => {
                    self.session.close(GoodbyeReason::Shutdown);
                }
            }
        }
    }

    /// Decodes and handles every complete frame received.
    fn handle_input(&mut self, io: &mut FrameIo) -> Result<Vec<Deferred>, ConnError> {
        let mut deferred = Vec::new();
        let rx = core::mem::take(&mut io.rx);
        let mut off = 0;
        let result = loop {
            match parse_frame(&rx[off..]) {
                Ok(Some((msg, used))) => {
                    off += used;
                    if let Err(e) = self.on_message(io, msg, &mut deferred) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    // The byte stream can no longer be trusted.
                    let _ = io.push(&Message::Error(ErrorMsg {
                        code: ErrorCode::Protocol,
                        detail: "undecodable frame",
                    }));
                    self.ending = true;
                    break Err(ConnError::Decode(e));
                }
            }
        };
        io.rx = rx;
        io.rx.drain(..off);
        if let Err(e) = result {
            // Whatever the session queued (an Error frame) still goes out.
            let _ = {
                let now = self.now();
                io.drain(&mut self.session, now)
            };
            return Err(e);
        }
        lock(&self.status).last_seen = crate::state::rfc3339(crate::identity::now());
        Ok(deferred)
    }

    fn on_message(
        &mut self,
        io: &mut FrameIo,
        msg: Message<'_>,
        deferred: &mut Vec<Deferred>,
    ) -> Result<(), ConnError> {
        // The session reports the total credit; the bridge's semaphore
        // needs the increment, which is the update's own value.
        let window_delta = match &msg {
            Message::WindowUpdate(w) => Some(w.credit),
            _ => None,
        };
        let now = self.now();
        let event = match self.session.handle_message(now, msg) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "edge node broke the protocol");
                return Err(ConnError::Session(e));
            }
        };
        let Some(event) = event else {
            return Ok(());
        };
        match event {
            Event::Connected { .. } => self.push_config(io)?,
            Event::StreamOpened { id, target } => match target {
                StreamTarget::ToMesh(t) => self.open_to_mesh(id, t),
                // The session only lets the node open ToMesh streams.
                StreamTarget::ToDevice(_) => {
                    let _ = self.session.reset(id, CloseReason::Refused);
                }
            },
            Event::StreamAccepted { id, credit } => self.accepted(id, credit),
            Event::Credit { id, .. } => {
                if let (Some(s), Some(delta)) = (self.streams.get(&id), window_delta) {
                    s.credit.add_permits(usize::try_from(delta).unwrap_or(0));
                }
            }
            Event::Data { id, data } => {
                let delivered = self.streams.get(&id).is_some_and(|s| {
                    s.tx.send(Inbound::Data(Bytes::copy_from_slice(data)))
                        .is_ok()
                });
                if !delivered {
                    self.drop_stream(id);
                    let _ = self.session.reset(id, CloseReason::Cancelled);
                }
            }
            Event::StreamFinished { id } => {
                if let Some(s) = self.streams.get_mut(&id) {
                    let _ = s.tx.send(Inbound::Finished);
                    s.peer_fin = true;
                    if s.local_fin {
                        self.drop_stream(id);
                    }
                }
            }
            Event::StreamReset { id, reason } => {
                if let Some(reply) = self.opening.remove(&id) {
                    let _ = reply.send(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("edge node refused the stream ({reason:?})"),
                    )));
                }
                self.drop_stream(id);
            }
            Event::Control(Message::RenewRequest(r)) => {
                deferred.push(Deferred::Renew(r.csr_der.to_vec()));
            }
            Event::Control(Message::ConfigAck(a)) => {
                lock(&self.status).acked_config_version = Some(a.version);
            }
            Event::Control(other) => {
                let d = format!("{} is not allowed on an operating tunnel", other.name());
                io.push(&Message::Error(ErrorMsg {
                    code: ErrorCode::Protocol,
                    detail: detail(&d),
                }))?;
                self.ending = true;
            }
            Event::PeerGoodbye(reason) => {
                tracing::info!(node = %self.node, ?reason, "edge node said goodbye");
            }
            Event::PeerError(e) => {
                tracing::warn!(node = %self.node, code = ?e.code, detail = e.detail, "edge node reported an error");
            }
            // Sent only by a gateway; the session never yields it here.
            Event::Revoked(_) => self.ending = true,
            Event::TimedOut => {}
        }
        lock(&self.status).streams = self.streams.len();
        Ok(())
    }

    /// A node-opened stream: allowed only to a target of the pushed
    /// configuration that the gateway routes; then served by the data plane
    /// as the node's identity.
    fn open_to_mesh(&mut self, id: u32, t: MeshTarget<'_>) {
        let allowed = self
            .pushed
            .iter()
            .any(|r| r.host.eq_ignore_ascii_case(t.host) && r.port == t.port);
        if !allowed {
            tracing::warn!(node = %self.node, host = t.host, port = t.port, "stream to a target not in the node's configuration refused");
            let _ = self.session.reset(id, CloseReason::Refused);
            return;
        }
        if !authenticated::has_route(&self.server.dp, t.host, t.port) {
            let _ = self.session.reset(id, CloseReason::Unreachable);
            return;
        }
        if self.session.accept(id).is_err() {
            return;
        }
        let credit = self.session.send_credit(id).unwrap_or(0);
        let (ours, theirs) = tokio::io::duplex(bridge::PIPE_BUFFER);
        let entry = self.new_stream(id, ours, credit);
        self.streams.insert(id, entry);
        let dp = self.server.dp.clone();
        let peer = self.peer.clone();
        let remote = self.remote;
        let host = t.host.to_owned();
        let port = t.port;
        let protocol = self.server.protocol_for(&host, port);
        tokio::spawn(async move {
            authenticated::serve_stream(&dp, theirs, peer, remote, &host, port, protocol).await;
        });
    }

    fn new_stream(&self, id: u32, pipe: DuplexStream, credit: u32) -> StreamEntry {
        let (tx, rx) = mpsc::unbounded_channel();
        let sem = Arc::new(Semaphore::new(usize::try_from(credit).unwrap_or(0)));
        bridge::spawn(id, pipe, rx, sem.clone(), self.cmd_tx.clone());
        StreamEntry {
            tx,
            credit: sem,
            local_fin: false,
            peer_fin: false,
        }
    }

    /// The node accepted a stream we opened to one of its devices.
    fn accepted(&mut self, id: u32, credit: u32) {
        let Some(reply) = self.opening.remove(&id) else {
            return;
        };
        let (ours, theirs) = tokio::io::duplex(bridge::PIPE_BUFFER);
        if reply.send(Ok(theirs)).is_err() {
            // The mesh client gave up meanwhile.
            let _ = self.session.reset(id, CloseReason::Cancelled);
            return;
        }
        let entry = self.new_stream(id, ours, credit);
        self.streams.insert(id, entry);
    }

    fn drop_stream(&mut self, id: u32) {
        self.streams.remove(&id);
    }

    fn handle_cmd(&mut self, io: &mut FrameIo, cmd: Cmd) -> Result<(), ConnError> {
        match cmd {
            Cmd::Open { host, port, reply } => {
                let exposed = self
                    .server
                    .exposed_for(&self.node)
                    .any(|e| e.host.eq_ignore_ascii_case(&host) && e.port == port);
                if !exposed {
                    let _ = reply.send(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "service not exposed by this node",
                    )));
                    return Ok(());
                }
                let target = StreamTarget::ToDevice(MeshTarget { host: &host, port });
                match self.session.open_stream(target, &mut io.scratch) {
                    Ok((id, n)) => {
                        io.out.extend_from_slice(&io.scratch[..n]);
                        self.opening.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("edge node stream not opened: {e}"),
                        )));
                    }
                }
            }
            Cmd::Data { id, data } => {
                let mut rest: &[u8] = &data;
                while !rest.is_empty() {
                    match self.session.send_data(id, rest, &mut io.scratch) {
                        Ok(sent) => {
                            io.out.extend_from_slice(&io.scratch[..sent.written]);
                            rest = &rest[sent.consumed..];
                        }
                        Err(e) => {
                            // Reset or closed meanwhile; the bridge learns
                            // it when its entry goes.
                            tracing::warn!(node = %self.node, id, error = %e, "stream data dropped");
                            self.drop_stream(id);
                            break;
                        }
                    }
                }
            }
            Cmd::Consumed { id, n } => {
                let _ = self.session.consumed(id, n);
            }
            Cmd::Finish { id } => {
                if self.session.finish(id).is_ok()
                    && let Some(s) = self.streams.get_mut(&id)
                {
                    s.local_fin = true;
                    if s.peer_fin {
                        self.drop_stream(id);
                    }
                }
            }
            Cmd::Reset { id } => {
                let _ = self.session.reset(id, CloseReason::Cancelled);
                self.drop_stream(id);
            }
            Cmd::PushConfig => self.push_config(io)?,
            Cmd::Revoke => self.recheck(io)?,
            Cmd::Supersede => {
                tracing::info!(node = %self.node, "edge tunnel superseded by a newer one");
                self.session.close(GoodbyeReason::Superseded);
            }
        }
        lock(&self.status).streams = self.streams.len();
        Ok(())
    }

    /// Pushes the node's configuration if the session is open and the
    /// content changed since the last push on this tunnel.
    fn push_config(&mut self, io: &mut FrameIo) -> Result<(), ConnError> {
        if !self.session.is_open() {
            return Ok(());
        }
        let Some(rec) = self.server.registry.get(&self.node) else {
            return Ok(());
        };
        let (listeners, exposed, fingerprint) = self.server.config_for(&rec);
        let version = match self.server.registry.config_version(
            &self.node,
            &fingerprint,
            crate::identity::now(),
        ) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "cannot version the configuration; not pushed");
                return Ok(());
            }
        };
        if version == self.pushed_version {
            return Ok(());
        }
        match encode_config(version, &listeners, &exposed, io) {
            Ok(()) => {
                self.pushed = listeners;
                self.pushed_version = version;
                // Streams from rules that went away are cancelled by the
                // node itself (it resets them when it applies the push).
            }
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "configuration not pushed");
            }
        }
        Ok(())
    }

    /// Closes the tunnel with `Revoked` if the node was revoked (in the
    /// registry or at the CA).
    fn recheck(&mut self, io: &mut FrameIo) -> Result<(), ConnError> {
        let rec = self.server.registry.get(&self.node);
        let id = self.peer.spiffe_id.to_string();
        let revoked = rec.is_none_or(|r| r.state != NodeState::Enrolled)
            || self
                .server
                .ca
                .is_revoked(&id, &self.serial, crate::identity::now());
        if revoked && !self.ending {
            tracing::warn!(node = %self.node, "edge node revoked: closing its tunnel");
            // Everything queued goes first, then the revocation; nothing
            // after it (the session is not asked for a goodbye).
            {
                let now = self.now();
                io.drain(&mut self.session, now)
            }?;
            io.push(&Message::Revoked(Revoked {
                reason: RevocationReason::CessationOfOperation,
                detail: "revoked by the gateway administrator",
            }))?;
            self.streams.clear();
            self.ending = true;
        }
        Ok(())
    }

    async fn renew(&mut self, io: &mut FrameIo, csr: Vec<u8>) -> Result<(), ConnError> {
        let srv = self.server.clone();
        let node = self.node.clone();
        let result = tokio::task::spawn_blocking(move || {
            srv.registry
                .renew(&node, &csr, &srv.ca, srv.cert_ttl, crate::identity::now())
        })
        .await;
        match result {
            Ok(Ok(issued)) => {
                tracing::info!(node = %self.node, serial = %issued.serial, "edge node certificate renewed");
                push_certificate(io, &issued)
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %self.node, error = %e, "edge renewal refused");
                // The node keeps its certificate and retries with backoff;
                // a revoked node is closed by the recheck.
                let code = if matches!(e, super::registry::RegistryError::Ca(_)) {
                    ErrorCode::BadCsr
                } else {
                    ErrorCode::Internal
                };
                io.push(&Message::Error(ErrorMsg {
                    code,
                    detail: detail(&e.to_string()),
                }))?;
                self.ending = true;
                Ok(())
            }
            Err(e) => Err(ConnError::Refused(format!("renewal task failed: {e}"))),
        }
    }
}

fn encode_config(
    version: u64,
    listeners: &[ForwardRule],
    exposed: &[ExposedRule],
    io: &mut FrameIo,
) -> Result<(), ConnError> {
    let ls: Vec<wire::Listener<'_>> = listeners
        .iter()
        .map(|r| wire::Listener {
            listen_port: r.listen_port,
            target: MeshTarget {
                host: &r.host,
                port: r.port,
            },
        })
        .collect();
    let ex: Vec<Exposed<'_>> = exposed
        .iter()
        .map(|e| Exposed {
            service: MeshTarget {
                host: &e.host,
                port: e.port,
            },
            device: DeviceAddr {
                ip: device_ip(e.device.ip()),
                port: e.device.port(),
            },
        })
        .collect();
    let full = |what: &str| ConnError::Refused(format!("too many {what} for one push"));
    let msg = Message::ConfigPush(ConfigPush {
        version,
        listeners: BoundedList::from_slice(&ls).map_err(|_| full("listeners"))?,
        exposed: BoundedList::from_slice(&ex).map_err(|_| full("exposed endpoints"))?,
    });
    io.push(&msg)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => core::future::pending().await,
    }
}
