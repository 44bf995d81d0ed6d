//! Connections from the gateway to a service's endpoints.
//!
//! Legacy upstreams get plaintext TCP. Mesh upstreams get mTLS originated
//! with the gateway's identity, and the upstream must present one of the
//! SPIFFE IDs the endpoint is declared to run as (secure naming, see
//! `identity::SecureNamingVerifier`); anything else is refused with
//! [`UpstreamError::SecureNaming`], logged, and never retried against
//! another endpoint, because it is a security signal, not an outage.

use core::time::Duration;
use std::io;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::identity::{Identity, IdentityError, Protocol};
use super::peer::{self, PeerIdentity};
use super::pool::PoolKey;
use super::snapshot::{Endpoint, EndpointAddress, Route, UpstreamSecurity};

/// Any bidirectional byte stream to an upstream.
pub(crate) trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpstreamIo for T {}

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The service port has no endpoints.
    #[error("no healthy upstream: {service} has no endpoints")]
    NoEndpoints {
        /// The destination.
        service: String,
    },
    /// Every endpoint refused or timed out.
    #[error(
        "no healthy upstream: {tried} endpoint(s) of {service} unreachable (last error: {last})"
    )]
    Unreachable {
        /// The destination.
        service: String,
        /// How many endpoints were tried.
        tried: usize,
        /// The last connect error.
        last: io::Error,
    },
    /// The upstream's certificate did not carry an expected SPIFFE ID (or
    /// did not chain to the trust bundle).
    #[error("upstream {endpoint} failed secure naming (expected {expected}): {detail}")]
    SecureNaming {
        /// The endpoint dialled.
        endpoint: String,
        /// The SPIFFE IDs accepted.
        expected: String,
        /// What the TLS layer reported.
        detail: String,
    },
    /// The mTLS handshake failed for another reason.
    #[error("upstream {endpoint} TLS handshake failed: {detail}")]
    Tls {
        /// The endpoint dialled.
        endpoint: String,
        /// What the TLS layer reported.
        detail: String,
    },
    /// The gateway's identity could not produce a client configuration.
    #[error("gateway identity unusable for mTLS origination: {0}")]
    Identity(#[from] IdentityError),
}

impl UpstreamError {
    /// A short reason for logs and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            UpstreamError::NoEndpoints { .. } | UpstreamError::Unreachable { .. } => {
                "no_healthy_upstream"
            }
            UpstreamError::SecureNaming { .. } => "upstream_secure_naming_failed",
            UpstreamError::Tls { .. } => "upstream_tls_failed",
            UpstreamError::Identity(_) => "gateway_identity_unusable",
        }
    }
}

async fn tcp_connect(address: &EndpointAddress) -> io::Result<TcpStream> {
    match address {
        EndpointAddress::Ip(a) => TcpStream::connect(a).await,
        EndpointAddress::Dns(host, port) => TcpStream::connect((host.as_str(), *port)).await,
        EndpointAddress::Edge { node, .. } => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            format!("edge node {node} is reached through its tunnel"),
        )),
    }
}

/// A connected endpoint.
pub(crate) struct Dialed {
    /// The byte stream (mTLS already established for mesh endpoints).
    pub(crate) io: Box<dyn UpstreamIo>,
    /// The endpoint's display address.
    pub(crate) shown: String,
    /// For mesh endpoints: the upstream's verified certificate.
    pub(crate) upstream: Option<PeerIdentity>,
}

/// Why one endpoint could not be used.
pub(crate) enum DialError {
    /// Unreachable: the next endpoint may be tried.
    Next(io::Error),
    /// A security signal or a local problem: do not try other endpoints.
    Fatal(UpstreamError),
}

/// Connects to one endpoint of `route`, trying endpoints in turn until one
/// accepts the TCP connection. With `passthrough` (DISABLE: the client's
/// own TLS goes through untouched) no mTLS is originated even to a mesh
/// endpoint. Returns the stream and the endpoint's display address.
pub(crate) async fn connect(
    route: &Route,
    identity: &Identity,
    protocol: Protocol,
    connect_timeout: Duration,
    passthrough: bool,
    edge: Option<&dyn super::authenticated::EdgeConnector>,
) -> Result<(Box<dyn UpstreamIo>, String), UpstreamError> {
    let mut tried = 0;
    let mut last = None;
    for endpoint in route.endpoints_in_turn() {
        tried += 1;
        match dial(
            &endpoint,
            route,
            identity,
            protocol,
            connect_timeout,
            passthrough,
            edge,
        )
        .await
        {
            Ok(d) => return Ok((d.io, d.shown)),
            Err(DialError::Next(e)) => last = Some(e),
            Err(DialError::Fatal(e)) => return Err(e),
        }
    }
    Err(exhausted(route, tried, last))
}

/// The error after `tried` endpoints failed (`last` is the last failure).
pub(crate) fn exhausted(route: &Route, tried: usize, last: Option<io::Error>) -> UpstreamError {
    let service = route.destination();
    match last {
        None => UpstreamError::NoEndpoints { service },
        Some(last) => UpstreamError::Unreachable {
            service,
            tried,
            last,
        },
    }
}

/// The server name sent to a mesh endpoint: the service's first host, else
/// the address dialled.
fn mesh_server_name(route: &Route, tcp: &TcpStream) -> ServerName<'static> {
    route
        .service
        .spec
        .hosts
        .first()
        .and_then(|h| ServerName::try_from(h.clone()).ok())
        .or_else(|| {
            tcp.peer_addr()
                .ok()
                .map(|a| ServerName::IpAddress(a.ip().into()))
        })
        .unwrap_or_else(|| ServerName::IpAddress(core::net::Ipv4Addr::LOCALHOST.into()))
}

/// Connects to `endpoint` (see [`connect`]).
pub(crate) async fn dial(
    endpoint: &Endpoint,
    route: &Route,
    identity: &Identity,
    protocol: Protocol,
    connect_timeout: Duration,
    passthrough: bool,
    edge: Option<&dyn super::authenticated::EdgeConnector>,
) -> Result<Dialed, DialError> {
    let shown = endpoint.address.to_string();
    if let EndpointAddress::Edge { node, .. } = &endpoint.address {
        // The tunnel is the mTLS hop; the device speaks plaintext.
        let host = route.service.name();
        let attempt = match edge {
            Some(c) => c.connect(node, host, route.port().number).await,
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no edge server running",
            )),
        };
        return match attempt {
            Ok(io) => Ok(Dialed {
                io,
                shown,
                upstream: None,
            }),
            Err(e) => {
                tracing::debug!(endpoint = %shown, error = %e, "edge device connect failed");
                Err(DialError::Next(e))
            }
        };
    }
    let tcp = match tokio::time::timeout(connect_timeout, tcp_connect(&endpoint.address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %shown, error = %e, "upstream connect failed");
            return Err(DialError::Next(e));
        }
        Err(_) => {
            return Err(DialError::Next(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    match &endpoint.upstream {
        UpstreamSecurity::Mesh { identities } if !passthrough => {
            let expected = identities
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            let config = identity
                .client_config(identities.clone(), protocol)
                .map_err(|e| DialError::Fatal(e.into()))?;
            let name = mesh_server_name(route, &tcp);
            let handshake = TlsConnector::from(config).connect(name, tcp);
            match tokio::time::timeout(connect_timeout, handshake).await {
                Ok(Ok(tls)) => {
                    let upstream = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| peer::peer_of(leaf).ok());
                    Ok(Dialed {
                        io: Box::new(tls),
                        shown,
                        upstream,
                    })
                }
                Ok(Err(e)) => Err(DialError::Fatal(classify_tls_error(shown, expected, &e))),
                Err(_) => Err(DialError::Fatal(UpstreamError::Tls {
                    endpoint: shown,
                    detail: "handshake timed out".to_owned(),
                })),
            }
        }
        _ => Ok(Dialed {
            io: Box::new(tcp),
            shown,
            upstream: None,
        }),
    }
}

/// The pool key of HTTP connections to `endpoint` made with `identity`;
/// `None` for endpoints whose connections are never pooled (edge tunnel
/// streams, which the edge server multiplexes itself).
pub(crate) fn pool_key(
    endpoint: &Endpoint,
    route: &Route,
    identity: &Arc<Identity>,
) -> Option<PoolKey> {
    match (&endpoint.address, &endpoint.upstream) {
        (EndpointAddress::Edge { .. }, _) => None,
        (address, UpstreamSecurity::Plaintext) => Some(PoolKey::plaintext(address.clone())),
        (address, UpstreamSecurity::Mesh { identities }) => Some(PoolKey::mesh(
            address.clone(),
            identity,
            identities.clone(),
            route
                .service
                .spec
                .hosts
                .first()
                .cloned()
                .unwrap_or_else(|| address.to_string()),
        )),
    }
}

fn classify_tls_error(endpoint: String, expected: String, e: &io::Error) -> UpstreamError {
    let detail = e.to_string();
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(_)) => {
            tracing::warn!(%endpoint, %expected, %detail, "refusing upstream: secure naming failed");
            UpstreamError::SecureNaming {
                endpoint,
                expected,
                detail,
            }
        }
        _ => UpstreamError::Tls { endpoint, detail },
    }
}
