//! Issue 4's certificate "Show" through the real binary:
//! - continuous mTLS traffic for 3 minutes with a 20 s certificate TTL,
//!   across many rotations of the gateway's own certificate and of the
//!   clients' certificates (re-issued from CSRs by `meshgate cert issue`
//!   through the admin API): zero failed requests, and the served serials
//!   prove the certificate changed;
//! - root roll-over (`meshgate ca rotate-root`: trust both → switch →
//!   drop) under traffic from clients holding old-root and new-root
//!   certificates and refreshing their trust bundle on renewal: zero failed
//!   requests; the roll-over phase survives kill -9;
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
        {"name": "a", "tls": true, "cert_dir": link, "verify": true, "pause": 0.01},
        {"name": "b", "tls": true, "cert_dir": link, "verify": true, "pause": 0.01},
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

/// `(serial, root)` of every certificate the gateway logged as installed.
fn installed_with_roots(gw: &Gateway) -> Vec<(String, String)> {
    gw.stderr_text()
        .lines()
        .filter(|l| l.contains("gateway certificate installed"))
        .filter_map(|l| {
            let serial = l.split("serial").nth(1).and_then(|r| {
                r.split(|c: char| !c.is_ascii_hexdigit())
                    .find(|t| t.len() >= 16)
            })?;
            let at = l.find("root-")?;
            let root: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some((serial.trim_start_matches('0').to_owned(), root))
        })
        .collect()
}

/// The root (`root-N`) a certificate file chains to, from its issuer (the
/// intermediate is named after its root).
fn issuing_root(cert_pem: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-in", cert_pem])
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("root-").expect("issuer names its root");
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// The roll-over phase `ca show --json` reports (0 when none).
fn phase(view: &serde_json::Value) -> u64 {
    view["rollover"]["phase"].as_u64().unwrap_or(0)
}

/// Issue 4's roll-over Show: "trust both → switch → drop" under continuous
/// traffic. Two workloads renew their certificates (and with them their
/// trust bundle, ca.pem) at half their 30 s lifetime, staggered, as real
/// workloads do; every request verifies the gateway with the bundle of the
/// issuance it uses. Phase 1 trusts both roots while root-1 signs for a
/// 20 s propagation period (longer than the renewal interval, so every
/// workload has the new root before the switch); phase 2 signs with root-2
/// while certificates from both roots are in use; phase 3 drops root-1
/// once nothing it signed is valid. Zero failed requests throughout.
#[test]
fn root_rollover_trust_both_switch_drop_under_traffic() {
    let gw = Gateway::start_with(GatewayOptions {
        env: vec![
            ("MESHGATE_UNSAFE_CERT_TTL_SECS".into(), "20".into()),
            ("MESHGATE_UNSAFE_MIN_TTL_SECS".into(), "20".into()),
        ],
        ..GatewayOptions::default()
    });
    let client_ttl = Duration::from_secs(30);
    let renew_every = client_ttl / 2;
    let certs = gw.dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("dir");
    // (name, identity, first renewal offset)
    let workloads = [
        ("a", PRODUCTPAGE_ID, renew_every),
        ("b", SLEEP_ID, renew_every / 2),
    ];
    let mut issued_roots: std::collections::HashMap<String, String> = Default::default();
    let mut issue = |name: &str, spiffe_id: &str, k: usize| {
        let dir = certs.join(format!("{name}-{k}"));
        let c = gw.issue_cert(spiffe_id, &dir, Some("30s"));
        let root = issuing_root(&c.file("cert.pem"));
        let resolved = std::fs::canonicalize(&dir).expect("canonical");
        issued_roots.insert(resolved.to_string_lossy().into_owned(), root);
        swap_symlink(&certs.join(name), &dir);
    };
    for (name, spiffe_id, _) in &workloads {
        issue(name, spiffe_id, 0);
    }
    let clients = serde_json::json!([
        {"name": "a", "tls": true, "cert_dir": certs.join("a"), "verify": true, "pause": 0.01},
        {"name": "b", "tls": true, "cert_dir": certs.join("b"), "verify": true, "pause": 0.01},
    ]);
    let traffic = Traffic::start(
        &gw,
        DETAILS_HOST,
        "/details/0",
        &clients,
        Duration::from_secs(150),
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));

    let out = gw.cli(&["ca", "rotate-root", "--propagation", "20s"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rotate-root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("root roll-over started") && text.contains("phase 1/3"),
        "{text}"
    );
    let v = gw.api_get("/api/v1/ca");
    assert_eq!(phase(&v), 1, "{v}");
    assert_eq!(v["signing_root"], "root-1", "the old root signs in phase 1");
    assert_eq!(v["roots"].as_array().map(Vec::len), Some(2), "{v}");
    let show = gw.cli(&["ca", "show"]);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.contains("root roll-over: phase 1/3"), "{show}");

    // Renew on schedule; watch the phases (wall-clock times of each).
    let mut next_renewal: Vec<Duration> = workloads.iter().map(|w| w.2).collect();
    let mut renewals = vec![1usize; workloads.len()];
    let mut phase_seen: Vec<(f64, u64, String, usize)> = Vec::new();
    let mut phase2_show = None;
    let deadline = Duration::from_secs(120);
    let mut last_progress = Duration::ZERO;
    loop {
        let now = start.elapsed();
        assert!(
            now < deadline,
            "the roll-over did not finish within {deadline:?}: {phase_seen:?}"
        );
        for (i, (name, spiffe_id, _)) in workloads.iter().enumerate() {
            if now >= next_renewal[i] {
                issue(name, spiffe_id, renewals[i]);
                renewals[i] += 1;
                next_renewal[i] += renew_every;
            }
        }
        let v = gw.api_get("/api/v1/ca");
        let p = phase(&v);
        let signing = v["signing_root"].as_str().unwrap_or_default().to_owned();
        let roots = v["roots"].as_array().map_or(0, Vec::len);
        if phase_seen
            .last()
            .is_none_or(|l| (l.1, &l.2, l.3) != (p, &signing, roots))
        {
            eprintln!(
                "root roll-over: {:>5.1} s: phase {p}, signing {signing}, {roots} roots",
                now.as_secs_f64()
            );
            phase_seen.push((meshgate_e2e::wall_now(), p, signing, roots));
        }
        if p == 2 && phase2_show.is_none() {
            let o = gw.cli(&["ca", "show"]);
            phase2_show = Some(String::from_utf8_lossy(&o.stdout).into_owned());
        }
        if now - last_progress >= Duration::from_secs(10) {
            eprintln!(
                "root roll-over: {:>5.1} s: {} requests so far",
                now.as_secs_f64(),
                traffic.count()
            );
            last_progress = now;
        }
        if p == 0 && roots == 1 && phase_seen.iter().any(|s| s.1 == 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Traffic goes on a little after the old root is gone.
    std::thread::sleep(Duration::from_secs(5));
    let records = traffic.stop();

    let switched = phase_seen
        .iter()
        .find(|s| s.1 == 2)
        .map(|s| s.0)
        .expect("phase 2 seen");
    let dropped = phase_seen.last().map(|s| s.0).expect("end seen");
    let root_of = |r: &meshgate_e2e::Record| {
        r.cert_dir
            .as_ref()
            .and_then(|d| issued_roots.get(d))
            .cloned()
            .unwrap_or_default()
    };
    let failed: Vec<_> = records.iter().filter(|r| r.status != Some(200)).collect();
    let in_phase2 = |r: &&meshgate_e2e::Record| r.t0 > switched && r.t1 < dropped;
    let old_in_2 = records
        .iter()
        .filter(in_phase2)
        .filter(|r| root_of(r) == "root-1")
        .count();
    let new_in_2 = records
        .iter()
        .filter(in_phase2)
        .filter(|r| root_of(r) == "root-2")
        .count();
    let installed = installed_with_roots(&gw);
    let served_root = |serial: &str| {
        installed
            .iter()
            .find(|(s, _)| s == serial.trim_start_matches('0'))
            .map(|(_, r)| r.clone())
    };
    let served_roots: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r.peer_serial.as_deref())
        .filter_map(served_root)
        .collect();
    eprintln!(
        "root roll-over: requests={} failed={} phase-2 requests with root-1 client certificates={old_in_2}, with root-2={new_in_2}; gateway certificates served from {served_roots:?}; phases {:?}",
        records.len(),
        failed.len(),
        phase_seen
            .iter()
            .map(|s| (s.1, s.2.as_str(), s.3))
            .collect::<Vec<_>>()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(5)]
    );
    let phase2_show = phase2_show.expect("ca show in phase 2");
    assert!(
        phase2_show.contains("root roll-over: phase 2/3"),
        "{phase2_show}"
    );
    assert!(
        old_in_2 > 0 && new_in_2 > 0,
        "in phase 2 clients held certificates of both roots (root-1: {old_in_2}, root-2: {new_in_2})"
    );
    assert_eq!(
        served_roots,
        BTreeSet::from(["root-1".to_owned(), "root-2".to_owned()]),
        "the gateway served a root-1 certificate, then a root-2 one"
    );
    let end = gw.api_get("/api/v1/ca");
    assert_eq!(end["signing_root"], "root-2");
    assert_eq!(end["roots"].as_array().map(Vec::len), Some(1), "{end}");
    assert!(end.get("rollover").is_none(), "{end}");
    // Only the new root in the bundle of a certificate issued now.
    let last = gw.issue_cert(PRODUCTPAGE_ID, &certs.join("after"), Some("30s"));
    let ca_pem = std::fs::read_to_string(last.file("ca.pem")).expect("ca.pem");
    assert_eq!(ca_pem.matches("BEGIN CERTIFICATE").count(), 1);
}

/// A roll-over is persisted: after kill -9 in phase 1 the restarted gateway
/// still trusts both roots, switches signing when the propagation period
/// ends, refuses a second roll-over, and `--force` finishes it.
#[test]
fn root_rollover_continues_after_kill_9() {
    let mut gw = Gateway::start();
    // Long enough that a slow restart still finds phase 1; the test
    // binary's other tests run meanwhile.
    let out = gw.cli(&["ca", "rotate-root", "--propagation", "20s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.kill9();
    gw.spawn();
    let v = gw.api_get("/api/v1/ca");
    assert_eq!(phase(&v), 1, "phase 1 survives kill -9: {v}");
    assert_eq!(v["signing_root"], "root-1");
    assert_eq!(v["roots"].as_array().map(Vec::len), Some(2));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = gw.api_get("/api/v1/ca");
        if phase(&v) == 2 {
            assert_eq!(v["signing_root"], "root-2", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no switch after restart: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The gateway's own certificate moves to the new root.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !installed_with_roots(&gw).iter().any(|(_, r)| r == "root-2") {
        assert!(
            Instant::now() < deadline,
            "identity not re-issued under root-2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = gw.cli(&["ca", "rotate-root"]);
    assert!(!out.status.success(), "a second roll-over is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in progress"), "{err}");
    let out = gw.cli(&["ca", "rotate-root", "--force"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("finished (forced)"), "{text}");
    let v = gw.api_get("/api/v1/ca");
    assert_eq!(v["roots"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["signing_root"], "root-2");
    assert!(v.get("rollover").is_none(), "{v}");
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
