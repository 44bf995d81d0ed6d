//! Public-API tests for AuthorizationPolicy: evaluation order, every
//! matcher, scopes, dry-run/audit reporting and validation.

use core::net::IpAddr;

use meshgate_core::policy::{
    Action, AuthorizationPolicy, AuthzReason, Condition, HttpRequest, MeshConfig, ObjectMeta,
    Operation, PolicySet, Request, Rule, Selector, Source, ValidationErrorKind, Verdict, Workload,
    validate_authorization_policy,
};
use meshgate_core::spiffe::{PatternError, Principal};
use meshgate_core::time::UnixTime;

const ROOT: &str = "istio-system";
const PP: &str = "cluster.local/ns/bookinfo/sa/bookinfo-productpage";
const RV: &str = "cluster.local/ns/reviews/sa/reviews";

fn ap(ns: &str, name: &str, action: Action, rules: Vec<Rule>) -> AuthorizationPolicy {
    AuthorizationPolicy {
        meta: ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            creation: UnixTime::from_secs(1),
        },
        selector: None,
        action,
        provider: (action == Action::Custom).then(|| "ext-authz".into()),
        rules,
        dry_run: false,
    }
}

fn select(mut p: AuthorizationPolicy, labels: &[(&str, &str)]) -> AuthorizationPolicy {
    p.selector = Some(Selector {
        match_labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    });
    p
}

fn aged(mut p: AuthorizationPolicy, secs: u64) -> AuthorizationPolicy {
    p.meta.creation = UnixTime::from_secs(secs);
    p
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).into()).collect()
}

fn from(src: Source) -> Rule {
    Rule {
        from: vec![src],
        ..Rule::default()
    }
}

fn to(op: Operation) -> Rule {
    Rule {
        to: vec![op],
        ..Rule::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> Rule {
    Rule {
        when: vec![Condition {
            key: key.into(),
            values: strs(values),
            not_values: strs(not_values),
        }],
        ..Rule::default()
    }
}

fn set(aps: Vec<AuthorizationPolicy>) -> PolicySet {
    PolicySet::new(MeshConfig::default(), &[], &aps).expect("valid policies")
}

const DETAILS: [(&str, &str); 1] = [("app", "details")];
const HEADERS: [(&str, &str); 2] = [("X-Token", "secret-1"), ("user-agent", "curl/8")];

/// A request builder: TCP from a plaintext client by default.
#[derive(Clone, Copy)]
struct R {
    ns: &'static str,
    principal: Option<&'static str>,
    ip: &'static str,
    port: u16,
    sni: Option<&'static str>,
    http: Option<(&'static str, &'static str, &'static str)>,
}

const REQ: R = R {
    ns: "bookinfo",
    principal: None,
    ip: "10.0.0.7",
    port: 9080,
    sni: None,
    http: None,
};

impl R {
    fn mtls(self, p: &'static str) -> R {
        R {
            principal: Some(p),
            ..self
        }
    }
    fn http(self, host: &'static str, method: &'static str, path: &'static str) -> R {
        R {
            http: Some((host, method, path)),
            ..self
        }
    }
    fn decide(self, set: &PolicySet) -> (Verdict, Option<String>) {
        self.run(set, |d| (d.verdict, d.decided_by.map(|r| r.to_string())))
    }
    fn run<T>(
        self,
        set: &PolicySet,
        f: impl FnOnce(&meshgate_core::policy::AuthzDecision<'_>) -> T,
    ) -> T {
        let ip: IpAddr = self.ip.parse().unwrap();
        let req = Request {
            workload: Workload::new(self.ns, &DETAILS),
            port: self.port,
            principal: self.principal.map(|p| Principal::parse(p).unwrap()),
            source_ip: ip,
            sni: self.sni,
            http: self.http.map(|(host, method, path)| HttpRequest {
                host,
                method,
                path,
                headers: &HEADERS,
            }),
        };
        f(&set.authorize(&req))
    }
    fn allowed(self, set: &PolicySet) -> bool {
        self.decide(set).0 == Verdict::Allow
    }
}

// ------------------------------------------------------------------- order

#[test]
fn no_policy_allows() {
    let s = set(vec![]);
    REQ.run(&s, |d| {
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.reason, AuthzReason::NoAllowPolicies);
        assert_eq!(d.decided_by, None);
        assert_eq!(d.to_string(), "allowed: no ALLOW policy applies");
    });
}

#[test]
fn empty_spec_allows_nothing_and_empty_rule_allows_everything() {
    let s = set(vec![ap("bookinfo", "allow-nothing", Action::Allow, vec![])]);
    REQ.mtls(PP).run(&s, |d| {
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Deny, AuthzReason::NoAllowMatched)
        );
    });
    let s = set(vec![ap(
        "bookinfo",
        "allow-all",
        Action::Allow,
        vec![Rule::default()],
    )]);
    assert_eq!(
        REQ.decide(&s),
        (
            Verdict::Allow,
            Some("ALLOW policy bookinfo/allow-all rule 0".into())
        )
    );
}

#[test]
fn custom_then_deny_then_allow() {
    let all = || vec![Rule::default()];
    let allow = ap("bookinfo", "allow", Action::Allow, all());
    let deny = ap("bookinfo", "deny", Action::Deny, all());
    let custom = ap("bookinfo", "custom", Action::Custom, all());

    let s = set(vec![allow.clone(), deny.clone(), custom]);
    REQ.run(&s, |d| {
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            d.reason,
            AuthzReason::CustomNoAuthorizer {
                provider: "ext-authz"
            }
        );
        assert_eq!(d.decided_by.unwrap().action, Action::Custom);
        assert!(d.to_string().contains("fail closed"), "{d}");
    });
    let s = set(vec![allow.clone(), deny]);
    assert_eq!(
        REQ.decide(&s),
        (
            Verdict::Deny,
            Some("DENY policy bookinfo/deny rule 0".into())
        )
    );
    let s = set(vec![allow]);
    assert_eq!(REQ.decide(&s).0, Verdict::Allow);
}

#[test]
fn a_non_matching_deny_or_custom_does_not_decide() {
    let only_rv = || {
        vec![from(Source {
            principals: strs(&[RV]),
            ..Source::default()
        })]
    };
    let s = set(vec![
        ap("bookinfo", "deny-rv", Action::Deny, only_rv()),
        ap(
            "bookinfo",
            "custom-rv",
            Action::Custom,
            vec![to(Operation {
                ports: strs(&["1"]),
                ..Operation::default()
            })],
        ),
    ]);
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
}

#[test]
fn the_deciding_rule_index_and_the_oldest_policy_are_named() {
    let rules = vec![
        from(Source {
            principals: strs(&[RV]),
            ..Source::default()
        }),
        from(Source {
            principals: strs(&[PP]),
            ..Source::default()
        }),
    ];
    let s = set(vec![
        aged(ap("bookinfo", "newer", Action::Deny, rules.clone()), 9),
        aged(ap("bookinfo", "older", Action::Deny, rules), 2),
    ]);
    assert_eq!(
        REQ.mtls(PP).decide(&s).1.as_deref(),
        Some("DENY policy bookinfo/older rule 1")
    );
}

// ------------------------------------------------------------------ scopes

#[test]
fn root_namespace_policies_apply_mesh_wide() {
    let s = set(vec![ap(
        ROOT,
        "deny-all",
        Action::Deny,
        vec![Rule::default()],
    )]);
    assert_eq!(
        REQ.decide(&s),
        (
            Verdict::Deny,
            Some("DENY policy istio-system/deny-all rule 0".into())
        )
    );
    assert!(!R { ns: "other", ..REQ }.allowed(&s));

    // A root selector policy applies to matching workloads everywhere.
    let s = set(vec![select(
        ap(ROOT, "deny-details", Action::Deny, vec![Rule::default()]),
        &DETAILS,
    )]);
    assert!(!REQ.allowed(&s));
    let s = set(vec![select(
        ap(ROOT, "deny-other", Action::Deny, vec![Rule::default()]),
        &[("app", "x")],
    )]);
    assert!(REQ.allowed(&s));
}

#[test]
fn namespace_and_selector_scopes() {
    let deny = || vec![Rule::default()];
    let s = set(vec![ap("other", "deny", Action::Deny, deny())]);
    assert!(REQ.allowed(&s), "another namespace's policy does not apply");
    let s = set(vec![select(
        ap("bookinfo", "deny", Action::Deny, deny()),
        &[("app", "reviews")],
    )]);
    assert!(
        REQ.allowed(&s),
        "a selector for another workload does not apply"
    );
    let s = set(vec![select(
        ap("bookinfo", "deny", Action::Deny, deny()),
        &DETAILS,
    )]);
    assert!(!REQ.allowed(&s));
    // An ALLOW policy for another workload does not make this one deny-by-default.
    let s = set(vec![select(
        ap("bookinfo", "allow", Action::Allow, vec![]),
        &[("app", "reviews")],
    )]);
    assert!(REQ.allowed(&s));
}

// ----------------------------------------------------------------- sources

fn allow_from(src: Source) -> PolicySet {
    set(vec![ap("bookinfo", "p", Action::Allow, vec![from(src)])])
}

fn deny_from(src: Source) -> PolicySet {
    set(vec![ap("bookinfo", "p", Action::Deny, vec![from(src)])])
}

#[test]
fn principals() {
    let s = allow_from(Source {
        principals: strs(&[PP]),
        ..Source::default()
    });
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
    assert!(!REQ.allowed(&s), "plaintext has no principal");

    let s = allow_from(Source {
        principals: strs(&["cluster.local/ns/bookinfo/*"]),
        ..Source::default()
    });
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
    let s = allow_from(Source {
        principals: strs(&["*/sa/reviews"]),
        ..Source::default()
    });
    assert!(REQ.mtls(RV).allowed(&s));
    let s = allow_from(Source {
        principals: strs(&["*"]),
        ..Source::default()
    });
    assert!(REQ.mtls(RV).allowed(&s));
    assert!(!REQ.allowed(&s), "`*` needs an identity");
}

#[test]
fn not_principals_star_denies_plaintext_only() {
    // ISTIO.md's defense in depth against PERMISSIVE bypass.
    let s = deny_from(Source {
        not_principals: strs(&["*"]),
        ..Source::default()
    });
    assert!(!REQ.allowed(&s));
    assert!(REQ.mtls(PP).allowed(&s));
    let s = deny_from(Source {
        not_principals: strs(&[PP]),
        ..Source::default()
    });
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
}

#[test]
fn namespaces_come_from_the_peer_principal() {
    let s = allow_from(Source {
        namespaces: strs(&["bookinfo"]),
        ..Source::default()
    });
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
    assert!(!REQ.allowed(&s));
    let s = allow_from(Source {
        namespaces: strs(&["book*"]),
        ..Source::default()
    });
    assert!(REQ.mtls(PP).allowed(&s));
    let s = deny_from(Source {
        not_namespaces: strs(&["bookinfo"]),
        ..Source::default()
    });
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
    assert!(!REQ.allowed(&s), "no namespace is not in the list");
}

#[test]
fn ip_blocks() {
    let s = allow_from(Source {
        ip_blocks: strs(&["10.0.0.0/24", "192.168.1.1"]),
        ..Source::default()
    });
    assert!(REQ.allowed(&s));
    assert!(
        R {
            ip: "192.168.1.1",
            ..REQ
        }
        .allowed(&s)
    );
    assert!(
        !R {
            ip: "10.0.1.7",
            ..REQ
        }
        .allowed(&s)
    );
    assert!(
        R {
            ip: "::ffff:10.0.0.9",
            ..REQ
        }
        .allowed(&s)
    );
    let s = deny_from(Source {
        not_ip_blocks: strs(&["10.0.0.0/8"]),
        ..Source::default()
    });
    assert!(REQ.allowed(&s));
    assert!(
        !R {
            ip: "172.16.0.1",
            ..REQ
        }
        .allowed(&s)
    );
}

#[test]
fn fields_of_one_source_are_anded_and_sources_ored() {
    let both = Source {
        principals: strs(&[PP]),
        ip_blocks: strs(&["10.0.0.0/24"]),
        ..Source::default()
    };
    let s = allow_from(both.clone());
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(
        !R {
            ip: "10.9.9.9",
            ..REQ
        }
        .mtls(PP)
        .allowed(&s)
    );
    let either = Rule {
        from: vec![
            Source {
                principals: strs(&[RV]),
                ..Source::default()
            },
            Source {
                ip_blocks: strs(&["10.9.9.9"]),
                ..Source::default()
            },
        ],
        ..Rule::default()
    };
    let s = set(vec![ap("bookinfo", "p", Action::Allow, vec![either])]);
    assert!(REQ.mtls(RV).allowed(&s));
    assert!(
        R {
            ip: "10.9.9.9",
            ..REQ
        }
        .allowed(&s)
    );
    assert!(!REQ.mtls(PP).allowed(&s));
}

// -------------------------------------------------------------- operations

fn allow_to(op: Operation) -> PolicySet {
    set(vec![ap("bookinfo", "p", Action::Allow, vec![to(op)])])
}

#[test]
fn hosts_are_case_insensitive_and_ignore_the_port() {
    let s = allow_to(Operation {
        hosts: strs(&["details.bookinfo", "*.example.com"]),
        ..Operation::default()
    });
    assert!(REQ.http("Details.BookInfo", "GET", "/").allowed(&s));
    assert!(REQ.http("details.bookinfo:9080", "GET", "/").allowed(&s));
    assert!(REQ.http("API.example.com", "GET", "/").allowed(&s));
    assert!(!REQ.http("details.other", "GET", "/").allowed(&s));
    let s = allow_to(Operation {
        not_hosts: strs(&["evil.com"]),
        ..Operation::default()
    });
    assert!(!REQ.http("EVIL.com:80", "GET", "/").allowed(&s));
    assert!(REQ.http("good.com", "GET", "/").allowed(&s));
}

#[test]
fn methods_and_paths() {
    let s = allow_to(Operation {
        methods: strs(&["GET", "HEAD"]),
        paths: strs(&["/details/*", "/health"]),
        ..Operation::default()
    });
    assert!(REQ.http("h", "GET", "/details/0").allowed(&s));
    assert!(
        REQ.http("h", "HEAD", "/health?verbose=1").allowed(&s),
        "query ignored"
    );
    assert!(
        !REQ.http("h", "get", "/health").allowed(&s),
        "methods are case-sensitive"
    );
    assert!(!REQ.http("h", "POST", "/details/0").allowed(&s));
    assert!(!REQ.http("h", "GET", "/admin").allowed(&s));
    assert!(!REQ.http("h", "GET", "/healthz").allowed(&s));
    let s = allow_to(Operation {
        not_methods: strs(&["DELETE"]),
        not_paths: strs(&["/admin*"]),
        ..Operation::default()
    });
    assert!(REQ.http("h", "GET", "/x").allowed(&s));
    assert!(!REQ.http("h", "DELETE", "/x").allowed(&s));
    assert!(!REQ.http("h", "GET", "/admin/users").allowed(&s));
}

#[test]
fn ports_are_workload_ports() {
    let s = allow_to(Operation {
        ports: strs(&["9080"]),
        ..Operation::default()
    });
    assert!(REQ.allowed(&s));
    assert!(!R { port: 80, ..REQ }.allowed(&s));
    let s = allow_to(Operation {
        not_ports: strs(&["9080"]),
        ..Operation::default()
    });
    assert!(!REQ.allowed(&s));
    assert!(R { port: 80, ..REQ }.allowed(&s));
}

#[test]
fn http_only_fields_on_tcp_fail_closed() {
    // ALLOW with methods never matches a TCP connection...
    let s = allow_to(Operation {
        methods: strs(&["GET"]),
        ..Operation::default()
    });
    assert!(!REQ.allowed(&s));
    assert!(REQ.http("h", "GET", "/").allowed(&s));
    // ...while DENY with methods denies it (Istio drops the HTTP fields).
    let deny = Rule {
        from: vec![Source {
            principals: strs(&[RV]),
            ..Source::default()
        }],
        to: vec![Operation {
            methods: strs(&["POST"]),
            ..Operation::default()
        }],
        ..Rule::default()
    };
    let s = set(vec![ap("bookinfo", "p", Action::Deny, vec![deny])]);
    assert!(!REQ.mtls(RV).allowed(&s));
    assert!(
        REQ.mtls(PP).allowed(&s),
        "the non-HTTP fields still have to match"
    );
    assert!(REQ.mtls(RV).http("h", "GET", "/").allowed(&s));
    assert!(!REQ.mtls(RV).http("h", "POST", "/").allowed(&s));
}

// -------------------------------------------------------------- conditions

fn allow_when(key: &str, values: &[&str], not_values: &[&str]) -> PolicySet {
    set(vec![ap(
        "bookinfo",
        "p",
        Action::Allow,
        vec![when(key, values, not_values)],
    )])
}

#[test]
fn when_conditions() {
    let s = allow_when("source.ip", &["10.0.0.0/24"], &["10.0.0.9"]);
    assert!(REQ.allowed(&s));
    assert!(
        !R {
            ip: "10.0.0.9",
            ..REQ
        }
        .allowed(&s)
    );
    assert!(
        !R {
            ip: "10.0.5.1",
            ..REQ
        }
        .allowed(&s)
    );

    let s = allow_when("source.principal", &["cluster.local/ns/bookinfo/*"], &[]);
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
    assert!(!REQ.allowed(&s));

    let s = allow_when("source.namespace", &[], &["reviews"]);
    assert!(REQ.mtls(PP).allowed(&s));
    assert!(!REQ.mtls(RV).allowed(&s));
    assert!(REQ.allowed(&s), "notValues exclude only present values");

    let s = allow_when("request.headers[x-token]", &["secret-*"], &[]);
    assert!(
        REQ.http("h", "GET", "/").allowed(&s),
        "header names are case-insensitive"
    );
    assert!(!REQ.allowed(&s), "no headers on TCP");
    let s = allow_when("request.headers[x-missing]", &["*"], &[]);
    assert!(!REQ.http("h", "GET", "/").allowed(&s));

    let s = allow_when("destination.port", &["9080", "9443"], &[]);
    assert!(REQ.allowed(&s));
    assert!(!R { port: 80, ..REQ }.allowed(&s));

    let s = allow_when("connection.sni", &["*.bookinfo.svc"], &[]);
    assert!(
        R {
            sni: Some("details.bookinfo.svc"),
            ..REQ
        }
        .allowed(&s)
    );
    assert!(
        !R {
            sni: Some("details.other"),
            ..REQ
        }
        .allowed(&s)
    );
    assert!(!REQ.allowed(&s));
}

#[test]
fn all_when_conditions_must_hold() {
    let rule = Rule {
        when: vec![
            Condition {
                key: "source.ip".into(),
                values: strs(&["10.0.0.7"]),
                not_values: vec![],
            },
            Condition {
                key: "destination.port".into(),
                values: strs(&["9080"]),
                not_values: vec![],
            },
        ],
        ..Rule::default()
    };
    let s = set(vec![ap("bookinfo", "p", Action::Allow, vec![rule])]);
    assert!(REQ.allowed(&s));
    assert!(!R { port: 1, ..REQ }.allowed(&s));
    assert!(
        !R {
            ip: "10.0.0.8",
            ..REQ
        }
        .allowed(&s)
    );
}

// ------------------------------------------------------- dry run and audit

#[test]
fn dry_run_is_reported_but_never_enforced() {
    let mut dry = ap("bookinfo", "dry-deny", Action::Deny, vec![Rule::default()]);
    dry.dry_run = true;
    let s = set(vec![dry.clone()]);
    REQ.run(&s, |d| {
        assert_eq!(d.verdict, Verdict::Allow);
        let dr = d.dry_run.expect("dry-run report");
        assert_eq!(dr.verdict, Verdict::Deny);
        assert_eq!(dr.decided_by.unwrap().to_string(), "DENY policy bookinfo/dry-deny rule 0");
        assert_eq!(
            d.to_string(),
            "allowed: no ALLOW policy applies; dry-run: denied by DENY policy bookinfo/dry-deny rule 0"
        );
    });

    // A dry-run ALLOW does not make the workload deny-by-default.
    let mut dry_allow = ap("bookinfo", "dry-allow", Action::Allow, vec![]);
    dry_allow.dry_run = true;
    let s = set(vec![dry_allow]);
    REQ.run(&s, |d| {
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.dry_run.unwrap().reason, AuthzReason::NoAllowMatched);
    });

    // Without dry-run policies there is no report.
    let s = set(vec![ap(
        "bookinfo",
        "p",
        Action::Allow,
        vec![Rule::default()],
    )]);
    REQ.run(&s, |d| assert_eq!(d.dry_run, None));
}

#[test]
fn audit_is_reported_but_never_decides() {
    let s = set(vec![
        ap("bookinfo", "audit", Action::Audit, vec![Rule::default()]),
        ap("bookinfo", "allow", Action::Allow, vec![]),
    ]);
    REQ.run(&s, |d| {
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.reason, AuthzReason::NoAllowMatched);
        assert_eq!(
            d.audit.unwrap().to_string(),
            "AUDIT policy bookinfo/audit rule 0"
        );
    });
    let s = set(vec![ap(
        "bookinfo",
        "audit",
        Action::Audit,
        vec![Rule::default()],
    )]);
    assert!(REQ.allowed(&s));
}

// -------------------------------------------------------------- validation

fn errors(p: &AuthorizationPolicy) -> Vec<(String, ValidationErrorKind)> {
    match validate_authorization_policy(p) {
        Ok(()) => vec![],
        Err(es) => es.into_iter().map(|e| (e.field, e.kind)).collect(),
    }
}

#[test]
fn validation() {
    use ValidationErrorKind as K;
    let e = |f: &str, k: K| (f.to_string(), k);

    assert_eq!(
        errors(&ap("ns", "d", Action::Deny, vec![])),
        [e("spec.rules", K::DenyWithoutRules)]
    );
    assert_eq!(
        errors(&ap("ns", "c", Action::Custom, vec![])),
        [e("spec.rules", K::CustomWithoutRules)]
    );
    let mut c = ap("ns", "c", Action::Custom, vec![Rule::default()]);
    c.provider = None;
    assert_eq!(
        errors(&c),
        [e("spec.provider.name", K::CustomWithoutProvider)]
    );
    let mut a = ap("ns", "a", Action::Allow, vec![]);
    a.provider = Some("x".into());
    assert_eq!(
        errors(&a),
        [e("spec.provider", K::ProviderWithoutCustom(Action::Allow))]
    );
    // AUDIT and ALLOW without rules are valid (Istio accepts them).
    assert_eq!(errors(&ap("ns", "a", Action::Audit, vec![])), []);

    let c = ap(
        "ns",
        "c",
        Action::Custom,
        vec![from(Source {
            principals: strs(&[PP]),
            ..Source::default()
        })],
    );
    assert_eq!(
        errors(&c),
        [e(
            "spec.rules[0].from[0].source",
            K::NotSupportedWithCustom("From.Principals")
        )]
    );

    let bad = Rule {
        from: vec![
            Source::default(),
            Source {
                principals: strs(&["", "a*b"]),
                ip_blocks: strs(&["10.0.0.0/33"]),
                ..Source::default()
            },
        ],
        to: vec![
            Operation::default(),
            Operation {
                ports: strs(&["0", "http", "70000"]),
                paths: strs(&["/api/{*}"]),
                ..Operation::default()
            },
        ],
        when: vec![
            Condition {
                key: "".into(),
                values: strs(&["x"]),
                not_values: vec![],
            },
            Condition {
                key: "source.ip".into(),
                values: vec![],
                not_values: vec![],
            },
            Condition {
                key: "request.auth.claims[iss]".into(),
                values: strs(&["x"]),
                not_values: vec![],
            },
            Condition {
                key: "source.color".into(),
                values: strs(&["x"]),
                not_values: vec![],
            },
            Condition {
                key: "request.headers[]".into(),
                values: strs(&["x"]),
                not_values: vec![],
            },
            Condition {
                key: "destination.port".into(),
                values: strs(&["x"]),
                not_values: vec![],
            },
        ],
    };
    let mut p = select(ap("ns", "p", Action::Allow, vec![bad]), &[("app", "*")]);
    p.meta.name = String::new();
    assert_eq!(
        errors(&p),
        [
            e("metadata.name", K::Empty),
            e(
                "spec.selector.matchLabels[app]",
                K::WildcardInSelector("app=*".into())
            ),
            e("spec.rules[0].from[0].source", K::EmptySource),
            e(
                "spec.rules[0].from[1].source.principals[0]",
                K::Pattern(PatternError::Empty)
            ),
            e(
                "spec.rules[0].from[1].source.principals[1]",
                K::Pattern(PatternError::BadWildcard)
            ),
            e(
                "spec.rules[0].from[1].source.ipBlocks[0]",
                K::InvalidIpBlock("10.0.0.0/33".into())
            ),
            e("spec.rules[0].to[0].operation", K::EmptyOperation),
            e("spec.rules[0].to[1].operation.paths[0]", K::PathTemplate),
            e(
                "spec.rules[0].to[1].operation.ports[0]",
                K::InvalidPort("0".into())
            ),
            e(
                "spec.rules[0].to[1].operation.ports[1]",
                K::InvalidPort("http".into())
            ),
            e(
                "spec.rules[0].to[1].operation.ports[2]",
                K::InvalidPort("70000".into())
            ),
            e("spec.rules[0].when[0].key", K::EmptyConditionKey),
            e(
                "spec.rules[0].when[1]",
                K::ConditionWithoutValues("source.ip".into())
            ),
            e(
                "spec.rules[0].when[2].key",
                K::UnsupportedAttribute("request.auth.claims[iss]".into())
            ),
            e(
                "spec.rules[0].when[3].key",
                K::UnknownAttribute("source.color".into())
            ),
            e(
                "spec.rules[0].when[4].key",
                K::InvalidHeaderKey("request.headers[]".into())
            ),
            e(
                "spec.rules[0].when[5].values[0]",
                K::InvalidPort("x".into())
            ),
        ]
    );
    assert_eq!(
        K::DenyWithoutRules.to_string(),
        "DENY action without `rules` is meaningless as it will never be triggered, add an empty \
         rule `{}` if you want it be triggered for every request"
    );
    assert_eq!(
        K::UnknownAttribute("x.y".into()).to_string(),
        "unknown attribute (x.y)"
    );
}

#[test]
fn invalid_authorization_policy_fails_the_build() {
    let err = PolicySet::new(
        MeshConfig::default(),
        &[],
        &[
            ap("ns", "ok", Action::Allow, vec![]),
            ap("ns", "bad", Action::Deny, vec![]),
            ap("ns", "ok", Action::Deny, vec![Rule::default()]),
        ],
    )
    .unwrap_err();
    let got: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "invalid AuthorizationPolicy ns/bad: spec.rules: DENY action without `rules` is \
             meaningless as it will never be triggered, add an empty rule `{}` if you want it be \
             triggered for every request",
            "invalid AuthorizationPolicy ns/ok: metadata.name: another resource of this kind has \
             the same namespace and name",
        ]
    );
}
