//! Raw bytes as the first thing on a connection to each data-plane
//! listener: the TLS/plaintext sniffer, ClientHello collection (rustls
//! `Acceptor`, up to 64 KiB), SNI routing and mode selection, DISABLE
//! passthrough, and plaintext HTTP/TCP behind them.
//!
//! Input: byte 0 picks the listener (HTTP, TCP by SNI, TCP bound to a
//! DISABLE service, TCP bound to a STRICT service); the rest is sent.
//! Properties (besides "no panic, no hang"):
//! - the connection always ends after the client stops sending;
//! - no bytes can reach a STRICT upstream: without a completed mTLS
//!   handshake (impossible here) nothing is let in;
//! - a DISABLE passthrough forwards exactly the client's bytes;
//! - every request reaching an HTTP upstream passes `check_request`
//!   (no client XFCC, no hop-by-hop headers, Host matches the service,
//!   x-forwarded-for ends with the real source, authorization enforced).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate::fuzzing::dataplane::{Client, Harness, Listener};
use meshgate_fuzz::{check_seen, known_client};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let h = Harness::get();
    let listener = Listener::ALL[usize::from(pick) % Listener::ALL.len()];
    let ex = h.exchange(listener, &Client::Raw, bytes);
    assert!(
        ex.closed,
        "the gateway kept a connection open after the client finished: {ex:?}"
    );
    check_seen(h, true, &|hash| known_client(h, hash));
});
