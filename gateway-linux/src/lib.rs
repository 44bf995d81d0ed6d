//! meshgate: the Linux mutual-TLS ingress gateway.
//!
//! The crate is a library only so that the binary (`src/main.rs`, which
//! calls [`main`]) and the fuzz targets in `fuzz/` share one build of the
//! code: every module stays crate-private.
//!
//! [`main`] only parses the command line, sets up logging and a runtime,
//! and hands over: `serve` runs the gateway, `commands` runs the client
//! commands. Everything else lives in one module per concern.

mod admin;
mod cli;
mod client;
mod commands;
mod dataplane;
mod demo;
mod edge;
mod fsutil;
mod identity;
mod reload;
mod serve;
mod state;

use std::process::ExitCode;

use clap::Parser as _;

/// The `meshgate` command: parses `std::env::args`, runs the chosen
/// command to completion and turns its outcome into the process exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    let workers = match &cli.command {
        cli::Command::Serve(args) => args.workers,
        _ => None,
    };
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Serve(args) => serve::run(args).await.map_err(anyhow::Error::from),
            cli::Command::Demo(args) => demo::run(args).await.map_err(anyhow::Error::from),
            other => commands::run(other).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime: a single-threaded one for one worker (no
/// work-stealing, no cross-thread wake-ups: measurably less CPU per
/// request and per handshake, see bench/README.md), tokio's multi-thread
/// scheduler for more. `workers` defaults to the CPUs this process may
/// use, which `available_parallelism` reads from the affinity mask and
/// the cgroup CPU quota.
fn runtime(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.map(usize::from).or_else(|| {
        std::thread::available_parallelism()
            .ok()
            .map(core::num::NonZeroUsize::get)
    });
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        // The CPU count is unknown: tokio's own default.
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

/// Logs go to stderr (stdout carries the command's own output, e.g. the
/// admin token or `get` tables). `RUST_LOG` overrides the default level;
/// `MESHGATE_LOG_FORMAT=json` switches to one JSON object per line.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("MESHGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second initialisation only happens in tests; ignoring it is right.
    let _ignored = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[doc(hidden)]
pub mod fuzzing;
