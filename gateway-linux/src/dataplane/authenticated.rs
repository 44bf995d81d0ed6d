//! Entry points for byte streams that arrive already authenticated, and the
//! hook through which the data plane reaches legacy devices behind edge
//! nodes.
//!
//! An edge node holds a mesh identity on behalf of the legacy devices
//! behind it and carries their connections to the gateway as streams inside
//! one mTLS tunnel (module `crate::edge`). Such a stream has no TLS of its
//! own: the tunnel's handshake verified the node's certificate, so the
//! stream is served exactly like a connection from an mTLS peer whose
//! principal is the node's identity — route → effective mode (STRICT is
//! satisfied) → AuthorizationPolicy → proxy, with an XFCC header naming the
//! node for HTTP. The destination is fixed by the node's forwarding rule,
//! not by what the legacy client puts in `Host` (it addressed the node).
//!
//! The other direction — a mesh client calling a service whose endpoint is
//! a device behind a node — goes through [`EdgeConnector`], which the edge
//! module registers with [`super::DataPlane::set_edge_connector`].

use core::future::Future;
use core::net::SocketAddr;
use core::pin::Pin;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use super::http_proxy::{self, ConnContext, ConnSecurity};
use super::identity::Protocol;
pub(crate) use super::outbound::UpstreamIo;
pub(crate) use super::peer::{PeerIdError, PeerIdentity};
use super::tcp_proxy::{self, TcpKind};
use super::{DataPlane, ListenerSpec};

/// What [`EdgeConnector::connect`] returns.
pub(crate) type EdgeConnect<'a> =
    Pin<Box<dyn Future<Output = io::Result<Box<dyn UpstreamIo>>> + Send + 'a>>;

/// Opens a byte stream to the legacy device behind an edge node.
pub(crate) trait EdgeConnector: Send + Sync + core::fmt::Debug {
    /// Connects to the device the node exposes as `host:port` (a mesh
    /// service). Fails like a refused TCP connect when the node is not
    /// connected, does not expose the service or cannot reach the device.
    fn connect<'a>(&'a self, node: &'a str, host: &'a str, port: u16) -> EdgeConnect<'a>;
}

/// The gateway identity in force now (rotations swap it).
pub(crate) fn current_identity(dp: &DataPlane) -> Arc<super::Identity> {
    dp.shared.identity.load_full()
}

/// The SPIFFE identity of a verified peer leaf (for [`serve_stream`]).
pub(crate) fn peer_identity(
    leaf: &rustls_pki_types::CertificateDer<'_>,
) -> Result<PeerIdentity, PeerIdError> {
    super::peer::peer_of(leaf)
}

/// True when `host:port` is a service port the gateway routes to now.
pub(crate) fn has_route(dp: &DataPlane, host: &str, port: u16) -> bool {
    dp.shared.snapshot.load().route(host, port).is_some()
}

/// Serves one stream whose peer was authenticated outside the data plane
/// (an edge node's tunnel stream) to the service `host:port`, as `peer`.
/// `source` is the address the stream came from (the node's tunnel
/// socket), for logs and `source.ip` rules. Returns when the stream ends.
pub(crate) async fn serve_stream<IO>(
    dp: &DataPlane,
    io: IO,
    peer: PeerIdentity,
    source: SocketAddr,
    host: &str,
    port: u16,
    protocol: Protocol,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let started = Instant::now();
    let shared = dp.shared.clone();
    let snapshot = shared.snapshot.load_full();
    // The listener spec pins the destination: an HTTP spec with a service
    // routes every request there whatever `Host` says.
    let listener = Arc::new(ListenerSpec {
        name: "edge".to_owned(),
        port,
        protocol,
        service: Some(host.to_owned()),
    });
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        listener,
        source,
        security: ConnSecurity::Tls { peer: Some(peer) },
        sni: None,
    });
    match protocol {
        Protocol::Http => http_proxy::serve_half_closable(io, ctx).await,
        Protocol::Tcp => {
            let Some(route) = snapshot.route(host, port) else {
                tracing::debug!(%source, host, port, "edge stream to an unknown service");
                return;
            };
            let mode = snapshot.mode(&route);
            tcp_proxy::serve(io, ctx, snapshot, route, mode, TcpKind::Terminated, started).await;
        }
    }
}
