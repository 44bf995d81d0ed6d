//! Revocation in the data plane: refusing revoked peers and closing their
//! open connections.
//!
//! Two places enforce a revocation (issue 4: "new handshakes refused at
//! once, open connections of that identity closed within 1 s"):
//! - the client-certificate verifier consults the [`RevocationCheck`] on
//!   every handshake, so a revoked certificate fails the handshake itself
//!   (alert `certificate_revoked`) the moment the revocation is recorded;
//! - every established mTLS connection is registered in
//!   [`LiveConnections`] with its peer's SPIFFE ID and serial until it
//!   ends. [`super::DataPlane::close_revoked`] walks the registry and
//!   signals each revoked peer's connection, whose task then drops the
//!   socket (in-flight requests on it end too: that is the point).
//!
//! The check itself is the control plane's (the CA's revocation list); the
//! data plane only asks.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::peer::PeerIdentity;

/// Answers whether a peer certificate is revoked now.
pub(crate) trait RevocationCheck: Send + Sync + fmt::Debug {
    /// `serial` is big-endian without leading zero bytes.
    fn is_revoked(&self, spiffe_id: &str, serial: &[u8]) -> bool;
}

/// One registered connection.
#[derive(Debug)]
struct Live {
    spiffe_id: String,
    serial: Vec<u8>,
    close: Arc<Notify>,
}

/// Open mTLS connections by peer.
#[derive(Debug, Default)]
pub(crate) struct LiveConnections {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Live>>,
}

/// A connection's registration; dropping it unregisters the connection.
#[derive(Debug)]
pub(crate) struct Registration {
    owner: Arc<LiveConnections>,
    id: u64,
    /// Notified once when the peer's certificate is revoked.
    pub(crate) close: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.owner.conns).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map is only inserted into / removed from whole entries, so a
    // poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveConnections {
    /// Registers a connection from `peer`.
    pub(crate) fn register(self: &Arc<Self>, peer: &PeerIdentity) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        lock(&self.conns).insert(
            id,
            Live {
                spiffe_id: peer.spiffe_id.to_string(),
                serial: peer.serial.clone(),
                close: close.clone(),
            },
        );
        Registration {
            owner: self.clone(),
            id,
            close,
        }
    }

    /// Signals every connection whose peer `check` says is revoked;
    /// returns how many.
    pub(crate) fn close_revoked(&self, check: &dyn RevocationCheck) -> usize {
        let conns = lock(&self.conns);
        let mut closed = 0;
        for live in conns.values() {
            if check.is_revoked(&live.spiffe_id, &live.serial) {
                // `notify_one` keeps a permit if the task is not waiting
                // yet, so the signal cannot be lost.
                live.close.notify_one();
                closed += 1;
            }
        }
        closed
    }

    /// How many mTLS connections are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.conns).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_core::spiffe::OwnedSpiffeId;

    #[derive(Debug)]
    struct RevokeSerial(Vec<u8>);

    impl RevocationCheck for RevokeSerial {
        fn is_revoked(&self, _id: &str, serial: &[u8]) -> bool {
            serial == self.0.as_slice()
        }
    }

    fn peer(serial: u8) -> PeerIdentity {
        PeerIdentity {
            spiffe_id: OwnedSpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").expect("id"),
            leaf_sha256_hex: String::new(),
            serial: vec![serial],
        }
    }

    #[tokio::test]
    async fn only_revoked_peers_are_signalled_and_drop_unregisters() {
        let live = Arc::new(LiveConnections::default());
        let a = live.register(&peer(1));
        let b = live.register(&peer(2));
        assert_eq!(live.len(), 2);
        assert_eq!(live.close_revoked(&RevokeSerial(vec![2])), 1);
        // The permit is kept for b; a gets nothing.
        tokio::time::timeout(core::time::Duration::from_secs(1), b.close.notified())
            .await
            .expect("b signalled");
        let a_signalled =
            tokio::time::timeout(core::time::Duration::from_millis(50), a.close.notified()).await;
        assert!(a_signalled.is_err(), "a must not be signalled");
        drop(b);
        assert_eq!(live.len(), 1);
    }
}
