//! Request heads that do not arrive in one piece, against the real gateway,
//! over plaintext (PERMISSIVE productpage) and mTLS (STRICT details): one
//! byte at a time, split exactly at CRLF boundaries (and inside the final
//! one), pipelined requests in one write and a pipelined head split across
//! writes, each followed by a second request on the same keep-alive
//! connection after a pause (so the connection has parked in between).
//!
//! Idle HTTP/1 connections detach their parser between requests ("parking",
//! gateway-linux/src/dataplane/http_proxy.rs). That code once took a head
//! whose first bytes had arrived for an idle connection and cut it as a
//! clean end of input — sslyze's one-byte TLS 1.3 client-auth probe found
//! it (tls_scan.rs). The last test checks that a head that never
//! completes is still cut by `limits.headTimeout`, pipelined or not.

use meshgate_e2e::{
    DETAILS_HOST, DETAILS_STRICT_YAML, Gateway, GatewayOptions, PERMISSIVE_YAML, PRODUCTPAGE_HOST,
    PRODUCTPAGE_ID, Value, python,
};
use serde_json::json;

/// A scripted HTTP/1.1 client. It writes each step's bytes, then reads
/// whatever the gateway sends for the step's pause; after the last step it
/// reads until `expect` complete responses arrived, the connection ended,
/// or `wait` seconds passed. Prints the responses (status and body) and
/// how the connection ended (`null` while open), in seconds since
/// connecting.
const CLIENT: &str = r#"
import json, select, socket, ssl, sys, time
cfg = json.loads(sys.argv[1])
t0 = time.monotonic()
s = socket.create_connection(("127.0.0.1", cfg["port"]), timeout=10)
if cfg["tls"]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cfg["cert"], cfg["key"])
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname=cfg["sni"])
got = b""
end = None

def ended(how):
    global end
    end = {"how": how, "at": round(time.monotonic() - t0, 3)}

def pump(wait):
    global got
    deadline = time.monotonic() + wait
    while end is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if not (isinstance(s, ssl.SSLSocket) and s.pending()):
            if not select.select([s], [], [], left)[0]:
                return
        s.settimeout(max(left, 0.05))
        try:
            d = s.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        except OSError as e:
            ended("error " + type(e).__name__)
            return
        if not d:
            ended("eof")
            return
        got += d

def responses(data):
    out = []
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            return out
        lines = data[:head_end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        rest = data[head_end + 4:]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                nl = rest.find(b"\r\n")
                if nl < 0:
                    return out
                n = int(rest[:nl].split(b";")[0], 16)
                if len(rest) < nl + 2 + n + 2:
                    return out
                body += rest[nl + 2:nl + 2 + n]
                rest = rest[nl + 2 + n + 2:]
                if n == 0:
                    break
        else:
            n = int(headers.get("content-length", "0"))
            if len(rest) < n:
                return out
            body, rest = rest[:n], rest[n:]
        out.append({"status": status, "body": body.decode("latin-1")})
        data = rest

for chunk, pause in cfg["steps"]:
    if end is not None:
        break
    try:
        s.sendall(chunk.encode("latin-1"))
    except OSError as e:
        ended("send error " + type(e).__name__)
        break
    pump(pause)
deadline = time.monotonic() + cfg["wait"]
while end is None and len(responses(got)) < cfg["expect"] and time.monotonic() < deadline:
    pump(min(0.2, max(deadline - time.monotonic(), 0)))
print(json.dumps({"responses": responses(got), "end": end,
                  "elapsed": round(time.monotonic() - t0, 3)}))
"#;

/// One gateway with a PERMISSIVE service (plaintext) and a STRICT one
/// (mTLS with productpage's certificate).
struct Setup {
    gw: Gateway,
    cert: String,
    key: String,
}

fn setup(extra_settings: &str) -> Setup {
    let gw = Gateway::start_with(GatewayOptions {
        extra_settings: extra_settings.to_owned(),
        ..GatewayOptions::default()
    });
    let o = gw.apply(&format!("{PERMISSIVE_YAML}---\n{DETAILS_STRICT_YAML}"));
    assert!(o.status.success(), "apply: {o:?}");
    let pp = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("pp"), None);
    Setup {
        cert: pp.file("chain.pem"),
        key: pp.file("key.pem"),
        gw,
    }
}

/// How a client reaches the gateway.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// Plaintext to the PERMISSIVE service.
    Plain,
    /// mTLS to the STRICT service.
    Mtls,
}

const TRANSPORTS: [Transport; 2] = [Transport::Plain, Transport::Mtls];

impl Transport {
    fn host(self) -> &'static str {
        match self {
            Transport::Plain => PRODUCTPAGE_HOST,
            Transport::Mtls => DETAILS_HOST,
        }
    }

    /// The body the service's upstream answers with.
    fn body(self) -> &'static str {
        match self {
            Transport::Plain => "upstream:productpage\n",
            Transport::Mtls => "upstream:details\n",
        }
    }

    fn upstream_seqs(self, s: &Setup) -> Vec<String> {
        let up = match self {
            Transport::Plain => &s.gw.productpage,
            Transport::Mtls => &s.gw.details,
        };
        up.requests()
            .iter()
            .filter_map(|h| h.get("x-seq").cloned())
            .collect()
    }
}

/// A complete GET head, numbered by `x-seq` so the upstream's view shows
/// order.
fn head(t: Transport, seq: u32) -> String {
    format!(
        "GET /split/{seq} HTTP/1.1\r\nHost: {}\r\nUser-Agent: split-heads\r\nx-seq: {seq}\r\n\r\n",
        t.host()
    )
}

/// Runs the client; returns its result.
fn run(s: &Setup, t: Transport, steps: &[(String, f64)], expect: usize, wait: f64) -> Value {
    let cfg = json!({
        "port": s.gw.http.port(),
        "tls": matches!(t, Transport::Mtls),
        "sni": t.host(),
        "cert": s.cert,
        "key": s.key,
        "steps": steps,
        "expect": expect,
        "wait": wait,
    });
    let (code, out, err) = python(CLIENT, &[&cfg.to_string()]);
    assert_eq!(code, 0, "client failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

/// `n` responses arrived, each `200` with the service's body, and the
/// connection was still open after them; the upstream saw exactly
/// `seqs`, in that order.
fn assert_served(what: &str, s: &Setup, t: Transport, r: &Value, seqs: &[u32]) {
    let got = r["responses"].as_array().expect("responses");
    assert_eq!(
        got.len(),
        seqs.len(),
        "[{what} {t:?}] responses: {r}\ngateway stderr:\n{}",
        s.gw.stderr_text()
    );
    for resp in got {
        assert_eq!(resp["status"], 200, "[{what} {t:?}] {r}");
        assert_eq!(resp["body"], t.body(), "[{what} {t:?}] {r}");
    }
    assert!(
        r["end"].is_null(),
        "[{what} {t:?}] the keep-alive connection ended: {r}"
    );
    let want: Vec<String> = seqs.iter().map(u32::to_string).collect();
    assert_eq!(t.upstream_seqs(s), want, "[{what} {t:?}] upstream order");
    eprintln!("[{what} {t:?}] served {seqs:?} in {} s", r["elapsed"]);
}

/// Steps that write `text` in pieces split at the given byte offsets.
fn split_at(text: &str, cuts: &[usize], pause: f64) -> Vec<(String, f64)> {
    let mut steps = Vec::new();
    let mut from = 0;
    for &c in cuts.iter().chain([text.len()].iter()) {
        if c > from {
            steps.push((text[from..c].to_owned(), pause));
            from = c;
        }
    }
    steps
}

/// Pause after a complete request: long enough for the response to be
/// flushed and the idle connection to park (250 ms after the flush)
/// before the next head starts.
const PARK: f64 = 0.5;

#[test]
fn heads_sent_one_byte_at_a_time_are_served() {
    let s = setup("");
    for t in TRANSPORTS {
        let mut steps = Vec::new();
        for seq in [1, 2] {
            let h = head(t, seq);
            let cuts: Vec<usize> = (1..h.len()).collect();
            steps.extend(split_at(&h, &cuts, 0.01));
            // The response, then parking, before the next head.
            if let Some(last) = steps.last_mut() {
                last.1 = PARK;
            }
        }
        let r = run(&s, t, &steps, 2, 10.0);
        assert_served("one byte at a time", &s, t, &r, &[1, 2]);
    }
}

#[test]
fn heads_split_at_crlf_boundaries_are_served() {
    let s = setup("");
    for t in TRANSPORTS {
        let mut steps = Vec::new();
        // 1: a piece per line, each ending exactly after its CRLF.
        let h = head(t, 1);
        let cuts: Vec<usize> = h.match_indices("\r\n").map(|(i, _)| i + 2).collect();
        steps.extend(split_at(&h, &cuts, 0.05));
        steps.last_mut().expect("steps").1 = PARK;
        // 2: split between CR and LF of every line, the final blank line
        // included (the head is complete only with the very last byte).
        let h = head(t, 2);
        let cuts: Vec<usize> = h.match_indices("\r\n").map(|(i, _)| i + 1).collect();
        steps.extend(split_at(&h, &cuts, 0.05));
        steps.last_mut().expect("steps").1 = PARK;
        // 3: the whole head but its final CRLF, then the CRLF alone.
        let h = head(t, 3);
        steps.extend(split_at(&h, &[h.len() - 2], 0.2));
        let r = run(&s, t, &steps, 3, 10.0);
        assert_served("split at CRLF", &s, t, &r, &[1, 2, 3]);
    }
}

#[test]
fn pipelined_requests_are_served_in_order_even_split_across_writes() {
    let s = setup("");
    for t in TRANSPORTS {
        // Three requests in one write, then (after parking) a fourth whose
        // head starts in the same write as a fifth's first half; the rest
        // of the fifth comes after the fourth has been answered, when the
        // connection would park with half a head read.
        let one_write = format!("{}{}{}", head(t, 1), head(t, 2), head(t, 3));
        let fifth = head(t, 5);
        let half = fifth.len() / 2;
        let steps = vec![
            (one_write, PARK),
            (format!("{}{}", head(t, 4), &fifth[..half]), 0.5),
            (fifth[half..].to_owned(), PARK),
        ];
        let r = run(&s, t, &steps, 5, 10.0);
        assert_served("pipelined", &s, t, &r, &[1, 2, 3, 4, 5]);
    }
}

/// `limits.headTimeout` of the last test.
const HEAD_TIMEOUT_SECS: f64 = 2.0;

#[test]
fn a_head_that_never_completes_is_still_cut_at_the_head_timeout() {
    let s = setup(&format!("limits: {{headTimeout: {HEAD_TIMEOUT_SECS}s}}\n"));
    for t in TRANSPORTS {
        // A header line trickled one byte every 0.25 s (the connection is
        // never idle) for far longer than the head timeout; alone, and
        // behind a complete pipelined request that the gateway answers
        // first (its half head is kept across parking, which starts its
        // head timeout once more: at most twice the limit).
        for (what, first, answered, limit) in [
            ("alone", String::new(), 0, HEAD_TIMEOUT_SECS),
            ("pipelined", head(t, 1), 1, 2.0 * HEAD_TIMEOUT_SECS),
        ] {
            let start = format!("{first}GET /slow HTTP/1.1\r\nHost: {}\r\n", t.host());
            let mut steps = vec![(start, 0.25)];
            steps.extend((0..60).map(|_| ("x".to_owned(), 0.25)));
            let r = run(&s, t, &steps, 99, 0.0);
            let got = r["responses"].as_array().expect("responses");
            assert_eq!(got.len(), answered, "[{what} {t:?}] {r}");
            let end = &r["end"];
            let at = end["at"].as_f64().unwrap_or(f64::MAX);
            assert!(
                !end.is_null() && at >= HEAD_TIMEOUT_SECS - 0.3 && at <= limit + 2.0,
                "[{what} {t:?}] the slow head was not cut between {HEAD_TIMEOUT_SECS} s and {limit} s (+2 s slack): {r}"
            );
            eprintln!("[{what} {t:?}] slow head cut after {at} s: {end}");
        }
    }
}
