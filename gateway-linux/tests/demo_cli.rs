//! `meshgate demo` as a user meets it: `--help`, the printed walkthrough
//! on overridden ports, the printed plaintext curl working as printed, a
//! fresh start on every run, refusals, and Ctrl-C exiting 0.
//!
//! The full seed (network namespace, every step) is replayed by
//! tests/tests/seed_demo.rs in the meshgate-e2e crate.

use core::time::Duration;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

const READY: &str = "meshgate demo: ready";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshgate")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn text(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A `meshgate demo` process with its printed lines.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    ports: Ports,
}

#[derive(Clone, Copy)]
struct Ports {
    data: u16,
    admin: u16,
    productpage: u16,
}

impl Ports {
    fn fresh() -> Ports {
        Ports {
            data: free_port(),
            admin: free_port(),
            productpage: free_port(),
        }
    }
}

impl Demo {
    fn start(cwd: &Path, ports: Ports) -> Demo {
        let mut child = Command::new(bin())
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{}", ports.data),
                "--admin-addr",
                &format!("127.0.0.1:{}", ports.admin),
                "--edge-addr",
                "127.0.0.1:0",
                "--details-port",
                "0",
                "--productpage-port",
                &ports.productpage.to_string(),
            ])
            .current_dir(cwd)
            .env_remove("MESHGATE_TOKEN")
            .env_remove("MESHGATE_ADMIN")
            .env_remove("MESHGATE_DATA_DIR")
            .env("MESHGATE_ACCESS_LOG", "off")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn meshgate demo");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut demo = Demo {
            child,
            lines,
            stdout: Vec::new(),
            ports,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match demo
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    let done = l.starts_with(READY);
                    demo.stdout.push(l);
                    if done {
                        return demo;
                    }
                }
                Err(_) => panic!("no {READY:?} line; stdout: {:#?}", demo.stdout),
            }
        }
    }

    fn printed(&self, needles: &[&str]) -> String {
        let line = self
            .stdout
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no line with {needles:?}:\n{}", self.stdout.join("\n")));
        line.split("  # ").next().unwrap_or(line).trim().to_owned()
    }

    /// SIGINT, then the exit code.
    fn interrupt(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.stdout.extend(self.lines.try_iter());
                return s.code();
            }
            assert!(Instant::now() < deadline, "demo did not stop after SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(script: &str, cwd: &Path) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("sh")
}

fn curl_status(printed: &str, cwd: &Path) -> (i32, String, String) {
    text(&sh(
        &format!("{printed} -sS --max-time 5 -w '\\n%{{http_code}}'"),
        cwd,
    ))
}

#[test]
fn help_explains_the_demo_and_its_defaults() {
    let o = Command::new(bin())
        .args(["demo", "--help"])
        .output()
        .expect("run");
    let (code, out, _) = text(&o);
    assert_eq!(code, 0);
    for needle in [
        "Securing Services with Mutual TLS",
        "127.0.0.1:9080",
        "127.0.0.1:15000",
        "details.bookinfo.svc.cluster.local",
        "productpage.bookinfo.svc.cluster.local",
        "cluster.local/ns/bookinfo/sa/bookinfo-productpage",
        "./meshgate-demo",
        "mutual-tls.yaml",
        "details-viewer.yaml",
        "certs/sleep",
        "0600",
        "certificate required",
        "Ctrl-C",
        "--listen",
        "--admin-addr",
        "--dir",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}:\n{out}");
    }
    // The top-level help lists it.
    let o = Command::new(bin()).arg("--help").output().expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("demo"));
}

#[test]
fn demo_prints_working_commands_starts_fresh_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwd = tmp.path();
    let ports = Ports::fresh();
    let mut demo = Demo::start(cwd, ports);
    let p = demo.ports;

    // The printed commands name the overridden ports, hosts and files.
    let plain = demo.printed(&["curl http://details", "/details/1 "]);
    assert_eq!(
        plain,
        format!(
            "curl http://details.bookinfo.svc.cluster.local:{0}/details/1 --resolve details.bookinfo.svc.cluster.local:{0}:127.0.0.1",
            p.data
        )
    );
    let apply = demo.printed(&["apply -f meshgate-demo/mutual-tls.yaml"]);
    assert!(
        apply.ends_with(&format!(
            " apply -f meshgate-demo/mutual-tls.yaml --admin http://127.0.0.1:{} --data-dir meshgate-demo/data",
            p.admin
        )),
        "{apply}"
    );
    assert!(
        apply.starts_with(bin()) || apply.starts_with("meshgate "),
        "{apply}"
    );
    let python = demo.printed(&["python3 -c"]);
    assert!(
        python.contains(&format!("http://127.0.0.1:{}/details/1", p.productpage)),
        "{python}"
    );
    let tls = demo.printed(&["curl -k https://details"]);
    assert!(
        tls.contains(&format!(":{}/details/100 --resolve", p.data)),
        "{tls}"
    );
    let issue =
        demo.printed(&["cert issue --spiffe-id spiffe://cluster.local/ns/bookinfo/sa/sleep"]);
    assert!(issue.contains("--out meshgate-demo/certs/sleep"), "{issue}");
    for needle in [
        format!("admin + UI   http://127.0.0.1:{}/", p.admin),
        format!("curl http://127.0.0.1:{}/productpage", p.productpage),
        "admin token  mgt_".to_owned(),
        "apply -f meshgate-demo/details-viewer.yaml".to_owned(),
        "certs/productpage/chain.pem".to_owned(),
        format!(
            "https://productpage.bookinfo.svc.cluster.local:{}/productpage",
            p.data
        ),
    ] {
        assert!(
            demo.stdout.iter().any(|l| l.contains(&needle)),
            "missing {needle:?}:\n{}",
            demo.stdout.join("\n")
        );
    }

    // The files it names exist; client keys are private.
    let root = cwd.join("meshgate-demo");
    for f in ["meshgate.yaml", "mutual-tls.yaml", "details-viewer.yaml"] {
        assert!(root.join(f).is_file(), "{f}");
    }
    for who in ["productpage", "sleep"] {
        let key = root.join("certs").join(who).join("key.pem");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).expect("key.pem").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }

    // The printed plaintext curl works as printed.
    let (code, out, err) = curl_status(&plain, cwd);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.starts_with(r#"{"id":1,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#)
            && out.ends_with("\n200"),
        "{out}"
    );
    // Unknown ids are refused like bookinfo.
    let bad = plain.replace("/details/1 ", "/details/abc ");
    let (_, out, _) = curl_status(&bad, cwd);
    assert!(out.ends_with("\n400"), "{out}");

    // The printed apply works; plaintext is then refused.
    let (code, out, err) = text(&sh(&apply, cwd));
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, _) = curl_status(&plain, cwd);
    assert_ne!(code, 0);
    assert!(out.ends_with("000"), "{out}");

    assert_eq!(demo.interrupt(), Some(0));
    assert!(demo.stdout.iter().any(|l| l == "meshgate demo: stopped"));
    drop(demo);

    // A second run in the same folder starts fresh: the STRICT policy
    // applied in the first run is gone, plaintext works again.
    let demo = Demo::start(cwd, Ports::fresh());
    let plain = demo.printed(&["curl http://details", "/details/1 "]);
    let (code, out, err) = curl_status(&plain, cwd);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.ends_with("\n200"), "second run is not fresh: {out}");
}

#[test]
fn demo_refuses_a_folder_it_did_not_create_and_ephemeral_ports() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let foreign: PathBuf = tmp.path().join("precious");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let o = Command::new(bin())
        .args(["demo", "--dir"])
        .arg(&foreign)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("was not created by `meshgate demo`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).expect("kept"),
        "mine"
    );

    let o = Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(tmp.path())
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--listen needs a fixed port"), "{err}");
}
