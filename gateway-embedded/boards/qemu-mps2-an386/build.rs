//! Linker script (`memory.x` for the AN386 memory map, cortex-m-rt's
//! `link.x`) and build-time provisioning of the test image.
//!
//! The QEMU image has no persistent storage and no setup page yet, so its
//! first-boot settings are baked in: `MESHGATE_ROOT_DER` names a DER file
//! with the trust root that verifies the gateway (copied to OUT_DIR; empty
//! when unset, and the node then only brings its network up), and
//! `MESHGATE_GATEWAY_IP`, `MESHGATE_GATEWAY_ID`, `MESHGATE_TOKEN`,
//! `MESHGATE_NODE_IP` (A.B.C.D/PREFIX) are read with `option_env!`.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    for var in [
        "MESHGATE_ROOT_DER",
        "MESHGATE_GATEWAY_IP",
        "MESHGATE_GATEWAY_ID",
        "MESHGATE_TOKEN",
        "MESHGATE_NODE_IP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let root = match env::var_os("MESHGATE_ROOT_DER") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            fs::read(&path).expect("MESHGATE_ROOT_DER must name a readable DER file")
        }
        None => Vec::new(),
    };
    fs::write(out.join("bootstrap-root.der"), root).expect("write OUT_DIR/bootstrap-root.der");
}
