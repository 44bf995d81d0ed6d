//! Admin API routes for edge nodes, mounted by the admin server (which
//! authenticates every request) next to its own:
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/edge/nodes` | every node with state, certificate, live tunnel status |
//! | POST | `/api/v1/edge/nodes` | create a node (or re-issue its token): `{namespace, name, ttlSeconds?, listeners?}` → `{node, token, tunnelAddress}`; the token is shown only in this answer |
//! | GET | `/api/v1/edge/nodes/{name}` | one node |
//! | PUT | `/api/v1/edge/nodes/{name}/listeners` | replace its forwarding rules `{listeners: [{listenPort, host, port}]}`; pushed at once if connected |
//! | POST | `/api/v1/edge/nodes/{name}/revoke` | revoke `{reason?}`: certificate revoked at the CA, tunnel closed within 250 ms, reconnects refused |

use core::time::Duration;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::registry::{ForwardRule, RegistryError};
use super::{EdgeServer, NodeView};
use crate::admin::error_response;

/// Who changes are attributed to in the audit log.
const ACTOR: &str = "admin-api";

/// The edge routes with their state applied, mergeable into any router.
pub(crate) fn router<S>(edge: Arc<EdgeServer>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/v1/edge/nodes", get(list).post(create))
        .route("/api/v1/edge/nodes/{name}", get(one))
        .route("/api/v1/edge/nodes/{name}/listeners", put(set_listeners))
        .route("/api/v1/edge/nodes/{name}/revoke", post(revoke))
        .with_state(edge)
}

/// `GET /api/v1/edge/nodes`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NodeList<N> {
    pub(crate) nodes: Vec<N>,
    /// The tunnel listener nodes connect to.
    pub(crate) tunnel_address: String,
}

/// `POST /api/v1/edge/nodes` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateRequest {
    pub(crate) namespace: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) ttl_seconds: Option<u64>,
    #[serde(default)]
    pub(crate) listeners: Option<Vec<ForwardRule>>,
}

/// `POST /api/v1/edge/nodes` answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateResponse<N> {
    pub(crate) node: N,
    /// The one-time enrollment token; only ever shown here.
    pub(crate) token: String,
    pub(crate) tunnel_address: String,
}

/// `PUT .../listeners` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenersRequest {
    pub(crate) listeners: Vec<ForwardRule>,
}

/// `POST .../revoke` body.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

fn error(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::BadName { .. }
        | RegistryError::BadTtl(_)
        | RegistryError::BadListener(_)
        | RegistryError::Identity(_) => StatusCode::BAD_REQUEST,
        RegistryError::UnknownNode(_) => StatusCode::NOT_FOUND,
        RegistryError::NameTaken { .. } | RegistryError::Revoked(_) => StatusCode::CONFLICT,
        RegistryError::Random(_) | RegistryError::Store(_) | RegistryError::Ca(_) => {
            tracing::error!(error = %e, "edge node operation failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error_response(status, &e.to_string())
}

async fn list(State(edge): State<Arc<EdgeServer>>) -> Json<NodeList<NodeView>> {
    Json(NodeList {
        nodes: edge.nodes(),
        tunnel_address: edge.tunnel_address(),
    })
}

async fn one(State(edge): State<Arc<EdgeServer>>, Path(name): Path<String>) -> Response {
    match edge.node(&name) {
        Some(n) => Json(n).into_response(),
        None => error(&RegistryError::UnknownNode(name)),
    }
}

async fn create(State(edge): State<Arc<EdgeServer>>, Json(req): Json<CreateRequest>) -> Response {
    let ttl = req.ttl_seconds.map(Duration::from_secs);
    match edge.create_token(&req.namespace, &req.name, ttl, req.listeners, ACTOR) {
        Ok((rec, token)) => {
            let node = edge.node(&rec.name);
            match node {
                Some(node) => (
                    StatusCode::CREATED,
                    Json(CreateResponse {
                        node,
                        token,
                        tunnel_address: edge.tunnel_address(),
                    }),
                )
                    .into_response(),
                None => error(&RegistryError::UnknownNode(rec.name)),
            }
        }
        Err(e) => error(&e),
    }
}

async fn set_listeners(
    State(edge): State<Arc<EdgeServer>>,
    Path(name): Path<String>,
    Json(req): Json<ListenersRequest>,
) -> Response {
    match edge.set_listeners(&name, req.listeners, ACTOR) {
        Ok(rec) => one_or_gone(&edge, rec.name),
        Err(e) => error(&e),
    }
}

async fn revoke(
    State(edge): State<Arc<EdgeServer>>,
    Path(name): Path<String>,
    body: Option<Json<RevokeRequest>>,
) -> Response {
    let reason = body
        .and_then(|Json(b)| b.reason)
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "revoked by administrator".to_owned());
    match edge.revoke(&name, &reason, ACTOR) {
        Ok(rec) => one_or_gone(&edge, rec.name),
        Err(e) => error(&e),
    }
}

fn one_or_gone(edge: &EdgeServer, name: String) -> Response {
    match edge.node(&name) {
        Some(n) => Json(n).into_response(),
        None => error(&RegistryError::UnknownNode(name)),
    }
}
