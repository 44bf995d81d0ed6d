//! Trust-bundle roll-over: old and new roots trusted together, the old one
//! dropped only when nothing it signed can still be valid, or when forced.

use meshgate_core::rotation::*;
use meshgate_core::time::UnixTime;
use proptest::prelude::*;

const DAY: u64 = 86_400_000;

fn t(ms: u64) -> UnixTime {
    UnixTime::from_millis(ms)
}

#[test]
fn a_full_roll_over() {
    let mut b: TrustBundle<&str, 3> = TrustBundle::new();
    b.add("root-2024", t(3650 * DAY)).unwrap();
    b.set_signing(&"root-2024").unwrap();
    b.record_issued(t(DAY)).unwrap();
    b.record_issued(t(2 * DAY)).unwrap();
    b.record_issued(t(DAY + 5)).unwrap(); // earlier than the latest: no change

    // Step 1: distribute the new root while the old one still signs.
    b.add("root-2025", t(4000 * DAY)).unwrap();
    assert_eq!(
        b.roots().copied().collect::<Vec<_>>(),
        ["root-2024", "root-2025"]
    );
    assert_eq!(b.prune(t(DAY)), 0, "a root that never signed is not pruned");

    // Step 2: switch signing; the old root is retired, still trusted.
    b.set_signing(&"root-2025").unwrap();
    assert_eq!(b.signing(), Some(&"root-2025"));
    b.record_issued(t(3 * DAY)).unwrap();
    assert!(b.contains(&"root-2024"));

    // Step 3: the old root stays while its last leaf (2 days) may be valid.
    assert_eq!(
        b.remove(&"root-2024", t(DAY), false),
        Err(BundleError::StillInUse { until: t(2 * DAY) })
    );
    assert_eq!(b.prune(t(2 * DAY - 1)), 0);
    assert_eq!(b.prune(t(2 * DAY)), 1);
    assert_eq!(b.roots().copied().collect::<Vec<_>>(), ["root-2025"]);
    assert_eq!(b.signing(), Some(&"root-2025"));
}

#[test]
fn the_signing_root_is_never_dropped_unless_forced() {
    let mut b: TrustBundle<u32, 2> = TrustBundle::new();
    b.add(1, t(10 * DAY)).unwrap();
    b.set_signing(&1).unwrap();
    assert_eq!(b.remove(&1, t(0), false), Err(BundleError::IsSigning));
    assert_eq!(
        b.prune(t(20 * DAY)),
        0,
        "even expired, the signing root stays"
    );
    // A compromised root is removed by force.
    assert_eq!(b.remove(&1, t(0), true), Ok(1));
    assert_eq!(b.signing(), None);
    assert_eq!(b.record_issued(t(DAY)), Err(BundleError::NoSigningRoot));
    assert!(b.is_empty());
}

#[test]
fn forced_removal_ignores_certificates_still_valid() {
    let mut b: TrustBundle<u32, 2> = TrustBundle::new();
    b.add(1, t(10 * DAY)).unwrap();
    b.add(2, t(10 * DAY)).unwrap();
    b.set_signing(&1).unwrap();
    b.record_issued(t(5 * DAY)).unwrap();
    b.set_signing(&2).unwrap();
    assert!(matches!(
        b.remove(&1, t(DAY), false),
        Err(BundleError::StillInUse { .. })
    ));
    assert_eq!(b.remove(&1, t(DAY), true), Ok(1));
    assert_eq!(b.len(), 1);
}

#[test]
fn an_expired_root_can_go_even_if_its_leaves_outlive_it() {
    let mut b: TrustBundle<u32, 2> = TrustBundle::new();
    b.add(1, t(DAY)).unwrap();
    b.add(2, t(10 * DAY)).unwrap();
    b.set_signing(&1).unwrap();
    b.record_issued(t(3 * DAY)).unwrap();
    b.set_signing(&2).unwrap();
    assert_eq!(b.prune(t(DAY - 1)), 0);
    assert_eq!(
        b.prune(t(DAY)),
        1,
        "no chain through an expired root verifies"
    );
}

#[test]
fn a_root_that_never_signed_is_removable_on_request() {
    let mut b: TrustBundle<u32, 2> = TrustBundle::new();
    b.add(7, t(DAY)).unwrap();
    assert_eq!(b.remove(&7, t(0), false), Ok(7));
    assert_eq!(b.remove(&7, t(0), false), Err(BundleError::NotFound));
}

#[test]
fn capacity_and_duplicates() {
    let mut b: TrustBundle<u32, 2> = TrustBundle::new();
    b.add(1, t(DAY)).unwrap();
    assert_eq!(b.add(1, t(DAY)), Err(BundleError::Duplicate));
    b.add(2, t(DAY)).unwrap();
    assert_eq!(b.add(3, t(DAY)), Err(BundleError::Full));
    assert_eq!(b.set_signing(&3), Err(BundleError::NotFound));
    // Switching back to a retired root un-retires it.
    b.set_signing(&1).unwrap();
    b.record_issued(t(DAY / 2)).unwrap();
    b.set_signing(&2).unwrap();
    b.set_signing(&1).unwrap();
    // Root 2 is retired but issued nothing on record: prune keeps it.
    assert_eq!(b.prune(t(DAY / 2 + 1)), 0);
    assert_eq!(b.len(), 2);
}

proptest! {
    /// Whatever sequence of operations runs, a root is never gone while a
    /// certificate it signed is still valid and the root unexpired, unless
    /// it was removed by force.
    #[test]
    fn no_unforced_removal_strands_a_valid_certificate(
        ops in proptest::collection::vec((0u8..5, 0u32..4, 0u64..100), 1..60)
    ) {
        let mut b: TrustBundle<u32, 4> = TrustBundle::new();
        // root -> (expires, latest leaf it signed)
        let mut signed: std::collections::HashMap<u32, (u64, u64)> = Default::default();
        let mut now = 0u64;
        for (op, root, x) in ops {
            match op {
                0 => {
                    if b.add(root, t(now + 50 + x)).is_ok() {
                        signed.insert(root, (now + 50 + x, 0));
                    }
                }
                1 => { let _ = b.set_signing(&root); }
                2 => {
                    if let Some(s) = b.signing().copied() && b.record_issued(t(now + x)).is_ok() {
                        let e = signed.get_mut(&s).unwrap();
                        e.1 = e.1.max(now + x);
                    }
                }
                3 => {
                    if b.remove(&root, t(now), false).is_ok() {
                        let (expires, leaf) = signed.remove(&root).unwrap();
                        prop_assert!(now >= leaf || now >= expires, "removed root {} at {} with leaf until {}", root, now, leaf);
                    }
                }
                _ => {
                    now += x;
                    let before: Vec<u32> = b.roots().copied().collect();
                    b.prune(t(now));
                    for r in before {
                        if !b.contains(&r) {
                            let (expires, leaf) = signed.remove(&r).unwrap();
                            prop_assert!(now >= leaf || now >= expires);
                            prop_assert!(leaf > 0 || now >= expires, "pruned a root with no recorded issuance");
                        }
                    }
                }
            }
            if let Some(s) = b.signing() {
                prop_assert!(b.contains(s));
            }
        }
    }
}
