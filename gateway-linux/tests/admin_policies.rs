//! Policies through the admin API and CLI: apply, check, get, delete,
//! invalid input rejected whole with its line and field, persistence across
//! restarts.

mod admin_support;

use admin_support::{Gateway, STRICT_BOOKINFO, Start, bookinfo_settings, text};

fn start(dir: &std::path::Path) -> Gateway {
    let (settings, _) = bookinfo_settings(dir);
    Gateway::start(Start {
        data_dir: &dir.join("data"),
        config: Some(&settings),
        extra: vec![],
    })
}

fn check(gw: &Gateway) -> String {
    let out = gw.cli(&[
        "check",
        "details.bookinfo.svc.cluster.local",
        "--port",
        "9080",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "check failed: {stderr}");
    stdout
}

#[test]
fn apply_changes_the_effective_mode_and_check_names_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());

    let before = check(&gw);
    assert!(
        before.contains("effective mTLS mode PERMISSIVE"),
        "{before}"
    );
    assert!(before.contains("the default is PERMISSIVE"), "{before}");

    let out = gw.cli_with_stdin(&["apply", "-f", "-"], Some(STRICT_BOOKINFO));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "apply failed: {stderr}");
    assert!(
        stdout.contains("peerauthentication/default created"),
        "{stdout}"
    );

    let after = check(&gw);
    assert!(after.contains("effective mTLS mode STRICT"), "{after}");
    assert!(
        after.contains("namespace  bookinfo/default STRICT"),
        "{after}"
    );

    // Re-applying the same YAML changes nothing.
    let out = gw.cli_with_stdin(&["apply", "-f", "-"], Some(STRICT_BOOKINFO));
    assert!(text(&out).0.contains("unchanged"), "{:?}", text(&out));

    // get lists it with its origin, and as YAML.
    let out = gw.cli(&["get", "peerauthentication"]);
    let (table, _) = text(&out);
    assert!(
        table.contains("bookinfo") && table.contains("STRICT") && table.contains("api"),
        "{table}"
    );
    let out = gw.cli(&["get", "pa", "-o", "yaml"]);
    let (yaml, _) = text(&out);
    assert!(
        yaml.contains("kind: PeerAuthentication") && yaml.contains("mode: STRICT"),
        "{yaml}"
    );
    assert!(yaml.contains("creationTimestamp"), "{yaml}");

    let out = gw.cli(&["get", "services"]);
    let (svc, _) = text(&out);
    assert!(
        svc.contains("details.bookinfo.svc.cluster.local") && svc.contains("STRICT"),
        "{svc}"
    );

    // Delete restores the default.
    let policy_file = dir.path().join("strict.yaml");
    std::fs::write(&policy_file, STRICT_BOOKINFO).expect("write");
    let out = gw.cli(&["delete", "-f", policy_file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(check(&gw).contains("effective mTLS mode PERMISSIVE"));
}

#[test]
fn invalid_apply_is_rejected_whole_with_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());
    assert!(
        gw.cli_with_stdin(&["apply", "-f", "-"], Some(STRICT_BOOKINFO))
            .status
            .success()
    );

    // Document 1 is valid (DISABLE), document 2 has a bad mode on line 15:
    // nothing may be applied, STRICT must keep serving.
    let bad = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: DISABLE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: other
  namespace: bookinfo
spec:
  mtls:
    mode: STRICTT
";
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, bad).expect("write");
    let out = gw.cli(&["apply", "-f", file.to_str().expect("utf-8")]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "invalid YAML was accepted");
    assert!(stderr.contains("bad.yaml"), "names the file: {stderr}");
    assert!(stderr.contains("line 17"), "names the line: {stderr}");
    assert!(
        stderr.contains("spec.mtls.mode"),
        "names the field: {stderr}"
    );
    assert!(
        stderr.contains("document 2"),
        "names the document: {stderr}"
    );

    let now = check(&gw);
    assert!(
        now.contains("effective mTLS mode STRICT"),
        "old config must keep serving: {now}"
    );

    // The failure is visible in the status, and counted.
    let token = gw.token.clone().expect("token");
    let (_, status) = gw.get("/api/v1/status", Some(&token));
    assert!(status.contains("last_error"), "{status}");
    let (_, metrics) = gw.get("/metrics", Some(&token));
    assert!(
        metrics.contains("meshgate_config_changes_rejected_total 1"),
        "{metrics}"
    );
}

#[test]
fn policy_validation_errors_use_istio_wording() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());
    // portLevelMtls without a selector is invalid in Istio.
    let bad = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    9080: {mode: DISABLE}
";
    let out = gw.cli_with_stdin(&["apply", "-f", "-"], Some(bad));
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("portLevelMtls"), "{stderr}");
    assert!(check(&gw).contains("PERMISSIVE"));
}

#[test]
fn applied_policies_survive_a_restart_with_their_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = {
        let gw = start(dir.path());
        assert!(
            gw.cli_with_stdin(&["apply", "-f", "-"], Some(STRICT_BOOKINFO))
                .status
                .success()
        );
        let out = gw.cli(&["get", "pa", "-o", "yaml"]);
        text(&out).0
    };
    let gw = start(dir.path());
    assert!(
        check(&gw).contains("effective mTLS mode STRICT"),
        "lost across restart"
    );
    let out = gw.cli(&["get", "pa", "-o", "yaml"]);
    assert_eq!(
        text(&out).0,
        created,
        "creationTimestamp must survive restarts"
    );
}

#[test]
fn unauthenticated_changes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());
    let (status, _) = admin_support::http(
        &gw.admin_addr,
        "POST",
        "/api/v1/policies",
        None,
        Some(("application/yaml", STRICT_BOOKINFO)),
    );
    assert_eq!(status, 401);
    let (status, _) = admin_support::http(
        &gw.admin_addr,
        "POST",
        "/api/v1/policies",
        Some("mgt_wrong"),
        Some(("application/yaml", STRICT_BOOKINFO)),
    );
    assert_eq!(status, 401);
    assert!(check(&gw).contains("PERMISSIVE"));
}

#[test]
fn check_of_unknown_service_or_port_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());
    let out = gw.cli(&["check", "nope.bookinfo.svc.cluster.local"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("no service with host"),
        "{:?}",
        text(&out)
    );
    let out = gw.cli(&[
        "check",
        "details.bookinfo.svc.cluster.local",
        "--port",
        "1234",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no port 1234"), "{:?}", text(&out));
    // Short names resolve like Kubernetes DNS search paths.
    let out = gw.cli(&["check", "details"]);
    assert!(out.status.success(), "{:?}", text(&out));
}
