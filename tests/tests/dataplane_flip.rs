//! Issue 3: under continuous client traffic, flip the bookinfo namespace
//! between PERMISSIVE and STRICT 20 times with `meshgate apply`. Every
//! request's outcome must match the mode of the configuration generation
//! that decided it, that generation must have been in force during the
//! request, and mTLS clients never see an error.
//!
//! Requests are tied to the gateway's access log by the client's local
//! port (one request per connection). Generation g is STRICT when even:
//! generation 1 has no policy (PERMISSIVE), every apply adds one, and the
//! applies alternate STRICT, PERMISSIVE, ...

use core::time::Duration;

use meshgate_e2e::{
    AccessIndex, DETAILS_HOST, Gateway, PERMISSIVE_YAML, PRODUCTPAGE_ID, STRICT_YAML, Traffic,
    wall_now,
};

const FLIPS: u64 = 20;

fn mode_of(generation: u64) -> &'static str {
    if generation.is_multiple_of(2) {
        "STRICT"
    } else {
        "PERMISSIVE"
    }
}

#[test]
fn flipping_strict_and_permissive_under_traffic() {
    let gw = Gateway::start();
    let pp = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("pp"), None);
    let clients = serde_json::json!([
        {"name": "plain", "tls": false},
        {"name": "mtls", "tls": true, "cert_dir": pp.dir, "verify": true},
    ]);
    let traffic = Traffic::start(
        &gw,
        DETAILS_HOST,
        "/details/0",
        &clients,
        Duration::from_secs(60),
    );
    while traffic.count() < 10 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // (started, finished) wall-clock time of each apply.
    let mut applies: Vec<(f64, f64)> = Vec::new();
    for i in 0..FLIPS {
        std::thread::sleep(Duration::from_millis(250));
        let yaml = if i % 2 == 0 {
            STRICT_YAML
        } else {
            PERMISSIVE_YAML
        };
        let t0 = wall_now();
        gw.apply(yaml);
        applies.push((t0, wall_now()));
    }
    std::thread::sleep(Duration::from_millis(250));
    let records = traffic.stop();
    let status = gw.api_get("/api/v1/status");
    assert_eq!(status["generation"], 1 + FLIPS, "only the flips changed it");

    // Wait for the access log to catch up with the last requests.
    let index = {
        let mut tries = 0;
        loop {
            let m = AccessIndex::new(&gw.access_log());
            let all = records
                .iter()
                .all(|r| r.lport.is_some_and(|p| m.find(p, r.t0, r.t1).is_some()));
            if all || tries > 50 {
                break m;
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Generation surely in force at t (every apply before t finished) and
    // possibly in force (every apply before t started).
    let lo = |t: f64| 1 + applies.iter().filter(|(_, end)| *end <= t).count() as u64;
    let hi = |t: f64| 1 + applies.iter().filter(|(start, _)| *start <= t).count() as u64;

    let (mut plain_strict, mut plain_permissive, mut mtls_ok, mut straddling) = (0, 0, 0, 0);
    for r in &records {
        let port = r.lport.expect("every request connected");
        let e = index
            .find(port, r.t0, r.t1)
            .unwrap_or_else(|| panic!("no access-log entry for {r:?}"));
        let g = e["generation"].as_u64().expect("generation");
        assert_eq!(
            e["mode"],
            mode_of(g),
            "the entry's mode is its generation's: {e}"
        );
        assert!(
            lo(r.t0) <= g && g <= hi(r.t1),
            "generation {g} was not in force during the request ({}..={}): {r:?} {e}",
            lo(r.t0),
            hi(r.t1)
        );
        if lo(r.t0) != hi(r.t1) {
            straddling += 1;
        }
        match (r.client.as_str(), mode_of(g)) {
            ("mtls", _) => {
                assert_eq!(r.status, Some(200), "mTLS client saw an error: {r:?} {e}");
                assert_eq!(e["security"], "mutual_tls");
                mtls_ok += 1;
            }
            ("plain", "STRICT") => {
                assert_eq!(r.status, None, "plaintext answered under STRICT: {r:?} {e}");
                assert_eq!(e["reason"], "plaintext_under_strict", "{e}");
                plain_strict += 1;
            }
            ("plain", _) => {
                assert_eq!(
                    r.status,
                    Some(200),
                    "plaintext refused under PERMISSIVE: {r:?} {e}"
                );
                plain_permissive += 1;
            }
            (other, _) => panic!("unknown client {other}"),
        }
    }
    eprintln!(
        "flips={FLIPS} requests={} mtls_ok={mtls_ok} plain_permissive_200={plain_permissive} plain_strict_refused={plain_strict} straddling_a_flip={straddling}",
        records.len()
    );
    assert!(plain_strict >= 10 && plain_permissive >= 10 && mtls_ok >= 20);
}
