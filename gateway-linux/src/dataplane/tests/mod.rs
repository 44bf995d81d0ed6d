//! Data-plane tests over real sockets, with certificates generated here
//! (rcgen) and the seed's own clients (curl, python3 urllib) as peers.
//!
//! Each test starts a [`Gateway`]: a [`DataPlane`] on an ephemeral
//! loopback port in front of in-process upstreams, with policies given as
//! Istio YAML and parsed by `meshgate-config` into a core `PolicySet`.

mod authz;
mod flip;
mod keepalive;
mod modes;
mod robustness;
mod secure_naming;

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshgate_config::policy::{Policy, parse_policies};
use meshgate_core::policy::{MeshConfig, PolicySet};
use meshgate_core::time::UnixTime;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use super::snapshot::{Endpoint, EndpointAddress, ServicePort, ServiceSpec, UpstreamSecurity};
use super::{AccessLogSink, DataPlane, Identity, ListenerSpec, Options, Protocol, Snapshot};

pub(super) const GATEWAY_ID: &str = "spiffe://cluster.local/ns/meshgate-system/sa/meshgate";
pub(super) const PRODUCTPAGE_ID: &str =
    "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
pub(super) const SLEEP_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/sleep";
pub(super) const DETAILS_ID: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details";
pub(super) const DETAILS_HOST: &str = "details.bookinfo.svc.cluster.local";
pub(super) const LEGACY_HOST: &str = "legacy.bookinfo.svc.cluster.local";
pub(super) const FINANCE_HOST: &str = "finance.foo.svc.cluster.local";

/// A CA and the key material it issued, plus PEM files for the clients.
pub(super) struct Pki {
    pub(super) dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    pub(super) ca_der: CertificateDer<'static>,
}

/// A leaf issued by a [`Pki`].
pub(super) struct Leaf {
    pub(super) der: CertificateDer<'static>,
    pub(super) key: PrivateKeyDer<'static>,
    pub(super) cert_path: PathBuf,
    pub(super) key_path: PathBuf,
}

impl Pki {
    pub(super) fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("ca cert");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca");
        Pki {
            ca_der: cert.der().clone(),
            ca: Issuer::new(params, key),
            dir,
        }
    }

    pub(super) fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a leaf with `uris` as URI SANs (and `dns` names), for both
    /// server and client use, as Istio workload certificates are.
    pub(super) fn leaf(&self, file: &str, uris: &[&str], dns: &[&str]) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        let mut sans = Vec::new();
        for u in uris {
            sans.push(SanType::URI((*u).try_into().expect("ia5")));
        }
        for d in dns {
            sans.push(SanType::DnsName((*d).try_into().expect("ia5")));
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Leaf {
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_path,
            key_path,
        }
    }
}

/// What an upstream saw: the request headers of each request.
#[derive(Clone, Default)]
pub(super) struct Seen(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl Seen {
    pub(super) fn last(&self) -> HashMap<String, String> {
        self.0
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }
    pub(super) fn count(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

/// A sidecar's TLS acceptor: serves `leaf` and requires a client
/// certificate from `pki`'s CA.
pub(super) fn sidecar_acceptor(leaf: &Leaf, pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .expect("verifier");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Starts a plaintext HTTP upstream answering `200 upstream:<name>` and
/// recording headers. With `tls`, it serves that certificate and requires
/// a client certificate from `client_ca` (a mesh sidecar's behaviour).
pub(super) async fn upstream(name: &'static str, tls: Option<(&Leaf, &Pki)>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let acceptor = tls.map(|(leaf, pki)| sidecar_acceptor(leaf, pki));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = s.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect();
                        seen.0.lock().expect("lock").push(headers);
                        let _ = req.into_body().collect().await;
                        Ok::<_, core::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(format!("upstream:{name}")),
                        )))
                    }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Parses Istio YAML into a policy set for the cluster.local mesh.
pub(super) fn policies(yaml: &str) -> Arc<PolicySet> {
    let parsed = parse_policies("test.yaml", yaml, UnixTime::from_secs(1)).expect("policy yaml");
    let (mut pas, mut aps) = (Vec::new(), Vec::new());
    for p in parsed {
        match p {
            Policy::PeerAuthentication(pa) => pas.push(pa),
            Policy::AuthorizationPolicy(ap) => aps.push(ap),
        }
    }
    Arc::new(PolicySet::new(MeshConfig::default(), &pas, &aps).expect("policy set"))
}

pub(super) fn service(
    host: &str,
    ns: &str,
    app: &str,
    port: u16,
    target_port: u16,
    endpoint: SocketAddr,
    upstream: UpstreamSecurity,
) -> ServiceSpec {
    ServiceSpec {
        hosts: vec![host.to_owned()],
        namespace: ns.to_owned(),
        labels: vec![("app".to_owned(), app.to_owned())],
        ports: vec![ServicePort {
            number: port,
            target_port,
            endpoints: vec![Endpoint {
                address: EndpointAddress::Ip(endpoint),
                upstream,
            }],
        }],
    }
}

/// A running gateway and what the tests need to talk to it.
pub(super) struct Gateway {
    pub(super) dp: DataPlane,
    pub(super) addr: SocketAddr,
    pub(super) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(super) identity: Arc<ArcSwap<Identity>>,
    pub(super) services: Vec<ServiceSpec>,
    pub(super) pki: Pki,
    pub(super) productpage: Leaf,
    pub(super) sleep: Leaf,
    /// A client certificate with productpage's SPIFFE ID from another CA.
    pub(super) foreign: Leaf,
    _foreign_pki: Pki,
}

impl Gateway {
    /// Starts the data plane on an HTTP listener whose configured port is
    /// 9080, with `services` and policies from `yaml`.
    pub(super) async fn start(pki: Pki, services: Vec<ServiceSpec>, yaml: &str) -> Gateway {
        Self::start_with(
            pki,
            services,
            yaml,
            Protocol::Http,
            None,
            Options::default(),
        )
        .await
    }

    pub(super) async fn start_with(
        pki: Pki,
        services: Vec<ServiceSpec>,
        yaml: &str,
        protocol: Protocol,
        tcp_service: Option<&str>,
        options: Options,
    ) -> Gateway {
        let gw = pki.leaf(
            "gateway",
            &[GATEWAY_ID],
            &[DETAILS_HOST, LEGACY_HOST, FINANCE_HOST, "localhost"],
        );
        let identity = Identity::new(
            vec![gw.der.clone()],
            gw.key.clone_key(),
            core::slice::from_ref(&pki.ca_der),
        )
        .expect("gateway identity");
        let snapshot = Arc::new(ArcSwap::from_pointee(
            Snapshot::build(1, services.clone(), policies(yaml)).expect("snapshot"),
        ));
        let identity = Arc::new(ArcSwap::from_pointee(identity));
        let dp = DataPlane::new(
            snapshot.clone(),
            identity.clone(),
            options,
            AccessLogSink::Discard,
        );
        let (addr, _task) = dp
            .bind(
                "127.0.0.1:0".parse().expect("addr"),
                ListenerSpec {
                    name: "test".to_owned(),
                    port: 9080,
                    protocol,
                    service: tcp_service.map(str::to_owned),
                },
            )
            .await
            .expect("bind gateway");
        let productpage = pki.leaf("productpage", &[PRODUCTPAGE_ID], &[]);
        let sleep = pki.leaf("sleep", &[SLEEP_ID], &[]);
        let foreign_pki = Pki::new("foreign CA");
        let foreign = foreign_pki.leaf("foreign", &[PRODUCTPAGE_ID], &[]);
        Gateway {
            dp,
            addr,
            snapshot,
            identity,
            services,
            pki,
            productpage,
            sleep,
            foreign,
            _foreign_pki: foreign_pki,
        }
    }

    /// Swaps in new policies (same services), as a live reload does.
    pub(super) fn set_policies(&self, generation: u64, yaml: &str) {
        self.snapshot.store(Arc::new(
            Snapshot::build(generation, self.services.clone(), policies(yaml)).expect("snapshot"),
        ));
    }

    /// `--connect-to` so curl uses the real host name (SNI and Host) while
    /// connecting to the gateway's ephemeral port.
    fn connect_to(&self, host: &str) -> String {
        format!("{host}:9080:127.0.0.1:{}", self.addr.port())
    }

    /// Runs curl against `scheme://host:9080path` with extra args.
    pub(super) async fn curl(
        &self,
        scheme: &str,
        host: &str,
        path: &str,
        extra: &[&str],
    ) -> CurlResult {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-o".into(),
            "-".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "--connect-to".into(),
            self.connect_to(host),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(format!("{scheme}://{host}:9080{path}"));
        run_curl(args).await
    }

    /// curl over mTLS with a client leaf, verifying the gateway against the
    /// mesh CA.
    pub(super) async fn curl_mtls(
        &self,
        leaf: &Leaf,
        host: &str,
        path: &str,
        extra: &[&str],
    ) -> CurlResult {
        let cert = leaf.cert_path.display().to_string();
        let key = leaf.key_path.display().to_string();
        let ca = self.pki.ca_path().display().to_string();
        let mut args = vec!["--cacert", &ca, "--cert", &cert, "--key", &key];
        args.extend_from_slice(extra);
        self.curl("https", host, path, &args).await
    }

    /// Python's urllib, as the seed's productpage uses it (plaintext).
    pub(super) async fn urllib(&self, host: &str, path: &str) -> (i32, String) {
        let script = format!(
            "import urllib.request, urllib.error\n\
             req = urllib.request.Request('http://127.0.0.1:{port}{path}', headers={{'Host': '{host}:9080'}})\n\
             try:\n    r = urllib.request.urlopen(req, timeout=10)\n    print(r.status, r.read().decode())\n\
             except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n",
            port = self.addr.port()
        );
        run_python(script).await
    }

    /// Python ssl + http.client over mTLS (SNI = host).
    pub(super) async fn python_mtls(&self, leaf: &Leaf, host: &str, path: &str) -> (i32, String) {
        let script = format!(
            "import ssl, socket, http.client\n\
             ctx = ssl.create_default_context(cafile='{ca}')\n\
             ctx.load_cert_chain('{cert}', '{key}')\n\
             c = http.client.HTTPSConnection('{host}', 9080, context=ctx, timeout=10)\n\
             c.sock = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='{host}')\n\
             c.request('GET', '{path}')\n\
             r = c.getresponse()\n\
             print(r.status, r.read().decode())\n",
            ca = self.pki.ca_path().display(),
            cert = leaf.cert_path.display(),
            key = leaf.key_path.display(),
            port = self.addr.port(),
        );
        run_python(script).await
    }

    /// Waits (bounded) for the access log to hold `n` entries.
    pub(super) async fn access_log(&self, n: usize) -> Vec<super::AccessEntry> {
        for _ in 0..200 {
            let log = self.dp.recent_access_log();
            if log.len() >= n {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.dp.recent_access_log()
    }
}

/// curl's exit code, stdout body, HTTP status and stderr.
#[derive(Debug)]
pub(super) struct CurlResult {
    pub(super) exit: i32,
    pub(super) body: String,
    pub(super) status: u16,
    pub(super) stderr: String,
}

async fn run_curl(args: Vec<String>) -> CurlResult {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl").args(&args).output().expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        CurlResult {
            exit: out.status.code().unwrap_or(-1),
            body: body.to_owned(),
            status: code.trim().parse().unwrap_or(0),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("curl task")
}

async fn run_python(script: String) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("run python3");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .expect("python task")
}

/// A client for in-process traffic: one HTTP/1.1 request over a fresh
/// plaintext connection. `Ok(status)` or `Err` when the connection closed
/// without a response.
pub(super) async fn plaintext_request(
    gw: SocketAddr,
    host: &str,
    path: &str,
) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(gw)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, format!("{host}:9080"))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// An mTLS HTTP/1.1 client keeping one connection open for many requests.
pub(super) struct MtlsClient {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    host: String,
}

impl MtlsClient {
    pub(super) async fn connect(gw: SocketAddr, pki: &Pki, leaf: &Leaf, host: &str) -> MtlsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("root");
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![leaf.der.clone()], leaf.key.clone_key())
        .expect("client config");
        let tcp = tokio::net::TcpStream::connect(gw).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("mTLS handshake");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        MtlsClient {
            send,
            host: host.to_owned(),
        }
    }

    pub(super) async fn get(&mut self, path: &str) -> Result<u16, String> {
        self.send.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .uri(path)
            .header(http::header::HOST, format!("{}:9080", self.host))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}

pub(super) const PERMISSIVE_NS: &str = "";

pub(super) const STRICT_NS: &str = "apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec:
  mtls: {mode: STRICT}
";
