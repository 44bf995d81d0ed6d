//! mTLS origination to mesh upstreams with secure naming.

use super::*;
use crate::dataplane::snapshot::UpstreamSecurity;
use meshgate_core::spiffe::OwnedSpiffeId;

async fn mesh_gateway(upstream_id: &str) -> (Gateway, Seen) {
    let pki = Pki::new("mesh CA");
    let upstream_leaf = pki.leaf("details-upstream", &[upstream_id], &[]);
    let (up, seen) = upstream("details", Some((&upstream_leaf, &pki))).await;
    let expected = UpstreamSecurity::Mesh {
        identities: vec![OwnedSpiffeId::parse(DETAILS_ID).expect("id")],
    };
    let svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        up,
        expected,
    );
    (Gateway::start(pki, vec![svc], PERMISSIVE_NS).await, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_upstream_with_expected_identity_gets_mtls() {
    let (gw, seen) = mesh_gateway(DETAILS_ID).await;
    let r = gw
        .curl_mtls(&gw.productpage, DETAILS_HOST, "/details/1", &[])
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream:details"),
        "{r:?}"
    );
    // The upstream required and verified the gateway's client certificate,
    // and still learns the original caller from XFCC.
    assert!(seen.last()["x-forwarded-client-cert"].ends_with(&format!("URI={PRODUCTPAGE_ID}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_wrong_spiffe_id_is_refused() {
    let (gw, seen) = mesh_gateway(SLEEP_ID).await;
    let r = gw.curl("http", DETAILS_HOST, "/details/1", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("failed secure naming"), "{r:?}");
    assert!(r.body.contains(DETAILS_ID), "{r:?}");
    assert_eq!(seen.count(), 0, "no request may reach an impostor");
    let log = gw.access_log(1).await;
    assert_eq!(log[0].reason, "upstream_secure_naming_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_or_dead_endpoint_is_503() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        dead,
        UpstreamSecurity::Plaintext,
    );
    let mut empty = svc.clone();
    empty.hosts = vec![LEGACY_HOST.to_owned()];
    empty.ports[0].endpoints.clear();
    svc.labels.clear();
    let gw = Gateway::start(Pki::new("mesh CA"), vec![svc, empty], PERMISSIVE_NS).await;
    let r = gw.curl("http", DETAILS_HOST, "/", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("no healthy upstream"), "{r:?}");
    let r = gw.curl("http", LEGACY_HOST, "/", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("has no endpoints"), "{r:?}");
}
