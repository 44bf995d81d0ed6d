//! The node's network runtime on embassy-net: connect to the gateway,
//! handshake TLS with embedded-tls (verifying and pinning the gateway,
//! presenting the node certificate once enrolled), and drive a
//! [`Tunnel`] over it; reconnect with backoff; persist credentials after
//! enrollment and renewal; stop for good when revoked.
//!
//! One TCP connection is split into a reader and a writer half, and the
//! TLS connection over it likewise, so the task can wait for a frame from
//! the gateway and for its own deadlines (heartbeats, renewal) at the same
//! time without cancelling a half-read TLS record. Both halves share the
//! tunnel state through a `RefCell` that is never held across an `.await`.
//!
//! Not wired yet: the legacy-socket side of the bridge. Streams the
//! gateway opens to exposed devices are refused with `Unreachable`, and no
//! local listener opens streams; the sans-IO decisions for both directions
//! are in [`crate::tunnel`] and [`crate::config`].

use core::cell::RefCell;

use embassy_futures::select::{Either, select};
use embassy_net::Stack;
use embassy_net::tcp::{TcpReader, TcpSocket, TcpWriter};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant as EmbassyInstant, Timer};
use embedded_io_async::{Read, Write};
use embedded_tls::{TlsConfig, TlsConnection, TlsContext, TlsError};
use heapless::Vec;
use meshgate_core::wire::session::Instant;
use meshgate_core::wire::{CloseReason, FrameDecoder, GoodbyeReason, MAX_FRAME_LEN};
use rand_core::CryptoRngCore;

use crate::creds::{CredStore, SCRATCH_LEN, SlotStorage};
use crate::log::{log_info, log_warn};
use crate::tls::{self, GatewayVerifier, NodeCrypto};
use crate::tunnel::NodeState;
use crate::tunnel::{Backoff, Purpose, Tunnel, TunnelEvent};

/// TCP receive buffer: one capped TLS record from the gateway and then some.
pub const TCP_RX_LEN: usize = 4608;
/// TCP send buffer.
pub const TCP_TX_LEN: usize = 4608;
/// TLS record read buffer. The gateway caps its records (4 KiB of
/// plaintext), so the 16 KiB embedded-tls would otherwise need is not.
pub const TLS_RX_LEN: usize = 6144;
/// TLS record write buffer: one frame plus record overhead.
pub const TLS_TX_LEN: usize = MAX_FRAME_LEN + 512;

/// Buffers for one tunnel connection (about 30 KiB), allocated once by
/// the board (`StaticCell`) and reused across reconnects.
pub struct NodeBuffers {
    tcp_rx: [u8; TCP_RX_LEN],
    tcp_tx: [u8; TCP_TX_LEN],
    tls_rx: [u8; TLS_RX_LEN],
    tls_tx: [u8; TLS_TX_LEN],
    frames_in: [u8; MAX_FRAME_LEN],
    frames_out: [u8; MAX_FRAME_LEN],
    scratch: [u8; SCRATCH_LEN],
}

impl NodeBuffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        NodeBuffers {
            tcp_rx: [0; TCP_RX_LEN],
            tcp_tx: [0; TCP_TX_LEN],
            tls_rx: [0; TLS_RX_LEN],
            tls_tx: [0; TLS_TX_LEN],
            frames_in: [0; MAX_FRAME_LEN],
            frames_out: [0; MAX_FRAME_LEN],
            scratch: [0; SCRATCH_LEN],
        }
    }
}

impl Default for NodeBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// The I/O error of a [`Duplex`] half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DuplexError {
    /// The TCP socket failed.
    Tcp(embassy_net::tcp::Error),
    /// A half was used concurrently with itself (a bug; never expected).
    Busy,
}

impl core::fmt::Display for DuplexError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DuplexError::Tcp(e) => write!(f, "tcp: {e:?}"),
            DuplexError::Busy => f.write_str("socket half used concurrently"),
        }
    }
}

impl core::error::Error for DuplexError {}

impl embedded_io::Error for DuplexError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            DuplexError::Tcp(e) => e.kind(),
            DuplexError::Busy => embedded_io::ErrorKind::Other,
        }
    }
}

/// A copyable handle on a split TCP socket, so embedded-tls can split its
/// connection into a reader and a writer (it needs `Socket: Clone`). The
/// TLS reader half only reads and the writer half only writes, so each
/// `RefCell` is borrowed by one half only.
#[derive(Clone, Copy)]
struct Duplex<'s, 'a> {
    r: &'s RefCell<TcpReader<'a>>,
    w: &'s RefCell<TcpWriter<'a>>,
}

impl embedded_io_async::ErrorType for Duplex<'_, '_> {
    type Error = DuplexError;
}

impl Read for Duplex<'_, '_> {
    #[expect(
        clippy::await_holding_refcell_ref,
        reason = "only the TLS reader half reads; the borrow cannot conflict"
    )]
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DuplexError> {
        let mut r = self.r.try_borrow_mut().map_err(|_| DuplexError::Busy)?;
        r.read(buf).await.map_err(DuplexError::Tcp)
    }
}

impl Write for Duplex<'_, '_> {
    #[expect(
        clippy::await_holding_refcell_ref,
        reason = "only the TLS writer half writes; the borrow cannot conflict"
    )]
    async fn write(&mut self, buf: &[u8]) -> Result<usize, DuplexError> {
        let mut w = self.w.try_borrow_mut().map_err(|_| DuplexError::Busy)?;
        w.write(buf).await.map_err(DuplexError::Tcp)
    }

    #[expect(
        clippy::await_holding_refcell_ref,
        reason = "only the TLS writer half writes; the borrow cannot conflict"
    )]
    async fn flush(&mut self) -> Result<(), DuplexError> {
        let mut w = self.w.try_borrow_mut().map_err(|_| DuplexError::Busy)?;
        w.flush().await.map_err(DuplexError::Tcp)
    }
}

/// How one connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConnectionEnd {
    /// The session ran and closed (goodbye, idle timeout, enrollment done).
    Closed,
    /// The gateway revoked this node.
    Revoked,
}

/// Why a connection failed before or while running.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConnectionError {
    /// TCP connect failed.
    Connect,
    /// The TLS handshake or record layer failed (includes a refused
    /// gateway certificate).
    Tls(TlsError),
    /// The gateway broke the tunnel protocol, or a frame did not decode.
    Protocol,
    /// The stored credentials are unusable (no pinned gateway identity).
    Credentials,
}

fn monotonic() -> Instant {
    Instant::from_millis(EmbassyInstant::now().as_millis())
}

/// Shared between the reader and writer halves of one connection.
struct Shared<'n> {
    tunnel: Tunnel,
    state: &'n mut NodeState,
    /// Control frames produced while handling input (enroll request).
    outbox: Vec<u8, MAX_FRAME_LEN>,
    /// Credentials changed and must be saved.
    dirty: bool,
    end: Option<ConnectionEnd>,
}

/// Runs one connection to the gateway until it closes.
pub async fn run_connection<R: CryptoRngCore>(
    stack: Stack<'_>,
    state: &mut NodeState,
    rng: &mut R,
    bufs: &mut NodeBuffers,
    mut on_credentials: impl FnMut(&NodeState, &mut [u8]),
) -> Result<ConnectionEnd, ConnectionError> {
    let purpose = if state.creds.is_enrolled() {
        Purpose::Operate
    } else {
        Purpose::Enroll
    };
    let gw = state.creds.gateway();
    let mut socket = TcpSocket::new(stack, &mut bufs.tcp_rx, &mut bufs.tcp_tx);
    socket.set_timeout(Some(Duration::from_secs(90)));
    let remote = (embassy_net::Ipv4Address::from(gw.ip), gw.port);
    socket
        .connect(remote)
        .await
        .map_err(|_| ConnectionError::Connect)?;
    log_info!("tcp connected to gateway");
    let (r, w) = socket.split();
    let (r, w) = (RefCell::new(r), RefCell::new(w));
    let duplex = Duplex { r: &r, w: &w };
    let mut tls = TlsConnection::new(duplex, &mut bufs.tls_rx, &mut bufs.tls_tx);
    {
        let gateway_id = state
            .creds
            .gateway_id()
            .ok_or(ConnectionError::Credentials)?;
        let verifier = GatewayVerifier::new(state.creds.roots(), gateway_id);
        let client = match (purpose, state.creds.leaf()) {
            (Purpose::Operate, Some(leaf)) => {
                let key = state
                    .creds
                    .key()
                    .map_err(|_| ConnectionError::Credentials)?;
                Some((key, leaf))
            }
            _ => None,
        };
        let crypto = NodeCrypto::new(&mut *rng, verifier, client);
        let config = TlsConfig::new();
        tls.open(TlsContext::new(&config, crypto))
            .await
            .map_err(ConnectionError::Tls)?;
    }
    log_info!("tls established");
    let (mut reader, mut writer) = tls.split();
    let shared = RefCell::new(Shared {
        tunnel: Tunnel::new(purpose, monotonic(), None),
        state,
        outbox: Vec::new(),
        dirty: false,
        end: None,
    });
    let wake: Signal<NoopRawMutex, ()> = Signal::new();
    let rng = RefCell::new(rng);
    let frames_in = &mut bufs.frames_in;
    let frames_out = &mut bufs.frames_out;
    let scratch = &mut bufs.scratch;

    let read_side = async {
        let mut decoder = FrameDecoder::new(frames_in);
        loop {
            let n = reader
                .read(decoder.spare())
                .await
                .map_err(ConnectionError::Tls)?;
            if n == 0 {
                return Ok::<(), ConnectionError>(());
            }
            decoder.commit(n);
            loop {
                let msg = match decoder.next_frame() {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(_) => return Err(ConnectionError::Protocol),
                };
                let mut sh = shared.borrow_mut();
                let sh = &mut *sh;
                let now = monotonic();
                let rand = rng.borrow_mut().next_u32();
                let ev = sh
                    .tunnel
                    .handle_message(now, msg, sh.state, rand)
                    .map_err(|_| ConnectionError::Protocol)?;
                handle_event(sh, now, ev);
            }
            wake.signal(());
        }
    };

    let write_side = async {
        loop {
            let mut len = 0;
            {
                let mut sh = shared.borrow_mut();
                let sh = &mut *sh;
                let now = monotonic();
                if let Some(ev) = sh.tunnel.handle_timeout(now) {
                    handle_event(sh, now, Some(ev));
                }
                let out = &mut frames_out[..];
                if let Some(n) = sh
                    .tunnel
                    .poll_renewal(now, sh.state, &mut **rng.borrow_mut(), out)
                    .map_err(|_| ConnectionError::Protocol)?
                {
                    len = n;
                    log_info!("renewal requested");
                }
                if len == 0 && !sh.outbox.is_empty() {
                    let n = sh.outbox.len();
                    out[..n].copy_from_slice(&sh.outbox);
                    sh.outbox.clear();
                    len = n;
                }
                while let Some(n) = sh
                    .tunnel
                    .poll_transmit(now, &mut out[len..])
                    .map_err(|_| ConnectionError::Protocol)?
                {
                    len += n;
                    if out.len() - len < 64 {
                        // Every queued session frame is under 64 bytes.
                        break;
                    }
                }
                if sh.dirty {
                    sh.dirty = false;
                    on_credentials(sh.state, &mut scratch[..]);
                }
            }
            if len > 0 {
                writer
                    .write_all(&frames_out[..len])
                    .await
                    .map_err(ConnectionError::Tls)?;
                writer.flush().await.map_err(ConnectionError::Tls)?;
            }
            let (closed, deadline) = {
                let sh = shared.borrow();
                (sh.tunnel.is_closed(), sh.tunnel.poll_timeout())
            };
            if closed {
                return Ok::<(), ConnectionError>(());
            }
            // Wake for input, the session deadline, or at least every
            // second to check the renewal schedule.
            let next = deadline
                .map(|d| EmbassyInstant::from_millis(d.as_millis()))
                .unwrap_or(EmbassyInstant::MAX)
                .min(EmbassyInstant::now() + Duration::from_secs(1));
            let _ = select(wake.wait(), Timer::at(next)).await;
        }
    };

    let result = match select(read_side, write_side).await {
        Either::First(r) | Either::Second(r) => r,
    };
    let end = shared.borrow().end;
    result.map(|()| end.unwrap_or(ConnectionEnd::Closed))
}

fn handle_event(sh: &mut Shared<'_>, now: Instant, ev: Option<TunnelEvent<'_>>) {
    let Some(ev) = ev else { return };
    match ev {
        TunnelEvent::Connected => {
            if let Some(wall) = sh.tunnel.wall_time(now) {
                tls::set_wall_time(wall);
            }
            if sh.tunnel.purpose() == Purpose::Enroll {
                let mut frame = [0u8; MAX_FRAME_LEN];
                match sh.tunnel.send_enroll_request(now, sh.state, &mut frame) {
                    Ok(n) => {
                        if sh.outbox.extend_from_slice(&frame[..n]).is_err() {
                            sh.tunnel.close(GoodbyeReason::Shutdown);
                        }
                        log_info!("enrollment requested");
                    }
                    Err(_e) => {
                        log_warn!("cannot enroll: {}", _e);
                        sh.tunnel.close(GoodbyeReason::Shutdown);
                    }
                }
            }
        }
        TunnelEvent::ConnectDevice { id, .. } => {
            // The device side of the bridge is not wired to sockets yet
            // (module docs): refuse rather than pretend.
            let _ = sh.tunnel.session().reset(id, CloseReason::Unreachable);
        }
        TunnelEvent::Stream(_) => {}
        TunnelEvent::CertificateInstalled => {
            log_info!("certificate installed");
            sh.dirty = true;
        }
        TunnelEvent::CertificateRejected(_r) => log_warn!("certificate rejected: {}", _r),
        TunnelEvent::ConfigApplied { version: _v } => log_info!("config {} applied", _v),
        TunnelEvent::ConfigRejected(_e) => log_warn!("config rejected: {}", _e),
        TunnelEvent::Revoked(_) => {
            log_warn!("node revoked by the gateway");
            sh.end = Some(ConnectionEnd::Revoked);
            sh.dirty = true;
        }
        TunnelEvent::Closed(_) => log_info!("tunnel closed"),
    }
}

/// The node's main loop: keep a tunnel to the gateway, reconnecting with
/// backoff, saving credentials whenever they change. Returns only when the
/// node is revoked.
pub async fn run<R: CryptoRngCore, S: SlotStorage>(
    stack: Stack<'_>,
    mut state: NodeState,
    store: &mut CredStore<S>,
    rng: &mut R,
    bufs: &mut NodeBuffers,
) {
    let mut backoff = Backoff::new();
    loop {
        stack.wait_config_up().await;
        let res = run_connection(stack, &mut state, rng, bufs, |st, scratch| {
            if store.save(&st.creds, scratch).is_err() {
                log_warn!("saving credentials failed");
            }
        })
        .await;
        match res {
            Ok(ConnectionEnd::Revoked) => return,
            Ok(ConnectionEnd::Closed) => backoff.reset(),
            Err(_e) => log_warn!("connection failed: {}", _e),
        }
        if state.revoked {
            return;
        }
        let delay = backoff.next_delay(rng.next_u32());
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        Timer::after(Duration::from_millis(ms)).await;
    }
}
