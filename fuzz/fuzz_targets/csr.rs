//! CSRs into the CA's issuance path (`CertificateAuthority::issue_from_csr`
//! — what `meshgate cert issue`, edge enrollment and renewal all use).
//!
//! Input: byte 0 = mode (0: the rest is the CSR, DER or PEM, as sent;
//! 1-3: the rest describes a CSR that is built and properly signed here —
//! `CN\n` then lines `u:<URI SAN>`, `d:<DNS SAN>`, `ca` (ask for a CA
//! certificate) — with a P-256, P-384 or Ed25519 key, DER or PEM);
//! byte 1 = requested lifetime (0: the CA's default, else n × 1 h).
//! Properties: whatever the CSR asks for, a certificate is only ever
//! issued for the authorised SPIFFE ID — exactly one SAN, that URI — is
//! not a CA, certifies the CSR's own key, is signed by the signing CA and
//! lives no longer than asked; a validly signed CSR from a supported key
//! with a lifetime in range is always accepted.
#![no_main]

use core::time::Duration;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use meshgate_ca::ca::{MAX_TTL, MIN_TTL};
use meshgate_ca::{CaConfig, CaSource, CertificateAuthority, FileStore, Store};
use meshgate_core::spiffe::{OwnedSpiffeId, OwnedTrustDomain};
use meshgate_core::time::UnixTime;
use meshgate_fuzz::{check_issued, csr_spki};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

const AUTHORISED: &str = "spiffe://cluster.local/ns/fuzz/sa/authorised";
const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);
const ISSUANCES_PER_CA: u32 = 500;

struct State {
    dir: std::path::PathBuf,
    ca: CertificateAuthority,
    issued: u32,
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_state(n: u64) -> State {
    // Like the gateway harnesses: $MESHGATE_FUZZ_DIR, else tmpfs.
    let base = std::env::var_os("MESHGATE_FUZZ_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let shm = std::path::Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        });
    let dir = base.join(format!("meshgate-fuzz-csr-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = FileStore::open(&dir).expect("store");
    let store: Arc<dyn Store> = Arc::new(store);
    let td = OwnedTrustDomain::parse("cluster.local").expect("td");
    let ca = CertificateAuthority::open(store, CaConfig::new(td), &CaSource::Generate, NOW, "fuzz")
        .expect("CA");
    State { dir, ca, issued: 0 }
}

struct Keys {
    keys: Vec<KeyPair>,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys {
        keys: [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ]
        .into_iter()
        .map(|alg| KeyPair::generate_for(alg).expect("key"))
        .collect(),
    })
}

/// Builds a validly signed CSR from the description, or `None` when rcgen
/// cannot encode it (the fuzzer then only explores the raw mode).
fn build_csr(desc: &[u8], key: &KeyPair, pem: bool) -> Option<Vec<u8>> {
    let text = core::str::from_utf8(desc).ok()?;
    let mut lines = text.split('\n');
    let mut params = CertificateParams::new(Vec::<String>::new()).ok()?;
    params
        .distinguished_name
        .push(DnType::CommonName, lines.next().unwrap_or(""));
    for line in lines {
        if let Some(u) = line.strip_prefix("u:") {
            params
                .subject_alt_names
                .push(SanType::URI(u.try_into().ok()?));
        } else if let Some(d) = line.strip_prefix("d:") {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.try_into().ok()?));
        } else if line == "ca" {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
    }
    let csr = params.serialize_request(key).ok()?;
    Some(if pem {
        csr.pem().ok()?.into_bytes()
    } else {
        csr.der().to_vec()
    })
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let [mode, ttl, rest @ ..] = data else {
        return;
    };
    let ttl = (*ttl != 0).then(|| Duration::from_secs(u64::from(*ttl) * 3600));
    let (csr, built) = match mode % 8 {
        0 | 4 | 5 | 6 | 7 => (rest.to_vec(), false),
        m => {
            let key = &keys().keys[usize::from(m - 1)];
            match build_csr(rest, key, mode & 0x80 != 0) {
                Some(c) => (c, true),
                None => return,
            }
        }
    };
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(|| {
        new_state(GENERATION.fetch_add(1, core::sync::atomic::Ordering::Relaxed))
    });
    let id = OwnedSpiffeId::parse(AUTHORISED).expect("id");
    let result = state
        .ca
        .issue_from_csr(&csr, &id.borrow(), ttl, NOW, "fuzz");
    let ttl_ok = ttl.is_none_or(|t| (MIN_TTL..=MAX_TTL).contains(&t));
    match result {
        Ok(issued) => {
            assert!(ttl_ok, "issued with an out-of-range lifetime {ttl:?}");
            assert_eq!(issued.spiffe_id, AUTHORISED);
            let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
                None
            } else {
                Some(csr.as_slice())
            };
            let spki = der.and_then(csr_spki);
            let issuer = issued.chain.first().expect("an intermediate");
            check_issued(
                issued.cert.as_ref(),
                issuer.as_ref(),
                spki.as_deref(),
                AUTHORISED,
            );
            if let Some(t) = ttl {
                let lifetime = issued.not_after.as_millis().saturating_sub(NOW.as_millis());
                assert!(
                    u128::from(lifetime) <= t.as_millis(),
                    "certificate outlives the requested {t:?}"
                );
            }
            state.issued += 1;
            if state.issued >= ISSUANCES_PER_CA {
                *guard = None;
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(
                !(built && ttl_ok),
                "a validly signed CSR was refused: {e} ({} bytes)",
                csr.len()
            );
        }
    }
});
