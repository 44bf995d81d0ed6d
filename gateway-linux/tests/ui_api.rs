//! The admin server's authentication as the browser UI uses it, against
//! the real binary: every `/api/v1` route of the OpenAPI document refuses
//! requests without a token or session; session requests that change state
//! need the CSRF token; login is rate limited; security headers are on
//! every answer; the admin token never appears in an answer or a log.

mod ui_support;

use ui_support::{Gw, operations, state_changing};

/// Routes the API is known to have: the OpenAPI document must list them,
/// so iterating over it really covers the API.
const KNOWN: &[(&str, &str)] = &[
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/policies"),
    ("POST", "/api/v1/policies"),
    ("POST", "/api/v1/policies/delete"),
    (
        "DELETE",
        "/api/v1/policies/PeerAuthentication/bookinfo/default",
    ),
    ("GET", "/api/v1/services"),
    ("GET", "/api/v1/namespaces"),
    ("GET", "/api/v1/namespaces/bookinfo/preview"),
    ("PUT", "/api/v1/namespaces/bookinfo/mode"),
    ("GET", "/api/v1/connections"),
    ("GET", "/api/v1/connections/stream"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/ca"),
    ("POST", "/api/v1/ca/rotate-root"),
    ("GET", "/api/v1/certificates"),
    ("POST", "/api/v1/certificates"),
    ("POST", "/api/v1/revocations"),
    ("POST", "/api/v1/identity/rotate"),
    ("GET", "/api/v1/edge/nodes"),
    ("POST", "/api/v1/edge/nodes"),
    ("PUT", "/api/v1/edge/nodes/default/listeners"),
    ("POST", "/api/v1/edge/nodes/default/revoke"),
    ("GET", "/api/v1/openapi.json"),
];

#[test]
fn every_api_route_refuses_requests_without_token_or_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gw::start(dir.path());
    let doc = gw.openapi();
    let ops = operations(&doc, "/api/v1/");
    for (m, p) in KNOWN {
        assert!(
            ops.iter().any(|(om, op)| om == m && op == p),
            "{m} {p} missing from the OpenAPI document"
        );
    }
    let mut checked = 0;
    for (method, path) in ops
        .iter()
        .chain([("GET".to_owned(), "/metrics".to_owned())].iter())
    {
        let body = if state_changing(method) {
            Some(("application/json", "{\"mode\":\"STRICT\",\"force\":true}"))
        } else {
            None
        };
        let variants: [(&str, Vec<(&str, String)>); 4] = [
            ("no credentials", vec![]),
            (
                "a wrong token",
                vec![("Authorization", "Bearer mgt_not_the_token".to_owned())],
            ),
            (
                "a forged session cookie",
                vec![("Cookie", "meshgate_session=forged".to_owned())],
            ),
            (
                "the token as a cookie",
                vec![("Cookie", format!("meshgate_session={}", gw.token))],
            ),
        ];
        for (what, headers) in variants {
            let mut r = gw.req(method, path);
            for (k, v) in &headers {
                r = r.header(k, v);
            }
            if let Some((ct, b)) = body {
                r = r.body(ct, b);
            }
            let resp = r.send();
            assert_eq!(
                resp.status, 401,
                "{method} {path} with {what} answered {}: {}",
                resp.status, resp.body
            );
            checked += 1;
        }
    }
    assert!(checked >= KNOWN.len() * 4);
    // Nothing changed: the probes above could not have applied anything.
    let r = gw.req("GET", "/api/v1/policies").bearer(&gw.token).send();
    assert!(r.body.contains("\"items\":[]"), "{}", r.body);
}

#[test]
fn session_requests_that_change_state_need_the_csrf_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gw::start(dir.path());
    let (cookie, csrf) = gw.login();
    let doc = gw.openapi();
    let ops = operations(&doc, "/api/v1/");
    let mut refused = 0;
    for (method, path) in &ops {
        if !state_changing(method) {
            // Reads work with the cookie alone (SSE streams included).
            let r = gw.req(method, path).header("Cookie", &cookie).send();
            assert!(
                r.status != 401 && r.status != 403,
                "{method} {path} refused a session read: {} {}",
                r.status,
                r.body
            );
            continue;
        }
        for (what, extra) in [
            ("no CSRF token", vec![]),
            (
                "a wrong CSRF token",
                vec![("X-CSRF-Token", "nope".to_owned())],
            ),
            (
                "the right token from another site",
                vec![
                    ("X-CSRF-Token", csrf.clone()),
                    ("Origin", "http://evil.example".to_owned()),
                ],
            ),
            (
                "the right token, marked cross-site by the browser",
                vec![
                    ("X-CSRF-Token", csrf.clone()),
                    ("Sec-Fetch-Site", "cross-site".to_owned()),
                ],
            ),
        ] {
            let mut r = gw
                .req(method, path)
                .header("Cookie", &cookie)
                .body("application/json", "{\"mode\":\"STRICT\",\"force\":true}");
            for (k, v) in &extra {
                r = r.header(k, v);
            }
            let resp = r.send();
            assert_eq!(
                resp.status, 403,
                "{method} {path} with the session cookie and {what}: {} {}",
                resp.status, resp.body
            );
            refused += 1;
        }
    }
    assert!(refused >= 8 * 4, "only {refused} refusals checked");
    let status = gw.req("GET", "/api/v1/status").bearer(&gw.token).send();
    assert!(
        status.body.contains("\"generation\":1"),
        "a refused request changed the configuration: {}",
        status.body
    );

    // With the token (same origin) the switch goes through, and the audit
    // log names the UI as the actor.
    let ok = gw
        .req("PUT", "/api/v1/namespaces/bookinfo/mode")
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .header("Origin", &format!("http://{}", gw.admin))
        .body("application/json", "{\"mode\":\"STRICT\"}")
        .send();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("\"mode\":\"STRICT\""), "{}", ok.body);
    let audit = gw
        .req("GET", "/api/v1/audit")
        .header("Cookie", &cookie)
        .send();
    assert!(
        audit.body.contains("\"actor\":\"admin-ui\"")
            && audit
                .body
                .contains("created peerauthentication/bookinfo.default"),
        "{}",
        audit.body
    );

    // Logout needs the token too, and ends the session.
    let out = gw
        .req("DELETE", "/ui/session")
        .header("Cookie", &cookie)
        .send();
    assert_eq!(out.status, 403);
    let out = gw
        .req("DELETE", "/ui/session")
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send();
    assert_eq!(out.status, 204);
    let after = gw
        .req("GET", "/api/v1/status")
        .header("Cookie", &cookie)
        .send();
    assert_eq!(after.status, 401);
}

#[test]
fn login_is_rate_limited_even_for_the_right_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gw::start(dir.path());
    let wrong = |n: usize| {
        gw.req("POST", "/ui/session")
            .body(
                "application/json",
                &format!("{{\"token\":\"mgt_guess_{n}\"}}"),
            )
            .send()
    };
    for n in 0..5 {
        assert_eq!(wrong(n).status, 401, "attempt {n}");
    }
    let limited = wrong(5);
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let right = gw
        .req("POST", "/ui/session")
        .body(
            "application/json",
            &format!("{{\"token\":\"{}\"}}", gw.token),
        )
        .send();
    assert_eq!(
        right.status, 429,
        "guessing must not continue while limited"
    );
    assert!(right.header("set-cookie").is_none());
    // Bearer API clients are not affected by the UI's login limit.
    let api = gw.req("GET", "/api/v1/status").bearer(&gw.token).send();
    assert_eq!(api.status, 200);
    // Form posts (what a cross-site HTML form can send) are not accepted.
    let form = gw
        .req("POST", "/ui/session")
        .body("application/x-www-form-urlencoded", "token=x")
        .send();
    assert_eq!(form.status, 415);
}

#[test]
fn security_headers_are_on_every_answer_and_the_cookie_is_locked_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gw::start(dir.path());
    let answers = [
        gw.req("GET", "/").send(),
        gw.req("GET", "/ui/assets/app.js").send(),
        gw.req("GET", "/ui/assets/style.css").send(),
        gw.req("GET", "/healthz").send(),
        gw.req("GET", "/api/v1/status").send(),
        gw.req("GET", "/api/v1/status").bearer(&gw.token).send(),
        gw.req("GET", "/no/such/path").send(),
    ];
    for a in &answers {
        let csp = a
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("no CSP: {}", a.raw.lines().next().unwrap_or_default()));
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
    }
    assert_eq!(answers[0].status, 200);
    assert!(
        answers[0]
            .body
            .contains("<script src=\"/ui/assets/app.js\"")
    );
    assert!(
        !answers[0].body.contains("<script>") && !answers[0].body.contains(" style="),
        "no inline script or style in the page"
    );
    assert_eq!(
        answers[1].header("content-type"),
        Some("text/javascript; charset=utf-8")
    );

    let body = format!("{{\"token\":\"{}\"}}", gw.token);
    let login = gw
        .req("POST", "/ui/session")
        .body("application/json", &body)
        .send();
    let cookie = login.header("set-cookie").expect("cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    // The admin port is plain HTTP here: a Secure cookie would never be
    // sent back, so it is Secure only when the port serves TLS.
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[test]
fn the_token_never_appears_in_answers_or_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gw::start(dir.path());
    let token = gw.token.clone();
    let (cookie, csrf) = gw.login();
    let mut answers = vec![
        gw.req("GET", "/ui/session")
            .header("Cookie", &cookie)
            .send(),
        gw.req("GET", "/api/v1/status").bearer(&token).send(),
        gw.req("GET", "/api/v1/openapi.json").bearer(&token).send(),
        gw.req("GET", "/api/v1/audit").bearer(&token).send(),
        gw.req("GET", "/api/v1/certificates").bearer(&token).send(),
        gw.req("GET", "/metrics").bearer(&token).send(),
        // Malformed bodies that embed the token must not be echoed back.
        gw.req("POST", "/ui/session")
            .body("application/json", &format!("{{\"token\": {token}}}"))
            .send(),
        gw.req("POST", "/api/v1/policies")
            .bearer(&token)
            .body("application/yaml", &format!("kind: {token}\n"))
            .send(),
        gw.req("PUT", "/api/v1/namespaces/bookinfo/mode")
            .header("Cookie", &cookie)
            .header("X-CSRF-Token", &csrf)
            .body("application/json", &format!("{{\"mode\":\"{token}\"}}"))
            .send(),
        gw.req(
            "GET",
            &format!("/api/v1/namespaces/bookinfo/preview?mode={token}"),
        )
        .bearer(&token)
        .send(),
        gw.req("GET", "/api/v1/status")
            .bearer(&format!("{token}x"))
            .send(),
    ];
    // A login with the token plus one character: the refusal must not
    // quote what was sent.
    answers.push(
        gw.req("POST", "/ui/session")
            .body("application/json", &format!("{{\"token\":\"{token}!\"}}"))
            .send(),
    );
    for a in &answers {
        assert!(!a.raw.contains(&token), "token in an answer: {}", a.raw);
    }
    std::thread::sleep(core::time::Duration::from_millis(300));
    let stdout = gw.stdout.lock().expect("lock").clone();
    let stderr = gw.stderr.lock().expect("lock").clone();
    // Printed exactly once, at the start that created it (by design), and
    // never again — not in the access log, not at debug log level.
    assert_eq!(stdout.matches(&token).count(), 1, "{stdout}");
    let after_ready = stdout
        .split_once("meshgate: ready")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(!after_ready.contains(&token));
    assert!(!stderr.contains(&token), "token in stderr");
    assert!(!stderr.is_empty(), "debug logs were captured");
}
