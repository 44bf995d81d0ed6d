//! Golden bytes: every message's encoding is pinned by a committed frame in
//! `tests/fixtures/wire/*.bin`. A change to the wire format fails here.
//!
//! To regenerate after an *intended* format change (and a
//! `PROTOCOL_VERSION` bump), run with `MESHGATE_BLESS=1` and commit the files.

#[path = "fixtures/wire/samples.rs"]
mod samples;

use meshgate_core::wire::*;
use samples::{frame, golden, golden_path, samples};

#[test]
fn every_message_matches_its_golden_frame() {
    let bless = std::env::var_os("MESHGATE_BLESS").is_some();
    for (name, msg) in samples() {
        let bytes = frame(&msg);
        if bless {
            std::fs::write(golden_path(name), &bytes).unwrap();
            continue;
        }
        let want = golden(name).unwrap_or_else(|e| panic!("missing fixture {name}: {e}"));
        assert_eq!(bytes, want, "encoding of {name} changed");
        let (decoded, used) = parse_frame(&want).unwrap().unwrap();
        assert_eq!(used, want.len(), "{name}");
        assert_eq!(decoded, msg, "{name}");
    }
}

#[test]
fn every_message_variant_has_a_fixture() {
    let mut names: Vec<&str> = samples().iter().map(|(_, m)| m.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        15,
        "a Message variant has no sample: {names:?}"
    );
}

/// A few frames spelled out byte by byte, so the format is readable here
/// and not only in binary files.
#[test]
fn frames_spelled_out() {
    // Ping is variant 10; the nonce is a varint.
    assert_eq!(frame(&Message::Ping(5)), [0x00, 0x02, 0x0a, 0x05]);
    // WindowUpdate (variant 9) { id: 1, credit: 4096 = 0x80 0x20 }.
    assert_eq!(
        frame(&Message::WindowUpdate(WindowUpdate {
            id: 1,
            credit: 4096
        })),
        [0x00, 0x04, 0x09, 0x01, 0x80, 0x20]
    );
    // StreamData (variant 7) { id: 3, data: "hi" }.
    assert_eq!(
        frame(&Message::StreamData(StreamData { id: 3, data: b"hi" })),
        [0x00, 0x05, 0x07, 0x03, 0x02, b'h', b'i']
    );
    // Hello (variant 0) { version 1, Node, no time, 4 streams, 30000 ms }.
    assert_eq!(
        golden("hello_node").unwrap(),
        [0x00, 0x08, 0x00, 0x01, 0x01, 0x00, 0x04, 0xb0, 0xea, 0x01]
    );
}

#[test]
fn largest_frames_fit_the_edge_node_buffer() {
    for (name, msg) in samples() {
        assert!(frame(&msg).len() <= MAX_FRAME_LEN, "{name}");
    }
    // A maximal data chunk leaves room to spare.
    assert!(golden("stream_data_max").unwrap().len() < MAX_FRAME_LEN / 2 + 16);
}
