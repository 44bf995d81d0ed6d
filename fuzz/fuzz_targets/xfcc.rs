//! Client certificates carrying arbitrary URI SANs, plus client-supplied
//! `x-forwarded-client-cert` headers, through mTLS to a PERMISSIVE service.
//!
//! Input: `<URI SAN>\n<client XFCC value>`; the harness CA issues a client
//! certificate with that URI (skipped if it is not an IA5 string) and the
//! client sends `GET /` with the XFCC value as a header.
//! Properties: a request reaches the upstream only if the URI is a workload
//! SPIFFE ID of the mesh trust domain; it then carries exactly one XFCC
//! header, which parses back (Envoy grammar) to exactly
//! `By=<gateway>;Hash=<sha256 of this certificate>;URI=<this URI>` — the
//! client's own value never survives, and no URI can inject elements.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate::fuzzing::dataplane::{Client, Harness, Listener, OPEN_HOST};
use meshgate_fuzz::{check_seen, known_client};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let (uri, client_xfcc) = text.split_once('\n').unwrap_or((text, ""));
    let h = Harness::get();
    let Some(cert) = h.issue_client(&[uri]) else {
        return;
    };
    let hash = cert.sha256_hex();
    let mut req = format!("GET /xfcc HTTP/1.1\r\nhost: {OPEN_HOST}\r\n");
    for line in client_xfcc.split('\n').filter(|l| !l.contains('\r')) {
        req.push_str("x-forwarded-client-cert: ");
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("connection: close\r\n\r\n");
    let client = Client::Tls {
        sni: Some(OPEN_HOST),
        alpn: vec![b"http/1.1".to_vec()],
        cert: Some(cert),
    };
    let ex = h.exchange(Listener::Http, &client, req.as_bytes());
    assert!(ex.closed, "connection left open: {ex:?}");
    let uri_of = |hx: &str| {
        if hx == hash {
            Some(uri.to_owned())
        } else {
            known_client(h, hx)
        }
    };
    check_seen(h, false, &uri_of);
});
