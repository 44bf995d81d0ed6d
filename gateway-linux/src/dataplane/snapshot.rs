//! The routing and policy state the data plane reads per connection.
//!
//! A [`Snapshot`] is immutable: services (hosts → ports → endpoints), the
//! mesh trust domain and the compiled `meshgate_core::policy::PolicySet`.
//! The control plane builds a new one whenever services or policies change
//! and swaps it into the shared `Arc<ArcSwap<Snapshot>>`; a connection loads
//! the snapshot once when it is accepted (to choose its TLS configuration)
//! and every HTTP request loads it again when the request starts. So a
//! change applies atomically to new connections and requests and never to
//! one already in flight.
//!
//! Policy identity of a service: like the admin API and `meshgate check`,
//! the data plane treats a service's workload identity (namespace, labels)
//! as that of its first workload (the service's namespace and no labels
//! when it has none). Every workload is still an endpoint, each with its own
//! address, workload port and upstream security.

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::collections::HashMap;
use std::sync::Arc;

use meshgate_config::settings::{Address, Service, UpstreamTls};
use meshgate_core::mtls::EffectiveMode;
use meshgate_core::policy::{self, AuthzReason, PolicySet, Verdict};
use meshgate_core::spiffe::{OwnedSpiffeId, OwnedTrustDomain, Principal};

/// How the gateway talks to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamSecurity {
    /// A legacy upstream: plaintext.
    Plaintext,
    /// In the mesh: originate mTLS with the gateway's identity and require
    /// one of these SPIFFE IDs (secure naming).
    Mesh { identities: Vec<OwnedSpiffeId> },
}

/// Where an endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum EndpointAddress {
    /// A socket address.
    Ip(SocketAddr),
    /// A DNS name resolved at connect time, and the port.
    Dns(String, u16),
    /// A legacy device behind edge node `node`, reached through its tunnel.
    Edge { node: String, device: SocketAddr },
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => write!(f, "{a}"),
            EndpointAddress::Dns(h, p) => write!(f, "{h}:{p}"),
            EndpointAddress::Edge { node, device } => write!(f, "edge:{node}/{device}"),
        }
    }
}

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) address: EndpointAddress,
    pub(crate) upstream: UpstreamSecurity,
}

/// One port of a service: what clients address (`number`) and what the
/// workload listens on (`target_port`, the key of `portLevelMtls` and of
/// authorization `ports`), with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePort {
    pub(crate) number: u16,
    pub(crate) target_port: u16,
    pub(crate) endpoints: Vec<Endpoint>,
}

/// A service behind the gateway as the data plane routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    /// Host names, e.g. `details.bookinfo.svc.cluster.local`; the first is
    /// the display name in logs and metrics.
    pub(crate) hosts: Vec<String>,
    /// Namespace of the workload (what namespace policies apply to).
    pub(crate) namespace: String,
    /// Workload labels, matched by policy selectors.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) ports: Vec<ServicePort>,
}

impl ServiceSpec {
    /// Converts a configured service (ServiceEntry + WorkloadEntries).
    pub(crate) fn from_config(s: &Service) -> Self {
        let first = s.workloads.first();
        ServiceSpec {
            hosts: s.hosts.clone(),
            namespace: first.map_or_else(|| s.namespace.clone(), |w| w.namespace.clone()),
            labels: first.map(|w| w.labels.clone()).unwrap_or_default(),
            ports: s
                .ports
                .iter()
                .map(|p| ServicePort {
                    number: p.number,
                    target_port: first.map_or(p.target_port, |w| w.port_for(p)),
                    endpoints: s
                        .endpoints(p)
                        .map(|(w, port)| Endpoint {
                            address: match (&w.address, edge_node(w)) {
                                (Address::Ip(ip), Some(node)) => EndpointAddress::Edge {
                                    node: node.to_owned(),
                                    device: SocketAddr::new(*ip, port),
                                },
                                (Address::Ip(ip), None) => {
                                    EndpointAddress::Ip(SocketAddr::new(*ip, port))
                                }
                                (Address::Dns(h), _) => EndpointAddress::Dns(h.clone(), port),
                            },
                            upstream: match &w.upstream {
                                UpstreamTls::Plaintext => UpstreamSecurity::Plaintext,
                                UpstreamTls::Mesh { identities } => UpstreamSecurity::Mesh {
                                    identities: identities.clone(),
                                },
                            },
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The edge node a workload (a legacy device) is behind, if any.
fn edge_node(w: &meshgate_config::settings::Workload) -> Option<&str> {
    w.labels
        .iter()
        .find(|(k, _)| k == crate::edge::EDGE_NODE_LABEL)
        .map(|(_, v)| v.as_str())
}

/// The effective mode of a workload port and the policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModeDecision {
    pub(crate) mode: EffectiveMode,
    /// `namespace/name` of the deciding PeerAuthentication, `None` when no
    /// policy applies (Istio's default, PERMISSIVE).
    pub(crate) policy: Option<String>,
}

/// The request attributes AuthorizationPolicy looks at. HTTP fields are
/// `None` for TCP connections.
#[derive(Clone, Copy)]
pub(crate) struct AuthzRequest<'a> {
    pub(crate) source_ip: IpAddr,
    pub(crate) principal: Option<Principal<'a>>,
    pub(crate) sni: Option<&'a str>,
    pub(crate) host: Option<&'a str>,
    pub(crate) method: Option<&'a str>,
    pub(crate) path: Option<&'a str>,
    pub(crate) headers: Option<&'a http::HeaderMap>,
}

/// An authorization outcome, naming what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthzDecision {
    pub(crate) allowed: bool,
    /// Short machine-readable reason (`allow_matched`, `deny_matched`,
    /// `no_allow_policies`, `no_allow_matched`, `custom_no_authorizer`).
    pub(crate) reason: &'static str,
    /// The deciding rule (`ALLOW policy ns/name rule 0`).
    pub(crate) policy: Option<String>,
}

/// Header access for core's evaluator over an `http::HeaderMap`.
struct HeaderView<'a>(&'a http::HeaderMap);

impl policy::Headers for HeaderView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A service as routed: its spec plus the round-robin cursor.
#[derive(Debug)]
pub(crate) struct ServiceRoute {
    pub(crate) spec: ServiceSpec,
    next_endpoint: AtomicUsize,
}

impl ServiceRoute {
    /// The display name (first host).
    pub(crate) fn name(&self) -> &str {
        self.spec.hosts.first().map_or("-", String::as_str)
    }
}

/// A resolved destination: service and one of its ports.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) service: Arc<ServiceRoute>,
    pub(crate) port: usize,
}

impl Route {
    pub(crate) fn port(&self) -> &ServicePort {
        // `port` is an index produced by `Snapshot::route` into this very
        // service's ports, so it is always in range; `route` never builds
        // one otherwise.
        &self.service.spec.ports[self.port]
    }

    /// `host:port` for logs and metric labels.
    pub(crate) fn destination(&self) -> String {
        format!("{}:{}", self.service.name(), self.port().number)
    }

    /// Endpoints starting at a rotating offset, so connections spread over
    /// them and a failing one is tried last next time.
    pub(crate) fn endpoints_in_turn(&self) -> Vec<Endpoint> {
        let eps = &self.port().endpoints;
        let n = eps.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.service.next_endpoint.fetch_add(1, Ordering::Relaxed) % n;
        eps.iter().cycle().skip(start).take(n).cloned().collect()
    }
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SnapshotError {
    /// Two services claim the same host.
    #[error("host {0} is declared by more than one service")]
    DuplicateHost(String),
    /// A service without hosts or ports cannot be routed to.
    #[error("service #{0} has no hosts or no ports")]
    Unroutable(usize),
}

/// Everything one connection or request needs to be routed and decided.
pub(crate) struct Snapshot {
    generation: u64,
    services: Vec<Arc<ServiceRoute>>,
    by_host: HashMap<String, usize>,
    policies: Arc<PolicySet>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Builds a routing table. `generation` is the control plane's version
    /// counter, reported in logs so an outcome can be tied to a change. The
    /// mesh trust domain is the policy set's.
    pub(crate) fn build(
        generation: u64,
        services: Vec<ServiceSpec>,
        policies: Arc<PolicySet>,
    ) -> Result<Self, SnapshotError> {
        let mut by_host = HashMap::new();
        let mut routes = Vec::with_capacity(services.len());
        for (i, spec) in services.into_iter().enumerate() {
            if spec.hosts.is_empty() || spec.ports.is_empty() {
                return Err(SnapshotError::Unroutable(i));
            }
            for host in &spec.hosts {
                if by_host.insert(host.to_ascii_lowercase(), i).is_some() {
                    return Err(SnapshotError::DuplicateHost(host.clone()));
                }
            }
            routes.push(Arc::new(ServiceRoute {
                spec,
                next_endpoint: AtomicUsize::new(0),
            }));
        }
        Ok(Self {
            generation,
            services: routes,
            by_host,
            policies,
        })
    }

    /// Builds a snapshot from the configured services.
    pub(crate) fn from_config(
        generation: u64,
        services: &[Service],
        policies: Arc<PolicySet>,
    ) -> Result<Self, SnapshotError> {
        Self::build(
            generation,
            services.iter().map(ServiceSpec::from_config).collect(),
            policies,
        )
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn trust_domain(&self) -> &OwnedTrustDomain {
        self.policies.trust_domain()
    }

    /// Finds the service for a host name (SNI or `Host`, with or without
    /// `:port`, case-insensitive) and the port: the one named in the host,
    /// else the listener's port, else the service's only port.
    pub(crate) fn route(&self, host: &str, listener_port: u16) -> Option<Route> {
        let (name, explicit_port) = split_host_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        // Hosts are stored lower-case; a lower-case name (the usual case)
        // is looked up without a copy.
        let idx = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            *self.by_host.get(&name.to_ascii_lowercase())?
        } else {
            *self.by_host.get(name)?
        };
        let service = self.services.get(idx)?.clone();
        let ports = &service.spec.ports;
        let find = |n: u16| ports.iter().position(|sp| sp.number == n);
        let port = explicit_port
            .and_then(find)
            .or_else(|| find(listener_port))
            .or_else(|| (ports.len() == 1).then_some(0))?;
        Some(Route { service, port })
    }

    /// The effective mode of a route (core resolution).
    pub(crate) fn mode(&self, route: &Route) -> ModeDecision {
        let spec = &route.service.spec;
        let workload = policy::Workload::new(&spec.namespace, &spec.labels);
        let d = self
            .policies
            .resolve_mode(&workload, route.port().target_port);
        ModeDecision {
            mode: d.mode,
            policy: d.policy.map(|p| p.to_string()),
        }
    }

    /// AuthorizationPolicy for one request or TCP connection (core).
    pub(crate) fn authorize(&self, route: &Route, req: &AuthzRequest<'_>) -> AuthzDecision {
        let spec = &route.service.spec;
        let headers = req.headers.map(HeaderView);
        let http = match (req.method, req.path, &headers) {
            (Some(method), Some(path), Some(headers)) => Some(policy::HttpRequest {
                host: req.host.unwrap_or_default(),
                method,
                path,
                headers,
            }),
            _ => None,
        };
        let d = self.policies.authorize(&policy::Request {
            workload: policy::Workload::new(&spec.namespace, &spec.labels),
            port: route.port().target_port,
            principal: req.principal,
            source_ip: req.source_ip,
            sni: req.sni,
            http,
        });
        if let Some(dry) = &d.dry_run {
            tracing::info!(
                destination = %route.destination(),
                dry_run_verdict = ?dry.verdict,
                decided_by = %dry.decided_by.map(|r| r.to_string()).unwrap_or_default(),
                "dry-run authorization result (not enforced)"
            );
        }
        AuthzDecision {
            allowed: d.verdict == Verdict::Allow,
            reason: match d.reason {
                AuthzReason::CustomNoAuthorizer { .. } => "custom_no_authorizer",
                AuthzReason::DenyMatched => "deny_matched",
                AuthzReason::AllowMatched => "allow_matched",
                AuthzReason::NoAllowPolicies => "no_allow_policies",
                AuthzReason::NoAllowMatched => "no_allow_matched",
            },
            policy: d.decided_by.map(|r| r.to_string()),
        }
    }

    /// The strictest mode among the routes a listener can reach, used when a
    /// TLS client sends no (known) SNI and the destination is not yet known:
    /// requiring a certificate if any reachable port is STRICT fails closed.
    pub(crate) fn strictest_mode(&self, listener_port: u16) -> EffectiveMode {
        let mut strictest = EffectiveMode::Disable;
        for svc in &self.services {
            for (i, port) in svc.spec.ports.iter().enumerate() {
                if port.number != listener_port && svc.spec.ports.len() != 1 {
                    continue;
                }
                let route = Route {
                    service: svc.clone(),
                    port: i,
                };
                strictest = strictest.max(self.mode(&route).mode);
            }
        }
        strictest
    }
}

/// Splits `host[:port]` (and `[v6]:port`); an unparsable port is ignored.
pub(crate) fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((addr, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr, port);
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_ignores_case_a_trailing_dot_and_a_known_port() {
        let svc = crate::dataplane::tests::service(
            "details.bookinfo.svc.cluster.local",
            "bookinfo",
            "details",
            9080,
            9080,
            "127.0.0.1:1".parse().expect("addr"),
            UpstreamSecurity::Plaintext,
        );
        let snap =
            Snapshot::build(1, vec![svc], crate::dataplane::tests::policies("")).expect("build");
        for host in [
            "details.bookinfo.svc.cluster.local",
            "details.bookinfo.svc.cluster.local:9080",
            "Details.BookInfo.svc.cluster.LOCAL",
            "DETAILS.BOOKINFO.SVC.CLUSTER.LOCAL.:9080",
            "details.bookinfo.svc.cluster.local.",
        ] {
            let route = snap.route(host, 9080).unwrap_or_else(|| panic!("{host}"));
            assert_eq!(route.port().number, 9080, "{host}");
        }
        for host in [
            "details",
            "details.bookinfo.svc.cluster.localx",
            "Details.Other",
        ] {
            assert!(snap.route(host, 9080).is_none(), "{host}");
        }
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.b:9080"), ("a.b", Some(9080)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("a.b:xx"), ("a.b", None));
    }
}
