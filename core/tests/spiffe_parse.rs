//! Public-API tests for `meshgate_core::spiffe`: SPIFFE ID spec conformance,
//! segment-wise comparison, principals and Istio string patterns.

use meshgate_core::spiffe::{
    MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, PatternError, Principal, SpiffeError, SpiffeId,
    StringMatch, TrustDomain,
};

#[test]
fn valid_ids_parse() {
    for (input, td, path) in [
        ("spiffe://example.org", "example.org", ""),
        (
            "spiffe://cluster.local/ns/default/sa/default",
            "cluster.local",
            "/ns/default/sa/default",
        ),
        (
            "spiffe://a-b_c.9/Path.With-Caps_ok",
            "a-b_c.9",
            "/Path.With-Caps_ok",
        ),
        ("spiffe://td/...", "td", "/..."),
    ] {
        let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(id.trust_domain().as_str(), td, "{input}");
        assert_eq!(id.path(), path, "{input}");
        assert_eq!(id.as_str(), input);
        assert_eq!(id.to_string(), input);
    }
}

#[test]
fn invalid_ids_are_rejected_with_the_right_reason() {
    use SpiffeError::*;
    let cases: &[(&str, SpiffeError)] = &[
        ("", Empty),
        ("example.org/ns/a", WrongScheme),
        ("SPIFFE://example.org", WrongScheme),
        ("Spiffe://example.org", WrongScheme),
        ("https://example.org", WrongScheme),
        ("spiffe:/example.org", WrongScheme),
        ("spiffe://", MissingTrustDomain),
        ("spiffe:///ns/a", MissingTrustDomain),
        ("spiffe://Example.org", BadTrustDomainChar { at: 9 }),
        ("spiffe://exa mple.org", BadTrustDomainChar { at: 12 }),
        ("spiffe://example.org:8080/ns", PortNotAllowed),
        ("spiffe://user@example.org", UserinfoNotAllowed),
        ("spiffe://ex%41mple.org", PercentEncoded { at: 11 }),
        ("spiffe://example.org?x=1", QueryNotAllowed),
        ("spiffe://example.org#frag", FragmentNotAllowed),
        ("spiffe://example.org/", TrailingSlash),
        ("spiffe://example.org/ns/", TrailingSlash),
        ("spiffe://example.org//ns", EmptySegment { at: 21 }),
        ("spiffe://example.org/ns//sa", EmptySegment { at: 24 }),
        ("spiffe://example.org/.", DotSegment { at: 21 }),
        ("spiffe://example.org/a/../b", DotSegment { at: 23 }),
        ("spiffe://example.org/a%2Fb", PercentEncoded { at: 22 }),
        ("spiffe://example.org/a?b", QueryNotAllowed),
        ("spiffe://example.org/a#b", FragmentNotAllowed),
        ("spiffe://example.org/a b", BadPathChar { at: 22 }),
        ("spiffe://example.org/a*", BadPathChar { at: 22 }),
        ("spiffe://example.org/ü", BadPathChar { at: 21 }),
    ];
    for (input, want) in cases {
        assert_eq!(SpiffeId::parse(input), Err(*want), "{input:?}");
    }
}

#[test]
fn length_limits() {
    let td_max = "a".repeat(MAX_TRUST_DOMAIN_LEN);
    assert!(SpiffeId::parse(&format!("spiffe://{td_max}")).is_ok());
    let td_long = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{td_long}")),
        Err(SpiffeError::TrustDomainTooLong)
    );
    assert_eq!(
        TrustDomain::parse(&td_long),
        Err(SpiffeError::TrustDomainTooLong)
    );

    let prefix = "spiffe://example.org/";
    let fill = MAX_SPIFFE_ID_LEN - prefix.len();
    let max = format!("{prefix}{}", "p".repeat(fill));
    assert_eq!(max.len(), MAX_SPIFFE_ID_LEN);
    assert!(SpiffeId::parse(&max).is_ok());
    let over = format!("{max}p");
    assert_eq!(SpiffeId::parse(&over), Err(SpiffeError::TooLong));
}

#[test]
fn comparison_is_by_segment_never_by_prefix() {
    let org = SpiffeId::parse("spiffe://example.org").unwrap();
    let orgi = SpiffeId::parse("spiffe://example.orgi").unwrap();
    assert_ne!(org, orgi);
    assert_ne!(org.trust_domain(), orgi.trust_domain());
    let td = TrustDomain::parse("example.org").unwrap();
    assert!(org.is_member_of(td));
    assert!(!orgi.is_member_of(td));
    // A workload under example.orgi is not a member of example.org either.
    let wl = SpiffeId::parse("spiffe://example.orgi/ns/a/sa/b").unwrap();
    assert!(!wl.is_member_of(td));
    // Path segments compare whole: /ns/foo is not /ns/foobar.
    let a = SpiffeId::parse("spiffe://example.org/ns/foo").unwrap();
    let b = SpiffeId::parse("spiffe://example.org/ns/foobar").unwrap();
    assert_ne!(a, b);
    assert!(a.segments().ne(b.segments()));
    assert_eq!(a, SpiffeId::parse("spiffe://example.org/ns/foo").unwrap());
}

#[test]
fn principals() {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage").unwrap();
    let p = id.to_principal().unwrap();
    assert_eq!(
        p.as_str(),
        "cluster.local/ns/bookinfo/sa/bookinfo-productpage"
    );
    assert_eq!(p.namespace(), "bookinfo");
    assert_eq!(p.service_account(), "bookinfo-productpage");
    assert_eq!(p.trust_domain().as_str(), "cluster.local");
    assert_eq!(Principal::parse(p.as_str()), Ok(p));

    for bad in [
        "spiffe://example.org",
        "spiffe://example.org/ns/a",
        "spiffe://example.org/ns/a/sa",
        "spiffe://example.org/ns/a/sa/b/extra",
        "spiffe://example.org/sa/a/ns/b",
    ] {
        let id = SpiffeId::parse(bad).unwrap();
        assert_eq!(
            id.to_principal(),
            Err(SpiffeError::NotIstioPrincipal),
            "{bad}"
        );
    }
    assert_eq!(Principal::parse(""), Err(SpiffeError::Empty));
    assert_eq!(
        Principal::parse("/ns/a/sa/b"),
        Err(SpiffeError::MissingTrustDomain)
    );
    assert_eq!(
        Principal::parse("TD/ns/a/sa/b"),
        Err(SpiffeError::BadTrustDomainChar { at: 0 })
    );
    assert_eq!(
        Principal::parse("td/ns/a/sa/b/"),
        Err(SpiffeError::TrailingSlash)
    );
    assert_eq!(
        Principal::parse("td/ns/../sa/b"),
        Err(SpiffeError::DotSegment { at: 6 })
    );
    assert_eq!(
        Principal::parse("spiffe://td/ns/a/sa/b"),
        Err(SpiffeError::PortNotAllowed)
    );
}

#[cfg(feature = "alloc")]
#[test]
fn owned_round_trip() {
    use meshgate_core::spiffe::{OwnedPrincipal, OwnedSpiffeId, OwnedTrustDomain};
    let id = OwnedSpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
    assert_eq!(id.borrow().path(), "/ns/a/sa/b");
    let p = OwnedPrincipal::parse("td/ns/a/sa/b").unwrap();
    assert_eq!(p.borrow(), id.borrow().to_principal().unwrap());
    assert_eq!(
        OwnedTrustDomain::parse("td").unwrap().borrow(),
        id.borrow().trust_domain()
    );
    assert!(OwnedTrustDomain::parse("TD").is_err());
}

#[test]
fn string_patterns() {
    use StringMatch::*;
    assert_eq!(StringMatch::parse("*"), Ok(Presence));
    assert_eq!(StringMatch::parse("abc"), Ok(Exact("abc")));
    assert_eq!(StringMatch::parse("abc*"), Ok(Prefix("abc")));
    assert_eq!(StringMatch::parse("*abc"), Ok(Suffix("abc")));
    assert_eq!(StringMatch::parse(""), Err(PatternError::Empty));
    assert_eq!(StringMatch::parse("a*c"), Err(PatternError::BadWildcard));
    assert_eq!(StringMatch::parse("*a*"), Err(PatternError::BadWildcard));
    assert_eq!(StringMatch::parse("**"), Err(PatternError::BadWildcard));

    let cases: &[(&str, &str, bool)] = &[
        ("cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b", true),
        ("cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/bb", false),
        ("cluster.local/ns/a/*", "cluster.local/ns/a/sa/x", true),
        ("cluster.local/ns/a/*", "cluster.local/ns/ab/sa/x", false),
        ("cluster.local/ns/a/*", "cluster.local/ns/a/", true),
        ("*/sa/admin", "td/ns/x/sa/admin", true),
        ("*/sa/admin", "td/ns/x/sa/administrator", false),
        ("*", "anything", true),
        ("*", "", false),
    ];
    for (pattern, value, want) in cases {
        let m = StringMatch::parse(pattern).unwrap();
        assert_eq!(m.matches(value), *want, "{pattern} vs {value}");
        assert_eq!(m.to_string(), *pattern);
    }
    let m = StringMatch::parse("*").unwrap();
    assert!(!m.matches_opt(None));
    assert!(m.matches_opt(Some("x")));

    let host = StringMatch::parse("*.Example.COM").unwrap();
    assert!(host.matches_ignore_ascii_case("api.example.com"));
    assert!(!host.matches("api.example.com"));
    assert!(!host.matches_ignore_ascii_case("example.com"));
    let host = StringMatch::parse("API.*").unwrap();
    assert!(host.matches_ignore_ascii_case("api.example.com"));
    assert!(
        StringMatch::parse("Api")
            .unwrap()
            .matches_ignore_ascii_case("aPI")
    );
}

#[test]
fn errors_display() {
    assert_eq!(
        SpiffeError::TrailingSlash.to_string(),
        "path cannot have a trailing slash"
    );
    assert!(
        SpiffeError::BadTrustDomainChar { at: 3 }
            .to_string()
            .contains("offset 3")
    );
    assert_eq!(
        PatternError::Empty.to_string(),
        "empty value is not allowed"
    );
}
