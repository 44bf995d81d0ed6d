//! The admin server (axum) on its own port: health probes, Prometheus
//! metrics and the authenticated JSON API under `/api/v1/`.
//!
//! Only `/healthz` and `/readyz` are open. Every other path — including
//! unknown ones, so that the route table cannot be probed — needs
//! `Authorization: Bearer <admin token>` (see [`token`]). The API's JSON
//! shapes are in [`types`]; the handlers in [`api`] translate between them
//! and the control plane ([`crate::state::ControlPlane`]).

pub(crate) mod api;
pub(crate) mod ca_api;
pub(crate) mod token;
pub(crate) mod types;

use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::ControlPlane;
use token::AdminAuth;
use types::ApiError;

/// Everything the admin handlers share.
pub(crate) struct AdminState {
    /// Checks bearer tokens.
    pub(crate) auth: AdminAuth,
    /// True once configuration and identity are loaded and every listener
    /// is bound; `/readyz` reports it.
    pub(crate) ready: AtomicBool,
    /// The control plane the API reads and changes.
    pub(crate) control: Arc<ControlPlane>,
    /// The built-in CA.
    pub(crate) ca: Arc<meshgate_ca::CertificateAuthority>,
    /// Forces a re-issue of the gateway's identity.
    pub(crate) identity: crate::identity::IdentityHandle,
    /// Extra Prometheus text (the data plane's metrics).
    pub(crate) extra_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl core::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Builds the admin router.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .merge(ca_api::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Paths that answer without a token: the probes a kubelet or load
/// balancer calls, which must not need a secret.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

async fn authenticate(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| state.auth.verify_header(v));
    if ok {
        next.run(req).await
    } else {
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            "missing or invalid admin token (send Authorization: Bearer <token>)",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"meshgate\""),
        );
        resp
    }
}

/// Headers on every admin answer: nothing here may be cached by a proxy
/// or browser (tokens, keys, policies), sniffed as another type, or framed.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        {
            let mut text = state.control.render_metrics();
            if let Some(extra) = &state.extra_metrics {
                text.push_str(&extra());
            }
            text
        },
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such admin endpoint")
}

/// A JSON error answer with no details.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = ApiError {
        error: message.to_owned(),
        details: Vec::new(),
    };
    (status, axum::Json(body)).into_response()
}
