//! Arbitrary bytes into the wire decoder and the tunnel session.
//!
//! Properties checked on every input (any panic is a finding):
//! 1. `parse_frame` / `decode_body` return a value or an error.
//! 2. Every accepted frame re-encodes to exactly the bytes it came from
//!    (canonical encoding), and its message passes `validate`.
//! 3. `FrameDecoder` fed in arbitrary chunk sizes yields the same frames as
//!    one-shot parsing and stops at the first error.
//! 4. Decoded messages fed into a gateway and a node `Session` never panic,
//!    and the sessions' own output always encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_core::wire::{
    FrameDecoder, Instant, MAX_FRAME_LEN, Message, Role, Session, SessionConfig, decode_body,
    encode_frame, parse_frame,
};

fn assert_canonical(msg: &Message<'_>, bytes: &[u8]) {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(msg, &mut buf).expect("a decoded message must re-encode");
    assert_eq!(
        &buf[..n],
        bytes,
        "decoded frame does not re-encode identically"
    );
    assert!(msg.validate().is_ok());
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size for the incremental decoder; the
    // rest is the byte stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;

    // 1 + 2: one-shot parsing of consecutive frames.
    let mut oneshot = Vec::new();
    let mut rest = stream;
    while let Ok(Some((msg, used))) = parse_frame(rest) {
        assert_canonical(&msg, &rest[..used]);
        oneshot.push(rest[..used].to_vec());
        rest = &rest[used..];
    }
    if let Ok(msg) = decode_body(stream) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_frame(&msg, &mut buf).expect("re-encode");
        assert_eq!(&buf[2..n], stream);
    }

    // 3 + 4: the incremental decoder, feeding both sessions.
    let t0 = Instant::from_millis(0);
    let mut gw: Session<4> = Session::new(SessionConfig::new(Role::Gateway), t0, None);
    let mut node: Session<4> = Session::new(SessionConfig::new(Role::Node), t0, None);
    let mut out = [0u8; MAX_FRAME_LEN];
    let mut dbuf = [0u8; MAX_FRAME_LEN];
    let mut dec = FrameDecoder::new(&mut dbuf);
    let mut incremental = 0usize;
    let mut input = stream;
    let mut now = 0u64;
    'feed: while !input.is_empty() {
        let n = dec.feed(&input[..chunk.min(input.len())]);
        input = &input[n..];
        loop {
            match dec.next_frame() {
                Ok(Some(msg)) => {
                    let expected = oneshot
                        .get(incremental)
                        .expect("decoder found an extra frame");
                    assert_canonical(&msg, expected);
                    incremental += 1;
                    now += 100;
                    let t = Instant::from_millis(now);
                    let _ = gw.handle_message(t, msg);
                    let _ = node.handle_message(t, msg);
                    for s in [&mut gw, &mut node] {
                        let _ = s.handle_timeout(t);
                        while let Ok(Some(_)) = s.poll_transmit(t, &mut out) {}
                        // Exercise commands on whatever streams exist.
                        for id in 1..8 {
                            let _ = s.accept(id);
                            let _ = s.send_data(id, b"fuzz", &mut out);
                            let _ = s.consumed(id, 1);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        if n == 0 {
            break;
        }
    }
    assert!(incremental <= oneshot.len());
});
