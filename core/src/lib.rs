//! meshgate-core: everything meshgate decides, with no I/O.
//!
//! This crate is `#![no_std]` and sans-IO: it never reads a clock, draws
//! randomness or touches a socket. Time ([`time::UnixTime`]) and random
//! bytes are arguments. The Linux gateway and the microcontroller edge node
//! both call it, so a decision made in one place is made the same way in the
//! other.
//!
//! Modules:
//! - [`spiffe`]: trust domains, SPIFFE IDs, principals, Istio string patterns.
//! - [`mtls`]: peer-authentication modes and connection admission.
//! - [`policy`] (feature `alloc`): PeerAuthentication / AuthorizationPolicy
//!   data, validation, mode resolution and authorization.
//! - [`rotation`]: certificate renewal schedule, retry backoff, trust bundles.
//! - [`wire`]: the gateway ↔ edge-node frame protocol (postcard).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod mtls;
#[cfg(feature = "alloc")]
pub mod policy;
pub mod rotation;
pub mod spiffe;
pub mod time;
pub mod wire;
