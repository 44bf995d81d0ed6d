//! The admin server (axum) on its own port: health probes, Prometheus
//! metrics and the authenticated JSON API under `/api/v1/`.
//!
//! Only `/healthz`, `/readyz` and the static browser UI with its login
//! endpoint are open. Every other path — including unknown ones, so that
//! the route table cannot be probed — needs `Authorization: Bearer <admin
//! token>` (see [`token`]) or a browser session cookie, and with the cookie
//! a state-changing request also needs the session's CSRF token (see
//! [`ui::session`]). The API's JSON shapes are in [`types`]; the handlers
//! in [`api`], [`ca_api`] and [`ui`] translate between them and the control
//! plane ([`crate::state::ControlPlane`]).

pub(crate) mod api;
pub(crate) mod ca_api;
pub(crate) mod revoke_api;
pub(crate) mod token;
pub(crate) mod types;
pub(crate) mod ui;

use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::ControlPlane;
use token::AdminAuth;
use types::ApiError;
use ui::{Actor, SessionCheck, UiShared};

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
    /// The edge-node server (routes under `/api/v1/edge/`).
    pub(crate) edge: Option<Arc<crate::edge::EdgeServer>>,
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
    // The admin listener serves plain HTTP in this build (see `serve`), so
    // session cookies cannot be `Secure`: a browser would never send them
    // back. Pass `true` here once the admin port terminates TLS.
    let ui_shared = Arc::new(UiShared::new(false));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .merge(ca_api::routes())
        .merge(match state.edge.clone() {
            Some(edge) => crate::edge::api::router(edge),
            None => Router::new(),
        })
        .merge(revoke_api::routes())
        .merge(ui::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            (state.clone(), ui_shared.clone()),
            authenticate,
        ))
        .layer(Extension(ui_shared))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Paths that answer without a token: the probes a kubelet or load
/// balancer calls, which must not need a secret, and the browser UI's
/// static files and login endpoint.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || ui::is_open(path)
}

/// Lets a request through with a valid bearer token, or with a valid
/// session cookie (plus the CSRF token when it changes state), and records
/// who is acting for the audit log. A request that carries an
/// `Authorization` header is judged by it alone.
async fn authenticate(
    State((state, ui)): State<(Arc<AdminState>, Arc<UiShared>)>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().is_ok_and(|v| state.auth.verify_header(v)));
    let actor = match bearer {
        Some(true) => Some(Actor::Api),
        Some(false) => None,
        None => match ui.sessions.check(req.method(), req.headers()) {
            SessionCheck::Valid => Some(Actor::Ui),
            SessionCheck::Forbidden(why) => return error_response(StatusCode::FORBIDDEN, why),
            SessionCheck::Absent | SessionCheck::Invalid => None,
        },
    };
    match actor {
        Some(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        None => {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                "missing or invalid admin token (send Authorization: Bearer <token>) or session",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"meshgate\""),
            );
            resp
        }
    }
}

/// The UI's Content-Security-Policy: scripts, styles and connections only
/// from this origin, no inline script or style, no plugins, no framing,
/// forms only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Headers on every admin answer: nothing here may be cached by a proxy
/// or browser (tokens, keys, policies), sniffed as another type, framed,
/// leak its URL in a Referer, or run script from elsewhere.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
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
