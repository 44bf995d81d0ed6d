//! meshgate-edge: the edge node's application logic, independent of any
//! board.
//!
//! The edge node holds a mesh identity on behalf of legacy devices: it
//! generates a P-256 key on the device, enrolls with a one-time token,
//! keeps one mTLS tunnel to the meshgate gateway carrying `core::wire`
//! frames, bridges legacy plaintext TCP both ways, renews its certificate
//! before expiry and applies the forwarding configuration the gateway
//! pushes. Board binaries (`boards/*`) only wire peripherals and spawn the
//! tasks defined here.
//!
//! Modules:
//! - [`enroll`]: the node key and the PKCS#10 CSR (no allocator).
//! - [`creds`]: what is persisted (key, certificate chain, trust roots,
//!   gateway pin) and the A/B slot format behind a storage trait.
//! - [`config`]: the forwarding rules pushed by the gateway.
//! - [`bridge`]: legacy sockets <-> tunnel streams, sans-IO.
//! - [`pin`]: the check that the TLS server is *the* gateway, not just any
//!   holder of a certificate from the mesh CA.
//! - [`tunnel`]: the sans-IO client session over `core::wire`.
//! - [`tls`]: embedded-tls crypto provider and the gateway verifier.
//! - [`node`]: the embassy-net runtime driving the tunnel over TLS.
//! - [`setup`]: the local web page (first-time setup, status), sans-IO.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

#[cfg(test)]
extern crate std;

pub mod bridge;
pub mod config;
pub mod creds;
pub(crate) mod der;
pub mod enroll;
pub(crate) mod log;
pub mod node;
pub mod pin;
pub mod setup;
pub mod tls;
pub mod tunnel;

pub use creds::Credentials;

pub use der::CertParseError;
