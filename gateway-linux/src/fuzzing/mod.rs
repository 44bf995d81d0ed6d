//! Entry points for the cargo-fuzz targets in `fuzz/` (not a stable API).
//!
//! Every module of this crate is private; this is the one door the fuzz
//! targets use. It holds no parsing logic of its own: each harness starts
//! the real component (the data plane on loopback sockets, the edge-node
//! registry over a real state store, the whole gateway for the admin API)
//! and hands the fuzzer's bytes to it exactly where a peer's bytes would
//! arrive, then reports what came out so the target can assert invariants.
//!
//! - [`dataplane`]: the inbound path — TLS/plaintext sniffing, ClientHello
//!   collection and SNI routing, HTTP request heads (Host/authority, mode,
//!   authorization, hop-by-hop headers, XFCC) up to the upstream;
//! - [`enroll`]: edge-node enrollment requests (token + CSR) into the
//!   registry and the CA;
//! - [`admin`]: JSON request bodies into the admin API of a running gateway.
//!
//! The harnesses are started once per fuzzing process and reused for every
//! input; they panic on setup failures (a harness that cannot start is a
//! broken fuzzing environment, not a finding).

pub mod admin;
pub mod dataplane;
pub mod enroll;

use std::path::PathBuf;

/// A fresh private directory for a harness's state: under
/// `$MESHGATE_FUZZ_DIR` if set (CI points it at a directory it removes
/// afterwards), else on tmpfs when there is one (the state store fsyncs
/// every write; on tmpfs that costs nothing).
fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let base = std::env::var_os("MESHGATE_FUZZ_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            ["/dev/shm", "/tmp"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_dir())
        })
        .unwrap_or_else(std::env::temp_dir);
    let n = NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let dir = base.join(format!("meshgate-fuzz-{}-{what}-{n}", std::process::id()));
    // A leftover from a crashed run with a recycled pid is stale state.
    let _ = std::fs::remove_dir_all(&dir);
    crate::fsutil::ensure_private_dir(&dir).expect("fuzz scratch directory");
    dir
}
