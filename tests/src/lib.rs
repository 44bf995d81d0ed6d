//! Harness for meshgate end-to-end tests: the REAL `meshgate` binary in its
//! own process, real sockets, and the seed's own clients (curl, python3).
//!
//! - [`Gateway`] writes a settings file (bookinfo's `details` and
//!   `productpage` behind one HTTP listener, both on ephemeral ports) into a
//!   temporary directory, starts `meshgate serve`, waits for `ready` and
//!   parses the admin and listener addresses from its output. Its stdout
//!   (the JSON access log) is collected for [`Gateway::access_log`].
//! - [`Upstream`] is a plaintext HTTP/1.1 server standing in for a
//!   workload: it answers `200 upstream:<name>` and records each request's
//!   headers (to check `x-forwarded-client-cert`).
//! - [`Gateway::cli`] runs `meshgate` client commands (`apply`, `cert
//!   issue`, `ca rotate-root`, ...) against the gateway.
//! - [`Traffic`] runs `traffic.py` (Python's `http.client`, urllib's
//!   engine) for continuous client traffic with per-request records.
//!
//! The binary is the one cargo built next to the test executable
//! (`target/<profile>/meshgate`), or `MESHGATE_BIN`. `cargo test` does not
//! rebuild another package's binary, so when the gateway's sources are newer
//! than that binary (or it is missing) the harness runs `cargo build -p
//! meshgate` once per test process: a test never silently drives a stale
//! gateway.
//!
//! This is test code: a broken environment fails the test loudly with a
//! message (panics), which is what a test should do.

use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub use serde_json::Value;

/// The bookinfo namespace the seed's policies are about.
pub const NAMESPACE: &str = "bookinfo";
/// The service most tests call.
pub const DETAILS_HOST: &str = "details.bookinfo.svc.cluster.local";
/// The second service (its principal is the one `details-viewer` allows).
pub const PRODUCTPAGE_HOST: &str = "productpage.bookinfo.svc.cluster.local";
/// productpage's identity.
pub const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
/// Another mesh identity (not allowed by `details-viewer`).
pub const SLEEP_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/sleep";

/// The seed's `mutual-tls.yaml`: the bookinfo namespace STRICT.
pub const STRICT_YAML: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: STRICT}
";

/// The same policy switched back to PERMISSIVE.
pub const PERMISSIVE_YAML: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: PERMISSIVE}
";

/// A workload policy: `details` STRICT (the rest of bookinfo keeps the
/// namespace's mode), for tests that need STRICT and PERMISSIVE side by side.
pub const DETAILS_STRICT_YAML: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: details-strict, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: STRICT}
";

/// Only productpage's principal may GET details (ISTIO.md).
pub const DETAILS_VIEWER_YAML: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/bookinfo/sa/bookinfo-productpage\"]}
    to:
    - operation: {methods: [\"GET\"]}
";

/// The `meshgate` binary under test.
pub fn meshgate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("MESHGATE_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test-exe> → target/<profile>/meshgate
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target directory");
        let bin = profile_dir.join("meshgate");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        if is_stale(&bin, workspace) {
            build_meshgate(profile_dir, workspace);
        }
        assert!(
            bin.exists(),
            "{} does not exist: run `cargo build -p meshgate` first (or set MESHGATE_BIN)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// What the gateway binary is built from: Rust, manifests, and the files it
/// embeds (policy YAML, OpenAPI JSON, the web UI).
const SOURCE_EXTENSIONS: &[&str] = &["rs", "toml", "yaml", "json", "js", "html", "css", "svg"];

/// Whether `bin` is missing or older than any source it is built from (the
/// gateway's, the core's and the web UI's files, and Cargo.lock).
fn is_stale(bin: &Path, workspace: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    fn newer(dir: &Path, than: std::time::SystemTime) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let path = e.path();
            let Ok(kind) = e.file_type() else {
                return false;
            };
            if kind.is_dir() {
                let name = e.file_name();
                name != "target" && !name.to_string_lossy().starts_with('.') && newer(&path, than)
            } else {
                let source = path
                    .extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| SOURCE_EXTENSIONS.contains(&x));
                source
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t > than)
            }
        })
    }
    workspace
        .join("Cargo.lock")
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t > built)
        || newer(&workspace.join("gateway-linux"), built)
        || newer(&workspace.join("core"), built)
        || newer(&workspace.join("web-ui"), built)
}

/// `cargo build -p meshgate` into the target directory this test runs from.
fn build_meshgate(profile_dir: &Path, workspace: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let target_dir = profile_dir.parent().expect("target directory");
    eprintln!(
        "meshgate-e2e: {}/meshgate is missing or older than its sources: building it",
        profile_dir.display()
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--locked", "-p", "meshgate"])
        .env("CARGO_TARGET_DIR", target_dir);
    // What cargo set for this test process describes the test crate; build
    // scripts that watch these (ring's watches CARGO_MANIFEST_DIR) would
    // otherwise rebuild, and the next plain `cargo build` rebuild again.
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(k);
        }
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo build -p meshgate");
    assert!(status.success(), "cargo build -p meshgate failed: {status}");
}

/// A stand-in workload: plaintext HTTP/1.1, one request per connection.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Starts an upstream answering `200 upstream:<name>`.
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2, body) = (seen.clone(), stop.clone(), format!("upstream:{name}\n"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (seen, body) = (seen2.clone(), body.clone());
                std::thread::spawn(move || serve_upstream(conn, &seen, &body));
            }
        });
        Upstream { addr, seen, stop }
    }

    /// Headers (lower-case names) of every request received so far.
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_upstream(conn: TcpStream, seen: &Mutex<Vec<HashMap<String, String>>>, body: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_owned();
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                }
                // A repeated field is kept as one comma-joined value, so a
                // test sees that it was sent twice.
                match headers.entry(k) {
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        let joined: &mut String = o.get_mut();
                        joined.push_str(", ");
                        joined.push_str(&v);
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(v);
                    }
                }
            }
        }
        if content_length > 0 {
            let mut sink = vec![0u8; content_length];
            if reader.read_exact(&mut sink).is_err() {
                return;
            }
        }
        seen.lock().expect("lock").push(headers);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// How to start a gateway.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// Extra environment variables for `meshgate serve`.
    pub env: Vec<(String, String)>,
    /// `identity.certTtl` in the settings (e.g. `90s`); default 24h.
    pub cert_ttl: Option<String>,
    /// Appended to the settings file as is: top-level settings keys (e.g.
    /// a `limits:` block), then optionally `---` and Istio
    /// ServiceEntry/WorkloadEntry documents for more services.
    pub extra_settings: String,
    /// A command the gateway is started under, e.g. `unshare -m ... sh -c
    /// '...; exec "$@"' sh`: it must `exec` the arguments that follow
    /// (`meshgate serve ...`), so that [`Gateway::pid`] stays the
    /// gateway's. Read at every [`Gateway::spawn`].
    pub wrapper: Vec<String>,
    /// Bind the HTTP listener here instead of an ephemeral port (e.g. the
    /// previous address, so clients reach a restarted gateway). Read at
    /// every [`Gateway::spawn`].
    pub listen: Option<SocketAddr>,
}

/// A running `meshgate serve` and its temporary home.
pub struct Gateway {
    /// Temporary directory: settings, data dir, certificates.
    pub dir: tempfile::TempDir,
    /// The data directory.
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub admin_url: String,
    /// The HTTP data-plane listener.
    pub http: SocketAddr,
    /// The admin token (from the data directory).
    pub token: String,
    /// The upstreams behind `details` and `productpage`.
    pub details: Arc<Upstream>,
    /// productpage's upstream.
    pub productpage: Arc<Upstream>,
    options: GatewayOptions,
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts a gateway with default options.
    pub fn start() -> Gateway {
        Self::start_with(GatewayOptions::default())
    }

    /// Starts a gateway.
    pub fn start_with(options: GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let details = Arc::new(Upstream::start("details"));
        let productpage = Arc::new(Upstream::start("productpage"));
        std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        let ttl = options.cert_ttl.clone().unwrap_or_else(|| "24h".to_owned());
        let settings = format!(
            "\
trustDomain: cluster.local
rootNamespace: istio-system
dataDir: data
admin: {{address: 127.0.0.1:15000}}
listeners:
- {{name: http, address: 127.0.0.1:9080, protocol: http}}
policies: [policies/]
identity: {{certTtl: {ttl}}}
services:
- name: details
  namespace: bookinfo
  hosts: [{DETAILS_HOST}]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {dport}}}
    labels: {{app: details, version: v1}}
    serviceAccount: bookinfo-details
- name: productpage
  namespace: bookinfo
  hosts: [{PRODUCTPAGE_HOST}]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {pport}}}
    labels: {{app: productpage, version: v1}}
    serviceAccount: bookinfo-productpage
{extra}",
            dport = details.addr.port(),
            pport = productpage.addr.port(),
            extra = options.extra_settings,
        );
        std::fs::write(dir.path().join("meshgate.yaml"), settings).expect("write settings");
        let data_dir = dir.path().join("data");
        let mut gw = Gateway {
            dir,
            data_dir,
            admin_url: String::new(),
            http: "127.0.0.1:0".parse().expect("addr"),
            token: String::new(),
            details,
            productpage,
            options,
            child: None,
            stdout: Arc::default(),
            stderr: Arc::default(),
        };
        gw.spawn();
        gw
    }

    /// Starts (or restarts) the process on the same directory and waits
    /// until it prints `meshgate: ready`.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "gateway already running");
        self.stdout.lock().expect("lock").clear();
        let mut cmd = match self.options.wrapper.split_first() {
            None => Command::new(meshgate_bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(meshgate_bin());
                c
            }
        };
        let listen = self
            .options
            .listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("meshgate.yaml"))
            // Ephemeral ports; routing still uses the settings' port 9080.
            .arg("--admin-addr")
            .arg("127.0.0.1:0")
            .arg("--listen")
            .arg(format!("http={listen}"))
            .arg("--drain-timeout")
            .arg("3")
            .env("RUST_LOG", "info")
            // Gateways run in parallel: every listener on an ephemeral port
            // (the edge tunnel's default is a fixed one).
            .env("MESHGATE_EDGE_ADDR", "127.0.0.1:0")
            .env_remove("MESHGATE_ACCESS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn meshgate serve");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let lines = self.stdout.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(l);
            }
        });
        let lines = self.stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(l);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.stdout.lock().expect("lock").clone();
            if out.iter().any(|l| l == "meshgate: ready") {
                for l in &out {
                    if let Some(a) = l.strip_prefix("meshgate: admin API listening on ") {
                        a.clone_into(&mut self.admin_url);
                    }
                    if let Some(rest) = l.strip_prefix("meshgate: listening on http ") {
                        let addr = rest.split_whitespace().next().expect("listener address");
                        self.http = addr.parse().expect("listener address parses");
                    }
                }
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "meshgate serve exited with {status} before ready\nstdout:\n{}\nstderr:\n{}",
                    out.join("\n"),
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "meshgate serve not ready after 30 s\nstdout:\n{}\nstderr:\n{}",
                out.join("\n"),
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.token = std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("admin-token file")
            .trim()
            .to_owned();
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        c.wait().expect("wait")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The options the next [`Self::spawn`] uses (wrapper, listen address).
    pub fn options_mut(&mut self) -> &mut GatewayOptions {
        &mut self.options
    }

    /// The gateway's resident set size in KiB (`VmRSS` in
    /// `/proc/PID/status`), while running.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Everything the gateway wrote to stderr (its logs).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// The access-log entries printed so far (JSON lines on stdout).
    pub fn access_log(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runs a `meshgate` client command against this gateway.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(meshgate_bin())
            .args(args)
            .env("MESHGATE_ADMIN", &self.admin_url)
            .env("MESHGATE_DATA_DIR", &self.data_dir)
            .env_remove("MESHGATE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run meshgate")
    }

    /// `meshgate apply -f FILE` with `yaml` written to a file; panics with
    /// the CLI's output on failure.
    pub fn apply(&self, yaml: &str) -> Output {
        let f = self.dir.path().join(format!("apply-{}.yaml", unique()));
        std::fs::write(&f, yaml).expect("write yaml");
        let out = self.cli(&["apply", "-f", f.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "meshgate apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `meshgate cert issue --spiffe-id ID --out DIR [--ttl TTL]`.
    pub fn issue_cert(&self, spiffe_id: &str, out: &Path, ttl: Option<&str>) -> CertFiles {
        let mut args = vec![
            "cert",
            "issue",
            "--spiffe-id",
            spiffe_id,
            "--out",
            out.to_str().expect("utf-8 path"),
        ];
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let o = self.cli(&args);
        assert!(
            o.status.success(),
            "cert issue failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let serial = text
            .split("(serial ")
            .nth(1)
            .and_then(|r| r.split([',', ')']).next())
            .expect("serial in cert issue output")
            .to_owned();
        CertFiles {
            dir: out.to_path_buf(),
            serial,
        }
    }

    /// GET an admin API path with the token; the JSON answer.
    pub fn api_get(&self, path: &str) -> Value {
        let (status, body) = self.api("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// One admin API call (HTTP/1.1 over a plain socket): status and body.
    pub fn api(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        let addr = self
            .admin_url
            .strip_prefix("http://")
            .expect("admin url")
            .to_owned();
        let mut s = TcpStream::connect(&addr).expect("connect admin");
        let body = json.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, dechunk(&body))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.api("GET", "/metrics", None);
        assert_eq!(status, 200);
        body
    }

    /// `https://HOST:PORT` URL for curl with `--resolve`, and the flag.
    pub fn curl_target(&self, host: &str, path: &str) -> (String, String) {
        (
            format!("https://{host}:{}{path}", self.http.port()),
            format!("{host}:{}:127.0.0.1", self.http.port()),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Undoes HTTP/1.1 chunked transfer encoding when present (axum answers
/// chunked when it streams).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = tail.get(..n) else {
            return body.to_owned();
        };
        out.push_str(chunk);
        rest = tail.get(n + 2..).unwrap_or("");
    }
}

/// Certificate files written by `meshgate cert issue`.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The directory with key.pem, cert.pem, chain.pem, ca.pem.
    pub dir: PathBuf,
    /// The serial the CLI printed.
    pub serial: String,
}

impl CertFiles {
    /// Path of one file in the directory.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

/// A process-unique counter for file names.
pub fn unique() -> u64 {
    static N: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Wall-clock seconds (what `traffic.py` records).
pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs curl with `args`; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a python3 snippet; returns (exit code, stdout, stderr).
pub fn python(code: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python3");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Makes a certificate from a CA that is NOT the gateway's (openssl), with
/// a mesh SPIFFE ID, in `dir`: ca.pem, key.pem, chain.pem.
pub fn foreign_cert(dir: &Path, spiffe_id: &str) -> CertFiles {
    std::fs::create_dir_all(dir).expect("dir");
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/O=other-mesh/CN=other root",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/O=other-mesh",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n"
        ),
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "chain.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    CertFiles {
        dir: dir.to_path_buf(),
        serial: String::new(),
    }
}

/// One request record from `traffic.py`.
#[derive(Clone, Debug)]
pub struct Record {
    /// Client name.
    pub client: String,
    /// Start and end (wall clock, seconds).
    pub t0: f64,
    /// End.
    pub t1: f64,
    /// Local port of the connection (identifies the access-log entry).
    pub lport: Option<u16>,
    /// HTTP status, `None` when no response arrived.
    pub status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// Serial of the certificate the gateway served.
    pub peer_serial: Option<String>,
    /// Resolved client certificate directory.
    pub cert_dir: Option<String>,
}

/// Continuous traffic from `traffic.py`.
pub struct Traffic {
    child: Child,
    stop_file: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts clients (JSON objects, see traffic.py) against the gateway's
    /// HTTP listener for at most `max` (stop earlier with [`Self::stop`]).
    pub fn start(gw: &Gateway, host: &str, path: &str, clients: &Value, max: Duration) -> Traffic {
        let script = gw.dir.path().join("traffic.py");
        std::fs::write(&script, include_str!("traffic.py")).expect("write traffic.py");
        let stop_file = gw.dir.path().join(format!("stop-{}", unique()));
        let cfg = serde_json::json!({
            "addr": gw.http.to_string(),
            "host": host,
            "path": path,
            "duration": max.as_secs_f64(),
            "stop_file": stop_file,
            "clients": clients,
        });
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(cfg.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 traffic.py");
        let out = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().expect("lock").push(l);
            }
        });
        Traffic {
            child,
            stop_file,
            lines,
            reader: Some(reader),
        }
    }

    /// Requests completed so far.
    pub fn count(&self) -> usize {
        self.lines.lock().expect("lock").len()
    }

    /// Stops the clients and returns every record.
    pub fn stop(mut self) -> Vec<Record> {
        std::fs::write(&self.stop_file, b"stop").expect("stop file");
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().expect("lock").clone();
        lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("traffic.py JSON line");
                let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                Record {
                    client: s("client").unwrap_or_default(),
                    t0: v.get("t0").and_then(Value::as_f64).unwrap_or(0.0),
                    t1: v.get("t1").and_then(Value::as_f64).unwrap_or(0.0),
                    lport: v
                        .get("lport")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok()),
                    status: v
                        .get("status")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok()),
                    error: s("error"),
                    peer_serial: s("peer_serial"),
                    cert_dir: s("cert_dir"),
                }
            })
            .collect()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, b"stop");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Access-log entries indexed by the client's local port (`source` =
/// ip:port). Ports are reused over a long run, so each port maps to every
/// entry with it, with the entry's time.
pub struct AccessIndex(HashMap<u16, Vec<(f64, Value)>>);

impl AccessIndex {
    /// Indexes `log`.
    pub fn new(log: &[Value]) -> AccessIndex {
        let mut m: HashMap<u16, Vec<(f64, Value)>> = HashMap::new();
        for e in log {
            let port = e
                .get("source")
                .and_then(Value::as_str)
                .and_then(|s| s.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok());
            let t = e.get("time").and_then(Value::as_str).and_then(rfc3339_secs);
            if let (Some(port), Some(t)) = (port, t) {
                m.entry(port).or_default().push((t, e.clone()));
            }
        }
        AccessIndex(m)
    }

    /// The entry of the request a client made from `port` between `t0`
    /// and `t1` (the entry's time is when the gateway finished it, so it
    /// may be slightly after `t1`).
    pub fn find(&self, port: u16, t0: f64, t1: f64) -> Option<&Value> {
        self.0
            .get(&port)?
            .iter()
            .find(|(t, _)| *t >= t0 - 0.01 && *t <= t1 + 1.0)
            .map(|(_, e)| e)
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac]Z` (UTC).
pub fn rfc3339_secs(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[expect(clippy::cast_precision_loss, reason = "seconds since 1970 fit f64")]
    let whole = (days * 86_400 + h * 3600 + mi * 60) as f64;
    Some(whole + sec)
}
