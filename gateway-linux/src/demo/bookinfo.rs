//! The two bookinfo workloads the demo puts behind the gateway.
//!
//! - `details`: a plaintext HTTP service answering like bookinfo's Ruby
//!   `details` service: `GET /details/<id>` returns the book's details with
//!   the id echoed, a non-numeric id is a 400, any other path a 404.
//! - `productpage`: a plaintext HTTP service whose `GET /productpage` calls
//!   `details` *through the gateway* with mutual TLS as
//!   `spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage` — the part
//!   an Istio sidecar plays — and renders a small page with what details
//!   answered and the `x-forwarded-client-cert` header the gateway sent
//!   (so a user sees which identity the gateway verified for them). Its
//!   `GET /details/<id>` plays the pod's sidecar for the app: the request
//!   goes to details the same way and details' answer comes back as is, so
//!   the seed's `urlopen("http://details:9080/details/1")` from inside the
//!   productpage pod has a literal counterpart.
//!
//! Both are ordinary sockets on 127.0.0.1, reached by the gateway as
//! legacy (plaintext) upstreams, exactly like the services in a settings
//! file; nothing here shortcuts the gateway.

use core::convert::Infallible;
use core::net::SocketAddr;
use core::time::Duration;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The host productpage asks the gateway for (TLS SNI and `Host`).
pub(crate) const DETAILS_HOST: &str = "details.bookinfo.svc.cluster.local";
/// The productpage host the gateway routes.
pub(crate) const PRODUCTPAGE_HOST: &str = "productpage.bookinfo.svc.cluster.local";
/// The service port of details, as declared in the demo settings.
pub(crate) const DETAILS_SERVICE_PORT: u16 = 9080;
/// The product productpage shows (bookinfo's only book).
const PRODUCT_ID: u32 = 1;

/// Time allowed for productpage's whole call to details (connect, mTLS
/// handshake, request, response).
const DETAILS_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to send a request head to either service.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest details answer productpage reads; bookinfo's is ~200 B.
const MAX_DETAILS_BODY: usize = 64 * 1024;

/// bookinfo's details record, field order as the Ruby service emits it.
#[derive(serde::Serialize)]
struct BookDetails<'a> {
    id: i64,
    author: &'a str,
    year: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    pages: u32,
    publisher: &'a str,
    language: &'a str,
    #[serde(rename = "ISBN-10")]
    isbn_10: &'a str,
    #[serde(rename = "ISBN-13")]
    isbn_13: &'a str,
}

/// What details answers to `method path`: status and JSON body. Mirrors
/// bookinfo's details.rb: `Integer(id)` must parse, else 400.
pub(crate) fn details_answer(method: &Method, path: &str) -> (StatusCode, String) {
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method not allowed"}"#.to_owned(),
        );
    }
    // The query string plays no part in bookinfo's routing.
    let path = path.split('?').next().unwrap_or_default();
    if path == "/health" {
        return (
            StatusCode::OK,
            r#"{"status":"Details is healthy"}"#.to_owned(),
        );
    }
    let Some(id) = path.strip_prefix("/details/") else {
        return (StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.to_owned());
    };
    let Ok(id) = id.parse::<i64>() else {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"please provide numeric product id"}"#.to_owned(),
        );
    };
    let book = BookDetails {
        id,
        author: "William Shakespeare",
        year: 1595,
        kind: "paperback",
        pages: 200,
        publisher: "PublisherA",
        language: "English",
        isbn_10: "1234567890",
        isbn_13: "123-1234567890",
    };
    match serde_json::to_string(&book) {
        Ok(body) => (StatusCode::OK, body),
        // Serialising a struct of numbers and static strings cannot fail;
        // answering 500 keeps the server honest if it ever did.
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"internal"}"#.to_owned(),
        ),
    }
}

/// How productpage reaches details: through the gateway, with mTLS.
#[derive(Debug)]
pub(crate) struct ProductpageState {
    /// The gateway's data-plane address productpage dials.
    pub(crate) gateway: SocketAddr,
    /// Productpage's client configuration (its certificate, and the
    /// gateway's SPIFFE ID as the only acceptable server). Empty until the
    /// demo has issued productpage's certificate; swapped on renewal.
    pub(crate) tls: ArcSwapOption<ClientConfig>,
    /// Productpage's SPIFFE ID, for the page.
    pub(crate) spiffe_id: String,
}

/// Why productpage's call to details produced no answer.
#[derive(Debug, thiserror::Error)]
enum DetailsCallError {
    #[error("productpage has no certificate yet")]
    NoCertificate,
    #[error("cannot connect to the gateway at {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("mTLS handshake with the gateway failed: {0}")]
    Handshake(std::io::Error),
    #[error("HTTP exchange with the gateway failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("details answer unreadable: {0}")]
    Body(String),
    #[error("building the request failed: {0}")]
    Request(#[from] http::Error),
    #[error("no answer within {} s", DETAILS_CALL_TIMEOUT.as_secs())]
    Timeout,
}

/// Calls `GET <path>` on details through the gateway.
async fn call_details(
    state: &ProductpageState,
    path: &str,
) -> Result<(StatusCode, String), DetailsCallError> {
    let config = state
        .tls
        .load_full()
        .ok_or(DetailsCallError::NoCertificate)?;
    let exchange = async {
        let tcp = TcpStream::connect(state.gateway)
            .await
            .map_err(|e| DetailsCallError::Connect(state.gateway, e))?;
        let _ = tcp.set_nodelay(true);
        // The SNI routes the connection to details and selects its mTLS
        // mode; the certificate check is by SPIFFE ID (secure naming), not
        // by this name.
        let name = ServerName::try_from(DETAILS_HOST)
            .map_err(|e| DetailsCallError::Body(e.to_string()))?
            .to_owned();
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(DetailsCallError::Handshake)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ignored = conn.await;
        });
        let req = Request::get(path)
            .header(
                header::HOST,
                format!("{DETAILS_HOST}:{DETAILS_SERVICE_PORT}"),
            )
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_DETAILS_BODY)
            .collect()
            .await
            .map_err(|e| DetailsCallError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(DETAILS_CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| DetailsCallError::Timeout)?
}

/// Escapes text for HTML element content (the page has no attribute
/// values built from data), leaving quotes readable in a terminal.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Productpage's page. 200 only when details answered 200: unlike
/// bookinfo, which shows "details unavailable" with a 200, a failed call
/// is a 502 here, so scripts can tell the two apart.
fn productpage_page(
    state: &ProductpageState,
    details: &Result<(StatusCode, String), DetailsCallError>,
    xfcc: Option<&str>,
) -> (StatusCode, String) {
    let (status, details_html) = match details {
        Ok((s, body)) if *s == StatusCode::OK => (
            StatusCode::OK,
            format!(
                "<p>details answered {s} through the gateway (mTLS as {}):</p>\n<pre id=\"details\">{}</pre>",
                html_escape(&state.spiffe_id),
                html_escape(body)
            ),
        ),
        Ok((s, body)) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "<p>Sorry, product details are currently unavailable: details answered {s} (called through the gateway with mTLS as {}):</p>\n<pre id=\"details\">{}</pre>",
                html_escape(&state.spiffe_id),
                html_escape(body)
            ),
        ),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "<p>Sorry, product details are currently unavailable: {}</p>",
                html_escape(&e.to_string())
            ),
        ),
    };
    let caller = match xfcc {
        Some(v) => format!(
            "<p>The gateway verified this caller (x-forwarded-client-cert):</p>\n<pre id=\"xfcc\">{}</pre>",
            html_escape(v)
        ),
        None => "<p>No x-forwarded-client-cert: this request did not come through the gateway with a client certificate.</p>".to_owned(),
    };
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head>\n<body>\n<h1>The Comedy of Errors</h1>\n<h2>Book Details</h2>\n{details_html}\n<h2>Caller</h2>\n{caller}\n</body></html>\n"
    );
    (status, page)
}

/// Which service a listener serves.
#[derive(Debug)]
pub(crate) enum App {
    /// bookinfo `details`.
    Details,
    /// bookinfo `productpage`.
    Productpage(Arc<ProductpageState>),
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let (status, content_type, body) = match self {
            App::Details => {
                let (s, b) = details_answer(req.method(), &path);
                (s, "application/json", b)
            }
            App::Productpage(state) => {
                let route = path.split('?').next().unwrap_or_default();
                match (req.method(), route) {
                    (&Method::GET, "/productpage") => {
                        let xfcc = req
                            .headers()
                            .get("x-forwarded-client-cert")
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                        let details = call_details(state, &format!("/details/{PRODUCT_ID}")).await;
                        if let Err(e) = &details {
                            tracing::warn!(error = %e, "productpage: details call failed");
                        }
                        let (s, b) = productpage_page(state, &details, xfcc.as_deref());
                        (s, "text/html; charset=utf-8", b)
                    }
                    // The pod's sidecar: what the app sends to details in
                    // plaintext leaves the pod as mTLS with productpage's
                    // identity (the seed's `urlopen("http://details:9080/details/1")`
                    // from inside productpage).
                    (&Method::GET, p) if p.starts_with("/details/") => {
                        match call_details(state, &path).await {
                            Ok((s, b)) => (s, "application/json", b),
                            Err(e) => (
                                StatusCode::BAD_GATEWAY,
                                "text/plain; charset=utf-8",
                                format!("upstream connect error: {e}\n"),
                            ),
                        }
                    }
                    (&Method::GET, "/health") => (
                        StatusCode::OK,
                        "application/json",
                        r#"{"status":"Healthy"}"#.to_owned(),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found\n".to_owned(),
                    ),
                }
            }
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    }
}

/// Serves `app` on `listener` (HTTP/1.1) until `stop` turns true.
pub(crate) fn spawn(
    listener: TcpListener,
    app: App,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let app = Arc::new(app);
    tokio::spawn(async move {
        loop {
            let (stream, _peer) = tokio::select! {
                () = crate::dataplane::stop_requested(&mut stop) => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "demo upstream: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let app = app.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "demo upstream: connection ended with an error");
                        }
                    }
                    () = crate::dataplane::stop_requested(&mut stop) => {
                        // Let the request in flight finish, then close.
                        conn.as_mut().graceful_shutdown();
                        let _ignored = tokio::time::timeout(Duration::from_secs(2), conn).await;
                    }
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_echoes_the_id_in_bookinfo_shape() {
        let (s, body) = details_answer(&Method::GET, "/details/100");
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"id":100,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
        );
        let (s, body) = details_answer(&Method::GET, "/details/1?x=y");
        assert_eq!(s, StatusCode::OK);
        assert!(body.starts_with(r#"{"id":1,"#), "{body}");
    }

    #[test]
    fn details_refuses_what_bookinfo_refuses() {
        assert_eq!(
            details_answer(&Method::GET, "/details/abc").0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            details_answer(&Method::GET, "/details/").0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            details_answer(&Method::GET, "/reviews/1").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            details_answer(&Method::POST, "/details/1").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(details_answer(&Method::GET, "/health").0, StatusCode::OK);
    }

    fn state() -> ProductpageState {
        ProductpageState {
            gateway: SocketAddr::from(([127, 0, 0, 1], 9)),
            tls: ArcSwapOption::empty(),
            spiffe_id: "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage".to_owned(),
        }
    }

    #[test]
    fn productpage_is_200_only_when_details_answered_200() {
        let st = state();
        let ok = Ok((StatusCode::OK, r#"{"id":1}"#.to_owned()));
        let (s, page) = productpage_page(&st, &ok, Some("By=a;URI=<b>"));
        assert_eq!(s, StatusCode::OK);
        assert!(
            page.contains(r#"<pre id="details">{"id":1}</pre>"#),
            "{page}"
        );
        assert!(page.contains("URI=&lt;b&gt;"), "XFCC is escaped: {page}");

        let denied = Ok((StatusCode::FORBIDDEN, "RBAC: access denied".to_owned()));
        let (s, page) = productpage_page(&st, &denied, None);
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert!(page.contains("403 Forbidden") && page.contains("RBAC: access denied"));

        let (s, page) = productpage_page(&st, &Err(DetailsCallError::Timeout), None);
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert!(page.contains("no answer within"));
    }

    #[tokio::test]
    async fn productpage_without_certificate_does_not_call_out() {
        let st = state();
        assert!(matches!(
            call_details(&st, "/details/1").await,
            Err(DetailsCallError::NoCertificate)
        ));
    }
}
