//! Keep-alive on both sides: idle client connections parked between
//! requests (idle timeout distinct from the head timeout, pipelining,
//! requests right behind the TLS handshake), and upstream connections
//! reused across requests but never across identities.

use core::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::dataplane::snapshot::UpstreamSecurity;

/// Connections and requests an upstream saw.
#[derive(Clone, Default)]
struct Counts {
    conns: Arc<AtomicUsize>,
    reqs: Arc<AtomicUsize>,
}

impl Counts {
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    fn reqs(&self) -> usize {
        self.reqs.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 upstream answering `200 ok` with keep-alive, counting
/// connections and requests; with `tls` it requires mTLS like a sidecar.
async fn counting_upstream(tls: Option<(&Leaf, &Pki)>) -> (SocketAddr, Counts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Counts::default();
    let acceptor = tls.map(|(leaf, pki)| sidecar_acceptor(leaf, pki));
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.conns.fetch_add(1, Ordering::SeqCst);
            let reqs = c.reqs.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let reqs = reqs.clone();
                    async move {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let _ = req.into_body().collect().await;
                        Ok::<_, core::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    (addr, counts)
}

async fn gateway_to(up: SocketAddr, upstream: UpstreamSecurity, options: Options) -> Gateway {
    let svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        up,
        upstream,
    );
    Gateway::start_with(
        Pki::new("mesh CA"),
        vec![svc],
        STRICT_NS,
        Protocol::Http,
        None,
        options,
    )
    .await
}

/// A rustls client stream to the gateway presenting `leaf`.
async fn tls_client(
    gw: &Gateway,
    leaf: &Leaf,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(gw.pki.ca_der.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![leaf.der.clone()], leaf.key.clone_key())
    .expect("client config");
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(DETAILS_HOST).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("mTLS handshake")
}

fn get(close: bool) -> String {
    format!(
        "GET / HTTP/1.1\r\nhost: {DETAILS_HOST}:9080\r\n{}\r\n",
        if close { "connection: close\r\n" } else { "" }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_outlives_head_timeout_and_reuses_the_upstream() {
    let (up, counts) = counting_upstream(None).await;
    // Shorter than the longest parking grace: the connection must park
    // before hyper's head timer (which runs while it is attached) fires.
    let options = Options {
        head_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(5),
        ..Options::default()
    };
    let gw = gateway_to(up, UpstreamSecurity::Plaintext, options).await;
    let mut client = MtlsClient::connect(gw.addr, &gw.pki, &gw.productpage, DETAILS_HOST).await;
    for i in 0..4 {
        assert_eq!(client.get("/").await, Ok(200), "request {i}");
        // Idle for longer than the head timeout: only the idle timeout
        // may close an idle connection.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(gw.dp.active_connections(), 1, "one client connection");
    assert_eq!(counts.reqs(), 4);
    assert_eq!(counts.conns(), 1, "the upstream connection is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_closes_after_idle_timeout() {
    let (up, _counts) = counting_upstream(None).await;
    let options = Options {
        idle_timeout: Duration::from_millis(300),
        ..Options::default()
    };
    let gw = gateway_to(up, UpstreamSecurity::Plaintext, options).await;
    let mut client = MtlsClient::connect(gw.addr, &gw.pki, &gw.productpage, DETAILS_HOST).await;
    assert_eq!(client.get("/").await, Ok(200));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        gw.dp.active_connections(),
        0,
        "parked connection closed after the idle timeout"
    );
    assert!(client.get("/").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_behind_handshake_and_pipelined_requests_are_served() {
    let (up, counts) = counting_upstream(None).await;
    let gw = gateway_to(up, UpstreamSecurity::Plaintext, Options::default()).await;
    let mut tls = tls_client(&gw, &gw.productpage).await;
    // One write: three requests, the last asking to close. The first
    // typically travels with the client's Finished message.
    let burst = format!("{}{}{}", get(false), get(false), get(true));
    tls.write_all(burst.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .expect("responses within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert_eq!(counts.reqs(), 3);

    // A request after a pause (the connection parked in between) on a
    // second connection, then a pipelined pair.
    let mut tls = tls_client(&gw, &gw.productpage).await;
    tls.write_all(get(false).as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let pair = format!("{}{}", get(false), get(true));
    tls.write_all(pair.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .expect("responses within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

/// An upstream that answers one request per connection and then closes
/// it without announcing that (as a server whose keep-alive timeout just
/// expired does).
async fn one_shot_upstream() -> (SocketAddr, Counts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Counts::default();
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            c.conns.fetch_add(1, Ordering::SeqCst);
            let reqs = c.reqs.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                reqs.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Close after the client had time to pool the connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_pooled_connections_does_not_fail_requests() {
    let (up, counts) = one_shot_upstream().await;
    let gw = gateway_to(up, UpstreamSecurity::Plaintext, Options::default()).await;
    let mut client = MtlsClient::connect(gw.addr, &gw.pki, &gw.productpage, DETAILS_HOST).await;
    for i in 0..6 {
        assert_eq!(client.get("/").await, Ok(200), "request {i}");
        // Alternate between reusing right away (the close may race the
        // next request) and after the upstream closed.
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    assert_eq!(counts.reqs(), 6, "no request lost or replayed");
    assert_eq!(counts.conns(), 6, "every connection served one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_mesh_connections_are_not_reused_after_identity_rotation() {
    let pki = Pki::new("mesh CA");
    let details = pki.leaf("details", &[DETAILS_ID], &[]);
    let (up, counts) = counting_upstream(Some((&details, &pki))).await;
    let svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        up,
        UpstreamSecurity::Mesh {
            identities: vec![meshgate_core::spiffe::OwnedSpiffeId::parse(DETAILS_ID).expect("id")],
        },
    );
    let gw = Gateway::start_with(
        pki,
        vec![svc],
        STRICT_NS,
        Protocol::Http,
        None,
        Options::default(),
    )
    .await;
    let mut client = MtlsClient::connect(gw.addr, &gw.pki, &gw.productpage, DETAILS_HOST).await;
    assert_eq!(client.get("/").await, Ok(200));
    assert_eq!(client.get("/").await, Ok(200));
    assert_eq!(counts.conns(), 1, "mTLS upstream connection reused");

    // Rotate the gateway's certificate: the pooled connection presented
    // the old one, so it must not carry further requests.
    let rotated = gw
        .pki
        .leaf("gateway-rotated", &[GATEWAY_ID], &[DETAILS_HOST]);
    let identity = Identity::new(
        vec![rotated.der.clone()],
        rotated.key.clone_key(),
        core::slice::from_ref(&gw.pki.ca_der),
    )
    .expect("rotated identity");
    gw.identity.store(Arc::new(identity));
    assert_eq!(client.get("/").await, Ok(200));
    assert_eq!(counts.conns(), 2, "a new mTLS connection after rotation");
    assert_eq!(client.get("/").await, Ok(200));
    assert_eq!(counts.conns(), 2, "and that one is reused");
    assert_eq!(counts.reqs(), 4);
}
