//! Loading a plugged-in CA from an Istio `cacerts` directory.
//!
//! The layout is Istio's: `ca-cert.pem` (the signing certificate),
//! `ca-key.pem` (its private key: PKCS#8, PKCS#1 RSA or SEC1 EC),
//! `root-cert.pem` (the root of
//! trust) and `cert-chain.pem` (the signing certificate's chain, usually
//! ending at the root). Everything is checked before it is used, and every
//! error names the file at fault, because a half-valid CA is worse than
//! none: the key must match the signing certificate, every certificate of
//! the chain must be a CA, valid now, and signed by the next, up to the
//! self-signed root.

use std::fs;
use std::path::{Path, PathBuf};

use meshgate_core::time::UnixTime;
use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::x509::{cert_facts, parse_pem_certs, verify_issued_by};

/// File name of the signing certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// File name of the signing key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the root certificate.
pub const ROOT_CERT: &str = "root-cert.pem";
/// File name of the certificate chain.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Why a `cacerts` directory was refused. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacertsError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not what it should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the signing certificate.
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A certificate that must be a CA is not (basicConstraints CA:TRUE
    /// missing).
    #[error("{path}: certificate \"{subject}\" is not a CA (basicConstraints CA:TRUE missing)")]
    NotCa {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// A certificate is outside its validity period.
    #[error(
        "{path}: certificate \"{subject}\" is not valid now (valid {not_before_secs}..{not_after_secs} s since epoch)"
    )]
    NotValidNow {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// Start of validity, seconds since the epoch.
        not_before_secs: u64,
        /// End of validity, seconds since the epoch.
        not_after_secs: u64,
    },
    /// The chain from the signing certificate to the root does not verify.
    #[error("{path}: chain does not verify: {reason}")]
    ChainBroken {
        /// The file whose certificate failed.
        path: PathBuf,
        /// The failing check.
        reason: String,
    },
}

/// A plugged-in CA that passed every check.
#[derive(Debug)]
pub struct PluggedCa {
    /// The signing key.
    pub(crate) key: KeyPair,
    /// The signing certificate followed by its intermediates, excluding the
    /// root: what a leaf's chain carries after the leaf.
    pub chain: Vec<CertificateDer<'static>>,
    /// The root of trust.
    pub root: CertificateDer<'static>,
}

fn read(path: &Path) -> Result<Vec<u8>, CacertsError> {
    fs::read(path).map_err(|source| CacertsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> CacertsError {
    CacertsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn certs_in(path: &Path) -> Result<Vec<CertificateDer<'static>>, CacertsError> {
    parse_pem_certs(&read(path)?).map_err(|r| invalid(path, r))
}

fn one_cert_in(path: &Path) -> Result<CertificateDer<'static>, CacertsError> {
    let mut certs = certs_in(path)?;
    if certs.len() != 1 {
        return Err(invalid(
            path,
            format!("expected exactly one certificate, found {}", certs.len()),
        ));
    }
    Ok(certs.remove(0))
}

/// Reads the signing key: PKCS#8 (`PRIVATE KEY`), PKCS#1 RSA (`RSA
/// PRIVATE KEY`, what Istio's samples and `openssl genrsa -traditional`
/// write) or SEC1 EC (`EC PRIVATE KEY`). The crypto backend imports only
/// PKCS#8, so the other two are wrapped into a PKCS#8 envelope in memory.
pub(crate) fn load_key(path: &Path) -> Result<KeyPair, CacertsError> {
    let bytes = read(path)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| invalid(path, format!("no private key PEM block: {e}")))?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => pkcs8_wrap(RSA_ALG_ID, k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => {
            let curve = sec1_curve_oid(k.secret_sec1_der()).ok_or_else(|| {
                invalid(
                    path,
                    "EC key without named-curve parameters; convert it with \
                     `openssl pkcs8 -topk8 -nocrypt`",
                )
            })?;
            let mut alg = tlv(0x06, EC_PUBLIC_KEY_OID);
            alg.extend_from_slice(&tlv(0x06, curve));
            pkcs8_wrap(&tlv(0x30, &alg), k.secret_sec1_der())
        }
        _ => return Err(invalid(path, "unsupported private key format")),
    };
    KeyPair::try_from(pkcs8.as_slice())
        .map_err(|e| invalid(path, format!("unsupported or invalid key: {e}")))
}

/// AlgorithmIdentifier { rsaEncryption, NULL }.
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// OID 1.2.840.10045.2.1 (id-ecPublicKey), contents only.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING }.
fn pkcs8_wrap(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(alg_id);
    body.extend_from_slice(&tlv(0x04, key));
    tlv(0x30, &body)
}

/// Reads one DER element from `input`: (tag, contents, rest). Returns
/// `None` on anything malformed; never panics on hostile input.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, after) = rest.split_at(n);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The named-curve OID (contents) in a SEC1 ECPrivateKey's `[0]`
/// parameters: SEQUENCE { INTEGER 1, OCTET STRING, [0] { OID }, ... }.
fn sec1_curve_oid(sec1: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = read_tlv(sec1)? else {
        return None;
    };
    let (0x02, _, rest) = read_tlv(body)? else {
        return None;
    };
    let (0x04, _, rest) = read_tlv(rest)? else {
        return None;
    };
    let (0xa0, params, _) = read_tlv(rest)? else {
        return None;
    };
    match read_tlv(params)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// Checks a certificate is a CA and valid at `now`.
fn check_ca_valid(path: &Path, der: &[u8], now: UnixTime) -> Result<(), CacertsError> {
    let facts = cert_facts(der).map_err(|r| invalid(path, r))?;
    if !facts.is_ca {
        return Err(CacertsError::NotCa {
            path: path.to_path_buf(),
            subject: facts.subject,
        });
    }
    if now < facts.not_before || now > facts.not_after {
        return Err(CacertsError::NotValidNow {
            path: path.to_path_buf(),
            subject: facts.subject,
            not_before_secs: facts.not_before.as_secs(),
            not_after_secs: facts.not_after.as_secs(),
        });
    }
    Ok(())
}

/// Loads and checks the `cacerts` directory `dir` at time `now`.
pub fn load_cacerts(dir: &Path, now: UnixTime) -> Result<PluggedCa, CacertsError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let root_path = dir.join(ROOT_CERT);
    let chain_path = dir.join(CERT_CHAIN);

    let ca_cert = one_cert_in(&cert_path)?;
    let key = load_key(&key_path)?;
    let root = one_cert_in(&root_path)?;
    let chain_file = certs_in(&chain_path)?;

    let facts = cert_facts(&ca_cert).map_err(|r| invalid(&cert_path, r))?;
    if facts.public_key != key.der_bytes() {
        return Err(CacertsError::KeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }
    check_ca_valid(&cert_path, &ca_cert, now)?;
    check_ca_valid(&root_path, &root, now)?;
    verify_issued_by(&root, &root).map_err(|reason| CacertsError::ChainBroken {
        path: root_path.clone(),
        reason: format!("root is not self-signed: {reason}"),
    })?;

    // Istio's cert-chain.pem usually starts with ca-cert.pem and ends with
    // the root; the chain we serve holds neither the root (clients have it
    // in the trust bundle) nor a duplicate of the signing certificate.
    let mut chain = vec![ca_cert.clone()];
    for c in chain_file {
        if c != ca_cert && c != root {
            chain.push(c);
        }
    }
    // A signing certificate that *is* the root signs leaves directly.
    if ca_cert == root {
        chain.clear();
    }
    for (i, cert) in chain.iter().enumerate() {
        let (path, issuer) = match chain.get(i + 1) {
            Some(next) => (if i == 0 { &cert_path } else { &chain_path }, next),
            None => (if i == 0 { &cert_path } else { &chain_path }, &root),
        };
        if i > 0 {
            check_ca_valid(&chain_path, cert, now)?;
        }
        verify_issued_by(cert, issuer).map_err(|reason| CacertsError::ChainBroken {
            path: path.clone(),
            reason,
        })?;
    }
    Ok(PluggedCa { key, chain, root })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(
            read_tlv(&long).map(|(t, c, r)| (t, c.len(), r.len())),
            Some((4, 300, 0))
        );
    }

    #[test]
    fn read_tlv_rejects_malformed_input() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 1, 2],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0x01],
        ] {
            assert_eq!(read_tlv(bad), None, "{bad:?}");
        }
        assert_eq!(sec1_curve_oid(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
