//! Small X.509 helpers shared by the CA modules: PEM framing, time
//! conversion, fingerprints, serial numbers and the facts about a
//! certificate the CA checks (validity, CA flag, public key).

use meshgate_core::time::UnixTime;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::store::hex;

/// A certificate serial number: the big-endian bytes of the (positive)
/// DER INTEGER without leading zero bytes, so that a serial read from a
/// peer's certificate compares equal to the one the CA recorded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// From the raw INTEGER bytes of a certificate (e.g. x509-parser's
    /// `raw_serial()`); leading zero bytes are dropped.
    pub fn from_bytes(raw: &[u8]) -> Self {
        let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        Serial(raw[start..].to_vec())
    }

    /// Parses lowercase or uppercase hex, with or without `:` separators.
    pub fn from_hex(s: &str) -> Option<Self> {
        let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
        if digits.is_empty() || !digits.len().is_multiple_of(2) || digits.len() > 80 {
            return None;
        }
        let mut out = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks(2) {
            let text = core::str::from_utf8(pair).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
        }
        Some(Serial::from_bytes(&out))
    }

    /// The normalised bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A fresh random serial: 16 bytes (about 127 bits of entropy), with
    /// the top bit clear so the INTEGER is positive and the first byte
    /// non-zero so the encoding is minimal (RFC 5280 4.1.2.2).
    pub(crate) fn random(rng: &SystemRandom) -> Result<Self, ring::error::Unspecified> {
        let mut b = [0u8; 16];
        rng.fill(&mut b)?;
        b[0] &= 0x7f;
        if b[0] == 0 {
            b[0] = 1;
        }
        Ok(Serial(b.to_vec()))
    }
}

impl core::fmt::Display for Serial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Serial::from_hex(&s).ok_or_else(|| serde::de::Error::custom("invalid serial hex"))
    }
}

/// SHA-256 fingerprint of a DER certificate as colon-separated uppercase
/// hex (the form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let parts: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    parts.join(":")
}

/// Encodes DER certificates as concatenated PEM blocks.
pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str(&pem_block("CERTIFICATE", c.as_ref()));
    }
    out
}

/// One PEM block with 64-column base64 lines.
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| {
            acc | (u32::from(b) << (16 - 8 * i as u32))
        });
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        // Base64 output is ASCII.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Parses all `CERTIFICATE` blocks of a PEM text; `Err` carries a reason.
pub(crate) fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// Converts to the time type rcgen wants, clamping to its range.
pub(crate) fn to_offset(t: UnixTime) -> OffsetDateTime {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or_else(|_| {
        // Beyond year 9999: the largest representable time.
        OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    })
}

fn from_asn1(t: &x509_parser::time::ASN1Time) -> UnixTime {
    UnixTime::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
}

/// The facts the CA needs about a certificate.
#[derive(Clone, Debug)]
pub(crate) struct CertFacts {
    pub(crate) not_before: UnixTime,
    pub(crate) not_after: UnixTime,
    pub(crate) is_ca: bool,
    pub(crate) subject: String,
    /// The subjectPublicKey BIT STRING contents (raw public key).
    pub(crate) public_key: Vec<u8>,
}

pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after certificate".into()),
        Err(e) => Err(format!("cannot parse certificate: {e}")),
    }
}

pub(crate) fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let cert = parse_cert(der)?;
    let is_ca = match cert.basic_constraints() {
        Ok(Some(bc)) => bc.value.ca,
        Ok(None) => false,
        Err(e) => return Err(format!("bad basicConstraints: {e}")),
    };
    Ok(CertFacts {
        not_before: from_asn1(&cert.validity().not_before),
        not_after: from_asn1(&cert.validity().not_after),
        is_ca,
        subject: cert.subject().to_string(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Checks that `child` names `issuer` as its issuer and carries a valid
/// signature by `issuer`'s key.
pub(crate) fn verify_issued_by(child: &[u8], issuer: &[u8]) -> Result<(), String> {
    let c = parse_cert(child)?;
    let i = parse_cert(issuer)?;
    if c.issuer().as_raw() != i.subject().as_raw() {
        return Err(format!(
            "issuer \"{}\" does not match subject \"{}\"",
            c.issuer(),
            i.subject()
        ));
    }
    c.verify_signature(Some(i.public_key()))
        .map_err(|e| format!("signature by \"{}\" does not verify: {e}", i.subject()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_normalises_and_round_trips() {
        let s = Serial::from_bytes(&[0, 0, 0x12, 0xab]);
        assert_eq!(s.as_bytes(), &[0x12, 0xab]);
        assert_eq!(s.to_string(), "12ab");
        assert_eq!(Serial::from_hex("00:12:AB"), Some(s.clone()));
        assert_eq!(Serial::from_hex("12a"), None);
        assert_eq!(Serial::from_hex("zz"), None);
        let json = serde_json::to_string(&s).expect("ser");
        assert_eq!(serde_json::from_str::<Serial>(&json).expect("de"), s);
    }

    #[test]
    fn random_serials_are_positive_minimal_and_distinct() {
        let rng = SystemRandom::new();
        let a = Serial::random(&rng).expect("rng");
        let b = Serial::random(&rng).expect("rng");
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.as_bytes().len(), 16);
            assert!(s.as_bytes()[0] != 0 && s.as_bytes()[0] < 0x80);
        }
    }

    #[test]
    fn pem_block_matches_known_base64() {
        assert_eq!(
            pem_block("X", b"foobar!"),
            "-----BEGIN X-----\nZm9vYmFyIQ==\n-----END X-----\n"
        );
        let der = vec![7u8; 100];
        let pem = pem_block("CERTIFICATE", &der);
        let back = parse_pem_certs(pem.as_bytes()).expect("parse");
        assert_eq!(back[0].as_ref(), &der[..]);
    }
}
