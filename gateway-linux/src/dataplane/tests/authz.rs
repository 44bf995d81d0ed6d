//! AuthorizationPolicy enforcement: "security in depth".

use super::*;
use crate::dataplane::snapshot::UpstreamSecurity;

const DETAILS_VIEWER: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/bookinfo/sa/bookinfo-productpage\"]}
    to:
    - operation: {methods: [\"GET\"]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_productpage_may_get_details() {
    let (up, seen) = upstream("details", None).await;
    let svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        up,
        UpstreamSecurity::Plaintext,
    );
    let yaml = format!("{STRICT_NS}---\n{DETAILS_VIEWER}");
    let gw = Gateway::start(Pki::new("mesh CA"), vec![svc], &yaml).await;

    // STRICT authenticates: sleep's mesh certificate gets in...
    let sleep = gw
        .curl_mtls(&gw.sleep, DETAILS_HOST, "/details/1", &[])
        .await;
    // ...but authorization decides.
    assert_eq!(
        (sleep.status, sleep.body.as_str()),
        (403, "RBAC: access denied"),
        "{sleep:?}"
    );
    assert_eq!(
        seen.count(),
        0,
        "a denied request never reaches the upstream"
    );

    let pp = gw
        .curl_mtls(&gw.productpage, DETAILS_HOST, "/details/1", &[])
        .await;
    assert_eq!(
        (pp.status, pp.body.as_str()),
        (200, "upstream:details"),
        "{pp:?}"
    );
    let post = gw
        .curl_mtls(&gw.productpage, DETAILS_HOST, "/details/1", &["-X", "POST"])
        .await;
    assert_eq!(post.status, 403, "{post:?}");

    let log = gw.access_log(3).await;
    let denied = log
        .iter()
        .find(|e| e.principal == "cluster.local/ns/bookinfo/sa/sleep")
        .expect("sleep entry");
    assert_eq!(
        (denied.decision, denied.reason.as_str(), denied.status),
        ("deny", "no_allow_matched", 403)
    );
    let allowed = log
        .iter()
        .find(|e| e.status == 200)
        .expect("productpage entry");
    assert_eq!(
        allowed.policy,
        "ALLOW policy bookinfo/details-viewer rule 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_not_principals_blocks_plaintext_under_permissive() {
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
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: bookinfo}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: [\"*\"]}
";
    let gw = Gateway::start(Pki::new("mesh CA"), vec![svc], yaml).await;
    let plain = gw.curl("http", DETAILS_HOST, "/details/1", &[]).await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (403, "RBAC: access denied"),
        "{plain:?}"
    );
    let (_, out) = gw.urllib(DETAILS_HOST, "/details/1").await;
    assert!(out.starts_with("403 RBAC: access denied"), "{out}");
    let mtls = gw
        .curl_mtls(&gw.sleep, DETAILS_HOST, "/details/1", &[])
        .await;
    assert_eq!(mtls.status, 200, "{mtls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_authorizes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A TCP echo upstream.
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let svc = service(
        "db.bookinfo.svc.cluster.local",
        "bookinfo",
        "db",
        9080,
        5432,
        echo_addr,
        UpstreamSecurity::Plaintext,
    );
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/bookinfo/sa/bookinfo-productpage\"]}
";
    let gw = Gateway::start_with(
        Pki::new("mesh CA"),
        vec![svc],
        yaml,
        Protocol::Tcp,
        Some("db.bookinfo.svc.cluster.local"),
        Options::default(),
    )
    .await;
    let connect = |leaf: &Leaf| {
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
        let addr = gw.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls_pki_types::ServerName::try_from(DETAILS_HOST).expect("name");
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .expect("handshake")
        }
    };
    let mut ok = connect(&gw.productpage).await;
    ok.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    ok.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");

    let mut denied = connect(&gw.sleep).await;
    let _ = denied.write_all(b"ping").await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), denied.read_to_end(&mut rest))
        .await
        .expect("closed promptly");
    assert!(
        n.is_err() || rest.is_empty(),
        "denied TCP connection must be closed: {rest:?}"
    );

    // Plaintext to the TCP port is admitted under PERMISSIVE but has no
    // principal, so the ALLOW policy does not match: closed.
    let mut plain = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    plain.write_all(b"ping").await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest))
        .await
        .expect("closed promptly");
    assert!(rest.is_empty());
    let log = gw.access_log(3).await;
    assert_eq!(
        log.iter()
            .filter(|e| e.kind == "tcp" && e.decision == "deny")
            .count(),
        2,
        "{log:#?}"
    );
}
