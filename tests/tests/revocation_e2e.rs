//! Issue 4: revocation by SPIFFE ID and by serial through the admin API.
//! A revoked peer's OPEN connection is closed within 1 s, its next
//! handshake is refused (alert certificate_revoked), and other peers'
//! connections are untouched.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use meshgate_e2e::{DETAILS_HOST, Gateway, PRODUCTPAGE_ID, SLEEP_ID, curl, wall_now};

/// Holds one keep-alive mTLS connection per client directory given, each
/// with one request answered; prints `ready`, then waits until the FIRST
/// connection is closed by the gateway and prints `closed <wall time>`;
/// then sends a second request on every other connection and prints
/// `second <name> <status|error>`; then tries a NEW handshake + request
/// with the first directory's certificate and prints `new <status|error>`.
const HOLD: &str = r#"
import http.client, json, socket, ssl, sys, time
port, host, dirs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

def connect(d):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(d + "/ca.pem")
    ctx.load_cert_chain(d + "/chain.pem", d + "/key.pem")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(s, server_hostname=host)

def request(s):
    s.sendall(("GET /details/0 HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
    r = http.client.HTTPResponse(s)
    r.begin()
    r.read()
    return r.status

def attempt(f):
    try:
        return str(f())
    except Exception as e:
        return "ERROR %s: %s" % (type(e).__name__, e)

socks = [connect(d) for d in dirs]
print("first", " ".join(str(request(s)) for s in socks), flush=True)
print("ready", flush=True)
socks[0].settimeout(10)
try:
    data = socks[0].recv(1)
    what = "eof" if not data else "data"
except Exception as e:
    what = type(e).__name__
print("closed", time.time(), what, flush=True)
for d, s in zip(dirs[1:], socks[1:]):
    print("second", d, attempt(lambda: request(s)), flush=True)
def fresh():
    s = connect(dirs[0])
    return request(s)
print("new", attempt(fresh), flush=True)
"#;

struct Hold {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Hold {
    fn start(gw: &Gateway, dirs: &[&std::path::Path]) -> Hold {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HOLD)
            .arg(gw.http.port().to_string())
            .arg(DETAILS_HOST)
            .args(dirs)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut h = Hold { child, lines };
        let first = h.line();
        assert!(
            first.starts_with("first ") && first.split(' ').skip(1).all(|s| s == "200"),
            "{first}"
        );
        assert_eq!(h.line(), "ready");
        h
    }

    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("python line")
            .expect("python output")
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn revoke(gw: &Gateway, body: &str) -> meshgate_e2e::Value {
    let (status, text) = gw.api("POST", "/api/v1/revocations", Some(body));
    assert_eq!(status, 200, "revoke {body}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn revoking_an_identity_closes_its_open_connection_and_refuses_the_next_handshake() {
    let gw = Gateway::start();
    let sleep = gw.issue_cert(SLEEP_ID, &gw.dir.path().join("sleep"), None);
    let pp = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("pp"), None);
    let mut hold = Hold::start(&gw, &[&sleep.dir, &pp.dir]);

    let t_revoke = wall_now();
    let answer = revoke(
        &gw,
        &format!(r#"{{"spiffe_id": "{SLEEP_ID}", "reason": "e2e: key compromised"}}"#),
    );
    assert_eq!(answer["revocation"]["kind"], "spiffe_id");
    let closed = hold.line();
    let mut parts = closed.split(' ');
    assert_eq!(parts.next(), Some("closed"), "{closed}");
    let t_closed: f64 = parts.next().and_then(|t| t.parse().ok()).expect("time");
    let latency = t_closed - t_revoke;
    eprintln!("revocation by SPIFFE ID: open connection closed after {latency:.3} s ({closed})");
    assert!(
        latency < 1.0,
        "open connection closed after {latency:.3} s (limit 1 s)"
    );

    // The other peer's keep-alive connection is untouched.
    let second = hold.line();
    assert!(second.ends_with(" 200"), "other peer affected: {second}");
    // A new handshake with the revoked certificate is refused.
    let new = hold.line();
    assert!(
        new.contains("ERROR") && new.to_ascii_lowercase().contains("revoked"),
        "{new}"
    );
    // curl names the alert too.
    let (url, resolve) = gw.curl_target(DETAILS_HOST, "/details/0");
    let (code, _, err) = curl(&[
        "-k",
        "--resolve",
        &resolve,
        "--cert",
        &sleep.file("chain.pem"),
        "--key",
        &sleep.file("key.pem"),
        &url,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("certificate revoked"), "{err}");
    // The CA refuses to issue for the revoked identity.
    let again = gw.cli(&[
        "cert",
        "issue",
        "--spiffe-id",
        SLEEP_ID,
        "--out",
        gw.dir.path().join("sleep2").to_str().expect("path"),
    ]);
    assert!(!again.status.success(), "issuance for a revoked ID");
    // Listed, and counted by the gateway.
    let list = gw.api_get("/api/v1/revocations");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(
        gw.access_log()
            .iter()
            .any(|e| e["reason"] == "certificate_revoked"),
        "the close is in the access log"
    );
}

#[test]
fn revoking_a_serial_closes_only_that_certificate() {
    let gw = Gateway::start();
    let old = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("old"), None);
    let new = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("new"), None);
    assert_ne!(old.serial, new.serial);
    let mut hold = Hold::start(&gw, &[&old.dir, &new.dir]);
    let t_revoke = wall_now();
    let answer = revoke(
        &gw,
        &format!(r#"{{"serial": "{}", "reason": "e2e"}}"#, old.serial),
    );
    assert_eq!(answer["revocation"]["kind"], "serial");
    let closed = hold.line();
    let t_closed: f64 = closed
        .split(' ')
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("time");
    let latency = t_closed - t_revoke;
    eprintln!("revocation by serial: open connection closed after {latency:.3} s");
    assert!(latency < 1.0, "{latency}");
    // Same identity, other certificate: still served.
    let second = hold.line();
    assert!(second.ends_with(" 200"), "{second}");
    let fresh = hold.line();
    assert!(fresh.to_ascii_lowercase().contains("revoked"), "{fresh}");
}
