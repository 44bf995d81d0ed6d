//! SPIFFE identities and Istio string patterns, parsed without allocation.
//!
//! This module owns the mesh's notion of *who* a peer is:
//!
//! - [`TrustDomain`]: the authority part of a SPIFFE ID (`cluster.local`);
//! - [`SpiffeId`]: `spiffe://<trust-domain>/<path>` as found in a
//!   certificate's URI SAN, validated per the SPIFFE ID specification;
//! - [`Principal`]: Istio's `TD/ns/NS/sa/SA` form used in policies;
//! - [`StringMatch`]: Istio's string patterns (`exact`, `prefix*`,
//!   `*suffix`, `*`).
//!
//! All parsed types borrow the input (`SpiffeId<'a>`), so parsing works on
//! a microcontroller without `alloc`. Equality compares the parsed trust
//! domain and path segments, never string prefixes: `spiffe://example.org`
//! is not a member of `spiffe://example.orgi`'s trust domain, and vice versa.
//!
//! The SPIFFE rules enforced here (SPIFFE ID spec §2): lowercase `spiffe://`
//! scheme; trust domain of `[a-z0-9._-]`, at most 255 bytes, without port or
//! userinfo; path segments of `[A-Za-z0-9._-]`, non-empty, not `.`/`..`, no
//! trailing slash; no percent-encoding, query or fragment; at most 2048
//! bytes in total.

use core::fmt;

/// The only scheme a SPIFFE ID may have (lowercase, per the spec).
pub const SCHEME: &str = "spiffe://";
/// Maximum length of a trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID (URI), in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a trust domain, SPIFFE ID or principal was rejected.
///
/// Positions (`at`) are byte offsets into the string that was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SpiffeError {
    /// The input was empty.
    Empty,
    /// The input does not start with the lowercase `spiffe://` scheme.
    WrongScheme,
    /// The trust domain is empty (`spiffe:///path`, `/ns/x/sa/y`).
    MissingTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    TrustDomainTooLong,
    /// The SPIFFE ID is longer than [`MAX_SPIFFE_ID_LEN`].
    TooLong,
    /// A trust-domain byte outside `[a-z0-9._-]` (uppercase included).
    BadTrustDomainChar {
        /// Byte offset of the offending character.
        at: usize,
    },
    /// A path byte outside `[A-Za-z0-9._-]`.
    BadPathChar {
        /// Byte offset of the offending character.
        at: usize,
    },
    /// `host:port` is not allowed in a trust domain.
    PortNotAllowed,
    /// `user@host` is not allowed in a trust domain.
    UserinfoNotAllowed,
    /// `%xx` escapes are not allowed anywhere.
    PercentEncoded {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// A `?query` is not allowed.
    QueryNotAllowed,
    /// A `#fragment` is not allowed.
    FragmentNotAllowed,
    /// Two slashes in a row (`/ns//sa`).
    EmptySegment {
        /// Byte offset of the second slash.
        at: usize,
    },
    /// A `.` or `..` path segment.
    DotSegment {
        /// Byte offset of the segment.
        at: usize,
    },
    /// The path ends with `/`.
    TrailingSlash,
    /// A valid SPIFFE path that is not Istio's `/ns/<ns>/sa/<sa>`.
    NotIstioPrincipal,
}

impl fmt::Display for SpiffeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeError::Empty => f.write_str("cannot be empty"),
            SpiffeError::WrongScheme => {
                f.write_str("scheme is missing or invalid (must be lowercase `spiffe://`)")
            }
            SpiffeError::MissingTrustDomain => f.write_str("trust domain is missing"),
            SpiffeError::TrustDomainTooLong => {
                write!(
                    f,
                    "trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
                )
            }
            SpiffeError::TooLong => write!(f, "SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes"),
            SpiffeError::BadTrustDomainChar { at } => write!(
                f,
                "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (offset {at})"
            ),
            SpiffeError::BadPathChar { at } => write!(
                f,
                "path segment characters are limited to letters, numbers, dots, dashes, and underscores (offset {at})"
            ),
            SpiffeError::PortNotAllowed => f.write_str("trust domain cannot have a port"),
            SpiffeError::UserinfoNotAllowed => f.write_str("trust domain cannot have user info"),
            SpiffeError::PercentEncoded { at } => {
                write!(f, "percent-encoding is not allowed (offset {at})")
            }
            SpiffeError::QueryNotAllowed => f.write_str("query is not allowed"),
            SpiffeError::FragmentNotAllowed => f.write_str("fragment is not allowed"),
            SpiffeError::EmptySegment { at } => {
                write!(f, "path cannot contain empty segments (offset {at})")
            }
            SpiffeError::DotSegment { at } => {
                write!(f, "path cannot contain dot segments (offset {at})")
            }
            SpiffeError::TrailingSlash => f.write_str("path cannot have a trailing slash"),
            SpiffeError::NotIstioPrincipal => f.write_str(
                "not an Istio identity: the path must be /ns/<namespace>/sa/<service-account>",
            ),
        }
    }
}

impl core::error::Error for SpiffeError {}

/// Classifies a byte that is never allowed, so errors say *why* (a port,
/// an escape, a query) rather than just "bad character".
fn special_char_error(b: u8, at: usize) -> Option<SpiffeError> {
    match b {
        b'%' => Some(SpiffeError::PercentEncoded { at }),
        b'?' => Some(SpiffeError::QueryNotAllowed),
        b'#' => Some(SpiffeError::FragmentNotAllowed),
        _ => None,
    }
}

fn validate_trust_domain(td: &str, offset: usize) -> Result<(), SpiffeError> {
    if td.is_empty() {
        return Err(SpiffeError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeError::TrustDomainTooLong);
    }
    for (i, &b) in td.as_bytes().iter().enumerate() {
        let ok = b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
        if !ok {
            let at = offset + i;
            return Err(match b {
                b':' => SpiffeError::PortNotAllowed,
                b'@' => SpiffeError::UserinfoNotAllowed,
                _ => special_char_error(b, at).unwrap_or(SpiffeError::BadTrustDomainChar { at }),
            });
        }
    }
    Ok(())
}

/// Validates a SPIFFE path: either empty, or `/seg(/seg)*`.
fn validate_path(path: &str, offset: usize) -> Result<(), SpiffeError> {
    let bytes = path.as_bytes();
    if bytes.is_empty() {
        return Ok(());
    }
    // The caller splits at the first '/', so a non-empty path starts with it.
    let mut seg_start = 1;
    for i in 1..=bytes.len() {
        let end = i == bytes.len();
        if end || bytes[i] == b'/' {
            let seg = &bytes[seg_start..i];
            if seg.is_empty() {
                return Err(if end {
                    SpiffeError::TrailingSlash
                } else {
                    SpiffeError::EmptySegment { at: offset + i }
                });
            }
            if seg == b"." || seg == b".." {
                return Err(SpiffeError::DotSegment {
                    at: offset + seg_start,
                });
            }
            seg_start = i + 1;
            continue;
        }
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
            let at = offset + i;
            return Err(special_char_error(b, at).unwrap_or(SpiffeError::BadPathChar { at }));
        }
    }
    Ok(())
}

/// Splits `td/rest` (or `td`) at the first slash.
fn split_authority(s: &str) -> (&str, &str) {
    match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// A validated SPIFFE trust domain name, e.g. `cluster.local`.
///
/// Equality is exact: trust domains are lowercase by construction, so two
/// names are the same domain exactly when their bytes are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain<'a>(&'a str);

impl<'a> TrustDomain<'a> {
    /// Parses a bare trust-domain name (`example.org`, no scheme).
    pub fn parse(name: &'a str) -> Result<Self, SpiffeError> {
        validate_trust_domain(name, 0)?;
        Ok(TrustDomain(name))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Converts to an owned trust domain.
    #[cfg(feature = "alloc")]
    pub fn to_owned(&self) -> OwnedTrustDomain {
        OwnedTrustDomain(alloc::string::String::from(self.0))
    }
}

impl fmt::Display for TrustDomain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A validated SPIFFE ID, borrowing the string it was parsed from.
///
/// Two IDs are equal when their trust domains and path segments are equal.
/// Because validation rejects every alternative spelling (uppercase scheme
/// or trust domain, escapes, dot segments, trailing slash), that is the same
/// as byte equality of the validated string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId<'a> {
    /// The whole ID, `spiffe://td/path`.
    raw: &'a str,
    /// Byte offset where the trust domain ends (and the path starts).
    td_end: usize,
}

impl<'a> SpiffeId<'a> {
    /// Parses `spiffe://<trust-domain>[/<path>]`.
    pub fn parse(s: &'a str) -> Result<Self, SpiffeError> {
        if s.is_empty() {
            return Err(SpiffeError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeError::WrongScheme)?;
        let (td, path) = split_authority(rest);
        validate_trust_domain(td, SCHEME.len())?;
        let td_end = SCHEME.len() + td.len();
        validate_path(path, td_end)?;
        Ok(SpiffeId { raw: s, td_end })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain<'a> {
        TrustDomain(&self.raw[SCHEME.len()..self.td_end])
    }

    /// The path, `""` or starting with `/` (e.g. `/ns/foo/sa/bar`).
    pub fn path(&self) -> &'a str {
        &self.raw[self.td_end..]
    }

    /// The path segments (`["ns", "foo", "sa", "bar"]`).
    pub fn segments(&self) -> impl Iterator<Item = &'a str> + 'a {
        let path = self.path();
        path.split('/').skip(1).filter(|_| !path.is_empty())
    }

    /// Whether this ID belongs to `td` (exact trust-domain comparison).
    pub fn is_member_of(&self, td: TrustDomain<'_>) -> bool {
        self.trust_domain().as_str() == td.as_str()
    }

    /// The whole ID, `spiffe://…`.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// The Istio principal (`TD/ns/NS/sa/SA`) if the path has that shape.
    pub fn to_principal(&self) -> Result<Principal<'a>, SpiffeError> {
        Principal::from_parts(&self.raw[SCHEME.len()..], self.td_end - SCHEME.len())
    }
}

impl fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw)
    }
}

/// An Istio principal `TD/ns/NS/sa/SA`: a SPIFFE ID without the scheme,
/// restricted to Istio's Kubernetes identity shape.
///
/// This is the string AuthorizationPolicy `principals` match against. It
/// borrows its input; [`Principal::as_str`] returns it whole without
/// allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal<'a> {
    /// `TD/ns/NS/sa/SA`.
    raw: &'a str,
    /// Length of the trust domain in `raw`.
    td_len: usize,
}

impl<'a> Principal<'a> {
    /// Parses `TD/ns/NS/sa/SA` (the SPIFFE rules apply to every part).
    pub fn parse(s: &'a str) -> Result<Self, SpiffeError> {
        if s.is_empty() {
            return Err(SpiffeError::Empty);
        }
        if s.len() + SCHEME.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        let (td, path) = split_authority(s);
        validate_trust_domain(td, 0)?;
        validate_path(path, td.len())?;
        Principal::from_parts(s, td.len())
    }

    /// Checks the `/ns/X/sa/Y` shape of an already validated `td/path`.
    fn from_parts(raw: &'a str, td_len: usize) -> Result<Self, SpiffeError> {
        let mut segs = raw[td_len..].split('/').skip(1);
        let shape = (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        );
        match shape {
            (Some("ns"), Some(_), Some("sa"), Some(_), None) => Ok(Principal { raw, td_len }),
            _ => Err(SpiffeError::NotIstioPrincipal),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain<'a> {
        TrustDomain(&self.raw[..self.td_len])
    }

    /// The Kubernetes namespace (`NS`).
    pub fn namespace(&self) -> &'a str {
        self.segment(2)
    }

    /// The service account (`SA`).
    pub fn service_account(&self) -> &'a str {
        self.segment(4)
    }

    fn segment(&self, n: usize) -> &'a str {
        // The shape was checked at construction: segments 1..=4 exist.
        self.raw[self.td_len..].split('/').nth(n).unwrap_or("")
    }

    /// The whole principal, `TD/ns/NS/sa/SA`.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

impl fmt::Display for Principal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw)
    }
}

#[cfg(feature = "alloc")]
pub use owned::{OwnedPrincipal, OwnedSpiffeId, OwnedTrustDomain};

#[cfg(feature = "alloc")]
mod owned {
    //! Owned counterparts, for storing identities past the input's lifetime.
    use super::{Principal, SpiffeError, SpiffeId, TrustDomain};
    use alloc::string::String;
    use core::fmt;

    /// An owned, validated trust domain.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct OwnedTrustDomain(pub(super) String);

    impl OwnedTrustDomain {
        /// Parses a bare trust-domain name.
        pub fn parse(name: &str) -> Result<Self, SpiffeError> {
            TrustDomain::parse(name).map(|td| td.to_owned())
        }
        /// Borrows it.
        pub fn borrow(&self) -> TrustDomain<'_> {
            TrustDomain(&self.0)
        }
    }

    impl fmt::Display for OwnedTrustDomain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    /// An owned, validated SPIFFE ID.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct OwnedSpiffeId {
        raw: String,
        td_end: usize,
    }

    impl OwnedSpiffeId {
        /// Parses `spiffe://…`.
        pub fn parse(s: &str) -> Result<Self, SpiffeError> {
            SpiffeId::parse(s).map(|id| OwnedSpiffeId {
                raw: String::from(id.raw),
                td_end: id.td_end,
            })
        }
        /// Borrows it.
        pub fn borrow(&self) -> SpiffeId<'_> {
            SpiffeId {
                raw: &self.raw,
                td_end: self.td_end,
            }
        }
    }

    impl fmt::Display for OwnedSpiffeId {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.raw)
        }
    }

    /// An owned Istio principal.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct OwnedPrincipal {
        raw: String,
        td_len: usize,
    }

    impl OwnedPrincipal {
        /// Parses `TD/ns/NS/sa/SA`.
        pub fn parse(s: &str) -> Result<Self, SpiffeError> {
            Principal::parse(s).map(OwnedPrincipal::from)
        }
        /// Borrows it.
        pub fn borrow(&self) -> Principal<'_> {
            Principal {
                raw: &self.raw,
                td_len: self.td_len,
            }
        }
    }

    impl From<Principal<'_>> for OwnedPrincipal {
        fn from(p: Principal<'_>) -> Self {
            OwnedPrincipal {
                raw: String::from(p.raw),
                td_len: p.td_len,
            }
        }
    }

    impl fmt::Display for OwnedPrincipal {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.raw)
        }
    }
}

/// Why an Istio string pattern was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PatternError {
    /// The empty string is not a pattern (Istio: "empty value is not allowed").
    Empty,
    /// `*` somewhere other than the first or last character, or at both
    /// ends (`*a*`): Istio only supports exact, prefix, suffix and presence.
    BadWildcard,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Empty => f.write_str("empty value is not allowed"),
            PatternError::BadWildcard => f.write_str(
                "wildcard `*` is only supported alone, at the start or at the end of a value",
            ),
        }
    }
}

impl core::error::Error for PatternError {}

/// An Istio string pattern: `exact`, `prefix*`, `*suffix` or `*`.
///
/// `S` is the string storage: `&str` when parsed from borrowed input,
/// `String` when compiled into a policy set (see [`StringMatch::map`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch<S> {
    /// The whole value must be equal.
    Exact(S),
    /// The value must start with this (`prefix*`; `prefix` itself matches).
    Prefix(S),
    /// The value must end with this (`*suffix`).
    Suffix(S),
    /// `*`: any non-empty value. An absent value (e.g. no principal on a
    /// plaintext connection) never matches.
    Presence,
}

impl<'a> StringMatch<&'a str> {
    /// Parses a pattern.
    pub fn parse(pattern: &'a str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern == "*" {
            return Ok(StringMatch::Presence);
        }
        let stars = pattern.bytes().filter(|&b| b == b'*').count();
        match stars {
            0 => Ok(StringMatch::Exact(pattern)),
            1 if pattern.ends_with('*') => Ok(StringMatch::Prefix(&pattern[..pattern.len() - 1])),
            1 if pattern.starts_with('*') => Ok(StringMatch::Suffix(&pattern[1..])),
            _ => Err(PatternError::BadWildcard),
        }
    }
}

impl<S: AsRef<str>> StringMatch<S> {
    /// Whether `value` matches, byte for byte.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s.as_ref(),
            StringMatch::Prefix(s) => value.starts_with(s.as_ref()),
            StringMatch::Suffix(s) => value.ends_with(s.as_ref()),
            StringMatch::Presence => !value.is_empty(),
        }
    }

    /// Whether `value` matches, ignoring ASCII case (hosts, header names).
    pub fn matches_ignore_ascii_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            StringMatch::Exact(s) => v.eq_ignore_ascii_case(s.as_ref().as_bytes()),
            StringMatch::Prefix(s) => {
                let p = s.as_ref().as_bytes();
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p)
            }
            StringMatch::Suffix(s) => {
                let p = s.as_ref().as_bytes();
                v.len() >= p.len() && v[v.len() - p.len()..].eq_ignore_ascii_case(p)
            }
            StringMatch::Presence => !v.is_empty(),
        }
    }

    /// Whether an optional value matches: an absent value never does.
    pub fn matches_opt(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.matches(v))
    }

    /// Converts the storage, e.g. `pattern.map(String::from)`.
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> StringMatch<T> {
        match self {
            StringMatch::Exact(s) => StringMatch::Exact(f(s)),
            StringMatch::Prefix(s) => StringMatch::Prefix(f(s)),
            StringMatch::Suffix(s) => StringMatch::Suffix(f(s)),
            StringMatch::Presence => StringMatch::Presence,
        }
    }
}

impl<S: AsRef<str>> fmt::Display for StringMatch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(s) => f.write_str(s.as_ref()),
            StringMatch::Prefix(s) => write!(f, "{}*", s.as_ref()),
            StringMatch::Suffix(s) => write!(f, "*{}", s.as_ref()),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_of_root_id_are_empty() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.segments().count(), 0);
        let id = SpiffeId::parse("spiffe://example.org/a/b").unwrap();
        assert!(id.segments().eq(["a", "b"]));
    }

    #[test]
    fn principal_accessors() {
        let p = Principal::parse("cluster.local/ns/bookinfo/sa/productpage").unwrap();
        assert_eq!(p.trust_domain().as_str(), "cluster.local");
        assert_eq!(p.namespace(), "bookinfo");
        assert_eq!(p.service_account(), "productpage");
    }
}
