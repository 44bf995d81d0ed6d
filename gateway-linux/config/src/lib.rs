//! meshgate-config: Istio YAML and the gateway settings file, parsed into
//! meshgate-core types with errors that name the file, the document, the
//! line and column, and the field.
//!
//! - [`policy`]: PeerAuthentication / AuthorizationPolicy from text
//!   ([`policy::parse_policies`]) or from files and directories
//!   ([`policy::load_policies`], used at startup and for live reload).
//! - [`emit`]: canonical Istio YAML for core policies, round-tripping through
//!   the parser (the admin API shows and persists policies with it).
//! - [`settings`]: the gateway settings file and the services behind the
//!   gateway (a subset of Istio ServiceEntry/WorkloadEntry), validated into
//!   [`settings::Settings`]; [`settings::Settings::embedded_default`] when
//!   there is no file.
//! - [`error`]: [`error::ConfigErrors`], every problem of a load at once.
//!
//! Loads are all-or-nothing: a file (and a load of many files) is accepted
//! whole or rejected with every diagnostic, so a live reload can keep the
//! previous configuration. YAML and schema types stay in this crate; core
//! only sees its own plain data.
//!
//! ```
//! use meshgate_config::policy::{Policy, parse_policies};
//! use meshgate_core::{mtls::MtlsMode, time::UnixTime};
//!
//! let yaml = "apiVersion: security.istio.io/v1beta1\n\
//!             kind: PeerAuthentication\n\
//!             metadata: {name: default, namespace: bookinfo}\n\
//!             spec: {mtls: {mode: STRICTT}}\n";
//! let err = parse_policies("mutual-tls.yaml", yaml, UnixTime::EPOCH).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "mutual-tls.yaml: document 1, line 4, column 21: spec.mtls.mode: unknown mode \
//!      \"STRICTT\" (expected UNSET, DISABLE, PERMISSIVE or STRICT)"
//! );
//!
//! let fixed = yaml.replace("STRICTT", "STRICT");
//! let policies = parse_policies("mutual-tls.yaml", &fixed, UnixTime::EPOCH).unwrap();
//! let Policy::PeerAuthentication(pa) = &policies[0] else { unreachable!() };
//! assert_eq!(pa.mode, MtlsMode::Strict);
//! ```

pub mod emit;
pub mod error;
pub mod policy;
pub mod settings;

pub(crate) mod read;
pub(crate) mod resource;
pub(crate) mod source;
pub(crate) mod validate;
pub(crate) mod yaml;

/// Largest configuration file read, in bytes. Policy and settings files are
/// a few kilobytes; the bound keeps a mistaken path (a log, a disk image)
/// from being read into memory.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
