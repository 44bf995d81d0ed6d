//! The node's side of the tunnel, sans-IO: `core::wire`'s [`Session`] plus
//! what only the node does with it — enrollment, renewal, configuration,
//! revocation and a wall clock learned from the gateway.
//!
//! The caller feeds decoded frames ([`Tunnel::handle_message`]) and
//! timeouts, writes out whatever [`Tunnel::poll_transmit`] produces, and
//! acts on the returned [`TunnelEvent`]s: connect a device for a stream the
//! gateway opened, move stream data, persist credentials after
//! [`TunnelEvent::CertificateInstalled`], stop forwarding after
//! [`TunnelEvent::Revoked`]. Stream flow control, stream-id rules,
//! heartbeats and the idle timeout are the session's; this module only
//! adds the node's decisions on top.
//!
//! Connections come in two purposes. An **enrollment** connection (TLS
//! verifying the gateway, no client certificate yet) sends one
//! `EnrollRequest` with the one-time token and a CSR, installs the answer
//! and ends. An **operating** connection (mTLS) carries streams, config
//! pushes and renewals.

use core::fmt;
use core::time::Duration;

use meshgate_core::rotation::{Action, RenewalPolicy, Rotation, Validity};
use meshgate_core::time::UnixTime;
use meshgate_core::wire::session::{Event, Instant, Session, SessionConfig, SessionError};
use meshgate_core::wire::{
    CloseReason, ConfigAck, DeviceAddr, EncodeError, EnrollRequest, ErrorMsg, GoodbyeReason,
    MeshTarget, Message, RenewRequest, Revoked, Role, StreamTarget, encode_frame,
};
use rand_core::CryptoRngCore;

use crate::config::{ConfigError, NodeConfig};
use crate::creds::{Credentials, CredsError};
use crate::enroll::{CSR_BUF_LEN, CsrError, CsrFields, NodeKey, build_csr};

/// Concurrent streams per tunnel (both directions). Each costs a session
/// slot and, in the runtime, a bridge slot with socket buffers.
pub const MAX_STREAMS: usize = 4;

/// Of [`MAX_STREAMS`], how many the gateway may open (mesh clients calling
/// exposed devices); the rest are for legacy clients of the node. Without
/// this split the session would hand every slot to the gateway and the
/// node could open none.
pub const MAX_GATEWAY_STREAMS: u16 = 2;

/// The node's session tunables: the stream split above and a receive
/// window equal to the bridge's to-device ring.
pub const fn node_session_config() -> SessionConfig {
    let mut cfg = SessionConfig::new(Role::Node);
    cfg.max_incoming_streams = MAX_GATEWAY_STREAMS;
    cfg.recv_window = crate::bridge::STREAM_WINDOW;
    cfg
}

/// How long the node waits for a `Certificate` answer before counting the
/// request as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Purpose {
    /// First contact: trade the token and a CSR for a certificate.
    Enroll,
    /// Normal operation over mTLS.
    Operate,
}

/// The node state a tunnel reads and changes.
pub struct NodeState {
    /// Persisted credentials.
    pub creds: Credentials,
    /// Applied forwarding rules.
    pub config: NodeConfig,
    /// Renewal schedule of the current certificate.
    pub rotation: Rotation,
    /// Set by a `Revoked` message: never reconnect with this identity.
    pub revoked: bool,
}

impl NodeState {
    /// State for loaded credentials; schedules renewal of an installed
    /// certificate as if it had just been issued (jitter from `rand`).
    pub fn new(
        creds: Credentials,
        policy: RenewalPolicy,
        now: Option<UnixTime>,
        rand: u32,
    ) -> Result<Self, TunnelError> {
        let mut rotation = Rotation::new(policy).map_err(|_| TunnelError::BadPolicy)?;
        if let (Some((nb, na)), Some(now)) = (creds.validity(), now)
            && let Ok(v) = Validity::new(nb, na)
        {
            // An expired stored certificate is simply not scheduled: the
            // first poll then asks for renewal.
            let _ = rotation.renewed(now, v, rand);
        }
        Ok(NodeState {
            creds,
            config: NodeConfig::new(),
            rotation,
            revoked: false,
        })
    }
}

/// The validity a fresh certificate's renewal is scheduled on: from the
/// moment it was installed (`now`, the gateway's clock) rather than from
/// its `not_before`, which the CA backdates (a minute, for peers whose
/// clocks lag). On a short-lived certificate the backdating is a large
/// part of the stated lifetime: a 60 s certificate backdated by 60 s is
/// "half expired" when issued, and renewing at 50 % of the stated lifetime
/// would re-issue it at once, over and over. `None` when the certificate
/// is already expired at `now`.
fn schedule_from_issuance(stated: Validity, now: UnixTime) -> Option<Validity> {
    Validity::new(stated.not_before().max(now), stated.not_after()).ok()
}

/// What the application must act on.
#[expect(
    clippy::large_enum_variant,
    reason = "borrows the frame instead of copying it; lives on the stack briefly"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelEvent<'a> {
    /// The gateway's hello arrived; on an enrollment connection call
    /// [`Tunnel::send_enroll_request`] now.
    Connected,
    /// The gateway opened stream `id` to an exposed service; connect to
    /// `device`, then [`Session::accept`] (or reset with `Unreachable`).
    ConnectDevice {
        /// The stream.
        id: u32,
        /// The mesh service the gateway asked for.
        service: MeshTarget<'a>,
        /// The legacy endpoint configured for the service.
        device: DeviceAddr,
    },
    /// A stream event (accepted, credit, data, finished, reset).
    Stream(Event<'a>),
    /// A certificate was installed into `NodeState::creds`: persist them.
    /// On an enrollment connection the tunnel then says goodbye.
    CertificateInstalled,
    /// The gateway's certificate answer was refused; the old one stays.
    CertificateRejected(CertificateRejection),
    /// A configuration was applied (ack queued).
    ConfigApplied {
        /// The version now in force.
        version: u64,
    },
    /// A configuration push was refused; the previous rules stay.
    ConfigRejected(ConfigError),
    /// This node was revoked: forwarding stopped, do not reconnect.
    Revoked(Revoked<'a>),
    /// The tunnel ended (goodbye, error, idle timeout).
    Closed(CloseCause<'a>),
}

/// Why an issued certificate was not installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CertificateRejection {
    /// Expired, not newer than the current one, or empty validity.
    Schedule,
    /// Not for our key, or does not fit (see [`CredsError`]).
    Credentials(CredsError),
}

/// Why the tunnel closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause<'a> {
    /// The gateway said goodbye.
    Goodbye(GoodbyeReason),
    /// The gateway reported an error (e.g. an invalid token).
    PeerError(ErrorMsg<'a>),
    /// Nothing arrived within the idle timeout.
    TimedOut,
}

/// A failure the tunnel cannot continue from (reconnect after backoff),
/// or a refused local command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TunnelError {
    /// The gateway broke a protocol rule; an `Error` frame is queued.
    Protocol(SessionError),
    /// The gateway sent a certificate nobody asked for.
    UnsolicitedCertificate,
    /// A frame did not fit the output buffer.
    Encode(EncodeError),
    /// The CSR could not be built.
    Csr(CsrError),
    /// No token to enroll with, or the stored key is unusable.
    Credentials(CredsError),
    /// The session is not open or a request is already in flight.
    NotReady,
    /// The renewal policy is invalid.
    BadPolicy,
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::Protocol(e) => write!(f, "gateway broke the protocol: {e}"),
            TunnelError::UnsolicitedCertificate => {
                f.write_str("unsolicited certificate from gateway")
            }
            TunnelError::Encode(e) => write!(f, "frame encoding failed: {e}"),
            TunnelError::Csr(e) => write!(f, "CSR: {e}"),
            TunnelError::Credentials(e) => write!(f, "credentials: {e}"),
            TunnelError::NotReady => f.write_str("tunnel not ready for this request"),
            TunnelError::BadPolicy => f.write_str("invalid renewal policy"),
        }
    }
}

impl From<EncodeError> for TunnelError {
    fn from(e: EncodeError) -> Self {
        TunnelError::Encode(e)
    }
}

/// A certificate request in flight: the key it is for and when it left.
struct Pending {
    key: NodeKey,
    sent: Instant,
}

/// The node end of one tunnel connection.
pub struct Tunnel {
    session: Session<MAX_STREAMS>,
    purpose: Purpose,
    pending: Option<Pending>,
    ack_due: Option<u64>,
    /// Wall-clock time learned from the gateway's hello, anchored to the
    /// monotonic clock.
    wall: Option<(Instant, UnixTime)>,
}

impl Tunnel {
    /// A new connection at `now` (monotonic). `wall` is the node's own
    /// wall-clock time if it has a trustworthy one (usually not).
    pub fn new(purpose: Purpose, now: Instant, wall: Option<UnixTime>) -> Self {
        Tunnel {
            session: Session::new(node_session_config(), now, wall),
            purpose,
            pending: None,
            ack_due: None,
            wall: wall.map(|w| (now, w)),
        }
    }

    /// What this connection is for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The stream commands (`send_data`, `consumed`, `finish`, `reset`,
    /// `accept`) go straight to the session.
    pub fn session(&mut self) -> &mut Session<MAX_STREAMS> {
        &mut self.session
    }

    /// Wall-clock time at `now`, once learned.
    pub fn wall_time(&self, now: Instant) -> Option<UnixTime> {
        self.wall
            .map(|(at, wall)| wall.saturating_add(now.saturating_duration_since(at)))
    }

    /// True while a certificate request awaits its answer.
    pub fn request_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Feeds one decoded frame.
    pub fn handle_message<'a>(
        &mut self,
        now: Instant,
        msg: Message<'a>,
        state: &mut NodeState,
        rand: u32,
    ) -> Result<Option<TunnelEvent<'a>>, TunnelError> {
        let Some(event) = self
            .session
            .handle_message(now, msg)
            .map_err(TunnelError::Protocol)?
        else {
            return Ok(None);
        };
        Ok(match event {
            Event::Connected { peer_time, .. } => {
                if self.wall.is_none()
                    && let Some(t) = peer_time
                {
                    self.wall = Some((now, t));
                }
                Some(TunnelEvent::Connected)
            }
            Event::StreamOpened { id, target } => match target {
                StreamTarget::ToDevice(service) if !state.revoked => {
                    match state.config.device_for(&service) {
                        Some(device) => Some(TunnelEvent::ConnectDevice {
                            id,
                            service,
                            device,
                        }),
                        None => {
                            // Not an exposed service (or config not pushed
                            // yet): refuse, fail closed.
                            self.refuse(id);
                            None
                        }
                    }
                }
                _ => {
                    self.refuse(id);
                    None
                }
            },
            Event::Control(Message::Certificate(cert)) => {
                let pending = self
                    .pending
                    .take()
                    .ok_or(TunnelError::UnsolicitedCertificate)?;
                Some(self.install(now, &cert, pending.key, state, rand))
            }
            Event::Control(Message::ConfigPush(push)) => match state.config.apply(&push) {
                Ok(applied) => {
                    self.ack_due = Some(applied.version);
                    Some(TunnelEvent::ConfigApplied {
                        version: applied.version,
                    })
                }
                Err(e) => Some(TunnelEvent::ConfigRejected(e)),
            },
            // The session admits only gateway-sent control messages, and
            // the gateway sends no others.
            Event::Control(_) => None,
            Event::Revoked(r) => {
                state.revoked = true;
                state.config.clear();
                Some(TunnelEvent::Revoked(r))
            }
            Event::PeerGoodbye(reason) => Some(TunnelEvent::Closed(CloseCause::Goodbye(reason))),
            Event::PeerError(e) => Some(TunnelEvent::Closed(CloseCause::PeerError(e))),
            Event::TimedOut => Some(TunnelEvent::Closed(CloseCause::TimedOut)),
            ev @ (Event::StreamAccepted { .. }
            | Event::Credit { .. }
            | Event::Data { .. }
            | Event::StreamFinished { .. }
            | Event::StreamReset { .. }) => Some(TunnelEvent::Stream(ev)),
        })
    }

    fn refuse(&mut self, id: u32) {
        // The stream was just registered by the session, so reset cannot
        // fail; a failure would only mean the session is closing anyway.
        let _ = self.session.reset(id, CloseReason::Refused);
    }

    fn install<'a>(
        &mut self,
        now: Instant,
        cert: &meshgate_core::wire::Certificate<'_>,
        key: NodeKey,
        state: &mut NodeState,
        rand: u32,
    ) -> TunnelEvent<'a> {
        let wall = self.wall_time(now).unwrap_or(cert.not_before);
        // Decide on a copy: the rotation and the credentials change
        // together or not at all.
        let mut rotation = state.rotation;
        let accepted = Validity::try_from(cert)
            .ok()
            .and_then(|v| schedule_from_issuance(v, wall))
            .is_some_and(|v| rotation.renewed(wall, v, rand).is_ok());
        if !accepted {
            state.rotation.renewal_failed(wall, rand);
            return TunnelEvent::CertificateRejected(CertificateRejection::Schedule);
        }
        if let Err(e) = state.creds.install(&key, cert) {
            state.rotation.renewal_failed(wall, rand);
            return TunnelEvent::CertificateRejected(CertificateRejection::Credentials(e));
        }
        state.rotation = rotation;
        if self.purpose == Purpose::Enroll {
            // The enrollment connection has done its job; the node now
            // reconnects with its certificate.
            self.session.close(GoodbyeReason::Restart);
        }
        TunnelEvent::CertificateInstalled
    }

    /// Sends the enrollment request (token + CSR for the current key) into
    /// `out`; returns the frame length.
    pub fn send_enroll_request(
        &mut self,
        now: Instant,
        state: &NodeState,
        out: &mut [u8],
    ) -> Result<usize, TunnelError> {
        if self.purpose != Purpose::Enroll || !self.session.is_open() || self.pending.is_some() {
            return Err(TunnelError::NotReady);
        }
        let token = state
            .creds
            .token()
            .ok_or(TunnelError::Credentials(CredsError::BadToken))?;
        let key = state.creds.key().map_err(TunnelError::Credentials)?;
        let mut csr = [0u8; CSR_BUF_LEN];
        let fields = CsrFields {
            common_name: Some("meshgate-edge"),
            spiffe_uri: None,
        };
        let csr_len = build_csr(&key, fields, &mut csr).map_err(TunnelError::Csr)?;
        let msg = Message::EnrollRequest(EnrollRequest {
            token,
            csr_der: csr.get(..csr_len).unwrap_or(&[]),
        });
        let n = encode_frame(&msg, out)?;
        self.pending = Some(Pending { key, sent: now });
        Ok(n)
    }

    /// When the rotation schedule wants a renewal at `now`, generates a
    /// fresh key (key rotation with every certificate) and writes a
    /// `RenewRequest` into `out`. `Ok(None)` when nothing is due.
    pub fn poll_renewal(
        &mut self,
        now: Instant,
        state: &mut NodeState,
        rng: &mut impl CryptoRngCore,
        out: &mut [u8],
    ) -> Result<Option<usize>, TunnelError> {
        if self.purpose != Purpose::Operate || !self.session.is_open() || state.revoked {
            return Ok(None);
        }
        let Some(wall) = self.wall_time(now) else {
            return Ok(None);
        };
        if let Some(p) = &self.pending {
            if now.saturating_duration_since(p.sent) >= REQUEST_TIMEOUT {
                self.pending = None;
                state.rotation.renewal_failed(wall, rng.next_u32());
            }
            return Ok(None);
        }
        // Credentials loaded at boot could not be scheduled without a wall
        // clock; schedule them now that the gateway told us the time.
        if state.rotation.current().is_none()
            && let Some((nb, na)) = state.creds.validity()
            && let Ok(v) = Validity::new(nb, na)
        {
            let _ = state.rotation.renewed(wall, v, rng.next_u32());
        }
        if state.rotation.poll(wall) != Action::Renew {
            return Ok(None);
        }
        let key = NodeKey::generate(rng);
        let mut csr = [0u8; CSR_BUF_LEN];
        let fields = CsrFields {
            common_name: Some("meshgate-edge"),
            spiffe_uri: None,
        };
        let csr_len = build_csr(&key, fields, &mut csr).map_err(TunnelError::Csr)?;
        let msg = Message::RenewRequest(RenewRequest {
            csr_der: csr.get(..csr_len).unwrap_or(&[]),
        });
        let n = encode_frame(&msg, out)?;
        self.pending = Some(Pending { key, sent: now });
        Ok(Some(n))
    }

    /// Handles the session deadline (heartbeats, idle timeout).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TunnelEvent<'static>> {
        self.session
            .handle_timeout(now)
            .map(|_| TunnelEvent::Closed(CloseCause::TimedOut))
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    /// The next frame to send (session frames first, then a config ack).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, TunnelError> {
        if let Some(n) = self.session.poll_transmit(now, out)? {
            return Ok(Some(n));
        }
        if let Some(version) = self.ack_due
            && self.session.is_open()
        {
            let n = encode_frame(&Message::ConfigAck(ConfigAck { version }), out)?;
            self.ack_due = None;
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// True once nothing more will be sent or received.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Ends the connection with a goodbye.
    pub fn close(&mut self, reason: GoodbyeReason) {
        self.session.close(reason);
    }
}

/// Reconnect backoff: exponential with jitter (the same rule core uses for
/// renewal retries), reset after a connection that reached the gateway.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    policy: RenewalPolicy,
    failures: u32,
}

impl Backoff {
    /// 1 s doubling up to 60 s.
    pub const fn new() -> Self {
        Backoff {
            policy: RenewalPolicy {
                renew_at_permille: 500,
                jitter_permille: 0,
                retry_initial: Duration::from_secs(1),
                retry_max: Duration::from_secs(60),
            },
            failures: 0,
        }
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self, rand: u32) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.retry_delay(self.failures, rand)
    }

    /// A connection succeeded: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::push;
    use crate::creds::GatewayAddr;
    use crate::pin::tests::TestCa;
    use meshgate_core::wire::{BoundedList, parse_frame};
    use rand_core::OsRng;
    use std::vec::Vec;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/gateway";

    fn state() -> NodeState {
        let key = NodeKey::generate(&mut OsRng);
        let addr = GatewayAddr {
            ip: [10, 0, 0, 1],
            port: 15443,
        };
        let creds = Credentials::provision(&key, addr, GATEWAY_ID, "one-time").unwrap();
        NodeState::new(creds, RenewalPolicy::ISTIO, None, 0).unwrap()
    }

    /// A gateway session plus the node tunnel, with frames moved between
    /// them through the real codec.
    struct Pair {
        gw: Session<8>,
        node: Tunnel,
        now: Instant,
        state: NodeState,
    }

    impl Pair {
        fn new(purpose: Purpose) -> Self {
            let now = Instant::from_millis(0);
            let mut gw = Session::new(
                SessionConfig::new(Role::Gateway),
                now,
                Some(UnixTime::from_secs(2000)),
            );
            let mut node = Tunnel::new(purpose, now, None);
            let mut state = state();
            // Hello both ways.
            let mut buf = [0u8; 4096];
            let n = gw.poll_transmit(now, &mut buf).unwrap().unwrap();
            let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
            assert_eq!(
                node.handle_message(now, msg, &mut state, 0).unwrap(),
                Some(TunnelEvent::Connected)
            );
            let n = node.poll_transmit(now, &mut buf).unwrap().unwrap();
            let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
            assert!(matches!(
                gw.handle_message(now, msg).unwrap(),
                Some(Event::Connected { .. })
            ));
            Pair {
                gw,
                node,
                now,
                state,
            }
        }

        /// Delivers a gateway control frame to the node.
        fn deliver(&mut self, msg: Message<'_>) -> Option<TunnelEvent<'static>> {
            let mut buf = [0u8; 4096];
            let n = encode_frame(&msg, &mut buf).unwrap();
            let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
            // Events borrowing the frame are not needed past this call.
            let ev = self
                .node
                .handle_message(self.now, msg, &mut self.state, 7)
                .unwrap();
            ev.map(|e| match e {
                TunnelEvent::Connected => TunnelEvent::Connected,
                TunnelEvent::ConnectDevice { id, device, .. } => TunnelEvent::ConnectDevice {
                    id,
                    service: MeshTarget {
                        host: "plc-1.factory",
                        port: 502,
                    },
                    device,
                },
                TunnelEvent::CertificateInstalled => TunnelEvent::CertificateInstalled,
                TunnelEvent::CertificateRejected(r) => TunnelEvent::CertificateRejected(r),
                TunnelEvent::ConfigApplied { version } => TunnelEvent::ConfigApplied { version },
                TunnelEvent::ConfigRejected(e) => TunnelEvent::ConfigRejected(e),
                TunnelEvent::Revoked(_) => {
                    TunnelEvent::Closed(CloseCause::Goodbye(GoodbyeReason::Shutdown))
                }
                TunnelEvent::Stream(_) | TunnelEvent::Closed(_) => TunnelEvent::Connected,
            })
        }

        /// Everything the node wants to send, decoded by the gateway.
        fn node_frames(&mut self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Some(n) = self.node.poll_transmit(self.now, &mut buf).unwrap() {
                out.push(buf[..n].to_vec());
            }
            out
        }
    }

    fn issue_for_csr(ca: &TestCa, csr_der: &[u8]) -> Vec<u8> {
        let (_, csr) = X509CertificationRequest::from_der(csr_der).unwrap();
        let spki = csr
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec();
        struct Pub(Vec<u8>);
        impl rcgen::PublicKeyData for Pub {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
        }
        ca.sign(&rcgen::CertificateParams::default(), &Pub(spki))
    }

    /// Sends the enrollment request and delivers a certificate for its
    /// CSR valid `not_before..not_after` (seconds); the node's event.
    fn enroll_with(p: &mut Pair, not_before: u64, not_after: u64) -> Option<TunnelEvent<'static>> {
        let ca = TestCa::new("root");
        let mut buf = [0u8; 4096];
        let n = p
            .node
            .send_enroll_request(p.now, &p.state, &mut buf)
            .unwrap();
        let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
        let Message::EnrollRequest(req) = msg else {
            panic!("expected EnrollRequest")
        };
        assert_eq!(req.token, "one-time");
        let leaf = issue_for_csr(&ca, req.csr_der);
        let cert = meshgate_core::wire::Certificate {
            chain: BoundedList::from_slice(&[leaf.as_slice()]).unwrap(),
            roots: BoundedList::from_slice(&[ca.cert_der.as_slice()]).unwrap(),
            not_before: UnixTime::from_secs(not_before),
            not_after: UnixTime::from_secs(not_after),
        };
        p.deliver(Message::Certificate(cert))
    }

    #[test]
    fn enrollment_installs_certificate_and_ends_connection() {
        let mut p = Pair::new(Purpose::Enroll);
        assert_eq!(
            enroll_with(&mut p, 1990, 1990 + 3600),
            Some(TunnelEvent::CertificateInstalled)
        );
        assert!(p.state.creds.is_enrolled());
        assert_eq!(p.state.creds.token(), None);
        assert!(matches!(
            p.state.rotation.poll(UnixTime::from_secs(2000)),
            Action::Wait(_)
        ));
        // The enrollment connection says goodbye afterwards.
        let frames = p.node_frames();
        let (last, _) = parse_frame(frames.last().unwrap()).unwrap().unwrap();
        assert!(matches!(last, Message::Goodbye(_)));
    }

    /// The CA backdates `not_before` by a minute; on a 60 s certificate
    /// renewal must still come ~30 s after issuance, not at once (which
    /// would re-issue it every second).
    #[test]
    fn short_lived_backdated_certificate_renews_halfway_from_issuance() {
        let mut p = Pair::new(Purpose::Enroll);
        // Issued at 2000 s (the gateway's hello time) for 60 s, backdated 60 s.
        assert_eq!(
            enroll_with(&mut p, 1940, 2060),
            Some(TunnelEvent::CertificateInstalled)
        );
        let at = p.state.rotation.renew_at().unwrap();
        assert!(
            (UnixTime::from_secs(2029)..=UnixTime::from_secs(2031)).contains(&at),
            "renewal at {at:?}"
        );
        assert!(matches!(
            p.state.rotation.poll(UnixTime::from_secs(2001)),
            Action::Wait(_)
        ));
        // A certificate already expired at installation is refused.
        let stated = Validity::new(UnixTime::from_secs(1940), UnixTime::from_secs(2060)).unwrap();
        assert_eq!(
            schedule_from_issuance(stated, UnixTime::from_secs(2060)),
            None
        );
    }

    #[test]
    fn certificate_for_another_key_is_rejected_and_unsolicited_is_an_error() {
        let ca = TestCa::new("root");
        let mut p = Pair::new(Purpose::Enroll);
        let mut buf = [0u8; 4096];
        p.node
            .send_enroll_request(p.now, &p.state, &mut buf)
            .unwrap();
        let (rogue_leaf, _) = ca.leaf(&["spiffe://cluster.local/ns/x/sa/y"]);
        let cert = meshgate_core::wire::Certificate {
            chain: BoundedList::from_slice(&[rogue_leaf.as_slice()]).unwrap(),
            roots: BoundedList::from_slice(&[ca.cert_der.as_slice()]).unwrap(),
            not_before: UnixTime::from_secs(1990),
            not_after: UnixTime::from_secs(5000),
        };
        assert_eq!(
            p.deliver(Message::Certificate(cert)),
            Some(TunnelEvent::CertificateRejected(
                CertificateRejection::Credentials(CredsError::LeafKeyMismatch)
            ))
        );
        assert!(!p.state.creds.is_enrolled());
        // No request in flight any more: a second certificate is unsolicited.
        let n = encode_frame(&Message::Certificate(cert), &mut buf).unwrap();
        let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
        assert_eq!(
            p.node.handle_message(p.now, msg, &mut p.state, 0),
            Err(TunnelError::UnsolicitedCertificate)
        );
    }

    #[test]
    fn config_push_is_acked_and_gates_inbound_streams() {
        let mut p = Pair::new(Purpose::Operate);
        assert_eq!(
            p.deliver(Message::ConfigPush(push(4))),
            Some(TunnelEvent::ConfigApplied { version: 4 })
        );
        let frames = p.node_frames();
        let (ack, _) = parse_frame(&frames[0]).unwrap().unwrap();
        assert_eq!(ack, Message::ConfigAck(ConfigAck { version: 4 }));

        // An exposed service: the node is told which device to connect.
        let mut buf = [0u8; 256];
        let plc = MeshTarget {
            host: "plc-1.factory",
            port: 502,
        };
        let (id, n) =
            p.gw.open_stream(StreamTarget::ToDevice(plc), &mut buf)
                .unwrap();
        let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
        let ev = p.node.handle_message(p.now, msg, &mut p.state, 0).unwrap();
        assert!(matches!(ev, Some(TunnelEvent::ConnectDevice { id: i, .. }) if i == id));

        // Anything else is refused on the spot.
        let other = MeshTarget {
            host: "scada.factory",
            port: 502,
        };
        let (id2, n) =
            p.gw.open_stream(StreamTarget::ToDevice(other), &mut buf)
                .unwrap();
        let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
        assert_eq!(
            p.node.handle_message(p.now, msg, &mut p.state, 0).unwrap(),
            None
        );
        let frames = p.node_frames();
        let (close, _) = parse_frame(&frames[0]).unwrap().unwrap();
        assert_eq!(
            close,
            Message::StreamClose(meshgate_core::wire::StreamClose {
                id: id2,
                reason: CloseReason::Refused
            })
        );
    }

    #[test]
    fn revocation_stops_forwarding() {
        let mut p = Pair::new(Purpose::Operate);
        p.deliver(Message::ConfigPush(push(1)));
        let revoked = Revoked {
            reason: meshgate_core::wire::RevocationReason::CessationOfOperation,
            detail: "decommissioned",
        };
        p.deliver(Message::Revoked(revoked));
        assert!(p.state.revoked);
        assert!(p.state.config.target_for_port(8080).is_none());
        assert!(p.node.is_closed());
    }

    #[test]
    fn renewal_is_requested_when_due_with_a_fresh_key() {
        let ca = TestCa::new("root");
        let mut p = Pair::new(Purpose::Operate);
        // Install a certificate valid 1990..2010 s: at 2000 s (the
        // gateway's hello time) renewal is due (50 % ± 1 %).
        let key = p.state.creds.key().unwrap();
        let leaf = {
            struct Pub(Vec<u8>);
            impl rcgen::PublicKeyData for Pub {
                fn der_bytes(&self) -> &[u8] {
                    &self.0
                }
                fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                    &rcgen::PKCS_ECDSA_P256_SHA256
                }
            }
            ca.sign(
                &rcgen::CertificateParams::default(),
                &Pub(key.public_sec1().to_vec()),
            )
        };
        let cert = meshgate_core::wire::Certificate {
            chain: BoundedList::from_slice(&[leaf.as_slice()]).unwrap(),
            roots: BoundedList::from_slice(&[ca.cert_der.as_slice()]).unwrap(),
            not_before: UnixTime::from_secs(1980),
            not_after: UnixTime::from_secs(2010),
        };
        p.state.creds.install(&key, &cert).unwrap();
        p.state
            .rotation
            .renewed(
                UnixTime::from_secs(1980),
                Validity::try_from(&cert).unwrap(),
                0,
            )
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = p
            .node
            .poll_renewal(p.now, &mut p.state, &mut OsRng, &mut buf)
            .unwrap()
            .unwrap();
        let (msg, _) = parse_frame(&buf[..n]).unwrap().unwrap();
        let Message::RenewRequest(req) = msg else {
            panic!("expected RenewRequest")
        };
        let (_, csr) = X509CertificationRequest::from_der(req.csr_der).unwrap();
        assert_ne!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            &key.public_sec1()[..],
            "renewal rotates the key"
        );
        // Only one request in flight.
        assert_eq!(
            p.node
                .poll_renewal(p.now, &mut p.state, &mut OsRng, &mut buf)
                .unwrap(),
            None
        );
        // After the timeout the attempt counts as failed and backs off.
        let later = p.now.saturating_add(REQUEST_TIMEOUT);
        assert_eq!(
            p.node
                .poll_renewal(later, &mut p.state, &mut OsRng, &mut buf)
                .unwrap(),
            None
        );
        assert_eq!(p.state.rotation.failures(), 1);
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::new();
        let d1 = b.next_delay(0);
        let d2 = b.next_delay(0);
        assert!(d2 >= d1);
        for _ in 0..20 {
            assert!(b.next_delay(u32::MAX) <= Duration::from_secs(60));
        }
        b.reset();
        assert!(b.next_delay(0) <= d2);
    }
}
