//! Bridge to meshgate-core's policy validation (Istio's
//! `ValidatePeerAuthentication` / `ValidateAuthorizationPolicy` rules).
//!
//! Core reports field paths in the same form this crate records while
//! decoding (`spec.rules[0].from[1].source.principals[2]`), so
//! [`crate::source`] can point each error at its line.

use meshgate_core::policy::{validate_authorization_policy, validate_peer_authentication};

use crate::error::ErrorKind;
use crate::resource::Resource;

/// Core's verdict on one decoded policy: (field path, problem) pairs, empty
/// when valid. Networking resources are validated while building services.
pub(crate) fn policy(resource: &Resource) -> Vec<(String, ErrorKind)> {
    let result = match resource {
        Resource::Peer(p) => validate_peer_authentication(p),
        Resource::Authz(a) => validate_authorization_policy(a),
        Resource::ServiceEntry(_) | Resource::WorkloadEntry(_) => Ok(()),
    };
    result
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.field, ErrorKind::Validation(e.kind)))
        .collect()
}
