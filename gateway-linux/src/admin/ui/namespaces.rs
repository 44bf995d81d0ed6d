//! Namespaces: their effective mode, policies, services and the plaintext
//! clients recently seen; switching a namespace's mode; and the preview of
//! what a switch would cut off, computed from recently seen traffic.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/namespaces` | every namespace the gateway knows of |
//! | GET | `/api/v1/namespaces/{namespace}` | one namespace |
//! | GET | `/api/v1/namespaces/{namespace}/preview?mode=` | who a switch would cut off |
//! | PUT | `/api/v1/namespaces/{namespace}/mode` | write the namespace-wide PeerAuthentication |
//!
//! The preview does not guess: it builds the policy set the switch would
//! produce (the same `PolicySet::new` the change path uses), resolves
//! every service port under both sets with core's `resolve_mode`, and
//! replays the recent access log and the data plane's plaintext-client
//! record against the ports whose mode would change.

use core::net::IpAddr;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use meshgate_config::policy::Policy;
use meshgate_core::mtls::{EffectiveMode, MtlsMode};
use meshgate_core::policy::{
    AuthorizationPolicy, MeshConfig, PeerAuthentication, PolicySet, Workload,
};
use meshgate_core::time::UnixTime;
use serde::{Deserialize, Serialize};

use super::session::Actor;
use crate::admin::api::{change_error, service_view};
use crate::admin::types::{ChangeResult, Origin, ResourceRef, ServiceView};
use crate::admin::{AdminState, error_response};
use crate::dataplane::{AccessEntry, PlaintextClient};
use crate::state::{Config, PolicyEntry, ServiceInfo, key_of, now_secs, rfc3339};

/// How far back "recently seen" reaches.
pub(crate) const RECENT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A plaintext client of a namespace.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClientView {
    /// Client IP address.
    address: String,
    /// First and last time seen (RFC 3339).
    first_seen: String,
    last_seen: String,
    /// Requests (HTTP) or connections (TCP) seen from it.
    count: u64,
}

/// A policy in a namespace listing.
#[derive(Clone, Debug, Serialize)]
struct PolicyRefView {
    #[serde(flatten)]
    resource: ResourceRef,
    /// Where it came from (`api` can be changed here; files cannot).
    origin: Origin,
    /// Mode or action summary.
    summary: String,
}

/// What decided a namespace's mode.
#[derive(Clone, Debug, Serialize)]
struct ModeSource {
    /// `default`, `mesh` or `namespace`.
    scope: String,
    /// The deciding policy (none for the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<ResourceRef>,
}

/// One namespace.
#[derive(Clone, Debug, Serialize)]
struct NamespaceView {
    name: String,
    /// Whether this is the root namespace (its selector-less policy is
    /// mesh-wide).
    root: bool,
    /// The namespace-level effective mode (ports may differ; see services).
    mode: String,
    mode_source: ModeSource,
    /// Whether some service port in the namespace enforces another mode
    /// than the namespace's (workload or port policies).
    has_overrides: bool,
    /// The namespace-wide PeerAuthentication a mode switch writes, if one
    /// exists, and whether this API may change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace_policy: Option<PolicyRefView>,
    policies: Vec<PolicyRefView>,
    services: Vec<ServiceView>,
    /// Plaintext clients seen in the last 15 minutes, most recent first.
    plaintext_clients: Vec<ClientView>,
}

/// Answer to `GET /api/v1/namespaces`.
#[derive(Debug, Serialize)]
struct NamespaceList {
    items: Vec<NamespaceView>,
    generation: u64,
    /// Whether traffic data is available (the data plane is running).
    traffic_recorded: bool,
}

fn policy_ref_view(e: &PolicyEntry) -> PolicyRefView {
    let (kind, namespace, name) = key_of(&e.policy);
    PolicyRefView {
        resource: ResourceRef {
            kind,
            namespace,
            name,
        },
        origin: e.origin.clone(),
        summary: crate::admin::api::summary(&e.policy),
    }
}

fn is_namespace_wide(pa: &PeerAuthentication) -> bool {
    pa.selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
}

/// The selector-less PeerAuthentication of `ns` that decides its mode: the
/// oldest one (Istio: the oldest wins a conflict), or `None`.
fn namespace_policy<'c>(config: &'c Config, ns: &str) -> Option<&'c PolicyEntry> {
    config
        .policies
        .iter()
        .filter(|e| match &e.policy {
            Policy::PeerAuthentication(pa) => pa.meta.namespace == ns && is_namespace_wide(pa),
            Policy::AuthorizationPolicy(_) => false,
        })
        .min_by_key(|e| (e.policy.meta().creation, e.policy.meta().name.clone()))
}

fn system_to_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(UnixTime::from_secs(secs))
}

fn recent_clients(clients: &[PlaintextClient], now: SystemTime) -> Vec<ClientView> {
    clients
        .iter()
        .filter(|c| {
            now.duration_since(c.last_seen)
                .map_or(true, |age| age <= RECENT_WINDOW)
        })
        .map(|c| ClientView {
            address: c.address.to_string(),
            first_seen: system_to_rfc3339(c.first_seen),
            last_seen: system_to_rfc3339(c.last_seen),
            count: c.count,
        })
        .collect()
}

/// Plaintext clients per namespace from the data plane (empty when it is
/// not running, e.g. before `serve` bound the listeners).
fn plaintext_by_namespace(state: &AdminState) -> BTreeMap<String, Vec<PlaintextClient>> {
    state
        .control
        .data_plane()
        .map(|dp| dp.plaintext_clients().into_iter().collect())
        .unwrap_or_default()
}

fn namespace_names(
    config: &Config,
    plaintext: &BTreeMap<String, Vec<PlaintextClient>>,
) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = config
        .services
        .iter()
        .map(|s| s.namespace.clone())
        .collect();
    names.extend(
        config
            .policies
            .iter()
            .map(|e| e.policy.meta().namespace.clone()),
    );
    names.extend(plaintext.keys().cloned());
    names
}

fn namespace_view(
    config: &Config,
    name: &str,
    plaintext: &BTreeMap<String, Vec<PlaintextClient>>,
    now: SystemTime,
) -> NamespaceView {
    let no_labels: Vec<(String, String)> = Vec::new();
    let decision = config.set.resolve_mode(&Workload::new(name, &no_labels), 0);
    let mode = decision.mode.as_str().to_owned();
    let mode_source = ModeSource {
        scope: decision.scope.to_string(),
        policy: decision.policy.map(|p| ResourceRef {
            kind: "PeerAuthentication".to_owned(),
            namespace: p.namespace.to_owned(),
            name: p.name.to_owned(),
        }),
    };
    let mut services: Vec<ServiceView> = config
        .services
        .iter()
        .filter(|s| s.namespace == name)
        .map(|s| service_view(config, s, None))
        .collect();
    services.sort_by(|a, b| a.host.cmp(&b.host));
    let has_overrides = services
        .iter()
        .flat_map(|s| s.ports.iter())
        .any(|p| p.mode != mode);
    NamespaceView {
        name: name.to_owned(),
        root: name == config.mesh.root_namespace,
        mode,
        mode_source,
        has_overrides,
        namespace_policy: namespace_policy(config, name).map(policy_ref_view),
        policies: config
            .policies
            .iter()
            .filter(|e| e.policy.meta().namespace == name)
            .map(policy_ref_view)
            .collect(),
        services,
        plaintext_clients: plaintext
            .get(name)
            .map(|c| recent_clients(c, now))
            .unwrap_or_default(),
    }
}

/// `GET /api/v1/namespaces`.
pub(crate) async fn list(State(state): State<Arc<AdminState>>) -> Response {
    let config = state.control.current();
    let plaintext = plaintext_by_namespace(&state);
    let now = SystemTime::now();
    let items = namespace_names(&config, &plaintext)
        .iter()
        .map(|n| namespace_view(&config, n, &plaintext, now))
        .collect();
    Json(NamespaceList {
        items,
        generation: config.generation,
        traffic_recorded: state.control.data_plane().is_some(),
    })
    .into_response()
}

/// `GET /api/v1/namespaces/{namespace}`.
pub(crate) async fn get_one(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Response {
    let config = state.control.current();
    let plaintext = plaintext_by_namespace(&state);
    if !namespace_names(&config, &plaintext).contains(&name) {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("namespace {name} has no services, policies or recent traffic here"),
        );
    }
    Json(namespace_view(
        &config,
        &name,
        &plaintext,
        SystemTime::now(),
    ))
    .into_response()
}

/// Body of `PUT /api/v1/namespaces/{namespace}/mode`, and the query of the
/// preview.
#[derive(Debug, Deserialize)]
pub(crate) struct ModeRequest {
    /// `STRICT`, `PERMISSIVE` or `DISABLE`.
    mode: String,
}

fn parse_mode(s: &str) -> Option<MtlsMode> {
    match s.to_ascii_uppercase().as_str() {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "DISABLE" => Some(MtlsMode::Disable),
        _ => None,
    }
}

/// Why a mode switch cannot be written through the API.
#[derive(Debug, thiserror::Error)]
enum SwitchError {
    /// The submitted value is not quoted back: it is free text from the
    /// client, and the three valid values say all there is to say.
    #[error("unknown mode (use STRICT, PERMISSIVE or DISABLE)")]
    Mode,
    #[error(
        "the namespace-wide policy {resource} is defined in the policy file {path}; change it there"
    )]
    InFile { resource: ResourceRef, path: String },
}

/// The namespace-wide PeerAuthentication a switch of `ns` to `mode` writes:
/// the deciding one rewritten with the new mode (keeping its name and age,
/// which decides conflicts), or a new `default`.
fn switched_policy(
    config: &Config,
    ns: &str,
    mode: &str,
) -> Result<PeerAuthentication, SwitchError> {
    let mode = parse_mode(mode).ok_or(SwitchError::Mode)?;
    match namespace_policy(config, ns) {
        Some(e) => {
            if let Origin::File { path } = &e.origin {
                let (kind, namespace, name) = key_of(&e.policy);
                return Err(SwitchError::InFile {
                    resource: ResourceRef {
                        kind,
                        namespace,
                        name,
                    },
                    path: path.clone(),
                });
            }
            let meta = e.policy.meta();
            let mut pa =
                meshgate_config::policy::namespace_peer_authentication(ns, mode, meta.creation);
            pa.meta.name = meta.name.clone();
            Ok(pa)
        }
        None => Ok(meshgate_config::policy::namespace_peer_authentication(
            ns,
            mode,
            now_secs(),
        )),
    }
}

/// A Kubernetes namespace name (RFC 1123 label): what a PeerAuthentication
/// written here may name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Answer to `PUT /api/v1/namespaces/{namespace}/mode`.
#[derive(Debug, Serialize)]
struct SwitchResult {
    #[serde(flatten)]
    change: ChangeResult,
    namespace: NamespaceView,
}

/// `PUT /api/v1/namespaces/{namespace}/mode`.
pub(crate) async fn set_mode(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Path(ns): Path<String>,
    Json(req): Json<ModeRequest>,
) -> Response {
    if !is_dns_label(&ns) {
        return error_response(StatusCode::BAD_REQUEST, "invalid namespace name");
    }
    let config = state.control.current();
    let pa = match switched_policy(&config, &ns, &req.mode) {
        Ok(pa) => pa,
        Err(e @ SwitchError::Mode) => {
            return error_response(StatusCode::BAD_REQUEST, &e.to_string());
        }
        Err(e @ SwitchError::InFile { .. }) => {
            return error_response(StatusCode::CONFLICT, &e.to_string());
        }
    };
    let yaml = meshgate_config::emit::to_yaml(&Policy::PeerAuthentication(pa));
    match state
        .control
        .apply_yaml(&format!("ui:namespace/{ns}"), &yaml, actor.as_str())
        .await
    {
        Ok(change) => {
            let config = state.control.current();
            let plaintext = plaintext_by_namespace(&state);
            Json(SwitchResult {
                change,
                namespace: namespace_view(&config, &ns, &plaintext, SystemTime::now()),
            })
            .into_response()
        }
        Err(e) => change_error(&e),
    }
}

/// A service port whose mode a switch would change.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct PortChange {
    /// `host:port`, as the access log names destinations.
    destination: String,
    namespace: String,
    current_mode: String,
    new_mode: String,
}

/// A client the switch would cut off.
#[derive(Debug, Serialize)]
struct AffectedClient {
    /// Client IP address.
    address: String,
    /// `plaintext` or `tls` (TLS without a client certificate), or
    /// `mtls` for a DISABLE switch (TLS would no longer be terminated).
    transport: String,
    /// Why it would be refused, in the access log's vocabulary.
    reason: String,
    /// Destinations it used that would refuse it (empty when only the
    /// per-namespace record knows the client; see `destinations_known`).
    destinations: Vec<String>,
    /// Whether the destinations come from the recent access log; `false`
    /// means the client is known only from the plaintext-client record.
    destinations_known: bool,
    last_seen: String,
    /// Requests or connections seen.
    count: u64,
}

/// An mTLS peer that keeps working.
#[derive(Debug, Serialize)]
struct UnaffectedPeer {
    principal: String,
    destinations: Vec<String>,
}

/// Answer to `GET /api/v1/namespaces/{namespace}/preview`.
#[derive(Debug, Serialize)]
struct Preview {
    namespace: String,
    mode: String,
    current_mode: String,
    /// The look-back window in seconds.
    window_secs: u64,
    /// Whether traffic was recorded at all (data plane running).
    traffic_recorded: bool,
    /// Ports whose effective mode would change.
    changes: Vec<PortChange>,
    /// Clients that would be cut off, most recently seen first.
    affected: Vec<AffectedClient>,
    /// mTLS peers seen on the changing ports, which keep working.
    unaffected_mtls_peers: Vec<UnaffectedPeer>,
}

/// The policy set after replacing `ns`'s namespace-wide PeerAuthentication
/// with `pa`.
fn hypothetical_set(
    config: &Config,
    pa: &PeerAuthentication,
) -> Result<PolicySet, meshgate_core::policy::BuildError> {
    let replaced = key_of(&Policy::PeerAuthentication(pa.clone()));
    let mut pas: Vec<PeerAuthentication> = Vec::new();
    let mut aps: Vec<AuthorizationPolicy> = Vec::new();
    for e in &config.policies {
        match &e.policy {
            Policy::PeerAuthentication(p) if key_of(&e.policy) != replaced => pas.push(p.clone()),
            Policy::PeerAuthentication(_) => {}
            Policy::AuthorizationPolicy(a) => aps.push(a.clone()),
        }
    }
    pas.push(pa.clone());
    PolicySet::new(
        MeshConfig {
            root_namespace: &config.mesh.root_namespace,
            trust_domain: &config.mesh.trust_domain,
        },
        &pas,
        &aps,
    )
}

/// Every `host:port` a service is reached by, with its workload port.
fn destinations(svc: &ServiceInfo) -> Vec<(String, u16)> {
    svc.hosts
        .iter()
        .flat_map(|h| {
            svc.ports
                .iter()
                .map(move |p| (format!("{h}:{}", p.number), p.target_port))
        })
        .collect()
}

/// The client IP of an access-log `source` (`ip:port`).
fn source_ip(source: &str) -> Option<IpAddr> {
    source
        .parse::<core::net::SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .or_else(|| source.parse().ok())
}

/// Who would be refused on a port of mode `new` having been `old`, by the
/// transport the access log recorded; `None`: it keeps working.
fn refusal(transport: &str, old: EffectiveMode, new: EffectiveMode) -> Option<&'static str> {
    match (transport, new) {
        ("plaintext", EffectiveMode::Strict) => Some("plaintext_under_strict"),
        ("tls", EffectiveMode::Strict) => Some("certificate_required"),
        ("mtls", EffectiveMode::Disable) if old != EffectiveMode::Disable => {
            Some("tls_not_terminated_under_disable")
        }
        _ => None,
    }
}

struct Aggregate {
    transport: String,
    reason: &'static str,
    destinations: BTreeSet<String>,
    last_seen: String,
    count: u64,
}

fn build_preview(
    config: &Config,
    ns: &str,
    mode: &str,
    log: &[AccessEntry],
    plaintext: &BTreeMap<String, Vec<PlaintextClient>>,
    traffic_recorded: bool,
    now: SystemTime,
) -> Result<Preview, (StatusCode, String)> {
    let pa = switched_policy(config, ns, mode).map_err(|e| match e {
        SwitchError::Mode => (StatusCode::BAD_REQUEST, e.to_string()),
        SwitchError::InFile { .. } => (StatusCode::CONFLICT, e.to_string()),
    })?;
    let new_set = hypothetical_set(config, &pa).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the switch would produce an invalid policy set: {e}"),
        )
    })?;
    let no_labels: Vec<(String, String)> = Vec::new();
    let current_mode = config
        .set
        .resolve_mode(&Workload::new(ns, &no_labels), 0)
        .mode;

    // Per destination: (namespace, old mode, new mode), for every port.
    let mut ports: BTreeMap<String, (String, EffectiveMode, EffectiveMode)> = BTreeMap::new();
    for svc in config.services.iter() {
        let workload = Workload::new(&svc.namespace, &svc.labels);
        for (dest, target) in destinations(svc) {
            let old = config.set.resolve_mode(&workload, target).mode;
            let new = new_set.resolve_mode(&workload, target).mode;
            ports.insert(dest, (svc.namespace.clone(), old, new));
        }
    }
    let mut changes: Vec<PortChange> = Vec::new();
    let mut seen_hosts = BTreeSet::new();
    for svc in config.services.iter() {
        // One row per service port (its first host), not per alias.
        let Some(host) = svc.hosts.first() else {
            continue;
        };
        for p in &svc.ports {
            let dest = format!("{host}:{}", p.number);
            if let Some((ns, old, new)) = ports.get(&dest)
                && old != new
                && seen_hosts.insert(dest.clone())
            {
                changes.push(PortChange {
                    destination: dest,
                    namespace: ns.clone(),
                    current_mode: old.as_str().to_owned(),
                    new_mode: new.as_str().to_owned(),
                });
            }
        }
    }

    let cutoff = system_to_rfc3339(now - RECENT_WINDOW);
    let mut affected: BTreeMap<(IpAddr, String), Aggregate> = BTreeMap::new();
    let mut peers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in log {
        // RFC 3339 UTC timestamps of one formatter compare as strings.
        if e.time.as_str() < cutoff.as_str() {
            continue;
        }
        let Some((_, old, new)) = ports.get(&e.destination) else {
            continue;
        };
        if old == new {
            continue;
        }
        let Some(ip) = source_ip(&e.source) else {
            continue;
        };
        let Some(reason) = refusal(e.transport, *old, *new) else {
            if e.transport == "mtls" && e.principal != "-" {
                peers
                    .entry(e.principal.clone())
                    .or_default()
                    .insert(e.destination.clone());
            }
            continue;
        };
        let agg = affected
            .entry((ip, e.transport.to_owned()))
            .or_insert_with(|| Aggregate {
                transport: e.transport.to_owned(),
                reason,
                destinations: BTreeSet::new(),
                last_seen: e.time.clone(),
                count: 0,
            });
        agg.destinations.insert(e.destination.clone());
        agg.count += 1;
        if e.time > agg.last_seen {
            agg.last_seen = e.time.clone();
        }
    }

    // Plaintext clients the access log no longer remembers (it keeps the
    // last 512 entries): known per namespace only. They would be cut off
    // when some port of their namespace turns STRICT.
    let strict_namespaces: BTreeSet<&str> = changes
        .iter()
        .filter(|c| c.new_mode == "STRICT")
        .map(|c| c.namespace.as_str())
        .collect();
    for (client_ns, clients) in plaintext {
        if !strict_namespaces.contains(client_ns.as_str()) {
            continue;
        }
        for c in clients {
            let recent = now
                .duration_since(c.last_seen)
                .map_or(true, |age| age <= RECENT_WINDOW);
            if !recent || affected.contains_key(&(c.address, "plaintext".to_owned())) {
                continue;
            }
            affected.insert(
                (c.address, "plaintext".to_owned()),
                Aggregate {
                    transport: "plaintext".to_owned(),
                    reason: "plaintext_under_strict",
                    destinations: BTreeSet::new(),
                    last_seen: system_to_rfc3339(c.last_seen),
                    count: c.count,
                },
            );
        }
    }

    let mut affected: Vec<AffectedClient> = affected
        .into_iter()
        .map(|((ip, _), a)| AffectedClient {
            address: ip.to_string(),
            transport: a.transport,
            reason: a.reason.to_owned(),
            destinations_known: !a.destinations.is_empty(),
            destinations: a.destinations.into_iter().collect(),
            last_seen: a.last_seen,
            count: a.count,
        })
        .collect();
    affected.sort_by(|a, b| b.last_seen.cmp(&a.last_seen));
    Ok(Preview {
        namespace: ns.to_owned(),
        mode: pa.mode.as_str().to_owned(),
        current_mode: current_mode.as_str().to_owned(),
        window_secs: RECENT_WINDOW.as_secs(),
        traffic_recorded,
        changes,
        affected,
        unaffected_mtls_peers: peers
            .into_iter()
            .map(|(principal, d)| UnaffectedPeer {
                principal,
                destinations: d.into_iter().collect(),
            })
            .collect(),
    })
}

/// `GET /api/v1/namespaces/{namespace}/preview?mode=STRICT`.
pub(crate) async fn preview(
    State(state): State<Arc<AdminState>>,
    Path(ns): Path<String>,
    Query(q): Query<ModeRequest>,
) -> Response {
    let config = state.control.current();
    let dp = state.control.data_plane();
    let log = dp.map(|dp| dp.recent_access_log()).unwrap_or_default();
    let plaintext = plaintext_by_namespace(&state);
    match build_preview(
        &config,
        &ns,
        &q.mode,
        &log,
        &plaintext,
        dp.is_some(),
        SystemTime::now(),
    ) {
        Ok(p) => Json(p).into_response(),
        Err((status, message)) => error_response(status, &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_cuts_off_plaintext_and_certless_tls_but_not_mtls() {
        use EffectiveMode::{Disable, Permissive, Strict};
        assert_eq!(
            refusal("plaintext", Permissive, Strict),
            Some("plaintext_under_strict")
        );
        assert_eq!(
            refusal("tls", Permissive, Strict),
            Some("certificate_required")
        );
        assert_eq!(refusal("mtls", Permissive, Strict), None);
        assert_eq!(refusal("plaintext", Strict, Permissive), None);
        assert_eq!(
            refusal("mtls", Permissive, Disable),
            Some("tls_not_terminated_under_disable")
        );
        assert_eq!(refusal("plaintext", Permissive, Disable), None);
    }

    #[test]
    fn client_addresses_come_from_access_log_sources() {
        assert_eq!(
            source_ip("127.0.0.1:40000"),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(
            source_ip("[::1]:40000"),
            Some(IpAddr::from(core::net::Ipv6Addr::LOCALHOST))
        );
        assert_eq!(source_ip("-"), None);
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        assert!(is_dns_label("bookinfo"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("Bookinfo"));
        assert!(!is_dns_label("-x"));
        assert!(!is_dns_label("a/b"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
