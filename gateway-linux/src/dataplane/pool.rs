//! Reuse of upstream HTTP/1.1 connections across requests.
//!
//! Dialling the upstream for every request costs a TCP handshake (and, for
//! mesh upstreams, a full mTLS handshake) per request and leaves a socket
//! in TIME_WAIT each time. The pool keeps upstream connections whose last
//! response ended cleanly and hands them to later requests, from any client
//! connection, for the same endpoint.
//!
//! A pooled connection must never carry a request that a freshly dialled
//! one would not carry the same way, so its [`PoolKey`] is everything the
//! dial depended on:
//! - the endpoint address (a policy or service reload that removes an
//!   endpoint makes its connections unreachable: requests only look up
//!   endpoints of the route current when the request started);
//! - for mesh (mTLS) endpoints also the gateway [`Identity`] the handshake
//!   presented and trusted (compared by pointer: a rotation publishes a new
//!   `Identity`, so connections made under the old certificate or trust
//!   bundle are never reused), the SPIFFE IDs secure naming accepted and the
//!   server name sent.
//!
//! Admission, authorization and the `x-forwarded-client-cert` header stay
//! per request in `http_proxy`; the pool only saves the dial. On checkout a
//! mesh connection's upstream certificate is checked against the revocation
//! list again, and a connection that the upstream closed (or that expired
//! here) is dropped instead of used. A request that a reused connection
//! could not even start sending is retried once on a fresh connection by
//! `http_proxy`; one that was (maybe) sent is never replayed.

use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hyper::client::conn::http1::SendRequest;
use meshgate_core::spiffe::OwnedSpiffeId;

use super::identity::Identity;
use super::peer::PeerIdentity;
use super::snapshot::EndpointAddress;

/// What a reusable upstream connection was made for. Two requests may share
/// a connection only if their keys are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    address: EndpointAddress,
    mesh: Option<MeshKey>,
}

/// The mTLS parameters of a mesh connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MeshKey {
    /// `Arc::as_ptr` of the gateway identity used. Every idle entry holds
    /// that `Arc`, so the address cannot be reused by another identity
    /// while an entry with this key exists.
    identity: usize,
    expected: Vec<OwnedSpiffeId>,
    server_name: String,
}

impl PoolKey {
    /// The key of a plaintext connection to `address`.
    pub(crate) fn plaintext(address: EndpointAddress) -> Self {
        Self {
            address,
            mesh: None,
        }
    }

    /// The key of an mTLS connection to `address` made with `identity`,
    /// accepting one of `expected`, sending `server_name`.
    pub(crate) fn mesh(
        address: EndpointAddress,
        identity: &Arc<Identity>,
        expected: Vec<OwnedSpiffeId>,
        server_name: String,
    ) -> Self {
        Self {
            address,
            mesh: Some(MeshKey {
                identity: Arc::as_ptr(identity) as usize,
                expected,
                server_name,
            }),
        }
    }
}

/// A connection checked out of the pool or freshly made, with what is
/// needed to give it back.
#[derive(Debug)]
pub(crate) struct Lease<B> {
    pub(crate) sender: SendRequest<B>,
    /// Where it may be returned; `None` for connections that are never
    /// pooled (edge tunnel streams).
    key: Option<PoolKey>,
    binding: Binding,
    /// Whether it served an earlier request.
    pub(crate) reused: bool,
}

/// What an idle mesh connection must still satisfy when it is reused.
#[derive(Debug, Clone, Default)]
pub(crate) struct Binding {
    /// Keeps the identity (and so the key's pointer) alive; never read.
    _identity: Option<Arc<Identity>>,
    /// The upstream's verified certificate.
    upstream: Option<PeerIdentity>,
}

impl<B> Lease<B> {
    /// A fresh connection; `key` `None` means it is never pooled.
    pub(crate) fn fresh(
        sender: SendRequest<B>,
        key: Option<PoolKey>,
        identity: Option<Arc<Identity>>,
        upstream: Option<PeerIdentity>,
    ) -> Self {
        Self {
            sender,
            key,
            binding: Binding {
                _identity: identity,
                upstream,
            },
            reused: false,
        }
    }
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
    binding: Binding,
}

/// Idle upstream connections by [`PoolKey`], most recently used last.
pub(crate) struct UpstreamPool<B> {
    idle: Mutex<Entries<B>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

struct Entries<B> {
    by_key: HashMap<PoolKey, Vec<Idle<B>>>,
    last_sweep: Instant,
}

impl<B> core::fmt::Debug for UpstreamPool<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("max_idle_per_key", &self.max_idle_per_key)
            .field("idle_timeout", &self.idle_timeout)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl<B> UpstreamPool<B> {
    /// A pool keeping at most `max_idle_per_key` idle connections per key,
    /// each for at most `idle_timeout`. `max_idle_per_key` 0 disables
    /// pooling.
    pub(crate) fn new(max_idle_per_key: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Entries {
                by_key: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            max_idle_per_key,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<B>> {
        // Entries are only pushed and popped whole, so a poisoned lock
        // still guards consistent data.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Idle connections held now.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().by_key.values().map(Vec::len).sum()
    }

    /// Takes the most recently used idle connection for `key` that is
    /// neither expired nor closed and whose upstream certificate
    /// `revoked` does not reject. The caller still has to wait for it to
    /// be ready (`SendRequest::ready`), which fails if the upstream closed
    /// it meanwhile.
    pub(crate) fn checkout(
        &self,
        key: &PoolKey,
        revoked: impl Fn(&PeerIdentity) -> bool,
    ) -> Option<Lease<B>> {
        let now = Instant::now();
        let mut entries = self.lock();
        let list = entries.by_key.get_mut(key)?;
        let mut found = None;
        while let Some(idle) = list.pop() {
            if now.saturating_duration_since(idle.since) >= self.idle_timeout
                || idle.sender.is_closed()
                || idle.binding.upstream.as_ref().is_some_and(&revoked)
            {
                continue;
            }
            found = Some(idle);
            break;
        }
        if list.is_empty() {
            entries.by_key.remove(key);
        }
        drop(entries);
        found.map(|idle| Lease {
            sender: idle.sender,
            key: Some(key.clone()),
            binding: idle.binding,
            reused: true,
        })
    }

    /// Returns a connection whose last response ended cleanly. Connections
    /// that are not poolable, closed, or over the per-key limit are
    /// dropped, which closes them.
    pub(crate) fn put(&self, lease: Lease<B>) {
        let Some(key) = lease.key else { return };
        if self.max_idle_per_key == 0 || lease.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        // Expired entries of keys nobody asks for any more (an old
        // identity, a removed endpoint) are dropped here, at most once a
        // second, so their sockets do not linger.
        if now.saturating_duration_since(entries.last_sweep) >= Duration::from_secs(1) {
            entries.last_sweep = now;
            let timeout = self.idle_timeout;
            entries.by_key.retain(|_, list| {
                list.retain(|i| {
                    now.saturating_duration_since(i.since) < timeout && !i.sender.is_closed()
                });
                !list.is_empty()
            });
        }
        let list = entries.by_key.entry(key).or_default();
        if list.len() >= self.max_idle_per_key {
            return;
        }
        list.push(Idle {
            sender: lease.sender,
            since: now,
            binding: lease.binding,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Body = Empty<bytes::Bytes>;

    /// A connected `SendRequest` to a one-shot server that answers every
    /// request with 200 and keeps the connection open.
    async fn sender() -> (SendRequest<Body>, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                }
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        (sender, addr)
    }

    fn key(addr: SocketAddr) -> PoolKey {
        PoolKey::plaintext(EndpointAddress::Ip(addr))
    }

    #[tokio::test]
    async fn returns_connection_for_same_key_only() {
        let pool = UpstreamPool::new(4, Duration::from_secs(30));
        let (s, addr) = sender().await;
        pool.put(Lease::fresh(s, Some(key(addr)), None, None));
        assert_eq!(pool.idle_count(), 1);
        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(pool.checkout(&key(other), |_| false).is_none());
        let lease = pool.checkout(&key(addr), |_| false).expect("pooled");
        assert!(lease.reused);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn unpoolable_and_over_limit_connections_are_dropped() {
        let pool = UpstreamPool::new(1, Duration::from_secs(30));
        let (a, addr) = sender().await;
        let (b, _) = sender().await;
        let (c, _) = sender().await;
        pool.put(Lease::fresh(a, None, None, None));
        assert_eq!(pool.idle_count(), 0, "a lease without key is never pooled");
        pool.put(Lease::fresh(b, Some(key(addr)), None, None));
        pool.put(Lease::fresh(c, Some(key(addr)), None, None));
        assert_eq!(pool.idle_count(), 1, "per-key limit");
    }

    #[tokio::test]
    async fn expired_connections_are_not_reused() {
        let pool = UpstreamPool::new(4, Duration::from_millis(20));
        let (s, addr) = sender().await;
        pool.put(Lease::fresh(s, Some(key(addr)), None, None));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(pool.checkout(&key(addr), |_| false).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn revoked_upstream_is_not_reused() {
        let pool = UpstreamPool::new(4, Duration::from_secs(30));
        let (s, addr) = sender().await;
        let upstream = PeerIdentity {
            spiffe_id: OwnedSpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").expect("id"),
            leaf_sha256_hex: String::new(),
            serial: vec![7],
        };
        pool.put(Lease::fresh(s, Some(key(addr)), None, Some(upstream)));
        assert!(
            pool.checkout(&key(addr), |p| p.serial == [7]).is_none(),
            "a revoked upstream certificate must not carry requests"
        );
    }

    #[tokio::test]
    async fn closed_connections_are_not_reused() {
        let pool = UpstreamPool::new(4, Duration::from_secs(30));
        let (mut s, addr) = sender().await;
        // The server task answers and keeps the socket; make the client
        // side fail by sending a request and dropping the response future
        // (hyper closes an HTTP/1 connection whose request is cancelled).
        s.ready().await.expect("ready");
        drop(s.send_request(http::Request::new(Empty::new())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let closed = s.is_closed() || s.ready().await.is_err();
        assert!(closed, "cancelled request closes the connection");
        pool.put(Lease::fresh(s, Some(key(addr)), None, None));
        assert!(pool.checkout(&key(addr), |_| false).is_none());
    }

    #[test]
    fn mesh_keys_differ_by_identity_expected_ids_and_name() {
        let addr = EndpointAddress::Ip("127.0.0.1:9".parse().expect("addr"));
        let id = |s: &str| OwnedSpiffeId::parse(s).expect("id");
        let a = vec![id("spiffe://cluster.local/ns/a/sa/x")];
        let b = vec![id("spiffe://cluster.local/ns/a/sa/y")];
        let base = PoolKey {
            address: addr.clone(),
            mesh: Some(MeshKey {
                identity: 1,
                expected: a.clone(),
                server_name: "s".to_owned(),
            }),
        };
        let mut other_identity = base.clone();
        if let Some(m) = other_identity.mesh.as_mut() {
            m.identity = 2;
        }
        let mut other_expected = base.clone();
        if let Some(m) = other_expected.mesh.as_mut() {
            m.expected = b;
        }
        let mut other_name = base.clone();
        if let Some(m) = other_name.mesh.as_mut() {
            m.server_name = "t".to_owned();
        }
        assert_ne!(base, other_identity);
        assert_ne!(base, other_expected);
        assert_ne!(base, other_name);
        assert_ne!(base, PoolKey::plaintext(addr));
    }
}
