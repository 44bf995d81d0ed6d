//! Browser sessions: the admin token is exchanged once for a session
//! cookie, and every state-changing request made with that cookie must
//! also carry the session's CSRF token in a header.
//!
//! Design:
//! - `POST /ui/session` with `{"token": "<admin token>"}` (JSON only, so a
//!   cross-site HTML form cannot submit it) creates a session. The answer
//!   sets `meshgate_session=<id>` — `HttpOnly` (scripts cannot read it),
//!   `SameSite=Strict` (other sites' requests do not carry it), `Path=/`,
//!   and `Secure` when the admin port serves TLS — and returns the
//!   session's CSRF token in the JSON body.
//! - The CSRF token is a synchronizer token: random, stored server-side
//!   with the session, never in a cookie. A page of this origin fetches it
//!   with `GET /ui/session` (a cross-origin page cannot read that answer)
//!   and sends it as `X-CSRF-Token` on every POST/PUT/PATCH/DELETE.
//!   Requests whose `Origin` or `Sec-Fetch-Site` says "another site" are
//!   refused as well, as a second, independent check.
//! - Session IDs are 256 random bits; only their SHA-256 is kept, so the
//!   table in memory holds nothing that can be replayed. Sessions expire
//!   after 30 idle minutes and at most 12 hours after login, and are lost
//!   on restart (the token is the durable credential).
//! - Login attempts are rate limited per client address (when the server
//!   provides it) and globally; failed attempts spend from a token bucket
//!   and an empty bucket refuses even the right token until it refills, so
//!   guessing cannot continue at speed.
//!
//! The admin token itself never appears in an answer or a log line.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::error_response;
use crate::admin::token::AdminAuth;
use crate::state::lock;

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "meshgate_session";
/// Header carrying the CSRF token on state-changing requests.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// A session ends after this long without a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, however busy.
const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at once; the least recently used is dropped beyond it,
/// so logins in a loop cannot grow memory.
const MAX_SESSIONS: usize = 256;

/// Failed logins a single client address may make in a burst.
const PER_CLIENT_BURST: f64 = 5.0;
/// One failed login is forgiven per this many seconds, per client.
const PER_CLIENT_REFILL_SECS: f64 = 12.0;
/// Failed logins all clients together may make in a burst.
const GLOBAL_BURST: f64 = 20.0;
/// One failed login is forgiven per this many seconds, globally.
const GLOBAL_REFILL_SECS: f64 = 3.0;
/// Client addresses remembered by the limiter (full buckets are pruned).
const MAX_TRACKED_CLIENTS: usize = 4096;

/// Who is making a request, for the audit log and the UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Actor {
    /// A bearer-token client (`meshgate apply`, scripts).
    Api,
    /// A browser session.
    Ui,
}

impl Actor {
    /// The name recorded in the audit log.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Actor::Api => "admin-api",
            Actor::Ui => "admin-ui",
        }
    }
}

#[derive(Debug)]
struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) > IDLE_TIMEOUT
            || now.duration_since(self.created) > ABSOLUTE_TIMEOUT
    }

    fn expires_in(&self, now: Instant) -> Duration {
        let idle = IDLE_TIMEOUT.saturating_sub(now.duration_since(self.last_used));
        let absolute = ABSOLUTE_TIMEOUT.saturating_sub(now.duration_since(self.created));
        idle.min(absolute)
    }
}

/// A token bucket spent by failed logins.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, burst: f64, refill_secs: f64, now: Instant) {
        let gained = now.duration_since(self.at).as_secs_f64() / refill_secs;
        self.tokens = (self.tokens + gained).min(burst);
        self.at = now;
    }

    /// Seconds until one token is available (0 when one is).
    fn wait_secs(&self, refill_secs: f64) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else {
            // Rounded up so a client retrying after Retry-After succeeds.
            ((1.0 - self.tokens) * refill_secs).ceil().max(1.0) as u64
        }
    }
}

#[derive(Debug)]
struct Limiter {
    global: Bucket,
    clients: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    fn new(now: Instant) -> Self {
        Limiter {
            global: Bucket::full(GLOBAL_BURST, now),
            clients: HashMap::new(),
        }
    }

    /// `Err(retry_after_secs)` when the client (or everyone) has used up
    /// its failed attempts.
    fn check(&mut self, client: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        self.global.refill(GLOBAL_BURST, GLOBAL_REFILL_SECS, now);
        let mut wait = self.global.wait_secs(GLOBAL_REFILL_SECS);
        if let Some(ip) = client
            && let Some(b) = self.clients.get_mut(&ip)
        {
            b.refill(PER_CLIENT_BURST, PER_CLIENT_REFILL_SECS, now);
            wait = wait.max(b.wait_secs(PER_CLIENT_REFILL_SECS));
        }
        if wait == 0 { Ok(()) } else { Err(wait) }
    }

    fn failed(&mut self, client: Option<IpAddr>, now: Instant) {
        self.global.tokens = (self.global.tokens - 1.0).max(0.0);
        if let Some(ip) = client {
            if self.clients.len() >= MAX_TRACKED_CLIENTS {
                self.clients.retain(|_, b| {
                    b.refill(PER_CLIENT_BURST, PER_CLIENT_REFILL_SECS, now);
                    b.tokens < PER_CLIENT_BURST
                });
            }
            let b = self
                .clients
                .entry(ip)
                .or_insert_with(|| Bucket::full(PER_CLIENT_BURST, now));
            b.tokens = (b.tokens - 1.0).max(0.0);
        }
    }
}

/// Sessions, their CSRF tokens and the login limiter.
pub(crate) struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    limiter: Mutex<Limiter>,
    /// Whether cookies get the `Secure` attribute (the admin port serves
    /// TLS). A `Secure` cookie is never sent over plain HTTP, so setting it
    /// on a plain-HTTP admin port would make login impossible.
    secure_cookies: bool,
    rng: ring::rand::SystemRandom,
}

impl core::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sessions")
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

/// The result of looking at a request's session cookie.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionCheck {
    /// No session cookie at all.
    Absent,
    /// A cookie that names no live session (expired, logged out, forged).
    Invalid,
    /// A live session, and the request may proceed.
    Valid,
    /// A live session, but a state-changing request without the right
    /// CSRF token or from another site.
    Forbidden(&'static str),
}

/// Body of `POST /ui/session`.
#[derive(Debug, Deserialize)]
struct LoginRequest {
    token: String,
}

/// Answer to `POST /ui/session` and `GET /ui/session`.
#[derive(Debug, Serialize)]
struct SessionInfo {
    /// Send this as `X-CSRF-Token` on every state-changing request.
    csrf_token: String,
    /// Seconds until the session ends unless used.
    expires_in_secs: u64,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a method changes state (and so needs the CSRF token).
fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Refuses requests a browser marks as coming from another site. Absent
/// headers pass: non-browser clients do not send them, and those clients
/// cannot carry the SameSite=Strict cookie of a victim anyway.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (headers.get(header::ORIGIN), host) {
        (Some(origin), Some(host)) => {
            let origin = origin.to_str().unwrap_or("");
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        _ => false,
    }
}

impl Sessions {
    /// An empty session table. `secure_cookies`: the admin port serves TLS.
    pub(crate) fn new(secure_cookies: bool) -> Self {
        Sessions {
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::new(Instant::now())),
            secure_cookies,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    fn random_token(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&self.rng, &mut bytes).ok()?;
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Checks the session cookie of a request to an authenticated path.
    pub(crate) fn check(&self, method: &Method, headers: &HeaderMap) -> SessionCheck {
        let Some(id) = cookie(headers, COOKIE) else {
            return SessionCheck::Absent;
        };
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        let key = hash(id);
        let Some(s) = sessions.get_mut(&key) else {
            return SessionCheck::Invalid;
        };
        if s.expired(now) {
            sessions.remove(&key);
            return SessionCheck::Invalid;
        }
        if is_state_changing(method) {
            if cross_site(headers) {
                return SessionCheck::Forbidden("cross-site request refused");
            }
            let presented = headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !constant_time_eq(presented, s.csrf.as_bytes()) {
                return SessionCheck::Forbidden(
                    "missing or wrong CSRF token (send the session's X-CSRF-Token header)",
                );
            }
        }
        s.last_used = now;
        SessionCheck::Valid
    }

    fn set_cookie(&self, value: &str, max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .ok()
    }

    /// `POST /ui/session`: exchanges the admin token for a session.
    pub(crate) fn login(
        &self,
        auth: &AdminAuth,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the token as application/json",
            );
        }
        if cross_site(headers) {
            return error_response(StatusCode::FORBIDDEN, "cross-site request refused");
        }
        let client = peer.map(|a| a.ip());
        let now = Instant::now();
        if let Err(wait) = lock(&self.limiter).check(client, now) {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins; wait before trying again",
            );
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
        // The token is parsed but never echoed or logged, even when the
        // body is malformed (serde's message could quote it).
        let token = serde_json::from_slice::<LoginRequest>(body)
            .map(|r| r.token)
            .unwrap_or_default();
        if !auth.verify(token.trim()) {
            lock(&self.limiter).failed(client, now);
            tracing::warn!(client = ?client, "admin UI login refused: wrong token");
            return error_response(StatusCode::UNAUTHORIZED, "wrong admin token");
        }
        let (Some(id), Some(csrf)) = (self.random_token(), self.random_token()) else {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the system random generator failed",
            );
        };
        {
            let mut sessions = lock(&self.sessions);
            sessions.retain(|_, s| !s.expired(now));
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
            sessions.insert(
                hash(&id),
                Session {
                    csrf: csrf.clone(),
                    created: now,
                    last_used: now,
                },
            );
        }
        tracing::info!(client = ?client, "admin UI session started");
        let mut resp = axum::Json(SessionInfo {
            csrf_token: csrf,
            expires_in_secs: IDLE_TIMEOUT.as_secs(),
        })
        .into_response();
        if let Some(c) = self.set_cookie(&id, ABSOLUTE_TIMEOUT.as_secs()) {
            resp.headers_mut().insert(header::SET_COOKIE, c);
        }
        resp
    }

    /// `GET /ui/session`: the CSRF token of the caller's session (a page
    /// reload lost it), or 401.
    pub(crate) fn info(&self, headers: &HeaderMap) -> Response {
        let now = Instant::now();
        let sessions = lock(&self.sessions);
        match cookie(headers, COOKIE).and_then(|id| sessions.get(&hash(id))) {
            Some(s) if !s.expired(now) => axum::Json(SessionInfo {
                csrf_token: s.csrf.clone(),
                expires_in_secs: s.expires_in(now).as_secs(),
            })
            .into_response(),
            _ => error_response(StatusCode::UNAUTHORIZED, "not logged in"),
        }
    }

    /// `DELETE /ui/session`: logs out (needs the CSRF token, so another
    /// site cannot log the user out either).
    pub(crate) fn logout(&self, headers: &HeaderMap) -> Response {
        match self.check(&Method::DELETE, headers) {
            SessionCheck::Valid => {}
            SessionCheck::Forbidden(why) => return error_response(StatusCode::FORBIDDEN, why),
            SessionCheck::Absent | SessionCheck::Invalid => {
                return error_response(StatusCode::UNAUTHORIZED, "not logged in");
            }
        }
        if let Some(id) = cookie(headers, COOKIE) {
            lock(&self.sessions).remove(&hash(id));
        }
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(c) = self.set_cookie("", 0) {
            resp.headers_mut().insert(header::SET_COOKIE, c);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; meshgate_session=abc; b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        let h = headers(&[("cookie", "xmeshgate_session=abc")]);
        assert_eq!(cookie(&h, COOKIE), None);
    }

    #[test]
    fn cross_site_signals_are_refused() {
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:15000")])));
        assert!(!cross_site(&headers(&[
            ("host", "127.0.0.1:15000"),
            ("origin", "http://127.0.0.1:15000"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(cross_site(&headers(&[
            ("host", "127.0.0.1:15000"),
            ("origin", "http://evil.example"),
        ])));
        assert!(cross_site(&headers(&[
            ("host", "127.0.0.1:15000"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(cross_site(&headers(&[("origin", "null")])));
    }

    #[test]
    fn failed_logins_exhaust_the_client_bucket_then_refill() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let ip: Option<IpAddr> = Some([10, 0, 0, 1].into());
        for _ in 0..5 {
            assert!(l.check(ip, t0).is_ok());
            l.failed(ip, t0);
        }
        let wait = l.check(ip, t0).expect_err("limited");
        assert!((1..=12).contains(&wait), "{wait}");
        // Another client is not limited by this one's failures.
        assert!(l.check(Some([10, 0, 0, 2].into()), t0).is_ok());
        assert!(l.check(ip, t0 + Duration::from_secs(13)).is_ok());
    }

    #[test]
    fn global_bucket_limits_without_addresses() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        for _ in 0..20 {
            assert!(l.check(None, t0).is_ok());
            l.failed(None, t0);
        }
        assert!(l.check(None, t0).is_err());
    }

    #[test]
    fn csrf_is_required_for_state_changes_only() {
        let sessions = Sessions::new(false);
        let now = Instant::now();
        lock(&sessions.sessions).insert(
            hash("sid"),
            Session {
                csrf: "tok".into(),
                created: now,
                last_used: now,
            },
        );
        let with_cookie = headers(&[("cookie", "meshgate_session=sid")]);
        assert_eq!(
            sessions.check(&Method::GET, &with_cookie),
            SessionCheck::Valid
        );
        assert!(matches!(
            sessions.check(&Method::POST, &with_cookie),
            SessionCheck::Forbidden(_)
        ));
        let wrong = headers(&[("cookie", "meshgate_session=sid"), ("x-csrf-token", "tok2")]);
        assert!(matches!(
            sessions.check(&Method::PUT, &wrong),
            SessionCheck::Forbidden(_)
        ));
        let right = headers(&[("cookie", "meshgate_session=sid"), ("x-csrf-token", "tok")]);
        assert_eq!(sessions.check(&Method::DELETE, &right), SessionCheck::Valid);
        let other = headers(&[("cookie", "meshgate_session=nope")]);
        assert_eq!(sessions.check(&Method::GET, &other), SessionCheck::Invalid);
        assert_eq!(
            sessions.check(&Method::GET, &HeaderMap::new()),
            SessionCheck::Absent
        );
    }

    #[test]
    fn expired_sessions_are_gone() {
        let sessions = Sessions::new(false);
        let now = Instant::now();
        let Some(old) = now.checked_sub(IDLE_TIMEOUT + Duration::from_secs(1)) else {
            return; // the monotonic clock started too recently to test this
        };
        lock(&sessions.sessions).insert(
            hash("sid"),
            Session {
                csrf: "tok".into(),
                created: old,
                last_used: old,
            },
        );
        let h = headers(&[("cookie", "meshgate_session=sid")]);
        assert_eq!(sessions.check(&Method::GET, &h), SessionCheck::Invalid);
        assert!(lock(&sessions.sessions).is_empty());
    }
}
