//! Decoding untrusted bytes: exhaustive truncations and single-bit flips of
//! every golden frame, length-prefix rules, canonical encoding, and the
//! incremental decoder. Nothing here may panic; every accepted input must
//! re-encode to exactly the bytes it came from.

#[path = "fixtures/wire/samples.rs"]
mod samples;

use meshgate_core::wire::*;
use samples::{frame, samples};

/// Every golden frame (from the committed files, so the test covers the
/// bytes peers actually exchange).
fn golden_frames() -> Vec<(&'static str, Vec<u8>)> {
    samples()
        .into_iter()
        .map(|(name, _)| (name, samples::golden(name).expect("fixture present")))
        .collect()
}

fn reencode(msg: &Message<'_>) -> Vec<u8> {
    frame(msg)
}

#[test]
fn every_truncation_is_incomplete_or_an_error() {
    let mut checked = 0usize;
    for (name, f) in golden_frames() {
        let body = &f[HEADER_LEN..];
        for cut in 0..f.len() {
            // As a stream prefix: the frame is simply not complete yet.
            assert_eq!(parse_frame(&f[..cut]), Ok(None), "{name} cut at {cut}");
            let mut dec_buf = [0u8; MAX_FRAME_LEN];
            let mut dec = FrameDecoder::new(&mut dec_buf);
            assert_eq!(dec.feed(&f[..cut]), cut);
            assert_eq!(dec.next_frame(), Ok(None), "{name} cut at {cut}");
            checked += 1;
        }
        for cut in 0..body.len() {
            // As a frame whose length prefix matches the shortened body:
            // postcard is self-delimiting, so no proper prefix is a message.
            let short = &body[..cut];
            assert!(
                decode_body(short).is_err(),
                "{name} body cut at {cut} decoded"
            );
            let mut reframed = (cut as u16).to_be_bytes().to_vec();
            reframed.extend_from_slice(short);
            assert!(parse_frame(&reframed).is_err(), "{name} reframed at {cut}");
            checked += 1;
        }
    }
    assert!(checked > 5_000, "only {checked} truncations checked");
}

#[test]
fn every_single_bit_flip_is_an_error_or_a_canonical_message() {
    let (mut errors, mut valid, mut incomplete) = (0usize, 0usize, 0usize);
    for (name, f) in golden_frames() {
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut flipped = f.clone();
                flipped[byte] ^= 1 << bit;
                match parse_frame(&flipped) {
                    Ok(Some((msg, used))) => {
                        valid += 1;
                        assert_eq!(
                            reencode(&msg),
                            flipped[..used],
                            "{name}: flip {byte}.{bit} decoded but does not re-encode"
                        );
                        assert!(msg.validate().is_ok());
                    }
                    Ok(None) => {
                        // Only a larger length prefix can ask for more bytes.
                        assert!(byte < HEADER_LEN, "{name}: flip {byte}.{bit} incomplete");
                        incomplete += 1;
                    }
                    Err(_) => errors += 1,
                }
                // The body on its own, with the original length.
                if byte >= HEADER_LEN
                    && let Ok(msg) = decode_body(&flipped[HEADER_LEN..])
                {
                    assert_eq!(reencode(&msg)[HEADER_LEN..], flipped[HEADER_LEN..]);
                }
            }
        }
    }
    // Flips inside payload bytes legitimately give other valid messages;
    // flips in structure must mostly be caught.
    assert!(
        errors > 1_000 && valid > 1_000,
        "errors {errors}, valid {valid}"
    );
    assert!(incomplete > 0);
}

#[test]
fn oversize_length_prefix_fails_before_the_body_arrives() {
    let too_big = ((MAX_BODY_LEN + 1) as u16).to_be_bytes();
    assert_eq!(
        parse_frame(&too_big),
        Err(DecodeError::FrameTooLarge {
            len: MAX_BODY_LEN + 1
        })
    );
    assert_eq!(
        parse_frame(&[0xff, 0xff]),
        Err(DecodeError::FrameTooLarge { len: 0xffff })
    );
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut dec = FrameDecoder::new(&mut buf);
    dec.feed(&too_big);
    assert!(matches!(
        dec.next_frame(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // The largest legal prefix just waits for its body.
    assert_eq!(parse_frame(&(MAX_BODY_LEN as u16).to_be_bytes()), Ok(None));
}

#[test]
fn zero_length_frame_is_an_error() {
    assert_eq!(parse_frame(&[0, 0]), Err(DecodeError::EmptyFrame));
    assert_eq!(decode_body(&[]), Err(DecodeError::EmptyFrame));
}

#[test]
fn trailing_bytes_inside_a_frame_are_an_error() {
    for (name, f) in golden_frames() {
        let mut longer = f.clone();
        longer.push(0);
        let len = (longer.len() - HEADER_LEN) as u16;
        longer[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            parse_frame(&longer),
            Err(DecodeError::TrailingBytes),
            "{name}"
        );
    }
}

#[test]
fn bytes_after_a_frame_belong_to_the_next_one() {
    let mut two = frame(&Message::Ping(1));
    let first_len = two.len();
    two.extend_from_slice(&frame(&Message::Pong(1)));
    let (msg, used) = parse_frame(&two).unwrap().unwrap();
    assert_eq!((msg, used), (Message::Ping(1), first_len));
    assert_eq!(
        parse_frame(&two[used..]).unwrap().unwrap().0,
        Message::Pong(1)
    );
}

#[test]
fn over_long_varints_are_rejected_as_non_canonical() {
    // Ping(5) is `0a 05`; `0a 85 00` decodes to 5 with a padded varint.
    assert_eq!(
        parse_frame(&[0, 2, 0x0a, 0x05]).unwrap().unwrap().0,
        Message::Ping(5)
    );
    assert_eq!(
        decode_body(&[0x0a, 0x85, 0x00]),
        Err(DecodeError::NonCanonical)
    );
    // A padded variant tag.
    assert_eq!(
        decode_body(&[0x8a, 0x00, 0x05]),
        Err(DecodeError::NonCanonical)
    );
}

#[test]
fn malformed_bodies_are_classified() {
    // Variant 99 does not exist.
    assert_eq!(decode_body(&[99]), Err(DecodeError::Malformed));
    // A varint that never ends.
    assert_eq!(
        decode_body(&[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ]),
        Err(DecodeError::Malformed)
    );
    // Invalid UTF-8 in a detail string: Error { Protocol, "\xff" }.
    assert_eq!(decode_body(&[14, 0, 1, 0xff]), Err(DecodeError::Malformed));
    // An option tag of 2 in a hello's time.
    assert_eq!(decode_body(&[0, 1, 0, 2]), Err(DecodeError::Malformed));
    // A length prefix far beyond the body.
    assert_eq!(
        decode_body(&[7, 1, 0xff, 0x0f]),
        Err(DecodeError::Truncated)
    );
}

#[test]
fn lists_longer_than_their_capacity_are_rejected() {
    // Certificate with a chain of MAX_CERT_CHAIN + 1 one-byte entries.
    let mut body = vec![2u8, (MAX_CERT_CHAIN + 1) as u8];
    for _ in 0..=MAX_CERT_CHAIN {
        body.extend_from_slice(&[1, 0x30]);
    }
    body.extend_from_slice(&[1, 1, 0x30, 0, 1]);
    assert_eq!(decode_body(&body), Err(DecodeError::Malformed));
    // The same with exactly MAX_CERT_CHAIN entries is fine.
    let mut ok = vec![2u8, MAX_CERT_CHAIN as u8];
    for _ in 0..MAX_CERT_CHAIN {
        ok.extend_from_slice(&[1, 0x30]);
    }
    ok.extend_from_slice(&[1, 1, 0x30, 0, 1]);
    assert!(matches!(decode_body(&ok), Ok(Message::Certificate(_))));
}

#[test]
fn other_protocol_versions_are_reported_before_full_decoding() {
    // A version-2 hello with fields this version does not know.
    assert_eq!(
        decode_body(&[0, 2, 1, 0, 4, 0xb0, 0xea, 0x01, 0xde, 0xad]),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        decode_body(&[0, 0]),
        Err(DecodeError::UnsupportedVersion(0))
    );
}

#[test]
fn limits_are_enforced_on_decode_and_encode() {
    let too_long = [0u8; MAX_DATA_CHUNK + 1];
    let msg = Message::StreamData(StreamData {
        id: 1,
        data: &too_long,
    });
    let mut buf = [0u8; MAX_FRAME_LEN];
    assert_eq!(
        encode_frame(&msg, &mut buf),
        Err(EncodeError::Invalid(Invalid::DataTooLong))
    );
    // Hand-built body of the same message.
    let mut body = vec![7u8, 1, 0x81, 0x10];
    body.extend_from_slice(&too_long);
    assert_eq!(
        decode_body(&body),
        Err(DecodeError::Invalid(Invalid::DataTooLong))
    );

    let cases: [(Message<'_>, Invalid); 6] = [
        (
            Message::StreamClose(StreamClose {
                id: 0,
                reason: CloseReason::Finished,
            }),
            Invalid::ZeroStreamId,
        ),
        (
            Message::WindowUpdate(WindowUpdate { id: 0, credit: 1 }),
            Invalid::ZeroStreamId,
        ),
        (
            Message::StreamOpen(StreamOpen {
                id: 1,
                target: StreamTarget::ToMesh(MeshTarget {
                    host: "bad_host",
                    port: 80,
                }),
                initial_credit: 1,
            }),
            Invalid::BadHostName,
        ),
        (
            Message::EnrollRequest(EnrollRequest {
                token: "",
                csr_der: b"x",
            }),
            Invalid::BadToken,
        ),
        (
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Node,
                time: None,
                max_streams: 1,
                idle_timeout_ms: 10,
            }),
            Invalid::IdleTimeoutTooShort,
        ),
        (
            Message::Error(ErrorMsg {
                code: ErrorCode::Internal,
                detail: &"x".repeat(MAX_DETAIL_LEN + 1),
            }),
            Invalid::DetailTooLong,
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(
            encode_frame(&msg, &mut buf),
            Err(EncodeError::Invalid(want)),
            "{msg:?}"
        );
    }
}

#[test]
fn encoder_reports_a_small_buffer_and_writes_nothing_useful() {
    let msg = Message::Ping(u64::MAX);
    let need = frame(&msg).len();
    let mut small = vec![0u8; need - 1];
    assert_eq!(
        encode_frame(&msg, &mut small),
        Err(EncodeError::BufferTooSmall { needed: need })
    );
    let mut exact = vec![0u8; need];
    assert_eq!(encode_frame(&msg, &mut exact), Ok(need));
}

#[test]
fn decoder_reassembles_a_stream_fed_in_any_chunk_size() {
    let frames = golden_frames();
    let stream: Vec<u8> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let expected: Vec<Message<'static>> = samples().into_iter().map(|(_, m)| m).collect();
    for chunk in [1usize, 2, 3, 7, 64, 1000, 4096, stream.len()] {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let mut dec = FrameDecoder::new(&mut buf);
        let mut got = Vec::new();
        let mut input = &stream[..];
        while !input.is_empty() || dec.buffered() > 0 {
            let n = dec.feed(&input[..chunk.min(input.len())]);
            input = &input[n..];
            loop {
                match dec.next_frame() {
                    Ok(Some(msg)) => got.push(reencode(&msg)),
                    Ok(None) => break,
                    Err(e) => panic!("chunk {chunk}: {e}"),
                }
            }
            if n == 0 && input.is_empty() {
                break;
            }
        }
        let want: Vec<Vec<u8>> = expected.iter().map(frame).collect();
        assert_eq!(got, want, "chunk size {chunk}");
        assert_eq!(dec.buffered(), 0);
    }
}

#[test]
fn decoder_reads_through_spare_and_commit() {
    let f = frame(&Message::Pong(9));
    let mut buf = [0u8; 64];
    let mut dec = FrameDecoder::new(&mut buf);
    let spare = dec.spare();
    spare[..f.len()].copy_from_slice(&f);
    dec.commit(f.len());
    assert_eq!(dec.next_frame(), Ok(Some(Message::Pong(9))));
    assert_eq!(dec.next_frame(), Ok(None));
}

#[test]
fn decoder_rejects_frames_larger_than_its_buffer() {
    let f = samples::golden("certificate").unwrap();
    let mut buf = [0u8; 32];
    let mut dec = FrameDecoder::new(&mut buf);
    dec.feed(&f);
    assert_eq!(
        dec.next_frame(),
        Err(DecodeError::FrameTooLarge {
            len: f.len() - HEADER_LEN
        })
    );
}

#[test]
fn decoder_stays_failed_after_an_error() {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut dec = FrameDecoder::new(&mut buf);
    dec.feed(&[0, 1, 99]);
    assert_eq!(dec.next_frame(), Err(DecodeError::Malformed));
    dec.feed(&frame(&Message::Ping(1)));
    assert_eq!(dec.next_frame(), Err(DecodeError::Malformed));
}
