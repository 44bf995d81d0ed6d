//! End to end: the real `meshgate serve --kubernetes` binary against the
//! fake API server — a STRICT PeerAuthentication applied as a resource is
//! enforced on real sockets within 1 s, the CA lives in the state Secret,
//! and a second replica shares it while the first holds the Lease.
//!
//! Needs a `meshgate` binary with the `--kubernetes` wiring: `MESHGATE_BIN`,
//! or `meshgate` next to this test's target directory. Without one the test
//! prints a SKIP notice, and fails when `CI=true` (as the deploy tests do).

use core::time::Duration;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use meshgate_kube::fake_apiserver::FakeApiServer;
use serde_json::json;

fn meshgate_bin() -> Option<PathBuf> {
    let path = match std::env::var_os("MESHGATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .join("meshgate"),
    };
    let help = Command::new(&path)
        .args(["serve", "--help"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&help.stdout)
        .contains("--kubernetes")
        .then_some(path)
}

/// A plaintext HTTP upstream answering 200 "ok" to everything.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// A plaintext GET through the gateway: `Some(status line)` or `None` when
/// the connection was closed without an HTTP response (STRICT).
fn plaintext_get(gateway: &str) -> Option<String> {
    let mut s = TcpStream::connect(gateway).expect("connect gateway");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = "GET /details/0 HTTP/1.1\r\nhost: details.bookinfo.svc.cluster.local\r\nconnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return None;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_owned)
}

struct Replica {
    child: Child,
    gateway: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(bin: &Path, dir: &Path, pod: &str, kubeconfig: &Path) -> Replica {
    let data = dir.join(format!("data-{pod}"));
    let mut child = Command::new(bin)
        .args(["serve", "--kubernetes", "--config"])
        .arg(dir.join("meshgate.yaml"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--listen",
            "http=127.0.0.1:0",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", pod)
        .env("POD_NAMESPACE", "meshgate-system")
        .env("MESHGATE_ACCESS_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meshgate");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{line}]");
            let _ = tx.send(line);
        }
    });
    let mut gateway = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("meshgate did not get ready");
        if let Some(rest) = line.strip_prefix("meshgate: listening on http ") {
            gateway = rest.split_whitespace().next().map(str::to_owned);
        }
        if line == "meshgate: ready" {
            break;
        }
    }
    Replica {
        child,
        gateway: gateway.expect("listener address printed"),
    }
}

#[test]
fn meshgate_serve_kubernetes_enforces_strict_from_the_cluster() {
    let Some(bin) = meshgate_bin() else {
        let msg = "SKIP meshgate_serve_kubernetes_enforces_strict_from_the_cluster: no meshgate binary with `serve --kubernetes` (set MESHGATE_BIN)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
        return;
    };
    let server = FakeApiServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream();
    std::fs::write(
        dir.path().join("meshgate.yaml"),
        format!(
            "trustDomain: cluster.local\nrootNamespace: istio-system\nadmin: {{address: 127.0.0.1:15000}}\n\
             listeners:\n- {{name: http, address: 127.0.0.1:9080, protocol: http}}\n\
             services:\n- name: details\n  namespace: bookinfo\n  hosts: [details.bookinfo.svc.cluster.local]\n\
             \x20 ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  resolution: STATIC\n\
             \x20 endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {up}}}\n    labels: {{app: details}}\n\
             \x20   serviceAccount: bookinfo-details\n"
        ),
    )
    .expect("settings");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: test, namespace: meshgate-system}}\n\
             current-context: fake\n",
            server.url()
        ),
    )
    .expect("kubeconfig");

    let first = start_replica(&bin, dir.path(), "meshgate-0", &kubeconfig);
    assert_eq!(
        plaintext_get(&first.gateway).as_deref(),
        Some("HTTP/1.1 200 OK"),
        "PERMISSIVE: plaintext gets through"
    );

    // `kubectl apply -f mutual-tls.yaml`.
    let applied = Instant::now();
    server.apply(json!({
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "bookinfo"},
        "spec": {"mtls": {"mode": "STRICT"}}
    }));
    loop {
        if plaintext_get(&first.gateway).is_none() {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(3),
            "STRICT never enforced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = applied.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "STRICT enforced after {took:?}"
    );

    // The CA lives in the state Secret; this replica leads.
    let secret = server
        .get("v1", "Secret", "meshgate-system", "meshgate-state")
        .expect("state Secret");
    assert!(secret["data"].get("ca.state").is_some(), "{secret}");
    let lease = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "meshgate-system",
            "meshgate-leader",
        )
        .expect("Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "meshgate-0");

    // A second replica opens the same CA (no second root is created), is
    // not the leader, and enforces the same policy from its first request.
    let state_before = secret["data"]["ca.state"].clone();
    let second = start_replica(&bin, dir.path(), "meshgate-1", &kubeconfig);
    assert_eq!(
        plaintext_get(&second.gateway),
        None,
        "STRICT on the second replica too"
    );
    let secret = server
        .get("v1", "Secret", "meshgate-system", "meshgate-state")
        .expect("state Secret");
    assert_eq!(
        secret["data"]["ca.state"], state_before,
        "one CA for both replicas"
    );
    let lease = server
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "meshgate-system",
            "meshgate-leader",
        )
        .expect("Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "meshgate-0");

    // Back to PERMISSIVE on both when the resource is deleted.
    server.delete(
        "security.istio.io/v1beta1",
        "PeerAuthentication",
        "bookinfo",
        "default",
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    for r in [&first, &second] {
        while plaintext_get(&r.gateway).as_deref() != Some("HTTP/1.1 200 OK") {
            assert!(Instant::now() < deadline, "PERMISSIVE not restored");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
