//! The tunnel state machine driven as a gateway/node pair over in-memory
//! pipes with a virtual clock (quinn's `Pair` pattern): no sockets, no
//! real time.

use core::time::Duration;

use meshgate_core::time::UnixTime;
use meshgate_core::wire::*;
use proptest::prelude::*;

const CAP: usize = 8;

/// An owned copy of an [`Event`], so tests can keep it after the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Connected(Option<UnixTime>, u16),
    Opened(u32, String, u16),
    Accepted(u32, u32),
    Credit(u32, u32),
    Data(u32, Vec<u8>),
    Finished(u32),
    Reset(u32, CloseReason),
    Control(&'static str),
    Revoked(RevocationReason),
    Goodbye(GoodbyeReason),
    PeerError(ErrorCode),
    TimedOut,
}

fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Connected {
            peer_time,
            peer_max_streams,
        } => Ev::Connected(peer_time, peer_max_streams),
        Event::StreamOpened { id, target } => {
            Ev::Opened(id, target.service().host.to_owned(), target.service().port)
        }
        Event::StreamAccepted { id, credit } => Ev::Accepted(id, credit),
        Event::Credit { id, credit } => Ev::Credit(id, credit),
        Event::Data { id, data } => Ev::Data(id, data.to_vec()),
        Event::StreamFinished { id } => Ev::Finished(id),
        Event::StreamReset { id, reason } => Ev::Reset(id, reason),
        Event::Control(m) => Ev::Control(m.name()),
        Event::Revoked(r) => Ev::Revoked(r.reason),
        Event::PeerGoodbye(r) => Ev::Goodbye(r),
        Event::PeerError(e) => Ev::PeerError(e.code),
        Event::TimedOut => Ev::TimedOut,
    }
}

struct End {
    s: Session<CAP>,
    /// Bytes on their way to the other end.
    out: Vec<u8>,
    events: Vec<Ev>,
    errors: Vec<SessionError>,
    /// Frames this end received, by message name.
    seen: Vec<&'static str>,
}

impl End {
    fn new(cfg: SessionConfig, wall: Option<UnixTime>) -> Self {
        End {
            s: Session::new(cfg, Instant::from_millis(0), wall),
            out: Vec::new(),
            events: Vec::new(),
            errors: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn flush(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut buf = [0u8; 64];
        while let Some(n) = self.s.poll_transmit(now, &mut buf).unwrap() {
            self.out.extend_from_slice(&buf[..n]);
            any = true;
        }
        any
    }

    fn deliver(&mut self, now: Instant, bytes: &[u8]) {
        let mut input = bytes;
        while let Some((msg, used)) = parse_frame(input).expect("peer sent a valid frame") {
            self.seen.push(msg.name());
            match self.s.handle_message(now, msg) {
                Ok(Some(ev)) => self.events.push(own(ev)),
                Ok(None) => {}
                Err(e) => self.errors.push(e),
            }
            input = &input[used..];
        }
        assert!(input.is_empty());
    }

    fn take_events(&mut self) -> Vec<Ev> {
        core::mem::take(&mut self.events)
    }
}

struct Pair {
    now: Instant,
    gw: End,
    node: End,
    /// Drop everything the node sends (a silent or dead node).
    node_mute: bool,
}

impl Pair {
    fn new(gw_cfg: SessionConfig, node_cfg: SessionConfig) -> Self {
        Pair {
            now: Instant::from_millis(0),
            gw: End::new(gw_cfg, Some(UnixTime::from_secs(1_750_000_000))),
            node: End::new(node_cfg, None),
            node_mute: false,
        }
    }

    fn connected() -> Self {
        let mut p = Pair::new(
            SessionConfig::new(Role::Gateway),
            SessionConfig::new(Role::Node),
        );
        p.drive();
        assert_eq!(
            p.gw.take_events(),
            [Ev::Connected(
                None,
                SessionConfig::new(Role::Node).max_incoming_streams
            )]
        );
        assert_eq!(
            p.node.take_events(),
            [Ev::Connected(Some(UnixTime::from_secs(1_750_000_000)), 4)]
        );
        p
    }

    /// Moves frames both ways until nothing is left to send.
    fn drive(&mut self) {
        loop {
            let a = self.gw.flush(self.now);
            let b = self.node.flush(self.now);
            let to_node = core::mem::take(&mut self.gw.out);
            let to_gw = core::mem::take(&mut self.node.out);
            self.node.deliver(self.now, &to_node);
            if !self.node_mute {
                self.gw.deliver(self.now, &to_gw);
            }
            if !a && !b && to_node.is_empty() && to_gw.is_empty() {
                break;
            }
        }
    }

    /// Advances the virtual clock to `t`, firing timeouts on the way.
    fn advance_to(&mut self, t: Instant) {
        loop {
            let next = [self.gw.s.poll_timeout(), self.node.s.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|d| *d <= t)
                .min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            for end in [&mut self.gw, &mut self.node] {
                if end.s.poll_timeout().is_some_and(|d| d <= self.now)
                    && let Some(ev) = end.s.handle_timeout(self.now)
                {
                    end.events.push(own(ev));
                }
            }
            self.drive();
        }
        self.now = t;
        self.drive();
    }

    fn advance(&mut self, d: Duration) {
        self.advance_to(self.now.saturating_add(d));
    }

    /// The node opens a stream to details:9080; the gateway accepts it.
    fn open_accepted(&mut self) -> u32 {
        let mut buf = [0u8; 128];
        let (id, n) = self
            .node
            .s
            .open_stream(
                StreamTarget::ToMesh(MeshTarget {
                    host: "details",
                    port: 9080,
                }),
                &mut buf,
            )
            .unwrap();
        self.node.out.extend_from_slice(&buf[..n]);
        self.drive();
        assert_eq!(
            self.gw.take_events(),
            [Ev::Opened(id, "details".into(), 9080)]
        );
        self.gw.s.accept(id).unwrap();
        self.drive();
        assert_eq!(self.node.take_events(), [Ev::Accepted(id, 8192)]);
        id
    }
}

fn send(end: &mut End, id: u32, data: &[u8]) -> Result<Sent, StreamError> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let sent = end.s.send_data(id, data, &mut buf)?;
    end.out.extend_from_slice(&buf[..sent.written]);
    Ok(sent)
}

/// Feeds a message straight into an end, as if the peer had sent it.
fn inject(end: &mut End, now: Instant, msg: Message<'_>) -> Result<Option<Ev>, SessionError> {
    end.s.handle_message(now, msg).map(|e| e.map(own))
}

/// The `Error` frame an end queued after a protocol violation.
fn error_frame(end: &mut End, now: Instant) -> ErrorCode {
    let mut buf = [0u8; 256];
    let n = end.s.poll_transmit(now, &mut buf).unwrap().unwrap();
    match parse_frame(&buf[..n]).unwrap().unwrap().0 {
        Message::Error(e) => e.code,
        other => panic!("expected Error, got {other:?}"),
    }
}

#[test]
fn hello_exchange_connects_both_sides() {
    let p = Pair::connected();
    assert!(p.gw.s.is_open() && p.node.s.is_open());
    assert_eq!(p.gw.seen, ["Hello"]);
}

#[test]
fn anything_before_hello_is_a_protocol_error() {
    let mut gw = End::new(SessionConfig::new(Role::Gateway), None);
    let now = Instant::from_millis(1);
    let mut buf = [0u8; 64];
    gw.s.poll_transmit(now, &mut buf).unwrap(); // our hello
    assert_eq!(
        inject(&mut gw, now, Message::Ping(1)),
        Err(SessionError::HelloExpected)
    );
    assert_eq!(error_frame(&mut gw, now), ErrorCode::Protocol);
    assert!(gw.s.is_closed());
    assert_eq!(gw.s.poll_transmit(now, &mut buf), Ok(None));
}

#[test]
fn hello_with_wrong_version_or_role_is_rejected() {
    let now = Instant::from_millis(0);
    let hello = |version, role| {
        Message::Hello(Hello {
            version,
            role,
            time: None,
            max_streams: 1,
            idle_timeout_ms: 5000,
        })
    };
    let mut node = End::new(SessionConfig::new(Role::Node), None);
    assert_eq!(
        inject(&mut node, now, hello(PROTOCOL_VERSION + 1, Role::Gateway)),
        Err(SessionError::VersionMismatch(PROTOCOL_VERSION + 1))
    );
    node.s.poll_transmit(now, &mut [0u8; 64]).unwrap(); // its own hello first
    assert_eq!(error_frame(&mut node, now), ErrorCode::UnsupportedVersion);

    let mut node = End::new(SessionConfig::new(Role::Node), None);
    assert_eq!(
        inject(&mut node, now, hello(PROTOCOL_VERSION, Role::Node)),
        Err(SessionError::SameRole)
    );

    let mut node = End::new(SessionConfig::new(Role::Node), None);
    assert!(inject(&mut node, now, hello(PROTOCOL_VERSION, Role::Gateway)).is_ok());
    assert_eq!(
        inject(&mut node, now, hello(PROTOCOL_VERSION, Role::Gateway)),
        Err(SessionError::DuplicateHello)
    );
}

#[test]
fn control_messages_are_checked_against_the_sender_role() {
    let mut p = Pair::connected();
    let now = p.now;
    let csr = Message::RenewRequest(RenewRequest { csr_der: b"csr" });
    assert_eq!(
        inject(&mut p.gw, now, csr),
        Ok(Some(Ev::Control("RenewRequest")))
    );
    let ack = Message::ConfigAck(ConfigAck { version: 3 });
    assert_eq!(
        inject(&mut p.gw, now, ack),
        Ok(Some(Ev::Control("ConfigAck")))
    );
    // A node must never accept what only a node sends.
    assert_eq!(
        inject(&mut p.node, now, csr),
        Err(SessionError::WrongSender)
    );
    assert_eq!(error_frame(&mut p.node, now), ErrorCode::Protocol);
}

#[test]
fn gateway_only_messages_reach_the_node_application() {
    let mut p = Pair::connected();
    let cfg = Message::ConfigPush(ConfigPush {
        version: 1,
        listeners: BoundedList::new(),
        exposed: BoundedList::new(),
    });
    assert_eq!(
        inject(&mut p.node, p.now, cfg),
        Ok(Some(Ev::Control("ConfigPush")))
    );
    // And a gateway refuses them.
    assert_eq!(
        inject(&mut p.gw, p.now, cfg),
        Err(SessionError::WrongSender)
    );
}

#[test]
fn revocation_closes_the_node_session() {
    let mut p = Pair::connected();
    let id = p.open_accepted();
    let rev = Message::Revoked(Revoked {
        reason: RevocationReason::KeyCompromise,
        detail: "",
    });
    assert_eq!(
        inject(&mut p.node, p.now, rev),
        Ok(Some(Ev::Revoked(RevocationReason::KeyCompromise)))
    );
    assert!(p.node.s.is_closed());
    assert_eq!(send(&mut p.node, id, b"x"), Err(StreamError::NotOpen));
    assert_eq!(inject(&mut p.node, p.now, Message::Ping(1)), Ok(None));
    assert_eq!(p.node.s.poll_transmit(p.now, &mut [0u8; 64]), Ok(None));
}

#[test]
fn stream_open_accept_data_and_credit() {
    let mut p = Pair::connected();
    let id = p.open_accepted();
    assert_eq!(id, 1, "the node opens odd ids from 1");
    assert_eq!(p.node.s.send_credit(id), Some(8192));
    let sent = send(&mut p.node, id, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(sent.consumed, 18);
    p.drive();
    assert_eq!(
        p.gw.take_events(),
        [Ev::Data(id, b"GET / HTTP/1.1\r\n\r\n".to_vec())]
    );
    assert_eq!(p.node.s.send_credit(id), Some(8192 - 18));

    // Fill the window: chunks are capped at MAX_DATA_CHUNK.
    let big = vec![7u8; 10_000];
    let mut total = 18usize;
    loop {
        match send(&mut p.node, id, &big) {
            Ok(s) => {
                assert!(s.consumed <= MAX_DATA_CHUNK);
                total += s.consumed;
            }
            Err(StreamError::Blocked) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(total, 8192);
    p.drive();
    let received: usize =
        p.gw.take_events()
            .iter()
            .map(|e| match e {
                Ev::Data(_, d) => d.len(),
                other => panic!("{other:?}"),
            })
            .sum();
    assert_eq!(received, 8192 - 18);

    // Consuming less than half the window returns no credit yet...
    p.gw.s.consumed(id, 4000).unwrap();
    p.drive();
    assert!(p.node.take_events().is_empty());
    // ...crossing half the window does, in one update.
    p.gw.s.consumed(id, 96).unwrap();
    p.drive();
    assert_eq!(p.node.take_events(), [Ev::Credit(id, 4096)]);
    assert_eq!(p.gw.s.consumed(id, 10_000), Err(StreamError::OverConsumed));
}

#[test]
fn acceptor_data_follows_its_acceptance_in_order() {
    let mut p = Pair::connected();
    let mut buf = [0u8; 128];
    let (id, n) = p
        .node
        .s
        .open_stream(
            StreamTarget::ToMesh(MeshTarget {
                host: "details",
                port: 9080,
            }),
            &mut buf,
        )
        .unwrap();
    p.node.out.extend_from_slice(&buf[..n]);
    p.drive();
    p.gw.take_events();
    // The gateway cannot send before accepting...
    assert_eq!(send(&mut p.gw, id, b"early"), Err(StreamError::NotAccepted));
    p.gw.s.accept(id).unwrap();
    assert_eq!(p.gw.s.accept(id), Err(StreamError::AlreadyAccepted));
    // ...and after accepting, its first data carries the acceptance first.
    send(&mut p.gw, id, b"HTTP/1.1 200 OK\r\n").unwrap();
    p.drive();
    assert_eq!(
        p.node.take_events(),
        [
            Ev::Accepted(id, 8192),
            Ev::Data(id, b"HTTP/1.1 200 OK\r\n".to_vec())
        ]
    );
    // The acceptance was not sent twice.
    assert_eq!(
        p.node.seen.iter().filter(|m| **m == "WindowUpdate").count(),
        1
    );
}

#[test]
fn data_beyond_credit_is_a_flow_control_error() {
    let mut p = Pair::connected();
    let id = p.open_accepted();
    let chunk = [0u8; MAX_DATA_CHUNK];
    // The node granted the gateway 8192 bytes in StreamOpen.
    for _ in 0..4 {
        assert!(
            inject(
                &mut p.node,
                p.now,
                Message::StreamData(StreamData { id, data: &chunk })
            )
            .is_ok()
        );
    }
    assert_eq!(
        inject(
            &mut p.node,
            p.now,
            Message::StreamData(StreamData { id, data: b"1" })
        ),
        Err(SessionError::FlowControl)
    );
    assert_eq!(error_frame(&mut p.node, p.now), ErrorCode::FlowControl);
}

#[test]
fn data_to_an_unaccepted_stream_is_a_flow_control_error() {
    let mut p = Pair::connected();
    let mut buf = [0u8; 128];
    let (id, n) = p
        .node
        .s
        .open_stream(
            StreamTarget::ToMesh(MeshTarget {
                host: "details",
                port: 9080,
            }),
            &mut buf,
        )
        .unwrap();
    p.node.out.extend_from_slice(&buf[..n]);
    p.drive();
    // The gateway has not accepted, so the node has no credit to use.
    assert_eq!(
        inject(
            &mut p.gw,
            p.now,
            Message::StreamData(StreamData { id, data: b"x" })
        ),
        Err(SessionError::FlowControl)
    );
    // And the node may not receive data on its stream before acceptance.
    let mut p = Pair::connected();
    let (id, n) = p
        .node
        .s
        .open_stream(
            StreamTarget::ToMesh(MeshTarget {
                host: "details",
                port: 9080,
            }),
            &mut buf,
        )
        .unwrap();
    p.node.out.extend_from_slice(&buf[..n]);
    p.drive();
    assert_eq!(
        inject(
            &mut p.node,
            p.now,
            Message::StreamData(StreamData { id, data: b"x" })
        ),
        Err(SessionError::NotAccepted)
    );
}

#[test]
fn credit_overflow_is_an_error() {
    let mut p = Pair::connected();
    let id = p.open_accepted();
    assert_eq!(
        inject(
            &mut p.node,
            p.now,
            Message::WindowUpdate(WindowUpdate {
                id,
                credit: u32::MAX
            })
        ),
        Err(SessionError::CreditOverflow)
    );
}

#[test]
fn stream_id_rules() {
    let mut p = Pair::connected();
    let open = |id| {
        Message::StreamOpen(StreamOpen {
            id,
            target: StreamTarget::ToMesh(MeshTarget {
                host: "details",
                port: 9080,
            }),
            initial_credit: 100,
        })
    };
    // The node opens odd ids only.
    assert_eq!(
        inject(&mut p.gw, p.now, open(2)),
        Err(SessionError::StreamIdViolation)
    );
    let mut p = Pair::connected();
    assert!(inject(&mut p.gw, p.now, open(5)).is_ok());
    // Ids strictly increase: 3 after 5, or 5 again, is a violation.
    assert_eq!(
        inject(&mut p.gw, p.now, open(3)),
        Err(SessionError::StreamIdViolation)
    );
    let mut p = Pair::connected();
    assert!(inject(&mut p.gw, p.now, open(5)).is_ok());
    assert_eq!(
        inject(&mut p.gw, p.now, open(5)),
        Err(SessionError::StreamIdViolation)
    );
    // A ToDevice stream comes only from the gateway.
    let mut p = Pair::connected();
    let dev = Message::StreamOpen(StreamOpen {
        id: 1,
        target: StreamTarget::ToDevice(MeshTarget {
            host: "plc-1.factory",
            port: 502,
        }),
        initial_credit: 100,
    });
    assert_eq!(
        inject(&mut p.gw, p.now, dev),
        Err(SessionError::WrongSender)
    );
    let mut buf = [0u8; 128];
    assert_eq!(
        p.node.s.open_stream(
            StreamTarget::ToDevice(MeshTarget { host: "x", port: 1 }),
            &mut buf
        ),
        Err(StreamError::WrongDirection)
    );
    // The gateway's own ids are even.
    let mut p = Pair::connected();
    let (gid, n) =
        p.gw.s
            .open_stream(
                StreamTarget::ToDevice(MeshTarget {
                    host: "plc-1.factory",
                    port: 502,
                }),
                &mut buf,
            )
            .unwrap();
    assert_eq!(gid, 2);
    p.gw.out.extend_from_slice(&buf[..n]);
    p.drive();
    assert_eq!(
        p.node.take_events(),
        [Ev::Opened(2, "plc-1.factory".into(), 502)]
    );
}

#[test]
fn frames_for_unknown_streams_are_errors_but_stale_ones_are_ignored() {
    let mut p = Pair::connected();
    // Never opened.
    assert_eq!(
        inject(
            &mut p.gw,
            p.now,
            Message::WindowUpdate(WindowUpdate { id: 9, credit: 1 })
        ),
        Err(SessionError::UnknownStream)
    );
    let mut p = Pair::connected();
    let id = p.open_accepted();
    p.gw.s.reset(id, CloseReason::Denied).unwrap();
    // Data crossing the reset in flight is ignored, not an error.
    assert_eq!(
        inject(
            &mut p.gw,
            p.now,
            Message::StreamData(StreamData { id, data: b"late" })
        ),
        Ok(None)
    );
    p.drive();
    assert_eq!(p.node.take_events(), [Ev::Reset(id, CloseReason::Denied)]);
    assert_eq!(p.gw.s.stream_count(), 0);
    assert_eq!(p.node.s.stream_count(), 0);
    assert_eq!(
        inject(
            &mut p.gw,
            p.now,
            Message::StreamData(StreamData { id, data: b"later" })
        ),
        Ok(None)
    );
    assert!(p.gw.s.is_open());
}

#[test]
fn finishing_both_directions_frees_the_stream() {
    let mut p = Pair::connected();
    let id = p.open_accepted();
    p.node.s.finish(id).unwrap();
    assert_eq!(p.node.s.finish(id), Err(StreamError::SendClosed));
    p.drive();
    assert_eq!(p.gw.take_events(), [Ev::Finished(id)]);
    assert_eq!(send(&mut p.node, id, b"x"), Err(StreamError::SendClosed));
    // Half-closed: the gateway can still answer.
    send(&mut p.gw, id, b"response").unwrap();
    p.gw.s.finish(id).unwrap();
    p.drive();
    assert_eq!(
        p.node.take_events(),
        [Ev::Data(id, b"response".to_vec()), Ev::Finished(id)]
    );
    assert_eq!(p.gw.s.stream_count(), 0);
    assert_eq!(p.node.s.stream_count(), 0);
    // A second finish or data after it is a violation.
    let mut p = Pair::connected();
    let id = p.open_accepted();
    let fin = Message::StreamClose(StreamClose {
        id,
        reason: CloseReason::Finished,
    });
    assert!(inject(&mut p.gw, p.now, fin).is_ok());
    assert_eq!(
        inject(&mut p.gw, p.now, fin),
        Err(SessionError::AfterFinish)
    );
    let mut p = Pair::connected();
    let id = p.open_accepted();
    assert!(inject(&mut p.gw, p.now, fin).is_ok());
    assert_eq!(
        inject(
            &mut p.gw,
            p.now,
            Message::StreamData(StreamData { id, data: b"x" })
        ),
        Err(SessionError::AfterFinish)
    );
}

#[test]
fn refused_streams_reach_the_opener_and_free_slots() {
    let mut p = Pair::connected();
    let mut buf = [0u8; 128];
    let (id, n) = p
        .node
        .s
        .open_stream(
            StreamTarget::ToMesh(MeshTarget {
                host: "nope",
                port: 1,
            }),
            &mut buf,
        )
        .unwrap();
    p.node.out.extend_from_slice(&buf[..n]);
    p.drive();
    p.gw.take_events();
    p.gw.s.reset(id, CloseReason::Refused).unwrap();
    assert_eq!(
        p.gw.s.reset(id, CloseReason::Refused),
        Err(StreamError::UnknownStream)
    );
    assert_eq!(
        p.gw.s.reset(id, CloseReason::Finished),
        Err(StreamError::FinishedIsNotReset)
    );
    p.drive();
    assert_eq!(p.node.take_events(), [Ev::Reset(id, CloseReason::Refused)]);
    assert_eq!(p.node.s.stream_count(), 0);
}

#[test]
fn concurrent_stream_limits() {
    let mut gw_cfg = SessionConfig::new(Role::Gateway);
    gw_cfg.max_incoming_streams = 2;
    let mut p = Pair::new(gw_cfg, SessionConfig::new(Role::Node));
    p.drive();
    assert_eq!(
        p.node.take_events(),
        [Ev::Connected(Some(UnixTime::from_secs(1_750_000_000)), 2)]
    );
    let target = StreamTarget::ToMesh(MeshTarget {
        host: "details",
        port: 9080,
    });
    let mut buf = [0u8; 128];
    for _ in 0..2 {
        let (_, n) = p.node.s.open_stream(target, &mut buf).unwrap();
        p.node.out.extend_from_slice(&buf[..n]);
    }
    let a = 1;
    p.drive();
    // The gateway announced 2: the node refuses to open a third itself.
    assert_eq!(
        p.node.s.open_stream(target, &mut buf),
        Err(StreamError::StreamLimit)
    );
    // A misbehaving node that opens it anyway is cut off.
    let mut p2 = Pair::new(gw_cfg, SessionConfig::new(Role::Node));
    p2.drive();
    for id in [1, 3] {
        let open = Message::StreamOpen(StreamOpen {
            id,
            target,
            initial_credit: 1,
        });
        assert!(inject(&mut p2.gw, p2.now, open).is_ok());
    }
    let third = Message::StreamOpen(StreamOpen {
        id: 5,
        target,
        initial_credit: 1,
    });
    assert_eq!(
        inject(&mut p2.gw, p2.now, third),
        Err(SessionError::StreamLimit)
    );
    assert_eq!(error_frame(&mut p2.gw, p2.now), ErrorCode::StreamLimit);
    // Closing one stream makes room again.
    p.node.s.reset(a, CloseReason::Cancelled).unwrap();
    p.drive();
    assert_eq!(p.gw.s.stream_count(), 1);
    assert!(p.node.s.open_stream(target, &mut buf).is_ok());
}

#[test]
fn own_streams_cannot_take_the_slots_reserved_for_the_peer() {
    let mut node_cfg = SessionConfig::new(Role::Node);
    node_cfg.max_incoming_streams = 6; // of CAP = 8 slots
    let mut gw_cfg = SessionConfig::new(Role::Gateway);
    gw_cfg.max_incoming_streams = 100;
    let mut p = Pair::new(gw_cfg, node_cfg);
    p.drive();
    let target = StreamTarget::ToMesh(MeshTarget {
        host: "details",
        port: 9080,
    });
    let mut buf = [0u8; 128];
    assert!(p.node.s.open_stream(target, &mut buf).is_ok());
    assert!(p.node.s.open_stream(target, &mut buf).is_ok());
    assert_eq!(
        p.node.s.open_stream(target, &mut buf),
        Err(StreamError::StreamLimit)
    );
    // The announced limit is clamped to the table capacity.
    let mut cfg = SessionConfig::new(Role::Gateway);
    cfg.max_incoming_streams = 1000;
    assert_eq!(
        Session::<CAP>::new(cfg, Instant::default(), None)
            .config()
            .max_incoming_streams,
        CAP as u16
    );
}

#[test]
fn pings_keep_an_idle_tunnel_alive_and_measure_rtt() {
    let mut p = Pair::connected();
    // Ten minutes of silence from the applications: heartbeats flow.
    p.advance(Duration::from_secs(600));
    assert!(p.gw.s.is_open() && p.node.s.is_open());
    assert!(p.gw.seen.contains(&"Ping") || p.gw.seen.contains(&"Pong"));
    assert!(p.node.take_events().is_empty());
    // The in-memory pipe delivers instantly.
    assert_eq!(p.gw.s.rtt(), Some(Duration::ZERO));
}

#[test]
fn rtt_is_measured_from_ping_to_pong() {
    let mut p = Pair::connected();
    let ping_at = p.gw.s.poll_timeout().unwrap();
    assert_eq!(
        ping_at,
        Instant::from_millis(10_000),
        "ping after 10 s of silence"
    );
    assert_eq!(p.gw.s.handle_timeout(ping_at), None);
    let mut buf = [0u8; 64];
    let n = p.gw.s.poll_transmit(ping_at, &mut buf).unwrap().unwrap();
    let Message::Ping(nonce) = parse_frame(&buf[..n]).unwrap().unwrap().0 else {
        panic!()
    };
    // The pong arrives 35 ms later; a stale nonce is ignored.
    let later = ping_at.saturating_add(Duration::from_millis(35));
    assert_eq!(inject(&mut p.gw, later, Message::Pong(nonce + 1)), Ok(None));
    assert_eq!(p.gw.s.rtt(), None);
    assert_eq!(inject(&mut p.gw, later, Message::Pong(nonce)), Ok(None));
    assert_eq!(p.gw.s.rtt(), Some(Duration::from_millis(35)));
}

#[test]
fn a_silent_peer_times_out_with_a_goodbye() {
    let mut p = Pair::connected();
    p.node_mute = true;
    p.advance(Duration::from_secs(29));
    assert!(p.gw.s.is_open());
    p.advance(Duration::from_secs(2));
    assert_eq!(p.gw.take_events(), [Ev::TimedOut]);
    assert!(p.gw.s.is_closed());
    assert_eq!(
        p.node.take_events(),
        [Ev::Goodbye(GoodbyeReason::IdleTimeout)]
    );
    assert!(p.node.s.is_closed());
    assert_eq!(p.gw.s.poll_timeout(), None);
}

#[test]
fn a_peer_that_never_says_hello_times_out() {
    let mut gw = End::new(SessionConfig::new(Role::Gateway), None);
    assert_eq!(gw.s.poll_timeout(), Some(Instant::from_millis(30_000)));
    assert_eq!(gw.s.handle_timeout(Instant::from_millis(29_999)), None);
    assert_eq!(
        gw.s.handle_timeout(Instant::from_millis(30_000)).map(own),
        Some(Ev::TimedOut)
    );
}

#[test]
fn poll_timeout_never_lies_in_the_past_after_handling() {
    let mut p = Pair::connected();
    for step in 0..200u64 {
        p.advance(Duration::from_millis(997 * step % 7000));
        for end in [&p.gw, &p.node] {
            if let Some(t) = end.s.poll_timeout() {
                assert!(
                    t > p.now || end.s.is_closed(),
                    "deadline {t:?} at {:?}",
                    p.now
                );
            }
        }
    }
}

#[test]
fn graceful_close_sends_goodbye() {
    let mut p = Pair::connected();
    p.node.s.close(GoodbyeReason::Restart);
    p.drive();
    assert_eq!(p.gw.take_events(), [Ev::Goodbye(GoodbyeReason::Restart)]);
    assert!(p.gw.s.is_closed() && p.node.s.is_closed());
}

#[test]
fn small_transmit_buffer_keeps_the_frame_queued() {
    let mut node = End::new(SessionConfig::new(Role::Node), None);
    let mut tiny = [0u8; 4];
    assert!(matches!(
        node.s.poll_transmit(Instant::default(), &mut tiny),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    let mut buf = [0u8; 64];
    let n = node
        .s
        .poll_transmit(Instant::default(), &mut buf)
        .unwrap()
        .unwrap();
    assert!(matches!(
        parse_frame(&buf[..n]).unwrap().unwrap().0,
        Message::Hello(_)
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Open,
    Send(usize, usize),
    Consume(usize),
    Finish(usize),
    Reset(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Open),
        6 => (0usize..4, 1usize..5000).prop_map(|(s, n)| Op::Send(s, n)),
        4 => (0usize..4).prop_map(Op::Consume),
        1 => (0usize..4).prop_map(Op::Finish),
        1 => (0usize..4).prop_map(Op::Reset),
        2 => (0u64..20_000).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Correct use never trips a protocol error; every byte accepted by
    /// `send_data` arrives once, in order; credit is never exceeded.
    #[test]
    fn legitimate_traffic_never_violates_the_protocol(ops in proptest::collection::vec(op(), 1..80)) {
        let mut p = Pair::connected();
        let mut streams: Vec<u32> = Vec::new();
        let mut sent: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut counter = 0u8;
        for op in ops {
            match op {
                Op::Open => {
                    let mut buf = [0u8; 128];
                    let t = StreamTarget::ToMesh(MeshTarget { host: "details", port: 9080 });
                    if let Ok((id, n)) = p.node.s.open_stream(t, &mut buf) {
                        p.node.out.extend_from_slice(&buf[..n]);
                        streams.push(id);
                    }
                }
                Op::Send(i, n) => {
                    if let Some(&id) = streams.get(i) {
                        let data: Vec<u8> = (0..n).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                        if let Ok(s) = send(&mut p.node, id, &data) {
                            prop_assert!(s.consumed <= MAX_DATA_CHUNK);
                            sent.entry(id).or_default().extend_from_slice(&data[..s.consumed]);
                        }
                    }
                }
                Op::Consume(i) => {
                    if let Some(&id) = streams.get(i) {
                        let pending = got.get(&id).map_or(0, Vec::len) as u32;
                        let _ = p.gw.s.consumed(id, pending.min(3000));
                    }
                }
                Op::Finish(i) => { if let Some(&id) = streams.get(i) { let _ = p.node.s.finish(id); } }
                Op::Reset(i) => {
                    if let Some(&id) = streams.get(i)
                        && p.node.s.reset(id, CloseReason::Cancelled).is_ok()
                    {
                        sent.remove(&id);
                        got.remove(&id);
                    }
                }
                Op::Wait(ms) => p.advance(Duration::from_millis(ms)),
            }
            p.drive();
            for ev in p.gw.take_events() {
                match ev {
                    Ev::Opened(id, _, _) => p.gw.s.accept(id).unwrap(),
                    Ev::Data(id, d) if sent.contains_key(&id) => {
                        got.entry(id).or_default().extend_from_slice(&d);
                    }
                    _ => {}
                }
            }
            p.drive();
            p.node.take_events();
            prop_assert!(p.gw.errors.is_empty(), "gateway: {:?}", p.gw.errors);
            prop_assert!(p.node.errors.is_empty(), "node: {:?}", p.node.errors);
            prop_assert!(p.gw.s.is_open() && p.node.s.is_open());
        }
        for (id, data) in &sent {
            prop_assert_eq!(got.get(id).map(Vec::as_slice).unwrap_or(&[]), data.as_slice());
        }
    }
}
