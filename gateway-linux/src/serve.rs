//! `meshgate serve`: wires the gateway together and runs it until a signal.
//!
//! Order matters and is deliberate:
//! 1. signal handlers first, so an early SIGHUP cannot kill the process
//!    (its default action) and an early SIGTERM is handled as a drain;
//! 2. the data directory and admin token;
//! 3. the admin server, then `ready`;
//! 4. wait for SIGTERM/SIGINT (stop) or SIGHUP (reload).
//!
//! The data plane's access log (one JSON line per request or connection)
//! goes to standard output by default; the environment variable
//! `MESHGATE_ACCESS_LOG` chooses another sink: `off` (only the admin API's
//! in-memory recent list), `stdout`/`-`, or a file path (appended to).
//!
//! Testing only: `MESHGATE_UNSAFE_CERT_TTL_SECS` overrides the gateway
//! certificate's lifetime (see [`UNSAFE_CERT_TTL_ENV`]) and
//! `MESHGATE_UNSAFE_MIN_TTL_SECS` lowers the CA's 60 s minimum lifetime
//! (see [`UNSAFE_MIN_TTL_ENV`]). Both are announced with a warning.
//!
//! On stop, `/readyz` turns false at once (so a load balancer stops
//! sending), listeners stop accepting, and in-flight requests get up to
//! `--drain-timeout` to finish before the process exits 0.

use core::net::SocketAddr;
use core::sync::atomic::Ordering;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshgate_ca::{
    CaConfig, CaSource, CertificateAuthority, FileStore, IssuedCertificate, LeafKey, Store,
};
use meshgate_config::error::ConfigErrors;
use meshgate_config::settings::{ListenerProtocol, Service, Settings};
use rustls_pki_types::PrivateKeyDer;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::admin::token::{AdminAuth, TOKEN_FILE, TokenError};
use crate::admin::{self, AdminState};
use crate::cli::ServeArgs;
use crate::dataplane;
use crate::fsutil;
use crate::identity::{IdentityError, IdentityManager, IdentitySink, SystemClock};
use crate::state::{
    ChangeError, Commit, Config, ControlPlane, MeshSettings, PortInfo, ServiceInfo, Subscriber,
};

/// How often the policy files are checked for changes. Polling mtimes is
/// simple, works on every filesystem (including ConfigMap symlink swaps)
/// and keeps the "within 1 s" promise with room to spare.
const POLL_INTERVAL: core::time::Duration = core::time::Duration::from_millis(250);

/// How often a root roll-over is moved on (a check under the CA's lock;
/// it writes only when a phase changes).
const ROLLOVER_CHECK_INTERVAL: core::time::Duration = core::time::Duration::from_secs(1);

/// In Kubernetes mode, replicas that do not hold the Lease re-read the
/// shared CA state (roots, roll-over phase, revocations) every this many
/// roll-over checks: one read of the state Secret per 10 s per replica.
const REPLICA_RELOAD_TICKS: u32 = 10;

/// Why the gateway could not start. A variant with a source error does not
/// repeat it in its own message: `main` prints the whole chain
/// (`message: source`), so repeating it would print it twice.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The settings file is invalid.
    #[error("invalid settings, not starting:\n{0}")]
    Settings(ConfigErrors),
    /// A `--listen NAME=ADDR` names no listener.
    #[error("--listen {0}=...: the settings have no listener called {0:?}")]
    UnknownListener(String),
    /// `tls.certFile/keyFile/caFile` are set: the gateway identity comes
    /// from the built-in CA in this version.
    #[error(
        "settings `tls` ({0}) is not supported yet: the gateway's identity comes from the built-in CA; remove `tls:` or plug your CA in with --cacerts DIR"
    )]
    TlsFilesUnsupported(PathBuf),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state store could not be opened (corrupt, locked by another
    /// gateway, unreadable).
    #[error("cannot open the state store")]
    Store(#[from] meshgate_ca::StoreError),
    /// Loading or creating the admin token failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The initial configuration is invalid.
    #[error(transparent)]
    Config(#[from] ChangeError),
    /// A task the gateway cannot run without (certificate rotation, the
    /// admin API, policy file reloads, root roll-over) ended while serving.
    #[error("{task} {why}; stopping so that the gateway is restarted")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// "panicked", "ended", ...
        why: String,
    },
    /// The CA could not be opened or created.
    #[error("cannot open the certificate authority")]
    Ca(#[from] meshgate_ca::CaError),
    /// The `cacerts` directory is incomplete.
    #[error("invalid --cacerts directory: {0}")]
    Cacerts(meshgate_ca::cacerts::CacertsError),
    /// The gateway's identity could not be issued.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A listen address is taken or not allowed.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// What the socket is for.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The services cannot be routed (e.g. two claim the same host).
    #[error("the services cannot be routed")]
    Snapshot(#[from] dataplane::SnapshotError),
    /// The first identity was issued but never reached the data plane.
    #[error("the gateway identity was not installed")]
    NoIdentity,
    /// The access-log file cannot be opened.
    #[error("cannot open the access log {path}")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An environment variable has an unusable value.
    #[error("{var}={value:?}: expected a whole number of seconds greater than 0")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The edge tunnel server could not start.
    #[error(transparent)]
    Edge(#[from] crate::edge::EdgeError),
    /// Kubernetes mode could not start.
    #[error("Kubernetes mode: {0}")]
    Kube(meshgate_kube::KubeError),
    /// The shared CA could not be opened in Kubernetes mode.
    #[error("Kubernetes mode CA: {0}")]
    SharedCa(meshgate_kube::SharedCaError),
    /// Installing a signal handler failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Publishes the gateway's CA-issued identity to the data plane. The first
/// [`IdentitySink::install`] (while the gateway starts, before the data
/// plane exists) creates the shared `ArcSwap`; every later renewal or trust
/// bundle change (root roll-over) swaps a new [`dataplane::Identity`] in, so
/// new handshakes use it and established connections are untouched. The
/// key exists only inside that `Identity`, in memory.
pub(crate) struct DataPlaneIdentity {
    slot: std::sync::Mutex<Option<Arc<ArcSwap<dataplane::Identity>>>>,
    /// Consulted by the identity's client-certificate verifier.
    revocation: Arc<dyn dataplane::RevocationCheck>,
}

impl DataPlaneIdentity {
    fn new(revocation: Arc<dyn dataplane::RevocationCheck>) -> Self {
        Self {
            slot: std::sync::Mutex::new(None),
            revocation,
        }
    }

    /// The shared identity, once the first certificate was installed.
    fn shared(&self) -> Option<Arc<ArcSwap<dataplane::Identity>>> {
        crate::state::lock(&self.slot).clone()
    }
}

impl IdentitySink for DataPlaneIdentity {
    fn install(&self, issued: &IssuedCertificate, key: LeafKey) -> Result<(), String> {
        let id = dataplane::Identity::with_revocation(
            issued.full_chain(),
            PrivateKeyDer::Pkcs8(key.into_pkcs8_der()),
            &issued.trust_bundle,
            Some(self.revocation.clone()),
        )
        .map_err(|e| e.to_string())?;
        let mut slot = crate::state::lock(&self.slot);
        match &*slot {
            Some(shared) => shared.store(Arc::new(id)),
            None => *slot = Some(Arc::new(ArcSwap::from_pointee(id))),
        }
        Ok(())
    }
}

/// The CA's revocation list as the data plane asks it: per handshake and
/// for open connections. A lookup is a read lock and a short scan.
struct CaRevocations(Arc<CertificateAuthority>);

impl core::fmt::Debug for CaRevocations {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CaRevocations")
    }
}

impl dataplane::RevocationCheck for CaRevocations {
    fn is_revoked(&self, spiffe_id: &str, serial: &[u8]) -> bool {
        self.0.is_revoked(spiffe_id, serial, crate::identity::now())
    }
}

/// How often open connections are checked against the revocation list
/// besides the immediate check when the admin API revokes (covers
/// revocations recorded any other way); well within the 1 s promise.
const REVOCATION_SWEEP: core::time::Duration = core::time::Duration::from_millis(250);

/// Builds the data plane's routing snapshot for every configuration the
/// control plane accepts. `prepare` runs before anything is persisted or
/// swapped, so a configuration the data plane cannot route (e.g. two
/// services claiming one host) is refused whole; `commit` swaps it in.
struct SnapshotPublisher {
    services: Vec<Service>,
    snapshot: Arc<ArcSwap<dataplane::Snapshot>>,
}

impl Subscriber for SnapshotPublisher {
    fn prepare(&self, config: &Arc<Config>) -> Result<Commit, String> {
        let snap =
            dataplane::Snapshot::from_config(config.generation, &self.services, config.set.clone())
                .map_err(|e| e.to_string())?;
        let target = self.snapshot.clone();
        let snap = Arc::new(snap);
        Ok(Box::new(move || target.store(snap)))
    }
}

/// Test-only: the gateway certificate's lifetime in seconds, overriding the
/// settings' `identity.certTtl` (which refuses less than 60 s). Rotation
/// tests use it to see many renewals in minutes; the CA still applies its
/// own minimum. Never set it in production: it is logged as a warning.
const UNSAFE_CERT_TTL_ENV: &str = "MESHGATE_UNSAFE_CERT_TTL_SECS";

/// Test-only: the CA's shortest certificate lifetime in seconds, replacing
/// its 60 s minimum. The 20 s-TTL rotation test needs it; in production a
/// lifetime that short leaves no time to retry a failed renewal, so using
/// it is announced loudly on stderr and in the log.
const UNSAFE_MIN_TTL_ENV: &str = "MESHGATE_UNSAFE_MIN_TTL_SECS";

/// Reads a whole number of seconds from `var`, if set.
fn unsafe_secs_env(var: &'static str) -> Result<Option<core::time::Duration>, ServeError> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Some(core::time::Duration::from_secs(secs))),
            _ => Err(ServeError::BadEnv { var, value: v }),
        },
    }
}

/// The access-log sink chosen by `MESHGATE_ACCESS_LOG` (see module docs).
fn access_log_sink() -> Result<dataplane::AccessLogSink, ServeError> {
    match std::env::var_os("MESHGATE_ACCESS_LOG") {
        None => Ok(dataplane::AccessLogSink::Stdout),
        Some(v) if v == "stdout" || v == "-" || v.is_empty() => {
            Ok(dataplane::AccessLogSink::Stdout)
        }
        Some(v) if v == "off" => Ok(dataplane::AccessLogSink::Discard),
        Some(v) => {
            let path = PathBuf::from(v);
            dataplane::AccessLogSink::file(&path)
                .map_err(|source| ServeError::AccessLog { path, source })
        }
    }
}

/// The services of the settings, as the admin API shows them. A service's
/// workload identity (namespace, labels, account) is its first workload's;
/// without workloads, the service's namespace and no labels.
fn service_infos(settings: &Settings) -> Vec<ServiceInfo> {
    settings
        .services
        .iter()
        .map(|s| {
            let first = s.workloads.first();
            ServiceInfo {
                hosts: s.hosts.clone(),
                namespace: first.map_or_else(|| s.namespace.clone(), |w| w.namespace.clone()),
                labels: first.map(|w| w.labels.clone()).unwrap_or_default(),
                service_account: first.map(|w| w.service_account.clone()),
                ports: s
                    .ports
                    .iter()
                    .map(|p| PortInfo {
                        number: p.number,
                        name: (!p.name.is_empty()).then(|| p.name.clone()),
                        protocol: if p.protocol.is_http() { "http" } else { "tcp" }.to_owned(),
                        target_port: first.map_or(p.target_port, |w| w.port_for(p)),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Most host names put into the gateway's certificate; a certificate with
/// thousands of names would slow every handshake.
const MAX_SERVING_NAMES: usize = 100;

/// The DNS names the gateway's serving certificate carries: every host of
/// every service it routes (so curl and browsers can verify it with the
/// mesh roots instead of `-k`). Hosts that cannot be DNS SANs (IP
/// addresses, short names) are left out with a note in the log.
fn serving_names(settings: &Settings) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for host in settings.services.iter().flat_map(|s| &s.hosts) {
        let host = host.to_ascii_lowercase();
        if names.contains(&host) {
            continue;
        }
        if !meshgate_ca::ca::is_dns_san(&host) {
            tracing::info!(%host, "service host is not a DNS name; not in the gateway certificate");
            continue;
        }
        if names.len() == MAX_SERVING_NAMES {
            tracing::warn!(
                max = MAX_SERVING_NAMES,
                "more service hosts than fit the gateway certificate; the rest are left out"
            );
            break;
        }
        names.push(host);
    }
    names
}

/// Runs the gateway until SIGTERM or SIGINT.
pub(crate) async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;

    let mut settings = match &args.config {
        Some(path) => Settings::load(path).map_err(ServeError::Settings)?,
        None => Settings::embedded_default(),
    };
    // `--listen` moves a listener's socket (tests, several gateways on one
    // host); routing keeps using the port from the settings, which is the
    // service port that requests naming no port are meant for.
    let routing_ports: std::collections::HashMap<String, u16> = settings
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.address.port()))
        .collect();
    for o in &args.listen {
        let l = settings
            .listeners
            .iter_mut()
            .find(|l| l.name == o.name)
            .ok_or_else(|| ServeError::UnknownListener(o.name.clone()))?;
        l.address = o.addr;
    }
    if let Some(tls) = &settings.tls {
        // Fail closed rather than silently serving a different certificate
        // than the one configured.
        return Err(ServeError::TlsFilesUnsupported(tls.cert_file.clone()));
    }
    raise_fd_limit(&settings.limits);
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.clone());

    fsutil::ensure_private_dir(&data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    // Kubernetes mode keeps the state in Secrets, shared by the replicas;
    // the data directory then only holds this replica's admin token.
    let kube = if args.kubernetes {
        let options = meshgate_kube::KubeOptions::from_env(
            &settings.trust_domain.to_string(),
            &settings.root_namespace,
        );
        Some(
            meshgate_kube::KubeMode::connect(options)
                .await
                .map_err(ServeError::Kube)?,
        )
    } else {
        None
    };
    let store: Arc<dyn Store> = match &kube {
        Some(k) => k.state_store().map_err(ServeError::Kube)?,
        None => {
            let (store, report) = FileStore::open(&data_dir)?;
            for f in &report.removed_temp_files {
                tracing::info!(file = %f.display(), "removed an interrupted write's temporary file");
            }
            Arc::new(store)
        }
    };
    let (auth, new_token) = AdminAuth::load_or_create(&data_dir)?;

    let control = Arc::new(ControlPlane::load(
        MeshSettings {
            trust_domain: settings.trust_domain.to_string(),
            root_namespace: settings.root_namespace.clone(),
        },
        service_infos(&settings),
        settings.policy_paths.clone(),
        store.clone(),
    )?);

    let ca_source = match &args.cacerts {
        Some(dir) => CaSource::detect(dir).map_err(ServeError::Cacerts)?,
        None => CaSource::Generate,
    };
    if let CaSource::Cacerts(dir) = &ca_source {
        println!(
            "meshgate: signing with the plugged-in CA in {}",
            dir.display()
        );
    }
    let mut ca_config = CaConfig::new(settings.trust_domain.clone());
    ca_config.default_ttl = settings.identity.cert_ttl;
    if let Some(min) = unsafe_secs_env(UNSAFE_MIN_TTL_ENV)? {
        eprintln!(
            "meshgate: WARNING: {UNSAFE_MIN_TTL_ENV}={} lowers the CA's minimum certificate lifetime below 60 s; for tests only, never in production",
            min.as_secs()
        );
        tracing::warn!(
            secs = min.as_secs(),
            "{UNSAFE_MIN_TTL_ENV} lowers the CA's minimum certificate lifetime (testing only)"
        );
        ca_config.min_ttl = min;
    }
    let identity_ttl = match unsafe_secs_env(UNSAFE_CERT_TTL_ENV)? {
        Some(ttl) => {
            tracing::warn!(
                secs = ttl.as_secs(),
                "{UNSAFE_CERT_TTL_ENV} overrides the gateway certificate lifetime (testing only)"
            );
            ttl
        }
        None => settings.identity.cert_ttl,
    };
    // In Kubernetes mode only the Lease holder creates a new CA; the other
    // replicas wait for it in the Secret, so all share one trust bundle.
    let mut elector = kube.as_ref().map(|k| k.leader_elector());
    let ca = Arc::new(match (&kube, elector.as_mut()) {
        (Some(k), Some(e)) => k
            .open_ca(store.clone(), ca_config, ca_source, e)
            .await
            .map_err(ServeError::SharedCa)?,
        _ => CertificateAuthority::open(
            store.clone(),
            ca_config,
            &ca_source,
            crate::identity::now(),
            "meshgate",
        )?,
    });
    let revocations: Arc<dyn dataplane::RevocationCheck> = Arc::new(CaRevocations(ca.clone()));
    let sink = Arc::new(DataPlaneIdentity::new(revocations.clone()));
    let (identity_manager, identity) = IdentityManager::start(
        ca.clone(),
        settings.identity.spiffe_id.clone(),
        serving_names(&settings),
        identity_ttl,
        sink.clone(),
        control.clone(),
        Arc::new(SystemClock),
    )?;
    let dp_identity = sink.shared().ok_or(ServeError::NoIdentity)?;

    // The data plane reads the configuration through a snapshot that the
    // control plane replaces on every accepted change.
    let first = control.current();
    let snapshot = Arc::new(ArcSwap::from_pointee(dataplane::Snapshot::from_config(
        first.generation,
        &settings.services,
        first.set.clone(),
    )?));
    control.subscribe(Arc::new(SnapshotPublisher {
        services: settings.services.clone(),
        snapshot: snapshot.clone(),
    }))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Kubernetes mode: the cluster's policies are in force before anything
    // is served (spawn_controller returns after the first one applied).
    let mut leader: Option<watch::Receiver<bool>> = None;
    let mut kube_tasks = Vec::new();
    if let (Some(k), Some(e)) = (kube, elector) {
        leader = Some(e.subscribe());
        kube_tasks.push(tokio::spawn(e.run(stop_rx.clone())));
        let c = control.clone();
        let apply = move |u: meshgate_kube::PolicyUpdate| {
            let c = c.clone();
            async move {
                c.replace_kubernetes_policies(u.policies)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        kube_tasks.push(
            k.spawn_controller(apply, stop_rx.clone(), core::time::Duration::from_secs(30))
                .await
                .map_err(ServeError::Kube)?,
        );
        println!("meshgate: Kubernetes mode, policies from the API server");
    }
    let dp = dataplane::DataPlane::new(
        snapshot,
        dp_identity,
        dataplane::Options::from_limits(&settings.limits),
        access_log_sink()?,
    );
    let mut bound = Vec::with_capacity(settings.listeners.len());
    let mut listener_tasks = Vec::with_capacity(settings.listeners.len());
    for l in &settings.listeners {
        let bind_err = |source| ServeError::Bind {
            what: format!("listener {}", l.name),
            addr: l.address,
            source,
        };
        let mut spec = dataplane::ListenerSpec::from_config(l);
        if let Some(port) = routing_ports.get(&l.name) {
            spec.port = *port;
        }
        let (addr, task) = dp.bind(l.address, spec).await.map_err(bind_err)?;
        let protocol = match l.protocol {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Tcp => "tcp",
        };
        bound.push((l.name.clone(), format!("{addr} ({protocol})")));
        listener_tasks.push(task);
    }
    control.set_listeners(bound.clone());
    dp.set_revocation_check(revocations);
    control.set_data_plane(dp.clone());
    let edge = crate::edge::start(
        crate::edge::EdgeOptions::new(args.edge_addr),
        store.clone(),
        ca.clone(),
        dp.clone(),
        &settings,
        stop_rx.clone(),
    )
    .await?;

    let admin_addr = args.admin_addr.unwrap_or(settings.admin_address);
    let bind_err = |source| ServeError::Bind {
        what: "admin API".to_owned(),
        addr: admin_addr,
        source,
    };
    let admin_listener = TcpListener::bind(admin_addr).await.map_err(bind_err)?;
    let admin_bound = admin_listener.local_addr().map_err(bind_err)?;
    let state = Arc::new(AdminState {
        auth,
        ready: false.into(),
        control: control.clone(),
        ca: ca.clone(),
        identity: identity.clone(),
        extra_metrics: Some({
            let dp = dp.clone();
            Arc::new(move || dp.render_metrics())
        }),
        edge: Some(edge.clone()),
    });
    // With the peer address, so the admin API can rate-limit per client.
    let admin_server = axum::serve(
        admin_listener,
        admin::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let mut admin_task = tokio::spawn(async move { admin_server.await });
    let mut identity_task = tokio::spawn(identity_manager.run(stop_rx.clone()));
    let mut reload_task = tokio::spawn(crate::reload::watch_files(
        control.clone(),
        stop_rx.clone(),
        POLL_INTERVAL,
    ));
    let mut roots_task = {
        let ca = ca.clone();
        let identity = identity.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut ticks: u32 = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ROLLOVER_CHECK_INTERVAL) => {
                        ticks = ticks.wrapping_add(1);
                        // Singleton work: only the Lease holder in Kubernetes mode.
                        let lead = leader.as_ref().is_none_or(|l| *l.borrow());
                        if lead {
                            if admin::ca_api::advance_rollover(&ca) {
                                identity.renew_now();
                            }
                        } else if ticks.is_multiple_of(REPLICA_RELOAD_TICKS) {
                            // The other replicas follow the leader's roll-over
                            // phases and revocations from the shared store.
                            let ca = ca.clone();
                            let reloaded = tokio::task::spawn_blocking(move || {
                                ca.reload(crate::identity::now())
                            })
                            .await;
                            match reloaded {
                                Ok(Ok(true)) => identity.renew_now(),
                                Ok(Ok(false)) => {}
                                Ok(Err(e)) => tracing::warn!(error = %e, "cannot reload the shared CA state"),
                                Err(e) => tracing::warn!(error = %e, "CA reload task failed"),
                            }
                        }
                    }
                    () = crate::serve::stopped(stop.clone()) => return,
                }
            }
        })
    };

    let sweep_task = {
        let control = control.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REVOCATION_SWEEP) => {
                        let closed = control.revocations_changed();
                        if closed > 0 {
                            tracing::info!(closed, "closed connections of revoked peers");
                        }
                    }
                    () = crate::serve::stopped(stop.clone()) => return,
                }
            }
        })
    };

    println!("meshgate: admin API listening on http://{admin_bound}");
    println!("meshgate: data directory {}", data_dir.display());
    for (name, addr) in &bound {
        println!("meshgate: listening on {name} {addr}");
    }
    println!("{}", edge.startup_line());
    if let Some(token) = new_token {
        // Printed exactly once, at the start that created it. The server
        // keeps only its hash; the 0600 copy serves local CLI use.
        println!(
            "meshgate: admin token (shown only now; a copy readable only by you is in {}):",
            data_dir.join(TOKEN_FILE).display()
        );
        println!("  {token}");
    }
    if let Some(id) = control.status().identity {
        println!("meshgate: identity {id}");
    }
    state.ready.store(true, Ordering::Release);
    println!("meshgate: ready");
    tracing::info!(
        admin = %admin_bound,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "meshgate is ready"
    );

    // A panic ends only the task it happens in (release builds unwind, so
    // one connection's bug cannot take every connection down). The tasks
    // the gateway cannot run without are watched here instead: if one ends
    // while serving, the gateway stops with an error so that its
    // supervisor restarts it, rather than serving on without, say,
    // certificate rotation.
    let ended = loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); break None; }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining"); break None; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading policy files");
                // Errors are logged and kept in the status by the control
                // plane; the previous configuration keeps serving.
                let _ignored = control.reload_files(true).await;
            }
            r = &mut identity_task => break Some(("certificate rotation", task_end(r))),
            r = &mut admin_task => break Some(("the admin API", task_end(r))),
            r = &mut reload_task => break Some(("policy file reloading", task_end(r))),
            r = &mut roots_task => break Some(("root roll-over", task_end(r))),
        }
    };
    if let Some((task, why)) = ended {
        state.ready.store(false, Ordering::Release);
        let _ignored = stop_tx.send(true);
        tracing::error!(task, why = %why, "a task the gateway cannot run without ended; stopping");
        return Err(ServeError::TaskEnded { task, why });
    }

    // Not ready any more, so load balancers stop sending; then stop
    // accepting and let in-flight requests finish up to the deadline.
    state.ready.store(false, Ordering::Release);
    let _ignored = stop_tx.send(true);
    let drain = core::time::Duration::from_secs(args.drain_timeout);
    let data_plane = async {
        let open = dp.drain(drain).await;
        for t in listener_tasks {
            let _ = t.await;
        }
        open
    };
    let all = async {
        let (open, ..) = tokio::join!(
            data_plane,
            admin_task,
            identity_task,
            reload_task,
            roots_task,
            sweep_task,
            futures_util::future::join_all(kube_tasks)
        );
        open
    };
    match tokio::time::timeout(drain, all).await {
        Ok(0) => {}
        Ok(open) => tracing::warn!(
            secs = drain.as_secs(),
            open,
            "drain deadline reached; exiting with connections still open"
        ),
        Err(_) => tracing::warn!(
            secs = drain.as_secs(),
            "drain deadline reached; exiting with requests still open"
        ),
    }
    println!("meshgate: stopped");
    Ok(())
}

/// File descriptors the gateway needs besides its inbound connections
/// (listeners, admin API, edge tunnels, store files, logs).
const SPARE_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one (often 1024 → far more),
/// as every proxied connection holds two descriptors: at a soft limit of
/// 1024, `accept` would fail with EMFILE long before `maxConnections` and
/// legitimate clients would be turned away with the attackers. Warns when
/// even the hard limit cannot hold the configured connections.
fn raise_fd_limit(limits: &meshgate_config::settings::Limits) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum
        && let Err(e) = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )
    {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = u64::from(limits.max_connections)
        .saturating_mul(2)
        .saturating_add(SPARE_FDS);
    if now < needed {
        tracing::warn!(
            open_files = now,
            needed,
            "the open-file limit is below what limits.maxConnections needs (two per connection); raise it (ulimit -n) or lower maxConnections"
        );
    }
}

/// Resolves when `rx` turns true (or its sender is gone).
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ignored = rx.wait_for(|stop| *stop).await;
}

/// How a watched task ended, for the log and the exit error.
fn task_end<T: core::fmt::Debug>(r: Result<T, tokio::task::JoinError>) -> String {
    match r {
        Err(e) if e.is_panic() => "panicked".to_owned(),
        Err(e) => format!("was cancelled ({e})"),
        Ok(v) => format!("ended ({v:?})"),
    }
}
