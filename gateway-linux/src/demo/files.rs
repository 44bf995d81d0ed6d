//! The demo folder: what `meshgate demo` writes for the user, and where.
//!
//! ```text
//! meshgate-demo/
//!   .meshgate-demo          marker: this folder belongs to the demo
//!   meshgate.yaml           the gateway's settings (bookinfo services)
//!   mutual-tls.yaml         the seed's PeerAuthentication (STRICT)
//!   details-viewer.yaml     AuthorizationPolicy: only productpage reads details
//!   certs/<name>/           demo client identities: key.pem (0600), cert.pem,
//!                           chain.pem, ca.pem
//!   data/                   the gateway's data directory (CA, applied
//!                           policies, admin token) — no workload keys
//! ```
//!
//! Every run starts from a clean slate (new CA, no applied policies), so
//! the printed steps always begin with a working plaintext call. Clearing
//! is only done inside a folder carrying the marker, so pointing `--dir` at
//! an unrelated folder can never delete anyone's files.

use core::fmt::Write as _;
use core::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::Method;

use crate::admin::types::{IssueRequest, IssueResponse};
use crate::client::{AdminClient, ClientError};

/// Marks a folder as created by `meshgate demo`.
const MARKER: &str = ".meshgate-demo";

/// The seed's `mutual-tls.yaml`.
pub(crate) const MUTUAL_TLS_YAML: &str = "\
# The seed's mutual-tls.yaml: every workload in the bookinfo namespace
# accepts only mutual TLS. Plaintext (legacy) callers are cut off; a TLS
# client without a certificate gets the alert certificate_required.
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: STRICT
";

/// Security in depth: a valid mesh certificate authenticates, it does not
/// authorize. Istio's bookinfo `details-viewer` policy.
pub(crate) const DETAILS_VIEWER_YAML: &str = "\
# Security in depth: STRICT proves who a caller is; this policy decides who
# may call. Only productpage's identity may read details, and only with GET;
# any other mesh identity (like the legacy sleep client brought into the
# mesh) gets 403 \"RBAC: access denied\".
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: details-viewer
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/bookinfo/sa/bookinfo-productpage
    to:
    - operation:
        methods:
        - GET
";

/// Why the demo folder could not be prepared or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilesError {
    /// The folder exists, is not empty, and was not made by the demo.
    #[error(
        "{0} exists and was not created by `meshgate demo` (no {MARKER} file); remove it or pass --dir with a new folder"
    )]
    NotADemoFolder(PathBuf),
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FilesError {
    let path = path.to_owned();
    move |source| FilesError::Io { what, path, source }
}

/// The demo folder's paths.
#[derive(Clone, Debug)]
pub(crate) struct DemoDir {
    /// The folder as the user named it (printed commands use it as is).
    pub(crate) root: PathBuf,
}

impl DemoDir {
    pub(crate) fn settings(&self) -> PathBuf {
        self.root.join("meshgate.yaml")
    }
    pub(crate) fn mutual_tls(&self) -> PathBuf {
        self.root.join("mutual-tls.yaml")
    }
    pub(crate) fn details_viewer(&self) -> PathBuf {
        self.root.join("details-viewer.yaml")
    }
    pub(crate) fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub(crate) fn certs(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(name)
    }

    /// Creates the folder, or clears the previous run's state from a folder
    /// the demo made, and writes the two policy files.
    pub(crate) fn prepare(&self) -> Result<(), FilesError> {
        let marker = self.root.join(MARKER);
        match std::fs::read_dir(&self.root) {
            Ok(mut entries) => {
                if !marker.exists() && entries.next().is_some() {
                    return Err(FilesError::NotADemoFolder(self.root.clone()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading", &self.root)(e)),
        }
        crate::fsutil::ensure_private_dir(&self.root).map_err(io("creating", &self.root))?;
        std::fs::write(&marker, "created by `meshgate demo`; safe to delete\n")
            .map_err(io("writing", &marker))?;
        for stale in [self.data(), self.root.join("certs")] {
            match std::fs::remove_dir_all(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("clearing", &stale)(e)),
            }
        }
        for (path, text) in [
            (self.mutual_tls(), MUTUAL_TLS_YAML),
            (self.details_viewer(), DETAILS_VIEWER_YAML),
        ] {
            crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
                .map_err(io("writing", &path))?;
        }
        Ok(())
    }
}

/// Where the demo's gateway and workloads listen.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    /// Data-plane listeners (the first one is the one printed commands use).
    pub(crate) listen: Vec<SocketAddr>,
    /// Admin API.
    pub(crate) admin: SocketAddr,
    /// details' own socket (127.0.0.1).
    pub(crate) details: SocketAddr,
    /// productpage's own socket (127.0.0.1).
    pub(crate) productpage: SocketAddr,
    /// The gateway's SPIFFE ID.
    pub(crate) gateway_id: String,
}

/// Quotes an address for YAML (IPv6 literals start with `[`).
fn yaml_addr(a: &SocketAddr) -> String {
    format!("\"{a}\"")
}

/// The settings file of the demo gateway: the bookinfo services as
/// ServiceEntry specs with their workloads, no policy files (policies are
/// applied through the admin API, as the seed applies them with kubectl).
pub(crate) fn settings_yaml(t: &Topology) -> String {
    let mut s = String::new();
    s.push_str(
        "# Written by `meshgate demo` (rewritten at every start). The same gateway\n\
         # without the demo's built-in workloads: meshgate serve -c THIS_FILE\n\
         trustDomain: cluster.local\n\
         rootNamespace: istio-system\n\
         dataDir: data\n",
    );
    let _ = writeln!(s, "admin:\n  address: {}", yaml_addr(&t.admin));
    s.push_str("listeners:\n");
    for (i, a) in t.listen.iter().enumerate() {
        let name = if i == 0 {
            "http".to_owned()
        } else {
            format!("http-{}", i + 1)
        };
        let _ = writeln!(
            s,
            "- name: {name}\n  address: {}\n  protocol: http",
            yaml_addr(a)
        );
    }
    let _ = writeln!(s, "identity:\n  spiffeId: {}\n  certTtl: 24h", t.gateway_id);
    let service = |s: &mut String, name: &str, sa: &str, addr: &SocketAddr| {
        let _ = writeln!(
            s,
            "- name: {name}\n  namespace: bookinfo\n  hosts: [{name}.bookinfo.svc.cluster.local]\n  \
             ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  resolution: STATIC\n  \
             endpoints:\n  - address: \"{}\"\n    ports: {{http: {}}}\n    \
             labels: {{app: {name}, version: v1}}\n    serviceAccount: {sa}",
            addr.ip(),
            addr.port()
        );
    };
    s.push_str("services:\n");
    service(&mut s, "details", "bookinfo-details", &t.details);
    service(
        &mut s,
        "productpage",
        "bookinfo-productpage",
        &t.productpage,
    );
    s
}

/// A client identity issued for the demo.
pub(crate) struct IssuedIdentity {
    /// PKCS#8 PEM private key (generated here, never sent).
    pub(crate) key_pem: String,
    /// The CA's answer.
    pub(crate) issued: IssueResponse,
}

/// Why a demo identity could not be issued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IssueError {
    /// Key or CSR generation failed.
    #[error("building a certificate request for {0}: {1}")]
    Csr(String, rcgen::Error),
    /// The admin API refused or failed.
    #[error("issuing {0}: {1}")]
    Admin(String, ClientError),
    /// The request could not be encoded.
    #[error("encoding the request for {0}: {1}")]
    Encode(String, serde_json::Error),
}

/// Issues a certificate for `spiffe_id` through the gateway's admin API,
/// the same way `meshgate cert issue` does: the key pair is generated
/// here and only a CSR is sent.
pub(crate) async fn issue(
    admin: &AdminClient,
    spiffe_id: &str,
    ttl: core::time::Duration,
) -> Result<IssuedIdentity, IssueError> {
    let csr_err = |e| IssueError::Csr(spiffe_id.to_owned(), e);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(csr_err)?;
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(spiffe_id.to_owned()).map_err(csr_err)?,
    )];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(csr_err)?;
    let req = IssueRequest {
        spiffe_id: spiffe_id.to_owned(),
        csr_pem,
        ttl_secs: ttl.as_secs(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| IssueError::Encode(spiffe_id.to_owned(), e))?;
    let issued: IssueResponse = admin
        .call_json(
            Method::POST,
            "/api/v1/certificates",
            "application/json",
            Bytes::from(body),
        )
        .await
        .map_err(|e| IssueError::Admin(spiffe_id.to_owned(), e))?;
    Ok(IssuedIdentity {
        key_pem: key.serialize_pem(),
        issued,
    })
}

/// Writes an identity as `meshgate cert issue` lays it out: key.pem
/// (0600, in a 0700 folder), cert.pem, chain.pem, ca.pem.
pub(crate) fn write_identity(dir: &Path, id: &IssuedIdentity) -> Result<(), FilesError> {
    crate::fsutil::ensure_private_dir(dir).map_err(io("creating", dir))?;
    for (name, data, mode) in [
        ("key.pem", id.key_pem.as_str(), 0o600),
        ("cert.pem", id.issued.cert_pem.as_str(), 0o644),
        ("chain.pem", id.issued.chain_pem.as_str(), 0o644),
        ("ca.pem", id.issued.roots_pem.as_str(), 0o644),
    ] {
        let p = dir.join(name);
        crate::fsutil::write_atomic(&p, data.as_bytes(), mode).map_err(io("writing", &p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_config::settings::Settings;

    fn topology() -> Topology {
        Topology {
            listen: vec![
                "127.0.0.1:9080".parse().expect("addr"),
                "10.250.0.1:9080".parse().expect("addr"),
            ],
            admin: "127.0.0.1:15000".parse().expect("addr"),
            details: "127.0.0.1:19080".parse().expect("addr"),
            productpage: "127.0.0.1:19081".parse().expect("addr"),
            gateway_id: "spiffe://cluster.local/ns/meshgate-system/sa/meshgate".to_owned(),
        }
    }

    #[test]
    fn settings_parse_and_route_bookinfo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = settings_yaml(&topology());
        let s = Settings::parse("demo", &yaml, dir.path()).expect("demo settings are valid");
        assert_eq!(s.listeners.len(), 2);
        assert_eq!(s.listeners[0].address, topology().listen[0]);
        assert_eq!(s.listeners[1].name, "http-2");
        assert_eq!(s.admin_address, topology().admin);
        assert_eq!(s.data_dir, dir.path().join("data"));
        for (host, port) in [
            ("details.bookinfo.svc.cluster.local", 19080),
            ("productpage.bookinfo.svc.cluster.local", 19081),
        ] {
            let svc = s.service_for_host(host).expect("service routed");
            let p = svc.port(9080).expect("port 9080");
            let eps: Vec<_> = svc.endpoints(p).collect();
            assert_eq!(eps.len(), 1);
            assert_eq!(eps[0].1, port, "{host}");
            assert_eq!(eps[0].0.namespace, "bookinfo");
        }
    }

    #[test]
    fn policy_files_parse() {
        let now = meshgate_core::time::UnixTime::from_millis(0);
        for text in [MUTUAL_TLS_YAML, DETAILS_VIEWER_YAML] {
            let p = meshgate_config::policy::parse_policies("demo", text, now).expect("valid");
            assert_eq!(p.len(), 1);
        }
    }

    #[test]
    fn prepare_clears_only_a_demo_folder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).expect("mkdir");
        std::fs::write(foreign.join("precious"), "x").expect("write");
        let d = DemoDir {
            root: foreign.clone(),
        };
        assert!(matches!(d.prepare(), Err(FilesError::NotADemoFolder(_))));
        assert!(foreign.join("precious").exists());

        let d = DemoDir {
            root: tmp.path().join("demo"),
        };
        d.prepare().expect("fresh folder");
        std::fs::create_dir_all(d.data()).expect("mkdir data");
        std::fs::write(d.data().join("state"), "old").expect("write");
        d.prepare().expect("second run");
        assert!(!d.data().exists(), "previous run's state is cleared");
        assert!(d.mutual_tls().exists() && d.details_viewer().exists());
    }
}
