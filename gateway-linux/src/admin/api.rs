//! The JSON API under `/api/v1/` (authenticated by [`super::authenticate`]).
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/v1/status` | generation, listeners, identity, last rejected change |
//! | GET | `/api/v1/policies?kind=&namespace=` | policies with origin, age, YAML |
//! | GET | `/api/v1/policies/{kind}/{namespace}/{name}` | one policy (`?format=yaml` for raw YAML) |
//! | POST | `/api/v1/policies?source=NAME` | apply Istio YAML (body), all-or-nothing |
//! | POST | `/api/v1/policies/delete?source=NAME` | delete the resources named in the YAML body |
//! | DELETE | `/api/v1/policies/{kind}/{namespace}/{name}` | delete one API-applied policy |
//! | GET | `/api/v1/services?namespace=` | services, per-port effective mode and deciding policies |
//! | GET | `/api/v1/services/{host}?port=` | one service (what `meshgate check` prints) |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use meshgate_config::policy::Policy;
use meshgate_core::policy::{Action, Workload};
use serde::Deserialize;

use super::types::{
    ApiError, DecidingPolicy, PolicyItem, PolicyList, PortView, ResourceRef, ServiceList,
    ServiceView,
};
use super::ui::Actor;
use super::{AdminState, error_response};
use crate::state::{ChangeError, Config, PolicyEntry, ServiceInfo, key_of, rfc3339};

/// Largest YAML body accepted by apply/delete (the config loader's file
/// limit would be far more than any admin needs in one request).
const MAX_YAML_BODY: usize = 1024 * 1024;

/// The API routes; the caller adds authentication.
pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/policies", get(list_policies).post(apply))
        .route("/api/v1/policies/delete", post(delete_yaml))
        .route(
            "/api/v1/policies/{kind}/{namespace}/{name}",
            get(get_policy).delete(delete_one),
        )
        .route("/api/v1/services", get(list_services))
        .route("/api/v1/services/{host}", get(get_service))
}

async fn status(State(state): State<Arc<AdminState>>) -> Json<super::types::Status> {
    Json(state.control.status())
}

#[derive(Debug, Deserialize)]
struct SourceQuery {
    source: Option<String>,
}

pub(crate) fn change_error(e: &ChangeError) -> Response {
    let status = if e.is_client_error() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let status = match e {
        ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
        ChangeError::DefinedInFile { .. } => StatusCode::CONFLICT,
        _ => status,
    };
    (
        status,
        Json(ApiError {
            error: first_line(&e.to_string()),
            details: e.details(),
        }),
    )
        .into_response()
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or(s)
        .trim_end_matches(':')
        .to_owned()
}

fn body_text(body: &axum::body::Bytes) -> Result<&str, (StatusCode, &'static str)> {
    if body.len() > MAX_YAML_BODY {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "YAML body larger than 1 MiB"));
    }
    core::str::from_utf8(body).map_err(|_| (StatusCode::BAD_REQUEST, "the YAML body is not UTF-8"))
}

async fn apply(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<SourceQuery>,
    body: axum::body::Bytes,
) -> Response {
    yaml_change(&state, &actor, q, &body, YamlChange::Apply).await
}

async fn delete_yaml(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<SourceQuery>,
    body: axum::body::Bytes,
) -> Response {
    yaml_change(&state, &actor, q, &body, YamlChange::Delete).await
}

/// What a YAML body asks for: `meshgate apply -f` or `meshgate delete -f`.
#[derive(Clone, Copy)]
enum YamlChange {
    Apply,
    Delete,
}

async fn yaml_change(
    state: &AdminState,
    actor: &Actor,
    q: SourceQuery,
    body: &axum::body::Bytes,
    change: YamlChange,
) -> Response {
    let text = match body_text(body) {
        Ok(t) => t,
        Err((status, msg)) => return error_response(status, msg),
    };
    let origin = q.source.unwrap_or_else(|| "request".to_owned());
    let result = match change {
        YamlChange::Apply => {
            state
                .control
                .apply_yaml(&origin, text, actor.as_str())
                .await
        }
        YamlChange::Delete => {
            state
                .control
                .delete_yaml(&origin, text, actor.as_str())
                .await
        }
    };
    match result {
        Ok(result) => Json(result).into_response(),
        Err(e) => change_error(&e),
    }
}

async fn delete_one(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Response {
    let Some(kind) = canonical_kind(&kind) else {
        return error_response(StatusCode::NOT_FOUND, "unknown policy kind");
    };
    let key = (kind.to_owned(), namespace, name);
    match state.control.delete_keys(vec![key], actor.as_str()).await {
        Ok(result) => Json(result).into_response(),
        Err(e) => change_error(&e),
    }
}

/// Accepts the kind as written in YAML or in kubectl's lower-case forms.
fn canonical_kind(kind: &str) -> Option<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "peerauthentication" | "peerauthentications" | "pa" => Some("PeerAuthentication"),
        "authorizationpolicy" | "authorizationpolicies" | "ap" => Some("AuthorizationPolicy"),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct PolicyQuery {
    kind: Option<String>,
    namespace: Option<String>,
    format: Option<String>,
}

pub(crate) fn summary(p: &Policy) -> String {
    match p {
        Policy::PeerAuthentication(pa) => {
            let mut s = pa.mode.as_str().to_owned();
            if pa
                .selector
                .as_ref()
                .is_some_and(|sel| !sel.match_labels.is_empty())
            {
                s.push_str(" (workload)");
            }
            for (port, mode) in &pa.port_level_mtls {
                s.push_str(&format!(" {port}:{}", mode.as_str()));
            }
            s
        }
        Policy::AuthorizationPolicy(ap) => {
            let action = match ap.action {
                Action::Allow => "ALLOW",
                Action::Deny => "DENY",
                Action::Audit => "AUDIT",
                Action::Custom => "CUSTOM",
            };
            let dry = if ap.dry_run { " dry-run" } else { "" };
            format!("{action}, {} rule(s){dry}", ap.rules.len())
        }
    }
}

fn policy_item(e: &PolicyEntry) -> PolicyItem {
    let (kind, namespace, name) = key_of(&e.policy);
    PolicyItem {
        resource: ResourceRef {
            kind,
            namespace,
            name,
        },
        origin: e.origin.clone(),
        created: rfc3339(e.policy.meta().creation),
        summary: summary(&e.policy),
        yaml: meshgate_config::emit::to_yaml(&e.policy),
    }
}

fn yaml_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn list_policies(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<PolicyQuery>,
) -> Response {
    let kind = match q.kind.as_deref().map(canonical_kind) {
        Some(None) => return error_response(StatusCode::BAD_REQUEST, "unknown policy kind"),
        Some(Some(k)) => Some(k),
        None => None,
    };
    let config = state.control.current();
    let selected: Vec<&PolicyEntry> = config
        .policies
        .iter()
        .filter(|e| kind.is_none_or(|k| e.policy.kind() == k))
        .filter(|e| {
            q.namespace
                .as_deref()
                .is_none_or(|ns| e.policy.meta().namespace == ns)
        })
        .collect();
    if q.format.as_deref() == Some("yaml") {
        return yaml_response(meshgate_config::emit::policies_to_yaml(
            selected.iter().map(|e| &e.policy),
        ));
    }
    Json(PolicyList {
        items: selected.into_iter().map(policy_item).collect(),
        generation: config.generation,
    })
    .into_response()
}

async fn get_policy(
    State(state): State<Arc<AdminState>>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<PolicyQuery>,
) -> Response {
    let Some(kind) = canonical_kind(&kind) else {
        return error_response(StatusCode::NOT_FOUND, "unknown policy kind");
    };
    let config = state.control.current();
    let key = (kind.to_owned(), namespace, name);
    match config.policies.iter().find(|e| key_of(&e.policy) == key) {
        Some(e) if q.format.as_deref() == Some("yaml") => {
            yaml_response(meshgate_config::emit::to_yaml(&e.policy))
        }
        Some(e) => Json(policy_item(e)).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            &format!("{} {}/{} not found", key.0, key.1, key.2),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct ServiceQuery {
    namespace: Option<String>,
    port: Option<u16>,
}

/// The view of one service: per port, the effective mode and the chain of
/// policies that produced it (core's resolution, nothing recomputed here).
pub(crate) fn service_view(
    config: &Config,
    svc: &ServiceInfo,
    only_port: Option<u16>,
) -> ServiceView {
    let workload = Workload::new(&svc.namespace, &svc.labels);
    let ports = svc
        .ports
        .iter()
        .filter(|p| only_port.is_none_or(|op| op == p.number || op == p.target_port))
        .map(|p| {
            let decision = config.set.resolve_mode(&workload, p.target_port);
            let deciding = decision
                .chain
                .iter()
                .map(|(scope, considered)| DecidingPolicy {
                    resource: ResourceRef {
                        kind: "PeerAuthentication".to_owned(),
                        namespace: considered.policy.namespace.to_owned(),
                        name: considered.policy.name.to_owned(),
                    },
                    scope: scope.to_string(),
                    mode: considered.mode.as_str().to_owned(),
                })
                .collect();
            PortView {
                port: p.number,
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                target_port: p.target_port,
                mode: decision.mode.as_str().to_owned(),
                deciding,
            }
        })
        .collect();
    ServiceView {
        host: svc.hosts.first().cloned().unwrap_or_default(),
        namespace: svc.namespace.clone(),
        labels: svc.labels.clone(),
        service_account: svc.service_account.clone(),
        ports,
        authorization: authorization_for(config, svc),
    }
}

/// AuthorizationPolicies whose scope covers the service's workload: the
/// root namespace's and the workload namespace's, selector-less or with a
/// selector the workload's labels satisfy.
fn authorization_for(config: &Config, svc: &ServiceInfo) -> Vec<ResourceRef> {
    config
        .policies
        .iter()
        .filter_map(|e| match &e.policy {
            Policy::AuthorizationPolicy(ap) => Some(ap),
            Policy::PeerAuthentication(_) => None,
        })
        .filter(|ap| {
            ap.meta.namespace == config.mesh.root_namespace || ap.meta.namespace == svc.namespace
        })
        .filter(|ap| {
            ap.selector.as_ref().is_none_or(|sel| {
                sel.match_labels
                    .iter()
                    .all(|(k, v)| svc.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
        })
        .map(|ap| ResourceRef {
            kind: "AuthorizationPolicy".to_owned(),
            namespace: ap.meta.namespace.clone(),
            name: ap.meta.name.clone(),
        })
        .collect()
}

async fn list_services(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<ServiceQuery>,
) -> Json<ServiceList> {
    let config = state.control.current();
    let mut items: Vec<ServiceView> = config
        .services
        .iter()
        .filter(|s| q.namespace.as_deref().is_none_or(|ns| s.namespace == ns))
        .map(|s| service_view(&config, s, q.port))
        .collect();
    items.sort_by(|a, b| a.host.cmp(&b.host));
    Json(ServiceList {
        items,
        generation: config.generation,
    })
}

async fn get_service(
    State(state): State<Arc<AdminState>>,
    Path(host): Path<String>,
    Query(q): Query<ServiceQuery>,
) -> Response {
    let config = state.control.current();
    let wanted = host.trim_end_matches('.').to_ascii_lowercase();
    let found = config.services.iter().find(|s| {
        s.hosts.iter().any(|h| {
            h.eq_ignore_ascii_case(&wanted) || short_name_matches(h, &wanted, &s.namespace)
        })
    });
    let Some(svc) = found else {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "no service with host {host} behind this gateway (see `meshgate get services`)"
            ),
        );
    };
    let view = service_view(&config, svc, q.port);
    if let Some(port) = q.port
        && view.ports.is_empty()
    {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("service {host} has no port {port}"),
        );
    }
    Json(view).into_response()
}

/// `details` or `details.bookinfo` name `details.bookinfo.svc.cluster.local`,
/// as Kubernetes DNS search paths would.
fn short_name_matches(host: &str, wanted: &str, namespace: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let Some(first) = host.split('.').next() else {
        return false;
    };
    wanted == first || wanted == format!("{first}.{namespace}")
}
