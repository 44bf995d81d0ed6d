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

impl PeerIdError {
    /// The fixed-vocabulary refusal reason written to the access log and the
    /// handshake-failure metric (SECURITY.md lists them).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            PeerIdError::BadCertificate => "bad_certificate",
            PeerIdError::NoUriSan => "no_spiffe_id",
            PeerIdError::SeveralUriSans(_) => "several_uri_sans",
            PeerIdError::NotSpiffe(_) => "not_spiffe_id",
            PeerIdError::NotWorkloadId(_) => "not_a_workload_id",
            PeerIdError::ForeignTrustDomain { .. } => "foreign_trust_domain",
        }
    }
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
    identity_of(&cert, leaf, one_uri(uris_of(&cert)?)?)
}

/// The identity of a parsed certificate whose one URI SAN is `uri`.
fn identity_of(
    cert: &X509Certificate<'_>,
    leaf: &CertificateDer<'_>,
    uri: String,
) -> Result<PeerIdentity, PeerIdError> {
    let spiffe_id = OwnedSpiffeId::parse(&uri).map_err(PeerIdError::NotSpiffe)?;
    let raw = cert.raw_serial();
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    Ok(PeerIdentity {
        spiffe_id,
        leaf_sha256_hex: hex::encode(Sha256::digest(leaf.as_ref())),
        serial: raw.get(start..).unwrap_or_default().to_vec(),
    })
}

/// What the client-certificate verifier learns from one parse of a leaf
/// whose chain webpki accepted: the peer's identity (the SPIFFE check
/// passed) and the leaf's validity period, in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedLeaf {
    pub(crate) peer: PeerIdentity,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

/// The SPIFFE check ([`check_uri_sans`]) and [`peer_of`] in one parse of
/// the certificate: the handshake path parses a client leaf once, not once
/// per question.
pub(crate) fn verified_workload_leaf(
    leaf: &CertificateDer<'_>,
    trust_domain: TrustDomain<'_>,
) -> Result<VerifiedLeaf, PeerIdError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|_| PeerIdError::BadCertificate)?;
    let uris = uris_of(&cert)?;
    check_uri_sans(&uris, trust_domain)?;
    let validity = cert.validity();
    Ok(VerifiedLeaf {
        peer: identity_of(&cert, leaf, one_uri(uris)?)?,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The validity period of a certificate (seconds since the epoch), or
/// `None` when it does not parse.
pub(crate) fn validity_of(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Whether the URI SANs a certificate presented are exactly one SPIFFE ID
/// of the form `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`. The TLS client
/// verifier decides with it (through [`verified_workload_leaf`], so that a
/// wrong identity fails the handshake itself), and the reason of a failed
/// handshake is named from the URIs the TLS error carries (see
/// `identity::SpiffeClientVerifier`) with exactly the same rules.
pub(crate) fn check_uri_sans<S: AsRef<str>>(
    uris: &[S],
    trust_domain: TrustDomain<'_>,
) -> Result<(), PeerIdError> {
    let uri = match uris {
        [] => return Err(PeerIdError::NoUriSan),
        [one] => one.as_ref(),
        several => return Err(PeerIdError::SeveralUriSans(several.len())),
    };
    let spiffe_id = OwnedSpiffeId::parse(uri).map_err(PeerIdError::NotSpiffe)?;
    let id = spiffe_id.borrow();
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

/// Every URI SAN of a certificate (none when it has no subjectAltName).
pub(crate) fn uri_sans(leaf: &CertificateDer<'_>) -> Result<Vec<String>, PeerIdError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|_| PeerIdError::BadCertificate)?;
    uris_of(&cert)
}

/// The one URI SAN of a certificate, as a string.
pub(crate) fn single_uri_san(leaf: &CertificateDer<'_>) -> Result<String, PeerIdError> {
    one_uri(uri_sans(leaf)?)
}

fn uris_of(cert: &X509Certificate<'_>) -> Result<Vec<String>, PeerIdError> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|_| PeerIdError::BadCertificate)?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

fn one_uri(mut uris: Vec<String>) -> Result<String, PeerIdError> {
    match uris.len() {
        0 => Err(PeerIdError::NoUriSan),
        1 => uris.pop().ok_or(PeerIdError::NoUriSan),
        n => Err(PeerIdError::SeveralUriSans(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(uris: &[&str]) -> Result<(), &'static str> {
        let td = TrustDomain::parse("cluster.local").expect("td");
        check_uri_sans(uris, td).map_err(|e| e.reason())
    }

    #[test]
    fn uri_sans_are_judged_by_parsed_segments() {
        assert_eq!(reason(&["spiffe://cluster.local/ns/a/sa/b"]), Ok(()));
        assert_eq!(reason(&[]), Err("no_spiffe_id"));
        assert_eq!(
            reason(&[
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/c"
            ]),
            Err("several_uri_sans")
        );
        for foreign in [
            "spiffe://cluster.localx/ns/a/sa/b",
            "spiffe://evil.local/ns/a/sa/b",
            "spiffe://local/ns/a/sa/b",
        ] {
            assert_eq!(reason(&[foreign]), Err("foreign_trust_domain"), "{foreign}");
        }
        assert_eq!(
            reason(&["spiffe://cluster.local/admin"]),
            Err("not_a_workload_id")
        );
        assert_eq!(
            reason(&["https://cluster.local/ns/a/sa/b"]),
            Err("not_spiffe_id")
        );
        assert_eq!(
            reason(&["spiffe://CLUSTER.LOCAL/ns/a/sa/b"]),
            Err("not_spiffe_id")
        );
    }
}
