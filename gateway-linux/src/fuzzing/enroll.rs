//! Edge-node enrollment requests (one-time token + CSR) into the real
//! registry, CA and state store.
//!
//! The tunnel decodes an `EnrollRequest` frame and calls
//! `Registry::enroll` with its token and CSR; this harness makes the same
//! call. It keeps one pending node, [`NODE_ID`], whose token the fuzzer
//! cannot guess: [`Enrollment::fresh_token`] hands it out so that inputs can
//! also exercise the path past the token check.

use core::time::Duration;
use std::path::PathBuf;
use std::sync::Arc;

use meshgate_ca::{CaConfig, CaSource, CertificateAuthority, FileStore, IssuedCertificate, Store};
use meshgate_core::spiffe::OwnedTrustDomain;
use meshgate_core::time::UnixTime;

use crate::edge::registry::{EnrollError, Registry};

/// The identity the registry fixes for the fuzzed node.
pub const NODE_ID: &str = "spiffe://cluster.local/ns/edge/sa/fuzz-node";
const NAMESPACE: &str = "edge";
const NAME: &str = "fuzz-node";
/// Certificates issued before the state is started afresh (the CA's
/// issued index and the audit log grow with every issuance).
const ISSUANCES_PER_STATE: u32 = 500;

/// How an enrollment or renewal ended.
#[derive(Debug)]
pub enum Outcome {
    /// A certificate was issued.
    Issued(Box<IssuedCertificate>),
    /// The token was unknown, used or expired.
    InvalidToken,
    /// The CA refused the CSR.
    BadCsr(String),
    /// Anything else (store, CA internals): never expected here.
    Internal(String),
}

struct State {
    dir: PathBuf,
    ca: CertificateAuthority,
    registry: Registry,
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The registry, CA and store, renewed every few hundred issuances.
pub struct Enrollment {
    state: State,
    issued: u32,
    now: UnixTime,
}

impl core::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Enrollment")
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl Default for Enrollment {
    fn default() -> Self {
        Self::new()
    }
}

impl Enrollment {
    /// A fresh store, CA and registry with node [`NODE_ID`] pending.
    pub fn new() -> Self {
        let now = UnixTime::from_secs(1_700_000_000);
        Self {
            state: new_state(now),
            issued: 0,
            now,
        }
    }

    /// A new one-time token for [`NODE_ID`] (re-issuing replaces the
    /// previous one).
    pub fn fresh_token(&mut self) -> String {
        let (_, token) = self
            .state
            .registry
            .create_token(NAMESPACE, NAME, None, None, self.now, "fuzz")
            .expect("token for the fuzz node");
        token
    }

    /// `Registry::enroll`, as the tunnel calls it.
    pub fn enroll(&mut self, token: &str, csr_der: &[u8], ttl: Option<Duration>) -> Outcome {
        let s = &self.state;
        let outcome = match s.registry.enroll(token, csr_der, &s.ca, ttl, self.now) {
            Ok((_, issued)) => Outcome::Issued(Box::new(issued)),
            Err(EnrollError::InvalidToken) => Outcome::InvalidToken,
            Err(EnrollError::BadCsr(e)) => Outcome::BadCsr(e.to_string()),
            Err(EnrollError::Internal(e)) => Outcome::Internal(e),
        };
        self.count(&outcome);
        outcome
    }

    /// `Registry::renew` for [`NODE_ID`] (refused unless it is enrolled).
    pub fn renew(&mut self, csr_der: &[u8], ttl: Option<Duration>) -> Outcome {
        let s = &self.state;
        let outcome = match s.registry.renew(NAME, csr_der, &s.ca, ttl, self.now) {
            Ok(issued) => Outcome::Issued(Box::new(issued)),
            Err(e) => Outcome::BadCsr(e.to_string()),
        };
        self.count(&outcome);
        outcome
    }

    /// The CA's current trust bundle (roots).
    pub fn trust_bundle(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.state.ca.trust_bundle()
    }

    fn count(&mut self, outcome: &Outcome) {
        if matches!(outcome, Outcome::Issued(_)) {
            self.issued += 1;
            if self.issued >= ISSUANCES_PER_STATE {
                self.state = new_state(self.now);
                self.issued = 0;
            }
        }
    }
}

fn new_state(now: UnixTime) -> State {
    let dir = super::scratch_dir("enroll");
    let (store, _) = FileStore::open(&dir).expect("state store");
    let store: Arc<dyn Store> = Arc::new(store);
    let td = OwnedTrustDomain::parse("cluster.local").expect("trust domain");
    let ca = CertificateAuthority::open(
        store.clone(),
        CaConfig::new(td.clone()),
        &CaSource::Generate,
        now,
        "fuzz",
    )
    .expect("CA");
    let registry = Registry::load(store, td).expect("registry");
    State { dir, ca, registry }
}
