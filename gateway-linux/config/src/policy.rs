//! Loading Istio security policies (PeerAuthentication,
//! AuthorizationPolicy) from YAML text, files and directories.
//!
//! Accepted: `apiVersion: security.istio.io/v1` or `v1beta1`; multi-document
//! streams (`---`, empty documents skipped); `kind: List` with `items`.
//! Every resource is checked against Istio's schema (unknown fields are
//! errors) and then against meshgate-core's validation (Istio's rules such as
//! "portLevelMtls needs a selector"). A load is all-or-nothing: on any
//! problem the caller gets every diagnostic and no policies, so a live
//! reload can keep the previous set.

use std::path::PathBuf;

use meshgate_core::mtls::MtlsMode;
use meshgate_core::policy::{AuthorizationPolicy, ObjectMeta, PeerAuthentication};
use meshgate_core::time::UnixTime;

use crate::error::{ConfigErrors, ErrorKind};
use crate::resource::{Accept, Resource};
use crate::source::{Located, check_duplicates, decode_source, expand, read_file};

/// One Istio security resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `kind: PeerAuthentication`.
    PeerAuthentication(PeerAuthentication),
    /// `kind: AuthorizationPolicy`.
    AuthorizationPolicy(AuthorizationPolicy),
}

impl Policy {
    /// The resource kind as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::PeerAuthentication(_) => "PeerAuthentication",
            Policy::AuthorizationPolicy(_) => "AuthorizationPolicy",
        }
    }

    /// Name, namespace and creation time.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Policy::PeerAuthentication(p) => &p.meta,
            Policy::AuthorizationPolicy(a) => &a.meta,
        }
    }
}

/// The namespace-wide PeerAuthentication that switching a namespace's mode
/// writes: named `default` (Istio's convention), no selector, no port
/// overrides. Serialize it with [`crate::emit::to_yaml`].
pub fn namespace_peer_authentication(
    namespace: &str,
    mode: MtlsMode,
    creation: UnixTime,
) -> PeerAuthentication {
    PeerAuthentication {
        meta: ObjectMeta {
            name: "default".to_owned(),
            namespace: namespace.to_owned(),
            creation,
        },
        selector: None,
        mode,
        port_level_mtls: Vec::new(),
    }
}

/// The policies of one load, split by kind, each in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Every PeerAuthentication.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// Every AuthorizationPolicy.
    pub authorization_policies: Vec<AuthorizationPolicy>,
}

impl PolicySet {
    /// The two lists, for callers that keep them apart.
    pub fn into_parts(self) -> (Vec<PeerAuthentication>, Vec<AuthorizationPolicy>) {
        (self.peer_authentications, self.authorization_policies)
    }
}

impl FromIterator<Policy> for PolicySet {
    fn from_iter<I: IntoIterator<Item = Policy>>(iter: I) -> Self {
        let mut set = PolicySet::default();
        for p in iter {
            match p {
                Policy::PeerAuthentication(p) => set.peer_authentications.push(p),
                Policy::AuthorizationPolicy(a) => set.authorization_policies.push(a),
            }
        }
        set
    }
}

fn into_policies(items: Vec<Located>) -> Vec<Policy> {
    items
        .into_iter()
        .filter_map(|item| match item.resource {
            Resource::Peer(p) => Some(Policy::PeerAuthentication(p)),
            Resource::Authz(a) => Some(Policy::AuthorizationPolicy(a)),
            // The policy decoder never yields networking kinds.
            Resource::ServiceEntry(_) | Resource::WorkloadEntry(_) => None,
        })
        .collect()
}

/// Runs meshgate-core's validation on a decoded policy; the paths it
/// returns are relative to the resource (`spec.portLevelMtls`).
fn validate(resource: &Resource) -> Vec<(String, ErrorKind)> {
    crate::validate::policy(resource)
}

/// Parses one YAML stream of security policies, in stream order.
///
/// `file` names the source in diagnostics (a path, or e.g. `-` for stdin).
/// Resources without `metadata.creationTimestamp` get `default_creation`
/// (normally the time the gateway first saw them). Duplicate (kind,
/// namespace, name) in the stream is an error.
///
/// # Errors
/// Every syntax, schema and validation problem, each with its document,
/// line, column and field.
pub fn parse_policies(
    file: &str,
    source: &str,
    default_creation: UnixTime,
) -> Result<Vec<Policy>, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let items = decode_source(
        source,
        file,
        Accept::Policies,
        default_creation,
        &validate,
        &mut errors,
    );
    check_duplicates(&items, &mut errors);
    errors.into_result(into_policies(items))
}

/// Loads policies from files and directories (every `*.yaml`, `*.yml` and
/// `*.json` directly inside a directory, sorted by name, dot-files skipped).
///
/// Used at startup and for live reload: the caller swaps the new set in
/// only if this returns `Ok`. Duplicate (kind, namespace, name) across all
/// files is an error naming both places.
///
/// # Errors
/// Every unreadable path and every problem in every file.
pub fn load_policies(
    paths: &[PathBuf],
    default_creation: UnixTime,
) -> Result<PolicySet, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut items = Vec::new();
    for file in expand(paths, &mut errors) {
        match read_file(&file) {
            Ok(src) => items.extend(decode_source(
                &src,
                &file.display().to_string(),
                Accept::Policies,
                default_creation,
                &validate,
                &mut errors,
            )),
            Err(e) => errors.extend(e),
        }
    }
    check_duplicates(&items, &mut errors);
    errors.into_result(into_policies(items).into_iter().collect())
}
