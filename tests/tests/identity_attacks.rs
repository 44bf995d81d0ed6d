//! Identity attacks against the real `meshgate serve` (issue 10): every
//! forged, stale or confused identity is refused with the reason
//! SECURITY.md documents, under STRICT and under PERMISSIVE.
//!
//! The gateway signs with a plugged-in CA (`--cacerts`) made here with
//! openssl, so the test can also sign the certificates a real CA would
//! never issue: another trust domain, expired, not yet valid, the SPIFFE ID
//! only in the CN, two URI SANs, CA:TRUE on a leaf, serverAuth only.
//! Clients are Python's `ssl` (OpenSSL), which reports the TLS alert the
//! gateway sent by name, and raw HTTP/1.1 for the Host tricks; each refusal
//! is matched to its access-log entry by the client's source port.
//!
//! Policies: bookinfo PERMISSIVE, `details` STRICT (workload policy), and a
//! DENY rule for `productpage`'s `/admin` written with its host name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshgate_e2e::{
    DETAILS_HOST, DETAILS_STRICT_YAML, Gateway, GatewayOptions, PERMISSIVE_YAML, PRODUCTPAGE_HOST,
    Value, openssl, python,
};

/// Applied after the harness's bookinfo-wide PERMISSIVE and `details`
/// STRICT policies.
const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: productpage}}
  action: DENY
  rules:
  - to:
    - operation:
        hosts: [\"productpage.bookinfo.svc.cluster.local\"]
        paths: [\"/admin*\"]
";

/// The identity the valid test certificates carry.
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
/// An identity revoked during the test.
const REVOKED_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/stolen";

/// One TLS/HTTP client run: connects to the gateway, optionally does TLS
/// (SNI, client certificate), sends each raw request and reads one HTTP/1.1
/// response per request. Prints JSON: the local port, the responses
/// (status line + body), and how it ended (`alert` = OpenSSL's reason name
/// for the alert received, `closed` = EOF without a response).
const CLIENT: &str = r#"
import json, socket, ssl, sys
cfg = json.loads(sys.argv[1])
out = {"responses": []}
s = socket.create_connection(("127.0.0.1", cfg["port"]), timeout=5)
out["lport"] = s.getsockname()[1]
def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0] + "\n" + body.decode("latin-1").strip()
try:
    if cfg.get("tls"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cfg["ca"])
        if cfg.get("cert"):
            ctx.load_cert_chain(cfg["cert"], cfg["key"])
        s = ctx.wrap_socket(s, server_hostname=cfg.get("sni"))
    for req in cfg["requests"]:
        s.sendall(req.encode("latin-1"))
        r = read_response(s)
        if r is None:
            out["end"] = "closed"
            break
        out["responses"].append(r)
    else:
        out["end"] = "ok"
except ssl.SSLError as e:
    out["end"] = "alert"
    out["alert"] = e.reason or str(e)
except ConnectionResetError:
    out["end"] = "reset"
except Exception as e:
    out["end"] = "error"
    out["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"#;

/// The test PKI: the mesh CA the gateway signs with, and openssl commands
/// to sign anything with it.
struct Pki {
    dir: tempfile::TempDir,
}

/// What a test leaf certificate looks like.
#[derive(Clone, Default)]
struct Leaf {
    /// Subject CN (`-subj /CN=...`), default `client`.
    cn: Option<String>,
    /// URI SANs; none means no subjectAltName at all.
    uris: Vec<String>,
    /// basicConstraints CA:TRUE on the leaf.
    ca: bool,
    /// extendedKeyUsage, default `clientAuth,serverAuth`.
    eku: Option<&'static str>,
    /// `(start, end)` as openssl `-startdate/-enddate` values; default now
    /// for a day.
    validity: Option<(String, String)>,
    /// Sign with this other CA directory instead of the mesh CA.
    issuer: Option<PathBuf>,
}

/// A UTC time `offset` seconds from now as openssl's `YYYYMMDDHHMMSSZ`.
fn openssl_time(offset: i64) -> String {
    let o = Command::new("date")
        .args(["-u", "-d", &format!("{offset} seconds"), "+%Y%m%d%H%M%SZ"])
        .output()
        .expect("date");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

const CA_CNF: &str = "\
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
default_days = 1
[policy_any]
commonName = optional
organizationName = optional
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
";

/// Makes a self-signed CA in `dir` laid out as an Istio `cacerts`
/// directory (the root signs directly).
fn make_ca(dir: &Path, name: &str) {
    ca_bookkeeping(dir);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-config",
            "ca.cnf",
            "-extensions",
            "root",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "30",
            "-subj",
            &format!("/O={name}/CN={name} root"),
        ],
    );
    std::fs::copy(dir.join("ca-cert.pem"), dir.join("root-cert.pem")).expect("root");
    std::fs::copy(dir.join("ca-cert.pem"), dir.join("cert-chain.pem")).expect("chain");
}

/// The files `openssl ca` keeps its state in.
fn ca_bookkeeping(dir: &Path) {
    std::fs::create_dir_all(dir.join("issued")).expect("ca dir");
    std::fs::write(dir.join("ca.cnf"), CA_CNF).expect("ca.cnf");
    std::fs::write(dir.join("index.txt"), "").expect("index");
    std::fs::write(dir.join("serial"), "1000\n").expect("serial");
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        make_ca(&dir.path().join("mesh-ca"), "mesh");
        make_ca(&dir.path().join("other-ca"), "other");
        // Same subject name as the mesh CA, another key.
        make_ca(&dir.path().join("impostor-ca"), "mesh");
        Pki { dir }
    }

    /// An "issuer" directory whose signing certificate is the mesh leaf
    /// `(cert, key)`, so that a leaf can be signed by a leaf.
    fn leaf_as_issuer(&self, leaf: &(String, String)) -> PathBuf {
        let dir = self.dir.path().join("leaf-as-ca");
        ca_bookkeeping(&dir);
        std::fs::copy(&leaf.0, dir.join("ca-cert.pem")).expect("copy leaf");
        std::fs::copy(&leaf.1, dir.join("ca-key.pem")).expect("copy key");
        dir
    }

    /// A PEM file with `certs` concatenated (a chain to present).
    fn chain(&self, name: &str, certs: &[&str]) -> String {
        let mut pem = String::new();
        for c in certs {
            pem.push_str(&std::fs::read_to_string(c).expect("read cert"));
        }
        let path = self
            .dir
            .path()
            .join("leaves")
            .join(format!("{name}.chain.pem"));
        std::fs::write(&path, pem).expect("write chain");
        path.to_string_lossy().into_owned()
    }

    fn mesh_ca(&self) -> PathBuf {
        self.dir.path().join("mesh-ca")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca")
    }

    /// Issues `leaf` as `<name>.pem` / `<name>.key`; returns (cert, key).
    fn issue(&self, name: &str, leaf: &Leaf) -> (String, String) {
        let ca = leaf.issuer.clone().unwrap_or_else(|| self.mesh_ca());
        let out = self.dir.path().join("leaves");
        std::fs::create_dir_all(&out).expect("leaves dir");
        let key = out.join(format!("{name}.key"));
        let csr = out.join(format!("{name}.csr"));
        let cert = out.join(format!("{name}.pem"));
        let ext = out.join(format!("{name}.ext"));
        let cn = leaf.cn.clone().unwrap_or_else(|| "client".to_owned());
        openssl(
            &ca,
            &[
                "req",
                "-new",
                "-config",
                "ca.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                key.to_str().expect("utf-8"),
                "-out",
                csr.to_str().expect("utf-8"),
                "-subj",
                // `/` separates RDNs in openssl's -subj syntax.
                &format!("/O=meshgate-e2e/CN={}", cn.replace('/', "\\/")),
            ],
        );
        let mut e = String::from("[leaf]\n");
        e.push_str(if leaf.ca {
            "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,digitalSignature,keyCertSign\n"
        } else {
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        });
        e.push_str(&format!(
            "extendedKeyUsage = {}\n",
            leaf.eku.unwrap_or("clientAuth,serverAuth")
        ));
        if !leaf.uris.is_empty() {
            let sans: Vec<String> = leaf.uris.iter().map(|u| format!("URI:{u}")).collect();
            e.push_str(&format!("subjectAltName = {}\n", sans.join(",")));
        }
        std::fs::write(&ext, e).expect("ext");
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca-cert.pem",
            "-keyfile",
            "ca-key.pem",
            "-in",
            csr.to_str().expect("utf-8"),
            "-out",
            cert.to_str().expect("utf-8"),
            "-extfile",
            ext.to_str().expect("utf-8"),
            "-extensions",
            "leaf",
        ];
        let (start, end);
        if let Some((s, e)) = &leaf.validity {
            (start, end) = (s.clone(), e.clone());
            args.extend(["-startdate", &start, "-enddate", &end]);
        }
        openssl(&ca, &args);
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }
}

/// What one client run observed.
#[derive(Debug)]
struct Outcome {
    lport: u16,
    responses: Vec<String>,
    end: String,
    alert: Option<String>,
    raw: Value,
}

struct Client<'a> {
    gw: &'a Gateway,
    ca: String,
}

impl<'a> Client<'a> {
    /// A client of `gw` that trusts the mesh CA of `pki`.
    fn new(gw: &'a Gateway, pki: &Pki) -> Client<'a> {
        Client {
            gw,
            ca: pki
                .mesh_ca()
                .join("ca-cert.pem")
                .to_string_lossy()
                .into_owned(),
        }
    }

    fn run(&self, cfg: Value) -> Outcome {
        let (code, out, err) = python(CLIENT, &[&cfg.to_string()]);
        assert_eq!(code, 0, "client crashed: {out}{err}");
        let v: Value = serde_json::from_str(out.trim()).expect("client JSON");
        Outcome {
            lport: v["lport"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("lport"),
            responses: v["responses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            end: v["end"].as_str().unwrap_or_default().to_owned(),
            alert: v["alert"].as_str().map(str::to_owned),
            raw: v,
        }
    }

    /// mTLS (or TLS without a certificate when `cert` is None) with `sni`,
    /// one GET with `Host: host`.
    fn tls(&self, sni: Option<&str>, cert: Option<&(String, String)>, host: &str) -> Outcome {
        self.tls_requests(sni, cert, &[get(host, "/details/0", &[])])
    }

    fn tls_requests(
        &self,
        sni: Option<&str>,
        cert: Option<&(String, String)>,
        requests: &[String],
    ) -> Outcome {
        self.run(serde_json::json!({
            "port": self.gw.http.port(),
            "tls": true,
            "ca": self.ca,
            "sni": sni,
            "cert": cert.map(|c| c.0.clone()),
            "key": cert.map(|c| c.1.clone()),
            "requests": requests,
        }))
    }

    fn plain(&self, requests: &[String]) -> Outcome {
        self.run(serde_json::json!({
            "port": self.gw.http.port(),
            "requests": requests,
        }))
    }
}

/// A raw HTTP/1.1 GET with the given Host and extra header lines.
fn get(host: &str, path: &str, extra: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// The access-log entries of the connection from local port `lport`
/// (waits briefly: a refusal is logged when the gateway gives up on it).
fn entries_of(gw: &Gateway, lport: u16) -> Vec<Value> {
    let source = format!("127.0.0.1:{lport}");
    let deadline = std::time::Instant::now() + core::time::Duration::from_secs(5);
    loop {
        let found: Vec<Value> = gw
            .access_log()
            .into_iter()
            .filter(|e| e["source"] == source.as_str())
            .collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(core::time::Duration::from_millis(50));
    }
}

/// SECURITY.md's refusal table: every `reason` written in backticks in a
/// table row → the rows that name it.
fn documented_reasons() -> HashMap<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../SECURITY.md");
    let text = std::fs::read_to_string(&path).expect("SECURITY.md at the repository root");
    let mut rows: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let Some(last) = line.trim_end_matches('|').rsplit('|').next() else {
            continue;
        };
        for (i, token) in last.split('`').enumerate() {
            if i % 2 == 1 {
                rows.entry(token.to_owned())
                    .or_default()
                    .push(line.to_owned());
            }
        }
    }
    rows
}

/// Asserts that the refusal `reason` is in SECURITY.md's table, with the
/// alert or answer (e.g. `unknown ca`) in one of its rows.
fn assert_documented(rows: &HashMap<String, Vec<String>>, reason: &str, alert: Option<&str>) {
    let found = rows
        .get(reason)
        .unwrap_or_else(|| panic!("reason `{reason}` is not in SECURITY.md's refusal table"));
    if let Some(alert) = alert {
        assert!(
            found
                .iter()
                .any(|row| row.to_ascii_lowercase().contains(alert)),
            "no row of SECURITY.md for `{reason}` names {alert}: {found:#?}"
        );
    }
}

/// OpenSSL's reason name for an alert (`TLSV1_ALERT_UNKNOWN_CA`) → the
/// alert's name in words (`unknown ca`).
fn alert_words(openssl_reason: &str) -> String {
    openssl_reason
        .split("_ALERT_")
        .nth(1)
        .unwrap_or(openssl_reason)
        .replace('_', " ")
        .to_ascii_lowercase()
}

fn start() -> (Gateway, Pki) {
    let pki = Pki::new();
    let gw = Gateway::start_with(GatewayOptions {
        env: vec![(
            "MESHGATE_CACERTS_DIR".to_owned(),
            pki.mesh_ca().to_string_lossy().into_owned(),
        )],
        ..GatewayOptions::default()
    });
    gw.apply(&format!(
        "{PERMISSIVE_YAML}---\n{DETAILS_STRICT_YAML}---\n{POLICIES}"
    ));
    (gw, pki)
}

#[test]
fn forged_stale_and_confused_client_certificates_are_refused_with_their_reason() {
    let (gw, pki) = start();
    let client = Client::new(&gw, &pki);
    let rows = documented_reasons();
    let leaf = |uris: &[&str]| Leaf {
        uris: uris.iter().map(|u| (*u).to_owned()).collect(),
        ..Leaf::default()
    };

    // The control: a valid mesh certificate gets through STRICT, and the
    // upstream learns the identity from the gateway's XFCC only.
    let valid = pki.issue("valid", &leaf(&[CLIENT_ID]));
    let ok = client.tls(Some(DETAILS_HOST), Some(&valid), DETAILS_HOST);
    assert_eq!(ok.end, "ok", "{:?}", ok.raw);
    assert!(
        ok.responses[0].starts_with("HTTP/1.1 200") && ok.responses[0].contains("upstream:details"),
        "{:?}",
        ok.responses
    );

    let revoked = pki.issue("revoked", &leaf(&[REVOKED_ID]));
    let (status, body) = gw.api(
        "POST",
        "/api/v1/revocations",
        Some(&format!(
            r#"{{"spiffe_id": "{REVOKED_ID}", "reason": "e2e: key stolen"}}"#
        )),
    );
    assert_eq!(status, 200, "revoke: {body}");

    let day = 86_400;
    // (what, certificate, OpenSSL's alert reason, access-log reason)
    let attacks: Vec<(&str, (String, String), &str, &str)> = vec![
        (
            "a certificate from another CA (same SPIFFE ID)",
            pki.issue(
                "other-ca",
                &Leaf {
                    issuer: Some(pki.other_ca()),
                    ..leaf(&[CLIENT_ID])
                },
            ),
            "TLSV1_ALERT_UNKNOWN_CA",
            "unknown_ca",
        ),
        (
            "another trust domain",
            pki.issue(
                "other-td",
                &leaf(&["spiffe://evil.example/ns/bookinfo/sa/bookinfo-productpage"]),
            ),
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "foreign_trust_domain",
        ),
        (
            "a trust domain that only starts like the mesh's",
            pki.issue(
                "prefix-td",
                &leaf(&["spiffe://cluster.localx/ns/bookinfo/sa/bookinfo-productpage"]),
            ),
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "foreign_trust_domain",
        ),
        (
            "an expired certificate",
            pki.issue(
                "expired",
                &Leaf {
                    validity: Some((openssl_time(-2 * day), openssl_time(-day))),
                    ..leaf(&[CLIENT_ID])
                },
            ),
            "SSLV3_ALERT_CERTIFICATE_EXPIRED",
            "certificate_expired",
        ),
        (
            "a certificate not yet valid",
            pki.issue(
                "future",
                &Leaf {
                    validity: Some((openssl_time(day), openssl_time(2 * day))),
                    ..leaf(&[CLIENT_ID])
                },
            ),
            "SSLV3_ALERT_CERTIFICATE_EXPIRED",
            "certificate_not_yet_valid",
        ),
        (
            "the SPIFFE ID in the CN, no SAN",
            pki.issue(
                "cn-only",
                &Leaf {
                    cn: Some(CLIENT_ID.to_owned()),
                    ..Leaf::default()
                },
            ),
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "no_spiffe_id",
        ),
        (
            "two URI SANs",
            pki.issue(
                "two-sans",
                &leaf(&[CLIENT_ID, "spiffe://cluster.local/ns/istio-system/sa/admin"]),
            ),
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "several_uri_sans",
        ),
        (
            "a SPIFFE ID that is not /ns/NS/sa/SA",
            pki.issue("not-workload", &leaf(&["spiffe://cluster.local/admin"])),
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "not_a_workload_id",
        ),
        (
            "a URI SAN that is not a SPIFFE ID",
            pki.issue(
                "not-spiffe",
                &leaf(&["https://cluster.local/ns/bookinfo/sa/bookinfo-productpage"]),
            ),
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "not_spiffe_id",
        ),
        (
            "a CA certificate (CA:TRUE) used as the leaf",
            pki.issue(
                "ca-leaf",
                &Leaf {
                    ca: true,
                    ..leaf(&[CLIENT_ID])
                },
            ),
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
            "ca_used_as_leaf",
        ),
        (
            "a server-only certificate (no clientAuth usage)",
            pki.issue(
                "server-only",
                &Leaf {
                    eku: Some("serverAuth"),
                    ..leaf(&[CLIENT_ID])
                },
            ),
            "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
            "not_a_client_certificate",
        ),
        (
            "a CA with the mesh CA's name but another key",
            pki.issue(
                "impostor",
                &Leaf {
                    issuer: Some(pki.dir.path().join("impostor-ca")),
                    ..leaf(&[CLIENT_ID])
                },
            ),
            "TLSV1_ALERT_DECRYPT_ERROR",
            "bad_signature",
        ),
        (
            "a mesh leaf used as an intermediate CA",
            {
                let (evil, key) = pki.issue(
                    "leaf-signed",
                    &Leaf {
                        issuer: Some(pki.leaf_as_issuer(&valid)),
                        ..leaf(&["spiffe://cluster.local/ns/istio-system/sa/admin"])
                    },
                );
                (pki.chain("leaf-signed", &[&evil, &valid.0]), key)
            },
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
            "leaf_used_as_ca",
        ),
        (
            "a revoked identity",
            revoked.clone(),
            "SSLV3_ALERT_CERTIFICATE_REVOKED",
            "certificate_revoked",
        ),
    ];

    // Every attack under STRICT (details) and PERMISSIVE (productpage): a
    // certificate that is offered is verified whatever the mode, so
    // PERMISSIVE never downgrades a bad certificate to "plaintext-like".
    for (sni, mode) in [(DETAILS_HOST, "STRICT"), (PRODUCTPAGE_HOST, "PERMISSIVE")] {
        for (what, cert, alert, reason) in &attacks {
            let o = client.tls(Some(sni), Some(cert), sni);
            eprintln!("{mode}: {what}: {} {:?}", o.end, o.alert);
            assert_eq!(
                (o.end.as_str(), o.alert.as_deref()),
                ("alert", Some(*alert)),
                "{mode}: {what}: {:?}",
                o.raw
            );
            assert!(o.responses.is_empty(), "{mode}: {what}: got a response");
            let entries = entries_of(&gw, o.lport);
            assert!(
                entries
                    .iter()
                    .any(|e| e["reason"] == *reason && e["decision"] == "deny"),
                "{mode}: {what}: no access-log entry with reason {reason}: {entries:?}"
            );
            assert_documented(&rows, reason, Some(&alert_words(alert)));
        }
    }

    // No certificate: STRICT answers alert 116, PERMISSIVE serves.
    let o = client.tls(Some(DETAILS_HOST), None, DETAILS_HOST);
    assert_eq!(
        o.alert.as_deref(),
        Some("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        "{:?}",
        o.raw
    );
    assert!(
        entries_of(&gw, o.lport)
            .iter()
            .any(|e| e["reason"] == "certificate_required")
    );
    assert_documented(&rows, "certificate_required", Some("certificate required"));
    let o = client.tls(Some(PRODUCTPAGE_HOST), None, PRODUCTPAGE_HOST);
    assert!(
        o.responses
            .first()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "{:?}",
        o.raw
    );
    // No SNI, or one no service has: a certificate is required because a
    // STRICT service is reachable through this listener.
    for sni in [None, Some("unknown.example")] {
        let o = client.tls(sni, None, DETAILS_HOST);
        assert_eq!(
            o.alert.as_deref(),
            Some("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            "SNI {sni:?}: {:?}",
            o.raw
        );
    }

    // The handshake failures are counted by reason.
    let metrics = gw.metrics();
    for (_, _, _, reason) in &attacks {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("handshake") && l.contains(&format!("\"{reason}\""))),
            "no handshake-failure metric for {reason}"
        );
    }
    // The valid certificate still works after all that.
    let ok = client.tls(Some(DETAILS_HOST), Some(&valid), DETAILS_HOST);
    assert_eq!(ok.end, "ok", "{:?}", ok.raw);
}

#[test]
fn host_and_sni_tricks_cannot_reach_strict_or_dodge_policy() {
    let (gw, pki) = start();
    let client = Client::new(&gw, &pki);
    let rows = documented_reasons();
    let valid = pki.issue(
        "valid",
        &Leaf {
            uris: vec![CLIENT_ID.to_owned()],
            ..Leaf::default()
        },
    );
    let closed_as = |o: &Outcome, reason: &str, what: &str| {
        assert!(
            o.responses.is_empty() && matches!(o.end.as_str(), "closed" | "reset"),
            "{what}: expected the connection closed without a response: {:?}",
            o.raw
        );
        let entries = entries_of(&gw, o.lport);
        assert!(
            entries.iter().any(|e| e["reason"] == reason
                && e["decision"] == "deny"
                && e["destination"] == format!("{DETAILS_HOST}:9080")),
            "{what}: no deny entry for details with reason {reason}: {entries:?}"
        );
    };

    // SNI of the PERMISSIVE service, no certificate, Host of the STRICT one.
    let o = client.tls(Some(PRODUCTPAGE_HOST), None, DETAILS_HOST);
    closed_as(&o, "certificate_required", "SNI productpage + Host details");
    assert_documented(&rows, "certificate_required", None);
    // Same, after a legitimate request on the same keep-alive connection.
    let o = client.tls_requests(
        Some(PRODUCTPAGE_HOST),
        None,
        &[
            get(PRODUCTPAGE_HOST, "/", &[]),
            get(DETAILS_HOST, "/details/0", &[]),
        ],
    );
    assert_eq!(o.responses.len(), 1, "{:?}", o.raw);
    assert!(
        o.responses[0].contains("upstream:productpage"),
        "{:?}",
        o.raw
    );
    assert_eq!(
        o.end, "closed",
        "second request on the connection: {:?}",
        o.raw
    );

    // Plaintext with the STRICT service's host spelled every other way.
    let plaintext_under_strict = "plaintext_under_strict";
    assert_documented(&rows, plaintext_under_strict, None);
    for host in [
        DETAILS_HOST.to_owned(),
        DETAILS_HOST.to_ascii_uppercase(),
        format!("{DETAILS_HOST}."),
        format!("{DETAILS_HOST}:9080"),
        format!("{DETAILS_HOST}.:9080"),
        format!("{DETAILS_HOST}:09080"),
    ] {
        let o = client.plain(&[get(&host, "/details/0", &[])]);
        closed_as(
            &o,
            plaintext_under_strict,
            &format!("plaintext Host {host}"),
        );
    }
    // A Host whose port is not a number is refused before routing (routing
    // and authorization would otherwise see another name than the upstream).
    {
        let before = gw.details.requests().len();
        let host = format!("{DETAILS_HOST}:notaport");
        let o = client.plain(&[get(&host, "/details/0", &[])]);
        assert!(
            o.responses
                .first()
                .is_some_and(|r| r.starts_with("HTTP/1.1 400")),
            "Host {host}: {:?}",
            o.raw
        );
        assert_eq!(
            gw.details.requests().len(),
            before,
            "Host {host} reached details"
        );
        let entries = entries_of(&gw, o.lport);
        assert!(
            entries.iter().any(|e| e["reason"] == "invalid_host"),
            "{entries:?}"
        );
    }
    assert_documented(&rows, "invalid_host", None);
    // Absolute-form target naming the STRICT service, Host the PERMISSIVE
    // one: the target wins (RFC 9112 §3.2.2), so STRICT applies.
    let o = client.plain(&[format!(
        "GET http://{DETAILS_HOST}/details/0 HTTP/1.1\r\nHost: {PRODUCTPAGE_HOST}\r\n\r\n"
    )]);
    closed_as(
        &o,
        plaintext_under_strict,
        "absolute-form details, Host productpage",
    );
    // The reverse is served by productpage, and its upstream sees
    // productpage's name, not the Host the client sent.
    let before = gw.productpage.requests().len();
    let o = client.plain(&[format!(
        "GET http://{PRODUCTPAGE_HOST}/ HTTP/1.1\r\nHost: {DETAILS_HOST}\r\n\r\n"
    )]);
    assert!(
        o.responses[0].contains("upstream:productpage"),
        "{:?}",
        o.raw
    );
    let seen = gw.productpage.requests();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(
        seen.last().and_then(|h| h.get("host")).map(String::as_str),
        Some(PRODUCTPAGE_HOST)
    );

    // Two Host headers, in either order: 400, never routed.
    for (a, b) in [
        (PRODUCTPAGE_HOST, DETAILS_HOST),
        (DETAILS_HOST, PRODUCTPAGE_HOST),
    ] {
        let before = (gw.details.requests().len(), gw.productpage.requests().len());
        let o = client.plain(&[format!("GET / HTTP/1.1\r\nHost: {a}\r\nHost: {b}\r\n\r\n")]);
        assert!(
            o.responses
                .first()
                .is_some_and(|r| r.starts_with("HTTP/1.1 400")),
            "duplicate Host {a}, {b}: {:?}",
            o.raw
        );
        assert_eq!(
            (gw.details.requests().len(), gw.productpage.requests().len()),
            before,
            "a request with two Host headers reached an upstream"
        );
        let entries = entries_of(&gw, o.lport);
        assert!(
            entries.iter().any(|e| e["reason"] == "duplicate_host"),
            "{entries:?}"
        );
    }
    assert_documented(&rows, "duplicate_host", None);

    // A DENY rule written for productpage's host name also holds for every
    // spelling that routes to productpage.
    for host in [
        PRODUCTPAGE_HOST.to_owned(),
        PRODUCTPAGE_HOST.to_ascii_uppercase(),
        format!("{PRODUCTPAGE_HOST}."),
        format!("{PRODUCTPAGE_HOST}:9080"),
        format!("{PRODUCTPAGE_HOST}.:9080"),
    ] {
        let o = client.plain(&[get(&host, "/admin/users", &[])]);
        assert_eq!(
            o.responses.first().map(String::as_str),
            Some("HTTP/1.1 403 Forbidden\nRBAC: access denied"),
            "DENY bypassed with Host {host}: {:?}",
            o.raw
        );
        let entries = entries_of(&gw, o.lport);
        assert!(
            entries.iter().any(|e| e["reason"] == "deny_matched"),
            "{entries:?}"
        );
    }
    assert_documented(&rows, "deny_matched", Some("rbac: access denied"));
    let o = client.plain(&[get(PRODUCTPAGE_HOST, "/public", &[])]);
    assert!(o.responses[0].starts_with("HTTP/1.1 200"), "{:?}", o.raw);

    // HTTP/2 over TLS (curl): SNI productpage without a certificate,
    // :authority details → the stream is refused, no response.
    let port = gw.http.port();
    let resolve = format!("{PRODUCTPAGE_HOST}:{port}:127.0.0.1");
    let (code, out, err) = meshgate_e2e::curl(&[
        "-k",
        "--http2",
        "--resolve",
        &resolve,
        "-H",
        &format!("Host: {DETAILS_HOST}"),
        "-w",
        "%{http_code}",
        &format!("https://{PRODUCTPAGE_HOST}:{port}/details/0"),
    ]);
    assert_ne!(
        code, 0,
        "h2 :authority details without a certificate: {out} {err}"
    );
    assert!(out.ends_with("000"), "{out}");
    let _ = valid;
}

#[test]
fn client_supplied_xfcc_is_never_trusted() {
    let (gw, pki) = start();
    let client = Client::new(&gw, &pki);
    let valid = pki.issue(
        "valid",
        &Leaf {
            uris: vec![CLIENT_ID.to_owned()],
            ..Leaf::default()
        },
    );
    let forged = [
        "x-forwarded-client-cert: By=spiffe://cluster.local/ns/x/sa/y;URI=spiffe://cluster.local/ns/istio-system/sa/admin",
        "X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/istio-system/sa/admin",
        "Connection: keep-alive, x-forwarded-client-cert",
    ];
    // Plaintext (PERMISSIVE): no XFCC reaches the upstream at all.
    let before = gw.productpage.requests().len();
    let o = client.plain(&[get(PRODUCTPAGE_HOST, "/", &forged)]);
    assert!(o.responses[0].starts_with("HTTP/1.1 200"), "{:?}", o.raw);
    let seen = gw.productpage.requests();
    assert_eq!(seen.len(), before + 1);
    let last = seen.last().expect("request");
    assert!(
        !last.contains_key("x-forwarded-client-cert"),
        "a plaintext client's XFCC reached the upstream: {last:?}"
    );

    // mTLS: exactly the gateway's own value, naming the verified peer.
    for (sni, upstream) in [
        (DETAILS_HOST, &gw.details),
        (PRODUCTPAGE_HOST, &gw.productpage),
    ] {
        let before = upstream.requests().len();
        let o = client.tls_requests(Some(sni), Some(&valid), &[get(sni, "/", &forged)]);
        assert!(o.responses[0].starts_with("HTTP/1.1 200"), "{:?}", o.raw);
        let seen = upstream.requests();
        assert_eq!(seen.len(), before + 1);
        let xfcc = seen
            .last()
            .and_then(|h| h.get("x-forwarded-client-cert"))
            .expect("XFCC from the gateway");
        assert!(
            xfcc.starts_with("By=spiffe://cluster.local/ns/meshgate-system/sa/meshgate;Hash=")
                && xfcc.ends_with(&format!(";URI={CLIENT_ID}"))
                && !xfcc.contains("admin")
                && !xfcc.contains(','),
            "{sni}: {xfcc}"
        );
    }
}

#[test]
fn path_spellings_cannot_dodge_a_paths_rule() {
    let (gw, pki) = start();
    let client = Client::new(&gw, &pki);
    let rows = documented_reasons();
    let served_before = gw.productpage.requests().len();
    // Every spelling a typical upstream resolves to /admin/users.
    for path in [
        "/admin/users",
        "/./admin/users",
        "/public/../admin/users",
        "//admin/users",
        "/%61dmin/users",
        "/%2e%2e/admin/users",
        "/admin/x/%2E%2E/users",
    ] {
        let o = client.plain(&[get(PRODUCTPAGE_HOST, path, &[])]);
        assert_eq!(
            o.responses.first().map(String::as_str),
            Some("HTTP/1.1 403 Forbidden\nRBAC: access denied"),
            "DENY /admin* bypassed with {path}: {:?}",
            o.raw
        );
    }
    assert_eq!(
        gw.productpage.requests().len(),
        served_before,
        "a denied request reached the upstream"
    );
    // What has no single safe meaning is refused before authorization.
    for path in ["/public%2F..%2Fadmin/users", "/public%5C..%5Cadmin", "/%zz"] {
        let o = client.plain(&[get(PRODUCTPAGE_HOST, path, &[])]);
        assert!(
            o.responses
                .first()
                .is_some_and(|r| r.starts_with("HTTP/1.1 400")),
            "{path}: {:?}",
            o.raw
        );
        let entries = entries_of(&gw, o.lport);
        assert!(
            entries.iter().any(|e| e["reason"] == "bad_path"),
            "{entries:?}"
        );
    }
    assert_documented(&rows, "bad_path", Some("400"));
    // Normal paths, dot segments inside the allowed area included, pass.
    for path in ["/public", "/public/./a/../b", "/.well-known/x"] {
        let o = client.plain(&[get(PRODUCTPAGE_HOST, path, &[])]);
        assert!(
            o.responses
                .first()
                .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
            "{path}: {:?}",
            o.raw
        );
    }
}

#[test]
fn a_disable_sni_is_relayed_untouched_never_routed_by_host() {
    let (gw, pki) = start();
    gw.apply(
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: productpage-disable, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: productpage}}
  mtls: {mode: DISABLE}
",
    );
    let client = Client::new(&gw, &pki);
    let details_before = gw.details.requests().len();
    // TLS with productpage's SNI is not terminated under DISABLE: the bytes
    // go to productpage's workload as they are, so a Host naming details is
    // never read by the gateway, and details sees nothing.
    let o = client.tls(Some(PRODUCTPAGE_HOST), None, DETAILS_HOST);
    assert!(o.responses.is_empty(), "{:?}", o.raw);
    assert_ne!(o.end, "ok", "{:?}", o.raw);
    assert_eq!(
        gw.details.requests().len(),
        details_before,
        "a DISABLE passthrough reached details"
    );
    let entries = entries_of(&gw, o.lport);
    assert!(
        !entries.is_empty()
            && entries
                .iter()
                .all(|e| e["destination"] == format!("{PRODUCTPAGE_HOST}:9080")
                    && e["mode"] == "DISABLE"),
        "{entries:?}"
    );
    // Plaintext, Host details: STRICT still applies to details.
    let o = client.plain(&[get(DETAILS_HOST, "/details/0", &[])]);
    assert!(o.responses.is_empty(), "{:?}", o.raw);
    assert!(
        entries_of(&gw, o.lport)
            .iter()
            .any(|e| e["reason"] == "plaintext_under_strict"),
        "{:?}",
        o.raw
    );
}
