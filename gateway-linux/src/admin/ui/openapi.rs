//! The OpenAPI 3.1 document of the admin server, served at
//! `/api/v1/openapi.json`.
//!
//! It is written by hand next to the routes and lists every `/api/v1`
//! route: the UI reads it to learn which optional features this build has
//! (edge-node endpoints), and the tests iterate over its paths to check
//! that each one refuses unauthenticated requests — so a route missing
//! here is a route the tests do not cover. Keep it in step with
//! `admin::api`, `admin::ca_api` and `admin::ui`.

use serde_json::{Value, json};

/// A path parameter.
fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string"}})
}

/// An optional query parameter.
fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": {"type": "string"}})
}

fn json_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"type": "object"}}}})
}

fn errors() -> Value {
    json!({
        "401": {"description": "no valid bearer token or session"},
        "403": {"description": "session request without the CSRF token, or cross-site"},
    })
}

/// An operation: summary, parameters, optional request body media type,
/// and the success answer.
fn op(summary: &str, params: Vec<Value>, body: Option<(&str, &str)>, ok: Value) -> Value {
    let mut responses = errors();
    if let Some(map) = responses.as_object_mut() {
        map.insert("200".to_owned(), ok);
    }
    let mut o = json!({"summary": summary, "parameters": params, "responses": responses});
    if let (Some((media, description)), Some(map)) = (body, o.as_object_mut()) {
        map.insert(
            "requestBody".to_owned(),
            json!({"required": true, "description": description,
                   "content": {media: {"schema": {"type": if media == "application/json" { "object" } else { "string" }}}}}),
        );
    }
    o
}

/// An operation that needs no authentication.
fn open(summary: &str, ok: Value) -> Value {
    json!({"summary": summary, "security": [], "responses": {"200": ok}})
}

/// The document.
pub(crate) fn document() -> Value {
    let kind = path_param("kind", "PeerAuthentication or AuthorizationPolicy");
    let namespace = path_param("namespace", "Kubernetes namespace");
    let name = path_param("name", "metadata.name");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "meshgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Administers a meshgate mutual-TLS gateway. Authenticate with `Authorization: Bearer <admin token>`, or with the browser session cookie from `POST /ui/session` plus the session's `X-CSRF-Token` header on every state-changing request."
        },
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the admin token printed at first start"},
            "session": {"type": "apiKey", "in": "cookie", "name": super::session::COOKIE},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token", "description": "required with the session cookie on POST, PUT, PATCH and DELETE"}
        }},
        "security": [{"bearer": []}, {"session": [], "csrf": []}],
        "paths": {
            "/healthz": {"get": open("liveness probe", json!({"description": "ok"}))},
            "/readyz": {"get": open("readiness probe (503 until ready)", json!({"description": "ready"}))},
            "/metrics": {"get": op("Prometheus metrics", vec![], None, json!({"description": "text exposition format"}))},
            "/ui/session": {
                "post": {"summary": "log in: exchange the admin token for a session cookie (rate limited)", "security": [],
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}}}},
                         "responses": {"200": json_response("csrf_token and expires_in_secs; sets the HttpOnly SameSite=Strict session cookie"),
                                       "401": {"description": "wrong token"}, "429": {"description": "too many failed logins (Retry-After)"}}},
                "get": {"summary": "the current session's CSRF token", "security": [{"session": []}],
                        "responses": {"200": json_response("csrf_token and expires_in_secs"), "401": {"description": "not logged in"}}},
                "delete": {"summary": "log out", "security": [{"session": [], "csrf": []}],
                           "responses": {"204": {"description": "logged out"}, "401": {"description": "not logged in"}, "403": {"description": "no CSRF token"}}}
            },
            "/api/v1/openapi.json": {"get": op("this document", vec![], None, json_response("OpenAPI 3.1"))},
            "/api/v1/status": {"get": op("generation, listeners, gateway identity, last rejected change, worker threads", vec![], None, json_response("status"))},
            "/api/v1/policies": {
                "get": op("list policies", vec![query("kind", "filter by kind"), query("namespace", "filter by namespace"), query("format", "`yaml` for one multi-document YAML stream")], None, json_response("items and generation")),
                "post": op("apply Istio YAML (all-or-nothing); 422 with file/document/line/field details when invalid", vec![query("source", "name used in error locations")], Some(("application/yaml", "one or more PeerAuthentication / AuthorizationPolicy documents")), json_response("changes and generation"))
            },
            "/api/v1/policies/delete": {"post": op("delete the resources named in the YAML body", vec![query("source", "name used in error locations")], Some(("application/yaml", "resources to delete")), json_response("changes and generation"))},
            "/api/v1/policies/{kind}/{namespace}/{name}": {
                "get": op("one policy (`?format=yaml` for YAML)", vec![kind.clone(), namespace.clone(), name.clone(), query("format", "`yaml`")], None, json_response("the policy")),
                "delete": op("delete one API-applied policy", vec![kind, namespace.clone(), name], None, json_response("changes and generation"))
            },
            "/api/v1/services": {"get": op("services with per-port effective mode and the deciding policies", vec![query("namespace", "filter"), query("port", "only this port")], None, json_response("items and generation"))},
            "/api/v1/services/{host}": {"get": op("one service (what `meshgate check` prints)", vec![path_param("host", "service host or short name"), query("port", "only this port")], None, json_response("the service"))},
            "/api/v1/namespaces": {"get": op("namespaces: effective mode and its source, policies, services, plaintext clients seen in the last 15 minutes", vec![], None, json_response("items, generation, traffic_recorded"))},
            "/api/v1/namespaces/{namespace}": {"get": op("one namespace", vec![namespace.clone()], None, json_response("the namespace"))},
            "/api/v1/namespaces/{namespace}/preview": {"get": op("what switching the namespace to `mode` would cut off, from recently seen traffic", vec![namespace.clone(), json!({"name": "mode", "in": "query", "required": true, "schema": {"type": "string", "enum": ["STRICT", "PERMISSIVE", "DISABLE"]}})], None, json_response("changes (ports whose mode changes), affected clients, unaffected mTLS peers"))},
            "/api/v1/namespaces/{namespace}/mode": {"put": op("switch the namespace's mode (writes its namespace-wide PeerAuthentication)", vec![namespace], Some(("application/json", "{\"mode\": \"STRICT\" | \"PERMISSIVE\" | \"DISABLE\"}")), json_response("changes, generation and the namespace"))},
            "/api/v1/connections": {"get": op("open connections and the recent access log, newest first", vec![query("limit", "at most this many entries (default 200)")], None, json_response("recording, active, entries"))},
            "/api/v1/connections/stream": {"get": op("live access-log entries as server-sent events (`entry`, `stats`, `lagged`)", vec![query("backlog", "recent entries to replay first (default 100)")], None, json!({"description": "text/event-stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}))},
            "/api/v1/audit": {"get": op("the audit log (who changed what, when), newest first", vec![query("limit", "at most this many entries (default 200)")], None, json_response("entries"))},
            "/api/v1/ca": {"get": op("CA roots, fingerprints, expiry, issuance counts", vec![], None, json_response("the CA"))},
            "/api/v1/ca/rotate-root": {"post": op("root roll-over: trust a new root next to the old one (phase 1), switch signing after propagation_secs (default 60 % of the default TTL) and re-issue the gateway's certificate (phase 2), drop the old root once nothing it signed is valid; force finishes at once; 409 while one is in progress", vec![], Some(("application/json", "{\"force\": bool, \"propagation_secs\": int} (both optional)")), json_response("the CA, with its roll-over phase"))},
            "/api/v1/certificates": {
                "get": op("the gateway's certificate, unexpired issued certificates and revocations", vec![], None, json_response("gateway, issued, revocations")),
                "post": op("sign a CSR for a SPIFFE ID", vec![], Some(("application/json", "spiffe_id, csr_pem, ttl_secs")), json_response("certificate, chain and trust bundle (PEM)"))
            },
            "/api/v1/revocations": {
                "get": op("revocations in force", vec![], None, json_response("revocations")),
                "post": op("revoke a SPIFFE ID or one serial: new handshakes refused, open connections closed", vec![], Some(("application/json", "{\"spiffe_id\": ...} or {\"serial\": hex}, and \"reason\"")), json_response("the revocation"))
            },
            "/api/v1/edge/nodes": {
                "get": op("edge nodes: state, certificate expiry, live tunnel status (404 when the edge server is not running)", vec![], None, json_response("nodes and tunnel_address")),
                "post": op("create an edge node and its one-time enrollment token (shown only in this answer)", vec![], Some(("application/json", "{namespace, name, ttlSeconds?, listeners?: [{listenPort, host, port}]}")), json!({"description": "201: node, token, tunnelAddress"}))
            },
            "/api/v1/edge/nodes/{name}": {"get": op("one edge node", vec![path_param("name", "node name")], None, json_response("the node"))},
            "/api/v1/edge/nodes/{name}/listeners": {"put": op("replace the node's forwarding rules (pushed at once when connected)", vec![path_param("name", "node name")], Some(("application/json", "{listeners: [{listenPort, host, port}]}")), json_response("the node"))},
            "/api/v1/edge/nodes/{name}/revoke": {"post": op("revoke the node: certificate revoked, tunnel closed, reconnects refused", vec![path_param("name", "node name")], Some(("application/json", "{reason?}")), json_response("the node"))},
            "/api/v1/identity/rotate": {"post": op("re-issue the gateway's own certificate now", vec![], None, json_response("accepted"))}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_responses_and_api_paths_need_auth() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() > 15);
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                assert!(op["responses"].is_object(), "{method} {path}");
                if path.starts_with("/api/v1/") {
                    assert!(
                        op.get("security").is_none(),
                        "{method} {path} must inherit the document's authentication"
                    );
                }
            }
        }
    }
}
