//! The data plane: inbound listeners, TLS termination, admission,
//! authorization and proxying.
//!
//! The control plane owns configuration and identity and publishes them in
//! two `ArcSwap`s; the data plane only reads them:
//! - [`Snapshot`] (routing table + compiled policies), loaded once per
//!   connection (TLS configuration) and once per HTTP request (decision);
//! - [`Identity`] (gateway certificate, key, trust bundle and the TLS
//!   configurations derived from them), loaded per handshake.
//!
//! Module map:
//! - `listener` logic lives here ([`DataPlane::spawn_listener`]): accept
//!   loop with a connection limit (backpressure), a per-source cap (one
//!   client cannot take every slot) and graceful drain;
//! - [`inbound`]: sniffing, ClientHello/SNI routing, mode → handshake;
//! - [`idle`]: the inactivity timeout of client connections;
//! - [`http_proxy`]: per-request admission + authorization, XFCC, proxying;
//! - [`tcp_proxy`]: TCP and DISABLE passthrough;
//! - [`outbound`]: upstream connections, mTLS origination, secure naming;
//! - [`pool`]: reuse of upstream HTTP/1.1 connections;
//! - [`identity`], [`peer`]: certificates, verifiers, SPIFFE IDs;
//! - [`xfcc`], [`access_log`], [`metrics`]: what upstreams, logs and
//!   Prometheus see.

pub(crate) mod access_log;
pub(crate) mod authenticated;
mod http_proxy;
pub(crate) mod identity;
mod idle;
mod inbound;
pub(crate) mod metrics;
mod outbound;
mod peer;
mod pool;
mod prefixed;
mod request_path;
pub(crate) mod revocation;
pub(crate) mod snapshot;
mod tcp_proxy;
mod xfcc;

#[cfg(test)]
mod tests;

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

pub(crate) use access_log::{AccessEntry, AccessLog, AccessLogSink};
pub(crate) use identity::{Identity, Protocol};

pub(crate) use metrics::PlaintextClient;
pub(crate) use revocation::RevocationCheck;
pub(crate) use snapshot::{Snapshot, SnapshotError};

/// Accept-queue length of the data-plane listeners (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket for a data-plane listener at `addr`.
///
/// As `TcpListener::bind` makes it (a restarted gateway can rebind while
/// old connections linger in TIME_WAIT), but with a deep accept queue:
/// `bind`'s 128 overflows in a burst of connections, and the kernel then
/// drops SYNs, so legitimate clients wait 1 s, 3 s, 7 s for their
/// retransmissions. `TCP_NODELAY` is set here once: Linux copies it to
/// every accepted socket, which saves a `setsockopt` per connection (the
/// proxies write whole TLS records and response heads, never dribbles).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Idle upstream HTTP/1.1 connections kept per endpoint (nginx's bench
/// configuration uses `keepalive 256` too).
const DEFAULT_UPSTREAM_MAX_IDLE: usize = 256;
/// How long an idle upstream connection is kept. Below most upstream
/// servers' own keep-alive timeouts (nginx 75 s, Node.js 5 s being an
/// exception), so usually the gateway closes first; when the upstream
/// does, `http_proxy` retries what is safe to retry.
const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Tunables of the data plane (the settings' `limits` block).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Most inbound connections open at once; further clients wait in the
    /// kernel's accept queue (backpressure) instead of being served badly.
    pub(crate) max_connections: usize,
    /// Most inbound connections open at once from one source (IPv4
    /// address, IPv6 /64); further ones are closed right after accept.
    pub(crate) max_connections_per_source: usize,
    /// Time allowed for a complete ClientHello / TLS handshake / HTTP
    /// request head.
    pub(crate) head_timeout: Duration,
    /// An HTTP connection on which no byte moves, in either direction,
    /// for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// The same for TCP-proxied connections.
    pub(crate) tcp_idle_timeout: Duration,
    /// Largest HTTP/1 request head / HTTP/2 header list (at least 8 KiB,
    /// which hyper requires).
    pub(crate) max_request_head_bytes: usize,
    /// Time allowed to connect (and handshake) to an upstream.
    pub(crate) upstream_connect_timeout: Duration,
    /// Idle upstream HTTP/1.1 connections kept per endpoint for reuse (0:
    /// a fresh connection per request).
    pub(crate) upstream_max_idle: usize,
    /// How long an idle upstream connection is kept for reuse.
    pub(crate) upstream_idle_timeout: Duration,
}

impl Options {
    /// The data plane's options from the settings' limits.
    pub(crate) fn from_limits(l: &meshgate_config::settings::Limits) -> Self {
        let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            max_connections: size(l.max_connections),
            max_connections_per_source: size(l.max_connections_per_source),
            head_timeout: l.head_timeout,
            idle_timeout: l.idle_timeout,
            tcp_idle_timeout: l.tcp_idle_timeout,
            max_request_head_bytes: size(l.max_request_head_bytes),
            upstream_connect_timeout: l.upstream_connect_timeout,
            upstream_max_idle: DEFAULT_UPSTREAM_MAX_IDLE,
            upstream_idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::from_limits(&meshgate_config::settings::Limits::default())
    }
}

/// What the per-source connection cap counts by: an IPv4 address, or the
/// /64 prefix of an IPv6 address (one host usually holds a whole /64, so
/// counting single IPv6 addresses would be no cap at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4),
                None => SourceKey::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// Open connections per source. An entry exists only while its count is
/// above zero, so the map is bounded by the open connections.
#[derive(Debug, Default)]
struct PerSource(Mutex<HashMap<SourceKey, usize>>);

impl PerSource {
    /// Counts one more connection from `key` unless it already has `cap`.
    fn try_acquire(&self, key: SourceKey, cap: usize) -> bool {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(key).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                m.remove(&key);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, key: SourceKey) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

/// One listener's role, from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerSpec {
    /// Name for logs.
    pub(crate) name: String,
    /// The configured port: requests that name no port are routed to the
    /// service port with this number.
    pub(crate) port: u16,
    /// HTTP (per-request decisions) or TCP (one per connection).
    pub(crate) protocol: Protocol,
    /// TCP listeners: the host of the service connections go to.
    pub(crate) service: Option<String>,
}

impl ListenerSpec {
    /// From the settings' listener.
    pub(crate) fn from_config(l: &meshgate_config::settings::Listener) -> Self {
        Self {
            name: l.name.clone(),
            port: l.address.port(),
            protocol: match l.protocol {
                meshgate_config::settings::ListenerProtocol::Http => Protocol::Http,
                meshgate_config::settings::ListenerProtocol::Tcp => Protocol::Tcp,
            },
            service: l.service.clone(),
        }
    }
}

/// State shared by every listener and connection.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Reaches devices behind edge nodes (set once by the edge server).
    edge: std::sync::OnceLock<Arc<dyn authenticated::EdgeConnector>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    identity: Arc<ArcSwap<Identity>>,
    options: Options,
    /// Idle upstream HTTP/1.1 connections.
    pool: pool::UpstreamPool<http_proxy::UpstreamBody>,
    metrics: metrics::Metrics,
    access_log: AccessLog,
    limit: Arc<Semaphore>,
    per_source: PerSource,
    shutdown: watch::Sender<bool>,
    active: AtomicUsize,
    /// Open mTLS connections by peer, for closing revoked ones.
    live: Arc<revocation::LiveConnections>,
    /// The control plane's revocation list (none: nothing is revoked).
    revocation: std::sync::OnceLock<Arc<dyn RevocationCheck>>,
}

impl Shared {
    /// Whether `peer`'s certificate is revoked now.
    pub(crate) fn is_revoked(&self, peer: &peer::PeerIdentity) -> bool {
        self.revocation
            .get()
            .is_some_and(|r| r.is_revoked(peer.spiffe_id.borrow().as_str(), &peer.serial))
    }
}

/// The handle the control plane holds.
#[derive(Debug, Clone)]
pub(crate) struct DataPlane {
    shared: Arc<Shared>,
}

/// Counts a connection as in flight (globally and for its source) until
/// dropped.
struct ConnGuard {
    shared: Arc<Shared>,
    source: SourceKey,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.per_source.release(self.source);
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.connection_closed();
    }
}

impl DataPlane {
    /// Creates the data plane over the control plane's published snapshot
    /// and identity.
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        identity: Arc<ArcSwap<Identity>>,
        options: Options,
        access_log: AccessLogSink,
    ) -> Self {
        let (shutdown, _) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
        Self {
            shared: Arc::new(Shared {
                edge: std::sync::OnceLock::new(),
                snapshot,
                identity,
                pool: pool::UpstreamPool::new(
                    options.upstream_max_idle,
                    options.upstream_idle_timeout,
                ),
                options,
                metrics: metrics::Metrics::default(),
                access_log: AccessLog::new(access_log),
                limit,
                per_source: PerSource::default(),
                shutdown,
                active: AtomicUsize::new(0),
                live: Arc::default(),
                revocation: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Binds `addr` and serves it (see [`Self::spawn_listener`]). Returns
    /// the bound address (useful with port 0).
    pub(crate) async fn bind(
        &self,
        addr: SocketAddr,
        spec: ListenerSpec,
    ) -> io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = listen(addr)?;
        let local = listener.local_addr()?;
        Ok((local, self.spawn_listener(listener, spec)))
    }

    /// Serves a listener made by [`listen`] until [`Self::drain`]. A
    /// connection permit is taken *before* accepting, so at the limit new
    /// clients wait in the kernel's backlog rather than being accepted and
    /// starved.
    fn spawn_listener(&self, listener: TcpListener, spec: ListenerSpec) -> JoinHandle<()> {
        let shared = self.shared.clone();
        let spec = Arc::new(spec);
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.subscribe();
            loop {
                let permit = tokio::select! {
                    () = stop_requested(&mut shutdown) => break,
                    p = shared.limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let (stream, source) = tokio::select! {
                    () = stop_requested(&mut shutdown) => break,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(listener = %spec.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let key = SourceKey::of(source.ip());
                if !shared
                    .per_source
                    .try_acquire(key, shared.options.max_connections_per_source)
                {
                    // Closed at once, before any read or handshake, and
                    // counted but not access-logged: a flood must not turn
                    // into a flood of log lines.
                    shared.metrics.connection(metrics::DecisionLabels {
                        destination: "-".to_owned(),
                        security: "none",
                        decision: "deny",
                        reason: "source_connection_limit".to_owned(),
                    });
                    drop(stream);
                    continue;
                }
                shared.active.fetch_add(1, Ordering::AcqRel);
                shared.metrics.connection_opened();
                let guard = ConnGuard {
                    shared: shared.clone(),
                    source: key,
                    _permit: permit,
                };
                let (shared, spec) = (shared.clone(), spec.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    inbound::handle(shared, spec, stream, source).await;
                });
            }
            tracing::info!(listener = %spec.name, "listener stopped accepting");
        })
    }

    /// Stops accepting, asks HTTP connections to finish their in-flight
    /// requests and close, and waits up to `deadline` for every connection
    /// to end. Returns how many were still open at the deadline.
    pub(crate) async fn drain(&self, deadline: Duration) -> usize {
        self.shared.shutdown.send_replace(true);
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let open = self.active_connections();
            if open == 0 || tokio::time::Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Installs the revocation list consulted for open connections (set
    /// once; the TLS verifier gets the same check through
    /// [`Identity::with_revocation`]).
    pub(crate) fn set_revocation_check(&self, check: Arc<dyn RevocationCheck>) {
        let _ = self.shared.revocation.set(check);
    }

    /// Closes every open mTLS connection whose peer certificate is revoked
    /// now; returns how many were signalled. Called when a revocation is
    /// recorded and periodically as a safety net.
    pub(crate) fn close_revoked(&self) -> usize {
        match self.shared.revocation.get() {
            Some(check) => self.shared.live.close_revoked(&**check),
            None => 0,
        }
    }

    /// Registers the edge server, through which service endpoints behind
    /// edge nodes are reached. Only the first registration counts.
    pub(crate) fn set_edge_connector(&self, c: Arc<dyn authenticated::EdgeConnector>) {
        let _ = self.shared.edge.set(c);
    }

    /// Inbound connections currently open.
    pub(crate) fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition of the data plane's metrics.
    pub(crate) fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// Plaintext clients recently seen per destination namespace, most
    /// recent first (what switching a namespace to STRICT would cut off).
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "read by the admin UI through ControlPlane::data_plane"
        )
    )]
    pub(crate) fn plaintext_clients(&self) -> Vec<(String, Vec<PlaintextClient>)> {
        self.shared.metrics.plaintext_clients()
    }

    /// Access-log entries from now on, as they are recorded (the admin
    /// UI's live traffic view). A receiver that falls more than 256 entries
    /// behind gets `RecvError::Lagged` and continues with newer ones.
    #[allow(dead_code, reason = "read by the admin UI's live traffic view")]
    pub(crate) fn subscribe_access_log(&self) -> tokio::sync::broadcast::Receiver<AccessEntry> {
        self.shared.access_log.subscribe()
    }

    /// The most recent access-log entries, oldest first.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "read by the admin UI through ControlPlane::data_plane"
        )
    )]
    pub(crate) fn recent_access_log(&self) -> Vec<AccessEntry> {
        self.shared.access_log.recent()
    }
}

/// Resolves once a drain has been requested (or the sender is gone). The
/// watch guard is dropped inside, so callers' futures stay `Send`.
pub(crate) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// Accepted connections inherit TCP_NODELAY from the listening socket
    /// (the gateway no longer sets it per connection), on IPv4 and IPv6.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = listen(addr.parse().expect("addr")) else {
                assert!(addr.starts_with('['), "IPv4 loopback must bind");
                continue; // no IPv6 on this host
            };
            let to = listener.local_addr().expect("local addr");
            let client = tokio::net::TcpStream::connect(to).await.expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            assert!(accepted.nodelay().expect("nodelay"), "{addr}");
            drop(client);
        }
    }

    #[test]
    fn per_source_cap_counts_ipv4_and_ipv6_prefixes_and_forgets_idle_sources() {
        let p = PerSource::default();
        let a = SourceKey::of("127.0.0.2".parse().expect("ip"));
        assert!(p.try_acquire(a, 2));
        assert!(p.try_acquire(a, 2));
        assert!(!p.try_acquire(a, 2), "third connection over the cap");
        // Another source is not affected; an IPv4-mapped IPv6 address is
        // the same source as the IPv4 address.
        assert!(p.try_acquire(SourceKey::of("127.0.0.1".parse().expect("ip")), 2));
        let mapped = SourceKey::of("::ffff:127.0.0.2".parse().expect("ip"));
        assert_eq!(mapped, a);
        // Two addresses of one IPv6 /64 share the cap.
        let v6a = SourceKey::of("2001:db8::1".parse().expect("ip"));
        let v6b = SourceKey::of("2001:db8::ffff:2".parse().expect("ip"));
        assert_eq!(v6a, v6b);
        assert_ne!(v6a, SourceKey::of("2001:db8:0:1::1".parse().expect("ip")));
        p.release(a);
        assert!(p.try_acquire(a, 2), "a released slot is reusable");
        p.release(a);
        p.release(a);
        p.release(SourceKey::of("127.0.0.1".parse().expect("ip")));
        assert!(
            p.0.lock().expect("lock").is_empty(),
            "no entry for idle sources"
        );
    }
}
