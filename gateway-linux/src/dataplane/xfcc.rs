//! The `x-forwarded-client-cert` header, in Envoy's format.
//!
//! Upstreams behind the gateway learn who called them from this header, so
//! it must only ever carry what the gateway itself verified: any value a
//! client sent is removed from every request, and the gateway's own is added
//! only for a verified mTLS peer:
//! `By=<gateway SPIFFE ID>;Hash=<hex SHA-256 of the peer leaf DER>;URI=<peer SPIFFE ID>`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::peer::PeerIdentity;

/// The header name.
pub(crate) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Builds the header value. SPIFFE IDs are validated (no `;`, `,`, `"`
/// or control characters can appear), so no quoting is needed.
pub(crate) fn value(gateway_id: &str, peer: &PeerIdentity) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "By={gateway_id};Hash={};URI={}",
        peer.leaf_sha256_hex, peer.spiffe_id
    ))
    .ok()
}

/// Removes every client-supplied XFCC header and, for an mTLS peer, sets
/// the gateway's own `value` (built by [`value`]; the proxy builds it once
/// per connection).
pub(crate) fn apply(headers: &mut HeaderMap, value: Option<HeaderValue>) {
    headers.remove(XFCC);
    if let Some(v) = value {
        headers.insert(XFCC, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_core::spiffe::OwnedSpiffeId;

    fn peer() -> PeerIdentity {
        PeerIdentity {
            spiffe_id: OwnedSpiffeId::parse("spiffe://cluster.local/ns/bookinfo/sa/sleep")
                .expect("id"),
            leaf_sha256_hex: "ab".repeat(32),
            serial: vec![1, 2, 3],
        }
    }

    #[test]
    fn strips_client_value_and_sets_envoy_format() {
        let mut h = HeaderMap::new();
        h.append(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/y"),
        );
        h.append(XFCC, HeaderValue::from_static("By=forged"));
        apply(
            &mut h,
            value(
                "spiffe://cluster.local/ns/meshgate-system/sa/meshgate",
                &peer(),
            ),
        );
        let all: Vec<_> = h.get_all(XFCC).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].to_str().expect("ascii"),
            format!(
                "By=spiffe://cluster.local/ns/meshgate-system/sa/meshgate;Hash={};URI=spiffe://cluster.local/ns/bookinfo/sa/sleep",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn plaintext_peer_gets_no_header() {
        let mut h = HeaderMap::new();
        h.append(XFCC, HeaderValue::from_static("URI=spiffe://forged"));
        apply(&mut h, None);
        assert!(h.get(XFCC).is_none());
    }
}
