//! Request bodies, path parameters and query strings into every admin API
//! endpoint that reads one, on a whole running gateway (`serve::run`).
//!
//! Input: byte 0 = endpoint (see `ENDPOINTS`), byte 1 = credentials (0-3:
//! the admin token; 4: none; 5: a wrong token; 6: a malformed header;
//! 7: the token with another scheme), then `<path parameter>\n<query>\n`
//! and the body.
//! Properties: every request gets an answer; without the token nothing but
//! the open paths answers anything but 401; with it, no input makes the
//! server fail (5xx); no answer ever contains the admin token; the gateway
//! stays healthy.
#![no_main]

use core::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use meshgate::fuzzing::admin::Admin;
use sha2::{Digest, Sha256};

/// (method, path template): `{}` is the fuzzed path parameter.
const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/api/v1/policies"),
    ("POST", "/api/v1/policies/delete"),
    ("GET", "/api/v1/policies/{}"),
    ("DELETE", "/api/v1/policies/{}"),
    ("GET", "/api/v1/policies"),
    ("GET", "/api/v1/services"),
    ("GET", "/api/v1/services/{}"),
    ("POST", "/api/v1/certificates"),
    ("POST", "/api/v1/revocations"),
    ("POST", "/api/v1/ca/rotate-root"),
    ("POST", "/api/v1/identity/rotate"),
    ("POST", "/ui/session"),
    ("PUT", "/api/v1/namespaces/{}/mode"),
    ("GET", "/api/v1/namespaces/{}/preview"),
    ("GET", "/api/v1/namespaces/{}"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/connections"),
    ("POST", "/api/v1/edge/nodes"),
    ("GET", "/api/v1/edge/nodes/{}"),
    ("PUT", "/api/v1/edge/nodes/{}/listeners"),
    ("POST", "/api/v1/edge/nodes/{}/revoke"),
    ("GET", "/api/v1/status"),
];

/// Percent-encodes what may not appear literally; `keep` lists the
/// delimiters the fuzzer may use on purpose.
fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let [endpoint, creds, rest @ ..] = data else {
        return;
    };
    let admin = Admin::get();
    let (method, template) = ENDPOINTS[usize::from(*endpoint) % ENDPOINTS.len()];
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let param = parts.next().unwrap_or_default();
    let query = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let mut target = template.replace("{}", &encode(param, b"/"));
    if !query.is_empty() {
        target.push('?');
        target.push_str(&encode(query, b"=&"));
    }
    let token = admin.token();
    let (auth, authorised) = match creds % 8 {
        0..=3 => (Some(format!("Bearer {token}")), true),
        4 => (None, false),
        5 => (Some("Bearer mgt_not-the-token".to_owned()), false),
        6 => (Some(String::from_utf8_lossy(param).into_owned()), false),
        _ => (Some(format!("Basic {token}")), false),
    };
    let answer = admin.request(method, &target, auth.as_deref(), body);
    if !answer.sent {
        // e.g. a control byte in the malformed Authorization value: no
        // client could send it, so the server never sees it.
        return;
    }
    let Some(status) = answer.status else {
        panic!("no answer to {method} {target}");
    };
    let open = template == "/ui/session";
    if !authorised && !open {
        assert_eq!(
            status, 401,
            "{method} {target} answered {status} without the token"
        );
    }
    assert!(
        status < 500,
        "{method} {target} failed with {status}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    // Compared by SHA-256 only: libFuzzer learns the operands of plain
    // comparisons (memcmp hooks) and would plant the token in inputs, which
    // the server then legitimately echoes (a 404 naming the path, the audit
    // log showing a stored field).
    let token_hash = Sha256::digest(token.as_bytes());
    let leaked = |b: &[u8]| {
        b.windows(token.len())
            .any(|w| w.starts_with(b"mgt_") && Sha256::digest(w) == token_hash)
    };
    if leaked(target.as_bytes()) || leaked(body) {
        return;
    }
    assert!(
        !leaked(&answer.body),
        "the admin token is in the answer to {method} {target}"
    );
    for (name, value) in &answer.headers {
        assert!(
            !leaked(value),
            "the admin token is in header {name} of {method} {target}"
        );
    }
    assert_eq!(
        admin.request("GET", "/healthz", None, &[]).status,
        Some(200)
    );
});
