//! Time as a plain value. Core never reads a clock: callers pass `now`.

use core::time::Duration;

/// A point in wall-clock time: milliseconds since the Unix epoch (UTC).
///
/// Certificates carry wall-clock validity, so rotation and precedence
/// (creation timestamps) are expressed in this one type.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnixTime(u64);

impl UnixTime {
    /// The epoch itself.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        UnixTime(ms)
    }

    /// From whole seconds since the epoch (saturating).
    pub const fn from_secs(secs: u64) -> Self {
        UnixTime(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixTime(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixTime(self.0.saturating_sub(ms))
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn duration_since(self, earlier: UnixTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = UnixTime::from_secs(10);
        assert_eq!(t.as_millis(), 10_000);
        assert_eq!(t.saturating_sub(Duration::from_secs(20)), UnixTime::EPOCH);
        assert_eq!(
            UnixTime::from_millis(u64::MAX).saturating_add(Duration::from_secs(1)),
            UnixTime::from_millis(u64::MAX)
        );
        assert_eq!(
            UnixTime::from_secs(5).duration_since(UnixTime::from_secs(7)),
            Duration::ZERO
        );
        assert_eq!(
            UnixTime::from_secs(7).duration_since(UnixTime::from_secs(5)),
            Duration::from_secs(2)
        );
    }
}
