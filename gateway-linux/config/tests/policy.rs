//! Istio security policy parsing: the seed, ISTIO.md's examples, and every
//! error path with the line and field it must name.

use std::path::PathBuf;

use meshgate_config::error::{ConfigErrors, ErrorKind};
use meshgate_config::policy::{Policy, PolicySet, load_policies, parse_policies};
use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{Action, AuthorizationPolicy, PeerAuthentication};
use meshgate_core::time::UnixTime;

const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn parse(src: &str) -> Result<Vec<Policy>, ConfigErrors> {
    parse_policies("test.yaml", src, NOW)
}

fn set(src: &str) -> PolicySet {
    match parse(src) {
        Ok(p) => p.into_iter().collect(),
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn errors(src: &str) -> Vec<String> {
    match parse(src) {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
    }
}

/// (document, line, field) of every diagnostic.
fn places(src: &str) -> Vec<(Option<usize>, usize, String)> {
    match parse(src) {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
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

fn peer(src: &str) -> PeerAuthentication {
    let mut s = set(src);
    assert_eq!(s.peer_authentications.len(), 1, "{s:?}");
    s.peer_authentications.remove(0)
}

fn authz(src: &str) -> AuthorizationPolicy {
    let mut s = set(src);
    assert_eq!(s.authorization_policies.len(), 1, "{s:?}");
    s.authorization_policies.remove(0)
}

#[test]
fn seed_mutual_tls_yaml_is_namespace_wide_strict() {
    let set = load_policies(&[data("mutual-tls.yaml")], NOW).expect("seed parses");
    assert!(set.authorization_policies.is_empty());
    let [p] = set.peer_authentications.as_slice() else {
        panic!("one policy expected: {set:?}");
    };
    assert_eq!(p.meta.name, "default");
    assert_eq!(p.meta.namespace, "bookinfo");
    assert_eq!(p.meta.creation, NOW);
    assert_eq!(p.selector, None);
    assert_eq!(p.mode, MtlsMode::Strict);
    assert!(p.port_level_mtls.is_empty());
}

#[test]
fn istio_md_examples_parse() {
    let set = load_policies(&[data("istio-examples.yaml")], NOW).expect("examples parse");
    assert_eq!(set.peer_authentications.len(), 2);
    let finance = &set.peer_authentications[1];
    assert_eq!(finance.meta.namespace, "foo");
    assert_eq!(
        finance.selector.as_ref().map(|s| s.match_labels.clone()),
        Some(vec![("app".to_owned(), "finance".to_owned())])
    );
    assert_eq!(finance.mode, MtlsMode::Strict);
    assert_eq!(finance.port_level_mtls, vec![(8080, MtlsMode::Disable)]);

    let [viewer] = set.authorization_policies.as_slice() else {
        panic!("one authorization policy expected");
    };
    assert_eq!(viewer.action, Action::Allow);
    assert!(!viewer.dry_run);
    assert_eq!(viewer.rules.len(), 1);
    assert_eq!(
        viewer.rules[0].from[0].principals,
        vec!["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]
    );
    assert_eq!(viewer.rules[0].to[0].methods, vec!["GET"]);
}

#[test]
fn unknown_mode_names_file_document_line_and_field() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: bookinfo}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: STRICTT
";
    let e = parse_policies("mutual-tls.yaml", src, NOW).expect_err("bad mode");
    assert_eq!(
        e.to_string(),
        "mutual-tls.yaml: document 2, line 12, column 11: spec.mtls.mode: \
         unknown mode \"STRICTT\" (expected UNSET, DISABLE, PERMISSIVE or STRICT)"
    );
}

#[test]
fn every_error_in_a_file_is_reported() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns}
spec:
  mtls: {mode: strict}
  selectr: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: ns}
spec:
  action: PERMIT
  rules:
  - from:
    - source: {principal: [x]}
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 5, "spec.mtls.mode".to_owned()),
            (Some(1), 6, "spec.selectr".to_owned()),
            (Some(2), 12, "spec.action".to_owned()),
            (
                Some(2),
                15,
                "spec.rules[0].from[0].source.principal".to_owned()
            ),
        ]
    );
    let msgs = errors(src);
    assert!(
        msgs[1]
            .contains("unknown field \"selectr\" (expected one of: selector, mtls, portLevelMtls)"),
        "{msgs:?}"
    );
    assert!(msgs[2].contains("unknown action \"PERMIT\""), "{msgs:?}");
}

#[test]
fn unknown_kind_and_api_version_are_errors() {
    let src = "\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: a}
---
apiVersion: security.istio.io/v2
kind: PeerAuthentication
metadata: {name: a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 2, "kind".to_owned()),
            (Some(2), 5, "apiVersion".to_owned()),
            (Some(3), 10, "kind".to_owned()),
        ]
    );
    let e = parse(src).expect_err("kinds");
    assert!(matches!(
        &e.diagnostics()[0].kind,
        ErrorKind::UnknownKind { kind, .. } if kind == "RequestAuthentication"
    ));
    assert!(
        matches!(&e.diagnostics()[1].kind, ErrorKind::UnknownApiVersion(v, _) if v == "security.istio.io/v2")
    );
}

#[test]
fn missing_and_mistyped_fields() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  namespace: ns
spec:
  mtls:
    mode: 1
  selector:
    matchLabels: [app]
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 4, "metadata.name".to_owned()),
            (Some(1), 7, "spec.mtls.mode".to_owned()),
            (Some(1), 9, "spec.selector.matchLabels".to_owned()),
        ]
    );
    let msgs = errors(src);
    assert!(
        msgs[0].ends_with("metadata.name: required field is missing"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].ends_with("expected a string, found an integer"),
        "{msgs:?}"
    );
    assert!(
        msgs[2].ends_with("expected a mapping, found a list"),
        "{msgs:?}"
    );

    // A document without apiVersion/kind, and one that is not a mapping.
    assert_eq!(
        places("metadata: {name: a}\n---\n- a\n"),
        vec![
            (Some(1), 1, "apiVersion".to_owned()),
            (Some(1), 1, "kind".to_owned()),
            (Some(2), 3, String::new()),
        ]
    );
}

#[test]
fn names_must_be_kubernetes_names() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: Default
  namespace: book_info
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 4, "metadata.name".to_owned()),
            (Some(1), 5, "metadata.namespace".to_owned()),
        ]
    );
    // `name: 123` is a number, not a string, as in Kubernetes.
    assert_eq!(
        places(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: 123}\n"
        ),
        vec![(Some(1), 3, "metadata.name".to_owned())]
    );
}

#[test]
fn duplicate_resources_in_one_load_are_errors() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: default, namespace: bookinfo}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
";
    let msgs = errors(src);
    assert_eq!(
        msgs,
        vec![
            "test.yaml: document 3, line 9, column 1: metadata.name: duplicate \
             PeerAuthentication bookinfo/default (first defined at test.yaml: document 1, line 1)"
        ]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns}
spec:
  mtls: {mode: STRICT}
  mtls: {mode: DISABLE}
";
    assert_eq!(places(src), vec![(Some(1), 6, "spec.mtls".to_owned())]);
}

#[test]
fn syntax_errors_name_the_document_and_line() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: ns
spec: {}
";
    let e = parse(src).expect_err("syntax");
    let [d] = e.diagnostics() else {
        panic!("one diagnostic expected: {e}");
    };
    assert_eq!(d.document, Some(2));
    assert!(matches!(d.kind, ErrorKind::Syntax(_)), "{d}");
    assert!(d.location.is_some_and(|l| (7..=9).contains(&l.line)), "{d}");

    let e = parse("a: &x 1\nb: *x\n").expect_err("alias");
    assert!(matches!(&e.diagnostics()[0].kind, ErrorKind::Alias(n) if n == "x"));
}

#[test]
fn creation_timestamp_is_parsed_or_defaulted() {
    let p = peer(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  namespace: ns\n  creationTimestamp: \"2024-03-01T12:00:00Z\"\n",
    );
    assert_eq!(p.meta.creation, UnixTime::from_secs(1_709_294_400));
    let p = peer(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  namespace: ns\n  creationTimestamp: 2024-03-01T13:00:00.250+01:00\n",
    );
    assert_eq!(p.meta.creation, UnixTime::from_millis(1_709_294_400_250));
    let p =
        peer("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n");
    assert_eq!(p.meta.creation, NOW);
    // No namespace means `default`, as with `kubectl apply`.
    assert_eq!(p.meta.namespace, "default");

    let src = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  creationTimestamp: yesterday\n";
    assert_eq!(
        places(src),
        vec![(Some(1), 5, "metadata.creationTimestamp".to_owned())]
    );
    let src = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  creationTimestamp: 1960-01-01T00:00:00Z\n";
    assert!(errors(src)[0].contains("before 1970"));
}

#[test]
fn kubectl_exported_metadata_and_status_are_accepted() {
    let p = peer(
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
  uid: 0b5a9d3e-1111-2222-3333-444455556666
  resourceVersion: \"12345\"
  generation: 1
  labels: {team: sec}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {\"apiVersion\":\"security.istio.io/v1beta1\"}
spec:
  mtls: {mode: PERMISSIVE}
status: {}
",
    );
    assert_eq!(p.mode, MtlsMode::Permissive);
}

#[test]
fn dry_run_annotation() {
    let base = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\n  annotations:\n    istio.io/dry-run: ";
    assert!(authz(&format!("{base}\"true\"\nspec: {{}}\n")).dry_run);
    assert!(!authz(&format!("{base}\"false\"\n")).dry_run);
    assert_eq!(
        places(&format!("{base}\"maybe\"\n")),
        vec![(
            Some(1),
            6,
            "metadata.annotations[istio.io/dry-run]".to_owned()
        )]
    );
    // Annotation values are strings in Kubernetes: an unquoted true is not.
    let msgs = errors(&format!("{base}true\n"));
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].contains("expected a string, found a boolean"),
        "{msgs:?}"
    );
}

#[test]
fn port_level_mtls_keys_may_be_ints_or_strings() {
    let p = peer(
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns}
spec:
  selector: {matchLabels: {app: x}}
  portLevelMtls:
    8080: {mode: DISABLE}
    \"9080\": {mode: STRICT}
    '9443':
      mode: UNSET
",
    );
    assert_eq!(
        p.port_level_mtls,
        vec![
            (8080, MtlsMode::Disable),
            (9080, MtlsMode::Strict),
            (9443, MtlsMode::Unset)
        ]
    );

    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns}
spec:
  selector: {matchLabels: {app: x}}
  portLevelMtls:
    0: {mode: DISABLE}
    70000: {mode: DISABLE}
    http: {mode: DISABLE}
    8080: {mode: OFF}
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 7, "spec.portLevelMtls[0]".to_owned()),
            (Some(1), 8, "spec.portLevelMtls[70000]".to_owned()),
            (Some(1), 9, "spec.portLevelMtls[http]".to_owned()),
            (Some(1), 10, "spec.portLevelMtls[8080].mode".to_owned()),
        ]
    );
}

#[test]
fn kind_list_items_are_read_with_prefixed_paths() {
    let src = "\
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: a, namespace: ns}
  spec: {mtls: {mode: STRICT}}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: b, namespace: ns}
  spec: {}
";
    let s = set(src);
    assert_eq!(s.peer_authentications.len(), 1);
    assert_eq!(s.authorization_policies.len(), 1);
    // `spec: {}` is ALLOW with no rules: allows nothing.
    assert_eq!(s.authorization_policies[0].action, Action::Allow);
    assert!(s.authorization_policies[0].rules.is_empty());

    let bad = src.replace("{mode: STRICT}", "{mode: STRICT, extra: 1}");
    assert_eq!(
        places(&bad),
        vec![(Some(1), 7, "items[0].spec.mtls.extra".to_owned())]
    );
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let src = "\
---
# just a comment
---
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns}
spec: {mtls: {mode: BAD}}
";
    assert_eq!(places(src), vec![(Some(3), 8, "spec.mtls.mode".to_owned())]);
    assert!(parse("").expect("empty file").is_empty());
    assert!(parse("---\n---\n").expect("only separators").is_empty());
}

#[test]
fn authorization_policy_fields() {
    let a = authz(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: [\"*\"]}
  - {}
  - to:
    - operation:
        hosts: [details.bookinfo.svc.cluster.local]
        notHosts: [x]
        ports: [9080, \"8080\"]
        notPorts: [\"1\"]
        methods: [GET, HEAD]
        notMethods: [DELETE]
        paths: [/details/*]
        notPaths: [/admin]
    when:
    - key: source.ip
      values: [10.0.0.0/8]
      notValues: [10.1.0.0/16]
  - from:
    - source:
        principals: [a]
        namespaces: [bookinfo]
        notNamespaces: [legacy]
        ipBlocks: [192.168.0.0/16]
        notIpBlocks: [192.168.1.1]
    - source: {namespaces: [legacy]}
",
    );
    assert_eq!(a.action, Action::Deny);
    assert_eq!(a.rules.len(), 4);
    assert_eq!(a.rules[0].from[0].not_principals, vec!["*"]);
    assert_eq!(a.rules[1], Default::default());
    let op = &a.rules[2].to[0];
    assert_eq!(op.ports, vec!["9080", "8080"]);
    assert_eq!(op.not_ports, vec!["1"]);
    assert_eq!(op.paths, vec!["/details/*"]);
    assert_eq!(a.rules[2].when[0].key, "source.ip");
    assert_eq!(a.rules[2].when[0].not_values, vec!["10.1.0.0/16"]);
    let src = &a.rules[3].from;
    assert_eq!(src.len(), 2);
    assert_eq!(src[0].not_ip_blocks, vec!["192.168.1.1"]);
    assert_eq!(src[1].namespaces, vec!["legacy"]);

    let custom = authz(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n",
    );
    assert_eq!(custom.action, Action::Custom);
    assert_eq!(custom.provider.as_deref(), Some("opa"));
}

#[test]
fn istio_fields_meshgate_does_not_enforce_are_refused() {
    let src = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: ns}
spec:
  targetRefs:
  - {kind: Gateway, name: gw}
  rules:
  - from:
    - source:
        requestPrincipals: [\"*\"]
        serviceAccounts: [x]
    when:
    - key: request.auth.claims[iss]
";
    assert_eq!(
        places(src),
        vec![
            (Some(1), 6, "spec.targetRefs".to_owned()),
            (
                Some(1),
                10,
                "spec.rules[0].from[0].source.requestPrincipals".to_owned()
            ),
            (
                Some(1),
                11,
                "spec.rules[0].from[0].source.serviceAccounts".to_owned()
            ),
        ]
    );
    assert!(errors(src)[0].ends_with("field \"targetRefs\" is not supported by meshgate"));
}

#[test]
fn load_policies_reads_directories_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, ns: &str| {
        let body = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {ns}}}\n"
        );
        std::fs::write(dir.path().join(name), body).expect("write");
    };
    write("b.yaml", "b");
    write("a.yml", "a");
    write("c.json", "c");
    write("notes.txt", "ignored");
    write(".hidden.yaml", "hidden");
    std::fs::create_dir(dir.path().join("..data")).expect("mkdir");
    let set = load_policies(&[dir.path().to_path_buf()], NOW).expect("dir loads");
    let namespaces: Vec<&str> = set
        .peer_authentications
        .iter()
        .map(|p| p.meta.namespace.as_str())
        .collect();
    assert_eq!(namespaces, vec!["a", "b", "c"]);

    // The same resource in two files: both places are named.
    write("d.yaml", "a");
    let e = load_policies(&[dir.path().to_path_buf()], NOW).expect_err("duplicate");
    let msg = e.to_string();
    assert!(msg.contains("d.yaml: document 1, line 1, column 1: metadata.name: duplicate PeerAuthentication a/default (first defined at"), "{msg}");
    assert!(msg.contains("a.yml: document 1, line 1)"), "{msg}");

    let missing = load_policies(&[dir.path().join("nope.yaml")], NOW).expect_err("missing");
    assert!(matches!(missing.diagnostics()[0].kind, ErrorKind::Io(_)));
    assert_eq!(missing.diagnostics()[0].document, None);
}

#[test]
fn a_file_with_one_bad_resource_is_rejected_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::copy(data("mutual-tls.yaml"), &good).expect("copy");
    std::fs::write(
        &bad,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: y}\n---\nnot: istio\n",
    )
    .expect("write");
    let e = load_policies(&[good, bad], NOW).expect_err("bad file");
    assert_eq!(e.len(), 3, "{e}");
    assert!(e.diagnostics().iter().all(|d| d.file.ends_with("bad.yaml")));
}

#[test]
fn core_validation_errors_point_at_their_lines() {
    let src = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: bookinfo}
spec:
  action: DENY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewer, namespace: bookinfo}
spec:
  selector:
    matchLabels:
      app: \"*\"
  rules:
  - from:
    - source:
        principals: [\"a*b\"]
        ipBlocks: [300.1.1.1]
    - {}
";
    let e = parse(src).expect_err("invalid policies");
    let got: Vec<(Option<usize>, usize, &str)> = e
        .diagnostics()
        .iter()
        .map(|d| {
            (
                d.document,
                d.location.map_or(0, |l| l.line),
                d.field.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(1), 7, "spec.portLevelMtls"),
            (Some(2), 13, "spec.rules"),
            (Some(3), 21, "spec.selector.matchLabels[app]"),
            (Some(3), 25, "spec.rules[0].from[0].source.principals[0]"),
            (Some(3), 26, "spec.rules[0].from[0].source.ipBlocks[0]"),
            (Some(3), 27, "spec.rules[0].from[1].source"),
        ]
    );
    assert!(
        e.diagnostics()
            .iter()
            .all(|d| matches!(d.kind, ErrorKind::Validation(_)))
    );
    let first = e.diagnostics()[0].to_string();
    assert!(
        first.ends_with(
            "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"
        ),
        "{first}"
    );
}
