//! CA endpoints of the admin API (authenticated like every `/api/v1/` path).
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/ca` | roots, fingerprints, expiry, issuance counts (`meshgate ca show`) |
//! | POST | `/api/v1/ca/rotate-root` | start a root roll-over, or finish it with `force` (`meshgate ca rotate-root`) |
//! | GET | `/api/v1/certificates` | gateway certificate, issued certificates, revocations ([`super::ui::certificates`]) |
//! | POST | `/api/v1/certificates` | sign a CSR for a SPIFFE ID (`meshgate cert issue`) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use meshgate_ca::{CaSummary, CertificateAuthority, DropStatus, Rollover, RolloverStep};
use meshgate_core::spiffe::SpiffeId;

use super::types::{
    CaView, IssueRequest, IssueResponse, RolloverView, RootView, RotateRootRequest,
};
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
                    DropStatus::Incoming => {
                        "incoming (trusted, signs after propagation)".to_owned()
                    }
                },
            })
            .collect(),
        active_revocations: u64::try_from(summary.active_revocations).unwrap_or(u64::MAX),
        rollover: summary.rollover.as_ref().map(rollover_view),
    }
}

fn rollover_view(r: &Rollover) -> RolloverView {
    let (started_at, switch_at, switched_at) = match r {
        Rollover::TrustBoth {
            started_at,
            switch_at,
            ..
        } => (*started_at, Some(rfc3339(*switch_at)), None),
        Rollover::DropOld {
            started_at,
            switched_at,
            ..
        } => (*started_at, None, Some(rfc3339(*switched_at))),
    };
    RolloverView {
        phase: r.phase(),
        phase_name: r.phase_name().to_owned(),
        old_root: r.old_root().to_owned(),
        new_root: r.new_root().to_owned(),
        started_at: rfc3339(started_at),
        switch_at,
        switched_at,
        description: r.to_string(),
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

/// Root roll-over ("trust both → switch → drop"). Without `force`: starts
/// phase 1 — the new root is trusted next to the old one, which keeps
/// signing for `propagation_secs` (default [`CertificateAuthority::default_propagation`]);
/// [`advance_rollover`] then switches signing and later drops the old
/// root. Refused (409) while a roll-over is in progress. With `force`:
/// finishes the roll-over in progress — or starts one and finishes it — at
/// once, dropping the old root even if certificates it signed are valid.
/// Each change re-issues the gateway's own certificate, so the data plane
/// trusts exactly the CA's bundle and serves a certificate from the
/// signing root.
async fn rotate_root(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    body: Option<Json<RotateRootRequest>>,
) -> Response {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let ca = &state.ca;
    let actor = actor.as_str();
    let propagation = req
        .propagation_secs
        .map_or_else(|| ca.default_propagation(), core::time::Duration::from_secs);
    let t = now();
    if ca.rollover().is_none() {
        match ca.start_rollover(propagation, t, actor) {
            Ok(r) => tracing::info!(
                old = r.old_root(),
                new = r.new_root(),
                propagation_secs = propagation.as_secs(),
                "root roll-over started: both roots trusted"
            ),
            Err(e) => return error_response(StatusCode::CONFLICT, &e.to_string()),
        }
        // The data plane must accept the new root from now on.
        state.identity.renew_now();
    } else if !req.force {
        let msg = meshgate_ca::CaError::RolloverInProgress(
            ca.rollover().map(|r| r.to_string()).unwrap_or_default(),
        );
        return error_response(StatusCode::CONFLICT, &msg.to_string());
    }
    let steps = if req.force {
        ca.finish_rollover(t, actor)
    } else {
        // A zero propagation period switches at once.
        ca.advance_rollover(t, actor)
    };
    match steps {
        Ok(steps) => {
            if !steps.is_empty() {
                log_steps(&steps);
                state.identity.renew_now();
            }
        }
        Err(e) => return error_response(StatusCode::CONFLICT, &e.to_string()),
    }
    summary_response(ca)
}

fn log_steps(steps: &[RolloverStep]) {
    for s in steps {
        match s {
            RolloverStep::Switched { new_root } => {
                tracing::info!(new = %new_root, "root roll-over: signing switched to the new root");
            }
            RolloverStep::Dropped { old_root, forced } => {
                tracing::info!(old = %old_root, forced, "root roll-over: old root dropped; roll-over finished");
            }
        }
    }
}

/// Moves a root roll-over on (switch once the propagation period is over,
/// drop the old root once nothing it signed is valid). Called every second
/// by `serve`; returns whether the trust bundle or the signing root
/// changed (the gateway's identity must then be re-issued).
pub(crate) fn advance_rollover(ca: &CertificateAuthority) -> bool {
    match ca.advance_rollover(now(), "meshgate") {
        Ok(steps) => {
            log_steps(&steps);
            !steps.is_empty()
        }
        Err(e) => {
            tracing::warn!(error = %e, "root roll-over cannot advance; retrying");
            false
        }
    }
}
