//! `meshgate demo`: the seed story ("Securing Services with Mutual TLS") in
//! one command.
//!
//! It starts, in one process:
//! - the gateway itself, through [`crate::serve::run`] — the very code path
//!   of `meshgate serve`, fed a settings file the demo writes (so the demo
//!   cannot drift from the real gateway, and the user can read the file);
//! - bookinfo's `details` and `productpage` as plaintext workloads behind
//!   it ([`bookinfo`]); productpage calls details back through the gateway
//!   with mTLS, as a sidecar would;
//!
//! then issues demo client identities through the admin API (as
//! `meshgate cert issue` does), writes them and the seed's policy files to
//! the demo folder ([`files`]), and prints the walkthrough ([`steps`]).
//! Ctrl-C (or SIGTERM) drains the gateway, stops the workloads, exits 0.

mod bookinfo;
mod files;
mod steps;

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use meshgate_core::spiffe::OwnedSpiffeId;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use self::bookinfo::{App, ProductpageState};
use self::files::{DemoDir, FilesError, IssueError, IssuedIdentity, Topology};
use self::steps::{ServerCheck, Walkthrough};
use crate::cli::ServeArgs;
use crate::client::{AdminClient, ClientError, resolve_token};
use crate::dataplane;
use crate::dataplane::identity::IdentityError;
use crate::serve::ServeError;

/// The gateway's identity in the demo (meshgate's default).
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
/// productpage's identity: what details-viewer allows.
const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
/// The legacy client's identity once brought into the mesh.
const SLEEP_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/sleep";
/// Lifetime of the demo client certificates. productpage's is renewed at
/// half of it while the demo runs.
const CLIENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the gateway may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long in-flight requests may run after Ctrl-C.
const DRAIN_SECS: u64 = 5;

/// `meshgate demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Folder for the demo's files: settings (meshgate.yaml), the policies to
    /// apply (mutual-tls.yaml, details-viewer.yaml), client certificates
    /// (certs/productpage, certs/sleep) and the gateway's data directory
    /// (data/). Created if missing; a previous demo run's certs/ and data/
    /// are cleared at start. A folder not made by the demo is refused.
    #[arg(long, value_name = "DIR", default_value = "meshgate-demo")]
    pub(crate) dir: PathBuf,

    /// Data-plane listen address (repeatable). The printed commands use the
    /// first one; 0.0.0.0 is printed as 127.0.0.1. Needs a fixed port.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:9080")]
    pub(crate) listen: Vec<SocketAddr>,

    /// Admin API and UI address. Needs a fixed port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub(crate) admin_addr: SocketAddr,

    /// Edge-node tunnel and enrollment listener of the gateway (0 picks a
    /// free port; the printed steps do not use it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15443")]
    pub(crate) edge_addr: SocketAddr,

    /// Port of the details workload on 127.0.0.1 (0 picks a free one).
    #[arg(long, value_name = "PORT", default_value_t = 19080)]
    pub(crate) details_port: u16,

    /// Port of the productpage workload on 127.0.0.1 (0 picks a free one).
    #[arg(long, value_name = "PORT", default_value_t = 19081)]
    pub(crate) productpage_port: u16,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// Port 0 where the printed commands need a known port.
    #[error(
        "{0} needs a fixed port (the printed commands use it); port 0 is only allowed for the workloads"
    )]
    EphemeralPort(&'static str),
    /// The demo folder could not be prepared.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// A workload port is taken.
    #[error("cannot listen on {addr} for {what} (pick another port with --{what}-port)")]
    Bind {
        /// Which workload.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The gateway failed. Not a `#[source]`: the message already
    /// includes the gateway's own, which would otherwise print twice.
    #[error("{0}{hint}", hint = serve_hint(.0))]
    Serve(ServeError),
    /// The gateway did not answer /readyz in time.
    #[error("the gateway did not become ready at {url} within {} s", READY_TIMEOUT.as_secs())]
    NotReady {
        /// The admin URL.
        url: String,
    },
    /// Talking to the admin API failed.
    #[error(transparent)]
    Admin(#[from] ClientError),
    /// A demo identity could not be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// productpage's identity could not be turned into a TLS client.
    #[error("productpage's certificate is unusable: {0}")]
    Identity(#[from] IdentityError),
    /// productpage's PEM files could not be read back.
    #[error("productpage's {0} PEM is unreadable: {1}")]
    Pem(&'static str, String),
}

impl From<ServeError> for DemoError {
    fn from(e: ServeError) -> Self {
        DemoError::Serve(e)
    }
}

/// A pointer to the flags that move the demo's gateway sockets.
fn serve_hint(e: &ServeError) -> &'static str {
    match e {
        ServeError::Bind { .. } => {
            "\n(is another gateway or demo running? choose other ports with --listen ADDR and --admin-addr ADDR)"
        }
        _ => "",
    }
}

/// Runs the demo until Ctrl-C / SIGTERM.
pub(crate) async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let Some(&first_listener) = args.listen.first() else {
        return Err(DemoError::EphemeralPort("--listen"));
    };
    if args.listen.iter().any(|a| a.port() == 0) {
        return Err(DemoError::EphemeralPort("--listen"));
    }
    if args.admin_addr.port() == 0 {
        return Err(DemoError::EphemeralPort("--admin-addr"));
    }
    let dir = DemoDir {
        root: args.dir.clone(),
    };
    dir.prepare()?;

    let bind = |what: &'static str, port: u16| async move {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let err = |source| DemoError::Bind { what, addr, source };
        let l = TcpListener::bind(addr).await.map_err(err)?;
        let bound = l.local_addr().map_err(err)?;
        Ok::<_, DemoError>((l, bound))
    };
    let (details_listener, details_addr) = bind("details", args.details_port).await?;
    let (pp_listener, pp_addr) = bind("productpage", args.productpage_port).await?;
    let topology = Topology {
        listen: args.listen.clone(),
        admin: args.admin_addr,
        details: details_addr,
        productpage: pp_addr,
        gateway_id: GATEWAY_ID.to_owned(),
    };
    let settings = dir.settings();
    crate::fsutil::write_atomic(&settings, files::settings_yaml(&topology).as_bytes(), 0o644)
        .map_err(|source| FilesError::Io {
            what: "writing",
            path: settings.clone(),
            source,
        })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let details_task = bookinfo::spawn(details_listener, App::Details, stop_rx.clone());
    let productpage = Arc::new(ProductpageState {
        gateway: steps::dial_addr(first_listener),
        tls: ArcSwapOption::empty(),
        spiffe_id: PRODUCTPAGE_ID.to_owned(),
    });
    let pp_task = bookinfo::spawn(
        pp_listener,
        App::Productpage(productpage.clone()),
        stop_rx.clone(),
    );

    // `serve::run` installs the SIGINT/SIGTERM handlers and returns Ok
    // after draining; the demo's own parts stop after it.
    let serve = crate::serve::run(ServeArgs {
        config: Some(settings),
        data_dir: Some(dir.data()),
        admin_addr: Some(args.admin_addr),
        listen: Vec::new(),
        cacerts: None,
        kubernetes: false,
        drain_timeout: DRAIN_SECS,
        edge_addr: Some(args.edge_addr),
        // The runtime is already built (the demo's default one); this
        // field only chooses it for `meshgate serve`.
        workers: None,
    });
    tokio::pin!(serve);
    let setup = setup(&dir, &topology, &productpage);
    tokio::pin!(setup);
    let result = tokio::select! {
        r = &mut serve => r.map_err(DemoError::from),
        r = &mut setup => match r {
            Ok(admin) => tokio::select! {
                r = &mut serve => r.map_err(DemoError::from),
                () = keep_productpage_certified(admin, &dir, &productpage) => Ok(()),
            },
            // Dropping `serve` closes its sockets; the process exits next.
            Err(e) => Err(e),
        },
    };
    stop_tx.send_replace(true);
    let _ignored = tokio::time::timeout(Duration::from_secs(3), async {
        let _ = tokio::join!(details_task, pp_task);
    })
    .await;
    if result.is_ok() {
        println!("meshgate demo: stopped");
    }
    result
}

/// Waits for the gateway, issues the demo identities, prints the
/// walkthrough. Returns the admin client for renewals.
async fn setup(
    dir: &DemoDir,
    topology: &Topology,
    productpage: &ProductpageState,
) -> Result<AdminClient, DemoError> {
    let admin_url = format!("http://{}", steps::dial_addr(topology.admin));
    wait_ready(&admin_url).await?;
    // The 0600 copy of the token that `serve` wrote at first start.
    let token = resolve_token(None, &dir.data())?;
    let admin = AdminClient::new(&admin_url, Some(token.clone()))?;

    let pp = files::issue(&admin, PRODUCTPAGE_ID, CLIENT_CERT_TTL).await?;
    install_productpage(productpage, &pp)?;
    files::write_identity(&dir.certs("productpage"), &pp)?;
    let sleep = files::issue(&admin, SLEEP_ID, CLIENT_CERT_TTL).await?;
    files::write_identity(&dir.certs("sleep"), &sleep)?;

    let server_check = probe_server_name(productpage.gateway, productpage).await;
    let text = Walkthrough {
        meshgate: meshgate_command(),
        dir,
        topology,
        token: &token,
        server_check,
    }
    .render();
    println!("{text}");
    Ok(admin)
}

/// Polls `/readyz` until the gateway answers 200.
async fn wait_ready(admin_url: &str) -> Result<(), DemoError> {
    let client = AdminClient::new(admin_url, None)?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if client
            .send(http::Method::GET, "/readyz", None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DemoError::NotReady {
                url: admin_url.to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gives productpage its certificate: a client that presents it and
/// accepts only the gateway's SPIFFE ID (the data plane's own secure-naming
/// verifier, so productpage checks the gateway as a sidecar would).
fn install_productpage(state: &ProductpageState, id: &IssuedIdentity) -> Result<(), DemoError> {
    let identity = dataplane::Identity::new(
        pem_certs("certificate chain", &id.issued.chain_pem)?,
        rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
            .map_err(|e| DemoError::Pem("key", e.to_string()))?
            .ok_or_else(|| DemoError::Pem("key", "no private key".to_owned()))?,
        &pem_certs("trust bundle", &id.issued.roots_pem)?,
    )?;
    let gateway = OwnedSpiffeId::parse(GATEWAY_ID)
        .map_err(|e| DemoError::Pem("gateway SPIFFE ID", e.to_string()))?;
    let config = identity.client_config(vec![gateway], dataplane::Protocol::Http)?;
    state.tls.store(Some(config));
    Ok(())
}

/// The certificates in a PEM text.
fn pem_certs(
    what: &'static str,
    pem: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, DemoError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DemoError::Pem(what, e.to_string()))
}

/// Re-issues productpage's certificate at half its lifetime, forever (the
/// caller stops it). A failure is retried a minute later; the old
/// certificate keeps serving meanwhile.
async fn keep_productpage_certified(admin: AdminClient, dir: &DemoDir, state: &ProductpageState) {
    let mut wait = CLIENT_CERT_TTL / 2;
    loop {
        tokio::time::sleep(wait).await;
        let renewed = async {
            let id = files::issue(&admin, PRODUCTPAGE_ID, CLIENT_CERT_TTL).await?;
            install_productpage(state, &id)?;
            files::write_identity(&dir.certs("productpage"), &id)?;
            Ok::<_, DemoError>(())
        };
        wait = match renewed.await {
            Ok(()) => CLIENT_CERT_TTL / 2,
            Err(e) => {
                tracing::warn!(error = %e, "renewing productpage's certificate failed; retrying in 60 s");
                Duration::from_secs(60)
            }
        };
    }
}

/// Whether curl can verify the gateway with `--cacert`: does the
/// certificate the gateway serves for details' SNI name that host? The
/// probe is productpage's own mTLS handshake (which already checks the
/// chain against the mesh roots and the gateway's SPIFFE ID), followed by
/// the DNS-name check curl adds on top.
async fn probe_server_name(gateway: SocketAddr, productpage: &ProductpageState) -> ServerCheck {
    let Some(config) = productpage.tls.load_full() else {
        return ServerCheck::Insecure;
    };
    let attempt = async {
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(bookinfo::DETAILS_HOST)
            .map_err(|e| e.to_string())?
            .to_owned();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("the gateway sent no certificate")?;
        let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => ServerCheck::CaCert,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "curl cannot verify the gateway by name ({})", bookinfo::DETAILS_HOST);
            ServerCheck::Insecure
        }
        Err(_) => ServerCheck::Insecure,
    }
}

/// How the walkthrough should invoke this binary: `meshgate` when that
/// name on PATH is this very program, else its full path.
fn meshgate_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "meshgate".to_owned();
    };
    let me = exe.canonicalize().unwrap_or_else(|_| exe.clone());
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            d.join("meshgate")
                .canonicalize()
                .is_ok_and(|candidate| candidate == me)
        })
    });
    if on_path {
        "meshgate".to_owned()
    } else {
        steps::sh(&exe.display().to_string())
    }
}
