//! Linker scripts for the board image, and build-time provisioning.
//!
//! `memory.x` comes from embassy-stm32 (feature `memory-x`); cortex-m-rt's
//! `link.x` and defmt's `defmt.x` are added here.
//!
//! First-boot provisioning may be baked in at build time (for a lab
//! setup): `MESHGATE_ROOT_DER` names a DER file with the trust root that
//! verifies the gateway during enrollment (copied to OUT_DIR; empty when
//! unset). Without it the node serves its setup page on port 80 instead.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    println!("cargo:rerun-if-env-changed=MESHGATE_ROOT_DER");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = match env::var_os("MESHGATE_ROOT_DER") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            fs::read(&path).expect("MESHGATE_ROOT_DER must name a readable DER file")
        }
        None => Vec::new(),
    };
    fs::write(out.join("bootstrap-root.der"), root).expect("write OUT_DIR/bootstrap-root.der");
}
