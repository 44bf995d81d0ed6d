//! The mTLS client configuration for embedded-tls: a `CryptoProvider` that
//! signs with the node's P-256 key and presents its certificate, and a
//! verifier that accepts only *the* gateway.
//!
//! [`GatewayVerifier`] runs three checks on the server's certificates,
//! all of which must pass:
//! 1. the pin ([`crate::pin::check_gateway_leaf`]): the leaf carries exactly
//!    the gateway's SPIFFE ID;
//! 2. every certificate above the leaf is a CA ([`crate::pin::check_chain_cas`]),
//!    which embedded-tls does not check;
//! 3. embedded-tls's `rustpki` `CertVerifier` against the trust root that
//!    issued the chain (picked by issuer name, so a bundle in roll-over
//!    works), which verifies the signatures, the validity period when the
//!    wall clock is known, and then the server's CertificateVerify.
//!
//! DNS host-name verification is not used: the gateway's identity is its
//! SPIFFE ID, and the node reaches it by IP address. Without a host name,
//! embedded-tls requires the leaf to carry no CN and no DNS SAN — which is
//! what meshgate-ca issues (empty subject, one URI SAN); a gateway
//! certificate with a CN is refused, failing closed.

use core::sync::atomic::{AtomicU32, Ordering};

use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateRef, CertificateVerifyRef, CryptoProvider,
    SignatureScheme, TlsClock, TlsError, TlsVerifier,
};
use heapless::Vec;
use meshgate_core::spiffe::SpiffeId;
use meshgate_core::time::UnixTime;
use p256::ecdsa::DerSignature;
use rand_core::CryptoRngCore;

use crate::enroll::NodeKey;
use crate::pin;

/// The one cipher suite the node offers (TLS 1.3, AES-128-GCM, SHA-256).
pub type CipherSuite = Aes128GcmSha256;

/// Largest server chain the verifier keeps between Certificate and
/// CertificateVerify.
pub const MAX_SERVER_CHAIN: usize = 2048;

/// Wall-clock seconds learned from the gateway, 0 while unknown. A
/// 32-bit value: Cortex-M4 has no 64-bit atomics, and u32 seconds last
/// until 2106.
static WALL_SECS: AtomicU32 = AtomicU32::new(0);

/// Records the current wall-clock time for certificate validity checks.
pub fn set_wall_time(now: UnixTime) {
    let secs = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
    WALL_SECS.store(secs, Ordering::Relaxed);
}

/// embedded-tls reads the time through a type, not a value.
pub struct LearnedClock;

impl TlsClock for LearnedClock {
    fn now() -> Option<u64> {
        // Before the first hello from the gateway (first boot, enrollment)
        // there is no time; validity periods are then not checked, the
        // signatures and the pin still are.
        match WALL_SECS.load(Ordering::Relaxed) {
            0 => None,
            s => Some(u64::from(s)),
        }
    }
}

/// Accepts only the gateway (see the module docs).
pub struct GatewayVerifier<'a> {
    roots: Vec<&'a [u8], { meshgate_core::wire::MAX_TRUST_ROOTS }>,
    gateway: SpiffeId<'a>,
    inner: Option<CertVerifier<'a, CipherSuite, LearnedClock, MAX_SERVER_CHAIN>>,
}

impl<'a> GatewayVerifier<'a> {
    /// A verifier trusting `roots` and pinning `gateway`.
    pub fn new(roots: impl IntoIterator<Item = &'a [u8]>, gateway: SpiffeId<'a>) -> Self {
        let mut list = Vec::new();
        for r in roots {
            // More roots than the wire protocol carries cannot occur;
            // extra ones would be ignored, never trusted by accident.
            if list.push(r).is_err() {
                break;
            }
        }
        GatewayVerifier {
            roots: list,
            gateway,
            inner: None,
        }
    }
}

impl TlsVerifier<CipherSuite> for GatewayVerifier<'_> {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // Identity is the pinned SPIFFE ID, not a DNS name (module docs).
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &<CipherSuite as embedded_tls::TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        self.inner = None;
        let mut entries = cert.entries.iter().map(entry_der);
        let leaf = entries
            .next()
            .flatten()
            .ok_or(TlsError::InvalidCertificate)?;
        pin::check_gateway_leaf(leaf, &self.gateway).map_err(|_| TlsError::InvalidCertificate)?;
        let mut above = Vec::<&[u8], 8>::new();
        for e in entries {
            let d = e.ok_or(TlsError::InvalidCertificate)?;
            above.push(d).map_err(|_| TlsError::InvalidCertificate)?;
        }
        pin::check_chain_cas(above.iter().copied()).map_err(|_| TlsError::InvalidCertificate)?;
        let top = above.last().copied().unwrap_or(leaf);
        let root = pin::root_for(top, self.roots.iter().copied())
            // The server may send the root itself as the top of its chain.
            .or_else(|| self.roots.iter().copied().find(|r| *r == top))
            .ok_or(TlsError::InvalidCertificate)?;
        let mut inner = CertVerifier::new(Certificate::X509(root));
        // rustpki's verifier also matches a host name against the leaf's
        // DNS names, and without one demands that the leaf has none. Our
        // identity check is the SPIFFE pin above; the gateway's certificate
        // may carry DNS names for its HTTP clients, so the leaf's own first
        // name is given, which makes that match a no-op while chain
        // signatures and validity are still checked. (rustpki refuses DNS
        // names over 64 bytes and reads only the first three.)
        if let Some(name) =
            crate::der::first_dns_san(leaf).and_then(|n| core::str::from_utf8(n).ok())
        {
            inner.set_hostname_verification(name)?;
        }
        inner.verify_certificate(transcript, cert)?;
        self.inner = Some(inner);
        Ok(())
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        self.inner
            .as_mut()
            .ok_or(TlsError::InvalidCertificate)?
            .verify_signature(verify)
    }
}

fn entry_der<'c>(e: &embedded_tls::CertificateEntryRef<'c>) -> Option<&'c [u8]> {
    match e {
        embedded_tls::CertificateEntryRef::X509(d) => Some(d),
        // Raw public keys carry no identity to pin.
        embedded_tls::CertificateEntryRef::RawPublicKey(_) => None,
    }
}

/// The node's crypto for one handshake.
pub struct NodeCrypto<'a, R> {
    rng: R,
    verifier: GatewayVerifier<'a>,
    /// Key and leaf certificate for client authentication; `None` on the
    /// enrollment connection (no certificate yet).
    client: Option<(NodeKey, &'a [u8])>,
}

impl<'a, R: CryptoRngCore> NodeCrypto<'a, R> {
    /// Crypto for a handshake; `client` enables mTLS.
    pub fn new(rng: R, verifier: GatewayVerifier<'a>, client: Option<(NodeKey, &'a [u8])>) -> Self {
        NodeCrypto {
            rng,
            verifier,
            client,
        }
    }
}

impl<R: CryptoRngCore> CryptoProvider for NodeCrypto<'_, R> {
    type CipherSuite = CipherSuite;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<DerSignature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        let (key, _) = self.client.as_ref().ok_or(TlsError::InvalidPrivateKey)?;
        Ok((key.signing_key(), SignatureScheme::EcdsaSecp256r1Sha256))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client
            .as_ref()
            .map(|(_, leaf)| Certificate::X509(*leaf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::tests::TestCa;
    use embedded_tls::CertificateEntryRef;
    use sha2::Digest;

    const GATEWAY: &str = "spiffe://cluster.local/ns/meshgate-system/sa/gateway";

    fn verify(roots: &[&[u8]], chain: &[&[u8]]) -> Result<(), TlsError> {
        let pin = SpiffeId::parse(GATEWAY).unwrap();
        let mut v = GatewayVerifier::new(roots.iter().copied(), pin);
        let mut cert = CertificateRef::with_context(&[]);
        for der in chain {
            cert.add(CertificateEntryRef::X509(der)).unwrap();
        }
        let transcript = sha2::Sha256::new();
        TlsVerifier::<CipherSuite>::verify_certificate(&mut v, &transcript, cert)
    }

    #[test]
    fn gateway_chain_is_accepted() {
        let ca = TestCa::new("mesh root");
        let (leaf, _) = ca.leaf(&[GATEWAY]);
        let r = verify(&[&ca.cert_der], &[&leaf]);
        assert!(r.is_ok(), "{r:?}");
        assert!(verify(&[&ca.cert_der], &[&leaf, &ca.cert_der]).is_ok());
    }

    /// The gateway's serving certificate names its routed hosts as DNS
    /// SANs next to its SPIFFE ID; the node accepts it on the SPIFFE ID.
    #[test]
    fn gateway_certificate_with_dns_names_is_accepted() {
        let ca = TestCa::new("mesh root");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = std::vec![
            rcgen::SanType::URI(String::from(GATEWAY).try_into().unwrap()),
            rcgen::SanType::DnsName("*.bookinfo.svc.cluster.local".try_into().unwrap()),
            rcgen::SanType::DnsName("details.bookinfo.svc.cluster.local".try_into().unwrap()),
            rcgen::SanType::DnsName("plc-1.factory".try_into().unwrap()),
        ];
        let leaf = ca.sign(&params, &key);
        let r = verify(&[&ca.cert_der], &[&leaf]);
        assert!(r.is_ok(), "{r:?}");
        // DNS names do not stand in for the pinned identity.
        params.subject_alt_names = std::vec![
            rcgen::SanType::URI(
                String::from("spiffe://cluster.local/ns/x/sa/y")
                    .try_into()
                    .unwrap()
            ),
            rcgen::SanType::DnsName("details.bookinfo.svc.cluster.local".try_into().unwrap()),
        ];
        let leaf = ca.sign(&params, &key);
        assert!(matches!(
            verify(&[&ca.cert_der], &[&leaf]),
            Err(TlsError::InvalidCertificate)
        ));
    }

    #[test]
    fn device_certificate_from_our_ca_is_refused() {
        let ca = TestCa::new("mesh root");
        let (device, _) = ca.leaf(&["spiffe://cluster.local/ns/factory/sa/edge-2"]);
        assert!(matches!(
            verify(&[&ca.cert_der], &[&device]),
            Err(TlsError::InvalidCertificate)
        ));
    }

    #[test]
    fn gateway_identity_from_another_ca_is_refused() {
        let ours = TestCa::new("mesh root");
        let rogue = TestCa::new("mesh root");
        let (leaf, _) = rogue.leaf(&[GATEWAY]);
        // Same subject name as our root, so it is picked; the signature
        // check must then fail.
        assert!(verify(&[&ours.cert_der], &[&leaf]).is_err());
        let other = TestCa::new("other root");
        let (leaf, _) = other.leaf(&[GATEWAY]);
        assert!(verify(&[&ours.cert_der], &[&leaf]).is_err());
    }

    #[test]
    fn gateway_certificate_forged_by_a_device_is_refused() {
        let ca = TestCa::new("mesh root");
        let (device, forger) = ca.rogue_intermediate("spiffe://cluster.local/ns/factory/sa/edge-2");
        let (forged, _) = forger.leaf(&[GATEWAY]);
        assert!(matches!(
            verify(&[&ca.cert_der], &[&forged, &device]),
            Err(TlsError::InvalidCertificate)
        ));
    }

    #[test]
    fn tampered_gateway_certificate_is_refused() {
        let ca = TestCa::new("mesh root");
        let (mut leaf, _) = ca.leaf(&[GATEWAY]);
        let last = leaf.len() - 1;
        leaf[last] ^= 0x01; // inside the signature
        assert!(verify(&[&ca.cert_der], &[&leaf]).is_err());
    }
}
