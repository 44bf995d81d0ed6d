//! meshgate-bench: meshgate next to nginx and HAProxy doing the same mTLS
//! termination, measured by server CPU time and memory (issue 9).
//!
//! The binary (`bench/run`, `meshgate-bench --help`) drives a run; the
//! library holds the pieces so the smoke tests can exercise them without
//! any proxy installed:
//! - [`certs`]: the run's own PKI (rcgen, P-256);
//! - [`upstream`]: the plaintext upstream and direct reference;
//! - [`loadgen`]: the mTLS load generator and its four workloads;
//! - [`procfs`]: server CPU-seconds, RSS and fds from `/proc`;
//! - [`targets`]: nginx, HAProxy and meshgate as child processes with
//!   generated configuration;
//! - [`runner`]: phases and interleaved rounds;
//! - [`report`]: `docs/benchmarks.md` and `docs/benchmarks.svg`;
//! - [`stats`]: medians and percentiles.

pub mod certs;
pub mod loadgen;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod stats;
pub mod targets;
pub mod upstream;
