//! The message set: borrowed, zero-copy wire types and their validation.
//!
//! Every type here borrows from the frame it was decoded from (`&'a [u8]`,
//! `&'a str`, [`BoundedList`]), so decoding needs no allocator. The variant
//! order of [`Message`] and the field order of every struct *are* the wire
//! format (postcard encodes variants by index and fields in order): append
//! new variants at the end, never reorder, and bump
//! [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) for any incompatible change.
//! The golden fixtures in `core/tests/fixtures/wire/` fail when this
//! encoding changes.
//!
//! [`Message::validate`] checks the protocol limits that postcard cannot
//! express (non-zero ids and ports, bounded strings, host-name syntax,
//! unique listeners). The frame codec runs it on every decode and encode,
//! so a validated message is what both sides see.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::list::BoundedList;
use crate::time::UnixTime;

/// Most certificates in a chain (leaf first, then intermediates).
pub const MAX_CERT_CHAIN: usize = 4;
/// Most trust-bundle roots in one [`Certificate`] message.
pub const MAX_TRUST_ROOTS: usize = 4;
/// Most local listeners (legacy device → mesh) in one [`ConfigPush`].
pub const MAX_LISTENERS: usize = 16;
/// Most exposed legacy endpoints (mesh → legacy device) in one [`ConfigPush`].
pub const MAX_EXPOSED: usize = 16;
/// Longest payload of one [`StreamData`] frame, in bytes.
///
/// Half the frame limit: a full chunk plus its header always fits in one
/// frame, and two chunks fit in one capped TLS record on the tunnel.
pub const MAX_DATA_CHUNK: usize = 2048;
/// Longest one-time enrollment token, in bytes.
pub const MAX_TOKEN_LEN: usize = 128;
/// Longest human-readable detail string in `Revoked` and `Error`, in bytes.
pub const MAX_DETAIL_LEN: usize = 128;
/// Longest service host name (a DNS name), in bytes.
pub const MAX_HOST_LEN: usize = 253;
/// Shortest idle timeout a peer may announce in [`Hello`], in milliseconds.
///
/// Heartbeats are sent at a fraction of the peer's idle timeout, so a tiny
/// value would turn into a ping flood.
pub const MIN_IDLE_TIMEOUT_MS: u32 = 1000;

/// Which end of the tunnel sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role {
    /// The meshgate gateway (the tunnel server).
    Gateway,
    /// An edge node (the tunnel client).
    Node,
}

impl Role {
    /// The other end.
    pub const fn peer(self) -> Role {
        match self {
            Role::Gateway => Role::Node,
            Role::Node => Role::Gateway,
        }
    }
}

/// First message in both directions on every connection.
///
/// It deliberately carries no node identity: the node's identity is the
/// SPIFFE ID in its verified client certificate, and an unauthenticated
/// claim here would only invite code to trust it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hello {
    /// The sender's protocol version; must stay the first field (see
    /// [`Message::Hello`]).
    pub version: u16,
    /// The sender's role.
    pub role: Role,
    /// The sender's wall-clock time, `None` if it has no trustworthy clock.
    /// An edge node without a real-time clock learns the time from the
    /// gateway's hello.
    pub time: Option<UnixTime>,
    /// How many concurrent streams the sender accepts from its peer.
    pub max_streams: u16,
    /// After this long without receiving anything the sender closes the
    /// tunnel; the peer pings well within it.
    pub idle_timeout_ms: u32,
}

/// Node → gateway on the enrollment connection: a first certificate, please.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EnrollRequest<'a> {
    /// The one-time token created by an administrator.
    pub token: &'a str,
    /// A PKCS#10 certificate signing request, DER.
    pub csr_der: &'a [u8],
}

/// Gateway → node: an issued certificate chain and the trust bundle, in
/// answer to an [`EnrollRequest`] or a [`RenewRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Certificate<'a> {
    /// Leaf first, then intermediates, each DER.
    #[serde(borrow)]
    pub chain: BoundedList<&'a [u8], MAX_CERT_CHAIN>,
    /// Trust-bundle roots, each DER. Several during a root roll-over.
    #[serde(borrow)]
    pub roots: BoundedList<&'a [u8], MAX_TRUST_ROOTS>,
    /// The leaf's notBefore, so a node need not parse X.509 to schedule
    /// renewal.
    pub not_before: UnixTime,
    /// The leaf's notAfter.
    pub not_after: UnixTime,
}

/// Node → gateway over the tunnel: renew my certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RenewRequest<'a> {
    /// A PKCS#10 certificate signing request, DER.
    pub csr_der: &'a [u8],
}

/// A service in the mesh: host name and port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MeshTarget<'a> {
    /// A DNS name such as `details.bookinfo.svc.cluster.local`.
    pub host: &'a str,
    /// A non-zero port.
    pub port: u16,
}

/// An IP address of a legacy device on the node's local network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DeviceIp {
    /// IPv4, network byte order.
    V4([u8; 4]),
    /// IPv6, network byte order.
    V6([u8; 16]),
}

impl Default for DeviceIp {
    fn default() -> Self {
        DeviceIp::V4([0; 4])
    }
}

impl DeviceIp {
    fn is_unspecified(&self) -> bool {
        match self {
            DeviceIp::V4(b) => b.iter().all(|&x| x == 0),
            DeviceIp::V6(b) => b.iter().all(|&x| x == 0),
        }
    }
}

/// A legacy device endpoint behind the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceAddr {
    /// The device's address (never unspecified).
    pub ip: DeviceIp,
    /// A non-zero port.
    pub port: u16,
}

/// A port the node listens on for legacy clients, and where the gateway
/// sends what arrives there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Listener<'a> {
    /// The node's local TCP port.
    pub listen_port: u16,
    /// The mesh service reached through the gateway.
    #[serde(borrow)]
    pub target: MeshTarget<'a>,
}

/// A legacy endpoint published as a mesh service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Exposed<'a> {
    /// The mesh service name and port, e.g. `plc-1.factory:502`.
    #[serde(borrow)]
    pub service: MeshTarget<'a>,
    /// The device behind the node.
    pub device: DeviceAddr,
}

/// Gateway → node: the complete forwarding configuration (not a delta).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConfigPush<'a> {
    /// Monotonic configuration version; the node acknowledges it.
    pub version: u64,
    /// Local listeners (unique listen ports).
    #[serde(borrow)]
    pub listeners: BoundedList<Listener<'a>, MAX_LISTENERS>,
    /// Exposed legacy endpoints (unique service host and port).
    #[serde(borrow)]
    pub exposed: BoundedList<Exposed<'a>, MAX_EXPOSED>,
}

impl<'a> ConfigPush<'a> {
    /// The listener for a local port, if configured.
    pub fn listener(&self, listen_port: u16) -> Option<&Listener<'a>> {
        self.listeners.iter().find(|l| l.listen_port == listen_port)
    }

    /// The device behind an exposed mesh service, if configured.
    pub fn exposed(&self, service: &MeshTarget<'_>) -> Option<&Exposed<'a>> {
        self.exposed
            .iter()
            .find(|e| same_target(&e.service, service))
    }
}

/// Node → gateway: configuration `version` has been applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConfigAck {
    /// The applied [`ConfigPush::version`].
    pub version: u64,
}

/// What a new stream connects to; the variant fixes which side may open it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamTarget<'a> {
    /// Opened by the node: a legacy client connected to a node listener and
    /// wants this mesh service. The gateway checks it against the pushed
    /// configuration and AuthorizationPolicy.
    #[serde(borrow)]
    ToMesh(MeshTarget<'a>),
    /// Opened by the gateway: a mesh client called this exposed service; the
    /// node connects to the device configured for it.
    #[serde(borrow)]
    ToDevice(MeshTarget<'a>),
}

impl<'a> StreamTarget<'a> {
    /// The side allowed to open a stream with this target.
    pub const fn opener(&self) -> Role {
        match self {
            StreamTarget::ToMesh(_) => Role::Node,
            StreamTarget::ToDevice(_) => Role::Gateway,
        }
    }

    /// The mesh service named by the target.
    pub const fn service(&self) -> &MeshTarget<'a> {
        match self {
            StreamTarget::ToMesh(t) | StreamTarget::ToDevice(t) => t,
        }
    }
}

/// Opens a multiplexed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StreamOpen<'a> {
    /// The new stream's id: odd when the node opens, even (non-zero) when
    /// the gateway opens, strictly increasing per opener.
    pub id: u32,
    /// What the stream connects to.
    #[serde(borrow)]
    pub target: StreamTarget<'a>,
    /// Bytes the acceptor may send before it gets more credit.
    pub initial_credit: u32,
}

/// Payload on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StreamData<'a> {
    /// The stream.
    pub id: u32,
    /// At most [`MAX_DATA_CHUNK`] bytes, within the sender's credit.
    pub data: &'a [u8],
}

/// Why a stream side ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CloseReason {
    /// The sender has no more data (a TCP FIN); it may still receive.
    Finished,
    /// The sender aborted the stream (a TCP RST); both directions end.
    Cancelled,
    /// The acceptor will not take the stream (unknown target, limits).
    Refused,
    /// Policy denied the stream.
    Denied,
    /// The target could not be reached.
    Unreachable,
}

/// Ends one or both directions of a stream (see [`CloseReason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StreamClose {
    /// The stream.
    pub id: u32,
    /// `Finished` half-closes; anything else aborts the whole stream.
    pub reason: CloseReason,
}

/// Grants the peer `credit` more bytes on a stream. The first one an
/// acceptor sends also accepts the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WindowUpdate {
    /// The stream.
    pub id: u32,
    /// Additional bytes the peer may send.
    pub credit: u32,
}

/// Why a certificate was revoked (a subset of RFC 5280 CRL reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The node's key is believed compromised.
    KeyCompromise,
    /// The node was replaced by another enrollment.
    Superseded,
    /// The node was decommissioned by an administrator.
    CessationOfOperation,
}

/// Gateway → node: your identity is revoked; stop forwarding, close the
/// tunnel and do not reconnect with this certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Revoked<'a> {
    /// Why.
    pub reason: RevocationReason,
    /// Human-readable detail, at most [`MAX_DETAIL_LEN`] bytes.
    pub detail: &'a str,
}

/// Why a peer is leaving cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GoodbyeReason {
    /// Shutting down.
    Shutdown,
    /// Restarting; reconnect soon.
    Restart,
    /// Nothing was received within the idle timeout.
    IdleTimeout,
    /// A newer tunnel from the same node replaced this one.
    Superseded,
}

/// Clean end of the tunnel; nothing follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Goodbye {
    /// Why.
    pub reason: GoodbyeReason,
}

/// Error classes carried by [`ErrorMsg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ErrorCode {
    /// The peer broke a protocol rule (ids, ordering, roles).
    Protocol,
    /// The peer's protocol version is not supported.
    UnsupportedVersion,
    /// The peer sent more than its credit.
    FlowControl,
    /// The peer exceeded the concurrent-stream limit.
    StreamLimit,
    /// The enrollment token is unknown, used or expired.
    InvalidToken,
    /// The CSR was malformed or asked for an identity it may not have.
    BadCsr,
    /// The pushed configuration could not be applied.
    BadConfig,
    /// The peer failed internally.
    Internal,
}

/// A fatal error; the sender closes the connection after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ErrorMsg<'a> {
    /// The class of error.
    pub code: ErrorCode,
    /// Human-readable detail, at most [`MAX_DETAIL_LEN`] bytes.
    pub detail: &'a str,
}

/// Every message of the protocol.
///
/// `ConfigPush` makes this enum large (~1.3 KiB on 64-bit, ~0.7 KiB on
/// 32-bit MCUs): without an allocator there is nothing to box into, and a
/// decoded message only lives on the stack while it is handled.
#[expect(clippy::large_enum_variant, reason = "no allocator; see above")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message<'a> {
    /// Must stay variant 0 with `version` as its first field: that is how a
    /// peer of any version reads the version of a hello it cannot decode
    /// (see [`DecodeError::UnsupportedVersion`](super::DecodeError)).
    Hello(Hello),
    /// See [`EnrollRequest`].
    #[serde(borrow)]
    EnrollRequest(EnrollRequest<'a>),
    /// See [`Certificate`].
    #[serde(borrow)]
    Certificate(Certificate<'a>),
    /// See [`RenewRequest`].
    #[serde(borrow)]
    RenewRequest(RenewRequest<'a>),
    /// See [`ConfigPush`].
    #[serde(borrow)]
    ConfigPush(ConfigPush<'a>),
    /// See [`ConfigAck`].
    ConfigAck(ConfigAck),
    /// See [`StreamOpen`].
    #[serde(borrow)]
    StreamOpen(StreamOpen<'a>),
    /// See [`StreamData`].
    #[serde(borrow)]
    StreamData(StreamData<'a>),
    /// See [`StreamClose`].
    StreamClose(StreamClose),
    /// See [`WindowUpdate`].
    WindowUpdate(WindowUpdate),
    /// Liveness probe; the peer answers with a `Pong` echoing the nonce.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
    /// See [`Revoked`].
    #[serde(borrow)]
    Revoked(Revoked<'a>),
    /// See [`Goodbye`].
    Goodbye(Goodbye),
    /// See [`ErrorMsg`].
    #[serde(borrow)]
    Error(ErrorMsg<'a>),
}

/// Postcard variant index of [`Message::Hello`] (its first body byte).
pub(crate) const HELLO_TAG: u8 = 0;

/// A protocol limit a decoded (or to-be-encoded) message breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Invalid {
    /// A stream id is zero.
    ZeroStreamId,
    /// A port is zero.
    ZeroPort,
    /// A `StreamData` payload exceeds [`MAX_DATA_CHUNK`].
    DataTooLong,
    /// A detail string exceeds [`MAX_DETAIL_LEN`].
    DetailTooLong,
    /// The enrollment token is empty or exceeds [`MAX_TOKEN_LEN`].
    BadToken,
    /// A CSR is empty.
    EmptyCsr,
    /// A certificate message has no leaf, no root, or an empty DER entry.
    EmptyCertificate,
    /// `not_after` is not later than `not_before`.
    BadValidity,
    /// A host name is empty, too long, or not a DNS name.
    BadHostName,
    /// A device address is unspecified (all zeros).
    UnspecifiedAddress,
    /// Two listeners use the same local port.
    DuplicateListener,
    /// Two exposed endpoints use the same service host and port.
    DuplicateExposed,
    /// A hello announces an idle timeout below [`MIN_IDLE_TIMEOUT_MS`].
    IdleTimeoutTooShort,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::ZeroStreamId => "stream id 0 is reserved",
            Invalid::ZeroPort => "port 0 is not a valid port",
            Invalid::DataTooLong => "stream data chunk exceeds MAX_DATA_CHUNK",
            Invalid::DetailTooLong => "detail string exceeds MAX_DETAIL_LEN",
            Invalid::BadToken => "enrollment token is empty or too long",
            Invalid::EmptyCsr => "certificate signing request is empty",
            Invalid::EmptyCertificate => {
                "certificate message lacks a leaf, a root, or has an empty entry"
            }
            Invalid::BadValidity => "certificate notAfter is not later than notBefore",
            Invalid::BadHostName => "host is not a valid DNS name",
            Invalid::UnspecifiedAddress => "device address is unspecified",
            Invalid::DuplicateListener => "two listeners share a local port",
            Invalid::DuplicateExposed => "two exposed endpoints share a service host and port",
            Invalid::IdleTimeoutTooShort => "idle timeout is below MIN_IDLE_TIMEOUT_MS",
        })
    }
}

fn check(ok: bool, err: Invalid) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(err) }
}

fn check_id(id: u32) -> Result<(), Invalid> {
    check(id != 0, Invalid::ZeroStreamId)
}

fn check_detail(detail: &str) -> Result<(), Invalid> {
    check(detail.len() <= MAX_DETAIL_LEN, Invalid::DetailTooLong)
}

/// True for a DNS host name: dot-separated labels of 1–63 ASCII letters,
/// digits and hyphens, not starting or ending with a hyphen, at most
/// [`MAX_HOST_LEN`] bytes in total.
pub fn is_valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Host names compare case-insensitively, as DNS does.
fn same_target(a: &MeshTarget<'_>, b: &MeshTarget<'_>) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(b.host)
}

fn check_target(t: &MeshTarget<'_>) -> Result<(), Invalid> {
    check(t.port != 0, Invalid::ZeroPort)?;
    check(is_valid_host(t.host), Invalid::BadHostName)
}

impl Hello {
    fn validate(&self) -> Result<(), Invalid> {
        check(
            self.idle_timeout_ms >= MIN_IDLE_TIMEOUT_MS,
            Invalid::IdleTimeoutTooShort,
        )
    }
}

impl Certificate<'_> {
    fn validate(&self) -> Result<(), Invalid> {
        let entries_ok = self
            .chain
            .iter()
            .chain(self.roots.iter())
            .all(|der| !der.is_empty());
        check(
            !self.chain.is_empty() && !self.roots.is_empty() && entries_ok,
            Invalid::EmptyCertificate,
        )?;
        check(self.not_after > self.not_before, Invalid::BadValidity)
    }
}

impl ConfigPush<'_> {
    /// Checks ports, host names, addresses and uniqueness. Quadratic in the
    /// list lengths, which are capped at 16.
    pub fn validate(&self) -> Result<(), Invalid> {
        let listeners = self.listeners.as_slice();
        for (i, l) in listeners.iter().enumerate() {
            check(l.listen_port != 0, Invalid::ZeroPort)?;
            check_target(&l.target)?;
            let dup = listeners
                .get(..i)
                .unwrap_or(&[])
                .iter()
                .any(|o| o.listen_port == l.listen_port);
            check(!dup, Invalid::DuplicateListener)?;
        }
        let exposed = self.exposed.as_slice();
        for (i, e) in exposed.iter().enumerate() {
            check_target(&e.service)?;
            check(e.device.port != 0, Invalid::ZeroPort)?;
            check(!e.device.ip.is_unspecified(), Invalid::UnspecifiedAddress)?;
            let dup = exposed
                .get(..i)
                .unwrap_or(&[])
                .iter()
                .any(|o| same_target(&o.service, &e.service));
            check(!dup, Invalid::DuplicateExposed)?;
        }
        Ok(())
    }
}

impl Message<'_> {
    /// Checks every protocol limit of this message (see [`Invalid`]).
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Message::Hello(h) => h.validate(),
            Message::EnrollRequest(r) => {
                check(
                    !r.token.is_empty() && r.token.len() <= MAX_TOKEN_LEN,
                    Invalid::BadToken,
                )?;
                check(!r.csr_der.is_empty(), Invalid::EmptyCsr)
            }
            Message::Certificate(c) => c.validate(),
            Message::RenewRequest(r) => check(!r.csr_der.is_empty(), Invalid::EmptyCsr),
            Message::ConfigPush(c) => c.validate(),
            Message::ConfigAck(_) | Message::Ping(_) | Message::Pong(_) | Message::Goodbye(_) => {
                Ok(())
            }
            Message::StreamOpen(o) => {
                check_id(o.id)?;
                check_target(o.target.service())
            }
            Message::StreamData(d) => {
                check_id(d.id)?;
                check(d.data.len() <= MAX_DATA_CHUNK, Invalid::DataTooLong)
            }
            Message::StreamClose(c) => check_id(c.id),
            Message::WindowUpdate(w) => check_id(w.id),
            Message::Revoked(r) => check_detail(r.detail),
            Message::Error(e) => check_detail(e.detail),
        }
    }

    /// The role allowed to send this message, or `None` when both may.
    ///
    /// Stream messages other than `StreamOpen` are sent by both sides;
    /// `StreamOpen`'s opener is fixed by its target.
    pub fn sender(&self) -> Option<Role> {
        match self {
            Message::EnrollRequest(_) | Message::RenewRequest(_) | Message::ConfigAck(_) => {
                Some(Role::Node)
            }
            Message::Certificate(_) | Message::ConfigPush(_) | Message::Revoked(_) => {
                Some(Role::Gateway)
            }
            Message::StreamOpen(o) => Some(o.target.opener()),
            Message::Hello(_)
            | Message::StreamData(_)
            | Message::StreamClose(_)
            | Message::WindowUpdate(_)
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::Goodbye(_)
            | Message::Error(_) => None,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::EnrollRequest(_) => "EnrollRequest",
            Message::Certificate(_) => "Certificate",
            Message::RenewRequest(_) => "RenewRequest",
            Message::ConfigPush(_) => "ConfigPush",
            Message::ConfigAck(_) => "ConfigAck",
            Message::StreamOpen(_) => "StreamOpen",
            Message::StreamData(_) => "StreamData",
            Message::StreamClose(_) => "StreamClose",
            Message::WindowUpdate(_) => "WindowUpdate",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Revoked(_) => "Revoked",
            Message::Goodbye(_) => "Goodbye",
            Message::Error(_) => "Error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in [
            "details",
            "details.bookinfo.svc.cluster.local",
            "plc-1.factory",
            "A1",
        ] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "a b",
            "é.example",
            "a.",
            ".a",
        ] {
            assert!(!is_valid_host(bad), "{bad:?}");
        }
        let long_label = "a".repeat(64);
        assert!(!is_valid_host(&long_label));
        let long_host = ["a"; 127].join(".");
        assert_eq!(long_host.len(), 253);
        assert!(is_valid_host(&long_host));
        assert!(!is_valid_host(&(long_host + "b")));
    }

    #[test]
    fn config_uniqueness_is_case_insensitive() {
        let device = DeviceAddr {
            ip: DeviceIp::V4([10, 0, 0, 2]),
            port: 502,
        };
        let a = Exposed {
            service: MeshTarget {
                host: "plc-1.factory",
                port: 502,
            },
            device,
        };
        let b = Exposed {
            service: MeshTarget {
                host: "PLC-1.factory",
                port: 502,
            },
            device,
        };
        let cfg = ConfigPush {
            version: 1,
            listeners: BoundedList::new(),
            exposed: BoundedList::from_slice(&[a, b]).unwrap(),
        };
        assert_eq!(cfg.validate(), Err(Invalid::DuplicateExposed));
        assert!(
            cfg.exposed(&MeshTarget {
                host: "Plc-1.Factory",
                port: 502
            })
            .is_some()
        );
    }
}
