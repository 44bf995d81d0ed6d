//! Issue 3's "Show", through the real binary: `meshgate serve` with the
//! seed's clients (curl, Python's urllib), certificates from `meshgate cert
//! issue`, policy changes with `meshgate apply -f`.

use meshgate_e2e::{
    DETAILS_HOST, DETAILS_VIEWER_YAML, Gateway, GatewayOptions, PRODUCTPAGE_ID, SLEEP_ID,
    STRICT_YAML, curl, foreign_cert, python,
};

/// urllib GET with a Host header; prints the status and body, or the
/// exception's class name when no HTTP response arrived.
const URLLIB_PLAIN: &str = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Host": sys.argv[2]})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
except Exception as e:
    print("ERROR", type(e).__name__, e)
"#;

/// urllib GET over mTLS: the server chain is verified against ca.pem (the
/// gateway's certificate carries only its SPIFFE URI, so the host name is
/// not checked), the client presents chain.pem/key.pem. SNI and Host are the
/// service; the socket goes to 127.0.0.1 via a patched resolver.
const URLLIB_MTLS: &str = r#"
import sys, ssl, socket, urllib.request, urllib.error
url, host, port, certdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
real = socket.getaddrinfo
socket.getaddrinfo = lambda h, *a, **k: real("127.0.0.1" if h == host else h, *a, **k)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(certdir + "/ca.pem")
ctx.load_cert_chain(certdir + "/chain.pem", certdir + "/key.pem")
try:
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
except Exception as e:
    print("ERROR", type(e).__name__, e)
"#;

/// curl output as `BODY\nSTATUS` whether or not the body ended in `\n`.
fn norm(out: &str) -> String {
    out.replace("\n\n", "\n")
}

fn plain_url(gw: &Gateway) -> String {
    format!("http://{}/details/0", gw.http)
}

#[test]
fn permissive_then_strict_with_curl_and_urllib() {
    permissive_then_strict(&Gateway::start());
}

/// The same on `serve --workers 1`, the single-threaded event loop (a
/// different tokio runtime from the default multi-thread one).
#[test]
fn permissive_then_strict_on_a_single_threaded_gateway() {
    let gw = Gateway::start_with(GatewayOptions {
        env: vec![("MESHGATE_WORKERS".to_owned(), "1".to_owned())],
        ..GatewayOptions::default()
    });
    assert_eq!(gw.api_get("/api/v1/status")["workers"], 1);
    permissive_then_strict(&gw);
}

fn permissive_then_strict(gw: &Gateway) {
    let pp = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("pp"), None);
    let (url, resolve) = gw.curl_target(DETAILS_HOST, "/details/0");
    let port = gw.http.port().to_string();
    let mtls_curl = |extra: &[&str]| {
        let mut args = vec!["-k", "--resolve", &resolve, "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    };
    let cert = pp.file("chain.pem");
    let key = pp.file("key.pem");
    let with_cert = ["--cert", cert.as_str(), "--key", key.as_str()];

    // PERMISSIVE (no policy): plaintext and mTLS both reach the upstream.
    let host_hdr = format!("Host: {DETAILS_HOST}");
    let (code, out, err) = curl(&["-H", &host_hdr, "-w", "\n%{http_code}", &plain_url(gw)]);
    assert_eq!(
        (code, norm(&out).as_str()),
        (0, "upstream:details\n200"),
        "{err}"
    );
    let (_, out, _) = python(URLLIB_PLAIN, &[&plain_url(gw), DETAILS_HOST]);
    assert_eq!(out.trim(), "200 upstream:details", "urllib plaintext");
    let (code, out, err) = mtls_curl(&with_cert);
    assert_eq!(
        (code, norm(&out).as_str()),
        (0, "upstream:details\n200"),
        "{err}"
    );
    let https = format!("https://{DETAILS_HOST}:{port}/details/0");
    let (_, out, err) = python(URLLIB_MTLS, &[&https, DETAILS_HOST, &port, &pp.file("")]);
    assert_eq!(out.trim(), "200 upstream:details", "urllib mTLS: {err}");

    // The seed's mutual-tls.yaml: bookinfo STRICT.
    let applied = gw.apply(STRICT_YAML);
    assert!(
        String::from_utf8_lossy(&applied.stdout).contains("peerauthentication/default created"),
        "{applied:?}"
    );

    // Plaintext: no HTTP response at all.
    let (code, out, _) = curl(&["-H", &host_hdr, "-w", "%{http_code}", &plain_url(gw)]);
    assert_ne!(code, 0, "plaintext under STRICT must fail");
    assert_eq!(out, "000", "no HTTP status under STRICT");
    let (_, out, _) = python(URLLIB_PLAIN, &[&plain_url(gw), DETAILS_HOST]);
    assert!(out.starts_with("ERROR"), "urllib got a response: {out}");

    // TLS without a client certificate: alert 116, named by curl.
    let (code, out, err) = mtls_curl(&[]);
    assert_ne!(code, 0);
    assert!(out.ends_with("000"), "{out}");
    assert!(
        err.contains("certificate required"),
        "curl must name the alert: {err}"
    );

    // A mesh certificate: 200, and the upstream saw XFCC with the SPIFFE ID.
    let before = gw.details.requests().len();
    let (code, out, err) = mtls_curl(&with_cert);
    assert_eq!(
        (code, norm(&out).as_str()),
        (0, "upstream:details\n200"),
        "{err}"
    );
    let seen = gw.details.requests();
    assert_eq!(seen.len(), before + 1);
    let xfcc = seen
        .last()
        .and_then(|h| h.get("x-forwarded-client-cert"))
        .expect("XFCC header at the upstream");
    assert!(
        xfcc.contains(&format!("URI={PRODUCTPAGE_ID}"))
            && xfcc.contains("By=spiffe://cluster.local/ns/meshgate-system/sa/meshgate")
            && xfcc.contains("Hash="),
        "{xfcc}"
    );
    let (_, out, err) = python(URLLIB_MTLS, &[&https, DETAILS_HOST, &port, &pp.file("")]);
    assert_eq!(out.trim(), "200 upstream:details", "urllib mTLS: {err}");

    // A client-supplied XFCC header is replaced, never forwarded.
    let forged = "x-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/x/sa/admin";
    let (code, _, err) = mtls_curl(&[&with_cert[..], &["-H", forged]].concat());
    assert_eq!(code, 0, "{err}");
    let last = gw.details.requests().pop().expect("request");
    let xfcc = last.get("x-forwarded-client-cert").expect("xfcc");
    assert!(
        !xfcc.contains("sa/admin") && xfcc.contains(PRODUCTPAGE_ID),
        "{xfcc}"
    );

    // A certificate from another CA (same trust domain): handshake failure.
    let other = foreign_cert(&gw.dir.path().join("other"), PRODUCTPAGE_ID);
    let (ocert, okey) = (other.file("chain.pem"), other.file("key.pem"));
    let (code, out, err) = mtls_curl(&["--cert", &ocert, "--key", &okey]);
    assert_ne!(code, 0, "foreign CA must fail");
    assert!(out.ends_with("000"), "{out}");
    assert!(err.contains("alert"), "TLS alert expected: {err}");
    let metrics = gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("handshake") && l.contains("unknown_ca")),
        "handshake failure by reason in /metrics"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("handshake") && l.contains("certificate_required"))
    );
    // Control-plane metrics are on the same endpoint.
    assert!(
        metrics.contains("meshgate_config_generation 2"),
        "{metrics}"
    );
}

#[test]
fn authorization_policy_lets_only_productpage_get_details() {
    let gw = Gateway::start();
    let pp = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("pp"), None);
    let sleep = gw.issue_cert(SLEEP_ID, &gw.dir.path().join("sleep"), None);
    gw.apply(DETAILS_VIEWER_YAML);
    let (url, resolve) = gw.curl_target(DETAILS_HOST, "/details/0");
    let call = |c: &meshgate_e2e::CertFiles, method: &str| {
        curl(&[
            "-k",
            "--resolve",
            &resolve,
            "-X",
            method,
            "--cert",
            &c.file("chain.pem"),
            "--key",
            &c.file("key.pem"),
            "-w",
            "\n%{http_code}",
            &url,
        ])
    };
    let (code, out, err) = call(&sleep, "GET");
    assert_eq!(
        (code, norm(&out).as_str()),
        (0, "RBAC: access denied\n403"),
        "{err}"
    );
    let (code, out, err) = call(&pp, "GET");
    assert_eq!(
        (code, norm(&out).as_str()),
        (0, "upstream:details\n200"),
        "{err}"
    );
    let (_, out, _) = call(&pp, "POST");
    assert!(out.ends_with("403"), "only GET is allowed: {out}");
    // PERMISSIVE plaintext has no principal: denied too.
    let host_hdr = format!("Host: {DETAILS_HOST}");
    let (_, out, _) = curl(&["-H", &host_hdr, "-w", "\n%{http_code}", &plain_url(&gw)]);
    assert!(out.ends_with("403"), "{out}");

    let log = gw.access_log();
    let denied = log
        .iter()
        .find(|e| e["principal"] == "cluster.local/ns/bookinfo/sa/sleep")
        .expect("access-log entry for sleep");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["security"], "mutual_tls");
    let allowed = log
        .iter()
        .find(|e| {
            e["principal"] == "cluster.local/ns/bookinfo/sa/bookinfo-productpage"
                && e["method"] == "GET"
        })
        .expect("access-log entry for productpage");
    assert_eq!(allowed["decision"], "allow");
    assert!(
        allowed["policy"]
            .as_str()
            .is_some_and(|p| p.contains("bookinfo/details-viewer")),
        "{allowed}"
    );
}

#[test]
fn status_lists_listeners_and_sigterm_exits_cleanly() {
    let mut gw = Gateway::start();
    let status = gw.api_get("/api/v1/status");
    let listeners = status["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 1, "{status}");
    assert_eq!(listeners[0][0], "http");
    // Without --workers: one per CPU this process may use (unless the
    // whole suite runs with MESHGATE_WORKERS set, which the gateway reads).
    let expected = std::env::var("MESHGATE_WORKERS").map_or_else(
        |_| std::thread::available_parallelism().expect("cpus").get(),
        |w| w.parse().expect("MESHGATE_WORKERS is a number"),
    );
    assert_eq!(status["workers"], expected, "{status}");
    assert_eq!(
        listeners[0][1].as_str().expect("addr"),
        format!("{} (http)", gw.http)
    );
    let exit = gw.terminate();
    assert!(exit.success(), "SIGTERM must drain and exit 0: {exit}");
}
