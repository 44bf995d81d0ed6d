//! Issue 4: kill -9 the gateway at random points during bursts of
//! `meshgate apply` writes, many times. After each restart the state must
//! be exactly the last acknowledged one — or, when an apply was in flight
//! at the kill, possibly that one (committed but never acknowledged); never
//! anything else, never a torn or corrupt store.
//!
//! Every apply writes two documents: the marker AuthorizationPolicy with
//! the write's number N in its principal, and a new policy `p-N`. So the
//! state after write N is: marker = N and exactly p-1..=p-N.
//!
//! Issue 10 adds the kill during live client traffic (below).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use meshgate_e2e::{Gateway, meshgate_bin};

const KILLS: u64 = 15;

fn write_yaml(n: u64) -> String {
    format!(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: marker, namespace: crash}}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {{principals: [\"cluster.local/ns/crash/sa/n-{n}\"]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p-{n}, namespace: crash}}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {{paths: [\"/{n}\"]}}
"
    )
}

/// (marker number, sorted p-N numbers) as the running gateway reports.
fn state(gw: &Gateway) -> (Option<u64>, Vec<u64>) {
    let list = gw.api_get("/api/v1/policies?kind=AuthorizationPolicy&namespace=crash");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut marker = None;
    let mut ps = Vec::new();
    for it in &items {
        let name = it["name"].as_str().unwrap_or_default();
        let yaml = it["yaml"].as_str().unwrap_or_default();
        if name == "marker" {
            marker = yaml
                .split("sa/n-")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok());
        } else if let Some(n) = name.strip_prefix("p-").and_then(|d| d.parse().ok()) {
            ps.push(n);
        }
    }
    ps.sort_unstable();
    (marker, ps)
}

/// xorshift64: a reproducible sequence of kill delays (the seed is printed).
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn kill_9_during_apply_bursts_keeps_exactly_the_last_committed_state() {
    let mut gw = Gateway::start();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::from(d.subsec_nanos()) | 1);
    eprintln!("kill schedule seed {seed}");
    let yaml_dir = gw.dir.path().join("writes");
    std::fs::create_dir_all(&yaml_dir).expect("dir");

    // The last acknowledged write; the one in flight (if any).
    let acked = AtomicU64::new(0);
    let mut in_flight_at_kill = 0;
    for round in 0..KILLS {
        let pid = gw.pid().expect("running");
        let (admin, data) = (gw.admin_url.clone(), gw.data_dir.clone());
        let stop = AtomicBool::new(false);
        let attempted = AtomicU64::new(acked.load(Ordering::SeqCst));
        let delay = Duration::from_millis(100 + next(&mut seed) % 400);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let n = acked.load(Ordering::SeqCst) + 1;
                    let f: PathBuf = yaml_dir.join(format!("w{n}.yaml"));
                    std::fs::write(&f, write_yaml(n)).expect("write yaml");
                    attempted.store(n, Ordering::SeqCst);
                    let ok = Command::new(meshgate_bin())
                        .args(["apply", "-f"])
                        .arg(&f)
                        .env("MESHGATE_ADMIN", &admin)
                        .env("MESHGATE_DATA_DIR", &data)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|st| st.success());
                    if ok {
                        acked.store(n, Ordering::SeqCst);
                    } else {
                        // The gateway is gone: this write is unacknowledged.
                        return;
                    }
                }
            });
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            stop.store(true, Ordering::SeqCst);
        });
        gw.kill9(); // reap
        let last = acked.load(Ordering::SeqCst);
        let tried = attempted.load(Ordering::SeqCst);
        if tried > last {
            in_flight_at_kill += 1;
        }
        gw.spawn();
        let (marker, ps) = state(&gw);
        let committed = marker.unwrap_or(0);
        assert!(
            committed == last || (committed == tried && tried == last + 1),
            "round {round}: state has write {committed}, last acknowledged {last}, in flight {tried}"
        );
        let expected: Vec<u64> = (1..=committed).collect();
        assert_eq!(ps, expected, "round {round}: exactly p-1..=p-{committed}");
        // An unacknowledged write that did commit is the new baseline.
        acked.store(committed, Ordering::SeqCst);
        eprintln!(
            "round {round}: killed after {} ms, acknowledged {last}, in flight {}, restored {committed}",
            delay.as_millis(),
            if tried > last { tried } else { 0 }
        );
    }
    let total = acked.load(Ordering::SeqCst);
    eprintln!(
        "{KILLS} kills, {total} writes committed, {in_flight_at_kill} kills hit an apply in flight"
    );
    assert!(total >= KILLS, "bursts must have written something");
    assert!(in_flight_at_kill > 0, "no kill hit an apply in flight");
}

/// Issue 10: the gateway SIGKILLed and restarted (same address, same data)
/// three times while an mTLS client and a plaintext client keep sending,
/// under a committed STRICT policy. Clients recover: every mTLS request
/// made once a restarted gateway is ready succeeds; requests during the
/// outage fail with connection errors, never a wrong answer. The state is
/// the last committed one at every moment: no plaintext request ever gets
/// through, not even in the first instant after a restart.
#[test]
fn kill_9_during_traffic_clients_recover_and_strict_never_lapses() {
    use meshgate_e2e::{DETAILS_HOST, PRODUCTPAGE_ID, STRICT_YAML, Traffic, wall_now};

    let mut gw = Gateway::start();
    gw.apply(STRICT_YAML);
    let client = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("pp"), None);
    let clients = serde_json::json!([
        {"name": "mtls", "tls": true, "cert_dir": client.dir, "verify": true, "pause": 0.01},
        {"name": "plain", "tls": false, "pause": 0.01},
    ]);
    let traffic = Traffic::start(
        &gw,
        DETAILS_HOST,
        "/details/0",
        &clients,
        Duration::from_secs(40),
    );
    // Restarted gateways listen where the clients are sending.
    gw.options_mut().listen = Some(gw.http);
    // (killed at, ready again at), wall clock.
    let mut outages = Vec::new();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let killed = wall_now();
        gw.kill9();
        std::thread::sleep(Duration::from_millis(300));
        gw.spawn();
        let ready = wall_now();
        eprintln!(
            "round {round}: down for {:.0} ms",
            (ready - killed) * 1000.0
        );
        outages.push((killed, ready));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let records = traffic.stop();
    let in_outage = |t0: f64, t1: f64| {
        outages
            .iter()
            .any(|&(k, r)| t0 <= r + 0.05 && t1 >= k - 0.05)
    };
    let (mut ok, mut failed_in_outage) = (0, 0);
    for r in &records {
        match r.client.as_str() {
            "plain" => assert_ne!(
                r.status,
                Some(200),
                "a plaintext request got through STRICT: {r:?}"
            ),
            _ if r.status == Some(200) => ok += 1,
            _ => {
                assert!(
                    r.status.is_none(),
                    "an mTLS request got a wrong answer: {r:?}"
                );
                assert!(
                    in_outage(r.t0, r.t1),
                    "an mTLS request failed outside an outage: {r:?} (outages {outages:?})"
                );
                failed_in_outage += 1;
            }
        }
    }
    let plain = records.iter().filter(|r| r.client == "plain").count();
    eprintln!(
        "{ok} mTLS requests ok, {failed_in_outage} failed during the 3 outages; {plain} plaintext requests, all refused"
    );
    assert!(ok >= 50 && plain >= 50, "too little traffic");
    // After the last restart, the mTLS client is served again.
    let last_ready = outages.last().map_or(0.0, |o| o.1);
    assert!(
        records
            .iter()
            .any(|r| r.client == "mtls" && r.t0 > last_ready && r.status == Some(200)),
        "no mTLS request succeeded after the last restart"
    );
}
