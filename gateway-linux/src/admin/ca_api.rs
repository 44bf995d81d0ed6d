//! CA endpoints of the admin API (authenticated like every `/api/v1/` path).
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/ca` | roots, fingerprints, expiry, issuance counts (`meshgate ca show`) |
//! | POST | `/api/v1/ca/rotate-root` | start a root roll-over (`meshgate ca rotate-root`) |
//! | GET | `/api/v1/certificates` | gateway certificate, issued certificates, revocations ([`super::ui::certificates`]) |
//! | POST | `/api/v1/certificates` | sign a CSR for a SPIFFE ID (`meshgate cert issue`) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use meshgate_ca::{CaSummary, CertificateAuthority, DropStatus};
use meshgate_core::spiffe::SpiffeId;

use super::types::{CaView, IssueRequest, IssueResponse, RootView, RotateRootRequest};
use super::ui::Actor;
use super::{AdminState, error_response};
use crate::identity::now;
use crate::state::rfc3339;

/// The CA routes; the caller adds authentication.
pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/ca", get(show))
        .route("/api/v1/ca/rotate-root", post(rotate_root))
        .route(
            "/api/v1/certificates",
            get(super::ui::certificates).post(issue),
        )
}

/// Builds the `ca show` view from the CA's summary.
pub(crate) fn ca_view(summary: &CaSummary) -> CaView {
    CaView {
        trust_domain: summary.trust_domain.clone(),
        signing_root: summary.signing_root.clone(),
        signing_not_after: rfc3339(summary.signing_not_after),
        roots: summary
            .roots
            .iter()
            .map(|r| RootView {
                id: r.id.clone(),
                fingerprint_sha256: r.fingerprint_sha256.clone(),
                subject: r.subject.clone(),
                not_before: rfc3339(r.not_before),
                not_after: rfc3339(r.not_after),
                origin: r.origin.clone(),
                signing: r.signing,
                issued_count: r.issued_count,
                valid_leaves: u64::try_from(r.valid_leaves).unwrap_or(u64::MAX),
                drop_status: match r.drop_status {
                    DropStatus::Signing => "signing".to_owned(),
                    DropStatus::InUse { until } => format!("in use until {}", rfc3339(until)),
                    DropStatus::Ready => "ready to drop".to_owned(),
                },
            })
            .collect(),
        active_revocations: u64::try_from(summary.active_revocations).unwrap_or(u64::MAX),
    }
}

fn summary_response(ca: &CertificateAuthority) -> Response {
    match ca.summary(now()) {
        Ok(s) => Json(ca_view(&s)).into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn show(State(state): State<Arc<AdminState>>) -> Response {
    summary_response(&state.ca)
}

async fn issue(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<IssueRequest>,
) -> Response {
    let id = match SpiffeId::parse(&req.spiffe_id) {
        Ok(id) => id,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("{:?} is not a SPIFFE ID: {e}", req.spiffe_id),
            );
        }
    };
    let ttl = core::time::Duration::from_secs(req.ttl_secs);
    match state.ca.issue_from_csr(
        req.csr_pem.as_bytes(),
        &id,
        Some(ttl),
        now(),
        actor.as_str(),
    ) {
        Ok(issued) => Json(IssueResponse {
            cert_pem: meshgate_ca::x509::certs_to_pem([&issued.cert]),
            chain_pem: issued.cert_chain_pem(),
            roots_pem: issued.trust_bundle_pem(),
            serial: issued.serial.to_string(),
            not_after: rfc3339(issued.not_after),
        })
        .into_response(),
        // Every issuance refusal is about the request (foreign trust
        // domain, revoked identity, TTL out of range, bad CSR) except
        // storage failures.
        Err(meshgate_ca::CaError::Store(e)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(e) => error_response(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

/// Root roll-over: trust the new root next to the old one, switch signing
/// to it, re-issue the gateway's identity under it. The old root is dropped
/// later by [`drop_retired_roots`] once nothing it signed is still valid,
/// or at once with `force`.
async fn rotate_root(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    body: Option<Json<RotateRootRequest>>,
) -> Response {
    let force = body.is_some_and(|Json(b)| b.force);
    let ca = &state.ca;
    let t = now();
    let old = ca.signing_root();
    let result = ca
        .add_generated_root(t, actor.as_str())
        .and_then(|new| ca.switch_signing(&new, t, actor.as_str()).map(|()| new));
    let new = match result {
        Ok(new) => new,
        Err(e) => return error_response(StatusCode::CONFLICT, &e.to_string()),
    };
    tracing::info!(old = %old, new = %new, "root roll-over: signing switched");
    let dropped = if force {
        ca.drop_root(&old, true, now(), actor.as_str())
    } else {
        Ok(())
    };
    // Re-issue after the trust bundle changed, so the data plane trusts
    // both roots (or, forced, only the new one) and serves a new-root cert.
    state.identity.renew_now();
    if let Err(e) = dropped {
        return error_response(StatusCode::CONFLICT, &e.to_string());
    }
    summary_response(ca)
}

/// Drops every non-signing root whose certificates have all expired (the
/// last step of a roll-over). Called periodically by `serve`; returns
/// whether the trust bundle changed (the identity must then be re-issued).
pub(crate) fn drop_retired_roots(ca: &CertificateAuthority) -> bool {
    let t = now();
    let Ok(summary) = ca.summary(t) else {
        return false;
    };
    let mut changed = false;
    for r in summary.roots {
        if r.drop_status == DropStatus::Ready {
            match ca.drop_root(&r.id, false, t, "meshgate") {
                Ok(()) => {
                    changed = true;
                    tracing::info!(root = %r.id, "root roll-over: old root dropped");
                }
                Err(e) => tracing::warn!(root = %r.id, error = %e, "cannot drop retired root"),
            }
        }
    }
    changed
}
