//! The admin server: open probes, a token printed once and stored hashed,
//! everything else refused without it, and a clean SIGTERM exit.

mod admin_support;

use core::time::Duration;

use admin_support::{Gateway, Start};

#[test]
fn probes_are_open_and_everything_else_needs_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(Start {
        data_dir: dir.path(),
        config: None,
        extra: vec![],
    });
    let token = gw.token.clone().expect("first start prints a token");

    assert_eq!(gw.get("/healthz", None).0, 200);
    assert_eq!(gw.get("/readyz", None).0, 200);

    for path in [
        "/metrics",
        "/api/v1/status",
        "/api/v1/policies",
        "/api/v1/services",
        "/no/such/path",
    ] {
        let (status, body) = gw.get(path, None);
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, _) = gw.get(path, Some("mgt_not-the-token"));
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, body) = gw.get("/api/v1/status", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"generation\""), "{body}");
    let (status, body) = gw.get("/metrics", Some(&token));
    assert_eq!(status, 200);
    assert!(body.contains("meshgate_config_generation"), "{body}");
}

#[test]
fn token_is_printed_once_and_stored_only_as_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = {
        let gw = Gateway::start(Start {
            data_dir: dir.path(),
            config: None,
            extra: vec![],
        });
        gw.token.clone().expect("token on first start")
    };
    assert!(token.len() >= 40, "{token}");

    let hash = std::fs::read_to_string(dir.path().join("admin-token.sha256")).expect("hash file");
    assert!(
        !hash.contains(&token),
        "hash file must not contain the token"
    );
    assert_eq!(hash.trim().len(), 64, "SHA-256 in hex: {hash}");
    // The local copy for the CLI is private to the owner.
    let meta = std::fs::metadata(dir.path().join("admin-token")).expect("token file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    // A restart does not print it again, and the old token still works.
    let gw = Gateway::start(Start {
        data_dir: dir.path(),
        config: None,
        extra: vec![],
    });
    assert!(gw.token.is_none(), "token printed again: {:#?}", gw.startup);
    assert!(
        !gw.startup.iter().any(|l| l.contains(&token)),
        "token leaked on restart"
    );
    assert_eq!(gw.get("/api/v1/status", Some(&token)).0, 200);
    // And the CLI finds it in the data directory without a flag.
    let out = gw.cli(&["get", "services"]);
    assert!(out.status.success(), "{:?}", admin_support::text(&out));
}

#[test]
fn sigterm_exits_zero_and_sighup_does_not_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(Start {
        data_dir: dir.path(),
        config: None,
        extra: vec![],
    });
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.get("/healthz", None).0,
        200,
        "SIGHUP must reload, not stop"
    );
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
}
