//! Kubernetes mode against the fake API server (real HTTP on loopback):
//! policies applied as resources, watch recovery, invalid resources, the
//! Secret-backed store, the shared CA and leader election.

use core::time::Duration;
use std::sync::Arc;
use std::time::Instant;

use meshgate_ca::{CaConfig, CaSource, Change, RecordKey, Store};
use meshgate_core::mtls::EffectiveMode;
use meshgate_core::policy::Workload;
use meshgate_core::spiffe::OwnedTrustDomain;
use meshgate_core::time::UnixTime;
use meshgate_kube::fake_apiserver::FakeApiServer;
use meshgate_kube::{KubeMode, KubeOptions, KubeSecretStore, LeaseTiming, PolicyUpdate};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

const TD: &str = "cluster.local";
const ROOT_NS: &str = "istio-system";

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "meshgate_kube=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn options(pod: &str) -> KubeOptions {
    let mut o = KubeOptions::from_env(TD, ROOT_NS);
    o.namespace = "meshgate-system".to_owned();
    o.pod_name = pod.to_owned();
    o.controller.instance = pod.to_owned();
    o.lease = LeaseTiming {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    };
    o
}

fn mode_of(
    update: &PolicyUpdate,
    namespace: &str,
    labels: &[(&str, &str)],
    port: u16,
) -> EffectiveMode {
    update
        .set
        .resolve_mode(&Workload::new(namespace, &labels), port)
        .mode
}

/// The seed's `mutual-tls.yaml`: namespace-wide STRICT for bookinfo.
fn seed_strict() -> Value {
    json!({
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "bookinfo"},
        "spec": {"mtls": {"mode": "STRICT"}}
    })
}

fn namespace_policy(ns: &str, mode: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"mtls": {"mode": mode}}
    })
}

/// Starts the controller; every applied update arrives on the channel.
fn start_controller(
    server: &FakeApiServer,
    pod: &str,
) -> (
    mpsc::UnboundedReceiver<PolicyUpdate>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let kube = KubeMode::from_config(server.kube_config(), options(pod)).expect("client");
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let apply = move |u: PolicyUpdate| {
            let tx = tx.clone();
            async move { tx.send(u).map_err(|e| e.to_string()) }
        };
        kube.run_controller(apply, stop_rx)
            .await
            .expect("controller");
    });
    (rx, stop_tx, task)
}

/// Waits for the first update satisfying `pred`; returns it and the time
/// it took. Fails after `limit`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<PolicyUpdate>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&PolicyUpdate) -> bool,
) -> (PolicyUpdate, Duration) {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(u)) if pred(&u) => return (u, start.elapsed()),
            Ok(Some(_)) => {}
            Ok(None) => panic!("controller stopped while waiting for {what}"),
            Err(_) => panic!("no update with {what} within {limit:?}"),
        }
    }
}

fn policy_names(u: &PolicyUpdate) -> Vec<String> {
    u.policies
        .iter()
        .map(|p| format!("{}/{}", p.meta().namespace, p.meta().name))
        .collect()
}

#[tokio::test]
async fn seed_strict_policy_applied_as_resource_resolves_strict_within_one_second() {
    init_logs();
    let server = FakeApiServer::start();
    let (mut rx, stop, task) = start_controller(&server, "meshgate-0");
    let bookinfo: &[(&str, &str)] = &[("app", "details")];

    let (first, _) = wait_for(&mut rx, Duration::from_secs(10), "the initial list", |_| {
        true
    })
    .await;
    assert_eq!(first.generation, 1);
    assert!(first.policies.is_empty());
    assert_eq!(
        mode_of(&first, "bookinfo", bookinfo, 9080),
        EffectiveMode::Permissive
    );

    let applied_at = Instant::now();
    server.apply(seed_strict());
    let (update, _) = wait_for(&mut rx, Duration::from_secs(5), "STRICT", |u| {
        mode_of(u, "bookinfo", bookinfo, 9080) == EffectiveMode::Strict
    })
    .await;
    let took = applied_at.elapsed();
    assert!(took < Duration::from_secs(1), "STRICT took {took:?}");
    assert_eq!(policy_names(&update), vec!["bookinfo/default"]);
    // Other namespaces are untouched.
    assert_eq!(
        mode_of(&update, "other", bookinfo, 9080),
        EffectiveMode::Permissive
    );

    // The watch asked for bookmarks and resumed from a resourceVersion.
    let reqs = server.requests();
    assert!(
        reqs.iter().any(
            |r| r.contains("/apis/security.istio.io/v1/peerauthentications?")
                && r.contains("watch=true")
                && r.contains("allowWatchBookmarks=true")
        ),
        "{reqs:#?}"
    );

    // Deleting the resource goes back to PERMISSIVE.
    assert!(server.delete(
        "security.istio.io/v1beta1",
        "PeerAuthentication",
        "bookinfo",
        "default"
    ));
    wait_for(&mut rx, Duration::from_secs(2), "PERMISSIVE again", |u| {
        mode_of(u, "bookinfo", bookinfo, 9080) == EffectiveMode::Permissive
    })
    .await;

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("task");
}

#[tokio::test]
async fn dropped_watch_and_410_gone_are_recovered_without_losing_events() {
    init_logs();
    let server = FakeApiServer::start();
    server.apply(namespace_policy("a", "STRICT"));
    let (mut rx, stop, task) = start_controller(&server, "meshgate-0");
    let labels: &[(&str, &str)] = &[];
    let (first, _) = wait_for(&mut rx, Duration::from_secs(10), "initial list", |_| true).await;
    assert_eq!(policy_names(&first), vec!["a/default"]);
    let list_requests = |s: &FakeApiServer| {
        s.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET /apis/security.istio.io/v1/peerauthentications?")
                    && !r.contains("watch=true")
            })
            .count()
    };
    let lists_before = list_requests(&server);

    // 1. The connection drops; changes happen before the client is back
    //    (watch requests are refused meanwhile), then it resumes from its
    //    resourceVersion and the server replays what it missed.
    server.pause_watches();
    server.apply(namespace_policy("b", "STRICT"));
    server.apply(namespace_policy("x", "STRICT"));
    server.delete("security.istio.io/v1", "PeerAuthentication", "a", "default");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing can arrive while disconnected"
    );
    server.resume_watches();
    let (u, _) = wait_for(
        &mut rx,
        Duration::from_secs(10),
        "b, x added and a deleted",
        |u| policy_names(u) == vec!["b/default", "x/default"],
    )
    .await;
    assert_eq!(mode_of(&u, "a", labels, 80), EffectiveMode::Permissive);
    assert_eq!(mode_of(&u, "b", labels, 80), EffectiveMode::Strict);
    assert_eq!(
        list_requests(&server),
        lists_before,
        "a dropped connection resumes the watch from its resourceVersion, without a re-list"
    );

    // 2. While disconnected the history is compacted: the resume gets
    //    410 Gone and the controller re-lists. Everything that changed
    //    meanwhile is seen — including the deletion of x, which a re-list
    //    shows only by its absence — and nothing is duplicated.
    server.pause_watches();
    server.compact();
    server.apply(namespace_policy("c", "DISABLE"));
    server.apply(namespace_policy("b", "PERMISSIVE"));
    server.apply(namespace_policy("d", "STRICT"));
    server.delete("security.istio.io/v1", "PeerAuthentication", "d", "default");
    server.delete("security.istio.io/v1", "PeerAuthentication", "x", "default");
    server.resume_watches();
    let (u, _) = wait_for(&mut rx, Duration::from_secs(10), "state after 410", |u| {
        mode_of(u, "b", labels, 80) == EffectiveMode::Permissive
    })
    .await;
    assert_eq!(policy_names(&u), vec!["b/default", "c/default"]);
    assert_eq!(mode_of(&u, "c", labels, 80), EffectiveMode::Disable);
    assert_eq!(mode_of(&u, "x", labels, 80), EffectiveMode::Permissive);
    assert!(
        list_requests(&server) > lists_before,
        "410 Gone led to a re-list"
    );

    // Nothing is applied twice: after the state settles, no further
    // update arrives for the same content.
    server.drop_watches();
    let extra = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
    assert!(
        extra.is_err(),
        "a reconnect without changes must not re-apply: {extra:?}"
    );

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("task");
}

#[tokio::test]
async fn invalid_resource_is_reported_as_event_and_ignored() {
    init_logs();
    let server = FakeApiServer::start();
    let (mut rx, stop, task) = start_controller(&server, "meshgate-0");
    wait_for(&mut rx, Duration::from_secs(10), "initial list", |_| true).await;
    server.apply(seed_strict());
    // Istio's rule: port-level mTLS needs a workload selector.
    let bad = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "bad", "namespace": "foo"},
        "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}
    });
    server.apply(bad.clone());
    let labels: &[(&str, &str)] = &[];
    let (u, _) = wait_for(&mut rx, Duration::from_secs(5), "bookinfo STRICT", |u| {
        mode_of(u, "bookinfo", labels, 80) == EffectiveMode::Strict
    })
    .await;
    assert_eq!(
        policy_names(&u),
        vec!["bookinfo/default"],
        "the invalid one is excluded"
    );
    assert_eq!(mode_of(&u, "foo", labels, 80), EffectiveMode::Permissive);
    // The invalid resource may arrive in the same or in a later change.
    let u = if u.excluded.is_empty() {
        wait_for(&mut rx, Duration::from_secs(2), "the exclusion", |u| {
            !u.excluded.is_empty()
        })
        .await
        .0
    } else {
        u
    };
    assert_eq!(u.excluded.len(), 1);
    assert_eq!(u.excluded[0].key.name, "bad");
    assert!(
        u.excluded[0].message.contains("portLevelMtls"),
        "{}",
        u.excluded[0].message
    );

    // The Event regards the resource, with its uid and resourceVersion.
    let stored = server
        .get("security.istio.io/v1", "PeerAuthentication", "foo", "bad")
        .expect("stored");
    let deadline = Instant::now() + Duration::from_secs(2);
    let events = loop {
        let events: Vec<Value> = server
            .list("v1", "Event")
            .into_iter()
            .filter(|e| e.pointer("/involvedObject/name") == Some(&json!("bad")))
            .collect();
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events.len(), 1, "one Event per resourceVersion");
    let e = &events[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "InvalidResource");
    assert_eq!(e["metadata"]["namespace"], "foo");
    assert_eq!(e["involvedObject"]["kind"], "PeerAuthentication");
    assert_eq!(e["involvedObject"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(
        e["involvedObject"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("portLevelMtls")
    );

    // Fixing it (a selector) makes it apply; no new Event.
    let mut fixed = bad;
    fixed["spec"]["selector"] = json!({"matchLabels": {"app": "finance"}});
    server.apply(fixed);
    let finance: &[(&str, &str)] = &[("app", "finance")];
    let (u, _) = wait_for(&mut rx, Duration::from_secs(5), "fixed resource", |u| {
        u.excluded.is_empty() && mode_of(u, "foo", finance, 8080) == EffectiveMode::Disable
    })
    .await;
    assert_eq!(mode_of(&u, "foo", finance, 9090), EffectiveMode::Strict);
    let count = server
        .list("v1", "Event")
        .iter()
        .filter(|e| e.pointer("/involvedObject/name") == Some(&json!("bad")))
        .count();
    assert_eq!(count, 1);

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("task");
}

#[tokio::test]
async fn exposed_services_and_endpoint_slices_become_routes() {
    init_logs();
    let server = FakeApiServer::start();
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "details", "namespace": "bookinfo",
            "labels": {"meshgate.io/expose": "true"},
            "annotations": {"meshgate.io/service-account": "bookinfo-details"}},
        "spec": {"selector": {"app": "details"}, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "internal", "namespace": "bookinfo"},
        "spec": {"ports": [{"port": 80}]}
    }));
    let (mut rx, stop, task) = start_controller(&server, "meshgate-0");
    let (u, _) = wait_for(&mut rx, Duration::from_secs(10), "initial list", |_| true).await;
    assert_eq!(u.services.len(), 1, "only the exposed Service");
    assert!(u.services[0].workloads.is_empty());

    server.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "details-x1", "namespace": "bookinfo",
            "labels": {"kubernetes.io/service-name": "details"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": true}}]
    }));
    let (u, took) = wait_for(&mut rx, Duration::from_secs(5), "an endpoint", |u| {
        u.services.first().is_some_and(|s| !s.workloads.is_empty())
    })
    .await;
    assert!(took < Duration::from_secs(1));
    let s = &u.services[0];
    assert_eq!(s.hosts, vec!["details.bookinfo.svc.cluster.local"]);
    assert_eq!(s.workloads[0].service_account, "bookinfo-details");

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("task");
}

fn change(note: &str) -> Change<'_> {
    Change {
        actor: "test",
        at: UnixTime::from_secs(1_700_000_000),
        note,
    }
}

fn key(k: &str) -> RecordKey {
    RecordKey::new(k).expect("key")
}

#[test]
fn secret_store_records_audit_and_conflicts() {
    let server = FakeApiServer::start();
    let store = KubeSecretStore::new(server.kube_config(), "meshgate-system", "meshgate-state")
        .expect("store");
    assert_eq!(store.get(&key("a.1")).expect("get"), None);
    store
        .put(&key("a.1"), b"one", &change("first"))
        .expect("put");
    store
        .put(&key("a.2"), b"two", &change("second"))
        .expect("put");
    store.put(&key("b"), b"", &change("empty")).expect("put");
    assert_eq!(store.get(&key("a.1")).expect("get"), Some(b"one".to_vec()));
    assert_eq!(
        store.list("a.").expect("list"),
        vec![key("a.1"), key("a.2")]
    );

    // The records are the Secret's data keys (base64 on the wire).
    let secret = server
        .get("v1", "Secret", "meshgate-system", "meshgate-state")
        .expect("Secret created");
    assert_eq!(secret["data"]["a.1"], "b25l");
    assert_eq!(secret["type"], "Opaque");

    // Updates that meet a 409 re-read and retry.
    server.inject_conflicts("secrets", 3);
    store
        .put(&key("a.1"), b"uno", &change("after conflicts"))
        .expect("put despite 409s");
    assert_eq!(
        server.pending_conflicts("secrets"),
        0,
        "the conflicts were met"
    );
    assert_eq!(store.get(&key("a.1")).expect("get"), Some(b"uno".to_vec()));

    assert!(store.delete(&key("a.2"), &change("gone")).expect("delete"));
    assert!(!store.delete(&key("a.2"), &change("again")).expect("delete"));
    let log = store.audit_log(0).expect("audit");
    let notes: Vec<&str> = log.iter().map(|e| e.note.as_str()).collect();
    assert_eq!(
        notes,
        vec!["first", "second", "empty", "after conflicts", "gone"]
    );
    assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(store.audit_log(4).expect("audit").len(), 1);
}

#[test]
fn concurrent_writers_from_two_replicas_lose_nothing() {
    let server = FakeApiServer::start();
    let config = server.kube_config();
    let writers: Vec<_> = ["r1", "r2"]
        .into_iter()
        .map(|r| {
            let store = KubeSecretStore::new(config.clone(), "meshgate-system", "meshgate-state")
                .expect("store");
            std::thread::spawn(move || {
                for i in 0..15 {
                    store
                        .put(&key(&format!("{r}.{i}")), r.as_bytes(), &change("burst"))
                        .expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let store = KubeSecretStore::new(config, "meshgate-system", "meshgate-state").expect("store");
    assert_eq!(store.list("r1.").expect("list").len(), 15);
    assert_eq!(store.list("r2.").expect("list").len(), 15);
    assert_eq!(store.audit_log(0).expect("audit").len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_ca_and_only_one_holds_the_lease() {
    init_logs();
    let server = FakeApiServer::start();
    let replica =
        |pod: &str| KubeMode::from_config(server.kube_config(), options(pod)).expect("client");
    let (r1, r2) = (replica("meshgate-0"), replica("meshgate-1"));
    let td = OwnedTrustDomain::parse(TD).expect("td");
    let open = |k: KubeMode| {
        let td = td.clone();
        async move {
            let store: Arc<dyn Store> = k.state_store().expect("store");
            let mut elector = k.leader_elector();
            let ca = k
                .open_ca(store, CaConfig::new(td), CaSource::Generate, &mut elector)
                .await
                .expect("CA");
            (ca, elector)
        }
    };
    // Both start at once: exactly one creates the CA, the other opens it.
    let ((ca1, e1), (ca2, e2)) = tokio::join!(open(r1.clone()), open(r2.clone()));
    assert_eq!(ca1.trust_bundle(), ca2.trust_bundle(), "same trust bundle");
    assert_eq!(
        ca1.signing_chain(),
        ca2.signing_chain(),
        "same signing certificate"
    );
    assert_eq!(ca1.trust_bundle().len(), 1);
    // A certificate issued by one replica chains to the other's bundle.
    let now = UnixTime::from_secs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    );
    let id = meshgate_core::spiffe::OwnedSpiffeId::parse("spiffe://cluster.local/ns/a/sa/b")
        .expect("id");
    let (issued, _key) = ca2
        .issue_with_new_key(&id.borrow(), None, now, "test")
        .expect("issue");
    assert_eq!(issued.chain, ca1.signing_chain());
    assert_eq!(issued.trust_bundle, ca1.trust_bundle());

    // Leader election: exactly one leader.
    let (l1, l2) = (e1.subscribe(), e2.subscribe());
    let (stop1_tx, stop1) = watch::channel(false);
    let (stop2_tx, stop2) = watch::channel(false);
    let t1 = tokio::spawn(e1.run(stop1));
    let t2 = tokio::spawn(e2.run(stop2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(*l1.borrow() ^ *l2.borrow()) {
        assert!(Instant::now() < deadline, "no single leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        assert!(
            *l1.borrow() ^ *l2.borrow(),
            "exactly one leader at all times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "meshgate-system",
            "meshgate-leader",
        )
        .expect("lease");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (leader_task, follower_rx, follower_name, follower_stop) = if *l1.borrow() {
        assert_eq!(holder, "meshgate-0");
        (t1, l2.clone(), "meshgate-1", stop2_tx)
    } else {
        assert_eq!(holder, "meshgate-1");
        (t2, l1.clone(), "meshgate-0", stop1_tx)
    };

    // The leader stops renewing (crash: the task is gone, no release).
    leader_task.abort();
    let crashed_at = Instant::now();
    let deadline = crashed_at + Duration::from_secs(6);
    while !*follower_rx.borrow() {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = crashed_at.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "took over after {took:?}, before the lease could have expired"
    );
    let lease = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "meshgate-system",
            "meshgate-leader",
        )
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], follower_name);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // A clean stop releases the Lease.
    follower_stop.send(true).expect("stop");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lease = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "meshgate-system",
            "meshgate-leader",
        )
        .expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
}

#[tokio::test]
async fn spawn_returns_once_the_clusters_policies_are_applied_and_falls_back_to_v1beta1() {
    init_logs();
    let server = FakeApiServer::start();
    // An Istio that serves only v1beta1: the controller must watch that.
    server.hide_api_version("security.istio.io/v1");
    server.apply(seed_strict());
    let kube = KubeMode::from_config(server.kube_config(), options("meshgate-0")).expect("client");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let apply = move |u: PolicyUpdate| {
        let tx = tx.clone();
        async move { tx.send(u).map_err(|e| e.to_string()) }
    };
    let task = kube
        .spawn_controller(apply, stop_rx, Duration::from_secs(10))
        .await
        .expect("started");
    // By the time spawn returns, the STRICT policy has been handed over.
    let first = rx
        .try_recv()
        .expect("first update applied before spawn returned");
    let labels: &[(&str, &str)] = &[];
    assert_eq!(
        mode_of(&first, "bookinfo", labels, 9080),
        EffectiveMode::Strict
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /apis/security.istio.io/v1beta1/peerauthentications?")),
        "watched at v1beta1"
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /apis/security.istio.io/v1/peerauthentications")),
        "never asked for the unserved v1"
    );
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("task");
}

#[tokio::test]
async fn spawn_fails_without_istio_crds_or_when_the_first_update_is_refused() {
    init_logs();
    let server = FakeApiServer::start();
    let kube = KubeMode::from_config(server.kube_config(), options("meshgate-0")).expect("client");
    let refuse = |_u: PolicyUpdate| async { Err::<(), String>("data plane refused".to_owned()) };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let err = kube
        .spawn_controller(refuse, stop_rx.clone(), Duration::from_secs(10))
        .await
        .expect_err("refused first update fails the start");
    assert!(err.to_string().contains("refused"), "{err}");

    server.hide_api_version("security.istio.io/v1");
    server.hide_api_version("security.istio.io/v1beta1");
    let accept = |_u: PolicyUpdate| async { Ok::<(), String>(()) };
    let err = kube
        .spawn_controller(accept, stop_rx, Duration::from_secs(10))
        .await
        .expect_err("no Istio CRDs");
    assert!(
        matches!(err, meshgate_kube::KubeError::MissingCrd { .. }),
        "{err}"
    );
}
