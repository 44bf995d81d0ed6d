//! `meshgate cert issue`, `ca show` and `ca rotate-root` against a running
//! gateway.

mod admin_support;

use core::time::Duration;
use std::os::unix::fs::PermissionsExt;

use admin_support::{Gateway, Start, eventually, text};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    let mut reader = pem.as_bytes();
    rustls_pemfile::certs(&mut reader)
        .map(|c| c.expect("valid PEM").to_vec())
        .collect()
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).expect("X.509");
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                if let GeneralName::URI(u) = n {
                    out.push((*u).to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn cert_issue_writes_a_usable_identity_and_no_key_reaches_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let gw = start(dir.path());
    let out_dir = dir.path().join("client-certs");
    let id = "spiffe://cluster.local/ns/legacy/sa/client";
    let out = gw.cli(&[
        "cert",
        "issue",
        "--spiffe-id",
        id,
        "--out",
        out_dir.to_str().expect("utf-8"),
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));

    let key = std::fs::read_to_string(out_dir.join("key.pem")).expect("key.pem");
    assert!(key.contains("PRIVATE KEY"));
    let mode = std::fs::metadata(out_dir.join("key.pem"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key.pem must be private");

    let cert = pem_blocks(&std::fs::read_to_string(out_dir.join("cert.pem")).expect("cert"));
    assert_eq!(cert.len(), 1);
    assert_eq!(uri_sans(&cert[0]), vec![id.to_owned()]);
    let chain = pem_blocks(&std::fs::read_to_string(out_dir.join("chain.pem")).expect("chain"));
    assert!(chain.len() >= 2, "leaf plus intermediate");
    assert_eq!(chain[0], cert[0]);
    let roots = pem_blocks(&std::fs::read_to_string(out_dir.join("ca.pem")).expect("ca"));
    assert_eq!(roots.len(), 1);

    // The chain verifies up to the root for client authentication.
    let anchor =
        webpki::anchor_from_trusted_cert(&rustls_pki_types::CertificateDer::from(roots[0].clone()))
            .expect("anchor")
            .to_owned();
    let leaf_der = rustls_pki_types::CertificateDer::from(chain[0].clone());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).expect("end entity");
    let intermediates: Vec<_> = chain[1..]
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("issued chain verifies to ca.pem");

    // The key was made by the client: nothing in the gateway's data
    // directory contains it.
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).expect("read");
        let text = String::from_utf8_lossy(&bytes).replace('\n', "");
        assert!(
            !text.contains(&key_body),
            "client key found in {}",
            entry.display()
        );
    }

    // A foreign trust domain is refused with a reason.
    let out = gw.cli(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://evil.example/ns/a/sa/b",
        "--out",
        dir.path().join("x").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("trust domain"), "{:?}", text(&out));
}

/// A gateway on the embedded default settings, data in `dir/data`.
fn start(dir: &std::path::Path) -> Gateway {
    Gateway::start(Start {
        data_dir: &dir.join("data"),
        config: None,
        extra: vec!["--listen".into(), "http=127.0.0.1:0".into()],
    })
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn ca_show_and_rotate_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());
    let out = gw.cli(&["ca", "show"]);
    let (show, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(show.contains("trust domain:  cluster.local"), "{show}");
    assert!(show.contains("root root-1 (signing)"), "{show}");
    assert!(show.contains("sha256:"), "{show}");
    // The gateway's own identity was issued at start.
    assert!(show.contains("issued:      1"), "{show}");
    assert!(show.contains("root roll-over: none in progress"), "{show}");

    // Phase 1: the new root is trusted next to the old one, which signs.
    let out = gw.cli(&["ca", "rotate-root"]);
    let (rot, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(rot.contains("root roll-over started"), "{rot}");
    assert!(rot.contains("root root-1 (signing)"), "{rot}");
    assert!(rot.contains("root root-2\n"), "new root trusted: {rot}");
    assert!(rot.contains("drop status: incoming"), "{rot}");
    assert!(rot.contains("root roll-over: phase 1/3"), "{rot}");
    let (show, _) = text(&gw.cli(&["ca", "show"]));
    assert!(show.contains("root roll-over: phase 1/3"), "{show}");

    // One roll-over at a time.
    let out = gw.cli(&["ca", "rotate-root"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("in progress"), "{stderr}");

    // --force finishes it: switch and drop the old root at once.
    let out = gw.cli(&["ca", "rotate-root", "--force"]);
    let (forced, _) = text(&out);
    assert!(out.status.success());
    assert!(
        forced.contains("root root-2 (signing)") && !forced.contains("root root-1"),
        "{forced}"
    );
    assert!(
        forced.contains("root roll-over: none in progress"),
        "{forced}"
    );

    // The gateway re-issues its own identity under the new root.
    assert!(
        eventually(Duration::from_secs(5), || {
            let (_, body) = gw.get("/api/v1/ca", gw.token.as_deref());
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            v["roots"]
                .as_array()
                .expect("roots")
                .iter()
                .any(|r| r["id"] == "root-2" && r["issued_count"].as_u64() >= Some(1))
        }),
        "identity not re-issued under the new root"
    );

    // A zero propagation period switches at once; the old root stays
    // trusted while the certificate it signed for the gateway is valid.
    let out = gw.cli(&["ca", "rotate-root", "--propagation", "0"]);
    let (now, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(now.contains("root root-3 (signing)"), "{now}");
    assert!(now.contains("root root-2\n"), "{now}");
    assert!(now.contains("in use until"), "{now}");
    assert!(now.contains("root roll-over: phase 2/3"), "{now}");
}

/// The serial `meshgate cert issue` printed.
fn issued_serial(stdout: &str) -> String {
    stdout
        .split("(serial ")
        .nth(1)
        .and_then(|r| r.split([',', ')']).next())
        .expect("serial in cert issue output")
        .to_owned()
}

#[test]
fn cert_revoke_by_serial_and_by_spiffe_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path());
    let issue = |id: &str, out: &str| {
        let out = gw.cli(&[
            "cert",
            "issue",
            "--spiffe-id",
            id,
            "--out",
            dir.path().join(out).to_str().expect("utf-8"),
            "--ttl",
            "1h",
        ]);
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    };
    let a = "spiffe://cluster.local/ns/legacy/sa/a";
    let b = "spiffe://cluster.local/ns/legacy/sa/b";
    let (ok, stdout, stderr) = issue(a, "a");
    assert!(ok, "{stderr}");
    let serial_a = issued_serial(&stdout);

    // Exactly one of --spiffe-id and --serial (clap refuses, exit 2).
    for args in [
        vec!["cert", "revoke"],
        vec!["cert", "revoke", "--spiffe-id", a, "--serial", &serial_a],
    ] {
        let out = gw.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
    }

    // By serial: that certificate only; the identity may get a new one.
    let out = gw.cli(&[
        "cert",
        "revoke",
        "--serial",
        &serial_a,
        "--reason",
        "key leaked",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("revoked serial {serial_a}")) && stdout.contains("kept until"),
        "{stdout}"
    );
    let (ok, _, stderr) = issue(a, "a2");
    assert!(
        ok,
        "a serial revocation does not block the identity: {stderr}"
    );

    // An unknown serial is an error naming it.
    let out = gw.cli(&["cert", "revoke", "--serial", "0badc0de"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("0badc0de"), "{stderr}");

    // By SPIFFE ID: and no new certificate for it while kept.
    let (ok, _, stderr) = issue(b, "b");
    assert!(ok, "{stderr}");
    let out = gw.cli(&["cert", "revoke", "--spiffe-id", b]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("revoked spiffe id {b}")),
        "{stdout}"
    );
    let (ok, _, stderr) = issue(b, "b2");
    assert!(!ok, "a revoked identity gets no new certificate");
    assert!(stderr.contains("revoked"), "{stderr}");

    // Both are listed by the API with actor and reason.
    let (status, body) = gw.get("/api/v1/revocations", gw.token.as_deref());
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list.iter()
            .any(|r| r["kind"] == "serial" && r["reason"] == "key leaked"),
        "{list:?}"
    );
    assert!(
        list.iter().any(|r| r["kind"] == "spiffe_id"
            && r["target"] == b
            && r["reason"] == "revoked by operator"),
        "{list:?}"
    );
}
