//! A sans-IO state machine for one tunnel (quinn-proto style).
//!
//! [`Session`] owns the bookkeeping both ends of the tunnel share: the hello
//! exchange, multiplexed streams with credit-based flow control, stream-id
//! rules, concurrency limits, heartbeats and the idle timeout. It does no
//! I/O, reads no clock and never allocates; the caller drives it:
//!
//! - **inputs**: [`handle_message`](Session::handle_message) with each
//!   decoded frame, [`handle_timeout`](Session::handle_timeout) when the
//!   deadline from [`poll_timeout`](Session::poll_timeout) passes;
//! - **outputs**: [`poll_transmit`](Session::poll_transmit) until it returns
//!   `None`, after every input and command; events are returned directly by
//!   `handle_message`/`handle_timeout` because they borrow the frame;
//! - **commands**: [`open_stream`](Session::open_stream),
//!   [`accept`](Session::accept), [`send_data`](Session::send_data),
//!   [`consumed`](Session::consumed), [`finish`](Session::finish),
//!   [`reset`](Session::reset), [`close`](Session::close). Commands whose
//!   frames carry borrowed data (`open_stream`, `send_data`) encode them
//!   straight into the caller's buffer, so nothing is copied or queued.
//!
//! # Rules
//! - Each side sends `Hello` first; nothing else is accepted before the
//!   peer's hello. The peer must have the other [`Role`].
//! - The node opens odd stream ids, the gateway even ones (0 is reserved);
//!   each side's ids strictly increase and are never reused.
//! - A stream's opener grants the acceptor `initial_credit` in `StreamOpen`;
//!   the acceptor's first `WindowUpdate` accepts the stream and grants the
//!   opener its credit. No data flows towards an acceptor before that, so the
//!   acceptor never buffers for a target it has not reached yet.
//! - Sending beyond the granted credit, data after `Finished`, exceeding the
//!   announced concurrent-stream limit, or a message the peer's role may not
//!   send closes the tunnel with an `Error` frame. Frames for a stream that
//!   existed and is closed are ignored (they may have crossed a reset).
//! - There is no connection-level window: memory is bounded by
//!   `max_incoming_streams × recv_window`.
//! - A `Ping` is sent when nothing has arrived for the ping interval; if
//!   nothing arrives for the idle timeout the session says `Goodbye` and ends.
//!
//! Time is an [`Instant`] from a monotonic clock, so wall-clock steps (NTP,
//! an edge node learning the time from the gateway) cannot fire or suppress
//! timeouts. Wall-clock time appears only in the hello.

use core::fmt;
use core::time::Duration;

use super::PROTOCOL_VERSION;
use super::frame::{EncodeError, encode_frame};
use super::message::{
    CloseReason, ErrorCode, ErrorMsg, Goodbye, GoodbyeReason, Hello, MAX_DATA_CHUNK, Message,
    Revoked, Role, StreamClose, StreamData, StreamOpen, StreamTarget, WindowUpdate,
};
use crate::time::UnixTime;

/// A point on a monotonic clock, in milliseconds from an arbitrary origin
/// (boot, process start). Only differences matter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(u64);

impl Instant {
    /// From milliseconds since the clock's origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the clock's origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Instant(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Tunables of one side of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// This side's role.
    pub role: Role,
    /// Concurrent streams the peer may open (announced in the hello);
    /// clamped to the session's table capacity.
    pub max_incoming_streams: u16,
    /// Per-stream receive window: bytes the peer may have in flight.
    pub recv_window: u32,
    /// Ping after this long without receiving anything.
    pub ping_interval: Duration,
    /// Close after this long without receiving anything (announced in the
    /// hello; at least [`MIN_IDLE_TIMEOUT_MS`](super::MIN_IDLE_TIMEOUT_MS)).
    pub idle_timeout: Duration,
}

impl SessionConfig {
    /// Defaults sized for the edge node: 4 incoming streams, 8 KiB windows,
    /// ping after 10 s of silence, give up after 30 s.
    pub const fn new(role: Role) -> Self {
        SessionConfig {
            role,
            max_incoming_streams: 4,
            recv_window: 8 * 1024,
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn idle_timeout_ms(&self) -> u32 {
        let ms = u32::try_from(self.idle_timeout.as_millis()).unwrap_or(u32::MAX);
        ms.max(super::MIN_IDLE_TIMEOUT_MS)
    }
}

/// Something the peer did that the application must act on.
#[expect(
    clippy::large_enum_variant,
    reason = "carries a borrowed Message without an allocator"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The peer's hello was accepted; streams may be opened.
    Connected {
        /// The peer's wall-clock time, if it knows it.
        peer_time: Option<UnixTime>,
        /// Concurrent streams the peer accepts from us.
        peer_max_streams: u16,
    },
    /// The peer opened a stream: [`accept`](Session::accept) it once the
    /// target is reached, or [`reset`](Session::reset) it.
    StreamOpened {
        /// The stream.
        id: u32,
        /// What it connects to.
        target: StreamTarget<'a>,
    },
    /// The peer accepted a stream we opened.
    StreamAccepted {
        /// The stream.
        id: u32,
        /// Bytes we may now send.
        credit: u32,
    },
    /// More send credit on a stream.
    Credit {
        /// The stream.
        id: u32,
        /// Bytes we may now send.
        credit: u32,
    },
    /// Data on a stream; report it with [`consumed`](Session::consumed) once
    /// delivered, which returns credit to the peer.
    Data {
        /// The stream.
        id: u32,
        /// The payload (borrowed from the frame).
        data: &'a [u8],
    },
    /// The peer will send no more data on the stream (half-close).
    StreamFinished {
        /// The stream.
        id: u32,
    },
    /// The peer aborted the stream; it is gone.
    StreamReset {
        /// The stream.
        id: u32,
        /// Why.
        reason: CloseReason,
    },
    /// An enrollment, certificate, renewal or configuration message for the
    /// application (the session checked that the peer's role may send it).
    Control(Message<'a>),
    /// The gateway revoked this node; the session is closed.
    Revoked(Revoked<'a>),
    /// The peer said goodbye; the session is closed.
    PeerGoodbye(GoodbyeReason),
    /// The peer reported a fatal error; the session is closed.
    PeerError(ErrorMsg<'a>),
    /// Nothing arrived within the idle timeout; a goodbye is queued.
    TimedOut,
}

/// A rule the peer broke; the session queues an `Error` frame and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SessionError {
    /// A message other than `Hello` arrived before the peer's hello.
    HelloExpected,
    /// A second hello.
    DuplicateHello,
    /// The peer's hello names the same role as ours.
    SameRole,
    /// The peer speaks another protocol version.
    VersionMismatch(u16),
    /// The peer sent a message only our role may send.
    WrongSender,
    /// A stream id has the wrong parity or does not increase.
    StreamIdViolation,
    /// A frame names a stream that was never opened.
    UnknownStream,
    /// The peer exceeded the concurrent-stream limit we announced.
    StreamLimit,
    /// The peer sent more data than its credit.
    FlowControl,
    /// A credit grant overflowed a 32-bit window.
    CreditOverflow,
    /// Data or a finish on a stream we opened before the peer accepted it.
    NotAccepted,
    /// Data or a second finish after the peer finished the stream.
    AfterFinish,
}

impl SessionError {
    /// The code sent to the peer in the `Error` frame.
    pub const fn code(self) -> ErrorCode {
        match self {
            SessionError::VersionMismatch(_) => ErrorCode::UnsupportedVersion,
            SessionError::StreamLimit => ErrorCode::StreamLimit,
            SessionError::FlowControl | SessionError::CreditOverflow => ErrorCode::FlowControl,
            SessionError::HelloExpected
            | SessionError::DuplicateHello
            | SessionError::SameRole
            | SessionError::WrongSender
            | SessionError::StreamIdViolation
            | SessionError::UnknownStream
            | SessionError::NotAccepted
            | SessionError::AfterFinish => ErrorCode::Protocol,
        }
    }

    /// A short description, also the `Error` frame's detail.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionError::HelloExpected => "expected hello",
            SessionError::DuplicateHello => "duplicate hello",
            SessionError::SameRole => "peer claims our role",
            SessionError::VersionMismatch(_) => "unsupported protocol version",
            SessionError::WrongSender => "message not allowed from this role",
            SessionError::StreamIdViolation => "stream id has wrong parity or does not increase",
            SessionError::UnknownStream => "stream was never opened",
            SessionError::StreamLimit => "concurrent stream limit exceeded",
            SessionError::FlowControl => "data exceeds granted credit",
            SessionError::CreditOverflow => "credit grant overflows the window",
            SessionError::NotAccepted => "stream not accepted yet",
            SessionError::AfterFinish => "stream already finished by sender",
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::VersionMismatch(v) => {
                write!(f, "{} {v}", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

/// Why a local command was refused. The session state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamError {
    /// The session is not open (no hello yet, or closed).
    NotOpen,
    /// No such stream (never opened, or already closed).
    UnknownStream,
    /// Our role may not open a stream with this target.
    WrongDirection,
    /// The peer's or our own concurrent-stream limit is reached.
    StreamLimit,
    /// Stream ids are exhausted; reconnect.
    IdsExhausted,
    /// The stream is not accepted yet (or is ours, so we cannot accept it).
    NotAccepted,
    /// The stream was already accepted.
    AlreadyAccepted,
    /// We already finished or reset this stream's send side.
    SendClosed,
    /// No send credit; wait for [`Event::Credit`].
    Blocked,
    /// `Finished` is not a reset reason; use [`Session::finish`].
    FinishedIsNotReset,
    /// More bytes reported consumed than were received.
    OverConsumed,
    /// The frame could not be encoded into the given buffer.
    Encode(EncodeError),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::NotOpen => f.write_str("session is not open"),
            StreamError::UnknownStream => f.write_str("unknown stream"),
            StreamError::WrongDirection => f.write_str("this role may not open that target"),
            StreamError::StreamLimit => f.write_str("concurrent stream limit reached"),
            StreamError::IdsExhausted => f.write_str("stream ids exhausted"),
            StreamError::NotAccepted => f.write_str("stream not accepted"),
            StreamError::AlreadyAccepted => f.write_str("stream already accepted"),
            StreamError::SendClosed => f.write_str("stream send side already closed"),
            StreamError::Blocked => f.write_str("no send credit"),
            StreamError::FinishedIsNotReset => f.write_str("Finished is not a reset reason"),
            StreamError::OverConsumed => f.write_str("consumed more than received"),
            StreamError::Encode(e) => write!(f, "encoding failed: {e}"),
        }
    }
}

impl From<EncodeError> for StreamError {
    fn from(e: EncodeError) -> Self {
        StreamError::Encode(e)
    }
}

/// What [`Session::send_data`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Bytes of the payload carried (a prefix of the input).
    pub consumed: usize,
    /// Bytes written to the output buffer (one or two frames).
    pub written: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendSide {
    Open,
    FinishQueued,
    Finished,
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    id: u32,
    /// We opened it.
    local: bool,
    /// Ours: the peer's first window update arrived. Theirs: we accepted.
    accepted: bool,
    /// Theirs, accepted: the accepting window update is not sent yet.
    accept_pending: bool,
    send: SendSide,
    send_credit: u32,
    recv_finished: bool,
    /// Bytes the peer may still send.
    recv_remaining: u32,
    /// Received bytes the application has not consumed yet.
    recv_unconsumed: u32,
    /// Consumed bytes not yet granted back to the peer.
    grant_pending: u32,
    /// A local reset waiting to be sent; the stream is dead otherwise.
    reset_pending: Option<CloseReason>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseFrame {
    Goodbye(GoodbyeReason),
    Error(ErrorCode, &'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshaking,
    Open,
    Closing(CloseFrame),
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    max_streams: u16,
    idle_timeout: Duration,
}

/// One end of a tunnel with room for `N` concurrent streams (both
/// directions together).
#[derive(Debug)]
pub struct Session<const N: usize> {
    cfg: SessionConfig,
    state: State,
    hello: Option<Option<UnixTime>>,
    peer: Option<Peer>,
    streams: [Option<Stream>; N],
    next_local_id: Option<u32>,
    highest_peer_id: u32,
    last_rx: Instant,
    last_ping: Instant,
    ping_due: bool,
    ping_outstanding: Option<(u64, Instant)>,
    ping_counter: u64,
    pong_due: Option<u64>,
    rtt: Option<Duration>,
}

impl<const N: usize> Session<N> {
    /// A session started at `now`; `wall_time` goes into our hello (`None`
    /// when this side has no trustworthy clock, e.g. a fresh edge node).
    pub fn new(cfg: SessionConfig, now: Instant, wall_time: Option<UnixTime>) -> Self {
        let mut cfg = cfg;
        let cap = u16::try_from(N).unwrap_or(u16::MAX);
        cfg.max_incoming_streams = cfg.max_incoming_streams.min(cap);
        Session {
            cfg,
            state: State::Handshaking,
            hello: Some(wall_time),
            peer: None,
            streams: [None; N],
            // The node is the tunnel client and opens odd ids, as HTTP/2
            // clients do; the gateway opens even ids from 2.
            next_local_id: Some(match cfg.role {
                Role::Node => 1,
                Role::Gateway => 2,
            }),
            highest_peer_id: 0,
            last_rx: now,
            last_ping: now,
            ping_due: false,
            ping_outstanding: None,
            ping_counter: 0,
            pong_due: None,
            rtt: None,
        }
    }

    // ----- getters -----

    /// The configuration in effect (after clamping).
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// True after the peer's hello and before the session closes.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True once nothing more will be sent or accepted.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The last measured ping round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Streams currently tracked (including ones with a reset still queued).
    pub fn stream_count(&self) -> usize {
        self.streams.iter().flatten().count()
    }

    /// Bytes we may send on `id` now, `None` if the stream is unknown.
    pub fn send_credit(&self, id: u32) -> Option<u32> {
        self.stream(id).map(|s| s.send_credit)
    }

    // ----- stream table helpers -----

    fn stream(&self, id: u32) -> Option<&Stream> {
        self.streams.iter().flatten().find(|s| s.id == id)
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().flatten().find(|s| s.id == id)
    }

    fn remove(&mut self, id: u32) {
        for slot in self.streams.iter_mut() {
            if slot.is_some_and(|s| s.id == id) {
                *slot = None;
            }
        }
    }

    fn count(&self, local: bool) -> usize {
        self.streams
            .iter()
            .flatten()
            .filter(|s| s.local == local)
            .count()
    }

    const fn odd_opener(role: Role) -> bool {
        matches!(role, Role::Node)
    }

    /// An id that was used and is gone: frames for it are stale, not errors.
    fn is_stale(&self, id: u32) -> bool {
        let peer_parity = (id % 2 == 1) == Self::odd_opener(self.cfg.role.peer());
        if peer_parity {
            id <= self.highest_peer_id
        } else {
            match self.next_local_id {
                Some(next) => id < next,
                None => true,
            }
        }
    }

    fn recv_grant_threshold(&self) -> u32 {
        (self.cfg.recv_window / 2).max(1)
    }

    fn ping_interval(&self) -> Duration {
        let mut interval = self.cfg.ping_interval.min(self.cfg.idle_timeout / 2);
        if let Some(peer) = self.peer {
            interval = interval.min(peer.idle_timeout / 3);
        }
        interval
    }

    fn fail(&mut self, err: SessionError) -> SessionError {
        self.state = State::Closing(CloseFrame::Error(err.code(), err.as_str()));
        err
    }

    // ----- inputs -----

    /// Feeds one decoded message received at `now`.
    ///
    /// On `Err` the peer broke a rule: an `Error` frame is queued and the
    /// session closes after [`poll_transmit`](Self::poll_transmit) sends it.
    /// After the session is closing or closed, messages are ignored.
    pub fn handle_message<'a>(
        &mut self,
        now: Instant,
        msg: Message<'a>,
    ) -> Result<Option<Event<'a>>, SessionError> {
        match self.state {
            State::Closing(_) | State::Closed => return Ok(None),
            State::Handshaking | State::Open => {}
        }
        self.last_rx = now;
        if msg.sender() == Some(self.cfg.role) {
            return Err(self.fail(SessionError::WrongSender));
        }
        match self.on_message(now, msg) {
            Ok(ev) => Ok(ev),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn on_message<'a>(
        &mut self,
        now: Instant,
        msg: Message<'a>,
    ) -> Result<Option<Event<'a>>, SessionError> {
        if self.state == State::Handshaking {
            let Message::Hello(h) = msg else {
                return Err(SessionError::HelloExpected);
            };
            return self.on_hello(h).map(Some);
        }
        Ok(match msg {
            Message::Hello(_) => return Err(SessionError::DuplicateHello),
            Message::EnrollRequest(_)
            | Message::Certificate(_)
            | Message::RenewRequest(_)
            | Message::ConfigPush(_)
            | Message::ConfigAck(_) => Some(Event::Control(msg)),
            Message::Revoked(r) => {
                self.state = State::Closed;
                Some(Event::Revoked(r))
            }
            Message::Goodbye(g) => {
                self.state = State::Closed;
                Some(Event::PeerGoodbye(g.reason))
            }
            Message::Error(e) => {
                self.state = State::Closed;
                Some(Event::PeerError(e))
            }
            Message::Ping(nonce) => {
                self.pong_due = Some(nonce);
                None
            }
            Message::Pong(nonce) => {
                // A pong for an older ping is ignored; only the outstanding
                // one measures a round trip.
                if let Some((outstanding, sent)) = self.ping_outstanding
                    && outstanding == nonce
                {
                    self.rtt = Some(now.saturating_duration_since(sent));
                    self.ping_outstanding = None;
                }
                None
            }
            Message::StreamOpen(o) => Some(self.on_open(o)?),
            Message::StreamData(d) => self.on_data(d)?,
            Message::StreamClose(c) => self.on_close(c)?,
            Message::WindowUpdate(w) => self.on_window(w)?,
        })
    }

    fn on_hello<'a>(&mut self, h: Hello) -> Result<Event<'a>, SessionError> {
        if h.version != PROTOCOL_VERSION {
            return Err(SessionError::VersionMismatch(h.version));
        }
        if h.role != self.cfg.role.peer() {
            return Err(SessionError::SameRole);
        }
        self.peer = Some(Peer {
            max_streams: h.max_streams,
            idle_timeout: Duration::from_millis(u64::from(h.idle_timeout_ms)),
        });
        self.state = State::Open;
        Ok(Event::Connected {
            peer_time: h.time,
            peer_max_streams: h.max_streams,
        })
    }

    fn on_open<'a>(&mut self, o: StreamOpen<'a>) -> Result<Event<'a>, SessionError> {
        // The role check in `handle_message` already ensured the target
        // direction matches the peer's role.
        let odd = o.id % 2 == 1;
        if odd != Self::odd_opener(self.cfg.role.peer()) || o.id <= self.highest_peer_id {
            return Err(SessionError::StreamIdViolation);
        }
        if self.count(false) >= usize::from(self.cfg.max_incoming_streams) {
            return Err(SessionError::StreamLimit);
        }
        let Some(slot) = self.streams.iter_mut().find(|s| s.is_none()) else {
            return Err(SessionError::StreamLimit);
        };
        *slot = Some(Stream {
            id: o.id,
            local: false,
            accepted: false,
            accept_pending: false,
            send: SendSide::Open,
            send_credit: o.initial_credit,
            recv_finished: false,
            recv_remaining: 0,
            recv_unconsumed: 0,
            grant_pending: 0,
            reset_pending: None,
        });
        self.highest_peer_id = o.id;
        Ok(Event::StreamOpened {
            id: o.id,
            target: o.target,
        })
    }

    /// Looks up a stream named by a peer frame: `Ok(None)` for a stale id
    /// or a stream we are resetting (its frames crossed our reset).
    fn live_stream(&mut self, id: u32) -> Result<Option<&mut Stream>, SessionError> {
        if self.stream(id).is_none() {
            return if self.is_stale(id) {
                Ok(None)
            } else {
                Err(SessionError::UnknownStream)
            };
        }
        Ok(self.stream_mut(id).filter(|s| s.reset_pending.is_none()))
    }

    fn on_data<'a>(&mut self, d: StreamData<'a>) -> Result<Option<Event<'a>>, SessionError> {
        let Some(s) = self.live_stream(d.id)? else {
            return Ok(None);
        };
        if s.local && !s.accepted {
            return Err(SessionError::NotAccepted);
        }
        if s.recv_finished {
            return Err(SessionError::AfterFinish);
        }
        let n = u32::try_from(d.data.len()).map_err(|_| SessionError::FlowControl)?;
        if n > s.recv_remaining {
            return Err(SessionError::FlowControl);
        }
        s.recv_remaining -= n;
        s.recv_unconsumed += n;
        Ok(Some(Event::Data {
            id: d.id,
            data: d.data,
        }))
    }

    fn on_close<'a>(&mut self, c: StreamClose) -> Result<Option<Event<'a>>, SessionError> {
        if let Some(s) = self.stream(c.id)
            && s.reset_pending.is_some()
        {
            // We are resetting it already. A peer abort ends it on both
            // sides, so our reset need not be sent; a peer finish changes
            // nothing.
            if c.reason != CloseReason::Finished {
                self.remove(c.id);
            }
            return Ok(None);
        }
        let Some(s) = self.live_stream(c.id)? else {
            return Ok(None);
        };
        if c.reason != CloseReason::Finished {
            self.remove(c.id);
            return Ok(Some(Event::StreamReset {
                id: c.id,
                reason: c.reason,
            }));
        }
        if s.local && !s.accepted {
            return Err(SessionError::NotAccepted);
        }
        if s.recv_finished {
            return Err(SessionError::AfterFinish);
        }
        s.recv_finished = true;
        if s.send == SendSide::Finished {
            self.remove(c.id);
        }
        Ok(Some(Event::StreamFinished { id: c.id }))
    }

    fn on_window<'a>(&mut self, w: WindowUpdate) -> Result<Option<Event<'a>>, SessionError> {
        let Some(s) = self.live_stream(w.id)? else {
            return Ok(None);
        };
        s.send_credit = s
            .send_credit
            .checked_add(w.credit)
            .ok_or(SessionError::CreditOverflow)?;
        if s.local && !s.accepted {
            s.accepted = true;
            return Ok(Some(Event::StreamAccepted {
                id: w.id,
                credit: s.send_credit,
            }));
        }
        Ok(Some(Event::Credit {
            id: w.id,
            credit: s.send_credit,
        }))
    }

    /// Checks deadlines at `now`: queues a ping when the peer has been
    /// silent for the ping interval, and closes the session (returning
    /// [`Event::TimedOut`]) when it has been silent for the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event<'static>> {
        match self.state {
            State::Closing(_) | State::Closed => return None,
            State::Handshaking | State::Open => {}
        }
        if now >= self.idle_deadline() {
            self.state = State::Closing(CloseFrame::Goodbye(GoodbyeReason::IdleTimeout));
            return Some(Event::TimedOut);
        }
        if let Some(at) = self.ping_deadline()
            && now >= at
        {
            self.ping_due = true;
        }
        None
    }

    fn idle_deadline(&self) -> Instant {
        self.last_rx.saturating_add(self.cfg.idle_timeout)
    }

    fn ping_deadline(&self) -> Option<Instant> {
        if self.state != State::Open || self.ping_due || self.ping_outstanding.is_some() {
            return None;
        }
        Some(
            self.last_rx
                .max(self.last_ping)
                .saturating_add(self.ping_interval()),
        )
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called,
    /// `None` once closing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closing(_) | State::Closed => None,
            State::Handshaking | State::Open => {
                let idle = self.idle_deadline();
                Some(self.ping_deadline().map_or(idle, |p| p.min(idle)))
            }
        }
    }

    // ----- outputs -----

    /// Writes the next frame the session wants to send into `buf` and
    /// returns its length, or `None` when there is nothing to send. Call it
    /// until `None` after every input and command. If `buf` is too small the
    /// frame stays queued. (Every queued frame is under 64 bytes.)
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, EncodeError> {
        if let Some(wall_time) = self.hello {
            let hello = Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: self.cfg.role,
                time: wall_time,
                max_streams: self.cfg.max_incoming_streams,
                idle_timeout_ms: self.cfg.idle_timeout_ms(),
            });
            let n = encode_frame(&hello, buf)?;
            self.hello = None;
            return Ok(Some(n));
        }
        match self.state {
            State::Closed => return Ok(None),
            State::Closing(frame) => {
                let msg = match frame {
                    CloseFrame::Goodbye(reason) => Message::Goodbye(Goodbye { reason }),
                    CloseFrame::Error(code, detail) => Message::Error(ErrorMsg { code, detail }),
                };
                let n = encode_frame(&msg, buf)?;
                self.state = State::Closed;
                return Ok(Some(n));
            }
            State::Handshaking | State::Open => {}
        }
        if let Some(nonce) = self.pong_due {
            let n = encode_frame(&Message::Pong(nonce), buf)?;
            self.pong_due = None;
            return Ok(Some(n));
        }
        if self.ping_due {
            let nonce = self.ping_counter;
            let n = encode_frame(&Message::Ping(nonce), buf)?;
            self.ping_counter = self.ping_counter.wrapping_add(1);
            self.ping_due = false;
            self.ping_outstanding = Some((nonce, now));
            self.last_ping = now;
            return Ok(Some(n));
        }
        let threshold = self.recv_grant_threshold();
        for slot in self.streams.iter_mut() {
            let Some(s) = slot else { continue };
            if let Some(reason) = s.reset_pending {
                let n = encode_frame(&Message::StreamClose(StreamClose { id: s.id, reason }), buf)?;
                *slot = None;
                return Ok(Some(n));
            }
            if s.accept_pending || (s.grant_pending >= threshold && !s.recv_finished) {
                let n = encode_frame(&window_update(s), buf)?;
                grant_sent(s);
                return Ok(Some(n));
            }
            if s.send == SendSide::FinishQueued {
                let close = StreamClose {
                    id: s.id,
                    reason: CloseReason::Finished,
                };
                let n = encode_frame(&Message::StreamClose(close), buf)?;
                s.send = SendSide::Finished;
                if s.recv_finished {
                    *slot = None;
                }
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    // ----- commands -----

    /// Opens a stream to `target`, writing the `StreamOpen` frame into
    /// `buf`; returns the new id and the frame length. Data may flow once
    /// [`Event::StreamAccepted`] arrives.
    pub fn open_stream(
        &mut self,
        target: StreamTarget<'_>,
        buf: &mut [u8],
    ) -> Result<(u32, usize), StreamError> {
        if self.state != State::Open {
            return Err(StreamError::NotOpen);
        }
        if target.opener() != self.cfg.role {
            return Err(StreamError::WrongDirection);
        }
        let peer_max = self.peer.map_or(0, |p| usize::from(p.max_streams));
        // Slots reserved for the peer's streams are not ours to take.
        let own_max = N.saturating_sub(usize::from(self.cfg.max_incoming_streams));
        if self.count(true) >= peer_max.min(own_max) {
            return Err(StreamError::StreamLimit);
        }
        let id = self.next_local_id.ok_or(StreamError::IdsExhausted)?;
        let open = StreamOpen {
            id,
            target,
            initial_credit: self.cfg.recv_window,
        };
        let slot_index = self
            .streams
            .iter()
            .position(|s| s.is_none())
            .ok_or(StreamError::StreamLimit)?;
        let n = encode_frame(&Message::StreamOpen(open), buf)?;
        if let Some(slot) = self.streams.get_mut(slot_index) {
            *slot = Some(Stream {
                id,
                local: true,
                accepted: false,
                accept_pending: false,
                send: SendSide::Open,
                send_credit: 0,
                recv_finished: false,
                recv_remaining: self.cfg.recv_window,
                recv_unconsumed: 0,
                grant_pending: 0,
                reset_pending: None,
            });
        }
        self.next_local_id = id.checked_add(2);
        Ok((id, n))
    }

    /// Accepts a stream the peer opened: queues the window update that
    /// grants the peer our receive window.
    pub fn accept(&mut self, id: u32) -> Result<(), StreamError> {
        let window = self.cfg.recv_window;
        let s = self.command_stream(id)?;
        if s.local {
            return Err(StreamError::NotAccepted);
        }
        if s.accepted {
            return Err(StreamError::AlreadyAccepted);
        }
        s.accepted = true;
        s.accept_pending = true;
        s.grant_pending = window;
        Ok(())
    }

    fn command_stream(&mut self, id: u32) -> Result<&mut Stream, StreamError> {
        if self.state != State::Open {
            return Err(StreamError::NotOpen);
        }
        self.stream_mut(id)
            .filter(|s| s.reset_pending.is_none())
            .ok_or(StreamError::UnknownStream)
    }

    /// Sends a prefix of `data` on stream `id` (as much as the credit and
    /// [`MAX_DATA_CHUNK`] allow), writing the frame(s) into `buf`. If the
    /// stream's accepting window update is still queued it is written first,
    /// so the peer always sees the acceptance before data.
    pub fn send_data(&mut self, id: u32, data: &[u8], buf: &mut [u8]) -> Result<Sent, StreamError> {
        let s = *self.command_stream(id)?;
        if !s.accepted {
            return Err(StreamError::NotAccepted);
        }
        if s.send != SendSide::Open {
            return Err(StreamError::SendClosed);
        }
        let credit = usize::try_from(s.send_credit).unwrap_or(usize::MAX);
        let n = data.len().min(credit).min(MAX_DATA_CHUNK);
        if n == 0 && !data.is_empty() {
            return Err(StreamError::Blocked);
        }
        let chunk = data.get(..n).unwrap_or(&[]);
        let mut written = 0;
        if s.accept_pending {
            written = encode_frame(&window_update(&s), buf)?;
        }
        let frame = Message::StreamData(StreamData { id, data: chunk });
        let rest = buf.get_mut(written..).unwrap_or(&mut []);
        written += encode_frame(&frame, rest)?;
        // Both frames are encoded; only now change state.
        if let Some(s) = self.stream_mut(id) {
            if s.accept_pending {
                grant_sent(s);
            }
            // `n <= send_credit`, so the subtraction cannot underflow.
            s.send_credit -= u32::try_from(n).unwrap_or(s.send_credit);
        }
        Ok(Sent {
            consumed: n,
            written,
        })
    }

    /// Reports that `n` bytes received on `id` were delivered; credit is
    /// returned to the peer once half the window is consumed.
    pub fn consumed(&mut self, id: u32, n: u32) -> Result<(), StreamError> {
        let s = self.command_stream(id)?;
        if n > s.recv_unconsumed {
            return Err(StreamError::OverConsumed);
        }
        s.recv_unconsumed -= n;
        s.grant_pending += n;
        Ok(())
    }

    /// Half-closes stream `id`: no more data from us (a TCP FIN).
    pub fn finish(&mut self, id: u32) -> Result<(), StreamError> {
        let s = self.command_stream(id)?;
        if !s.accepted {
            return Err(StreamError::NotAccepted);
        }
        if s.send != SendSide::Open {
            return Err(StreamError::SendClosed);
        }
        s.send = SendSide::FinishQueued;
        Ok(())
    }

    /// Aborts stream `id` in both directions (refuse an incoming stream with
    /// `Refused`, `Denied` or `Unreachable`). Later frames for it are ignored.
    pub fn reset(&mut self, id: u32, reason: CloseReason) -> Result<(), StreamError> {
        if reason == CloseReason::Finished {
            return Err(StreamError::FinishedIsNotReset);
        }
        let s = self.command_stream(id)?;
        s.reset_pending = Some(reason);
        Ok(())
    }

    /// Ends the session: queues a goodbye, after which nothing is sent.
    pub fn close(&mut self, reason: GoodbyeReason) {
        match self.state {
            State::Closing(_) | State::Closed => {}
            State::Handshaking | State::Open => {
                self.state = State::Closing(CloseFrame::Goodbye(reason));
            }
        }
    }
}

fn window_update(s: &Stream) -> Message<'static> {
    Message::WindowUpdate(WindowUpdate {
        id: s.id,
        credit: s.grant_pending,
    })
}

fn grant_sent(s: &mut Stream) {
    // `recv_remaining + recv_unconsumed + grant_pending` never exceeds the
    // window, so this cannot overflow; saturate anyway.
    s.recv_remaining = s.recv_remaining.saturating_add(s.grant_pending);
    s.grant_pending = 0;
    s.accept_pending = false;
}
