//! Validation and compilation of policies into matchers.
//!
//! Validation and compilation are one pass: every value that validation
//! accepts is the value the evaluator uses, so the two can never disagree.
//! A resource with any error is not compiled at all (fail closed).
//! Messages use Istio's wording where Istio has one; every error carries the
//! field path (`spec.rules[0].from[1].source.principals[2]`) so a YAML
//! front-end can point at a line.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::ip::IpBlock;
use super::model::{
    Action, AuthorizationPolicy, Condition, Operation, PeerAuthentication, Rule, Selector, Source,
};
use super::request::{HttpRequest, Labels, Request};
use crate::mtls::MtlsMode;
use crate::spiffe::{PatternError, SpiffeError, StringMatch};
use crate::time::UnixTime;

/// What is wrong with one field of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationErrorKind {
    /// `metadata.name` or `metadata.namespace` is empty.
    Empty,
    /// Two resources of the same kind share a namespace and name.
    Duplicate,
    /// `portLevelMtls` on a policy without a selector.
    PortLevelMtlsWithoutSelector,
    /// A port outside 1..65535.
    PortOutOfRange,
    /// The same port twice in `portLevelMtls`.
    DuplicatePort,
    /// A selector label with an empty key (the value is carried).
    EmptySelectorKey(String),
    /// A selector label containing `*` (`key=value` is carried).
    WildcardInSelector(String),
    /// CUSTOM without rules.
    CustomWithoutRules,
    /// CUSTOM without `provider.name`.
    CustomWithoutProvider,
    /// `provider` set on a non-CUSTOM policy.
    ProviderWithoutCustom(Action),
    /// A field Istio does not support with CUSTOM (e.g. `From.Principals`).
    NotSupportedWithCustom(&'static str),
    /// DENY without rules.
    DenyWithoutRules,
    /// A `from` entry whose source sets nothing.
    EmptySource,
    /// A `to` entry whose operation sets nothing.
    EmptyOperation,
    /// A string pattern that is empty or has a misplaced `*`.
    Pattern(PatternError),
    /// Not an IP address or CIDR block.
    InvalidIpBlock(String),
    /// Not a port number.
    InvalidPort(String),
    /// A path template (`{*}`, `{**}`), which meshgate does not implement.
    PathTemplate,
    /// A `when` condition with an empty key.
    EmptyConditionKey,
    /// A `when` condition with neither `values` nor `notValues`.
    ConditionWithoutValues(String),
    /// A `when` key Istio does not know.
    UnknownAttribute(String),
    /// A `when` key Istio knows but meshgate does not evaluate.
    UnsupportedAttribute(String),
    /// `request.headers[...]` with an empty or malformed name.
    InvalidHeaderKey(String),
    /// The mesh trust domain is not a valid SPIFFE trust domain.
    InvalidTrustDomain(SpiffeError),
}

impl fmt::Display for ValidationErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ValidationErrorKind as K;
        match self {
            K::Empty => f.write_str("must not be empty"),
            K::Duplicate => {
                f.write_str("another resource of this kind has the same namespace and name")
            }
            K::PortLevelMtlsWithoutSelector => {
                f.write_str("mesh/namespace peer authentication cannot have port level mTLS")
            }
            K::PortOutOfRange => f.write_str("port must be in range 1..65535"),
            K::DuplicatePort => f.write_str("port is listed more than once in port level mTLS"),
            K::EmptySelectorKey(v) => write!(f, "empty key is not supported in selector: \"={v}\""),
            K::WildcardInSelector(kv) => {
                write!(f, "wildcard is not supported in selector: \"{kv}\"")
            }
            K::CustomWithoutRules => f.write_str(
                "CUSTOM action without `rules` is meaningless as it will never be triggered, \
                 add an empty rule `{}` if you want it be triggered for every request",
            ),
            K::CustomWithoutProvider => f.write_str("`provider.name` must not be empty"),
            K::ProviderWithoutCustom(a) => {
                write!(
                    f,
                    "`provider` must not be with non CUSTOM action, found {a}"
                )
            }
            K::NotSupportedWithCustom(name) => {
                write!(f, "{name} is currently not supported with CUSTOM action")
            }
            K::DenyWithoutRules => f.write_str(
                "DENY action without `rules` is meaningless as it will never be triggered, \
                 add an empty rule `{}` if you want it be triggered for every request",
            ),
            K::EmptySource => f.write_str("`from.source` must not be empty"),
            K::EmptyOperation => f.write_str("`to.operation` must not be empty"),
            K::Pattern(e) => fmt::Display::fmt(e, f),
            K::InvalidIpBlock(s) => write!(f, "invalid IP address or CIDR block: {s:?}"),
            K::InvalidPort(s) => write!(f, "invalid port: {s:?}"),
            K::PathTemplate => {
                f.write_str("path templates ({*}, {**}) are not supported by meshgate")
            }
            K::EmptyConditionKey => f.write_str("`key` must not be empty"),
            K::ConditionWithoutValues(k) => {
                write!(
                    f,
                    "at least one of `values` or `notValues` must be set for key {k}"
                )
            }
            K::UnknownAttribute(k) => write!(f, "unknown attribute ({k})"),
            K::UnsupportedAttribute(k) => write!(
                f,
                "attribute {k} is not supported by meshgate (supported: source.ip, \
                 source.principal, source.namespace, request.headers[NAME], destination.port, \
                 connection.sni)"
            ),
            K::InvalidHeaderKey(k) => write!(f, "invalid header key: {k:?}"),
            K::InvalidTrustDomain(e) => write!(f, "invalid trust domain: {e}"),
        }
    }
}

/// One validation error: where (a field path) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending field, e.g. `spec.portLevelMtls[70000]`.
    pub field: String,
    /// What is wrong with it.
    pub kind: ValidationErrorKind,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind)
    }
}

impl core::error::Error for ValidationError {}

/// Collects errors while compiling one resource.
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, kind: ValidationErrorKind) {
        self.0.push(ValidationError {
            field: field.into(),
            kind,
        });
    }
}

/// Checks a PeerAuthentication (Istio's `ValidatePeerAuthentication`).
pub fn validate_peer_authentication(pa: &PeerAuthentication) -> Result<(), Vec<ValidationError>> {
    compile_peer(pa).map(|_| ())
}

/// Checks an AuthorizationPolicy (Istio's `ValidateAuthorizationPolicy`,
/// plus meshgate's limits on `when` keys and path templates).
pub fn validate_authorization_policy(ap: &AuthorizationPolicy) -> Result<(), Vec<ValidationError>> {
    compile_authz(ap).map(|_| ())
}

pub(crate) type Pat = StringMatch<String>;

/// A PeerAuthentication ready for resolution.
#[derive(Debug)]
pub(crate) struct CompiledPeer {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) creation: UnixTime,
    /// Empty means mesh- or namespace-wide.
    pub(crate) selector: Vec<(String, String)>,
    pub(crate) mode: MtlsMode,
    /// Sorted by port.
    pub(crate) ports: Vec<(u16, MtlsMode)>,
}

/// An AuthorizationPolicy ready for evaluation.
#[derive(Debug)]
pub(crate) struct CompiledAuthz {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) creation: UnixTime,
    pub(crate) selector: Vec<(String, String)>,
    pub(crate) action: Action,
    pub(crate) provider: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) rules: Vec<CRule>,
}

#[derive(Debug)]
pub(crate) struct CRule {
    from: Vec<CSource>,
    to: Vec<COperation>,
    when: Vec<CCondition>,
}

#[derive(Debug, Default)]
struct CSource {
    principals: Vec<Pat>,
    not_principals: Vec<Pat>,
    namespaces: Vec<Pat>,
    not_namespaces: Vec<Pat>,
    ip_blocks: Vec<IpBlock>,
    not_ip_blocks: Vec<IpBlock>,
}

#[derive(Debug, Default)]
struct COperation {
    hosts: Vec<Pat>,
    not_hosts: Vec<Pat>,
    methods: Vec<Pat>,
    not_methods: Vec<Pat>,
    paths: Vec<Pat>,
    not_paths: Vec<Pat>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

#[derive(Debug)]
enum Attr {
    SourceIp,
    SourcePrincipal,
    SourceNamespace,
    RequestHeader(String),
    DestinationPort,
    ConnectionSni,
}

#[derive(Debug)]
enum CValues {
    Ips(Vec<IpBlock>, Vec<IpBlock>),
    Strings(Vec<Pat>, Vec<Pat>),
    Ports(Vec<u16>, Vec<u16>),
}

#[derive(Debug)]
struct CCondition {
    attr: Attr,
    values: CValues,
}

fn check_meta(name: &str, namespace: &str, errs: &mut Errors) {
    if name.is_empty() {
        errs.push("metadata.name", ValidationErrorKind::Empty);
    }
    if namespace.is_empty() {
        errs.push("metadata.namespace", ValidationErrorKind::Empty);
    }
}

/// Istio's `validateWorkloadSelector`; returns the labels (empty = none).
fn compile_selector(sel: &Option<Selector>, errs: &mut Errors) -> Vec<(String, String)> {
    let Some(sel) = sel else { return Vec::new() };
    for (k, v) in &sel.match_labels {
        let field = format!("spec.selector.matchLabels[{k}]");
        if k.is_empty() {
            errs.push(
                field.clone(),
                ValidationErrorKind::EmptySelectorKey(v.clone()),
            );
        }
        if k.contains('*') || v.contains('*') {
            errs.push(
                field,
                ValidationErrorKind::WildcardInSelector(format!("{k}={v}")),
            );
        }
    }
    sel.match_labels.clone()
}

pub(crate) fn compile_peer(pa: &PeerAuthentication) -> Result<CompiledPeer, Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    check_meta(&pa.meta.name, &pa.meta.namespace, &mut errs);
    let selector = compile_selector(&pa.selector, &mut errs);
    if selector.is_empty() && !pa.port_level_mtls.is_empty() {
        errs.push(
            "spec.portLevelMtls",
            ValidationErrorKind::PortLevelMtlsWithoutSelector,
        );
    }
    let mut ports: Vec<(u16, MtlsMode)> = Vec::with_capacity(pa.port_level_mtls.len());
    for &(port, mode) in &pa.port_level_mtls {
        let field = format!("spec.portLevelMtls[{port}]");
        match u16::try_from(port) {
            Ok(p) if p != 0 => {
                if ports.iter().any(|&(q, _)| q == p) {
                    errs.push(field, ValidationErrorKind::DuplicatePort);
                } else {
                    ports.push((p, mode));
                }
            }
            _ => errs.push(field, ValidationErrorKind::PortOutOfRange),
        }
    }
    ports.sort_unstable_by_key(|&(p, _)| p);
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(CompiledPeer {
        namespace: pa.meta.namespace.clone(),
        name: pa.meta.name.clone(),
        creation: pa.meta.creation,
        selector,
        mode: pa.mode,
        ports,
    })
}

fn patterns(values: &[String], field: &str, errs: &mut Errors) -> Vec<Pat> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match StringMatch::parse(v) {
            Ok(m) => out.push(m.map(String::from)),
            Err(e) => errs.push(format!("{field}[{i}]"), ValidationErrorKind::Pattern(e)),
        }
    }
    out
}

fn ip_blocks(values: &[String], field: &str, errs: &mut Errors) -> Vec<IpBlock> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match IpBlock::parse(v) {
            Ok(b) => out.push(b),
            Err(_) => errs.push(
                format!("{field}[{i}]"),
                ValidationErrorKind::InvalidIpBlock(v.clone()),
            ),
        }
    }
    out
}

fn parse_port(v: &str) -> Option<u16> {
    // Plain decimal only: `u16::from_str` would also take "+80".
    if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u16>().ok().filter(|&p| p != 0)
}

fn ports(values: &[String], field: &str, errs: &mut Errors) -> Vec<u16> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match parse_port(v) {
            Some(p) => out.push(p),
            None => errs.push(
                format!("{field}[{i}]"),
                ValidationErrorKind::InvalidPort(v.clone()),
            ),
        }
    }
    out
}

fn paths(values: &[String], field: &str, errs: &mut Errors) -> Vec<Pat> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        if v.contains('{') || v.contains('}') {
            // Reported once as a template, not again as a bad wildcard.
            errs.push(format!("{field}[{i}]"), ValidationErrorKind::PathTemplate);
            continue;
        }
        match StringMatch::parse(v) {
            Ok(m) => out.push(m.map(String::from)),
            Err(e) => errs.push(format!("{field}[{i}]"), ValidationErrorKind::Pattern(e)),
        }
    }
    out
}

fn compile_source(s: &Source, at: &str, custom: bool, errs: &mut Errors) -> CSource {
    let all_empty = s.principals.is_empty()
        && s.not_principals.is_empty()
        && s.namespaces.is_empty()
        && s.not_namespaces.is_empty()
        && s.ip_blocks.is_empty()
        && s.not_ip_blocks.is_empty();
    if all_empty {
        errs.push(at, ValidationErrorKind::EmptySource);
    }
    if custom {
        for (set, name) in [
            (!s.namespaces.is_empty(), "From.Namespaces"),
            (!s.not_namespaces.is_empty(), "From.NotNamespaces"),
            (!s.principals.is_empty(), "From.Principals"),
            (!s.not_principals.is_empty(), "From.NotPrincipals"),
        ] {
            if set {
                errs.push(at, ValidationErrorKind::NotSupportedWithCustom(name));
            }
        }
    }
    CSource {
        principals: patterns(&s.principals, &format!("{at}.principals"), errs),
        not_principals: patterns(&s.not_principals, &format!("{at}.notPrincipals"), errs),
        namespaces: patterns(&s.namespaces, &format!("{at}.namespaces"), errs),
        not_namespaces: patterns(&s.not_namespaces, &format!("{at}.notNamespaces"), errs),
        ip_blocks: ip_blocks(&s.ip_blocks, &format!("{at}.ipBlocks"), errs),
        not_ip_blocks: ip_blocks(&s.not_ip_blocks, &format!("{at}.notIpBlocks"), errs),
    }
}

fn compile_operation(o: &Operation, at: &str, errs: &mut Errors) -> COperation {
    let all_empty = o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty()
        && o.ports.is_empty()
        && o.not_ports.is_empty();
    if all_empty {
        errs.push(at, ValidationErrorKind::EmptyOperation);
    }
    COperation {
        hosts: patterns(&o.hosts, &format!("{at}.hosts"), errs),
        not_hosts: patterns(&o.not_hosts, &format!("{at}.notHosts"), errs),
        methods: patterns(&o.methods, &format!("{at}.methods"), errs),
        not_methods: patterns(&o.not_methods, &format!("{at}.notMethods"), errs),
        paths: paths(&o.paths, &format!("{at}.paths"), errs),
        not_paths: paths(&o.not_paths, &format!("{at}.notPaths"), errs),
        ports: ports(&o.ports, &format!("{at}.ports"), errs),
        not_ports: ports(&o.not_ports, &format!("{at}.notPorts"), errs),
    }
}

/// Classifies a `when` key (Istio's `ValidateAttribute` key set).
fn attribute(key: &str) -> Result<Attr, ValidationErrorKind> {
    if let Some(rest) = key.strip_prefix("request.headers[") {
        let name = rest.strip_suffix(']').unwrap_or("");
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'[' | b']' | b':'));
        return if valid {
            Ok(Attr::RequestHeader(name.to_ascii_lowercase()))
        } else {
            Err(ValidationErrorKind::InvalidHeaderKey(key.to_string()))
        };
    }
    match key {
        "source.ip" => Ok(Attr::SourceIp),
        "source.principal" => Ok(Attr::SourcePrincipal),
        "source.namespace" => Ok(Attr::SourceNamespace),
        "destination.port" => Ok(Attr::DestinationPort),
        "connection.sni" => Ok(Attr::ConnectionSni),
        // Known to Istio, but meshgate has no JWT authentication, no trusted
        // X-Forwarded-For and no destination-IP attribute: reject rather
        // than silently evaluate something else.
        "remote.ip" | "destination.ip" | "source.serviceAccount" => {
            Err(ValidationErrorKind::UnsupportedAttribute(key.to_string()))
        }
        k if k.starts_with("request.auth.") || k.starts_with("experimental.envoy.filters.") => {
            Err(ValidationErrorKind::UnsupportedAttribute(key.to_string()))
        }
        _ => Err(ValidationErrorKind::UnknownAttribute(key.to_string())),
    }
}

fn compile_condition(
    c: &Condition,
    at: &str,
    custom: bool,
    errs: &mut Errors,
) -> Option<CCondition> {
    if c.key.is_empty() {
        errs.push(format!("{at}.key"), ValidationErrorKind::EmptyConditionKey);
        return None;
    }
    if custom
        && (matches!(
            c.key.as_str(),
            "source.namespace" | "source.serviceAccount" | "source.principal"
        ) || c.key.starts_with("request.auth."))
    {
        // Istio's own message names the key itself here.
        errs.push(
            format!("{at}.key"),
            ValidationErrorKind::NotSupportedWithCustom(match c.key.as_str() {
                "source.namespace" => "source.namespace",
                "source.serviceAccount" => "source.serviceAccount",
                "source.principal" => "source.principal",
                _ => "request.auth.*",
            }),
        );
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        errs.push(
            at,
            ValidationErrorKind::ConditionWithoutValues(c.key.clone()),
        );
        return None;
    }
    let attr = match attribute(&c.key) {
        Ok(a) => a,
        Err(kind) => {
            errs.push(format!("{at}.key"), kind);
            return None;
        }
    };
    let (v, nv) = (format!("{at}.values"), format!("{at}.notValues"));
    let values = match attr {
        Attr::SourceIp => CValues::Ips(
            ip_blocks(&c.values, &v, errs),
            ip_blocks(&c.not_values, &nv, errs),
        ),
        Attr::DestinationPort => {
            CValues::Ports(ports(&c.values, &v, errs), ports(&c.not_values, &nv, errs))
        }
        _ => CValues::Strings(
            patterns(&c.values, &v, errs),
            patterns(&c.not_values, &nv, errs),
        ),
    };
    Some(CCondition { attr, values })
}

fn compile_rule(r: &Rule, i: usize, custom: bool, errs: &mut Errors) -> CRule {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(j, s)| {
            compile_source(
                s,
                &format!("spec.rules[{i}].from[{j}].source"),
                custom,
                errs,
            )
        })
        .collect();
    let to =
        r.to.iter()
            .enumerate()
            .map(|(j, o)| compile_operation(o, &format!("spec.rules[{i}].to[{j}].operation"), errs))
            .collect();
    let when = r
        .when
        .iter()
        .enumerate()
        .filter_map(|(j, c)| {
            compile_condition(c, &format!("spec.rules[{i}].when[{j}]"), custom, errs)
        })
        .collect();
    CRule { from, to, when }
}

pub(crate) fn compile_authz(
    ap: &AuthorizationPolicy,
) -> Result<CompiledAuthz, Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    check_meta(&ap.meta.name, &ap.meta.namespace, &mut errs);
    let selector = compile_selector(&ap.selector, &mut errs);
    let custom = ap.action == Action::Custom;
    let provider = ap.provider.as_deref().filter(|p| !p.is_empty());
    match ap.action {
        Action::Custom if ap.rules.is_empty() => {
            errs.push("spec.rules", ValidationErrorKind::CustomWithoutRules);
        }
        Action::Custom if provider.is_none() => {
            errs.push(
                "spec.provider.name",
                ValidationErrorKind::CustomWithoutProvider,
            );
        }
        Action::Deny if ap.rules.is_empty() => {
            errs.push("spec.rules", ValidationErrorKind::DenyWithoutRules);
        }
        _ => {}
    }
    if !custom && ap.provider.is_some() {
        errs.push(
            "spec.provider",
            ValidationErrorKind::ProviderWithoutCustom(ap.action),
        );
    }
    let rules = ap
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(r, i, custom, &mut errs))
        .collect();
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(CompiledAuthz {
        namespace: ap.meta.namespace.clone(),
        name: ap.meta.name.clone(),
        creation: ap.meta.creation,
        selector,
        action: ap.action,
        provider: provider.map(String::from),
        dry_run: ap.dry_run,
        rules,
    })
}

// ---------------------------------------------------------------------------
// Matching. `lenient` is true for DENY/AUDIT/CUSTOM policies: an HTTP-only
// field evaluated on a TCP connection then counts as matching, so a DENY
// rule that names methods still denies the TCP connection (Istio drops the
// HTTP-only fields from DENY rules on TCP and warns about it). For ALLOW it
// never matches, so an ALLOW rule about HTTP methods cannot open a TCP port.
// ---------------------------------------------------------------------------

pub(crate) fn selector_matches(selector: &[(String, String)], labels: &dyn Labels) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.label(k) == Some(v.as_str()))
}

/// `list` empty, or some entry matches.
fn any_of<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

/// No entry matches.
fn none_of<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    !list.iter().any(f)
}

/// A positive and a negative list over an HTTP-only attribute.
fn http_fields<T>(
    yes: &[T],
    no: &[T],
    http: Option<&HttpRequest<'_>>,
    lenient: bool,
    f: impl Fn(&T, &HttpRequest<'_>) -> bool,
) -> bool {
    if yes.is_empty() && no.is_empty() {
        return true;
    }
    match http {
        None => lenient,
        Some(h) => any_of(yes, |x| f(x, h)) && none_of(no, |x| f(x, h)),
    }
}

/// Host comparison is case-insensitive; `host:port` also matches a pattern
/// written without the port, as Istio generates both forms.
fn host_matches(p: &Pat, host: &str) -> bool {
    if p.matches_ignore_ascii_case(host) {
        return true;
    }
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !h.ends_with(':') =>
        {
            p.matches_ignore_ascii_case(h)
        }
        _ => false,
    }
}

/// The path without query string or fragment (Envoy's `url_path`).
fn url_path(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

impl CSource {
    fn matches(&self, req: &Request<'_>) -> bool {
        let principal = req.principal.map(|p| p.as_str());
        let namespace = req.principal.map(|p| p.namespace());
        any_of(&self.principals, |m| m.matches_opt(principal))
            && none_of(&self.not_principals, |m| m.matches_opt(principal))
            && any_of(&self.namespaces, |m| m.matches_opt(namespace))
            && none_of(&self.not_namespaces, |m| m.matches_opt(namespace))
            && any_of(&self.ip_blocks, |b| b.contains(req.source_ip))
            && none_of(&self.not_ip_blocks, |b| b.contains(req.source_ip))
    }
}

impl COperation {
    fn matches(&self, req: &Request<'_>, lenient: bool) -> bool {
        let http = req.http.as_ref();
        any_of(&self.ports, |&p| p == req.port)
            && none_of(&self.not_ports, |&p| p == req.port)
            && http_fields(&self.hosts, &self.not_hosts, http, lenient, |p, h| {
                host_matches(p, h.host)
            })
            && http_fields(&self.methods, &self.not_methods, http, lenient, |p, h| {
                p.matches(h.method)
            })
            && http_fields(&self.paths, &self.not_paths, http, lenient, |p, h| {
                p.matches(url_path(h.path))
            })
    }
}

impl CCondition {
    fn matches(&self, req: &Request<'_>, lenient: bool) -> bool {
        let value: Option<&str> = match &self.attr {
            Attr::SourcePrincipal => req.principal.map(|p| p.as_str()),
            Attr::SourceNamespace => req.principal.map(|p| p.namespace()),
            Attr::ConnectionSni => req.sni,
            Attr::RequestHeader(name) => match &req.http {
                Some(h) => h.headers.header(name),
                None => return lenient,
            },
            Attr::SourceIp | Attr::DestinationPort => None,
        };
        match &self.values {
            CValues::Ips(yes, no) => {
                any_of(yes, |b| b.contains(req.source_ip))
                    && none_of(no, |b| b.contains(req.source_ip))
            }
            CValues::Ports(yes, no) => {
                any_of(yes, |&p| p == req.port) && none_of(no, |&p| p == req.port)
            }
            CValues::Strings(yes, no) => {
                any_of(yes, |m| m.matches_opt(value)) && none_of(no, |m| m.matches_opt(value))
            }
        }
    }
}

impl CRule {
    /// At least one `from`, at least one `to`, all `when` (empty lists
    /// match everything: `rules: [{}]` matches every request).
    pub(crate) fn matches(&self, req: &Request<'_>, lenient: bool) -> bool {
        any_of(&self.from, |s| s.matches(req))
            && any_of(&self.to, |o| o.matches(req, lenient))
            && self.when.iter().all(|c| c.matches(req, lenient))
    }
}

impl CompiledAuthz {
    /// Index of the first rule matching `req`.
    pub(crate) fn first_match(&self, req: &Request<'_>) -> Option<usize> {
        let lenient = self.action != Action::Allow;
        self.rules.iter().position(|r| r.matches(req, lenient))
    }
}
