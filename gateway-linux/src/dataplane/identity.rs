//! The gateway's own identity and the TLS configurations derived from it.
//!
//! An [`Identity`] is the gateway's certificate chain (its leaf carries
//! `spiffe://<td>/ns/<ns>/sa/<sa>`), private key and the mesh trust bundle.
//! The control plane fills it (from files, later from the built-in CA) and
//! publishes it through an `Arc<ArcSwap<Identity>>`; every new handshake
//! reads the current one, so certificate and trust-bundle rotation needs no
//! restart and never touches established connections.
//!
//! Everything TLS-specific that depends on the identity is built once here,
//! when the identity is created, instead of per connection:
//! - the inbound server configurations for STRICT (client certificate
//!   mandatory, so rustls answers a certificate-less TLS 1.3 client with
//!   alert 116 `certificate_required`) and PERMISSIVE (optional), each with
//!   and without HTTP ALPN;
//! - the client-certificate verifier, which chains to the trust bundle and
//!   additionally requires exactly one SPIFFE URI SAN in the mesh trust
//!   domain, so a certificate from another trust domain fails the handshake;
//! - outbound client configurations that verify the upstream's SPIFFE ID
//!   (secure naming) instead of a DNS name.
//!
//! The client verifier remembers the chains it accepted ([`VerifiedChains`],
//! one per identity, so per trust bundle): a client presenting exactly the
//! same certificate bytes again skips the chain's signature verification
//! and the certificate parsing, the most expensive part of a handshake
//! after the key exchange. What can change between two handshakes with the
//! same bytes is still checked on every one: the validity period against
//! the current time, and revocation. The proof of possession (the client's
//! CertificateVerify signature) is verified by rustls on every handshake,
//! and there is no session resumption.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use meshgate_core::spiffe::{OwnedSpiffeId, OwnedTrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::peer::{self, PeerIdError};
use super::revocation::RevocationCheck;

/// Why an identity could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    /// No certificate in the chain.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// No root in the trust bundle.
    #[error("the trust bundle is empty")]
    EmptyTrustBundle,
    /// A trust-bundle certificate was rejected as a trust anchor.
    #[error("trust bundle certificate rejected: {0}")]
    BadRoot(rustls::Error),
    /// The private key could not be loaded or does not match the leaf.
    #[error("private key unusable: {0}")]
    BadKey(rustls::Error),
    /// The gateway's own leaf has no usable SPIFFE ID.
    #[error("gateway certificate: {0}")]
    OwnId(PeerIdError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
}

/// Whether the listener carries HTTP (ALPN h2/http1.1) or opaque TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// HTTP/1.1 and HTTP/2.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// The gateway's certificate, key and trust bundle, plus derived TLS
/// configurations. Immutable: rotation publishes a new one.
#[derive(Debug)]
pub(crate) struct Identity {
    spiffe_id: OwnedSpiffeId,
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    server_required_http: Arc<ServerConfig>,
    server_required_tcp: Arc<ServerConfig>,
    server_optional_http: Arc<ServerConfig>,
    server_optional_tcp: Arc<ServerConfig>,
    /// The chains the client verifiers accepted.
    verified: Arc<VerifiedChains>,
}

/// ALPN ids offered to HTTP clients, h2 first as Envoy does.
const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl Identity {
    /// Builds an identity from DER: `chain[0]` is the gateway's leaf.
    /// Nothing is revoked (see [`Self::with_revocation`]).
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, IdentityError> {
        Self::with_revocation(chain, key, roots, None)
    }

    /// Like [`Self::new`], with client certificates also checked against
    /// `revocation` during the handshake (a revoked one fails it with the
    /// `certificate_revoked` alert).
    pub(crate) fn with_revocation(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: &[CertificateDer<'static>],
        revocation: Option<Arc<dyn RevocationCheck>>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
        if roots.is_empty() {
            return Err(IdentityError::EmptyTrustBundle);
        }
        // The gateway's own SPIFFE ID defines the mesh trust domain that
        // its TLS layer accepts; its trust domain check cannot be skipped.
        let uri = peer::single_uri_san(leaf).map_err(IdentityError::OwnId)?;
        let spiffe_id = OwnedSpiffeId::parse(&uri)
            .map_err(|e| IdentityError::OwnId(PeerIdError::NotSpiffe(e)))?;
        let trust_domain = spiffe_id.borrow().trust_domain().to_owned();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).map_err(IdentityError::BadRoot)?;
        }
        let roots = Arc::new(store);

        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(IdentityError::BadKey)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(IdentityError::BadKey)?;
        let certified = Arc::new(certified);

        // One memory of accepted chains for both verifiers: they check
        // against the same roots and trust domain.
        let verified = Arc::new(VerifiedChains::default());
        let verifier = |mandatory: bool| -> Result<Arc<dyn ClientCertVerifier>, IdentityError> {
            let builder =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let builder = if mandatory {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            let inner = builder.build().map_err(IdentityError::Verifier)?;
            Ok(Arc::new(SpiffeClientVerifier {
                inner,
                trust_domain: trust_domain.clone(),
                revocation: revocation.clone(),
                verified: verified.clone(),
            }))
        };
        let required = verifier(true)?;
        let optional = verifier(false)?;
        let server = |v: &Arc<dyn ClientCertVerifier>, http: bool| {
            let mut cfg = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(IdentityError::Config)?
                .with_client_cert_verifier(v.clone())
                .with_cert_resolver(Arc::new(FixedServerCert(certified.clone())));
            if http {
                cfg.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
            }
            // No session resumption: a resumed session skips the client
            // verifier and with it the revocation check, and issuing
            // tickets after every full handshake costs CPU for clients
            // that never resume.
            cfg.send_tls13_tickets = 0;
            cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            Ok::<_, IdentityError>(Arc::new(cfg))
        };
        Ok(Self {
            server_required_http: server(&required, true)?,
            server_required_tcp: server(&required, false)?,
            server_optional_http: server(&optional, true)?,
            server_optional_tcp: server(&optional, false)?,
            spiffe_id,
            certified,
            roots,
            provider,
            verified,
        })
    }

    /// The gateway's SPIFFE ID (the XFCC `By=` element).
    pub(crate) fn spiffe_id(&self) -> &OwnedSpiffeId {
        &self.spiffe_id
    }

    /// The identity of a client leaf after the handshake: from the client
    /// verifier's memory when it accepted this leaf (what it holds is a
    /// function of the leaf's bytes alone), else parsed.
    pub(crate) fn peer_of(
        &self,
        leaf: &CertificateDer<'_>,
    ) -> Result<peer::PeerIdentity, PeerIdError> {
        match self.verified.peer(leaf) {
            Some(peer) => Ok(peer),
            None => peer::peer_of(leaf),
        }
    }

    /// The inbound server configuration: client certificate required
    /// (STRICT) or optional (PERMISSIVE), for an HTTP or TCP listener.
    pub(crate) fn server_config(
        &self,
        cert_required: bool,
        protocol: Protocol,
    ) -> Arc<ServerConfig> {
        match (cert_required, protocol) {
            (true, Protocol::Http) => self.server_required_http.clone(),
            (true, Protocol::Tcp) => self.server_required_tcp.clone(),
            (false, Protocol::Http) => self.server_optional_http.clone(),
            (false, Protocol::Tcp) => self.server_optional_tcp.clone(),
        }
    }

    /// An outbound configuration presenting the gateway's certificate and
    /// accepting only an upstream whose certificate chains to the trust
    /// bundle and carries one of `expected` as its SPIFFE ID.
    pub(crate) fn client_config(
        &self,
        expected: Vec<OwnedSpiffeId>,
        protocol: Protocol,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        let verifier = Arc::new(SecureNamingVerifier {
            roots: self.roots.clone(),
            provider: self.provider.clone(),
            expected,
        });
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(IdentityError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(FixedClientCert(self.certified.clone())));
        if protocol == Protocol::Http {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Arc::new(cfg))
    }
}

/// Serves the identity's certificate to every client. The resolver is
/// fixed because a rotation publishes a whole new [`Identity`] (the trust
/// bundle and verifiers change with it).
#[derive(Debug)]
struct FixedServerCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Presents the gateway's certificate to mesh upstreams.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The inbound client-certificate verifier: rustls' WebPKI verifier (chain
/// to the trust bundle, clientAuth usage, validity) plus the SPIFFE check:
/// exactly one URI SAN, a `/ns/<ns>/sa/<sa>` ID in the mesh trust domain.
/// Doing the SPIFFE check here, not only after the handshake, makes a
/// certificate from another trust domain a handshake failure (bad
/// certificate alert), as Istio behaves.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: OwnedTrustDomain,
    revocation: Option<Arc<dyn RevocationCheck>>,
    verified: Arc<VerifiedChains>,
}

/// How many accepted client chains an identity remembers. A mesh gateway
/// sees one certificate per client workload (rotated about daily), so this
/// covers a large mesh; when it is full the memory starts over, which only
/// costs full verifications again. At most about 2 KiB per entry.
const VERIFIED_CHAINS_MAX: usize = 1024;

/// Client certificate chains that passed the WebPKI verification and the
/// SPIFFE check against one identity's roots and trust domain, keyed by
/// the exact DER bytes of the leaf (and compared by the exact bytes of the
/// intermediates). Verifying the same bytes against the same trust anchors
/// gives the same answer at any time within the certificates' validity, so
/// an entry stands in for the signature checks of the chain; the caller
/// still checks the time window and revocation on every handshake.
#[derive(Debug, Default)]
struct VerifiedChains {
    chains: Mutex<HashMap<Box<[u8]>, VerifiedChain>>,
}

/// One remembered chain.
#[derive(Debug)]
struct VerifiedChain {
    intermediates: Box<[Box<[u8]>]>,
    /// The latest notBefore and the earliest notAfter over the leaf and
    /// every presented intermediate (seconds since the epoch): the chain
    /// verifies only while all of them are valid.
    not_before: i64,
    not_after: i64,
    peer: peer::PeerIdentity,
}

impl VerifiedChains {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, VerifiedChain>> {
        // Entries are inserted and removed whole, so a poisoned lock still
        // guards consistent data.
        self.chains.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer of a chain accepted before with exactly these bytes, if
    /// every certificate of it is valid at `now`.
    fn get(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<peer::PeerIdentity> {
        let now = i64::try_from(now.as_secs()).ok()?;
        let chains = self.lock();
        let chain = chains.get(leaf.as_ref())?;
        let same_intermediates = chain.intermediates.len() == intermediates.len()
            && chain
                .intermediates
                .iter()
                .zip(intermediates)
                .all(|(a, b)| a.as_ref() == b.as_ref());
        // webpki's own validity check is inclusive at both ends.
        (same_intermediates && chain.not_before <= now && now <= chain.not_after)
            .then(|| chain.peer.clone())
    }

    /// The identity of a remembered leaf, whatever the time and chain.
    fn peer(&self, leaf: &CertificateDer<'_>) -> Option<peer::PeerIdentity> {
        self.lock()
            .get(leaf.as_ref())
            .map(|chain| chain.peer.clone())
    }

    /// Remembers a chain that was just verified at `now`. A chain whose
    /// presented certificates are not all parseable and valid at `now`
    /// (webpki may have ignored an unused intermediate) is not remembered.
    fn insert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        verified: &peer::VerifiedLeaf,
        now: UnixTime,
    ) {
        let Ok(now) = i64::try_from(now.as_secs()) else {
            return;
        };
        let (mut not_before, mut not_after) = (verified.not_before, verified.not_after);
        for der in intermediates {
            let Some((nb, na)) = peer::validity_of(der.as_ref()) else {
                return;
            };
            not_before = not_before.max(nb);
            not_after = not_after.min(na);
        }
        if !(not_before <= now && now <= not_after) {
            return;
        }
        let chain = VerifiedChain {
            intermediates: intermediates.iter().map(|c| c.as_ref().into()).collect(),
            not_before,
            not_after,
            peer: verified.peer.clone(),
        };
        let mut chains = self.lock();
        if chains.len() >= VERIFIED_CHAINS_MAX {
            chains.clear();
        }
        chains.insert(leaf.as_ref().into(), chain);
    }
}

impl SpiffeClientVerifier {
    /// The TLS error for a certificate that chains to the trust bundle but
    /// carries no acceptable SPIFFE ID. rustls derives the alert from the
    /// error variant; `NotValidForName` is the one that sends
    /// `bad_certificate` (42), the alert core's admission prescribes for a
    /// foreign trust domain or a missing SPIFFE ID (`ApplicationVerification
    /// Failure` would send `access_denied`). Its context carries the trust
    /// domain that was expected and the URI SANs the certificate presented,
    /// from which `peer::check_uri_sans` names the exact reason for the
    /// access log and metrics.
    fn spiffe_rejection(&self, end_entity: &CertificateDer<'_>) -> rustls::Error {
        let presented = peer::uri_sans(end_entity).unwrap_or_default();
        let error = match ServerName::try_from(self.trust_domain.borrow().as_str().to_owned()) {
            Ok(expected) => CertificateError::NotValidForNameContext {
                expected,
                presented,
            },
            // A trust domain that is not a DNS-shaped name (SPIFFE allows
            // `_`): same alert, reason reported as `bad_spiffe_id`.
            Err(_) => CertificateError::NotValidForName,
        };
        rustls::Error::InvalidCertificate(error)
    }
}

/// The access-log reason of a client certificate refused by
/// [`SpiffeClientVerifier::spiffe_rejection`].
pub(crate) fn spiffe_rejection_reason(
    expected: &ServerName<'_>,
    presented: &[String],
) -> &'static str {
    let expected = expected.to_str();
    match meshgate_core::spiffe::TrustDomain::parse(&expected) {
        Ok(td) => match peer::check_uri_sans(presented, td) {
            Err(e) => e.reason(),
            // The verifier only builds this error for a failed check; a
            // passing re-check means the error came from elsewhere.
            Ok(()) => "bad_spiffe_id",
        },
        Err(_) => "bad_spiffe_id",
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let peer = match self.verified.get(end_entity, intermediates, now) {
            Some(peer) => peer,
            None => {
                self.inner
                    .verify_client_cert(end_entity, intermediates, now)?;
                let leaf = match peer::verified_workload_leaf(
                    end_entity,
                    self.trust_domain.borrow(),
                ) {
                    Ok(leaf) => leaf,
                    Err(e) => {
                        tracing::debug!(error = %e, "client certificate rejected by SPIFFE check");
                        return Err(self.spiffe_rejection(end_entity));
                    }
                };
                self.verified.insert(end_entity, intermediates, &leaf, now);
                leaf.peer
            }
        };
        if let Some(revocation) = &self.revocation
            && revocation.is_revoked(peer.spiffe_id.borrow().as_str(), &peer.serial)
        {
            tracing::info!(
                spiffe_id = peer.spiffe_id.borrow().as_str(),
                serial = %hex::encode(&peer.serial),
                "client certificate is revoked; handshake refused"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Secure naming for mesh upstreams: the server certificate must chain to
/// the trust bundle and carry exactly the SPIFFE ID of the service account
/// the service is declared to run as. The DNS name the gateway dialled is
/// deliberately ignored: mesh certificates carry no DNS names, and the
/// SPIFFE ID is a stronger statement of who the upstream is.
#[derive(Debug)]
struct SecureNamingVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Vec<OwnedSpiffeId>,
}

impl ServerCertVerifier for SecureNamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = peer::single_uri_san(end_entity).map_err(|e| {
            tracing::warn!(expected = ?self.expected, error = %e, "secure naming: upstream certificate has no usable SPIFFE ID");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        let matches = OwnedSpiffeId::parse(&presented).is_ok_and(|id| self.expected.contains(&id));
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(expected = ?self.expected, presented = %presented, "secure naming: upstream presented the wrong SPIFFE ID");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use core::time::Duration;

    use meshgate_core::spiffe::TrustDomain;

    use super::*;
    use crate::dataplane::tests::Pki;

    /// rustls' WebPKI verifier, counting how often it is asked.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        calls: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    #[derive(Debug, Default)]
    struct Switch(AtomicBool);

    impl RevocationCheck for Switch {
        fn is_revoked(&self, _spiffe_id: &str, _serial: &[u8]) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    struct Fixture {
        pki: Pki,
        counting: Arc<Counting>,
        revoked: Arc<Switch>,
        verifier: SpiffeClientVerifier,
    }

    impl Fixture {
        fn new() -> Self {
            let pki = Pki::new("verified-chains CA");
            let mut roots = RootCertStore::empty();
            roots.add(pki.ca_der.clone()).expect("root");
            let inner = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .expect("webpki verifier");
            let counting = Arc::new(Counting {
                inner,
                calls: AtomicUsize::new(0),
            });
            let revoked = Arc::new(Switch::default());
            let verifier = SpiffeClientVerifier {
                inner: counting.clone(),
                trust_domain: TrustDomain::parse("cluster.local").expect("td").to_owned(),
                revocation: Some(revoked.clone()),
                verified: Arc::new(VerifiedChains::default()),
            };
            Fixture {
                pki,
                counting,
                revoked,
                verifier,
            }
        }

        fn calls(&self) -> usize {
            self.counting.calls.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn an_accepted_chain_is_remembered_but_time_and_revocation_are_checked_every_time() {
        let f = Fixture::new();
        let leaf = f
            .pki
            .leaf("client", &["spiffe://cluster.local/ns/a/sa/b"], &[])
            .der;
        let now = UnixTime::now();
        f.verifier
            .verify_client_cert(&leaf, &[], now)
            .expect("first handshake");
        assert_eq!(f.calls(), 1);
        f.verifier
            .verify_client_cert(&leaf, &[], now)
            .expect("same chain again");
        assert_eq!(f.calls(), 1, "the same bytes are not verified twice");

        // What the memory answers after the handshake is what a parse says.
        assert_eq!(
            f.verifier.verified.peer(&leaf),
            Some(peer::peer_of(&leaf).expect("parsed"))
        );

        // Other intermediates are another chain: verified in full (and
        // remembered in place of the first, one chain per leaf).
        let extra = [f.pki.ca_der.clone()];
        f.verifier
            .verify_client_cert(&leaf, &extra, now)
            .expect("with an extra intermediate");
        assert_eq!(f.calls(), 2);
        f.verifier
            .verify_client_cert(&leaf, &extra, now)
            .expect("that chain again");
        assert_eq!(f.calls(), 2);

        // Outside the validity period the remembered chain does not count:
        // webpki decides (rcgen's certificates start in 1975).
        let err = f
            .verifier
            .verify_client_cert(&leaf, &extra, UnixTime::since_unix_epoch(Duration::ZERO))
            .expect_err("not valid in 1970");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
                )
            ),
            "{err:?}"
        );
        assert_eq!(f.calls(), 3);

        // A revocation recorded after the chain was remembered still fails
        // the next handshake, without a new verification.
        f.revoked.0.store(true, Ordering::SeqCst);
        let err = f
            .verifier
            .verify_client_cert(&leaf, &extra, now)
            .expect_err("revoked");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
        assert_eq!(f.calls(), 3);
    }

    #[test]
    fn a_refused_chain_is_not_remembered() {
        let f = Fixture::new();
        let foreign = f
            .pki
            .leaf("foreign", &["spiffe://evil.local/ns/a/sa/b"], &[])
            .der;
        let now = UnixTime::now();
        for round in 1..=2 {
            let err = f
                .verifier
                .verify_client_cert(&foreign, &[], now)
                .expect_err("foreign trust domain");
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForNameContext { .. }
                    )
                ),
                "{err:?}"
            );
            assert_eq!(f.calls(), round, "verified in full every time");
        }
        let stranger = Pki::new("another CA")
            .leaf("stranger", &["spiffe://cluster.local/ns/a/sa/b"], &[])
            .der;
        for round in 3..=4 {
            f.verifier
                .verify_client_cert(&stranger, &[], now)
                .expect_err("unknown issuer");
            assert_eq!(f.calls(), round);
        }
    }

    #[test]
    fn the_memory_of_chains_is_bounded() {
        let chains = VerifiedChains::default();
        let now = UnixTime::now();
        let secs = i64::try_from(now.as_secs()).expect("now");
        let leaf = peer::VerifiedLeaf {
            peer: peer::PeerIdentity {
                spiffe_id: OwnedSpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").expect("id"),
                leaf_sha256_hex: String::new(),
                serial: vec![1],
            },
            not_before: secs - 60,
            not_after: secs + 60,
        };
        for i in 0..VERIFIED_CHAINS_MAX + 10 {
            let der = CertificateDer::from(i.to_be_bytes().to_vec());
            chains.insert(&der, &[], &leaf, now);
            assert!(chains.lock().len() <= VERIFIED_CHAINS_MAX);
            assert_eq!(chains.get(&der, &[], now), Some(leaf.peer.clone()));
        }
        // An entry is used only inside the window it was stored with.
        let der = CertificateDer::from(0usize.to_be_bytes().to_vec());
        chains.insert(&der, &[], &leaf, now);
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 61));
        assert_eq!(chains.get(&der, &[], later), None);
    }
}
