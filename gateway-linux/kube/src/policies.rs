//! Istio security resources read from the API server, turned into
//! meshgate policies.
//!
//! This module owns the conversion of one Kubernetes object
//! (`security.istio.io` PeerAuthentication / AuthorizationPolicy, as a
//! [`DynamicObject`]) into a [`Policy`], reusing meshgate-config's parser
//! (the same schema checks, Istio validation rules and field paths as for
//! files): the object is reduced to `apiVersion`, `kind`, the metadata the
//! parser reads, and `spec`, and handed over as JSON text (JSON is YAML).
//!
//! Each resource is judged on its own, as Istio does: an invalid resource
//! is excluded (and reported) while the valid ones keep applying. A
//! resource only counts as valid if it also compiles on its own in
//! meshgate-core's [`PolicySet`], so the full set built from valid
//! resources cannot fail because of one of them.

use kube::api::DynamicObject;
use meshgate_config::policy::{Policy, parse_policies};
use meshgate_core::policy::{MeshConfig, PolicySet};
use meshgate_core::time::UnixTime;
use serde_json::{Map, Value};

/// The API group of Istio's security resources.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// Versions meshgate reads, newest first. Kubernetes serves one stored
/// object at every served version, so the controller watches only the
/// newest version the cluster serves and sees every resource, whichever
/// version it was applied with.
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// The two kinds meshgate enforces.
pub const POLICY_KINDS: &[&str] = &["PeerAuthentication", "AuthorizationPolicy"];

/// Metadata fields the config parser reads; everything else the API server
/// adds (managedFields, uid, ...) is dropped before parsing.
const KEPT_METADATA: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "annotations",
    "labels",
];

/// Identifies a resource: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// `PeerAuthentication`, `AuthorizationPolicy`, `Service`, ...
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl core::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why one resource was excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidResource {
    /// The resource.
    pub key: ResourceKey,
    /// `apiVersion` it was read at (for the Event's `involvedObject`).
    pub api_version: String,
    /// Its `metadata.uid`, when the API server gave one.
    pub uid: Option<String>,
    /// Its `metadata.resourceVersion` (reports are made once per version).
    pub resource_version: String,
    /// Every problem, one per line, with field paths.
    pub message: String,
}

/// Converts one watched object of `kind` (served as `api_version`) into a
/// policy, or explains why it is invalid.
pub fn convert(
    kind: &str,
    api_version: &str,
    obj: &DynamicObject,
    mesh: MeshConfig<'_>,
    now: UnixTime,
) -> Result<Policy, Box<InvalidResource>> {
    let key = key_of(kind, obj);
    let invalid = |message: String| {
        Box::new(InvalidResource {
            key: key.clone(),
            api_version: api_version.to_owned(),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
            message,
        })
    };
    let text = document_text(kind, api_version, obj).map_err(&invalid)?;
    let origin = format!("kubernetes:{key}");
    let mut policies = parse_policies(&origin, &text, now).map_err(|errors| {
        invalid(
            errors
                .diagnostics()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let policy = match (policies.pop(), policies.is_empty()) {
        (Some(p), true) => p,
        _ => return Err(invalid("expected exactly one resource".to_owned())),
    };
    // Compile it alone: whatever fails here would fail the whole set.
    let (pas, aps): (Vec<_>, Vec<_>) = match &policy {
        Policy::PeerAuthentication(p) => (vec![p.clone()], Vec::new()),
        Policy::AuthorizationPolicy(a) => (Vec::new(), vec![a.clone()]),
    };
    PolicySet::new(mesh, &pas, &aps).map_err(|e| invalid(e.to_string()))?;
    Ok(policy)
}

/// The key of a watched object.
pub fn key_of(kind: &str, obj: &DynamicObject) -> ResourceKey {
    ResourceKey {
        kind: kind.to_owned(),
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

/// The object as the JSON document the config parser reads.
fn document_text(kind: &str, api_version: &str, obj: &DynamicObject) -> Result<String, String> {
    let meta = serde_json::to_value(&obj.metadata).map_err(|e| format!("metadata: {e}"))?;
    let mut kept = Map::new();
    if let Value::Object(fields) = meta {
        for (k, v) in fields {
            if KEPT_METADATA.contains(&k.as_str()) && !v.is_null() {
                kept.insert(k, v);
            }
        }
    }
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    doc.insert("kind".into(), Value::String(kind.to_owned()));
    doc.insert("metadata".into(), Value::Object(kept));
    // A resource without `spec` is Istio's `spec: {}` (for an
    // AuthorizationPolicy: allow nothing), so keep it explicit.
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    doc.insert("spec".into(), spec);
    serde_json::to_string_pretty(&Value::Object(doc)).map_err(|e| format!("encoding: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;
    use meshgate_core::mtls::MtlsMode;

    const MESH: MeshConfig<'static> = MeshConfig {
        root_namespace: "istio-system",
        trust_domain: "cluster.local",
    };

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("object")
    }

    #[test]
    fn strict_namespace_policy_converts_with_creation_time() {
        let obj = object(serde_json::json!({
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "PeerAuthentication",
            "metadata": {
                "name": "default", "namespace": "bookinfo",
                "creationTimestamp": "2024-01-02T03:04:05Z",
                "uid": "u-1", "resourceVersion": "7", "generation": 1,
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {"mtls": {"mode": "STRICT"}}
        }));
        let p = convert(
            "PeerAuthentication",
            "security.istio.io/v1beta1",
            &obj,
            MESH,
            UnixTime::from_secs(1),
        )
        .expect("valid");
        let Policy::PeerAuthentication(pa) = p else {
            panic!("kind")
        };
        assert_eq!(pa.mode, MtlsMode::Strict);
        assert_eq!(pa.meta.namespace, "bookinfo");
        assert_eq!(pa.meta.creation, UnixTime::from_secs(1_704_164_645));
    }

    #[test]
    fn invalid_resource_names_the_field() {
        let obj = object(serde_json::json!({
            "metadata": {"name": "bad", "namespace": "foo", "resourceVersion": "9"},
            "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}
        }));
        let err = convert(
            "PeerAuthentication",
            "security.istio.io/v1",
            &obj,
            MESH,
            UnixTime::from_secs(1),
        )
        .expect_err("port level mTLS without selector");
        assert_eq!(err.key.name, "bad");
        assert_eq!(err.resource_version, "9");
        assert!(err.message.contains("portLevelMtls"), "{}", err.message);
    }

    #[test]
    fn missing_spec_is_an_empty_spec() {
        let ar = ApiResource {
            group: SECURITY_GROUP.into(),
            version: "v1".into(),
            api_version: "security.istio.io/v1".into(),
            kind: "AuthorizationPolicy".into(),
            plural: "authorizationpolicies".into(),
        };
        let obj = DynamicObject::new("deny-all", &ar).within("foo");
        let p = convert(
            "AuthorizationPolicy",
            "security.istio.io/v1",
            &obj,
            MESH,
            UnixTime::from_secs(1),
        )
        .expect("spec {} is valid");
        assert_eq!(p.kind(), "AuthorizationPolicy");
    }
}
