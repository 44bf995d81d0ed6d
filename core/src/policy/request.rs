//! What the evaluator is asked about: a workload, a connection, a request.
//!
//! These are borrowed views the front-ends build per connection or request
//! without allocating; labels and headers are read through small traits so
//! callers can keep whatever map type they already have.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use crate::spiffe::Principal;

/// Read access to a workload's labels.
pub trait Labels {
    /// The value of label `key`, if present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for [(&str, &str)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

impl Labels for [(String, String)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<T: Labels + ?Sized> Labels for &T {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

impl<T> Labels for Vec<T>
where
    [T]: Labels,
{
    fn label(&self, key: &str) -> Option<&str> {
        self.as_slice().label(key)
    }
}

impl<T, const N: usize> Labels for [T; N]
where
    [T]: Labels,
{
    fn label(&self, key: &str) -> Option<&str> {
        self.as_slice().label(key)
    }
}

/// Read access to HTTP request headers. Names compare case-insensitively.
pub trait Headers {
    /// The (first) value of header `name`, if present.
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl Headers for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl<T: Headers + ?Sized> Headers for &T {
    fn header(&self, name: &str) -> Option<&str> {
        (**self).header(name)
    }
}

impl<T> Headers for Vec<T>
where
    [T]: Headers,
{
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl<T, const N: usize> Headers for [T; N]
where
    [T]: Headers,
{
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// The destination workload: its namespace and labels.
#[derive(Clone, Copy)]
pub struct Workload<'a> {
    /// Kubernetes namespace of the workload.
    pub namespace: &'a str,
    /// Its labels (what `selector.matchLabels` is compared with).
    pub labels: &'a dyn Labels,
}

impl<'a> Workload<'a> {
    /// A workload in `namespace` with `labels`.
    pub fn new(namespace: &'a str, labels: &'a dyn Labels) -> Self {
        Workload { namespace, labels }
    }
}

impl core::fmt::Debug for Workload<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Workload")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The HTTP part of a request (absent for plain TCP connections).
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The `Host` / `:authority` value, possibly with `:port`.
    pub host: &'a str,
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The request target; the query string is ignored when matching paths.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a dyn Headers,
}

impl core::fmt::Debug for HttpRequest<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("host", &self.host)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Everything AuthorizationPolicy may look at for one request/connection.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The destination workload.
    pub workload: Workload<'a>,
    /// The destination *workload* port (not the Service port).
    pub port: u16,
    /// The authenticated peer: `Some` only for mTLS (see
    /// [`crate::mtls::Admitted::principal`]).
    pub principal: Option<Principal<'a>>,
    /// The peer's IP address as seen by the gateway.
    pub source_ip: IpAddr,
    /// TLS SNI, if the client sent one.
    pub sni: Option<&'a str>,
    /// HTTP attributes; `None` for a TCP connection.
    pub http: Option<HttpRequest<'a>>,
}
