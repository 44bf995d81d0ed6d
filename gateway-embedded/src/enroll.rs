//! The node's key pair and its PKCS#10 certificate signing request.
//!
//! The key is a P-256 key generated on the device from a caller-supplied
//! cryptographic RNG (the hardware RNG on a board; tests may pass a seeded
//! one). The CSR is DER written by hand into a caller buffer, with no
//! allocator: an empty subject or `CN=<name>`, the EC public key, and
//! optionally an extensionRequest carrying a subjectAltName with the SPIFFE
//! URI the node expects. The CA decides the identity it issues either way,
//! so the SAN request is a hint, not a claim the gateway trusts.
//! Signature algorithm: ecdsa-with-SHA256 (RFC 5758), deterministic
//! (RFC 6979), so signing needs no randomness.

use core::fmt;

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, Signature, SigningKey};
use rand_core::CryptoRngCore;

use crate::der::{DerWriter, Overflow, tag};

/// DER content of OID 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER content of OID 1.2.840.10045.3.1.7 (prime256v1 / secp256r1).
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER content of OID 1.2.840.10045.4.3.2 (ecdsa-with-SHA256).
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// DER content of OID 1.2.840.113549.1.9.14 (PKCS#9 extensionRequest).
const OID_EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
/// DER content of OID 2.5.29.17 (subjectAltName).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// DER content of OID 2.5.4.3 (commonName).
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// A CSR with a CN and a SAN URI of typical length fits in this many bytes.
pub const CSR_BUF_LEN: usize = 512;

/// Length of the stored private scalar.
pub const SECRET_LEN: usize = 32;

/// The node's P-256 key pair.
///
/// The secret scalar is zeroised when the key is dropped (p256's
/// `SecretKey` does that).
#[derive(Clone)]
pub struct NodeKey {
    secret: p256::SecretKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.write_str("NodeKey(P-256)")
    }
}

/// The stored key bytes are not a valid P-256 scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidKey;

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stored key is not a valid P-256 private key")
    }
}

impl NodeKey {
    /// Generates a fresh key from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        NodeKey {
            secret: p256::SecretKey::random(rng),
        }
    }

    /// The key from its stored scalar (see [`to_bytes`](Self::to_bytes)).
    pub fn from_bytes(bytes: &[u8; SECRET_LEN]) -> Result<Self, InvalidKey> {
        p256::SecretKey::from_slice(bytes)
            .map(|secret| NodeKey { secret })
            .map_err(|_| InvalidKey)
    }

    /// The private scalar, big-endian, for persistence.
    pub fn to_bytes(&self) -> [u8; SECRET_LEN] {
        self.secret.to_bytes().into()
    }

    /// The public key as an uncompressed SEC1 point (65 bytes).
    pub fn public_sec1(&self) -> [u8; 65] {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = self.secret.public_key().to_encoded_point(false);
        let mut out = [0u8; 65];
        // An uncompressed P-256 point is always 65 bytes.
        if let Some(dst) = out.get_mut(..point.as_bytes().len()) {
            dst.copy_from_slice(point.as_bytes());
        }
        out
    }

    /// An ECDSA signer (TLS CertificateVerify, CSR signatures).
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from(&self.secret)
    }

    /// ECDSA/SHA-256 signature over `msg`, DER encoded.
    pub fn sign_der(&self, msg: &[u8]) -> DerSignature {
        let sig: Signature = self.signing_key().sign(msg);
        sig.to_der()
    }
}

/// What goes into the CSR besides the public key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsrFields<'a> {
    /// Subject `CN`; `None` leaves the subject empty.
    pub common_name: Option<&'a str>,
    /// A SPIFFE URI to request as subjectAltName; the CA may ignore it.
    pub spiffe_uri: Option<&'a str>,
}

/// Why a CSR could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CsrError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// The common name or URI is empty or contains non-printable bytes.
    BadField,
}

impl fmt::Display for CsrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CsrError::BufferTooSmall => "CSR does not fit the output buffer",
            CsrError::BadField => "CSR common name or URI is empty or not printable ASCII",
        })
    }
}

impl From<Overflow> for CsrError {
    fn from(_: Overflow) -> Self {
        CsrError::BufferTooSmall
    }
}

/// Printable ASCII only: both fields end up in IA5String / UTF8String and
/// in logs; control bytes have no business there.
fn check_field(s: &str) -> Result<(), CsrError> {
    if s.is_empty() || !s.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ') {
        return Err(CsrError::BadField);
    }
    Ok(())
}

/// Builds a DER PKCS#10 CSR for `key` into `out`; returns its length.
pub fn build_csr(key: &NodeKey, fields: CsrFields<'_>, out: &mut [u8]) -> Result<usize, CsrError> {
    if let Some(cn) = fields.common_name {
        check_field(cn)?;
    }
    if let Some(uri) = fields.spiffe_uri {
        check_field(uri)?;
    }
    let mut w = DerWriter::new(out);
    let request = w.mark();

    // CertificationRequestInfo
    let info = w.mark();
    w.tlv(tag::INTEGER, &[0])?; // version v1(0)
    let subject = w.mark();
    if let Some(cn) = fields.common_name {
        let rdn = w.mark();
        let atv = w.mark();
        w.tlv(tag::OID, OID_COMMON_NAME)?;
        w.tlv(tag::UTF8_STRING, cn.as_bytes())?;
        w.close(atv, tag::SEQUENCE)?;
        w.close(rdn, tag::SET)?;
    }
    w.close(subject, tag::SEQUENCE)?;
    // SubjectPublicKeyInfo
    let spki = w.mark();
    let alg = w.mark();
    w.tlv(tag::OID, OID_EC_PUBLIC_KEY)?;
    w.tlv(tag::OID, OID_PRIME256V1)?;
    w.close(alg, tag::SEQUENCE)?;
    let mut bits = [0u8; 66];
    // Leading byte: zero unused bits in the BIT STRING.
    if let Some(point) = bits.get_mut(1..) {
        point.copy_from_slice(&key.public_sec1());
    }
    w.tlv(tag::BIT_STRING, &bits)?;
    w.close(spki, tag::SEQUENCE)?;
    // attributes [0] IMPLICIT SET OF Attribute
    let attrs = w.mark();
    if let Some(uri) = fields.spiffe_uri {
        let attr = w.mark();
        w.tlv(tag::OID, OID_EXTENSION_REQUEST)?;
        let values = w.mark();
        let exts = w.mark();
        let ext = w.mark();
        w.tlv(tag::OID, OID_SUBJECT_ALT_NAME)?;
        let value = w.mark();
        let names = w.mark();
        w.tlv(tag::GENERAL_NAME_URI, uri.as_bytes())?;
        w.close(names, tag::SEQUENCE)?;
        w.close(value, tag::OCTET_STRING)?;
        w.close(ext, tag::SEQUENCE)?;
        w.close(exts, tag::SEQUENCE)?;
        w.close(values, tag::SET)?;
        w.close(attr, tag::SEQUENCE)?;
    }
    w.close(attrs, tag::CONTEXT_0)?;
    w.close(info, tag::SEQUENCE)?;

    let info_end = w.len();
    let signature = {
        let info_der = w
            .written()
            .get(..info_end)
            .ok_or(CsrError::BufferTooSmall)?;
        key.sign_der(info_der)
    };

    let alg = w.mark();
    w.tlv(tag::OID, OID_ECDSA_SHA256)?;
    w.close(alg, tag::SEQUENCE)?;
    let sig = w.mark();
    w.raw(&[0])?; // zero unused bits
    w.raw(signature.as_bytes())?;
    w.close(sig, tag::BIT_STRING)?;
    w.close(request, tag::SEQUENCE)?;
    Ok(w.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;
    use rand_core::OsRng;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    fn parse_and_verify(der: &[u8]) -> X509CertificationRequest<'_> {
        let (rest, csr) = X509CertificationRequest::from_der(der).expect("CSR parses");
        assert!(rest.is_empty(), "no trailing bytes");
        assert_eq!(
            csr.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );
        let info = csr.certification_request_info.raw;
        let spki = &csr.certification_request_info.subject_pki;
        let vk = VerifyingKey::from_sec1_bytes(&spki.subject_public_key.data).expect("EC point");
        let sig = Signature::from_der(&csr.signature_value.data).expect("DER signature");
        vk.verify(info, &sig).expect("signature verifies");
        csr
    }

    #[test]
    fn csr_with_cn_and_san_parses_and_verifies() {
        let key = NodeKey::generate(&mut OsRng);
        let mut buf = [0u8; CSR_BUF_LEN];
        let fields = CsrFields {
            common_name: Some("node"),
            spiffe_uri: Some("spiffe://cluster.local/ns/factory/sa/edge-1"),
        };
        let n = build_csr(&key, fields, &mut buf).unwrap();
        let csr = parse_and_verify(&buf[..n]);
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.to_string(), "CN=node");
        assert_eq!(
            info.subject_pki.algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1"
        );
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            &key.public_sec1()[..]
        );
        let mut uris = std::vec::Vec::new();
        for ext in csr.requested_extensions().expect("extension request") {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let x509_parser::extensions::GeneralName::URI(u) = name {
                        uris.push(u.to_string());
                    }
                }
            }
        }
        assert_eq!(uris, ["spiffe://cluster.local/ns/factory/sa/edge-1"]);
    }

    #[test]
    fn csr_with_empty_subject_parses_and_verifies() {
        let key = NodeKey::generate(&mut OsRng);
        let mut buf = [0u8; CSR_BUF_LEN];
        let n = build_csr(&key, CsrFields::default(), &mut buf).unwrap();
        let csr = parse_and_verify(&buf[..n]);
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        assert!(csr.requested_extensions().is_none());
    }

    #[test]
    fn tampered_csr_fails_verification() {
        let key = NodeKey::generate(&mut OsRng);
        let mut buf = [0u8; CSR_BUF_LEN];
        let n = build_csr(
            &key,
            CsrFields {
                common_name: Some("node"),
                spiffe_uri: None,
            },
            &mut buf,
        )
        .unwrap();
        // Flip a byte of the common name inside the signed info.
        let pos = buf[..n].windows(4).position(|w| w == b"node").unwrap();
        buf[pos] ^= 0x01;
        let (_, csr) = X509CertificationRequest::from_der(&buf[..n]).unwrap();
        let info = csr.certification_request_info.raw;
        let vk = VerifyingKey::from_sec1_bytes(
            &csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data,
        )
        .unwrap();
        let sig = Signature::from_der(&csr.signature_value.data).unwrap();
        assert!(vk.verify(info, &sig).is_err());
    }

    #[test]
    fn small_buffer_and_bad_fields_are_errors() {
        let key = NodeKey::generate(&mut OsRng);
        let mut small = [0u8; 100];
        assert_eq!(
            build_csr(&key, CsrFields::default(), &mut small),
            Err(CsrError::BufferTooSmall)
        );
        let mut buf = [0u8; CSR_BUF_LEN];
        let bad = CsrFields {
            common_name: Some("a\nb"),
            spiffe_uri: None,
        };
        assert_eq!(build_csr(&key, bad, &mut buf), Err(CsrError::BadField));
        let empty = CsrFields {
            common_name: None,
            spiffe_uri: Some(""),
        };
        assert_eq!(build_csr(&key, empty, &mut buf), Err(CsrError::BadField));
    }

    #[test]
    fn key_round_trips_through_bytes() {
        let key = NodeKey::generate(&mut OsRng);
        let again = NodeKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(key.public_sec1(), again.public_sec1());
        assert_eq!(NodeKey::from_bytes(&[0u8; 32]).unwrap_err(), InvalidKey);
    }
}
