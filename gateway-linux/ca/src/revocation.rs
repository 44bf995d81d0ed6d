//! The revocation list: which SPIFFE IDs and serials are revoked, and
//! until when each entry must be kept.
//!
//! This module is pure data (no I/O, no clock); the CA persists the list
//! in the store and decides each entry's `keep_until` from its index of
//! issued certificates. An entry is only useful while a certificate it
//! covers could still be valid, so it is pruned once `keep_until` has
//! passed; until then it is enforced.

use meshgate_core::time::UnixTime;
use serde::{Deserialize, Serialize};

use crate::x509::Serial;

/// What a revocation covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationTarget {
    /// Every certificate for this SPIFFE ID (issuance for it is refused
    /// while the entry is kept).
    SpiffeId(String),
    /// One certificate.
    Serial(Serial),
}

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What is revoked.
    pub target: RevocationTarget,
    /// When it was revoked.
    pub revoked_at: UnixTime,
    /// The entry is enforced until this time (the latest expiry of the
    /// certificates it covers) and pruned after it.
    pub keep_until: UnixTime,
    /// Who revoked it.
    pub actor: String,
    /// Why (free text from the operator).
    pub reason: String,
}

/// The set of active revocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    entries: Vec<Revocation>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry. A second entry for the same target extends the first
    /// one's `keep_until` instead of duplicating it.
    pub fn add(&mut self, revocation: Revocation) {
        if let Some(existing) = self
            .entries
            .iter_mut()
            .find(|e| e.target == revocation.target)
        {
            existing.keep_until = existing.keep_until.max(revocation.keep_until);
            return;
        }
        self.entries.push(revocation);
    }

    /// The revocation that applies to a certificate with this SPIFFE ID
    /// and serial at `now`, if any. Entries past their `keep_until` no
    /// longer apply even before they are pruned.
    pub fn check(&self, spiffe_id: &str, serial: &Serial, now: UnixTime) -> Option<&Revocation> {
        self.entries.iter().find(|e| {
            now <= e.keep_until
                && match &e.target {
                    RevocationTarget::SpiffeId(id) => id == spiffe_id,
                    RevocationTarget::Serial(s) => s == serial,
                }
        })
    }

    /// Whether a SPIFFE ID as a whole is revoked at `now`.
    pub fn spiffe_id_revoked(&self, spiffe_id: &str, now: UnixTime) -> Option<&Revocation> {
        self.entries.iter().find(|e| {
            now <= e.keep_until && e.target == RevocationTarget::SpiffeId(spiffe_id.to_owned())
        })
    }

    /// Drops entries whose `keep_until` is before `now`; returns how many.
    pub fn prune(&mut self, now: UnixTime) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| now <= e.keep_until);
        before - self.entries.len()
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[Revocation] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(target: RevocationTarget, keep_until: u64) -> Revocation {
        Revocation {
            target,
            revoked_at: UnixTime::from_secs(100),
            keep_until: UnixTime::from_secs(keep_until),
            actor: "admin".into(),
            reason: "test".into(),
        }
    }

    #[test]
    fn revocation_applies_until_keep_until_then_is_pruned() {
        let s1 = Serial::from_bytes(&[1]);
        let s2 = Serial::from_bytes(&[2]);
        let mut list = RevocationList::new();
        list.add(rev(RevocationTarget::Serial(s1.clone()), 200));
        list.add(rev(
            RevocationTarget::SpiffeId("spiffe://td/ns/a/sa/b".into()),
            300,
        ));

        // Virtual clock: before either expiry both apply.
        let t = UnixTime::from_secs(150);
        assert!(list.check("spiffe://td/ns/x/sa/y", &s1, t).is_some());
        assert!(list.check("spiffe://td/ns/x/sa/y", &s2, t).is_none());
        assert!(list.check("spiffe://td/ns/a/sa/b", &s2, t).is_some());
        assert_eq!(list.prune(t), 0);

        // After the serial's certificate expired: the entry no longer
        // applies and pruning removes exactly it.
        let t = UnixTime::from_secs(201);
        assert!(list.check("spiffe://td/ns/x/sa/y", &s1, t).is_none());
        assert_eq!(list.prune(t), 1);
        assert_eq!(list.entries().len(), 1);
        assert!(list.spiffe_id_revoked("spiffe://td/ns/a/sa/b", t).is_some());

        let t = UnixTime::from_secs(301);
        assert!(list.spiffe_id_revoked("spiffe://td/ns/a/sa/b", t).is_none());
        assert_eq!(list.prune(t), 1);
        assert!(list.entries().is_empty());
    }

    #[test]
    fn repeated_revocation_extends_instead_of_duplicating() {
        let mut list = RevocationList::new();
        let id = || RevocationTarget::SpiffeId("spiffe://td/a".into());
        list.add(rev(id(), 200));
        list.add(rev(id(), 500));
        list.add(rev(id(), 300));
        assert_eq!(list.entries().len(), 1);
        assert_eq!(list.entries()[0].keep_until, UnixTime::from_secs(500));
    }
}
