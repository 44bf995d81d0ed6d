//! The admin API of a whole gateway (`meshgate serve`), fed request
//! bodies, paths and query strings by the fuzzer.
//!
//! [`Admin::get`] starts the real server once per process — the same
//! `serve::run` the binary runs, on the embedded default settings with
//! every socket on a free loopback port and the data directory on tmpfs —
//! and reads the admin token it generated from that directory.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::runtime::Runtime;

use crate::cli::{Cli, Command};

/// Most response bytes kept per request.
const MAX_BODY: usize = 1 << 20;
/// Time allowed for one request before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The running gateway's admin endpoint and token.
pub struct Admin {
    rt: Runtime,
    addr: SocketAddr,
    token: String,
    data_dir: PathBuf,
}

impl core::fmt::Debug for Admin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Admin")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// An admin API answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// False if the request could not even be built (a method, target or
    /// header value the HTTP client refuses): nothing was sent.
    pub sent: bool,
    /// The status code; `None` if the connection failed or timed out.
    pub status: Option<u16>,
    /// The response headers, lowercase names.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (at most 1 MiB).
    pub body: Vec<u8>,
}

impl Admin {
    /// The process-wide gateway, started on first use.
    pub fn get() -> &'static Admin {
        static ADMIN: OnceLock<Admin> = OnceLock::new();
        ADMIN.get_or_init(Admin::start)
    }

    fn start() -> Admin {
        let data_dir = super::scratch_dir("admin");
        let admin_port = free_port();
        let admin_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin_port);
        let cli = Cli::try_parse_from([
            "meshgate".to_owned(),
            "serve".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--admin-addr".to_owned(),
            admin_addr.to_string(),
            "--edge-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--listen".to_owned(),
            "http=127.0.0.1:0".to_owned(),
        ])
        .expect("serve arguments");
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed a serve command line")
        };
        std::thread::Builder::new()
            .name("meshgate-serve".to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                if let Err(e) = rt.block_on(crate::serve::run(args)) {
                    panic!("meshgate serve stopped: {e}");
                }
            })
            .expect("server thread");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let admin = Admin {
            rt,
            addr: admin_addr,
            token: String::new(),
            data_dir,
        };
        // The token file is written before the admin listener binds, so
        // once /readyz answers both are there.
        for _ in 0..600 {
            if admin.request("GET", "/readyz", None, &[]).status == Some(200) {
                let token =
                    std::fs::read_to_string(admin.data_dir.join(crate::admin::token::TOKEN_FILE))
                        .expect("admin token file");
                return Admin {
                    token: token.trim().to_owned(),
                    ..admin
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the gateway's admin API did not become ready within 60 s");
    }

    /// The admin token (to check that no answer ever contains it).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends one request; `auth` is the `Authorization` header value
    /// (`None`: no header). A request the HTTP client cannot build (invalid
    /// target or header value) is not sent ([`Answer::sent`] is false).
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let failed = Answer {
            sent: true,
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            builder = builder.header(http::header::AUTHORIZATION, a);
        }
        let Ok(req) = builder.body(Full::new(Bytes::copy_from_slice(body))) else {
            return Answer {
                sent: false,
                ..failed
            };
        };
        let addr = self.addr;
        self.rt.block_on(async move {
            let run = async {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                let resp = sender.send_request(req).await.ok()?;
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                let mut body = Vec::new();
                let mut incoming = resp.into_body();
                while let Some(Ok(frame)) = incoming.frame().await {
                    if let Some(d) = frame.data_ref() {
                        let room = MAX_BODY.saturating_sub(body.len());
                        body.extend_from_slice(&d[..d.len().min(room)]);
                    }
                }
                Some(Answer {
                    sent: true,
                    status: Some(status),
                    headers,
                    body,
                })
            };
            tokio::time::timeout(REQUEST_TIMEOUT, run)
                .await
                .ok()
                .flatten()
                .unwrap_or(failed)
        })
    }
}

/// A loopback port that was free a moment ago (the admin address must be
/// known before the server starts; the server binds it right away).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}
