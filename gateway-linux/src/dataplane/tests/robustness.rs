//! Hostile or broken peers: malformed HTTP, oversized heads, bogus TLS,
//! silent clients, connection floods, and shutdown.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::dataplane::snapshot::UpstreamSecurity;

async fn gateway(options: Options) -> Gateway {
    let (up, _seen) = upstream("details", None).await;
    let svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        up,
        UpstreamSecurity::Plaintext,
    );
    Gateway::start_with(
        Pki::new("mesh CA"),
        vec![svc],
        PERMISSIVE_NS,
        Protocol::Http,
        None,
        options,
    )
    .await
}

async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests() {
    let gw = gateway(Options::default()).await;
    let bad = raw_exchange(gw.addr, b"GARBAGE NONSENSE\x01\r\n\r\n").await;
    assert!(
        bad.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&bad)
    );

    let big = format!("x-big: {}", "a".repeat(70 * 1024));
    let r = gw.curl("http", DETAILS_HOST, "/", &["-H", &big]).await;
    assert_eq!(r.status, 431, "{r:?}");

    let unknown = gw.curl("http", "nope.example", "/", &[]).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Still healthy afterwards.
    assert_eq!(gw.curl("http", DETAILS_HOST, "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_tls_and_silent_clients_are_closed() {
    let gw = gateway(Options {
        head_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    // A TLS record header followed by junk instead of a ClientHello.
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    junk.extend_from_slice(&[0xff; 32]);
    let out = raw_exchange(gw.addr, &junk).await;
    assert!(out.len() < 16, "at most a TLS alert: {out:?}");

    // A silent client is dropped after the head timeout.
    let started = std::time::Instant::now();
    let out = raw_exchange(gw.addr, b"").await;
    assert!(out.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Half a ClientHello, then silence.
    let out = raw_exchange(gw.addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    assert!(out.is_empty());

    assert_eq!(gw.curl("http", DETAILS_HOST, "/", &[]).await.status, 200);
    let metrics = gw.dp.render_metrics();
    assert!(metrics.contains("reason=\"bad_client_hello\""), "{metrics}");
    assert!(
        metrics.contains("reason=\"handshake_timeout\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_applies_backpressure() {
    let gw = gateway(Options {
        max_connections: 1,
        ..Options::default()
    })
    .await;
    // One idle connection holds the only slot.
    let idle = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.dp.active_connections(), 1);
    let waiting = tokio::spawn(plaintext_request(gw.addr, DETAILS_HOST, "/"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "second client must wait, not be served"
    );
    drop(idle);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the slot frees")
        .expect("task");
    assert_eq!(r, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_keepalive_and_stops_accepting() {
    let gw = gateway(Options::default()).await;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header(http::header::HOST, DETAILS_HOST)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("req");
    assert_eq!(send.send_request(req).await.expect("resp").status(), 200);
    assert_eq!(gw.dp.active_connections(), 1);
    let open = gw.dp.drain(Duration::from_secs(5)).await;
    assert_eq!(
        open, 0,
        "idle keep-alive connection must be closed by the drain"
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(plaintext_request(gw.addr, DETAILS_HOST, "/").await.is_err());
}
