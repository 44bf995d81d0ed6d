//! The node's small local web page, sans-IO: first-time setup (where the
//! gateway is, its SPIFFE ID, the trust root that verifies it, the
//! one-time token) and a status view.
//!
//! [`handle`] takes one complete HTTP/1.x request and writes the whole
//! response; the runtime ([`crate::node`]) only moves bytes. Requests:
//!
//! - `GET /` — the status page; while the node is not provisioned it
//!   carries the setup form.
//! - `POST /setup` (form-encoded) — accepted only while the node is not
//!   provisioned: the page is unauthenticated on the local network, so once
//!   the node has credentials nobody on that network may repoint it at
//!   another gateway. A valid form is returned as [`Setup`] for the caller
//!   to provision with; an invalid one gets a 400 naming the field.
//!
//! Everything else is 404/405; malformed requests get 400, oversized ones
//! 413. Nothing here panics on input; every value shown is HTML-escaped.

use core::fmt::{self, Write};

use heapless::{String, Vec};
use meshgate_core::spiffe::SpiffeId;
use meshgate_core::wire::MAX_TOKEN_LEN;

use crate::creds::{Credentials, CredsError, GatewayAddr};
use crate::enroll::NodeKey;

/// Longest SPIFFE ID accepted for the gateway.
pub const MAX_GATEWAY_ID_LEN: usize = 255;
/// Largest trust-root certificate (DER) the form accepts.
pub const MAX_ROOT_LEN: usize = 1024;
/// Request buffer a caller should offer: the form with a PEM root.
pub const REQUEST_LEN: usize = 3072;

/// A valid setup form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Where the gateway's tunnel endpoint is.
    pub gateway: GatewayAddr,
    /// The gateway's SPIFFE ID (validated).
    pub gateway_id: String<MAX_GATEWAY_ID_LEN>,
    /// The one-time enrollment token.
    pub token: String<MAX_TOKEN_LEN>,
    /// The trust root (DER) that verifies the gateway during enrollment.
    pub root_der: Vec<u8, MAX_ROOT_LEN>,
}

impl Setup {
    /// First-boot credentials for `key` (generated on the device) from the
    /// form.
    pub fn credentials(&self, key: &NodeKey) -> Result<Credentials, CredsError> {
        Credentials::provision(key, self.gateway, &self.gateway_id, &self.token)?
            .with_bootstrap_root(&self.root_der)
    }
}

/// What the status page shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Credentials exist (setup done).
    pub provisioned: bool,
    /// A certificate was issued.
    pub enrolled: bool,
    /// The configured gateway.
    pub gateway: Option<GatewayAddr>,
    /// The tunnel, in words.
    pub tunnel: TunnelState,
    /// Applied configuration version.
    pub config_version: Option<u64>,
    /// Streams carried right now.
    pub active_streams: usize,
    /// Local ports with a listener for legacy clients.
    pub listening: Vec<u16, 16>,
    /// Seconds since boot.
    pub uptime_s: u64,
}

/// The tunnel's state for the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TunnelState {
    /// Not started (not provisioned).
    #[default]
    Idle,
    /// Connecting or backing off.
    Connecting,
    /// TLS up, tunnel running.
    Up,
    /// Revoked by the gateway: stopped for good.
    Revoked,
}

impl TunnelState {
    fn as_str(self) -> &'static str {
        match self {
            TunnelState::Idle => "idle",
            TunnelState::Connecting => "connecting",
            TunnelState::Up => "up",
            TunnelState::Revoked => "revoked",
        }
    }
}

/// The outcome of one request.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request; the form is moved to the caller, never stored"
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request is not complete yet: read more (the response is not
    /// written).
    Incomplete,
    /// A response of this many bytes is in the output buffer.
    Responded(usize),
    /// A valid setup form; the response is in the output buffer.
    Provision(usize, Setup),
}

/// Why a form field was refused (shown to the user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FormError {
    Missing(&'static str),
    Invalid(&'static str),
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::Missing(n) => write!(f, "missing field: {n}"),
            FormError::Invalid(n) => write!(f, "invalid field: {n}"),
        }
    }
}

/// Handles `request` (the bytes received so far) and writes the response
/// into `out`.
pub fn handle(request: &[u8], status: &Status, out: &mut [u8]) -> Outcome {
    let Some(head_end) = find(request, b"\r\n\r\n") else {
        if request.len() >= REQUEST_LEN {
            return Outcome::Responded(simple(out, 413, "request too large"));
        }
        return Outcome::Incomplete;
    };
    let head = request.get(..head_end).unwrap_or(&[]);
    let body = request.get(head_end + 4..).unwrap_or(&[]);
    let Ok(head) = core::str::from_utf8(head) else {
        return Outcome::Responded(simple(out, 400, "bad request"));
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Outcome::Responded(simple(out, 400, "bad request"));
    }
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>());
    match (method, path) {
        (Some("GET"), Some("/")) => Outcome::Responded(page(out, status, None)),
        (Some("POST"), Some("/setup")) => {
            let len = match content_length {
                Some(Ok(n)) => n,
                _ => return Outcome::Responded(simple(out, 411, "length required")),
            };
            if head_end + 4 + len > REQUEST_LEN {
                return Outcome::Responded(simple(out, 413, "request too large"));
            }
            let Some(body) = body.get(..len) else {
                return Outcome::Incomplete;
            };
            if status.provisioned {
                return Outcome::Responded(simple(
                    out,
                    403,
                    "this node is already set up; setup is only possible on a fresh node",
                ));
            }
            match parse_form(body) {
                Ok(setup) => {
                    let n = page(out, status, Some(Ok(&setup)));
                    Outcome::Provision(n, setup)
                }
                Err(e) => Outcome::Responded(page(out, status, Some(Err(e)))),
            }
        }
        (Some("GET"), Some(_)) => Outcome::Responded(simple(out, 404, "not found")),
        (Some(_), Some("/")) | (Some(_), Some("/setup")) => {
            Outcome::Responded(simple(out, 405, "method not allowed"))
        }
        _ => Outcome::Responded(simple(out, 404, "not found")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Percent-decodes a form value (`+` is a space) into `out`.
fn form_decode<const N: usize>(raw: &[u8]) -> Option<Vec<u8, N>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        let b = match c {
            b'+' => b' ',
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let s = core::str::from_utf8(hex).ok()?;
                i += 2;
                u8::from_str_radix(s, 16).ok()?
            }
            c => c,
        };
        out.push(b).ok()?;
        i += 1;
    }
    Some(out)
}

fn field<'a>(body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let k = kv.next()?;
        (k == name.as_bytes()).then(|| kv.next().unwrap_or(&[]))
    })
}

fn text<const N: usize>(body: &[u8], name: &'static str) -> Result<String<N>, FormError> {
    let raw = field(body, name).ok_or(FormError::Missing(name))?;
    let bytes: Vec<u8, N> = form_decode(raw).ok_or(FormError::Invalid(name))?;
    let s = core::str::from_utf8(&bytes).map_err(|_| FormError::Invalid(name))?;
    let s = s.trim();
    if s.is_empty() {
        return Err(FormError::Missing(name));
    }
    String::try_from(s).map_err(|_| FormError::Invalid(name))
}

fn parse_gateway(s: &str) -> Option<GatewayAddr> {
    let (ip, port) = s.rsplit_once(':')?;
    let mut octets = [0u8; 4];
    let mut parts = ip.split('.');
    for o in octets.iter_mut() {
        *o = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() || octets == [0; 4] {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then_some(GatewayAddr { ip: octets, port })
}

/// The DER bytes of a PEM certificate or bare base64.
fn decode_root(s: &str) -> Option<Vec<u8, MAX_ROOT_LEN>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let b64 = match s.find(BEGIN) {
        Some(start) => {
            let rest = s.get(start + BEGIN.len()..)?;
            rest.get(..rest.find(END)?)?
        }
        None => s,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in b64.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8).ok()?;
        }
    }
    // A DER certificate is a SEQUENCE; anything else is not one.
    (out.first() == Some(&0x30)).then_some(out)
}

fn parse_form(body: &[u8]) -> Result<Setup, FormError> {
    let gateway: String<32> = text(body, "gateway")?;
    let gateway = parse_gateway(&gateway).ok_or(FormError::Invalid("gateway"))?;
    let gateway_id: String<MAX_GATEWAY_ID_LEN> = text(body, "gateway_id")?;
    SpiffeId::parse(&gateway_id).map_err(|_| FormError::Invalid("gateway_id"))?;
    let token: String<MAX_TOKEN_LEN> = text(body, "token")?;
    let root: String<REQUEST_LEN> = text(body, "root")?;
    let root_der = decode_root(&root).ok_or(FormError::Invalid("root"))?;
    Ok(Setup {
        gateway,
        gateway_id,
        token,
        root_der,
    })
}

/// A `fmt::Write` into a byte slice that remembers overflow.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(s.as_bytes());
                self.len = end;
                Ok(())
            }
            None => {
                self.overflow = true;
                Err(fmt::Error)
            }
        }
    }
}

/// HTML-escapes a value.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        _ => "Error",
    }
}

/// Writes a response with `body` rendered by `render`; the body length is
/// measured first so `Content-Length` is exact. Returns the length, or a
/// short 500 when `out` is too small.
fn respond(out: &mut [u8], code: u16, render: impl Fn(&mut dyn Write) -> fmt::Result) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = render(&mut count);
    let mut w = Out {
        buf: &mut *out,
        len: 0,
        overflow: false,
    };
    let ok = write!(
        w,
        "HTTP/1.0 {code} {}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code),
        count.0
    )
    .is_ok()
        && render(&mut w).is_ok();
    if ok && !w.overflow {
        return w.len;
    }
    const FALLBACK: &[u8] = b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    match out.get_mut(..FALLBACK.len()) {
        Some(dst) => {
            dst.copy_from_slice(FALLBACK);
            FALLBACK.len()
        }
        None => 0,
    }
}

fn simple(out: &mut [u8], code: u16, msg: &'static str) -> usize {
    respond(out, code, |w| {
        write!(
            w,
            "<!doctype html><title>meshgate edge node</title><p>{}</p>",
            Esc(msg)
        )
    })
}

fn page(out: &mut [u8], status: &Status, form: Option<Result<&Setup, FormError>>) -> usize {
    let code = match form {
        Some(Err(_)) => 400,
        _ => 200,
    };
    respond(out, code, |w| render_page(w, status, form))
}

fn render_page(
    w: &mut dyn Write,
    s: &Status,
    form: Option<Result<&Setup, FormError>>,
) -> fmt::Result {
    w.write_str(
        "<!doctype html><html><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\">\
         <title>meshgate edge node</title></head><body>\
         <h1>meshgate edge node</h1><table>",
    )?;
    let provisioned = if s.provisioned { "yes" } else { "no" };
    let enrolled = if s.enrolled { "yes" } else { "no" };
    write!(w, "<tr><th>set up</th><td>{provisioned}</td></tr>")?;
    write!(w, "<tr><th>enrolled</th><td>{enrolled}</td></tr>")?;
    if let Some(g) = s.gateway {
        write!(
            w,
            "<tr><th>gateway</th><td>{}.{}.{}.{}:{}</td></tr>",
            g.ip[0], g.ip[1], g.ip[2], g.ip[3], g.port
        )?;
    }
    write!(w, "<tr><th>tunnel</th><td>{}</td></tr>", s.tunnel.as_str())?;
    match s.config_version {
        Some(v) => write!(w, "<tr><th>configuration</th><td>version {v}</td></tr>")?,
        None => w.write_str("<tr><th>configuration</th><td>none yet</td></tr>")?,
    }
    write!(
        w,
        "<tr><th>streams</th><td>{}</td></tr><tr><th>listening</th><td>",
        s.active_streams
    )?;
    for (i, p) in s.listening.iter().enumerate() {
        write!(w, "{}{p}", if i == 0 { "" } else { ", " })?;
    }
    write!(
        w,
        "</td></tr><tr><th>uptime</th><td>{} s</td></tr></table>",
        s.uptime_s
    )?;
    match form {
        Some(Ok(setup)) => write!(
            w,
            "<p><b>Saved.</b> The node now enrolls with gateway {} ({}.{}.{}.{}:{}).</p>",
            Esc(&setup.gateway_id),
            setup.gateway.ip[0],
            setup.gateway.ip[1],
            setup.gateway.ip[2],
            setup.gateway.ip[3],
            setup.gateway.port
        )?,
        Some(Err(e)) => write!(w, "<p><b>Not saved:</b> {}</p>", Esc(&fmt_small(e)))?,
        None => {}
    }
    if !s.provisioned && !matches!(form, Some(Ok(_))) {
        w.write_str(
            "<h2>First-time setup</h2><form method=post action=/setup>\
             <p><label>Gateway address (IPv4:port)<br><input name=gateway \
             placeholder=\"192.0.2.1:15443\" required></label></p>\
             <p><label>Gateway SPIFFE ID<br><input name=gateway_id size=60 \
             placeholder=\"spiffe://cluster.local/ns/meshgate-system/sa/meshgate\" required>\
             </label></p>\
             <p><label>One-time token<br><input name=token size=40 required></label></p>\
             <p><label>Trust root (PEM)<br><textarea name=root rows=8 cols=64 required>\
             </textarea></label></p><p><button>Save and enroll</button></p></form>",
        )?;
    }
    w.write_str("</body></html>")
}

fn fmt_small(e: FormError) -> String<48> {
    let mut s = String::new();
    let _ = write!(s, "{e}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String as StdString;
    use std::vec::Vec as StdVec;

    const ROOT_B64: &str = "MIIBcDCCARagAwIBAgIUXJ5";

    fn status() -> Status {
        Status::default()
    }

    fn run(req: &str, st: &Status) -> (Outcome, StdString) {
        let mut out = [0u8; 8192];
        let o = handle(req.as_bytes(), st, &mut out);
        let n = match &o {
            Outcome::Responded(n) | Outcome::Provision(n, _) => *n,
            Outcome::Incomplete => 0,
        };
        (o, StdString::from_utf8(out[..n].to_vec()).unwrap())
    }

    fn post(body: &str) -> StdString {
        std::format!(
            "POST /setup HTTP/1.1\r\nHost: node\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn form(gateway: &str, id: &str, token: &str, root: &str) -> StdString {
        let enc = |s: &str| -> StdString {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                        (b as char).to_string()
                    }
                    b' ' => "+".into(),
                    b => std::format!("%{b:02X}"),
                })
                .collect()
        };
        std::format!(
            "gateway={}&gateway_id={}&token={}&root={}",
            enc(gateway),
            enc(id),
            enc(token),
            enc(root)
        )
    }

    #[test]
    fn status_page_shows_state_and_setup_form_only_when_fresh() {
        let (o, page) = run("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &status());
        assert!(matches!(o, Outcome::Responded(_)));
        assert!(page.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(page.contains("First-time setup"));
        let body_len = page.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(page.contains(&std::format!("Content-Length: {body_len}\r\n")));

        let mut listening = Vec::new();
        listening.push(8080).unwrap();
        let st = Status {
            provisioned: true,
            enrolled: true,
            gateway: Some(GatewayAddr {
                ip: [10, 0, 0, 1],
                port: 15443,
            }),
            tunnel: TunnelState::Up,
            config_version: Some(7),
            active_streams: 2,
            listening,
            uptime_s: 42,
        };
        let (_, page) = run("GET / HTTP/1.0\r\n\r\n", &st);
        assert!(!page.contains("First-time setup"));
        for want in ["10.0.0.1:15443", "version 7", "<td>up</td>", "8080", "42 s"] {
            assert!(page.contains(want), "{want}");
        }
    }

    #[test]
    fn valid_form_provisions_with_pem_root() {
        let der = StdVec::from([0x30u8, 0x82, 0x01, 0x70, 0x30, 0x82]);
        let b64 = "MIIBcDCC";
        assert_eq!(decode_root(b64).unwrap().as_slice(), der.as_slice());
        let pem =
            std::format!("-----BEGIN CERTIFICATE-----\r\n{b64}\r\n-----END CERTIFICATE-----\r\n");
        let body = form(
            "10.1.2.3:15443",
            "spiffe://cluster.local/ns/meshgate-system/sa/meshgate",
            "tok en",
            &pem,
        );
        let (o, page) = run(&post(&body), &status());
        let Outcome::Provision(_, setup) = o else {
            panic!("expected provisioning, got {page}")
        };
        assert_eq!(setup.gateway.ip, [10, 1, 2, 3]);
        assert_eq!(setup.gateway.port, 15443);
        assert_eq!(setup.token.as_str(), "tok en");
        assert_eq!(setup.root_der.as_slice(), der.as_slice());
        assert!(page.contains("Saved."));
    }

    #[test]
    fn invalid_fields_are_named_and_nothing_is_provisioned() {
        let id = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
        for (body, field) in [
            (form("10.1.2.3", id, "t", ROOT_B64), "gateway"),
            (form("10.1.2.3:0", id, "t", ROOT_B64), "gateway"),
            (
                form("10.1.2.3:15443", "https://gw", "t", ROOT_B64),
                "gateway_id",
            ),
            (form("10.1.2.3:15443", id, "t", "not base64!"), "root"),
            (form("10.1.2.3:15443", id, "t", "AAAA"), "root"),
            (form("10.1.2.3:15443", id, "", ROOT_B64), "token"),
        ] {
            let (o, page) = run(&post(&body), &status());
            assert!(matches!(o, Outcome::Responded(_)), "{field}");
            assert!(page.starts_with("HTTP/1.0 400"), "{field}");
            assert!(page.contains(field), "{field}: {page}");
        }
    }

    #[test]
    fn setup_is_refused_once_provisioned() {
        let st = Status {
            provisioned: true,
            ..Status::default()
        };
        let body = form(
            "10.1.2.3:15443",
            "spiffe://cluster.local/ns/meshgate-system/sa/meshgate",
            "t",
            ROOT_B64,
        );
        let (o, page) = run(&post(&body), &st);
        assert!(matches!(o, Outcome::Responded(_)));
        assert!(page.starts_with("HTTP/1.0 403"));
    }

    #[test]
    fn partial_oversized_and_odd_requests() {
        assert_eq!(
            run("GET / HTTP/1.1\r\nHost:", &status()).0,
            Outcome::Incomplete
        );
        // Body not complete yet.
        let req = "POST /setup HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(run(req, &status()).0, Outcome::Incomplete);
        let big = "POST /setup HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert!(run(big, &status()).1.starts_with("HTTP/1.0 413"));
        let headless = "x".repeat(REQUEST_LEN);
        assert!(run(&headless, &status()).1.starts_with("HTTP/1.0 413"));
        assert!(
            run("POST /setup HTTP/1.1\r\n\r\n", &status())
                .1
                .starts_with("HTTP/1.0 411")
        );
        assert!(
            run("GET /etc HTTP/1.1\r\n\r\n", &status())
                .1
                .starts_with("HTTP/1.0 404")
        );
        assert!(
            run("DELETE / HTTP/1.1\r\n\r\n", &status())
                .1
                .starts_with("HTTP/1.0 405")
        );
        assert!(
            run("GARBAGE\r\n\r\n", &status())
                .1
                .starts_with("HTTP/1.0 400")
        );
        let mut tiny = [0u8; 16];
        assert_eq!(
            handle(b"GET / HTTP/1.1\r\n\r\n", &status(), &mut tiny),
            Outcome::Responded(0)
        );
    }

    #[test]
    fn values_are_escaped() {
        let mut out = StdString::new();
        write!(out, "{}", Esc("<script>\"&'")).unwrap();
        assert_eq!(out, "&lt;script&gt;&quot;&amp;&#39;");
    }
}
