//! Decision latency at mesh scale: 10,000 namespaces, 50,000 workload
//! PeerAuthentications and 5,000 AuthorizationPolicies (target: < 1 µs per
//! mode + authorization decision, median).
//!
//! Run briefly with
//! `cargo bench -p meshgate-core --bench decisions -- --warm-up-time 1 --measurement-time 3`.

use core::hint::black_box;
use core::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{
    Action, AuthorizationPolicy, MeshConfig, ObjectMeta, Operation, PeerAuthentication, PolicySet,
    Request, Rule, Selector, Source, Workload,
};
use meshgate_core::spiffe::Principal;
use meshgate_core::time::UnixTime;

const NAMESPACES: usize = 10_000;
const WORKLOADS_PER_NS: usize = 5;
const AUTHZ: usize = 5_000;

fn meta(ns: &str, name: &str, age: u64) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        creation: UnixTime::from_secs(age),
    }
}

fn selector(app: &str) -> Option<Selector> {
    Some(Selector {
        match_labels: vec![
            ("app".into(), app.into()),
            ("tier".into(), "backend".into()),
        ],
    })
}

fn build() -> PolicySet {
    let modes = [
        MtlsMode::Strict,
        MtlsMode::Permissive,
        MtlsMode::Unset,
        MtlsMode::Disable,
    ];
    let mut peers = vec![PeerAuthentication {
        meta: meta("istio-system", "default", 0),
        selector: None,
        mode: MtlsMode::Strict,
        port_level_mtls: vec![],
    }];
    let mut authz = vec![AuthorizationPolicy {
        meta: meta("istio-system", "deny-plaintext-admin", 0),
        selector: None,
        action: Action::Deny,
        provider: None,
        rules: vec![Rule {
            from: vec![Source {
                not_principals: vec!["*".into()],
                ..Source::default()
            }],
            to: vec![Operation {
                ports: vec!["15000".into()],
                ..Operation::default()
            }],
            ..Rule::default()
        }],
        dry_run: false,
    }];
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        for w in 0..WORKLOADS_PER_NS {
            let i = n * WORKLOADS_PER_NS + w;
            peers.push(PeerAuthentication {
                meta: meta(&ns, &format!("wl-{w}"), (i % 97) as u64),
                selector: selector(&format!("svc-{w}")),
                mode: modes[i % modes.len()],
                port_level_mtls: if w % 2 == 0 {
                    vec![(8080, MtlsMode::Disable), (9090, MtlsMode::Permissive)]
                } else {
                    vec![]
                },
            });
        }
        if n % (NAMESPACES / AUTHZ) == 0 {
            authz.push(AuthorizationPolicy {
                meta: meta(&ns, "viewer", 1),
                selector: selector("svc-0"),
                action: Action::Allow,
                provider: None,
                rules: vec![
                    Rule {
                        from: vec![Source {
                            principals: vec![format!("cluster.local/ns/{ns}/sa/frontend")],
                            ..Source::default()
                        }],
                        to: vec![Operation {
                            methods: vec!["GET".into(), "HEAD".into()],
                            paths: vec!["/api/*".into()],
                            ..Operation::default()
                        }],
                        ..Rule::default()
                    },
                    Rule {
                        from: vec![Source {
                            namespaces: vec!["monitoring".into()],
                            ip_blocks: vec!["10.0.0.0/8".into()],
                            ..Source::default()
                        }],
                        ..Rule::default()
                    },
                ],
                dry_run: false,
            });
        }
    }
    // Exactly the requested counts (the root policies are on top).
    assert_eq!(peers.len() - 1, NAMESPACES * WORKLOADS_PER_NS);
    assert_eq!(authz.len() - 1, AUTHZ);
    PolicySet::new(MeshConfig::default(), &peers, &authz).expect("valid benchmark policies")
}

fn bench(c: &mut Criterion) {
    let set = build();
    let labels = [("app", "svc-0"), ("tier", "backend"), ("version", "v1")];
    // A spread of namespaces so lookups do not stay in one cache line.
    let namespaces: Vec<String> = (0..64)
        .map(|k| format!("ns-{}", k * 154 % NAMESPACES))
        .collect();
    let principals: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("cluster.local/ns/{ns}/sa/frontend"))
        .collect();
    let headers: [(&str, &str); 1] = [("user-agent", "bench")];
    let ip: IpAddr = "10.1.2.3".parse().expect("literal IP");

    let mut k = 0usize;
    c.bench_function("mode+authz decision", |b| {
        b.iter(|| {
            k = (k + 1) % namespaces.len();
            let workload = Workload::new(&namespaces[k], &labels);
            let mode = set.resolve_mode(black_box(&workload), black_box(8080));
            let req = Request {
                workload,
                port: 8080,
                principal: Principal::parse(&principals[k]).ok(),
                source_ip: ip,
                sni: None,
                http: Some(meshgate_core::policy::HttpRequest {
                    host: "svc-0.example",
                    method: "GET",
                    path: "/api/items?page=2",
                    headers: &headers,
                }),
            };
            let d = set.authorize(black_box(&req));
            black_box((mode.mode, d.verdict))
        })
    });

    c.bench_function("mode only", |b| {
        b.iter(|| {
            k = (k + 1) % namespaces.len();
            let workload = Workload::new(&namespaces[k], &labels);
            black_box(set.resolve_mode(black_box(&workload), black_box(9080)).mode)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
