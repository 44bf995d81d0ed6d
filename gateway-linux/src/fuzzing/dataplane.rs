//! The data plane on loopback sockets, fed by the fuzzer.
//!
//! [`Harness::get`] starts, once per process, a [`DataPlane`] with four
//! listeners in front of recording upstreams:
//!
//! | listener              | protocol | routes                                   |
//! |-----------------------|----------|------------------------------------------|
//! | [`Listener::Http`]    | HTTP     | by SNI / Host: [`OPEN_HOST`] (PERMISSIVE), [`STRICT_HOST`] (STRICT), [`AUTHZ_HOST`] (ALLOW only [`PRODUCTPAGE_ID`]) |
//! | [`Listener::TcpSni`]  | TCP      | by SNI: [`PASSTHROUGH_HOST`] (DISABLE), [`STRICT_TCP_HOST`] (STRICT) |
//! | [`Listener::TcpPassthrough`] | TCP | always [`PASSTHROUGH_HOST`] (DISABLE)  |
//! | [`Listener::TcpStrict`] | TCP    | always [`STRICT_TCP_HOST`] (STRICT)       |
//!
//! Every connection is made from its own loopback source address
//! (127.x.y.z), so a request an upstream records can be tied, through the
//! last `x-forwarded-for` element the gateway appends, to the connection
//! and client identity it came from — even when it arrives late.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshgate_config::policy::{Policy, parse_policies};
use meshgate_core::policy::{MeshConfig, PolicySet};
use meshgate_core::time::UnixTime;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

use crate::dataplane::snapshot::{
    Endpoint, EndpointAddress, ServicePort, ServiceSpec, UpstreamSecurity,
};
use crate::dataplane::{
    AccessLogSink, DataPlane, Identity, ListenerSpec, Options, Protocol, Snapshot,
};

/// The gateway's own SPIFFE ID (the XFCC `By=` element).
pub const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
/// The only principal the AuthorizationPolicy of [`AUTHZ_HOST`] allows.
pub const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
/// Another mesh workload: trusted, but not allowed to [`AUTHZ_HOST`].
pub const SLEEP_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/sleep";
/// HTTP, namespace `open`: PERMISSIVE (no policy).
pub const OPEN_HOST: &str = "open.fuzz.svc.cluster.local";
/// HTTP, namespace `locked`: STRICT.
pub const STRICT_HOST: &str = "strict.fuzz.svc.cluster.local";
/// HTTP, namespace `authz`: PERMISSIVE, ALLOW only [`PRODUCTPAGE_ID`].
pub const AUTHZ_HOST: &str = "authz.fuzz.svc.cluster.local";
/// TCP, namespace `legacy`: DISABLE (TLS passes through untouched).
pub const PASSTHROUGH_HOST: &str = "passthrough.fuzz.svc.cluster.local";
/// TCP, namespace `locked`: STRICT.
pub const STRICT_TCP_HOST: &str = "strict-tcp.fuzz.svc.cluster.local";
/// A name no service has (the gateway's certificate still covers it, so a
/// TLS client can connect with it as SNI).
pub const UNKNOWN_HOST: &str = "unknown.fuzz.svc.cluster.local";

/// The configured (routing) ports of the listeners.
const HTTP_PORT: u16 = 9080;
const TCP_PORT: u16 = 9443;

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: locked}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: off, namespace: legacy}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-productpage, namespace: authz}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]
"#;

/// Most bytes read back from the gateway per connection.
const MAX_RESPONSE: usize = 1 << 20;
/// How long one exchange may take before the client gives up. Far above
/// anything a working gateway needs for the small inputs a fuzzer sends.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many past connections are remembered for late upstream records.
const REMEMBERED: usize = 4096;

/// The gateway listener a connection goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// HTTP, routed per request by Host/`:authority` (TLS: SNI first).
    Http,
    /// TCP, routed by SNI.
    TcpSni,
    /// TCP bound to [`PASSTHROUGH_HOST`].
    TcpPassthrough,
    /// TCP bound to [`STRICT_TCP_HOST`].
    TcpStrict,
}

impl Listener {
    /// All listeners, for picking one from a fuzz byte.
    pub const ALL: [Listener; 4] = [
        Listener::Http,
        Listener::TcpSni,
        Listener::TcpPassthrough,
        Listener::TcpStrict,
    ];
}

/// What the client does on its connection before sending the fuzz bytes.
#[derive(Debug, Clone)]
pub enum Client {
    /// Nothing: the bytes are the first thing on the wire (plaintext, or a
    /// hand-made TLS record the sniffer has to classify).
    Raw,
    /// A rustls TLS 1.3 handshake first, then the bytes as application
    /// data.
    Tls {
        /// SNI to send; `None` sends none (the client names the gateway by
        /// IP address).
        sni: Option<&'static str>,
        /// ALPN protocols offered.
        alpn: Vec<Vec<u8>>,
        /// The client certificate, if any.
        cert: Option<ClientCert>,
    },
}

/// A client certificate and key issued by the harness's CA.
#[derive(Debug)]
pub struct ClientCert {
    /// The leaf, DER.
    pub der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientCert {
    fn clone(&self) -> Self {
        Self {
            der: self.der.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientCert {
    /// Hex SHA-256 of the leaf: what the gateway must put in XFCC `Hash=`.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.der.as_ref()))
    }
}

/// How a connection went, from the client's side.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The connection's source address (the last XFF element upstream).
    pub source: IpAddr,
    /// Whether the TLS handshake (if any) completed.
    pub handshake_ok: bool,
    /// The first bytes the gateway sent back (at most 1 MiB).
    pub response: Vec<u8>,
    /// Whether the gateway closed the connection within the time limit
    /// after the client finished sending.
    pub closed: bool,
}

/// What the client of a connection was, as remembered by the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The listener it went to.
    pub listener: Listener,
    /// Whether the client completed a TLS handshake.
    pub tls: bool,
    /// The SHA-256 (hex) of the client certificate presented, if any.
    pub cert_sha256: Option<String>,
    /// Every byte the client sent, in order (TLS: the plaintext).
    pub sent: Vec<u8>,
}

/// One HTTP request that reached an upstream.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The service host whose upstream received it.
    pub service: &'static str,
    /// Header names (lowercase) and raw values, in order.
    pub headers: Headers,
    /// The connection it came from, found by the last `x-forwarded-for`
    /// element; `None` if that element names no connection the harness
    /// made (itself a finding: the gateway must append the real source).
    pub conn: Option<ConnInfo>,
}

impl SeenRequest {
    /// All values of header `name` (lowercase).
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// Bytes that reached a TCP upstream on one connection.
#[derive(Debug, Clone)]
pub struct SeenStream {
    /// The service host whose upstream received them.
    pub service: &'static str,
    /// What arrived, up to the upstream's EOF (at most 1 MiB).
    pub bytes: Vec<u8>,
}

/// Header names (lowercase) and raw values, in order.
pub type Headers = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct Recorded {
    requests: Vec<(&'static str, Headers)>,
    streams: Vec<SeenStream>,
}

/// The running data plane, its upstreams and its PKI.
pub struct Harness {
    rt: Runtime,
    addrs: HashMap<Listener, SocketAddr>,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    client_key: KeyPair,
    productpage: ClientCert,
    sleep: ClientCert,
    recorded: Arc<Mutex<Recorded>>,
    conns: Mutex<(HashMap<IpAddr, ConnInfo>, VecDeque<IpAddr>)>,
    next_source: Mutex<u32>,
    // Keeps the data plane (and its listeners' tasks) alive.
    _dp: DataPlane,
}

impl core::fmt::Debug for Harness {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Harness")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Harness {
    /// The process-wide harness, started on first use.
    pub fn get() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(Harness::start)
    }

    fn start() -> Harness {
        // One thread: the gateway's tasks, the upstreams and the client all
        // run inside `block_on`, so every run of an input is deterministic
        // up to the kernel's socket scheduling.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "meshgate fuzz CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = params.self_signed(&key).expect("ca cert");
        let ca_der = ca_cert.der().clone();
        let ca = Issuer::new(params, key);
        let client_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");

        let gw_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut sans = vec![SanType::URI(GATEWAY_ID.try_into().expect("uri"))];
        for h in [
            OPEN_HOST,
            STRICT_HOST,
            AUTHZ_HOST,
            PASSTHROUGH_HOST,
            STRICT_TCP_HOST,
            UNKNOWN_HOST,
        ] {
            sans.push(SanType::DnsName(h.try_into().expect("dns")));
        }
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let gw = leaf_params(sans)
            .signed_by(&gw_key, &ca)
            .expect("gateway leaf");
        let identity = Identity::new(
            vec![gw.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(gw_key.serialize_der())),
            core::slice::from_ref(&ca_der),
        )
        .expect("gateway identity");

        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let (dp, addrs) = rt.block_on(async {
            let mut services = Vec::new();
            for (host, ns, port, raw) in [
                (OPEN_HOST, "open", HTTP_PORT, false),
                (STRICT_HOST, "locked", HTTP_PORT, false),
                (AUTHZ_HOST, "authz", HTTP_PORT, false),
                (PASSTHROUGH_HOST, "legacy", TCP_PORT, true),
                (STRICT_TCP_HOST, "locked", TCP_PORT, true),
            ] {
                let upstream = if raw {
                    raw_upstream(host, recorded.clone()).await
                } else {
                    http_upstream(host, recorded.clone()).await
                };
                services.push(ServiceSpec {
                    hosts: vec![host.to_owned()],
                    namespace: ns.to_owned(),
                    labels: vec![("app".to_owned(), host.to_owned())],
                    ports: vec![ServicePort {
                        number: port,
                        target_port: port,
                        endpoints: vec![Endpoint {
                            address: EndpointAddress::Ip(upstream),
                            upstream: UpstreamSecurity::Plaintext,
                        }],
                    }],
                });
            }
            let snapshot = Snapshot::build(1, services, policy_set()).expect("snapshot");
            let dp = DataPlane::new(
                Arc::new(ArcSwap::from_pointee(snapshot)),
                Arc::new(ArcSwap::from_pointee(identity)),
                // The production limits, with shorter waits: a fuzz input
                // that stalls should cost seconds, not minutes.
                Options {
                    head_timeout: Duration::from_secs(3),
                    upstream_connect_timeout: Duration::from_secs(3),
                    ..Options::default()
                },
                AccessLogSink::Discard,
            );
            let mut addrs = HashMap::new();
            for (listener, protocol, port, service) in [
                (Listener::Http, Protocol::Http, HTTP_PORT, None),
                (Listener::TcpSni, Protocol::Tcp, TCP_PORT, None),
                (
                    Listener::TcpPassthrough,
                    Protocol::Tcp,
                    TCP_PORT,
                    Some(PASSTHROUGH_HOST),
                ),
                (
                    Listener::TcpStrict,
                    Protocol::Tcp,
                    TCP_PORT,
                    Some(STRICT_TCP_HOST),
                ),
            ] {
                let spec = ListenerSpec {
                    name: format!("{listener:?}"),
                    port,
                    protocol,
                    service: service.map(str::to_owned),
                };
                let (addr, _task) = dp
                    .bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0), spec)
                    .await
                    .expect("bind listener");
                addrs.insert(listener, addr);
            }
            (dp, addrs)
        });
        let productpage = issue(&ca, &client_key, &[PRODUCTPAGE_ID]).expect("productpage cert");
        let sleep = issue(&ca, &client_key, &[SLEEP_ID]).expect("sleep certificate");
        Harness {
            rt,
            addrs,
            ca,
            ca_der,
            client_key,
            productpage,
            sleep,
            recorded,
            conns: Mutex::new((HashMap::new(), VecDeque::new())),
            next_source: Mutex::new(0),
            _dp: dp,
        }
    }

    /// The client certificate of [`PRODUCTPAGE_ID`].
    pub fn productpage(&self) -> &ClientCert {
        &self.productpage
    }

    /// The client certificate of [`SLEEP_ID`].
    pub fn sleep(&self) -> &ClientCert {
        &self.sleep
    }

    /// A client certificate from the mesh CA with `uris` as its URI SANs,
    /// or `None` if a URI is not an IA5 string (rcgen refuses to encode
    /// it, so no certificate could carry it).
    pub fn issue_client(&self, uris: &[&str]) -> Option<ClientCert> {
        issue(&self.ca, &self.client_key, uris)
    }

    /// Whether `bytes` is a prefix of what some recent connection sent:
    /// what a TCP upstream receives must come from a client, unchanged.
    pub fn was_sent(&self, bytes: &[u8]) -> bool {
        lock(&self.conns)
            .0
            .values()
            .any(|c| c.sent.starts_with(bytes))
    }

    /// Connects to `listener` as `client`, sends `bytes`, half-closes and
    /// reads what the gateway sends back until it closes the connection.
    pub fn exchange(&self, listener: Listener, client: &Client, bytes: &[u8]) -> Exchange {
        let source = self.next_source();
        let addr = self.addrs[&listener];
        let (tls, cert_sha256) = match client {
            Client::Raw => (false, None),
            Client::Tls { cert, .. } => (true, cert.as_ref().map(ClientCert::sha256_hex)),
        };
        self.remember(
            source,
            ConnInfo {
                listener,
                tls,
                cert_sha256,
                sent: bytes.to_vec(),
            },
        );
        self.rt.block_on(async {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(source, 0))
                .expect("bind client source address");
            let Ok(Ok(stream)) = tokio::time::timeout(EXCHANGE_TIMEOUT, socket.connect(addr)).await
            else {
                return Exchange {
                    source,
                    handshake_ok: false,
                    response: Vec::new(),
                    closed: false,
                };
            };
            let _ = stream.set_nodelay(true);
            match client {
                Client::Raw => talk(stream, source, true, bytes).await,
                Client::Tls { sni, alpn, cert } => {
                    let config = self.client_config(alpn, cert.as_ref());
                    let name = match sni {
                        Some(s) => ServerName::try_from(*s).expect("static DNS name"),
                        None => ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()),
                    };
                    let connector = tokio_rustls::TlsConnector::from(config);
                    match tokio::time::timeout(EXCHANGE_TIMEOUT, connector.connect(name, stream))
                        .await
                    {
                        Ok(Ok(tls)) => talk(tls, source, true, bytes).await,
                        _ => Exchange {
                            source,
                            handshake_ok: false,
                            response: Vec::new(),
                            closed: true,
                        },
                    }
                }
            }
        })
    }

    /// Takes what the upstreams recorded since the last call.
    pub fn take_seen(&self) -> (Vec<SeenRequest>, Vec<SeenStream>) {
        let recorded = core::mem::take(&mut *lock(&self.recorded));
        let conns = lock(&self.conns);
        let requests = recorded
            .requests
            .into_iter()
            .map(|(service, headers)| {
                let conn = last_xff(&headers).and_then(|ip| conns.0.get(&ip).cloned());
                SeenRequest {
                    service,
                    headers,
                    conn,
                }
            })
            .collect();
        (requests, recorded.streams)
    }

    /// Lets the gateway's and upstreams' tasks run for `d` (e.g. so that a
    /// request forwarded just before its client went away is recorded).
    pub fn settle(&self, d: Duration) {
        self.rt.block_on(tokio::time::sleep(d));
    }

    fn client_config(
        &self,
        alpn: &[Vec<u8>],
        cert: Option<&ClientCert>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key.clone_key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.to_vec();
        Arc::new(config)
    }

    /// A new loopback source address: 127.x.y.z, never 127.0.0.1 (so a
    /// stray connection from elsewhere cannot be mistaken for ours), wrapping
    /// after 2^24 - 2 connections — far beyond the remembered window.
    fn next_source(&self) -> IpAddr {
        let mut n = lock(&self.next_source);
        *n = (*n % 0x00ff_fffe) + 1;
        let v = *n + 1;
        let [_, b, c, d] = v.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(127, b, c, d))
    }

    fn remember(&self, source: IpAddr, info: ConnInfo) {
        let mut conns = lock(&self.conns);
        let (map, order) = &mut *conns;
        if order.len() >= REMEMBERED
            && let Some(old) = order.pop_front()
        {
            map.remove(&old);
        }
        map.insert(source, info);
        order.push_back(source);
    }
}

fn issue(ca: &Issuer<'static, KeyPair>, key: &KeyPair, uris: &[&str]) -> Option<ClientCert> {
    let mut sans = Vec::with_capacity(uris.len());
    for u in uris {
        sans.push(SanType::URI((*u).try_into().ok()?));
    }
    let cert = leaf_params(sans).signed_by(key, ca).ok()?;
    Some(ClientCert {
        der: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

fn leaf_params(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "fuzz");
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

fn policy_set() -> Arc<PolicySet> {
    let parsed = parse_policies("fuzz.yaml", POLICIES, UnixTime::from_secs(1)).expect("policies");
    let (mut pas, mut aps) = (Vec::new(), Vec::new());
    for p in parsed {
        match p {
            Policy::PeerAuthentication(pa) => pas.push(pa),
            Policy::AuthorizationPolicy(ap) => aps.push(ap),
        }
    }
    Arc::new(PolicySet::new(MeshConfig::default(), &pas, &aps).expect("policy set"))
}

/// The last element of the (single) `x-forwarded-for` header.
fn last_xff(headers: &Headers) -> Option<IpAddr> {
    let (_, v) = headers.iter().rfind(|(n, _)| n == "x-forwarded-for")?;
    let s = core::str::from_utf8(v).ok()?;
    s.rsplit(',').next()?.trim().parse().ok()
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    source: IpAddr,
    handshake_ok: bool,
    bytes: &[u8],
) -> Exchange {
    // The gateway may refuse and close before reading everything; a write
    // error is an expected outcome, not a harness failure.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut eof = false;
    // Let the gateway act on everything sent before half-closing: hyper
    // drops an in-flight request when it reads EOF, so closing at once
    // would keep requests from ever reaching an upstream. Everything runs
    // on this one-thread runtime over loopback, so "nothing happened for
    // QUIET rounds of the scheduler (each polls the I/O driver)" means the
    // gateway and the upstreams are idle — without a wall-clock wait.
    const QUIET: u32 = 64;
    let mut quiet = 0;
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        while quiet < QUIET {
            tokio::select! {
                biased;
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => {
                        eof = true;
                        return;
                    }
                    Ok(n) => {
                        let room = MAX_RESPONSE.saturating_sub(response.len());
                        response.extend_from_slice(&buf[..n.min(room)]);
                        quiet = 0;
                    }
                },
                () = tokio::task::yield_now() => quiet += 1,
            }
        }
    })
    .await;
    if !eof {
        let _ = stream.shutdown().await;
    }
    let closed = eof
        || tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let room = MAX_RESPONSE.saturating_sub(response.len());
                        response.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        })
        .await
        .is_ok();
    Exchange {
        source,
        handshake_ok,
        response,
        closed,
    }
}

/// An HTTP/1.1 upstream that records every request's headers and answers
/// `200 ok`.
async fn http_upstream(service: &'static str, recorded: Arc<Mutex<Recorded>>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                            .collect();
                        lock(&recorded).requests.push((service, headers));
                        let _ = req.into_body().collect().await;
                        Ok::<_, core::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP upstream that records what arrives on each connection until EOF,
/// then closes.
async fn raw_upstream(service: &'static str, recorded: Arc<Mutex<Recorded>>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || bytes.len() >= MAX_RESPONSE {
                            break;
                        }
                        bytes.extend_from_slice(&buf[..n]);
                    }
                })
                .await;
                lock(&recorded).streams.push(SeenStream { service, bytes });
            });
        }
    });
    addr
}
