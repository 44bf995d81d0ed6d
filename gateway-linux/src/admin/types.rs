//! The admin API's JSON shapes, shared by the server ([`super`]) and the
//! CLI client ([`crate::client`]). Admin JSON exists only in the gateway:
//! these are views built from core and config types, never fed back into
//! the evaluator.

use serde::{Deserialize, Serialize};

/// Body of every non-2xx answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ApiError {
    /// One-line summary.
    pub(crate) error: String,
    /// Where exactly, for validation errors (one per problem).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) details: Vec<ErrorDetail>,
}

/// One located problem in submitted YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    /// File name (as given by the client, or `-` for standard input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<String>,
    /// 1-based index of the YAML document in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) document: Option<usize>,
    /// 1-based line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<usize>,
    /// 1-based column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) column: Option<usize>,
    /// Field path, e.g. `spec.mtls.mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
    /// What is wrong.
    pub(crate) message: String,
}

impl core::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut wrote = false;
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            wrote = true;
        }
        if let Some(line) = self.line {
            write!(f, "{}line {line}", if wrote { ":" } else { "" })?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
            wrote = true;
        }
        if let Some(doc) = self.document {
            write!(f, "{}document {doc}", if wrote { " (" } else { "" })?;
            if wrote {
                f.write_str(")")?;
            }
            wrote = true;
        }
        if let Some(field) = &self.field {
            write!(f, "{}field {field}", if wrote { ": " } else { "" })?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Identifies one policy resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct ResourceRef {
    /// `PeerAuthentication` or `AuthorizationPolicy`.
    pub(crate) kind: String,
    /// `metadata.namespace`.
    pub(crate) namespace: String,
    /// `metadata.name`.
    pub(crate) name: String,
}

impl core::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}.{}", self.kind, self.namespace, self.name)
    }
}

/// What `apply` did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChangeKind {
    /// It did not exist.
    Created,
    /// It existed with different content.
    Configured,
    /// It existed with the same content.
    Unchanged,
    /// It was removed.
    Deleted,
}

/// One entry of an apply/delete answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResourceChange {
    /// Which resource.
    #[serde(flatten)]
    pub(crate) resource: ResourceRef,
    /// What happened.
    pub(crate) change: ChangeKind,
}

/// Answer to `POST /api/v1/policies` and `POST /api/v1/policies/delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChangeResult {
    /// Per resource, in the order of the submitted documents.
    pub(crate) changes: Vec<ResourceChange>,
    /// Configuration generation now serving.
    pub(crate) generation: u64,
}

/// Where a policy came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Origin {
    /// Applied through the admin API (stored in the data directory).
    Api,
    /// Read from one of the gateway's policy files.
    File {
        /// The file.
        path: String,
    },
}

impl core::fmt::Display for Origin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Origin::Api => f.write_str("api"),
            Origin::File { path } => write!(f, "file:{path}"),
        }
    }
}

/// One policy in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PolicyItem {
    /// Which resource.
    #[serde(flatten)]
    pub(crate) resource: ResourceRef,
    /// Where it came from.
    pub(crate) origin: Origin,
    /// Creation time (RFC 3339), which decides conflicts (oldest wins).
    pub(crate) created: String,
    /// Short description: the mode for PeerAuthentication, the action and
    /// rule count for AuthorizationPolicy.
    pub(crate) summary: String,
    /// The resource as Istio YAML.
    pub(crate) yaml: String,
}

/// Answer to `GET /api/v1/policies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PolicyList {
    /// The policies, sorted by kind, namespace, name.
    pub(crate) items: Vec<PolicyItem>,
    /// Configuration generation these come from.
    pub(crate) generation: u64,
}

/// A policy that contributed to a decision, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DecidingPolicy {
    /// Which resource.
    #[serde(flatten)]
    pub(crate) resource: ResourceRef,
    /// `mesh`, `namespace`, `workload` or `port`.
    pub(crate) scope: String,
    /// The mode that scope set (`UNSET` if it inherited).
    pub(crate) mode: String,
}

/// Effective peer authentication of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortView {
    /// Service port number.
    pub(crate) port: u16,
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// `http` or `tcp`.
    pub(crate) protocol: String,
    /// Workload (target) port: the one PeerAuthentication port overrides key on.
    pub(crate) target_port: u16,
    /// `STRICT`, `PERMISSIVE` or `DISABLE`.
    pub(crate) mode: String,
    /// The policies that decided it, outermost first (empty: the default).
    pub(crate) deciding: Vec<DecidingPolicy>,
}

/// One service behind the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceView {
    /// Host, e.g. `details.bookinfo.svc.cluster.local`.
    pub(crate) host: String,
    /// Namespace the service's workloads run in.
    pub(crate) namespace: String,
    /// Workload labels (what policy selectors match).
    pub(crate) labels: Vec<(String, String)>,
    /// Service account of the workload, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) service_account: Option<String>,
    /// Ports with their effective modes.
    pub(crate) ports: Vec<PortView>,
    /// AuthorizationPolicies that apply to the workload.
    pub(crate) authorization: Vec<ResourceRef>,
}

/// Answer to `GET /api/v1/services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceList {
    /// Services sorted by host.
    pub(crate) items: Vec<ServiceView>,
    /// Configuration generation.
    pub(crate) generation: u64,
}

/// Answer to `GET /api/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Status {
    /// Configuration generation now serving (starts at 1, +1 per change).
    pub(crate) generation: u64,
    /// Data-plane listeners: name and bound address.
    pub(crate) listeners: Vec<(String, String)>,
    /// The gateway's own SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<String>,
    /// When the gateway's certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) identity_expires: Option<String>,
    /// The last rejected change, if the most recent change failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
    /// Threads running the gateway (`serve --workers`); 1 is the
    /// single-threaded event loop.
    pub(crate) workers: usize,
}

/// Body of `POST /api/v1/certificates`: sign a CSR for an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IssueRequest {
    /// The SPIFFE ID to certify. The admin is authorised for any identity
    /// in the trust domain; the CSR's own SAN is ignored.
    pub(crate) spiffe_id: String,
    /// PKCS#10 CSR in PEM; proves possession of the key, which never
    /// leaves the requester.
    pub(crate) csr_pem: String,
    /// Requested lifetime in seconds (the CA clamps it to its limits).
    pub(crate) ttl_secs: u64,
}

/// Answer to `POST /api/v1/certificates`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IssueResponse {
    /// The leaf certificate (PEM).
    pub(crate) cert_pem: String,
    /// Leaf followed by intermediates (PEM), what a TLS client presents.
    pub(crate) chain_pem: String,
    /// The mesh trust bundle (PEM), what a TLS client trusts.
    pub(crate) roots_pem: String,
    /// Serial number (hex).
    pub(crate) serial: String,
    /// Expiry (RFC 3339).
    pub(crate) not_after: String,
}

/// One trusted root in `GET /api/v1/ca`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RootView {
    /// meshgate's ID for the root (`root-N`).
    pub(crate) id: String,
    /// SHA-256 fingerprint, `AA:BB:...`.
    pub(crate) fingerprint_sha256: String,
    /// Subject distinguished name.
    pub(crate) subject: String,
    /// Start of validity (RFC 3339).
    pub(crate) not_before: String,
    /// End of validity (RFC 3339).
    pub(crate) not_after: String,
    /// `generated` or `cacerts:DIR`.
    pub(crate) origin: String,
    /// Whether new certificates are signed under it.
    pub(crate) signing: bool,
    /// Certificates issued under it.
    pub(crate) issued_count: u64,
    /// Of those, still valid.
    pub(crate) valid_leaves: u64,
    /// `signing`, `in_use until ...` or `ready` (can be dropped).
    pub(crate) drop_status: String,
}

/// Answer to `GET /api/v1/ca` and `POST /api/v1/ca/rotate-root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CaView {
    /// Trust domain the CA issues for.
    pub(crate) trust_domain: String,
    /// ID of the root new certificates chain to.
    pub(crate) signing_root: String,
    /// Expiry of the signing chain (RFC 3339).
    pub(crate) signing_not_after: String,
    /// Roots in the trust bundle (two during a roll-over).
    pub(crate) roots: Vec<RootView>,
    /// Revocations in force.
    pub(crate) active_revocations: u64,
    /// The root roll-over in progress (absent when none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rollover: Option<RolloverView>,
}

/// A root roll-over in progress, in `CaView`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RolloverView {
    /// 1 (both roots trusted, old signs) or 2 (new signs, old trusted).
    pub(crate) phase: u8,
    /// `trust_both` or `drop_old`.
    pub(crate) phase_name: String,
    /// The root being replaced.
    pub(crate) old_root: String,
    /// The root taking over.
    pub(crate) new_root: String,
    /// When the roll-over started (RFC 3339).
    pub(crate) started_at: String,
    /// Phase 1: when signing switches to the new root (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) switch_at: Option<String>,
    /// Phase 2: when signing switched (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) switched_at: Option<String>,
    /// One line for people.
    pub(crate) description: String,
}

/// Body of `POST /api/v1/ca/rotate-root`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RotateRootRequest {
    /// Finish the roll-over now: switch signing at once and drop the old
    /// root even while certificates it signed are valid.
    #[serde(default)]
    pub(crate) force: bool,
    /// How long both roots are trusted before signing switches, in
    /// seconds (default: 60 % of the CA's default certificate lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) propagation_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_reads_like_a_compiler_message() {
        let d = ErrorDetail {
            file: Some("mtls.yaml".into()),
            document: Some(2),
            line: Some(14),
            column: Some(11),
            field: Some("spec.mtls.mode".into()),
            message: "unknown mode \"STRICTT\"".into(),
        };
        assert_eq!(
            d.to_string(),
            "mtls.yaml:line 14:11 (document 2): field spec.mtls.mode: unknown mode \"STRICTT\""
        );
        let bare = ErrorDetail {
            message: "empty".into(),
            ..ErrorDetail::default()
        };
        assert_eq!(bare.to_string(), "empty");
    }
}
