//! Istio security resources as plain data.
//!
//! These types are the contract between the front-ends (which parse Istio
//! YAML, Kubernetes objects or admin-API requests into them) and the
//! evaluator in this crate. They hold exactly what the Istio API says, with
//! no interpretation: validation and compilation live in
//! `super::compile`, resolution and authorization in [`super::PolicySet`].
//! Serde/YAML types never appear here.

use alloc::string::String;
use alloc::vec::Vec;

use crate::mtls::MtlsMode;
use crate::time::UnixTime;

/// Identity and age of a resource: what Istio's precedence rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.creationTimestamp`; the oldest policy wins a conflict.
    /// Resources without one (e.g. read from a file) get the time the
    /// gateway first saw them.
    pub creation: UnixTime,
}

/// `spec.selector.matchLabels`. An empty list is the same as no selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Label key/value pairs that must all be present on the workload.
    pub match_labels: Vec<(String, String)>,
}

/// `security.istio.io` PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    /// Name, namespace, creation time.
    pub meta: ObjectMeta,
    /// `spec.selector`; `None` or empty means mesh- or namespace-wide.
    pub selector: Option<Selector>,
    /// `spec.mtls.mode`; a missing `mtls` block is [`MtlsMode::Unset`].
    pub mode: MtlsMode,
    /// `spec.portLevelMtls`, keyed by *workload* (target) port. Ports are
    /// kept as `u32` so that validation can report out-of-range values.
    /// An empty list means "absent": a parser that sees an explicitly empty
    /// map must itself report Istio's "port level mTLS, if defined, must
    /// have at least one element".
    pub port_level_mtls: Vec<(u32, MtlsMode)>,
}

impl Selector {
    /// Whether the selector selects by nothing (same as no selector).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty()
    }
}

/// `spec.action` of an AuthorizationPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The default.
    Allow,
    /// Deny matching requests.
    Deny,
    /// Record matching requests; never changes the decision.
    Audit,
    /// Delegate to an external authorizer (`spec.provider.name`).
    Custom,
}

impl Action {
    /// The Istio spelling (`ALLOW`, `DENY`, `AUDIT`, `CUSTOM`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

impl core::fmt::Display for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `security.istio.io` AuthorizationPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// Name, namespace, creation time.
    pub meta: ObjectMeta,
    /// `spec.selector`; `None` or empty means namespace-wide (or mesh-wide
    /// in the root namespace).
    pub selector: Option<Selector>,
    /// `spec.action`.
    pub action: Action,
    /// `spec.provider.name`, only meaningful for [`Action::Custom`].
    pub provider: Option<String>,
    /// `spec.rules`. An empty list with `Allow` allows nothing
    /// (`spec: {}`); a list holding one empty rule matches everything.
    pub rules: Vec<Rule>,
    /// Annotation `istio.io/dry-run: "true"`: evaluate and report, never
    /// enforce.
    pub dry_run: bool,
}

/// One entry of `spec.rules`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `from`: at least one must match; empty matches any source.
    pub from: Vec<Source>,
    /// `to`: at least one must match; empty matches any operation.
    pub to: Vec<Operation>,
    /// `when`: all must match.
    pub when: Vec<Condition>,
}

/// `rules[].from[].source`. Every non-empty field must match (AND); the
/// entries inside one field are alternatives (OR).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// `principals` (Istio string patterns over `TD/ns/NS/sa/SA`).
    pub principals: Vec<String>,
    /// `notPrincipals`.
    pub not_principals: Vec<String>,
    /// `namespaces` (string patterns).
    pub namespaces: Vec<String>,
    /// `notNamespaces`.
    pub not_namespaces: Vec<String>,
    /// `ipBlocks` (`a.b.c.d`, `a.b.c.d/len`, IPv6 likewise).
    pub ip_blocks: Vec<String>,
    /// `notIpBlocks`.
    pub not_ip_blocks: Vec<String>,
}

/// `rules[].to[].operation`. Every non-empty field must match (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operation {
    /// `hosts` (string patterns, compared case-insensitively).
    pub hosts: Vec<String>,
    /// `notHosts`.
    pub not_hosts: Vec<String>,
    /// `methods` (HTTP only).
    pub methods: Vec<String>,
    /// `notMethods`.
    pub not_methods: Vec<String>,
    /// `paths` (HTTP only, string patterns).
    pub paths: Vec<String>,
    /// `notPaths`.
    pub not_paths: Vec<String>,
    /// `ports` (workload ports, as strings in Istio's API).
    pub ports: Vec<String>,
    /// `notPorts`.
    pub not_ports: Vec<String>,
}

/// `rules[].when[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// Attribute name, e.g. `source.ip`, `request.headers[x-token]`,
    /// `source.principal`, `destination.port`.
    pub key: String,
    /// `values`: at least one must match (if non-empty).
    pub values: Vec<String>,
    /// `notValues`: none may match.
    pub not_values: Vec<String>,
}
