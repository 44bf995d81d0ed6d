//! The plaintext upstream every target forwards to: a tiny hyper HTTP/1.1
//! server answering every request with the same small body.
//!
//! It runs in its own process (`meshgate-bench upstream`) during a
//! benchmark so its CPU time is neither the load generator's nor a
//! proxy's, and it doubles as the "direct, no proxy" reference row.

use core::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The body of every upstream response.
pub const BODY: &[u8] = b"hello from the meshgate-bench upstream\n";

/// Serves `listener` until the task is dropped. Connection errors end only
/// that connection.
pub async fn serve(listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE under 10k connections: wait for some to close.
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(core::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            // A client closing mid-request is normal under load.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
