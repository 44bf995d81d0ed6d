//! Istio PeerAuthentication and AuthorizationPolicy: data, validation,
//! mode resolution and authorization (feature `alloc`).
//!
//! This module owns every policy decision meshgate makes. Front-ends parse
//! their input (Istio YAML, admin-API JSON) into the plain data of
//! [`model`], build one immutable [`PolicySet`], and ask it two questions:
//!
//! 1. [`PolicySet::resolve_mode`]: which mTLS mode does this workload port
//!    enforce, and which policy said so? Feed the mode to
//!    [`crate::mtls::ClientAuth::for_mode`] before the handshake and to
//!    [`PolicySet::admit`] (or [`crate::mtls::admit`]) after it.
//! 2. [`PolicySet::authorize`]: may this request (peer principal, source
//!    IP, destination, HTTP attributes) proceed, and which rule decided?
//!
//! Both answers borrow from the set and never allocate. Validation alone is
//! available as [`validate_peer_authentication`] and
//! [`validate_authorization_policy`]; [`PolicySet::new`] runs it on every
//! resource and refuses to build if anything is invalid.
//!
//! Where meshgate differs from Istio (all fail closed):
//! - a matching CUSTOM policy denies: meshgate has no external authorizer;
//! - `when` keys Istio knows but meshgate cannot evaluate (`request.auth.*`,
//!   `remote.ip`, `destination.ip`, …) and path templates are rejected at
//!   validation instead of being ignored;
//! - on a TCP connection, HTTP-only fields (hosts, methods, paths, request
//!   headers) never match in an ALLOW rule and always match in a DENY,
//!   AUDIT or CUSTOM rule (Istio drops them from deny rules and warns);
//! - the dry-run report is one combined "what if enforced" decision rather
//!   than Istio's separate allow/deny shadow results.
//!
//! # Example
//!
//! ```
//! use meshgate_core::mtls::{EffectiveMode, Presented};
//! use meshgate_core::policy::{
//!     Action, AuthorizationPolicy, MeshConfig, ObjectMeta, PeerAuthentication, PolicySet,
//!     Request, Rule, Scope, Selector, Source, Verdict, Workload,
//! };
//! use meshgate_core::mtls::MtlsMode;
//! use meshgate_core::spiffe::SpiffeId;
//! use meshgate_core::time::UnixTime;
//!
//! let meta = |ns: &str, name: &str| ObjectMeta {
//!     name: name.into(),
//!     namespace: ns.into(),
//!     creation: UnixTime::from_secs(1),
//! };
//! // Namespace-wide STRICT, and only productpage may call details.
//! let strict = PeerAuthentication {
//!     meta: meta("bookinfo", "default"),
//!     selector: None,
//!     mode: MtlsMode::Strict,
//!     port_level_mtls: vec![],
//! };
//! let viewer = AuthorizationPolicy {
//!     meta: meta("bookinfo", "details-viewer"),
//!     selector: Some(Selector { match_labels: vec![("app".into(), "details".into())] }),
//!     action: Action::Allow,
//!     provider: None,
//!     rules: vec![Rule {
//!         from: vec![Source {
//!             principals: vec!["cluster.local/ns/bookinfo/sa/bookinfo-productpage".into()],
//!             ..Source::default()
//!         }],
//!         ..Rule::default()
//!     }],
//!     dry_run: false,
//! };
//! let set = PolicySet::new(MeshConfig::default(), &[strict], &[viewer])?;
//!
//! let labels = [("app", "details")];
//! let details = Workload::new("bookinfo", &labels);
//!
//! // 1. Which mode, and why.
//! let mode = set.resolve_mode(&details, 9080);
//! assert_eq!(mode.mode, EffectiveMode::Strict);
//! assert_eq!(mode.scope, Scope::Namespace);
//! assert_eq!(mode.policy.unwrap().to_string(), "bookinfo/default");
//!
//! // 2. Admission after the handshake.
//! let id = SpiffeId::parse("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage")?;
//! let admitted = set.admit(mode.mode, Presented::VerifiedPeer { id })?;
//! assert!(set.admit(mode.mode, Presented::Plaintext).is_err());
//!
//! // 3. Authorization.
//! let req = Request {
//!     workload: details,
//!     port: 9080,
//!     principal: admitted.principal,
//!     source_ip: "10.0.0.7".parse()?,
//!     sni: None,
//!     http: None,
//! };
//! let decision = set.authorize(&req);
//! assert_eq!(decision.verdict, Verdict::Allow);
//! assert_eq!(decision.decided_by.unwrap().to_string(), "ALLOW policy bookinfo/details-viewer rule 0");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compile;
mod ip;
pub mod model;
mod request;
mod set;

pub use compile::{
    ValidationError, ValidationErrorKind, validate_authorization_policy,
    validate_peer_authentication,
};
pub use ip::{IpBlock, IpBlockError};
pub use model::*;
pub use request::{Headers, HttpRequest, Labels, Request, Workload};
pub use set::{
    AuthzDecision, AuthzReason, BuildError, Considered, DryRunOutcome, MeshConfig, ModeChain,
    ModeDecision, PolicyError, PolicyRef, PolicySet, ResourceKind, RuleRef, Scope, Verdict,
};
