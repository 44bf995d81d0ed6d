//! The benchmark's own PKI: one P-256 CA, the server certificate every
//! TLS-terminating target presents, and the load generator's client
//! certificate.
//!
//! Everything is generated fresh per run with rcgen, so no target can be
//! favoured by a cached session or a pre-computed key, and the same CA is
//! plugged into every proxy (nginx and HAProxy as files, meshgate as an
//! Istio `cacerts` directory).

use core::net::{IpAddr, Ipv4Addr};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The SPIFFE ID in the server certificate: meshgate's default gateway
/// identity, so every target presents the same name.
pub const SERVER_SPIFFE_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";

/// The load generator's identity.
pub const CLIENT_SPIFFE_ID: &str = "spiffe://cluster.local/ns/bench/sa/loadgen";

/// Why the PKI could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Certificates and keys of one benchmark run (DER in memory, PEM for the
/// proxies' files).
pub struct BenchPki {
    /// The CA certificate (self-signed root).
    pub ca_der: CertificateDer<'static>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA key, PKCS#8 PEM (meshgate signs its own serving certificate
    /// with it when plugged in as `cacerts`).
    pub ca_key_pem: String,
    /// The server certificate, PEM.
    pub server_cert_pem: String,
    /// The server key, PKCS#8 PEM.
    pub server_key_pem: String,
    /// The server certificate, DER (for in-process test servers).
    pub server_der: CertificateDer<'static>,
    /// The server key, PKCS#8 DER.
    server_key_der: Vec<u8>,
    /// The client certificate, DER.
    pub client_der: CertificateDer<'static>,
    /// The client key, PKCS#8 DER.
    client_key_der: Vec<u8>,
    /// More client certificates for the same SPIFFE ID, each with its own
    /// key (certificate DER, PKCS#8 key DER): the handshake phase that
    /// presents a certificate the server has not seen recently.
    pub fresh_clients: Vec<(CertificateDer<'static>, Vec<u8>)>,
}

/// How many distinct client certificates the "new certificate each time"
/// handshake phase cycles through: more than twice the 1,024 accepted
/// chains meshgate's client verifier remembers, so that every handshake of
/// the cycle misses that memory (it starts over when full).
pub const FRESH_CLIENTS: usize = 2_304;

/// Paths of the PEM files written by [`BenchPki::write_files`].
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// Server certificate.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Server certificate followed by its key (HAProxy's `crt` format).
    pub server_combined: PathBuf,
    /// An Istio `cacerts` directory holding the bench CA (for meshgate).
    pub cacerts_dir: PathBuf,
}

fn p256() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
}

fn uri(s: &str) -> Result<SanType, rcgen::Error> {
    Ok(SanType::URI(s.try_into()?))
}

impl BenchPki {
    /// Generates a CA, a server certificate (SAN `localhost`, `127.0.0.1`
    /// and [`SERVER_SPIFFE_ID`]) and a client certificate
    /// ([`CLIENT_SPIFFE_ID`]), all P-256 / ECDSA-SHA256.
    pub fn generate() -> Result<Self, CertError> {
        Self::generate_with_fresh_clients(0)
    }

    /// [`BenchPki::generate`] plus `fresh` more client certificates
    /// ([`BenchPki::fresh_clients`]).
    pub fn generate_with_fresh_clients(fresh: usize) -> Result<Self, CertError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "meshgate-bench CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // The CA is plugged into meshgate as a cacerts root, which must be
        // able to carry the trust domain as a SPIFFE URI like Istio's.
        ca_params.subject_alt_names = vec![uri("spiffe://cluster.local")?];
        let ca_key = p256()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let server_key = p256()?;
        let mut sp = CertificateParams::new(vec!["localhost".to_owned()])?;
        sp.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sp.subject_alt_names.push(uri(SERVER_SPIFFE_ID)?);
        sp.distinguished_name
            .push(DnType::CommonName, "meshgate-bench server");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let server = sp.signed_by(&server_key, &ca)?;

        let client_params = || -> Result<CertificateParams, rcgen::Error> {
            let mut cp = CertificateParams::new(Vec::<String>::new())?;
            cp.subject_alt_names = vec![uri(CLIENT_SPIFFE_ID)?];
            cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            cp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            Ok(cp)
        };
        let client_key = p256()?;
        let client = client_params()?.signed_by(&client_key, &ca)?;
        let mut fresh_clients = Vec::with_capacity(fresh);
        for _ in 0..fresh {
            let key = p256()?;
            let cert = client_params()?.signed_by(&key, &ca)?;
            fresh_clients.push((cert.der().clone(), key.serialize_der()));
        }

        Ok(Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            ca_key_pem,
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
            client_der: client.der().clone(),
            client_key_der: client_key.serialize_der(),
            fresh_clients,
        })
    }

    /// The server key as rustls wants it.
    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()))
    }

    /// The client key as rustls wants it.
    pub fn client_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key_der.clone()))
    }

    /// Writes the PEM files the proxies read into `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<PkiFiles, CertError> {
        let write = |name: &Path, text: &str| {
            fs::write(name, text).map_err(|source| CertError::Write {
                path: name.to_path_buf(),
                source,
            })
        };
        let files = PkiFiles {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            server_combined: dir.join("server-combined.pem"),
            cacerts_dir: dir.join("cacerts"),
        };
        write(&files.ca_cert, &self.ca_pem)?;
        write(&files.server_cert, &self.server_cert_pem)?;
        write(&files.server_key, &self.server_key_pem)?;
        write(
            &files.server_combined,
            &format!("{}{}", self.server_cert_pem, self.server_key_pem),
        )?;
        fs::create_dir_all(&files.cacerts_dir).map_err(|source| CertError::Write {
            path: files.cacerts_dir.clone(),
            source,
        })?;
        // Istio's layout with a root that signs directly: the signing
        // certificate is the root, and the chain is the root alone.
        write(&files.cacerts_dir.join("ca-cert.pem"), &self.ca_pem)?;
        write(&files.cacerts_dir.join("ca-key.pem"), &self.ca_key_pem)?;
        write(&files.cacerts_dir.join("root-cert.pem"), &self.ca_pem)?;
        write(&files.cacerts_dir.join("cert-chain.pem"), &self.ca_pem)?;
        Ok(files)
    }
}
