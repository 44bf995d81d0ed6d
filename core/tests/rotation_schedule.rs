//! The renewal schedule under a virtual clock: table tests for each rule
//! and property tests for the guarantees (renew strictly before expiry,
//! within the jitter bounds, backoff capped, failures never drop the
//! certificate).

use core::time::Duration;

use meshgate_core::rotation::*;
use meshgate_core::time::UnixTime;
use meshgate_core::wire;
use proptest::prelude::*;

const HOUR: u64 = 3_600_000;

fn t(ms: u64) -> UnixTime {
    UnixTime::from_millis(ms)
}

fn validity(from: u64, to: u64) -> Validity {
    Validity::new(t(from), t(to)).unwrap()
}

fn rotation() -> Rotation {
    Rotation::new(RenewalPolicy::ISTIO).unwrap()
}

#[test]
fn validity_rejects_empty_windows_and_converts_from_the_wire() {
    assert_eq!(Validity::new(t(5), t(5)), Err(EmptyValidity));
    assert_eq!(Validity::new(t(6), t(5)), Err(EmptyValidity));
    let v = validity(1000, 25 * HOUR);
    assert!(v.contains(t(1000)) && !v.contains(t(25 * HOUR)) && !v.contains(t(999)));
    let leaf: &[u8] = b"leaf";
    let cert = wire::Certificate {
        chain: wire::BoundedList::from_slice(&[leaf]).unwrap(),
        roots: wire::BoundedList::from_slice(&[leaf]).unwrap(),
        not_before: t(1000),
        not_after: t(25 * HOUR),
    };
    assert_eq!(Validity::try_from(&cert), Ok(v));
    let backwards = wire::Certificate {
        not_after: t(10),
        ..cert
    };
    assert_eq!(Validity::try_from(&backwards), Err(EmptyValidity));
}

#[test]
fn policies_are_validated() {
    let ok = RenewalPolicy::ISTIO;
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(RenewalPolicy::LINKERD.validate(), Ok(()));
    let table = [
        (
            RenewalPolicy {
                renew_at_permille: 0,
                jitter_permille: 0,
                ..ok
            },
            Err(PolicyError::RenewalOutsideLifetime),
        ),
        (
            RenewalPolicy {
                renew_at_permille: 1000,
                jitter_permille: 0,
                ..ok
            },
            Err(PolicyError::RenewalOutsideLifetime),
        ),
        (
            RenewalPolicy {
                renew_at_permille: 990,
                jitter_permille: 10,
                ..ok
            },
            Err(PolicyError::RenewalOutsideLifetime),
        ),
        (
            RenewalPolicy {
                renew_at_permille: 10,
                jitter_permille: 10,
                ..ok
            },
            Err(PolicyError::RenewalOutsideLifetime),
        ),
        (
            RenewalPolicy {
                renew_at_permille: 989,
                jitter_permille: 10,
                ..ok
            },
            Ok(()),
        ),
        (
            RenewalPolicy {
                retry_initial: Duration::ZERO,
                ..ok
            },
            Err(PolicyError::BadBackoff),
        ),
        (
            RenewalPolicy {
                retry_initial: Duration::from_secs(10),
                retry_max: Duration::from_secs(5),
                ..ok
            },
            Err(PolicyError::BadBackoff),
        ),
    ];
    for (policy, want) in table {
        assert_eq!(policy.validate(), want, "{policy:?}");
        assert_eq!(Rotation::new(policy).map(|_| ()), want);
    }
}

#[test]
fn without_a_certificate_the_first_poll_enrolls() {
    let r = rotation();
    assert_eq!(r.poll(t(0)), Action::Renew);
    assert!(r.is_expired(t(0)));
    assert_eq!(r.current(), None);
}

#[test]
fn renewal_is_scheduled_at_half_the_lifetime_with_bounded_jitter() {
    // A 24 h certificate: 50 % ± 1 % is 12 h ± 14.4 min.
    let v = validity(0, 24 * HOUR);
    let lo = 12 * HOUR - 24 * HOUR / 100;
    let hi = 12 * HOUR + 24 * HOUR / 100;
    let table = [
        (0u32, lo),
        (10, 12 * HOUR),
        (20, hi),
        (21, lo),
        (u32::MAX, lo + (u32::MAX % 21) as u64 * 24 * HOUR / 1000),
    ];
    for (rand, want) in table {
        let mut r = rotation();
        r.renewed(t(0), v, rand).unwrap();
        assert_eq!(r.renew_at(), Some(t(want)), "rand {rand}");
        assert_eq!(r.poll(t(want - 1)), Action::Wait(t(want)));
        assert_eq!(r.poll(t(want)), Action::Renew);
    }
}

#[test]
fn the_ratio_is_configurable() {
    let mut r = Rotation::new(RenewalPolicy {
        jitter_permille: 0,
        ..RenewalPolicy::LINKERD
    })
    .unwrap();
    r.renewed(t(0), validity(0, 1000 * HOUR), 12345).unwrap();
    assert_eq!(r.renew_at(), Some(t(700 * HOUR)));
}

#[test]
fn a_failed_renewal_keeps_the_certificate_and_backs_off_exponentially() {
    let policy = RenewalPolicy {
        jitter_permille: 0,
        ..RenewalPolicy::ISTIO
    };
    let mut r = Rotation::new(policy).unwrap();
    let v = validity(0, 24 * HOUR);
    r.renewed(t(0), v, 0).unwrap();
    let mut now = 12 * HOUR;
    assert_eq!(r.poll(t(now)), Action::Renew);
    // Backoff doubles: 1 s, 2 s, 4 s... (each delay jittered within its upper half).
    let mut expected = 1000u64;
    for failure in 1..=12u32 {
        r.renewal_failed(t(now), u32::MAX);
        assert_eq!(
            r.current(),
            Some(v),
            "a failure must not drop the certificate"
        );
        assert_eq!(r.failures(), failure);
        let retry = r.retry_at().unwrap();
        let delay = retry.as_millis() - now;
        let backoff = expected.min(300_000);
        assert!(
            delay >= backoff / 2 && delay <= backoff,
            "failure {failure}: {delay} ms"
        );
        assert_eq!(r.poll(t(now)), Action::Wait(retry));
        assert_eq!(r.poll(retry), Action::Renew);
        now = retry.as_millis();
        expected *= 2;
    }
    // The cap (5 min) was reached and held: 2^11 s is far beyond it.
    assert_eq!(policy.retry_delay(12, 150_000), Duration::from_secs(300));
    // Success resets the backoff and schedules the next renewal.
    let next = validity(now, now + 24 * HOUR);
    r.renewed(t(now), next, 0).unwrap();
    assert_eq!(
        (r.failures(), r.retry_at(), r.current()),
        (0, None, Some(next))
    );
    assert_eq!(r.poll(t(now)), Action::Wait(t(now + 12 * HOUR)));
}

#[test]
fn retries_are_pulled_in_so_several_happen_before_expiry() {
    let mut r = Rotation::new(RenewalPolicy {
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(3600),
        ..RenewalPolicy::ISTIO
    })
    .unwrap();
    // A 60 s certificate (a short test TTL); renewal fails over and over.
    r.renewed(t(0), validity(0, 60_000), 0).unwrap();
    let mut now = r.renew_at().unwrap().as_millis();
    let mut attempts = 0;
    while now < 60_000 {
        r.renewal_failed(t(now), u32::MAX);
        attempts += 1;
        let retry = r.retry_at().unwrap().as_millis();
        assert!(retry > now);
        if now + 500 < 60_000 {
            assert!(retry < 60_000, "retry at {retry} after expiry (now {now})");
        }
        now = retry;
    }
    assert!(attempts >= 5, "only {attempts} attempts before expiry");
    assert!(r.is_expired(t(60_000)));
    // An expired certificate is reported, still held, and renewal keeps going.
    assert_eq!(r.current(), Some(validity(0, 60_000)));
}

#[test]
fn a_worse_certificate_never_replaces_a_good_one() {
    let mut r = rotation();
    let good = validity(0, 24 * HOUR);
    r.renewed(t(0), good, 0).unwrap();
    assert_eq!(
        r.renewed(t(HOUR), validity(0, 24 * HOUR), 0),
        Err(RejectReason::NotNewer)
    );
    assert_eq!(
        r.renewed(t(HOUR), validity(0, 2 * HOUR), 0),
        Err(RejectReason::NotNewer)
    );
    assert_eq!(
        r.renewed(t(30 * HOUR), validity(25 * HOUR, 26 * HOUR), 0),
        Err(RejectReason::Expired)
    );
    assert_eq!(r.current(), Some(good));
}

#[test]
fn a_backdated_certificate_does_not_renew_in_a_loop() {
    let mut r = rotation();
    // Issued with a notBefore so early that its renewal point has passed.
    r.renewed(t(20 * HOUR), validity(0, 24 * HOUR), 0).unwrap();
    let at = r.renew_at().unwrap();
    assert_eq!(
        at,
        t(20 * HOUR + 1000),
        "retry_initial later, not immediately"
    );
    assert!(at < t(24 * HOUR));
    // Even with a millisecond left, renewal stays strictly before expiry.
    let mut r = rotation();
    r.renewed(t(24 * HOUR - 1), validity(0, 24 * HOUR), 0)
        .unwrap();
    assert!(r.renew_at().unwrap() < t(24 * HOUR));
}

#[test]
fn clock_jumps() {
    let v = validity(100 * HOUR, 124 * HOUR);
    // Forward past the renewal point: renew now. Past notAfter: expired.
    let mut r = rotation();
    r.renewed(t(100 * HOUR), v, 10).unwrap();
    assert_eq!(r.poll(t(113 * HOUR)), Action::Renew);
    assert!(!r.is_expired(t(123 * HOUR)));
    assert!(r.is_expired(t(124 * HOUR)));
    // Backward before notBefore: not expired, the renewal point stays.
    assert!(!r.is_expired(t(50 * HOUR)));
    assert_eq!(r.poll(t(50 * HOUR)), Action::Wait(t(112 * HOUR)));
    // Backward during a retry: the stranded retry is due at once, at every
    // poll after the step (a cap recomputed from `now` would never come due).
    r.renewal_failed(t(112 * HOUR), 0);
    let back = t(10 * HOUR);
    assert_eq!(r.poll(back), Action::Renew);
    assert_eq!(
        r.poll(back.saturating_add(Duration::from_secs(1))),
        Action::Renew
    );
    // A small backward step that keeps the retry within the cap waits for it.
    let retry = r.retry_at().unwrap();
    let slightly_back = t(112 * HOUR - 1);
    assert!(retry <= slightly_back.saturating_add(RenewalPolicy::ISTIO.retry_max));
    assert_eq!(r.poll(slightly_back), Action::Wait(retry));
    // After the retry fails again, the schedule is relative to the new time.
    r.renewal_failed(back, 0);
    assert!(matches!(r.poll(back), Action::Wait(_)));
    assert_eq!(r.current(), Some(v));
}

#[test]
fn failures_before_the_first_certificate_back_off_too() {
    let mut r = rotation();
    r.renewal_failed(t(0), 0);
    assert_eq!(r.poll(t(0)), Action::Wait(t(500)));
    r.renewal_failed(t(500), 0);
    assert_eq!(r.poll(t(500)), Action::Wait(t(1500)));
    assert_eq!(r.current(), None);
}

#[test]
fn retry_delay_table() {
    let p = RenewalPolicy::ISTIO; // 1 s .. 300 s
    let table = [
        (1, 0, 500),
        (1, u32::MAX, 500 + u32::MAX as u64 % 501),
        (2, 0, 1000),
        (3, 0, 2000),
        (9, 0, 128_000),
        (10, 0, 150_000), // 512 s capped to 300 s
        (u32::MAX, 0, 150_000),
        (u32::MAX, 150_000, 300_000),
    ];
    for (failures, rand, want) in table {
        assert_eq!(
            p.retry_delay(failures, rand),
            Duration::from_millis(want),
            "{failures} {rand}"
        );
    }
}

fn policy() -> impl Strategy<Value = RenewalPolicy> {
    (1u16..999, 0u16..200, 1u64..120_000, 0u64..3_600_000).prop_filter_map(
        "valid policy",
        |(at, j, initial, extra)| {
            let p = RenewalPolicy {
                renew_at_permille: at,
                jitter_permille: j,
                retry_initial: Duration::from_millis(initial),
                retry_max: Duration::from_millis(initial + extra),
            };
            p.validate().ok().map(|_| p)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn renewal_is_strictly_before_expiry_and_within_jitter(
        p in policy(),
        nb in 0u64..(1 << 45),
        life in 1u64..(400 * 24 * HOUR),
        rand in any::<u32>(),
    ) {
        let v = validity(nb, nb + life);
        let mut r = Rotation::new(p).unwrap();
        r.renewed(t(nb), v, rand).unwrap();
        let at = r.renew_at().unwrap().as_millis();
        prop_assert!(at < nb + life, "renewal at {} not before expiry {}", at, nb + life);
        let lo = u128::from(life) * u128::from(p.renew_at_permille - p.jitter_permille) / 1000;
        let hi = u128::from(life) * u128::from(p.renew_at_permille + p.jitter_permille) / 1000;
        let off = u128::from(at - nb);
        prop_assert!(lo <= off && off <= hi, "{} not in [{}, {}]", off, lo, hi);
    }

    #[test]
    fn backoff_never_exceeds_the_cap_and_failures_keep_the_certificate(
        p in policy(),
        rands in proptest::collection::vec(any::<u32>(), 1..40),
        start in 0u64..(1 << 40),
        life in 2u64..(30 * 24 * HOUR),
    ) {
        let v = validity(start, start + life);
        let mut r = Rotation::new(p).unwrap();
        r.renewed(t(start), v, rands[0]).unwrap();
        let mut now = r.renew_at().unwrap().as_millis();
        for (i, rand) in rands.iter().enumerate() {
            r.renewal_failed(t(now), *rand);
            prop_assert_eq!(r.current(), Some(v));
            prop_assert_eq!(r.failures(), i as u32 + 1);
            let retry = r.retry_at().unwrap().as_millis();
            let delay = Duration::from_millis(retry - now);
            prop_assert!(delay <= p.retry_max, "{:?} > cap {:?}", delay, p.retry_max);
            prop_assert!(retry > now || p.retry_initial < Duration::from_millis(2));
            // While the certificate is valid, the retry comes before expiry
            // unless less than the floor remains.
            let floor = r.retry_floor().as_millis() as u64;
            prop_assert!(retry - now >= floor.min(delay.as_millis() as u64));
            if now + floor < start + life {
                prop_assert!(retry < start + life, "retry {} after expiry {}", retry, start + life);
            }
            prop_assert_eq!(r.poll(t(now)), if retry > now { Action::Wait(t(retry)) } else { Action::Renew });
            now = retry.max(now + 1);
        }
    }

    #[test]
    fn a_virtual_clock_run_always_renews_before_expiry(
        p in policy(),
        life in 60_000u64..(7 * 24 * HOUR),
        outcomes in proptest::collection::vec((any::<bool>(), any::<u32>()), 1..30),
    ) {
        // Renewals succeed or fail at random; the CA answers instantly with a
        // certificate of the same lifetime. Every attempt the schedule asks
        // for while the certificate has more than the retry floor left lies
        // strictly before its expiry, and a failure never loses it.
        let mut r = Rotation::new(p).unwrap();
        let mut now = 0u64;
        r.renewed(t(now), validity(0, life), 7).unwrap();
        let floor = r.retry_floor().as_millis() as u64;
        let mut margin_at_last_attempt = life; // time left when it was scheduled
        for (ok, rand) in outcomes {
            let Action::Wait(until) = r.poll(t(now)) else {
                prop_assert!(false, "renewal due without waiting at {}", now);
                unreachable!()
            };
            let cur = r.current().unwrap();
            if margin_at_last_attempt > floor {
                prop_assert!(until < cur.not_after(), "attempt at {:?} after expiry {:?}", until, cur.not_after());
            }
            now = until.as_millis();
            prop_assert_eq!(r.poll(t(now)), Action::Renew);
            if ok && r.renewed(t(now), validity(now, now + life), rand).is_ok() {
                margin_at_last_attempt = life;
            } else {
                margin_at_last_attempt = cur.not_after().as_millis().saturating_sub(now);
                r.renewal_failed(t(now), rand);
                prop_assert_eq!(r.current(), Some(cur));
            }
        }
    }
}
