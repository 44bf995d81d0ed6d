//! Emitter/decoder fidelity: `decode(to_yaml(p)) == p` for every shape the
//! core types can hold, including strings that need quoting and escapes
//! and policies that core validation would refuse (validation is bypassed
//! here: the property is about the YAML mapping, not about Istio's rules).

use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{
    Action, AuthorizationPolicy, Condition, ObjectMeta, Operation, PeerAuthentication, Rule,
    Selector, Source,
};
use meshgate_core::time::UnixTime;
use proptest::prelude::*;

use super::{policies_to_yaml, to_yaml};
use crate::error::ConfigErrors;
use crate::policy::Policy;
use crate::resource::{Accept, Resource};
use crate::source::decode_source;

/// A default creation time no generated policy uses.
const OTHER: UnixTime = UnixTime::from_secs(42);

fn decode(yaml: &str) -> Vec<Policy> {
    let mut errors = ConfigErrors::default();
    let items = decode_source(
        yaml,
        "rt.yaml",
        Accept::Policies,
        OTHER,
        &|_| Vec::new(),
        &mut errors,
    );
    assert!(
        errors.is_empty(),
        "emitted YAML does not decode:\n{yaml}\n{errors}"
    );
    items
        .into_iter()
        .filter_map(|l| match l.resource {
            Resource::Peer(p) => Some(Policy::PeerAuthentication(p)),
            Resource::Authz(a) => Some(Policy::AuthorizationPolicy(a)),
            _ => None,
        })
        .collect()
}

fn reparse(p: &Policy) -> Policy {
    let yaml = to_yaml(p);
    let mut v = decode(&yaml);
    assert_eq!(v.len(), 1, "{yaml}");
    v.remove(0)
}

fn meta(name: &str, ns: &str, ms: u64) -> ObjectMeta {
    ObjectMeta {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        creation: UnixTime::from_millis(ms),
    }
}

/// A label key longer than YAML's 1024-character implicit-key limit once
/// quoted (found by fuzz/yaml_policy) reads back through the explicit
/// `? key` form.
#[test]
fn a_very_long_label_key_round_trips() {
    let key = format!("app{}", "\u{1c}".repeat(400));
    let p = Policy::PeerAuthentication(PeerAuthentication {
        meta: meta("a", "ns", 0),
        selector: Some(Selector {
            match_labels: vec![(key, "v".to_owned())],
        }),
        mode: MtlsMode::Strict,
        port_level_mtls: Vec::new(),
    });
    assert_eq!(reparse(&p), p);
}

#[test]
fn edge_shapes_round_trip() {
    let cases = vec![
        // spec: {} — mode UNSET, no selector.
        Policy::PeerAuthentication(PeerAuthentication {
            meta: meta("a", "ns", 0),
            selector: None,
            mode: MtlsMode::Unset,
            port_level_mtls: Vec::new(),
        }),
        // An empty selector is kept distinct from none.
        Policy::PeerAuthentication(PeerAuthentication {
            meta: meta("b", "ns", 1),
            selector: Some(Selector::default()),
            mode: MtlsMode::Unset,
            port_level_mtls: vec![(1, MtlsMode::Unset), (65535, MtlsMode::Permissive)],
        }),
        // ALLOW with no rules (allows nothing) and with one empty rule
        // (allows everything) must stay apart.
        Policy::AuthorizationPolicy(AuthorizationPolicy {
            meta: meta("c", "ns", 2),
            selector: None,
            action: Action::Allow,
            provider: None,
            rules: Vec::new(),
            dry_run: false,
        }),
        Policy::AuthorizationPolicy(AuthorizationPolicy {
            meta: meta("d", "ns", 3),
            selector: Some(Selector::default()),
            action: Action::Custom,
            provider: Some("ext authz".into()),
            rules: vec![
                Rule::default(),
                Rule {
                    from: vec![Source::default()],
                    to: vec![Operation::default()],
                    when: vec![Condition {
                        key: "request.headers[x-token]".into(),
                        values: Vec::new(),
                        not_values: vec!["*".into()],
                    }],
                },
            ],
            dry_run: false,
        }),
    ];
    for p in &cases {
        assert_eq!(&reparse(p), p, "{}", to_yaml(p));
    }
    let stream = policies_to_yaml(&cases);
    assert_eq!(decode(&stream), cases);
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9.-]{0,10}",
        "[ -~]{0,12}",
        any::<String>(),
        Just("8080".to_owned()),
        Just("*".to_owned()),
        Just("yes".to_owned()),
        Just("~".to_owned()),
        Just("- x".to_owned()),
        Just("a: b".to_owned()),
        Just("#x".to_owned()),
        Just("\u{2028}\u{85}\u{feff}\t\r\n".to_owned()),
    ]
}

fn arb_list() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(arb_text(), 0..3)
}

fn arb_meta() -> impl Strategy<Value = ObjectMeta> {
    (
        "[a-z]([a-z0-9-]{0,8}[a-z0-9])?",
        "[a-z]([a-z0-9-]{0,8}[a-z0-9])?",
        0u64..253_402_300_799_999,
    )
        .prop_map(|(name, namespace, ms)| ObjectMeta {
            name,
            namespace,
            creation: UnixTime::from_millis(ms),
        })
}

fn arb_selector() -> impl Strategy<Value = Option<Selector>> {
    prop::option::of(
        prop::collection::btree_map(arb_text(), arb_text(), 0..3).prop_map(|m| Selector {
            match_labels: m.into_iter().collect(),
        }),
    )
}

fn arb_mode() -> impl Strategy<Value = MtlsMode> {
    prop_oneof![
        Just(MtlsMode::Unset),
        Just(MtlsMode::Disable),
        Just(MtlsMode::Permissive),
        Just(MtlsMode::Strict),
    ]
}

fn arb_peer() -> impl Strategy<Value = PeerAuthentication> {
    (
        arb_meta(),
        arb_selector(),
        arb_mode(),
        prop::collection::btree_map(1u32..=65535, arb_mode(), 0..4),
    )
        .prop_map(|(meta, selector, mode, ports)| PeerAuthentication {
            meta,
            selector,
            mode,
            port_level_mtls: ports.into_iter().collect(),
        })
}

fn arb_source() -> impl Strategy<Value = Source> {
    (
        arb_list(),
        arb_list(),
        arb_list(),
        arb_list(),
        arb_list(),
        arb_list(),
    )
        .prop_map(|(a, b, c, d, e, f)| Source {
            principals: a,
            not_principals: b,
            namespaces: c,
            not_namespaces: d,
            ip_blocks: e,
            not_ip_blocks: f,
        })
}

fn arb_operation() -> impl Strategy<Value = Operation> {
    (
        (arb_list(), arb_list(), arb_list(), arb_list()),
        (arb_list(), arb_list(), arb_list(), arb_list()),
    )
        .prop_map(|((a, b, c, d), (e, f, g, h))| Operation {
            hosts: a,
            not_hosts: b,
            methods: c,
            not_methods: d,
            paths: e,
            not_paths: f,
            ports: g,
            not_ports: h,
        })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(arb_source(), 0..2),
        prop::collection::vec(arb_operation(), 0..2),
        prop::collection::vec(
            (arb_text(), arb_list(), arb_list()).prop_map(|(key, values, not_values)| Condition {
                key,
                values,
                not_values,
            }),
            0..2,
        ),
    )
        .prop_map(|(from, to, when)| Rule { from, to, when })
}

fn arb_authz() -> impl Strategy<Value = AuthorizationPolicy> {
    (
        arb_meta(),
        arb_selector(),
        prop_oneof![
            Just(Action::Allow),
            Just(Action::Deny),
            Just(Action::Audit),
            Just(Action::Custom)
        ],
        prop::option::of(arb_text()),
        prop::collection::vec(arb_rule(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(meta, selector, action, provider, rules, dry_run)| AuthorizationPolicy {
                meta,
                selector,
                action,
                provider,
                rules,
                dry_run,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn peer_authentication_round_trips(p in arb_peer()) {
        let p = Policy::PeerAuthentication(p);
        prop_assert_eq!(reparse(&p), p);
    }

    #[test]
    fn authorization_policy_round_trips(a in arb_authz()) {
        let a = Policy::AuthorizationPolicy(a);
        prop_assert_eq!(reparse(&a), a);
    }
}
