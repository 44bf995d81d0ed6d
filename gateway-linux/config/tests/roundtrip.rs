//! `parse(to_yaml(p)) == p` through the public API (with core validation)
//! for the documented examples. Arbitrary shapes, including ones core
//! validation refuses, are covered by `src/emit/roundtrip.rs`.

use meshgate_config::emit::{
    authorization_policy_to_yaml, peer_authentication_to_yaml, policies_to_yaml, to_yaml,
};
use meshgate_config::policy::{Policy, namespace_peer_authentication, parse_policies};
use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{
    Action, AuthorizationPolicy, Condition, ObjectMeta, Operation, PeerAuthentication, Rule,
    Selector, Source,
};
use meshgate_core::time::UnixTime;

/// A default creation time that no test policy uses, so a lost timestamp
/// shows up as a difference.
const OTHER: UnixTime = UnixTime::from_secs(42);

fn reparse(p: &Policy) -> Policy {
    let yaml = to_yaml(p);
    match parse_policies("roundtrip.yaml", &yaml, OTHER) {
        Ok(mut v) if v.len() == 1 => v.remove(0),
        Ok(v) => panic!("expected one policy from\n{yaml}\ngot {v:?}"),
        Err(e) => panic!("emitted YAML does not parse:\n{yaml}\n{e}"),
    }
}

fn meta(name: &str, ns: &str, ms: u64) -> ObjectMeta {
    ObjectMeta {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        creation: UnixTime::from_millis(ms),
    }
}

#[test]
fn namespace_wide_strict_is_canonical() {
    let p = PeerAuthentication {
        meta: meta("default", "bookinfo", 1_700_000_000_000),
        selector: None,
        mode: MtlsMode::Strict,
        port_level_mtls: Vec::new(),
    };
    assert_eq!(
        peer_authentication_to_yaml(&p),
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
  creationTimestamp: \"2023-11-14T22:13:20Z\"
spec:
  mtls:
    mode: STRICT
"
    );
    let policy = Policy::PeerAuthentication(p.clone());
    assert_eq!(reparse(&policy), policy);
    // What the admin API writes when a namespace is switched to STRICT.
    assert_eq!(
        namespace_peer_authentication("bookinfo", MtlsMode::Strict, p.meta.creation),
        p
    );
}

#[test]
fn authorization_policy_is_canonical() {
    let a = AuthorizationPolicy {
        meta: meta("details-viewer", "bookinfo", 1_700_000_000_500),
        selector: Some(Selector {
            match_labels: vec![("app".into(), "details".into())],
        }),
        action: Action::Allow,
        provider: None,
        rules: vec![Rule {
            from: vec![Source {
                principals: vec!["cluster.local/ns/bookinfo/sa/bookinfo-productpage".into()],
                ..Source::default()
            }],
            to: vec![Operation {
                methods: vec!["GET".into()],
                ports: vec!["9080".into()],
                ..Operation::default()
            }],
            when: vec![Condition {
                key: "source.ip".into(),
                values: vec!["10.0.0.0/8".into()],
                not_values: Vec::new(),
            }],
        }],
        dry_run: true,
    };
    assert_eq!(
        authorization_policy_to_yaml(&a),
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: details-viewer
  namespace: bookinfo
  creationTimestamp: \"2023-11-14T22:13:20.5Z\"
  annotations:
    istio.io/dry-run: \"true\"
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/bookinfo/sa/bookinfo-productpage
    to:
    - operation:
        ports:
        - \"9080\"
        methods:
        - GET
    when:
    - key: source.ip
      values:
      - \"10.0.0.0/8\"
"
    );
    let policy = Policy::AuthorizationPolicy(a);
    assert_eq!(reparse(&policy), policy);
}

#[test]
fn istio_md_examples_round_trip() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/istio-examples.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read examples");
    let parsed = parse_policies("istio-examples.yaml", &text, OTHER).expect("examples parse");
    assert_eq!(parsed.len(), 3);
    let again = parse_policies("again.yaml", &policies_to_yaml(&parsed), UnixTime::EPOCH)
        .expect("emitted stream parses");
    assert_eq!(again, parsed);
}
