//! The `meshgate` binary: everything lives in the library (`src/lib.rs`),
//! so the fuzz targets can reach the same code the binary runs.

fn main() -> std::process::ExitCode {
    meshgate::main()
}
