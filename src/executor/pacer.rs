//! Request pacing: a strict governor limiter at the configured rate, and an
//! adaptive slowdown on top of it when the API throttles us.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Spacing is this much wider than `1 / rate`. The server counts arrivals, and
/// network jitter bunches requests: a client spaced at exactly 100 ms meets the
/// 10/s limit's edge, while 2.5% wider leaves 25 ms of slack per ten requests
/// (enough for the simulator's 20 ms jitter) and still delivers 9.75 of 10/s.
pub const RATE_MARGIN: f64 = 1.025;
/// After a throttle, the rate recovers by this factor per quiet interval.
const RECOVERY_FACTOR: f64 = 1.25;
/// The rate stays reduced at least this long after a throttle before it recovers.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// A throttle within this long of the previous one halves the rate.
const THROTTLE_STREAK: Duration = Duration::from_secs(5);
/// A request that leaves at most this late after `ready` allowed it is spaced from
/// the moment it was due. Timer wake-ups and task scheduling make nearly every send
/// about a millisecond late; counted into the spacing, that cost 1% of the rate (9.65
/// instead of 9.75 requests/s at 10/s, measured). Any ten sends still span at least
/// ten spacings minus this, well inside the margin's 25 ms at 10/s.
const SEND_LATENESS_FORGIVEN: Duration = Duration::from_millis(2);
/// The slowest a throttled sender goes, as a fraction of the configured rate.
const MIN_RATE_FRACTION: f64 = 1.0 / 16.0;

/// Paces request starts: at most `rate` in any sliding second, slower after throttles.
#[derive(Debug)]
pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    target: f64,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    current: f64,
    last_start: Option<Instant>,
    last_change: Instant,
    last_throttle: Option<Instant>,
}

impl Pacer {
    /// `rate` requests per second; 0 turns pacing off (engine benchmarks only).
    pub fn new(rate: f64) -> Pacer {
        let limiter = (rate > 0.0).then(|| {
            let period = Duration::from_secs_f64(RATE_MARGIN / rate);
            // with_period alone gives a burst of 1: strictly spaced starts, unlike
            // per_second(n), whose burst of n could put 2n-1 starts in one second.
            let quota =
                Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
            RateLimiter::direct(quota)
        });
        Pacer {
            limiter,
            target: rate,
            state: Mutex::new(PacerState {
                current: rate,
                last_start: None,
                last_change: Instant::now(),
                last_throttle: None,
            }),
        }
    }

    /// Waits until the next request may start.
    pub async fn ready(&self) {
        let Some(limiter) = &self.limiter else { return };
        limiter.until_ready().await;
        // On top of the limiter, keep 1/current between the moments requests
        // actually left (see `sending`): a request held up between its permit and
        // its send (a busy machine) must not let the next one follow it closely,
        // since the server counts arrivals. While throttled, current < target.
        loop {
            let wait = {
                let state = self.lock();
                let spacing = Duration::from_secs_f64(RATE_MARGIN / state.current);
                let now = Instant::now();
                match state.last_start {
                    Some(last) if now < last + spacing => last + spacing - now,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A request is leaving now; the next one is spaced from this moment, or from
    /// when this one was due if it is only slightly late (`SEND_LATENESS_FORGIVEN`). A request
    /// held up longer never lets the next one follow it closely.
    pub fn sending(&self) {
        if self.limiter.is_none() {
            return;
        }
        let mut state = self.lock();
        let spacing = Duration::from_secs_f64(RATE_MARGIN / state.current);
        state.last_start = Some(spaced_from(state.last_start, spacing, Instant::now()));
    }

    /// True when pacing is off (`rate` 0): requests start as fast as slots free up.
    pub fn is_off(&self) -> bool {
        self.limiter.is_none()
    }

    /// The API said we are too fast: halve the rate (down to a floor).
    pub fn throttled(&self) {
        if self.limiter.is_none() {
            return;
        }
        let mut state = self.lock();
        // A lone throttle is most likely arrivals bunched by the network: ease off a
        // little. Throttles in a row mean someone else shares the account's limit:
        // halve, as often as it takes.
        let factor = if state
            .last_throttle
            .is_some_and(|t| t.elapsed() < THROTTLE_STREAK)
        {
            0.5
        } else {
            0.9
        };
        state.current = (state.current * factor).max(self.target * MIN_RATE_FRACTION);
        state.last_change = Instant::now();
        state.last_throttle = Some(Instant::now());
        tracing::info!(rate = state.current, "throttled: slowing down");
    }

    /// A request went through: recover toward the configured rate, step by step.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        if state.current < self.target && state.last_change.elapsed() >= RECOVERY_INTERVAL {
            state.current = (state.current * RECOVERY_FACTOR).min(self.target);
            state.last_change = Instant::now();
            tracing::debug!(rate = state.current, "recovering rate");
        }
    }

    /// The rate in force now, requests per second (0 when pacing is off).
    pub fn current_rate(&self) -> f64 {
        self.lock().current
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The moment the next request is spaced from, for a send at `now` after the
/// previous one counted from `last`.
fn spaced_from(last: Option<Instant>, spacing: Duration, now: Instant) -> Instant {
    match last.map(|last| last + spacing) {
        Some(due) if now > due => due.max(now - SEND_LATENESS_FORGIVEN),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_are_strictly_spaced() {
        let pacer = Pacer::new(50.0);
        let mut starts = Vec::new();
        for _ in 0..6 {
            pacer.ready().await;
            pacer.sending();
            starts.push(Instant::now());
        }
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= min_gap,
                "gap {:?} < {min_gap:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[test]
    fn a_little_lateness_is_forgiven_more_is_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let spacing = ms(100);
        assert_eq!(spaced_from(None, spacing, t0), t0);
        // A send a millisecond late (a timer's wake-up) does not push the next one back.
        assert_eq!(spaced_from(Some(t0), spacing, t0 + ms(101)), t0 + ms(100));
        // One held up 45 ms: the next is spaced from nearly when it really left.
        assert_eq!(
            spaced_from(Some(t0), spacing, t0 + ms(145)),
            t0 + ms(145) - SEND_LATENESS_FORGIVEN
        );
        // Early (the rate was lowered in between): from the send itself.
        assert_eq!(spaced_from(Some(t0), spacing, t0 + ms(60)), t0 + ms(60));
    }

    #[tokio::test]
    async fn a_send_held_up_is_not_followed_closely() {
        let pacer = Pacer::new(50.0);
        pacer.ready().await;
        pacer.sending();
        pacer.ready().await;
        tokio::time::sleep(Duration::from_millis(45)).await;
        pacer.sending();
        let late = Instant::now();
        pacer.ready().await;
        let gap = late.elapsed();
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        assert!(gap >= min_gap, "gap {gap:?} < {min_gap:?}");
    }

    #[test]
    fn throttles_halve_and_recovery_is_gradual() {
        let pacer = Pacer::new(10.0);
        pacer.throttled();
        assert_eq!(pacer.current_rate(), 9.0, "a lone throttle eases off");
        pacer.throttled();
        assert_eq!(pacer.current_rate(), 4.5, "a second one soon after halves");
        pacer.throttled();
        pacer.throttled();
        pacer.throttled();
        pacer.throttled();
        assert_eq!(pacer.current_rate(), 10.0 / 16.0, "floored");
        pacer.succeeded();
        assert_eq!(
            pacer.current_rate(),
            10.0 / 16.0,
            "no recovery right after a throttle"
        );
        pacer.lock().last_change -= RECOVERY_INTERVAL;
        pacer.succeeded();
        assert_eq!(pacer.current_rate(), 10.0 / 16.0 * RECOVERY_FACTOR);
    }

    #[tokio::test]
    async fn off_means_no_waiting() {
        let pacer = Pacer::new(0.0);
        for _ in 0..1000 {
            pacer.ready().await;
            pacer.sending();
            assert!(pacer.is_off());
        }
    }
}
