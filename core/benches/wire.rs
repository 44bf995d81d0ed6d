//! Gateway <-> edge-node wire protocol: encode and decode of every frame
//! kind at realistic sizes, and [`FrameDecoder`] reassembling a mixed frame
//! stream delivered in chunks (1 byte, a small TCP segment, a full MSS).
//!
//! Run briefly with
//! `cargo bench -p meshgate-core --bench wire -- --warm-up-time 1 --measurement-time 2`.

use core::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use meshgate_core::time::UnixTime;
use meshgate_core::wire::{
    BoundedList, Certificate, CloseReason, ConfigAck, ConfigPush, DeviceAddr, DeviceIp,
    EnrollRequest, ErrorCode, ErrorMsg, Exposed, FrameDecoder, Goodbye, GoodbyeReason, Hello,
    Listener, MAX_DATA_CHUNK, MAX_FRAME_LEN, MeshTarget, Message, PROTOCOL_VERSION, RenewRequest,
    RevocationReason, Revoked, Role, StreamClose, StreamData, StreamOpen, StreamTarget,
    WindowUpdate, encode_frame, parse_frame,
};

/// Byte material the borrowed messages point into: DER-sized blobs for
/// certificates and CSRs, a full data chunk.
struct Material {
    leaf: Vec<u8>,
    intermediate: Vec<u8>,
    root: Vec<u8>,
    csr: Vec<u8>,
    chunk: Vec<u8>,
}

impl Material {
    fn new() -> Self {
        let blob = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        Material {
            leaf: blob(620, 1),
            intermediate: blob(540, 2),
            root: blob(480, 3),
            csr: blob(420, 4),
            chunk: blob(MAX_DATA_CHUNK, 5),
        }
    }

    /// One message of every kind, named.
    fn messages(&self) -> Vec<(&'static str, Message<'_>)> {
        let target = MeshTarget {
            host: "details.bookinfo.svc.cluster.local",
            port: 9080,
        };
        let mut listeners = BoundedList::new();
        let mut exposed = BoundedList::new();
        for i in 0..4u16 {
            let _ = listeners.push(Listener {
                listen_port: 8000 + i,
                target,
            });
            let _ = exposed.push(Exposed {
                service: MeshTarget {
                    host: "plc.factory.svc.cluster.local",
                    port: 502 + i,
                },
                device: DeviceAddr {
                    ip: DeviceIp::V4([192, 168, 10, 20 + i as u8]),
                    port: 502,
                },
            });
        }
        let chain = BoundedList::from_slice(&[self.leaf.as_slice(), self.intermediate.as_slice()])
            .unwrap_or_default();
        let roots = BoundedList::from_slice(&[self.root.as_slice()]).unwrap_or_default();
        vec![
            (
                "hello",
                Message::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    role: Role::Gateway,
                    time: Some(UnixTime::from_millis(1_790_000_000_000)),
                    max_streams: 64,
                    idle_timeout_ms: 30_000,
                }),
            ),
            (
                "enroll_request",
                Message::EnrollRequest(EnrollRequest {
                    token: "mgt_3q2+7w==a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
                    csr_der: &self.csr,
                }),
            ),
            (
                "certificate",
                Message::Certificate(Certificate {
                    chain,
                    roots,
                    not_before: UnixTime::from_secs(1_790_000_000),
                    not_after: UnixTime::from_secs(1_790_086_400),
                }),
            ),
            (
                "renew_request",
                Message::RenewRequest(RenewRequest { csr_der: &self.csr }),
            ),
            (
                "config_push",
                Message::ConfigPush(ConfigPush {
                    version: 42,
                    listeners,
                    exposed,
                }),
            ),
            ("config_ack", Message::ConfigAck(ConfigAck { version: 42 })),
            (
                "stream_open",
                Message::StreamOpen(StreamOpen {
                    id: 7,
                    target: StreamTarget::ToMesh(target),
                    initial_credit: 65_536,
                }),
            ),
            (
                "stream_data",
                Message::StreamData(StreamData {
                    id: 7,
                    data: &self.chunk,
                }),
            ),
            (
                "stream_close",
                Message::StreamClose(StreamClose {
                    id: 7,
                    reason: CloseReason::Finished,
                }),
            ),
            (
                "window_update",
                Message::WindowUpdate(WindowUpdate {
                    id: 7,
                    credit: 16_384,
                }),
            ),
            ("ping", Message::Ping(0x0123_4567_89ab_cdef)),
            ("pong", Message::Pong(0x0123_4567_89ab_cdef)),
            (
                "revoked",
                Message::Revoked(Revoked {
                    reason: RevocationReason::KeyCompromise,
                    detail: "node certificate revoked by the operator",
                }),
            ),
            (
                "goodbye",
                Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::Shutdown,
                }),
            ),
            (
                "error",
                Message::Error(ErrorMsg {
                    code: ErrorCode::FlowControl,
                    detail: "stream 7 exceeded its credit",
                }),
            ),
        ]
    }
}

fn encode_decode(c: &mut Criterion) {
    let material = Material::new();
    let messages = material.messages();
    let mut out = [0u8; MAX_FRAME_LEN];
    let mut encode = c.benchmark_group("wire/encode");
    for (name, msg) in &messages {
        let len = encode_frame(msg, &mut out).unwrap_or(0);
        assert!(len > 0, "{name} must encode");
        encode.throughput(Throughput::Bytes(len as u64));
        encode.bench_function(*name, |b| {
            b.iter(|| encode_frame(black_box(msg), black_box(&mut out)));
        });
    }
    encode.finish();

    let mut decode = c.benchmark_group("wire/decode");
    for (name, msg) in &messages {
        let mut frame = [0u8; MAX_FRAME_LEN];
        let len = encode_frame(msg, &mut frame).unwrap_or(0);
        let frame = &frame[..len];
        match parse_frame(frame) {
            Ok(Some((decoded, used))) => {
                assert_eq!(used, len, "{name}: whole frame consumed");
                assert_eq!(&decoded, msg, "{name} must round-trip");
            }
            other => panic!("{name} must decode: {other:?}"),
        }
        decode.throughput(Throughput::Bytes(len as u64));
        decode.bench_function(*name, |b| b.iter(|| parse_frame(black_box(frame))));
    }
    decode.finish();
}

/// A tunnel's typical traffic: mostly data frames with window updates,
/// pings and stream open/close between them.
fn stream_of_frames(material: &Material) -> (Vec<u8>, usize) {
    let all = material.messages();
    let pick = |n: &str| {
        all.iter()
            .find(|(name, _)| *name == n)
            .map(|(_, m)| *m)
            .unwrap_or(Message::Ping(0))
    };
    let pattern = [
        "stream_open",
        "stream_data",
        "window_update",
        "stream_data",
        "stream_data",
        "ping",
        "stream_data",
        "pong",
        "stream_close",
    ];
    let mut bytes = Vec::new();
    let mut frames = 0;
    let mut out = [0u8; MAX_FRAME_LEN];
    for _ in 0..16 {
        for name in pattern {
            let n = encode_frame(&pick(name), &mut out).unwrap_or(0);
            bytes.extend_from_slice(&out[..n]);
            frames += 1;
        }
    }
    (bytes, frames)
}

fn decoder_chunked(c: &mut Criterion) {
    let material = Material::new();
    let (stream, frames) = stream_of_frames(&material);
    let mut group = c.benchmark_group("wire/frame_decoder");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in [1usize, 64, 1460] {
        group.bench_with_input(BenchmarkId::new("chunk", chunk), &chunk, |b, &chunk| {
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            b.iter(|| {
                let mut dec = FrameDecoder::new(&mut buf);
                let mut seen = 0usize;
                for piece in stream.chunks(chunk) {
                    let mut rest = piece;
                    while !rest.is_empty() {
                        let took = dec.feed(rest);
                        rest = &rest[took..];
                        while let Ok(Some(msg)) = dec.next_frame() {
                            black_box(&msg);
                            seen += 1;
                        }
                    }
                }
                assert_eq!(seen, frames);
                seen
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encode_decode, decoder_chunked);
criterion_main!(benches);
