//! The certificate authority: CA material, SPIFFE issuance, root roll-over,
//! revocation, and the `ca show` summary.
//!
//! [`CertificateAuthority`] owns the signing key in memory and keeps its
//! state in a [`Store`]:
//!
//! | record                    | content                                        |
//! |---------------------------|------------------------------------------------|
//! | `ca.state`                | trusted roots (PEM, origin), the signing root, the roll-over phase |
//! | `ca.<root>.root-key.pem`  | generated root's private key (PKCS#8 PEM)      |
//! | `ca.<root>.signing-key.pem` | generated intermediate's private key         |
//! | `ca.<root>.signing-cert.pem` | generated intermediate certificate          |
//! | `ca.issued`               | per-root counts + index of unexpired leaves    |
//! | `ca.revocations`          | the revocation list                            |
//!
//! A plugged-in (Istio `cacerts`) CA is referenced by its directory and
//! re-read and re-checked at every start; its key is never copied into the
//! store. Leaf private keys are never stored anywhere: CSR issuance never
//! sees one, and [`CertificateAuthority::issue_with_new_key`] hands the key
//! to the caller.
//!
//! Nothing here reads the clock: every operation takes `now`.

use core::time::Duration;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use meshgate_core::spiffe::{OwnedTrustDomain, SpiffeId};
use meshgate_core::time::UnixTime;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::SystemRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use crate::cacerts::{CacertsError, load_cacerts};
use crate::revocation::{Revocation, RevocationList, RevocationTarget};
use crate::store::{Change, RecordKey, Store, StoreError, get_json, put_json};
use crate::x509::{
    Serial, cert_facts, certs_to_pem, fingerprint_sha256, parse_pem_certs, pem_block, to_offset,
    verify_issued_by,
};

/// Shortest certificate lifetime the CA issues by default
/// ([`CaConfig::min_ttl`]).
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest certificate lifetime the CA issues (Istio's maximum).
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default certificate lifetime (Istio's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far `not_before` is set in the past, so that peers whose clocks are
/// slightly behind accept a fresh certificate.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a generated root (and of its intermediate).
pub const ROOT_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);

const STATE_KEY: &str = "ca.state";
const ISSUED_KEY: &str = "ca.issued";
const REVOCATIONS_KEY: &str = "ca.revocations";

/// Errors from the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A plugged-in CA directory was refused.
    #[error(transparent)]
    Cacerts(#[from] CacertsError),
    /// The CSR could not be parsed.
    #[error("malformed CSR: {0}")]
    Csr(String),
    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify")]
    CsrSignature,
    /// The requested key type or size is not accepted.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    /// The SPIFFE ID is not in the CA's trust domain.
    #[error("{spiffe_id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        spiffe_id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The requested lifetime is outside [`CaConfig::min_ttl`]..=[`MAX_TTL`].
    #[error("TTL {ttl:?} outside the allowed range {min:?} ..= 90 days")]
    TtlOutOfRange {
        /// The requested lifetime.
        ttl: Duration,
        /// The CA's minimum.
        min: Duration,
    },
    /// [`CaConfig::min_ttl`] is zero or above [`MAX_TTL`].
    #[error("minimum TTL {0:?} must be at least 1 s and at most 90 days")]
    BadMinTtl(Duration),
    /// The signing certificate expires too soon to issue anything useful.
    #[error("signing certificate expires at {not_after_secs} s since epoch; rotate the CA")]
    SigningCertExpiring {
        /// Its expiry, seconds since the epoch.
        not_after_secs: u64,
    },
    /// The signing chain is not valid yet at `now` (a clock far behind the
    /// one the CA was created with): a leaf issued now would start after
    /// it ends, or before its issuer.
    #[error(
        "signing certificate is not valid before {not_before_secs} s since epoch; is the clock right?"
    )]
    SigningCertNotYetValid {
        /// Its start of validity, seconds since the epoch.
        not_before_secs: u64,
    },
    /// The SPIFFE ID is revoked; issuing for it would undo the revocation.
    #[error("{0} is revoked")]
    Revoked(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Crypto(String),
    /// Stored CA material is inconsistent (e.g. key and certificate differ).
    #[error("CA record {key}: {reason}")]
    BadMaterial {
        /// The record concerned.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The configured CA source differs from the one in the stored state.
    #[error(
        "configured CA source ({configured}) differs from the stored signing root's ({stored}); add the new CA as a root and switch signing instead"
    )]
    SourceMismatch {
        /// What the configuration asks for.
        configured: String,
        /// What the state holds.
        stored: String,
    },
    /// A plugged-in directory now holds a different root than recorded.
    #[error(
        "{dir}: root certificate changed (recorded {recorded}, found {found}); trust the new root with a root roll-over instead of replacing it in place"
    )]
    PluggedRootChanged {
        /// The cacerts directory.
        dir: PathBuf,
        /// Recorded root fingerprint.
        recorded: String,
        /// Fingerprint now in the directory.
        found: String,
    },
    /// No root with this ID.
    #[error("no root {0}")]
    UnknownRoot(String),
    /// The root is already trusted.
    #[error("root {0} is already trusted")]
    DuplicateRoot(String),
    /// The signing root cannot be dropped.
    #[error("root {0} is the signing root; switch signing first")]
    RootIsSigning(String),
    /// Certificates signed under the root are still valid.
    #[error(
        "root {id} still has valid certificates until {until_secs} s since epoch; wait or force"
    )]
    RootInUse {
        /// The root.
        id: String,
        /// When its last certificate expires, seconds since the epoch.
        until_secs: u64,
    },
    /// A root roll-over is already running.
    #[error(
        "a root roll-over is in progress ({0}); wait for it to finish or finish it now with force"
    )]
    RolloverInProgress(String),
    /// `rotate-root` would replace a plugged-in CA with a generated one.
    #[error(
        "the signing root is a plugged-in CA ({0}); rolling it over to a generated root would leave your PKI (and the next start with --cacerts would refuse the state)"
    )]
    PluggedRollover(String),
    /// A DNS name for a server certificate is not a host name.
    #[error(
        "{0:?} is not a DNS host name (letters, digits, '-', dots; optionally starting with '*.')"
    )]
    BadDnsName(String),
    /// The serial is not in the index of issued certificates.
    #[error("no unexpired certificate with serial {0} was issued by this CA")]
    UnknownSerial(Serial),
}

fn crypto(e: rcgen::Error) -> CaError {
    CaError::Crypto(e.to_string())
}

/// CA settings.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// The trust domain this CA issues for; issuance outside it is refused.
    pub trust_domain: OwnedTrustDomain,
    /// Lifetime of certificates issued without an explicit TTL.
    pub default_ttl: Duration,
    /// Shortest lifetime issued ([`MIN_TTL`], 60 s, by default). Lowered
    /// only by tests that need many rotations in minutes: a certificate
    /// that short leaves no room for a failed renewal in production.
    pub min_ttl: Duration,
}

impl CaConfig {
    /// Settings with the default TTL (24 h) and minimum TTL (60 s).
    pub fn new(trust_domain: OwnedTrustDomain) -> Self {
        CaConfig {
            trust_domain,
            default_ttl: DEFAULT_TTL,
            min_ttl: MIN_TTL,
        }
    }

    /// Refuses a lifetime outside `min_ttl ..= MAX_TTL`.
    fn validate_ttl(&self, ttl: Duration) -> Result<(), CaError> {
        if (self.min_ttl..=MAX_TTL).contains(&ttl) {
            Ok(())
        } else {
            Err(CaError::TtlOutOfRange {
                ttl,
                min: self.min_ttl,
            })
        }
    }
}

/// Where the CA's signing material comes from on first start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A self-signed root and an intermediate generated by meshgate.
    Generate,
    /// An Istio `cacerts` directory.
    Cacerts(PathBuf),
}

impl CaSource {
    /// Chooses the source from an optional `cacerts` directory the way
    /// istiod does: all four files present → plugged-in CA; none of them
    /// (or no directory, e.g. an optional Kubernetes Secret that is not
    /// there) → generate; some but not all → an error naming the first
    /// missing file, since a half-provisioned CA is an operator mistake.
    pub fn detect(cacerts_dir: &Path) -> Result<CaSource, CacertsError> {
        use crate::cacerts::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
        let files = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN];
        let present: Vec<bool> = files.iter().map(|f| cacerts_dir.join(f).exists()).collect();
        if present.iter().all(|&p| p) {
            return Ok(CaSource::Cacerts(cacerts_dir.to_path_buf()));
        }
        if !present.iter().any(|&p| p) {
            return Ok(CaSource::Generate);
        }
        let missing = files
            .iter()
            .zip(&present)
            .find(|(_, p)| !**p)
            .map_or(CA_CERT, |(f, _)| *f);
        Err(CacertsError::Read {
            path: cacerts_dir.join(missing),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "incomplete cacerts directory (need ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem, or none of them)",
            ),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RootOrigin {
    Generated,
    Cacerts { dir: PathBuf },
}

impl core::fmt::Display for RootOrigin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RootOrigin::Generated => f.write_str("generated"),
            RootOrigin::Cacerts { dir } => write!(f, "cacerts:{}", dir.display()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RootRecord {
    id: String,
    origin: RootOrigin,
    fingerprint: String,
    root_cert_pem: String,
    added_at: UnixTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CaState {
    roots: Vec<RootRecord>,
    signing: String,
    next_root: u32,
    /// The root roll-over in progress. Every phase change is one write of
    /// this record, so a restart continues where the roll-over was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollover: Option<Rollover>,
}

/// A root roll-over in progress ("trust both → switch → drop"), kept in
/// `ca.state`.
///
/// 1. [`TrustBoth`](Self::TrustBoth): the new root is in the trust bundle
///    next to the old one — the gateway accepts both, and every certificate
///    issued now carries both in its bundle — while the old root's
///    intermediate still signs. Workloads pick the new root up on their own
///    renewals during the propagation period.
/// 2. [`DropOld`](Self::DropOld): signing switched to the new root's
///    intermediate (the gateway re-issues its own certificate); the old
///    root stays trusted while anything it signed may still be valid.
/// 3. The old root is dropped and the roll-over record removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Rollover {
    /// Phase 1: both roots trusted, the old one signs.
    TrustBoth {
        /// The root being replaced (signing).
        old_root: String,
        /// The new root (trusted, not signing yet).
        new_root: String,
        /// When the roll-over started.
        started_at: UnixTime,
        /// When signing switches to the new root.
        switch_at: UnixTime,
    },
    /// Phase 2: the new root signs; the old one is still trusted.
    DropOld {
        /// The retired root, dropped once nothing it signed is valid.
        old_root: String,
        /// The signing root.
        new_root: String,
        /// When the roll-over started.
        started_at: UnixTime,
        /// When signing switched.
        switched_at: UnixTime,
    },
}

impl Rollover {
    /// 1 or 2 (phase 3 removes the record).
    pub fn phase(&self) -> u8 {
        match self {
            Rollover::TrustBoth { .. } => 1,
            Rollover::DropOld { .. } => 2,
        }
    }

    /// The phase's name as the API reports it.
    pub fn phase_name(&self) -> &'static str {
        match self {
            Rollover::TrustBoth { .. } => "trust_both",
            Rollover::DropOld { .. } => "drop_old",
        }
    }

    /// The root being replaced.
    pub fn old_root(&self) -> &str {
        match self {
            Rollover::TrustBoth { old_root, .. } | Rollover::DropOld { old_root, .. } => old_root,
        }
    }

    /// The root taking over.
    pub fn new_root(&self) -> &str {
        match self {
            Rollover::TrustBoth { new_root, .. } | Rollover::DropOld { new_root, .. } => new_root,
        }
    }
}

impl core::fmt::Display for Rollover {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Rollover::TrustBoth {
                old_root,
                new_root,
                switch_at,
                ..
            } => write!(
                f,
                "phase 1/3: trusting {old_root} and {new_root}, {old_root} signs; signing switches to {new_root} at {}",
                format_time(*switch_at)
            ),
            Rollover::DropOld {
                old_root, new_root, ..
            } => write!(
                f,
                "phase 2/3: {new_root} signs; {old_root} stays trusted until nothing it signed is valid"
            ),
        }
    }
}

/// What one [`CertificateAuthority::advance_rollover`] or
/// [`CertificateAuthority::finish_rollover`] call changed. Each step
/// changes the trust bundle or the signing root, so the gateway re-issues
/// its own certificate after any of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloverStep {
    /// Phase 2 began: new certificates chain to `new_root`.
    Switched {
        /// The new signing root.
        new_root: String,
    },
    /// Phase 3: `old_root` left the trust bundle; the roll-over is over.
    Dropped {
        /// The dropped root.
        old_root: String,
        /// True when it was dropped while certificates it signed were
        /// still valid.
        forced: bool,
    },
}

/// Per-root issuance statistics, kept for as long as the root is trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RootStats {
    issued: u64,
    latest_not_after: Option<UnixTime>,
}

/// One issued certificate in the index (kept until it expires).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedEntry {
    /// Its serial.
    pub serial: Serial,
    /// The identity it carries.
    pub spiffe_id: String,
    /// Its expiry.
    pub not_after: UnixTime,
    /// The root it chains to.
    pub root_id: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct IssuedIndex {
    per_root: BTreeMap<String, RootStats>,
    certs: Vec<IssuedEntry>,
}

/// The signing key and chain in use.
struct Signer {
    root_id: String,
    issuer: Issuer<'static, KeyPair>,
    /// Signing certificate first, then intermediates; never the root.
    chain: Vec<CertificateDer<'static>>,
    /// Intersection of the validity of the chain and the root.
    not_before: UnixTime,
    not_after: UnixTime,
}

struct Inner {
    state: CaState,
    roots: Vec<CertificateDer<'static>>,
    signer: Signer,
    index: IssuedIndex,
}

/// A certificate issued by the CA, with what a TLS endpoint needs.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The leaf certificate.
    pub cert: CertificateDer<'static>,
    /// The intermediates, the leaf's issuer first; the root is not included.
    pub chain: Vec<CertificateDer<'static>>,
    /// Every trusted root (more than one during a root roll-over).
    pub trust_bundle: Vec<CertificateDer<'static>>,
    /// The leaf's serial.
    pub serial: Serial,
    /// The leaf's only identity.
    pub spiffe_id: String,
    /// Start of validity (backdated by [`BACKDATE`]).
    pub not_before: UnixTime,
    /// End of validity.
    pub not_after: UnixTime,
    /// The root the leaf chains to.
    pub root_id: String,
}

impl IssuedCertificate {
    /// Leaf followed by the chain, as PEM (what a TLS server presents).
    pub fn cert_chain_pem(&self) -> String {
        certs_to_pem(core::iter::once(&self.cert).chain(&self.chain))
    }

    /// The trust bundle as PEM.
    pub fn trust_bundle_pem(&self) -> String {
        certs_to_pem(&self.trust_bundle)
    }

    /// Leaf followed by the chain, as DER (what rustls takes).
    pub fn full_chain(&self) -> Vec<CertificateDer<'static>> {
        core::iter::once(self.cert.clone())
            .chain(self.chain.iter().cloned())
            .collect()
    }
}

/// A private key generated for the caller; never written by the CA.
pub struct LeafKey(PrivatePkcs8KeyDer<'static>);

impl LeafKey {
    /// The key as PKCS#8 DER (for rustls).
    pub fn pkcs8_der(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.0
    }

    /// Takes the key as PKCS#8 DER.
    pub fn into_pkcs8_der(self) -> PrivatePkcs8KeyDer<'static> {
        self.0
    }

    /// The key as PEM (`PRIVATE KEY`), for `meshgate cert issue --out`.
    pub fn to_pem(&self) -> String {
        pem_block("PRIVATE KEY", self.0.secret_pkcs8_der())
    }
}

impl core::fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LeafKey(<secret>)")
    }
}

/// Whether a non-signing root can be dropped from the trust bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum DropStatus {
    /// It is the signing root.
    Signing,
    /// Certificates issued under it are valid until `until`.
    InUse {
        /// Expiry of the last certificate issued under it.
        until: UnixTime,
    },
    /// Nothing this CA issued under it is still valid.
    Ready,
    /// The new root of a roll-over in phase 1: trusted, signing soon.
    Incoming,
}

/// One trusted root, as `meshgate ca show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct RootSummary {
    /// meshgate's ID for the root (`root-N`).
    pub id: String,
    /// SHA-256 fingerprint of the root certificate, `AA:BB:…`.
    pub fingerprint_sha256: String,
    /// The root's subject.
    pub subject: String,
    /// Start of the root's validity.
    pub not_before: UnixTime,
    /// End of the root's validity.
    pub not_after: UnixTime,
    /// `generated` or `cacerts:DIR`.
    pub origin: String,
    /// Whether new certificates are signed under it.
    pub signing: bool,
    /// Certificates issued under it since it was added.
    pub issued_count: u64,
    /// Expiry of the most recent certificate issued under it.
    pub latest_leaf_not_after: Option<UnixTime>,
    /// Certificates issued under it that are still valid.
    pub valid_leaves: usize,
    /// Whether it can be dropped.
    pub drop_status: DropStatus,
}

/// What `meshgate ca show` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CaSummary {
    /// The CA's trust domain.
    pub trust_domain: String,
    /// The root new certificates chain to.
    pub signing_root: String,
    /// Expiry of the signing chain (leaves never outlive it).
    pub signing_not_after: UnixTime,
    /// Every trusted root.
    pub roots: Vec<RootSummary>,
    /// Revocations currently enforced.
    pub active_revocations: usize,
    /// The root roll-over in progress.
    pub rollover: Option<Rollover>,
}

/// The certificate authority. All methods take `&self`; issuance is
/// serialised internally, and revocation checks never wait for it.
pub struct CertificateAuthority {
    store: Arc<dyn Store>,
    config: CaConfig,
    rng: SystemRandom,
    inner: Mutex<Inner>,
    revocations: RwLock<RevocationList>,
}

impl core::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.config.trust_domain)
            .finish_non_exhaustive()
    }
}

fn key(name: impl Into<String>) -> Result<RecordKey, CaError> {
    Ok(RecordKey::new(name)?)
}

fn material_key(root: &str, what: &str) -> Result<RecordKey, CaError> {
    key(format!("ca.{root}.{what}"))
}

fn ca_name(kind: &str, td: &OwnedTrustDomain, id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshgate");
    dn.push(DnType::CommonName, format!("meshgate {kind} {td} {id}"));
    dn
}

fn trust_domain_san(td: &OwnedTrustDomain) -> Result<SanType, CaError> {
    Ok(SanType::URI(
        format!("spiffe://{td}").try_into().map_err(crypto)?,
    ))
}

/// Generated root + intermediate, before they are stored.
struct GeneratedRoot {
    root_key: KeyPair,
    root: CertificateDer<'static>,
    signing_key: KeyPair,
    signing: CertificateDer<'static>,
}

impl CertificateAuthority {
    /// Opens the CA: loads its state from `store`, or on first start
    /// creates it from `source` (a new root + intermediate, or a checked
    /// `cacerts` directory). A `cacerts` CA is re-read and re-checked at
    /// every start; its root must still be the recorded one.
    pub fn open(
        store: Arc<dyn Store>,
        config: CaConfig,
        source: &CaSource,
        now: UnixTime,
        actor: &str,
    ) -> Result<Self, CaError> {
        if config.min_ttl.is_zero() || config.min_ttl > MAX_TTL {
            return Err(CaError::BadMinTtl(config.min_ttl));
        }
        config.validate_ttl(config.default_ttl)?;
        let rng = SystemRandom::new();
        let state: Option<CaState> = get_json(&*store, &key(STATE_KEY)?)?;
        let state = match state {
            Some(s) => s,
            None => {
                let change = Change {
                    actor,
                    at: now,
                    note: "CA initialised",
                };
                let root_id = "root-1".to_owned();
                let record = match source {
                    CaSource::Generate => {
                        let g = generate_root(&rng, &config.trust_domain, &root_id, now)?;
                        store_generated(&*store, &root_id, &g, &change)?;
                        root_record(&root_id, RootOrigin::Generated, &g.root, now)
                    }
                    CaSource::Cacerts(dir) => {
                        let p = load_cacerts(dir, now)?;
                        let origin = RootOrigin::Cacerts { dir: dir.clone() };
                        root_record(&root_id, origin, &p.root, now)
                    }
                };
                let state = CaState {
                    roots: vec![record],
                    signing: root_id,
                    next_root: 2,
                    rollover: None,
                };
                put_json(&*store, &key(STATE_KEY)?, &state, &change)?;
                state
            }
        };

        let signing = find_root(&state, &state.signing)?;
        let configured = match source {
            CaSource::Generate => RootOrigin::Generated,
            CaSource::Cacerts(dir) => RootOrigin::Cacerts { dir: dir.clone() },
        };
        if configured != signing.origin {
            return Err(CaError::SourceMismatch {
                configured: configured.to_string(),
                stored: signing.origin.to_string(),
            });
        }
        let signer = load_signer(&*store, signing, now)?;
        let roots = root_ders(&state)?;
        let index: IssuedIndex = get_json(&*store, &key(ISSUED_KEY)?)?.unwrap_or_default();
        let revocations: RevocationList =
            get_json(&*store, &key(REVOCATIONS_KEY)?)?.unwrap_or_default();
        Ok(CertificateAuthority {
            store,
            config,
            rng,
            inner: Mutex::new(Inner {
                state,
                roots,
                signer,
                index,
            }),
            revocations: RwLock::new(revocations),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // State is only replaced after a successful store write, so a
        // panic elsewhere cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CA's configuration.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Issues a certificate for the public key in a PKCS#10 CSR (DER or
    /// PEM). The CSR's self-signature must verify. The certificate's only
    /// identity is `spiffe_id` — what the caller authenticated the
    /// requester as — whatever subject or SANs the CSR asks for.
    /// `ttl` defaults to the configured TTL and is clamped to the signing
    /// certificate's expiry.
    pub fn issue_from_csr(
        &self,
        csr: &[u8],
        spiffe_id: &SpiffeId<'_>,
        ttl: Option<Duration>,
        now: UnixTime,
        actor: &str,
    ) -> Result<IssuedCertificate, CaError> {
        let public_key = csr_public_key(csr)?;
        self.issue_for_key(&public_key, spiffe_id, &[], ttl, now, actor)
    }

    /// Generates a P-256 key in memory and issues a certificate for it.
    /// The key is returned to the caller and never written by the CA.
    pub fn issue_with_new_key(
        &self,
        spiffe_id: &SpiffeId<'_>,
        ttl: Option<Duration>,
        now: UnixTime,
        actor: &str,
    ) -> Result<(IssuedCertificate, LeafKey), CaError> {
        self.issue_server_with_new_key(spiffe_id, &[], ttl, now, actor)
    }

    /// Like [`Self::issue_with_new_key`], with DNS names as well: for the
    /// gateway's own serving certificate, so that clients which check the
    /// host name (curl, browsers) can verify it against the mesh roots.
    /// The SPIFFE ID stays the only URI SAN — the identity mesh peers
    /// check; DNS names are ignored by SPIFFE verification. Only the
    /// gateway's own identity gets names: CSR issuance never does, so a
    /// workload cannot obtain a certificate for a service's host name.
    pub fn issue_server_with_new_key(
        &self,
        spiffe_id: &SpiffeId<'_>,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: UnixTime,
        actor: &str,
    ) -> Result<(IssuedCertificate, LeafKey), CaError> {
        if let Some(bad) = dns_names.iter().find(|n| !is_dns_san(n)) {
            return Err(CaError::BadDnsName(bad.clone()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let issued = self.issue_for_key(&key, spiffe_id, dns_names, ttl, now, actor)?;
        let der = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok((issued, LeafKey(der)))
    }

    fn issue_for_key(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: &SpiffeId<'_>,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: UnixTime,
        actor: &str,
    ) -> Result<IssuedCertificate, CaError> {
        let id = spiffe_id.as_str();
        if !spiffe_id.is_member_of(self.config.trust_domain.borrow()) {
            return Err(CaError::ForeignTrustDomain {
                spiffe_id: id.to_owned(),
                trust_domain: self.config.trust_domain.to_string(),
            });
        }
        let ttl = ttl.unwrap_or(self.config.default_ttl);
        self.config.validate_ttl(ttl)?;

        // Lock order: `inner`, then `revocations`. Checking the revocation
        // under `inner` means a concurrent `revoke_spiffe_id` (which also
        // holds `inner`) either sees this certificate in the index when it
        // computes `keep_until`, or is seen here.
        let mut inner = self.lock();
        if self.revocation_list().spiffe_id_revoked(id, now).is_some() {
            return Err(CaError::Revoked(id.to_owned()));
        }
        let signer = &inner.signer;
        if now < signer.not_before {
            return Err(CaError::SigningCertNotYetValid {
                not_before_secs: signer.not_before.as_secs(),
            });
        }
        let not_before = now.saturating_sub(BACKDATE).max(signer.not_before);
        let not_after = now.saturating_add(ttl).min(signer.not_after);
        if not_after < now.saturating_add(self.config.min_ttl) {
            return Err(CaError::SigningCertExpiring {
                not_after_secs: signer.not_after.as_secs(),
            });
        }
        let serial = Serial::random(&self.rng)
            .map_err(|_| CaError::Crypto("random number generator failed".into()))?;

        let mut params = CertificateParams::default();
        // No subject: the URI SAN is the only identity (X509-SVID), and
        // rcgen marks the SAN critical when the subject is empty.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into().map_err(crypto)?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into().map_err(crypto)?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if public_key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            // RSA keys may be used for TLS 1.2 key transport.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &signer.issuer)
            .map_err(crypto)?;
        // Certificate times have whole-second precision.
        let not_before = UnixTime::from_secs(not_before.as_secs());
        let not_after = UnixTime::from_secs(not_after.as_secs());

        let root_id = signer.root_id.clone();
        let mut index = inner.index.clone();
        index.certs.retain(|e| e.not_after >= now);
        index.certs.push(IssuedEntry {
            serial: serial.clone(),
            spiffe_id: id.to_owned(),
            not_after,
            root_id: root_id.clone(),
        });
        let stats = index.per_root.entry(root_id.clone()).or_default();
        stats.issued += 1;
        stats.latest_not_after = Some(
            stats
                .latest_not_after
                .map_or(not_after, |t| t.max(not_after)),
        );
        let note = format!("issued serial {serial} for {id} under {root_id}");
        let change = Change {
            actor,
            at: now,
            note: &note,
        };
        // Fail closed: a certificate the index does not know about could
        // not be revoked by serial or counted before dropping its root.
        put_json(&*self.store, &key(ISSUED_KEY)?, &index, &change)?;
        inner.index = index;

        Ok(IssuedCertificate {
            cert: cert.der().clone(),
            chain: inner.signer.chain.clone(),
            trust_bundle: inner.roots.clone(),
            serial,
            spiffe_id: id.to_owned(),
            not_before,
            not_after,
            root_id,
        })
    }

    /// Every trusted root, in the order they were added.
    pub fn trust_bundle(&self) -> Vec<CertificateDer<'static>> {
        self.lock().roots.clone()
    }

    /// The intermediates a leaf issued now would carry (root excluded).
    pub fn signing_chain(&self) -> Vec<CertificateDer<'static>> {
        self.lock().signer.chain.clone()
    }

    /// ID of the root new certificates chain to.
    pub fn signing_root(&self) -> String {
        self.lock().signer.root_id.clone()
    }

    /// Root roll-over, step 1 (generated CA): creates a new root and
    /// intermediate and adds the root to the trust bundle. Signing does not
    /// change yet, so peers can learn the new root first.
    pub fn add_generated_root(&self, now: UnixTime, actor: &str) -> Result<String, CaError> {
        let mut inner = self.lock();
        let keep = inner.state.rollover.clone();
        self.add_generated_locked(
            &mut inner,
            |id| format!("root roll-over: new root {id} trusted"),
            |_| keep,
            now,
            actor,
        )
    }

    /// Generates root `root-N` and its intermediate, stores their key
    /// material, then commits the state that trusts the root, with the
    /// roll-over record `rollover` makes for the new ID — one write.
    fn add_generated_locked(
        &self,
        inner: &mut Inner,
        note: impl FnOnce(&str) -> String,
        rollover: impl FnOnce(&str) -> Option<Rollover>,
        now: UnixTime,
        actor: &str,
    ) -> Result<String, CaError> {
        let id = format!("root-{}", inner.state.next_root);
        let g = generate_root(&self.rng, &self.config.trust_domain, &id, now)?;
        let note = note(&id);
        let change = Change {
            actor,
            at: now,
            note: &note,
        };
        // Key material first: until the state names the new root, these
        // records are unreferenced (a crash here leaves the state as it
        // was, and the next attempt overwrites them under the same ID).
        store_generated(&*self.store, &id, &g, &change)?;
        let record = root_record(&id, RootOrigin::Generated, &g.root, now);
        self.commit_new_root(inner, record, rollover(&id), &change)?;
        Ok(id)
    }

    /// Root roll-over, step 1 (plugged-in CA): checks a `cacerts` directory
    /// and adds its root to the trust bundle without signing with it yet.
    pub fn add_cacerts_root(
        &self,
        dir: &Path,
        now: UnixTime,
        actor: &str,
    ) -> Result<String, CaError> {
        let plugged = load_cacerts(dir, now)?;
        let mut inner = self.lock();
        let id = format!("root-{}", inner.state.next_root);
        let note = format!("root roll-over: root {id} from {} trusted", dir.display());
        let change = Change {
            actor,
            at: now,
            note: &note,
        };
        let origin = RootOrigin::Cacerts {
            dir: dir.to_path_buf(),
        };
        let record = root_record(&id, origin, &plugged.root, now);
        let rollover = inner.state.rollover.clone();
        self.commit_new_root(&mut inner, record, rollover, &change)?;
        Ok(id)
    }

    fn commit_new_root(
        &self,
        inner: &mut Inner,
        record: RootRecord,
        rollover: Option<Rollover>,
        change: &Change<'_>,
    ) -> Result<(), CaError> {
        if let Some(dup) = inner
            .state
            .roots
            .iter()
            .find(|r| r.fingerprint == record.fingerprint)
        {
            return Err(CaError::DuplicateRoot(dup.id.clone()));
        }
        let mut state = inner.state.clone();
        state.roots.push(record);
        state.next_root += 1;
        state.rollover = rollover;
        put_json(&*self.store, &key(STATE_KEY)?, &state, change)?;
        inner.roots = root_ders(&state)?;
        inner.state = state;
        Ok(())
    }

    /// Root roll-over, step 2: new certificates are signed under `root_id`.
    /// The previous root stays trusted. For a `cacerts` root the directory
    /// is read and checked again.
    pub fn switch_signing(&self, root_id: &str, now: UnixTime, actor: &str) -> Result<(), CaError> {
        let mut inner = self.lock();
        self.switch_locked(&mut inner, root_id, now, actor)
    }

    /// [`Self::switch_signing`] under the caller's lock. Switching to the
    /// new root of a roll-over in phase 1 moves it to phase 2 in the same
    /// write.
    fn switch_locked(
        &self,
        inner: &mut Inner,
        root_id: &str,
        now: UnixTime,
        actor: &str,
    ) -> Result<(), CaError> {
        let record = find_root(&inner.state, root_id)?.clone();
        let signer = load_signer(&*self.store, &record, now)?;
        if signer.not_after < now.saturating_add(self.config.min_ttl) {
            return Err(CaError::SigningCertExpiring {
                not_after_secs: signer.not_after.as_secs(),
            });
        }
        let mut state = inner.state.clone();
        state.signing = root_id.to_owned();
        if let Some(Rollover::TrustBoth {
            old_root,
            new_root,
            started_at,
            ..
        }) = &state.rollover
            && new_root == root_id
        {
            state.rollover = Some(Rollover::DropOld {
                old_root: old_root.clone(),
                new_root: new_root.clone(),
                started_at: *started_at,
                switched_at: now,
            });
        }
        let note = format!("root roll-over: signing switched to {root_id}");
        let change = Change {
            actor,
            at: now,
            note: &note,
        };
        put_json(&*self.store, &key(STATE_KEY)?, &state, &change)?;
        inner.state = state;
        inner.signer = signer;
        Ok(())
    }

    /// The default propagation period of a roll-over: 60 % of the default
    /// certificate lifetime. A workload renewing on Istio's schedule (at
    /// 50 % ± 1 % of its lifetime) has fetched the two-root bundle by then.
    pub fn default_propagation(&self) -> Duration {
        self.config.default_ttl * 3 / 5
    }

    /// The root roll-over in progress, if any.
    pub fn rollover(&self) -> Option<Rollover> {
        self.lock().state.rollover.clone()
    }

    /// Root roll-over, phase 1: generates a new root and intermediate and
    /// trusts the new root next to the signing one, which keeps signing.
    /// Signing switches to the new root once `propagation` has passed (see
    /// [`Self::advance_rollover`]); a zero `propagation` makes the next
    /// `advance_rollover` switch at once. Refused while a roll-over is in
    /// progress, and for a plugged-in signing CA (its replacement has to
    /// come from the operator's PKI, not from meshgate).
    pub fn start_rollover(
        &self,
        propagation: Duration,
        now: UnixTime,
        actor: &str,
    ) -> Result<Rollover, CaError> {
        let mut inner = self.lock();
        if let Some(r) = &inner.state.rollover {
            return Err(CaError::RolloverInProgress(r.to_string()));
        }
        let old = inner.state.signing.clone();
        let origin = &find_root(&inner.state, &old)?.origin;
        if origin != &RootOrigin::Generated {
            return Err(CaError::PluggedRollover(origin.to_string()));
        }
        let switch_at = now.saturating_add(propagation);
        let trust_both = |old_root: &str, new_root: &str| Rollover::TrustBoth {
            old_root: old_root.to_owned(),
            new_root: new_root.to_owned(),
            started_at: now,
            switch_at,
        };
        let id = self.add_generated_locked(
            &mut inner,
            |id| {
                format!(
                    "root roll-over started: {id} trusted next to {old}; signing switches after {} s",
                    propagation.as_secs()
                )
            },
            |id| Some(trust_both(&old, id)),
            now,
            actor,
        )?;
        Ok(trust_both(&old, &id))
    }

    /// Moves the roll-over on as far as it may go at `now`: phase 1 → 2
    /// once the propagation period is over (signing switches to the new
    /// root), phase 2 → done once nothing the old root signed is still
    /// valid (the old root leaves the trust bundle). Returns what changed;
    /// the caller then re-issues the gateway's certificate.
    ///
    /// A non-signing root that signed certificates but belongs to no
    /// roll-over (state written before roll-overs were recorded) is taken
    /// up as phase 2, so it is dropped the same way.
    pub fn advance_rollover(
        &self,
        now: UnixTime,
        actor: &str,
    ) -> Result<Vec<RolloverStep>, CaError> {
        self.move_rollover(now, actor, false)
    }

    /// Finishes the roll-over in progress at once (`--force`): switches
    /// signing to the new root if that has not happened, and drops the old
    /// root even if certificates it signed are still valid (they stop
    /// verifying: the choice for a compromised root).
    pub fn finish_rollover(
        &self,
        now: UnixTime,
        actor: &str,
    ) -> Result<Vec<RolloverStep>, CaError> {
        self.move_rollover(now, actor, true)
    }

    fn move_rollover(
        &self,
        now: UnixTime,
        actor: &str,
        force: bool,
    ) -> Result<Vec<RolloverStep>, CaError> {
        let mut inner = self.lock();
        let mut steps = Vec::new();
        if inner.state.rollover.is_none() {
            self.adopt_retired_root(&mut inner, now, actor)?;
        }
        if let Some(Rollover::TrustBoth {
            new_root,
            switch_at,
            ..
        }) = inner.state.rollover.clone()
            && (force || now >= switch_at)
        {
            self.switch_locked(&mut inner, &new_root, now, actor)?;
            steps.push(RolloverStep::Switched { new_root });
        }
        if let Some(Rollover::DropOld { old_root, .. }) = inner.state.rollover.clone() {
            if find_root(&inner.state, &old_root).is_err() {
                // Dropped by hand (drop_root): only the record is left.
                let mut state = inner.state.clone();
                state.rollover = None;
                let change = Change {
                    actor,
                    at: now,
                    note: "root roll-over finished",
                };
                put_json(&*self.store, &key(STATE_KEY)?, &state, &change)?;
                inner.state = state;
                return Ok(steps);
            }
            let status = drop_status(&inner, &old_root, now);
            let in_use = matches!(status, DropStatus::InUse { .. });
            if status == DropStatus::Ready || (force && in_use) {
                self.drop_locked(&mut inner, &old_root, force, now, actor)?;
                steps.push(RolloverStep::Dropped {
                    old_root,
                    forced: in_use,
                });
            }
        }
        Ok(steps)
    }

    /// See [`Self::advance_rollover`]: records a leftover retired root as a
    /// roll-over in phase 2. Roots that never signed anything are left
    /// alone (nothing says they are retired rather than waiting).
    fn adopt_retired_root(
        &self,
        inner: &mut Inner,
        now: UnixTime,
        actor: &str,
    ) -> Result<(), CaError> {
        let Some(old) = inner
            .state
            .roots
            .iter()
            .find(|r| r.id != inner.state.signing && inner.index.per_root.contains_key(&r.id))
        else {
            return Ok(());
        };
        let mut state = inner.state.clone();
        state.rollover = Some(Rollover::DropOld {
            old_root: old.id.clone(),
            new_root: state.signing.clone(),
            started_at: old.added_at,
            switched_at: now,
        });
        let change = Change {
            actor,
            at: now,
            note: "root roll-over: retired root recorded for dropping",
        };
        put_json(&*self.store, &key(STATE_KEY)?, &state, &change)?;
        inner.state = state;
        Ok(())
    }

    /// Re-reads the records another process may change in a shared store
    /// — the CA state (roots, signing root, roll-over phase) and the
    /// revocation list — and adopts them. For replicas in Kubernetes mode,
    /// where only the Lease holder moves a roll-over on. Returns whether
    /// the trust bundle or the signing root changed (the caller re-issues
    /// its own certificate then). A stored state this replica cannot load
    /// (e.g. a signing key it cannot read) is an error and changes nothing.
    pub fn reload(&self, now: UnixTime) -> Result<bool, CaError> {
        let revocations: RevocationList =
            get_json(&*self.store, &key(REVOCATIONS_KEY)?)?.unwrap_or_default();
        {
            let mut guard = self.revocations.write().unwrap_or_else(|p| p.into_inner());
            if *guard != revocations {
                *guard = revocations;
            }
        }
        let Some(state) = get_json::<CaState>(&*self.store, &key(STATE_KEY)?)? else {
            return Ok(false);
        };
        let mut inner = self.lock();
        let unchanged = serde_json::to_vec(&state).ok() == serde_json::to_vec(&inner.state).ok();
        if unchanged {
            return Ok(false);
        }
        let signer = if state.signing == inner.state.signing {
            None
        } else {
            Some(load_signer(
                &*self.store,
                find_root(&state, &state.signing)?,
                now,
            )?)
        };
        let roots = root_ders(&state)?;
        let changed = signer.is_some() || roots != inner.roots;
        inner.roots = roots;
        inner.state = state;
        if let Some(signer) = signer {
            inner.signer = signer;
        }
        Ok(changed)
    }

    /// Root roll-over, step 3 check: can `root_id` be dropped at `now`?
    pub fn drop_status(&self, root_id: &str, now: UnixTime) -> Result<DropStatus, CaError> {
        let inner = self.lock();
        find_root(&inner.state, root_id)?;
        Ok(drop_status(&inner, root_id, now))
    }

    /// Root roll-over, step 3: removes `root_id` from the trust bundle and
    /// deletes its key material. Refused for the signing root, and — unless
    /// `force` — while certificates issued under it are still valid.
    pub fn drop_root(
        &self,
        root_id: &str,
        force: bool,
        now: UnixTime,
        actor: &str,
    ) -> Result<(), CaError> {
        let mut inner = self.lock();
        self.drop_locked(&mut inner, root_id, force, now, actor)
    }

    /// [`Self::drop_root`] under the caller's lock. Dropping a root of the
    /// roll-over in progress ends it in the same write.
    fn drop_locked(
        &self,
        inner: &mut Inner,
        root_id: &str,
        force: bool,
        now: UnixTime,
        actor: &str,
    ) -> Result<(), CaError> {
        let record = find_root(&inner.state, root_id)?.clone();
        match drop_status(inner, root_id, now) {
            DropStatus::Signing => return Err(CaError::RootIsSigning(root_id.to_owned())),
            DropStatus::InUse { until } if !force => {
                return Err(CaError::RootInUse {
                    id: root_id.to_owned(),
                    until_secs: until.as_secs(),
                });
            }
            DropStatus::InUse { .. } | DropStatus::Ready | DropStatus::Incoming => {}
        }
        let note = format!(
            "root roll-over: root {root_id} dropped{}",
            if force { " (forced)" } else { "" }
        );
        let change = Change {
            actor,
            at: now,
            note: &note,
        };
        let mut state = inner.state.clone();
        state.roots.retain(|r| r.id != root_id);
        if state
            .rollover
            .as_ref()
            .is_some_and(|r| r.old_root() == root_id || r.new_root() == root_id)
        {
            state.rollover = None;
        }
        // The state is the commit point: once the root is out of it, the
        // key records are unreferenced and deleting them is cleanup.
        put_json(&*self.store, &key(STATE_KEY)?, &state, &change)?;
        inner.roots = root_ders(&state)?;
        inner.state = state;
        inner.index.per_root.remove(root_id);
        if record.origin == RootOrigin::Generated {
            for what in ["root-key.pem", "signing-key.pem", "signing-cert.pem"] {
                self.store.delete(&material_key(root_id, what)?, &change)?;
            }
        }
        Ok(())
    }

    fn revocation_list(&self) -> std::sync::RwLockReadGuard<'_, RevocationList> {
        // Replaced only after a successful store write; see `lock`.
        self.revocations.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update_revocations(
        &self,
        change: &Change<'_>,
        f: impl FnOnce(&mut RevocationList),
    ) -> Result<(), CaError> {
        let mut guard = self.revocations.write().unwrap_or_else(|p| p.into_inner());
        let mut list = guard.clone();
        f(&mut list);
        put_json(&*self.store, &key(REVOCATIONS_KEY)?, &list, change)?;
        *guard = list;
        Ok(())
    }

    /// Revokes every certificate for `spiffe_id` and refuses new ones while
    /// the entry is kept: until the last certificate issued for it expires,
    /// or for the default TTL if this CA issued none that is still valid
    /// (covering certificates from another CA under a shared root).
    pub fn revoke_spiffe_id(
        &self,
        spiffe_id: &SpiffeId<'_>,
        reason: &str,
        now: UnixTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        let id = spiffe_id.as_str();
        // Held until the revocation is recorded; see `issue_for_key`.
        let inner = self.lock();
        let keep_until = inner
            .index
            .certs
            .iter()
            .filter(|e| e.spiffe_id == id && e.not_after >= now)
            .map(|e| e.not_after)
            .max()
            .unwrap_or_else(|| now.saturating_add(self.config.default_ttl));
        let rev = Revocation {
            target: RevocationTarget::SpiffeId(id.to_owned()),
            revoked_at: now,
            keep_until,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        };
        let note = format!("revoked {id}: {reason}");
        let recorded = self.record_revocation(rev, &note, now, actor);
        drop(inner);
        recorded
    }

    /// Revokes one certificate issued by this CA, until it expires.
    pub fn revoke_serial(
        &self,
        serial: &Serial,
        reason: &str,
        now: UnixTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        let keep_until = {
            let inner = self.lock();
            inner
                .index
                .certs
                .iter()
                .find(|e| &e.serial == serial && e.not_after >= now)
                .map(|e| e.not_after)
                .ok_or_else(|| CaError::UnknownSerial(serial.clone()))?
        };
        let rev = Revocation {
            target: RevocationTarget::Serial(serial.clone()),
            revoked_at: now,
            keep_until,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        };
        let note = format!("revoked serial {serial}: {reason}");
        self.record_revocation(rev, &note, now, actor)
    }

    fn record_revocation(
        &self,
        rev: Revocation,
        note: &str,
        now: UnixTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        let change = Change {
            actor,
            at: now,
            note,
        };
        let returned = rev.clone();
        self.update_revocations(&change, |list| {
            list.prune(now);
            list.add(rev);
        })?;
        Ok(returned)
    }

    /// The revocation that applies to a peer certificate, if any. `serial`
    /// may carry leading zero bytes (as read from the certificate).
    pub fn revocation_for(
        &self,
        spiffe_id: &str,
        serial: &[u8],
        now: UnixTime,
    ) -> Option<Revocation> {
        self.revocation_list()
            .check(spiffe_id, &Serial::from_bytes(serial), now)
            .cloned()
    }

    /// Whether a peer certificate is revoked at `now`.
    pub fn is_revoked(&self, spiffe_id: &str, serial: &[u8], now: UnixTime) -> bool {
        self.revocation_for(spiffe_id, serial, now).is_some()
    }

    /// Removes revocations whose certificates have all expired; returns how
    /// many were removed (the store is written only if some were).
    pub fn prune_revocations(&self, now: UnixTime, actor: &str) -> Result<usize, CaError> {
        let stale = self
            .revocation_list()
            .entries()
            .iter()
            .filter(|e| e.keep_until < now)
            .count();
        if stale == 0 {
            return Ok(0);
        }
        let change = Change {
            actor,
            at: now,
            note: "pruned expired revocations",
        };
        let mut removed = 0;
        self.update_revocations(&change, |list| removed = list.prune(now))?;
        Ok(removed)
    }

    /// Revocations currently kept.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.revocation_list().entries().to_vec()
    }

    /// Unexpired certificates in the index at `now`.
    pub fn issued(&self, now: UnixTime) -> Vec<IssuedEntry> {
        let inner = self.lock();
        inner
            .index
            .certs
            .iter()
            .filter(|e| e.not_after >= now)
            .cloned()
            .collect()
    }

    /// The `meshgate ca show` summary at `now`.
    pub fn summary(&self, now: UnixTime) -> Result<CaSummary, CaError> {
        let inner = self.lock();
        let mut roots = Vec::new();
        for (record, der) in inner.state.roots.iter().zip(&inner.roots) {
            let facts = cert_facts(der).map_err(|reason| CaError::BadMaterial {
                key: STATE_KEY.into(),
                reason,
            })?;
            let stats = inner
                .index
                .per_root
                .get(&record.id)
                .cloned()
                .unwrap_or_default();
            roots.push(RootSummary {
                id: record.id.clone(),
                fingerprint_sha256: record.fingerprint.clone(),
                subject: facts.subject,
                not_before: facts.not_before,
                not_after: facts.not_after,
                origin: record.origin.to_string(),
                signing: record.id == inner.state.signing,
                issued_count: stats.issued,
                latest_leaf_not_after: stats.latest_not_after,
                valid_leaves: inner
                    .index
                    .certs
                    .iter()
                    .filter(|e| e.root_id == record.id && e.not_after >= now)
                    .count(),
                drop_status: drop_status(&inner, &record.id, now),
            });
        }
        let active_revocations = self
            .revocation_list()
            .entries()
            .iter()
            .filter(|e| now <= e.keep_until)
            .count();
        Ok(CaSummary {
            trust_domain: self.config.trust_domain.to_string(),
            signing_root: inner.state.signing.clone(),
            signing_not_after: inner.signer.not_after,
            roots,
            active_revocations,
            rollover: inner.state.rollover.clone(),
        })
    }
}

/// RFC 3339 UTC rendering of a time, for human-readable output.
pub fn format_time(t: UnixTime) -> String {
    let d = to_offset(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

impl core::fmt::Display for CaSummary {
    /// The text `meshgate ca show` prints.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(f, "trust domain:   {}", self.trust_domain)?;
        writeln!(f, "signing root:   {}", self.signing_root)?;
        writeln!(
            f,
            "signing chain expires: {}",
            format_time(self.signing_not_after)
        )?;
        writeln!(f, "active revocations: {}", self.active_revocations)?;
        match &self.rollover {
            Some(r) => writeln!(f, "root roll-over: {r}")?,
            None => writeln!(f, "root roll-over: none in progress")?,
        }
        for r in &self.roots {
            writeln!(f)?;
            writeln!(
                f,
                "root {}{}",
                r.id,
                if r.signing { " (signing)" } else { "" }
            )?;
            writeln!(f, "  subject:     {}", r.subject)?;
            writeln!(f, "  sha256:      {}", r.fingerprint_sha256)?;
            writeln!(
                f,
                "  valid:       {} .. {}",
                format_time(r.not_before),
                format_time(r.not_after)
            )?;
            writeln!(f, "  origin:      {}", r.origin)?;
            writeln!(
                f,
                "  issued:      {} ({} still valid)",
                r.issued_count, r.valid_leaves
            )?;
            if let Some(t) = r.latest_leaf_not_after {
                writeln!(f, "  last leaf expires: {}", format_time(t))?;
            }
            let status = match r.drop_status {
                DropStatus::Signing => "signing".to_owned(),
                DropStatus::InUse { until } => format!("in use until {}", format_time(until)),
                DropStatus::Ready => "can be dropped".to_owned(),
                DropStatus::Incoming => "trusted, signing after the propagation period".to_owned(),
            };
            writeln!(f, "  status:      {status}")?;
        }
        Ok(())
    }
}

fn drop_status(inner: &Inner, root_id: &str, now: UnixTime) -> DropStatus {
    if inner.state.signing == root_id {
        return DropStatus::Signing;
    }
    if let Some(Rollover::TrustBoth { new_root, .. }) = &inner.state.rollover
        && new_root == root_id
    {
        return DropStatus::Incoming;
    }
    match inner
        .index
        .per_root
        .get(root_id)
        .and_then(|s| s.latest_not_after)
    {
        Some(until) if until >= now => DropStatus::InUse { until },
        _ => DropStatus::Ready,
    }
}

fn find_root<'a>(state: &'a CaState, id: &str) -> Result<&'a RootRecord, CaError> {
    state
        .roots
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| CaError::UnknownRoot(id.to_owned()))
}

fn root_record(
    id: &str,
    origin: RootOrigin,
    root: &CertificateDer<'_>,
    now: UnixTime,
) -> RootRecord {
    RootRecord {
        id: id.to_owned(),
        origin,
        fingerprint: fingerprint_sha256(root),
        root_cert_pem: certs_to_pem([root]),
        added_at: now,
    }
}

fn root_ders(state: &CaState) -> Result<Vec<CertificateDer<'static>>, CaError> {
    state
        .roots
        .iter()
        .map(|r| {
            let mut certs = parse_pem_certs(r.root_cert_pem.as_bytes()).map_err(|reason| {
                CaError::BadMaterial {
                    key: STATE_KEY.into(),
                    reason: format!("root {}: {reason}", r.id),
                }
            })?;
            if certs.len() != 1 || fingerprint_sha256(&certs[0]) != r.fingerprint {
                return Err(CaError::BadMaterial {
                    key: STATE_KEY.into(),
                    reason: format!("root {}: certificate does not match its fingerprint", r.id),
                });
            }
            Ok(certs.remove(0))
        })
        .collect()
}

fn generate_root(
    rng: &SystemRandom,
    td: &OwnedTrustDomain,
    id: &str,
    now: UnixTime,
) -> Result<GeneratedRoot, CaError> {
    let serial = |rng: &SystemRandom| {
        Serial::random(rng)
            .map(|s| SerialNumber::from_slice(s.as_bytes()))
            .map_err(|_| CaError::Crypto("random number generator failed".into()))
    };
    let not_before = to_offset(now.saturating_sub(BACKDATE));
    let not_after = to_offset(now.saturating_add(ROOT_VALIDITY));

    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = ca_name("root", td, id);
    root_params.subject_alt_names = vec![trust_domain_san(td)?];
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root_params.serial_number = Some(serial(rng)?);
    root_params.not_before = not_before;
    root_params.not_after = not_after;
    let root = root_params.self_signed(&root_key).map_err(crypto)?;

    let signing_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name("signing", td, id);
    params.subject_alt_names = vec![trust_domain_san(td)?];
    // pathlen 0: the intermediate signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(serial(rng)?);
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(&root_params, &root_key);
    let signing = params.signed_by(&signing_key, &issuer).map_err(crypto)?;
    Ok(GeneratedRoot {
        root: root.der().clone(),
        root_key,
        signing: signing.der().clone(),
        signing_key,
    })
}

fn store_generated(
    store: &dyn Store,
    id: &str,
    g: &GeneratedRoot,
    change: &Change<'_>,
) -> Result<(), CaError> {
    store.put(
        &material_key(id, "root-key.pem")?,
        g.root_key.serialize_pem().as_bytes(),
        change,
    )?;
    store.put(
        &material_key(id, "signing-key.pem")?,
        g.signing_key.serialize_pem().as_bytes(),
        change,
    )?;
    store.put(
        &material_key(id, "signing-cert.pem")?,
        certs_to_pem([&g.signing]).as_bytes(),
        change,
    )?;
    Ok(())
}

fn load_signer(store: &dyn Store, record: &RootRecord, now: UnixTime) -> Result<Signer, CaError> {
    let roots = root_ders(&CaState {
        roots: vec![record.clone()],
        signing: record.id.clone(),
        next_root: 0,
        rollover: None,
    })?;
    let root = roots
        .into_iter()
        .next()
        .ok_or_else(|| CaError::BadMaterial {
            key: STATE_KEY.into(),
            reason: format!("root {} missing", record.id),
        })?;
    let (key, chain) = match &record.origin {
        RootOrigin::Cacerts { dir } => {
            let plugged = load_cacerts(dir, now)?;
            let found = fingerprint_sha256(&plugged.root);
            if found != record.fingerprint {
                return Err(CaError::PluggedRootChanged {
                    dir: dir.clone(),
                    recorded: record.fingerprint.clone(),
                    found,
                });
            }
            (plugged.key, plugged.chain)
        }
        RootOrigin::Generated => {
            let key_name = material_key(&record.id, "signing-key.pem")?;
            let cert_name = material_key(&record.id, "signing-cert.pem")?;
            let bad = |k: &RecordKey, reason: String| CaError::BadMaterial {
                key: k.to_string(),
                reason,
            };
            let key_pem = store
                .get(&key_name)?
                .ok_or_else(|| bad(&key_name, "missing".into()))?;
            let key_pem =
                String::from_utf8(key_pem).map_err(|_| bad(&key_name, "not UTF-8".into()))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_name, e.to_string()))?;
            let cert_pem = store
                .get(&cert_name)?
                .ok_or_else(|| bad(&cert_name, "missing".into()))?;
            let chain = parse_pem_certs(&cert_pem).map_err(|r| bad(&cert_name, r))?;
            let first = chain
                .first()
                .ok_or_else(|| bad(&cert_name, "empty".into()))?;
            let facts = cert_facts(first).map_err(|r| bad(&cert_name, r))?;
            if facts.public_key != key.der_bytes() {
                return Err(bad(
                    &key_name,
                    "key does not match the signing certificate".into(),
                ));
            }
            verify_issued_by(first, &root).map_err(|r| bad(&cert_name, r))?;
            (key, chain)
        }
    };
    // Leaves must not outlive anything above them.
    let mut not_before = UnixTime::EPOCH;
    let mut not_after = UnixTime::from_millis(u64::MAX);
    for der in chain.iter().chain(core::iter::once(&root)) {
        let facts = cert_facts(der).map_err(|reason| CaError::BadMaterial {
            key: record.id.clone(),
            reason,
        })?;
        not_before = not_before.max(facts.not_before);
        not_after = not_after.min(facts.not_after);
    }
    let signing_cert = chain.first().unwrap_or(&root).clone();
    let issuer = Issuer::from_ca_cert_der(&signing_cert, key).map_err(crypto)?;
    Ok(Signer {
        root_id: record.id.clone(),
        issuer,
        chain,
        not_before,
        not_after,
    })
}

/// Whether `name` can be a DNS SAN: a host name of letters, digits and
/// inner hyphens in labels of 1-63 characters, at most 253 characters, at
/// least two labels, optionally a leading `*.` wildcard label; never an IP
/// address (those would need IP SANs).
pub fn is_dns_san(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = host.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // The last label of a host name is never all digits (an IPv4
        // address would pass the rules above otherwise).
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a CSR (DER, or PEM when it starts with `-----BEGIN`), verifies
/// its self-signature and returns its public key. Nothing else in the CSR
/// is used.
fn csr_public_key(csr: &[u8]) -> Result<SubjectPublicKeyInfo, CaError> {
    let der: CertificateSigningRequestDer<'_> = if csr.trim_ascii_start().starts_with(b"-----BEGIN")
    {
        CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|e| CaError::Csr(format!("invalid PEM: {e}")))?
    } else {
        CertificateSigningRequestDer::from(csr.to_vec())
    };
    let parsed = match x509_parser::certification_request::X509CertificationRequest::from_der(&der)
    {
        Ok(([], parsed)) => parsed,
        Ok(_) => return Err(CaError::Csr("trailing bytes after CSR".into())),
        Err(e) => return Err(CaError::Csr(e.to_string())),
    };
    parsed
        .verify_signature()
        .map_err(|_| CaError::CsrSignature)?;
    let spki = &parsed.certification_request_info.subject_pki;
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed()
        && rsa.key_size() < 2048
    {
        return Err(CaError::UnsupportedKey(format!(
            "RSA key of {} bits (at least 2048 required)",
            rsa.key_size()
        )));
    }
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| CaError::UnsupportedKey(e.to_string()))
}
