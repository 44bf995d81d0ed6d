//! A small HTTP/1.1 client for the admin API, used by the client commands
//! (`apply`, `get`, `check`, `cert issue`, `ca ...`).
//!
//! One connection per request over a plain `TcpStream` and hyper's
//! connection-level client: the CLI makes one or two calls per run, so a
//! pooled client would buy nothing. Errors are phrased for the person at
//! the terminal ("the gateway isn't running at URL"), not for a developer.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::admin::token::TOKEN_FILE;
use crate::admin::types::ApiError;

/// How long a client command waits for the gateway before giving up.
const REQUEST_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(30);

/// Why a call to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The `--admin` value is not an `http://host:port` URL.
    #[error("invalid admin URL {url:?}: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing listens at the admin address.
    #[error(
        "the gateway isn't running at {url} (connection refused); start it with `meshgate serve` or pass --admin URL"
    )]
    NotRunning {
        /// The admin URL.
        url: String,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to the gateway at {url}: {source}")]
    Connect {
        /// The admin URL.
        url: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the gateway at {url} failed: {source}")]
    Http {
        /// The admin URL.
        url: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("the gateway at {url} did not answer within {secs} s")]
    Timeout {
        /// The admin URL.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// No token from a flag, the environment or the data directory.
    #[error(
        "no admin token: pass --token, set MESHGATE_TOKEN, or point --data-dir at the gateway's data directory ({path} was not readable: {source})"
    )]
    NoToken {
        /// The token file that was tried.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The gateway refused the token.
    #[error(
        "the gateway at {url} rejected the admin token (401); check --token / MESHGATE_TOKEN or the admin-token file"
    )]
    Unauthorized {
        /// The admin URL.
        url: String,
    },
    /// The gateway answered with an error.
    #[error("{}", render_api_error(*status, error))]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The decoded error body.
        error: ApiError,
    },
    /// The gateway answered with something this client does not understand.
    #[error("unexpected answer from the gateway ({status}): {reason}")]
    BadResponse {
        /// HTTP status.
        status: StatusCode,
        /// What was wrong.
        reason: String,
    },
}

/// Formats an API error with one line per detail (file:document:line field).
fn render_api_error(status: StatusCode, e: &ApiError) -> String {
    let mut out = format!("error ({}): {}", status.as_u16(), e.error);
    for d in &e.details {
        out.push_str("\n  ");
        out.push_str(&d.to_string());
    }
    out
}

/// A connection target for the admin API plus the bearer token.
#[derive(Clone, Debug)]
pub(crate) struct AdminClient {
    url: String,
    authority: String,
    token: Option<String>,
}

impl AdminClient {
    /// Parses `url` (`http://host:port`, no path).
    pub(crate) fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("missing http:// scheme")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("missing host:port"))?
            .as_str()
            .to_owned();
        if !matches!(uri.path(), "" | "/") {
            return Err(bad("give only scheme, host and port"));
        }
        let authority = if uri.port_u16().is_some() {
            authority
        } else {
            format!("{authority}:80")
        };
        Ok(AdminClient {
            url: url.trim_end_matches('/').to_owned(),
            authority,
            token,
        })
    }

    /// Sends one request and returns the status and body of a 2xx answer;
    /// anything else becomes a [`ClientError`].
    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<Bytes, ClientError> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.send_inner(method, path_and_query, body),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            url: self.url.clone(),
            secs: REQUEST_TIMEOUT.as_secs(),
        })?
    }

    async fn send_inner(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<Bytes, ClientError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                    url: self.url.clone(),
                },
                _ => ClientError::Connect {
                    url: self.url.clone(),
                    source,
                },
            })?;
        let http_err = |source| ClientError::Http {
            url: self.url.clone(),
            source,
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(http_err)?;
        // The connection future drives the socket; it ends when the request
        // is done and the sender is dropped.
        tokio::spawn(async move {
            let _ignored = conn.await;
        });

        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| ClientError::BadUrl {
            url: format!("{}{path_and_query}", self.url),
            reason: e.to_string(),
        })?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.url.clone(),
            });
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(error) => Err(ClientError::Api { status, error }),
            Err(_) => Err(ClientError::BadResponse {
                status,
                reason: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    /// GET `path` and decode the JSON answer.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.send(Method::GET, path, None).await?;
        decode(&bytes)
    }

    /// Sends `body` with `content_type` and decodes the JSON answer.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, Some((content_type, body))).await?;
        decode(&bytes)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::BadResponse {
        status: StatusCode::OK,
        reason: format!("invalid JSON: {e}"),
    })
}

/// The token a client command should send: the explicit one, or the one in
/// the data directory's token file.
pub(crate) fn resolve_token(
    explicit: Option<String>,
    data_dir: &Path,
) -> Result<String, ClientError> {
    if let Some(t) = explicit.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_owned());
    }
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(ClientError::NoToken {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        }),
        Err(source) => Err(ClientError::NoToken { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let c = AdminClient::new("http://127.0.0.1:15000", None).expect("valid");
        assert_eq!(c.authority, "127.0.0.1:15000");
        let c = AdminClient::new("http://localhost/", None).expect("valid");
        assert_eq!(c.authority, "localhost:80");
        assert!(AdminClient::new("https://127.0.0.1:15000", None).is_err());
        assert!(AdminClient::new("127.0.0.1:15000", None).is_err());
        assert!(AdminClient::new("http://127.0.0.1:15000/api", None).is_err());
    }

    #[tokio::test]
    async fn refused_connection_says_gateway_is_not_running() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let c = AdminClient::new(&format!("http://127.0.0.1:{port}"), None).expect("valid");
        let err = c
            .send(Method::GET, "/healthz", None)
            .await
            .expect_err("refused");
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
        assert!(err.to_string().contains("isn't running at"), "{err}");
    }

    #[test]
    fn token_file_is_the_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            resolve_token(None, dir.path()),
            Err(ClientError::NoToken { .. })
        ));
        std::fs::write(dir.path().join(TOKEN_FILE), "abc\n").expect("write");
        assert_eq!(resolve_token(None, dir.path()).expect("token"), "abc");
        assert_eq!(
            resolve_token(Some("xyz".into()), dir.path()).expect("token"),
            "xyz"
        );
    }
}
