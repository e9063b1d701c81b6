//! Request pacing: a strict governor limiter at the configured rate, an
//! adaptive slowdown on top of it when the API throttles us, and a sliding-window
//! guard at the moment each request is actually sent.

use std::collections::VecDeque;
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
const RECOVERY_INTERVAL: Duration = Duration::from_secs(2);
/// The slowest a throttled sender goes, as a fraction of the configured rate.
const MIN_RATE_FRACTION: f64 = 1.0 / 16.0;

/// Paces request starts: at most `rate` in any sliding second, slower after throttles.
#[derive(Debug)]
pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    target: f64,
    state: Mutex<PacerState>,
    /// The send-time guard: at most `window_count` sends in any `window`.
    window_count: usize,
    window: Duration,
    sends: Mutex<VecDeque<Instant>>,
}

#[derive(Debug)]
struct PacerState {
    current: f64,
    last_start: Option<Instant>,
    last_change: Instant,
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
        // At 10/s: at most 10 sends in any 1.025 s, the limiter's own spacing over ten starts.
        let window_count = (rate.floor() as usize).max(1);
        let window = if rate > 0.0 {
            Duration::from_secs_f64(window_count as f64 * RATE_MARGIN / rate)
        } else {
            Duration::ZERO
        };
        Pacer {
            limiter,
            target: rate,
            state: Mutex::new(PacerState {
                current: rate,
                last_start: None,
                last_change: Instant::now(),
            }),
            window_count,
            window,
            sends: Mutex::new(VecDeque::with_capacity(window_count + 1)),
        }
    }

    /// Waits until the next request may start.
    pub async fn ready(&self) {
        let Some(limiter) = &self.limiter else { return };
        limiter.until_ready().await;
        // The adaptive slowdown: on top of the limiter, keep starts at least
        // 1/current apart. Checked at the target rate too: the limiter's cell was
        // taken before a slowed-down wait, so at the moment the rate recovers the
        // limiter alone would let the next start follow this one at once.
        loop {
            let wait = {
                let mut state = self.lock();
                let spacing = Duration::from_secs_f64(RATE_MARGIN / state.current);
                let now = Instant::now();
                match state.last_start {
                    Some(last) if now < last + spacing => last + spacing - now,
                    _ => {
                        state.last_start = Some(now);
                        return;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits, right before a request is sent, until it keeps the sends within the
    /// sliding window, and records it.
    ///
    /// Starts are paced before their attempt rows are written; the commit and the
    /// task's scheduling then delay each send by a varying few to tens of
    /// milliseconds on a busy machine. One delayed send lets the next ten fall
    /// within a second at the server, which counts arrivals: measured, that alone
    /// cost a throttle every few seconds at 10/s. This guard holds a send only when
    /// it would crowd the window, so the rate is unchanged.
    pub async fn sending(&self) {
        if self.limiter.is_none() {
            return;
        }
        loop {
            let wait = {
                let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let crowded = sends
                    .len()
                    .checked_sub(self.window_count)
                    .and_then(|n| sends.get(n))
                    .map(|&earlier| earlier + self.window)
                    .filter(|&free_at| now < free_at);
                match crowded {
                    Some(free_at) => free_at - now,
                    None => {
                        sends.push_back(now);
                        while sends.len() > self.window_count {
                            sends.pop_front();
                        }
                        return;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// True when a request may start right now without waiting (used to grow a wave of starts).
    pub fn try_ready(&self) -> bool {
        match &self.limiter {
            None => true,
            Some(limiter) => {
                let mut state = self.lock();
                let spacing = Duration::from_secs_f64(RATE_MARGIN / state.current);
                let now = Instant::now();
                let spaced = state.last_start.is_none_or(|last| now >= last + spacing);
                if state.current >= self.target && spaced && limiter.check().is_ok() {
                    state.last_start = Some(now);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The API said we are too fast: halve the rate (down to a floor).
    pub fn throttled(&self) {
        if self.limiter.is_none() {
            return;
        }
        let mut state = self.lock();
        state.current = (state.current / 2.0).max(self.target * MIN_RATE_FRACTION);
        state.last_change = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_are_strictly_spaced() {
        let pacer = Pacer::new(50.0);
        let mut starts = Vec::new();
        for _ in 0..6 {
            pacer.ready().await;
            starts.push(Instant::now());
        }
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - Duration::from_millis(1);
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= min_gap,
                "gap {:?} < {min_gap:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[test]
    fn throttles_halve_and_recovery_is_gradual() {
        let pacer = Pacer::new(10.0);
        pacer.throttled();
        assert_eq!(pacer.current_rate(), 5.0);
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
        assert!(!pacer.try_ready(), "a reduced pacer never grows a wave");
    }

    #[tokio::test]
    async fn recovery_does_not_let_two_starts_bunch() {
        let pacer = std::sync::Arc::new(Pacer::new(10.0));
        pacer.ready().await;
        pacer.throttled();
        // The next start takes the limiter's cell at 102.5 ms, then waits for the
        // slowed-down spacing (205 ms); the rate recovers while it waits.
        let slowed = tokio::spawn({
            let pacer = pacer.clone();
            async move { pacer.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        pacer.lock().current = pacer.target;
        slowed.await.unwrap();
        let started = Instant::now();
        assert!(!pacer.try_ready(), "no second start in the same instant");
        pacer.ready().await;
        let gap = started.elapsed();
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 10.0) - Duration::from_millis(2);
        assert!(gap >= min_gap, "gap {gap:?} < {min_gap:?}");
    }

    #[tokio::test]
    async fn a_late_send_does_not_let_later_ones_crowd_the_window() {
        let pacer = Pacer::new(20.0);
        let window = Duration::from_secs_f64(20.0 * RATE_MARGIN / 20.0);
        let mut sends = Vec::new();
        // 21 sends asked for back to back, as if the first twenty had been delayed
        // between their start and their send: the 21st must wait out the window.
        for _ in 0..21 {
            pacer.sending().await;
            sends.push(Instant::now());
        }
        let span = sends[20] - sends[0];
        assert!(
            span >= window - Duration::from_millis(1),
            "21 sends in {span:?} < {window:?}"
        );
        assert!(
            sends[19] - sends[0] < Duration::from_millis(100),
            "the first twenty are not held"
        );
    }

    #[tokio::test]
    async fn off_means_no_waiting() {
        let pacer = Pacer::new(0.0);
        for _ in 0..1000 {
            pacer.ready().await;
            pacer.sending().await;
            assert!(pacer.try_ready());
        }
    }
}
