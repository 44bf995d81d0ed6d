//! meshgate's certificate authority and state store.
//!
//! - [`store`]: the [`Store`] interface (named records + audit log) and the
//!   crash-safe [`FileStore`] in the data directory.
//! - [`ca`]: the [`CertificateAuthority`] — generated or plugged-in CA
//!   material, SPIFFE issuance from CSRs or for in-memory keys (with DNS
//!   names for the gateway's own serving certificate), the phased root
//!   roll-over ([`Rollover`]: trust both → switch → drop, persisted),
//!   revocation, reloading state another replica changed, and the
//!   `ca show` summary.
//! - [`cacerts`]: loading and checking an Istio `cacerts` directory.
//! - [`revocation`]: the revocation list (pure data).
//! - [`secrets`]: bearer tokens (admin, enrollment) generated and stored
//!   only as hashes.
//! - [`x509`]: serial numbers, fingerprints and PEM helpers.
//!
//! Nothing in this crate reads the clock: operations take `now`, so tests
//! drive them with a virtual clock.
//!
//! # Data directory (with [`FileStore`])
//!
//! ```text
//! DATA/                              0700
//!   LOCK                             flock(2) while a process uses DATA
//!   audit.log                        append-only, one checksummed JSON line per change
//!   records/                         0700; every file 0600, header + SHA-256
//!     ca.state.rec                   trusted roots (PEM + origin), signing root, roll-over phase
//!     ca.root-N.root-key.pem.rec     generated root key (PKCS#8)
//!     ca.root-N.signing-key.pem.rec  generated intermediate key (PKCS#8)
//!     ca.root-N.signing-cert.pem.rec generated intermediate certificate
//!     ca.issued.rec                  per-root counts, index of unexpired leaves
//!     ca.revocations.rec             revocation list
//!     ...                            other components' records (policies, tokens)
//! ```
//!
//! A plugged-in `cacerts` CA is only referenced (by directory) from
//! `ca.state`; its key stays where the operator put it. Leaf private keys
//! are never written by this crate.

pub mod ca;
pub mod cacerts;
pub mod revocation;
pub mod secrets;
pub mod store;
pub mod x509;

pub use ca::{
    CaConfig, CaError, CaSource, CaSummary, CertificateAuthority, DropStatus, IssuedCertificate,
    IssuedEntry, LeafKey, Rollover, RolloverStep, RootSummary,
};
pub use revocation::{Revocation, RevocationList, RevocationTarget};
pub use secrets::TokenHash;
pub use store::{AuditEntry, Change, FileStore, OpenReport, RecordKey, Store, StoreError};
pub use x509::Serial;
