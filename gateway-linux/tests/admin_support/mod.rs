//! Test support: run the real `meshgate` binary as a gateway process and
//! as CLI client, and speak raw HTTP/1.1 to its admin port.
//!
//! Every gateway gets its own temporary data directory and binds port 0
//! everywhere, so tests run in parallel without colliding.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use core::time::Duration;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshgate")
}

/// A running `meshgate serve`.
pub struct Gateway {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub admin: String,
    /// `127.0.0.1:PORT`.
    pub admin_addr: String,
    /// The token printed at first start (None on a restart).
    pub token: Option<String>,
    /// Everything printed on stdout up to "ready".
    pub startup: Vec<String>,
    pub data_dir: PathBuf,
    lines: mpsc::Receiver<String>,
}

/// How to start a gateway.
pub struct Start<'a> {
    pub data_dir: &'a Path,
    pub config: Option<&'a Path>,
    pub extra: Vec<String>,
}

impl Gateway {
    /// Starts `meshgate serve` and waits until it prints "ready".
    pub fn start(opts: Start<'_>) -> Gateway {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(opts.data_dir)
            .arg("--admin-addr")
            .arg("127.0.0.1:0")
            .env_remove("MESHGATE_TOKEN")
            .env_remove("MESHGATE_ADMIN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match opts.config {
            Some(c) => {
                cmd.arg("--config").arg(c);
            }
            // The embedded default binds 127.0.0.1:9080; tests run in
            // parallel, so move its one listener to a free port.
            None => {
                cmd.arg("--listen").arg("http=127.0.0.1:0");
            }
        }
        cmd.args(&opts.extra);
        let mut child = cmd.spawn().expect("spawn meshgate serve");
        let stdout = child.stdout.take().expect("stdout piped");
        let lines = spawn_line_reader(stdout);
        let mut startup = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.trim() == "meshgate: ready";
                    startup.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "gateway did not become ready (exit {status:?}); stdout so far: {startup:#?}"
                    );
                }
            }
        }
        let admin = startup
            .iter()
            .find_map(|l| l.strip_prefix("meshgate: admin API listening on "))
            .expect("admin address printed")
            .trim()
            .to_owned();
        let admin_addr = admin.trim_start_matches("http://").to_owned();
        let token = startup
            .iter()
            .position(|l| l.starts_with("meshgate: admin token"))
            .and_then(|i| startup.get(i + 1))
            .map(|l| l.trim().to_owned());
        Gateway {
            child,
            admin,
            admin_addr,
            token,
            startup,
            data_dir: opts.data_dir.to_owned(),
            lines,
        }
    }

    /// The bound address of data-plane listener `name`, as printed.
    pub fn listener(&self, name: &str) -> String {
        let prefix = format!("meshgate: listener {name} ");
        self.startup
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.rsplit(' ').next())
            .unwrap_or_else(|| panic!("listener {name} not printed: {:#?}", self.startup))
            .to_owned()
    }

    /// Runs the CLI against this gateway (admin URL and data dir set).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    /// Runs the CLI with `stdin` piped in.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("MESHGATE_ADMIN", &self.admin)
            .env("MESHGATE_DATA_DIR", &self.data_dir)
            .env_remove("MESHGATE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn meshgate client");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("client output")
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the gateway.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stdout lines printed after startup, collected so far.
    pub fn more_output(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// GET `path` on the admin port with an optional bearer token.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        http(&self.admin_addr, "GET", path, token, None)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_line_reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    rx
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body_text = match body {
        Some((ct, b)) => {
            req.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                b.len()
            ));
            b
        }
        None => {
            req.push_str("Content-Length: 0\r\n");
            ""
        }
    };
    req.push_str("\r\n");
    req.push_str(body_text);
    s.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, dechunk(&text, body))
}

/// Undoes `Transfer-Encoding: chunked` for the small bodies tests read.
fn dechunk(head_and_body: &str, body: String) -> String {
    let head = head_and_body.split("\r\n\r\n").next().unwrap_or("");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Text of a process's stdout and stderr.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A settings file with the bookinfo `details` service and a policy
/// directory `policies/` next to it (returned second).
pub fn bookinfo_settings(dir: &Path) -> (PathBuf, PathBuf) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir policies");
    let settings = dir.join("meshgate.yaml");
    std::fs::write(
        &settings,
        "\
trustDomain: cluster.local
listeners:
- name: http
  address: 127.0.0.1:0
  protocol: http
policies: [policies/]
services:
- name: details
  namespace: bookinfo
  hosts: [details.bookinfo.svc.cluster.local]
  ports:
  - {number: 9080, name: http, protocol: HTTP, targetPort: 9080}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {http: 19080}
    labels: {app: details}
    serviceAccount: bookinfo-details
",
    )
    .expect("write settings");
    (settings, policies)
}

/// The seed's namespace-wide STRICT policy.
pub const STRICT_BOOKINFO: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: STRICT
";

/// Polls `f` every 50 ms until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
