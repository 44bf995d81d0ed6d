//! The gateway's own SPIFFE identity: issued by the built-in CA into memory
//! (the key is never written anywhere), handed to the data plane through an
//! [`IdentitySink`], and renewed on `meshgate_core::rotation`'s schedule.
//!
//! A failed renewal keeps the certificate in use and retries with the
//! schedule's backoff; the certificate's expiry is exported as a metric and
//! logged as a warning once less than a fifth of its lifetime is left.
//! [`IdentityHandle::renew_now`] forces a re-issue (after a root roll-over).

use std::sync::Arc;

use meshgate_ca::{CertificateAuthority, IssuedCertificate, LeafKey};
use meshgate_core::rotation::{Action, RenewalPolicy, Rotation, Validity};
use meshgate_core::spiffe::OwnedSpiffeId;
use meshgate_core::time::UnixTime;
use tokio::sync::{Notify, watch};

use crate::state::ControlPlane;

/// Who takes a newly issued identity (the data plane's TLS configuration).
pub(crate) trait IdentitySink: Send + Sync {
    /// Installs the certificate and key; an error keeps the previous one.
    fn install(&self, issued: &IssuedCertificate, key: LeafKey) -> Result<(), String>;
}

/// Why the identity could not be issued or installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    /// The CA refused or failed.
    #[error("the CA could not issue the gateway identity {id}: {source}")]
    Issue {
        /// The identity.
        id: String,
        /// The CA's error.
        source: meshgate_ca::CaError,
    },
    /// The data plane did not accept the certificate.
    #[error("the data plane rejected the new gateway certificate: {0}")]
    Install(String),
    /// The rotation schedule refused the certificate.
    #[error("the new gateway certificate was not installed: {0}")]
    Rejected(meshgate_core::rotation::RejectReason),
    /// The schedule's settings are invalid.
    #[error("invalid renewal policy: {0:?}")]
    Policy(meshgate_core::rotation::PolicyError),
}

/// Wall-clock now (milliseconds).
pub(crate) fn now() -> UnixTime {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixTime::from_millis(ms)
}

/// Jitter for the schedule, from the OS generator (a fleet started at once
/// must not renew at once). A generator failure only loses the jitter.
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ignored = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

/// Issues and renews the gateway's certificate.
pub(crate) struct IdentityManager {
    ca: Arc<CertificateAuthority>,
    spiffe_id: OwnedSpiffeId,
    ttl: core::time::Duration,
    sink: Arc<dyn IdentitySink>,
    control: Arc<ControlPlane>,
    rotation: Rotation,
    renew_now: Arc<Notify>,
}

/// Lets other parts (the admin API) ask for an immediate re-issue.
#[derive(Clone, Debug)]
pub(crate) struct IdentityHandle {
    renew_now: Arc<Notify>,
}

impl IdentityHandle {
    /// Re-issue the gateway's certificate now (e.g. after the signing root
    /// changed), without waiting for the schedule.
    pub(crate) fn renew_now(&self) {
        self.renew_now.notify_one();
    }
}

impl IdentityManager {
    /// Issues the first certificate and installs it; the gateway does not
    /// start without an identity.
    pub(crate) fn start(
        ca: Arc<CertificateAuthority>,
        spiffe_id: OwnedSpiffeId,
        ttl: core::time::Duration,
        sink: Arc<dyn IdentitySink>,
        control: Arc<ControlPlane>,
    ) -> Result<(Self, IdentityHandle), IdentityError> {
        let rotation = Rotation::new(RenewalPolicy::ISTIO).map_err(IdentityError::Policy)?;
        let renew_now = Arc::new(Notify::new());
        let mut m = IdentityManager {
            ca,
            spiffe_id,
            ttl,
            sink,
            control,
            rotation,
            renew_now: renew_now.clone(),
        };
        m.renew(now(), false)?;
        Ok((m, IdentityHandle { renew_now }))
    }

    /// One issuance: CA → sink → schedule. On any error the current
    /// certificate stays in place. `forced` (after a root change) installs
    /// the new certificate even if it does not outlive the current one: it
    /// chains to a different root, which is the point.
    fn renew(&mut self, at: UnixTime, forced: bool) -> Result<(), IdentityError> {
        let id = self.spiffe_id.borrow();
        let (issued, key) = self
            .ca
            .issue_with_new_key(&id, Some(self.ttl), at, "meshgate-identity")
            .map_err(|source| IdentityError::Issue {
                id: id.as_str().to_owned(),
                source,
            })?;
        // The schedule runs on the lifetime from issuance: `not_before` is
        // backdated (clock-skew tolerance), and counting that minute would
        // put the renewal point of a short-lived certificate in the past
        // (a 60 s certificate would be renewed again at once, forever).
        let issued_at = UnixTime::from_secs(at.as_secs()).max(issued.not_before);
        let validity = Validity::new(issued_at, issued.not_after)
            .map_err(|_| IdentityError::Rejected(meshgate_core::rotation::RejectReason::Expired))?;
        // Check with the schedule before installing, so a certificate the
        // schedule would refuse never reaches the data plane.
        let mut next = if forced {
            Rotation::new(*self.rotation.policy()).map_err(IdentityError::Policy)?
        } else {
            self.rotation
        };
        next.renewed(at, validity, random_u32())
            .map_err(IdentityError::Rejected)?;
        self.sink
            .install(&issued, key)
            .map_err(IdentityError::Install)?;
        self.rotation = next;
        self.control
            .set_identity(id.as_str().to_owned(), issued.not_after);
        tracing::info!(
            spiffe_id = id.as_str(),
            serial = %issued.serial,
            root = %issued.root_id,
            trusted_roots = issued.trust_bundle.len(),
            not_after = issued.not_after.as_secs(),
            renew_at = self.rotation.renew_at().map_or(0, UnixTime::as_secs),
            "gateway certificate installed"
        );
        Ok(())
    }

    /// Renews on schedule until `stop` turns true.
    pub(crate) async fn run(mut self, stop: watch::Receiver<bool>) {
        let mut warned_for: Option<UnixTime> = None;
        loop {
            let t = now();
            self.warn_if_close(t, &mut warned_for);
            let wait = match self.rotation.poll(t) {
                Action::Renew => {
                    if let Err(e) = self.renew(t, false) {
                        self.rotation.renewal_failed(t, random_u32());
                        tracing::warn!(
                            error = %e,
                            failures = self.rotation.failures(),
                            retry_at = self.rotation.retry_at().map_or(0, UnixTime::as_secs),
                            "gateway certificate renewal failed; keeping the current certificate"
                        );
                    }
                    continue;
                }
                Action::Wait(until) => until.duration_since(t),
            };
            // Wake at least every minute to re-check the clock (a suspended
            // host or a stepped clock) and to log approaching expiry.
            let wait = wait.min(core::time::Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.renew_now.notified() => {
                    let t = now();
                    if let Err(e) = self.renew(t, true) {
                        self.rotation.renewal_failed(t, random_u32());
                        tracing::warn!(error = %e, "forced gateway certificate renewal failed");
                    }
                }
                () = crate::serve::stopped(stop.clone()) => return,
            }
        }
    }

    fn warn_if_close(&self, t: UnixTime, warned_for: &mut Option<UnixTime>) {
        let Some(v) = self.rotation.current() else {
            return;
        };
        let left = v.not_after().duration_since(t);
        if left < v.lifetime() / 5 && *warned_for != Some(v.not_after()) {
            *warned_for = Some(v.not_after());
            tracing::warn!(
                seconds_left = left.as_secs(),
                failures = self.rotation.failures(),
                "the gateway certificate expires soon and has not been renewed"
            );
        }
    }
}
