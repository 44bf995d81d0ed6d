//! Smoke tests of the benchmark's pieces on tiny sizes, without nginx,
//! HAProxy or meshgate: the load generator against an in-process mTLS
//! server certified by the bench CA (which counts what it really served)
//! and against the plaintext upstream, and `/proc` sampling of this
//! process.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshgate_bench::certs::{BenchPki, CLIENT_SPIFFE_ID};
use meshgate_bench::loadgen::{self, Endpoint, TlsClient};
use meshgate_bench::procfs;
use meshgate_bench::targets::SERVICE_HOST;
use meshgate_bench::upstream;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    /// Completed handshakes whose client presented the bench client
    /// certificate's SPIFFE ID.
    mtls_handshakes: AtomicU64,
    /// Requests answered.
    requests: AtomicU64,
    /// The distinct client certificates presented.
    client_certs: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// An mTLS HTTP/1.1 server like the proxies under test: TLS 1.3, P-256,
/// client certificate required and verified against the bench CA.
async fn mtls_server(pki: &BenchPki) -> (core::net::SocketAddr, Arc<Seen>) {
    let provider = Arc::new(loadgen::bench_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("CA");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server_der.clone()], pki.server_key())
        .expect("server cert");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let spiffe_ok = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|der| {
                        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
                        let san = cert.subject_alternative_name().ok()??;
                        Some(san.value.general_names.iter().any(|n| {
                            matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == CLIENT_SPIFFE_ID)
                        }))
                    })
                    .unwrap_or(false);
                if spiffe_ok {
                    seen.mtls_handshakes.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    seen.client_certs
                        .lock()
                        .expect("lock")
                        .insert(leaf.to_vec());
                }
                let seen2 = seen.clone();
                let service = service_fn(move |_req| {
                    seen2.requests.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, core::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(upstream::BODY),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn tls_endpoint(addr: core::net::SocketAddr, pki: &BenchPki) -> Endpoint {
    Endpoint {
        addr,
        host: SERVICE_HOST.to_owned(),
        tls: Some(TlsClient {
            config: loadgen::client_config(pki).expect("client config"),
            fresh: loadgen::fresh_client_configs(pki).expect("fresh client configs"),
            server_name: ServerName::try_from("localhost").expect("name"),
        }),
    }
}

/// 400 ms of the handshake workload (4 clients; a new client certificate
/// each time if `fresh`) against a new test server; asserts that it ran
/// without errors. Returns the server's address too.
async fn run_handshakes(
    pki: &BenchPki,
    fresh: bool,
) -> (core::net::SocketAddr, loadgen::Counts, Arc<Seen>) {
    let (addr, seen) = mtls_server(pki).await;
    let ep = tls_endpoint(addr, pki);
    let counts = loadgen::handshakes(&ep, 4, Duration::from_millis(400), fresh).await;
    assert_eq!(counts.errors, 0, "{:?}", counts.first_error);
    assert!(counts.ok >= 4, "only {} handshakes", counts.ok);
    (addr, counts, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_full_mtls_and_counted_exactly() {
    let pki = BenchPki::generate().expect("pki");
    let (_, counts, seen) = run_handshakes(&pki, false).await;
    // Every counted request was a new connection with a verified client
    // certificate carrying the load generator's SPIFFE ID, and the server
    // served exactly as many requests as were counted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.mtls_handshakes.load(Ordering::SeqCst), counts.ok);
    assert_eq!(seen.requests.load(Ordering::SeqCst), counts.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_handshakes_present_a_new_certificate_each_time() {
    let pki = BenchPki::generate_with_fresh_clients(40).expect("pki");
    let (addr, counts, seen) = run_handshakes(&pki, true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every handshake carried the load generator's SPIFFE ID, and the
    // certificates went round robin: as many distinct ones as handshakes,
    // up to the 40 there are, and never the usual client certificate.
    assert_eq!(seen.mtls_handshakes.load(Ordering::SeqCst), counts.ok);
    let certs = seen.client_certs.lock().expect("lock").clone();
    assert_eq!(certs.len() as u64, counts.ok.min(40));
    assert!(!certs.contains(pki.client_der.as_ref()));

    // Without fresh certificates the phase reports that, not a silent
    // fallback to the usual one.
    let plain = tls_endpoint(addr, &BenchPki::generate().expect("pki"));
    let counts = loadgen::handshakes(&plain, 1, Duration::from_millis(50), true).await;
    assert_eq!(counts.ok, 0);
    assert!(
        counts
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("no fresh client certificates")),
        "{:?}",
        counts.first_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reuses_connections_and_counts_every_request() {
    let pki = BenchPki::generate().expect("pki");
    let (addr, seen) = mtls_server(&pki).await;
    let ep = tls_endpoint(addr, &pki);
    let conns = loadgen::open_connections(&ep, 3, 3).await.expect("open");
    assert_eq!(seen.mtls_handshakes.load(Ordering::SeqCst), 3);
    let (counts, left) = loadgen::keepalive(conns, &ep.host, Duration::from_millis(300)).await;
    assert_eq!(counts.errors, 0, "{:?}", counts.first_error);
    assert_eq!(left.len(), 3);
    assert!(counts.ok > 10, "only {} requests", counts.ok);
    // No new handshakes: keep-alive really kept the 3 connections.
    assert_eq!(seen.mtls_handshakes.load(Ordering::SeqCst), 3);
    // 3 requests from open_connections, the rest from the phase.
    assert_eq!(seen.requests.load(Ordering::SeqCst), counts.ok + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_another_ca_is_refused() {
    let pki = BenchPki::generate().expect("pki");
    let other = BenchPki::generate().expect("other pki");
    let (addr, seen) = mtls_server(&other).await;
    // The client trusts `pki`'s CA only; the server presents `other`'s.
    let ep = tls_endpoint(addr, &pki);
    let counts = loadgen::handshakes(&ep, 2, Duration::from_millis(200), false).await;
    assert_eq!(counts.ok, 0);
    assert!(counts.errors > 0);
    assert!(
        counts
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS handshake")),
        "{:?}",
        counts.first_error
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_upstream_keepalive_and_fixed_rate() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(upstream::serve(listener));
    let ep = Endpoint {
        addr,
        host: SERVICE_HOST.to_owned(),
        tls: None,
    };
    let conns = loadgen::open_connections(&ep, 2, 2).await.expect("open");
    let (counts, conns) = loadgen::keepalive(conns, &ep.host, Duration::from_millis(200)).await;
    assert_eq!(counts.errors, 0, "{:?}", counts.first_error);
    assert!(counts.ok > 10);
    // 200 req/s for 0.5 s: exactly 100 scheduled, all answered.
    let lat = loadgen::fixed_rate(conns, &ep.host, 200, Duration::from_millis(500)).await;
    assert_eq!(lat.scheduled, 100);
    assert_eq!(lat.ok, 100, "{:?}", lat.first_error);
    assert_eq!(lat.errors, 0);
    assert!(lat.p50_us > 0 && lat.p50_us <= lat.p99_us && lat.p99_us <= lat.max_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_counts_unanswered_requests_as_errors() {
    // A server that accepts and hangs up at once: nothing is answered.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    let ep = Endpoint {
        addr,
        host: SERVICE_HOST.to_owned(),
        tls: None,
    };
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(loadgen::connect(&ep).await.expect("connect"));
    }
    let lat = loadgen::fixed_rate(conns, &ep.host, 100, Duration::from_millis(300)).await;
    assert_eq!(lat.scheduled, 30);
    assert_eq!(lat.ok, 0);
    assert_eq!(lat.errors, 30);
}

#[test]
fn proc_reads_this_process() {
    let pid = std::process::id();
    let first = procfs::sample_tree(pid).expect("sample");
    assert!(first.rss_bytes > 1024 * 1024, "rss {}", first.rss_bytes);
    assert!(first.fds >= 3);
    // Burn 0.3 s of this process's CPU (by the kernel's process CPU clock,
    // an independent source): /proc must report the same, to within its
    // tick granularity and the time between the reads.
    let clock = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    let c0 = clock();
    let before = procfs::sample_tree(pid).expect("sample");
    let wall = std::time::Instant::now();
    let mut x = 0u64;
    while clock() - c0 < 0.3 && wall.elapsed() < Duration::from_secs(30) {
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
    }
    core::hint::black_box(x);
    let after = procfs::sample_tree(pid).expect("sample");
    let c1 = clock();
    let used = after.cpu_seconds - before.cpu_seconds;
    assert!(c1 - c0 >= 0.3, "could not burn CPU: {}", c1 - c0);
    assert!(
        (used - (c1 - c0)).abs() < 0.06,
        "/proc says {used} s, the CPU clock {} s",
        c1 - c0
    );

    // A waited-for child's CPU counts as this process's (the servers a
    // run stops), and the machine-wide busy time covers it too.
    let own0 = procfs::own_cpu_seconds_with_children().expect("own");
    let sys0 = procfs::system_busy_seconds().expect("system");
    let status = std::process::Command::new("sh")
        .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
        .status()
        .expect("run sh");
    assert!(status.success());
    let own1 = procfs::own_cpu_seconds_with_children().expect("own");
    let sys1 = procfs::system_busy_seconds().expect("system");
    assert!(own1 - own0 >= 0.05, "children cpu {}", own1 - own0);
    assert!(
        sys1 - sys0 >= own1 - own0 - 0.05,
        "system {} own {}",
        sys1 - sys0,
        own1 - own0
    );

    // Children are part of the tree.
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .expect("spawn sleep");
    let tree = procfs::process_tree(pid);
    assert!(tree.contains(&child.id()), "{tree:?}");
    let _ = child.kill();
    let _ = child.wait();
}
