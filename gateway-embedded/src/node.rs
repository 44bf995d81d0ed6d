//! The node's network runtime on embassy-net: connect to the gateway,
//! handshake TLS with embedded-tls (verifying and pinning the gateway,
//! presenting the node certificate once enrolled), and drive a
//! [`Tunnel`] over it; reconnect with backoff; persist credentials after
//! enrollment and renewal; stop for good when revoked. Beside the tunnel,
//! one task per bridge slot moves bytes between a legacy TCP socket and
//! the [`Bridge`], which makes every decision (module [`crate::bridge`]);
//! the slot tasks only carry out its [`SlotCommand`]s.
//!
//! One TCP connection is split into a reader and a writer half, and the
//! TLS connection over it likewise, so the task can wait for a frame from
//! the gateway and for its own deadlines (heartbeats, renewal) at the same
//! time without cancelling a half-read TLS record. Both halves share the
//! tunnel state through a `RefCell` that is never held across an `.await`;
//! the bridge is shared with the slot tasks the same way, and signals wake
//! exactly the side that has something new to do.

use core::cell::RefCell;

use embassy_futures::join::join_array;
use embassy_futures::select::{Either, Either3, select, select3};
use embassy_net::Stack;
use embassy_net::tcp::{TcpReader, TcpSocket, TcpWriter};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant as EmbassyInstant, Timer};
use embedded_io_async::{Read, Write};
use embedded_tls::{TlsConfig, TlsConnection, TlsContext, TlsError};
use heapless::Vec;
use meshgate_core::wire::session::Instant;
use meshgate_core::wire::{DeviceIp, FrameDecoder, GoodbyeReason, MAX_FRAME_LEN};
use rand_core::CryptoRngCore;

use crate::bridge::{Bridge, FROM_DEVICE_LEN, SlotCommand};
use crate::creds::{CredStore, SCRATCH_LEN, SlotStorage};
use crate::log::{log_info, log_warn};
use crate::setup::{self, Outcome, Setup, Status, TunnelState};
use crate::tls::{self, GatewayVerifier, NodeCrypto};
use crate::tunnel::NodeState;
use crate::tunnel::{Backoff, Purpose, Tunnel, TunnelEvent};

/// TCP receive buffer of the tunnel socket. TLS reads records from it
/// incrementally, so it need not hold a whole record; it bounds the TCP
/// window towards the gateway.
pub const TCP_RX_LEN: usize = 2048;
/// TCP send buffer of the tunnel socket.
pub const TCP_TX_LEN: usize = 2048;
/// TLS record read buffer. The gateway caps its records (4 KiB of
/// plaintext), so the 16 KiB embedded-tls would otherwise need is not.
pub const TLS_RX_LEN: usize = 5120;
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

/// TCP receive buffer of one legacy socket.
pub const SLOT_TCP_RX_LEN: usize = 1024;
/// TCP send buffer of one legacy socket.
pub const SLOT_TCP_TX_LEN: usize = 1024;
/// Bytes one slot task copies out of the bridge per socket write.
const SLOT_OUT_LEN: usize = 512;
/// How long a legacy device gets to accept a connection.
const DEVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing legacy socket may take to get its last bytes out.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Buffers of one bridge slot (about 3 KiB), allocated once by the board.
pub struct SlotBuffers {
    rx: [u8; SLOT_TCP_RX_LEN],
    tx: [u8; SLOT_TCP_TX_LEN],
    from_device: [u8; FROM_DEVICE_LEN],
    to_device: [u8; SLOT_OUT_LEN],
}

impl SlotBuffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        SlotBuffers {
            rx: [0; SLOT_TCP_RX_LEN],
            tx: [0; SLOT_TCP_TX_LEN],
            from_device: [0; FROM_DEVICE_LEN],
            to_device: [0; SLOT_OUT_LEN],
        }
    }
}

impl Default for SlotBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// What the tunnel task and the slot tasks share.
struct Ctx<const K: usize> {
    bridge: RefCell<Bridge<K>>,
    /// The tunnel's part of the status page.
    status: RefCell<Status>,
    /// Something for the tunnel writer: frames to send, credit to return.
    tunnel_wake: Signal<NoopRawMutex, ()>,
    /// Per slot: its command or buffers changed.
    slot_wake: [Signal<NoopRawMutex, ()>; K],
}

impl<const K: usize> Ctx<K> {
    fn new() -> Self {
        Ctx {
            bridge: RefCell::new(Bridge::new()),
            status: RefCell::new(Status::default()),
            tunnel_wake: Signal::new(),
            slot_wake: [const { Signal::new() }; K],
        }
    }

    /// Signals the slots the bridge marked.
    fn wake_slots(&self) {
        let mask = self.bridge.borrow_mut().take_wake();
        for (i, sig) in self.slot_wake.iter().enumerate() {
            if mask & (1 << i) != 0 {
                sig.signal(());
            }
        }
    }

    /// A slot task changed the bridge: wake the tunnel writer and any slot
    /// whose state moved with it.
    fn slot_changed(&self) {
        self.tunnel_wake.signal(());
        self.wake_slots();
    }
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
async fn run_connection<R: CryptoRngCore, const K: usize>(
    stack: Stack<'_>,
    ctx: &Ctx<K>,
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
    log_info!("connecting to gateway");
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
    ctx.status.borrow_mut().tunnel = TunnelState::Up;
    let (mut reader, mut writer) = tls.split();
    let shared = RefCell::new(Shared {
        tunnel: Tunnel::new(purpose, monotonic(), None),
        state,
        outbox: Vec::new(),
        dirty: false,
        end: None,
    });
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
                handle_event(sh, ctx, now, ev);
            }
            ctx.wake_slots();
            ctx.tunnel_wake.signal(());
        }
    };

    let write_side = async {
        loop {
            let mut len = 0;
            // The output buffer filled up with stream data: send it and
            // come straight back for the rest.
            let mut more = false;
            {
                let mut sh = shared.borrow_mut();
                let sh = &mut *sh;
                let now = monotonic();
                if let Some(ev) = sh.tunnel.handle_timeout(now) {
                    handle_event(sh, ctx, now, Some(ev));
                }
                let out = &mut frames_out[..];
                // Session frames first: our hello must precede everything,
                // including an enrollment request queued as soon as the
                // gateway's hello arrived.
                while let Some(n) = sh
                    .tunnel
                    .poll_transmit(now, &mut out[len..])
                    .map_err(|_| ConnectionError::Protocol)?
                {
                    len += n;
                    if out.len() - len < 64 {
                        more = true;
                        break;
                    }
                }
                // A renewal request carries a CSR (under 1 KiB).
                if out.len() - len >= 1024 {
                    if let Some(n) = sh
                        .tunnel
                        .poll_renewal(now, sh.state, &mut **rng.borrow_mut(), &mut out[len..])
                        .map_err(|_| ConnectionError::Protocol)?
                    {
                        len += n;
                        log_info!("renewal requested");
                    }
                } else {
                    more = true;
                }
                if !sh.outbox.is_empty() {
                    let n = sh.outbox.len();
                    match out.get_mut(len..len + n) {
                        Some(dst) => {
                            dst.copy_from_slice(&sh.outbox);
                            sh.outbox.clear();
                            len += n;
                        }
                        None => more = true,
                    }
                }
                {
                    let mut bridge = ctx.bridge.borrow_mut();
                    loop {
                        let room = &mut out[len..];
                        // Below this a data frame would be tiny; flush first.
                        if room.len() < 320 {
                            more = true;
                            break;
                        }
                        match bridge.poll_transmit(sh.tunnel.session(), &sh.state.config, room) {
                            Ok(Some(n)) => len += n,
                            Ok(None) => break,
                            Err(_) => {
                                more = true;
                                break;
                            }
                        }
                    }
                }
                ctx.wake_slots();
                while let Some(n) = sh
                    .tunnel
                    .poll_transmit(now, &mut out[len..])
                    .map_err(|_| ConnectionError::Protocol)?
                {
                    len += n;
                    if out.len() - len < 64 {
                        // Every queued session frame is under 64 bytes.
                        more = true;
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
            if more {
                continue;
            }
            // Wake for input, the session deadline, or at least every
            // second to check the renewal schedule.
            let next = deadline
                .map(|d| EmbassyInstant::from_millis(d.as_millis()))
                .unwrap_or(EmbassyInstant::MAX)
                .min(EmbassyInstant::now() + Duration::from_secs(1));
            let _ = select(ctx.tunnel_wake.wait(), Timer::at(next)).await;
        }
    };

    let result = match select(read_side, write_side).await {
        Either::First(r) | Either::Second(r) => r,
    };
    let (end, closed) = {
        let sh = shared.borrow();
        (sh.end, sh.tunnel.is_closed())
    };
    match result {
        // Once the session said or heard goodbye, a TLS or TCP error while
        // the connection is torn down changes nothing.
        Err(_) if closed => Ok(end.unwrap_or(ConnectionEnd::Closed)),
        r => r.map(|()| end.unwrap_or(ConnectionEnd::Closed)),
    }
}

fn handle_event<const K: usize>(
    sh: &mut Shared<'_>,
    ctx: &Ctx<K>,
    now: Instant,
    ev: Option<TunnelEvent<'_>>,
) {
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
                        log_warn!("cannot enroll: {:?}", _e);
                        sh.tunnel.close(GoodbyeReason::Shutdown);
                    }
                }
            }
        }
        TunnelEvent::ConnectDevice {
            id,
            service,
            device,
        } => {
            ctx.bridge
                .borrow_mut()
                .connect_device(sh.tunnel.session(), id, &service, device);
        }
        TunnelEvent::Stream(ev) => {
            ctx.bridge
                .borrow_mut()
                .handle_stream_event(sh.tunnel.session(), &ev);
        }
        TunnelEvent::CertificateInstalled => {
            log_info!("certificate installed");
            ctx.status.borrow_mut().enrolled = sh.state.creds.is_enrolled();
            sh.dirty = true;
        }
        TunnelEvent::CertificateRejected(_r) => log_warn!("certificate rejected: {:?}", _r),
        TunnelEvent::ConfigApplied { version: _v } => {
            log_info!("config {} applied", _v);
            ctx.status.borrow_mut().config_version = sh.state.config.version();
            ctx.bridge.borrow_mut().sync_config(&sh.state.config, true);
        }
        TunnelEvent::ConfigRejected(_e) => log_warn!("config rejected: {:?}", _e),
        TunnelEvent::Revoked(_) => {
            log_warn!("node revoked by the gateway");
            ctx.status.borrow_mut().tunnel = TunnelState::Revoked;
            ctx.bridge.borrow_mut().tunnel_down();
            sh.end = Some(ConnectionEnd::Revoked);
            sh.dirty = true;
        }
        TunnelEvent::Closed(_) => {
            log_info!("tunnel closed");
            ctx.bridge.borrow_mut().tunnel_down();
        }
    }
}

/// One bridge slot: carries out the bridge's commands on one TCP socket,
/// forever.
async fn slot_task<const K: usize>(
    i: usize,
    stack: Stack<'_>,
    ctx: &Ctx<K>,
    bufs: &mut SlotBuffers,
) {
    let SlotBuffers {
        rx,
        tx,
        from_device,
        to_device,
    } = bufs;
    let mut socket = TcpSocket::new(stack, &mut rx[..], &mut tx[..]);
    let Some(wake) = ctx.slot_wake.get(i) else {
        return;
    };
    loop {
        let cmd = ctx.bridge.borrow().command(i);
        match cmd {
            SlotCommand::Idle => wake.wait().await,
            SlotCommand::Listen(port) => {
                let accepted = {
                    let mut accept = core::pin::pin!(socket.accept(port));
                    loop {
                        match select(accept.as_mut(), wake.wait()).await {
                            Either::First(r) => break Some(r.is_ok()),
                            Either::Second(()) => {
                                if ctx.bridge.borrow().command(i) != SlotCommand::Listen(port) {
                                    break None;
                                }
                            }
                        }
                    }
                };
                match accepted {
                    Some(true) => {
                        log_info!("legacy client on port {}", port);
                        if !ctx.bridge.borrow_mut().client_accepted(i) {
                            socket.abort();
                        }
                    }
                    Some(false) => {
                        // The port cannot be listened on (in use by
                        // another socket of the stack, or invalid).
                        socket.abort();
                        ctx.bridge.borrow_mut().device_failed(i);
                        Timer::after(Duration::from_secs(1)).await;
                    }
                    // Withdrawn: stop listening; the next command decides.
                    None => socket.abort(),
                }
                ctx.slot_changed();
            }
            SlotCommand::Connect(device) => {
                let DeviceIp::V4(ip) = device.ip else {
                    // The stack is IPv4-only; an IPv6 device is unreachable.
                    ctx.bridge.borrow_mut().device_failed(i);
                    ctx.slot_changed();
                    continue;
                };
                let remote = (embassy_net::Ipv4Address::from(ip), device.port);
                let connected = {
                    let mut connect = core::pin::pin!(embassy_time::with_timeout(
                        DEVICE_CONNECT_TIMEOUT,
                        socket.connect(remote)
                    ));
                    loop {
                        match select(connect.as_mut(), wake.wait()).await {
                            Either::First(r) => break matches!(r, Ok(Ok(()))),
                            Either::Second(()) => {
                                if ctx.bridge.borrow().command(i) != SlotCommand::Connect(device) {
                                    break false;
                                }
                            }
                        }
                    }
                };
                if connected {
                    ctx.bridge.borrow_mut().device_connected(i);
                } else {
                    socket.abort();
                    ctx.bridge.borrow_mut().device_failed(i);
                }
                ctx.slot_changed();
            }
            SlotCommand::Pump => {
                let (space, out_len, shut) = {
                    let b = ctx.bridge.borrow();
                    let pending = b.to_device(i);
                    let n = pending.len().min(to_device.len());
                    if let (Some(dst), Some(src)) = (to_device.get_mut(..n), pending.get(..n)) {
                        dst.copy_from_slice(src);
                    }
                    (
                        b.read_space(i).min(from_device.len()),
                        n,
                        b.should_shut_write(i),
                    )
                };
                if shut {
                    // FIN to the legacy peer; it may still send to us.
                    socket.close();
                    ctx.bridge.borrow_mut().write_shut(i);
                    ctx.slot_changed();
                    continue;
                }
                let (mut rd, mut wr) = socket.split();
                let read = async {
                    match from_device.get_mut(..space) {
                        Some(buf) if !buf.is_empty() => rd.read(buf).await,
                        _ => core::future::pending().await,
                    }
                };
                let write = async {
                    match to_device.get(..out_len) {
                        Some(buf) if !buf.is_empty() => wr.write(buf).await,
                        _ => core::future::pending().await,
                    }
                };
                let outcome = select3(read, write, wake.wait()).await;
                {
                    let mut b = ctx.bridge.borrow_mut();
                    match outcome {
                        Either3::First(Ok(0)) => b.device_eof(i),
                        Either3::First(Ok(n)) => {
                            if let Some(data) = from_device.get(..n) {
                                b.from_device(i, data);
                            }
                        }
                        Either3::Second(Ok(n)) => b.drained(i, n),
                        Either3::First(Err(_)) | Either3::Second(Err(_)) => b.device_failed(i),
                        Either3::Third(()) => {}
                    }
                }
                ctx.slot_changed();
            }
            SlotCommand::Close { abort } => {
                if abort {
                    socket.abort();
                } else {
                    socket.close();
                }
                // Let the last bytes (or the RST) leave before the socket is
                // reused; a peer that never acknowledges is cut off.
                let _ = embassy_time::with_timeout(CLOSE_LINGER, socket.flush()).await;
                socket.abort();
                ctx.bridge.borrow_mut().released(i);
                ctx.slot_changed();
            }
        }
    }
}

/// Buffers of the status page while the node runs (about 4.5 KiB).
pub struct WebBuffers {
    rx: [u8; 512],
    tx: [u8; 1024],
    request: [u8; 1024],
    response: [u8; 2048],
}

impl WebBuffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        WebBuffers {
            rx: [0; 512],
            tx: [0; 1024],
            request: [0; 1024],
            response: [0; 2048],
        }
    }
}

impl Default for WebBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// The status page of a running node: local port and buffers.
pub struct WebPage<'a> {
    /// TCP port (80 on the boards).
    pub port: u16,
    /// Its buffers.
    pub bufs: &'a mut WebBuffers,
}

/// How long a browser gets to send its request.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one HTTP exchange on `socket` (already accepted): reads the
/// request into `request`, answers from `status`; returns a valid setup
/// form if one was posted.
async fn http_exchange(
    socket: &mut TcpSocket<'_>,
    request: &mut [u8],
    response: &mut [u8],
    status: impl Fn() -> Status,
) -> Option<Setup> {
    let mut len = 0;
    let deadline = EmbassyInstant::now() + HTTP_READ_TIMEOUT;
    let (n, setup) = loop {
        let spare = request.get_mut(len..)?;
        let read = match embassy_time::with_deadline(deadline, socket.read(spare)).await {
            Ok(Ok(n)) if n > 0 => n,
            // Closed, reset or too slow: drop the connection.
            _ => return None,
        };
        len += read;
        match setup::handle(request.get(..len).unwrap_or(&[]), &status(), response) {
            Outcome::Incomplete if len < request.len() => continue,
            Outcome::Incomplete => {
                // The buffer is full: the page cannot take this request.
                break (0, None);
            }
            Outcome::Responded(n) => break (n, None),
            Outcome::Provision(n, s) => break (n, Some(s)),
        }
    };
    if let Some(body) = response.get(..n) {
        let _ = socket.write_all(body).await;
    }
    socket.close();
    let _ = embassy_time::with_timeout(CLOSE_LINGER, socket.flush()).await;
    socket.abort();
    setup
}

/// First-time setup: serves the setup page on `port` until a valid form is
/// posted, and returns it. Uses the tunnel's buffers, which are idle until
/// the node is provisioned, so the page costs no RAM of its own.
pub async fn setup_page(stack: Stack<'_>, bufs: &mut NodeBuffers, port: u16) -> Setup {
    stack.wait_config_up().await;
    log_info!("setup page on port {}", port);
    let status = || Status {
        uptime_s: EmbassyInstant::now().as_secs(),
        ..Status::default()
    };
    loop {
        let mut socket = TcpSocket::new(stack, &mut bufs.tcp_rx, &mut bufs.tcp_tx);
        socket.set_timeout(Some(HTTP_READ_TIMEOUT));
        if socket.accept(port).await.is_err() {
            Timer::after(Duration::from_secs(1)).await;
            continue;
        }
        let request = &mut bufs.tls_rx[..setup::REQUEST_LEN];
        if let Some(s) = http_exchange(&mut socket, request, &mut bufs.tls_tx, status).await {
            log_info!("setup form accepted");
            return s;
        }
    }
}

async fn status_page<const K: usize>(stack: Stack<'_>, ctx: &Ctx<K>, web: Option<WebPage<'_>>) {
    let Some(WebPage { port, bufs }) = web else {
        return core::future::pending().await;
    };
    let WebBuffers {
        rx,
        tx,
        request,
        response,
    } = bufs;
    let mut socket = TcpSocket::new(stack, &mut rx[..], &mut tx[..]);
    socket.set_timeout(Some(HTTP_READ_TIMEOUT));
    let status = || {
        let mut s = ctx.status.borrow().clone();
        let bridge = ctx.bridge.borrow();
        s.active_streams = bridge.active_streams();
        for p in bridge.listening_ports() {
            let _ = s.listening.push(p);
        }
        s.uptime_s = EmbassyInstant::now().as_secs();
        s
    };
    loop {
        if socket.accept(port).await.is_err() {
            socket.abort();
            Timer::after(Duration::from_secs(1)).await;
            continue;
        }
        // Setup is refused here (the node is provisioned), so a form
        // cannot come back.
        let _ = http_exchange(&mut socket, &mut request[..], &mut response[..], status).await;
    }
}

/// The node's main loop: keep a tunnel to the gateway, reconnecting with
/// backoff, saving credentials whenever they change, and run the `K`
/// bridge slots (and the status page, if given) beside it. Returns only
/// when the node is revoked. `state` is borrowed (boards keep it in a
/// `StaticCell`) so the credentials are not copied into this future.
///
/// The stack needs `K + 1` sockets (the slots, the tunnel), one more for
/// the status page, and one more for DHCP if used.
pub async fn run<R: CryptoRngCore, S: SlotStorage, const K: usize>(
    stack: Stack<'_>,
    state: &mut NodeState,
    store: &mut CredStore<S>,
    rng: &mut R,
    bufs: &mut NodeBuffers,
    slots: &mut [SlotBuffers; K],
    web: Option<WebPage<'_>>,
) {
    let ctx = Ctx::<K>::new();
    {
        let mut st = ctx.status.borrow_mut();
        st.provisioned = true;
        st.enrolled = state.creds.is_enrolled();
        st.gateway = Some(state.creds.gateway());
    }
    let tunnel = async {
        let mut backoff = Backoff::new();
        loop {
            stack.wait_config_up().await;
            ctx.status.borrow_mut().tunnel = TunnelState::Connecting;
            let res = run_connection(stack, &ctx, state, rng, bufs, |st, scratch| {
                if store.save(&st.creds, scratch).is_err() {
                    log_warn!("saving credentials failed");
                }
            })
            .await;
            // Whatever ended the connection, its streams are gone.
            ctx.bridge.borrow_mut().tunnel_down();
            ctx.wake_slots();
            match res {
                Ok(ConnectionEnd::Revoked) => break,
                Ok(ConnectionEnd::Closed) => backoff.reset(),
                Err(_e) => log_warn!("connection failed: {:?}", _e),
            }
            if state.revoked {
                break;
            }
            ctx.status.borrow_mut().tunnel = TunnelState::Connecting;
            let delay = backoff.next_delay(rng.next_u32());
            let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            log_info!("reconnecting in {} ms", ms);
            Timer::after(Duration::from_millis(ms)).await;
        }
        ctx.status.borrow_mut().tunnel = TunnelState::Revoked;
        // Give the slot tasks time to reset their legacy sockets.
        Timer::after(CLOSE_LINGER).await;
    };
    let mut next = 0;
    let slot_tasks = join_array(slots.each_mut().map(|b| {
        let i = next;
        next += 1;
        slot_task(i, stack, &ctx, b)
    }));
    let _ = select3(tunnel, slot_tasks, status_page(stack, &ctx, web)).await;
}
