//! Peer-authentication modes and connection admission.
//!
//! This module owns the decision "may this connection in, and as whom?"
//! once the effective PeerAuthentication mode of the destination is known
//! (see `policy::PolicySet::resolve_mode`). It needs no allocation, so the
//! microcontroller edge node makes the same decision as the Linux gateway.
//!
//! The flow for a front-end:
//! 1. before the handshake, [`ClientAuth::for_mode`] says whether to
//!    terminate TLS and whether a client certificate is optional or required;
//!    [`sniff`] tells TLS from plaintext on a PERMISSIVE port;
//! 2. after the handshake, describe what the client [`Presented`] and call
//!    [`admit`]: the result is either [`Admitted`] (with the authenticated
//!    principal, if any) or a [`Rejection`] carrying a typed
//!    [`RejectReason`] and the [`RejectAction`] the front-end must take.
//!
//! STRICT authenticates, it does not authorize: any certificate of the mesh
//! trust domain (or an alias) is admitted. Authorization is a separate step.

use core::fmt;

use crate::spiffe::{Principal, SpiffeError, SpiffeId, TrustDomain};

/// An Istio PeerAuthentication mode, as written in a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE when there is none).
    Unset,
    /// TLS is not terminated: the connection passes as it is.
    Disable,
    /// Plaintext and mTLS are both accepted on the same port.
    Permissive,
    /// Only mTLS with a certificate from the mesh is accepted.
    Strict,
}

impl MtlsMode {
    /// The effective mode, or `None` for [`MtlsMode::Unset`].
    pub const fn effective(self) -> Option<EffectiveMode> {
        match self {
            MtlsMode::Unset => None,
            MtlsMode::Disable => Some(EffectiveMode::Disable),
            MtlsMode::Permissive => Some(EffectiveMode::Permissive),
            MtlsMode::Strict => Some(EffectiveMode::Strict),
        }
    }

    /// This mode, or `parent` when this one is UNSET (Istio's inheritance).
    pub const fn or_inherit(self, parent: EffectiveMode) -> EffectiveMode {
        match self.effective() {
            Some(m) => m,
            None => parent,
        }
    }

    /// The Istio spelling (`UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`).
    pub const fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resolved mode: what a port actually enforces. Never UNSET, so
/// admission cannot be asked about an unresolved mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EffectiveMode {
    /// TLS is not terminated; bytes pass through untouched.
    Disable,
    /// Plaintext or TLS/mTLS on the same port.
    Permissive,
    /// mTLS with a mesh certificate only.
    Strict,
}

impl EffectiveMode {
    /// Istio's default when no policy applies.
    pub const DEFAULT: EffectiveMode = EffectiveMode::Permissive;

    /// The Istio spelling.
    pub const fn as_str(self) -> &'static str {
        MtlsMode::from_effective(self).as_str()
    }
}

impl MtlsMode {
    /// The policy mode with the same meaning as `m`.
    pub const fn from_effective(m: EffectiveMode) -> MtlsMode {
        match m {
            EffectiveMode::Disable => MtlsMode::Disable,
            EffectiveMode::Permissive => MtlsMode::Permissive,
            EffectiveMode::Strict => MtlsMode::Strict,
        }
    }
}

impl From<EffectiveMode> for MtlsMode {
    fn from(m: EffectiveMode) -> Self {
        MtlsMode::from_effective(m)
    }
}

impl fmt::Display for EffectiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the front-end must set up a listener/handshake for a mode, before
/// any client bytes are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClientAuth {
    /// DISABLE: do not terminate TLS; pass the bytes through.
    NotTerminated,
    /// PERMISSIVE: accept plaintext (see [`sniff`]); when the client speaks
    /// TLS, request a certificate but do not require one. A certificate
    /// that is presented must still verify.
    Optional,
    /// STRICT: terminate TLS and require a verified client certificate.
    Required,
}

impl ClientAuth {
    /// The handshake configuration for an effective mode.
    pub const fn for_mode(mode: EffectiveMode) -> ClientAuth {
        match mode {
            EffectiveMode::Disable => ClientAuth::NotTerminated,
            EffectiveMode::Permissive => ClientAuth::Optional,
            EffectiveMode::Strict => ClientAuth::Required,
        }
    }

    /// Whether plaintext connections may be accepted at all.
    pub const fn accepts_plaintext(self) -> bool {
        !matches!(self, ClientAuth::Required)
    }
}

/// What the first bytes of a connection look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Sniffed {
    /// A TLS handshake record (`0x16 0x03 …`).
    Tls,
    /// Anything else: treat as plaintext.
    Plaintext,
    /// Too few bytes to tell; read more.
    NeedMore,
}

/// Tells a TLS ClientHello from plaintext by its record header, as Istio's
/// PERMISSIVE listener does: content type 22 (handshake), major version 3.
pub fn sniff(first_bytes: &[u8]) -> Sniffed {
    match first_bytes {
        [] => Sniffed::NeedMore,
        [0x16] => Sniffed::NeedMore,
        [0x16, 0x03, ..] => Sniffed::Tls,
        _ => Sniffed::Plaintext,
    }
}

/// The negotiated TLS version, which decides the alert for a missing
/// client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// What a connecting client presented, as observed by the front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No TLS at all (or, under DISABLE, bytes that were not inspected).
    Plaintext,
    /// A TLS handshake without a client certificate.
    TlsWithoutCertificate {
        /// The TLS version of the handshake.
        version: TlsVersion,
    },
    /// A client certificate that did not chain to the trust bundle
    /// (another CA, expired, bad signature).
    UnverifiedCertificate,
    /// A client certificate that chains to the trust bundle but carries no
    /// (valid) SPIFFE URI SAN.
    VerifiedWithoutSpiffeId,
    /// A verified client certificate with this SPIFFE ID in its URI SAN.
    VerifiedPeer {
        /// The peer's SPIFFE ID.
        id: SpiffeId<'a>,
    },
}

/// The mesh's identity: its trust domain and the aliases it also accepts
/// (Istio `trustDomainAliases`, e.g. during a trust-domain migration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshIdentity<'a> {
    /// The mesh trust domain (`cluster.local` by default).
    pub trust_domain: TrustDomain<'a>,
    /// Other trust domains whose certificates count as the mesh's.
    pub aliases: &'a [TrustDomain<'a>],
}

impl<'a> MeshIdentity<'a> {
    /// A mesh with a trust domain and no aliases.
    pub const fn new(trust_domain: TrustDomain<'a>) -> Self {
        MeshIdentity {
            trust_domain,
            aliases: &[],
        }
    }

    /// Whether `td` is the mesh trust domain or one of its aliases (exact
    /// comparison of validated names, never a prefix match).
    pub fn accepts(&self, td: TrustDomain<'_>) -> bool {
        td.as_str() == self.trust_domain.as_str()
            || self.aliases.iter().any(|a| a.as_str() == td.as_str())
    }
}

/// How an admitted connection is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Transport {
    /// DISABLE: TLS not terminated, bytes forwarded as they came.
    Passthrough,
    /// Plaintext accepted (PERMISSIVE).
    Plaintext,
    /// Server-authenticated TLS without a client certificate (PERMISSIVE).
    Tls,
    /// Mutual TLS with a verified mesh identity.
    Mtls,
}

/// A connection that may proceed to authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted<'a> {
    /// The authenticated peer, present exactly when `transport` is
    /// [`Transport::Mtls`]. Authorization treats `None` as "no identity":
    /// `principals` never match it and `notPrincipals: ["*"]` always does.
    pub principal: Option<Principal<'a>>,
    /// How the connection is carried.
    pub transport: Transport,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RejectReason {
    /// STRICT and the client sent plaintext.
    PlaintextUnderStrict,
    /// STRICT and the TLS client sent no certificate.
    MissingClientCertificate,
    /// The certificate does not chain to the mesh trust bundle.
    UntrustedCertificate,
    /// The certificate chains but has no SPIFFE ID.
    NoSpiffeId,
    /// The certificate's trust domain is neither the mesh's nor an alias.
    ForeignTrustDomain,
    /// The SPIFFE ID is in the mesh trust domain but not `/ns/X/sa/Y`;
    /// meshgate only issues and accepts Istio workload identities.
    NotAWorkloadIdentity(SpiffeError),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::PlaintextUnderStrict => {
                f.write_str("plaintext connection to a STRICT mTLS port")
            }
            RejectReason::MissingClientCertificate => {
                f.write_str("TLS client sent no certificate; STRICT requires mTLS")
            }
            RejectReason::UntrustedCertificate => {
                f.write_str("client certificate does not chain to the mesh trust bundle")
            }
            RejectReason::NoSpiffeId => f.write_str("client certificate has no SPIFFE ID"),
            RejectReason::ForeignTrustDomain => {
                f.write_str("client certificate is from a foreign trust domain")
            }
            RejectReason::NotAWorkloadIdentity(e) => {
                write!(f, "client SPIFFE ID is not a workload identity: {e}")
            }
        }
    }
}

/// A TLS alert the front-end should send (RFC 8446 §6.2 / RFC 5246).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsAlert {
    /// `handshake_failure` (40): TLS 1.2's answer to a missing certificate.
    HandshakeFailure,
    /// `bad_certificate` (42): a foreign CA or trust domain.
    BadCertificate,
    /// `certificate_required` (116, TLS 1.3 only).
    CertificateRequired,
}

impl TlsAlert {
    /// The alert description code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            TlsAlert::HandshakeFailure => 40,
            TlsAlert::BadCertificate => 42,
            TlsAlert::CertificateRequired => 116,
        }
    }
}

/// What the front-end must do with a rejected connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RejectAction {
    /// Close without writing anything (Istio: STRICT + plaintext gives the
    /// client "connection reset" or an empty reply).
    CloseSilently,
    /// Abort the handshake with this fatal alert, then close.
    Alert(TlsAlert),
}

/// A refused connection: why, and what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rejection {
    /// The typed reason (for logs and metrics).
    pub reason: RejectReason,
    /// The action the front-end must take.
    pub action: RejectAction,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reason, f)
    }
}

impl core::error::Error for Rejection {}

const fn reject(reason: RejectReason, action: RejectAction) -> Rejection {
    Rejection { reason, action }
}

const BAD_CERT: RejectAction = RejectAction::Alert(TlsAlert::BadCertificate);

/// Decides whether a connection may proceed under `mode`.
///
/// - DISABLE: always admitted as [`Transport::Passthrough`] with no
///   principal — TLS is not terminated, so nothing was authenticated.
/// - PERMISSIVE: plaintext and certificate-less TLS are admitted without a
///   principal; a certificate that *is* presented must verify and belong to
///   the mesh, as Istio's mTLS filter chain requires.
/// - STRICT: only a verified mesh identity is admitted.
pub fn admit<'a>(
    mode: EffectiveMode,
    presented: Presented<'a>,
    mesh: &MeshIdentity<'_>,
) -> Result<Admitted<'a>, Rejection> {
    let strict = match mode {
        EffectiveMode::Disable => {
            return Ok(Admitted {
                principal: None,
                transport: Transport::Passthrough,
            });
        }
        EffectiveMode::Permissive => false,
        EffectiveMode::Strict => true,
    };
    match presented {
        Presented::Plaintext if strict => Err(reject(
            RejectReason::PlaintextUnderStrict,
            RejectAction::CloseSilently,
        )),
        Presented::Plaintext => Ok(Admitted {
            principal: None,
            transport: Transport::Plaintext,
        }),
        Presented::TlsWithoutCertificate { version } if strict => {
            let alert = match version {
                TlsVersion::Tls13 => TlsAlert::CertificateRequired,
                TlsVersion::Tls12 => TlsAlert::HandshakeFailure,
            };
            Err(reject(
                RejectReason::MissingClientCertificate,
                RejectAction::Alert(alert),
            ))
        }
        Presented::TlsWithoutCertificate { .. } => Ok(Admitted {
            principal: None,
            transport: Transport::Tls,
        }),
        Presented::UnverifiedCertificate => {
            Err(reject(RejectReason::UntrustedCertificate, BAD_CERT))
        }
        Presented::VerifiedWithoutSpiffeId => Err(reject(RejectReason::NoSpiffeId, BAD_CERT)),
        Presented::VerifiedPeer { id } => {
            if !mesh.accepts(id.trust_domain()) {
                return Err(reject(RejectReason::ForeignTrustDomain, BAD_CERT));
            }
            let principal = id
                .to_principal()
                .map_err(|e| reject(RejectReason::NotAWorkloadIdentity(e), BAD_CERT))?;
            Ok(Admitted {
                principal: Some(principal),
                transport: Transport::Mtls,
            })
        }
    }
}
