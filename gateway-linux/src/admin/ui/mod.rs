//! The browser UI and the API endpoints only the UI needed.
//!
//! This module owns:
//! - the static assets of `web-ui/`, embedded at compile time
//!   (`include_str!`), so cargo alone builds a gateway that serves its UI;
//! - browser sessions ([`session`]): login with the admin token, the
//!   session cookie, CSRF tokens and login rate limiting — the admin
//!   server's `authenticate` middleware calls [`Sessions::check`];
//! - namespaces, mode switches and their preview ([`namespaces`]);
//! - live and recent connections ([`traffic`]);
//! - certificates, the audit log and the OpenAPI document ([`openapi`]).
//!
//! Routes (the API ones are authenticated by the admin middleware):
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/`, `/ui/assets/*` | the UI (open: no secrets in static files) |
//! | POST, GET, DELETE | `/ui/session` | log in, CSRF token, log out (open; checked here) |
//! | GET | `/api/v1/openapi.json` | the OpenAPI document |
//! | GET | `/api/v1/certificates` | gateway certificate, issued certificates, revocations |
//! | POST | `/api/v1/identity/rotate` | re-issue the gateway's certificate now |
//! | GET | `/api/v1/audit` | the audit log |
//! | | `/api/v1/namespaces...` | see [`namespaces`] |
//! | | `/api/v1/connections...` | see [`traffic`] |

pub(crate) mod namespaces;
pub(crate) mod openapi;
pub(crate) mod session;
pub(crate) mod traffic;

use core::net::SocketAddr;
use core::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

pub(crate) use session::{Actor, SessionCheck, Sessions};

use super::{AdminState, error_response};
use crate::identity::now;
use crate::state::rfc3339;

/// State of the UI shared by its handlers (added as an extension by the
/// admin router).
#[derive(Debug)]
pub(crate) struct UiShared {
    /// Browser sessions and the login limiter.
    pub(crate) sessions: Sessions,
    /// Live connection streams open now.
    pub(crate) streams: AtomicUsize,
}

impl UiShared {
    /// `secure_cookies`: the admin port serves TLS.
    pub(crate) fn new(secure_cookies: bool) -> Self {
        UiShared {
            sessions: Sessions::new(secure_cookies),
            streams: AtomicUsize::new(0),
        }
    }
}

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The UI's files, embedded at compile time from `web-ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../../web-ui/index.html"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../../web-ui/app.js"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../../../web-ui/style.css"),
    },
    Asset {
        path: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../../../web-ui/favicon.svg"),
    },
];

/// Paths the admin middleware lets through without a token or session:
/// the static UI (so the login page can load) and the session endpoint
/// (which checks its own credentials and CSRF token).
pub(crate) fn is_open(path: &str) -> bool {
    path == "/" || path == "/ui/session" || path.starts_with("/ui/assets/")
}

/// The UI routes; the caller adds authentication and the [`UiShared`]
/// extension.
pub(crate) fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/session", post(login).get(session_info).delete(logout))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/identity/rotate", post(rotate_identity))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/namespaces", get(namespaces::list))
        .route("/api/v1/namespaces/{namespace}", get(namespaces::get_one))
        .route(
            "/api/v1/namespaces/{namespace}/preview",
            get(namespaces::preview),
        )
        .route(
            "/api/v1/namespaces/{namespace}/mode",
            put(namespaces::set_mode),
        )
        .route("/api/v1/connections", get(traffic::list))
        .route("/api/v1/connections/stream", get(traffic::stream))
}

fn asset_response(a: &Asset) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        )],
        a.body,
    )
        .into_response()
}

async fn index() -> Response {
    ASSETS.iter().find(|a| a.path == "index.html").map_or_else(
        || error_response(StatusCode::NOT_FOUND, "no UI in this build"),
        asset_response,
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    ASSETS.iter().find(|a| a.path == file).map_or_else(
        || error_response(StatusCode::NOT_FOUND, "no such UI file"),
        asset_response,
    )
}

/// Largest login body read (a token is ~50 bytes).
const MAX_LOGIN_BODY: usize = 4096;

async fn login(
    State(state): State<Arc<AdminState>>,
    Extension(ui): Extension<Arc<UiShared>>,
    req: Request,
) -> Response {
    // The peer address is there when the server was started with connect
    // info; without it, login limiting is global only.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a);
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_LOGIN_BODY).await else {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "login body too large");
    };
    ui.sessions.login(&state.auth, peer, &parts.headers, &body)
}

async fn session_info(Extension(ui): Extension<Arc<UiShared>>, headers: HeaderMap) -> Response {
    ui.sessions.info(&headers)
}

async fn logout(Extension(ui): Extension<Arc<UiShared>>, headers: HeaderMap) -> Response {
    ui.sessions.logout(&headers)
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}

/// Answer to `POST /api/v1/identity/rotate`.
#[derive(Debug, Serialize)]
struct Accepted {
    status: &'static str,
}

async fn rotate_identity(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
) -> Response {
    tracing::info!(
        actor = actor.as_str(),
        "gateway certificate re-issue requested"
    );
    state.identity.renew_now();
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "re-issue requested",
        }),
    )
        .into_response()
}

/// The gateway's own certificate.
#[derive(Debug, Serialize)]
struct GatewayCert {
    spiffe_id: Option<String>,
    not_after: Option<String>,
}

/// An unexpired issued certificate.
#[derive(Debug, Serialize)]
struct IssuedView {
    serial: String,
    spiffe_id: String,
    not_after: String,
    root_id: String,
}

/// A revocation in force.
#[derive(Debug, Serialize)]
struct RevocationView {
    /// A SPIFFE ID or `serial HEX`.
    target: String,
    keep_until: String,
    reason: String,
}

/// Answer to `GET /api/v1/certificates`.
#[derive(Debug, Serialize)]
struct Certificates {
    gateway: GatewayCert,
    issued: Vec<IssuedView>,
    revocations: Vec<RevocationView>,
}

/// `GET /api/v1/certificates` (mounted by `ca_api` next to the POST).
pub(crate) async fn certificates(State(state): State<Arc<AdminState>>) -> Response {
    let status = state.control.status();
    let t = now();
    let mut issued: Vec<IssuedView> = state
        .ca
        .issued(t)
        .into_iter()
        .map(|e| IssuedView {
            serial: e.serial.to_string(),
            spiffe_id: e.spiffe_id,
            not_after: rfc3339(e.not_after),
            root_id: e.root_id,
        })
        .collect();
    issued.sort_by(|a, b| a.not_after.cmp(&b.not_after));
    let revocations = state
        .ca
        .revocations()
        .into_iter()
        .filter(|r| t <= r.keep_until)
        .map(|r| RevocationView {
            target: match &r.target {
                meshgate_ca::RevocationTarget::SpiffeId(id) => id.clone(),
                meshgate_ca::RevocationTarget::Serial(serial) => format!("serial {serial}"),
            },
            keep_until: rfc3339(r.keep_until),
            reason: r.reason,
        })
        .collect();
    Json(Certificates {
        gateway: GatewayCert {
            spiffe_id: status.identity,
            not_after: status.identity_expires,
        },
        issued,
        revocations,
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

/// One audit-log entry as the API shows it.
#[derive(Debug, Serialize)]
struct AuditView {
    seq: u64,
    /// RFC 3339.
    time: String,
    actor: String,
    /// `put` or `delete`.
    action: meshgate_ca::store::AuditAction,
    /// The record changed.
    key: String,
    note: String,
}

/// Answer to `GET /api/v1/audit`.
#[derive(Debug, Serialize)]
struct AuditList {
    /// Newest first.
    entries: Vec<AuditView>,
    /// Entries in the log in total.
    total: usize,
}

/// `GET /api/v1/audit`: the state store's audit log, newest first.
async fn audit(State(state): State<Arc<AdminState>>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(200).min(2000);
    match state.control.audit_log(0) {
        Ok(entries) => {
            let total = entries.len();
            Json(AuditList {
                entries: entries
                    .into_iter()
                    .rev()
                    .take(limit)
                    .map(|e| AuditView {
                        seq: e.seq,
                        time: rfc3339(e.at),
                        actor: e.actor,
                        action: e.action,
                        key: e.key,
                        note: e.note,
                    })
                    .collect(),
                total,
            })
            .into_response()
        }
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the audit log: {e}"),
        ),
    }
}
