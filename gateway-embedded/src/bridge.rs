//! The legacy side of the node, sans-IO: which local socket belongs to
//! which tunnel stream, the bytes in flight between them, and every
//! decision about opening, accepting, half-closing and aborting streams.
//!
//! The node owns a fixed pool of `K` *slots*; each slot is one TCP socket
//! in the runtime ([`crate::node`]) plus two byte rings here:
//!
//! - **to the device**: what the gateway sent on the stream and the socket
//!   has not taken yet. Its capacity is the node's per-stream receive
//!   window ([`STREAM_WINDOW`]), and received bytes are reported
//!   [`consumed`](meshgate_core::wire::Session::consumed) (which returns
//!   credit to the gateway) only once the socket took them, so data the
//!   session admits always fits: the session's flow control is the
//!   backpressure from the legacy socket to the mesh.
//! - **from the device**: what the legacy peer sent and the tunnel has not
//!   carried yet ([`FROM_DEVICE_LEN`]). The runtime reads from the socket
//!   only as much as fits, so a slow tunnel stalls the legacy peer through
//!   TCP's own window instead of buffering here.
//!
//! Both directions of bridging use the same slots:
//!
//! 1. *Legacy client → mesh*: a slot listens on a port of the pushed
//!    [`NodeConfig`]; when a client connects the bridge opens a stream
//!    `ToMesh(target of that port)`; the gateway accepts (or refuses, and
//!    the client is reset).
//! 2. *Mesh → legacy device*: the gateway opens a stream to an exposed
//!    service; [`Tunnel`](crate::tunnel::Tunnel) resolves the device, the
//!    bridge takes a free slot and tells the runtime to connect; on
//!    success the stream is accepted, otherwise reset with `Unreachable`.
//!
//! The runtime drives each slot from [`Bridge::command`] and reports what
//! its socket did; the tunnel side feeds stream events in and calls
//! [`Bridge::poll_transmit`] for stream frames. Slots whose state changed
//! are collected in a wake mask ([`Bridge::take_wake`]) so the runtime can
//! signal exactly those socket tasks.
//!
//! Configuration changes and revocation go through
//! [`Bridge::sync_config`] and [`Bridge::tunnel_down`]: a stream whose
//! rule disappeared or changed is reset with `Cancelled`, listeners for
//! removed ports stop, and when the tunnel is gone every legacy socket is
//! aborted and nothing listens (a client is refused rather than left
//! hanging on a port nobody forwards).

use heapless::Vec;
use meshgate_core::wire::session::{Event, Session, StreamError};
use meshgate_core::wire::{
    CloseReason, DeviceAddr, EncodeError, MAX_DATA_CHUNK, MAX_LISTENERS, MeshTarget, StreamTarget,
};

use crate::config::{NodeConfig, OwnedTarget};

/// The node's per-stream receive window (bytes the gateway may have in
/// flight towards one legacy socket); also the size of each slot's
/// to-device ring, which is what makes every admitted byte fit.
pub const STREAM_WINDOW: u32 = 1024;

/// Capacity of each slot's from-device ring.
pub const FROM_DEVICE_LEN: usize = 512;

const TO_DEVICE_LEN: usize = STREAM_WINDOW as usize;

/// A fixed-capacity byte FIFO.
struct Ring<const N: usize> {
    buf: [u8; N],
    start: usize,
    len: usize,
}

impl<const N: usize> Ring<N> {
    const fn new() -> Self {
        Ring {
            buf: [0; N],
            start: 0,
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn space(&self) -> usize {
        N - self.len
    }

    fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }

    /// Appends as much of `data` as fits; returns how much.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.space());
        let tail = (self.start + self.len) % N;
        // Up to the end of the buffer, then wrapped to its start.
        let first = n.min(N - tail);
        if let (Some(dst), Some(src)) = (self.buf.get_mut(tail..tail + first), data.get(..first)) {
            dst.copy_from_slice(src);
        }
        if let (Some(dst), Some(src)) = (self.buf.get_mut(..n - first), data.get(first..n)) {
            dst.copy_from_slice(src);
        }
        self.len += n;
        n
    }

    /// The oldest bytes that are contiguous in memory.
    fn front(&self) -> &[u8] {
        let end = (self.start + self.len).min(N);
        self.buf.get(self.start..end).unwrap_or(&[])
    }

    /// Drops the oldest `n` bytes (at most what is stored).
    fn pop(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.start = if self.len == 0 {
            0
        } else {
            (self.start + n) % N
        };
    }
}

/// What the runtime should do with a slot's socket now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SlotCommand {
    /// Nothing: wait until the slot is woken.
    Idle,
    /// Accept one legacy client on this local port; report
    /// [`Bridge::client_accepted`]. Re-check the command when woken: the
    /// listener may have been withdrawn.
    Listen(u16),
    /// Connect to this legacy device; report [`Bridge::device_connected`]
    /// or [`Bridge::device_failed`].
    Connect(DeviceAddr),
    /// Move bytes: read at most [`Bridge::read_space`] bytes from the
    /// socket, write [`Bridge::to_device`], shut the socket's write side
    /// when [`Bridge::should_shut_write`] says so.
    Pump,
    /// Close the socket (`abort`: reset it; otherwise a graceful close of
    /// a connection both sides finished), then report
    /// [`Bridge::released`].
    Close {
        /// Reset instead of closing gracefully.
        abort: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    Listening {
        port: u16,
    },
    /// A legacy client connected on `port`; the `StreamOpen` is not sent
    /// yet.
    NeedOpen {
        port: u16,
    },
    /// `StreamOpen` sent; waiting for the gateway to accept.
    Opening,
    /// The gateway opened a stream; connecting to the device.
    Connecting {
        device: DeviceAddr,
    },
    /// The device is connected; the session has not accepted yet.
    NeedAccept,
    /// Bytes flow both ways.
    Open,
    /// The runtime must close the socket and release the slot.
    Closing {
        abort: bool,
    },
}

/// The configuration rule a slot's stream exists under; re-checked on
/// every configuration change.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    None,
    Listener {
        port: u16,
        target: OwnedTarget,
    },
    Exposed {
        service: OwnedTarget,
        device: DeviceAddr,
    },
}

struct Slot {
    phase: Phase,
    origin: Origin,
    /// The tunnel stream, 0 while there is none (stream ids are non-zero).
    id: u32,
    to_device: Ring<TO_DEVICE_LEN>,
    from_device: Ring<FROM_DEVICE_LEN>,
    /// The legacy peer closed its sending side.
    device_eof: bool,
    /// Our `Finished` went to the session.
    fin_sent: bool,
    /// The gateway finished its side of the stream.
    tunnel_eof: bool,
    /// The socket's write side was shut (FIN to the legacy peer).
    write_shut: bool,
    /// Bytes the socket took that the session has not been told about.
    drained: u32,
    /// A stream reset still to hand to the session.
    reset: Option<CloseReason>,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            phase: Phase::Free,
            origin: Origin::None,
            id: 0,
            to_device: Ring::new(),
            from_device: Ring::new(),
            device_eof: false,
            fin_sent: false,
            tunnel_eof: false,
            write_shut: false,
            drained: 0,
            reset: None,
        }
    }

    /// Starts afresh for a new connection.
    fn reset_state(&mut self, phase: Phase, origin: Origin, id: u32) {
        self.phase = phase;
        self.origin = origin;
        self.id = id;
        self.to_device.clear();
        self.from_device.clear();
        self.device_eof = false;
        self.fin_sent = false;
        self.tunnel_eof = false;
        self.write_shut = false;
        self.drained = 0;
        self.reset = None;
    }

    /// True while the slot is tied to a live tunnel stream.
    fn has_stream(&self) -> bool {
        self.id != 0
            && matches!(
                self.phase,
                Phase::Opening | Phase::Connecting { .. } | Phase::NeedAccept | Phase::Open
            )
    }

    /// Aborts the legacy socket, and the stream with `reason` if there is
    /// one.
    fn abort(&mut self, reason: CloseReason) {
        if self.has_stream() {
            self.reset = Some(reason);
        }
        self.phase = Phase::Closing { abort: true };
    }

    /// A stream both sides finished, with everything delivered, closes
    /// gracefully.
    fn check_done(&mut self) {
        if self.phase == Phase::Open
            && self.fin_sent
            && self.tunnel_eof
            && self.write_shut
            && self.to_device.is_empty()
        {
            self.phase = Phase::Closing { abort: false };
        }
    }
}

/// A frame could not be encoded (the output buffer is too small for even
/// a control frame); the caller should flush and retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BridgeEncodeError(pub EncodeError);

/// The slot pool. `K` is at most 32 (wake masks are `u32`).
pub struct Bridge<const K: usize> {
    slots: [Slot; K],
    /// Ports to keep a listening slot on (empty while the tunnel is down).
    listen: Vec<u16, MAX_LISTENERS>,
    wake: u32,
}

impl<const K: usize> Default for Bridge<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const K: usize> Bridge<K> {
    const CHECK: () = assert!(K > 0 && K <= 32, "a bridge has 1 to 32 slots");

    /// An idle pool: nothing listens until [`sync_config`](Self::sync_config).
    pub const fn new() -> Self {
        // Evaluates the compile-time slot-count check.
        let () = Self::CHECK;
        Bridge {
            slots: [const { Slot::new() }; K],
            listen: Vec::new(),
            wake: 0,
        }
    }

    fn mark(&mut self, i: usize) {
        self.wake |= 1u32 << (i % 32);
    }

    /// The slots whose command or buffers changed since the last call
    /// (bit `i` = slot `i`).
    pub fn take_wake(&mut self) -> u32 {
        core::mem::take(&mut self.wake)
    }

    fn by_id(&self, id: u32) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.slots.iter().position(|s| s.id == id && s.has_stream())
    }

    // ----- tunnel side -----

    /// Applies the configuration (after a push or when the tunnel opens;
    /// `tunnel_open == false` stops everything): resets streams whose rule
    /// disappeared or changed, withdraws listeners of removed ports and
    /// starts listeners for new ones.
    pub fn sync_config(&mut self, cfg: &NodeConfig, tunnel_open: bool) {
        for i in 0..K {
            let keep = match &self.slots[i].origin {
                Origin::None => true,
                Origin::Listener { port, target } => cfg.target_for_port(*port) == Some(target),
                Origin::Exposed { service, device } => {
                    cfg.device_for(&service.as_wire()) == Some(*device)
                }
            };
            let slot = &mut self.slots[i];
            let closing = matches!(slot.phase, Phase::Free | Phase::Closing { .. });
            if !keep && !closing {
                slot.abort(CloseReason::Cancelled);
                self.mark(i);
            }
        }
        self.listen.clear();
        if tunnel_open {
            for l in cfg.listeners() {
                // Capacity equals the config's own limit; cannot overflow.
                let _ = self.listen.push(l.listen_port);
            }
        }
        for i in 0..K {
            if let Phase::Listening { port } = self.slots[i].phase
                && !self.listen.contains(&port)
            {
                self.slots[i].phase = Phase::Closing { abort: true };
                self.mark(i);
            }
        }
        self.refill_listeners();
    }

    /// The tunnel is gone (closed, failed or revoked): every legacy
    /// connection is aborted (its stream died with the tunnel) and nothing
    /// listens until the next tunnel applies a configuration.
    pub fn tunnel_down(&mut self) {
        self.listen.clear();
        for i in 0..K {
            let slot = &mut self.slots[i];
            if !matches!(slot.phase, Phase::Free | Phase::Closing { .. }) {
                // The session is gone: there is no stream to reset.
                slot.id = 0;
                slot.reset = None;
                slot.phase = Phase::Closing { abort: true };
                self.mark(i);
            }
        }
    }

    /// Every configured port has one slot listening, as far as free slots
    /// go.
    fn refill_listeners(&mut self) {
        for k in 0..self.listen.len() {
            let Some(&port) = self.listen.get(k) else {
                continue;
            };
            let listening = self
                .slots
                .iter()
                .any(|s| s.phase == Phase::Listening { port });
            if listening {
                continue;
            }
            if let Some(i) = self.slots.iter().position(|s| s.phase == Phase::Free) {
                self.slots[i].reset_state(Phase::Listening { port }, Origin::None, 0);
                self.mark(i);
            }
        }
    }

    /// The gateway opened stream `id` to `service`, exposed as `device`:
    /// takes a free slot and has the runtime connect, or refuses the
    /// stream when every slot is busy.
    pub fn connect_device<const N: usize>(
        &mut self,
        session: &mut Session<N>,
        id: u32,
        service: &MeshTarget<'_>,
        device: DeviceAddr,
    ) {
        let free = self.slots.iter().position(|s| s.phase == Phase::Free);
        let origin =
            OwnedTarget::try_from_wire(service).map(|service| Origin::Exposed { service, device });
        match (free, origin) {
            (Some(i), Some(origin)) => {
                self.slots[i].reset_state(Phase::Connecting { device }, origin, id);
                self.mark(i);
            }
            _ => {
                // The stream was just opened, so reset cannot fail unless
                // the session is closing, which ends the stream anyway.
                let _ = session.reset(id, CloseReason::Refused);
            }
        }
    }

    /// Feeds a stream event from the session.
    pub fn handle_stream_event<const N: usize>(
        &mut self,
        session: &mut Session<N>,
        ev: &Event<'_>,
    ) {
        match *ev {
            Event::StreamAccepted { id, .. } => {
                if let Some(i) = self.by_id(id) {
                    if self.slots[i].phase == Phase::Opening {
                        self.slots[i].phase = Phase::Open;
                    }
                    self.mark(i);
                }
            }
            Event::Credit { id, .. } => {
                if let Some(i) = self.by_id(id) {
                    self.mark(i);
                }
            }
            Event::Data { id, data } => match self.by_id(id) {
                Some(i) => {
                    let slot = &mut self.slots[i];
                    if slot.to_device.push(data) < data.len() {
                        // The session admits at most STREAM_WINDOW
                        // unconsumed bytes and the ring holds exactly that,
                        // so this means the window and ring disagree: do
                        // not drop bytes silently.
                        slot.abort(CloseReason::Cancelled);
                    }
                    self.mark(i);
                }
                None => {
                    let _ = session.reset(id, CloseReason::Cancelled);
                }
            },
            Event::StreamFinished { id } => {
                if let Some(i) = self.by_id(id) {
                    self.slots[i].tunnel_eof = true;
                    self.slots[i].check_done();
                    self.mark(i);
                }
            }
            Event::StreamReset { id, .. } => {
                if let Some(i) = self.by_id(id) {
                    let slot = &mut self.slots[i];
                    // The session already forgot the stream.
                    slot.id = 0;
                    slot.reset = None;
                    slot.phase = Phase::Closing { abort: true };
                    self.mark(i);
                }
            }
            _ => {}
        }
    }

    /// Hands pending stream commands to the session and writes at most one
    /// frame (a `StreamOpen` or `StreamData`) into `out`; returns its
    /// length. Call until `Ok(None)`, then drain the session's own
    /// `poll_transmit` (window updates, finishes, resets).
    pub fn poll_transmit<const N: usize>(
        &mut self,
        session: &mut Session<N>,
        cfg: &NodeConfig,
        out: &mut [u8],
    ) -> Result<Option<usize>, BridgeEncodeError> {
        for i in 0..K {
            if let Some(n) = self.drive_slot(i, session, cfg, out)? {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    fn drive_slot<const N: usize>(
        &mut self,
        i: usize,
        session: &mut Session<N>,
        cfg: &NodeConfig,
        out: &mut [u8],
    ) -> Result<Option<usize>, BridgeEncodeError> {
        let slot = &mut self.slots[i];
        if let Some(reason) = slot.reset.take() {
            // Unknown means the stream already ended; nothing to reset.
            let _ = session.reset(slot.id, reason);
            slot.id = 0;
            // The socket may be closed now (see `command`).
            self.wake |= 1u32 << (i % 32);
        }
        match slot.phase {
            Phase::NeedOpen { port } => {
                // The target is resolved now, against the configuration in
                // force when the stream opens.
                let target = match cfg.target_for_port(port) {
                    Some(t) if self.listen.contains(&port) => t,
                    _ => {
                        slot.phase = Phase::Closing { abort: true };
                        self.mark(i);
                        return Ok(None);
                    }
                };
                match session.open_stream(StreamTarget::ToMesh(target.as_wire()), out) {
                    Ok((id, n)) => {
                        slot.id = id;
                        slot.origin = Origin::Listener {
                            port,
                            target: target.clone(),
                        };
                        slot.phase = Phase::Opening;
                        return Ok(Some(n));
                    }
                    Err(StreamError::Encode(e)) => return Err(BridgeEncodeError(e)),
                    Err(_) => {
                        // No stream can be opened now (stream limit, tunnel
                        // closing): refuse the client instead of letting it
                        // wait for a stream that may never come.
                        slot.phase = Phase::Closing { abort: true };
                        self.mark(i);
                    }
                }
            }
            Phase::NeedAccept => {
                if session.accept(slot.id).is_ok() {
                    slot.phase = Phase::Open;
                } else {
                    slot.id = 0;
                    slot.phase = Phase::Closing { abort: true };
                }
                self.mark(i);
            }
            Phase::Open => {
                if slot.drained > 0 {
                    // Unknown stream: it already ended on both sides.
                    let _ = session.consumed(slot.id, slot.drained);
                    slot.drained = 0;
                }
                if !slot.from_device.is_empty() && session.send_credit(slot.id).unwrap_or(0) > 0 {
                    // Leave room for an accepting window update and the
                    // frame headers in front of the payload.
                    let room = out.len().saturating_sub(32).min(MAX_DATA_CHUNK);
                    if room == 0 {
                        return Err(BridgeEncodeError(EncodeError::BufferTooSmall {
                            needed: 33,
                        }));
                    }
                    let front = slot.from_device.front();
                    let chunk = front.get(..front.len().min(room)).unwrap_or(&[]);
                    match session.send_data(slot.id, chunk, out) {
                        Ok(sent) => {
                            slot.from_device.pop(sent.consumed);
                            self.mark(i);
                            return Ok(Some(sent.written));
                        }
                        Err(StreamError::Encode(e)) => return Err(BridgeEncodeError(e)),
                        Err(StreamError::Blocked) => {}
                        Err(_) => {
                            slot.abort(CloseReason::Cancelled);
                            self.mark(i);
                            return Ok(None);
                        }
                    }
                }
                if slot.device_eof && slot.from_device.is_empty() && !slot.fin_sent {
                    match session.finish(slot.id) {
                        Ok(()) => slot.fin_sent = true,
                        Err(_) => slot.abort(CloseReason::Cancelled),
                    }
                    slot.check_done();
                    self.mark(i);
                }
            }
            Phase::Free
            | Phase::Listening { .. }
            | Phase::Opening
            | Phase::Connecting { .. }
            | Phase::Closing { .. } => {}
        }
        Ok(None)
    }

    // ----- socket side -----

    /// What the runtime should do with slot `i`'s socket.
    pub fn command(&self, i: usize) -> SlotCommand {
        let Some(slot) = self.slots.get(i) else {
            return SlotCommand::Idle;
        };
        match slot.phase {
            Phase::Free => SlotCommand::Idle,
            Phase::Listening { port } => SlotCommand::Listen(port),
            Phase::Connecting { device } => SlotCommand::Connect(device),
            Phase::NeedOpen { .. } | Phase::Opening | Phase::NeedAccept | Phase::Open => {
                SlotCommand::Pump
            }
            // Releasing the slot before the session learnt of the reset
            // would lose the reset; the socket waits for one transmit pass.
            Phase::Closing { .. } if slot.reset.is_some() => SlotCommand::Idle,
            Phase::Closing { abort } => SlotCommand::Close { abort },
        }
    }

    /// A legacy client connected to the listening slot `i`. Returns false
    /// (and the slot closes) when the port is no longer configured.
    pub fn client_accepted(&mut self, i: usize) -> bool {
        let Some(Phase::Listening { port }) = self.slots.get(i).map(|s| s.phase) else {
            return false;
        };
        self.mark(i);
        if !self.listen.contains(&port) {
            self.slots[i].phase = Phase::Closing { abort: true };
            return false;
        }
        self.slots[i].reset_state(Phase::NeedOpen { port }, Origin::None, 0);
        // Keep accepting further clients on the port with another slot.
        self.refill_listeners();
        true
    }

    /// The device of slot `i` is connected.
    pub fn device_connected(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i)
            && matches!(slot.phase, Phase::Connecting { .. })
        {
            slot.phase = Phase::NeedAccept;
            self.mark(i);
        }
    }

    /// The socket of slot `i` failed (connect refused or timed out,
    /// connection reset): the stream is reset, `Unreachable` if the device
    /// was never reached, `Cancelled` otherwise.
    pub fn device_failed(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            match slot.phase {
                Phase::Free | Phase::Closing { .. } => return,
                Phase::Connecting { .. } => slot.abort(CloseReason::Unreachable),
                Phase::Listening { .. } => slot.phase = Phase::Closing { abort: true },
                _ => slot.abort(CloseReason::Cancelled),
            }
            self.mark(i);
        }
    }

    /// How many bytes the runtime may read from slot `i`'s socket now.
    pub fn read_space(&self, i: usize) -> usize {
        match self.slots.get(i) {
            Some(s)
                if !s.device_eof
                    && matches!(
                        s.phase,
                        Phase::NeedOpen { .. } | Phase::Opening | Phase::NeedAccept | Phase::Open
                    ) =>
            {
                s.from_device.space()
            }
            _ => 0,
        }
    }

    /// Bytes read from slot `i`'s socket (at most [`read_space`](Self::read_space)).
    pub fn from_device(&mut self, i: usize, data: &[u8]) {
        if let Some(slot) = self.slots.get_mut(i)
            && slot.from_device.push(data) < data.len()
        {
            // The runtime read more than it was allowed to: a bug, but
            // dropping bytes of a stream would corrupt it silently.
            slot.abort(CloseReason::Cancelled);
            self.mark(i);
        }
    }

    /// The legacy peer of slot `i` closed its sending side (FIN).
    pub fn device_eof(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.device_eof = true;
        }
    }

    /// The bytes to write to slot `i`'s socket next (may be a prefix of
    /// what is buffered).
    pub fn to_device(&self, i: usize) -> &[u8] {
        match self.slots.get(i) {
            Some(s) if s.phase == Phase::Open => s.to_device.front(),
            _ => &[],
        }
    }

    /// The socket of slot `i` took `n` bytes of [`to_device`](Self::to_device).
    pub fn drained(&mut self, i: usize, n: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            let n = n.min(slot.to_device.len);
            slot.to_device.pop(n);
            slot.drained = slot
                .drained
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            slot.check_done();
        }
    }

    /// True when the gateway finished the stream and every byte reached
    /// the socket: shut the socket's write side (FIN to the legacy peer),
    /// then report [`write_shut`](Self::write_shut).
    pub fn should_shut_write(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| {
            s.phase == Phase::Open && s.tunnel_eof && !s.write_shut && s.to_device.is_empty()
        })
    }

    /// The socket's write side of slot `i` is shut.
    pub fn write_shut(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.write_shut = true;
            slot.check_done();
        }
    }

    /// Slot `i`'s socket is closed; the slot is free again (and may start
    /// listening right away).
    pub fn released(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i)
            && matches!(slot.phase, Phase::Closing { .. })
        {
            slot.reset_state(Phase::Free, Origin::None, 0);
            self.refill_listeners();
        }
    }

    // ----- status -----

    /// Slots currently carrying a stream (for the status page and tests).
    pub fn active_streams(&self) -> usize {
        self.slots.iter().filter(|s| s.has_stream()).count()
    }

    /// Ports with a listening slot right now.
    pub fn listening_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.slots.iter().filter_map(|s| match s.phase {
            Phase::Listening { port } => Some(port),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::{Credentials, GatewayAddr};
    use crate::enroll::NodeKey;
    use crate::tunnel::{NodeState, Purpose, Tunnel, TunnelEvent};
    use meshgate_core::rotation::RenewalPolicy;
    use meshgate_core::time::UnixTime;
    use meshgate_core::wire::session::{Instant, SessionConfig};
    use meshgate_core::wire::{
        BoundedList, ConfigPush, DeviceIp, Exposed, Listener, Message, RevocationReason, Revoked,
        Role, encode_frame, parse_frame,
    };
    use rand_core::OsRng;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    const PLC: DeviceAddr = DeviceAddr {
        ip: DeviceIp::V4([192, 168, 7, 20]),
        port: 502,
    };
    const DEAD: DeviceAddr = DeviceAddr {
        ip: DeviceIp::V4([192, 168, 7, 99]),
        port: 502,
    };

    fn pattern(seed: u8, n: usize) -> Vec<u8> {
        (0..n).map(|k| seed.wrapping_add((k % 251) as u8)).collect()
    }

    fn push(version: u64, details_port: u16, with_listener: bool) -> ConfigPush<'static> {
        let listeners: &'static [Listener<'static>] = match (with_listener, details_port) {
            (false, _) => &[],
            (true, 9080) => &[Listener {
                listen_port: 8080,
                target: MeshTarget {
                    host: "details.bookinfo.svc.cluster.local",
                    port: 9080,
                },
            }],
            (true, _) => &[Listener {
                listen_port: 8080,
                target: MeshTarget {
                    host: "details.bookinfo.svc.cluster.local",
                    port: 9090,
                },
            }],
        };
        ConfigPush {
            version,
            listeners: BoundedList::from_slice(listeners).unwrap(),
            exposed: BoundedList::from_slice(&[
                Exposed {
                    service: MeshTarget {
                        host: "plc-1.factory",
                        port: 502,
                    },
                    device: PLC,
                },
                Exposed {
                    service: MeshTarget {
                        host: "dead.factory",
                        port: 502,
                    },
                    device: DEAD,
                },
            ])
            .unwrap(),
        }
    }

    /// The fake legacy socket of one slot.
    #[derive(Default)]
    struct Dev {
        /// Bytes the legacy peer still has to send.
        to_send: Vec<u8>,
        /// The legacy peer closes its sending side once `to_send` is out.
        send_eof: bool,
        eof_reported: bool,
        /// Bytes the legacy peer received.
        received: Vec<u8>,
        /// Most bytes the socket takes per step (a slow device).
        take_per_step: usize,
        got_fin: bool,
        closed: Option<bool>,
    }

    /// Gateway session + node tunnel + bridge, frames moved through the
    /// real codec, legacy sockets simulated per slot.
    struct World<const K: usize> {
        gw: Session<8>,
        node: Tunnel,
        state: NodeState,
        bridge: Bridge<K>,
        now: Instant,
        devs: [Option<Dev>; K],
        /// Devices a gateway-opened stream may reach.
        reachable: Vec<DeviceAddr>,
        /// Clients waiting to connect to a port: (port, data, eof).
        clients: Vec<(u16, Vec<u8>, bool)>,
        /// Closed legacy sockets: (slot, abort, dev).
        closed: Vec<(bool, Dev)>,
        // Gateway side observations.
        gw_opened: Vec<(u32, std::string::String, u16)>,
        gw_rx: BTreeMap<u32, Vec<u8>>,
        gw_fin: Vec<u32>,
        gw_reset: Vec<(u32, CloseReason)>,
        gw_accepted: Vec<u32>,
        /// Bytes the gateway still sends per stream, and whether it then
        /// finishes.
        gw_tx: BTreeMap<u32, (Vec<u8>, bool)>,
        max_to_device: usize,
    }

    impl<const K: usize> World<K> {
        fn new() -> Self {
            let now = Instant::from_millis(0);
            let mut gw = Session::new(
                SessionConfig::new(Role::Gateway),
                now,
                Some(UnixTime::from_secs(2000)),
            );
            let mut node = Tunnel::new(Purpose::Operate, now, None);
            let key = NodeKey::generate(&mut OsRng);
            let addr = GatewayAddr {
                ip: [10, 0, 0, 1],
                port: 15443,
            };
            let creds = Credentials::provision(
                &key,
                addr,
                "spiffe://cluster.local/ns/meshgate-system/sa/meshgate",
                "t",
            )
            .unwrap();
            let mut state = NodeState::new(creds, RenewalPolicy::ISTIO, None, 0).unwrap();
            let mut buf = [0u8; 4096];
            let n = gw.poll_transmit(now, &mut buf).unwrap().unwrap();
            let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
            node.handle_message(now, msg, &mut state, 0).unwrap();
            let n = node.poll_transmit(now, &mut buf).unwrap().unwrap();
            let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
            gw.handle_message(now, msg).unwrap();
            World {
                gw,
                node,
                state,
                bridge: Bridge::new(),
                now,
                devs: [const { None }; K],
                reachable: std::vec![PLC],
                clients: Vec::new(),
                closed: Vec::new(),
                gw_opened: Vec::new(),
                gw_rx: BTreeMap::new(),
                gw_fin: Vec::new(),
                gw_reset: Vec::new(),
                gw_accepted: Vec::new(),
                gw_tx: BTreeMap::new(),
                max_to_device: 0,
            }
        }

        /// Sends a gateway control frame to the node.
        fn gw_control(&mut self, msg: Message<'_>) {
            let mut buf = [0u8; 4096];
            let n = encode_frame(&msg, &mut buf).unwrap();
            self.deliver_to_node(&buf[..n]);
        }

        fn deliver_to_node(&mut self, frames: &[u8]) {
            let mut off = 0;
            while off < frames.len() {
                let (msg, used) = parse_frame(&frames[off..]).unwrap().unwrap();
                off += used;
                let ev = self
                    .node
                    .handle_message(self.now, msg, &mut self.state, 1)
                    .expect("node accepts every gateway frame");
                match ev {
                    Some(TunnelEvent::ConnectDevice {
                        id,
                        service,
                        device,
                    }) => self
                        .bridge
                        .connect_device(self.node.session(), id, &service, device),
                    Some(TunnelEvent::Stream(ev)) => {
                        self.bridge.handle_stream_event(self.node.session(), &ev)
                    }
                    Some(TunnelEvent::ConfigApplied { .. }) => {
                        self.bridge.sync_config(&self.state.config, true)
                    }
                    Some(TunnelEvent::Revoked(_)) | Some(TunnelEvent::Closed(_)) => {
                        self.bridge.tunnel_down()
                    }
                    _ => {}
                }
            }
        }

        fn deliver_to_gateway(&mut self, frame: &[u8]) {
            let mut off = 0;
            while off < frame.len() {
                let (msg, used) = parse_frame(&frame[off..]).unwrap().unwrap();
                off += used;
                let ev = self
                    .gw
                    .handle_message(self.now, msg)
                    .expect("gateway accepts every node frame");
                match ev {
                    Some(Event::StreamOpened { id, target }) => {
                        let t = target.service();
                        self.gw_opened.push((id, t.host.into(), t.port));
                    }
                    Some(Event::StreamAccepted { id, .. }) => self.gw_accepted.push(id),
                    Some(Event::Data { id, data }) => {
                        self.gw_rx.entry(id).or_default().extend_from_slice(data);
                        let n = u32::try_from(data.len()).unwrap();
                        self.gw.consumed(id, n).unwrap();
                    }
                    Some(Event::StreamFinished { id }) => self.gw_fin.push(id),
                    Some(Event::StreamReset { id, reason }) => self.gw_reset.push((id, reason)),
                    _ => {}
                }
            }
        }

        /// One round: legacy sockets, node → gateway, gateway → node.
        fn step(&mut self) {
            for i in 0..K {
                self.socket_step(i);
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = match self.bridge.poll_transmit(
                    self.node.session(),
                    &self.state.config,
                    &mut buf,
                ) {
                    Ok(Some(n)) => n,
                    Ok(None) => match self.node.poll_transmit(self.now, &mut buf).unwrap() {
                        Some(n) => n,
                        None => break,
                    },
                    Err(e) => panic!("bridge encode: {e:?}"),
                };
                let frame = buf[..n].to_vec();
                self.deliver_to_gateway(&frame);
            }
            // The gateway sends what its credit allows.
            let ids: Vec<u32> = self.gw_tx.keys().copied().collect();
            for id in ids {
                let (data, fin) = self.gw_tx.get(&id).cloned().unwrap();
                if !data.is_empty() {
                    match self.gw.send_data(id, &data, &mut buf) {
                        Ok(sent) => {
                            self.gw_tx.get_mut(&id).unwrap().0.drain(..sent.consumed);
                            let frame = buf[..sent.written].to_vec();
                            self.deliver_to_node(&frame);
                        }
                        Err(StreamError::Blocked) | Err(StreamError::NotAccepted) => {}
                        Err(e) => panic!("gateway send_data: {e}"),
                    }
                } else if fin {
                    self.gw.finish(id).unwrap();
                    self.gw_tx.remove(&id);
                }
            }
            while let Some(n) = self.gw.poll_transmit(self.now, &mut buf).unwrap() {
                let frame = buf[..n].to_vec();
                self.deliver_to_node(&frame);
            }
            for i in 0..K {
                self.max_to_device = self.max_to_device.max(self.bridge.slots[i].to_device.len);
            }
        }

        fn socket_step(&mut self, i: usize) {
            match self.bridge.command(i) {
                SlotCommand::Idle => {}
                SlotCommand::Listen(port) => {
                    if let Some(k) = self.clients.iter().position(|c| c.0 == port) {
                        let (_, data, eof) = self.clients.remove(k);
                        if self.bridge.client_accepted(i) {
                            self.devs[i] = Some(Dev {
                                to_send: data,
                                send_eof: eof,
                                take_per_step: usize::MAX,
                                ..Dev::default()
                            });
                        }
                    }
                }
                SlotCommand::Connect(device) => {
                    if self.reachable.contains(&device) {
                        self.devs[i] = Some(Dev {
                            take_per_step: 100,
                            ..Dev::default()
                        });
                        self.bridge.device_connected(i);
                    } else {
                        self.bridge.device_failed(i);
                    }
                }
                SlotCommand::Pump => {
                    let dev = self.devs[i].as_mut().expect("pumping slot has a socket");
                    let n = self.bridge.read_space(i).min(dev.to_send.len());
                    if n > 0 {
                        let chunk: Vec<u8> = dev.to_send.drain(..n).collect();
                        self.bridge.from_device(i, &chunk);
                    }
                    if dev.to_send.is_empty() && dev.send_eof && !dev.eof_reported {
                        dev.eof_reported = true;
                        self.bridge.device_eof(i);
                    }
                    let out = self.bridge.to_device(i);
                    let take = out.len().min(dev.take_per_step);
                    dev.received.extend_from_slice(&out[..take]);
                    self.bridge.drained(i, take);
                    if self.bridge.should_shut_write(i) {
                        dev.got_fin = true;
                        self.bridge.write_shut(i);
                    }
                }
                SlotCommand::Close { abort } => {
                    let mut dev = self.devs[i].take().unwrap_or_default();
                    dev.closed = Some(abort);
                    self.closed.push((abort, dev));
                    self.bridge.released(i);
                }
            }
        }

        fn run(&mut self, steps: usize) {
            for _ in 0..steps {
                self.step();
            }
        }

        fn open_to_device(&mut self, host: &str) -> u32 {
            let mut buf = [0u8; 512];
            let target = StreamTarget::ToDevice(MeshTarget { host, port: 502 });
            let (id, n) = self.gw.open_stream(target, &mut buf).unwrap();
            self.deliver_to_node(&buf[..n]);
            id
        }

        fn listening(&self) -> Vec<u16> {
            self.bridge.listening_ports().collect()
        }
    }

    #[test]
    fn ring_wraps_and_keeps_order() {
        let mut r: Ring<8> = Ring::new();
        assert_eq!(r.push(b"abcdef"), 6);
        assert_eq!(r.front(), b"abcdef");
        r.pop(4);
        assert_eq!(r.push(b"ghijkl"), 6);
        assert_eq!(r.push(b"x"), 0, "full");
        let mut out = Vec::new();
        while !r.is_empty() {
            let f = r.front().to_vec();
            out.extend_from_slice(&f);
            r.pop(f.len());
        }
        assert_eq!(out, b"efghijkl");
    }

    #[test]
    fn nothing_listens_before_the_first_push_and_after_tunnel_down() {
        let mut w: World<4> = World::new();
        w.run(2);
        assert!(w.listening().is_empty());
        w.gw_control(Message::ConfigPush(push(1, 9080, true)));
        w.run(1);
        assert_eq!(w.listening(), std::vec![8080]);
        w.bridge.tunnel_down();
        w.run(1);
        assert!(w.listening().is_empty());
    }

    #[test]
    fn legacy_client_reaches_mesh_target_both_ways_with_flow_control() {
        let mut w: World<4> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, true)));
        w.run(1);
        let upload = pattern(3, 5000);
        w.clients.push((8080, upload.clone(), true));
        w.run(2);
        assert_eq!(
            w.gw_opened,
            std::vec![(1, "details.bookinfo.svc.cluster.local".into(), 9080)]
        );
        // Nothing flows before the gateway accepts.
        assert!(w.gw_rx.is_empty());
        // A second slot listens while the first carries the stream.
        assert_eq!(w.listening(), std::vec![8080]);
        w.gw.accept(1).unwrap();
        let download = pattern(9, 6000);
        w.gw_tx.insert(1, (download.clone(), true));
        // The legacy client reads slowly.
        for d in w.devs.iter_mut().flatten() {
            d.take_per_step = 300;
        }
        w.run(60);
        assert_eq!(w.gw_rx.get(&1).unwrap(), &upload);
        assert_eq!(w.gw_fin, std::vec![1]);
        let (abort, dev) = w.closed.pop().expect("the finished stream's socket closed");
        assert!(!abort, "both sides finished: graceful close");
        assert_eq!(dev.received, download);
        assert!(dev.got_fin);
        assert!(
            w.max_to_device <= STREAM_WINDOW as usize,
            "the gateway never had more than the window in flight"
        );
        assert_eq!(w.bridge.active_streams(), 0);
        assert_eq!(w.listening(), std::vec![8080]);
        assert_eq!(w.gw.stream_count(), 0);
    }

    #[test]
    fn mesh_client_reaches_exposed_device() {
        let mut w: World<4> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, false)));
        let id = w.open_to_device("PLC-1.factory");
        w.run(2);
        assert_eq!(w.gw_accepted, std::vec![id]);
        let request = pattern(1, 3000);
        w.gw_tx.insert(id, (request.clone(), false));
        w.run(40);
        let i = w.devs.iter().position(|d| d.is_some()).unwrap();
        assert_eq!(w.devs[i].as_ref().unwrap().received, request);
        let reply = pattern(2, 1500);
        let d = w.devs[i].as_mut().unwrap();
        d.to_send = reply.clone();
        d.send_eof = true;
        w.run(10);
        assert_eq!(w.gw_rx.get(&id).unwrap(), &reply);
        assert_eq!(w.gw_fin, std::vec![id]);
        // The gateway finishes too: the device socket closes gracefully.
        w.gw_tx.insert(id, (Vec::new(), true));
        w.run(3);
        let (abort, dev) = w.closed.pop().unwrap();
        assert!(!abort);
        assert!(dev.got_fin);
    }

    #[test]
    fn unexposed_service_is_refused_and_unreachable_device_reported() {
        let mut w: World<4> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, false)));
        let a = w.open_to_device("scada.factory");
        let b = w.open_to_device("dead.factory");
        w.run(2);
        assert!(w.gw_reset.contains(&(a, CloseReason::Refused)));
        assert!(w.gw_reset.contains(&(b, CloseReason::Unreachable)));
        assert_eq!(w.bridge.active_streams(), 0);
    }

    #[test]
    fn gateway_refusal_resets_the_legacy_client() {
        let mut w: World<4> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, true)));
        w.run(1);
        w.clients
            .push((8080, b"GET / HTTP/1.0\r\n\r\n".to_vec(), false));
        w.run(2);
        w.gw.reset(1, CloseReason::Denied).unwrap();
        w.run(2);
        let (abort, _) = w.closed.pop().unwrap();
        assert!(abort, "a denied stream resets the legacy client");
        assert!(w.gw_rx.is_empty());
    }

    #[test]
    fn several_concurrent_streams_both_ways_stay_separate() {
        let mut w: World<6> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, true)));
        w.run(1);
        let up: Vec<Vec<u8>> = (0..2)
            .map(|k| pattern(10 + k, 2500 + 300 * k as usize))
            .collect();
        for u in &up {
            w.clients.push((8080, u.clone(), true));
            w.run(1);
        }
        let d1 = w.open_to_device("plc-1.factory");
        let d2 = w.open_to_device("plc-1.factory");
        w.run(2);
        // A third legacy client exceeds the node's two outgoing streams and
        // is refused rather than left waiting.
        w.clients.push((8080, b"late".to_vec(), true));
        w.run(2);
        assert_eq!(w.closed.iter().filter(|(abort, _)| *abort).count(), 1);
        assert_eq!(w.gw_opened.len(), 2);
        for (id, _, _) in w.gw_opened.clone() {
            w.gw.accept(id).unwrap();
            w.gw_tx.insert(id, (pattern(id as u8, 4000), true));
        }
        w.gw_tx.insert(d1, (pattern(100, 3500), false));
        w.gw_tx.insert(d2, (pattern(200, 3700), false));
        w.run(80);
        let opened: Vec<u32> = w.gw_opened.iter().map(|o| o.0).collect();
        for (k, id) in opened.iter().enumerate() {
            assert_eq!(w.gw_rx.get(id).unwrap(), &up[k], "stream {id} upload");
        }
        // Each device got exactly its own stream's bytes.
        let mut got: Vec<Vec<u8>> = w
            .devs
            .iter()
            .flatten()
            .filter(|d| d.take_per_step == 100)
            .map(|d| d.received.clone())
            .collect();
        got.sort_by_key(|v| v.len());
        assert_eq!(got, std::vec![pattern(100, 3500), pattern(200, 3700)]);
        // The legacy clients each got their download and a FIN.
        let downloads: Vec<Vec<u8>> = w
            .closed
            .iter()
            .filter(|(abort, _)| !*abort)
            .map(|(_, d)| d.received.clone())
            .collect();
        assert_eq!(downloads.len(), 2);
        for (k, id) in opened.iter().enumerate() {
            assert!(downloads.contains(&pattern(*id as u8, 4000)), "client {k}");
        }
        assert!(w.max_to_device <= STREAM_WINDOW as usize);
    }

    #[test]
    fn config_change_cancels_only_affected_streams() {
        let mut w: World<4> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, true)));
        w.run(1);
        w.clients.push((8080, Vec::new(), false));
        w.run(2);
        let dev_stream = w.open_to_device("plc-1.factory");
        w.run(2);
        w.gw.accept(1).unwrap();
        w.run(1);
        assert_eq!(w.bridge.active_streams(), 2);
        // Port 8080 now leads somewhere else: its stream is cancelled, the
        // device stream is untouched, and 8080 keeps listening.
        w.gw_control(Message::ConfigPush(push(2, 9090, true)));
        w.run(2);
        assert_eq!(w.gw_reset, std::vec![(1, CloseReason::Cancelled)]);
        assert_eq!(w.bridge.active_streams(), 1);
        assert_eq!(w.listening(), std::vec![8080]);
        // Removing the listener stops listening; the device stream stays.
        w.gw_control(Message::ConfigPush(push(3, 9090, false)));
        w.run(2);
        assert!(w.listening().is_empty());
        assert_eq!(w.bridge.active_streams(), 1);
        assert!(!w.gw_reset.iter().any(|(id, _)| *id == dev_stream));
    }

    #[test]
    fn revocation_aborts_every_legacy_socket() {
        let mut w: World<4> = World::new();
        w.gw_control(Message::ConfigPush(push(1, 9080, true)));
        w.run(1);
        w.clients.push((8080, b"x".to_vec(), false));
        w.open_to_device("plc-1.factory");
        w.run(3);
        assert_eq!(w.bridge.active_streams(), 2);
        w.closed.clear();
        w.gw_control(Message::Revoked(Revoked {
            reason: RevocationReason::KeyCompromise,
            detail: "stolen",
        }));
        w.run(1);
        assert_eq!(w.bridge.active_streams(), 0);
        assert!(w.listening().is_empty());
        assert_eq!(w.closed.len(), 3, "two streams and the listener");
        assert!(w.closed.iter().all(|(abort, _)| *abort));
        assert!(w.state.revoked);
    }
}
