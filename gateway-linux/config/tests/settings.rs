//! The settings file: defaults, the documented example, the service model
//! the data plane routes with, and every error with its line and field.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::path::{Path, PathBuf};

use meshgate_config::error::ConfigErrors;
use meshgate_config::policy::load_policies;
use meshgate_config::settings::{
    Address, EMBEDDED_DEFAULT_YAML, Limits, ListenerProtocol, Protocol, Settings, UpstreamTls,
};
use meshgate_core::time::UnixTime;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/meshgate.yaml")
}

fn parse(src: &str) -> Result<Settings, ConfigErrors> {
    Settings::parse("meshgate.yaml", src, Path::new("/etc/meshgate"))
}

fn ok(src: &str) -> Settings {
    parse(src).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// (document, line, field) of every diagnostic.
fn places(src: &str) -> Vec<(Option<usize>, usize, String)> {
    match parse(src) {
        Ok(s) => panic!("expected errors, parsed {s:?}"),
        Err(e) => e
            .diagnostics()
            .iter()
            .map(|d| {
                (
                    d.document,
                    d.location.map_or(0, |l| l.line),
                    d.field.clone(),
                )
            })
            .collect(),
    }
}

fn first_error(src: &str) -> String {
    match parse(src) {
        Ok(s) => panic!("expected errors, parsed {s:?}"),
        Err(e) => e.diagnostics()[0].to_string(),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

#[test]
fn embedded_default_is_valid_and_matches_its_yaml() {
    let d = Settings::embedded_default();
    assert_eq!(d.trust_domain.to_string(), "cluster.local");
    assert_eq!(d.root_namespace, "istio-system");
    assert_eq!(d.admin_address, local(15000));
    assert_eq!(d.listeners.len(), 1);
    assert_eq!(d.listeners[0].address, local(9080));
    assert!(d.listeners.iter().all(|l| l.address.ip().is_loopback()));
    assert_eq!(
        d.identity.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/meshgate-system/sa/meshgate"
    );
    assert_eq!(d.identity.cert_ttl, Duration::from_secs(86_400));
    let parsed = Settings::parse("embedded", EMBEDDED_DEFAULT_YAML, Path::new(""))
        .expect("embedded YAML parses");
    assert_eq!(parsed, d);
}

#[test]
fn an_empty_file_means_defaults_relative_to_the_file() {
    let s = ok("# nothing\n");
    assert_eq!(s.data_dir, PathBuf::from("/etc/meshgate/meshgate-data"));
    assert_eq!(s.listeners, Settings::embedded_default().listeners);
    assert!(s.services.is_empty());
}

#[test]
fn the_example_file_loads_into_a_routable_model() {
    let s = Settings::load(&example()).unwrap_or_else(|e| panic!("{e}"));
    let dir = example()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    assert_eq!(s.policy_paths, vec![dir.join("policies/")]);
    assert_eq!(s.data_dir, dir.join("meshgate-data"));
    assert_eq!(s.listeners.len(), 2);
    assert_eq!(s.listeners[1].protocol, ListenerProtocol::Tcp);
    assert_eq!(
        s.listeners[1].service.as_deref(),
        Some("db.legacy.svc.cluster.local")
    );

    // Host → service → port → workload → workload port.
    let details = s
        .service_for_host("Details.Bookinfo.svc.cluster.local:9080")
        .expect("details routed");
    assert_eq!(
        (details.name.as_str(), details.namespace.as_str()),
        ("details", "bookinfo")
    );
    let port = details.port(9080).expect("port 9080");
    assert_eq!(port.protocol, Protocol::Http);
    let eps: Vec<_> = details.endpoints(port).collect();
    assert_eq!(eps.len(), 1);
    let (w, workload_port) = eps[0];
    assert_eq!(workload_port, 19080);
    assert_eq!(w.address, Address::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(w.namespace, "bookinfo");
    assert_eq!(w.service_account, "bookinfo-details");
    assert!(w.labels.contains(&("app".into(), "details".into())));
    assert_eq!(w.upstream, UpstreamTls::Plaintext);

    let pp = s
        .service_for_host("productpage.bookinfo.svc.cluster.local")
        .expect("pp");
    let port = pp.port(9080).expect("port");
    assert_eq!(
        pp.endpoints(port).map(|(_, p)| p).collect::<Vec<_>>(),
        vec![19081]
    );

    let db = s
        .service_for_host("db.legacy.svc.cluster.local")
        .expect("db");
    assert!(db.mesh_external);
    assert_eq!(db.ports[0].protocol, Protocol::Tcp);
    assert_eq!(
        db.workloads[0].address,
        Address::Dns("db.internal.example".into())
    );
    assert_eq!(db.workloads[0].service_account, "default");

    // The ServiceEntry document selects the WorkloadEntry document; its
    // sidecar label makes the upstream a mesh one with secure naming.
    let reviews = s
        .service_for_host("reviews.bookinfo.svc.cluster.local")
        .expect("reviews");
    assert_eq!(reviews.workloads.len(), 1);
    assert_eq!(reviews.workloads[0].name, "reviews-v1");
    match &reviews.workloads[0].upstream {
        UpstreamTls::Mesh { identities } => assert_eq!(
            identities
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"]
        ),
        UpstreamTls::Plaintext => panic!("reviews must be a mesh upstream"),
    }
    assert!(
        s.service_for_host("ratings.bookinfo.svc.cluster.local")
            .is_none()
    );

    // The policies the example points at load too.
    let set = load_policies(&s.policy_paths, UnixTime::EPOCH).expect("example policies");
    assert_eq!(set.peer_authentications.len(), 1);
}

#[test]
fn subject_alt_names_override_the_expected_identity() {
    let s = ok("\
services:
- name: api
  namespace: shop
  hosts: [api.shop]
  ports: [{number: 443, name: https}]
  subjectAltNames: [spiffe://cluster.local/ns/shop/sa/api-v2]
  endpoints:
  - address: 10.0.0.1
    labels: {security.istio.io/tlsMode: istio}
");
    let w = &s.services[0].workloads[0];
    assert_eq!(s.services[0].ports[0].protocol, Protocol::Https);
    match &w.upstream {
        UpstreamTls::Mesh { identities } => {
            assert_eq!(
                identities[0].to_string(),
                "spiffe://cluster.local/ns/shop/sa/api-v2"
            );
        }
        UpstreamTls::Plaintext => panic!("mesh upstream expected"),
    }
}

#[test]
fn settings_field_errors_name_line_and_field() {
    let src = "\
trustDomain: Cluster Local
rootNamespace: istio_system
dataDir: \"\"
admin:
  adress: 127.0.0.1:15000
listeners:
- address: localhost:9080
- address: 127.0.0.1:9081
  protocol: udp
identity:
  spiffeId: spiffe://other.domain/ns/x/sa/y
  certTtl: 1 day
tls:
  certFile: a.pem
polices: []
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 1, "trustDomain".to_owned()),
            (Some(1), 2, "rootNamespace".to_owned()),
            (Some(1), 3, "dataDir".to_owned()),
            (Some(1), 5, "admin.adress".to_owned()),
            (Some(1), 7, "listeners[0].address".to_owned()),
            (Some(1), 9, "listeners[1].protocol".to_owned()),
            (Some(1), 11, "identity.spiffeId".to_owned()),
            (Some(1), 12, "identity.certTtl".to_owned()),
            (Some(1), 14, "tls.keyFile".to_owned()),
            (Some(1), 14, "tls.caFile".to_owned()),
            (Some(1), 15, "polices".to_owned()),
        ]
    );
    assert_eq!(
        first_error("listeners:\n- address: localhost:9080\n"),
        "meshgate.yaml: document 1, line 2, column 12: listeners[0].address: \
         \"localhost:9080\" is not an IP:port address (e.g. 127.0.0.1:9080 or [::1]:9080)"
    );
}

#[test]
fn limits_default_and_parse() {
    assert_eq!(ok("# nothing\n").limits, Limits::default());
    let l = ok("\
limits:
  maxConnections: 3000
  maxConnectionsPerSource: 200
  headTimeout: 2s
  idleTimeout: 1m30s
  tcpIdleTimeout: 2h
  maxRequestHeadBytes: 16384
  upstreamConnectTimeout: 500ms
")
    .limits;
    assert_eq!(
        l,
        Limits {
            max_connections: 3000,
            max_connections_per_source: 200,
            head_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(90),
            tcp_idle_timeout: Duration::from_secs(7200),
            max_request_head_bytes: 16384,
            upstream_connect_timeout: Duration::from_millis(500),
        }
    );
    // Fields not given keep their defaults.
    let l = ok("limits: {headTimeout: 3s}\n").limits;
    assert_eq!(l.head_timeout, Duration::from_secs(3));
    assert_eq!(l.max_connections, Limits::default().max_connections);
}

#[test]
fn limits_errors_name_line_and_field() {
    let src = "\
trustDomain: cluster.local
limits:
  maxConnections: 0
  maxConnectionsPerSource: many
  headTimeout: 0s
  idleTimeout: forever
  maxRequestHeadBytes: 1024
  upstreamConnectTimeout: 2h
  maxBodyBytes: 10
";
    let got = places(src);
    for (line, field) in [
        (3, "limits.maxConnections"),
        (4, "limits.maxConnectionsPerSource"),
        (5, "limits.headTimeout"),
        (6, "limits.idleTimeout"),
        (7, "limits.maxRequestHeadBytes"),
        (8, "limits.upstreamConnectTimeout"),
    ] {
        assert!(
            got.contains(&(Some(1), line, field.to_owned())),
            "no error for {field} at line {line}: {got:?}"
        );
    }
    assert!(
        got.iter().any(|(_, _, f)| f.contains("maxBodyBytes")),
        "unknown field not reported: {got:?}"
    );
    // A zero timeout would disable the slowloris bound: refused with a
    // message saying what is allowed.
    let msg = first_error("limits: {headTimeout: 0s}\n");
    assert!(
        msg.contains("headTimeout") && msg.contains("out of range"),
        "{msg}"
    );
    let msg = first_error("limits: {maxRequestHeadBytes: 100}\n");
    assert!(msg.contains("8192"), "{msg}");
}

#[test]
fn listener_conflicts_and_references() {
    let src = "\
admin: {address: 127.0.0.1:15000}
listeners:
- {name: a, address: 127.0.0.1:15000}
- {name: a, address: 127.0.0.1:9000}
- {name: b, address: 127.0.0.1:9001, protocol: tcp, service: nowhere.example}
- {name: c, address: 127.0.0.1:9002, service: nowhere.example}
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 3, "listeners[0].address".to_owned()),
            (Some(1), 4, "listeners[1].name".to_owned()),
            (Some(1), 5, "listeners[2].service".to_owned()),
            (Some(1), 6, "listeners[3].service".to_owned()),
        ]
    );
}

#[test]
fn service_errors_name_line_and_field() {
    let src = "\
services:
- name: a
  namespace: ns
  hosts: [\"*.example.com\", a.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 80, name: http2}
  - {number: 81, name: x, protocol: MONGO}
  - {number: 82, name: y}
  resolution: STATIC
  endpoints:
  - address: a.internal
  - address: 10.0.0.1
    ports: {web: 8080}
- name: b
  hosts: [A.example.com]
  extra: 1
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 17, "services[1].extra".to_owned()),
            (Some(1), 4, "services[0].hosts[0]".to_owned()),
            (Some(1), 7, "services[0].ports[1]".to_owned()),
            (Some(1), 8, "services[0].ports[2].protocol".to_owned()),
            (Some(1), 12, "services[0].endpoints[0].address".to_owned()),
            (
                Some(1),
                13,
                "services[0].endpoints[1].ports[web]".to_owned()
            ),
        ]
    );
    // Duplicate hosts across services (case-insensitive).
    let src = "\
services:
- {name: a, hosts: [a.example.com]}
- {name: b, hosts: [A.example.com]}
";
    assert_eq!(
        places(src),
        vec![(Some(1), 3, "services[1].hosts[0]".to_owned())]
    );
    assert!(first_error(src).ends_with("host a.example.com is already served by default/a"));
}

#[test]
fn istio_documents_in_the_settings_file() {
    let src = "\
listeners: []
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: x, namespace: ns}
spec:
  hosts: [x.ns]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: x}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: x1, namespace: ns}
spec: {address: 10.1.1.1, labels: {app: x}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: x2, namespace: other}
spec: {address: 10.1.1.2, labels: {app: x}}
";
    let s = ok(src);
    assert!(s.listeners.is_empty());
    let x = &s.services[0];
    assert_eq!(x.workloads.len(), 1, "only the same namespace is selected");
    assert_eq!(x.endpoints(&x.ports[0]).next().map(|(_, p)| p), Some(8080));

    let bad = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec:
  hosts: [x.ns]
  host: y
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: x}
---
a: 1
---
b: 2
";
    assert_eq!(
        places(bad),
        vec![
            (Some(1), 6, "spec.host".to_owned()),
            (Some(2), 9, "kind".to_owned()),
            (Some(3), 12, "a".to_owned()),
            (Some(4), 14, String::new()),
        ]
    );
    let dup = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec: {hosts: [x.ns]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec: {hosts: [y.ns]}
";
    assert_eq!(places(dup), vec![(Some(2), 6, "metadata.name".to_owned())]);
}

#[test]
fn service_files_are_loaded_relative_to_the_settings_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("services")).expect("mkdir");
    std::fs::write(
        dir.path().join("services/details.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: details, namespace: bookinfo}\nspec:\n  hosts: [details.bookinfo]\n  ports: [{number: 9080, name: http}]\n  endpoints: [{address: 127.0.0.1}]\n",
    )
    .expect("write");
    let settings = dir.path().join("meshgate.yaml");
    std::fs::write(&settings, "serviceFiles: [services]\n").expect("write");
    let s = Settings::load(&settings).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.service_for_host("details.bookinfo").is_some());

    std::fs::write(
        dir.path().join("services/broken.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b}\nspec:\n  hosts: []\n",
    )
    .expect("write");
    let e = Settings::load(&settings).expect_err("broken service file");
    let d = &e.diagnostics()[0];
    assert!(d.file.ends_with("broken.yaml"), "{e}");
    assert_eq!((d.document, d.location.map(|l| l.line)), (Some(1), Some(5)));
    assert_eq!(d.field, "spec.hosts");

    let e = Settings::load(&dir.path().join("missing.yaml")).expect_err("missing file");
    assert!(e.to_string().contains("missing.yaml: cannot read"), "{e}");
}
