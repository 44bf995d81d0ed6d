//! Is this TLS server *the* gateway?
//!
//! embedded-tls's certificate verifier checks that the server's chain leads
//! to our trust root and (optionally) a DNS name. Every node and workload in
//! the mesh holds a certificate from the same CA, so chain validity alone
//! would let any of them — a stolen device certificate, say — pose as the
//! gateway. The node therefore also pins the gateway's SPIFFE identity: the
//! server's leaf certificate must carry exactly one URI SAN (as an X.509
//! SVID does) and it must equal the pinned SPIFFE ID, compared as parsed
//! IDs by `meshgate_core::spiffe`, never by string prefix.

use core::fmt;

use meshgate_core::spiffe::SpiffeId;

use crate::der::{self, CertParseError};

/// Why a server certificate is not the gateway's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinError {
    /// The certificate could not be read.
    Certificate(CertParseError),
    /// No URI SAN is a SPIFFE ID.
    NoSpiffeId,
    /// More than one URI SAN: not an X.509 SVID, identity is ambiguous.
    AmbiguousIdentity,
    /// The SPIFFE ID is someone else's.
    WrongIdentity,
    /// A certificate above the leaf is not a CA certificate.
    NotACa,
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Certificate(e) => write!(f, "server certificate: {e}"),
            PinError::NoSpiffeId => f.write_str("server certificate carries no SPIFFE ID"),
            PinError::AmbiguousIdentity => {
                f.write_str("server certificate carries more than one URI SAN")
            }
            PinError::WrongIdentity => {
                f.write_str("server SPIFFE ID is not the pinned gateway identity")
            }
            PinError::NotACa => f.write_str("server chain has a non-CA certificate above the leaf"),
        }
    }
}

/// Checks that `leaf_der` names exactly the gateway identity `expected`.
pub fn check_gateway_leaf(leaf_der: &[u8], expected: &SpiffeId<'_>) -> Result<(), PinError> {
    let mut count = 0usize;
    let mut matched = false;
    let mut any_spiffe = false;
    der::for_each_uri_san(leaf_der, |uri| {
        count += 1;
        if let Some(id) = core::str::from_utf8(uri)
            .ok()
            .and_then(|s| SpiffeId::parse(s).ok())
        {
            any_spiffe = true;
            matched |= id == *expected;
        }
    })
    .map_err(|e| match e {
        CertParseError::NoSubjectAltName => PinError::NoSpiffeId,
        CertParseError::Malformed => PinError::Certificate(e),
    })?;
    if count > 1 {
        return Err(PinError::AmbiguousIdentity);
    }
    if !any_spiffe {
        return Err(PinError::NoSpiffeId);
    }
    if matched {
        Ok(())
    } else {
        Err(PinError::WrongIdentity)
    }
}

/// Every certificate the server sent after its leaf must be a CA
/// certificate (basicConstraints cA). embedded-tls checks chain signatures
/// but not this, so without it a device could sign a forged gateway
/// certificate with its own (end-entity) key.
pub fn check_chain_cas<'c>(rest: impl IntoIterator<Item = &'c [u8]>) -> Result<(), PinError> {
    if rest.into_iter().all(der::is_ca) {
        Ok(())
    } else {
        Err(PinError::NotACa)
    }
}

/// Picks the trust root that issued `top_der` (the last certificate the
/// server sent): the root whose subject equals its issuer. `None` when no
/// root matches; the handshake must then fail.
pub fn root_for<'r>(top_der: &[u8], roots: impl IntoIterator<Item = &'r [u8]>) -> Option<&'r [u8]> {
    let (issuer, _) = der::issuer_and_subject(top_der)?;
    roots
        .into_iter()
        .find(|root| der::issuer_and_subject(root).is_some_and(|(_, subject)| subject == issuer))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
        SanType,
    };
    use std::string::String;
    use std::vec::Vec;

    /// A CA and certificates it issues, for tests across the crate.
    pub(crate) struct TestCa {
        pub(crate) cert_der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                cert_der: cert.der().to_vec(),
                issuer: Issuer::new(params, key),
            }
        }

        /// Signs a certificate with `params` for a given public key.
        pub(crate) fn sign(
            &self,
            params: &CertificateParams,
            public_key: &impl rcgen::PublicKeyData,
        ) -> Vec<u8> {
            params
                .signed_by(public_key, &self.issuer)
                .unwrap()
                .der()
                .to_vec()
        }

        /// An end-entity certificate (not a CA) used as an issuer anyway:
        /// returns its DER and an issuer for forging certificates with it.
        pub(crate) fn rogue_intermediate(&self, uri: &str) -> (Vec<u8>, TestCa) {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, "edge-2");
            params.subject_alt_names =
                std::vec![SanType::URI(String::from(uri).try_into().unwrap())];
            let der = params.signed_by(&key, &self.issuer).unwrap().der().to_vec();
            let forger = TestCa {
                cert_der: der.clone(),
                issuer: Issuer::new(params, key),
            };
            (der, forger)
        }

        /// A leaf with the given URI SANs; returns (cert DER, key PKCS#8 DER).
        pub(crate) fn leaf(&self, uris: &[&str]) -> (Vec<u8>, Vec<u8>) {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            // Like meshgate-ca's SVIDs: empty subject, identity in the URI SAN.
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = uris
                .iter()
                .map(|u| SanType::URI(String::from(*u).try_into().unwrap()))
                .collect();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.der().to_vec(), key.serialize_der())
        }
    }

    const GATEWAY: &str = "spiffe://cluster.local/ns/meshgate-system/sa/gateway";

    #[test]
    fn gateway_certificate_matches_pin() {
        let ca = TestCa::new("mesh root");
        let (leaf, _) = ca.leaf(&[GATEWAY]);
        let pin = SpiffeId::parse(GATEWAY).unwrap();
        assert_eq!(check_gateway_leaf(&leaf, &pin), Ok(()));
    }

    #[test]
    fn device_certificate_from_same_ca_is_refused() {
        let ca = TestCa::new("mesh root");
        let (leaf, _) = ca.leaf(&["spiffe://cluster.local/ns/factory/sa/edge-2"]);
        let pin = SpiffeId::parse(GATEWAY).unwrap();
        assert_eq!(
            check_gateway_leaf(&leaf, &pin),
            Err(PinError::WrongIdentity)
        );
    }

    #[test]
    fn lookalike_trust_domain_is_refused() {
        let ca = TestCa::new("mesh root");
        let (leaf, _) = ca.leaf(&["spiffe://cluster.locali/ns/meshgate-system/sa/gateway"]);
        let pin = SpiffeId::parse(GATEWAY).unwrap();
        assert_eq!(
            check_gateway_leaf(&leaf, &pin),
            Err(PinError::WrongIdentity)
        );
        let (longer, _) = ca.leaf(&["spiffe://cluster.local/ns/meshgate-system/sa/gateway/x"]);
        assert_eq!(
            check_gateway_leaf(&longer, &pin),
            Err(PinError::WrongIdentity)
        );
    }

    #[test]
    fn two_uris_or_none_are_refused() {
        let ca = TestCa::new("mesh root");
        let pin = SpiffeId::parse(GATEWAY).unwrap();
        let (two, _) = ca.leaf(&[GATEWAY, "spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(
            check_gateway_leaf(&two, &pin),
            Err(PinError::AmbiguousIdentity)
        );
        let (none, _) = ca.leaf(&[]);
        assert_eq!(check_gateway_leaf(&none, &pin), Err(PinError::NoSpiffeId));
        let (http, _) = ca.leaf(&["https://gateway.example"]);
        assert_eq!(check_gateway_leaf(&http, &pin), Err(PinError::NoSpiffeId));
        assert!(matches!(
            check_gateway_leaf(&[0x04, 0x01, 0x00], &pin),
            Err(PinError::Certificate(_))
        ));
    }

    #[test]
    fn end_entity_cannot_act_as_intermediate() {
        let ca = TestCa::new("mesh root");
        let (device, _) = ca.leaf(&["spiffe://cluster.local/ns/factory/sa/edge-2"]);
        assert_eq!(check_chain_cas([device.as_slice()]), Err(PinError::NotACa));
        assert_eq!(check_chain_cas([ca.cert_der.as_slice()]), Ok(()));
        assert_eq!(check_chain_cas([]), Ok(()));
    }

    #[test]
    fn root_is_chosen_by_issuer_name() {
        let old = TestCa::new("mesh root 1");
        let new = TestCa::new("mesh root 2");
        let (leaf, _) = new.leaf(&[GATEWAY]);
        let roots = [old.cert_der.as_slice(), new.cert_der.as_slice()];
        assert_eq!(root_for(&leaf, roots), Some(new.cert_der.as_slice()));
        let other = TestCa::new("rogue root");
        let (rogue, _) = other.leaf(&[GATEWAY]);
        assert_eq!(root_for(&rogue, roots), None);
    }
}
