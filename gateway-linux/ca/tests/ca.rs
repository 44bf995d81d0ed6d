//! Public-API tests of the certificate authority: issuance, chains,
//! plugged-in CAs, revocation, root roll-over and key hygiene. Every test
//! runs on a virtual clock (`now` is an argument).

use core::time::Duration;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use meshgate_ca::cacerts::{CA_CERT, CA_KEY, CERT_CHAIN, CacertsError, ROOT_CERT};
use meshgate_ca::{
    CaConfig, CaError, CaSource, CertificateAuthority, DropStatus, FileStore, IssuedCertificate,
    Rollover, RolloverStep, Serial, Store,
};
use meshgate_core::spiffe::{OwnedTrustDomain, SpiffeId};
use meshgate_core::time::UnixTime;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const T0: u64 = 1_750_000_000;
const TD: &str = "cluster.local";
const WORKLOAD: &str = "spiffe://cluster.local/ns/bookinfo/sa/productpage";

fn now() -> UnixTime {
    UnixTime::from_secs(T0)
}

fn id(s: &str) -> SpiffeId<'_> {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

fn config() -> CaConfig {
    CaConfig::new(OwnedTrustDomain::parse(TD).expect("td"))
}

fn open_generated(dir: &Path, at: UnixTime) -> CertificateAuthority {
    let (store, _) = FileStore::open(dir).expect("store");
    CertificateAuthority::open(Arc::new(store), config(), &CaSource::Generate, at, "test")
        .expect("CA opens")
}

fn csr_for(key: &KeyPair, params: CertificateParams) -> Vec<u8> {
    params.serialize_request(key).expect("csr").der().to_vec()
}

fn plain_csr(key: &KeyPair) -> Vec<u8> {
    csr_for(key, CertificateParams::default())
}

/// Verifies the leaf with webpki against `roots` for both TLS client and
/// server use at `at`.
fn webpki_verify(
    issued: &IssuedCertificate,
    roots: &[CertificateDer<'static>],
    at: UnixTime,
) -> Result<(), webpki::Error> {
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).expect("anchor"))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&issued.cert).expect("parse leaf");
    let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(at.as_secs()));
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &issued.chain,
            time,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri:{u}"),
            other => format!("other:{other:?}"),
        })
        .collect()
}

#[test]
fn generated_ca_is_created_once_then_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let ca = open_generated(dir.path(), now());
        let s = ca.summary(now()).expect("summary");
        assert_eq!(s.roots.len(), 1);
        assert_eq!(s.trust_domain, TD);
        assert!(s.roots[0].signing);
        assert_eq!(s.roots[0].origin, "generated");
        // Ten years (minus the backdating).
        assert_eq!(
            s.roots[0].not_after.as_secs() - T0,
            3650 * 24 * 3600,
            "root lifetime"
        );
        assert_eq!(s.roots[0].fingerprint_sha256.len(), 32 * 3 - 1);
        s.roots[0].fingerprint_sha256.clone()
    };
    let later = now().saturating_add(Duration::from_secs(86_400));
    let ca = open_generated(dir.path(), later);
    let s = ca.summary(later).expect("summary");
    assert_eq!(s.roots.len(), 1);
    assert_eq!(
        s.roots[0].fingerprint_sha256, first,
        "same root after restart"
    );

    // The intermediate is a CA with pathlen 0 and the root a CA.
    let chain = ca.signing_chain();
    assert_eq!(chain.len(), 1);
    let (_, inter) = X509Certificate::from_der(&chain[0]).expect("intermediate");
    let bc = inter
        .basic_constraints()
        .expect("bc")
        .expect("present")
        .value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let bundle = ca.trust_bundle();
    let (_, root) = X509Certificate::from_der(&bundle[0]).expect("root");
    assert!(root.is_ca());
    assert_eq!(root.subject(), root.issuer());
}

#[test]
fn ca_key_records_are_mode_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _ca = open_generated(dir.path(), now());
    let mut keys = 0;
    for entry in fs::read_dir(dir.path().join("records")).expect("records") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let mode = entry.metadata().expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        if name.ends_with("-key.pem.rec") {
            keys += 1;
        }
    }
    assert_eq!(keys, 2, "root key and signing key");
}

#[test]
fn csr_with_bad_signature_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "aaaa");
    let good = csr_for(&key, params);

    // Flip a bit in the signature (the last byte of the DER).
    let mut bad_sig = good.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    // Change the signed content (the CN) without re-signing.
    let mut bad_body = good.clone();
    let pos = bad_body
        .windows(4)
        .position(|w| w == b"aaaa")
        .expect("CN in CSR");
    bad_body[pos] = b'b';
    for csr in [bad_sig, bad_body] {
        match ca.issue_from_csr(&csr, &id(WORKLOAD), None, now(), "test") {
            Err(CaError::CsrSignature) => {}
            other => panic!("expected CsrSignature, got {other:?}"),
        }
    }
    assert!(matches!(
        ca.issue_from_csr(b"garbage", &id(WORKLOAD), None, now(), "test"),
        Err(CaError::Csr(_))
    ));
    // The untouched CSR is accepted, as DER and as PEM.
    ca.issue_from_csr(&good, &id(WORKLOAD), None, now(), "test")
        .expect("DER CSR");
    let pem = CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    ca.issue_from_csr(pem.as_bytes(), &id(WORKLOAD), None, now(), "test")
        .expect("PEM CSR");
    // Nothing was issued for the rejected CSRs.
    assert_eq!(ca.issued(now()).len(), 2);
}

#[test]
fn requested_identity_is_ignored_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/istio-system/sa/istiod"
            .try_into()
            .expect("uri"),
    ));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "spiffe://cluster.local/ns/x/sa/admin");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = csr_for(&key, params);

    let issued = ca
        .issue_from_csr(&csr, &id(WORKLOAD), None, now(), "test")
        .expect("issued");
    let (_, cert) = X509Certificate::from_der(&issued.cert).expect("leaf");
    assert_eq!(uri_sans(&cert), vec![format!("uri:{WORKLOAD}")]);
    assert_eq!(cert.subject().iter_attributes().count(), 0, "empty subject");
    assert!(!cert.is_ca(), "CSR's CA request ignored");
    // The CSR's public key is the one certified.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );
    assert_eq!(issued.spiffe_id, WORKLOAD);
}

#[test]
fn leaf_has_the_svid_profile_and_chain_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let key = KeyPair::generate().expect("key");
    let issued = ca
        .issue_from_csr(&plain_csr(&key), &id(WORKLOAD), None, now(), "test")
        .expect("issued");

    webpki_verify(&issued, &issued.trust_bundle, now()).expect("chain verifies");
    // Not before its backdated start, not after its end.
    assert!(
        webpki_verify(
            &issued,
            &issued.trust_bundle,
            now().saturating_sub(Duration::from_secs(61))
        )
        .is_err()
    );
    assert!(
        webpki_verify(
            &issued,
            &issued.trust_bundle,
            issued.not_after.saturating_add(Duration::from_secs(1))
        )
        .is_err()
    );
    // Another CA's root does not verify it.
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = open_generated(other.path(), now());
    assert!(webpki_verify(&issued, &other_ca.trust_bundle(), now()).is_err());

    let (_, cert) = X509Certificate::from_der(&issued.cert).expect("leaf");
    let ku = cert.key_usage().expect("ku").expect("present").value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign() && !ku.key_encipherment());
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    let bc = cert.basic_constraints().expect("bc").expect("present");
    assert!(!bc.value.ca, "CA:FALSE");
    let san_critical = cert
        .extensions()
        .iter()
        .find(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectAlternativeName(_)
            )
        })
        .expect("SAN")
        .critical;
    assert!(san_critical, "SAN is critical when the subject is empty");
    // Default TTL 24 h, backdated 60 s, positive ~128-bit serial.
    assert_eq!(issued.not_after.as_secs() - T0, 24 * 3600);
    assert_eq!(T0 - issued.not_before.as_secs(), 60);
    assert_eq!(
        cert.validity().not_after.timestamp() as u64,
        issued.not_after.as_secs()
    );
    let raw = cert.raw_serial();
    assert_eq!(raw.len(), 16);
    assert!(raw[0] & 0x80 == 0 && raw[0] != 0);
    assert_eq!(Serial::from_bytes(raw), issued.serial);
    assert_eq!(issued.root_id, "root-1");
    assert!(issued.cert_chain_pem().matches("BEGIN CERTIFICATE").count() == 2);
}

#[test]
fn ttl_bounds_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let w = id(WORKLOAD);
    for bad in [
        Duration::from_secs(59),
        Duration::ZERO,
        Duration::from_secs(90 * 86_400 + 1),
    ] {
        match ca.issue_with_new_key(&w, Some(bad), now(), "test") {
            Err(CaError::TtlOutOfRange { ttl, min }) => {
                assert_eq!(ttl, bad);
                assert_eq!(min, Duration::from_secs(60));
            }
            other => panic!("expected TtlOutOfRange, got {other:?}"),
        }
    }
    for ok in [Duration::from_secs(60), Duration::from_secs(90 * 86_400)] {
        let (issued, _) = ca
            .issue_with_new_key(&w, Some(ok), now(), "test")
            .expect("in range");
        assert_eq!(issued.not_after.as_secs() - T0, ok.as_secs());
    }
    // A configured default outside the bounds is refused at open.
    let other = tempfile::tempdir().expect("tempdir");
    let (store, _) = FileStore::open(other.path()).expect("store");
    let mut cfg = config();
    cfg.default_ttl = Duration::from_secs(30);
    assert!(matches!(
        CertificateAuthority::open(Arc::new(store), cfg, &CaSource::Generate, now(), "t"),
        Err(CaError::TtlOutOfRange { .. })
    ));
}

#[test]
fn a_lowered_minimum_ttl_allows_short_test_certificates_and_nothing_shorter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = FileStore::open(dir.path()).expect("store");
    let mut cfg = config();
    cfg.min_ttl = Duration::from_secs(20);
    let ca = CertificateAuthority::open(Arc::new(store), cfg, &CaSource::Generate, now(), "t")
        .expect("open");
    let w = id(WORKLOAD);
    let (issued, _) = ca
        .issue_with_new_key(&w, Some(Duration::from_secs(20)), now(), "test")
        .expect("20 s is allowed");
    assert_eq!(issued.not_after.as_secs() - T0, 20);
    assert!(matches!(
        ca.issue_with_new_key(&w, Some(Duration::from_secs(19)), now(), "test"),
        Err(CaError::TtlOutOfRange { min, .. }) if min == Duration::from_secs(20)
    ));
    // A zero minimum would allow certificates that expire as issued.
    for bad in [Duration::ZERO, Duration::from_secs(91 * 86_400)] {
        let other = tempfile::tempdir().expect("tempdir");
        let (store, _) = FileStore::open(other.path()).expect("store");
        let mut cfg = config();
        cfg.min_ttl = bad;
        assert!(matches!(
            CertificateAuthority::open(Arc::new(store), cfg, &CaSource::Generate, now(), "t"),
            Err(CaError::BadMinTtl(d)) if d == bad
        ));
    }
}

#[test]
fn a_clock_before_the_signing_chain_is_refused_not_turned_into_a_broken_leaf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    // The root is backdated 60 s at creation; an hour before that the
    // chain is not valid, and a leaf would end before it starts.
    let early = now().saturating_sub(Duration::from_secs(3600));
    assert!(matches!(
        ca.issue_with_new_key(&id(WORKLOAD), None, early, "test"),
        Err(CaError::SigningCertNotYetValid { not_before_secs }) if not_before_secs == T0 - 60
    ));
    ca.issue_with_new_key(&id(WORKLOAD), None, now(), "test")
        .expect("fine at the right time");
}

#[test]
fn server_certificates_carry_dns_names_next_to_the_only_uri_san() {
    use meshgate_ca::ca::is_dns_san;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let names = vec![
        "details.bookinfo.svc.cluster.local".to_owned(),
        "*.example.com".to_owned(),
    ];
    let (issued, _) = ca
        .issue_server_with_new_key(&id(WORKLOAD), &names, None, now(), "test")
        .expect("issued");
    let (_, cert) = X509Certificate::from_der(&issued.cert).expect("parse");
    assert_eq!(
        uri_sans(&cert),
        vec![
            format!("uri:{WORKLOAD}"),
            "other:DNSName(\"details.bookinfo.svc.cluster.local\")".to_owned(),
            "other:DNSName(\"*.example.com\")".to_owned(),
        ]
    );
    webpki_verify(&issued, &ca.trust_bundle(), now()).expect("chain verifies");
    let ee = webpki::EndEntityCert::try_from(&issued.cert).expect("leaf");
    for ok in ["details.bookinfo.svc.cluster.local", "api.example.com"] {
        let name = rustls_pki_types::ServerName::try_from(ok).expect("name");
        ee.verify_is_valid_for_subject_name(&name)
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    let other =
        rustls_pki_types::ServerName::try_from("ratings.bookinfo.svc.cluster.local").expect("name");
    assert!(ee.verify_is_valid_for_subject_name(&other).is_err());

    for bad in [
        "10.0.0.1",
        "localhost",
        "a..b",
        "-a.example.com",
        "a_b.example.com",
        "a.*.example.com",
        "",
    ] {
        assert!(!is_dns_san(bad), "{bad:?}");
        assert!(matches!(
            ca.issue_server_with_new_key(&id(WORKLOAD), &[bad.to_owned()], None, now(), "t"),
            Err(CaError::BadDnsName(n)) if n == bad
        ));
    }
    // Workload certificates never get names.
    let (plain, _) = ca
        .issue_with_new_key(&id(WORKLOAD), None, now(), "test")
        .expect("issued");
    let (_, cert) = X509Certificate::from_der(&plain.cert).expect("parse");
    assert_eq!(uri_sans(&cert), vec![format!("uri:{WORKLOAD}")]);
}

#[test]
fn foreign_trust_domain_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    match ca.issue_with_new_key(
        &id("spiffe://cluster.localx/ns/a/sa/b"),
        None,
        now(),
        "test",
    ) {
        Err(CaError::ForeignTrustDomain { .. }) => {}
        other => panic!("expected ForeignTrustDomain, got {other:?}"),
    }
}

#[test]
fn in_memory_key_matches_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let (issued, key) = ca
        .issue_with_new_key(&id(WORKLOAD), None, now(), "test")
        .expect("issued");
    let kp = KeyPair::try_from(key.pkcs8_der().secret_pkcs8_der()).expect("pkcs8");
    let (_, cert) = X509Certificate::from_der(&issued.cert).expect("leaf");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&kp)
    );
    assert!(key.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(format!("{key:?}"), "LeafKey(<secret>)");
    webpki_verify(&issued, &issued.trust_bundle, now()).expect("verifies");
}

#[test]
fn no_leaf_private_key_is_written_to_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let mut secrets = Vec::new();
    for i in 0..5u64 {
        let at = now().saturating_add(Duration::from_secs(i));
        let (_, key) = ca
            .issue_with_new_key(&id(WORKLOAD), None, at, "test")
            .expect("issued");
        secrets.push(key.pkcs8_der().secret_pkcs8_der().to_vec());
        secrets.push(key.to_pem().into_bytes());
        let csr_key = KeyPair::generate().expect("key");
        ca.issue_from_csr(&plain_csr(&csr_key), &id(WORKLOAD), None, at, "test")
            .expect("issued");
        secrets.push(csr_key.serialize_der());
    }
    let mut files = 0;
    let mut key_files = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in fs::read_dir(&p).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let content = fs::read(&path).expect("read");
            for s in &secrets {
                assert!(
                    !content.windows(s.len()).any(|w| w == &s[..]),
                    "leaf key material found in {}",
                    path.display()
                );
            }
            if content.windows(11).any(|w| w == b"PRIVATE KEY") {
                key_files.push(
                    path.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    assert!(files >= 5);
    key_files.sort();
    // Only the CA's own two keys are stored.
    assert_eq!(
        key_files,
        vec![
            "ca.root-1.root-key.pem.rec",
            "ca.root-1.signing-key.pem.rec"
        ]
    );
}

#[test]
fn revocation_by_serial_and_id_with_virtual_clock_and_persistence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let hour = Duration::from_secs(3600);
    let (a, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), now(), "test")
        .expect("a");
    let node = "spiffe://cluster.local/ns/factory/sa/node-1";
    let (n1, _) = ca
        .issue_with_new_key(&id(node), Some(hour), now(), "test")
        .expect("n1");
    let t1 = now().saturating_add(Duration::from_secs(600));
    let (n2, _) = ca
        .issue_with_new_key(&id(node), Some(2 * hour), t1, "test")
        .expect("n2");

    let rev = ca
        .revoke_serial(&a.serial, "key leaked", t1, "admin")
        .expect("revoke serial");
    assert_eq!(rev.keep_until, a.not_after);
    let rev = ca
        .revoke_spiffe_id(&id(node), "device stolen", t1, "admin")
        .expect("revoke id");
    assert_eq!(
        rev.keep_until, n2.not_after,
        "kept until the latest cert expires"
    );
    assert!(matches!(
        ca.revoke_serial(&Serial::from_bytes(&[9, 9]), "typo", t1, "admin"),
        Err(CaError::UnknownSerial(_))
    ));

    // A serial with a leading zero byte (as some parsers return it) matches.
    let mut padded = vec![0u8];
    padded.extend_from_slice(a.serial.as_bytes());
    assert!(ca.is_revoked(WORKLOAD, &padded, t1));
    assert!(ca.is_revoked(node, n1.serial.as_bytes(), t1));
    assert!(ca.is_revoked(node, n2.serial.as_bytes(), t1));
    let (other, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), t1, "test")
        .expect("same ID, other serial");
    assert!(!ca.is_revoked(WORKLOAD, other.serial.as_bytes(), t1));
    // A revoked identity cannot renew.
    assert!(matches!(
        ca.issue_with_new_key(&id(node), None, t1, "test"),
        Err(CaError::Revoked(_))
    ));

    // Persisted: a restart keeps enforcing.
    drop(ca);
    let ca = open_generated(dir.path(), t1);
    assert!(ca.is_revoked(WORKLOAD, a.serial.as_bytes(), t1));
    assert_eq!(ca.revocations().len(), 2);
    assert_eq!(ca.prune_revocations(t1, "system").expect("prune"), 0);

    // After the serial's certificate expired, its entry goes.
    let t2 = a.not_after.saturating_add(Duration::from_secs(1));
    assert!(!ca.is_revoked(WORKLOAD, a.serial.as_bytes(), t2));
    assert_eq!(ca.prune_revocations(t2, "system").expect("prune"), 1);
    assert!(ca.is_revoked(node, n2.serial.as_bytes(), t2));
    // After the identity's last certificate expired, it goes too and the
    // identity may be enrolled again.
    let t3 = n2.not_after.saturating_add(Duration::from_secs(1));
    assert_eq!(ca.prune_revocations(t3, "system").expect("prune"), 1);
    assert!(ca.revocations().is_empty());
    ca.issue_with_new_key(&id(node), None, t3, "test")
        .expect("re-enrolled");
    drop(ca);
    let ca = open_generated(dir.path(), t3);
    assert!(ca.revocations().is_empty(), "pruning was persisted");
}

#[test]
fn root_roll_over_trusts_old_and_new_then_drops_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let hour = Duration::from_secs(3600);
    let (old_leaf, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), now(), "test")
        .expect("old");

    // Step 1: trust old + new; signing unchanged.
    let new_root = ca.add_generated_root(now(), "admin").expect("new root");
    assert_eq!(new_root, "root-2");
    assert_eq!(ca.trust_bundle().len(), 2);
    assert_eq!(ca.signing_root(), "root-1");
    // Step 2: switch signing.
    let t1 = now().saturating_add(Duration::from_secs(60));
    ca.switch_signing(&new_root, t1, "admin").expect("switch");
    let (new_leaf, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), t1, "test")
        .expect("new");
    assert_eq!(new_leaf.root_id, "root-2");
    assert_eq!(new_leaf.trust_bundle.len(), 2);
    // Both generations verify against the combined bundle.
    let bundle = ca.trust_bundle();
    webpki_verify(&old_leaf, &bundle, t1).expect("old leaf, both roots");
    webpki_verify(&new_leaf, &bundle, t1).expect("new leaf, both roots");
    assert!(webpki_verify(&new_leaf, &bundle[..1], t1).is_err());

    // Step 3: the old root is in use until its last leaf expires.
    assert_eq!(
        ca.drop_status("root-1", t1).expect("status"),
        DropStatus::InUse {
            until: old_leaf.not_after
        }
    );
    assert!(matches!(
        ca.drop_root("root-1", false, t1, "admin"),
        Err(CaError::RootInUse { .. })
    ));
    assert!(matches!(
        ca.drop_root("root-2", true, t1, "admin"),
        Err(CaError::RootIsSigning(_))
    ));
    let summary = ca.summary(t1).expect("summary");
    let text = summary.to_string();
    assert!(text.contains("root root-2 (signing)"), "{text}");
    assert!(text.contains("in use until 2025-06-15T16:06:40Z"), "{text}");
    assert!(
        text.contains(&summary.roots[0].fingerprint_sha256),
        "{text}"
    );
    assert_eq!(summary.roots[0].issued_count, 1);
    assert_eq!(summary.roots[0].valid_leaves, 1);
    assert_eq!(summary.roots[1].issued_count, 1);
    assert!(summary.roots[1].signing);

    let t2 = old_leaf.not_after.saturating_add(Duration::from_secs(1));
    assert_eq!(
        ca.drop_status("root-1", t2).expect("status"),
        DropStatus::Ready
    );
    ca.drop_root("root-1", false, t2, "admin").expect("drop");
    assert_eq!(ca.trust_bundle().len(), 1);
    assert!(matches!(
        ca.drop_status("root-1", t2),
        Err(CaError::UnknownRoot(_))
    ));

    // Restart: the new root signs, the old one is gone with its keys.
    drop(ca);
    let ca = open_generated(dir.path(), t2);
    assert_eq!(ca.signing_root(), "root-2");
    assert_eq!(ca.trust_bundle().len(), 1);
    assert!(
        !dir.path()
            .join("records/ca.root-1.root-key.pem.rec")
            .exists()
    );
    let (leaf, _) = ca
        .issue_with_new_key(&id(WORKLOAD), None, t2, "test")
        .expect("issue after restart");
    webpki_verify(&leaf, &ca.trust_bundle(), t2).expect("verifies");
}

/// The phased roll-over ("trust both → switch → drop"), restarted from the
/// store between every phase: each phase is persisted and continues.
#[test]
fn phased_roll_over_survives_restarts_and_keeps_both_generations_verifiable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = Duration::from_secs(3600);
    let at = |secs: u64| now().saturating_add(Duration::from_secs(secs));
    let ca = open_generated(dir.path(), now());
    let (before, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), now(), "test")
        .expect("leaf before");
    assert_eq!(
        ca.default_propagation(),
        Duration::from_secs(24 * 3600 * 3 / 5)
    );

    // Phase 1: both roots trusted, the old one still signs.
    let r = ca
        .start_rollover(Duration::from_secs(600), now(), "admin")
        .expect("start");
    assert_eq!(r.phase(), 1);
    assert_eq!((r.old_root(), r.new_root()), ("root-1", "root-2"));
    assert!(matches!(
        ca.start_rollover(Duration::ZERO, now(), "admin"),
        Err(CaError::RolloverInProgress(_))
    ));
    assert_eq!(ca.trust_bundle().len(), 2);
    assert_eq!(ca.signing_root(), "root-1");
    assert_eq!(
        ca.drop_status("root-2", now()).expect("status"),
        DropStatus::Incoming,
        "the incoming root is never dropped as unused"
    );
    let text = ca.summary(now()).expect("summary").to_string();
    assert!(text.contains("root roll-over: phase 1/3"), "{text}");
    // Not due yet: nothing moves.
    assert!(
        ca.advance_rollover(at(599), "t")
            .expect("advance")
            .is_empty()
    );

    // Restart in phase 1: the phase and the deadline are still there.
    drop(ca);
    let ca = open_generated(dir.path(), at(10));
    assert_eq!(ca.rollover(), Some(r.clone()));
    let (during, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), at(10), "test")
        .expect("leaf during phase 1");
    assert_eq!(during.root_id, "root-1", "the old root signs in phase 1");
    assert_eq!(
        during.trust_bundle.len(),
        2,
        "certificates issued in phase 1 carry both roots"
    );

    // Phase 2: the propagation period is over.
    let steps = ca.advance_rollover(at(600), "t").expect("advance");
    assert_eq!(
        steps,
        vec![RolloverStep::Switched {
            new_root: "root-2".into()
        }]
    );
    assert_eq!(ca.signing_root(), "root-2");
    drop(ca);
    let ca = open_generated(dir.path(), at(601));
    assert!(matches!(
        ca.rollover(),
        Some(Rollover::DropOld { ref old_root, .. }) if old_root == "root-1"
    ));
    assert_eq!(ca.signing_root(), "root-2");
    let (after, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(hour), at(601), "test")
        .expect("leaf after switch");
    assert_eq!(after.root_id, "root-2");
    let bundle = ca.trust_bundle();
    for leaf in [&before, &during, &after] {
        webpki_verify(leaf, &bundle, at(601)).expect("every generation verifies");
    }
    // A client that fetched its bundle in phase 1 verifies the new root.
    webpki_verify(&after, &during.trust_bundle, at(601)).expect("phase-1 bundle");
    // The old root stays while `during` (its last leaf) is valid.
    assert!(
        ca.advance_rollover(at(1000), "t")
            .expect("advance")
            .is_empty()
    );
    assert_eq!(ca.trust_bundle().len(), 2);
    let text = ca.summary(at(1000)).expect("summary").to_string();
    assert!(text.contains("root roll-over: phase 2/3"), "{text}");

    // Phase 3: once `during` expired, the old root goes.
    let done = during.not_after.saturating_add(Duration::from_secs(1));
    drop(ca);
    let ca = open_generated(dir.path(), done);
    let steps = ca.advance_rollover(done, "t").expect("advance");
    assert_eq!(
        steps,
        vec![RolloverStep::Dropped {
            old_root: "root-1".into(),
            forced: false
        }]
    );
    assert_eq!(ca.rollover(), None);
    assert_eq!(ca.trust_bundle().len(), 1);
    drop(ca);
    let ca = open_generated(dir.path(), done);
    assert_eq!(ca.rollover(), None);
    assert_eq!(ca.signing_root(), "root-2");
    let text = ca.summary(done).expect("summary").to_string();
    assert!(text.contains("root roll-over: none in progress"), "{text}");
}

#[test]
fn zero_propagation_switches_at_once_and_force_finishes_a_roll_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    ca.issue_with_new_key(&id(WORKLOAD), None, now(), "test")
        .expect("leaf");
    ca.start_rollover(Duration::ZERO, now(), "admin")
        .expect("start");
    let steps = ca.advance_rollover(now(), "t").expect("advance");
    assert_eq!(
        steps,
        vec![RolloverStep::Switched {
            new_root: "root-2".into()
        }],
        "the old root signed a valid leaf, so it stays"
    );
    // --force: the old root goes while its leaf is still valid.
    let steps = ca.finish_rollover(now(), "admin").expect("finish");
    assert_eq!(
        steps,
        vec![RolloverStep::Dropped {
            old_root: "root-1".into(),
            forced: true
        }]
    );
    assert_eq!(ca.trust_bundle().len(), 1);

    // Forcing from phase 1 switches and drops in one call.
    ca.start_rollover(Duration::from_secs(3600), now(), "admin")
        .expect("second roll-over");
    let steps = ca.finish_rollover(now(), "admin").expect("finish");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(ca.signing_root(), "root-3");
    assert_eq!(ca.trust_bundle().len(), 1);
    assert_eq!(ca.rollover(), None);
}

#[test]
fn a_leftover_retired_root_is_dropped_like_a_roll_over_in_phase_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    let (leaf, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(Duration::from_secs(120)), now(), "test")
        .expect("leaf");
    // The low-level steps, as state written before roll-overs were recorded.
    let r2 = ca.add_generated_root(now(), "admin").expect("root");
    ca.switch_signing(&r2, now(), "admin").expect("switch");
    assert_eq!(ca.rollover(), None);
    assert!(ca.advance_rollover(now(), "t").expect("advance").is_empty());
    assert!(matches!(ca.rollover(), Some(Rollover::DropOld { .. })));
    let later = leaf.not_after.saturating_add(Duration::from_secs(1));
    assert_eq!(ca.advance_rollover(later, "t").expect("advance").len(), 1);
    assert_eq!(ca.trust_bundle().len(), 1);
}

/// A store shared by several CA instances, as replicas share the
/// Kubernetes Secret.
#[derive(Default)]
struct SharedStore(std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>);

impl Store for SharedStore {
    fn get(
        &self,
        key: &meshgate_ca::RecordKey,
    ) -> Result<Option<Vec<u8>>, meshgate_ca::StoreError> {
        Ok(self.0.lock().expect("lock").get(key.as_str()).cloned())
    }
    fn put(
        &self,
        key: &meshgate_ca::RecordKey,
        value: &[u8],
        _change: &meshgate_ca::Change<'_>,
    ) -> Result<(), meshgate_ca::StoreError> {
        self.0
            .lock()
            .expect("lock")
            .insert(key.as_str().to_owned(), value.to_vec());
        Ok(())
    }
    fn delete(
        &self,
        key: &meshgate_ca::RecordKey,
        _change: &meshgate_ca::Change<'_>,
    ) -> Result<bool, meshgate_ca::StoreError> {
        Ok(self.0.lock().expect("lock").remove(key.as_str()).is_some())
    }
    fn list(&self, prefix: &str) -> Result<Vec<meshgate_ca::RecordKey>, meshgate_ca::StoreError> {
        self.0
            .lock()
            .expect("lock")
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| meshgate_ca::RecordKey::new(k.clone()))
            .collect()
    }
    fn audit_log(
        &self,
        _after: u64,
    ) -> Result<Vec<meshgate_ca::AuditEntry>, meshgate_ca::StoreError> {
        Ok(Vec::new())
    }
}

#[test]
fn a_replica_follows_the_leaders_roll_over_and_revocations_by_reloading() {
    let store = Arc::new(SharedStore::default());
    let open = || {
        CertificateAuthority::open(store.clone(), config(), &CaSource::Generate, now(), "r")
            .expect("CA")
    };
    let leader = open();
    let replica = open();
    assert!(
        !replica.reload(now()).expect("reload"),
        "nothing changed yet"
    );

    leader
        .start_rollover(Duration::from_secs(60), now(), "admin")
        .expect("start");
    assert!(replica.reload(now()).expect("reload"), "new root trusted");
    assert_eq!(replica.trust_bundle().len(), 2);
    assert_eq!(replica.rollover().map(|r| r.phase()), Some(1));
    assert!(!replica.reload(now()).expect("reload"));

    let later = now().saturating_add(Duration::from_secs(60));
    leader.advance_rollover(later, "leader").expect("switch");
    assert!(replica.reload(later).expect("reload"), "signing switched");
    assert_eq!(replica.signing_root(), "root-2");
    let (leaf, _) = replica
        .issue_with_new_key(&id(WORKLOAD), None, later, "test")
        .expect("issued by the replica");
    assert_eq!(leaf.root_id, "root-2");
    webpki_verify(&leaf, &leader.trust_bundle(), later).expect("the leader's bundle verifies it");

    leader
        .revoke_spiffe_id(&id(WORKLOAD), "test", later, "admin")
        .expect("revoke");
    assert!(!replica.is_revoked(WORKLOAD, &[1], later));
    replica.reload(later).expect("reload");
    assert!(replica.is_revoked(WORKLOAD, &[1], later));
}

#[test]
fn forced_drop_ignores_valid_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(dir.path(), now());
    ca.issue_with_new_key(&id(WORKLOAD), None, now(), "test")
        .expect("leaf");
    let r2 = ca.add_generated_root(now(), "admin").expect("root");
    ca.switch_signing(&r2, now(), "admin").expect("switch");
    ca.drop_root("root-1", true, now(), "admin")
        .expect("forced drop");
    assert_eq!(ca.trust_bundle().len(), 1);
}

#[test]
fn audit_log_names_actor_and_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = FileStore::open(dir.path()).expect("store");
    let store = Arc::new(store);
    let ca = CertificateAuthority::open(
        store.clone(),
        config(),
        &CaSource::Generate,
        now(),
        "installer",
    )
    .expect("CA");
    let (issued, _) = ca
        .issue_with_new_key(&id(WORKLOAD), None, now(), "admin:alice")
        .expect("issued");
    let log = store.audit_log(0).expect("audit");
    assert!(
        log.iter()
            .any(|e| e.actor == "installer" && e.key == "ca.state")
    );
    let last = log.last().expect("entry");
    assert_eq!(last.actor, "admin:alice");
    assert_eq!(last.at, now());
    assert!(
        last.note.contains(&issued.serial.to_string()),
        "{}",
        last.note
    );
}

// ---- plugged-in (Istio cacerts) CA ----

struct Pki {
    root_key: KeyPair,
    root_params: CertificateParams,
    root: CertificateDer<'static>,
}

fn ca_params(cn: &str, nb: UnixTime, na: UnixTime, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(nb.as_secs() as i64).expect("t");
    p.not_after = time::OffsetDateTime::from_unix_timestamp(na.as_secs() as i64).expect("t");
    p
}

fn new_root(cn: &str) -> Pki {
    let root_key = KeyPair::generate().expect("key");
    let root_params = ca_params(
        cn,
        now().saturating_sub(Duration::from_secs(86_400)),
        now().saturating_add(Duration::from_secs(3650 * 86_400)),
        true,
    );
    let root = root_params
        .self_signed(&root_key)
        .expect("root")
        .der()
        .clone();
    Pki {
        root_key,
        root_params,
        root,
    }
}

fn pem(der: &[u8]) -> String {
    meshgate_ca::x509::certs_to_pem([&CertificateDer::from(der.to_vec())])
}

/// Writes a valid cacerts directory: intermediate "ca-cert" valid for
/// `lifetime` from now, signed by `pki`'s root.
fn write_cacerts(dir: &Path, pki: &Pki, lifetime: Duration) -> (KeyPair, CertificateDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let params = ca_params(
        "plugged intermediate",
        now().saturating_sub(Duration::from_secs(3600)),
        now().saturating_add(lifetime),
        true,
    );
    let issuer = Issuer::from_params(&pki.root_params, &pki.root_key);
    let cert = params.signed_by(&key, &issuer).expect("sign").der().clone();
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(CA_CERT), pem(&cert)).expect("write");
    fs::write(dir.join(CA_KEY), key.serialize_pem()).expect("write");
    fs::write(dir.join(ROOT_CERT), pem(&pki.root)).expect("write");
    fs::write(dir.join(CERT_CHAIN), pem(&cert) + &pem(&pki.root)).expect("write");
    (key, cert)
}

fn open_plugged(
    data: &Path,
    cacerts: &Path,
    at: UnixTime,
) -> Result<CertificateAuthority, CaError> {
    let (store, _) = FileStore::open(data).expect("store");
    CertificateAuthority::open(
        Arc::new(store),
        config(),
        &CaSource::Cacerts(cacerts.to_path_buf()),
        at,
        "test",
    )
}

#[test]
fn cacerts_good_directory_issues_verifiable_certificates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cacerts = tmp.path().join("cacerts");
    let pki = new_root("plugged root");
    write_cacerts(&cacerts, &pki, Duration::from_secs(365 * 86_400));
    let ca = open_plugged(&tmp.path().join("data"), &cacerts, now()).expect("plugged CA");
    let (issued, _) = ca
        .issue_with_new_key(&id(WORKLOAD), None, now(), "test")
        .expect("issued");
    assert_eq!(issued.trust_bundle, vec![pki.root.clone()]);
    assert_eq!(issued.chain.len(), 1, "ca-cert only; root not duplicated");
    webpki_verify(&issued, core::slice::from_ref(&pki.root), now())
        .expect("verifies to the plugged root");
    let s = ca.summary(now()).expect("summary");
    assert!(s.roots[0].origin.starts_with("cacerts:"));
    // `rotate-root` would swap the operator's CA for a generated one.
    assert!(matches!(
        ca.start_rollover(Duration::ZERO, now(), "admin"),
        Err(CaError::PluggedRollover(_))
    ));
    assert_eq!(ca.trust_bundle().len(), 1);
    // The plugged key is referenced, not copied into the store.
    drop(ca);
    for entry in fs::read_dir(tmp.path().join("data/records")).expect("records") {
        let name = entry.expect("entry").file_name();
        assert!(!name.to_string_lossy().contains("key"), "{name:?}");
    }
}

#[test]
fn leaf_never_outlives_the_signing_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cacerts = tmp.path().join("cacerts");
    let pki = new_root("plugged root");
    let (_, ca_cert) = write_cacerts(&cacerts, &pki, Duration::from_secs(2 * 3600));
    let ca = open_plugged(&tmp.path().join("data"), &cacerts, now()).expect("plugged CA");
    let (issued, _) = ca
        .issue_with_new_key(&id(WORKLOAD), Some(Duration::from_secs(86_400)), now(), "t")
        .expect("issued");
    let (_, c) = X509Certificate::from_der(&ca_cert).expect("parse");
    assert_eq!(
        issued.not_after.as_secs(),
        c.validity().not_after.timestamp() as u64
    );
    // Less than the minimum TTL left: refuse rather than issue a stub.
    let late = now().saturating_add(Duration::from_secs(2 * 3600 - 30));
    assert!(matches!(
        ca.issue_with_new_key(&id(WORKLOAD), None, late, "t"),
        Err(CaError::SigningCertExpiring { .. })
    ));
}

fn expect_cacerts_err(data: &Path, cacerts: &Path, file: &str) -> CacertsError {
    match open_plugged(data, cacerts, now()) {
        Err(CaError::Cacerts(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&cacerts.join(file).display().to_string()),
                "error does not name {file}: {msg}"
            );
            e
        }
        Err(other) => panic!("expected a cacerts error about {file}, got {other}"),
        Ok(_) => panic!("expected a cacerts error about {file}, got a CA"),
    }
}

#[test]
fn cacerts_bad_cases_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let pki = new_root("plugged root");
    let fresh = |name: &str| {
        let d = tmp.path().join(name);
        write_cacerts(&d, &pki, Duration::from_secs(365 * 86_400));
        d
    };

    // Each required file missing.
    for file in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
        let d = fresh(&format!("missing-{file}"));
        fs::remove_file(d.join(file)).expect("rm");
        assert!(matches!(
            expect_cacerts_err(&data, &d, file),
            CacertsError::Read { .. }
        ));
    }

    // Not PEM.
    let d = fresh("garbage");
    fs::write(d.join(CA_CERT), "hello").expect("write");
    expect_cacerts_err(&data, &d, CA_CERT);

    // Key of another certificate.
    let d = fresh("mismatch");
    fs::write(
        d.join(CA_KEY),
        KeyPair::generate().expect("k").serialize_pem(),
    )
    .expect("write");
    assert!(matches!(
        expect_cacerts_err(&data, &d, CA_KEY),
        CacertsError::KeyMismatch { .. }
    ));

    // A PEM block labelled as a key whose content is not one.
    let d = fresh("bad-pkcs1");
    fs::write(
        d.join(CA_KEY),
        "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
    )
    .expect("write");
    let e = expect_cacerts_err(&data, &d, CA_KEY);
    assert!(e.to_string().contains("invalid key"), "{e}");

    // Signing certificate that is not a CA.
    let d = fresh("not-ca");
    let key = KeyPair::generate().expect("key");
    let leafish = ca_params(
        "not a ca",
        now().saturating_sub(Duration::from_secs(60)),
        now().saturating_add(Duration::from_secs(86_400)),
        false,
    )
    .signed_by(&key, &Issuer::from_params(&pki.root_params, &pki.root_key))
    .expect("sign");
    fs::write(d.join(CA_CERT), leafish.pem()).expect("write");
    fs::write(d.join(CA_KEY), key.serialize_pem()).expect("write");
    assert!(matches!(
        expect_cacerts_err(&data, &d, CA_CERT),
        CacertsError::NotCa { .. }
    ));

    // Expired signing certificate.
    let d = fresh("expired");
    let key = KeyPair::generate().expect("key");
    let expired = ca_params(
        "expired",
        now().saturating_sub(Duration::from_secs(10 * 86_400)),
        now().saturating_sub(Duration::from_secs(86_400)),
        true,
    )
    .signed_by(&key, &Issuer::from_params(&pki.root_params, &pki.root_key))
    .expect("sign");
    fs::write(d.join(CA_CERT), expired.pem()).expect("write");
    fs::write(d.join(CA_KEY), key.serialize_pem()).expect("write");
    assert!(matches!(
        expect_cacerts_err(&data, &d, CA_CERT),
        CacertsError::NotValidNow { .. }
    ));

    // Chain to a different root (same subject name, other key).
    let d = fresh("wrong-root");
    let impostor = new_root("plugged root");
    fs::write(d.join(ROOT_CERT), pem(&impostor.root)).expect("write");
    fs::write(d.join(CERT_CHAIN), fs::read(d.join(CA_CERT)).expect("read")).expect("write");
    assert!(matches!(
        expect_cacerts_err(&data, &d, CA_CERT),
        CacertsError::ChainBroken { .. }
    ));

    // Root that is not self-signed.
    let d = fresh("root-not-self-signed");
    fs::write(d.join(ROOT_CERT), fs::read(d.join(CA_CERT)).expect("read")).expect("write");
    expect_cacerts_err(&data, &d, ROOT_CERT);

    // Nothing was initialised by the failed attempts.
    let (store, _) = FileStore::open(&data).expect("store");
    assert!(store.list("ca.").expect("list").is_empty());
}

#[test]
fn plugged_root_replaced_in_place_is_refused_at_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cacerts = tmp.path().join("cacerts");
    let data = tmp.path().join("data");
    write_cacerts(&cacerts, &new_root("one"), Duration::from_secs(86_400 * 30));
    drop(open_plugged(&data, &cacerts, now()).expect("first start"));
    write_cacerts(&cacerts, &new_root("two"), Duration::from_secs(86_400 * 30));
    assert!(matches!(
        open_plugged(&data, &cacerts, now()),
        Err(CaError::PluggedRootChanged { .. })
    ));
    // And switching the configured source is refused too.
    let (store, _) = FileStore::open(&data).expect("store");
    assert!(matches!(
        CertificateAuthority::open(Arc::new(store), config(), &CaSource::Generate, now(), "t"),
        Err(CaError::SourceMismatch { .. })
    ));
}

#[test]
fn roll_over_from_generated_to_plugged_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = open_generated(&tmp.path().join("data"), now());
    let cacerts = tmp.path().join("cacerts");
    let pki = new_root("corporate root");
    write_cacerts(&cacerts, &pki, Duration::from_secs(365 * 86_400));
    let id2 = ca.add_cacerts_root(&cacerts, now(), "admin").expect("add");
    assert!(matches!(
        ca.add_cacerts_root(&cacerts, now(), "admin"),
        Err(CaError::DuplicateRoot(_))
    ));
    ca.switch_signing(&id2, now(), "admin").expect("switch");
    let (issued, _) = ca
        .issue_with_new_key(&id(WORKLOAD), None, now(), "t")
        .expect("issued");
    webpki_verify(&issued, core::slice::from_ref(&pki.root), now())
        .expect("chains to the plugged root");
}

/// A time inside the validity of the openssl-made fixtures (2027-01-15).
const FIXTURE_NOW: u64 = 1_800_000_000;

#[test]
fn cacerts_with_pkcs1_rsa_and_sec1_ec_keys_load() {
    for name in ["cacerts-rsa-pkcs1", "cacerts-ec-sec1"] {
        let cacerts = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let at = UnixTime::from_secs(FIXTURE_NOW);
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = open_plugged(tmp.path(), &cacerts, at).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (issued, _) = ca
            .issue_with_new_key(&id(WORKLOAD), None, at, "t")
            .expect("issued");
        webpki_verify(&issued, &issued.trust_bundle, at)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(issued.chain.len(), 1, "{name}");
    }
}

#[test]
fn cacerts_source_detection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    assert_eq!(CaSource::detect(&empty).expect("empty"), CaSource::Generate);
    assert_eq!(
        CaSource::detect(&tmp.path().join("absent")).expect("absent"),
        CaSource::Generate
    );
    let full = tmp.path().join("full");
    write_cacerts(&full, &new_root("r"), Duration::from_secs(86_400));
    assert_eq!(
        CaSource::detect(&full).expect("full"),
        CaSource::Cacerts(full.clone())
    );
    fs::remove_file(full.join(CA_KEY)).expect("rm");
    let err = CaSource::detect(&full).expect_err("partial");
    assert!(err.to_string().contains(CA_KEY), "{err}");
}
