//! When to renew a certificate, how to retry, and which roots to trust.
//!
//! This module owns three decisions, all sans-IO (wall-clock time and
//! random numbers are arguments):
//!
//! - [`Rotation`]: the renewal schedule of one certificate. It renews at a
//!   configurable fraction of the lifetime (Istio's default: 50 % ± 1 %,
//!   Linkerd: 70 %) with jitter drawn from a caller-supplied `u32`, so a
//!   fleet issued at once does not renew at once. A failed renewal backs
//!   off exponentially with jitter up to a cap, and **never** touches the
//!   certificate in use: the last known good certificate stays until it
//!   really expires or a better one replaces it.
//! - [`RenewalPolicy`]: the tunables, validated once.
//! - [`TrustBundle`]: several roots trusted together during a CA roll-over:
//!   add the new root, switch signing to it, and drop the old root only
//!   when nothing it signed can still be valid (or when forced).
//!
//! # Contract
//! Nothing here panics or allocates; arithmetic saturates. [`Rotation::poll`]
//! is a pure query, so calling it again is harmless; the caller tracks its
//! in-flight request and reports the outcome with [`Rotation::renewed`] or
//! [`Rotation::renewal_failed`] (also when a request times out).
//!
//! # Clock jumps
//! Certificate validity is wall-clock time, so the schedule is too. A clock
//! that jumps **forward** past the renewal point renews at once (and past
//! `notAfter` reports the certificate expired) — correct, since the
//! certificate really is that old if the new time is right. A clock that
//! jumps **backward** leaves the renewal point where it is (the certificate
//! did not get younger), but a pending retry that now lies further away
//! than [`RenewalPolicy::retry_max`] — which no backoff produces, so only a
//! backward step can cause it — is due at once: a backward step never
//! stalls retries. (Capping it at `now + retry_max` instead would never come
//! due, because the cap moves with every poll.)

use core::fmt;
use core::time::Duration;

use crate::time::UnixTime;
use crate::wire;

/// A certificate's validity window, `not_before < not_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Validity {
    not_before: UnixTime,
    not_after: UnixTime,
}

/// A validity window that ends before (or when) it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EmptyValidity;

impl fmt::Display for EmptyValidity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("certificate notAfter is not later than notBefore")
    }
}

impl Validity {
    /// The window `[not_before, not_after)`.
    pub fn new(not_before: UnixTime, not_after: UnixTime) -> Result<Self, EmptyValidity> {
        if not_after > not_before {
            Ok(Validity {
                not_before,
                not_after,
            })
        } else {
            Err(EmptyValidity)
        }
    }

    /// Start of validity.
    pub const fn not_before(&self) -> UnixTime {
        self.not_before
    }

    /// End of validity (the certificate is expired from this instant on).
    pub const fn not_after(&self) -> UnixTime {
        self.not_after
    }

    /// The whole lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before)
    }

    /// True when `now` lies in `[not_before, not_after)`.
    pub fn contains(&self, now: UnixTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The instant `permille`/1000 of the way through the lifetime.
    fn at_permille(&self, permille: u32) -> UnixTime {
        let life = u128::from(self.not_after.as_millis() - self.not_before.as_millis());
        let offset = life * u128::from(permille) / 1000;
        let ms = u64::try_from(offset).unwrap_or(u64::MAX);
        UnixTime::from_millis(self.not_before.as_millis().saturating_add(ms))
    }
}

impl TryFrom<&wire::Certificate<'_>> for Validity {
    type Error = EmptyValidity;

    /// The validity the gateway stated for the leaf it issued.
    fn try_from(cert: &wire::Certificate<'_>) -> Result<Self, Self::Error> {
        Validity::new(cert.not_before, cert.not_after)
    }
}

/// Tunables of [`Rotation`]; check them with [`validate`](Self::validate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Renew this far through the lifetime, in permille (500 = 50 %).
    pub renew_at_permille: u16,
    /// Uniform jitter around the renewal point, ± permille of the lifetime.
    pub jitter_permille: u16,
    /// First retry delay after a failed renewal.
    pub retry_initial: Duration,
    /// Longest retry delay; the exponential backoff stops growing here.
    pub retry_max: Duration,
}

/// Why a [`RenewalPolicy`] is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PolicyError {
    /// The renewal point with jitter does not stay strictly inside the
    /// lifetime: need `jitter < renew_at` and `renew_at + jitter < 1000`.
    RenewalOutsideLifetime,
    /// `retry_initial` is zero or `retry_max` is below it.
    BadBackoff,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyError::RenewalOutsideLifetime => {
                "renewal point plus or minus jitter must lie strictly inside the lifetime"
            }
            PolicyError::BadBackoff => "retry backoff needs 0 < retry_initial <= retry_max",
        })
    }
}

impl RenewalPolicy {
    /// Istio's schedule: renew at 50 % ± 1 % of the lifetime; retry after
    /// 1 s, doubling up to 5 min.
    pub const ISTIO: RenewalPolicy = RenewalPolicy {
        renew_at_permille: 500,
        jitter_permille: 10,
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(300),
    };

    /// Linkerd's schedule: renew at 70 % of the lifetime (± 1 % here).
    pub const LINKERD: RenewalPolicy = RenewalPolicy {
        renew_at_permille: 700,
        ..RenewalPolicy::ISTIO
    };

    /// Checks the invariants [`Rotation`] relies on.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let at = self.renew_at_permille;
        let j = self.jitter_permille;
        if j >= at || u32::from(at) + u32::from(j) >= 1000 {
            return Err(PolicyError::RenewalOutsideLifetime);
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(PolicyError::BadBackoff);
        }
        Ok(())
    }

    /// The renewal point for `validity` with jitter drawn from `rand`:
    /// uniform in `renew_at ± jitter` permille of the lifetime, always
    /// strictly before `not_after`.
    pub fn renewal_time(&self, validity: &Validity, rand: u32) -> UnixTime {
        let j = u32::from(self.jitter_permille);
        let span = 2 * j + 1;
        // `rand % span` has a negligible bias for spans of a few dozen.
        let permille = u32::from(self.renew_at_permille) + (rand % span) - j;
        validity.at_permille(permille)
    }

    /// The retry delay after `failures` consecutive failures (`>= 1`):
    /// `retry_initial · 2^(failures-1)` capped at `retry_max`, then drawn
    /// uniformly from its upper half with `rand` ("equal jitter"), so it is
    /// never below half the backoff and never above the cap.
    pub fn retry_delay(&self, failures: u32, rand: u32) -> Duration {
        let initial = u64::try_from(self.retry_initial.as_millis()).unwrap_or(u64::MAX);
        let cap = u64::try_from(self.retry_max.as_millis()).unwrap_or(u64::MAX);
        let shift = failures.saturating_sub(1).min(63);
        let backoff = initial.saturating_mul(1u64 << shift).min(cap);
        let half = backoff / 2;
        let spread = backoff - half; // so that half + spread == backoff
        Duration::from_millis(half + u64::from(rand) % (spread + 1))
    }
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy::ISTIO
    }
}

/// Retries are never closer together than this (or half of
/// [`RenewalPolicy::retry_initial`], if smaller).
pub const RETRY_FLOOR: Duration = Duration::from_millis(500);

/// What the caller should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Nothing until this instant (then poll again).
    Wait(UnixTime),
    /// Request a certificate now (enrollment when there is none yet).
    Renew,
}

/// Why a new certificate was not installed. The current one stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RejectReason {
    /// The new certificate is already expired at `now`.
    Expired,
    /// The new certificate does not outlive the current one.
    NotNewer,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Expired => "new certificate is already expired",
            RejectReason::NotNewer => "new certificate does not outlive the current one",
        })
    }
}

/// The renewal state machine of one certificate.
///
/// ```text
///            renewed(ok)                      renewal_failed
///   [none] ─────────────▶ [current, renew_at] ──────────────▶ [current, retry_at]
///     │ poll: Renew           │ poll: Wait/Renew      ▲  renewed(ok) │ poll: Wait/Renew
///     └─ renewal_failed ─▶ [none, retry_at]          └──────────────┘
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    policy: RenewalPolicy,
    current: Option<Validity>,
    renew_at: Option<UnixTime>,
    retry_at: Option<UnixTime>,
    failures: u32,
}

impl Rotation {
    /// No certificate yet: the first poll asks for one.
    pub fn new(policy: RenewalPolicy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Rotation {
            policy,
            current: None,
            renew_at: None,
            retry_at: None,
            failures: 0,
        })
    }

    /// The policy in use.
    pub fn policy(&self) -> &RenewalPolicy {
        &self.policy
    }

    /// The certificate in use (possibly expired: see
    /// [`is_expired`](Self::is_expired)).
    pub fn current(&self) -> Option<Validity> {
        self.current
    }

    /// The jittered renewal point of the current certificate.
    pub fn renew_at(&self) -> Option<UnixTime> {
        self.renew_at
    }

    /// When the next retry is due after a failure.
    pub fn retry_at(&self) -> Option<UnixTime> {
        self.retry_at
    }

    /// Consecutive failed renewals since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True when there is no certificate or it has expired at `now`. A
    /// certificate whose `not_before` lies in the future (a clock stepped
    /// back) is not expired; it stays in use.
    pub fn is_expired(&self, now: UnixTime) -> bool {
        self.current.is_none_or(|v| now >= v.not_after)
    }

    /// What to do at `now`: renew when a retry or the renewal point is due
    /// (or there is no certificate), otherwise wait. A pure query.
    pub fn poll(&self, now: UnixTime) -> Action {
        let due = match (self.retry_at, self.renew_at) {
            (Some(retry), _) => retry,
            (None, Some(renew)) => renew,
            (None, None) => return Action::Renew,
        };
        // A retry further away than the backoff cap was scheduled before a
        // backward clock step: retry now rather than wait for the old time.
        let stalled = self
            .retry_at
            .is_some_and(|retry| retry > now.saturating_add(self.policy.retry_max));
        if stalled || now >= due {
            Action::Renew
        } else {
            Action::Wait(due)
        }
    }

    /// Installs a freshly issued certificate and schedules its renewal with
    /// jitter from `rand` (see [`RenewalPolicy::renewal_time`]; if that point
    /// has already passed at `now`, renewal is due after `retry_initial` or
    /// half the remaining lifetime, whichever is sooner). A certificate that is already expired, or does
    /// not outlive the current one, is rejected and the current one kept —
    /// report that to the CA and call [`renewal_failed`](Self::renewal_failed).
    pub fn renewed(
        &mut self,
        now: UnixTime,
        validity: Validity,
        rand: u32,
    ) -> Result<(), RejectReason> {
        if now >= validity.not_after {
            return Err(RejectReason::Expired);
        }
        if let Some(cur) = self.current
            && validity.not_after <= cur.not_after
        {
            return Err(RejectReason::NotNewer);
        }
        let mut renew_at = self.policy.renewal_time(&validity, rand);
        if renew_at <= now {
            // Issued long ago (back-dated, or a skewed clock): renewing at
            // once would loop, so wait a little, still strictly before expiry.
            let half_left = validity.not_after.duration_since(now) / 2;
            renew_at = now.saturating_add(self.policy.retry_initial.min(half_left));
        }
        self.current = Some(validity);
        self.renew_at = Some(renew_at);
        self.retry_at = None;
        self.failures = 0;
        Ok(())
    }

    /// The shortest delay between attempts: `min(retry_initial / 2,
    /// RETRY_FLOOR)`. It keeps halving retries from turning into a busy loop.
    pub fn retry_floor(&self) -> Duration {
        (self.policy.retry_initial / 2).min(RETRY_FLOOR)
    }

    /// Records a failed renewal at `now` and schedules a retry with
    /// exponential backoff and jitter from `rand`. The current certificate
    /// is kept. While it is valid, the retry is also pulled in to at most
    /// half the remaining lifetime, so several attempts happen before it
    /// expires (but never sooner than [`retry_floor`](Self::retry_floor)).
    pub fn renewal_failed(&mut self, now: UnixTime, rand: u32) {
        self.failures = self.failures.saturating_add(1);
        let mut delay = self.policy.retry_delay(self.failures, rand);
        if let Some(cur) = self.current
            && cur.contains(now)
        {
            let half_left = cur.not_after.duration_since(now) / 2;
            delay = delay.min(half_left).max(self.retry_floor());
        }
        self.retry_at = Some(now.saturating_add(delay));
    }
}

/// Why a [`TrustBundle`] operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BundleError {
    /// All `N` slots are taken; prune or remove a root first.
    Full,
    /// The root is already in the bundle.
    Duplicate,
    /// The root is not in the bundle.
    NotFound,
    /// There is no signing root.
    NoSigningRoot,
    /// The root signs new certificates; switch signing first (or force).
    IsSigning,
    /// Certificates it signed may be valid until this instant (or force).
    StillInUse {
        /// When the last of them expires.
        until: UnixTime,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Full => f.write_str("trust bundle is full"),
            BundleError::Duplicate => f.write_str("root already in trust bundle"),
            BundleError::NotFound => f.write_str("root not in trust bundle"),
            BundleError::NoSigningRoot => f.write_str("no signing root"),
            BundleError::IsSigning => f.write_str("root is the signing root"),
            BundleError::StillInUse { until } => write!(
                f,
                "certificates signed by this root may be valid until {} ms",
                until.as_millis()
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RootEntry<R> {
    root: R,
    /// The root's own notAfter: nothing chains to it afterwards.
    expires: UnixTime,
    /// Latest notAfter of anything it signed; `None` if it signed nothing.
    signed_until: Option<UnixTime>,
    /// It signed and was then replaced as the signing root.
    retired: bool,
}

/// Up to `N` trusted roots, one of which signs new certificates.
///
/// `R` is whatever identifies a root to the caller: DER bytes, a
/// fingerprint, an index into key storage.
///
/// Roll-over: [`add`](Self::add) the new root and distribute the bundle;
/// [`set_signing`](Self::set_signing) to the new root once peers trust it;
/// the old root is *retired* and [`prune`](Self::prune) drops it when
/// every certificate it signed (as told by
/// [`record_issued`](Self::record_issued)) has expired, or when the root
/// itself expired. A root with no recorded issuance stays until removed:
/// it is usually the next root waiting for its turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle<R, const N: usize> {
    entries: [Option<RootEntry<R>>; N],
    signing: Option<usize>,
}

impl<R: PartialEq, const N: usize> TrustBundle<R, N> {
    /// An empty bundle.
    pub fn new() -> Self {
        TrustBundle {
            entries: core::array::from_fn(|_| None),
            signing: None,
        }
    }

    fn index(&self, root: &R) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.root == *root))
    }

    /// Adds a trusted root that expires at `expires`.
    pub fn add(&mut self, root: R, expires: UnixTime) -> Result<(), BundleError> {
        if self.index(&root).is_some() {
            return Err(BundleError::Duplicate);
        }
        let slot = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(BundleError::Full)?;
        *slot = Some(RootEntry {
            root,
            expires,
            signed_until: None,
            retired: false,
        });
        Ok(())
    }

    /// Makes `root` the signing root; the previous one is retired.
    pub fn set_signing(&mut self, root: &R) -> Result<(), BundleError> {
        let idx = self.index(root).ok_or(BundleError::NotFound)?;
        if let Some(old) = self.signing
            && old != idx
            && let Some(Some(e)) = self.entries.get_mut(old)
        {
            e.retired = true;
        }
        if let Some(Some(e)) = self.entries.get_mut(idx) {
            e.retired = false;
        }
        self.signing = Some(idx);
        Ok(())
    }

    /// Records that the signing root issued a certificate valid until
    /// `not_after`.
    pub fn record_issued(&mut self, not_after: UnixTime) -> Result<(), BundleError> {
        let idx = self.signing.ok_or(BundleError::NoSigningRoot)?;
        let Some(Some(e)) = self.entries.get_mut(idx) else {
            return Err(BundleError::NoSigningRoot);
        };
        e.signed_until = Some(e.signed_until.map_or(not_after, |u| u.max(not_after)));
        Ok(())
    }

    /// The signing root.
    pub fn signing(&self) -> Option<&R> {
        let idx = self.signing?;
        self.entries.get(idx)?.as_ref().map(|e| &e.root)
    }

    /// Every trusted root, in slot order.
    pub fn roots(&self) -> impl Iterator<Item = &R> {
        self.entries.iter().flatten().map(|e| &e.root)
    }

    /// Number of trusted roots.
    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// True when no root is trusted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `root` is trusted.
    pub fn contains(&self, root: &R) -> bool {
        self.index(root).is_some()
    }

    /// `Ok` if `root` may be dropped at `now` without breaking a certificate
    /// that may still be valid, else why not.
    fn check_droppable(&self, idx: usize, now: UnixTime) -> Result<(), BundleError> {
        if self.signing == Some(idx) {
            return Err(BundleError::IsSigning);
        }
        let Some(Some(e)) = self.entries.get(idx) else {
            return Err(BundleError::NotFound);
        };
        // Once the root itself has expired no chain through it verifies,
        // so what it signed no longer matters.
        match e.signed_until {
            Some(until) if now < until && now < e.expires => Err(BundleError::StillInUse { until }),
            _ => Ok(()),
        }
    }

    /// Removes `root`. Unless `force`, refuses while it is the signing root
    /// or while certificates it signed may still be valid at `now`.
    /// Forcing (a compromised root) removes it regardless.
    pub fn remove(&mut self, root: &R, now: UnixTime, force: bool) -> Result<R, BundleError> {
        let idx = self.index(root).ok_or(BundleError::NotFound)?;
        if !force {
            self.check_droppable(idx, now)?;
        }
        if self.signing == Some(idx) {
            self.signing = None;
        }
        self.entries
            .get_mut(idx)
            .and_then(Option::take)
            .map(|e| e.root)
            .ok_or(BundleError::NotFound)
    }

    /// Drops every retired or expired root that nothing valid depends on at
    /// `now`; returns how many were dropped.
    pub fn prune(&mut self, now: UnixTime) -> usize {
        let mut dropped = 0;
        for idx in 0..N {
            // A root with no recorded issuance is left alone: it is usually
            // the next root waiting for its turn (or one briefly switched
            // to and back). Only an explicit `remove` drops it.
            let prunable = match self.entries.get(idx) {
                Some(Some(e)) => now >= e.expires || (e.retired && e.signed_until.is_some()),
                _ => false,
            };
            if prunable
                && self.check_droppable(idx, now).is_ok()
                && let Some(slot) = self.entries.get_mut(idx)
            {
                *slot = None;
                dropped += 1;
            }
        }
        dropped
    }
}

impl<R: PartialEq, const N: usize> Default for TrustBundle<R, N> {
    fn default() -> Self {
        Self::new()
    }
}
