//! Public-API tests for PeerAuthentication: validation and mode resolution.
//!
//! Every resolution rule of ISTIO.md has a table case that fails when the
//! rule is removed from the implementation; property tests then compare the
//! policy set with a straightforward reference model on random inputs.

use meshgate_core::mtls::{EffectiveMode, MtlsMode};
use meshgate_core::policy::{
    MeshConfig, ObjectMeta, PeerAuthentication, PolicySet, ResourceKind, Scope, Selector,
    ValidationErrorKind, Workload, validate_peer_authentication,
};
use meshgate_core::time::UnixTime;
use proptest::prelude::*;

const ROOT: &str = "istio-system";

fn pa(ns: &str, name: &str, age: u64, sel: &[(&str, &str)], mode: MtlsMode) -> PeerAuthentication {
    PeerAuthentication {
        meta: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            creation: UnixTime::from_secs(age),
        },
        selector: (!sel.is_empty()).then(|| Selector {
            match_labels: sel
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }),
        mode,
        port_level_mtls: vec![],
    }
}

fn with_ports(mut p: PeerAuthentication, ports: &[(u32, MtlsMode)]) -> PeerAuthentication {
    p.port_level_mtls = ports.to_vec();
    p
}

fn set(pas: &[PeerAuthentication]) -> PolicySet {
    PolicySet::new(MeshConfig::default(), pas, &[]).expect("valid policies")
}

use EffectiveMode as E;
use MtlsMode::{Disable, Permissive, Strict, Unset};

/// One table case: policies, the workload asked about, the expected mode,
/// scope and deciding policy name.
struct Case {
    rule: &'static str,
    policies: Vec<PeerAuthentication>,
    ns: &'static str,
    labels: &'static [(&'static str, &'static str)],
    port: u16,
    want: (E, Scope, Option<&'static str>),
}

#[test]
fn every_resolution_rule() {
    let app = &[("app", "finance")][..];
    let app_v1 = &[("app", "finance"), ("version", "v1")][..];
    let cases = vec![
        Case {
            rule: "no policy at all: PERMISSIVE",
            policies: vec![],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Permissive, Scope::Default, None),
        },
        Case {
            rule: "only UNSET policies: PERMISSIVE",
            policies: vec![pa(ROOT, "m", 1, &[], Unset), pa("foo", "n", 1, &[], Unset)],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Permissive, Scope::Default, None),
        },
        Case {
            rule: "mesh policy applies to every namespace",
            policies: vec![pa(ROOT, "mesh", 1, &[], Strict)],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Strict, Scope::Mesh, Some("mesh")),
        },
        Case {
            rule: "namespace overrides mesh",
            policies: vec![
                pa(ROOT, "mesh", 1, &[], Strict),
                pa("foo", "ns", 1, &[], Disable),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Disable, Scope::Namespace, Some("ns")),
        },
        Case {
            rule: "namespace policy of another namespace does not apply",
            policies: vec![
                pa(ROOT, "mesh", 1, &[], Strict),
                pa("bar", "ns", 1, &[], Disable),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Strict, Scope::Mesh, Some("mesh")),
        },
        Case {
            rule: "UNSET namespace policy inherits the mesh mode",
            policies: vec![
                pa(ROOT, "mesh", 1, &[], Strict),
                pa("foo", "ns", 1, &[], Unset),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Strict, Scope::Mesh, Some("mesh")),
        },
        Case {
            rule: "workload overrides namespace",
            policies: vec![
                pa("foo", "ns", 1, &[], Strict),
                pa("foo", "wl", 1, app, Permissive),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Permissive, Scope::Workload, Some("wl")),
        },
        Case {
            rule: "UNSET workload policy inherits the namespace mode",
            policies: vec![
                pa("foo", "ns", 1, &[], Disable),
                pa("foo", "wl", 1, app, Unset),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Disable, Scope::Namespace, Some("ns")),
        },
        Case {
            rule: "a selector needs all its labels on the workload",
            policies: vec![
                pa("foo", "ns", 1, &[], Strict),
                pa("foo", "wl", 1, app_v1, Disable),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Strict, Scope::Namespace, Some("ns")),
        },
        Case {
            rule: "a selector matches a workload with more labels",
            policies: vec![pa("foo", "wl", 1, app, Disable)],
            ns: "foo",
            labels: app_v1,
            port: 80,
            want: (E::Disable, Scope::Workload, Some("wl")),
        },
        Case {
            rule: "a workload policy of another namespace does not apply",
            policies: vec![pa("bar", "wl", 1, app, Strict)],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Permissive, Scope::Default, None),
        },
        Case {
            rule: "selector policies in the root namespace are ignored",
            policies: vec![pa(ROOT, "rootsel", 1, app, Strict)],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Permissive, Scope::Default, None),
        },
        Case {
            rule: "root-namespace workloads: root selector policies ignored there too",
            policies: vec![
                pa(ROOT, "mesh", 1, &[], Strict),
                pa(ROOT, "rootsel", 1, app, Disable),
            ],
            ns: ROOT,
            labels: app,
            port: 80,
            want: (E::Strict, Scope::Mesh, Some("mesh")),
        },
        Case {
            rule: "port override for the listed workload port",
            policies: vec![with_ports(
                pa("foo", "wl", 1, app, Strict),
                &[(8080, Disable)],
            )],
            ns: "foo",
            labels: app,
            port: 8080,
            want: (E::Disable, Scope::Port, Some("wl")),
        },
        Case {
            rule: "port override keyed by workload port: other ports keep the workload mode",
            policies: vec![with_ports(
                pa("foo", "wl", 1, app, Strict),
                &[(8080, Disable)],
            )],
            ns: "foo",
            labels: app,
            port: 9080,
            want: (E::Strict, Scope::Workload, Some("wl")),
        },
        Case {
            rule: "UNSET port entry inherits the workload/namespace mode",
            policies: vec![
                pa("foo", "ns", 1, &[], Disable),
                with_ports(pa("foo", "wl", 1, app, Unset), &[(8080, Unset)]),
            ],
            ns: "foo",
            labels: app,
            port: 8080,
            want: (E::Disable, Scope::Namespace, Some("ns")),
        },
        Case {
            rule: "oldest mesh policy wins",
            policies: vec![
                pa(ROOT, "new", 5, &[], Strict),
                pa(ROOT, "old", 1, &[], Disable),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Disable, Scope::Mesh, Some("old")),
        },
        Case {
            rule: "oldest namespace policy wins",
            policies: vec![
                pa("foo", "new", 5, &[], Strict),
                pa("foo", "old", 1, &[], Permissive),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Permissive, Scope::Namespace, Some("old")),
        },
        Case {
            rule: "oldest wins even when it is UNSET (it then inherits)",
            policies: vec![
                pa(ROOT, "mesh", 1, &[], Disable),
                pa("foo", "new", 5, &[], Strict),
                pa("foo", "old", 1, &[], Unset),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Disable, Scope::Mesh, Some("mesh")),
        },
        Case {
            rule: "same age: the name decides",
            policies: vec![
                pa("foo", "b", 1, &[], Strict),
                pa("foo", "a", 1, &[], Disable),
            ],
            ns: "foo",
            labels: app,
            port: 80,
            want: (E::Disable, Scope::Namespace, Some("a")),
        },
        Case {
            rule: "oldest matching workload policy wins",
            policies: vec![
                pa("foo", "new", 5, app, Strict),
                pa("foo", "old", 1, app_v1, Disable),
            ],
            ns: "foo",
            labels: app_v1,
            port: 80,
            want: (E::Disable, Scope::Workload, Some("old")),
        },
        Case {
            rule: "portLevelMtls is never merged across workload policies",
            policies: vec![
                pa("foo", "old", 1, app, Strict),
                with_ports(pa("foo", "new", 5, app, Strict), &[(8080, Disable)]),
            ],
            ns: "foo",
            labels: app,
            port: 8080,
            want: (E::Strict, Scope::Workload, Some("old")),
        },
    ];
    for c in cases {
        let s = set(&c.policies);
        let wl = Workload::new(c.ns, &c.labels);
        let d = s.resolve_mode(&wl, c.port);
        let got = (d.mode, d.scope, d.policy.map(|p| p.name));
        assert_eq!(got, c.want, "rule: {}", c.rule);
    }
}

#[test]
fn chain_lists_every_scope_considered() {
    let app = [("app", "finance")];
    let s = set(&[
        pa(ROOT, "mesh", 1, &[], Strict),
        pa("foo", "ns", 1, &[], Unset),
        with_ports(pa("foo", "finance", 1, &app, Unset), &[(8080, Disable)]),
    ]);
    let d = s.resolve_mode(&Workload::new("foo", &app), 8080);
    let chain: Vec<String> = d
        .chain
        .iter()
        .map(|(scope, c)| format!("{scope}:{}:{}", c.policy, c.mode))
        .collect();
    assert_eq!(
        chain,
        [
            "mesh:istio-system/mesh:STRICT",
            "namespace:foo/ns:UNSET",
            "workload:foo/finance:UNSET",
            "port:foo/finance:DISABLE",
        ]
    );
    assert_eq!(d.to_string(), "DISABLE (set by port policy foo/finance)");
    let d = s.resolve_mode(&Workload::new("foo", &app), 80);
    assert_eq!(
        d.to_string(),
        "STRICT (set by mesh policy istio-system/mesh)"
    );
    assert_eq!(d.chain.port, None);
}

#[test]
fn root_selector_policies_are_reported_as_ignored() {
    let s = set(&[pa(ROOT, "rootsel", 1, &[("app", "x")], Strict)]);
    let ignored: Vec<String> = s
        .ignored_peer_authentications()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(ignored, ["istio-system/rootsel"]);
}

#[test]
fn custom_root_namespace() {
    let cfg = MeshConfig {
        root_namespace: "mesh-root",
        trust_domain: "example.org",
    };
    let s = PolicySet::new(cfg, &[pa("mesh-root", "m", 1, &[], Strict)], &[]).unwrap();
    let d = s.resolve_mode(&Workload::new("foo", &[("a", "b")]), 1);
    assert_eq!((d.mode, d.scope), (E::Strict, Scope::Mesh));
    // istio-system is an ordinary namespace now.
    let s = PolicySet::new(cfg, &[pa(ROOT, "m", 1, &[], Strict)], &[]).unwrap();
    let d = s.resolve_mode(&Workload::new("foo", &[("a", "b")]), 1);
    assert_eq!(d.scope, Scope::Default);
}

// ---------------------------------------------------------------- validation

fn errors(p: &PeerAuthentication) -> Vec<(String, ValidationErrorKind)> {
    match validate_peer_authentication(p) {
        Ok(()) => vec![],
        Err(es) => es.into_iter().map(|e| (e.field, e.kind)).collect(),
    }
}

#[test]
fn validation_errors_name_the_field() {
    use ValidationErrorKind as K;
    let ns_ports = with_ports(pa("foo", "ns", 1, &[], Strict), &[(8080, Disable)]);
    assert_eq!(
        errors(&ns_ports),
        [("spec.portLevelMtls".into(), K::PortLevelMtlsWithoutSelector)]
    );
    let e = validate_peer_authentication(&ns_ports).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"
    );

    let bad_ports = with_ports(
        pa("foo", "wl", 1, &[("app", "x")], Strict),
        &[
            (0, Disable),
            (70000, Disable),
            (8080, Strict),
            (8080, Disable),
        ],
    );
    assert_eq!(
        errors(&bad_ports),
        [
            ("spec.portLevelMtls[0]".into(), K::PortOutOfRange),
            ("spec.portLevelMtls[70000]".into(), K::PortOutOfRange),
            ("spec.portLevelMtls[8080]".into(), K::DuplicatePort),
        ]
    );
    assert_eq!(
        K::PortOutOfRange.to_string(),
        "port must be in range 1..65535"
    );

    let sel = pa("foo", "wl", 1, &[("", "x"), ("app", "fin*")], Strict);
    assert_eq!(
        errors(&sel),
        [
            (
                "spec.selector.matchLabels[]".into(),
                K::EmptySelectorKey("x".into())
            ),
            (
                "spec.selector.matchLabels[app]".into(),
                K::WildcardInSelector("app=fin*".into())
            ),
        ]
    );
    assert_eq!(
        K::WildcardInSelector("app=fin*".into()).to_string(),
        "wildcard is not supported in selector: \"app=fin*\""
    );

    let unnamed = pa("", "", 1, &[], Strict);
    assert_eq!(
        errors(&unnamed),
        [
            ("metadata.name".into(), K::Empty),
            ("metadata.namespace".into(), K::Empty)
        ]
    );

    // Valid extremes.
    let ok = with_ports(
        pa("foo", "wl", 1, &[("app", "x")], Strict),
        &[(1, Disable), (65535, Unset)],
    );
    assert_eq!(errors(&ok), []);
}

#[test]
fn build_fails_closed_with_every_error() {
    let bad = with_ports(pa("foo", "ns", 1, &[], Strict), &[(8080, Disable)]);
    let good = pa("foo", "ok", 1, &[], Strict);
    let dup = pa("foo", "ok", 2, &[], Disable);
    let err = PolicySet::new(MeshConfig::default(), &[bad, good, dup], &[]).unwrap_err();
    let got: Vec<(ResourceKind, &str, &str)> = err
        .errors
        .iter()
        .map(|e| (e.kind, e.name.as_str(), e.error.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (ResourceKind::PeerAuthentication, "ns", "spec.portLevelMtls"),
            (ResourceKind::PeerAuthentication, "ok", "metadata.name"),
        ]
    );
    assert!(
        err.to_string()
            .contains("invalid PeerAuthentication foo/ns: spec.portLevelMtls")
    );

    let cfg = MeshConfig {
        root_namespace: "",
        trust_domain: "Bad.Domain",
    };
    let err = PolicySet::new(cfg, &[], &[]).unwrap_err();
    let fields: Vec<&str> = err.errors.iter().map(|e| e.error.field.as_str()).collect();
    assert_eq!(fields, ["rootNamespace", "trustDomain"]);
}

// ------------------------------------------------------------ property tests

const NAMESPACES: [&str; 3] = [ROOT, "a", "b"];
const LABEL_SETS: [&[(&str, &str)]; 3] = [
    &[("app", "x")],
    &[("app", "x"), ("v", "1")],
    &[("app", "y")],
];
const PORTS: [u16; 2] = [80, 8080];

fn mode_strategy() -> impl Strategy<Value = MtlsMode> {
    prop_oneof![Just(Unset), Just(Disable), Just(Permissive), Just(Strict)]
}

/// A random policy: namespace, selector (0 = none), mode, creation, port modes.
/// namespace, selector (0 = none), mode, creation, port modes.
type Spec = (usize, usize, MtlsMode, u64, Vec<(usize, MtlsMode)>);

fn policy_strategy() -> impl Strategy<Value = Spec> {
    (
        0..NAMESPACES.len(),
        0..=LABEL_SETS.len(),
        mode_strategy(),
        0u64..4,
        proptest::collection::vec((0..PORTS.len(), mode_strategy()), 0..3),
    )
}

fn build(specs: &[Spec]) -> Vec<PeerAuthentication> {
    specs
        .iter()
        .enumerate()
        .map(|(i, (ns, sel, mode, age, ports))| {
            let selector: &[(&str, &str)] = if *sel == 0 { &[] } else { LABEL_SETS[*sel - 1] };
            let mut p = pa(NAMESPACES[*ns], &format!("p{i}"), *age, selector, *mode);
            if !selector.is_empty() {
                let mut seen = Vec::new();
                for (port, m) in ports {
                    if !seen.contains(port) {
                        seen.push(*port);
                        p.port_level_mtls.push((u32::from(PORTS[*port]), *m));
                    }
                }
            }
            p
        })
        .collect()
}

/// ISTIO.md's resolution, written as plainly as possible.
fn reference(
    pas: &[PeerAuthentication],
    ns: &str,
    labels: &[(&str, &str)],
    port: u16,
) -> EffectiveMode {
    let older = |a: &&PeerAuthentication, b: &&PeerAuthentication| {
        (a.meta.creation, &a.meta.name, &a.meta.namespace).cmp(&(
            b.meta.creation,
            &b.meta.name,
            &b.meta.namespace,
        ))
    };
    let no_sel = |p: &&PeerAuthentication| {
        p.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    };
    let mesh = pas
        .iter()
        .filter(|p| p.meta.namespace == ROOT && no_sel(p))
        .min_by(older);
    let nsp = pas
        .iter()
        .filter(|p| p.meta.namespace == ns && ns != ROOT && no_sel(p))
        .min_by(older);
    let wl = pas
        .iter()
        .filter(|p| p.meta.namespace == ns && ns != ROOT && !no_sel(p))
        .filter(|p| {
            p.selector.as_ref().is_some_and(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
        })
        .min_by(older);
    let mut mode = EffectiveMode::Permissive;
    for p in [mesh, nsp, wl].into_iter().flatten() {
        mode = p.mode.or_inherit(mode);
    }
    let port_mode = wl.and_then(|p| {
        p.port_level_mtls
            .iter()
            .find(|(q, _)| *q == u32::from(port))
    });
    if let Some((_, m)) = port_mode {
        mode = m.or_inherit(mode);
    }
    mode
}

fn all_modes(s: &PolicySet) -> Vec<EffectiveMode> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for labels in LABEL_SETS {
            for port in PORTS {
                out.push(s.resolve_mode(&Workload::new(ns, &labels), port).mode);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn matches_the_reference_model(specs in proptest::collection::vec(policy_strategy(), 0..12)) {
        let pas = build(&specs);
        let s = set(&pas);
        for ns in NAMESPACES {
            for labels in LABEL_SETS {
                for port in PORTS {
                    let got = s.resolve_mode(&Workload::new(ns, &labels), port).mode;
                    prop_assert_eq!(got, reference(&pas, ns, labels, port), "{} {:?} {}", ns, labels, port);
                }
            }
        }
    }

    #[test]
    fn input_order_does_not_matter(specs in proptest::collection::vec(policy_strategy(), 0..12)) {
        let pas = build(&specs);
        let mut rev = pas.clone();
        rev.reverse();
        prop_assert_eq!(all_modes(&set(&pas)), all_modes(&set(&rev)));
    }

    #[test]
    fn a_newest_unset_policy_never_changes_the_result(
        specs in proptest::collection::vec(policy_strategy(), 0..12),
        ns in 0..NAMESPACES.len(),
        sel in 0..=LABEL_SETS.len(),
    ) {
        let pas = build(&specs);
        let before = all_modes(&set(&pas));
        let selector: &[(&str, &str)] = if sel == 0 { &[] } else { LABEL_SETS[sel - 1] };
        let mut more = pas.clone();
        more.push(pa(NAMESPACES[ns], "unset", 100, selector, Unset));
        prop_assert_eq!(before, all_modes(&set(&more)));
    }

    #[test]
    fn a_newer_duplicate_never_changes_the_result(
        specs in proptest::collection::vec(policy_strategy(), 1..12),
        pick in any::<prop::sample::Index>(),
        new_mode in mode_strategy(),
    ) {
        let pas = build(&specs);
        let before = all_modes(&set(&pas));
        // A copy of an existing policy, newer, with a different mode: it
        // must lose to the original at the original's scope.
        let mut dup = pick.get(&pas).clone();
        dup.meta.name = "zz-duplicate".into();
        dup.meta.creation = UnixTime::from_secs(100);
        dup.mode = new_mode;
        for (_, m) in dup.port_level_mtls.iter_mut() {
            *m = new_mode;
        }
        let mut more = pas.clone();
        more.push(dup);
        prop_assert_eq!(before, all_modes(&set(&more)));
    }

    #[test]
    fn the_narrowest_non_unset_scope_wins(
        mesh in proptest::option::of(mode_strategy()),
        ns in proptest::option::of(mode_strategy()),
        wl in proptest::option::of(mode_strategy()),
        port in proptest::option::of(mode_strategy()),
    ) {
        let labels = [("app", "x")];
        let mut pas = Vec::new();
        if let Some(m) = mesh { pas.push(pa(ROOT, "mesh", 1, &[], m)); }
        if let Some(m) = ns { pas.push(pa("a", "ns", 1, &[], m)); }
        // A port entry needs a workload policy to live in.
        if wl.is_some() || port.is_some() {
            let mut p = pa("a", "wl", 1, &labels, wl.unwrap_or(Unset));
            if let Some(m) = port { p.port_level_mtls.push((8080, m)); }
            pas.push(p);
        }
        let s = set(&pas);
        let d = s.resolve_mode(&Workload::new("a", &labels), 8080);
        let scopes = [(Scope::Mesh, mesh), (Scope::Namespace, ns), (Scope::Workload, wl), (Scope::Port, port)];
        let want = scopes
            .iter()
            .rev()
            .find_map(|(s, m)| m.and_then(|m| m.effective()).map(|m| (m, *s)))
            .unwrap_or((EffectiveMode::Permissive, Scope::Default));
        prop_assert_eq!((d.mode, d.scope), want);
    }
}
