//! The gateway's own SPIFFE identity: issued by the built-in CA into memory
//! (the key is never written anywhere), handed to the data plane through an
//! [`IdentitySink`], and renewed on `meshgate_core::rotation`'s schedule.
//!
//! A failed renewal keeps the certificate in use and retries with the
//! schedule's backoff; the certificate's expiry is exported as a metric and
//! logged as a warning once less than a fifth of its lifetime is left.
//! [`IdentityHandle::renew_now`] forces a re-issue (after a root roll-over).
//!
//! # Wall-clock jumps
//! Validity is wall-clock time, and the schedule follows the wall clock
//! (read through [`Clock`], so tests drive it with a virtual one), re-read
//! at least every [`RECHECK`]:
//! - **forward** past the renewal point (or past expiry): renewed at the
//!   next check, because the certificate really is that old if the new time
//!   is right;
//! - **backward** while the certificate is still valid at the new time:
//!   nothing happens until the (now later) renewal point — no storm;
//! - **backward** before the certificate's `notBefore`: peers with the new
//!   time would refuse it, so it is re-issued once at once, even though
//!   the new certificate expires earlier than the current one; a failure
//!   there backs off like any other failed renewal;
//! - a pending retry that a backward jump left further away than the
//!   backoff cap is made at once, so renewal never stalls for the size of
//!   the jump.

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

/// The longest the renewal task sleeps before reading the clock again, so
/// a stepped clock or a suspended host is noticed within this time.
pub(crate) const RECHECK: core::time::Duration = core::time::Duration::from_secs(5);

/// Where the identity's schedule reads wall-clock time.
pub(crate) trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> UnixTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        now()
    }
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
    /// Host names the certificate also carries as DNS SANs (the services'
    /// hosts), so name-checking clients can verify the gateway.
    dns_names: Vec<String>,
    ttl: core::time::Duration,
    sink: Arc<dyn IdentitySink>,
    control: Arc<ControlPlane>,
    clock: Arc<dyn Clock>,
    rotation: Rotation,
    /// The installed certificate's real validity (`notBefore` backdated),
    /// which peers check; the schedule's [`Validity`] starts at issuance.
    installed: Option<Validity>,
    /// The `notAfter` the expiry warning was last logged for.
    warned_for: Option<UnixTime>,
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
    /// start without an identity. `dns_names` must pass
    /// [`meshgate_ca::ca::is_dns_san`].
    pub(crate) fn start(
        ca: Arc<CertificateAuthority>,
        spiffe_id: OwnedSpiffeId,
        dns_names: Vec<String>,
        ttl: core::time::Duration,
        sink: Arc<dyn IdentitySink>,
        control: Arc<ControlPlane>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, IdentityHandle), IdentityError> {
        let rotation = Rotation::new(RenewalPolicy::ISTIO).map_err(IdentityError::Policy)?;
        let renew_now = Arc::new(Notify::new());
        let t = clock.now();
        let mut m = IdentityManager {
            ca,
            spiffe_id,
            dns_names,
            ttl,
            sink,
            control,
            clock,
            rotation,
            installed: None,
            warned_for: None,
            renew_now: renew_now.clone(),
        };
        m.renew(t, false)?;
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
            .issue_server_with_new_key(
                &id,
                &self.dns_names,
                Some(self.ttl),
                at,
                "meshgate-identity",
            )
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
        self.installed = Validity::new(issued.not_before, issued.not_after).ok();
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

    /// One step of the schedule at `t`: renews if due (or if the clock
    /// went back before the certificate's `notBefore`), logs approaching
    /// expiry, and says how long to wait before the next step (zero right
    /// after a renewal attempt, so the outcome is polled at once).
    fn tick(&mut self, t: UnixTime) -> core::time::Duration {
        // A certificate not yet valid at `t` is refused by peers that share
        // our clock; replace it, unless a retry of that is already pending.
        let not_yet_valid = self.installed.is_some_and(|v| t < v.not_before());
        // A retry further away than the backoff cap can only come from a
        // clock that went back after the failure; waiting for it would
        // stretch the backoff by the size of the jump.
        let cap = self.rotation.policy().retry_max;
        let retry_stale = self
            .rotation
            .retry_at()
            .is_some_and(|r| r > t.saturating_add(cap));
        let renew = match self.rotation.poll(t) {
            Action::Renew => true,
            Action::Wait(_) => retry_stale || (not_yet_valid && self.rotation.retry_at().is_none()),
        };
        if renew {
            if not_yet_valid {
                tracing::warn!(
                    now = t.as_secs(),
                    not_before = self.installed.map_or(0, |v| v.not_before().as_secs()),
                    "the clock went back before the gateway certificate's start of validity; re-issuing it"
                );
            }
            if let Err(e) = self.renew(t, not_yet_valid) {
                self.rotation.renewal_failed(t, random_u32());
                tracing::warn!(
                    error = %e,
                    failures = self.rotation.failures(),
                    retry_at = self.rotation.retry_at().map_or(0, UnixTime::as_secs),
                    "gateway certificate renewal failed; keeping the current certificate"
                );
            }
            return core::time::Duration::ZERO;
        }
        self.warn_if_close(t);
        match self.rotation.poll(t) {
            Action::Wait(until) => until.duration_since(t).min(RECHECK),
            Action::Renew => core::time::Duration::ZERO,
        }
    }

    /// Renews on schedule until `stop` turns true.
    pub(crate) async fn run(mut self, stop: watch::Receiver<bool>) {
        loop {
            let wait = self.tick(self.clock.now());
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.renew_now.notified() => {
                    let t = self.clock.now();
                    if let Err(e) = self.renew(t, true) {
                        self.rotation.renewal_failed(t, random_u32());
                        tracing::warn!(error = %e, "forced gateway certificate renewal failed");
                    }
                }
                () = crate::serve::stopped(stop.clone()) => return,
            }
        }
    }

    fn warn_if_close(&mut self, t: UnixTime) {
        let Some(v) = self.rotation.current() else {
            return;
        };
        let left = v.not_after().duration_since(t);
        if left < v.lifetime() / 5 && self.warned_for != Some(v.not_after()) {
            self.warned_for = Some(v.not_after());
            tracing::warn!(
                seconds_left = left.as_secs(),
                failures = self.rotation.failures(),
                "the gateway certificate expires soon and has not been renewed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The renewal schedule under wall-clock jumps, on a virtual clock:
    //! the real CA issues, a recording sink stands in for the data plane.

    use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use core::time::Duration;

    use meshgate_ca::{CaConfig, CaSource, FileStore};
    use meshgate_core::spiffe::OwnedTrustDomain;

    use super::*;
    use crate::state::MeshSettings;

    const T0: u64 = 1_750_000_000;
    const TTL: Duration = Duration::from_secs(3600);

    #[derive(Default)]
    struct VirtualClock(AtomicU64);

    impl VirtualClock {
        fn set(&self, t: UnixTime) {
            self.0.store(t.as_millis(), Ordering::SeqCst);
        }
    }

    impl Clock for VirtualClock {
        fn now(&self) -> UnixTime {
            UnixTime::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    /// Counts install attempts; refuses them while `fail` is set.
    #[derive(Default)]
    struct RecordingSink {
        attempts: AtomicUsize,
        fail: AtomicBool,
        last: std::sync::Mutex<Option<(UnixTime, UnixTime)>>,
    }

    impl IdentitySink for RecordingSink {
        fn install(&self, issued: &IssuedCertificate, _key: LeafKey) -> Result<(), String> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err("refused by the test".into());
            }
            *crate::state::lock(&self.last) = Some((issued.not_before, issued.not_after));
            Ok(())
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<VirtualClock>,
        sink: Arc<RecordingSink>,
        m: IdentityManager,
    }

    fn at(secs: i64) -> UnixTime {
        let base = UnixTime::from_secs(T0);
        match u64::try_from(secs) {
            Ok(s) => base.saturating_add(Duration::from_secs(s)),
            Err(_) => base.saturating_sub(Duration::from_secs(secs.unsigned_abs())),
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = FileStore::open(dir.path().join("ca")).expect("store");
        let store: Arc<dyn meshgate_ca::Store> = Arc::new(store);
        let td = OwnedTrustDomain::parse("cluster.local").expect("td");
        let ca = Arc::new(
            // The CA is a month old: the jumps below stay inside its
            // validity, as they would for a real deployment.
            CertificateAuthority::open(
                store.clone(),
                CaConfig::new(td),
                &CaSource::Generate,
                at(-30 * 86_400),
                "test",
            )
            .expect("CA"),
        );
        let control = Arc::new(
            ControlPlane::load(
                MeshSettings {
                    trust_domain: "cluster.local".into(),
                    root_namespace: "istio-system".into(),
                },
                Vec::new(),
                Vec::new(),
                store,
            )
            .expect("control plane"),
        );
        let clock = Arc::new(VirtualClock::default());
        clock.set(at(0));
        let sink = Arc::new(RecordingSink::default());
        let id = OwnedSpiffeId::parse("spiffe://cluster.local/ns/meshgate-system/sa/meshgate")
            .expect("id");
        let (m, _) = IdentityManager::start(
            ca,
            id,
            Vec::new(),
            TTL,
            sink.clone(),
            control,
            clock.clone(),
        )
        .expect("first identity");
        Fixture {
            _dir: dir,
            clock,
            sink,
            m,
        }
    }

    impl Fixture {
        fn attempts(&self) -> usize {
            self.sink.attempts.load(Ordering::SeqCst)
        }

        /// The installed certificate's (notBefore, notAfter).
        fn installed(&self) -> (UnixTime, UnixTime) {
            crate::state::lock(&self.sink.last).expect("installed")
        }

        /// Jumps the clock to `t` and runs the schedule as `run` would,
        /// sleeping what each step asks, for `span` of virtual time.
        /// Returns the install attempts made.
        fn run_from(&mut self, t: UnixTime, span: Duration) -> usize {
            let before = self.attempts();
            let end = t.saturating_add(span);
            let mut now = t;
            let mut steps = 0;
            while now < end {
                self.clock.set(now);
                let wait = self.m.tick(self.clock.now());
                now = now.saturating_add(wait);
                steps += 1;
                assert!(steps < 100_000, "the schedule spins");
            }
            self.attempts() - before
        }
    }

    #[test]
    fn without_jumps_it_renews_once_per_half_lifetime() {
        let mut f = fixture();
        assert_eq!(f.attempts(), 1, "issued at start");
        // 50 % ± 1 % of an hour: one renewal in the first 40 minutes, and
        // every step in between sleeps at most RECHECK.
        assert_eq!(f.run_from(at(0), Duration::from_secs(40 * 60)), 1);
        assert_eq!(f.run_from(at(40 * 60), Duration::from_secs(3600)), 2);
    }

    #[test]
    fn a_forward_jump_past_the_renewal_point_renews_at_once() {
        let mut f = fixture();
        f.run_from(at(0), Duration::from_secs(60));
        // 50 minutes later in one step: past the renewal point (~30 min).
        let jumped = at(50 * 60);
        assert_eq!(f.run_from(jumped, Duration::from_millis(1)), 1);
        let (_, not_after) = f.installed();
        assert_eq!(not_after.as_secs(), jumped.as_secs() + TTL.as_secs());
        // Then quiet until the new certificate's renewal point.
        assert_eq!(f.run_from(jumped, Duration::from_secs(25 * 60)), 0);
    }

    #[test]
    fn a_forward_jump_past_expiry_renews_at_once() {
        let mut f = fixture();
        let jumped = at(5 * 3600);
        assert_eq!(f.run_from(jumped, Duration::from_millis(1)), 1);
        let (not_before, not_after) = f.installed();
        assert!(not_before <= jumped && jumped < not_after);
    }

    #[test]
    fn a_small_backward_jump_neither_renews_nor_storms() {
        let mut f = fixture();
        f.run_from(at(0), Duration::from_secs(10 * 60));
        // Back 30 s: the certificate (backdated 60 s) is still valid.
        let (not_before, _) = f.installed();
        let back = at(10 * 60 - 30).max(not_before);
        assert_eq!(
            f.run_from(back, Duration::from_secs(15 * 60)),
            0,
            "no renewal before the renewal point"
        );
    }

    #[test]
    fn a_backward_jump_before_not_before_reissues_once_then_follows_the_schedule() {
        let mut f = fixture();
        f.run_from(at(0), Duration::from_secs(60));
        // Two hours back: peers on the new time would refuse the current
        // certificate (not yet valid), although it expires later than any
        // certificate issued now.
        let back = at(-2 * 3600);
        assert_eq!(f.run_from(back, Duration::from_millis(1)), 1);
        let (not_before, not_after) = f.installed();
        assert!(
            not_before <= back && back < not_after,
            "valid at the new time"
        );
        // No storm: quiet until the new certificate's renewal point.
        assert_eq!(f.run_from(back, Duration::from_secs(25 * 60)), 0);
        assert_eq!(
            f.run_from(at(-2 * 3600 + 25 * 60), Duration::from_secs(10 * 60)),
            1
        );
    }

    #[test]
    fn failures_after_a_backward_jump_back_off_and_keep_the_certificate() {
        let mut f = fixture();
        let kept = f.installed();
        f.sink.fail.store(true, Ordering::SeqCst);
        let back = at(-2 * 3600);
        // Retries back off (1 s, 2 s, 4 s, ... up to 5 min): a handful
        // in a minute, not one per step.
        let attempts = f.run_from(back, Duration::from_secs(60));
        assert!((3..=8).contains(&attempts), "{attempts} attempts in 60 s");
        assert_eq!(
            f.installed(),
            kept,
            "a failed renewal keeps the certificate"
        );
        // Recovery: the next retry installs a valid certificate.
        f.sink.fail.store(false, Ordering::SeqCst);
        let resumed = at(-2 * 3600 + 60);
        assert_eq!(f.run_from(resumed, Duration::from_secs(5 * 60)), 1);
        let (not_before, _) = f.installed();
        assert!(not_before <= resumed.saturating_add(Duration::from_secs(5 * 60)));
    }

    #[test]
    fn a_backward_jump_never_stalls_a_pending_retry() {
        let mut f = fixture();
        // Fail the renewal at its renewal point until the backoff is at
        // its 5 minute cap.
        f.sink.fail.store(true, Ordering::SeqCst);
        f.run_from(at(0), Duration::from_secs(40 * 60));
        assert!(f.m.rotation.failures() >= 5);
        // A day back, but still inside the certificate's validity? No:
        // before its notBefore, so the pending retry decides, and it is
        // due within the cap from the new time.
        f.sink.fail.store(false, Ordering::SeqCst);
        let back = at(30 * 60);
        let retry_at = f.m.rotation.retry_at().expect("a retry is pending");
        assert!(
            retry_at > back.saturating_add(Duration::from_secs(300)),
            "the jump put the retry beyond the cap"
        );
        assert_eq!(f.run_from(back, Duration::from_secs(5 * 60 + 1)), 1);
    }
}
