//! The gateway settings file and the services behind the gateway.
//!
//! # Schema
//!
//! A settings file is a YAML stream. The one document *without*
//! `apiVersion` holds the settings; every other document is an Istio
//! `networking.istio.io` (v1, v1beta1, v1alpha3) `ServiceEntry` or
//! `WorkloadEntry`. Every field is optional; key names follow Istio's
//! MeshConfig (camelCase). Relative paths are resolved against the
//! directory of the settings file.
//!
//! ```yaml
//! trustDomain: cluster.local          # SPIFFE trust domain (default cluster.local)
//! rootNamespace: istio-system         # mesh-wide policy namespace (default istio-system)
//! dataDir: meshgate-data              # state directory (default meshgate-data)
//! admin:
//!   address: 127.0.0.1:15000          # admin API, /healthz, /metrics (default)
//! listeners:                          # data-plane sockets (default: one http on 127.0.0.1:9080)
//! - name: http                        # unique; default listener-<index>
//!   address: 127.0.0.1:9080
//!   protocol: http                    # http (default) | tcp
//! - name: db
//!   address: 127.0.0.1:15432
//!   protocol: tcp
//!   service: db.legacy.svc.cluster.local  # tcp: destination when no SNI names one
//! policies: [policies/]               # PeerAuthentication/AuthorizationPolicy files or dirs
//! serviceFiles: [services/]           # more ServiceEntry/WorkloadEntry files or dirs
//! tls:                                # optional: serve a certificate from files
//!   certFile: certs/cert-chain.pem    # instead of one issued by the built-in CA
//!   keyFile: certs/key.pem
//!   caFile: certs/root-cert.pem
//! identity:
//!   spiffeId: spiffe://cluster.local/ns/meshgate-system/sa/meshgate  # the default
//!   certTtl: 24h                      # Go-style duration: 90m, 1h30m, 3600s (default 24h)
//! limits:                             # data-plane resource limits (the defaults shown)
//!   maxConnections: 10000             # inbound connections open at once; more wait in the backlog
//!   maxConnectionsPerSource: 1000     # per client IPv4 address / IPv6 /64; more are closed at once
//!   headTimeout: 10s                  # ClientHello + TLS handshake, and each HTTP/1 request head
//!   idleTimeout: 60s                  # HTTP connection on which no byte moves either way
//!   tcpIdleTimeout: 1h                # the same for TCP-proxied connections
//!   maxRequestHeadBytes: 65536        # HTTP/1 head / HTTP/2 header list; larger gets 431
//!   upstreamConnectTimeout: 5s        # connect (and handshake) to an upstream; then 503
//! services:                           # ServiceEntry specs with name/namespace inline
//! - name: details
//!   namespace: bookinfo
//!   hosts: [details.bookinfo.svc.cluster.local]
//!   ports:
//!   - {number: 9080, name: http, protocol: HTTP, targetPort: 9080}
//!   resolution: STATIC
//!   endpoints:                        # WorkloadEntry specs
//!   - address: 127.0.0.1
//!     ports: {http: 19080}            # service port name -> workload port
//!     labels: {app: details, security.istio.io/tlsMode: istio}
//!     serviceAccount: bookinfo-details
//! ```
//!
//! # Services
//!
//! The model the data plane routes with is host → [`Service`] →
//! [`ServicePort`] → [`Workload`] (namespace, labels, service account:
//! what PeerAuthentication and AuthorizationPolicy select on) → address and
//! workload port. Following Istio:
//! - a service port's workload port is the endpoint's `ports[<port name>]`,
//!   else `targetPort`, else `number`; policies' `portLevelMtls` and
//!   `ports` refer to this workload port;
//! - `protocol` may be omitted and is then taken from the port name prefix
//!   (`http-…`, `grpc-…`, …), else TCP;
//! - a ServiceEntry either lists `endpoints` or selects WorkloadEntry
//!   documents of its namespace with `workloadSelector.labels`;
//! - an endpoint labelled `security.istio.io/tlsMode: istio` has a sidecar
//!   and is called with mesh mTLS, verifying that it presents the SPIFFE ID
//!   of its service account (`spiffe://TD/ns/NS/sa/SA`, service account
//!   `default` when unset) or one of the ServiceEntry's `subjectAltNames`
//!   (secure naming); any other endpoint is called in plaintext;
//! - `addresses`, `exportTo`, `network`, `locality` and `weight` are
//!   type-checked and otherwise ignored: a gateway routes by Host/SNI.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use meshgate_core::spiffe::{OwnedSpiffeId, OwnedTrustDomain};
use meshgate_core::time::UnixTime;

use crate::error::{ConfigErrors, Diagnostic, ErrorKind, Location};
use crate::read::{Issue, Reader, index, join};
use crate::resource::{
    Accept, DEFAULT_NAMESPACE, Resource, ServiceEntry, WorkloadSpec, decode_document,
    decode_service_entry_with,
};
use crate::source::{Located, check_duplicates, decode_source, diagnostic, expand, read_file};
use crate::yaml::{Node, Value, parse_stream};

/// The label Istio puts on workloads that have a sidecar (and so accept
/// mesh mTLS).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Validated gateway settings, with the services behind the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// SPIFFE trust domain of the mesh (`cluster.local`).
    pub trust_domain: OwnedTrustDomain,
    /// Namespace whose selector-less policies are mesh-wide
    /// (`istio-system`).
    pub root_namespace: String,
    /// State directory.
    pub data_dir: PathBuf,
    /// Admin API listen address (`127.0.0.1:15000`).
    pub admin_address: SocketAddr,
    /// Data-plane listeners.
    pub listeners: Vec<Listener>,
    /// Policy files and directories, for [`crate::policy::load_policies`].
    pub policy_paths: Vec<PathBuf>,
    /// Serve this certificate instead of one from the built-in CA.
    pub tls: Option<TlsFiles>,
    /// The gateway's own identity and certificate lifetime.
    pub identity: Identity,
    /// Data-plane resource limits.
    pub limits: Limits,
    /// Services behind the gateway, every host unique across them.
    pub services: Vec<Service>,
}

/// What the data plane allows clients to hold, and for how long (the
/// `limits` block). Every limit is finite: a peer can never make the
/// gateway wait or buffer without bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Inbound connections open at once, all clients together. At the
    /// limit new clients wait in the kernel's accept queue.
    pub max_connections: u32,
    /// Inbound connections open at once from one source (an IPv4 address
    /// or an IPv6 /64); further connections from it are closed at once, so
    /// one client cannot take every slot of [`Self::max_connections`].
    pub max_connections_per_source: u32,
    /// Time a client gets for its ClientHello and TLS handshake (from
    /// accept), and for each HTTP/1 request head: the slowloris bound.
    pub head_timeout: Duration,
    /// An HTTP connection on which no byte moves, in either direction, for
    /// this long is closed: an idle keep-alive or HTTP/2 connection, a
    /// client that stops reading its response, a request whose upstream
    /// stops answering.
    pub idle_timeout: Duration,
    /// The same for TCP-proxied connections, much longer by default: idle
    /// connections in a client's database pool are normal (Envoy's TCP
    /// proxy default is the same hour).
    pub tcp_idle_timeout: Duration,
    /// Largest HTTP/1 request head or HTTP/2 header list; a larger one is
    /// answered with `431`.
    pub max_request_head_bytes: u32,
    /// Time allowed to connect (and handshake) to an upstream before the
    /// client gets `503`.
    pub upstream_connect_timeout: Duration,
}

impl Limits {
    /// Smallest `maxRequestHeadBytes`: HTTP/1 needs a read buffer at least
    /// this large (hyper refuses smaller ones).
    pub const MIN_REQUEST_HEAD_BYTES: u32 = 8 * 1024;
    /// Largest `maxRequestHeadBytes`.
    pub const MAX_REQUEST_HEAD_BYTES: u32 = 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tcp_idle_timeout: Duration::from_secs(3600),
            max_request_head_bytes: 64 * 1024,
            upstream_connect_timeout: Duration::from_secs(5),
        }
    }
}

/// One data-plane socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Unique name (for logs and metrics).
    pub name: String,
    /// Where to listen.
    pub address: SocketAddr,
    /// What is spoken after admission.
    pub protocol: ListenerProtocol,
    /// For TCP listeners: the host of the service connections go to when
    /// TLS SNI does not name one. Always a host of some [`Service`].
    pub service: Option<String>,
}

/// The application protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    /// HTTP/1.1 or HTTP/2, routed by Host (or SNI).
    Http,
    /// Opaque bytes, routed by SNI or the listener's service.
    Tcp,
}

/// Certificate files used instead of the built-in CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM trust bundle used to verify clients.
    pub ca_file: PathBuf,
}

/// The gateway's own workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// SPIFFE ID in the gateway's certificate; in the trust domain.
    pub spiffe_id: OwnedSpiffeId,
    /// Lifetime of the gateway's certificates.
    pub cert_ttl: Duration,
}

/// A service reachable through the gateway (one ServiceEntry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// ServiceEntry name.
    pub name: String,
    /// ServiceEntry namespace.
    pub namespace: String,
    /// Hostnames, lowercase, without trailing dot.
    pub hosts: Vec<String>,
    /// Ports, numbers and names unique.
    pub ports: Vec<ServicePort>,
    /// Workloads serving it (may be empty: requests then get 503).
    pub workloads: Vec<Workload>,
    /// `location: MESH_EXTERNAL`.
    pub mesh_external: bool,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients address (`number`).
    pub number: u16,
    /// Port name, referenced by endpoints' `ports` maps.
    pub name: String,
    /// Protocol, given or inferred from the name.
    pub protocol: Protocol,
    /// Default workload port (`targetPort`, else `number`).
    pub target_port: u16,
}

/// Istio port protocols meshgate can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `HTTP`.
    Http,
    /// `HTTP2`.
    Http2,
    /// `GRPC` (HTTP/2).
    Grpc,
    /// `HTTPS`: TLS that the gateway passes through.
    Https,
    /// `TCP`.
    Tcp,
    /// `TLS`: passed through, routed by SNI.
    Tls,
}

impl Protocol {
    /// True when the gateway can proxy it as HTTP (and apply HTTP rules).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "HTTPS" => Protocol::Https,
            "TCP" => Protocol::Tcp,
            "TLS" => Protocol::Tls,
            _ => return None,
        })
    }

    /// Istio's protocol selection from a port name: `<protocol>[-suffix]`.
    fn from_port_name(name: &str) -> Protocol {
        let prefix = name.split('-').next().unwrap_or(name);
        Protocol::parse(prefix).unwrap_or(Protocol::Tcp)
    }
}

/// One endpoint of a service: a WorkloadEntry or an inline endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// WorkloadEntry name, or `<service>-<index>` for inline endpoints.
    pub name: String,
    /// Namespace (the ServiceEntry's for inline endpoints): what
    /// namespace-wide policies apply to.
    pub namespace: String,
    /// Labels, matched by policy selectors.
    pub labels: Vec<(String, String)>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// Where it listens.
    pub address: Address,
    /// Service port name → workload port overrides.
    pub ports: Vec<(String, u16)>,
    /// How the gateway talks to it.
    pub upstream: UpstreamTls,
}

impl Workload {
    /// The workload port behind a service port: the endpoint's override
    /// for the port name, else the service's target port.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| *n == port.name)
            .map_or(port.target_port, |(_, p)| *p)
    }
}

/// An endpoint address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IP address.
    Ip(IpAddr),
    /// A DNS name, resolved when connecting (`resolution: DNS`).
    Dns(String),
}

/// Upstream transport security.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plaintext: a legacy upstream without a sidecar.
    Plaintext,
    /// Mesh mTLS; the upstream must present one of these SPIFFE IDs.
    Mesh {
        /// Accepted upstream identities (secure naming).
        identities: Vec<OwnedSpiffeId>,
    },
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// Workloads and their workload port for a service port.
    pub fn endpoints<'s>(
        &'s self,
        port: &'s ServicePort,
    ) -> impl Iterator<Item = (&'s Workload, u16)> + 's {
        self.workloads.iter().map(move |w| (w, w.port_for(port)))
    }
}

/// Defaults, also the embedded configuration's values.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
const DEFAULT_DATA_DIR: &str = "meshgate-data";
const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), 15000);
const DEFAULT_LISTENER: SocketAddr =
    SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), 9080);
const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Namespace of the gateway's own default identity,
/// `spiffe://TD/ns/meshgate-system/sa/meshgate`.
const GATEWAY_NAMESPACE: &str = "meshgate-system";
const GATEWAY_SERVICE_ACCOUNT: &str = "meshgate";

/// The embedded default configuration as YAML: what [`Settings::embedded_default`]
/// returns, for display (`meshgate serve` without `--config`).
pub const EMBEDDED_DEFAULT_YAML: &str = "\
trustDomain: cluster.local
rootNamespace: istio-system
dataDir: meshgate-data
admin:
  address: 127.0.0.1:15000
listeners:
- name: http
  address: 127.0.0.1:9080
  protocol: http
";

impl Settings {
    /// The configuration used when `meshgate serve` gets no `--config`:
    /// trust domain `cluster.local`, root namespace `istio-system`, state in
    /// `./meshgate-data`, admin on 127.0.0.1:15000, one HTTP listener on
    /// 127.0.0.1:9080, no policies, no services. Nothing listens beyond
    /// loopback. Equal to parsing [`EMBEDDED_DEFAULT_YAML`].
    pub fn embedded_default() -> Settings {
        let trust_domain = default_trust_domain();
        // Constant input, checked by the `embedded_default_*` test.
        let spiffe_id =
            default_spiffe_id(&trust_domain).expect("the default gateway SPIFFE ID is valid");
        Settings {
            identity: Identity {
                spiffe_id,
                cert_ttl: DEFAULT_CERT_TTL,
            },
            trust_domain,
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            admin_address: DEFAULT_ADMIN,
            listeners: vec![Listener {
                name: "http".to_owned(),
                address: DEFAULT_LISTENER,
                protocol: ListenerProtocol::Http,
                service: None,
            }],
            policy_paths: Vec::new(),
            tls: None,
            limits: Limits::default(),
            services: Vec::new(),
        }
    }

    /// Reads and validates a settings file, and the service files it names.
    ///
    /// # Errors
    /// Every problem in the file and the files it references.
    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        let src = read_file(path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        Settings::parse(&path.display().to_string(), &src, base)
    }

    /// Parses settings from text. `origin` names the source in diagnostics;
    /// relative paths are resolved against `base_dir`, and `serviceFiles`
    /// are read from disk.
    ///
    /// # Errors
    /// Every problem, with file, document, line, column and field.
    pub fn parse(origin: &str, src: &str, base_dir: &Path) -> Result<Settings, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let stream = parse_stream(src);
        let mut raw: Option<RawSettings> = None;
        let mut resources: Vec<Located> = Vec::new();
        for doc in &stream.documents {
            if doc.root.is_null() {
                continue;
            }
            let mut r = Reader::default();
            if has_key(&doc.root, "apiVersion") {
                for d in decode_document(&mut r, &doc.root, Accept::Services, UnixTime::EPOCH) {
                    resources.push(Located {
                        resource: d.resource,
                        file: origin.to_owned(),
                        document: doc.index,
                        at: d.at,
                    });
                }
            } else if raw.is_some() {
                r.issue(
                    doc.root.at,
                    "",
                    ErrorKind::Invalid(
                        "a second settings document (documents without apiVersion hold the settings; there can be one)".into(),
                    ),
                );
            } else {
                let s = decode_settings(&mut r, &doc.root, base_dir, origin, doc.index);
                resources.extend(s.inline_services.iter().cloned());
                raw = Some(s);
            }
            r.issues.sort_by_key(|i| i.at);
            for issue in r.issues.drain(..) {
                errors.push(diagnostic(origin, Some(doc.index), issue));
            }
        }
        if let Some(e) = stream.error {
            errors.push(diagnostic(
                origin,
                e.document,
                Issue {
                    at: e.at,
                    field: String::new(),
                    kind: e.kind,
                },
            ));
        }
        let raw =
            raw.unwrap_or_else(|| RawSettings::defaults(base_dir, origin, 1, Location::default()));
        for file in expand(&raw.service_files, &mut errors) {
            match read_file(&file) {
                Ok(text) => resources.extend(decode_source(
                    &text,
                    &file.display().to_string(),
                    Accept::Services,
                    UnixTime::EPOCH,
                    &|_| Vec::new(),
                    &mut errors,
                )),
                Err(e) => errors.extend(e),
            }
        }
        check_duplicates(&resources, &mut errors);
        let services = build_services(&resources, &raw.trust_domain, &mut errors);
        check_listeners(&raw, &services, &mut errors);
        let settings = Settings {
            trust_domain: raw.trust_domain,
            root_namespace: raw.root_namespace,
            data_dir: raw.data_dir,
            admin_address: raw.admin_address,
            listeners: raw.listeners.into_iter().map(|(l, _)| l).collect(),
            policy_paths: raw.policy_paths,
            tls: raw.tls,
            identity: raw.identity,
            limits: raw.limits,
            services,
        };
        errors.into_result(settings)
    }

    /// The service that serves `host` (a Host header or SNI value; any
    /// `:port` suffix and trailing dot are ignored, case-insensitive).
    pub fn service_for_host(&self, host: &str) -> Option<&Service> {
        let host = normalize_host(host);
        self.services.iter().find(|s| s.hosts.contains(&host))
    }
}

fn normalize_host(host: &str) -> String {
    // Strip a port, but not from a bracketed IPv6 literal's inside.
    let without_port = match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') =>
        {
            h
        }
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn has_key(node: &Node, key: &str) -> bool {
    matches!(&node.value, Value::Map(entries)
        if entries.iter().any(|(k, _)| matches!(&k.value, Value::Scalar(s) if s.text == key)))
}

fn default_trust_domain() -> OwnedTrustDomain {
    // A constant; `embedded_default_is_valid` tests it against core's rules.
    // Constant input, checked by the `embedded_default_*` test.
    OwnedTrustDomain::parse(DEFAULT_TRUST_DOMAIN).expect("cluster.local is a valid trust domain")
}

/// `spiffe://TD/ns/meshgate-system/sa/meshgate`: the gateway's own
/// namespace, not the mesh root namespace, so that a mesh-wide policy author
/// can tell the gateway's identity from istiod's. The trust domain is
/// validated before this is called, so parsing cannot fail.
fn default_spiffe_id(td: &OwnedTrustDomain) -> Option<OwnedSpiffeId> {
    OwnedSpiffeId::parse(&format!(
        "spiffe://{td}/ns/{GATEWAY_NAMESPACE}/sa/{GATEWAY_SERVICE_ACCOUNT}"
    ))
    .ok()
}

/// The settings document before services are resolved.
struct RawSettings {
    trust_domain: OwnedTrustDomain,
    root_namespace: String,
    data_dir: PathBuf,
    admin_address: SocketAddr,
    /// Each listener with its place, for errors found later.
    listeners: Vec<(Listener, ListenerPlace)>,
    policy_paths: Vec<PathBuf>,
    service_files: Vec<PathBuf>,
    tls: Option<TlsFiles>,
    identity: Identity,
    limits: Limits,
    inline_services: Vec<Located>,
}

struct ListenerPlace {
    file: String,
    document: usize,
    at: Location,
    path: String,
}

impl RawSettings {
    /// The defaults for a settings file in `base`: the embedded default's
    /// values, with the data directory next to the file.
    fn defaults(base: &Path, origin: &str, document: usize, at: Location) -> RawSettings {
        let d = Settings::embedded_default();
        RawSettings {
            trust_domain: d.trust_domain,
            root_namespace: d.root_namespace,
            data_dir: base.join(DEFAULT_DATA_DIR),
            admin_address: d.admin_address,
            listeners: d
                .listeners
                .into_iter()
                .map(|l| {
                    let place = ListenerPlace {
                        file: origin.to_owned(),
                        document,
                        at,
                        path: "listeners".to_owned(),
                    };
                    (l, place)
                })
                .collect(),
            policy_paths: Vec::new(),
            service_files: Vec::new(),
            tls: None,
            identity: d.identity,
            limits: d.limits,
            inline_services: Vec::new(),
        }
    }
}

const SETTINGS_FIELDS: &[&str] = &[
    "trustDomain",
    "rootNamespace",
    "dataDir",
    "admin",
    "listeners",
    "policies",
    "serviceFiles",
    "tls",
    "identity",
    "limits",
    "services",
];

/// A ServiceEntry spec plus its metadata, as written under `services:`.
const INLINE_SERVICE_FIELDS: &[&str] = &[
    "name",
    "namespace",
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

fn decode_settings(
    r: &mut Reader,
    root: &Node,
    base: &Path,
    origin: &str,
    document: usize,
) -> RawSettings {
    let mut s = RawSettings::defaults(base, origin, document, root.at);
    let Some(f) = r.fields(root, "", SETTINGS_FIELDS) else {
        return s;
    };
    if let Some(n) = f.get("trustDomain")
        && let Some(td) = r.string(n, "trustDomain")
    {
        match OwnedTrustDomain::parse(&td) {
            Ok(td) => s.trust_domain = td,
            Err(e) => r.issue(
                n.at,
                "trustDomain",
                ErrorKind::Invalid(format!("{td:?}: {e}")),
            ),
        }
    }
    if let Some(n) = f.get("rootNamespace")
        && let Some(ns) = r.string(n, "rootNamespace")
    {
        if ns.is_empty()
            || ns.len() > 63
            || !ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            r.issue(
                n.at,
                "rootNamespace",
                ErrorKind::Invalid(format!("{ns:?} is not a valid namespace")),
            );
        } else {
            s.root_namespace = ns;
        }
    }
    if let Some(n) = f.get("dataDir")
        && let Some(p) = path(r, n, "dataDir", base)
    {
        s.data_dir = p;
    }
    if let Some(n) = f.get("admin")
        && let Some(af) = r.fields(n, "admin", &["address"])
        && let Some(a) = af.get("address")
        && let Some(addr) = socket_addr(r, a, "admin.address")
    {
        s.admin_address = addr;
    }
    if let Some(n) = f.get("listeners") {
        s.listeners.clear();
        for (i, item) in r
            .list(n, "listeners")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let p = index("listeners", i);
            if let Some(l) = decode_listener(r, item, &p, i) {
                s.listeners.push((
                    l,
                    ListenerPlace {
                        file: origin.to_owned(),
                        document,
                        at: item.at,
                        path: p,
                    },
                ));
            }
        }
    }
    for (field, slot) in [
        ("policies", &mut s.policy_paths),
        ("serviceFiles", &mut s.service_files),
    ] {
        if let Some(n) = f.get(field) {
            for (i, item) in r.list(n, field).unwrap_or_default().iter().enumerate() {
                if let Some(p) = path(r, item, &index(field, i), base) {
                    slot.push(p);
                }
            }
        }
    }
    if let Some(n) = f.get("tls")
        && let Some(tf) = r.fields(n, "tls", &["certFile", "keyFile", "caFile"])
    {
        let mut get = |name: &str| {
            r.required(&tf, name, n, "tls")
                .and_then(|v| path(r, v, &join("tls", name), base))
        };
        let (cert, key, ca) = (get("certFile"), get("keyFile"), get("caFile"));
        if let (Some(cert_file), Some(key_file), Some(ca_file)) = (cert, key, ca) {
            s.tls = Some(TlsFiles {
                cert_file,
                key_file,
                ca_file,
            });
        }
    }
    match default_spiffe_id(&s.trust_domain) {
        Some(id) => s.identity.spiffe_id = id,
        None => r.issue(
            root.at,
            "identity.spiffeId",
            ErrorKind::Invalid(
                "the default gateway SPIFFE ID is not valid for this trust domain".into(),
            ),
        ),
    }
    if let Some(n) = f.get("identity")
        && let Some(idf) = r.fields(n, "identity", &["spiffeId", "certTtl"])
    {
        if let Some(v) = idf.get("spiffeId")
            && let Some(text) = r.string(v, "identity.spiffeId")
        {
            match OwnedSpiffeId::parse(&text) {
                Ok(id) if id.borrow().is_member_of(s.trust_domain.borrow()) => {
                    s.identity.spiffe_id = id
                }
                Ok(_) => r.issue(
                    v.at,
                    "identity.spiffeId",
                    ErrorKind::Invalid(format!(
                        "{text:?} is not in trust domain {}",
                        s.trust_domain
                    )),
                ),
                Err(e) => r.issue(
                    v.at,
                    "identity.spiffeId",
                    ErrorKind::Invalid(format!("{text:?}: {e}")),
                ),
            }
        }
        if let Some(v) = idf.get("certTtl")
            && let Some(text) = r.string(v, "identity.certTtl")
        {
            match parse_duration(&text) {
                Some(d) if d >= Duration::from_secs(60) => s.identity.cert_ttl = d,
                Some(_) => r.issue(
                    v.at,
                    "identity.certTtl",
                    ErrorKind::Invalid("must be at least 1m".into()),
                ),
                None => r.issue(
                    v.at,
                    "identity.certTtl",
                    ErrorKind::Invalid(format!(
                        "{text:?} is not a duration such as 24h, 90m or 3600s"
                    )),
                ),
            }
        }
    }
    if let Some(n) = f.get("limits") {
        decode_limits(r, n, &mut s.limits);
    }
    if let Some(n) = f.get("services") {
        for (i, item) in r.list(n, "services").unwrap_or_default().iter().enumerate() {
            let p = index("services", i);
            if let Some(se) = decode_inline_service(r, item, &p) {
                s.inline_services.push(Located {
                    resource: Resource::ServiceEntry(se),
                    file: origin.to_owned(),
                    document,
                    at: item.at,
                });
            }
        }
    }
    s
}

/// The `limits` block: each field optional, each bounded so that no value
/// can disable a protection (no zero timeouts, no unbounded sizes).
fn decode_limits(r: &mut Reader, node: &Node, limits: &mut Limits) {
    let Some(f) = r.fields(
        node,
        "limits",
        &[
            "maxConnections",
            "maxConnectionsPerSource",
            "headTimeout",
            "idleTimeout",
            "tcpIdleTimeout",
            "maxRequestHeadBytes",
            "upstreamConnectTimeout",
        ],
    ) else {
        return;
    };
    let count = |r: &mut Reader, name: &str, lo: u32, hi: u32, slot: &mut u32| {
        if let Some(v) = f.get(name)
            && let Some(n) = r.int_in(v, &join("limits", name), lo.into(), hi.into())
            && let Ok(n) = u32::try_from(n)
        {
            *slot = n;
        }
    };
    count(
        r,
        "maxConnections",
        1,
        1_000_000,
        &mut limits.max_connections,
    );
    count(
        r,
        "maxConnectionsPerSource",
        1,
        1_000_000,
        &mut limits.max_connections_per_source,
    );
    count(
        r,
        "maxRequestHeadBytes",
        Limits::MIN_REQUEST_HEAD_BYTES,
        Limits::MAX_REQUEST_HEAD_BYTES,
        &mut limits.max_request_head_bytes,
    );
    let min = Duration::from_millis(100);
    let hour = Duration::from_secs(3600);
    for (name, slot, max) in [
        ("headTimeout", &mut limits.head_timeout, hour),
        ("idleTimeout", &mut limits.idle_timeout, 24 * hour),
        (
            "tcpIdleTimeout",
            &mut limits.tcp_idle_timeout,
            7 * 24 * hour,
        ),
        (
            "upstreamConnectTimeout",
            &mut limits.upstream_connect_timeout,
            hour,
        ),
    ] {
        if let Some(v) = f.get(name)
            && let Some(d) = bounded_duration(r, v, &join("limits", name), min, max)
        {
            *slot = d;
        }
    }
}

/// A Go-style duration in `min..=max`.
fn bounded_duration(
    r: &mut Reader,
    node: &Node,
    path: &str,
    min: Duration,
    max: Duration,
) -> Option<Duration> {
    let text = r.string(node, path)?;
    match parse_duration(&text) {
        Some(d) if (min..=max).contains(&d) => Some(d),
        Some(_) => {
            r.issue(
                node.at,
                path,
                ErrorKind::Invalid(format!(
                    "{text:?} is out of range {}ms..={}s",
                    min.as_millis(),
                    max.as_secs()
                )),
            );
            None
        }
        None => {
            r.issue(
                node.at,
                path,
                ErrorKind::Invalid(format!(
                    "{text:?} is not a duration such as 10s, 500ms or 1m"
                )),
            );
            None
        }
    }
}

fn decode_inline_service(r: &mut Reader, node: &Node, path: &str) -> Option<ServiceEntry> {
    // Unknown fields are reported once, by the ServiceEntry decoder below;
    // this first look only finds name and namespace.
    let mut scratch = Reader::default();
    let f = scratch.fields(node, path, INLINE_SERVICE_FIELDS)?;
    let name = r
        .required(&f, "name", node, path)
        .and_then(|n| r.string(n, &join(path, "name")));
    let namespace = match f.get("namespace") {
        Some(n) => r.string(n, &join(path, "namespace")),
        None => Some(DEFAULT_NAMESPACE.to_owned()),
    };
    // The same node, checked against the ServiceEntry spec schema plus the
    // two metadata fields written inline.
    let se = decode_service_entry_with(r, node, path, INLINE_SERVICE_FIELDS)?;
    Some(ServiceEntry {
        name: name?,
        namespace: namespace?,
        ..se
    })
}

fn decode_listener(r: &mut Reader, node: &Node, path: &str, i: usize) -> Option<Listener> {
    let f = r.fields(node, path, &["name", "address", "protocol", "service"])?;
    let name = match f.get("name") {
        Some(n) => r.string(n, &join(path, "name"))?,
        None => format!("listener-{i}"),
    };
    let address = r
        .required(&f, "address", node, path)
        .and_then(|a| socket_addr(r, a, &join(path, "address")))?;
    let protocol = match f.get("protocol") {
        None => ListenerProtocol::Http,
        Some(p) => {
            let pp = join(path, "protocol");
            match r.string(p, &pp)?.to_ascii_lowercase().as_str() {
                "http" => ListenerProtocol::Http,
                "tcp" => ListenerProtocol::Tcp,
                other => {
                    r.issue(
                        p.at,
                        &pp,
                        ErrorKind::UnknownValue {
                            what: "protocol",
                            value: other.to_owned(),
                            expected: "http or tcp",
                        },
                    );
                    return None;
                }
            }
        }
    };
    let service = match f.get("service") {
        Some(s) => Some(normalize_host(&r.string(s, &join(path, "service"))?)),
        None => None,
    };
    Some(Listener {
        name,
        address,
        protocol,
        service,
    })
}

fn socket_addr(r: &mut Reader, node: &Node, path: &str) -> Option<SocketAddr> {
    let text = r.string(node, path)?;
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            r.issue(
                node.at,
                path,
                ErrorKind::Invalid(format!(
                    "{text:?} is not an IP:port address (e.g. 127.0.0.1:9080 or [::1]:9080)"
                )),
            );
            None
        }
    }
}

fn path(r: &mut Reader, node: &Node, field: &str, base: &Path) -> Option<PathBuf> {
    let text = r.string(node, field)?;
    if text.is_empty() {
        r.issue(node.at, field, ErrorKind::Invalid("empty path".into()));
        return None;
    }
    Some(base.join(text))
}

/// Go-style durations (`24h`, `1h30m`, `90s`, `500ms`), as Istio writes
/// certificate lifetimes.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
    }
    Some(total)
}

// ---- Service model ---------------------------------------------------------

fn place_error(item: &Located, at: Location, field: String, kind: ErrorKind) -> Diagnostic {
    Diagnostic {
        file: item.file.clone(),
        document: Some(item.document),
        location: Some(at),
        field,
        kind,
    }
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn build_services(
    resources: &[Located],
    td: &OwnedTrustDomain,
    errors: &mut ConfigErrors,
) -> Vec<Service> {
    let workload_entries: Vec<(&Located, &WorkloadSpec)> = resources
        .iter()
        .filter_map(|l| match &l.resource {
            Resource::WorkloadEntry(w) => Some((l, w)),
            _ => None,
        })
        .collect();
    let mut services = Vec::new();
    let mut host_owner: HashMap<String, String> = HashMap::new();
    for item in resources {
        let Resource::ServiceEntry(se) = &item.resource else {
            continue;
        };
        let mut hosts = Vec::new();
        for (i, (h, at)) in se.hosts.iter().enumerate() {
            let host = normalize_host(h);
            let field = format!("{}.hosts[{i}]", se.path);
            if !valid_hostname(&host) {
                errors.push(place_error(
                    item,
                    *at,
                    field,
                    ErrorKind::Invalid(format!(
                        "{h:?} is not a hostname meshgate can route (no wildcards, ports or IPs)"
                    )),
                ));
                continue;
            }
            let owner = format!("{}/{}", se.namespace, se.name);
            if let Some(first) = host_owner.get(&host) {
                errors.push(place_error(
                    item,
                    *at,
                    field,
                    ErrorKind::Invalid(format!("host {host} is already served by {first}")),
                ));
                continue;
            }
            host_owner.insert(host.clone(), owner);
            hosts.push(host);
        }
        let mut ports: Vec<ServicePort> = Vec::new();
        for p in &se.ports {
            let protocol = match &p.protocol {
                Some(text) => match Protocol::parse(text) {
                    Some(proto) => proto,
                    None => {
                        errors.push(place_error(
                            item,
                            p.at,
                            join(&p.path, "protocol"),
                            ErrorKind::UnknownValue {
                                what: "protocol",
                                value: text.clone(),
                                expected: "HTTP, HTTP2, GRPC, HTTPS, TCP or TLS",
                            },
                        ));
                        continue;
                    }
                },
                None => Protocol::from_port_name(&p.name),
            };
            if ports
                .iter()
                .any(|q| q.number == p.number || q.name == p.name)
            {
                errors.push(place_error(
                    item,
                    p.at,
                    p.path.clone(),
                    ErrorKind::Invalid(format!(
                        "port number {} or name {:?} is used twice",
                        p.number, p.name
                    )),
                ));
                continue;
            }
            ports.push(ServicePort {
                number: p.number,
                name: p.name.clone(),
                protocol,
                target_port: p.target_port.unwrap_or(p.number),
            });
        }
        let mut workloads = Vec::new();
        let mut add =
            |origin: &Located, w: &WorkloadSpec, name: String, ns: &str| match build_workload(
                se, w, name, ns, &ports, td,
            ) {
                Ok(wl) => workloads.push(wl),
                Err(problem) => {
                    let (at, field, kind) = *problem;
                    errors.push(place_error(origin, at, field, kind));
                }
            };
        for (i, w) in se.endpoints.iter().enumerate() {
            add(item, w, format!("{}-{i}", se.name), &se.namespace);
        }
        if let Some(selector) = &se.workload_selector {
            for (origin, w) in &workload_entries {
                let same_ns = w.namespace.as_deref() == Some(se.namespace.as_str());
                let matches = selector.iter().all(|kv| w.labels.contains(kv));
                if same_ns && matches {
                    let name = w.name.clone().unwrap_or_default();
                    add(origin, w, name, &se.namespace);
                }
            }
        }
        services.push(Service {
            name: se.name.clone(),
            namespace: se.namespace.clone(),
            hosts,
            ports,
            workloads,
            mesh_external: se.mesh_external,
        });
    }
    services
}

/// Boxed: errors are rare and the success value is what is moved around.
type Problem = Box<(Location, String, ErrorKind)>;

fn build_workload(
    se: &ServiceEntry,
    w: &WorkloadSpec,
    name: String,
    namespace: &str,
    ports: &[ServicePort],
    td: &OwnedTrustDomain,
) -> Result<Workload, Problem> {
    let address = match w.address.parse::<IpAddr>() {
        Ok(ip) => Address::Ip(ip),
        Err(_) if se.static_resolution => {
            return Err(Box::new((
                w.at,
                join(&w.path, "address"),
                ErrorKind::Invalid(format!(
                    "{:?} is not an IP address, which resolution STATIC requires",
                    w.address
                )),
            )));
        }
        Err(_) if valid_hostname(&w.address) => Address::Dns(w.address.to_ascii_lowercase()),
        Err(_) => {
            return Err(Box::new((
                w.at,
                join(&w.path, "address"),
                ErrorKind::Invalid(format!("{:?} is not an IP address or hostname", w.address)),
            )));
        }
    };
    for (port_name, _) in &w.ports {
        if !ports.iter().any(|p| p.name == *port_name) {
            return Err(Box::new((
                w.at,
                crate::read::key(&join(&w.path, "ports"), port_name),
                ErrorKind::Invalid(format!(
                    "service {}/{} has no port named {port_name:?}",
                    se.namespace, se.name
                )),
            )));
        }
    }
    let service_account = w
        .service_account
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let mesh = w
        .labels
        .iter()
        .any(|(k, v)| k == TLS_MODE_LABEL && v == "istio");
    let upstream = if mesh {
        let texts: Vec<String> = if se.subject_alt_names.is_empty() {
            vec![format!("spiffe://{td}/ns/{namespace}/sa/{service_account}")]
        } else {
            se.subject_alt_names.clone()
        };
        let mut identities = Vec::with_capacity(texts.len());
        for t in texts {
            match OwnedSpiffeId::parse(&t) {
                Ok(id) => identities.push(id),
                Err(e) => {
                    return Err(Box::new((
                        w.at,
                        w.path.clone(),
                        ErrorKind::Invalid(format!(
                            "upstream identity {t:?} is not a SPIFFE ID: {e}"
                        )),
                    )));
                }
            }
        }
        UpstreamTls::Mesh { identities }
    } else {
        UpstreamTls::Plaintext
    };
    Ok(Workload {
        name,
        namespace: namespace.to_owned(),
        labels: w.labels.clone(),
        service_account,
        address,
        ports: w.ports.clone(),
        upstream,
    })
}

fn check_listeners(raw: &RawSettings, services: &[Service], errors: &mut ConfigErrors) {
    let mut seen_names: Vec<&str> = Vec::new();
    let mut seen_addrs: Vec<SocketAddr> = vec![raw.admin_address];
    for (l, place) in &raw.listeners {
        let mut fail = |field: &str, msg: String| {
            errors.push(Diagnostic {
                file: place.file.clone(),
                document: Some(place.document),
                location: Some(place.at),
                field: join(&place.path, field),
                kind: ErrorKind::Invalid(msg),
            });
        };
        if seen_names.contains(&l.name.as_str()) {
            fail("name", format!("listener name {:?} is used twice", l.name));
        }
        seen_names.push(&l.name);
        if seen_addrs.contains(&l.address) {
            fail(
                "address",
                format!(
                    "{} is already used by the admin API or another listener",
                    l.address
                ),
            );
        }
        seen_addrs.push(l.address);
        match (&l.service, l.protocol) {
            (Some(host), _) if !services.iter().any(|s| s.hosts.contains(host)) => {
                fail("service", format!("no service has host {host}"));
            }
            (Some(_), ListenerProtocol::Http) => {
                fail(
                    "service",
                    "only tcp listeners take a service; http routes by Host".into(),
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_services_accept_every_service_entry_spec_field() {
        for f in crate::resource::SE_FIELDS {
            assert!(INLINE_SERVICE_FIELDS.contains(f), "{f}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3600s"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10d"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Details.Bookinfo:9080"), "details.bookinfo");
        assert_eq!(
            normalize_host("details.bookinfo.svc.cluster.local."),
            "details.bookinfo.svc.cluster.local"
        );
        assert_eq!(normalize_host("details"), "details");
    }

    #[test]
    fn protocol_from_port_name() {
        assert_eq!(Protocol::from_port_name("http"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("grpc-api"), Protocol::Grpc);
        assert_eq!(Protocol::from_port_name("web"), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name("tls"), Protocol::Tls);
    }
}
