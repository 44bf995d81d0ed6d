//! The edge-node firmware against the REAL gateway: `meshgate serve` (the
//! harness's [`Gateway`]) and the node's own code — the host build
//! `meshgate-edge-host` (embassy-net over a TAP device) or the thumbv7em
//! image on `qemu-system-arm -M mps2-an386` — in a throw-away network
//! namespace. Nothing here stands in for either side.
//!
//! - `host_node_enrolls_bridges_renews_and_is_revoked`: a node and its
//!   one-time token are created with `meshgate edge token create`; the node
//!   enrolls with it; a legacy plaintext curl to the node reaches `details`
//!   through the gateway, and details' XFCC names the node's SPIFFE ID; an
//!   mTLS client reaches the legacy device behind the node (`plc-1.factory`)
//!   through the gateway; node certificates live 20 s (test-only gateway settings), so the node renews
//!   over its live tunnel while both kinds of traffic run, with zero failed
//!   requests; bookinfo stays STRICT throughout; revocation cuts the node
//!   off (it stops, its port and its device are unreachable).
//! - `host_node_refuses_rogue_gateways`: a server with a certificate from
//!   another CA claiming the gateway's identity, and one with a device
//!   certificate from the gateway's own CA, are both refused before the
//!   node sends anything (its one-time token never leaves it).
//! - `qemu_image_enrolls_and_carries_a_legacy_request`: the real thumbv7em
//!   image, provisioned through its setup page, enrolls against the real
//!   gateway and carries a legacy request to `details`.
//!
//! Needs root (network namespace, TAP), curl, python3, openssl and the node
//! builds: `meshgate-edge-host` (`cd gateway-embedded && cargo build -p
//! meshgate-edge-host`, or `MESHGATE_EDGE_HOST_BIN`) and, for the QEMU test,
//! qemu-system-arm and the image `gateway-embedded/scripts/qemu-smoke`
//! builds (or `MESHGATE_QEMU_ELF`). A missing prerequisite SKIPs loudly, and
//! fails under `CI=true`.
//!
//! The outer test creates the namespace and re-runs itself inside it with
//! `ip netns exec` (a process cannot move itself into a namespace without
//! `unsafe`); the gateway, the node, the legacy device and every client run
//! inside, so fixed ports and addresses cannot collide with parallel tests.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::time::Duration;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meshgate_e2e::{
    DETAILS_HOST, Gateway, GatewayOptions, STRICT_YAML, Value, curl, foreign_cert, python,
};

/// Set in the re-run test process: the namespace it runs in.
const NS_ENV: &str = "MESHGATE_EDGE_E2E_NETNS";
/// The TAP device inside the namespace (its node end is the node's NIC).
const TAP: &str = "mgedge0";
/// The gateway's identity, which the node pins.
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
const NODE: &str = "edge-1";
const NODE_NS: &str = "factory";
const NODE_ID: &str = "spiffe://cluster.local/ns/factory/sa/edge-1";
/// An mTLS client of the mesh (an HMI reading the PLC).
const HMI_ID: &str = "spiffe://cluster.local/ns/factory/sa/hmi";
/// Where legacy clients reach `details` on the node.
const LEGACY_PORT: u16 = 8080;
/// Where legacy clients reach `plc-1.factory` on the node: through the
/// gateway and back through the same tunnel to the device (a slow upstream
/// under the test's control).
const HAIRPIN_PORT: u16 = 8081;
/// The tunnel port the gateway listens on (inside the namespace).
const TUNNEL_PORT: u16 = 15443;
/// The legacy device's port (on the namespace's end of the TAP, which is
/// the node's local network).
const DEVICE_PORT: u16 = 5020;
/// The service the device is in the mesh.
const PLC_HOST: &str = "plc-1.factory";

/// The namespace's addresses: (gateway end of the TAP, node).
#[derive(Clone, Copy)]
struct Net {
    gateway: &'static str,
    node: &'static str,
}

/// The host node's subnet (any; the namespace is private).
const HOST_NET: Net = Net {
    gateway: "10.96.0.1",
    node: "10.96.0.2",
};
/// The QEMU image's built-in node address is 10.98.0.2/24.
const QEMU_NET: Net = Net {
    gateway: "10.98.0.1",
    node: "10.98.0.2",
};

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// SKIPs loudly, or fails under `CI=true`.
fn skip(what: &str) {
    assert!(
        !ci(),
        "edge_e2e: missing prerequisite under CI=true: {what}"
    );
    eprintln!("edge_e2e: SKIP ********** {what} **********");
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// The firmware workspace's target directory: `MESHGATE_EDGE_TARGET_DIR`,
/// else `CARGO_TARGET_DIR` (one shared by both workspaces), else its own
/// `gateway-embedded/target`.
fn firmware_target() -> PathBuf {
    std::env::var_os("MESHGATE_EDGE_TARGET_DIR")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map_or_else(
            || repo_root().join("gateway-embedded/target"),
            PathBuf::from,
        )
}

fn host_bin() -> PathBuf {
    std::env::var_os("MESHGATE_EDGE_HOST_BIN").map_or_else(
        || firmware_target().join("debug/meshgate-edge-host"),
        PathBuf::from,
    )
}

fn qemu_elf() -> PathBuf {
    std::env::var_os("MESHGATE_QEMU_ELF").map_or_else(
        || firmware_target().join("thumbv7em-none-eabihf/release/qemu-mps2-an386"),
        PathBuf::from,
    )
}

/// Root, iproute2 and the client tools, or a SKIP (a failure in CI).
fn have_basics() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    for (ok, what) in [
        (root, "root (network namespaces, TAP)"),
        (sh(&["ip", "-V"]), "iproute2"),
        (sh(&["curl", "--version"]), "curl"),
        (sh(&["python3", "--version"]), "python3"),
        (sh(&["openssl", "version"]), "openssl"),
    ] {
        if !ok {
            skip(what);
            return false;
        }
    }
    true
}

/// Which node build a test runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Qemu,
}

/// True when the test can run (always, inside the namespace); otherwise a
/// SKIP (a failure under `CI=true`) naming what is missing.
fn prerequisites(kind: Kind) -> bool {
    if std::env::var_os(NS_ENV).is_some() {
        return true;
    }
    if !have_basics() {
        return false;
    }
    let (node, hint) = match kind {
        Kind::Host => (
            host_bin(),
            "cd gateway-embedded && cargo build -p meshgate-edge-host",
        ),
        Kind::Qemu => {
            if !sh(&["qemu-system-arm", "--version"]) {
                skip("qemu-system-arm (apt-get install qemu-system-arm)");
                return false;
            }
            (qemu_elf(), "gateway-embedded/scripts/qemu-smoke builds it")
        }
    };
    if !node.exists() {
        skip(&format!("{} not built ({hint})", node.display()));
        return false;
    }
    true
}

/// Runs `body` inside a fresh namespace with a TAP device whose namespace
/// end is `net.gateway/24`: re-runs the test `name` there.
fn in_netns(name: &str, tag: &str, net: Net, body: fn(Net)) {
    if std::env::var_os(NS_ENV).is_some() {
        body(net);
        return;
    }
    let ns = format!("mg-edge-e2e-{}-{tag}", std::process::id());
    assert!(sh(&["ip", "netns", "add", &ns]), "ip netns add {ns}");
    let gw_cidr = format!("{}/24", net.gateway);
    let ok = sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])
        && sh(&["ip", "-n", &ns, "tuntap", "add", "dev", TAP, "mode", "tap"])
        && sh(&["ip", "-n", &ns, "addr", "add", &gw_cidr, "dev", TAP])
        && sh(&["ip", "-n", &ns, "link", "set", TAP, "up"]);
    let status = ok.then(|| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(NS_ENV, &ns)
            .status()
    });
    sh(&["ip", "netns", "del", &ns]);
    assert!(ok, "namespace {ns}: setup failed");
    let status = status.and_then(Result::ok).expect("inner test ran");
    assert!(status.success(), "inner test failed: {status}");
}

fn progress(msg: &str) {
    eprintln!("edge_e2e: {msg}");
}

/// Polls `f` every 100 ms until it is true or `secs` pass.
fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node process (host binary or QEMU) and its log.
struct NodeProc {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl NodeProc {
    fn spawn(mut cmd: Command) -> NodeProc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the node");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().expect("lock").push(l);
                }
            });
        }
        NodeProc {
            child: Some(child),
            log,
        }
    }

    /// The host node, provisioned by flags with `gateway`, `root`, `token`.
    fn host(state: &Path, net: Net, gateway: &str, root: &str, token: &str) -> NodeProc {
        let mut cmd = Command::new(host_bin());
        cmd.args(["--tap", TAP, "--ip", &format!("{}/24", net.node)])
            .args(["--router", net.gateway, "--state-dir"])
            .arg(state)
            .args(["--gateway", gateway, "--gateway-id", GATEWAY_ID])
            .args(["--root", root, "--token", token]);
        NodeProc::spawn(cmd)
    }

    fn text(&self) -> String {
        self.log.lock().expect("lock").join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn wait_for(&self, needle: &str, secs: u64) {
        assert!(
            wait_until(secs, || self.count(needle) > 0),
            "node log has no {needle:?} after {secs} s:\n{}",
            self.text()
        );
    }

    /// [`wait_for`](Self::wait_for), with the gateway's log on failure.
    fn wait_with(&self, gw: &Gateway, needle: &str, secs: u64) {
        assert!(
            wait_until(secs, || self.count(needle) > 0),
            "node log has no {needle:?} after {secs} s:\n{}\n---- gateway log ----\n{}",
            self.text(),
            gw.stderr_text()
        );
    }

    /// The exit status, if the process ends within `secs`.
    fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(secs, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The legacy device behind the node: plaintext HTTP/1.1 on the node's
/// local network, answering `200 plc-1 coil 7: on`.
struct Device {
    /// Requests that reached it.
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: core::net::SocketAddr,
}

impl Device {
    fn start(ip: &str) -> Device {
        let listener = TcpListener::bind((ip, DEVICE_PORT)).expect("bind the legacy device");
        let addr = listener.local_addr().expect("device address");
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served2, stop2) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let served = served2.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // Counted on arrival: the client may read the answer
                    // before this thread runs again after writing it.
                    served.fetch_add(1, Ordering::Relaxed);
                    // `/slow` answers late: a client must wait for it.
                    if head.starts_with(b"GET /slow ") {
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                    let body = "plc-1 coil 7: on\n";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes());
                });
            }
        });
        Device { served, stop, addr }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// The device as a mesh service (an Istio ServiceEntry appended to the
/// settings): its endpoint is reached through the node `edge-1`.
fn plc_service(net: Net) -> String {
    format!(
        "\
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plc-1, namespace: {NODE_NS}}}
spec:
  hosts: [{PLC_HOST}]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - address: {ip}
    ports: {{http: {DEVICE_PORT}}}
    labels: {{app: plc, meshgate.io/edge-node: {NODE}}}
",
        ip = net.gateway
    )
}

/// Node certificates in the renewal scenario live this long (test-only
/// gateway settings), so the node renews about every 10 s.
const SHORT_NODE_TTL_SECS: u64 = 20;

/// A gateway whose tunnel listens on the namespace's end of the TAP; with
/// `short_node_certs`, node certificates live [`SHORT_NODE_TTL_SECS`].
fn start_gateway(net: Net, short_node_certs: bool) -> Gateway {
    let mut env = vec![(
        "MESHGATE_EDGE_ADDR".to_owned(),
        format!("{}:{TUNNEL_PORT}", net.gateway),
    )];
    if short_node_certs {
        env.push(("MESHGATE_UNSAFE_MIN_TTL_SECS".into(), "10".into()));
        env.push((
            "MESHGATE_UNSAFE_EDGE_CERT_TTL_SECS".into(),
            SHORT_NODE_TTL_SECS.to_string(),
        ));
    }
    let gw = Gateway::start_with(GatewayOptions {
        env,
        extra_settings: plc_service(net),
        ..GatewayOptions::default()
    });
    gw.apply(STRICT_YAML);
    gw
}

/// `meshgate edge token create` for `edge-1`: legacy clients reach
/// `details` on [`LEGACY_PORT`] and, with `hairpin`, the device itself on
/// [`HAIRPIN_PORT`] (the QEMU image has only three bridge slots: two
/// listeners would leave one for device streams). The printed one-time
/// token.
fn create_token(gw: &Gateway, hairpin: bool) -> String {
    let rule = format!("{LEGACY_PORT}={DETAILS_HOST}:9080");
    let hairpin_rule = format!("{HAIRPIN_PORT}={PLC_HOST}:9080");
    let mut args = vec![
        "edge",
        "token",
        "create",
        "--namespace",
        NODE_NS,
        "--name",
        NODE,
        "--listen",
        &rule,
    ];
    if hairpin {
        args.extend(["--listen", &hairpin_rule]);
    }
    let out = gw.cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "edge token create: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(NODE_ID), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("one-time enrollment token"))
        .unwrap_or_else(|| panic!("no token printed: {stdout}"));
    lines.get(i + 1).expect("token line").trim().to_owned()
}

fn node_view(gw: &Gateway) -> Value {
    gw.api_get(&format!("/api/v1/edge/nodes/{NODE}"))
}

/// A legacy client: plaintext HTTP to the node; (curl exit, body+status).
fn legacy_get(net: Net, path: &str) -> (i32, String, String) {
    let url = format!("http://{}:{LEGACY_PORT}{path}", net.node);
    curl(&["-w", "\n%{http_code}", &url])
}

/// An mTLS client of the mesh calling the device behind the node.
fn mtls_plc_get(gw: &Gateway, cert_dir: &Path) -> (i32, String, String) {
    mtls_plc_get_at(gw.http.port(), cert_dir)
}

/// curl's `-w "\n%{http_code}"` output as "BODY STATUS" (body trimmed).
fn answer(out: &str) -> String {
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out));
    format!("{} {}", body.trim(), code.trim())
}

/// Plaintext to `details` on the gateway gets no HTTP answer: STRICT.
fn assert_bookinfo_strict(gw: &Gateway) {
    let url = format!("http://127.0.0.1:{}/details/0", gw.http.port());
    let host = format!("Host: {DETAILS_HOST}");
    let (code, out, _) = curl(&["-H", &host, "-w", "%{http_code}", &url]);
    assert!(
        code != 0 && out == "000",
        "plaintext reached details: bookinfo is not STRICT ({code}, {out:?})"
    );
}

/// The XFCC header of the last request `details` saw.
fn last_xfcc(gw: &Gateway) -> String {
    gw.details
        .requests()
        .last()
        .and_then(|h| h.get("x-forwarded-client-cert").cloned())
        .unwrap_or_default()
}

#[test]
fn host_node_enrolls_bridges_renews_and_is_revoked() {
    if !prerequisites(Kind::Host) {
        return;
    }
    in_netns(
        "host_node_enrolls_bridges_renews_and_is_revoked",
        "host",
        HOST_NET,
        host_scenario,
    );
}

/// Requests of one kind during the renewal window.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
    slowest_ms: u128,
}

/// One client sending `request(i)` every 100 ms until `stop`; a request
/// succeeds when curl exits 0 and [`answer`] is `expect`.
fn traffic(
    stop: &Arc<AtomicBool>,
    label: &'static str,
    expect: &'static str,
    request: impl Fn(u32) -> (i32, String, String) + Send + 'static,
) -> std::thread::JoinHandle<Tally> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut t = Tally::default();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let start = Instant::now();
            let (code, out, err) = request(i);
            t.slowest_ms = t.slowest_ms.max(start.elapsed().as_millis());
            if code == 0 && answer(&out) == expect {
                t.ok += 1;
            } else {
                t.failed
                    .push(format!("{label} #{i}: curl {code} {out:?} {err}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    })
}

fn host_scenario(net: Net) {
    let t0 = Instant::now();
    let gw = start_gateway(net, true);
    let tunnel = format!("{}:{TUNNEL_PORT}", net.gateway);
    assert_bookinfo_strict(&gw);
    let device = Device::start(net.gateway);
    let work = gw.dir.path().join("edge");
    std::fs::create_dir_all(&work).expect("dir");
    let hmi = gw.issue_cert(HMI_ID, &work.join("hmi"), None);
    let token = create_token(&gw, true);
    assert_eq!(node_view(&gw)["state"], "pending");

    // Enrollment with the one-time token, then the operating tunnel.
    let node = NodeProc::host(
        &work.join("state"),
        net,
        &tunnel,
        &hmi.file("ca.pem"),
        &token,
    );
    node.wait_with(&gw, "certificate installed", 60);
    node.wait_with(&gw, "applied", 30);
    assert!(
        wait_until(10, || node_view(&gw)["connected"] == true),
        "the gateway does not list the node as connected: {}",
        node_view(&gw)
    );
    let view = node_view(&gw);
    assert_eq!(view["state"], "enrolled", "{view}");
    assert_eq!(view["spiffeId"], NODE_ID, "{view}");
    let first_serial = view["certSerial"].as_str().expect("serial").to_owned();
    progress(&format!(
        "enrolled as {NODE_ID} (serial {first_serial}) after {:.1} s",
        t0.elapsed().as_secs_f64()
    ));

    // A legacy plaintext client reaches details through node and gateway,
    // and details sees the node's identity in XFCC.
    let before = gw.details.requests().len();
    let (code, out, err) = legacy_get(net, "/details/1");
    assert_eq!(
        (code, answer(&out).as_str()),
        (0, "upstream:details 200"),
        "legacy curl through the node: {err}\nnode log:\n{}",
        node.text()
    );
    assert_eq!(gw.details.requests().len(), before + 1);
    let xfcc = last_xfcc(&gw);
    assert!(
        xfcc.contains(&format!("URI={NODE_ID}")) && xfcc.contains(&format!("By={GATEWAY_ID}")),
        "details' XFCC does not name the node: {xfcc:?}"
    );
    progress(&format!("legacy -> details OK, XFCC {xfcc}"));

    // An mTLS client reaches the legacy device behind the node.
    let (code, out, err) = mtls_plc_get(&gw, &hmi.dir);
    assert_eq!(
        (code, answer(&out).as_str()),
        (0, "plc-1 coil 7: on 200"),
        "mTLS client -> plc-1 through the tunnel: {err}\nnode log:\n{}",
        node.text()
    );
    assert_eq!(
        device.served.load(Ordering::Relaxed),
        1,
        "requests that reached the device"
    );
    progress("mTLS client -> plc-1.factory (device behind the node) OK");
    assert_bookinfo_strict(&gw);

    // A legacy client that half-closes after its request (shutdown(SHUT_WR),
    // as `nc -N` does) still gets the whole answer.
    let (_, out, err) = python(
        HALF_CLOSE_PY,
        &[net.node, &LEGACY_PORT.to_string(), "/details/half"],
    );
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("upstream:details"),
        "half-closing legacy client: {out:?} {err}"
    );
    // The hairpin (legacy client -> node -> gateway -> node -> device)
    // works, and takes its time with `/slow`.
    let url = format!("http://{}:{HAIRPIN_PORT}/slow", net.node);
    let (code, out, err) = curl(&["-w", "\n%{http_code}", &url]);
    assert_eq!(
        (code, answer(&out).as_str()),
        (0, "plc-1 coil 7: on 200"),
        "legacy client -> node -> gateway -> node -> device: {err}"
    );
    // ... and a client that half-closes gets the late answer too, though
    // its FIN went through node, tunnel and gateway long before.
    let (_, out, err) = python(
        HALF_CLOSE_PY,
        &[net.node, &HAIRPIN_PORT.to_string(), "/slow"],
    );
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("plc-1 coil 7: on"),
        "half-closing legacy client, slow upstream: {out:?} {err}\nnode log:\n{}",
        node.text()
    );
    assert_eq!(
        device.served.load(Ordering::Relaxed),
        3,
        "requests that reached the device"
    );
    progress("legacy clients that half-close after their request: 200 (fast and slow upstream)");

    // Renewal over the live tunnel while both kinds of traffic run: node
    // certificates live 20 s, so the node renews about every 10 s.
    let installs_before = node.count("certificate installed");
    let tls_before = node.count("tls established");
    let stop = Arc::new(AtomicBool::new(false));
    let legacy = traffic(&stop, "legacy", "upstream:details 200", move |i| {
        legacy_get(net, &format!("/details/{i}"))
    });
    let mtls = {
        let (dir, port) = (hmi.dir.clone(), gw.http.port());
        traffic(&stop, "mTLS", "plc-1 coil 7: on 200", move |_| {
            mtls_plc_get_at(port, &dir)
        })
    };
    let renewal_start = Instant::now();
    let mut serials = vec![first_serial.clone()];
    let renewed = wait_until(90, || {
        let s = node_view(&gw)["certSerial"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if serials.last() != Some(&s) {
            progress(&format!(
                "renewed over the tunnel: serial {s} after {:.1} s of traffic",
                renewal_start.elapsed().as_secs_f64()
            ));
            serials.push(s);
        }
        serials.len() >= 4
    });
    // A little traffic on the newest certificate too.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let legacy = legacy.join().expect("legacy traffic thread");
    let mtls = mtls.join().expect("mTLS traffic thread");
    progress(&format!(
        "renewal window {:.1} s: legacy {} ok / {} failed (slowest {} ms), mTLS {} ok / {} failed (slowest {} ms), {} renewals",
        renewal_start.elapsed().as_secs_f64(),
        legacy.ok,
        legacy.failed.len(),
        legacy.slowest_ms,
        mtls.ok,
        mtls.failed.len(),
        mtls.slowest_ms,
        serials.len() - 1
    ));
    assert!(
        renewed,
        "the node did not renew three times in 90 s (serials {serials:?})\nnode log:\n{}",
        node.text()
    );
    assert_eq!(
        node.count("certificate installed"),
        installs_before + serials.len() - 1,
        "every renewal the gateway recorded was installed by the node"
    );
    assert_eq!(
        node.count("tls established"),
        tls_before,
        "renewal must not reconnect the tunnel:\n{}",
        node.text()
    );
    assert!(
        legacy.failed.is_empty() && mtls.failed.is_empty(),
        "failed requests during renewal:\n{}\n{}",
        legacy.failed.join("\n"),
        mtls.failed.join("\n")
    );
    assert!(legacy.ok >= 50 && mtls.ok >= 50, "too little traffic");
    assert_eq!(
        device.served.load(Ordering::Relaxed),
        3 + mtls.ok,
        "every mTLS request reached the device"
    );
    // The certificate in force is the short-lived one.
    let na = node_view(&gw)["certNotAfter"]
        .as_str()
        .and_then(meshgate_e2e::rfc3339_secs)
        .expect("certNotAfter");
    let left = na - meshgate_e2e::wall_now();
    assert!(
        (0.0..=SHORT_NODE_TTL_SECS as f64 + 1.0).contains(&left),
        "node certificate expires in {left} s"
    );
    assert_bookinfo_strict(&gw);

    // Revocation cuts the node off: it is told, stops (exit 3), and
    // neither its legacy port nor the device behind it is reachable.
    let out = gw.cli(&["edge", "revoke", NODE, "--reason", "e2e"]);
    assert!(
        out.status.success(),
        "edge revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut node = node;
    node.wait_with(&gw, "node revoked by the gateway", 10);
    let status = node.wait_exit(10).expect("the revoked node stops");
    assert_eq!(status.code(), Some(3), "{}", node.text());
    let (code, out, _) = legacy_get(net, "/details/9");
    assert!(
        code != 0 && !out.contains("upstream:details"),
        "legacy client still reaches details after revocation: {code} {out:?}"
    );
    let (_, out, _) = mtls_plc_get(&gw, &hmi.dir);
    assert!(
        !out.contains("plc-1 coil 7"),
        "the device behind a revoked node is still reachable: {out:?}"
    );
    let view = node_view(&gw);
    assert_eq!(view["state"], "revoked", "{view}");
    assert_eq!(view["connected"], false, "{view}");
    assert_bookinfo_strict(&gw);
    progress(&format!(
        "revoked; node stopped; whole scenario {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
}

/// [`mtls_plc_get`] for a thread that does not hold the gateway.
fn mtls_plc_get_at(port: u16, cert_dir: &Path) -> (i32, String, String) {
    let url = format!("https://{PLC_HOST}:{port}/coil/7");
    let resolve = format!("{PLC_HOST}:{port}:127.0.0.1");
    let cert = cert_dir.join("chain.pem");
    let key = cert_dir.join("key.pem");
    curl(&[
        "-k",
        "--resolve",
        &resolve,
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "-w",
        "\n%{http_code}",
        &url,
    ])
}

/// A legacy client that sends its request, shuts down its sending side
/// and reads the answer until the node closes.
const HALF_CLOSE_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(f"GET {sys.argv[3]} HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n".encode())
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    data += d
print(data.decode(errors="replace"))
"#;

/// A TLS 1.3 server (Python's ssl) presenting `chain`/`key` on
/// `ip:port` for `secs`; prints one line per connection: whether the
/// client finished the handshake and how many application bytes it sent.
const ROGUE_PY: &str = r#"
import socket, ssl, sys, time
ip, port, chain, key, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(chain, key)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.listen(4)
s.settimeout(0.5)
print("listening", flush=True)
deadline = time.time() + secs
while time.time() < deadline:
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    c.settimeout(10)
    try:
        t = ctx.wrap_socket(c, server_side=True)
    except Exception as e:
        print(f"handshake failed: {type(e).__name__}: {e}", flush=True)
        c.close()
        continue
    got = 0
    try:
        while True:
            d = t.recv(4096)
            if not d:
                break
            got += len(d)
    except Exception:
        pass
    print(f"handshake completed, {got} application bytes", flush=True)
    t.close()
"#;

#[test]
fn host_node_refuses_rogue_gateways() {
    if !prerequisites(Kind::Host) {
        return;
    }
    in_netns(
        "host_node_refuses_rogue_gateways",
        "rogue",
        HOST_NET,
        rogue_scenario,
    );
}

fn rogue_scenario(net: Net) {
    let gw = start_gateway(net, false);
    let work = gw.dir.path().join("rogue");
    // Our CA's bundle (the node's trust root) and a real one-time token:
    // it must never reach a rogue.
    let device = gw.issue_cert(
        "spiffe://cluster.local/ns/factory/sa/plc-1",
        &work.join("device"),
        None,
    );
    let other_ca = foreign_cert(&work.join("other-ca"), GATEWAY_ID);
    let token = create_token(&gw, false);
    let rogues = [
        (
            "another CA, claiming the gateway's identity",
            &other_ca,
            16443,
        ),
        (
            "a device certificate from the gateway's own CA",
            &device,
            16444,
        ),
    ];
    for (i, (what, cert, port)) in rogues.into_iter().enumerate() {
        let mut rogue = NodeProc::spawn({
            let mut c = Command::new("python3");
            c.arg("-c")
                .arg(ROGUE_PY)
                .args([net.gateway, &port.to_string()])
                .args([&cert.file("chain.pem"), &cert.file("key.pem"), "30"]);
            c
        });
        rogue.wait_for("listening", 10);
        let mut node = NodeProc::host(
            &work.join(format!("state-{i}")),
            net,
            &format!("{}:{port}", net.gateway),
            &device.file("ca.pem"),
            &token,
        );
        // Two refused attempts: the refusal is not a one-off.
        assert!(
            wait_until(60, || node.count("connection failed") >= 2
                && rogue.count("handshake") >= 2),
            "rogue ({what}): no two refused attempts in 60 s\nnode:\n{}\nrogue:\n{}",
            node.text(),
            rogue.text()
        );
        drop(node.child.take().map(|mut c| {
            let _ = c.kill();
            c.wait()
        }));
        drop(rogue.child.take().map(|mut c| {
            let _ = c.kill();
            c.wait()
        }));
        let (node_log, rogue_log) = (node.text(), rogue.text());
        let refusals: Vec<&str> = node_log
            .lines()
            .filter(|l| l.contains("connection failed"))
            .collect();
        progress(&format!(
            "rogue ({what}):\n{rogue_log}\nnode: {}",
            refusals.join("\n      ")
        ));
        assert!(
            node_log.contains("connection failed: Tls"),
            "rogue ({what}): the node did not fail the TLS handshake:\n{node_log}"
        );
        assert!(
            !node_log.contains("tls established") && !node_log.contains("enrollment requested"),
            "rogue ({what}): the node talked to it:\n{node_log}"
        );
        assert!(
            rogue_log.contains("handshake failed") && !rogue_log.contains("handshake completed"),
            "rogue ({what}): a handshake completed:\n{rogue_log}"
        );
    }
    // The token was never presented anywhere: the node is still pending.
    assert_eq!(node_view(&gw)["state"], "pending");
}

#[test]
fn qemu_image_enrolls_and_carries_a_legacy_request() {
    if !prerequisites(Kind::Qemu) {
        return;
    }
    in_netns(
        "qemu_image_enrolls_and_carries_a_legacy_request",
        "qemu",
        QEMU_NET,
        qemu_scenario,
    );
}

/// Posts the node's first-time setup form (retrying while it boots).
const SETUP_PY: &str = r#"
import sys, time, urllib.parse, urllib.request
node, gateway, gateway_id, token, root = sys.argv[1:6]
form = urllib.parse.urlencode({
    "gateway": gateway, "gateway_id": gateway_id,
    "token": token, "root": open(root).read(),
}).encode()
for _ in range(100):
    try:
        r = urllib.request.urlopen(f"http://{node}/setup", data=form, timeout=10)
        print(f"setup: HTTP {r.status}, saved: {'Saved.' in r.read().decode()}")
        break
    except OSError as e:
        last = e
        time.sleep(0.3)
else:
    print(f"setup: page unreachable: {last}")
"#;

fn qemu_scenario(net: Net) {
    let t0 = Instant::now();
    let gw = start_gateway(net, false);
    let _device = Device::start(net.gateway);
    let work = gw.dir.path().join("qemu");
    let hmi = gw.issue_cert(HMI_ID, &work.join("hmi"), None);
    let token = create_token(&gw, false);
    let node = NodeProc::spawn({
        let mut c = Command::new("qemu-system-arm");
        c.args(["-M", "mps2-an386", "-nographic"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-nic")
            .arg(format!(
                "tap,ifname={TAP},script=no,downscript=no,model=lan9118"
            ))
            .arg("-kernel")
            .arg(qemu_elf());
        c
    });
    node.wait_for("setup page on port 80", 60);
    let (_, out, err) = python(
        SETUP_PY,
        &[
            net.node,
            &format!("{}:{TUNNEL_PORT}", net.gateway),
            GATEWAY_ID,
            &token,
            &hmi.file("ca.pem"),
        ],
    );
    assert!(
        out.contains("HTTP 200, saved: True"),
        "setup page: {out}{err}\nboot log:\n{}",
        node.text()
    );
    node.wait_with(&gw, "certificate installed", 180);
    node.wait_with(&gw, "applied", 120);
    let view = node_view(&gw);
    assert_eq!(view["state"], "enrolled", "{view}");
    progress(&format!(
        "QEMU image enrolled as {NODE_ID} after {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let (code, out, err) = legacy_get(net, "/details/7");
    assert_eq!(
        (code, answer(&out).as_str()),
        (0, "upstream:details 200"),
        "legacy curl through the QEMU node: {err}\nboot log:\n{}",
        node.text()
    );
    let xfcc = last_xfcc(&gw);
    assert!(
        xfcc.contains(&format!("URI={NODE_ID}")),
        "details' XFCC does not name the node: {xfcc:?}"
    );
    let (code, out, err) = mtls_plc_get(&gw, &hmi.dir);
    assert_eq!(
        (code, answer(&out).as_str()),
        (0, "plc-1 coil 7: on 200"),
        "mTLS client -> device behind the QEMU node: {err}"
    );
    assert_bookinfo_strict(&gw);
    progress(&format!(
        "QEMU node carried legacy -> details and mTLS -> plc-1; {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
}
