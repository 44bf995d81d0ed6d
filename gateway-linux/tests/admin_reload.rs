//! Live reload of policy files: a file change applies within a second, an
//! invalid file is rejected whole and the previous config keeps serving,
//! SIGHUP reloads at once, and SIGTERM exits 0.

mod admin_support;

use core::time::Duration;

use admin_support::{Gateway, STRICT_BOOKINFO, Start, bookinfo_settings, eventually, text};

fn mode(gw: &Gateway) -> String {
    let out = gw.cli(&["check", "details.bookinfo.svc.cluster.local", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json_like::Value = serde_json_like::parse(&stdout);
    v.mode
}

/// The test only needs one field; a tiny extractor keeps the test crate
/// free of extra dependencies.
mod serde_json_like {
    pub(crate) struct Value {
        pub(crate) mode: String,
    }
    pub(crate) fn parse(s: &str) -> Value {
        let i = s.find("\"mode\": \"").expect("mode in JSON") + 9;
        let rest = &s[i..];
        let end = rest.find('"').expect("closing quote");
        Value {
            mode: rest[..end].to_owned(),
        }
    }
}

#[test]
fn file_change_applies_within_a_second_and_bad_files_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (settings, policies) = bookinfo_settings(dir.path());
    let gw = Gateway::start(Start {
        data_dir: &dir.path().join("data"),
        config: Some(&settings),
        extra: vec![],
    });
    assert_eq!(mode(&gw), "PERMISSIVE");

    let file = policies.join("mtls.yaml");
    std::fs::write(&file, STRICT_BOOKINFO).expect("write");
    let t0 = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || mode(&gw) == "STRICT"),
        "file change not applied within 1 s"
    );
    eprintln!("applied after {:?}", t0.elapsed());

    // A file policy cannot be changed through the API.
    let out = gw.cli_with_stdin(&["apply", "-f", "-"], Some(STRICT_BOOKINFO));
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("defined in the policy file"),
        "{:?}",
        text(&out)
    );

    // An invalid edit is rejected whole; STRICT keeps serving.
    std::fs::write(
        &file,
        STRICT_BOOKINFO.replace("STRICT", "DISABLE\n    bogus: 1"),
    )
    .expect("write");
    let token = gw.token.clone().expect("token");
    assert!(
        eventually(Duration::from_secs(2), || {
            gw.get("/metrics", Some(&token))
                .1
                .contains("meshgate_config_changes_rejected_total 1")
        }),
        "invalid file was not reported"
    );
    assert_eq!(mode(&gw), "STRICT");
    let (_, status) = gw.get("/api/v1/status", Some(&token));
    assert!(
        status.contains("mtls.yaml"),
        "status names the file: {status}"
    );

    // Fixing the file applies it.
    std::fs::write(&file, STRICT_BOOKINFO.replace("STRICT", "DISABLE")).expect("write");
    assert!(eventually(Duration::from_secs(1), || mode(&gw) == "DISABLE"));

    // Removing it falls back to the default.
    std::fs::remove_file(&file).expect("rm");
    assert!(eventually(Duration::from_secs(1), || mode(&gw) == "PERMISSIVE"));
}

#[test]
fn sighup_reloads_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (settings, policies) = bookinfo_settings(dir.path());
    let mut gw = Gateway::start(Start {
        data_dir: &dir.path().join("data"),
        config: Some(&settings),
        extra: vec![],
    });
    let token = gw.token.clone().expect("token");
    let generation = |gw: &Gateway| {
        let (_, m) = gw.get("/metrics", Some(&token));
        m.lines()
            .find_map(|l| l.strip_prefix("meshgate_config_generation "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("generation metric")
    };
    let g0 = generation(&gw);
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(1), || generation(&gw) > g0),
        "SIGHUP did not reload"
    );
    std::fs::write(policies.join("a.yaml"), STRICT_BOOKINFO).expect("write");
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(1), || mode(&gw) == "STRICT"));

    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)),
        Some(0),
        "SIGTERM must exit 0"
    );
    let rest = gw.more_output();
    assert!(
        rest.iter().any(|l| l.contains("meshgate: stopped")),
        "{rest:?}"
    );
}

#[test]
fn invalid_settings_or_policy_files_fail_the_start_with_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (settings, policies) = bookinfo_settings(dir.path());
    std::fs::write(
        policies.join("bad.yaml"),
        STRICT_BOOKINFO.replace("STRICT", "STRICTT"),
    )
    .expect("write");
    let out = std::process::Command::new(admin_support::bin())
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--config"])
        .arg(&settings)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("line 8") && err.contains("spec.mtls.mode"),
        "{err}"
    );
}
