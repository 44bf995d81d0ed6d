//! Test support for the admin UI tests: a `meshgate serve` process whose
//! stdout and stderr are both captured (to check that the admin token
//! never leaks into logs), and a raw HTTP/1.1 client that sends arbitrary
//! headers and returns the answer's headers.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use core::time::Duration;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A running gateway.
pub struct Gw {
    child: Child,
    /// `127.0.0.1:PORT` of the admin server.
    pub admin: String,
    /// The token printed at first start.
    pub token: String,
    /// Everything printed so far, stdout and stderr.
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

fn pump(from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(l) = line else { return };
            if let Ok(mut s) = into.lock() {
                s.push_str(&l);
                s.push('\n');
            }
        }
    });
}

impl Gw {
    /// Starts `meshgate serve` with a fresh data dir and waits for ready.
    pub fn start(data_dir: &Path) -> Gw {
        Self::start_with(data_dir, &[])
    }

    /// Like [`Gw::start`], with extra `serve` arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Gw {
        let child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--admin-addr",
                "127.0.0.1:0",
                "--listen",
                "http=127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "debug")
            .env("MESHGATE_ACCESS_LOG", "stdout")
            .env_remove("MESHGATE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshgate serve");
        // Owned by `Gw` at once, so that every path (panics included) kills
        // and reaps it in `Drop`.
        let mut gw = Gw {
            child,
            admin: String::new(),
            token: String::new(),
            stdout: Arc::new(Mutex::new(String::new())),
            stderr: Arc::new(Mutex::new(String::new())),
        };
        pump(gw.child.stdout.take().expect("stdout"), gw.stdout.clone());
        pump(gw.child.stderr.take().expect("stderr"), gw.stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = gw.stdout.lock().expect("lock").clone();
            if out.contains("meshgate: ready") {
                gw.admin = out
                    .lines()
                    .find_map(|l| l.strip_prefix("meshgate: admin API listening on http://"))
                    .expect("admin address")
                    .trim()
                    .to_owned();
                let mut lines = out.lines();
                gw.token = lines
                    .by_ref()
                    .find(|l| l.starts_with("meshgate: admin token"))
                    .and_then(|_| lines.next())
                    .expect("token printed at first start")
                    .trim()
                    .to_owned();
                return gw;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready: {out}\n{}",
                gw.stderr.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A request to the admin server.
    pub fn req(&self, method: &str, path: &str) -> Req<'_> {
        Req {
            gw: self,
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Logs in; returns (cookie header value, CSRF token).
    pub fn login(&self) -> (String, String) {
        let body = format!("{{\"token\":\"{}\"}}", self.token);
        let r = self
            .req("POST", "/ui/session")
            .body("application/json", &body)
            .send();
        assert_eq!(r.status, 200, "login: {}", r.body);
        let set = r.header("set-cookie").expect("set-cookie").to_owned();
        let cookie = set.split(';').next().expect("cookie pair").to_owned();
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        let csrf = v["csrf_token"].as_str().expect("csrf").to_owned();
        (cookie, csrf)
    }

    /// The OpenAPI document (read with the bearer token).
    pub fn openapi(&self) -> serde_json::Value {
        let r = self
            .req("GET", "/api/v1/openapi.json")
            .bearer(&self.token)
            .send();
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("openapi json")
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request being built.
pub struct Req<'g> {
    gw: &'g Gw,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<(String, String)>,
}

impl Req<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }
    pub fn body(mut self, content_type: &str, body: &str) -> Self {
        self.body = Some((content_type.to_owned(), body.to_owned()));
        self
    }
    /// Sends with `Connection: close` and reads the whole answer (SSE
    /// streams are cut after the first bytes by the read timeout).
    pub fn send(self) -> Resp {
        let mut s = TcpStream::connect(&self.gw.admin).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut req = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.path, self.gw.admin
        );
        for (k, v) in &self.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = match &self.body {
            Some((ct, b)) => {
                req.push_str(&format!(
                    "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                    b.len()
                ));
                b.as_str()
            }
            None => {
                req.push_str("Content-Length: 0\r\n");
                ""
            }
        };
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("send");
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // A stream (SSE) never ends and keeps sending: read at most 3 s.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A stream (SSE) does not end: what arrived is enough.
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Resp {
            status,
            headers,
            body: body.to_owned(),
            raw: text,
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Head and body as received.
    pub raw: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every (method, concrete path) of the OpenAPI document under `prefix`,
/// with path parameters filled with plausible values.
pub fn operations(doc: &serde_json::Value, prefix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with(prefix) {
            continue;
        }
        let concrete = path
            .replace("{kind}", "PeerAuthentication")
            .replace("{namespace}", "bookinfo")
            .replace("{name}", "default")
            .replace("{host}", "details.bookinfo.svc.cluster.local");
        assert!(
            !concrete.contains('{'),
            "unknown path parameter in {path}: extend operations()"
        );
        for method in item.as_object().expect("path item").keys() {
            out.push((method.to_ascii_uppercase(), concrete.clone()));
        }
    }
    out
}

/// Whether a method changes state.
pub fn state_changing(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}
