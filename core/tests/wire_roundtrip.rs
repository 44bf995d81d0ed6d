//! Property tests: arbitrary valid messages round-trip through frames, and
//! arbitrary bytes never panic the decoder.

use meshgate_core::time::UnixTime;
use meshgate_core::wire::*;
use proptest::prelude::*;

/// Owned material from which a borrowed message is built.
#[derive(Debug, Clone)]
struct Owned {
    kind: u8,
    a: u64,
    b: u32,
    c: u16,
    bytes: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    text: String,
    hosts: Vec<String>,
}

fn host() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,12}[a-z0-9](\\.[a-z][a-z0-9]{0,12}){0,3}"
}

fn owned() -> impl Strategy<Value = Owned> {
    (
        0u8..15,
        any::<u64>(),
        1u32..,
        1u16..,
        proptest::collection::vec(any::<u8>(), 0..=MAX_DATA_CHUNK),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..120), 2..=8),
        "[ -~]{1,128}",
        proptest::collection::vec(host(), 1..=6),
    )
        .prop_map(|(kind, a, b, c, bytes, blobs, text, hosts)| Owned {
            kind,
            a,
            b,
            c,
            bytes,
            blobs,
            text,
            hosts,
        })
}

impl Owned {
    fn message(&self) -> Message<'_> {
        let id = self.b;
        let target = MeshTarget {
            host: &self.hosts[0],
            port: self.c,
        };
        match self.kind {
            0 => Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: if self.a.is_multiple_of(2) {
                    Role::Gateway
                } else {
                    Role::Node
                },
                time: (!self.a.is_multiple_of(3)).then(|| UnixTime::from_millis(self.a)),
                max_streams: self.c,
                idle_timeout_ms: self.b.max(MIN_IDLE_TIMEOUT_MS),
            }),
            1 => Message::EnrollRequest(EnrollRequest {
                token: &self.text,
                csr_der: &self.blobs[0],
            }),
            2 => {
                let n = self.blobs.len() / 2;
                let chain = &self.blobs[..n.min(MAX_CERT_CHAIN)];
                let roots = &self.blobs[n..(n + MAX_TRUST_ROOTS).min(self.blobs.len())];
                let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
                let roots: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
                Message::Certificate(Certificate {
                    chain: BoundedList::from_slice(&chain).unwrap(),
                    roots: BoundedList::from_slice(&roots).unwrap(),
                    not_before: UnixTime::from_millis(self.a / 2),
                    not_after: UnixTime::from_millis(self.a / 2 + 1 + u64::from(self.b)),
                })
            }
            3 => Message::RenewRequest(RenewRequest {
                csr_der: &self.blobs[0],
            }),
            4 => {
                let mut listeners = BoundedList::new();
                let mut exposed = BoundedList::new();
                for (i, h) in self.hosts.iter().enumerate() {
                    let port = u16::try_from(i + 1).unwrap();
                    listeners
                        .push(Listener {
                            listen_port: port,
                            target: MeshTarget {
                                host: h,
                                port: self.c,
                            },
                        })
                        .unwrap();
                    exposed
                        .push(Exposed {
                            service: MeshTarget { host: h, port },
                            device: DeviceAddr {
                                ip: if i % 2 == 0 {
                                    DeviceIp::V4([10, 0, 0, port as u8])
                                } else {
                                    DeviceIp::V6([0xfd; 16])
                                },
                                port: self.c,
                            },
                        })
                        .unwrap();
                }
                Message::ConfigPush(ConfigPush {
                    version: self.a,
                    listeners,
                    exposed,
                })
            }
            5 => Message::ConfigAck(ConfigAck { version: self.a }),
            6 => Message::StreamOpen(StreamOpen {
                id,
                target: if self.a.is_multiple_of(2) {
                    StreamTarget::ToMesh(target)
                } else {
                    StreamTarget::ToDevice(target)
                },
                initial_credit: self.a as u32,
            }),
            7 => Message::StreamData(StreamData {
                id,
                data: &self.bytes,
            }),
            8 => Message::StreamClose(StreamClose {
                id,
                reason: [
                    CloseReason::Finished,
                    CloseReason::Cancelled,
                    CloseReason::Refused,
                    CloseReason::Denied,
                    CloseReason::Unreachable,
                ][(self.a % 5) as usize],
            }),
            9 => Message::WindowUpdate(WindowUpdate {
                id,
                credit: self.a as u32,
            }),
            10 => Message::Ping(self.a),
            11 => Message::Pong(self.a),
            12 => Message::Revoked(Revoked {
                reason: RevocationReason::KeyCompromise,
                detail: &self.text,
            }),
            13 => Message::Goodbye(Goodbye {
                reason: GoodbyeReason::Superseded,
            }),
            _ => Message::Error(ErrorMsg {
                code: ErrorCode::BadCsr,
                detail: &self.text,
            }),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_messages_round_trip(o in owned()) {
        let msg = o.message();
        prop_assert_eq!(msg.validate(), Ok(()));
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode_frame(&msg, &mut buf).unwrap();
        prop_assert_eq!(n, HEADER_LEN + body_len(&msg));
        let (decoded, used) = parse_frame(&buf[..n]).unwrap().unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(decoded, msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_frames_are_canonical(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        if let Ok(Some((msg, used))) = parse_frame(&bytes) {
            let mut buf = [0u8; MAX_FRAME_LEN];
            let n = encode_frame(&msg, &mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &bytes[..used]);
        }
        let mut dbuf = [0u8; MAX_FRAME_LEN];
        let mut dec = FrameDecoder::new(&mut dbuf);
        dec.feed(&bytes);
        for _ in 0..bytes.len() {
            match dec.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn small_bodies_with_a_valid_tag_never_panic(
        tag in 0u8..16,
        rest in proptest::collection::vec(any::<u8>(), 0..40)
    ) {
        let mut body = vec![tag];
        body.extend_from_slice(&rest);
        if let Ok(msg) = decode_body(&body) {
            let mut buf = [0u8; MAX_FRAME_LEN];
            let n = encode_frame(&msg, &mut buf).unwrap();
            prop_assert_eq!(&buf[HEADER_LEN..n], &body[..]);
        }
    }
}
