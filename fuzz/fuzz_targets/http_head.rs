//! HTTP request heads (HTTP/1.1, or HTTP/2 with prior knowledge or ALPN)
//! on the HTTP listener, over plaintext, TLS without a certificate, or
//! mTLS as one of two mesh workloads: routing by Host/`:authority` and
//! SNI, per-request admission (STRICT/PERMISSIVE), AuthorizationPolicy,
//! hop-by-hop stripping, XFCC replacement, x-forwarded-for, forwarding.
//!
//! Input: byte 0 = client (bits 0-1: plaintext / TLS without certificate /
//! mTLS productpage / mTLS sleep), SNI (bits 2-3: open / strict / authz /
//! none), ALPN (bits 4-5: h2+http/1.1 / http/1.1 / h2 / none); the rest is
//! what the client sends after the handshake.
//! Properties: see `meshgate_fuzz::check_request` — in particular a
//! client-supplied XFCC never reaches an upstream, the gateway's own
//! parses back to exactly (gateway, certificate hash, client ID), a STRICT
//! upstream only ever sees mTLS clients, the authz upstream only
//! productpage, whatever Host/SNI combination the client tries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate::fuzzing::dataplane::{AUTHZ_HOST, Client, Harness, Listener, OPEN_HOST, STRICT_HOST};
use meshgate_fuzz::{check_seen, known_client};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let h = Harness::get();
    let sni =
        [Some(OPEN_HOST), Some(STRICT_HOST), Some(AUTHZ_HOST), None][usize::from(pick >> 2) & 3];
    let alpn: Vec<Vec<u8>> = match (pick >> 4) & 3 {
        0 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        1 => vec![b"http/1.1".to_vec()],
        2 => vec![b"h2".to_vec()],
        _ => Vec::new(),
    };
    let client = match pick & 3 {
        0 => Client::Raw,
        1 => Client::Tls {
            sni,
            alpn,
            cert: None,
        },
        2 => Client::Tls {
            sni,
            alpn,
            cert: Some(h.productpage().clone()),
        },
        _ => Client::Tls {
            sni,
            alpn,
            cert: Some(h.sleep().clone()),
        },
    };
    let ex = h.exchange(Listener::Http, &client, bytes);
    assert!(
        ex.closed,
        "the gateway kept a connection open after the client finished: {ex:?}"
    );
    check_seen(h, false, &|hash| known_client(h, hash));
});
