//! Oracles shared by the fuzz targets: independent re-implementations of
//! what the gateway must produce (an XFCC parser in Envoy's grammar, the
//! checks an issued certificate must pass, what may reach an upstream), so
//! that a target asserts properties rather than re-running the code under
//! test.

use meshgate::fuzzing::dataplane::{
    AUTHZ_HOST, GATEWAY_ID, Harness, PASSTHROUGH_HOST, PRODUCTPAGE_ID, STRICT_HOST,
    STRICT_TCP_HOST, SeenRequest,
};
use meshgate_core::spiffe::{OwnedSpiffeId, OwnedTrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One XFCC element: its key/value pairs in order.
pub type XfccElement = Vec<(String, String)>;

/// Parses an `x-forwarded-client-cert` value as Envoy does: elements
/// separated by `,`, pairs by `;`, `key=value`, a value optionally in double
/// quotes with `\"` escapes. Returns `None` for anything malformed.
pub fn parse_xfcc(value: &str) -> Option<Vec<XfccElement>> {
    let mut elements = Vec::new();
    let mut element = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if matches!(c, ';' | ',' | '"') {
                return None;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => val.push(chars.next()?),
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if matches!(c, ';' | ',') {
                    break;
                }
                if c == '"' {
                    return None;
                }
                val.push(c);
                chars.next();
            }
        }
        element.push((key, val));
        match chars.next() {
            None => {
                elements.push(element);
                return Some(elements);
            }
            Some(';') => {}
            Some(',') => elements.push(core::mem::take(&mut element)),
            Some(_) => return None,
        }
    }
}

/// Asserts that `uri` is a workload SPIFFE ID of the mesh (what the
/// gateway's client verifier must insist on before anything is forwarded).
pub fn assert_mesh_workload_id(uri: &str) {
    let id = OwnedSpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri:?} forwarded: {e}"));
    let td = OwnedTrustDomain::parse("cluster.local").expect("trust domain");
    assert!(
        id.borrow().is_member_of(td.borrow()),
        "{uri} of a foreign trust domain was admitted"
    );
    assert!(
        id.borrow().to_principal().is_ok(),
        "{uri} is not a workload identity but was admitted"
    );
}

/// Strips `:port` and a trailing dot and lowercases: the service name a
/// `Host` value designates.
fn host_name(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must never be forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
];

/// Checks one request an HTTP upstream received. `uri_of(hash)` names
/// the SPIFFE ID of the client certificate with that SHA-256, when the
/// target knows it.
pub fn check_request(req: &SeenRequest, uri_of: &dyn Fn(&str) -> Option<String>) {
    // The gateway appends the real source to x-forwarded-for; the harness
    // found the connection by it.
    let conn = req.conn.as_ref().unwrap_or_else(|| {
        panic!(
            "request to {} does not end its x-forwarded-for with the client's address: {req:?}",
            req.service
        )
    });
    let xff = req.values("x-forwarded-for");
    assert_eq!(xff.len(), 1, "x-forwarded-for must be one header: {req:?}");

    // Hop-by-hop headers stay on the client's hop.
    for h in HOP_BY_HOP {
        assert!(
            req.values(h).is_empty(),
            "hop-by-hop header {h} forwarded: {req:?}"
        );
    }

    // Host names the service that received the request.
    let hosts = req.values("host");
    assert_eq!(hosts.len(), 1, "exactly one Host upstream: {req:?}");
    let host = core::str::from_utf8(hosts[0]).expect("forwarded Host is text");
    assert_eq!(
        host_name(host),
        req.service,
        "Host {host:?} forwarded to {}",
        req.service
    );

    // XFCC: only the gateway's own, only for a certificate it verified.
    let xfcc = req.values("x-forwarded-client-cert");
    match &conn.cert_sha256 {
        None => assert!(
            xfcc.is_empty(),
            "XFCC reached {} from a connection without a client certificate: {req:?}",
            req.service
        ),
        Some(hash) => {
            assert_eq!(xfcc.len(), 1, "one XFCC header for an mTLS peer: {req:?}");
            let value = core::str::from_utf8(xfcc[0]).expect("XFCC is text");
            let parsed =
                parse_xfcc(value).unwrap_or_else(|| panic!("XFCC {value:?} does not parse back"));
            assert_eq!(parsed.len(), 1, "XFCC {value:?} must be one element");
            let el = &parsed[0];
            let keys: Vec<&str> = el.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["By", "Hash", "URI"], "XFCC {value:?}");
            assert_eq!(el[0].1, GATEWAY_ID, "XFCC By= in {value:?}");
            assert_eq!(&el[1].1, hash, "XFCC Hash= in {value:?}");
            assert_mesh_workload_id(&el[2].1);
            if let Some(uri) = uri_of(hash) {
                assert_eq!(el[2].1, uri, "XFCC URI= in {value:?}");
            }
        }
    }

    // Nobody let in: STRICT needs a verified certificate, the ALLOW policy
    // of AUTHZ_HOST admits only productpage.
    if req.service == STRICT_HOST {
        assert!(
            conn.tls && conn.cert_sha256.is_some(),
            "a STRICT service got a request without mTLS: {req:?}"
        );
    }
    if req.service == AUTHZ_HOST {
        let who = conn.cert_sha256.as_deref().and_then(uri_of);
        assert_eq!(
            who.as_deref(),
            Some(PRODUCTPAGE_ID),
            "{AUTHZ_HOST} admits only productpage: {req:?}"
        );
    }
}

/// Takes and checks everything the upstreams recorded since last time.
/// `raw_only`: every client was [`meshgate::fuzzing::dataplane::Client::Raw`]
/// (no TLS handshake can have completed), so the STRICT TCP upstream must
/// never have been reached.
pub fn check_seen(h: &Harness, raw_only: bool, uri_of: &dyn Fn(&str) -> Option<String>) {
    let (requests, streams) = h.take_seen();
    if std::env::var_os("MESHGATE_FUZZ_VERBOSE").is_some() {
        // Triage aid: what actually got through.
        eprintln!("upstream requests: {requests:#?}\nupstream streams: {streams:?}");
    }
    for r in &requests {
        check_request(r, uri_of);
    }
    for s in &streams {
        if s.service == STRICT_TCP_HOST && raw_only {
            panic!("the STRICT TCP service was reached without mTLS: {s:?}");
        }
        if s.service == PASSTHROUGH_HOST {
            // DISABLE passes the client's bytes through, unchanged.
            assert!(
                h.was_sent(&s.bytes),
                "passthrough upstream received bytes no client sent: {s:?}"
            );
        }
    }
}

/// The SPIFFE ID of the harness's fixed client certificates, by hash.
pub fn known_client(h: &Harness, hash: &str) -> Option<String> {
    use meshgate::fuzzing::dataplane::SLEEP_ID;
    if hash == h.productpage().sha256_hex() {
        Some(PRODUCTPAGE_ID.to_owned())
    } else if hash == h.sleep().sha256_hex() {
        Some(SLEEP_ID.to_owned())
    } else {
        None
    }
}

/// Checks a certificate the CA issued for a CSR: its only identity is
/// `authorised` (exactly one SAN, a URI), it is not a CA, it certifies the
/// CSR's key, and `issuer_der` signed it.
pub fn check_issued(cert_der: &[u8], issuer_der: &[u8], csr_spki: Option<&[u8]>, authorised: &str) {
    let (rest, cert) = X509Certificate::from_der(cert_der).expect("issued certificate parses");
    assert!(
        rest.is_empty(),
        "trailing bytes after the issued certificate"
    );
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN extension");
    let names = &san.value.general_names;
    assert_eq!(
        names.len(),
        1,
        "issued certificate has other names: {names:?}"
    );
    match &names[0] {
        GeneralName::URI(u) => assert_eq!(*u, authorised, "issued for another identity"),
        other => panic!("issued certificate names {other:?}"),
    }
    if let Some(bc) = cert.basic_constraints().expect("one basicConstraints") {
        assert!(!bc.value.ca, "a CSR got a CA certificate");
    }
    if let Some(spki) = csr_spki {
        assert_eq!(cert.public_key().raw, spki, "issued for another key");
    }
    let (_, issuer) = X509Certificate::from_der(issuer_der).expect("issuer parses");
    cert.verify_signature(Some(issuer.public_key()))
        .expect("issued certificate is signed by the signing CA");
}

/// The SubjectPublicKeyInfo of a DER CSR, if it parses.
pub fn csr_spki(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::certification_request::X509CertificationRequest;
    let (_, csr) = X509CertificationRequest::from_der(der).ok()?;
    Some(csr.certification_request_info.subject_pki.raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_grammar() {
        let v = parse_xfcc("By=spiffe://a/b;Hash=00;URI=spiffe://c/d").expect("parse");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0][2], ("URI".to_owned(), "spiffe://c/d".to_owned()));
        let q = parse_xfcc(r#"By="x;y\"z",URI=a"#).expect("quoted");
        assert_eq!(q.len(), 2);
        assert_eq!(q[0][0].1, "x;y\"z");
        assert!(parse_xfcc("By=a;;").is_none());
        assert!(parse_xfcc("noequals").is_none());
        assert!(parse_xfcc("a=\"open").is_none());
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("A.b.:80"), "a.b");
        assert_eq!(host_name("a.b"), "a.b");
        assert_eq!(host_name("[::1]:8"), "[::1]");
    }
}
