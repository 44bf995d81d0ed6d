//! The JSON API under `/api/v1/` (authenticated by [`super::authenticate`]).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AdminState;
use super::types::Status;

/// The API routes; the caller adds authentication.
pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/api/v1/status", get(status))
}

async fn status(State(state): State<Arc<AdminState>>) -> Json<Status> {
    Json(state.control.status())
}
