//! Edge-node enrollment and renewal requests as the tunnel receives them:
//! wire frames, decoded by `meshgate_core::wire::parse_frame`, whose
//! `EnrollRequest{token, csr}` / `RenewRequest{csr}` go to the registry and
//! the CA (`Registry::enroll` / `renew`, the calls the tunnel makes).
//!
//! Input: byte 0 = flags (bit 0: replace the frame's token by the node's
//! real one-time token, which the fuzzer cannot guess; bit 1: replace the
//! frame's CSR by a validly signed one asking for the identity named in
//! the frame's token field); the rest is a stream of frames.
//! Properties: a certificate is issued only for the real token, once (the
//! same token is refused afterwards), only for the identity the registry
//! fixed for the node — whatever the CSR asks for — and it passes
//! `check_issued`; a valid CSR with the real token is never refused; no
//! request ends in an internal error.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use meshgate::fuzzing::enroll::{Enrollment, NODE_ID, Outcome};
use meshgate_core::wire::{Message, parse_frame};
use meshgate_fuzz::{check_issued, csr_spki};

static STATE: Mutex<Option<Enrollment>> = Mutex::new(None);

fn valid_csr(asked: &str) -> Option<Vec<u8>> {
    static KEY: std::sync::OnceLock<rcgen::KeyPair> = std::sync::OnceLock::new();
    let key = KEY
        .get_or_init(|| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).ok()?;
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(asked.try_into().ok()?));
    Some(params.serialize_request(key).ok()?.der().to_vec())
}

fn check(outcome: &Outcome, csr: &[u8]) {
    match outcome {
        Outcome::Issued(issued) => {
            assert_eq!(issued.spiffe_id, NODE_ID);
            let issuer = issued.chain.first().expect("an intermediate");
            let spki = csr_spki(csr);
            check_issued(
                issued.cert.as_ref(),
                issuer.as_ref(),
                spki.as_deref(),
                NODE_ID,
            );
        }
        Outcome::Internal(e) => panic!("enrollment ended in an internal error: {e}"),
        Outcome::InvalidToken | Outcome::BadCsr(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut stream)) = data.split_first() else {
        return;
    };
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let enrollment = guard.get_or_insert_with(Enrollment::new);
    while let Ok(Some((msg, used))) = parse_frame(stream) {
        stream = &stream[used..];
        match msg {
            Message::EnrollRequest(r) => {
                let generated = if flags & 2 != 0 {
                    valid_csr(r.token)
                } else {
                    None
                };
                let csr = generated.as_deref().unwrap_or(r.csr_der);
                let real = flags & 1 != 0;
                let token = if real {
                    enrollment.fresh_token()
                } else {
                    r.token.to_owned()
                };
                let outcome = enrollment.enroll(&token, csr, None);
                check(&outcome, csr);
                match &outcome {
                    Outcome::Issued(_) => {
                        assert!(real, "a guessed token {token:?} enrolled a node");
                        let again = enrollment.enroll(&token, csr, None);
                        assert!(
                            matches!(again, Outcome::InvalidToken),
                            "a one-time token was accepted twice: {again:?}"
                        );
                    }
                    Outcome::BadCsr(e) => {
                        assert!(generated.is_none(), "a valid CSR was refused: {e}");
                    }
                    _ => {}
                }
            }
            Message::RenewRequest(r) => {
                let outcome = enrollment.renew(r.csr_der, None);
                check(&outcome, r.csr_der);
            }
            _ => {}
        }
    }
});
