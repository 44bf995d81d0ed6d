//! Revocation endpoints of the admin API (issue 4), authenticated like
//! every `/api/v1/` path.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/revocations` | revocations in force (`meshgate cert revoke --list`) |
//! | POST | `/api/v1/revocations` | revoke a SPIFFE ID or one serial (`meshgate cert revoke`) |
//!
//! A revocation is recorded in the CA (persisted; kept until every
//! certificate it covers has expired). From that moment the data plane's
//! TLS verifier refuses new handshakes with the certificate, and this
//! handler asks the data plane to close the open connections of the
//! revoked peer at once (a periodic sweep in `serve` is the safety net).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use meshgate_ca::{Revocation, RevocationTarget, Serial};
use meshgate_core::spiffe::SpiffeId;
use serde::{Deserialize, Serialize};

use super::ui::Actor;
use super::{AdminState, error_response};
use crate::identity::now;
use crate::state::rfc3339;

/// `POST /api/v1/revocations`: exactly one of `spiffe_id` and `serial`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RevokeRequest {
    /// Revoke every certificate of this identity (and refuse new ones
    /// while the revocation is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) spiffe_id: Option<String>,
    /// Revoke one certificate, by its serial in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) serial: Option<String>,
    /// Why (free text, kept in the audit log).
    #[serde(default)]
    pub(crate) reason: String,
}

/// One revocation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RevocationView {
    /// `spiffe_id` or `serial`.
    pub(crate) kind: String,
    /// The SPIFFE ID or the hex serial.
    pub(crate) target: String,
    /// When it was revoked (RFC 3339).
    pub(crate) revoked_at: String,
    /// Enforced until (RFC 3339): the last covered certificate's expiry.
    pub(crate) keep_until: String,
    /// Who revoked it.
    pub(crate) actor: String,
    /// Why.
    pub(crate) reason: String,
}

/// The answer to a revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RevokeResponse {
    /// What was recorded.
    pub(crate) revocation: RevocationView,
    /// Open connections of the revoked peer that were told to close.
    pub(crate) closed_connections: u64,
}

fn view(r: &Revocation) -> RevocationView {
    let (kind, target) = match &r.target {
        RevocationTarget::SpiffeId(id) => ("spiffe_id", id.clone()),
        RevocationTarget::Serial(s) => ("serial", s.to_string()),
    };
    RevocationView {
        kind: kind.to_owned(),
        target,
        revoked_at: rfc3339(r.revoked_at),
        keep_until: rfc3339(r.keep_until),
        actor: r.actor.clone(),
        reason: r.reason.clone(),
    }
}

/// The revocation routes; the caller adds authentication.
pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/api/v1/revocations", get(list).post(revoke))
}

async fn list(State(state): State<Arc<AdminState>>) -> Json<Vec<RevocationView>> {
    Json(state.ca.revocations().iter().map(view).collect())
}

async fn revoke(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<RevokeRequest>,
) -> Response {
    let reason = if req.reason.trim().is_empty() {
        "revoked by operator"
    } else {
        req.reason.trim()
    };
    let t = now();
    let result = match (&req.spiffe_id, &req.serial) {
        (Some(id), None) => match SpiffeId::parse(id) {
            Ok(id) => state.ca.revoke_spiffe_id(&id, reason, t, actor.as_str()),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("{id:?} is not a SPIFFE ID: {e}"),
                );
            }
        },
        (None, Some(hex)) => match Serial::from_hex(hex) {
            Some(serial) => state.ca.revoke_serial(&serial, reason, t, actor.as_str()),
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("{hex:?} is not a hexadecimal serial"),
                );
            }
        },
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "give exactly one of spiffe_id and serial",
            );
        }
    };
    match result {
        Ok(rev) => {
            let closed = state.control.revocations_changed();
            tracing::info!(
                target = %view(&rev).target,
                closed_connections = closed,
                "certificate revoked"
            );
            Json(RevokeResponse {
                revocation: view(&rev),
                closed_connections: u64::try_from(closed).unwrap_or(u64::MAX),
            })
            .into_response()
        }
        Err(meshgate_ca::CaError::UnknownSerial(s)) => error_response(
            StatusCode::NOT_FOUND,
            &format!("no unexpired certificate with serial {s} was issued by this CA"),
        ),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
