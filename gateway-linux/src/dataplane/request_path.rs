//! The request path as authorization sees it and the upstream receives it.
//!
//! An AuthorizationPolicy `paths` rule is only as good as the path it is
//! compared with: `/./admin`, `/public/../admin`, `//admin` and `/%61dmin`
//! all name `/admin` for a typical upstream, so comparing the raw path would
//! let a client walk around a DENY rule (or out of an ALLOW prefix). Envoy
//! normalizes for the same reason (Istio's default `BASE` normalization);
//! meshgate does what Istio's `MERGE_SLASHES` does and refuses what it
//! cannot normalize safely:
//! - percent-encoded unreserved characters (RFC 3986 §2.3) are decoded,
//!   other escapes kept with upper-case hex;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4), never above `/`;
//! - runs of `/` are merged;
//! - an encoded `/` or `\` (`%2F`, `%5C`) is refused: whether it separates
//!   segments is up to the upstream, so no single normalization is right;
//! - a malformed escape or a path that does not start with `/` is refused.
//!
//! The normalized path is both what is authorized and what is forwarded, so
//! the upstream never serves a different resource than the one decided on.
//! The query string is not touched.

use std::borrow::Cow;

use http::Uri;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `%2F` or `%5C` in the path.
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    /// `%` not followed by two hex digits.
    #[error("the path contains a malformed percent-escape")]
    BadEscape,
    /// Not an origin-form path (`*`, empty, or relative).
    #[error("the path does not start with /")]
    NotAbsolute,
    /// The normalized target did not parse as a URI.
    #[error("the normalized request target is not a valid URI")]
    Invalid,
}

/// The normalized path (what authorization compares) and the origin-form
/// target with the original query (what the upstream is sent).
pub(crate) fn origin_form(uri: &Uri) -> Result<(String, Uri), PathError> {
    let normalized = normalize(uri.path())?;
    if matches!(normalized, Cow::Borrowed(_)) && uri.authority().is_none() && uri.scheme().is_none()
    {
        // Already an origin-form target with a normal path (the usual
        // case): forwarded as it came, without building and parsing a copy.
        return Ok((normalized.into_owned(), uri.clone()));
    }
    let path = normalized.into_owned();
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    // Every byte comes from a URI that already parsed, so this cannot fail
    // in practice; if it did, refusing beats forwarding something else.
    let target = Uri::try_from(target).map_err(|_| PathError::Invalid)?;
    Ok((path, target))
}

/// Normalizes `path` (see the module docs); borrows when it already is.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !path.contains('%') && !path.contains("//") && !path.contains("/.") {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let v = hi * 16 + lo;
        if v == b'/' || v == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        if is_unreserved(v) {
            out.push(char::from(v));
        } else {
            out.push_str(&format!("%{v:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over `/`-separated segments, with empty segments
/// (runs of `/`) dropped. A path ending in `/`, `/.` or `/..` keeps its
/// trailing slash, as the RFC's algorithm does.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let last = path.rsplit('/').next().unwrap_or("");
    let trailing = matches!(last, "" | "." | "..") && !segments.is_empty();
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/", "/details/0", "/a/b/", "/a.b/c-d_e~f"] {
            let got = normalize(p).expect("ok");
            assert!(matches!(got, Cow::Borrowed(_)), "{p}");
            assert_eq!(got, p);
        }
        assert_eq!(n("/.well-known/x").as_deref(), Ok("/.well-known/x"));
    }

    #[test]
    fn every_spelling_of_admin_becomes_admin() {
        for p in [
            "/admin/users",
            "/./admin/users",
            "/public/../admin/users",
            "//admin//users",
            "/%61dmin/users",
            "/%2e/admin/users",
            "/%2E%2E/admin/./users",
            "/../../admin/users",
            "/admin/x/%2e%2e/users",
        ] {
            assert_eq!(n(p).as_deref(), Ok("/admin/users"), "{p}");
        }
    }

    #[test]
    fn trailing_slashes_and_root_follow_rfc_3986() {
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/a//").as_deref(), Ok("/a/"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
    }

    #[test]
    fn reserved_escapes_are_kept_upper_case() {
        assert_eq!(n("/a%3fb").as_deref(), Ok("/a%3Fb"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        assert_eq!(n("/admin%2Fusers"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/admin%2fusers"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/admin%5Cusers"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn origin_form_keeps_the_query() {
        for (uri, path, target) in [
            // Absolute form and a path to normalize: rebuilt.
            (
                "http://h/a/../b%7e?x=/../y&z=%2F",
                "/b~",
                "/b~?x=/../y&z=%2F",
            ),
            // Origin form with a path to normalize: rebuilt.
            ("/a/./b?q=%2e%2e", "/a/b", "/a/b?q=%2e%2e"),
            // Absolute form with a normal path: the authority goes.
            ("http://h:9080/a/b?q", "/a/b", "/a/b?q"),
            // Origin form with a normal path: forwarded as it came.
            ("/a/b?q=1&r", "/a/b", "/a/b?q=1&r"),
            ("/", "/", "/"),
        ] {
            let parsed: Uri = uri.parse().expect("uri");
            let (p, t) = origin_form(&parsed).expect("ok");
            assert_eq!(
                (p.as_str(), t.to_string().as_str()),
                (path, target),
                "{uri}"
            );
            assert!(t.authority().is_none() && t.scheme().is_none(), "{uri}");
        }
    }
}
