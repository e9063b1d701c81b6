//! Request pacing: a strict governor limiter at the configured rate, and an
//! adaptive slowdown on top of it when the API throttles us.
//!
//! The executor sees only the [`Limiter`] interface: `reserve` a send slot under a
//! [`LimiterKey`] (action, access endpoint, SecretId: the scope of Tencent Cloud's
//! limit) and report `feedback` on the reply. [`LocalLimiter`] keeps one [`Pacer`] per
//! key in this process; another implementation (shared through the database) can
//! stand behind the same interface without the executor changing.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cvm::Action;

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

    /// Waits for the next send slot and takes it, in one step: the slot's moment is
    /// what the next one is spaced from. Returns that moment.
    pub async fn reserve(&self) -> Instant {
        let Some(limiter) = &self.limiter else {
            return Instant::now();
        };
        limiter.until_ready().await;
        loop {
            let wait = {
                let mut state = self.lock();
                let spacing = Duration::from_secs_f64(RATE_MARGIN / state.current);
                let now = Instant::now();
                match state.last_start {
                    Some(last) if now < last + spacing => last + spacing - now,
                    _ => {
                        state.last_start = Some(spaced_from(state.last_start, spacing, now));
                        return now;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
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

/// What a limiter is keyed by: Tencent Cloud counts each API per access region
/// (the endpoint a request reaches) and per sub-account (its SecretId).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimiterKey {
    pub action: Action,
    pub endpoint: String,
    pub secret_id: String,
}

/// What a reply says about the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// The request went through (or failed for a reason other than the rate).
    Passed,
    /// `RequestLimitExceeded` for this key's API.
    Throttled,
    /// An account-wide limit (`RequestLimitExceeded.UinLimitExceeded`,
    /// `.GlobalRegionUinLimitExceeded`): every key of the SecretId slows down.
    ThrottledAccount,
}

impl Feedback {
    /// The feedback an error code gives (`Passed` for any non-throttle code).
    pub fn for_code(code: &str) -> Feedback {
        if !crate::taxonomy::is_throttle(code) {
            Feedback::Passed
        } else if matches!(
            code,
            "RequestLimitExceeded.UinLimitExceeded"
                | "RequestLimitExceeded.GlobalRegionUinLimitExceeded"
        ) {
            Feedback::ThrottledAccount
        } else {
            Feedback::Throttled
        }
    }
}

/// A future a limiter returns: resolves to the moment the slot was taken.
pub type Reservation<'a> = Pin<Box<dyn Future<Output = Instant> + Send + 'a>>;

/// Send slots per key, and the pace adjusted by feedback.
pub trait Limiter: Send + Sync {
    /// Waits for a send slot under `key` and takes it.
    fn reserve<'a>(&'a self, key: &'a LimiterKey) -> Reservation<'a>;
    /// What the reply to a request sent under `key` said about the pace.
    fn feedback(&self, key: &LimiterKey, feedback: Feedback);
    /// True when `key` is not paced at all (engine benchmarks).
    fn is_off(&self, key: &LimiterKey) -> bool;
}

/// One [`Pacer`] per key, in this process, each at its action's rate.
#[derive(Debug)]
pub struct LocalLimiter {
    rate_for: fn(Action, f64) -> f64,
    configured: f64,
    pacers: Mutex<HashMap<LimiterKey, Arc<Pacer>>>,
}

impl LocalLimiter {
    /// Key-pair operations at `rate` per second (0: unpaced); every other action at
    /// its documented limit (also unpaced when `rate` is 0).
    pub fn new(rate: f64) -> LocalLimiter {
        LocalLimiter {
            rate_for: rate_for_action,
            configured: rate,
            pacers: Mutex::new(HashMap::new()),
        }
    }

    fn pacer(&self, key: &LimiterKey) -> Arc<Pacer> {
        let mut pacers = self.pacers.lock().unwrap_or_else(|e| e.into_inner());
        pacers
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Pacer::new((self.rate_for)(key.action, self.configured))))
            .clone()
    }

    /// The rate in force now for `key` (requests per second).
    pub fn current_rate(&self, key: &LimiterKey) -> f64 {
        self.pacer(key).current_rate()
    }
}

/// The rate an action is paced at when key-pair operations go at `configured`.
pub fn rate_for_action(action: Action, configured: f64) -> f64 {
    if configured <= 0.0 {
        0.0
    } else if action.is_key_pair_operation() {
        configured
    } else {
        f64::from(action.rate_limit())
    }
}

impl Limiter for LocalLimiter {
    fn reserve<'a>(&'a self, key: &'a LimiterKey) -> Reservation<'a> {
        let pacer = self.pacer(key);
        Box::pin(async move { pacer.reserve().await })
    }

    fn feedback(&self, key: &LimiterKey, feedback: Feedback) {
        match feedback {
            Feedback::Passed => self.pacer(key).succeeded(),
            Feedback::Throttled => self.pacer(key).throttled(),
            Feedback::ThrottledAccount => {
                let pacers: Vec<Arc<Pacer>> = {
                    let pacers = self.pacers.lock().unwrap_or_else(|e| e.into_inner());
                    pacers
                        .iter()
                        .filter(|(k, _)| k.secret_id == key.secret_id)
                        .map(|(_, p)| p.clone())
                        .collect()
                };
                for pacer in pacers {
                    pacer.throttled();
                }
            }
        }
    }

    fn is_off(&self, key: &LimiterKey) -> bool {
        (self.rate_for)(key.action, self.configured) <= 0.0
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
    async fn reserved_slots_are_strictly_spaced() {
        let pacer = Pacer::new(50.0);
        let mut starts = Vec::new();
        for _ in 0..6 {
            starts.push(pacer.reserve().await);
        }
        let min_gap = Duration::from_secs_f64(RATE_MARGIN / 50.0) - SEND_LATENESS_FORGIVEN;
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= min_gap, "gap {:?}", pair[1] - pair[0]);
        }
    }

    fn key(action: Action, endpoint: &str, secret_id: &str) -> LimiterKey {
        LimiterKey {
            action,
            endpoint: endpoint.into(),
            secret_id: secret_id.into(),
        }
    }

    #[test]
    fn each_key_has_its_own_pace_and_account_throttles_slow_every_key_of_the_account() {
        let limiter = LocalLimiter::new(10.0);
        let unbind = key(Action::DisassociateInstancesKeyPairs, "https://a", "AKID1");
        let bind = key(Action::AssociateInstancesKeyPairs, "https://a", "AKID1");
        let describe = key(Action::DescribeInstances, "https://a", "AKID1");
        let other = key(Action::DisassociateInstancesKeyPairs, "https://a", "AKID2");
        assert_eq!(limiter.current_rate(&unbind), 10.0);
        assert_eq!(limiter.current_rate(&describe), 40.0);
        limiter.feedback(&unbind, Feedback::Throttled);
        assert_eq!(limiter.current_rate(&unbind), 9.0);
        assert_eq!(
            limiter.current_rate(&bind),
            10.0,
            "another API keeps its pace"
        );
        limiter.feedback(&bind, Feedback::ThrottledAccount);
        assert!(limiter.current_rate(&bind) < 10.0);
        assert!(limiter.current_rate(&describe) < 40.0);
        assert_eq!(
            limiter.current_rate(&other),
            10.0,
            "another sub-account is untouched"
        );
        assert!(LocalLimiter::new(0.0).is_off(&describe));
        assert_eq!(
            Feedback::for_code("RequestLimitExceeded.UinLimitExceeded"),
            Feedback::ThrottledAccount
        );
        assert_eq!(
            Feedback::for_code("RequestLimitExceeded"),
            Feedback::Throttled
        );
        assert_eq!(Feedback::for_code("InternalServerError"), Feedback::Passed);
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
