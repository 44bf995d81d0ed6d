//! The host node against a stand-in gateway, over real TLS on a TAP device
//! in a throw-away network namespace.
//!
//! The stand-in is *not* meshgate's gateway (gateway-linux/src/edge): it is
//! the smallest server that speaks the documented protocol — rustls
//! (TLS 1.3, records capped at 4 KiB, client certificate requested but
//! optional) and a `core::wire` gateway session — so the node's real code
//! path is exercised end to end: a rogue server with another device's
//! certificate from the same CA refused, embedded-tls handshake with gateway
//! pinning, enrollment with a one-time token and a CSR, reconnect with the
//! issued certificate (mTLS), configuration push and ack, a mesh client
//! reaching a legacy device behind the node, a legacy client reaching a
//! mesh service through the node, and revocation stopping the node.
//!
//! Needs root (network namespace, TAP). The outer test creates the
//! namespace and re-runs this test binary inside it (`ip netns exec`),
//! since a process cannot move itself into a namespace without `unsafe`.
//! Without root it is skipped loudly (failing under `CI=true`).

use core::time::Duration;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Instant as StdInstant, SystemTime, UNIX_EPOCH};

use meshgate_core::time::UnixTime;
use meshgate_core::wire::{
    BoundedList, CloseReason, ConfigPush, DeviceAddr, DeviceIp, Event, Exposed, Instant, Listener,
    MeshTarget, Message, RevocationReason, Revoked, Role, Session, SessionConfig, StreamTarget,
    encode_frame, parse_frame,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use x509_parser::prelude::FromDer;

const NS_ENV: &str = "MESHGATE_E2E_NETNS";
const TAP: &str = "mge2e0";
const KIND_ENV: &str = "MESHGATE_E2E_KIND";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
const NODE_ID: &str = "spiffe://cluster.local/ns/factory/sa/edge-1";
const TOKEN: &str = "e2e-one-time-token";
const DEVICE_PORT: u16 = 5020;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

/// Which node build runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `meshgate-edge-host`, provisioned by flags.
    Host,
    /// The thumbv7em image on `qemu-system-arm -M mps2-an386`, provisioned
    /// through its setup page.
    Qemu,
}

impl Kind {
    /// (gateway, node) addresses; the QEMU image's built-in default node
    /// address is 10.98.0.2/24.
    fn net(self) -> ([u8; 4], [u8; 4]) {
        match self {
            Kind::Host => ([10, 97, 0, 1], [10, 97, 0, 2]),
            Kind::Qemu => ([10, 98, 0, 1], [10, 98, 0, 2]),
        }
    }
}

fn ip(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The image: `MESHGATE_QEMU_ELF`, else where `scripts/qemu-smoke` builds
/// it (`CARGO_TARGET_DIR`, else the workspace's `target/`).
fn qemu_elf() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MESHGATE_QEMU_ELF") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        std::path::PathBuf::from,
    );
    target.join("thumbv7em-none-eabihf/release/qemu-mps2-an386")
}

#[test]
fn node_enrolls_bridges_both_ways_and_obeys_revocation() {
    outer(
        "node_enrolls_bridges_both_ways_and_obeys_revocation",
        Kind::Host,
    );
}

/// The issue's QEMU end-to-end: the real thumbv7em image (built by
/// `scripts/qemu-smoke` or `cargo build --release` in
/// boards/qemu-mps2-an386) enrolls through the stand-in gateway and
/// carries legacy traffic both ways.
#[test]
fn qemu_image_enrolls_bridges_both_ways_and_obeys_revocation() {
    let have_qemu = sh(&["qemu-system-arm", "--version"]);
    let elf = qemu_elf();
    if !have_qemu || !elf.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu e2e needs qemu-system-arm and the image at {}",
            elf.display()
        );
        eprintln!(
            "tunnel_e2e (qemu): SKIP ********** needs qemu-system-arm and {} **********",
            elf.display()
        );
        return;
    }
    outer(
        "qemu_image_enrolls_bridges_both_ways_and_obeys_revocation",
        Kind::Qemu,
    );
}

/// Creates the namespace and TAP, and re-runs `test` inside it.
fn outer(test: &str, kind: Kind) {
    if std::env::var_os(NS_ENV).is_some() {
        inner(kind);
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !sh(&["ip", "-V"]) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tunnel_e2e needs root and iproute2 in CI"
        );
        eprintln!("tunnel_e2e: SKIP ********** needs root and iproute2 **********");
        return;
    }
    let (gateway, _) = kind.net();
    let ns = format!("mg-e2e-{}-{}", std::process::id(), kind.net().0[1]);
    assert!(sh(&["ip", "netns", "add", &ns]));
    let ok = sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])
        && sh(&["ip", "-n", &ns, "tuntap", "add", "dev", TAP, "mode", "tap"])
        && sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", ip(gateway)),
            "dev",
            TAP,
        ])
        && sh(&["ip", "-n", &ns, "link", "set", TAP, "up"]);
    let status = ok.then(|| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(std::env::current_exe().expect("test binary path"))
            .args(["--exact", test, "--nocapture"])
            .env(NS_ENV, &ns)
            .env(KIND_ENV, if kind == Kind::Qemu { "qemu" } else { "host" })
            .status()
    });
    sh(&["ip", "netns", "del", &ns]);
    assert!(ok, "namespace setup failed");
    let status = status.and_then(Result::ok).expect("inner test ran");
    assert!(status.success(), "inner test failed: {status}");
}

/// The mesh CA and the gateway's identity.
struct Pki {
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    gateway_cert: Vec<u8>,
    gateway_key: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "e2e mesh root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_der = params.self_signed(&key).unwrap().der().to_vec();
        let issuer = Issuer::new(params, key);
        let gw_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let gateway_cert = svid(GATEWAY_ID).signed_by(&gw_key, &issuer).unwrap();
        Pki {
            ca_der,
            issuer,
            gateway_cert: gateway_cert.der().to_vec(),
            gateway_key: gw_key.serialize_der(),
        }
    }

    /// Signs a node certificate for the public key of a CSR.
    fn issue(&self, csr_der: &[u8]) -> Vec<u8> {
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .expect("node CSR parses");
        csr.verify_signature().expect("node CSR is self-signed");
        struct Pub(Vec<u8>);
        impl rcgen::PublicKeyData for Pub {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                &PKCS_ECDSA_P256_SHA256
            }
        }
        let spki = csr
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec();
        svid(NODE_ID)
            .signed_by(&Pub(spki), &self.issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    /// A server presenting a certificate from the mesh CA for `uri`
    /// (another device's identity): a rogue gateway.
    fn rogue_config(&self, uri: &str) -> Arc<ServerConfig> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = svid(uri).signed_by(&key, &self.issuer).unwrap();
        self.config_with(cert.der().to_vec(), key.serialize_der())
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        self.config_with(self.gateway_cert.clone(), self.gateway_key.clone())
    }

    fn config_with(&self, cert: Vec<u8>, key: Vec<u8>) -> Arc<ServerConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        // Requested but optional: the enrollment connection has none.
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .unwrap();
        let mut cfg = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap();
        // The node's embedded-tls has ~5 KiB record buffers.
        cfg.max_fragment_size = Some(4096 + 5);
        cfg.send_tls13_tickets = 0;
        Arc::new(cfg)
    }
}

/// Like meshgate-ca's SVIDs: empty subject, the identity as one URI SAN,
/// valid 2025..2035.
fn svid(uri: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    params
}

const NOT_BEFORE_2025: u64 = 1_735_689_600;
const NOT_AFTER_2035: u64 = 2_051_222_400;

/// A gateway session event with owned data.
#[derive(Debug, PartialEq)]
enum Ev {
    Connected,
    Opened { id: u32, host: String, port: u16 },
    Accepted(u32),
    Data(u32, Vec<u8>),
    Finished(u32),
    Reset(u32, CloseReason),
    Enroll { token: String, csr: Vec<u8> },
    ConfigAck(u64),
    Goodbye,
    Other,
}

/// One gateway end of a tunnel over TLS.
struct Gw {
    tls: StreamOwned<ServerConnection, TcpStream>,
    sess: Session<8>,
    rx: Vec<u8>,
    t0: StdInstant,
    /// Events pumped but not consumed by a `wait_for` yet.
    pending: std::collections::VecDeque<Ev>,
}

impl Gw {
    fn accept(listener: &TcpListener, cfg: &Arc<ServerConfig>) -> Self {
        let (tcp, _) = listener.accept().expect("node connects");
        tcp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let conn = ServerConnection::new(cfg.clone()).unwrap();
        let t0 = StdInstant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Gw {
            tls: StreamOwned::new(conn, tcp),
            sess: Session::new(
                SessionConfig::new(Role::Gateway),
                Instant::from_millis(0),
                Some(UnixTime::from_secs(wall)),
            ),
            rx: Vec::new(),
            t0,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Completes the TLS handshake (the node may be slow: QEMU).
    fn handshake(&mut self, secs: u64) {
        let deadline = StdInstant::now() + Duration::from_secs(secs);
        while self.tls.conn.is_handshaking() {
            assert!(StdInstant::now() < deadline, "TLS handshake timed out");
            match self.tls.conn.complete_io(&mut self.tls.sock) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("TLS handshake with the node failed: {e}"),
            }
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.t0.elapsed().as_millis() as u64)
    }

    fn peer_has_cert(&self) -> bool {
        self.tls
            .conn
            .peer_certificates()
            .is_some_and(|c| !c.is_empty())
    }

    fn peer_uri(&self) -> Option<String> {
        let certs = self.tls.conn.peer_certificates()?;
        let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
    }

    fn send(&mut self, frame: &[u8]) {
        self.tls.write_all(frame).expect("write to node");
    }

    fn flush_session(&mut self) {
        let mut buf = [0u8; 4096];
        while let Some(n) = self.sess.poll_transmit(self.now(), &mut buf).unwrap() {
            self.send(&buf[..n]);
        }
        let _ = self.tls.flush();
    }

    /// Reads whatever arrives within ~20 ms and returns the events.
    fn pump(&mut self) -> Vec<Ev> {
        self.flush_session();
        let mut chunk = [0u8; 8192];
        match self.tls.read(&mut chunk) {
            Ok(0) => return vec![Ev::Goodbye],
            Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // The node closed the connection (after a goodbye or when
            // revoked) without a TLS close_notify.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
                ) =>
            {
                return vec![Ev::Goodbye];
            }
            Err(e) => panic!("tls read: {e}"),
        }
        let mut events = Vec::new();
        loop {
            let parsed = parse_frame(&self.rx).expect("node frame decodes");
            let Some((msg, used)) = parsed else { break };
            let now = self.now();
            let ev = match self
                .sess
                .handle_message(now, msg)
                .expect("node obeys the protocol")
            {
                Some(Event::Connected { .. }) => Ev::Connected,
                Some(Event::StreamOpened { id, target }) => Ev::Opened {
                    id,
                    host: target.service().host.to_string(),
                    port: target.service().port,
                },
                Some(Event::StreamAccepted { id, .. }) => Ev::Accepted(id),
                Some(Event::Data { id, data }) => {
                    let d = data.to_vec();
                    self.sess.consumed(id, d.len() as u32).unwrap();
                    Ev::Data(id, d)
                }
                Some(Event::StreamFinished { id }) => Ev::Finished(id),
                Some(Event::StreamReset { id, reason }) => Ev::Reset(id, reason),
                Some(Event::Control(Message::EnrollRequest(r))) => Ev::Enroll {
                    token: r.token.to_string(),
                    csr: r.csr_der.to_vec(),
                },
                Some(Event::Control(Message::ConfigAck(a))) => Ev::ConfigAck(a.version),
                Some(Event::PeerGoodbye(_)) => Ev::Goodbye,
                _ => Ev::Other,
            };
            self.rx.drain(..used);
            if !matches!(ev, Ev::Data(..)) {
                eprintln!("e2e gateway: {ev:?}");
            }
            events.push(ev);
        }
        self.flush_session();
        events
    }

    /// Pumps until `want` matches an event, or panics after `secs`.
    /// Events before the match are dropped; events after it stay queued
    /// for the next call.
    fn wait_for(&mut self, secs: u64, mut want: impl FnMut(&Ev) -> bool) -> Ev {
        let deadline = StdInstant::now() + Duration::from_secs(secs);
        loop {
            while let Some(ev) = self.pending.pop_front() {
                if want(&ev) {
                    return ev;
                }
            }
            assert!(
                StdInstant::now() < deadline,
                "timed out waiting for an event"
            );
            let events = self.pump();
            self.pending.extend(events);
        }
    }
}

/// The node process, killed when the test ends early (a panic), so it
/// never outlives the test.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(kind: Kind, dir: &std::path::Path, root_pem: &std::path::Path) -> NodeProcess {
    let (gateway, node) = kind.net();
    let child = match kind {
        Kind::Host => Command::new(env!("CARGO_BIN_EXE_meshgate-edge-host"))
            .args([
                "--tap",
                TAP,
                "--ip",
                &format!("{}/24", ip(node)),
                "--state-dir",
            ])
            .arg(dir.join("state"))
            .args([
                "--seed",
                "7",
                "--gateway",
                &format!("{}:15443", ip(gateway)),
            ])
            .args(["--gateway-id", GATEWAY_ID, "--token", TOKEN, "--root"])
            .arg(root_pem)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn(),
        Kind::Qemu => Command::new("qemu-system-arm")
            .args([
                "-M",
                "mps2-an386",
                "-nographic",
                "-monitor",
                "none",
                "-serial",
                "none",
            ])
            .args(["-semihosting-config", "enable=on,target=native"])
            .args([
                "-nic",
                &format!("tap,ifname={TAP},script=no,downscript=no,model=lan9118"),
            ])
            .arg("-kernel")
            .arg(qemu_elf())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("qemu.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn(),
    }
    .expect("node starts");
    NodeProcess(child)
}

/// Fills in the node's first-time setup page over plain HTTP (the QEMU
/// image is built without provisioning).
fn setup_over_http(node: [u8; 4], gateway: [u8; 4], root_pem: &str) {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect()
    }
    let body = format!(
        "gateway={}&gateway_id={}&token={}&root={}",
        enc(&format!("{}:15443", ip(gateway))),
        enc(GATEWAY_ID),
        enc(TOKEN),
        enc(root_pem)
    );
    let deadline = StdInstant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match TcpStream::connect((ip(node).as_str(), 80)) {
            Ok(c) => break c,
            Err(_) if StdInstant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("setup page unreachable: {e}"),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /setup HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") && answer.contains("Saved."),
        "setup refused: {answer}"
    );
}

fn pem(der: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for (i, c) in der.chunks(3).enumerate() {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
        if i % 16 == 15 {
            s.push('\n');
        }
    }
    s.push_str("\n-----END CERTIFICATE-----\n");
    s
}

fn inner(kind: Kind) {
    let kind = match std::env::var(KIND_ENV).as_deref() {
        Ok("qemu") => Kind::Qemu,
        _ => kind,
    };
    let (gateway, node_ip) = kind.net();
    let pki = Pki::new();
    let cfg = pki.server_config();
    let dir = std::env::temp_dir().join(format!("mg-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root_pem = dir.join("root.pem");
    std::fs::write(&root_pem, pem(&pki.ca_der)).unwrap();

    // The legacy device behind the node: answers "PLC:" + request, then
    // closes.
    let device = TcpListener::bind((ip(gateway).as_str(), DEVICE_PORT)).unwrap();
    let device_thread = std::thread::spawn(move || {
        let (mut s, _) = device.accept().expect("node connects to the device");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        let mut reply = b"PLC:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        s.write_all(&reply).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        buf[..n].to_vec()
    });

    let listener = TcpListener::bind((ip(gateway).as_str(), 15443)).unwrap();
    let mut node = spawn_node(kind, &dir, &root_pem);
    if kind == Kind::Qemu {
        setup_over_http(node_ip, gateway, &pem(&pki.ca_der));
        eprintln!("e2e: QEMU node provisioned through its setup page");
    }

    // 0. A rogue server holding another device's certificate from the
    //    same CA: the node must refuse it and send nothing.
    let rogue = pki.rogue_config("spiffe://cluster.local/ns/factory/sa/edge-2");
    let mut gw = Gw::accept(&listener, &rogue);
    let mut chunk = [0u8; 1024];
    let deadline = StdInstant::now() + Duration::from_secs(20);
    let outcome = loop {
        assert!(
            StdInstant::now() < deadline,
            "node neither finished nor refused"
        );
        match gw.tls.read(&mut chunk) {
            Ok(0) => break "closed".to_string(),
            Ok(n) => panic!("node sent {n} bytes of application data to a rogue server"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => break e.to_string(),
        }
    };
    // The node never sent its Finished: it stopped at our certificate.
    assert!(
        gw.tls.conn.is_handshaking(),
        "node completed a handshake with a rogue server"
    );
    eprintln!("e2e: rogue server refused by the node ({outcome})");
    drop(gw);

    // 1. Enrollment: TLS without a client certificate, hello, token + CSR.
    let mut gw = Gw::accept(&listener, &cfg);
    gw.handshake(30);
    gw.wait_for(20, |e| *e == Ev::Connected);
    assert!(
        !gw.peer_has_cert(),
        "enrollment connection has no client cert"
    );
    let Ev::Enroll { token, csr } = gw.wait_for(10, |e| matches!(e, Ev::Enroll { .. })) else {
        unreachable!()
    };
    assert_eq!(token, TOKEN);
    let leaf = pki.issue(&csr);
    let cert = Message::Certificate(meshgate_core::wire::Certificate {
        chain: BoundedList::from_slice(&[leaf.as_slice()]).unwrap(),
        roots: BoundedList::from_slice(&[pki.ca_der.as_slice()]).unwrap(),
        not_before: UnixTime::from_secs(NOT_BEFORE_2025),
        not_after: UnixTime::from_secs(NOT_AFTER_2035),
    });
    let mut buf = vec![0u8; 4096];
    let n = encode_frame(&cert, &mut buf).unwrap();
    gw.send(&buf[..n]);
    gw.wait_for(10, |e| *e == Ev::Goodbye);
    drop(gw);
    eprintln!("e2e: enrollment done");

    // 2. Operation: mTLS with the issued certificate.
    let mut gw = Gw::accept(&listener, &cfg);
    gw.handshake(30);
    gw.wait_for(20, |e| *e == Ev::Connected);
    assert_eq!(
        gw.peer_uri().as_deref(),
        Some(NODE_ID),
        "node presents its SVID"
    );
    let push = Message::ConfigPush(ConfigPush {
        version: 1,
        listeners: BoundedList::from_slice(&[Listener {
            listen_port: 8080,
            target: MeshTarget {
                host: "details.bookinfo.svc.cluster.local",
                port: 9080,
            },
        }])
        .unwrap(),
        exposed: BoundedList::from_slice(&[Exposed {
            service: MeshTarget {
                host: "plc-1.factory",
                port: 502,
            },
            device: DeviceAddr {
                ip: DeviceIp::V4(gateway),
                port: DEVICE_PORT,
            },
        }])
        .unwrap(),
    });
    let n = encode_frame(&push, &mut buf).unwrap();
    gw.send(&buf[..n]);
    gw.wait_for(10, |e| *e == Ev::ConfigAck(1));
    eprintln!("e2e: config 1 acked");

    // 3. Mesh -> device: the gateway opens a stream to plc-1.factory.
    let (dev_id, n) = gw
        .sess
        .open_stream(
            StreamTarget::ToDevice(MeshTarget {
                host: "plc-1.factory",
                port: 502,
            }),
            &mut buf,
        )
        .unwrap();
    gw.send(&buf[..n]);
    gw.wait_for(10, |e| *e == Ev::Accepted(dev_id));
    let sent = gw
        .sess
        .send_data(dev_id, b"read coils 0-15", &mut buf)
        .unwrap();
    gw.send(&buf[..sent.written]);
    let mut reply = Vec::new();
    // Data until the stream's finish.
    while let Ev::Data(_, d) = gw.wait_for(
        10,
        |e| matches!(e, Ev::Data(i, _) | Ev::Finished(i) if *i == dev_id),
    ) {
        reply.extend_from_slice(&d);
    }
    assert_eq!(reply, b"PLC:read coils 0-15");
    assert_eq!(device_thread.join().unwrap(), b"read coils 0-15");
    gw.sess.finish(dev_id).unwrap();
    eprintln!("e2e: mesh client reached the device behind the node");

    // 4. Legacy client -> mesh: a plaintext client on the node's port 8080.
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect((ip(node_ip).as_str(), 8080)).expect("node listens on 8080");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /details/0 HTTP/1.0\r\n\r\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    let Ev::Opened { id, host, port } = gw.wait_for(10, |e| matches!(e, Ev::Opened { .. })) else {
        unreachable!()
    };
    assert_eq!(
        (host.as_str(), port),
        ("details.bookinfo.svc.cluster.local", 9080)
    );
    gw.sess.accept(id).unwrap();
    let mut request = Vec::new();
    // Data until the stream's finish.
    while let Ev::Data(_, d) = gw.wait_for(
        10,
        |e| matches!(e, Ev::Data(i, _) | Ev::Finished(i) if *i == id),
    ) {
        request.extend_from_slice(&d);
    }
    assert_eq!(request, b"GET /details/0 HTTP/1.0\r\n\r\n");
    let body = b"HTTP/1.0 200 OK\r\n\r\n{\"id\":0}".repeat(100);
    let mut off = 0;
    while off < body.len() {
        match gw.sess.send_data(id, &body[off..], &mut buf) {
            Ok(s) => {
                off += s.consumed;
                gw.send(&buf[..s.written]);
            }
            Err(meshgate_core::wire::StreamError::Blocked) => {
                gw.pump();
            }
            Err(e) => panic!("send to node: {e}"),
        }
    }
    gw.sess.finish(id).unwrap();
    for _ in 0..50 {
        gw.pump();
        if client.is_finished() {
            break;
        }
    }
    assert_eq!(
        client.join().unwrap(),
        body,
        "legacy client got the whole answer"
    );
    eprintln!(
        "e2e: legacy client reached the mesh through the node ({} bytes back)",
        body.len()
    );

    // 5. Revocation: the node stops and does not come back.
    let revoked = Message::Revoked(Revoked {
        reason: RevocationReason::KeyCompromise,
        detail: "e2e",
    });
    let n = encode_frame(&revoked, &mut buf).unwrap();
    gw.send(&buf[..n]);
    let _ = gw.tls.flush();
    let deadline = StdInstant::now() + Duration::from_secs(20);
    match kind {
        Kind::Host => {
            let code = loop {
                if let Some(status) = node.0.try_wait().unwrap() {
                    break status.code();
                }
                assert!(
                    StdInstant::now() < deadline,
                    "node still running after revocation"
                );
                gw.pump();
            };
            assert_eq!(code, Some(3), "the node exits as revoked");
        }
        Kind::Qemu => loop {
            // The image stays up (it has nowhere to exit to) but says so.
            let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            if log.contains("node revoked: forwarding stopped") {
                eprintln!("---- QEMU boot log ----\n{log}-----------------------");
                break;
            }
            assert!(
                StdInstant::now() < deadline,
                "QEMU node did not stop: {log}"
            );
            gw.pump();
        },
    }
    listener.set_nonblocking(true).unwrap();
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "a revoked node does not reconnect"
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("e2e: revoked node stopped");
}
