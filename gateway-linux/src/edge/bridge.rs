//! One task per tunnel stream: moves bytes between the stream and a local
//! byte pipe whose other end the data plane serves (node → mesh) or uses as
//! its upstream connection (mesh → device).
//!
//! Flow control is the session's credit, mirrored here in a semaphore:
//! the tunnel adds a permit for every byte of credit the node grants, and
//! this task takes permits before it hands data to the tunnel, so the
//! tunnel never holds more for a stream than the node allowed — a slow
//! device back-pressures the mesh client through the pipe instead of
//! filling gateway memory. Data from the node is written into the pipe
//! first and only then reported consumed, which is what returns credit to
//! the node.

use std::sync::Arc;

use bytes::Bytes;
use meshgate_core::wire::MAX_DATA_CHUNK;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Semaphore, mpsc};

use super::tunnel::Cmd;

/// Bytes buffered in the local pipe each way.
pub(super) const PIPE_BUFFER: usize = 16 * 1024;

/// What the tunnel delivers to a stream's task.
#[derive(Debug)]
pub(super) enum Inbound {
    /// Payload from the node.
    Data(Bytes),
    /// The node will send no more (half-close).
    Finished,
}

/// Runs stream `id` until both directions end or it is reset. Dropping
/// `rx`'s sender (the tunnel removing the stream: reset or tunnel gone)
/// aborts it and closes the pipe, so the data plane sees the connection
/// end.
pub(super) fn spawn(
    id: u32,
    pipe: DuplexStream,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    credit: Arc<Semaphore>,
    cmd: mpsc::Sender<Cmd>,
) {
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(pipe);
        let up_cmd = cmd.clone();
        let mut up = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATA_CHUNK];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) => {
                        let _ = up_cmd.send(Cmd::Finish { id }).await;
                        return;
                    }
                    Ok(n) => n,
                    Err(_) => {
                        let _ = up_cmd.send(Cmd::Reset { id }).await;
                        return;
                    }
                };
                let mut sent = 0;
                while sent < n {
                    // Wait for at least one byte of credit, then take as
                    // much more as is available right now.
                    let Ok(first) = credit.acquire().await else {
                        return; // stream gone
                    };
                    first.forget();
                    let want = n - sent - 1;
                    let extra = want.min(credit.available_permits());
                    let extra = u32::try_from(extra).unwrap_or(0);
                    // Only the tunnel adds permits and only this task takes
                    // them, so what was available is still there.
                    let got = if extra > 0
                        && credit.try_acquire_many(extra).map(|p| p.forget()).is_ok()
                    {
                        extra
                    } else {
                        0
                    };
                    let take = 1 + usize::try_from(got).unwrap_or(0);
                    let chunk = Bytes::copy_from_slice(&buf[sent..sent + take]);
                    if up_cmd.send(Cmd::Data { id, data: chunk }).await.is_err() {
                        return;
                    }
                    sent += take;
                }
            }
        });
        let mut finished_down = false;
        let mut up_done = false;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Inbound::Data(data)) => {
                        if w.write_all(&data).await.is_err() {
                            let _ = cmd.send(Cmd::Reset { id }).await;
                            break;
                        }
                        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                        if cmd.send(Cmd::Consumed { id, n }).await.is_err() {
                            break;
                        }
                    }
                    Some(Inbound::Finished) => {
                        finished_down = true;
                        let _ = w.shutdown().await;
                        if up_done {
                            return;
                        }
                    }
                    // Reset by the node, or the tunnel is gone.
                    None => break,
                },
                _ = &mut up, if !up_done => {
                    up_done = true;
                    if finished_down {
                        return;
                    }
                }
            }
        }
        up.abort();
    });
}
