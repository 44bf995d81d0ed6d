//! The gateway side of the edge-node tunnel, driven end to end: a real
//! `meshgate serve` process, and a test client that speaks the node's
//! protocol (`meshgate_core::wire::Session` with the node role over a
//! rustls TLS 1.3 client with a P-256 key) — what the firmware does, on
//! std instead of embassy.
//!
//! One scenario walks the node's whole life, because each step depends on
//! the previous one (a token, then a certificate, then a tunnel): token
//! reuse and expiry refused, enrollment, configuration push, a legacy
//! request through a node stream reaching `details` under STRICT with the
//! node's SPIFFE ID in XFCC, a stream to a target outside the pushed
//! configuration refused, an mTLS client reaching the legacy device behind
//! the node, renewal for the record's identity whatever the CSR asks,
//! every TLS record from the gateway within the node's cap, revocation
//! closing the tunnel within a second and refusing the reconnect. A second
//! test shows a valid mesh certificate that is not a node's refused.

mod admin_support;

use core::net::SocketAddr;
use core::pin::Pin;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::io;
use std::path::Path;
use std::sync::Arc;

use admin_support::{Gateway, STRICT_BOOKINFO, Start, text};
use meshgate_core::time::UnixTime;
use meshgate_core::wire::{
    CloseReason, ConfigAck, EnrollRequest, ErrorCode, Event, GoodbyeReason, Instant, MeshTarget,
    Message, RenewRequest, Role, Session, SessionConfig, StreamTarget, encode_frame, parse_frame,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
const NODE_ID: &str = "spiffe://cluster.local/ns/factory/sa/plc-gw-1";
const DETAILS: &str = "details.bookinfo.svc.cluster.local";
/// The node's TLS receive budget: 4 KiB of plaintext plus the TLS 1.3
/// record overhead (content type byte + 16-byte AEAD tag).
const RECORD_CAP: usize = 4096 + 17;
const STEP: Duration = Duration::from_secs(10);

// ----- helpers: PKI -----

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).expect("X.509");
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                if let GeneralName::URI(u) = n {
                    out.push((*u).to_owned());
                }
            }
        }
    }
    out
}

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).expect("X.509");
    cert.public_key().subject_public_key.data.to_vec()
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).expect("read PEM");
    rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.expect("PEM cert"))
        .collect()
}

fn pem_key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).expect("read key");
    rustls_pemfile::private_key(&mut pem.as_slice())
        .expect("PEM key")
        .expect("a key")
}

/// A fresh P-256 key and a CSR for it (asking for `uri`, which the
/// gateway must ignore).
fn key_and_csr(uri: Option<&str>) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshgate-edge");
    if let Some(u) = uri {
        params.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().expect("uri"))];
    }
    let csr = params.serialize_request(&key).expect("csr");
    (key, csr.der().to_vec())
}

/// What the node does: the server must chain to the trust bundle and be
/// exactly the gateway's SPIFFE ID (a device certificate from the same CA
/// is not the gateway).
#[derive(Debug)]
struct PinnedGateway {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedGateway {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if uri_sans(end_entity.as_ref()) == [GATEWAY_ID] {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the gateway".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client config like the node's: P-256 only, verifying the
/// gateway by pin, with or without a client certificate.
fn client_config(
    roots: &[CertificateDer<'static>],
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::secp256r1);
    let provider = Arc::new(provider);
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedGateway {
            roots: Arc::new(store),
            provider,
        }));
    Arc::new(match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    })
}

// ----- helpers: a TCP stream that measures the server's TLS records -----

/// Parses TLS record headers in what the gateway sends and keeps the
/// largest record length seen.
struct Spy {
    inner: TcpStream,
    max_record: Arc<AtomicUsize>,
    /// Bytes of the current record header seen, and its bytes.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current record still to skip.
    body_left: usize,
}

impl Spy {
    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len == 5 {
                let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.max_record.fetch_max(len, Ordering::Relaxed);
                self.body_left = len;
                self.header_len = 0;
            }
        }
    }
}

impl AsyncRead for Spy {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = buf.filled()[before..].to_vec();
            self.observe(&new);
        }
        r
    }
}

impl AsyncWrite for Spy {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ----- helpers: the node's side of the protocol -----

/// An event, owned (the session's borrow the frame).
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Connected,
    Certificate {
        chain: Vec<Vec<u8>>,
        roots: Vec<Vec<u8>>,
        not_after: UnixTime,
    },
    Config {
        version: u64,
        listeners: Vec<(u16, String, u16)>,
        exposed: Vec<(String, u16, SocketAddr)>,
    },
    StreamOpened {
        id: u32,
        host: String,
        port: u16,
    },
    Accepted {
        id: u32,
    },
    Credit,
    Data {
        id: u32,
        data: Vec<u8>,
    },
    Finished {
        id: u32,
    },
    Reset {
        id: u32,
        reason: CloseReason,
    },
    Revoked,
    Goodbye(GoodbyeReason),
    PeerError(ErrorCode, String),
    Eof,
}

fn owned(ev: Event<'_>) -> Ev {
    match ev {
        Event::Connected { .. } => Ev::Connected,
        Event::StreamOpened { id, target } => Ev::StreamOpened {
            id,
            host: target.service().host.to_owned(),
            port: target.service().port,
        },
        Event::StreamAccepted { id, .. } => Ev::Accepted { id },
        Event::Credit { .. } => Ev::Credit,
        Event::Data { id, data } => Ev::Data {
            id,
            data: data.to_vec(),
        },
        Event::StreamFinished { id } => Ev::Finished { id },
        Event::StreamReset { id, reason } => Ev::Reset { id, reason },
        Event::Control(Message::Certificate(c)) => Ev::Certificate {
            chain: c.chain.iter().map(|d| d.to_vec()).collect(),
            roots: c.roots.iter().map(|d| d.to_vec()).collect(),
            not_after: c.not_after,
        },
        Event::Control(Message::ConfigPush(p)) => Ev::Config {
            version: p.version,
            listeners: p
                .listeners
                .iter()
                .map(|l| (l.listen_port, l.target.host.to_owned(), l.target.port))
                .collect(),
            exposed: p
                .exposed
                .iter()
                .map(|e| {
                    let ip = match e.device.ip {
                        meshgate_core::wire::DeviceIp::V4(b) => core::net::IpAddr::from(b),
                        meshgate_core::wire::DeviceIp::V6(b) => core::net::IpAddr::from(b),
                    };
                    (
                        e.service.host.to_owned(),
                        e.service.port,
                        SocketAddr::new(ip, e.device.port),
                    )
                })
                .collect(),
        },
        Event::Control(other) => panic!("unexpected control message {}", other.name()),
        Event::Revoked(_) => Ev::Revoked,
        Event::PeerGoodbye(r) => Ev::Goodbye(r),
        Event::PeerError(e) => Ev::PeerError(e.code, e.detail.to_owned()),
        Event::TimedOut => panic!("node session timed out"),
    }
}

type Tls = tokio_rustls::client::TlsStream<Spy>;

/// The test's edge node: one tunnel connection.
struct Node {
    tls: Tls,
    session: Session<8>,
    rx: Vec<u8>,
    origin: std::time::Instant,
}

impl Node {
    async fn connect(
        addr: SocketAddr,
        cfg: Arc<ClientConfig>,
        max_record: Arc<AtomicUsize>,
    ) -> io::Result<Node> {
        Self::connect_with_window(addr, cfg, max_record, 16 * 1024).await
    }

    /// [`Node::connect`] announcing `recv_window` bytes of credit per
    /// stream.
    async fn connect_with_window(
        addr: SocketAddr,
        cfg: Arc<ClientConfig>,
        max_record: Arc<AtomicUsize>,
        recv_window: u32,
    ) -> io::Result<Node> {
        let tcp = TcpStream::connect(addr).await?;
        let spy = Spy {
            inner: tcp,
            max_record,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
        };
        // The node sends no SNI; rustls needs a name, the pin ignores it.
        let name = ServerName::try_from("meshgate-gateway").expect("name");
        let tls = TlsConnector::from(cfg).connect(name, spy).await?;
        let mut cfg = SessionConfig::new(Role::Node);
        cfg.max_incoming_streams = 2;
        cfg.recv_window = recv_window;
        let mut node = Node {
            tls,
            session: Session::new(cfg, Instant::from_millis(0), None),
            rx: Vec::new(),
            origin: std::time::Instant::now(),
        };
        node.flush().await?;
        Ok(node)
    }

    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.origin.elapsed().as_millis()).expect("ms"))
    }

    async fn flush(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        let now = self.now();
        while let Some(n) = self.session.poll_transmit(now, &mut buf).expect("encode") {
            self.tls.write_all(&buf[..n]).await?;
        }
        self.tls.flush().await
    }

    async fn send(&mut self, msg: &Message<'_>) {
        let mut buf = [0u8; 4096];
        let n = encode_frame(msg, &mut buf).expect("encode");
        self.tls.write_all(&buf[..n]).await.expect("write");
        self.tls.flush().await.expect("flush");
    }

    /// The next event (pings, window updates and the like are handled by
    /// the session on the way), or `Eof`.
    async fn next(&mut self) -> Ev {
        loop {
            if let Some((msg, used)) = parse_frame(&self.rx).expect("frame from the gateway") {
                let now = self.now();
                let ev = self
                    .session
                    .handle_message(now, msg)
                    .expect("gateway keeps the protocol")
                    .map(owned);
                self.rx.drain(..used);
                self.flush().await.ok();
                if let Some(ev) = ev {
                    return ev;
                }
                continue;
            }
            let mut buf = [0u8; 8192];
            let n = match tokio::time::timeout(STEP, self.tls.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("no event from the gateway within {STEP:?}"),
            };
            if n == 0 {
                return Ev::Eof;
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    /// The next event that is not a credit update.
    async fn next_significant(&mut self) -> Ev {
        loop {
            match self.next().await {
                Ev::Credit => {}
                ev => return ev,
            }
        }
    }

    /// The next event that is not about streams (the device stream may
    /// still be closing).
    async fn next_control(&mut self) -> Ev {
        loop {
            match self.next().await {
                Ev::Credit | Ev::Data { .. } | Ev::Finished { .. } | Ev::Reset { .. } => {}
                ev => return ev,
            }
        }
    }

    /// Opens a node stream to `host:port` and returns its id.
    async fn open(&mut self, host: &str, port: u16) -> u32 {
        let mut buf = [0u8; 512];
        let (id, n) = self
            .session
            .open_stream(StreamTarget::ToMesh(MeshTarget { host, port }), &mut buf)
            .expect("open");
        self.tls.write_all(&buf[..n]).await.expect("write");
        self.tls.flush().await.expect("flush");
        id
    }

    async fn send_all(&mut self, id: u32, mut data: &[u8]) {
        let mut buf = [0u8; 8192];
        while !data.is_empty() {
            let sent = self.session.send_data(id, data, &mut buf).expect("credit");
            self.tls
                .write_all(&buf[..sent.written])
                .await
                .expect("write");
            data = &data[sent.consumed..];
        }
        self.tls.flush().await.expect("flush");
    }

    async fn finish(&mut self, id: u32) {
        self.session.finish(id).expect("finish");
        self.flush().await.expect("flush");
    }

    /// Everything the gateway sends on `id` until it finishes it.
    async fn read_stream(&mut self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            match self.next_significant().await {
                Ev::Data { id: i, data } if i == id => {
                    let n = u32::try_from(data.len()).expect("len");
                    out.extend_from_slice(&data);
                    self.session.consumed(id, n).expect("consumed");
                    self.flush().await.expect("flush");
                }
                Ev::Finished { id: i } if i == id => return out,
                other => panic!("unexpected {other:?} while reading stream {id}"),
            }
        }
    }
}

// ----- helpers: the gateway, an upstream, a legacy device -----

/// Body size of `details`' `/huge`: more than socket buffers hold.
const HUGE: usize = 8 * 1024 * 1024;

/// `details`: answers every request with the XFCC header it received, a
/// 40 KiB body for `/big`, or [`HUGE`] bytes for `/huge`.
async fn details_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let body = if head.starts_with("GET /big ") {
                    "x".repeat(40 * 1024)
                } else if head.starts_with("GET /huge ") {
                    "x".repeat(HUGE)
                } else {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("x-forwarded-client-cert")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_else(|| "no-xfcc".to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// The legacy device behind the node: answers each read with `echo:` + it.
async fn legacy_device() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn write_settings(dir: &Path, details: SocketAddr, device: SocketAddr) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(policies.join("strict.yaml"), STRICT_BOOKINFO).expect("policy");
    // Only the node may read details, and only these paths.
    std::fs::write(
        policies.join("details-viewer.yaml"),
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: details-viewer
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/factory/sa/plc-gw-1, cluster.local/ns/scada/sa/hmi]
    to:
    - operation:
        methods: [GET]
        paths: [/details/*, /big, /huge]
",
    )
    .expect("policy");
    let settings = dir.join("meshgate.yaml");
    std::fs::write(
        &settings,
        format!(
            "\
trustDomain: cluster.local
listeners:
- name: http
  address: 127.0.0.1:9080
  protocol: http
- name: plc
  address: 127.0.0.1:502
  protocol: tcp
  service: plc-1.factory
policies: [policies/]
services:
- name: details
  namespace: bookinfo
  hosts: [{DETAILS}]
  ports:
  - {{number: 9080, name: http, protocol: HTTP, targetPort: 9080}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {}}}
    labels: {{app: details}}
    serviceAccount: bookinfo-details
- name: plc-1
  namespace: factory
  hosts: [plc-1.factory]
  ports:
  - {{number: 502, name: tcp-modbus, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - address: {}
    ports: {{tcp-modbus: {}}}
    labels: {{meshgate.io/edge-node: plc-gw-1}}
",
            details.port(),
            device.ip(),
            device.port()
        ),
    )
    .expect("settings");
    settings
}

fn start_gateway(dir: &Path, settings: &Path) -> Gateway {
    Gateway::start(Start {
        data_dir: &dir.join("data"),
        config: Some(settings),
        extra: vec![
            "--edge-addr".into(),
            "127.0.0.1:0".into(),
            "--listen".into(),
            "http=127.0.0.1:0".into(),
            "--listen".into(),
            "plc=127.0.0.1:0".into(),
        ],
    })
}

fn printed_addr(gw: &Gateway, prefix: &str) -> SocketAddr {
    gw.startup
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{prefix:?} not printed: {:#?}", gw.startup))
}

/// Runs the CLI in a blocking thread (it is a separate process).
async fn cli(gw: &Gateway, args: &[&str]) -> (bool, String, String) {
    let out = gw.cli(args);
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

fn token_from(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("one-time enrollment token"))
        .unwrap_or_else(|| panic!("no token printed: {stdout}"));
    lines[i + 1].trim().to_owned()
}

/// An mTLS client identity from `meshgate cert issue` (and the CA bundle).
async fn issue_client(gw: &Gateway, dir: &Path, id: &str) -> std::path::PathBuf {
    let out = dir.join(id.rsplit('/').next().expect("name"));
    let (ok, _, err) = cli(
        gw,
        &[
            "cert",
            "issue",
            "--spiffe-id",
            id,
            "--out",
            out.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert!(ok, "cert issue: {err}");
    out
}

async fn enroll(
    tunnel: SocketAddr,
    roots: &[CertificateDer<'static>],
    token: &str,
    max_record: Arc<AtomicUsize>,
) -> (Ev, Option<rcgen::KeyPair>) {
    let mut node = Node::connect(tunnel, client_config(roots, None), max_record)
        .await
        .expect("TLS without a client certificate");
    assert_eq!(node.next().await, Ev::Connected);
    let (key, csr) = key_and_csr(None);
    node.send(&Message::EnrollRequest(EnrollRequest {
        token,
        csr_der: &csr,
    }))
    .await;
    let ev = node.next().await;
    if matches!(ev, Ev::Certificate { .. }) {
        node.session.close(GoodbyeReason::Restart);
        node.flush().await.ok();
        return (ev, Some(key));
    }
    (ev, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_node_lifecycle_through_the_tunnel() {
    // The trust bundle a node is provisioned with, and an mTLS client.
    let Bed {
        dir,
        gw,
        tunnel,
        device,
        hmi,
        roots,
    } = Bed::start().await;
    let plc_listener = printed_addr(&gw, "meshgate: listening on plc ");
    let http_listener = printed_addr(&gw, "meshgate: listening on http ");
    let max_record = Arc::new(AtomicUsize::new(0));

    // STRICT holds: a plaintext call to details is refused.
    {
        let mut s = TcpStream::connect(http_listener).await.expect("connect");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {DETAILS}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(STEP, s.read_to_end(&mut buf)).await;
        assert!(
            !String::from_utf8_lossy(&buf).contains("200 OK"),
            "plaintext must fail under STRICT"
        );
    }

    // An expired token is refused.
    let (ok, out, err) = cli(
        &gw,
        &[
            "edge",
            "token",
            "create",
            "--namespace",
            "factory",
            "--name",
            "short",
            "--ttl",
            "1s",
        ],
    )
    .await;
    assert!(ok, "token create: {err}");
    let short = token_from(&out);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ev, _) = enroll(tunnel, &roots, &short, max_record.clone()).await;
    assert!(
        matches!(ev, Ev::PeerError(ErrorCode::InvalidToken, _)),
        "expired token: {ev:?}"
    );

    // Enrollment with a fresh token.
    let (ok, out, err) = cli(
        &gw,
        &[
            "edge",
            "token",
            "create",
            "--namespace",
            "factory",
            "--name",
            "plc-gw-1",
            "--listen",
            &format!("8080={DETAILS}:9080"),
        ],
    )
    .await;
    assert!(ok, "token create: {err}");
    assert!(out.contains(NODE_ID), "{out}");
    let token = token_from(&out);
    let stored = std::fs::read_to_string(dir.path().join("data/records/edge.node.plc-gw-1.rec"))
        .expect("node record");
    assert!(!stored.contains(&token), "token stored in clear");

    let (ev, key) = enroll(tunnel, &roots, &token, max_record.clone()).await;
    let Ev::Certificate {
        chain,
        roots: bundle,
        ..
    } = ev
    else {
        panic!("enrollment answered {ev:?}");
    };
    let key = key.expect("key");
    assert_eq!(uri_sans(&chain[0]), [NODE_ID], "identity from the record");
    assert_eq!(
        spki(&chain[0]),
        key.public_key_raw(),
        "issued for the CSR's key"
    );
    assert!(!bundle.is_empty());

    // The token is one-time.
    let (ev, _) = enroll(tunnel, &roots, &token, max_record.clone()).await;
    assert!(
        matches!(ev, Ev::PeerError(ErrorCode::InvalidToken, _)),
        "reused token: {ev:?}"
    );

    // Operating tunnel with the issued certificate.
    let node_chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let node_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let node_cfg = client_config(&roots, Some((node_chain.clone(), node_key.clone_key())));
    let mut node = Node::connect(tunnel, node_cfg.clone(), max_record.clone())
        .await
        .expect("mTLS tunnel");
    assert_eq!(node.next().await, Ev::Connected);
    let Ev::Config {
        version,
        listeners,
        exposed,
    } = node.next().await
    else {
        panic!("expected a configuration push");
    };
    assert_eq!(listeners, [(8080, DETAILS.to_owned(), 9080)]);
    assert_eq!(exposed, [("plc-1.factory".to_owned(), 502, device)]);
    node.send(&Message::ConfigAck(ConfigAck { version })).await;

    // A legacy HTTP request through a node stream reaches details as the
    // node (XFCC), although bookinfo is STRICT and the request names the
    // node's address as Host.
    let id = node.open(DETAILS, 9080).await;
    assert_eq!(node.next_significant().await, Ev::Accepted { id });
    node.send_all(
        id,
        b"GET /details/0 HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Like a legacy client: read the answer, then close (the gateway's
    // HTTP server treats an early half-close as the end of the request).
    let resp = String::from_utf8(node.read_stream(id).await).expect("utf-8");
    node.finish(id).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(&format!("URI={NODE_ID}")), "XFCC: {resp}");

    // AuthorizationPolicy applies to the node like to any mesh peer.
    let id = node.open(DETAILS, 9080).await;
    assert_eq!(node.next_significant().await, Ev::Accepted { id });
    node.send_all(
        id,
        b"GET /secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let resp = String::from_utf8(node.read_stream(id).await).expect("utf-8");
    node.finish(id).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("RBAC: access denied"), "{resp}");

    // A large response arrives in records within the node's cap.
    let id = node.open(DETAILS, 9080).await;
    assert_eq!(node.next_significant().await, Ev::Accepted { id });
    node.send_all(
        id,
        b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let resp = node.read_stream(id).await;
    node.finish(id).await;
    assert!(resp.len() > 40 * 1024, "{} bytes", resp.len());

    // A target outside the pushed configuration is refused.
    let id = node.open("ratings.bookinfo.svc.cluster.local", 9080).await;
    assert_eq!(
        node.next_significant().await,
        Ev::Reset {
            id,
            reason: CloseReason::Refused
        }
    );

    // An mTLS client reaches the legacy device behind the node.
    let client_cfg = client_config(
        &roots,
        Some((
            pem_certs(&hmi.join("chain.pem")),
            pem_key(&hmi.join("key.pem")),
        )),
    );
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(plc_listener).await.expect("connect");
        let name = ServerName::try_from("plc-1.factory").expect("name");
        let mut tls = TlsConnector::from(client_cfg)
            .connect(name, tcp)
            .await
            .expect("mTLS to the gateway");
        tls.write_all(b"read coil 7").await.expect("write");
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(STEP, tls.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let Ev::StreamOpened { id, host, port } = node.next_significant().await else {
        panic!("expected the gateway to open a device stream");
    };
    assert_eq!((host.as_str(), port), ("plc-1.factory", 502));
    let mut dev = TcpStream::connect(device).await.expect("device");
    node.session.accept(id).expect("accept");
    node.flush().await.expect("flush");
    let Ev::Data { data, .. } = node.next_significant().await else {
        panic!("expected the client's bytes");
    };
    assert_eq!(data, b"read coil 7");
    node.session
        .consumed(id, u32::try_from(data.len()).expect("len"))
        .expect("consumed");
    dev.write_all(&data).await.expect("to device");
    let mut buf = [0u8; 64];
    let n = dev.read(&mut buf).await.expect("from device");
    node.send_all(id, &buf[..n]).await;
    assert_eq!(client.await.expect("client task"), "echo:read coil 7");

    // Renewal: the CSR asks for another identity; the certificate carries
    // the node's.
    let (new_key, csr) = key_and_csr(Some("spiffe://cluster.local/ns/kube-system/sa/admin"));
    node.send(&Message::RenewRequest(RenewRequest { csr_der: &csr }))
        .await;
    let ev = node.next_control().await;
    let Ev::Certificate { chain: renewed, .. } = ev else {
        panic!("expected a renewed certificate, got {ev:?}");
    };
    assert_eq!(uri_sans(&renewed[0]), [NODE_ID]);
    assert_eq!(spki(&renewed[0]), new_key.public_key_raw());

    // Every record the gateway sent fits the node's buffer, and the cap was
    // actually reached (the 40 KiB body would otherwise use bigger ones).
    let max = max_record.load(Ordering::Relaxed);
    assert!(max <= RECORD_CAP, "a {max}-byte TLS record exceeds the cap");
    assert!(
        max > 3000,
        "largest record {max} bytes: the cap was not exercised"
    );

    // Revocation (through the admin API) closes the tunnel within a second ...
    let admin_token = gw
        .token
        .clone()
        .expect("admin token printed at first start");
    let started = std::time::Instant::now();
    let (status, body) = admin_support::http(
        &gw.admin_addr,
        "POST",
        "/api/v1/edge/nodes/plc-gw-1/revoke",
        Some(&admin_token),
        Some(("application/json", r#"{"reason":"stolen"}"#)),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"revoked""#), "{body}");
    let ev = node.next_control().await;
    assert_eq!(ev, Ev::Revoked);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "revocation took {elapsed:?}"
    );
    assert_eq!(node.next().await, Ev::Eof);

    // ... and the node cannot come back: the TLS layer refuses its revoked
    // certificate (alert, end of stream), or the tunnel says `Revoked`.
    let mut again = Node::connect(tunnel, node_cfg, max_record.clone())
        .await
        .expect("a TLS 1.3 client finishes its side of the handshake");
    match again.next().await {
        Ev::Eof => {}
        Ev::Connected => assert_eq!(again.next().await, Ev::Revoked),
        other => panic!("revoked node reconnected: {other:?}"),
    }

    let (ok, out, _) = cli(&gw, &["edge", "list"]).await;
    assert!(ok);
    assert!(out.contains("plc-gw-1") && out.contains("revoked"), "{out}");
}

/// A gateway with `details`, the legacy device service and the
/// policies of [`write_settings`], and an mTLS client identity (hmi).
struct Bed {
    dir: tempfile::TempDir,
    gw: Gateway,
    tunnel: SocketAddr,
    /// The legacy device (behind node plc-gw-1 in the settings).
    device: SocketAddr,
    /// Directory of hmi's certificate files.
    hmi: std::path::PathBuf,
    /// The trust bundle.
    roots: Vec<CertificateDer<'static>>,
}

impl Bed {
    async fn start() -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let details = details_upstream().await;
        let device = legacy_device().await;
        let settings = write_settings(dir.path(), details, device);
        let gw = start_gateway(dir.path(), &settings);
        let tunnel = printed_addr(&gw, "meshgate: edge tunnel listening on ");
        let hmi = issue_client(&gw, dir.path(), "spiffe://cluster.local/ns/scada/sa/hmi").await;
        let roots = pem_certs(&hmi.join("ca.pem"));
        Bed {
            dir,
            gw,
            tunnel,
            device,
            hmi,
            roots,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_certificate_that_is_not_a_node_is_refused() {
    let bed = Bed::start().await;
    let Bed { hmi, roots, .. } = &bed;
    let tunnel = bed.tunnel;
    let cfg = client_config(
        roots,
        Some((
            pem_certs(&hmi.join("chain.pem")),
            pem_key(&hmi.join("key.pem")),
        )),
    );
    let mut node = Node::connect(tunnel, cfg, Arc::new(AtomicUsize::new(0)))
        .await
        .expect("TLS completes; the tunnel refuses");
    assert_eq!(node.next().await, Ev::Connected);
    let ev = node.next().await;
    assert!(
        matches!(&ev, Ev::PeerError(ErrorCode::Protocol, d) if d.contains("not an enrolled edge node")),
        "{ev:?}"
    );
    assert_eq!(node.next().await, Ev::Eof);

    // A node-shaped request on an enrollment connection without a token
    // that exists gets InvalidToken, and renewal is not available there.
    let mut node = Node::connect(tunnel, client_config(roots, None), Arc::default())
        .await
        .expect("TLS");
    assert_eq!(node.next().await, Ev::Connected);
    let (_, csr) = key_and_csr(None);
    node.send(&Message::RenewRequest(RenewRequest { csr_der: &csr }))
        .await;
    let ev = node.next().await;
    assert!(
        matches!(ev, Ev::PeerError(ErrorCode::Protocol, _)),
        "{ev:?}"
    );
}

// ----- hardening (issue 10) -----

/// Creates node `name` with a token, enrolls it and returns its
/// certificate chain (leaf first) and key.
async fn enrolled(
    gw: &Gateway,
    tunnel: SocketAddr,
    roots: &[CertificateDer<'static>],
    name: &str,
) -> (Vec<CertificateDer<'static>>, rcgen::KeyPair) {
    let (ok, out, err) = cli(
        gw,
        &[
            "edge",
            "token",
            "create",
            "--namespace",
            "factory",
            "--name",
            name,
            "--listen",
            &format!("8080={DETAILS}:9080"),
        ],
    )
    .await;
    assert!(ok, "token create: {err}");
    let (ev, key) = enroll(tunnel, roots, &token_from(&out), Arc::default()).await;
    let Ev::Certificate { chain, .. } = ev else {
        panic!("enrollment answered {ev:?}");
    };
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    (chain, key.expect("key"))
}

/// An operating tunnel with `chain`/`key`, through hello and the
/// configuration push (acked); or the event that ended it.
async fn operate_with(
    tunnel: SocketAddr,
    roots: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    key: &rcgen::KeyPair,
    recv_window: u32,
) -> Result<Node, Ev> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let cfg = client_config(roots, Some((chain.to_vec(), key)));
    let mut node = Node::connect_with_window(tunnel, cfg, Arc::default(), recv_window)
        .await
        .expect("TLS with a certificate of the mesh CA");
    assert_eq!(node.next().await, Ev::Connected);
    match node.next().await {
        Ev::Config { version, .. } => {
            node.send(&Message::ConfigAck(ConfigAck { version })).await;
            Ok(node)
        }
        other => Err(other),
    }
}

fn not_issued_to_node(ev: &Ev) -> bool {
    matches!(ev, Ev::PeerError(ErrorCode::Protocol, d) if d.contains("not issued to this edge node"))
}

/// The tunnel binds a node to the certificates the gateway issued to it
/// (enrollment and renewal), not to its SPIFFE ID alone: a mesh
/// certificate minted for the node's identity with `meshgate cert issue`,
/// or one two renewals old, is refused; the current and the previous one
/// (a renewal the node may not have stored) are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_issued_to_the_node_open_its_tunnel() {
    let bed = Bed::start().await;
    let Bed { gw, roots, .. } = &bed;
    let tunnel = bed.tunnel;
    let (cert0, key0) = enrolled(gw, tunnel, roots, "plc-gw-1").await;

    // Same SPIFFE ID, same CA, valid, not revoked, but minted outside
    // enrollment: not the node.
    let minted = issue_client(gw, bed.dir.path(), NODE_ID).await;
    let minted_key = std::fs::read_to_string(minted.join("key.pem")).expect("key");
    let minted_key = rcgen::KeyPair::from_pem(&minted_key).expect("PEM key");
    let refused = operate_with(
        tunnel,
        roots,
        &pem_certs(&minted.join("chain.pem")),
        &minted_key,
        16 * 1024,
    )
    .await
    .err()
    .expect("a minted certificate must not open the node's tunnel");
    assert!(not_issued_to_node(&refused), "{refused:?}");

    // The enrolled certificate works; two renewals over it.
    let mut node = operate_with(tunnel, roots, &cert0, &key0, 16 * 1024)
        .await
        .expect("the enrolled certificate opens the tunnel");
    let mut issued = Vec::new();
    for _ in 0..2 {
        let (key, csr) = key_and_csr(None);
        node.send(&Message::RenewRequest(RenewRequest { csr_der: &csr }))
            .await;
        let Ev::Certificate { chain, .. } = node.next_control().await else {
            panic!("expected a renewed certificate");
        };
        issued.push((
            chain
                .into_iter()
                .map(CertificateDer::from)
                .collect::<Vec<_>>(),
            key,
        ));
    }
    drop(node);
    let (cert1, key1) = &issued[0];
    let (cert2, key2) = &issued[1];
    let refused = operate_with(tunnel, roots, &cert0, &key0, 16 * 1024)
        .await
        .err()
        .expect("a certificate two renewals old must not open the tunnel");
    assert!(not_issued_to_node(&refused), "{refused:?}");
    operate_with(tunnel, roots, cert1, key1, 16 * 1024)
        .await
        .expect("the previous certificate still opens the tunnel");
    operate_with(tunnel, roots, cert2, key2, 16 * 1024)
        .await
        .expect("the current certificate opens the tunnel");
}

/// The gateway's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// One legitimate mTLS request to details through the HTTP listener:
/// `Ok(latency)` for a 200.
async fn mtls_details(http: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Duration, String> {
    let started = std::time::Instant::now();
    let req = async {
        let tcp = TcpStream::connect(http).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(DETAILS).map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(
            format!("GET /details/1 HTTP/1.1\r\nHost: {DETAILS}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            Ok(started.elapsed())
        } else {
            Err(text.lines().next().unwrap_or("no answer").to_owned())
        }
    };
    tokio::time::timeout(Duration::from_secs(5), req)
        .await
        .unwrap_or_else(|_| Err("no answer in 5 s".to_owned()))
}

/// Issue 10: an edge node that stops reading its tunnel (with four node
/// streams asking for 8 MiB each and credit for all of it, and mesh clients of the device behind
/// it knocking) — legitimate mTLS clients keep being served (success rate
/// and p99 measured), the gateway's memory stays bounded, the stalled
/// tunnel is dropped after the write-stall timeout, and the device's mesh
/// clients then fail promptly instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reading_its_tunnel_does_not_hurt_mesh_clients() {
    let bed = Bed::start().await;
    let Bed { gw, hmi, roots, .. } = &bed;
    let tunnel = bed.tunnel;
    let http_listener = printed_addr(gw, "meshgate: listening on http ");
    let plc_listener = printed_addr(gw, "meshgate: listening on plc ");
    let hmi_cfg = client_config(
        roots,
        Some((
            pem_certs(&hmi.join("chain.pem")),
            pem_key(&hmi.join("key.pem")),
        )),
    );
    let (chain, key) = enrolled(gw, tunnel, roots, "plc-gw-1").await;
    // Credit for a whole `/huge` answer per stream: the gateway may send
    // far more than the sockets between it and the node can hold.
    let window = u32::try_from(HUGE).expect("window");
    let mut node = operate_with(tunnel, roots, &chain, &key, window)
        .await
        .expect("tunnel");
    let pid = gw.child.id();
    // Warm up the legitimate path before the baseline.
    for _ in 0..20 {
        mtls_details(http_listener, hmi_cfg.clone())
            .await
            .expect("details before the stall");
    }
    let rss_before = rss_kib(pid);

    // The stall: four node streams each asking for 8 MiB; then the node
    // reads nothing more but keeps its connection.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(node.open(DETAILS, 9080).await);
    }
    let mut accepted = 0;
    while accepted < ids.len() {
        if let Ev::Accepted { .. } = node.next_significant().await {
            accepted += 1;
        }
    }
    for id in &ids {
        node.send_all(
            *id,
            b"GET /huge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
    }
    let stall_start = std::time::Instant::now();
    eprintln!("edge_tunnel: node stopped reading its tunnel");

    // Mesh clients of the device behind the stalled node.
    let knockers: Vec<_> = (0..16)
        .map(|_| {
            let cfg = hmi_cfg.clone();
            tokio::spawn(async move {
                let try_once = async {
                    let tcp = TcpStream::connect(plc_listener).await?;
                    let name = ServerName::try_from("plc-1.factory").expect("name");
                    let mut tls = TlsConnector::from(cfg).connect(name, tcp).await?;
                    tls.write_all(b"read coil 7").await?;
                    let mut buf = [0u8; 64];
                    tls.read(&mut buf).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), try_once).await;
            })
        })
        .collect();

    // Legitimate mTLS clients during the stall: 4 concurrent loops.
    let window = Duration::from_secs(8);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let cfg = hmi_cfg.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let t0 = std::time::Instant::now();
                while t0.elapsed() < window {
                    out.push(mtls_details(http_listener, cfg.clone()).await);
                }
                out
            })
        })
        .collect();
    let mut peak = rss_kib(pid);
    let mut results = Vec::new();
    for c in clients {
        results.extend(c.await.expect("client task"));
        peak = peak.max(rss_kib(pid));
    }
    let ok: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut lat = ok.clone();
    lat.sort();
    let p99 = lat
        .get((lat.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let rate = ok.len() as f64 / results.len().max(1) as f64;
    eprintln!(
        "edge_tunnel: during the stall: {} of {} legitimate mTLS requests OK ({:.2} %), p99 {} ms; gateway RSS {} KiB -> peak {} KiB",
        ok.len(),
        results.len(),
        rate * 100.0,
        p99.as_millis(),
        rss_before,
        peak
    );
    assert!(
        results.len() >= 40,
        "only {} requests in {window:?}",
        results.len()
    );
    assert!(rate >= 0.99, "success {rate}: {failed:?}");
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "gateway memory grew by {} KiB",
        peak - rss_before
    );

    // The stalled tunnel is dropped (write-stall timeout, 10 s) ...
    let dropped = admin_support::eventually(Duration::from_secs(20), || {
        let (status, body) = gw.get("/api/v1/edge/nodes/plc-gw-1", gw.token.as_deref());
        status == 200 && body.contains("\"connected\":false")
    });
    assert!(
        dropped,
        "the stalled tunnel is still up: {:?}\n{}",
        gw.get("/api/v1/edge/nodes/plc-gw-1", gw.token.as_deref()),
        gw.more_output().join("\n")
    );
    eprintln!(
        "edge_tunnel: stalled tunnel dropped {:.1} s after the node stopped reading",
        stall_start.elapsed().as_secs_f64()
    );
    // ... every mesh client of its device got an answer or an error ...
    for k in knockers {
        tokio::time::timeout(Duration::from_secs(15), k)
            .await
            .expect("a device client still hangs")
            .expect("knocker task");
    }
    // ... and a new one fails promptly.
    let t = std::time::Instant::now();
    let tcp = TcpStream::connect(plc_listener).await.expect("connect");
    let name = ServerName::try_from("plc-1.factory").expect("name");
    let attempt = async {
        let mut tls = TlsConnector::from(hmi_cfg.clone())
            .connect(name, tcp)
            .await?;
        tls.write_all(b"read coil 7").await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    };
    let r = tokio::time::timeout(Duration::from_secs(5), attempt).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "device client after the drop: {r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let rss_after = rss_kib(pid);
    eprintln!("edge_tunnel: gateway RSS after the drop {rss_after} KiB");
    drop(node);
}
