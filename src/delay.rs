//! The retry delay policy: exponential backoff with jitter, as a pure function.
//!
//! The schedule lives in the database (each job's `next_attempt_at`), so what the
//! executor needs is a policy, not an in-process retry loop. This is small enough
//! that a dependency (`retry-policies`) would add more surface than it saves; the
//! unmaintained `backoff` crate (RUSTSEC-2025-0012) is deliberately not used.

use std::time::Duration;

use rand::Rng;

/// The delay before the second attempt, before jitter.
pub(crate) const RETRY_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub(crate) const RETRY_CAP: Duration = Duration::from_secs(60);
/// How long a throttled job waits before it is offered to the limiter again.
pub(crate) const THROTTLE_DELAY: Duration = Duration::from_secs(1);

/// The wait after the `failures`-th Retry-class failure of a job (1-based).
///
/// `base * 2^(failures-1)`, capped, with "equal jitter": a uniform draw from the
/// upper half of that interval. The lower half keeps retries from hammering a
/// busy instance; the random half keeps a batch of jobs that failed together
/// (one mutex-locked instance, a brief outage) from retrying in lockstep.
#[cfg(test)]
pub(crate) fn retry_delay(failures: u32, rng: &mut impl Rng) -> Duration {
    retry_delay_with(failures, RETRY_BASE, RETRY_CAP, rng)
}

/// [`retry_delay`] with an explicit base and cap (tests and rehearsals use short ones).
pub(crate) fn retry_delay_with(
    failures: u32,
    base: Duration,
    cap: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    let half = ceiling / 2;
    let jitter_ms = rng.random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn grows_exponentially_within_jittered_bounds_and_caps() {
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..=12u32 {
            let ceiling = (RETRY_BASE * 2u32.pow(failures - 1)).min(RETRY_CAP);
            for _ in 0..200 {
                let d = retry_delay(failures, &mut rng);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "failure {failures}: {d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
        assert!(retry_delay(1000, &mut rng) <= RETRY_CAP);
    }

    #[test]
    fn jitter_spreads_retries() {
        let mut rng = StdRng::seed_from_u64(1);
        let draws: std::collections::BTreeSet<_> =
            (0..50).map(|_| retry_delay(4, &mut rng)).collect();
        assert!(draws.len() > 25, "only {} distinct delays", draws.len());
    }
}
