//! The servers under test, run as this process's own children with
//! configuration files generated into the run's temporary directory
//! (never the system services).
//!
//! Every TLS target is set up for the same work: TLS 1.3 only, P-256
//! ECDHE, the bench server certificate (or, for meshgate, one its CA issues
//! from the bench CA), a client certificate *required* and verified against
//! the bench CA, no session tickets or cache, one worker thread, and HTTP
//! forwarding with keep-alive to the same plaintext upstream.

use core::net::SocketAddr;
use core::time::Duration;
use std::fs::{self, File};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::certs::PkiFiles;

/// The service host every target is addressed as (SNI and `Host`).
/// meshgate routes by it; nginx and HAProxy have one site and ignore it.
pub const SERVICE_HOST: &str = "upstream.bench.svc.cluster.local";

/// The kinds of target, in the order of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The plaintext upstream itself, no proxy: the reference.
    Direct,
    /// nginx (Debian package), one worker process.
    Nginx,
    /// HAProxy (Debian package), one thread.
    Haproxy,
    /// `meshgate serve --workers 1`: one single-threaded event loop.
    Meshgate,
}

impl Kind {
    /// All kinds, in report order.
    pub const ALL: [Kind; 4] = [Kind::Direct, Kind::Nginx, Kind::Haproxy, Kind::Meshgate];

    /// Lower-case name (CLI `--only`, report).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Meshgate => "meshgate",
        }
    }

    /// Parses a [`Kind::name`].
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether clients speak mTLS to it.
    pub fn is_tls(self) -> bool {
        self != Kind::Direct
    }
}

/// Why a target could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Writing a configuration file or reserving a port failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The process exited before it listened.
    #[error("{name} exited during start-up ({status}); its log {log}:\n{tail}")]
    Exited {
        /// The target.
        name: &'static str,
        /// Exit status.
        status: String,
        /// The log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// The port never accepted connections.
    #[error("{name} did not listen on {addr} within {secs} s; its log {log}:\n{tail}")]
    NotListening {
        /// The target.
        name: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Seconds waited.
        secs: u64,
        /// The log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TargetError {
    let what = what.into();
    move |source| TargetError::Io { what, source }
}

/// Executables and shared files of a run.
#[derive(Debug, Clone)]
pub struct Env {
    /// Scratch directory of the run (configs, logs, data dirs).
    pub dir: PathBuf,
    /// The bench PKI's files.
    pub pki: PkiFiles,
    /// The upstream every proxy forwards to.
    pub upstream: SocketAddr,
    /// `nginx` executable.
    pub nginx_bin: PathBuf,
    /// `haproxy` executable.
    pub haproxy_bin: PathBuf,
    /// `meshgate` executable (release build).
    pub meshgate_bin: PathBuf,
}

/// A running target.
#[derive(Debug)]
pub struct Server {
    /// What it is.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The log file (stderr, and stdout where it is not an access log).
    pub log: PathBuf,
    child: Child,
}

impl Server {
    /// Process id of the (master) process; its descendants count too.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop (SIGTERM), waits up to 5 s, then kills it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now. (Another process could
/// take it before the target binds it; start-up then fails loudly.)
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Spawns `cmd` with stderr (and stdout unless `stdout_null`) appended to
/// `log`, then waits until `addr` accepts TCP connections.
pub fn spawn_listening(
    kind: Kind,
    mut cmd: Command,
    addr: SocketAddr,
    log: PathBuf,
    stdout_null: bool,
) -> Result<Server, TargetError> {
    let file = File::create(&log).map_err(io_err(format!("create {}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(io_err(format!("dup {}", log.display())))?;
    cmd.stdin(Stdio::null()).stderr(err).stdout(if stdout_null {
        Stdio::null()
    } else {
        Stdio::from(file)
    });
    let child = cmd
        .spawn()
        .map_err(io_err(format!("start {}", kind.name())))?;
    let mut server = Server {
        kind,
        addr,
        log,
        child,
    };
    let secs = 20;
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = server.exited() {
            return Err(TargetError::Exited {
                name: kind.name(),
                status,
                log: server.log.clone(),
                tail: log_tail(&server.log, 20),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(server);
        }
        if Instant::now() >= until {
            return Err(TargetError::NotListening {
                name: kind.name(),
                addr,
                secs,
                log: server.log.clone(),
                tail: log_tail(&server.log, 20),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn write(path: &Path, text: &str) -> Result<(), TargetError> {
    fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

/// nginx's configuration: one worker, TLS 1.3 / P-256 / client certificate
/// required, no tickets or session cache, no access log, keep-alive to the
/// upstream (without it nginx would open an upstream connection per
/// request and lose for a reason unrelated to TLS).
pub fn nginx_config(env: &Env, port: u16, prefix: &Path) -> String {
    let p = |x: &Path| x.display().to_string();
    let pre = p(prefix);
    format!(
        r#"# generated by meshgate-bench
worker_processes 1;
daemon off;
master_process on;
pid {pre}/nginx.pid;
error_log {pre}/nginx-error.log warn;
worker_rlimit_nofile 40000;
events {{
    worker_connections 30000;
}}
http {{
    access_log off;
    client_body_temp_path {pre}/body;
    proxy_temp_path {pre}/proxy;
    fastcgi_temp_path {pre}/fastcgi;
    uwsgi_temp_path {pre}/uwsgi;
    scgi_temp_path {pre}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    upstream bench_upstream {{
        server {up};
        keepalive 256;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        server_name {host} localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_ecdh_curve prime256v1;
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"#,
        up = env.upstream,
        host = SERVICE_HOST,
        cert = p(&env.pki.server_cert),
        key = p(&env.pki.server_key),
        ca = p(&env.pki.ca_cert),
    )
}

/// Starts nginx in the foreground (master + one worker).
pub fn start_nginx(env: &Env) -> Result<Server, TargetError> {
    let port = free_port().map_err(io_err("reserve a port for nginx"))?;
    let prefix = env.dir.join("nginx");
    fs::create_dir_all(&prefix).map_err(io_err(format!("create {}", prefix.display())))?;
    let conf = prefix.join("nginx.conf");
    write(&conf, &nginx_config(env, port, &prefix))?;
    let mut cmd = Command::new(&env.nginx_bin);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf);
    // nginx reports its early errors to the compiled-in error log path
    // before reading ours; -e sends them to our log instead.
    cmd.arg("-e").arg(prefix.join("nginx-error.log"));
    spawn_listening(
        Kind::Nginx,
        cmd,
        loopback(port),
        prefix.join("nginx.out"),
        false,
    )
}

/// HAProxy's configuration: one thread, the same TLS settings, no tickets
/// or session cache, no logging, keep-alive to the upstream with
/// connection reuse across client sessions.
pub fn haproxy_config(env: &Env, port: u16) -> String {
    let p = |x: &Path| x.display().to_string();
    format!(
        r#"# generated by meshgate-bench
global
    nbthread 1
    # HAProxy wants 2 descriptors per connection and refuses to start if
    # it cannot raise the limit that far; the bench's 10k idle client
    # connections share a few upstream ones (http-reuse always), so the
    # inherited limit is enough and a failed raise only warns.
    no strict-limits
    maxconn 30000
    tune.ssl.cachesize 0
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    timeout http-request 600s
    maxconn 30000
    http-reuse always

frontend bench
    bind 127.0.0.1:{port} ssl crt {crt} ca-file {ca} verify required curves P-256 ssl-min-ver TLSv1.3 no-tls-tickets
    default_backend upstream

backend upstream
    server up {up}
"#,
        crt = p(&env.pki.server_combined),
        ca = p(&env.pki.ca_cert),
        up = env.upstream,
    )
}

/// Starts HAProxy in the foreground (one process, one thread).
pub fn start_haproxy(env: &Env) -> Result<Server, TargetError> {
    let port = free_port().map_err(io_err("reserve a port for haproxy"))?;
    let dir = env.dir.join("haproxy");
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let conf = dir.join("haproxy.cfg");
    write(&conf, &haproxy_config(env, port))?;
    let mut cmd = Command::new(&env.haproxy_bin);
    cmd.arg("-db").arg("-f").arg(&conf);
    spawn_listening(
        Kind::Haproxy,
        cmd,
        loopback(port),
        dir.join("haproxy.log"),
        false,
    )
}

/// meshgate's settings: one HTTP listener; the upstream as a plaintext
/// (legacy) endpoint of `upstream.bench.svc.cluster.local` in namespace
/// `bench`; policies from `policies/`. The limits match what nginx and
/// HAProxy are given (30,000 connections, 600 s keep-alive): every bench
/// client comes from 127.0.0.1, so the default per-source cap (1,000)
/// would refuse the idle phase's connections.
pub fn meshgate_settings(env: &Env, port: u16, admin_port: u16, data_dir: &Path) -> String {
    format!(
        r#"# generated by meshgate-bench
trustDomain: cluster.local
dataDir: {data}
admin:
  address: 127.0.0.1:{admin_port}
limits:
  maxConnections: 30000
  maxConnectionsPerSource: 30000
  idleTimeout: 600s
listeners:
- name: bench
  address: 127.0.0.1:{port}
  protocol: http
policies: [policies/]
services:
- name: upstream
  namespace: bench
  hosts: [{host}]
  ports:
  - {{number: {port}, name: http, protocol: HTTP, targetPort: {up_port}}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    labels: {{app: upstream}}
    serviceAccount: upstream
"#,
        data = data_dir.display(),
        host = SERVICE_HOST,
        up_port = env.upstream.port(),
    )
}

/// The bench namespace requires mTLS: without it meshgate would accept
/// plaintext too, and the comparison would not be the same work.
pub const STRICT_POLICY: &str = r#"# generated by meshgate-bench
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bench
spec:
  mtls:
    mode: STRICT
"#;

/// Starts `meshgate serve` with the bench CA plugged in as `cacerts` (so
/// its serving certificate chains to the bench CA and it trusts the
/// client certificate), one worker (`--workers 1`), the access log off (as
/// for nginx and HAProxy; `MESHGATE_ACCESS_LOG=off` keeps only the admin
/// API's in-memory recent list), warnings only on stderr.
pub fn start_meshgate(env: &Env) -> Result<Server, TargetError> {
    let port = free_port().map_err(io_err("reserve a port for meshgate"))?;
    let admin_port = free_port().map_err(io_err("reserve an admin port for meshgate"))?;
    let dir = env.dir.join("meshgate");
    let policies = dir.join("policies");
    let data = dir.join("data");
    fs::create_dir_all(&policies).map_err(io_err(format!("create {}", policies.display())))?;
    // A fresh data directory per start: the CA state and identity are
    // rebuilt from the bench CA each time.
    let _ = fs::remove_dir_all(&data);
    let settings = dir.join("meshgate.yaml");
    write(&settings, &meshgate_settings(env, port, admin_port, &data))?;
    write(&policies.join("strict.yaml"), STRICT_POLICY)?;
    let mut cmd = Command::new(&env.meshgate_bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&settings)
        .arg("--data-dir")
        .arg(&data)
        .arg("--cacerts")
        .arg(&env.pki.cacerts_dir)
        // One worker, as nginx and HAProxy get: meshgate then runs its
        // single-threaded event loop.
        .arg("--workers")
        .arg("1")
        .env("MESHGATE_ACCESS_LOG", "off")
        .env("RUST_LOG", "warn");
    spawn_listening(
        Kind::Meshgate,
        cmd,
        loopback(port),
        dir.join("meshgate.log"),
        true,
    )
}

/// Starts the plaintext upstream (`self_exe upstream --listen ADDR`).
pub fn start_upstream(self_exe: &Path, dir: &Path) -> Result<Server, TargetError> {
    let port = free_port().map_err(io_err("reserve a port for the upstream"))?;
    let addr = loopback(port);
    let mut cmd = Command::new(self_exe);
    cmd.arg("upstream").arg("--listen").arg(addr.to_string());
    spawn_listening(Kind::Direct, cmd, addr, dir.join("upstream.log"), false)
}
