//! Istio PeerAuthentication and AuthorizationPolicy: data, validation,
//! mode resolution and authorization (feature `alloc`).

pub mod model;

pub use model::*;
