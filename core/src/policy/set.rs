//! The compiled, immutable policy set and the two decisions it makes:
//! which mTLS mode a workload port enforces, and whether a request is
//! authorized.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;

use super::compile::{
    CompiledAuthz, CompiledPeer, ValidationError, ValidationErrorKind, compile_authz, compile_peer,
    selector_matches,
};
use super::model::{Action, AuthorizationPolicy, PeerAuthentication};
use super::request::{Request, Workload};
use crate::mtls::{self, Admitted, EffectiveMode, MeshIdentity, MtlsMode, Presented, Rejection};
use crate::spiffe::OwnedTrustDomain;
use crate::time::UnixTime;

/// Mesh-wide settings a policy set is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshConfig<'a> {
    /// Istio's root namespace (`istio-system` by default): its
    /// selector-less PeerAuthentication is mesh-wide and its
    /// AuthorizationPolicies apply to the whole mesh.
    pub root_namespace: &'a str,
    /// The mesh trust domain (`cluster.local` by default).
    pub trust_domain: &'a str,
}

impl Default for MeshConfig<'_> {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "istio-system",
            trust_domain: "cluster.local",
        }
    }
}

/// Which kind of resource an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// The [`MeshConfig`] itself.
    MeshConfig,
    /// A PeerAuthentication.
    PeerAuthentication,
    /// An AuthorizationPolicy.
    AuthorizationPolicy,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::MeshConfig => "mesh config",
            ResourceKind::PeerAuthentication => "PeerAuthentication",
            ResourceKind::AuthorizationPolicy => "AuthorizationPolicy",
        })
    }
}

/// A validation error tied to the resource it was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The resource kind.
    pub kind: ResourceKind,
    /// `metadata.namespace` (empty for the mesh config).
    pub namespace: String,
    /// `metadata.name` (empty for the mesh config).
    pub name: String,
    /// The field and what is wrong with it.
    pub error: ValidationError,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {}/{}: {}",
            self.kind, self.namespace, self.name, self.error
        )
    }
}

/// Why a [`PolicySet`] could not be built: every error of every resource.
/// Nothing is built when any resource is invalid (fail closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    /// All errors, in input order.
    pub errors: Vec<PolicyError>,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} invalid policy field(s)", self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl core::error::Error for BuildError {}

/// Names a policy: `namespace/name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef<'p> {
    /// `metadata.namespace`.
    pub namespace: &'p str,
    /// `metadata.name`.
    pub name: &'p str,
}

impl fmt::Display for PolicyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The scope that decided a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// No policy set a mode: Istio's default, PERMISSIVE.
    Default,
    /// The root namespace's selector-less policy.
    Mesh,
    /// The workload namespace's selector-less policy.
    Namespace,
    /// A selector policy matching the workload.
    Workload,
    /// A `portLevelMtls` entry of that workload policy.
    Port,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Default => "default",
            Scope::Mesh => "mesh",
            Scope::Namespace => "namespace",
            Scope::Workload => "workload",
            Scope::Port => "port",
        })
    }
}

/// A policy that took part in a mode resolution, with the mode it declares
/// at that scope (possibly UNSET, i.e. inherited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Considered<'p> {
    /// The policy.
    pub policy: PolicyRef<'p>,
    /// Its declared mode at this scope.
    pub mode: MtlsMode,
}

/// The winning policy at each scope, broadest first — what
/// `meshgate check` prints, like `istioctl x describe`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeChain<'p> {
    /// Oldest selector-less policy of the root namespace.
    pub mesh: Option<Considered<'p>>,
    /// Oldest selector-less policy of the workload's namespace.
    pub namespace: Option<Considered<'p>>,
    /// Oldest selector policy matching the workload.
    pub workload: Option<Considered<'p>>,
    /// The workload policy's `portLevelMtls` entry for the port.
    pub port: Option<Considered<'p>>,
}

impl<'p> ModeChain<'p> {
    /// The links present, broadest scope first.
    pub fn iter(&self) -> impl Iterator<Item = (Scope, Considered<'p>)> + '_ {
        [
            (Scope::Mesh, self.mesh),
            (Scope::Namespace, self.namespace),
            (Scope::Workload, self.workload),
            (Scope::Port, self.port),
        ]
        .into_iter()
        .filter_map(|(s, c)| c.map(|c| (s, c)))
    }
}

/// The effective mode of a workload port and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeDecision<'p> {
    /// The mode to enforce.
    pub mode: EffectiveMode,
    /// The scope that set it ([`Scope::Default`] when nothing did).
    pub scope: Scope,
    /// The policy that set it (`None` for the default).
    pub policy: Option<PolicyRef<'p>>,
    /// Every policy considered, including UNSET ones that inherited.
    pub chain: ModeChain<'p>,
}

impl fmt::Display for ModeDecision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.policy {
            Some(p) => write!(f, "{} (set by {} policy {p})", self.mode, self.scope),
            None => write!(f, "{} (default: no policy sets a mode)", self.mode),
        }
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The request may proceed.
    Allow,
    /// HTTP: `403 RBAC: access denied`; TCP: close the connection.
    Deny,
}

/// The rule that decided: policy, action and index into `spec.rules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef<'p> {
    /// The policy.
    pub policy: PolicyRef<'p>,
    /// Its action.
    pub action: Action,
    /// Index of the matching rule in `spec.rules`.
    pub rule: usize,
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} policy {} rule {}",
            self.action, self.policy, self.rule
        )
    }
}

/// Why an authorization decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzReason<'p> {
    /// A CUSTOM policy matched. meshgate has no external authorizer, so a
    /// matching CUSTOM policy denies: fail closed.
    CustomNoAuthorizer {
        /// The policy's `provider.name`.
        provider: &'p str,
    },
    /// A DENY policy matched.
    DenyMatched,
    /// An ALLOW policy matched.
    AllowMatched,
    /// No ALLOW policy applies to the workload: allowed.
    NoAllowPolicies,
    /// ALLOW policies apply but none matched: denied.
    NoAllowMatched,
}

/// The result of authorizing one request (enforced policies only) plus
/// what AUDIT and dry-run policies would have said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthzDecision<'p> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: AuthzReason<'p>,
    /// The deciding rule, when a policy decided (not for
    /// [`AuthzReason::NoAllowPolicies`] / [`AuthzReason::NoAllowMatched`]).
    pub decided_by: Option<RuleRef<'p>>,
    /// The first matching AUDIT rule: log this request.
    pub audit: Option<RuleRef<'p>>,
    /// Present when dry-run policies apply to the workload: the decision
    /// as if they were enforced too. Never affects [`Self::verdict`].
    pub dry_run: Option<DryRunOutcome<'p>>,
}

/// The decision the set would make if dry-run policies were enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRunOutcome<'p> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: AuthzReason<'p>,
    /// The deciding rule, if a policy decided.
    pub decided_by: Option<RuleRef<'p>>,
}

impl AuthzDecision<'_> {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl fmt::Display for AuthzDecision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_outcome(f, self.verdict, self.reason, self.decided_by)?;
        if let Some(d) = &self.dry_run {
            f.write_str("; dry-run: ")?;
            write_outcome(f, d.verdict, d.reason, d.decided_by)?;
        }
        Ok(())
    }
}

fn write_outcome(
    f: &mut fmt::Formatter<'_>,
    verdict: Verdict,
    reason: AuthzReason<'_>,
    by: Option<RuleRef<'_>>,
) -> fmt::Result {
    let v = match verdict {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
    };
    match (reason, by) {
        (AuthzReason::CustomNoAuthorizer { provider }, Some(r)) => write!(
            f,
            "{v} by {r}: provider {provider:?} is an external authorizer, which meshgate does not \
             have, so a matching CUSTOM policy denies (fail closed)"
        ),
        (AuthzReason::NoAllowPolicies, _) => write!(f, "{v}: no ALLOW policy applies"),
        (AuthzReason::NoAllowMatched, _) => write!(f, "{v}: no ALLOW policy matched"),
        (_, Some(r)) => write!(f, "{v} by {r}"),
        (_, None) => f.write_str(v),
    }
}

/// Authorization policies of one scope, split by action, oldest first.
#[derive(Debug, Default)]
struct AuthzIndex {
    custom: Vec<u32>,
    deny: Vec<u32>,
    allow: Vec<u32>,
    audit: Vec<u32>,
    any_dry_run: bool,
}

#[derive(Debug, Default)]
struct NsIndex {
    /// The winning selector-less PeerAuthentication.
    peer: Option<u32>,
    /// Selector PeerAuthentications, oldest first: the first that matches
    /// a workload is its workload policy.
    workload_peers: Vec<u32>,
    authz: AuthzIndex,
}

static EMPTY_NS: NsIndex = NsIndex {
    peer: None,
    workload_peers: Vec::new(),
    authz: AuthzIndex {
        custom: Vec::new(),
        deny: Vec::new(),
        allow: Vec::new(),
        audit: Vec::new(),
        any_dry_run: false,
    },
};

/// Istio's precedence: older first, then by name, then by namespace.
fn precedence(a: (UnixTime, &str, &str), b: (UnixTime, &str, &str)) -> Ordering {
    a.cmp(&b)
}

/// PeerAuthentications and AuthorizationPolicies, validated, compiled and
/// indexed by namespace. Immutable: build a new set on every change and
/// swap it in (e.g. with `arc-swap`); decisions borrow from it.
#[derive(Debug)]
pub struct PolicySet {
    root_namespace: String,
    trust_domain: OwnedTrustDomain,
    peers: Vec<CompiledPeer>,
    authz: Vec<CompiledAuthz>,
    mesh_peer: Option<u32>,
    /// Selector policies in the root namespace: ignored, kept for reports.
    ignored_peers: Vec<u32>,
    root_authz: AuthzIndex,
    namespaces: BTreeMap<String, NsIndex>,
}

fn to_u32(i: usize) -> u32 {
    // More than 4 billion policies cannot be held in memory anyway.
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl PolicySet {
    /// Validates and compiles every policy. Any invalid resource fails the
    /// whole build with all errors listed, so a typo never silently turns
    /// into "no policy".
    pub fn new(
        config: MeshConfig<'_>,
        peer_authentications: &[PeerAuthentication],
        authorization_policies: &[AuthorizationPolicy],
    ) -> Result<PolicySet, BuildError> {
        let mut errors = Vec::new();
        let mesh_err = |field: &str, kind| PolicyError {
            kind: ResourceKind::MeshConfig,
            namespace: String::new(),
            name: String::new(),
            error: ValidationError {
                field: String::from(field),
                kind,
            },
        };
        if config.root_namespace.is_empty() {
            errors.push(mesh_err("rootNamespace", ValidationErrorKind::Empty));
        }
        let trust_domain = match OwnedTrustDomain::parse(config.trust_domain) {
            Ok(td) => Some(td),
            Err(e) => {
                errors.push(mesh_err(
                    "trustDomain",
                    ValidationErrorKind::InvalidTrustDomain(e),
                ));
                None
            }
        };

        let mut peers = Vec::with_capacity(peer_authentications.len());
        for pa in peer_authentications {
            match compile_peer(pa) {
                Ok(c) => peers.push(c),
                Err(es) => errors.extend(es.into_iter().map(|error| PolicyError {
                    kind: ResourceKind::PeerAuthentication,
                    namespace: pa.meta.namespace.clone(),
                    name: pa.meta.name.clone(),
                    error,
                })),
            }
        }
        let mut authz = Vec::with_capacity(authorization_policies.len());
        for ap in authorization_policies {
            match compile_authz(ap) {
                Ok(c) => authz.push(c),
                Err(es) => errors.extend(es.into_iter().map(|error| PolicyError {
                    kind: ResourceKind::AuthorizationPolicy,
                    namespace: ap.meta.namespace.clone(),
                    name: ap.meta.name.clone(),
                    error,
                })),
            }
        }
        // Sort so every index list below is in precedence order, and
        // duplicates (same namespace/name) end up adjacent-by-key checks.
        peers.sort_by(|a, b| {
            precedence(
                (a.creation, &a.name, &a.namespace),
                (b.creation, &b.name, &b.namespace),
            )
        });
        authz.sort_by(|a, b| {
            precedence(
                (a.creation, &a.name, &a.namespace),
                (b.creation, &b.name, &b.namespace),
            )
        });
        duplicates(
            peers
                .iter()
                .map(|p| (p.namespace.as_str(), p.name.as_str())),
            ResourceKind::PeerAuthentication,
            &mut errors,
        );
        duplicates(
            authz
                .iter()
                .map(|p| (p.namespace.as_str(), p.name.as_str())),
            ResourceKind::AuthorizationPolicy,
            &mut errors,
        );
        let trust_domain = match trust_domain {
            Some(td) if errors.is_empty() => td,
            _ => return Err(BuildError { errors }),
        };

        let root = config.root_namespace;
        let mut set = PolicySet {
            root_namespace: String::from(root),
            trust_domain,
            peers: Vec::new(),
            authz: Vec::new(),
            mesh_peer: None,
            ignored_peers: Vec::new(),
            root_authz: AuthzIndex::default(),
            namespaces: BTreeMap::new(),
        };
        // `peers` is sorted oldest first, so the first policy seen at a
        // scope is the one that wins it.
        for (i, p) in peers.iter().enumerate() {
            let i = to_u32(i);
            let in_root = p.namespace == root;
            match (in_root, p.selector.is_empty()) {
                (true, true) => {
                    set.mesh_peer.get_or_insert(i);
                }
                // Istio ignores selector PeerAuthentications in the root
                // namespace (unlike AuthorizationPolicy).
                (true, false) => set.ignored_peers.push(i),
                (false, true) => {
                    set.ns_entry(&p.namespace).peer.get_or_insert(i);
                }
                (false, false) => set.ns_entry(&p.namespace).workload_peers.push(i),
            }
        }
        for (i, a) in authz.iter().enumerate() {
            let i = to_u32(i);
            let index = if a.namespace == root {
                &mut set.root_authz
            } else {
                &mut set.ns_entry(&a.namespace).authz
            };
            index.any_dry_run |= a.dry_run;
            match a.action {
                Action::Custom => index.custom.push(i),
                Action::Deny => index.deny.push(i),
                Action::Allow => index.allow.push(i),
                Action::Audit => index.audit.push(i),
            }
        }
        set.peers = peers;
        set.authz = authz;
        Ok(set)
    }

    fn ns_entry(&mut self, ns: &str) -> &mut NsIndex {
        self.namespaces.entry(String::from(ns)).or_default()
    }

    fn ns(&self, ns: &str) -> &NsIndex {
        self.namespaces.get(ns).unwrap_or(&EMPTY_NS)
    }

    /// The root namespace this set was built for.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The mesh trust domain.
    pub fn trust_domain(&self) -> &OwnedTrustDomain {
        &self.trust_domain
    }

    /// Number of PeerAuthentications held.
    pub fn peer_authentication_count(&self) -> usize {
        self.peers.len()
    }

    /// Number of AuthorizationPolicies held.
    pub fn authorization_policy_count(&self) -> usize {
        self.authz.len()
    }

    /// Whether the set holds no policy at all.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.authz.is_empty()
    }

    /// Selector PeerAuthentications in the root namespace, which Istio
    /// ignores (reported so `meshgate check` can warn about them).
    pub fn ignored_peer_authentications(&self) -> impl Iterator<Item = PolicyRef<'_>> + '_ {
        self.ignored_peers
            .iter()
            .map(|&i| peer_ref(&self.peers[i as usize]))
    }

    /// The effective mTLS mode of `workload` on workload port `port`.
    ///
    /// mesh → namespace → workload → port, each UNSET inheriting from the
    /// one before, PERMISSIVE when nothing is set. At each scope only the
    /// oldest matching policy counts (ties: name, then namespace), and the
    /// port override comes only from that one workload policy.
    pub fn resolve_mode(&self, workload: &Workload<'_>, port: u16) -> ModeDecision<'_> {
        let mut d = ModeDecision {
            mode: EffectiveMode::DEFAULT,
            scope: Scope::Default,
            policy: None,
            chain: ModeChain::default(),
        };
        let mut chain = ModeChain::default();
        if let Some(i) = self.mesh_peer {
            let p = &self.peers[i as usize];
            chain.mesh = Some(step(&mut d, Scope::Mesh, p, p.mode));
        }
        // Workloads in the root namespace have no namespace or workload
        // scope: its selector-less policy is the mesh policy and its
        // selector policies are ignored, neither is indexed under it.
        let ns = self.ns(workload.namespace);
        if let Some(i) = ns.peer {
            let p = &self.peers[i as usize];
            chain.namespace = Some(step(&mut d, Scope::Namespace, p, p.mode));
        }
        let wl = ns
            .workload_peers
            .iter()
            .map(|&i| &self.peers[i as usize])
            .find(|p| selector_matches(&p.selector, workload.labels));
        if let Some(p) = wl {
            chain.workload = Some(step(&mut d, Scope::Workload, p, p.mode));
            // UNSET at the port means "the mode above", which `step` keeps.
            if let Ok(k) = p.ports.binary_search_by_key(&port, |&(q, _)| q) {
                chain.port = Some(step(&mut d, Scope::Port, p, p.ports[k].1));
            }
        }
        d.chain = chain;
        d
    }

    /// Admission for a connection under an already resolved mode, against
    /// this set's trust domain (see [`crate::mtls::admit`]; call that
    /// directly to accept trust-domain aliases).
    pub fn admit<'a>(
        &self,
        mode: EffectiveMode,
        presented: Presented<'a>,
    ) -> Result<Admitted<'a>, Rejection> {
        mtls::admit(
            mode,
            presented,
            &MeshIdentity::new(self.trust_domain.borrow()),
        )
    }

    /// Authorizes a request: CUSTOM → DENY → ALLOW over the root
    /// namespace's policies (mesh-wide) and the workload namespace's, each
    /// restricted by its selector. Never allocates.
    pub fn authorize(&self, req: &Request<'_>) -> AuthzDecision<'_> {
        let ns = self.ns(req.workload.namespace);
        let scopes = [&self.root_authz, &ns.authz];
        let enforced = self.evaluate(&scopes, req, false);
        let dry_run = (self.root_authz.any_dry_run || ns.authz.any_dry_run)
            .then(|| self.evaluate(&scopes, req, true));
        let audit = self
            .first_match(&scopes, |s| &s.audit, req, false)
            .map(|(_, r)| r);
        AuthzDecision {
            verdict: enforced.verdict,
            reason: enforced.reason,
            decided_by: enforced.decided_by,
            audit,
            dry_run,
        }
    }

    fn first_match<'s>(
        &'s self,
        scopes: &[&'s AuthzIndex; 2],
        list: impl Fn(&'s AuthzIndex) -> &'s Vec<u32>,
        req: &Request<'_>,
        include_dry_run: bool,
    ) -> Option<(&'s CompiledAuthz, RuleRef<'s>)> {
        scopes.iter().flat_map(|s| list(s).iter()).find_map(|&i| {
            let p = &self.authz[i as usize];
            if (p.dry_run && !include_dry_run)
                || !selector_matches(&p.selector, req.workload.labels)
            {
                return None;
            }
            p.first_match(req).map(|rule| {
                let r = RuleRef {
                    policy: authz_ref(p),
                    action: p.action,
                    rule,
                };
                (p, r)
            })
        })
    }

    fn evaluate<'s>(
        &'s self,
        scopes: &[&'s AuthzIndex; 2],
        req: &Request<'_>,
        include_dry_run: bool,
    ) -> DryRunOutcome<'s> {
        if let Some((p, r)) = self.first_match(scopes, |s| &s.custom, req, include_dry_run) {
            // Validation guarantees a CUSTOM policy has a provider name.
            let provider = p.provider.as_deref().unwrap_or("");
            return DryRunOutcome {
                verdict: Verdict::Deny,
                reason: AuthzReason::CustomNoAuthorizer { provider },
                decided_by: Some(r),
            };
        }
        if let Some((_, r)) = self.first_match(scopes, |s| &s.deny, req, include_dry_run) {
            return DryRunOutcome {
                verdict: Verdict::Deny,
                reason: AuthzReason::DenyMatched,
                decided_by: Some(r),
            };
        }
        if let Some((_, r)) = self.first_match(scopes, |s| &s.allow, req, include_dry_run) {
            return DryRunOutcome {
                verdict: Verdict::Allow,
                reason: AuthzReason::AllowMatched,
                decided_by: Some(r),
            };
        }
        let any_allow = scopes.iter().flat_map(|s| s.allow.iter()).any(|&i| {
            let p = &self.authz[i as usize];
            (include_dry_run || !p.dry_run) && selector_matches(&p.selector, req.workload.labels)
        });
        if any_allow {
            DryRunOutcome {
                verdict: Verdict::Deny,
                reason: AuthzReason::NoAllowMatched,
                decided_by: None,
            }
        } else {
            DryRunOutcome {
                verdict: Verdict::Allow,
                reason: AuthzReason::NoAllowPolicies,
                decided_by: None,
            }
        }
    }
}

/// Records one link of the chain; a non-UNSET mode overrides the mode so far.
fn step<'p>(
    d: &mut ModeDecision<'p>,
    scope: Scope,
    p: &'p CompiledPeer,
    declared: MtlsMode,
) -> Considered<'p> {
    let c = Considered {
        policy: peer_ref(p),
        mode: declared,
    };
    if let Some(m) = declared.effective() {
        d.mode = m;
        d.scope = scope;
        d.policy = Some(c.policy);
    }
    c
}

fn peer_ref(p: &CompiledPeer) -> PolicyRef<'_> {
    PolicyRef {
        namespace: &p.namespace,
        name: &p.name,
    }
}

fn authz_ref(p: &CompiledAuthz) -> PolicyRef<'_> {
    PolicyRef {
        namespace: &p.namespace,
        name: &p.name,
    }
}

/// Reports every namespace/name that occurs more than once.
fn duplicates<'a>(
    ids: impl Iterator<Item = (&'a str, &'a str)>,
    kind: ResourceKind,
    errors: &mut Vec<PolicyError>,
) {
    let mut ids: Vec<(&str, &str)> = ids.collect();
    ids.sort_unstable();
    for w in ids.windows(2) {
        if w[0] == w[1] {
            errors.push(PolicyError {
                kind,
                namespace: String::from(w[0].0),
                name: String::from(w[0].1),
                error: ValidationError {
                    field: String::from("metadata.name"),
                    kind: ValidationErrorKind::Duplicate,
                },
            });
        }
    }
}
