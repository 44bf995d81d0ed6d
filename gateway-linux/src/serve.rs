//! `meshgate serve`: wires the gateway together and runs it until a signal.
//!
//! Order matters and is deliberate:
//! 1. signal handlers first, so an early SIGHUP cannot kill the process
//!    (its default action) and an early SIGTERM is handled as a drain;
//! 2. the data directory and admin token;
//! 3. the admin server, then `ready`;
//! 4. wait for SIGTERM/SIGINT (stop) or SIGHUP (reload).
//!
//! On stop, `/readyz` turns false at once (so a load balancer stops
//! sending), listeners stop accepting, and in-flight requests get up to
//! `--drain-timeout` to finish before the process exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::admin::token::{AdminAuth, TOKEN_FILE, TokenError};
use crate::admin::{self, AdminState};
use crate::cli::ServeArgs;
use crate::fsutil;
use crate::state::ControlPlane;

/// Admin address when neither the settings nor `--admin-addr` give one.
const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Loading or creating the admin token failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A listen address is taken or not allowed.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// What the socket is for.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Installing a signal handler failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the gateway until SIGTERM or SIGINT.
pub(crate) async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;

    fsutil::ensure_private_dir(&args.data_dir).map_err(|source| ServeError::DataDir {
        path: args.data_dir.clone(),
        source,
    })?;
    let (auth, new_token) = AdminAuth::load_or_create(&args.data_dir)?;

    let control = Arc::new(ControlPlane::new());

    let admin_addr = args.admin_addr.unwrap_or(DEFAULT_ADMIN_ADDR);
    let admin_listener =
        TcpListener::bind(admin_addr)
            .await
            .map_err(|source| ServeError::Bind {
                what: "admin API",
                addr: admin_addr,
                source,
            })?;
    let admin_bound = admin_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            what: "admin API",
            addr: admin_addr,
            source,
        })?;
    let state = Arc::new(AdminState {
        auth,
        ready: false.into(),
        control: control.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_server = axum::serve(admin_listener, admin::router(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let admin_task = tokio::spawn(async move { admin_server.await });

    println!("meshgate: admin API listening on http://{admin_bound}");
    println!("meshgate: data directory {}", args.data_dir.display());
    if let Some(token) = new_token {
        // Printed exactly once, at the start that created it. The server
        // keeps only its hash; the 0600 copy serves local CLI use.
        println!(
            "meshgate: admin token (shown only now; a copy readable only by you is in {}):",
            args.data_dir.join(TOKEN_FILE).display()
        );
        println!("  {token}");
    }
    state.ready.store(true, Ordering::Release);
    println!("meshgate: ready");
    tracing::info!(admin = %admin_bound, "meshgate is ready");

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
            }
        }
    }

    state.ready.store(false, Ordering::Release);
    let _ignored = stop_tx.send(true);
    let drain = core::time::Duration::from_secs(args.drain_timeout);
    match tokio::time::timeout(drain, admin_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server task failed"),
        Err(_) => tracing::warn!(secs = drain.as_secs(), "drain deadline reached; exiting"),
    }
    println!("meshgate: stopped");
    Ok(())
}

/// Resolves when `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ignored = rx.wait_for(|stop| *stop).await;
}
