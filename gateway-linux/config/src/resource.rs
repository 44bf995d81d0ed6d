//! Kubernetes-shaped documents (`apiVersion`, `kind`, `metadata`, `spec`)
//! decoded into meshgate-core policy types and the networking resources the
//! settings file uses.
//!
//! The schemas follow Istio's CRDs, which are structural: an unknown field is
//! an error naming the field. Fields that Istio has but meshgate does not
//! enforce are refused too (rather than ignored), because ignoring e.g.
//! `requestPrincipals` in an ALLOW rule would let more requests through
//! than the author intended.

use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{
    Action, AuthorizationPolicy, Condition, ObjectMeta, Operation, PeerAuthentication, Rule,
    Selector, Source,
};
use meshgate_core::time::UnixTime;

use crate::error::{ErrorKind, Location};
use crate::read::{Fields, Reader, index, join, key};
use crate::yaml::{Node, ScalarType, Value};

/// Which kinds a caller accepts from a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accept {
    /// `security.istio.io` PeerAuthentication / AuthorizationPolicy.
    Policies,
    /// `networking.istio.io` ServiceEntry / WorkloadEntry.
    Services,
}

impl Accept {
    fn expected_kinds(self) -> &'static str {
        match self {
            Accept::Policies => "PeerAuthentication or AuthorizationPolicy",
            Accept::Services => "ServiceEntry or WorkloadEntry",
        }
    }
}

/// `networking.istio.io` ServiceEntry, as far as meshgate reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceEntry {
    /// Field path of the spec (`spec`, or `services[2]` inline), for errors
    /// found when the service model is built.
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) hosts: Vec<(String, Location)>,
    pub(crate) ports: Vec<SePort>,
    pub(crate) mesh_external: bool,
    pub(crate) static_resolution: bool,
    pub(crate) endpoints: Vec<WorkloadSpec>,
    pub(crate) workload_selector: Option<Vec<(String, String)>>,
    pub(crate) subject_alt_names: Vec<String>,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SePort {
    pub(crate) number: u16,
    pub(crate) name: String,
    pub(crate) protocol: Option<String>,
    pub(crate) target_port: Option<u16>,
    pub(crate) at: Location,
    pub(crate) path: String,
}

/// A WorkloadEntry spec (also the shape of `ServiceEntry.spec.endpoints[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkloadSpec {
    /// WorkloadEntry `metadata.name`; `None` for inline endpoints.
    pub(crate) name: Option<String>,
    /// WorkloadEntry `metadata.namespace`; `None` for inline endpoints.
    pub(crate) namespace: Option<String>,
    pub(crate) address: String,
    pub(crate) ports: Vec<(String, u16)>,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) service_account: Option<String>,
    pub(crate) at: Location,
    pub(crate) path: String,
}

/// One decoded resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Peer(PeerAuthentication),
    Authz(AuthorizationPolicy),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadSpec),
}

/// A resource and where it starts: its field prefix (`items[2]` inside a
/// `kind: List`, else empty) and position.
#[derive(Clone, Debug)]
pub(crate) struct Decoded {
    pub(crate) resource: Resource,
    pub(crate) prefix: String,
    pub(crate) at: Location,
}

const SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const LIST_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "items"];

/// Metadata fields Kubernetes adds (`kubectl get -o yaml`); accepted and
/// ignored so that exported resources load as they are.
const META_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "annotations",
    "labels",
    "uid",
    "resourceVersion",
    "generation",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Namespace used when `metadata.namespace` is absent, as `kubectl apply`
/// does with a default context.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// The annotation that turns an AuthorizationPolicy into a dry run.
pub(crate) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Decodes one document root: a resource or a `kind: List` of them.
pub(crate) fn decode_document(
    r: &mut Reader,
    root: &Node,
    accept: Accept,
    default_creation: UnixTime,
) -> Vec<Decoded> {
    let mut out = Vec::new();
    let is_list = matches!(&root.value, Value::Map(entries)
        if entries.iter().any(|(k, v)| scalar_text(k) == Some("kind") && scalar_text(v) == Some("List")));
    if is_list {
        let Some(f) = r.fields(root, "", LIST_FIELDS) else {
            return out;
        };
        if let Some(v) = f.get("apiVersion") {
            // `kubectl get -o yaml` writes `apiVersion: v1` for lists.
            if let Some(api) = r.string(v, "apiVersion")
                && api != "v1"
            {
                r.issue(v.at, "apiVersion", ErrorKind::UnknownApiVersion(api, "v1"));
            }
        }
        if let Some(items) = f.get("items").and_then(|n| r.list(n, "items")) {
            for (i, item) in items.iter().enumerate() {
                let prefix = index("items", i);
                if let Some(res) = decode_object(r, item, &prefix, accept, default_creation) {
                    out.push(Decoded {
                        resource: res,
                        prefix,
                        at: item.at,
                    });
                }
            }
        }
    } else if let Some(res) = decode_object(r, root, "", accept, default_creation) {
        out.push(Decoded {
            resource: res,
            prefix: String::new(),
            at: root.at,
        });
    }
    out
}

fn scalar_text(n: &Node) -> Option<&str> {
    match &n.value {
        Value::Scalar(s) => Some(&s.text),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Peer,
    Authz,
    ServiceEntry,
    WorkloadEntry,
}

fn decode_object(
    r: &mut Reader,
    node: &Node,
    prefix: &str,
    accept: Accept,
    default_creation: UnixTime,
) -> Option<Resource> {
    let before = r.issues.len();
    let f = r.fields(node, prefix, TOP_FIELDS)?;
    let api_path = join(prefix, "apiVersion");
    let kind_path = join(prefix, "kind");
    let api_node = r.required(&f, "apiVersion", node, prefix);
    let kind_node = r.required(&f, "kind", node, prefix);
    let api = api_node.and_then(|n| r.string(n, &api_path));
    let kind_name = kind_node.and_then(|n| r.string(n, &kind_path));
    let (api, kind_name, api_node, kind_node) = match (api, kind_name, api_node, kind_node) {
        (Some(a), Some(k), Some(an), Some(kn)) => (a, k, an, kn),
        _ => return None,
    };

    let (versions, version_text, kinds): (_, _, &[(&str, Kind)]) = match accept {
        Accept::Policies => (
            SECURITY_VERSIONS,
            "security.istio.io/v1 or security.istio.io/v1beta1",
            &[
                ("PeerAuthentication", Kind::Peer),
                ("AuthorizationPolicy", Kind::Authz),
            ],
        ),
        Accept::Services => (
            NETWORKING_VERSIONS,
            "networking.istio.io/v1, v1beta1 or v1alpha3",
            &[
                ("ServiceEntry", Kind::ServiceEntry),
                ("WorkloadEntry", Kind::WorkloadEntry),
            ],
        ),
    };
    let Some(&(_, kind)) = kinds.iter().find(|(k, _)| *k == kind_name) else {
        r.issue(
            kind_node.at,
            &kind_path,
            ErrorKind::UnknownKind {
                kind: kind_name,
                expected: accept.expected_kinds(),
            },
        );
        return None;
    };
    if !versions.contains(&api.as_str()) {
        r.issue(
            api_node.at,
            &api_path,
            ErrorKind::UnknownApiVersion(api, version_text),
        );
        return None;
    }

    let meta_path = join(prefix, "metadata");
    let meta = r
        .required(&f, "metadata", node, prefix)
        .and_then(|m| decode_meta(r, m, &meta_path, default_creation));
    let spec_path = join(prefix, "spec");
    // A missing spec is the empty spec (`spec: {}`), as in Kubernetes.
    let empty = Node {
        value: Value::Map(Vec::new()),
        at: node.at,
    };
    let spec = f.get("spec").unwrap_or(&empty);
    let spec = match kind {
        Kind::Peer => decode_peer(r, spec, &spec_path).map(Spec::Peer),
        Kind::Authz => decode_authz(r, spec, &spec_path).map(Spec::Authz),
        Kind::ServiceEntry => {
            decode_service_entry_with(r, spec, &spec_path, SE_FIELDS).map(Spec::ServiceEntry)
        }
        Kind::WorkloadEntry => decode_workload(r, spec, &spec_path).map(Spec::WorkloadEntry),
    };
    // Any problem anywhere in the object rejects the object.
    if r.issues.len() != before {
        return None;
    }
    let (m, spec) = (meta?, spec?);
    Some(match spec {
        Spec::Peer((selector, mode, port_level_mtls)) => Resource::Peer(PeerAuthentication {
            meta: m.object,
            selector,
            mode,
            port_level_mtls,
        }),
        Spec::Authz(a) => Resource::Authz(AuthorizationPolicy {
            meta: m.object,
            dry_run: m.dry_run,
            ..a
        }),
        Spec::ServiceEntry(se) => Resource::ServiceEntry(ServiceEntry {
            name: m.object.name,
            namespace: m.object.namespace,
            ..se
        }),
        Spec::WorkloadEntry(w) => Resource::WorkloadEntry(WorkloadSpec {
            name: Some(m.object.name),
            namespace: Some(m.object.namespace),
            ..w
        }),
    })
}

enum Spec {
    Peer(PeerSpec),
    Authz(AuthorizationPolicy),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadSpec),
}

/// What the decoders need from `metadata`.
pub(crate) struct Meta {
    pub(crate) object: ObjectMeta,
    pub(crate) dry_run: bool,
}

fn decode_meta(
    r: &mut Reader,
    node: &Node,
    path: &str,
    default_creation: UnixTime,
) -> Option<Meta> {
    let f = r.fields(node, path, META_FIELDS)?;
    let before = r.issues.len();
    let name = r
        .required(&f, "name", node, path)
        .and_then(|n| r.string(n, &join(path, "name")));
    let namespace = match f.get("namespace") {
        Some(n) => r.string(n, &join(path, "namespace")),
        None => Some(DEFAULT_NAMESPACE.to_owned()),
    };
    let creation = match f.get("creationTimestamp") {
        Some(n) => {
            let p = join(path, "creationTimestamp");
            r.string(n, &p).and_then(|s| match parse_timestamp(&s) {
                Ok(t) => Some(t),
                Err(msg) => {
                    r.issue(n.at, &p, ErrorKind::Invalid(msg));
                    None
                }
            })
        }
        None => Some(default_creation),
    };
    if let Some(l) = f.get("labels") {
        // Labels on the policy object itself have no meaning to meshgate but
        // must still be well-formed.
        r.string_map(l, &join(path, "labels"));
    }
    let mut dry_run = false;
    if let Some(a) = f.get("annotations") {
        let ap = join(path, "annotations");
        for (k, v) in r.string_map(a, &ap) {
            if k == DRY_RUN_ANNOTATION {
                match v.to_ascii_lowercase().as_str() {
                    "true" => dry_run = true,
                    "false" => dry_run = false,
                    _ => {
                        let p = key(&ap, &k);
                        let at = r.position_of(&p).unwrap_or(a.at);
                        r.issue(
                            at,
                            &p,
                            ErrorKind::Invalid(format!(
                                "annotation value {v:?} is not \"true\" or \"false\""
                            )),
                        );
                    }
                }
            }
        }
    }
    let (name, namespace, creation) = (name?, namespace?, creation?);
    for (field, value) in [("name", &name), ("namespace", &namespace)] {
        if let Err(msg) = check_dns_label(value, field == "name") {
            let p = join(path, field);
            let at = r.position_of(&p).unwrap_or(node.at);
            r.issue(at, &p, ErrorKind::Invalid(msg));
        }
    }
    if r.issues.len() != before {
        return None;
    }
    Some(Meta {
        object: ObjectMeta {
            name,
            namespace,
            creation,
        },
        dry_run,
    })
}

/// Kubernetes names: namespaces are RFC 1123 labels (≤ 63), object names
/// RFC 1123 subdomains (≤ 253, dots allowed).
fn check_dns_label(s: &str, allow_dots: bool) -> Result<(), String> {
    let max = if allow_dots { 253 } else { 63 };
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let valid = s.len() <= max
        && if allow_dots {
            s.split('.').all(ok_label)
        } else {
            ok_label(s)
        };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid Kubernetes {} (lowercase letters, digits and '-'{}, at most {max} characters)",
            if allow_dots { "name" } else { "namespace" },
            if allow_dots { ", '.'" } else { "" },
        ))
    }
}

/// RFC 3339 → milliseconds since the epoch.
pub(crate) fn parse_timestamp(s: &str) -> Result<UnixTime, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("invalid RFC 3339 timestamp {s:?}: {e}"))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms)
        .map(UnixTime::from_millis)
        .map_err(|_| format!("timestamp {s:?} is before 1970"))
}

// ---- PeerAuthentication ----------------------------------------------------

const MODES: &str = "UNSET, DISABLE, PERMISSIVE or STRICT";

pub(crate) fn mode_name(m: MtlsMode) -> &'static str {
    match m {
        MtlsMode::Unset => "UNSET",
        MtlsMode::Disable => "DISABLE",
        MtlsMode::Permissive => "PERMISSIVE",
        MtlsMode::Strict => "STRICT",
    }
}

fn decode_mode_block(r: &mut Reader, node: &Node, path: &str) -> Option<MtlsMode> {
    let f = r.fields(node, path, &["mode"])?;
    let Some(m) = f.get("mode") else {
        return Some(MtlsMode::Unset);
    };
    let p = join(path, "mode");
    let s = r.string(m, &p)?;
    let mode = match s.as_str() {
        "UNSET" => MtlsMode::Unset,
        "DISABLE" => MtlsMode::Disable,
        "PERMISSIVE" => MtlsMode::Permissive,
        "STRICT" => MtlsMode::Strict,
        _ => {
            r.issue(
                m.at,
                &p,
                ErrorKind::UnknownValue {
                    what: "mode",
                    value: s,
                    expected: MODES,
                },
            );
            return None;
        }
    };
    Some(mode)
}

fn decode_selector(r: &mut Reader, node: &Node, path: &str) -> Option<Selector> {
    let f = r.fields(node, path, &["matchLabels"])?;
    let match_labels = match f.get("matchLabels") {
        Some(m) => r.string_map(m, &join(path, "matchLabels")),
        None => Vec::new(),
    };
    Some(Selector { match_labels })
}

type PeerSpec = (Option<Selector>, MtlsMode, Vec<(u32, MtlsMode)>);

fn decode_peer(r: &mut Reader, node: &Node, path: &str) -> Option<PeerSpec> {
    let f = r.fields(node, path, &["selector", "mtls", "portLevelMtls"])?;
    let selector = f
        .get("selector")
        .and_then(|s| decode_selector(r, s, &join(path, "selector")));
    let mode = match f.get("mtls") {
        Some(m) => decode_mode_block(r, m, &join(path, "mtls")).unwrap_or(MtlsMode::Unset),
        None => MtlsMode::Unset,
    };
    let mut ports = Vec::new();
    if let Some(pl) = f.get("portLevelMtls") {
        let pp = join(path, "portLevelMtls");
        for (k, kn, v) in r.mapping_entries(pl, &pp).unwrap_or_default() {
            // Keys may be written as integers (`8080:`) or strings (`"8080":`).
            let port = match &kn.value {
                Value::Scalar(s) if matches!(s.resolve(), ScalarType::Int | ScalarType::Str) => {
                    k.parse::<u32>().ok()
                }
                _ => None,
            };
            let entry_path = index(&pp, k);
            r.mark(&entry_path, v.at);
            match port {
                Some(p) if (1..=65535).contains(&p) => {
                    if let Some(m) = decode_mode_block(r, v, &entry_path) {
                        ports.push((p, m));
                    }
                }
                _ => r.issue(
                    kn.at,
                    &entry_path,
                    ErrorKind::Invalid(format!("port {k:?} must be a number in 1..=65535")),
                ),
            }
        }
    }
    Some((selector, mode, ports))
}

// ---- AuthorizationPolicy ---------------------------------------------------

const ACTIONS: &str = "ALLOW, DENY, AUDIT or CUSTOM";

pub(crate) fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

const AUTHZ_SPEC: &[&str] = &[
    "selector",
    "action",
    "provider",
    "rules",
    "targetRef",
    "targetRefs",
];
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

/// Reports each present field from `names` as unsupported.
fn refuse(r: &mut Reader, f: &Fields<'_>, path: &str, names: &[&'static str]) {
    for &n in names {
        if let Some(v) = f.get(n) {
            r.issue(v.at, &join(path, n), ErrorKind::Unsupported(n));
        }
    }
}

fn decode_authz(r: &mut Reader, node: &Node, path: &str) -> Option<AuthorizationPolicy> {
    let f = r.fields(node, path, AUTHZ_SPEC)?;
    // targetRef(s) attach a policy to a Gateway or Service instead of to
    // workloads; applying it by selector instead would change its scope.
    refuse(r, &f, path, &["targetRef", "targetRefs"]);
    let selector = f
        .get("selector")
        .and_then(|s| decode_selector(r, s, &join(path, "selector")));
    let action = match f.get("action") {
        None => Action::Allow,
        Some(a) => {
            let p = join(path, "action");
            match r.string(a, &p).as_deref() {
                Some("ALLOW") => Action::Allow,
                Some("DENY") => Action::Deny,
                Some("AUDIT") => Action::Audit,
                Some("CUSTOM") => Action::Custom,
                Some(other) => {
                    r.issue(
                        a.at,
                        &p,
                        ErrorKind::UnknownValue {
                            what: "action",
                            value: other.to_owned(),
                            expected: ACTIONS,
                        },
                    );
                    Action::Allow
                }
                None => Action::Allow,
            }
        }
    };
    let provider = f.get("provider").and_then(|p| {
        let pp = join(path, "provider");
        let pf = r.fields(p, &pp, &["name"])?;
        let n = r.required(&pf, "name", p, &pp)?;
        r.string(n, &join(&pp, "name"))
    });
    let mut rules = Vec::new();
    if let Some(rs) = f.get("rules") {
        let rp = join(path, "rules");
        for (i, rule) in r.list(rs, &rp).unwrap_or_default().iter().enumerate() {
            if let Some(rule) = decode_rule(r, rule, &index(&rp, i)) {
                rules.push(rule);
            }
        }
    }
    Some(AuthorizationPolicy {
        meta: ObjectMeta {
            name: String::new(),
            namespace: String::new(),
            creation: UnixTime::EPOCH,
        },
        selector,
        action,
        provider,
        rules,
        dry_run: false,
    })
}

/// Decodes `from: [{source: …}]` / `to: [{operation: …}]`: a list whose
/// entries wrap one object under `key`; an entry without it matches anything.
fn decode_wrapped<T: Default>(
    r: &mut Reader,
    list: &Node,
    path: &str,
    keys: &'static [&'static str; 1],
    decode: fn(&mut Reader, &Node, &str) -> Option<T>,
) -> Vec<T> {
    let key = keys[0];
    let mut out = Vec::new();
    for (i, item) in r.list(list, path).unwrap_or_default().iter().enumerate() {
        let ip = index(path, i);
        let Some(itf) = r.fields(item, &ip, keys) else {
            continue;
        };
        let value = match itf.get(key) {
            Some(v) => decode(r, v, &join(&ip, key)),
            None => Some(T::default()),
        };
        out.extend(value);
    }
    out
}

fn decode_rule(r: &mut Reader, node: &Node, path: &str) -> Option<Rule> {
    let f = r.fields(node, path, RULE_FIELDS)?;
    let mut rule = Rule::default();
    if let Some(from) = f.get("from") {
        rule.from = decode_wrapped(r, from, &join(path, "from"), &["source"], decode_source);
    }
    if let Some(to) = f.get("to") {
        rule.to = decode_wrapped(r, to, &join(path, "to"), &["operation"], decode_operation);
    }
    if let Some(when) = f.get("when") {
        let wp = join(path, "when");
        for (i, item) in r.list(when, &wp).unwrap_or_default().iter().enumerate() {
            let ip = index(&wp, i);
            let Some(cf) = r.fields(item, &ip, &["key", "values", "notValues"]) else {
                continue;
            };
            let Some(k) = r
                .required(&cf, "key", item, &ip)
                .and_then(|k| r.string(k, &join(&ip, "key")))
            else {
                continue;
            };
            let mut c = Condition {
                key: k,
                ..Condition::default()
            };
            if let Some(v) = cf.get("values") {
                c.values = r.strings(v, &join(&ip, "values"));
            }
            if let Some(v) = cf.get("notValues") {
                c.not_values = r.strings(v, &join(&ip, "notValues"));
            }
            rule.when.push(c);
        }
    }
    Some(rule)
}

fn decode_source(r: &mut Reader, node: &Node, path: &str) -> Option<Source> {
    let f = r.fields(node, path, SOURCE_FIELDS)?;
    refuse(
        r,
        &f,
        path,
        &[
            "requestPrincipals",
            "notRequestPrincipals",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "serviceAccounts",
            "notServiceAccounts",
        ],
    );
    let mut s = Source::default();
    for (name, slot) in [
        ("principals", &mut s.principals),
        ("notPrincipals", &mut s.not_principals),
        ("namespaces", &mut s.namespaces),
        ("notNamespaces", &mut s.not_namespaces),
        ("ipBlocks", &mut s.ip_blocks),
        ("notIpBlocks", &mut s.not_ip_blocks),
    ] {
        if let Some(v) = f.get(name) {
            *slot = r.strings(v, &join(path, name));
        }
    }
    Some(s)
}

fn decode_operation(r: &mut Reader, node: &Node, path: &str) -> Option<Operation> {
    let f = r.fields(node, path, OPERATION_FIELDS)?;
    let mut o = Operation::default();
    for (name, slot) in [
        ("hosts", &mut o.hosts),
        ("notHosts", &mut o.not_hosts),
        ("methods", &mut o.methods),
        ("notMethods", &mut o.not_methods),
        ("paths", &mut o.paths),
        ("notPaths", &mut o.not_paths),
    ] {
        if let Some(v) = f.get(name) {
            *slot = r.strings(v, &join(path, name));
        }
    }
    for (name, slot) in [("ports", &mut o.ports), ("notPorts", &mut o.not_ports)] {
        if let Some(v) = f.get(name) {
            *slot = r.strings_or_ints(v, &join(path, name));
        }
    }
    Some(o)
}

// ---- ServiceEntry / WorkloadEntry -----------------------------------------

pub(crate) const SE_FIELDS: &[&str] = &[
    "hosts",
    "addresses",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "workloadSelector",
    "exportTo",
    "subjectAltNames",
];
const SE_PORT_FIELDS: &[&str] = &["number", "protocol", "name", "targetPort"];
const WE_FIELDS: &[&str] = &[
    "address",
    "ports",
    "labels",
    "serviceAccount",
    "network",
    "locality",
    "weight",
];

/// Decodes a ServiceEntry spec whose mapping may hold the fields in
/// `allowed` (the spec fields, plus `name`/`namespace` when written inline in
/// the settings file; the caller reads those).
pub(crate) fn decode_service_entry_with(
    r: &mut Reader,
    node: &Node,
    path: &str,
    allowed: &'static [&'static str],
) -> Option<ServiceEntry> {
    let before = r.issues.len();
    let f = r.fields(node, path, allowed)?;
    let mut se = ServiceEntry {
        path: path.to_owned(),
        name: String::new(),
        namespace: String::new(),
        hosts: Vec::new(),
        ports: Vec::new(),
        mesh_external: false,
        static_resolution: false,
        endpoints: Vec::new(),
        workload_selector: None,
        subject_alt_names: Vec::new(),
    };
    if let Some(h) = r.required(&f, "hosts", node, path) {
        let hp = join(path, "hosts");
        if let Some(items) = r.list(h, &hp) {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = r.string(item, &index(&hp, i)) {
                    se.hosts.push((s, item.at));
                }
            }
            if items.is_empty() {
                r.issue(
                    h.at,
                    &hp,
                    ErrorKind::Invalid("at least one host is required".into()),
                );
            }
        }
    }
    if let Some(a) = f.get("addresses") {
        // Virtual IPs matter to sidecars capturing traffic, not to a gateway
        // that routes by Host/SNI; they are checked for type only.
        r.strings(a, &join(path, "addresses"));
    }
    if let Some(e) = f.get("exportTo") {
        r.strings(e, &join(path, "exportTo"));
    }
    if let Some(p) = f.get("ports") {
        let pp = join(path, "ports");
        for (i, item) in r.list(p, &pp).unwrap_or_default().iter().enumerate() {
            let ip = index(&pp, i);
            let Some(pf) = r.fields(item, &ip, SE_PORT_FIELDS) else {
                continue;
            };
            let number = r
                .required(&pf, "number", item, &ip)
                .and_then(|n| r.port(n, &join(&ip, "number")));
            let name = r
                .required(&pf, "name", item, &ip)
                .and_then(|n| r.string(n, &join(&ip, "name")));
            let protocol = pf
                .get("protocol")
                .and_then(|n| r.string(n, &join(&ip, "protocol")));
            let target_port = pf
                .get("targetPort")
                .and_then(|n| r.port(n, &join(&ip, "targetPort")));
            if let (Some(number), Some(name)) = (number, name) {
                se.ports.push(SePort {
                    number,
                    name,
                    protocol,
                    target_port,
                    at: item.at,
                    path: ip,
                });
            }
        }
    }
    if let Some(l) = f.get("location") {
        let lp = join(path, "location");
        match r.string(l, &lp).as_deref() {
            Some("MESH_INTERNAL") => se.mesh_external = false,
            Some("MESH_EXTERNAL") => se.mesh_external = true,
            Some(other) => r.issue(
                l.at,
                &lp,
                ErrorKind::UnknownValue {
                    what: "location",
                    value: other.to_owned(),
                    expected: "MESH_EXTERNAL or MESH_INTERNAL",
                },
            ),
            None => {}
        }
    }
    if let Some(res) = f.get("resolution") {
        let rp = join(path, "resolution");
        match r.string(res, &rp).as_deref() {
            Some("STATIC") => se.static_resolution = true,
            Some("NONE" | "DNS" | "DNS_ROUND_ROBIN") => {}
            Some(other) => r.issue(
                res.at,
                &rp,
                ErrorKind::UnknownValue {
                    what: "resolution",
                    value: other.to_owned(),
                    expected: "NONE, STATIC, DNS or DNS_ROUND_ROBIN",
                },
            ),
            None => {}
        }
    }
    if let Some(e) = f.get("endpoints") {
        let ep = join(path, "endpoints");
        for (i, item) in r.list(e, &ep).unwrap_or_default().iter().enumerate() {
            if let Some(w) = decode_workload(r, item, &index(&ep, i)) {
                se.endpoints.push(w);
            }
        }
    }
    if let Some(ws) = f.get("workloadSelector") {
        let wp = join(path, "workloadSelector");
        if let Some(wf) = r.fields(ws, &wp, &["labels"]) {
            let labels = match wf.get("labels") {
                Some(l) => r.string_map(l, &join(&wp, "labels")),
                None => Vec::new(),
            };
            se.workload_selector = Some(labels);
        }
    }
    if let Some(s) = f.get("subjectAltNames") {
        se.subject_alt_names = r.strings(s, &join(path, "subjectAltNames"));
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        r.issue(
            node.at,
            &join(path, "workloadSelector"),
            ErrorKind::Invalid("only one of endpoints or workloadSelector can be set".into()),
        );
    }
    (r.issues.len() == before).then_some(se)
}

pub(crate) fn decode_workload(r: &mut Reader, node: &Node, path: &str) -> Option<WorkloadSpec> {
    let before = r.issues.len();
    let f = r.fields(node, path, WE_FIELDS)?;
    let address = r
        .required(&f, "address", node, path)
        .and_then(|a| r.string(a, &join(path, "address")));
    let mut ports = Vec::new();
    if let Some(p) = f.get("ports") {
        let pp = join(path, "ports");
        for (k, _, v) in r.mapping_entries(p, &pp).unwrap_or_default() {
            let kp = key(&pp, k);
            r.mark(&kp, v.at);
            if let Some(n) = r.port(v, &kp) {
                ports.push((k.to_owned(), n));
            }
        }
    }
    let labels = match f.get("labels") {
        Some(l) => r.string_map(l, &join(path, "labels")),
        None => Vec::new(),
    };
    let service_account = f
        .get("serviceAccount")
        .and_then(|s| r.string(s, &join(path, "serviceAccount")));
    for ignored in ["network", "locality"] {
        if let Some(v) = f.get(ignored) {
            r.string(v, &join(path, ignored));
        }
    }
    if let Some(w) = f.get("weight") {
        r.int_in(w, &join(path, "weight"), 0, i64::from(u32::MAX));
    }
    if r.issues.len() != before {
        return None;
    }
    Some(WorkloadSpec {
        name: None,
        namespace: None,
        address: address?,
        ports,
        labels,
        service_account,
        at: node.at,
        path: path.to_owned(),
    })
}
