//! The load generator: an mTLS HTTP/1.1 client presenting the bench
//! client certificate, with the four workloads of the comparison.
//!
//! - [`handshakes`]: a new TCP + TLS connection per request, session
//!   resumption disabled, so every request pays a full mTLS handshake;
//! - [`keepalive`]: back-to-back requests on already open connections;
//! - [`fixed_rate`]: an open-loop schedule at a fixed rate; latency is
//!   measured from the *intended* send time, so a stalled server cannot
//!   hide its queueing (no coordinated omission);
//! - [`open_connections`]: many connections opened, used once and then
//!   held idle, for memory per connection.
//!
//! Every response is checked (status 200 and the upstream's exact body)
//! before it counts. The TLS side is fixed for every target: TLS 1.3 only,
//! TLS13_AES_128_GCM_SHA256, P-256 key exchange, so the servers do the
//! same cryptography.

use core::net::SocketAddr;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::certs::{BenchPki, SERVER_SPIFFE_ID};
use crate::stats::percentile;
use crate::upstream::BODY;

/// Why one request (or the setup of a client) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    /// HTTP/1.1 failed (connection closed, malformed response, ...).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (bad Host).
    #[error("request: {0}")]
    Request(#[from] http::Error),
    /// Not a 200.
    #[error("unexpected status {0}")]
    Status(u16),
    /// A 200 with a body that is not the upstream's.
    #[error("unexpected body of {0} bytes")]
    Body(usize),
    /// No answer in time (a server at its connection limit keeps new
    /// clients in the accept queue; a phase must not hang on that).
    #[error("{0} timed out after {IO_TIMEOUT:?}")]
    Timeout(&'static str),
    /// The "new certificate each time" phase ran without fresh client
    /// certificates.
    #[error("no fresh client certificates to present")]
    NoFreshCertificates,
}

/// The longest a connect (TCP + TLS) or one request may take before it
/// counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Listening address of the target.
    pub addr: SocketAddr,
    /// `Host` header (meshgate routes by it).
    pub host: String,
    /// `None`: plaintext (the direct upstream).
    pub tls: Option<TlsClient>,
}

/// TLS client side of an [`Endpoint`].
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// The shared client configuration ([`client_config`]).
    pub config: Arc<ClientConfig>,
    /// One configuration per fresh client certificate
    /// ([`fresh_client_configs`]; may be empty).
    pub fresh: Arc<[Arc<ClientConfig>]>,
    /// SNI and the name checked in the server certificate.
    pub server_name: ServerName<'static>,
}

/// Verifies the server chain against the bench CA with webpki, then the
/// name: a DNS/IP SAN matching the SNI (nginx, HAProxy), or the gateway's
/// SPIFFE ID as URI SAN (meshgate serves a certificate from its CA with
/// only that SAN, as Istio workload certificates have). Not a "dangerous"
/// verifier: the chain is always checked first, and webpki reports a name
/// mismatch only after the chain validated.
#[derive(Debug)]
struct ChainThenName {
    inner: Arc<WebPkiServerVerifier>,
}

fn has_uri_san(der: &CertificateDer<'_>, want: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == want))
}

impl ServerCertVerifier for ChainThenName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if has_uri_san(end_entity, SERVER_SPIFFE_ID) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The crypto every target must do: TLS 1.3 with AES-128-GCM and P-256
/// ECDHE only.
pub fn bench_provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    p.kx_groups = vec![rustls::crypto::ring::kx_group::SECP256R1];
    p
}

/// The load generator's TLS client: presents the bench client certificate,
/// trusts only the bench CA, and never resumes a session (no tickets, no
/// session cache), so every connection is a full mTLS handshake.
pub fn client_config(pki: &BenchPki) -> Result<Arc<ClientConfig>, LoadError> {
    let (provider, verifier) = server_verifier(pki)?;
    client_config_for(provider, verifier, pki.client_der.clone(), pki.client_key())
}

/// Like [`client_config`], one per certificate of
/// [`BenchPki::fresh_clients`].
pub fn fresh_client_configs(pki: &BenchPki) -> Result<Arc<[Arc<ClientConfig>]>, LoadError> {
    let (provider, verifier) = server_verifier(pki)?;
    pki.fresh_clients
        .iter()
        .map(|(cert, key)| {
            client_config_for(
                provider.clone(),
                verifier.clone(),
                cert.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
            )
        })
        .collect()
}

type Provider = Arc<rustls::crypto::CryptoProvider>;

fn server_verifier(pki: &BenchPki) -> Result<(Provider, Arc<ChainThenName>), LoadError> {
    let provider = Arc::new(bench_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone())?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    Ok((provider, Arc::new(ChainThenName { inner })))
}

fn client_config_for(
    provider: Provider,
    verifier: Arc<ChainThenName>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, LoadError> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)?;
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// One open HTTP/1.1 connection (its driver runs as a task until the
/// sender is dropped).
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

async fn http_over<S>(io: S) -> Result<Conn, LoadError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes.
        let _ = conn.await;
    });
    Ok(Conn { sender })
}

/// Opens one connection (TCP, then the full mTLS handshake if TLS).
pub async fn connect(ep: &Endpoint) -> Result<Conn, LoadError> {
    connect_as(ep, None).await
}

/// [`connect`], presenting the certificate of `config` instead of the
/// endpoint's usual one (TLS endpoints only).
async fn connect_as(ep: &Endpoint, config: Option<&Arc<ClientConfig>>) -> Result<Conn, LoadError> {
    tokio::time::timeout(IO_TIMEOUT, connect_inner(ep, config))
        .await
        .map_err(|_| LoadError::Timeout("connect"))?
}

async fn connect_inner(
    ep: &Endpoint,
    config: Option<&Arc<ClientConfig>>,
) -> Result<Conn, LoadError> {
    let tcp = TcpStream::connect(ep.addr)
        .await
        .map_err(LoadError::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &ep.tls {
        None => http_over(tcp).await,
        Some(t) => {
            let tls = TlsConnector::from(config.unwrap_or(&t.config).clone())
                .connect(t.server_name.clone(), tcp)
                .await
                .map_err(LoadError::Handshake)?;
            http_over(tls).await
        }
    }
}

impl Conn {
    /// Sends `GET /` and checks the answer is the upstream's 200 + body.
    pub async fn request(&mut self, host: &str) -> Result<(), LoadError> {
        tokio::time::timeout(IO_TIMEOUT, self.request_inner(host))
            .await
            .map_err(|_| LoadError::Timeout("request"))?
    }

    async fn request_inner(&mut self, host: &str) -> Result<(), LoadError> {
        self.sender.ready().await?;
        let req = http::Request::get("/")
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != http::StatusCode::OK {
            return Err(LoadError::Status(status.as_u16()));
        }
        if body.as_ref() != BODY {
            return Err(LoadError::Body(body.len()));
        }
        Ok(())
    }
}

/// Outcome of a closed-loop phase.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Requests answered with the upstream's 200 and body.
    pub ok: u64,
    /// Failed requests (any [`LoadError`]).
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Counts {
    fn record(&mut self, r: Result<(), LoadError>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn merge(&mut self, other: Counts) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// After a failure, wait this long before the next attempt so a refusing
/// target does not turn the phase into a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

/// `concurrency` workers, each repeating: connect, full mTLS handshake,
/// one request, close; until `duration` has passed. With `fresh`, each
/// handshake presents the next of the endpoint's fresh client certificates
/// (round robin) instead of the usual one.
pub async fn handshakes(
    ep: &Endpoint,
    concurrency: usize,
    duration: Duration,
    fresh: bool,
) -> Counts {
    let until = Instant::now() + duration;
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let ep = ep.clone();
        let next = next.clone();
        set.spawn(async move {
            let mut c = Counts::default();
            while Instant::now() < until {
                let config = ep.tls.as_ref().filter(|_| fresh).and_then(|t| {
                    let n = t.fresh.len();
                    (n > 0).then(|| &t.fresh[next.fetch_add(1, Ordering::Relaxed) % n])
                });
                let r = async {
                    if fresh && config.is_none() {
                        return Err(LoadError::NoFreshCertificates);
                    }
                    let mut conn = connect_as(&ep, config).await?;
                    conn.request(&ep.host).await
                }
                .await;
                if r.is_err() {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                c.record(r);
            }
            c
        });
    }
    join_counts(set).await
}

async fn join_counts(mut set: JoinSet<Counts>) -> Counts {
    let mut total = Counts::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(c) => total.merge(c),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total
}

/// Opens `n` connections, at most `parallel` at a time, and sends one
/// request on each (so the server has finished its side of the handshake
/// and served the connection once before it is held). Fails on the first
/// connection that cannot be opened.
pub async fn open_connections(
    ep: &Endpoint,
    n: usize,
    parallel: usize,
) -> Result<Vec<Conn>, LoadError> {
    let mut out = Vec::with_capacity(n);
    let mut set: JoinSet<Result<Conn, LoadError>> = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && set.len() < parallel.max(1) {
            let ep = ep.clone();
            set.spawn(async move {
                let mut conn = connect(&ep).await?;
                conn.request(&ep.host).await?;
                Ok(conn)
            });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(conn))) => out.push(conn),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(LoadError::Connect(std::io::Error::other(e.to_string())));
            }
            None => break,
        }
    }
    Ok(out)
}

/// Back-to-back requests on each of `conns` (closed loop, one request in
/// flight per connection) until `duration` has passed. Returns the
/// connections that are still usable.
pub async fn keepalive(conns: Vec<Conn>, host: &str, duration: Duration) -> (Counts, Vec<Conn>) {
    let until = Instant::now() + duration;
    let mut set = JoinSet::new();
    for mut conn in conns {
        let host = host.to_owned();
        set.spawn(async move {
            let mut c = Counts::default();
            let mut alive = true;
            while Instant::now() < until {
                let r = conn.request(&host).await;
                if r.is_err() {
                    // A failed keep-alive connection is not reopened: that
                    // would turn this phase into a handshake benchmark.
                    alive = false;
                    c.record(r);
                    break;
                }
                c.record(r);
            }
            (c, alive.then_some(conn))
        });
    }
    let mut total = Counts::default();
    let mut left = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((c, conn)) => {
                total.merge(c);
                left.extend(conn);
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (total, left)
}

/// Outcome of an open-loop phase.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests answered correctly (latency recorded).
    pub ok: u64,
    /// Failed requests.
    pub errors: u64,
    /// Median latency from intended send time, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Worst, microseconds.
    pub max_us: u64,
    /// The first error seen.
    pub first_error: Option<String>,
}

/// Sends `rate` requests per second for `duration` over the open `conns`
/// (open loop). Request *i* is due at `start + i / rate`; a free
/// connection takes the oldest due request, and its latency counts from
/// the due time, so time spent waiting for a connection is included.
pub async fn fixed_rate(conns: Vec<Conn>, host: &str, rate: u32, duration: Duration) -> Latency {
    let rate = rate.max(1);
    let total = (duration.as_secs_f64() * f64::from(rate)).ceil() as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let mut set = JoinSet::new();
    for mut conn in conns {
        let rx = rx.clone();
        let host = host.to_owned();
        set.spawn(async move {
            let mut lat: Vec<u64> = Vec::new();
            let mut c = Counts::default();
            loop {
                let due = { rx.lock().await.recv().await };
                let Some(due) = due else { break };
                let r = conn.request(&host).await;
                let failed = r.is_err();
                if r.is_ok() {
                    lat.push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
                c.record(r);
                if failed {
                    // This connection is unusable; the others take over.
                    break;
                }
            }
            (lat, c)
        });
    }
    // Only the workers hold the receiver now: if they all fail, sending
    // fails and the schedule stops.
    drop(rx);
    let start = Instant::now();
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        if tx.send(due).is_err() {
            break; // every worker failed
        }
    }
    drop(tx);
    let mut all = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut counts = Counts::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((lat, c)) => {
                all.extend(lat);
                counts.merge(c);
            }
            Err(e) => {
                counts.errors += 1;
                counts.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    all.sort_unstable();
    Latency {
        scheduled: total,
        ok: counts.ok,
        errors: counts.errors + total.saturating_sub(counts.ok + counts.errors),
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        max_us: all.last().copied().unwrap_or(0),
        first_error: counts.first_error,
    }
}
