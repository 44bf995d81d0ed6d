//! Live mode changes under continuous traffic: every request's outcome
//! matches the mode in force when it started; mTLS clients never fail.

use core::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::dataplane::snapshot::UpstreamSecurity;

/// Generation `g` is PERMISSIVE when odd, STRICT when even.
fn yaml_for(generation: u64) -> &'static str {
    if generation % 2 == 1 {
        PERMISSIVE_NS
    } else {
        STRICT_NS
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_permissive_strict_twenty_times_under_traffic() {
    let (up, _seen) = upstream("details", None).await;
    let svc = service(
        DETAILS_HOST,
        "bookinfo",
        "details",
        9080,
        9080,
        up,
        UpstreamSecurity::Plaintext,
    );
    let gw = Arc::new(Gateway::start(Pki::new("mesh CA"), vec![svc], yaml_for(1)).await);
    let stop = Arc::new(AtomicBool::new(false));

    let generation = |gw: &Gateway| gw.snapshot.load().generation();

    // Plaintext client: a new connection per request.
    let plain = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = generation(&gw);
                let r = plaintext_request(gw.addr, DETAILS_HOST, "/details/1").await;
                results.push((before, generation(&gw), r));
            }
            results
        })
    };
    // mTLS client on one long-lived connection.
    let mtls_kept = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = MtlsClient::connect(gw.addr, &gw.pki, &gw.productpage, DETAILS_HOST).await;
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                results.push(c.get("/details/1").await);
            }
            results
        })
    };
    // mTLS client with a new handshake per request.
    let mtls_fresh = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut c = MtlsClient::connect(gw.addr, &gw.pki, &gw.sleep, DETAILS_HOST).await;
                results.push(c.get("/details/1").await);
            }
            results
        })
    };

    for g in 2..=21 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        gw.set_policies(g, yaml_for(g));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    stop.store(true, Ordering::Relaxed);

    let plain = plain.await.expect("plain task");
    let kept = mtls_kept.await.expect("mtls task");
    let fresh = mtls_fresh.await.expect("mtls task");

    assert!(
        kept.len() > 20 && fresh.len() > 20,
        "too little traffic: {} {}",
        kept.len(),
        fresh.len()
    );
    assert!(
        kept.iter().all(|r| *r == Ok(200)),
        "mTLS (kept) saw errors: {kept:?}"
    );
    assert!(
        fresh.iter().all(|r| *r == Ok(200)),
        "mTLS (fresh) saw errors: {fresh:?}"
    );

    let (mut ok_permissive, mut refused_strict) = (0, 0);
    for (before, after, r) in &plain {
        if before != after {
            continue; // the mode changed while this request was in flight
        }
        if before % 2 == 1 {
            assert_eq!(
                *r,
                Ok(200),
                "PERMISSIVE plaintext request failed (generation {before})"
            );
            ok_permissive += 1;
        } else {
            assert!(
                r.is_err(),
                "STRICT plaintext request got a response (generation {before}): {r:?}"
            );
            refused_strict += 1;
        }
    }
    assert!(
        ok_permissive > 5 && refused_strict > 5,
        "{ok_permissive} {refused_strict}"
    );

    // Server side: every plaintext request was decided by the generation
    // it loaded when it started.
    for e in gw.dp.recent_access_log() {
        if e.kind != "http" || e.transport != "plaintext" {
            continue;
        }
        if e.generation % 2 == 1 {
            assert_eq!((e.decision, e.status), ("allow", 200), "{e:?}");
        } else {
            assert_eq!(
                (e.decision, e.reason.as_str()),
                ("deny", "plaintext_under_strict"),
                "{e:?}"
            );
        }
    }
}
