//! The SPIFFE identity a certificate carries.
//!
//! Istio puts a workload's identity in exactly one URI subject alternative
//! name, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. This module extracts and
//! validates it (via `meshgate_core::spiffe`, which compares by parsed
//! segments) for both directions: the client certificate of an inbound mTLS
//! peer and the server certificate of a mesh upstream (secure naming).

use meshgate_core::spiffe::{OwnedSpiffeId, SpiffeError, TrustDomain};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate does not carry a usable SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerIdError {
    /// The DER did not parse as an X.509 certificate.
    #[error("certificate does not parse as X.509")]
    BadCertificate,
    /// The subjectAltName extension is missing or has no URI entry.
    #[error("certificate has no URI subject alternative name")]
    NoUriSan,
    /// More than one URI SAN: the identity would be ambiguous.
    #[error("certificate has {0} URI subject alternative names; exactly one is required")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI subject alternative name is not a SPIFFE ID: {0}")]
    NotSpiffe(SpiffeError),
    /// The SPIFFE ID path is not `/ns/<ns>/sa/<sa>`.
    #[error("SPIFFE ID {0} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>")]
    NotWorkloadId(String),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("SPIFFE ID {id} is not in the mesh trust domain {expected}")]
    ForeignTrustDomain {
        /// The peer's ID.
        id: String,
        /// The mesh trust domain.
        expected: String,
    },
}

/// A verified peer certificate: its SPIFFE ID, the SHA-256 of the leaf
/// (for the XFCC `Hash=` element) and its serial (for revocation by
/// serial). Whether the ID is acceptable (trust domain, workload shape) is
/// decided by core admission, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    pub(crate) spiffe_id: OwnedSpiffeId,
    pub(crate) leaf_sha256_hex: String,
    /// The serial's big-endian bytes without leading zero bytes (how the
    /// CA records serials).
    pub(crate) serial: Vec<u8>,
}

/// Reads the SPIFFE ID and serial of a peer leaf whose chain was verified.
pub(crate) fn peer_of(leaf: &CertificateDer<'_>) -> Result<PeerIdentity, PeerIdError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|_| PeerIdError::BadCertificate)?;
    let uri = uri_san_of(&cert)?;
    let spiffe_id = OwnedSpiffeId::parse(&uri).map_err(PeerIdError::NotSpiffe)?;
    let raw = cert.raw_serial();
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    Ok(PeerIdentity {
        spiffe_id,
        leaf_sha256_hex: hex::encode(Sha256::digest(leaf.as_ref())),
        serial: raw.get(start..).unwrap_or_default().to_vec(),
    })
}

/// Checks that `leaf` carries exactly one SPIFFE URI SAN of the form
/// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`; used inside the TLS client
/// verifier so that a wrong identity fails the handshake itself.
pub(crate) fn check_workload_id(
    leaf: &CertificateDer<'_>,
    trust_domain: TrustDomain<'_>,
) -> Result<(), PeerIdError> {
    let peer = peer_of(leaf)?;
    let id = peer.spiffe_id.borrow();
    if !id.is_member_of(trust_domain) {
        return Err(PeerIdError::ForeignTrustDomain {
            id: id.as_str().to_owned(),
            expected: trust_domain.as_str().to_owned(),
        });
    }
    id.to_principal()
        .map_err(|_| PeerIdError::NotWorkloadId(id.as_str().to_owned()))?;
    Ok(())
}

/// The one URI SAN of a certificate, as a string.
pub(crate) fn single_uri_san(leaf: &CertificateDer<'_>) -> Result<String, PeerIdError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|_| PeerIdError::BadCertificate)?;
    uri_san_of(&cert)
}

fn uri_san_of(cert: &X509Certificate<'_>) -> Result<String, PeerIdError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PeerIdError::BadCertificate)?
        .ok_or(PeerIdError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(PeerIdError::NoUriSan),
        [one] => Ok((*one).to_owned()),
        several => Err(PeerIdError::SeveralUriSans(several.len())),
    }
}
