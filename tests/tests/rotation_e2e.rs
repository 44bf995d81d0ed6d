//! Issue 4's certificate "Show" through the real binary:
//! - continuous mTLS traffic for 3 minutes with a 20 s certificate TTL,
//!   across many rotations of the gateway's own certificate and of the
//!   clients' certificates (re-issued from CSRs by `meshgate cert issue`
//!   through the admin API): zero failed requests, and the served serials
//!   prove the certificate changed;
//! - root roll-over (`meshgate ca rotate-root`) under traffic from clients
//!   holding old-root and new-root certificates: zero failed requests;
//! - no workload private key is ever written to the data directory.
//!
//! Length and TTL of the rotation test: `MESHGATE_E2E_ROTATION_SECS`
//! (default 180, the issue's 3 minutes) and `MESHGATE_E2E_TTL_SECS`
//! (default 20). The gateway runs with the test-only
//! `MESHGATE_UNSAFE_MIN_TTL_SECS` (the CA's minimum is 60 s otherwise) and
//! `MESHGATE_UNSAFE_CERT_TTL_SECS` (its own certificate's lifetime); it
//! renews at 50 % of the lifetime, and the clients re-issue theirs at 50 %
//! too, as a workload on Istio's schedule would.

use core::time::Duration;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use meshgate_e2e::{DETAILS_HOST, Gateway, GatewayOptions, PRODUCTPAGE_ID, SLEEP_ID, Traffic};

fn env_secs(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Points `link` at `target` atomically (a client resolving it sees the
/// old or the new directory, never a mix).
fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

/// Serials of every certificate the gateway logged as installed.
fn installed_serials(gw: &Gateway) -> Vec<String> {
    gw.stderr_text()
        .lines()
        .filter(|l| l.contains("gateway certificate installed"))
        .filter_map(|l| {
            // The first run of 16+ hex digits after "serial" (the log may
            // carry ANSI colour codes around the `=`).
            l.split("serial").nth(1).and_then(|r| {
                r.split(|c: char| !c.is_ascii_hexdigit())
                    .find(|t| t.len() >= 16)
                    .map(str::to_owned)
            })
        })
        .collect()
}

#[test]
fn mtls_traffic_across_gateway_and_client_certificate_rotations() {
    let ttl = env_secs("MESHGATE_E2E_TTL_SECS", 20);
    let run = Duration::from_secs(env_secs("MESHGATE_E2E_ROTATION_SECS", 180));
    let gw = Gateway::start_with(GatewayOptions {
        env: vec![
            ("MESHGATE_UNSAFE_CERT_TTL_SECS".into(), ttl.to_string()),
            ("MESHGATE_UNSAFE_MIN_TTL_SECS".into(), ttl.to_string()),
        ],
        ..GatewayOptions::default()
    });
    // The lowered minimum is announced (stderr is read by another thread,
    // so give it a moment).
    let announced = Instant::now();
    while !gw.stderr_text().contains("MESHGATE_UNSAFE_MIN_TTL_SECS") {
        assert!(
            announced.elapsed() < Duration::from_secs(5),
            "the lowered minimum TTL is not announced"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ttl_arg = format!("{ttl}s");
    let certs = gw.dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("dir");
    let link = certs.join("current");
    let mut client_serials = Vec::new();
    let first = gw.issue_cert(PRODUCTPAGE_ID, &certs.join("issue-0"), Some(&ttl_arg));
    client_serials.push(first.serial.clone());
    swap_symlink(&link, &first.dir);

    // Two clients, each verifying the gateway with the ca.pem of the
    // issuance it uses, one request per connection (so every handshake
    // sees the certificate the gateway serves at that moment).
    let clients = serde_json::json!([
        {"name": "a", "tls": true, "cert_dir": link, "verify": true},
        {"name": "b", "tls": true, "cert_dir": link, "verify": true},
    ]);
    let traffic = Traffic::start(&gw, DETAILS_HOST, "/details/0", &clients, run * 2);
    // Re-issue the clients' certificate (new key, new CSR) at half its
    // lifetime, and swap it in.
    let reissue_every = Duration::from_secs((ttl / 2).max(1));
    let progress_every = Duration::from_secs(20);
    let start = Instant::now();
    let mut next_reissue = reissue_every;
    let mut next_progress = progress_every;
    while start.elapsed() < run {
        let wake = next_reissue.min(next_progress).min(run);
        std::thread::sleep(wake.saturating_sub(start.elapsed()));
        let now = start.elapsed();
        if now >= run {
            break;
        }
        if now >= next_reissue {
            let k = client_serials.len();
            let c = gw.issue_cert(
                PRODUCTPAGE_ID,
                &certs.join(format!("issue-{k}")),
                Some(&ttl_arg),
            );
            client_serials.push(c.serial.clone());
            swap_symlink(&link, &c.dir);
            next_reissue += reissue_every;
        }
        if now >= next_progress {
            eprintln!(
                "rotation: {:>3}/{} s: {} requests, {} gateway certificates installed, {} client re-issues",
                now.as_secs(),
                run.as_secs(),
                traffic.count(),
                installed_serials(&gw).len(),
                client_serials.len() - 1
            );
            next_progress += progress_every;
        }
    }
    let records = traffic.stop();

    let failed: Vec<_> = records.iter().filter(|r| r.status != Some(200)).collect();
    let served: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.peer_serial.as_deref())
        .collect();
    let used_dirs: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.cert_dir.as_deref())
        .collect();
    // The gateway's own log names every certificate it installed.
    let installed = installed_serials(&gw);
    let gateway_rotations = served.len().saturating_sub(1);
    let client_rotations = client_serials.len() - 1;
    eprintln!(
        "rotation: ttl={ttl}s run={}s requests={} failed={} gateway serials served={} ({gateway_rotations} rotations) installed={} client certificates={} ({client_rotations} re-issues, {} used)",
        run.as_secs(),
        records.len(),
        failed.len(),
        served.len(),
        installed.len(),
        client_serials.len(),
        used_dirs.len()
    );
    eprintln!("served gateway serials: {served:?}");
    eprintln!("client serials: {client_serials:?}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(records.len() > 100, "too little traffic: {}", records.len());
    for s in &served {
        assert!(
            installed
                .iter()
                .any(|i| i.trim_start_matches('0') == s.trim_start_matches('0')),
            "served serial {s} is not one the gateway installed: {installed:?}"
        );
    }
    // The issue's bar: at least 8 rotations of each. The schedule (50 % ±
    // 1 % of the lifetime) gives about 2·run/ttl gateway rotations; seeing
    // far fewer means the renewal is late.
    let scheduled = run.as_secs() * 2 / ttl;
    assert!(
        gateway_rotations >= 8,
        "gateway rotations seen by the clients: {gateway_rotations}, expected at least 8"
    );
    assert!(
        u64::try_from(gateway_rotations).unwrap_or(0) >= scheduled * 3 / 4,
        "gateway rotations {gateway_rotations}, the schedule gives about {scheduled}"
    );
    assert!(
        client_rotations >= 8,
        "client re-issues {client_rotations}, expected at least 8"
    );
    assert!(
        used_dirs.len() >= client_rotations,
        "the clients used {} of {} certificates",
        used_dirs.len(),
        client_serials.len()
    );
}

#[test]
fn root_rollover_under_traffic_from_old_and_new_root_clients() {
    let gw = Gateway::start();
    let old = gw.issue_cert(SLEEP_ID, &gw.dir.path().join("old-root"), None);
    let before = gw.api_get("/api/v1/ca");
    let old_root = before["signing_root"].as_str().expect("root").to_owned();
    // The old-root client presents its old-root certificate throughout.
    // It does not verify the gateway: its ca.pem holds only the old root,
    // and `rotate-root` switches the gateway's own certificate to the new
    // root at once (see the report: trust distribution gap).
    let old_clients = serde_json::json!([
        {"name": "old", "tls": true, "cert_dir": old.dir, "verify": false},
    ]);
    let t_old = Traffic::start(
        &gw,
        DETAILS_HOST,
        "/details/0",
        &old_clients,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    let out = gw.cli(&["ca", "rotate-root"]);
    assert!(
        out.status.success(),
        "rotate-root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client enrolled after the switch: new-root certificate, and a
    // trust bundle with both roots, verifying the gateway.
    let new = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("new-root"), None);
    let new_clients = serde_json::json!([
        {"name": "new", "tls": true, "cert_dir": new.dir, "verify": true},
    ]);
    let t_new = Traffic::start(
        &gw,
        DETAILS_HOST,
        "/details/0",
        &new_clients,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut records = t_old.stop();
    records.extend(t_new.stop());

    let after = gw.api_get("/api/v1/ca");
    let roots = after["roots"].as_array().expect("roots");
    assert_eq!(
        roots.len(),
        2,
        "old and new roots trusted together: {after}"
    );
    assert_ne!(after["signing_root"], old_root.as_str());
    let failed: Vec<_> = records.iter().filter(|r| r.status != Some(200)).collect();
    let served: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.peer_serial.as_deref())
        .collect();
    let count = |name: &str| records.iter().filter(|r| r.client == name).count();
    eprintln!(
        "root roll-over: requests={} (old-root client {}, new-root client {}) failed={} gateway serials served={served:?}",
        records.len(),
        count("old"),
        count("new"),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(count("new") > 10 && count("old") > 10);
    assert!(
        served.len() >= 2,
        "the gateway's certificate was re-issued under the new root"
    );
    // The old-root certificate is still accepted after the switch.
    let last_old = records
        .iter()
        .filter(|r| r.client == "old")
        .max_by(|a, b| a.t0.total_cmp(&b.t0))
        .expect("old");
    assert_eq!(last_old.status, Some(200));
}

/// Public keys (PEM, from openssl) of every private key found in `dir`.
fn private_keys_in(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).expect("read");
            let text = String::from_utf8_lossy(&bytes).replace("\\n", "\n");
            let mut rest = text.as_str();
            while let Some(i) = rest.find("-----BEGIN") {
                let block = &rest[i..];
                let Some(end) = block.find("-----END") else {
                    break;
                };
                let tail = &block[end..];
                let close = tail[8..].find("-----").map_or(tail.len(), |j| j + 13);
                let pem = &block[..end + close];
                if pem.contains("PRIVATE KEY") {
                    let out = Command::new("openssl")
                        .args(["pkey", "-pubout"])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .and_then(|mut c| {
                            use std::io::Write as _;
                            c.stdin.take().expect("stdin").write_all(pem.as_bytes())?;
                            c.wait_with_output()
                        })
                        .expect("openssl pkey");
                    found.push((
                        p.display().to_string(),
                        String::from_utf8_lossy(&out.stdout).into_owned(),
                    ));
                }
                rest = &block[end + close..];
            }
        }
    }
    found
}

fn pubkey_of_cert(pem_file: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in", pem_file])
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_workload_private_key_is_written_to_the_data_directory() {
    let gw = Gateway::start();
    let client = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("client"), None);
    // Rotate so that more gateway keys have existed.
    let out = gw.cli(&["ca", "rotate-root"]);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    // The gateway's serving certificate, as a client sees it.
    let served = gw.dir.path().join("served.pem");
    let code = format!(
        "import ssl,socket\nctx=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\nctx.check_hostname=False\nctx.verify_mode=ssl.CERT_NONE\nctx.load_cert_chain('{}','{}')\ns=ctx.wrap_socket(socket.create_connection(('127.0.0.1',{})),server_hostname='{DETAILS_HOST}')\nopen('{}','w').write(ssl.DER_cert_to_PEM_cert(s.getpeercert(True)))\n",
        client.file("chain.pem"),
        client.file("key.pem"),
        gw.http.port(),
        served.display()
    );
    let (rc, _, err) = meshgate_e2e::python(&code, &[]);
    assert_eq!(rc, 0, "{err}");

    let keys = private_keys_in(&gw.data_dir);
    let workload_pubkeys = [
        pubkey_of_cert(&served.to_string_lossy()),
        pubkey_of_cert(&client.file("cert.pem")),
    ];
    for w in &workload_pubkeys {
        assert!(
            w.contains("PUBLIC KEY"),
            "openssl could not read a certificate"
        );
        for (file, k) in &keys {
            assert_ne!(k, w, "a workload private key is stored in {file}");
        }
    }
    // What is there are the CA's keys: root + intermediate per root.
    let roots = gw.api_get("/api/v1/ca")["roots"]
        .as_array()
        .map_or(0, Vec::len);
    eprintln!(
        "data dir private keys: {} (CA keys for {roots} roots): {:?}",
        keys.len(),
        keys.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    assert_eq!(
        keys.len(),
        2 * roots,
        "only CA keys (root + signing) are stored"
    );
    // And the client's key bytes appear nowhere in the data directory.
    let client_key = std::fs::read_to_string(client.file("key.pem")).expect("key");
    let body: String = client_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut stack = vec![gw.data_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&p).expect("read"))
                    .replace(['\n', '\\'], "");
                assert!(!text.contains(&body), "client key found in {}", p.display());
            }
        }
    }
}
