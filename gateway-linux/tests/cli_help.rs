//! Every command and subcommand has useful `--help` text.

mod admin_support;

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(admin_support::bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run meshgate --help");
    assert!(out.status.success(), "{args:?} --help failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn top_level_help_lists_every_command() {
    let text = help(&[]);
    for cmd in [
        "serve", "apply", "delete", "get", "check", "validate", "cert", "ca",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "`{cmd}` missing from --help:\n{text}"
        );
    }
    assert!(text.contains("Examples:"), "{text}");
}

#[test]
fn each_subcommand_explains_itself() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["serve"],
            &[
                "--config",
                "--data-dir",
                "--admin-addr",
                "SIGHUP",
                "admin token",
            ],
        ),
        (&["apply"], &["-f", "line", "survive restarts"]),
        (&["delete"], &["-f"]),
        (
            &["get"],
            &[
                "peerauthentication",
                "authorizationpolicy",
                "services",
                "--output",
            ],
        ),
        (&["check"], &["--port", "effective", "istioctl x describe"]),
        (
            &["cert", "issue"],
            &["--spiffe-id", "--out", "--ttl", "key.pem"],
        ),
        (&["ca", "show"], &["--admin"]),
        (&["validate"], &["--config", "-f", "line"]),
        (
            &["ca", "rotate-root"],
            &["--force", "--propagation", "old and new roots"],
        ),
        (
            &["cert", "revoke"],
            &["--spiffe-id", "--serial", "--reason", "certificate_revoked"],
        ),
    ];
    for (args, needles) in cases {
        let text = help(args);
        for n in *needles {
            assert!(
                text.contains(n),
                "`meshgate {args:?} --help` lacks {n:?}:\n{text}"
            );
        }
    }
}

#[test]
fn unknown_command_fails_with_usage() {
    let out = Command::new(admin_support::bin())
        .arg("frobnicate")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn client_command_without_gateway_says_it_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let out = Command::new(admin_support::bin())
        .args(["get", "services", "--token", "x", "--admin"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env("MESHGATE_DATA_DIR", dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the gateway isn't running at http://127.0.0.1:{port}"
        )),
        "{err}"
    );
}

#[test]
fn client_command_without_token_explains_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(admin_support::bin())
        .args(["get", "services"])
        .env("MESHGATE_DATA_DIR", dir.path())
        .env_remove("MESHGATE_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no admin token") && err.contains("admin-token"),
        "{err}"
    );
}

#[test]
fn validate_checks_settings_and_policies_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (settings, policies) = admin_support::bookinfo_settings(dir.path());
    std::fs::write(policies.join("ok.yaml"), admin_support::STRICT_BOOKINFO).expect("write");
    let out = Command::new(admin_support::bin())
        .args(["validate", "--config"])
        .arg(&settings)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 resource(s))"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        admin_support::STRICT_BOOKINFO.replace("STRICT", "STRICTT"),
    )
    .expect("write");
    let out = Command::new(admin_support::bin())
        .args(["validate", "-f"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("line 8") && err.contains("spec.mtls.mode"),
        "{err}"
    );
}

#[test]
fn partial_cacerts_directory_fails_the_start_naming_the_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir_all(&cacerts).expect("mkdir");
    std::fs::write(cacerts.join("ca-cert.pem"), "x").expect("write");
    let out = Command::new(admin_support::bin())
        .args([
            "serve",
            "--admin-addr",
            "127.0.0.1:0",
            "--listen",
            "http=127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--cacerts")
        .arg(&cacerts)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cacerts") && err.contains("ca-key.pem"),
        "{err}"
    );
}
