//! The gateway side of meshgate's edge nodes.
//!
//! An edge node (firmware in `gateway-embedded/`) holds a mesh identity on
//! behalf of legacy devices that cannot speak mTLS and carries their
//! connections to this gateway over one mTLS tunnel. This module owns
//! everything the gateway does for nodes:
//!
//! - [`registry`]: node records and one-time enrollment tokens in the state
//!   store; the identity a node gets is fixed there, never by its CSR;
//! - `tunnel`: the tunnel server on its own listener (default
//!   `127.0.0.1:15443`): TLS 1.3 with records capped for the node's small
//!   buffers, the enrollment exchange for nodes without a certificate, and
//!   the operating session (hello, configuration push, heartbeats, renewal,
//!   revocation, streams) for enrolled nodes;
//! - `bridge`: one task per tunnel stream, moving bytes between the
//!   stream (with its credit-based flow control) and the data plane;
//! - [`api`]: admin API routes under `/api/v1/edge/`;
//! - [`cli`]: `meshgate edge ...`.
//!
//! Streams in both directions go through the data plane (module
//! `crate::dataplane::authenticated`): a node-opened stream is served like
//! an inbound connection from an mTLS peer whose principal is the node's
//! identity (mode, AuthorizationPolicy, XFCC), and a service whose endpoint
//! is a device behind a node (workload label [`EDGE_NODE_LABEL`]) is
//! reached by opening a stream on that node's tunnel.

pub(crate) mod api;
mod bridge;
pub(crate) mod cli;
pub(crate) mod registry;
mod tunnel;

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use meshgate_ca::{CertificateAuthority, Store};
use meshgate_config::settings::{Address, Settings};
use meshgate_core::time::UnixTime;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dataplane::authenticated::{EdgeConnect, EdgeConnector, UpstreamIo};
use crate::dataplane::{DataPlane, Protocol};
use registry::{ForwardRule, NodeRecord, Registry, RegistryError};
use tunnel::Cmd;

/// The workload label naming the edge node a legacy device is behind:
/// a service endpoint with `meshgate.io/edge-node: NODE` and an IP address
/// is the device at that address and port on node NODE's local network.
pub(crate) const EDGE_NODE_LABEL: &str = "meshgate.io/edge-node";

/// The default tunnel listener (`meshgate serve --edge-addr`).
pub(crate) const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), 15443);

/// How long a mesh client waits for a node to reach its device.
const DEVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the edge server could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EdgeError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr} (edge tunnel)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A test-only environment variable holds no whole number of seconds.
    #[error("{var}={value:?}: expected a whole number of seconds > 0")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
}

/// Test-only: the lifetime of node certificates in seconds, when the
/// options set none (default: the CA's, i.e. the settings'
/// `identity.certTtl`, at least 60 s). Renewal tests use it to see several
/// node renewals in a short run; the CA's minimum still applies (lowered
/// only by `MESHGATE_UNSAFE_MIN_TTL_SECS`). Announced with a warning.
pub(crate) const UNSAFE_EDGE_CERT_TTL_ENV: &str = "MESHGATE_UNSAFE_EDGE_CERT_TTL_SECS";

fn unsafe_edge_cert_ttl() -> Result<Option<Duration>, EdgeError> {
    let Ok(value) = std::env::var(UNSAFE_EDGE_CERT_TTL_ENV) else {
        return Ok(None);
    };
    match value.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => {
            tracing::warn!(
                secs,
                "{UNSAFE_EDGE_CERT_TTL_ENV} sets the edge-node certificate lifetime (testing only)"
            );
            Ok(Some(Duration::from_secs(secs)))
        }
        _ => Err(EdgeError::BadEnv {
            var: UNSAFE_EDGE_CERT_TTL_ENV,
            value,
        }),
    }
}

/// How the edge server runs.
#[derive(Debug, Clone)]
pub(crate) struct EdgeOptions {
    /// Where the tunnel listens.
    pub(crate) listen: SocketAddr,
    /// The address was asked for (`--edge-addr`): failing to bind it stops
    /// the gateway. The default address being taken (another gateway on
    /// the host) only leaves this one without a tunnel, loudly.
    pub(crate) explicit: bool,
    /// Lifetime of node certificates; `None` = the CA's default.
    pub(crate) cert_ttl: Option<Duration>,
}

impl EdgeOptions {
    /// Tunnel on `listen` (or [`DEFAULT_ADDR`]), node certificates with the
    /// CA's default TTL.
    pub(crate) fn new(listen: Option<SocketAddr>) -> Self {
        EdgeOptions {
            listen: listen.unwrap_or(DEFAULT_ADDR),
            explicit: listen.is_some(),
            cert_ttl: None,
        }
    }
}

/// A legacy endpoint a node exposes to the mesh (from the settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExposedRule {
    pub(crate) node: String,
    /// The service's first host, as pushed to the node.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) device: SocketAddr,
}

/// What the gateway knows about a live tunnel.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LiveStatus {
    /// The node's tunnel socket address.
    pub(crate) remote: String,
    pub(crate) connected_since: String,
    pub(crate) last_seen: String,
    /// The last configuration version the node acknowledged.
    pub(crate) acked_config_version: Option<u64>,
    /// Streams open now.
    pub(crate) streams: usize,
}

struct LiveTunnel {
    conn_id: u64,
    tx: mpsc::Sender<Cmd>,
    status: Arc<Mutex<LiveStatus>>,
}

/// The edge server: registry, tunnels and the data-plane hooks.
pub(crate) struct EdgeServer {
    registry: Registry,
    ca: Arc<CertificateAuthority>,
    dp: DataPlane,
    exposed: Vec<ExposedRule>,
    protocols: HashMap<(String, u16), Protocol>,
    cert_ttl: Option<Duration>,
    tunnels: Mutex<HashMap<String, LiveTunnel>>,
    next_conn: core::sync::atomic::AtomicU64,
    tls: tunnel::TlsConfigCache,
    local_addr: Option<SocketAddr>,
}

impl core::fmt::Debug for EdgeServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EdgeServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The exposed legacy endpoints the settings declare (see
/// [`EDGE_NODE_LABEL`]). Endpoints given by DNS name are skipped with a
/// warning: the node is told an IP address.
pub(crate) fn exposed_rules(settings: &Settings) -> Vec<ExposedRule> {
    let mut out = Vec::new();
    for s in &settings.services {
        let Some(host) = s.hosts.first() else {
            continue;
        };
        for p in &s.ports {
            for (w, port) in s.endpoints(p) {
                let Some((_, node)) = w.labels.iter().find(|(k, _)| k == EDGE_NODE_LABEL) else {
                    continue;
                };
                match &w.address {
                    Address::Ip(ip) => out.push(ExposedRule {
                        node: node.clone(),
                        host: host.clone(),
                        port: p.number,
                        device: SocketAddr::new(*ip, port),
                    }),
                    Address::Dns(name) => tracing::warn!(
                        service = %host,
                        device = %name,
                        "edge device endpoints need an IP address; skipped"
                    ),
                }
            }
        }
    }
    out
}

/// Starts the edge server: loads the registry, binds the tunnel listener,
/// registers the data plane's edge connector and serves until `stop`.
pub(crate) async fn start(
    opts: EdgeOptions,
    store: Arc<dyn Store>,
    ca: Arc<CertificateAuthority>,
    dp: DataPlane,
    settings: &Settings,
    stop: watch::Receiver<bool>,
) -> Result<Arc<EdgeServer>, EdgeError> {
    let cert_ttl = match opts.cert_ttl {
        Some(ttl) => Some(ttl),
        None => unsafe_edge_cert_ttl()?,
    };
    let registry = Registry::load(store, settings.trust_domain.clone())?;
    let bound = match TcpListener::bind(opts.listen).await {
        Ok(l) => l.local_addr().map(|a| (l, a)),
        Err(e) => Err(e),
    };
    let (listener, local_addr) = match bound {
        Ok((l, a)) => (Some(l), Some(a)),
        Err(source) if opts.explicit => {
            return Err(EdgeError::Bind {
                addr: opts.listen,
                source,
            });
        }
        Err(e) => {
            tracing::warn!(addr = %opts.listen, error = %e, "edge tunnel listener not started (use --edge-addr to choose another address); nodes cannot connect to this gateway");
            (None, None)
        }
    };
    let protocols = settings
        .services
        .iter()
        .flat_map(|s| {
            s.hosts.iter().flat_map(move |h| {
                s.ports.iter().map(move |p| {
                    let proto = if p.protocol.is_http() {
                        Protocol::Http
                    } else {
                        Protocol::Tcp
                    };
                    ((h.to_ascii_lowercase(), p.number), proto)
                })
            })
        })
        .collect();
    let server = Arc::new(EdgeServer {
        registry,
        ca,
        dp: dp.clone(),
        exposed: exposed_rules(settings),
        protocols,
        cert_ttl,
        tunnels: Mutex::new(HashMap::new()),
        next_conn: core::sync::atomic::AtomicU64::new(1),
        tls: tunnel::TlsConfigCache::default(),
        local_addr,
    });
    dp.set_edge_connector(server.clone());
    if let Some(listener) = listener {
        tokio::spawn(tunnel::accept_loop(server.clone(), listener, stop));
    }
    Ok(server)
}

impl EdgeServer {
    /// What `meshgate serve` prints about the tunnel at start.
    pub(crate) fn startup_line(&self) -> String {
        match self.local_addr {
            Some(a) => format!("meshgate: edge tunnel listening on {a}"),
            None => format!(
                "meshgate: edge tunnel NOT listening: {DEFAULT_ADDR} is in use (choose an address with --edge-addr)"
            ),
        }
    }

    /// The tunnel address for people: the address, or why there is none.
    pub(crate) fn tunnel_address(&self) -> String {
        self.local_addr.map_or_else(
            || "not listening (default address in use; see --edge-addr)".to_owned(),
            |a| a.to_string(),
        )
    }

    fn protocol_for(&self, host: &str, port: u16) -> Protocol {
        self.protocols
            .get(&(host.to_ascii_lowercase(), port))
            .copied()
            .unwrap_or(Protocol::Tcp)
    }

    fn exposed_for<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ExposedRule> + 'a {
        self.exposed.iter().filter(move |e| e.node == node)
    }

    /// The configuration for `node` and a fingerprint of its content.
    fn config_for(&self, rec: &NodeRecord) -> (Vec<ForwardRule>, Vec<ExposedRule>, String) {
        let exposed: Vec<ExposedRule> = self.exposed_for(&rec.name).cloned().collect();
        let mut h = Sha256::new();
        for l in &rec.listeners {
            h.update(format!(
                "L{}={}:{};",
                l.listen_port,
                l.host.to_ascii_lowercase(),
                l.port
            ));
        }
        for e in &exposed {
            h.update(format!(
                "E{}:{}={};",
                e.host.to_ascii_lowercase(),
                e.port,
                e.device
            ));
        }
        (rec.listeners.clone(), exposed, hex::encode(h.finalize()))
    }

    fn tunnel_tx(&self, node: &str) -> Option<mpsc::Sender<Cmd>> {
        lock(&self.tunnels).get(node).map(|t| t.tx.clone())
    }

    /// Creates a node and its token (see [`Registry::create_token`]); a
    /// connected node gets the changed configuration pushed.
    pub(crate) fn create_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Option<Duration>,
        listeners: Option<Vec<ForwardRule>>,
        actor: &str,
    ) -> Result<(NodeRecord, String), RegistryError> {
        let out = self.registry.create_token(
            namespace,
            name,
            ttl,
            listeners,
            crate::identity::now(),
            actor,
        )?;
        self.notify(name, Cmd::PushConfig);
        Ok(out)
    }

    /// Replaces a node's forwarding rules and pushes them if it is
    /// connected.
    pub(crate) fn set_listeners(
        &self,
        name: &str,
        rules: Vec<ForwardRule>,
        actor: &str,
    ) -> Result<NodeRecord, RegistryError> {
        let rec = self
            .registry
            .set_listeners(name, rules, crate::identity::now(), actor)?;
        self.notify(name, Cmd::PushConfig);
        Ok(rec)
    }

    /// Revokes a node; its tunnel is told and closed at once (and the
    /// tunnel's own periodic check closes it within 250 ms regardless).
    pub(crate) fn revoke(
        &self,
        name: &str,
        reason: &str,
        actor: &str,
    ) -> Result<NodeRecord, RegistryError> {
        let rec = self
            .registry
            .revoke(name, reason, &self.ca, crate::identity::now(), actor)?;
        self.notify(name, Cmd::Revoke);
        Ok(rec)
    }

    fn notify(&self, name: &str, cmd: Cmd) {
        if let Some(tx) = self.tunnel_tx(name) {
            // A full queue means the tunnel is busy; configuration and
            // revocation are re-checked by the tunnel itself periodically.
            let _ = tx.try_send(cmd);
        }
    }

    /// Every node with its live status.
    pub(crate) fn nodes(&self) -> Vec<NodeView> {
        self.registry
            .list()
            .into_iter()
            .map(|r| self.view(r))
            .collect()
    }

    /// One node with its live status.
    pub(crate) fn node(&self, name: &str) -> Option<NodeView> {
        self.registry.get(name).map(|r| self.view(r))
    }

    fn view(&self, r: NodeRecord) -> NodeView {
        let live = lock(&self.tunnels)
            .get(&r.name)
            .map(|t| lock(&t.status).clone());
        let exposed = self
            .exposed_for(&r.name)
            .map(|e| ExposedView {
                service: format!("{}:{}", e.host, e.port),
                device: e.device.to_string(),
            })
            .collect();
        let fmt = |t: Option<UnixTime>| t.map(crate::state::rfc3339);
        NodeView {
            token_expires_at: fmt(r.token_expires_at()),
            name: r.name,
            namespace: r.namespace,
            spiffe_id: r.spiffe_id,
            state: r.state.as_str(),
            created_at: crate::state::rfc3339(r.created_at),
            created_by: r.created_by,
            enrolled_at: fmt(r.enrolled_at),
            cert_serial: r.cert_serial,
            cert_not_after: fmt(r.cert_not_after),
            revoked_at: fmt(r.revoked_at),
            revoked_reason: r.revoked_reason,
            listeners: r.listeners,
            exposed,
            config_version: r.config_version,
            connected: live.is_some(),
            live,
        }
    }
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeView {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) spiffe_id: String,
    /// `pending`, `enrolled` or `revoked`.
    pub(crate) state: &'static str,
    pub(crate) created_at: String,
    pub(crate) created_by: String,
    /// Set while an unused token exists.
    pub(crate) token_expires_at: Option<String>,
    pub(crate) enrolled_at: Option<String>,
    pub(crate) cert_serial: Option<String>,
    pub(crate) cert_not_after: Option<String>,
    pub(crate) revoked_at: Option<String>,
    pub(crate) revoked_reason: Option<String>,
    pub(crate) listeners: Vec<ForwardRule>,
    pub(crate) exposed: Vec<ExposedView>,
    pub(crate) config_version: u64,
    pub(crate) connected: bool,
    pub(crate) live: Option<LiveStatus>,
}

/// An exposed legacy endpoint as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExposedView {
    pub(crate) service: String,
    pub(crate) device: String,
}

impl EdgeConnector for EdgeServer {
    fn connect<'a>(&'a self, node: &'a str, host: &'a str, port: u16) -> EdgeConnect<'a> {
        Box::pin(async move {
            let rule = self
                .exposed_for(node)
                .find(|e| e.host.eq_ignore_ascii_case(host) && e.port == port)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("edge node {node} does not expose {host}:{port}"),
                    )
                })?;
            let tx = self.tunnel_tx(node).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("edge node {node} is not connected"),
                )
            })?;
            let (reply, answer) = oneshot::channel();
            let closed = || io::Error::new(io::ErrorKind::ConnectionAborted, "edge tunnel closed");
            // The whole exchange is bounded, queueing included: a tunnel
            // whose node stopped reading stops taking commands.
            let open = async {
                tx.send(Cmd::Open {
                    host: rule.host.clone(),
                    port,
                    reply,
                })
                .await
                .map_err(|_| closed())?;
                answer.await.map_err(|_| closed())?
            };
            match tokio::time::timeout(DEVICE_CONNECT_TIMEOUT, open).await {
                Ok(Ok(io)) => Ok(Box::new(io) as Box<dyn UpstreamIo>),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("edge node {node} did not reach its device in time"),
                )),
            }
        })
    }
}

/// Converts a device address for the wire.
pub(crate) fn device_ip(ip: IpAddr) -> meshgate_core::wire::DeviceIp {
    match ip {
        IpAddr::V4(v4) => meshgate_core::wire::DeviceIp::V4(v4.octets()),
        IpAddr::V6(v6) => meshgate_core::wire::DeviceIp::V6(v6.octets()),
    }
}
