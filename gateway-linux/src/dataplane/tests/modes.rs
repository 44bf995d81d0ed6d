//! PeerAuthentication modes end to end: PERMISSIVE, STRICT, DISABLE and a
//! workload policy whose portLevelMtls overrides the namespace.

use sha2::{Digest, Sha256};

use super::*;
use crate::dataplane::snapshot::UpstreamSecurity;

async fn details_gateway(yaml: &str) -> (Gateway, Seen) {
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
    (
        Gateway::start(Pki::new("mesh CA"), vec![svc], yaml).await,
        seen,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_plaintext_and_mtls_with_xfcc() {
    let (gw, seen) = details_gateway(PERMISSIVE_NS).await;

    let plain = gw.curl("http", DETAILS_HOST, "/details/1", &[]).await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (200, "upstream:details"),
        "{plain:?}"
    );
    assert!(!seen.last().contains_key("x-forwarded-client-cert"));

    let (code, out) = gw.urllib(DETAILS_HOST, "/details/1").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("200 upstream:details"), "{out}");

    let mtls = gw
        .curl_mtls(&gw.productpage, DETAILS_HOST, "/details/1", &[])
        .await;
    assert_eq!(mtls.status, 200, "{mtls:?}");
    let hash = hex::encode(Sha256::digest(gw.productpage.der.as_ref()));
    assert_eq!(
        seen.last()
            .get("x-forwarded-client-cert")
            .map(String::as_str),
        Some(format!("By={GATEWAY_ID};Hash={hash};URI={PRODUCTPAGE_ID}").as_str())
    );

    let (code, out) = gw.python_mtls(&gw.sleep, DETAILS_HOST, "/details/1").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("200 upstream:details"), "{out}");
    assert!(seen.last()["x-forwarded-client-cert"].ends_with(&format!("URI={SLEEP_ID}")));

    // The access log names the peer and the mode.
    let log = gw.access_log(4).await;
    let mtls_entry = log
        .iter()
        .find(|e| e.principal == "cluster.local/ns/bookinfo/sa/bookinfo-productpage")
        .expect("mTLS entry");
    assert_eq!(mtls_entry.security, "mutual_tls");
    assert_eq!(mtls_entry.mode, "PERMISSIVE");
    assert_eq!(mtls_entry.destination, format!("{DETAILS_HOST}:9080"));
    assert_eq!(mtls_entry.status, 200);
    assert!(
        log.iter()
            .any(|e| e.security == "none" && e.principal == "-" && e.status == 200)
    );
    assert_eq!(gw.dp.plaintext_clients()[0].0, "bookinfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_xfcc_is_always_stripped() {
    let (gw, seen) = details_gateway(PERMISSIVE_NS).await;
    let forged = format!("x-forwarded-client-cert: By={GATEWAY_ID};URI={PRODUCTPAGE_ID}");

    let plain = gw.curl("http", DETAILS_HOST, "/", &["-H", &forged]).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(
        !seen.last().contains_key("x-forwarded-client-cert"),
        "{:?}",
        seen.last()
    );

    let mtls = gw
        .curl_mtls(&gw.sleep, DETAILS_HOST, "/", &["-H", &forged])
        .await;
    assert_eq!(mtls.status, 200, "{mtls:?}");
    let xfcc = &seen.last()["x-forwarded-client-cert"];
    assert!(xfcc.ends_with(&format!("URI={SLEEP_ID}")), "{xfcc}");
    assert!(!xfcc.contains(PRODUCTPAGE_ID), "{xfcc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_and_certificateless_tls_and_foreign_ca() {
    let (gw, seen) = details_gateway(STRICT_NS).await;

    let plain = gw.curl("http", DETAILS_HOST, "/details/100", &[]).await;
    assert_eq!(
        plain.status, 0,
        "plaintext must get no HTTP response: {plain:?}"
    );
    assert!(plain.exit == 52 || plain.exit == 56, "{plain:?}");
    assert_eq!(seen.count(), 0);

    let nocert = gw
        .curl("https", DETAILS_HOST, "/details/100", &["-k"])
        .await;
    assert_ne!(nocert.exit, 0, "{nocert:?}");
    assert!(
        nocert.stderr.contains("certificate required"),
        "curl must name the alert: {nocert:?}"
    );

    let foreign = gw
        .curl_mtls(&gw.foreign, DETAILS_HOST, "/details/100", &[])
        .await;
    assert_ne!(foreign.exit, 0, "{foreign:?}");
    assert_eq!(foreign.status, 0);
    assert!(foreign.stderr.contains("alert"), "{foreign:?}");

    let mtls = gw
        .curl_mtls(&gw.productpage, DETAILS_HOST, "/details/100", &[])
        .await;
    assert_eq!(
        (mtls.status, mtls.body.as_str()),
        (200, "upstream:details"),
        "{mtls:?}"
    );
    assert!(seen.last()["x-forwarded-client-cert"].ends_with(&format!("URI={PRODUCTPAGE_ID}")));

    // Mode changes are visible in logs and metrics with their reasons.
    let log = gw.access_log(4).await;
    assert!(
        log.iter().any(|e| e.reason == "plaintext_under_strict"
            && e.decision == "deny"
            && e.policy == "bookinfo/default"),
        "{log:#?}"
    );
    let metrics = gw.dp.render_metrics();
    assert!(
        metrics
            .contains("meshgate_tls_handshake_failures_total{reason=\"certificate_required\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshgate_tls_handshake_failures_total{reason=\"unknown_ca\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshgate_plaintext_clients{namespace=\"bookinfo\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_does_not_terminate_tls() {
    // A raw TCP endpoint that records the first bytes it receives.
    let raw = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let raw_addr = raw.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        if let Ok((mut s, _)) = raw.accept().await {
            let mut buf = vec![0u8; 5];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = tx.send(buf);
            }
        }
    });
    let (up, _seen) = upstream("details", None).await;
    let services = vec![
        service(
            DETAILS_HOST,
            "bookinfo",
            "details",
            9080,
            9080,
            up,
            UpstreamSecurity::Plaintext,
        ),
        service(
            LEGACY_HOST,
            "bookinfo",
            "legacy",
            9080,
            9080,
            raw_addr,
            UpstreamSecurity::Plaintext,
        ),
    ];
    let yaml = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: DISABLE}
";
    let gw = Gateway::start(Pki::new("mesh CA"), services, yaml).await;
    let plain = gw.curl("http", DETAILS_HOST, "/", &[]).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    // TLS to a DISABLE port reaches the upstream as a raw ClientHello.
    let tls = gw
        .curl("https", LEGACY_HOST, "/", &["-k", "--max-time", "2"])
        .await;
    assert_eq!(tls.status, 0, "{tls:?}");
    let first = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("upstream got bytes")
        .expect("bytes");
    assert_eq!(
        &first[..2],
        &[0x16, 0x03],
        "upstream must see the client's TLS record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_port_level_mtls_overrides_namespace() {
    let (up, _) = upstream("finance", None).await;
    let services = vec![
        // Service port 9080 → workload port 8080 (the overridden one).
        service(
            FINANCE_HOST,
            "foo",
            "finance",
            9080,
            8080,
            up,
            UpstreamSecurity::Plaintext,
        ),
        // Same workload, another workload port: STRICT applies.
        service(
            "finance-admin.foo.svc.cluster.local",
            "foo",
            "finance",
            9080,
            9090,
            up,
            UpstreamSecurity::Plaintext,
        ),
    ];
    let yaml = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: foo}
spec:
  selector: {matchLabels: {app: finance}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
";
    let gw = Gateway::start(Pki::new("mesh CA"), services, yaml).await;
    let open = gw.curl("http", FINANCE_HOST, "/", &[]).await;
    assert_eq!(
        open.status, 200,
        "port 8080 is PERMISSIVE by portLevelMtls: {open:?}"
    );
    let closed = gw
        .curl("http", "finance-admin.foo.svc.cluster.local", "/", &[])
        .await;
    assert_eq!(closed.status, 0, "port 9090 is STRICT: {closed:?}");
    let log = gw.access_log(2).await;
    assert!(
        log.iter()
            .any(|e| e.mode == "PERMISSIVE" && e.policy == "-" && e.status == 200),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|e| e.mode == "STRICT"
            && e.reason == "plaintext_under_strict"
            && e.policy == "foo/finance"),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_alpn_and_prior_knowledge() {
    let (gw, seen) = details_gateway(PERMISSIVE_NS).await;
    // The last `-w` wins: the "status" slot then carries the HTTP version.
    let h2 = gw
        .curl_mtls(
            &gw.productpage,
            DETAILS_HOST,
            "/details/1",
            &["--http2", "-w", "\n%{http_version}"],
        )
        .await;
    assert_eq!(
        (h2.status, h2.body.as_str()),
        (2, "upstream:details"),
        "{h2:?}"
    );
    assert!(seen.last()["x-forwarded-client-cert"].ends_with(&format!("URI={PRODUCTPAGE_ID}")));
    let h2c = gw
        .curl(
            "http",
            DETAILS_HOST,
            "/details/1",
            &["--http2-prior-knowledge"],
        )
        .await;
    assert_eq!(
        (h2c.status, h2c.body.as_str()),
        (200, "upstream:details"),
        "{h2c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rotation_applies_to_new_handshakes_without_dropping_connections() {
    let (gw, _seen) = details_gateway(PERMISSIVE_NS).await;
    let mut kept = MtlsClient::connect(gw.addr, &gw.pki, &gw.productpage, DETAILS_HOST).await;
    assert_eq!(kept.get("/").await, Ok(200));
    let before = served_leaf(&gw).await;

    let rotated = gw.pki.leaf("gateway-2", &[GATEWAY_ID], &[DETAILS_HOST]);
    let identity = Identity::new(
        vec![rotated.der.clone()],
        rotated.key.clone_key(),
        core::slice::from_ref(&gw.pki.ca_der),
    )
    .expect("rotated identity");
    gw.identity.store(Arc::new(identity));

    let after = served_leaf(&gw).await;
    assert_ne!(before, after);
    assert_eq!(after, rotated.der);
    assert_eq!(
        kept.get("/").await,
        Ok(200),
        "established connection survives rotation"
    );
}

/// The leaf certificate the gateway serves to a new TLS client.
async fn served_leaf(gw: &Gateway) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(gw.pki.ca_der.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(DETAILS_HOST).expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server cert")
        .clone()
        .into_owned()
}
