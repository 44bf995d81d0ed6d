//! Opaque TCP: admission and authorization once per connection, then a
//! bidirectional byte copy to an endpoint of the service.
//!
//! Also carries DISABLE passthrough, where the client's TLS (if any) is
//! not terminated and goes to the upstream untouched.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use meshgate_core::mtls::{MeshIdentity, Presented, admit};
use tokio::io::{AsyncRead, AsyncWrite};

use super::access_log::{AccessEntry, now_rfc3339};
use super::http_proxy::{ConnContext, duration_ms};
use super::identity::Protocol;
use super::metrics::DecisionLabels;
use super::outbound;
use super::snapshot::{AuthzRequest, ModeDecision, Route, Snapshot};

/// How the inbound bytes are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpKind {
    /// Plaintext or TLS the gateway terminated: admit and authorize.
    Terminated,
    /// DISABLE: bytes (maybe a TLS handshake) are not inspected.
    Passthrough,
}

/// Decides and proxies one TCP connection. `started` is the accept time.
pub(crate) async fn serve<IO>(
    mut inbound: IO,
    ctx: Arc<ConnContext>,
    snapshot: Arc<Snapshot>,
    route: Route,
    mode: ModeDecision,
    kind: TcpKind,
    started: Instant,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin,
{
    let shared = &ctx.shared;
    let mut entry = AccessEntry {
        time: String::new(),
        kind: "tcp",
        source: ctx.source.to_string(),
        principal: "-".to_owned(),
        security: "none",
        transport: match kind {
            TcpKind::Passthrough => "passthrough",
            TcpKind::Terminated => ctx.security.transport(),
        },
        destination: route.destination(),
        mode: mode.mode.as_str(),
        decision: "deny",
        reason: String::new(),
        policy: "-".to_owned(),
        method: None,
        path: None,
        status: 0,
        bytes_received: 0,
        bytes_sent: 0,
        duration_ms: 0.0,
        generation: snapshot.generation(),
    };
    let finish = |mut entry: AccessEntry, received: u64, sent: u64| {
        entry.time = now_rfc3339();
        entry.bytes_received = received;
        entry.bytes_sent = sent;
        entry.duration_ms = duration_ms(started.elapsed());
        shared.metrics.connection(DecisionLabels {
            destination: entry.destination.clone(),
            security: entry.security,
            decision: entry.decision,
            reason: entry.reason.clone(),
        });
        shared.access_log.record(entry);
    };

    let presented = match kind {
        TcpKind::Passthrough => Presented::Plaintext,
        TcpKind::Terminated => ctx.security.presented(),
    };
    if matches!(presented, Presented::Plaintext) {
        shared.metrics.plaintext_client(
            &route.service.spec.namespace,
            ctx.source.ip(),
            SystemTime::now(),
        );
    }
    let mesh = MeshIdentity::new(snapshot.trust_domain().borrow());
    let admitted = match admit(mode.mode, presented, &mesh) {
        Ok(a) => a,
        Err(rejection) => {
            entry.reason = super::http_proxy::reason_of_rejection(&rejection).to_owned();
            entry.policy = mode.policy.clone().unwrap_or_else(|| "-".to_owned());
            finish(entry, 0, 0);
            return;
        }
    };
    if let Some(p) = admitted.principal {
        entry.principal = p.as_str().to_owned();
        entry.security = "mutual_tls";
    }
    let authz = snapshot.authorize(
        &route,
        &AuthzRequest {
            source_ip: ctx.source.ip(),
            principal: admitted.principal,
            sni: ctx.sni.as_deref(),
            host: None,
            method: None,
            path: None,
            headers: None,
        },
    );
    entry.reason = authz.reason.to_owned();
    entry.policy = authz.policy.clone().unwrap_or_else(|| "-".to_owned());
    if !authz.allowed {
        // A denied TCP connection is closed, as Envoy's network RBAC does.
        finish(entry, 0, 0);
        return;
    }
    entry.decision = "allow";
    let identity = shared.identity.load_full();
    let upstream = outbound::connect(
        &route,
        &identity,
        Protocol::Tcp,
        shared.options.upstream_connect_timeout,
        kind == TcpKind::Passthrough,
        shared.edge.get().map(|c| &**c),
    )
    .await;
    let (mut upstream, _endpoint) = match upstream {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(destination = %route.destination(), error = %e, "upstream unavailable");
            e.reason().clone_into(&mut entry.reason);
            finish(entry, 0, 0);
            return;
        }
    };
    let (received, sent) = match tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(destination = %route.destination(), error = %e, "TCP proxy ended with an error");
            (0, 0)
        }
    };
    finish(entry, received, sent);
}
