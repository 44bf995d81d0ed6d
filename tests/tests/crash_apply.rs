//! Issue 4: kill -9 the gateway at random points during bursts of
//! `meshgate apply` writes, many times. After each restart the state must
//! be exactly the last acknowledged one — or, when an apply was in flight
//! at the kill, possibly that one (committed but never acknowledged); never
//! anything else, never a torn or corrupt store.
//!
//! Every apply writes two documents: the marker AuthorizationPolicy with
//! the write's number N in its principal, and a new policy `p-N`. So the
//! state after write N is: marker = N and exactly p-1..=p-N.

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
